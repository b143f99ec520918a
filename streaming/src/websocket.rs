//! Kubernetes' channel protocol over WebSocket (`channel.k8s.io` and its versions): every message starts
//! with a channel number (an ASCII digit in the base64 variants, whose payload is base64); in
//! `v5.channel.k8s.io` a message `[255, n]` from the client half-closes channel `n`.
//!
//! Also [`ByteStream`], which tunnels a byte stream in binary messages (`SPDY/3.1+portforward.k8s.io`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::stream::OutStream;

const CLOSE_SIGNAL: u8 = 255;
const MAX_CHUNK: usize = 32 * 1024;
/// How long we wait for the client's Close after sending ours.
const LINGER: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Codec {
    Binary,
    Base64,
}

enum Outbound {
    Data(u8, Bytes),
    Close,
}

/// A WebSocket connection split into channels.
pub(crate) struct ChannelConn {
    readers: Vec<Option<mpsc::Receiver<Bytes>>>,
    out: mpsc::Sender<Outbound>,
    closed: watch::Receiver<bool>,
}

impl ChannelConn {
    /// Starts reading and writing `ws`; channel `i` is readable when `readable[i]`.
    pub(crate) fn open<S>(ws: WebSocketStream<S>, codec: Codec, readable: &[bool], close_signal: bool) -> Self
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sink, stream) = ws.split();
        let mut senders = Vec::new();
        let mut readers = Vec::new();
        for &r in readable {
            if r {
                let (tx, rx) = mpsc::channel(16);
                senders.push(Some(tx));
                readers.push(Some(rx));
            } else {
                senders.push(None);
                readers.push(None);
            }
        }
        let (out_tx, out_rx) = mpsc::channel(64);
        let (closed_tx, closed_rx) = watch::channel(false);
        let (sent_close_tx, sent_close_rx) = watch::channel(false);
        tokio::spawn(write_loop(sink, out_rx, codec, sent_close_tx));
        tokio::spawn(read_loop(
            stream,
            senders,
            codec,
            close_signal,
            closed_tx,
            sent_close_rx,
        ));
        ChannelConn {
            readers,
            out: out_tx,
            closed: closed_rx,
        }
    }

    /// The incoming data of a readable channel (once).
    pub(crate) fn reader(&mut self, channel: u8) -> Option<mpsc::Receiver<Bytes>> {
        self.readers.get_mut(usize::from(channel))?.take()
    }

    pub(crate) fn writer(&self, channel: u8) -> ChannelWriter {
        ChannelWriter {
            channel,
            out: self.out.clone(),
        }
    }

    /// Resolves when the client is gone.
    pub(crate) fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut closed = self.closed.clone();
        async move {
            let _ = closed.wait_for(|c| *c).await;
        }
    }

    /// Sends a normal Close and lets the tasks finish the closing handshake.
    pub(crate) async fn close(self) {
        let _ = self.out.send(Outbound::Close).await;
    }
}

/// Writes one channel.
pub(crate) struct ChannelWriter {
    channel: u8,
    out: mpsc::Sender<Outbound>,
}

