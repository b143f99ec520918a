//! Exec, Attach and PortForward: the RPCs check the container (or pod) and hand out a single-use URL of the
//! streaming server, whose sessions run through the isolation plugin.

use std::path::PathBuf;

use async_trait::async_trait;
use berth_core::Lifecycle;
use berth_core::model::{Container, ContainerState, PodState};
use berth_core::plugin::PluginResult;
use berth_core::plugin::isolation::{ExecSpec, ExitStatus, ProcessIo};
use berth_streaming::{RequestError, StreamBackend, StreamingServer, TerminalSize};

use crate::api::{AttachRequest, AttachResponse, ExecRequest, ExecResponse, PortForwardRequest, PortForwardResponse};
use crate::error::{CriError, CriResult};

/// The streaming server's view of berth: the isolation plugin for processes, the store for pod namespaces.
pub struct Backend(pub Lifecycle);

#[async_trait]
impl StreamBackend for Backend {
    async fn exec(&self, container_id: &str, spec: &ExecSpec) -> PluginResult<ProcessIo> {
        self.0.plugins().isolation.exec(container_id, spec).await
    }

    async fn wait_exec(&self, container_id: &str, session: &str) -> PluginResult<ExitStatus> {
        self.0.plugins().isolation.wait_exec(container_id, session).await
    }

    async fn kill_exec(&self, container_id: &str, session: &str) -> PluginResult<()> {
        self.0
            .plugins()
            .isolation
            .kill_exec(container_id, session, nix::libc::SIGKILL)
            .await
    }

    async fn attach(&self, container_id: &str, stdin: bool, stdout: bool, stderr: bool) -> PluginResult<ProcessIo> {
        self.0
            .plugins()
            .isolation
            .attach(container_id, stdin, stdout, stderr)
            .await
    }

    async fn resize(&self, container_id: &str, session: &str, size: TerminalSize) -> PluginResult<()> {
        self.0
            .plugins()
            .isolation
            .resize(container_id, session, size.width, size.height)
            .await
    }

    async fn pod_netns(&self, pod_id: &str) -> PluginResult<Option<PathBuf>> {
        match self.0.get_pod(pod_id) {
            Ok(p) => Ok(p.runtime.namespaces.net.clone()),
            Err(e) => Err(berth_core::plugin::PluginError::NotFound(e.to_string())),
        }
    }
}

fn url_error(e: RequestError) -> CriError {
    match e {
        RequestError::TooManyPending(_) => CriError::ResourceExhausted(e.to_string()),
        other => CriError::InvalidArgument(other.to_string()),
    }
}

fn running_container(lifecycle: &Lifecycle, id: &str) -> CriResult<Container> {
    let c = lifecycle.find_container(id)?;
    if c.state != ContainerState::Running {
        return Err(CriError::FailedPrecondition(format!(
            "container {} is not running",
            c.id
        )));
    }
    Ok(c)
}

pub fn exec(lifecycle: &Lifecycle, server: &StreamingServer, req: ExecRequest) -> CriResult<ExecResponse> {
    let id = running_container(lifecycle, &req.container_id)?.id;
    let url = server
        .exec_url(berth_streaming::ExecRequest {
            container_id: id,
            cmd: req.cmd,
            tty: req.tty,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
        })
        .map_err(url_error)?;
    Ok(ExecResponse { url })
}

pub fn attach(lifecycle: &Lifecycle, server: &StreamingServer, req: AttachRequest) -> CriResult<AttachResponse> {
    let c = running_container(lifecycle, &req.container_id)?;
    // The isolation plugin closes a stdin_once container's stdin when the first attach's stdin ends (not with
    // a tty); the session then follows the output to its end instead of detaching.
    let stdin_once = c.runtime.stdin_once && !c.runtime.tty;
    let url = server
        .attach_url(berth_streaming::AttachRequest {
            container_id: c.id,
            tty: req.tty,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
            stdin_once,
        })
        .map_err(url_error)?;
    Ok(AttachResponse { url })
}

pub fn port_forward(
    lifecycle: &Lifecycle,
    server: &StreamingServer,
    req: PortForwardRequest,
) -> CriResult<PortForwardResponse> {
    let pod = lifecycle.find_pod(&req.pod_sandbox_id)?;
    if pod.state != PodState::Ready {
        return Err(CriError::FailedPrecondition(format!(
            "pod sandbox {} is not ready",
            pod.id
        )));
    }
    let url = server
        .port_forward_url(berth_streaming::PortForwardRequest {
            pod_id: pod.id,
            ports: req.port,
        })
        .map_err(url_error)?;
    Ok(PortForwardResponse { url })
}
