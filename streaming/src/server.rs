//! The HTTP(S) server: single-use URLs `/exec/<token>`, `/attach/<token>`, `/portforward/<token>`, each
//! upgraded to SPDY/3.1 or WebSocket.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_core::config::StreamingConfig;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role as WsRole;

use crate::backend::StreamBackend;
use crate::portforward::{self, Target};
use crate::remotecommand::{self, Command};
use crate::request::{AttachRequest, ExecRequest, PortForwardRequest, RequestError};
use crate::spdy::{Role, Session, SessionConfig};
use crate::token::{Pending, TokenCache};
use crate::upgrade::{self, Body, Kind};
use crate::websocket::{ByteStream, ChannelConn, Codec};

/// Paths of a PEM certificate chain and its private key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Everything the server is configured by; [`ServerOptions::from_config`] fills it from berth's config.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub address: IpAddr,
    /// 0 picks a free port.
    pub port: u16,
    pub tls: Option<TlsFiles>,
    /// How long a URL stays valid.
    pub token_ttl: Duration,
    /// How long a client may take to create its streams (kubelet: 30 s).
    pub stream_creation_timeout: Duration,
    /// A SPDY connection without traffic for this long is closed (kubelet: 4 h).
    pub stream_idle_timeout: Duration,
    /// URLs handed out but not yet used, at most.
    pub max_pending: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            tls: None,
            token_ttl: Duration::from_secs(60),
            stream_creation_timeout: Duration::from_secs(30),
            stream_idle_timeout: Duration::from_secs(4 * 3600),
            max_pending: 1000,
        }
    }
}

impl ServerOptions {
    pub fn from_config(config: &StreamingConfig) -> Result<Self, StartError> {
        let address = config
            .address
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| StartError::InvalidAddress(config.address.clone()))?;
        let tls = match (
            config.tls_cert.as_os_str().is_empty(),
            config.tls_key.as_os_str().is_empty(),
        ) {
            (true, true) => None,
            (false, false) => Some(TlsFiles {
                cert: config.tls_cert.clone(),
                key: config.tls_key.clone(),
            }),
            _ => return Err(StartError::TlsHalfConfigured),
        };
        if config.token_ttl_secs == 0 {
            return Err(StartError::ZeroTokenTtl);
        }
        Ok(ServerOptions {
            address,
            port: config.port,
            tls,
            token_ttl: Duration::from_secs(config.token_ttl_secs),
            ..Default::default()
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("streaming address {0:?} is not an IP address")]
    InvalidAddress(String),
    #[error("streaming TLS needs both tls_cert and tls_key")]
    TlsHalfConfigured,
    #[error("streaming token_ttl_secs must be positive")]
    ZeroTokenTtl,
    #[error("binding the streaming server to {address}: {source}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    TlsRead {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{0}: no certificate found")]
    NoCertificate(PathBuf),
    #[error("streaming TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

struct Shared {
    backend: Arc<dyn StreamBackend>,
    tokens: TokenCache,
    base_url: String,
    options: ServerOptions,
}

/// The running streaming server. Dropping it stops accepting connections; sessions in progress continue.
pub struct StreamingServer {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl StreamingServer {
    /// Binds and starts serving (needs a tokio runtime).
    pub async fn start(config: &StreamingConfig, backend: Arc<dyn StreamBackend>) -> Result<Self, StartError> {
        Self::start_with(ServerOptions::from_config(config)?, backend).await
    }

    pub async fn start_with(options: ServerOptions, backend: Arc<dyn StreamBackend>) -> Result<Self, StartError> {
        let tls = options.tls.as_ref().map(load_tls).transpose()?;
        let address = SocketAddr::new(options.address, options.port);
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| StartError::Bind { address, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| StartError::Bind { address, source })?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let base_url = format!("{scheme}://{}", url_authority(local_addr));
        tracing::info!(%base_url, "streaming server listening");
        let shared = Arc::new(Shared {
            backend,
            tokens: TokenCache::new(options.token_ttl, options.max_pending),
            base_url,
            options,
        });
        let accept = tokio::spawn(accept_loop(listener, tls, shared.clone()));
        Ok(StreamingServer {
            shared,
            local_addr,
            accept,
        })
    }

    /// `http(s)://host:port`, the prefix of every URL handed out.
    pub fn base_url(&self) -> &str {
        &self.shared.base_url
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Validates an exec request and returns its single-use URL. The caller checks first that the container
    /// exists and runs.
    pub fn exec_url(&self, request: ExecRequest) -> Result<String, RequestError> {
        request.validate()?;
        self.url("exec", Pending::Exec(request))
    }

    /// Validates an attach request and returns its single-use URL (the caller checks the container).
    pub fn attach_url(&self, request: AttachRequest) -> Result<String, RequestError> {
        request.validate()?;
        self.url("attach", Pending::Attach(request))
    }

    /// Validates a port-forward request and returns its single-use URL (the caller checks the pod).
    pub fn port_forward_url(&self, request: PortForwardRequest) -> Result<String, RequestError> {
        request.validate()?;
        self.url("portforward", Pending::PortForward(request))
    }

    fn url(&self, kind: &str, pending: Pending) -> Result<String, RequestError> {
        let token = self.shared.tokens.insert(pending)?;
        Ok(format!("{}/{kind}/{token}", self.shared.base_url))
    }
}

impl Drop for StreamingServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// The host:port clients use; an unspecified bind address is reached through loopback.
fn url_authority(addr: SocketAddr) -> String {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => format!("127.0.0.1:{}", addr.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => format!("[{}]:{}", Ipv6Addr::LOCALHOST, addr.port()),
        _ => addr.to_string(),
    }
}

fn load_tls(files: &TlsFiles) -> Result<TlsAcceptor, StartError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StartError::TlsRead { path, source }
    };
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .map_err(read_err(&files.cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err(&files.cert))?;
    if certs.is_empty() {
        return Err(StartError::NoCertificate(files.cert.clone()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(read_err(&files.key))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    // Upgrades need HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn accept_loop(listener: TcpListener, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "streaming server accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(tcp, shared).await,
                Some(acceptor) => match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => serve_connection(stream, shared).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                },
            }
        });
    }
}

async fn serve_connection<IO>(io: IO, shared: Arc<Shared>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(route(shared, req)) }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await;
    if let Err(e) = served {
        tracing::debug!(error = %e, "streaming HTTP connection ended with an error");
    }
}