#[async_trait::async_trait]
impl OutStream for ChannelWriter {
    async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return self.send(Bytes::new()).await;
        }
        for chunk in data.chunks(MAX_CHUNK) {
            self.send(Bytes::copy_from_slice(chunk)).await?;
        }
        Ok(())
    }

    async fn close(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ChannelWriter {
    async fn send(&self, data: Bytes) -> io::Result<()> {
        self.out
            .send(Outbound::Data(self.channel, data))
            .await
            .map_err(|_| io::ErrorKind::BrokenPipe.into())
    }
}

fn encode(codec: Codec, channel: u8, data: &[u8]) -> Message {
    match codec {
        Codec::Binary => {
            let mut frame = Vec::with_capacity(data.len() + 1);
            frame.push(channel);
            frame.extend_from_slice(data);
            Message::Binary(frame.into())
        }
        Codec::Base64 => {
            let mut text = String::with_capacity(data.len() * 4 / 3 + 4);
            text.push(char::from(b'0' + channel));
            STANDARD.encode_string(data, &mut text);
            Message::text(text)
        }
    }
}

/// Channel and payload of a data message; `None` when it is malformed.
fn decode(codec: Codec, message: &[u8]) -> Option<(u8, Bytes)> {
    let (&first, rest) = message.split_first()?;
    match codec {
        Codec::Binary => Some((first, Bytes::copy_from_slice(rest))),
        Codec::Base64 => Some((first.checked_sub(b'0')?, STANDARD.decode(rest).ok()?.into())),
    }
}

async fn write_loop<S>(mut sink: S, mut rx: mpsc::Receiver<Outbound>, codec: Codec, sent_close: watch::Sender<bool>)
where
    S: Sink<Message> + Unpin,
{
    while let Some(out) = rx.recv().await {
        let message = match out {
            Outbound::Data(channel, data) => encode(codec, channel, &data),
            Outbound::Close => {
                let _ = sink
                    .send(Message::Close(Some(CloseFrame {
                        code: CloseCode::Normal,
                        reason: "".into(),
                    })))
                    .await;
                break;
            }
        };
        if sink.send(message).await.is_err() {
            break;
        }
    }
    sent_close.send_replace(true);
}

async fn read_loop<S>(
    mut stream: S,
    mut senders: Vec<Option<mpsc::Sender<Bytes>>>,
    codec: Codec,
    close_signal: bool,
    closed: watch::Sender<bool>,
    mut sent_close: watch::Receiver<bool>,
) where
    S: Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let mut linger: Option<tokio::time::Instant> = None;
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            _ = async { let _ = sent_close.wait_for(|s| *s).await; }, if linger.is_none() => {
                linger = Some(tokio::time::Instant::now() + LINGER);
                continue;
            }
            _ = async { tokio::time::sleep_until(linger.unwrap_or_else(tokio::time::Instant::now)).await }, if linger.is_some() => break,
        };
        let data: Bytes = match next {
            Some(Ok(Message::Binary(data))) => data,
            Some(Ok(Message::Text(text))) => Bytes::copy_from_slice(text.as_bytes()),
            // Close: tungstenite answers it; keep polling so the answer is flushed, until the stream ends.
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => break,
        };
        if data.is_empty() {
            continue;
        }
        if close_signal && data[0] == CLOSE_SIGNAL {
            match data.get(1) {
                Some(&channel) if data.len() == 2 => {
                    if let Some(slot) = senders.get_mut(usize::from(channel)) {
                        *slot = None;
                    }
                    continue;
                }
                _ => break,
            }
        }
        let Some((channel, payload)) = decode(codec, &data) else {
            continue;
        };
        let Some(slot) = senders.get_mut(usize::from(channel)) else {
            continue;
        };
        if let Some(tx) = slot
            && tx.send(payload).await.is_err()
        {
            *slot = None;
        }
    }
    drop(senders);
    closed.send_replace(true);
}

/// A byte stream carried in binary WebSocket messages (client-go's SPDY-over-WebSocket tunnel).
pub(crate) struct ByteStream<S> {
    ws: WebSocketStream<S>,
    pending: Bytes,
}

impl<S> ByteStream<S> {
    pub(crate) fn new(ws: WebSocketStream<S>) -> Self {
        ByteStream {
            ws,
            pending: Bytes::new(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ByteStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        while self.pending.is_empty() {
            match ready!(self.ws.poll_next_unpin(cx)) {
                Some(Ok(Message::Binary(data))) => self.pending = data,
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            }
        }
        let n = self.pending.len().min(buf.remaining());
        let chunk = self.pending.split_to(n);
        buf.put_slice(&chunk);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ByteStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.ws.poll_ready_unpin(cx)).map_err(io::Error::other)?;
        self.ws
            .start_send_unpin(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(io::Error::other)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.ws.poll_flush_unpin(cx).map_err(io::Error::other)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.ws.poll_close_unpin(cx).map_err(io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_base64_framing() {
        assert_eq!(
            encode(Codec::Binary, 1, b"hi"),
            Message::Binary(Bytes::from_static(&[1, b'h', b'i']))
        );
        assert_eq!(encode(Codec::Base64, 3, b"hi"), Message::text("3aGk="));
        assert_eq!(decode(Codec::Binary, &[0, b'x']), Some((0, Bytes::from_static(b"x"))));
        assert_eq!(decode(Codec::Base64, b"0aGk="), Some((0, Bytes::from_static(b"hi"))));
        assert_eq!(decode(Codec::Base64, b"0!!"), None);
        assert_eq!(decode(Codec::Binary, &[]), None);
    }
}
