//! Blocking client of one shim socket: one connection per request. berthd calls it from `spawn_blocking`.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, connect, setsockopt, socket, sockopt};
use nix::sys::time::TimeVal;

use crate::protocol::{Reply, Request, recv_message, send_message};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("shim socket {path}: {source}")]
    Connect { path: PathBuf, source: nix::Error },
    #[error("shim socket {path}: {source}")]
    Io { path: PathBuf, source: nix::Error },
    #[error("shim socket {path}: connection closed without a reply")]
    Closed { path: PathBuf },
    #[error("shim socket {path}: bad reply: {source}")]
    Decode { path: PathBuf, source: serde_json::Error },
}

impl ClientError {
    /// The shim is not there (no socket, or nobody listening): it exited or was never started.
    pub fn is_gone(&self) -> bool {
        matches!(
            self,
            ClientError::Connect {
                source: nix::errno::Errno::ENOENT | nix::errno::Errno::ECONNREFUSED,
                ..
            }
        )
    }
}

/// Sends `request` to the shim at `socket` and returns its reply and the fds that came with it. `timeout`
/// bounds the wait for the reply.
pub fn call(socket_path: &Path, request: &Request, timeout: Duration) -> Result<(Reply, Vec<OwnedFd>), ClientError> {
    let io = |source| ClientError::Io {
        path: socket_path.to_path_buf(),
        source,
    };
    let sock = socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).map_err(io)?;
    // A missing pod directory (long paths are reached through it) means no shim, like a missing socket.
    let (addr, _dir) = crate::protocol::socket_addr(socket_path).map_err(|source| ClientError::Connect {
        path: socket_path.to_path_buf(),
        source,
    })?;
    connect(sock.as_raw_fd(), &addr).map_err(|source| ClientError::Connect {
        path: socket_path.to_path_buf(),
        source,
    })?;
    let timeout = TimeVal::new(timeout.as_secs() as i64, timeout.subsec_micros() as i64);
    setsockopt(&sock, sockopt::ReceiveTimeout, &timeout).map_err(io)?;
    let bytes = serde_json::to_vec(request).map_err(|source| ClientError::Decode {
        path: socket_path.to_path_buf(),
        source,
    })?;
    send_message(sock.as_fd(), &bytes, &[]).map_err(io)?;
    let mut buf = Vec::new();
    let fds = recv_message(sock.as_fd(), &mut buf).map_err(io)?;
    if buf.is_empty() {
        return Err(ClientError::Closed {
            path: socket_path.to_path_buf(),
        });
    }
    let reply = serde_json::from_slice(&buf).map_err(|source| ClientError::Decode {
        path: socket_path.to_path_buf(),
        source,
    })?;
    Ok((reply, fds))
}