fn route(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let Some((kind, token)) = req.uri().path().strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return upgrade::not_found();
    };
    // Consumed whatever happens next: a URL is good for one attempt.
    let Some(pending) = shared.tokens.take(token) else {
        return upgrade::not_found();
    };
    match (kind, pending) {
        ("exec", Pending::Exec(r)) => remote_command(shared, req, Command::Exec(r)),
        ("attach", Pending::Attach(r)) => remote_command(shared, req, Command::Attach(r)),
        ("portforward", Pending::PortForward(r)) => port_forward(shared, req, r),
        _ => upgrade::not_found(),
    }
}

fn session_config(options: &ServerOptions) -> SessionConfig {
    SessionConfig {
        idle_timeout: Some(options.stream_idle_timeout),
        ..Default::default()
    }
}

/// Runs `f` on the upgraded connection once hyper has sent the 101.
fn on_upgrade<F, Fut>(mut req: Request<Incoming>, f: F)
where
    F: FnOnce(TokioIo<hyper::upgrade::Upgraded>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => f(TokioIo::new(upgraded)).await,
            Err(e) => tracing::debug!(error = %e, "streaming upgrade failed"),
        }
    });
}

fn remote_command(shared: Arc<Shared>, req: Request<Incoming>, command: Command) -> Response<Body> {
    match upgrade::kind(req.headers()) {
        Kind::Spdy => {
            let protocol = match upgrade::spdy_protocol(req.headers(), remotecommand::SPDY_PROTOCOLS) {
                Ok(p) => p,
                Err(refusal) => return refusal.into_response(),
            };
            on_upgrade(req, move |io| async move {
                let mut session = Session::new(io, Role::Server, session_config(&shared.options));
                let timeout = shared.options.stream_creation_timeout;
                match remotecommand::spdy_streams(&mut session, protocol, &command, timeout).await {
                    Ok(streams) => {
                        let handle = session.handle();
                        remotecommand::run(shared.backend.clone(), command, streams, handle.closed()).await;
                    }
                    Err(e) => tracing::info!(error = %e, "streaming session not started"),
                }
                session.close().await;
            });
            upgrade::spdy_switch(protocol)
        }
        Kind::WebSocket => {
            let protocol = match upgrade::websocket_protocol(req.headers(), remotecommand::WS_PROTOCOLS) {
                Ok(p) => p,
                Err(refusal) => return refusal.into_response(),
            };
            let response = match upgrade::websocket_switch(req.headers(), protocol) {
                Ok(r) => r,
                Err(refusal) => return refusal.into_response(),
            };
            on_upgrade(req, move |io| async move {
                let ws = WebSocketStream::from_raw_socket(io, WsRole::Server, None).await;
                let codec = if protocol.contains("base64") {
                    Codec::Base64
                } else {
                    Codec::Binary
                };
                let readable = remotecommand::websocket_readable(&command);
                let mut conn = ChannelConn::open(ws, codec, &readable, protocol == "v5.channel.k8s.io");
                let streams = remotecommand::websocket_streams(&mut conn, protocol, &command).await;
                remotecommand::run(shared.backend.clone(), command, streams, conn.closed()).await;
                conn.close().await;
            });
            response
        }
        Kind::Neither => upgrade::error(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: missing upgrade headers in request",
        ),
    }
}

