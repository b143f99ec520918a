//! A SPDY/3.1 connection multiplexing streams, for Kubernetes' streaming protocols.
//!
//! Vocabulary:
//! - the **session** owns the connection: one task reads frames, one writes them;
//! - a **stream** is opened by one side with SYN_STREAM and accepted with SYN_REPLY (or refused with
//!   RST_STREAM); each side half-closes its direction with a FIN flag; RST_STREAM kills both directions;
//! - the client opens odd-numbered streams, the server even-numbered ones.
//!
//! Like moby/spdystream (the Go side of kubelet and client-go), flow control is not implemented: WINDOW_UPDATE
//! and SETTINGS are read and ignored, and a slow stream reader applies back-pressure to the whole connection.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::frame::{Frame, FrameDecoder, FrameEncoder, Headers, goaway, rst};

/// Largest DATA payload we send; Go reads any size, this keeps latency fair between streams.
const MAX_DATA_CHUNK: usize = 32 * 1024;
/// Received DATA frames buffered per stream before the reader waits for the stream's consumer.
const STREAM_BUFFER: usize = 16;
const INCOMING_BUFFER: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

#[derive(Clone, Copy, Debug)]
pub struct SessionConfig {
    /// Close the connection after this long without any frame in either direction.
    pub idle_timeout: Option<Duration>,
    /// After we shut our side down, how long to keep reading (and discarding) until the peer closes too;
    /// closing a socket with unread data makes the kernel send RST, which can destroy our last frames.
    pub linger: Duration,
    /// How long [`Session::open`] waits for the peer's SYN_REPLY.
    pub open_timeout: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            idle_timeout: None,
            linger: Duration::from_secs(5),
            open_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("SPDY connection closed")]
    Closed,
    #[error("stream {stream_id} reset by peer (status {status})")]
    Reset { stream_id: u32, status: u32 },
    #[error("timed out waiting for the reply to stream {0}")]
    Timeout(u32),
    #[error("no stream ids left")]
    IdsExhausted,
}

enum Command {
    Frame(Frame),
    /// Flush, shut the write side down and stop.
    Shutdown,
}

struct Entry {
    /// `None` once the peer half-closed.
    data: Option<mpsc::Sender<Bytes>>,
    /// For streams we opened, until the SYN_REPLY (Ok) or RST_STREAM (Err(status)).
    reply: Option<oneshot::Sender<Result<(), u32>>>,
    reset: Arc<AtomicBool>,
    /// We half-closed (or dropped our writer).
    local_done: bool,
}

struct State {
    streams: HashMap<u32, Entry>,
    next_id: u32,
    /// Highest stream id the peer opened.
    last_peer_id: u32,
    going_away: bool,
}

struct Shared {
    role: Role,
    config: SessionConfig,
    out: mpsc::Sender<Command>,
    state: Mutex<State>,
    /// True once the reader stopped: the peer is gone (or broke the protocol).
    closed: watch::Sender<bool>,
    /// True once we sent our shutdown.
    shut: watch::Sender<bool>,
    epoch: Instant,
    /// Milliseconds since `epoch` of the last frame read or written.
    activity: AtomicU64,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn touch(&self) {
        self.activity
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn is_peer_id(&self, id: u32) -> bool {
        // Clients open odd ids.
        (id % 2 == 1) == (self.role == Role::Server)
    }

    async fn send(&self, frame: Frame) -> Result<(), SessionError> {
        self.out
            .send(Command::Frame(frame))
            .await
            .map_err(|_| SessionError::Closed)
    }

    /// Our side of `stream_id` is done; forget the stream once the peer's side is too.
    fn local_done(&self, stream_id: u32) {
        let mut state = self.state();
        if let Some(entry) = state.streams.get_mut(&stream_id) {
            entry.local_done = true;
            if entry.data.is_none() && entry.reply.is_none() {
                state.streams.remove(&stream_id);
            }
        }
    }

    /// The reader stopped: every stream ends.
    fn finish(&self) {
        let mut state = self.state();
        state.going_away = true;
        for (_, entry) in state.streams.drain() {
            if let Some(reply) = entry.reply {
                let _ = reply.send(Err(rst::CANCEL));
            }
        }
        drop(state);
        self.closed.send_replace(true);
    }
}

/// One SPDY connection.
pub struct Session {
    handle: SessionHandle,
    incoming: mpsc::Receiver<IncomingStream>,
}

/// A cloneable handle on a session: opens streams, closes the connection.
#[derive(Clone)]
pub struct SessionHandle {
    shared: Arc<Shared>,
}

impl Session {
    /// Starts the reader and writer tasks on `io` (an upgraded HTTP connection). Needs a tokio runtime.
    pub fn new<T>(io: T, role: Role, config: SessionConfig) -> Session
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::channel(64);
        let (incoming_tx, incoming_rx) = mpsc::channel(INCOMING_BUFFER);
        let shared = Arc::new(Shared {
            role,
            config,
            out: out_tx,
            state: Mutex::new(State {
                streams: HashMap::new(),
                next_id: if role == Role::Client { 1 } else { 2 },
                last_peer_id: 0,
                going_away: false,
            }),
            closed: watch::channel(false).0,
            shut: watch::channel(false).0,
            epoch: Instant::now(),
            activity: AtomicU64::new(0),
        });
        tokio::spawn(write_loop(wr, out_rx, shared.clone()));
        tokio::spawn(read_loop(rd, shared.clone(), incoming_tx));
        Session {
            handle: SessionHandle { shared },
            incoming: incoming_rx,
        }
    }

