//! Test clients for both transports, behaving like client-go: SPDY from berth's own framing module, WebSocket
//! from tokio-tungstenite.

use std::time::Duration;

use berth_streaming::TerminalSize;
use berth_streaming::spdy::{Headers, Role, Session, SessionConfig, StreamReader, StreamWriter};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// An HTTP response to an upgrade request.
pub struct Upgraded {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub stream: TcpStream,
}

impl Upgraded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_once('/').unwrap();
    (host.to_owned(), format!("/{path}"))
}

/// Sends a raw HTTP/1.1 request with `headers` and reads the response head (and a short body).
pub async fn http_request(url: &str, method: &str, headers: &[(&str, &str)]) -> Upgraded {
    let (host, path) = split_url(url);
    let mut stream = TcpStream::connect(&host).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = buf[head_end..].to_vec();
    if status != 101 {
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        while body.len() < len {
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        assert!(body.is_empty(), "the server spoke first after the upgrade");
    }
    Upgraded {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into(),
        stream,
    }
}

/// Upgrades `url` to SPDY/3.1 offering `protocols` (client-go's order).
pub async fn spdy_upgrade(url: &str, protocols: &[&str]) -> Upgraded {
    let mut headers = vec![("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")];
    for p in protocols {
        headers.push(("X-Stream-Protocol-Version", p));
    }
    http_request(url, "POST", &headers).await
}

pub async fn spdy_session(url: &str, protocols: &[&str]) -> (Session, String) {
    let up = spdy_upgrade(url, protocols).await;
    assert_eq!(up.status, 101, "upgrade refused: {}", up.body);
    let protocol = up.header("X-Stream-Protocol-Version").unwrap_or("").to_owned();
    (
        Session::new(up.stream, Role::Client, SessionConfig::default()),
        protocol,
    )
}

pub fn stream_headers(pairs: &[(&str, &str)]) -> Headers {
    pairs.iter().map(|(n, v)| (*n, *v)).collect()
}

/// What a remotecommand client saw.
#[derive(Debug, Default)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The error stream's bytes (a JSON Status in v4+).
    pub error: Vec<u8>,
}

impl Output {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into()
    }

    pub fn error(&self) -> String {
        String::from_utf8_lossy(&self.error).into()
    }

    /// The exit code as client-go's v4 decoder sees it: 0 for Success.
    pub fn exit_code(&self) -> Option<i32> {
        let status: serde_json::Value = serde_json::from_slice(&self.error).ok()?;
        match status["status"].as_str()? {
            "Success" => Some(0),
            _ if status["reason"] == "NonZeroExitCode" => status["details"]["causes"]
                .as_array()?
                .iter()
                .find(|c| c["reason"] == "ExitCode")?["message"]
                .as_str()?
                .parse()
                .ok(),
            _ => None,
        }
    }
}

pub struct Script {
    pub stdin: Option<Vec<u8>>,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
    /// Sent on the resize stream first; then stdin, after `stdin_delay`.
    pub resizes: Vec<TerminalSize>,
    pub stdin_delay: Duration,
    /// Keep stdin open (don't half-close) after writing.
    pub keep_stdin_open: bool,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            stdin: None,
            stdout: true,
            stderr: true,
            tty: false,
            resizes: Vec::new(),
            stdin_delay: Duration::ZERO,
            keep_stdin_open: false,
        }
    }
}

async fn drain(mut rd: StreamReader) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = rd.read().await {
        out.extend_from_slice(&chunk);
    }
    out
}

async fn open(session: &Session, kind: &str) -> (StreamReader, StreamWriter) {
    session.open(stream_headers(&[("streamType", kind)])).await.unwrap()
}

/// Runs a remotecommand session over SPDY like client-go's v4 protocol.
pub async fn spdy_run(session: Session, script: Script) -> Output {
    let (error_rd, mut error_wr) = open(&session, "error").await;
    error_wr.close().await.unwrap();
    let stdin = if script.stdin.is_some() {
        Some(open(&session, "stdin").await.1)
    } else {
        None
    };
    let stdout = if script.stdout {
        Some(open(&session, "stdout").await.0)
    } else {
        None
    };
    let stderr = if script.stderr && !script.tty {
        Some(open(&session, "stderr").await.0)
    } else {
        None
    };
    if script.tty {
        let (_, mut resize) = open(&session, "resize").await;
        let resizes = script.resizes.clone();
        tokio::spawn(async move {
            for size in resizes {
                let json = serde_json::to_vec(&size).unwrap();
                resize.write(&json).await.unwrap();
            }
            std::future::pending::<()>().await;
        });
    }
    if let (Some(mut wr), Some(data)) = (stdin, script.stdin) {
        let delay = script.stdin_delay;
        let keep_open = script.keep_stdin_open;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            wr.write(&data).await.unwrap();
            if keep_open {
                std::future::pending::<()>().await;
            }
            wr.close().await.unwrap();
        });
    }
    let stdout = tokio::spawn(async move {
        match stdout {
            Some(rd) => drain(rd).await,
            None => Vec::new(),
        }
    });
    let stderr = tokio::spawn(async move {
        match stderr {
            Some(rd) => drain(rd).await,
            None => Vec::new(),
        }
    });
    let stdout = stdout.await.unwrap();
    let stderr = stderr.await.unwrap();
    let error = drain(error_rd).await;
    session.close().await;
    Output { stdout, stderr, error }
}

pub type Ws = WebSocketStream<TcpStream>;

/// Opens a WebSocket to `url` offering `protocols`; the negotiated one, or the HTTP error status.
pub async fn ws_connect(url: &str, protocols: &[&str]) -> Result<(Ws, String), u16> {
    let mut request = url.replace("http://", "ws://").into_client_request().unwrap();
    if !protocols.is_empty() {
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", protocols.join(", ").parse().unwrap());
    }
    let (host, _) = split_url(url);
    let tcp = TcpStream::connect(host).await.unwrap();
    match tokio_tungstenite::client_async(request, tcp).await {
        Ok((ws, response)) => {
            let protocol = response
                .headers()
                .get("Sec-WebSocket-Protocol")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            Ok((ws, protocol))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("websocket connect: {e}"),
    }
}

/// Runs a remotecommand session over WebSocket `v5.channel.k8s.io` (binary) like client-go.
pub async fn ws_run(ws: Ws, script: Script) -> Output {
    let (mut sink, mut stream) = ws.split();
    let mut out = Output::default();
    let writer = tokio::spawn(async move {
        for size in &script.resizes {
            let mut m = vec![4u8];
            m.extend(serde_json::to_vec(size).unwrap());
            sink.send(Message::Binary(m.into())).await.unwrap();
        }
        if let Some(data) = script.stdin {
            tokio::time::sleep(script.stdin_delay).await;
            let mut m = vec![0u8];
            m.extend(data);
            sink.send(Message::Binary(m.into())).await.unwrap();
            if !script.keep_stdin_open {
                sink.send(Message::Binary(vec![255u8, 0].into())).await.unwrap();
            }
        }
        sink
    });
    while let Some(message) = stream.next().await {
        let data = match message {
            Ok(Message::Binary(d)) => d,
            Ok(Message::Close(_)) => continue,
            Ok(_) => continue,
            Err(_) => break,
        };
        let Some((&channel, payload)) = data.split_first() else {
            continue;
        };
        match channel {
            1 => out.stdout.extend_from_slice(payload),
            2 => out.stderr.extend_from_slice(payload),
            3 => out.error.extend_from_slice(payload),
            other => panic!("message on channel {other}"),
        }
    }
    writer.abort();
    out
}
