//! The HTTP side of the streaming protocols: telling SPDY and WebSocket upgrade requests apart, negotiating
//! the subprotocol, and the 101 responses.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

pub(crate) type Body = Full<Bytes>;

pub(crate) const STREAM_PROTOCOL_HEADER: &str = "X-Stream-Protocol-Version";
const ACCEPTED_PROTOCOLS_HEADER: &str = "X-Accepted-Stream-Protocol-Versions";
const SPDY_UPGRADE: &str = "SPDY/3.1";

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    WebSocket,
    Spdy,
    /// Not an upgrade we know.
    Neither,
}

fn contains_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains(token))
}

pub(crate) fn kind(headers: &HeaderMap) -> Kind {
    if !contains_token(headers, header::CONNECTION, "upgrade") {
        return Kind::Neither;
    }
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if upgrade == "websocket" {
        Kind::WebSocket
    } else if upgrade.contains(&SPDY_UPGRADE.to_ascii_lowercase()) {
        Kind::Spdy
    } else {
        Kind::Neither
    }
}

/// All values of a comma-separated, possibly repeated header, in order.
pub(crate) fn list(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The first protocol of the client's (ordered) list that the server supports.
pub(crate) fn negotiate<'a>(client: &[String], server: &[&'a str]) -> Option<&'a str> {
    client
        .iter()
        .find_map(|c| server.iter().find(|s| **s == c.as_str()).copied())
}

pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(message.into() + "\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

pub(crate) fn not_found() -> Response<Body> {
    error(StatusCode::NOT_FOUND, "404 page not found")
}

/// A refused upgrade: the HTTP error to answer with.
#[derive(Debug)]
pub(crate) struct Refusal {
    status: StatusCode,
    message: String,
    /// For a failed SPDY negotiation: what we accept.
    accepted: &'static [&'static str],
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Refusal {
            status,
            message: message.into(),
            accepted: &[],
        }
    }

    pub(crate) fn into_response(self) -> Response<Body> {
        let mut response = error(self.status, self.message);
        for p in self.accepted {
            response
                .headers_mut()
                .append(ACCEPTED_PROTOCOLS_HEADER, HeaderValue::from_static(p));
        }
        response
    }
}

/// Negotiates a SPDY subprotocol like k8s.io/streaming's `Handshake`: 400 without the header, 403 when
/// nothing matches.
pub(crate) fn spdy_protocol(headers: &HeaderMap, server: &'static [&'static str]) -> Result<&'static str, Refusal> {
    let client = list(headers, STREAM_PROTOCOL_HEADER);
    if client.is_empty() {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("unable to upgrade: header {STREAM_PROTOCOL_HEADER} does not exist or is empty"),
        ));
    }
    negotiate(&client, server).ok_or_else(|| Refusal {
        status: StatusCode::FORBIDDEN,
        message: format!(
            "unable to upgrade: unable to negotiate protocol: client supports {client:?}, server accepts {server:?}"
        ),
        accepted: server,
    })
}

pub(crate) fn spdy_switch(protocol: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static(SPDY_UPGRADE));
    h.insert(STREAM_PROTOCOL_HEADER, HeaderValue::from_static(protocol));
    response
}

/// Negotiates a WebSocket subprotocol (a client that names none gets ""), answering 400 when nothing matches.
pub(crate) fn websocket_protocol(headers: &HeaderMap, server: &[&'static str]) -> Result<&'static str, Refusal> {
    let mut client = list(headers, "Sec-WebSocket-Protocol");
    if client.is_empty() {
        client.push(String::new());
    }
    negotiate(&client, server).ok_or_else(|| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("requested protocol(s) are not supported: {client:?}; supports {server:?}"),
        )
    })
}

pub(crate) fn websocket_switch(headers: &HeaderMap, protocol: &'static str) -> Result<Response<Body>, Refusal> {
    let version_ok = headers
        .get("Sec-WebSocket-Version")
        .is_some_and(|v| v.as_bytes() == b"13");
    let key = headers.get("Sec-WebSocket-Key").filter(|_| version_ok).ok_or_else(|| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: missing Sec-WebSocket-Key or unsupported Sec-WebSocket-Version",
        )
    })?;
    let mut response = Response::new(Full::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let accept = derive_accept_key(key.as_bytes());
    h.insert(
        "Sec-WebSocket-Accept",
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    if !protocol.is_empty() {
        h.insert("Sec-WebSocket-Protocol", HeaderValue::from_static(protocol));
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn tells_upgrades_apart() {
        assert_eq!(
            kind(&headers(&[("connection", "Upgrade"), ("upgrade", "SPDY/3.1")])),
            Kind::Spdy
        );
        assert_eq!(
            kind(&headers(&[
                ("connection", "keep-alive, upgrade"),
                ("upgrade", "WebSocket")
            ])),
            Kind::WebSocket
        );
        assert_eq!(kind(&headers(&[("upgrade", "websocket")])), Kind::Neither);
        assert_eq!(
            kind(&headers(&[("connection", "upgrade"), ("upgrade", "h2c")])),
            Kind::Neither
        );
    }

    #[test]
    fn client_order_wins_the_negotiation() {
        let h = headers(&[
            (STREAM_PROTOCOL_HEADER, "v5.channel.k8s.io"),
            (STREAM_PROTOCOL_HEADER, "v4.channel.k8s.io, v3.channel.k8s.io"),
        ]);
        assert_eq!(
            spdy_protocol(&h, &["v3.channel.k8s.io", "v4.channel.k8s.io"]).unwrap(),
            "v4.channel.k8s.io"
        );
        let refused = spdy_protocol(&h, &["v2.channel.k8s.io"]).unwrap_err();
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert_eq!(
            refused.into_response().headers()[ACCEPTED_PROTOCOLS_HEADER],
            "v2.channel.k8s.io"
        );
        assert_eq!(
            spdy_protocol(&HeaderMap::new(), &["x"]).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(websocket_protocol(&HeaderMap::new(), &["a", ""]).unwrap(), "");
        assert!(websocket_protocol(&HeaderMap::new(), &["a"]).is_err());
    }

    #[test]
    fn websocket_accept_key_is_rfc6455() {
        let h = headers(&[
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ]);
        let r = websocket_switch(&h, "v5.channel.k8s.io").unwrap();
        assert_eq!(r.headers()["Sec-WebSocket-Accept"], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(r.headers()["Sec-WebSocket-Protocol"], "v5.channel.k8s.io");
    }
}