    /// The next stream the peer opened; `None` once the connection is gone or no longer accepts streams.
    pub async fn accept(&mut self) -> Option<IncomingStream> {
        self.incoming.recv().await
    }

    /// Refuses every stream the peer opens from now on (RST_STREAM REFUSED_STREAM).
    pub fn stop_accepting(&mut self) {
        self.incoming.close();
    }

    pub fn handle(&self) -> SessionHandle {
        self.handle.clone()
    }
}

/// Dropping the session ends the connection like [`SessionHandle::close`] without the GOAWAY: queued frames
/// are flushed, our side shut down, and the peer's remaining bytes drained for the linger time.
impl Drop for Session {
    fn drop(&mut self) {
        self.incoming.close();
        let out = self.handle.shared.out.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = out.send(Command::Shutdown).await;
            });
        }
    }
}

impl std::ops::Deref for Session {
    type Target = SessionHandle;

    fn deref(&self) -> &SessionHandle {
        &self.handle
    }
}

impl SessionHandle {
    /// Opens a stream and waits for the peer's SYN_REPLY.
    pub async fn open(&self, headers: Headers) -> Result<(StreamReader, StreamWriter), SessionError> {
        let shared = &self.shared;
        let (reply_tx, reply_rx) = oneshot::channel();
        let (data_tx, data_rx) = mpsc::channel(STREAM_BUFFER);
        let reset = Arc::new(AtomicBool::new(false));
        let stream_id = {
            let mut state = shared.state();
            if state.going_away {
                return Err(SessionError::Closed);
            }
            let id = state.next_id;
            if id > 0x7fff_ffff {
                return Err(SessionError::IdsExhausted);
            }
            state.next_id += 2;
            state.streams.insert(
                id,
                Entry {
                    data: Some(data_tx),
                    reply: Some(reply_tx),
                    reset: reset.clone(),
                    local_done: false,
                },
            );
            id
        };
        shared
            .send(Frame::SynStream {
                stream_id,
                associated_to: 0,
                priority: 0,
                slot: 0,
                fin: false,
                unidirectional: false,
                headers,
            })
            .await?;
        match tokio::time::timeout(shared.config.open_timeout, reply_rx).await {
            Ok(Ok(Ok(()))) => Ok((
                StreamReader { rx: data_rx },
                StreamWriter::new(stream_id, shared.clone(), reset),
            )),
            Ok(Ok(Err(status))) => Err(SessionError::Reset { stream_id, status }),
            Ok(Err(_)) => Err(SessionError::Closed),
            Err(_) => {
                shared.state().streams.remove(&stream_id);
                Err(SessionError::Timeout(stream_id))
            }
        }
    }

    /// Says goodbye (GOAWAY), flushes and shuts our side of the connection down; the reader keeps
    /// draining until the peer closes or the linger time passes.
    pub async fn close(&self) {
        let last_good_stream_id = {
            let mut state = self.shared.state();
            state.going_away = true;
            state.last_peer_id
        };
        let _ = self
            .shared
            .send(Frame::GoAway {
                last_good_stream_id,
                status: goaway::OK,
            })
            .await;
        let _ = self.shared.out.send(Command::Shutdown).await;
    }

    /// Resolves once the peer is gone (its side closed, a protocol error, or the idle timeout).
    pub async fn closed(&self) {
        let mut rx = self.shared.closed.subscribe();
        let _ = rx.wait_for(|closed| *closed).await;
    }

    pub fn is_closed(&self) -> bool {
        *self.shared.closed.borrow()
    }
}

/// A stream the peer opened, not yet answered; dropping it unanswered refuses it.
pub struct IncomingStream {
    stream_id: u32,
    headers: Headers,
    reader: Option<StreamReader>,
    reset: Arc<AtomicBool>,
    shared: Arc<Shared>,
}

