//! Port-forward sessions: each forwarded connection is a pair of streams (data, error) that the server joins
//! to a new TCP connection to `127.0.0.1:PORT` inside the pod's network namespace.
//!
//! Over SPDY (`portforward.k8s.io`), the client opens a pair per connection, named by `port`, `streamType`
//! and `requestID` headers; a session carries any number of them. Over WebSocket (`v4.channel.k8s.io`), one
//! connection per requested port: channel 2i carries the data of port i, 2i+1 its errors, and the server
//! first writes the port (little-endian u16) on both.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::backend::StreamBackend;
use crate::netns::connect_loopback;
use crate::spdy::{IncomingStream, Session};
use crate::stream::OutStream;
use crate::websocket::ChannelConn;

pub(crate) const SPDY_PROTOCOLS: &[&str] = &["portforward.k8s.io"];
/// WebSocket subprotocols: client-go's SPDY tunnel first (what crictl and kubectl use), then the kubelet's
/// channel protocols.
pub(crate) const WS_PROTOCOLS: &[&str] = &[WS_TUNNEL_PROTOCOL, "v4.channel.k8s.io", "v4.base64.channel.k8s.io", ""];
pub(crate) const WS_TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// Channels are numbered with one byte, two per port.
pub(crate) const MAX_WS_PORTS: usize = 127;

/// How long the client may keep sending after the pod closed its side.
const UPSTREAM_GRACE: Duration = Duration::from_secs(1);

/// The pod a session forwards to.
pub(crate) struct Target {
    pub(crate) backend: Arc<dyn StreamBackend>,
    pub(crate) pod_id: String,
}