fn port_forward(shared: Arc<Shared>, req: Request<Incoming>, request: PortForwardRequest) -> Response<Body> {
    let target = Arc::new(Target {
        backend: shared.backend.clone(),
        pod_id: request.pod_id.clone(),
    });
    let timeout = shared.options.stream_creation_timeout;
    match upgrade::kind(req.headers()) {
        Kind::Spdy => {
            let protocol = match upgrade::spdy_protocol(req.headers(), portforward::SPDY_PROTOCOLS) {
                Ok(p) => p,
                Err(refusal) => return refusal.into_response(),
            };
            let config = session_config(&shared.options);
            on_upgrade(req, move |io| async move {
                let session = Session::new(io, Role::Server, config);
                portforward::serve_spdy(target, session, timeout).await;
            });
            upgrade::spdy_switch(protocol)
        }
        Kind::WebSocket => {
            let protocol = match upgrade::websocket_protocol(req.headers(), portforward::WS_PROTOCOLS) {
                Ok(p) => p,
                Err(refusal) => return refusal.into_response(),
            };
            let ports = if protocol == portforward::WS_TUNNEL_PROTOCOL {
                Vec::new()
            } else {
                match portforward::websocket_ports(&request.ports, req.uri().query()) {
                    Ok(ports) => ports,
                    Err(message) => return upgrade::error(StatusCode::BAD_REQUEST, message),
                }
            };
            let response = match upgrade::websocket_switch(req.headers(), protocol) {
                Ok(r) => r,
                Err(refusal) => return refusal.into_response(),
            };
            let config = session_config(&shared.options);
            on_upgrade(req, move |io| async move {
                let ws = WebSocketStream::from_raw_socket(io, WsRole::Server, None).await;
                if protocol == portforward::WS_TUNNEL_PROTOCOL {
                    let session = Session::new(ByteStream::new(ws), Role::Server, config);
                    portforward::serve_spdy(target, session, timeout).await;
                    return;
                }
                let codec = if protocol.contains("base64") {
                    Codec::Base64
                } else {
                    Codec::Binary
                };
                let conn = ChannelConn::open(ws, codec, &portforward::websocket_readable(ports.len()), false);
                portforward::serve_websocket(target, conn, ports).await;
            });
            response
        }
        Kind::Neither => upgrade::error(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: missing upgrade headers in request",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_from_config() {
        let mut config = StreamingConfig::default();
        let o = ServerOptions::from_config(&config).unwrap();
        assert_eq!(o.address, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(o.token_ttl, Duration::from_secs(60));
        assert!(o.tls.is_none());
        config.address = "[::1]".into();
        assert_eq!(
            ServerOptions::from_config(&config).unwrap().address,
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        );
        config.address = "localhost".into();
        assert!(matches!(
            ServerOptions::from_config(&config),
            Err(StartError::InvalidAddress(_))
        ));
        config.address = "0.0.0.0".into();
        config.tls_cert = "/c.pem".into();
        assert!(matches!(
            ServerOptions::from_config(&config),
            Err(StartError::TlsHalfConfigured)
        ));
    }

    #[test]
    fn unspecified_addresses_are_reached_through_loopback() {
        assert_eq!(url_authority("0.0.0.0:10".parse().unwrap()), "127.0.0.1:10");
        assert_eq!(url_authority("[::]:10".parse().unwrap()), "[::1]:10");
        assert_eq!(url_authority("[fd00::1]:10".parse().unwrap()), "[fd00::1]:10");
        assert_eq!(url_authority("10.0.0.1:10".parse().unwrap()), "10.0.0.1:10");
    }
}
