//! What the streaming server needs from the runtime. berthd implements [`StreamBackend`] on top of the
//! isolation plugin (exec, attach, resize) and the metadata store (a pod's network namespace).

use std::path::PathBuf;

use async_trait::async_trait;
use berth_core::plugin::PluginResult;
use berth_core::plugin::isolation::{ExecSpec, ExitStatus, ProcessIo};
use serde::{Deserialize, Serialize};

/// A terminal size, as the resize stream carries it (`{"Width":80,"Height":24}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// The runtime side of a streaming session.
///
/// The file descriptors of a [`ProcessIo`] must reach EOF (or EIO, for a pty master) once the process is
/// gone: keep no copy of a pipe's write end or of the pty slave on the host side. The server sets them
/// non-blocking (a file-description flag, shared with any duplicate of the descriptor).
#[async_trait]
pub trait StreamBackend: Send + Sync + 'static {
    /// Starts a process in a running container ([`Isolation::exec`](berth_core::plugin::Isolation::exec)).
    async fn exec(&self, container_id: &str, spec: &ExecSpec) -> PluginResult<ProcessIo>;

    /// Waits for an exec's process to exit.
    async fn wait_exec(&self, container_id: &str, session: &str) -> PluginResult<ExitStatus>;

    /// Kills an exec's process (SIGKILL): its client went away. A no-op once it has exited.
    async fn kill_exec(&self, container_id: &str, session: &str) -> PluginResult<()>;

    /// Joins the stdio of the container's main process; the tty decides itself (the container has one or not).
    async fn attach(&self, container_id: &str, stdin: bool, stdout: bool, stderr: bool) -> PluginResult<ProcessIo>;

    /// Resizes the tty of an exec (`session` as returned in its [`ProcessIo`]) or of the main process.
    async fn resize(&self, container_id: &str, session: &str, size: TerminalSize) -> PluginResult<()>;

    /// The pod's network namespace file; `None` when the pod uses the host's network.
    async fn pod_netns(&self, pod_id: &str) -> PluginResult<Option<PathBuf>>;
}
