//! Exec and attach sessions (Kubernetes' "remotecommand"): gathering the client's streams from SPDY or
//! WebSocket, then piping them to the process and reporting how it ended on the error stream.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use berth_core::plugin::isolation::{ExecSpec, ProcessIo};
use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::backend::StreamBackend;
use crate::process_io::{apply_resizes, copy_input, copy_output};
use crate::request::{AttachRequest, ExecRequest};
use crate::spdy::Session;
use crate::status::{Outcome, StatusFormat};
use crate::stream::OutStream;
use crate::websocket::ChannelConn;

/// After the process exited, output is copied until it has been silent this long.
const DRAIN_IDLE: Duration = Duration::from_secs(2);

/// SPDY subprotocols (`X-Stream-Protocol-Version`), most preferred first; the kubelet's list minus v1.
/// client-go also offers v5 over SPDY, which it treats as v4: like the kubelet we answer v4.
pub(crate) const SPDY_PROTOCOLS: &[&str] = &["v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io"];

/// WebSocket subprotocols; "" is a client that asked for none.
pub(crate) const WS_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
    "",
];

const CHANNEL_STDIN: u8 = 0;
const CHANNEL_STDOUT: u8 = 1;
const CHANNEL_STDERR: u8 = 2;
const CHANNEL_ERROR: u8 = 3;
const CHANNEL_RESIZE: u8 = 4;

/// What the client asked for, from the cached request.
#[derive(Clone, Debug)]
pub(crate) enum Command {
    Exec(ExecRequest),
    Attach(AttachRequest),
}

impl Command {
    fn container_id(&self) -> &str {
        match self {
            Command::Exec(r) => &r.container_id,
            Command::Attach(r) => &r.container_id,
        }
    }

    /// (tty, stdin, stdout, stderr)
    fn flags(&self) -> (bool, bool, bool, bool) {
        match self {
            Command::Exec(r) => (r.tty, r.stdin, r.stdout, r.stderr),
            Command::Attach(r) => (r.tty, r.stdin, r.stdout, r.stderr),
        }
    }
}