impl IncomingStream {
    pub fn id(&self) -> u32 {
        self.stream_id
    }

    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// Sends the SYN_REPLY.
    pub async fn accept(mut self) -> Result<(StreamReader, StreamWriter), SessionError> {
        let reader = self.reader.take().expect("an unanswered stream has its reader");
        self.shared
            .send(Frame::SynReply {
                stream_id: self.stream_id,
                fin: false,
                headers: Headers::new(),
            })
            .await?;
        Ok((
            reader,
            StreamWriter::new(self.stream_id, self.shared.clone(), self.reset.clone()),
        ))
    }

    /// Refuses the stream with RST_STREAM (CANCEL, as Go's server does).
    pub async fn reject(mut self) {
        self.reader = None;
        self.shared.state().streams.remove(&self.stream_id);
        let _ = self
            .shared
            .send(Frame::RstStream {
                stream_id: self.stream_id,
                status: rst::CANCEL,
            })
            .await;
    }
}

impl Drop for IncomingStream {
    fn drop(&mut self) {
        if self.reader.take().is_some() {
            self.shared.state().streams.remove(&self.stream_id);
            let _ = self.shared.out.try_send(Command::Frame(Frame::RstStream {
                stream_id: self.stream_id,
                status: rst::REFUSED_STREAM,
            }));
        }
    }
}

/// The receiving half of a stream: DATA payloads in order, `None` after the peer's FIN or RST.
pub struct StreamReader {
    rx: mpsc::Receiver<Bytes>,
}

impl StreamReader {
    pub async fn read(&mut self) -> Option<Bytes> {
        self.rx.recv().await
    }

    pub fn into_receiver(self) -> mpsc::Receiver<Bytes> {
        self.rx
    }
}

/// The sending half of a stream.
pub struct StreamWriter {
    stream_id: u32,
    shared: Arc<Shared>,
    reset: Arc<AtomicBool>,
    finished: bool,
}

impl StreamWriter {
    fn new(stream_id: u32, shared: Arc<Shared>, reset: Arc<AtomicBool>) -> Self {
        StreamWriter {
            stream_id,
            shared,
            reset,
            finished: false,
        }
    }

    pub fn id(&self) -> u32 {
        self.stream_id
    }

    fn check(&self) -> io::Result<()> {
        if self.finished || self.reset.load(Ordering::Relaxed) || *self.shared.closed.borrow() {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        Ok(())
    }

    /// Sends `data` in DATA frames.
    pub async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        for chunk in data.chunks(MAX_DATA_CHUNK) {
            self.check()?;
            self.shared
                .send(Frame::Data {
                    stream_id: self.stream_id,
                    fin: false,
                    data: Bytes::copy_from_slice(chunk),
                })
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        }
        Ok(())
    }

    /// Half-closes our direction (empty DATA frame with FIN). Idempotent.
    pub async fn close(&mut self) -> io::Result<()> {
        if self.finished {
            return Ok(());
        }
        self.check()?;
        self.finished = true;
        let sent = self
            .shared
            .send(Frame::Data {
                stream_id: self.stream_id,
                fin: true,
                data: Bytes::new(),
            })
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe));
        self.shared.local_done(self.stream_id);
        sent
    }

    /// Kills both directions of the stream.
    pub async fn reset(&mut self, status: u32) {
        if self.reset.swap(true, Ordering::Relaxed) {
            return;
        }
        self.finished = true;
        self.shared.state().streams.remove(&self.stream_id);
        let _ = self
            .shared
            .send(Frame::RstStream {
                stream_id: self.stream_id,
                status,
            })
            .await;
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        self.shared.local_done(self.stream_id);
    }
}

async fn write_loop<W: AsyncWrite>(wr: W, mut rx: mpsc::Receiver<Command>, shared: Arc<Shared>) {
    tokio::pin!(wr);
    let mut encoder = FrameEncoder::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut shutdown = false;
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        // Batch whatever is queued into one write.
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Frame(frame) => {
                    if let Err(e) = encoder.encode(&frame, &mut buf) {
                        tracing::warn!(error = %e, "dropping unencodable SPDY frame");
                    }
                }
                Command::Shutdown => {
                    shutdown = true;
                    break;
                }
            }
            if buf.len() < 64 * 1024 {
                next = rx.try_recv().ok();
            }
        }
        if !buf.is_empty() {
            if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
                break;
            }
            buf.clear();
            shared.touch();
        }
        if shutdown {
            break;
        }
    }
    let _ = wr.shutdown().await;
    shared.shut.send_replace(true);
}