impl Target {
    async fn connect(&self, port: u16) -> Result<tokio::net::TcpStream, String> {
        let netns = self.backend.pod_netns(&self.pod_id).await.map_err(|e| e.to_string())?;
        connect_loopback(netns.as_deref(), port)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Forwards one connection; writes a failure on `error`, then half-closes both streams.
async fn forward(
    target: Arc<Target>,
    port: u16,
    mut from_client: mpsc::Receiver<Bytes>,
    mut data: Box<dyn OutStream>,
    mut error: Box<dyn OutStream>,
) {
    match target.connect(port).await {
        Err(e) => {
            tracing::info!(pod = %target.pod_id, port, error = %e, "port-forward connection failed");
            // The kubelet's wording (pod name is the sandbox id, uid empty, as containerd passes them).
            let message = format!("error forwarding port {port} to pod {}, uid : {e}", target.pod_id);
            let _ = error.write(message.as_bytes()).await;
        }
        Ok(tcp) => {
            let (mut tcp_rd, mut tcp_wr) = tcp.into_split();
            let mut upstream = tokio::spawn(async move {
                while let Some(chunk) = from_client.recv().await {
                    if tcp_wr.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
                let _ = tcp_wr.shutdown().await;
            });
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match tcp_rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if data.write(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            // The pod is done: tell the client now (it waits for both streams to end), then give its last
            // bytes a moment.
            let _ = data.close().await;
            let _ = error.close().await;
            if tokio::time::timeout(UPSTREAM_GRACE, &mut upstream).await.is_err() {
                upstream.abort();
            }
            return;
        }
    }
    let _ = data.close().await;
    let _ = error.close().await;
}

/// The two streams of one forwarded connection, as they arrive.
struct Pair {
    deadline: Instant,
    data: Option<(u16, mpsc::Receiver<Bytes>, Box<dyn OutStream>)>,
    error: Option<Box<dyn OutStream>>,
}

impl Pair {
    async fn print_error(&mut self, message: &str) {
        if let Some(error) = self.error.as_mut() {
            let _ = error.write(message.as_bytes()).await;
        }
    }
}

/// Checks a stream's headers; its (port, is_data, request id).
fn classify(incoming: &IncomingStream) -> Result<(u16, bool, String), String> {
    let h = incoming.headers();
    let port = h
        .get("port")
        .filter(|p| !p.is_empty())
        .ok_or("\"port\" header is required")?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| format!("invalid port {port:?}"))?;
    let is_data = match h.get("streamType") {
        Some("data") => true,
        Some("error") => false,
        Some(other) => return Err(format!("invalid stream type {other:?}")),
        None => return Err("\"streamType\" header is required".into()),
    };
    // Old clients send no request id: pair consecutive stream ids, as the kubelet does.
    let request_id = match h.get("requestID").filter(|r| !r.is_empty()) {
        Some(id) => id.to_owned(),
        None if is_data => (incoming.id().saturating_sub(2)).to_string(),
        None => incoming.id().to_string(),
    };
    Ok((port, is_data, request_id))
}

/// Serves a SPDY port-forward session until the client closes it.
pub(crate) async fn serve_spdy(target: Arc<Target>, mut session: Session, creation_timeout: Duration) {
    let mut pending: HashMap<String, Pair> = HashMap::new();
    let mut forwards = JoinSet::new();
    loop {
        let next_deadline = pending.values().map(|p| p.deadline).min();
        tokio::select! {
            incoming = session.accept() => {
                let Some(incoming) = incoming else { break };
                let (port, is_data, request_id) = match classify(&incoming) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(pod = %target.pod_id, error = %e, "refusing port-forward stream");
                        incoming.reject().await;
                        continue;
                    }
                };
                let Ok((reader, writer)) = incoming.accept().await else { break };
                let pair = pending.entry(request_id.clone()).or_insert_with(|| Pair {
                    deadline: Instant::now() + creation_timeout,
                    data: None,
                    error: None,
                });
                let kind = if is_data { "data" } else { "error" };
                let duplicate = if is_data { pair.data.is_some() } else { pair.error.is_some() };
                if duplicate {
                    let message = format!("error processing stream for request {request_id}: {kind} stream already assigned");
                    pair.print_error(&message).await;
                    continue;
                }
                if is_data {
                    pair.data = Some((port, reader.into_receiver(), Box::new(writer)));
                } else {
                    // The client half-closes its side of the error stream at once; nothing to read.
                    pair.error = Some(Box::new(writer));
                }
                if pair.data.is_some() && pair.error.is_some()
                    && let Some(Pair { data: Some((port, from_client, data)), error: Some(error), .. }) =
                        pending.remove(&request_id)
                {
                    forwards.spawn(forward(target.clone(), port, from_client, data, error));
                }
            }
            _ = sleep_until_opt(next_deadline) => {
                let now = Instant::now();
                let expired: Vec<String> =
                    pending.iter().filter(|(_, p)| p.deadline <= now).map(|(id, _)| id.clone()).collect();
                for id in expired {
                    if let Some(mut pair) = pending.remove(&id) {
                        pair.print_error(&format!("timed out waiting for streams of request {id}")).await;
                        for mut out in [pair.error.take(), pair.data.take().map(|d| d.2)].into_iter().flatten() {
                            let _ = out.close().await;
                        }
                    }
                }
            }
            Some(_) = forwards.join_next(), if !forwards.is_empty() => {}
        }
    }
    forwards.abort_all();
    session.close().await;
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Which channels of a port-forward WebSocket the client writes to: the data channels.
pub(crate) fn websocket_readable(ports: usize) -> Vec<bool> {
    (0..ports * 2).map(|ch| ch % 2 == 0).collect()
}

/// Serves a WebSocket port-forward session: one connection per port, until all end or the client leaves.
pub(crate) async fn serve_websocket(target: Arc<Target>, mut conn: ChannelConn, ports: Vec<u16>) {
    let mut forwards = JoinSet::new();
    for (i, &port) in ports.iter().enumerate() {
        let data_channel = (2 * i) as u8;
        let mut data = conn.writer(data_channel);
        let mut error = conn.writer(data_channel + 1);
        let _ = data.write(&port.to_le_bytes()).await;
        let _ = error.write(&port.to_le_bytes()).await;
        let Some(from_client) = conn.reader(data_channel) else {
            continue;
        };
        forwards.spawn(forward(
            target.clone(),
            port,
            from_client,
            Box::new(data),
            Box::new(error),
        ));
    }
    let closed = conn.closed();
    tokio::select! {
        _ = async { while forwards.join_next().await.is_some() {} } => {}
        _ = closed => forwards.abort_all(),
    }
    conn.close().await;
}

/// Ports of a WebSocket port-forward: the CRI request's, else the URL's `port` query parameters.
pub(crate) fn websocket_ports(requested: &[i32], query: Option<&str>) -> Result<Vec<u16>, String> {
    let mut ports: Vec<u16> = requested.iter().filter_map(|&p| u16::try_from(p).ok()).collect();
    if ports.is_empty() {
        for (key, value) in query.unwrap_or("").split('&').filter_map(|kv| kv.split_once('=')) {
            if key != "port" {
                continue;
            }
            if value.is_empty() {
                return Err("query parameter \"port\" cannot be empty".into());
            }
            for p in value.split(',') {
                let port = p
                    .parse::<u16>()
                    .ok()
                    .filter(|&p| p > 0)
                    .ok_or_else(|| format!("unable to parse {p:?} as a port"))?;
                ports.push(port);
            }
        }
    }
    if ports.is_empty() {
        return Err("query parameter \"port\" is required".into());
    }
    if ports.len() > MAX_WS_PORTS {
        return Err(format!("at most {MAX_WS_PORTS} ports per connection"));
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_ports_come_from_the_request_then_the_query() {
        assert_eq!(websocket_ports(&[80, 443], Some("port=1")), Ok(vec![80, 443]));
        assert_eq!(
            websocket_ports(&[], Some("port=80&x=1&port=81,82")),
            Ok(vec![80, 81, 82])
        );
        assert!(websocket_ports(&[], None).is_err());
        assert!(websocket_ports(&[], Some("port=0")).is_err());
        assert!(websocket_ports(&[], Some("port=")).is_err());
        assert!(websocket_ports(&[], Some("port=http")).is_err());
    }

    #[test]
    fn data_channels_are_even() {
        assert_eq!(websocket_readable(2), vec![true, false, true, false]);
    }
}
