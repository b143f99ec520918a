//! Moving bytes between a process's host-side descriptors (pipes or a pty master) and the client's streams,
//! and applying the client's terminal resizes.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, watch};

use crate::backend::{StreamBackend, TerminalSize};
use crate::stream::OutStream;

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(fd.as_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Copies a process's output to `out` until EOF (EIO on a pty master whose slave is closed), the client
/// goes away, or, once `exited` turns true, the output stays silent for `drain_idle` (a background child
/// may hold the pipe open forever); a zero `drain_idle` stops at once. Half-closes `out` at the end.
pub(crate) async fn copy_output(
    fd: OwnedFd,
    mut out: Box<dyn OutStream>,
    mut exited: watch::Receiver<bool>,
    drain_idle: Duration,
) {
    let result = async {
        set_nonblocking(&fd)?;
        let mut rx = pipe::Receiver::from_owned_fd_unchecked(fd)?;
        let mut buf = vec![0u8; 32 * 1024];
        let mut is_exited = false;
        loop {
            let read = if is_exited {
                match tokio::time::timeout(drain_idle, rx.read(&mut buf)).await {
                    Ok(read) => read,
                    Err(_) => return Ok(()),
                }
            } else {
                tokio::select! {
                    read = rx.read(&mut buf) => read,
                    _ = async { let _ = exited.wait_for(|e| *e).await; } => {
                        if drain_idle.is_zero() {
                            return Ok(());
                        }
                        is_exited = true;
                        continue;
                    }
                }
            };
            match read {
                Ok(0) => return Ok(()),
                Ok(n) => out.write(&buf[..n]).await?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A pty master reads EIO once the last slave descriptor is closed.
                Err(e) if e.raw_os_error() == Some(nix::libc::EIO) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "output copy ended");
    }
    let _ = out.close().await;
}

/// Copies the client's stdin into the process until the client half-closes; then closes our descriptor.
pub(crate) async fn copy_input(mut rx: mpsc::Receiver<Bytes>, fd: OwnedFd) {
    let result = async {
        set_nonblocking(&fd)?;
        let mut tx = pipe::Sender::from_owned_fd_unchecked(fd)?;
        while let Some(chunk) = rx.recv().await {
            tx.write_all(&chunk).await?;
        }
        io::Result::Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "stdin copy ended");
    }
}

/// Parses the resize stream (concatenated JSON objects, possibly split anywhere) and applies each size.
pub(crate) async fn apply_resizes(
    mut rx: mpsc::Receiver<Bytes>,
    backend: Arc<dyn StreamBackend>,
    container_id: String,
    session: String,
) {
    let mut pending = Vec::new();
    while let Some(chunk) = rx.recv().await {
        pending.extend_from_slice(&chunk);
        let Some(sizes) = take_sizes(&mut pending) else {
            tracing::debug!(container = %container_id, "malformed resize stream, ignoring further resizes");
            return;
        };
        for size in sizes {
            if let Err(e) = backend.resize(&container_id, &session, size).await {
                tracing::debug!(container = %container_id, error = %e, "resize failed");
            }
        }
    }
}

/// The complete sizes at the front of `pending` (removed from it); `None` on malformed input.
fn take_sizes(pending: &mut Vec<u8>) -> Option<Vec<TerminalSize>> {
    let mut sizes = Vec::new();
    let mut iter = serde_json::Deserializer::from_slice(pending).into_iter::<TerminalSize>();
    let mut consumed = 0;
    loop {
        match iter.next() {
            Some(Ok(size)) => {
                sizes.push(size);
                consumed = iter.byte_offset();
            }
            Some(Err(e)) if e.is_eof() => break,
            Some(Err(_)) => return None,
            None => {
                consumed = iter.byte_offset();
                break;
            }
        }
    }
    pending.drain(..consumed);
    Some(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_stream_is_parsed_across_chunk_boundaries() {
        let mut pending = br#"{"Width":80,"Height":24}{"Width":1"#.to_vec();
        assert_eq!(
            take_sizes(&mut pending),
            Some(vec![TerminalSize { width: 80, height: 24 }])
        );
        assert_eq!(pending, br#"{"Width":1"#);
        pending.extend_from_slice(br#"00,"Height":30} "#);
        assert_eq!(
            take_sizes(&mut pending),
            Some(vec![TerminalSize { width: 100, height: 30 }])
        );
        assert!(pending.is_empty());
        pending.extend_from_slice(b"nonsense");
        assert_eq!(take_sizes(&mut pending), None);
    }
}
