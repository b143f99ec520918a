//! berth's streaming server: `kubectl exec/attach/port-forward` and `crictl exec/attach/port-forward`.
//!
//! The CRI Exec, Attach and PortForward RPCs validate a request and hand out a single-use URL
//! ([`StreamingServer::exec_url`] and friends); the client then connects to it and speaks one of
//! Kubernetes' streaming protocols:
//! - remotecommand (exec, attach) over SPDY/3.1 (`v4`, `v3`, `v2.channel.k8s.io`) or WebSocket
//!   (`v5`, `v4`, `v4.base64`, `channel.k8s.io`, `base64.channel.k8s.io`);
//! - port-forward over SPDY/3.1 (`portforward.k8s.io`), SPDY tunnelled in WebSocket
//!   (`SPDY/3.1+portforward.k8s.io`, crictl's and kubectl's WebSocket transport) or WebSocket channels
//!   (`v4.channel.k8s.io`, `v4.base64.channel.k8s.io`).
//!
//! The runtime side is a [`StreamBackend`]: processes, their descriptors and pod network namespaces.
//!
//! Wiring it into berthd:
//!
//! ```ignore
//! let streaming = Arc::new(StreamingServer::start(&config.streaming, Arc::new(backend)).await?);
//! // Exec RPC, after checking that the container exists and runs:
//! let url = streaming.exec_url(ExecRequest { container_id, cmd, tty, stdin, stdout, stderr })?;
//! // RequestError::TooManyPending -> RESOURCE_EXHAUSTED, any other RequestError -> INVALID_ARGUMENT.
//! ```

mod backend;
mod netns;
mod portforward;
mod process_io;
mod remotecommand;
mod request;
mod server;
pub mod spdy;
mod status;
mod stream;
mod token;
mod upgrade;
mod websocket;

pub use backend::{StreamBackend, TerminalSize};
pub use request::{AttachRequest, ExecRequest, PortForwardRequest, RequestError};
pub use server::{ServerOptions, StartError, StreamingServer, TlsFiles};