async fn read_loop<R: AsyncRead>(rd: R, shared: Arc<Shared>, incoming: mpsc::Sender<IncomingStream>) {
    tokio::pin!(rd);
    let mut decoder = FrameDecoder::new();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut shut = shared.shut.subscribe();
    let mut linger_until: Option<Instant> = None;
    'conn: loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    shared.touch();
                    if !handle_frame(&shared, &incoming, frame).await {
                        break 'conn;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "SPDY protocol error, closing the connection");
                    let last_good_stream_id = shared.state().last_peer_id;
                    let _ = shared
                        .send(Frame::GoAway {
                            last_good_stream_id,
                            status: goaway::PROTOCOL_ERROR,
                        })
                        .await;
                    let _ = shared.out.send(Command::Shutdown).await;
                    break 'conn;
                }
            }
        }
        buf.reserve(decoder.missing(&buf).max(8 * 1024));
        let idle_deadline = shared
            .config
            .idle_timeout
            .map(|idle| shared.epoch + Duration::from_millis(shared.activity.load(Ordering::Relaxed)) + idle);
        let deadline = match (idle_deadline, linger_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            read = rd.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
            _ = async { let _ = shut.wait_for(|s| *s).await; }, if linger_until.is_none() => {
                linger_until = Some(Instant::now() + shared.config.linger);
            }
            _ = sleep_until_opt(deadline) => {
                if linger_until.is_some_and(|t| Instant::now() >= t) {
                    break;
                }
                let idle = shared.config.idle_timeout.unwrap_or(Duration::MAX);
                let last = shared.epoch + Duration::from_millis(shared.activity.load(Ordering::Relaxed));
                if Instant::now().saturating_duration_since(last) >= idle {
                    tracing::debug!("SPDY connection idle, closing");
                    let _ = shared.out.send(Command::Shutdown).await;
                    break;
                }
            }
        }
    }
    shared.finish();
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Applies one frame; false when the connection must stop being read.
async fn handle_frame(shared: &Arc<Shared>, incoming: &mpsc::Sender<IncomingStream>, frame: Frame) -> bool {
    match frame {
        Frame::SynStream {
            stream_id,
            fin,
            headers,
            ..
        } => return on_syn_stream(shared, incoming, stream_id, fin, headers).await,
        Frame::SynReply { stream_id, fin, .. } => {
            let mut state = shared.state();
            if let Some(entry) = state.streams.get_mut(&stream_id) {
                if let Some(reply) = entry.reply.take() {
                    let _ = reply.send(Ok(()));
                }
                if fin {
                    entry.data = None;
                }
            }
        }
        Frame::Data { stream_id, fin, data } => {
            let sender = shared.state().streams.get(&stream_id).and_then(|e| e.data.clone());
            let mut gone = false;
            if let Some(sender) = sender
                && !data.is_empty()
            {
                // Back-pressure: wait for the stream's consumer.
                gone = sender.send(data).await.is_err();
            }
            if fin || gone {
                let mut state = shared.state();
                if let Some(entry) = state.streams.get_mut(&stream_id) {
                    entry.data = None;
                    if fin && entry.local_done && entry.reply.is_none() {
                        state.streams.remove(&stream_id);
                    }
                }
            }
        }
        Frame::RstStream { stream_id, status } => {
            if let Some(entry) = shared.state().streams.remove(&stream_id) {
                entry.reset.store(true, Ordering::Relaxed);
                if let Some(reply) = entry.reply {
                    let _ = reply.send(Err(status));
                }
            }
        }
        Frame::Ping { id } => {
            if shared.is_peer_id(id) {
                let _ = shared.send(Frame::Ping { id }).await;
            }
        }
        Frame::GoAway { .. } => {
            // As spdystream: the peer is done; nothing more is read.
            return false;
        }
        Frame::Settings { .. } | Frame::WindowUpdate { .. } | Frame::Headers { .. } => {}
    }
    true
}

async fn on_syn_stream(
    shared: &Arc<Shared>,
    incoming: &mpsc::Sender<IncomingStream>,
    stream_id: u32,
    fin: bool,
    headers: Headers,
) -> bool {
    let (data_tx, data_rx) = mpsc::channel(STREAM_BUFFER);
    let reset = Arc::new(AtomicBool::new(false));
    let refused = {
        let mut state = shared.state();
        if !shared.is_peer_id(stream_id) || stream_id <= state.last_peer_id {
            Some(rst::PROTOCOL_ERROR)
        } else if state.going_away {
            state.last_peer_id = stream_id;
            Some(rst::REFUSED_STREAM)
        } else {
            state.last_peer_id = stream_id;
            state.streams.insert(
                stream_id,
                Entry {
                    data: (!fin).then_some(data_tx),
                    reply: None,
                    reset: reset.clone(),
                    local_done: false,
                },
            );
            None
        }
    };
    if let Some(status) = refused {
        let _ = shared.send(Frame::RstStream { stream_id, status }).await;
        return true;
    }
    let stream = IncomingStream {
        stream_id,
        headers,
        reader: Some(StreamReader { rx: data_rx }),
        reset,
        shared: shared.clone(),
    };
    // Not accepting any more: the returned stream is dropped, which refuses it.
    let _ = incoming.send(stream).await;
    true
}