/// The client's streams, whatever the transport.
#[derive(Default)]
pub(crate) struct Streams {
    pub(crate) stdin: Option<mpsc::Receiver<Bytes>>,
    pub(crate) stdout: Option<Box<dyn OutStream>>,
    pub(crate) stderr: Option<Box<dyn OutStream>>,
    pub(crate) error: Option<Box<dyn OutStream>>,
    pub(crate) resize: Option<mpsc::Receiver<Bytes>>,
    pub(crate) format: Option<StatusFormat>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamsError {
    #[error("timed out waiting for client to create streams")]
    Timeout,
    #[error("connection closed before all streams were created")]
    Closed,
}

/// Accepts the SPDY streams the client creates (error, stdin, stdout, stderr, resize, by their `streamType`
/// header) until as many as the request implies have arrived, like the kubelet.
pub(crate) async fn spdy_streams(
    session: &mut Session,
    protocol: &str,
    command: &Command,
    timeout: Duration,
) -> Result<Streams, StreamsError> {
    let (tty, stdin, stdout, stderr) = command.flags();
    let resizable = protocol != "v2.channel.k8s.io";
    let expected = 1 + usize::from(stdin) + usize::from(stdout) + usize::from(stderr) + usize::from(tty && resizable);
    let mut streams = Streams {
        format: Some(if protocol == "v4.channel.k8s.io" {
            StatusFormat::Json
        } else {
            StatusFormat::Text
        }),
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let mut received = 0;
    while received < expected {
        let incoming = tokio::time::timeout_at(deadline, session.accept())
            .await
            .map_err(|_| StreamsError::Timeout)?
            .ok_or(StreamsError::Closed)?;
        let kind = incoming.headers().get("streamType").unwrap_or("").to_owned();
        let (reader, writer) = incoming.accept().await.map_err(|_| StreamsError::Closed)?;
        let writer: Box<dyn OutStream> = Box::new(writer);
        match kind.as_str() {
            "error" => streams.error = Some(writer),
            "stdin" => streams.stdin = Some(reader.into_receiver()),
            "stdout" => streams.stdout = Some(writer),
            "stderr" => streams.stderr = Some(writer),
            "resize" => streams.resize = Some(reader.into_receiver()),
            other => {
                tracing::debug!(stream_type = other, "ignoring unexpected stream");
                continue;
            }
        }
        received += 1;
    }
    session.stop_accepting();
    Ok(streams)
}

/// Maps the WebSocket channels to streams; announces readiness with an empty message on the lowest
/// writable channel, as the kubelet does.
pub(crate) async fn websocket_streams(conn: &mut ChannelConn, protocol: &str, command: &Command) -> Streams {
    let (tty, stdin, stdout, stderr) = command.flags();
    let json = matches!(
        protocol,
        "v5.channel.k8s.io" | "v4.channel.k8s.io" | "v4.base64.channel.k8s.io"
    );
    let mut streams = Streams {
        stdin: if stdin { conn.reader(CHANNEL_STDIN) } else { None },
        stdout: stdout.then(|| Box::new(conn.writer(CHANNEL_STDOUT)) as Box<dyn OutStream>),
        stderr: stderr.then(|| Box::new(conn.writer(CHANNEL_STDERR)) as Box<dyn OutStream>),
        error: Some(Box::new(conn.writer(CHANNEL_ERROR))),
        resize: if tty { conn.reader(CHANNEL_RESIZE) } else { None },
        format: Some(if json { StatusFormat::Json } else { StatusFormat::Text }),
    };
    let first = if stdout {
        streams.stdout.as_mut()
    } else if stderr {
        streams.stderr.as_mut()
    } else {
        streams.error.as_mut()
    };
    if let Some(first) = first {
        let _ = first.write(&[]).await;
    }
    streams
}

/// Which channels of a remotecommand WebSocket the client writes to.
pub(crate) fn websocket_readable(command: &Command) -> [bool; 5] {
    let (tty, stdin, ..) = command.flags();
    [stdin, false, false, false, tty]
}

/// Runs the session to its end and writes the outcome on the error stream. `disconnected` resolves when the
/// client is gone; an exec's process is then killed, as containerd does (an attach leaves the container be).
pub(crate) async fn run(
    backend: Arc<dyn StreamBackend>,
    command: Command,
    mut streams: Streams,
    disconnected: impl Future<Output = ()> + Send,
) {
    let container_id = command.container_id().to_owned();
    let (tty, stdin, stdout, stderr) = command.flags();
    let io = match &command {
        Command::Exec(r) => {
            let spec = ExecSpec {
                args: r.cmd.clone(),
                tty,
                stdin,
                stdout,
                stderr,
            };
            backend
                .exec(&container_id, &spec)
                .await
                .map_err(|e| format!("error executing command in container: {e}"))
        }
        Command::Attach(_) => backend
            .attach(&container_id, stdin, stdout, stderr)
            .await
            .map_err(|e| format!("error attaching to container: {e}")),
    };
    let outcome = match io {
        Err(message) => {
            tracing::info!(container = %container_id, %message, "streaming session failed");
            Some(Outcome::Internal(message))
        }
        Ok(io) => pump(&backend, &command, io, tty, &mut streams, disconnected).await,
    };
    let format = streams.format.unwrap_or(StatusFormat::Json);
    for mut out in [streams.stdout.take(), streams.stderr.take()].into_iter().flatten() {
        let _ = out.close().await;
    }
    if let Some(mut error) = streams.error.take() {
        if let Some(bytes) = outcome.and_then(|o| o.encode(format)) {
            let _ = error.write(&bytes).await;
        }
        let _ = error.close().await;
    }
}

/// Copies everything until the session ends; `None` when the client went away.
async fn pump(
    backend: &Arc<dyn StreamBackend>,
    command: &Command,
    io: ProcessIo,
    tty: bool,
    streams: &mut Streams,
    disconnected: impl Future<Output = ()> + Send,
) -> Option<Outcome> {
    let container_id = command.container_id().to_owned();
    let ProcessIo {
        session,
        stdin: stdin_fd,
        stdout: stdout_fd,
        stderr: stderr_fd,
        ..
    } = io;
    // With a tty, stdin goes to the pty master, which is the stdout descriptor.
    let stdin_fd = stdin_fd.or_else(|| {
        tty.then(|| stdout_fd.as_ref().and_then(|fd| fd.try_clone().ok()))
            .flatten()
    });
    let (exited_tx, exited_rx) = watch::channel(false);
    let mut aux: Vec<JoinHandle<()>> = Vec::new();
    let mut stdin_task = match (streams.stdin.take(), stdin_fd) {
        (Some(rx), Some(fd)) => Some(tokio::spawn(copy_input(rx, fd))),
        _ => None,
    };
    if let Some(rx) = streams.resize.take() {
        aux.push(tokio::spawn(apply_resizes(
            rx,
            backend.clone(),
            container_id.clone(),
            session.clone(),
        )));
    }
    // Awaited by reference, so that a disconnect can still abort them below.
    let mut outputs = Vec::new();
    for (fd, slot) in [(stdout_fd, &mut streams.stdout), (stderr_fd, &mut streams.stderr)] {
        if let Some(fd) = fd
            && let Some(out) = slot.take()
        {
            // An attach's outputs are only told to stop when the client detaches: no draining then.
            let drain_idle = match command {
                Command::Exec(_) => DRAIN_IDLE,
                Command::Attach(_) => Duration::ZERO,
            };
            outputs.push(tokio::spawn(copy_output(fd, out, exited_rx.clone(), drain_idle)));
        }
    }
    let outcome = match command {
        Command::Exec(r) => {
            let finished = async {
                let status = backend.wait_exec(&container_id, &session).await;
                exited_tx.send_replace(true);
                for task in outputs.iter_mut() {
                    let _ = task.await;
                }
                match status {
                    Ok(s) if s.code == 0 => Outcome::Success,
                    Ok(s) => Outcome::ExitCode {
                        code: s.code,
                        cmd: r.cmd.clone(),
                    },
                    Err(e) => Outcome::Internal(format!("error executing command in container: {e}")),
                }
            };
            tokio::select! {
                outcome = finished => Some(outcome),
                _ = disconnected => None,
            }
        }
        Command::Attach(r) => {
            // Attach ends with the container's output, or when the client's stdin ends (it detaches), except
            // with stdin_once: the container's stdin is closed then, and its output runs to the end.
            let detach_on_stdin_end = !r.stdin_once || outputs.is_empty();
            let nothing = outputs.is_empty() && stdin_task.is_none();
            let finished = async {
                let outputs_done = async {
                    if outputs.is_empty() {
                        std::future::pending::<()>().await;
                    }
                    for task in outputs.iter_mut() {
                        let _ = task.await;
                    }
                };
                let stdin_done = async {
                    match stdin_task.as_mut() {
                        Some(task) if detach_on_stdin_end => {
                            let _ = task.await;
                        }
                        _ => std::future::pending::<()>().await,
                    }
                };
                if nothing {
                    return Outcome::Success;
                }
                let detached = tokio::select! {
                    _ = outputs_done => false,
                    _ = stdin_done => true,
                };
                if detached {
                    // The outputs stop at once (attach's drain time is zero) and end their streams cleanly.
                    exited_tx.send_replace(true);
                    for task in outputs.iter_mut() {
                        let _ = task.await;
                    }
                }
                Outcome::Success
            };
            tokio::select! {
                outcome = finished => Some(outcome),
                _ = disconnected => None,
            }
        }
    };
    for task in outputs.iter().chain(&aux).chain(stdin_task.iter()) {
        task.abort();
    }
    if outcome.is_none() && matches!(command, Command::Exec(_)) {
        tracing::info!(container = %container_id, %session, "exec client went away: killing its process");
        if let Err(e) = backend.kill_exec(&container_id, &session).await {
            tracing::debug!(container = %container_id, %session, error = %e, "killing a disconnected exec failed");
        }
    }
    outcome
}
