//! Port-forward into a private network namespace over SPDY, WebSocket channels and SPDY-in-WebSocket.

mod support;

use std::sync::Arc;

use berth_streaming::PortForwardRequest;
use berth_streaming::spdy::{Role, Session, SessionConfig, SessionHandle};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use support::client::{spdy_session, stream_headers, ws_connect};
use support::netns::TestNetns;
use support::{HostBackend, start, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// A namespace with an echo server on 127.0.0.1:7000 that prefixes replies with "pod:".
fn echo_pod() -> (TestNetns, Arc<HostBackend>) {
    let netns = TestNetns::new();
    let listener = netns.listen(7000);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let mut reply = b"pod:".to_vec();
                            reply.extend_from_slice(&buf[..n]);
                            if conn.write_all(&reply).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    let backend = Arc::new(HostBackend::default());
    backend
        .netns
        .lock()
        .unwrap()
        .insert("pod1".into(), Some(netns.path().to_path_buf()));
    (netns, backend)
}

fn request(ports: Vec<i32>) -> PortForwardRequest {
    PortForwardRequest {
        pod_id: "pod1".into(),
        ports,
    }
}

/// One forwarded connection as client-go makes it: error stream (half-closed at once), then data.
async fn forward(session: &SessionHandle, port: u16, request_id: u32, message: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let port = port.to_string();
    let request_id = request_id.to_string();
    let headers = |kind| stream_headers(&[("streamType", kind), ("port", &port), ("requestID", &request_id)]);
    let (mut error_rd, mut error_wr) = session.open(headers("error")).await.unwrap();
    error_wr.close().await.unwrap();
    let (mut data_rd, mut data_wr) = session.open(headers("data")).await.unwrap();
    data_wr.write(message).await.unwrap();
    let mut reply = Vec::new();
    while let Some(chunk) = data_rd.read().await {
        reply.extend_from_slice(&chunk);
        if reply.len() >= message.len() + 4 {
            break;
        }
    }
    data_wr.close().await.unwrap();
    while let Some(chunk) = data_rd.read().await {
        reply.extend_from_slice(&chunk);
    }
    let mut error = Vec::new();
    while let Some(chunk) = error_rd.read().await {
        error.extend_from_slice(&chunk);
    }
    (reply, error)
}

#[tokio::test]
async fn spdy_forwards_concurrent_connections_into_the_pod_netns() {
    let (_netns, backend) = echo_pod();
    let server = start(backend).await;
    let url = server.port_forward_url(request(vec![])).unwrap();
    let (session, protocol) = spdy_session(&url, &["portforward.k8s.io"]).await;
    assert_eq!(protocol, "portforward.k8s.io");
    let handle = session.handle();
    let results = within(10, async {
        let mut tasks = Vec::new();
        for i in 0..8u32 {
            let handle = handle.clone();
            tasks.push(tokio::spawn(async move {
                forward(&handle, 7000, i, format!("hello {i}").as_bytes()).await
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    })
    .await;
    for (i, (reply, error)) in results.into_iter().enumerate() {
        assert_eq!(String::from_utf8(reply).unwrap(), format!("pod:hello {i}"));
        assert!(error.is_empty(), "{}", String::from_utf8_lossy(&error));
    }
}

#[tokio::test]
async fn spdy_reports_a_closed_port_on_the_error_stream() {
    let (_netns, backend) = echo_pod();
    let server = start(backend).await;
    let url = server.port_forward_url(request(vec![])).unwrap();
    let (session, _) = spdy_session(&url, &["portforward.k8s.io"]).await;
    let (_, error) = within(10, forward(&session.handle(), 7001, 0, b"x")).await;
    let error = String::from_utf8(error).unwrap();
    assert!(error.starts_with("error forwarding port 7001 to pod pod1"), "{error}");
    assert!(error.contains("refused"), "{error}");
}

#[tokio::test]
async fn spdy_refuses_streams_without_a_valid_port() {
    let (_netns, backend) = echo_pod();
    let server = start(backend).await;
    let url = server.port_forward_url(request(vec![])).unwrap();
    let (session, _) = spdy_session(&url, &["portforward.k8s.io"]).await;
    for port in ["", "0", "http", "70000"] {
        let h = stream_headers(&[("streamType", "data"), ("port", port), ("requestID", "1")]);
        assert!(session.open(h).await.is_err(), "port {port:?}");
    }
    let h = stream_headers(&[("streamType", "bogus"), ("port", "7000"), ("requestID", "1")]);
    assert!(session.open(h).await.is_err());
}

#[tokio::test]
async fn spdy_unknown_pod_is_reported() {
    let (_netns, backend) = echo_pod();
    let server = start(backend).await;
    let url = server
        .port_forward_url(PortForwardRequest {
            pod_id: "gone".into(),
            ports: vec![],
        })
        .unwrap();
    let (session, _) = spdy_session(&url, &["portforward.k8s.io"]).await;
    let (_, error) = within(10, forward(&session.handle(), 7000, 0, b"x")).await;
    assert!(String::from_utf8_lossy(&error).contains("pod sandbox gone not found"));
}

#[tokio::test]
async fn websocket_channels_forward_each_requested_port() {
    let (_netns, backend) = echo_pod();
    let server = start(backend).await;
    let url = server.port_forward_url(request(vec![7000, 7001])).unwrap();
    let (ws, protocol) = ws_connect(&url, &["v4.channel.k8s.io"]).await.unwrap();
    assert_eq!(protocol, "v4.channel.k8s.io");
    let (mut sink, mut stream) = ws.split();
    sink.send(Message::Binary(Bytes::from_static(b"\x00ping")))
        .await
        .unwrap();
    let mut data0 = Vec::new();
    let mut error1 = Vec::new();
    let mut prefixes = Vec::new();
    within(10, async {
        while let Some(Ok(message)) = stream.next().await {
            let Message::Binary(m) = message else { continue };
            let (&channel, payload) = m.split_first().unwrap();
            if payload.len() == 2 && !prefixes.contains(&channel) {
                // The first message on each channel is its port.
                prefixes.push(channel);
                let port = u16::from_le_bytes([payload[0], payload[1]]);
                assert_eq!(port, if channel < 2 { 7000 } else { 7001 });
                continue;
            }
            match channel {
                0 => data0.extend_from_slice(payload),
                3 => error1.extend_from_slice(payload),
                _ => {}
            }
            if data0.len() >= 8 && !error1.is_empty() {
                break;
            }
        }
    })
    .await;
    assert_eq!(data0, b"pod:ping");
    assert!(String::from_utf8_lossy(&error1).contains("error forwarding port 7001"));
    prefixes.sort();
    assert_eq!(prefixes, vec![0, 1, 2, 3]);
}

#[tokio::test]
async fn websocket_channels_take_ports_from_the_query_when_the_request_has_none() {
    let (_netns, backend) = echo_pod();
    let server = start(backend).await;
    let url = server.port_forward_url(request(vec![])).unwrap();
    assert_eq!(ws_connect(&url, &["v4.channel.k8s.io"]).await.unwrap_err(), 400);
    let url = server.port_forward_url(request(vec![])).unwrap() + "?port=7000";
    let (ws, _) = ws_connect(&url, &["v4.channel.k8s.io"]).await.unwrap();
    drop(ws);
}

#[tokio::test]
async fn spdy_tunnelled_in_websocket() {
    let (_netns, backend) = echo_pod();
    let server = start(backend).await;
    let url = server.port_forward_url(request(vec![])).unwrap();
    let (ws, protocol) = ws_connect(&url, &["SPDY/3.1+portforward.k8s.io"]).await.unwrap();
    assert_eq!(protocol, "SPDY/3.1+portforward.k8s.io");
    let tunnel = ClientTunnel::new(ws);
    let session = Session::new(tunnel, Role::Client, SessionConfig::default());
    let handle = session.handle();
    let (a, b) = within(10, async {
        tokio::join!(forward(&handle, 7000, 0, b"one"), forward(&handle, 7000, 1, b"two"))
    })
    .await;
    assert_eq!(a.0, b"pod:one");
    assert_eq!(b.0, b"pod:two");
}

/// The client side of the tunnel: bytes in binary messages.
struct ClientTunnel {
    ws: support::client::Ws,
    pending: Bytes,
}

impl ClientTunnel {
    fn new(ws: support::client::Ws) -> Self {
        ClientTunnel {
            ws,
            pending: Bytes::new(),
        }
    }
}

impl tokio::io::AsyncRead for ClientTunnel {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::{Poll, ready};
        while self.pending.is_empty() {
            match ready!(self.ws.poll_next_unpin(cx)) {
                Some(Ok(Message::Binary(d))) => self.pending = d,
                Some(Ok(_)) => {}
                _ => return Poll::Ready(Ok(())),
            }
        }
        let n = self.pending.len().min(buf.remaining());
        let chunk = self.pending.split_to(n);
        buf.put_slice(&chunk);
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for ClientTunnel {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::{Poll, ready};
        ready!(self.ws.poll_ready_unpin(cx)).map_err(std::io::Error::other)?;
        self.ws
            .start_send_unpin(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(std::io::Error::other)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.ws.poll_flush_unpin(cx).map_err(std::io::Error::other)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.ws.poll_close_unpin(cx).map_err(std::io::Error::other)
    }
}
