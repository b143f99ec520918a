//! URL misuse: replayed, expired, unknown, used for the wrong kind of session; requests refused up front.

mod support;

use std::sync::Arc;
use std::time::Duration;

use berth_streaming::{AttachRequest, ExecRequest, PortForwardRequest, RequestError, ServerOptions};
use support::client::{Script, http_request, spdy_run, spdy_session, spdy_upgrade, ws_connect};
use support::{HostBackend, start, start_with, within};

fn exec() -> ExecRequest {
    ExecRequest {
        container_id: "c1".into(),
        cmd: vec!["true".into()],
        stdout: true,
        ..Default::default()
    }
}

const V4: &[&str] = &["v4.channel.k8s.io"];

#[tokio::test]
async fn a_url_works_once() {
    let server = start(Arc::new(HostBackend::with_container("c1"))).await;
    let url = server.exec_url(exec()).unwrap();
    let (session, _) = spdy_session(&url, V4).await;
    let script = Script {
        stderr: false,
        ..Default::default()
    };
    let out = within(10, spdy_run(session, script)).await;
    assert_eq!(out.exit_code(), Some(0));
    assert_eq!(spdy_upgrade(&url, V4).await.status, 404);
    assert_eq!(ws_connect(&url, &["v5.channel.k8s.io"]).await.unwrap_err(), 404);
}

#[tokio::test]
async fn a_failed_handshake_burns_the_url_too() {
    let server = start(Arc::new(HostBackend::with_container("c1"))).await;
    let url = server.exec_url(exec()).unwrap();
    let plain = http_request(&url, "GET", &[]).await;
    assert_eq!(plain.status, 400);
    assert!(plain.body.contains("missing upgrade headers"), "{}", plain.body);
    assert_eq!(spdy_upgrade(&url, V4).await.status, 404);
}

#[tokio::test]
async fn expired_and_unknown_urls_are_not_found() {
    let options = ServerOptions {
        token_ttl: Duration::from_millis(200),
        ..Default::default()
    };
    let server = start_with(Arc::new(HostBackend::with_container("c1")), options).await;
    let url = server.exec_url(exec()).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(spdy_upgrade(&url, V4).await.status, 404);
    let base = server.base_url();
    for path in ["/exec/AAAA", "/exec/", "/attach/x", "/portforward/x", "/", "/nothing"] {
        assert_eq!(spdy_upgrade(&format!("{base}{path}"), V4).await.status, 404, "{path}");
    }
}

#[tokio::test]
async fn a_url_of_one_kind_is_useless_for_another() {
    let server = start(Arc::new(HostBackend::with_container("c1"))).await;
    let url = server.exec_url(exec()).unwrap();
    let token = url.rsplit('/').next().unwrap();
    let attach = format!("{}/attach/{token}", server.base_url());
    assert_eq!(spdy_upgrade(&attach, V4).await.status, 404);
    // ... and is consumed by the attempt.
    assert_eq!(spdy_upgrade(&url, V4).await.status, 404);
}

#[tokio::test]
async fn urls_are_distinct_and_unguessable() {
    let server = start(Arc::new(HostBackend::with_container("c1"))).await;
    let a = server.exec_url(exec()).unwrap();
    let b = server.exec_url(exec()).unwrap();
    assert_ne!(a, b);
    let token = a.rsplit('/').next().unwrap();
    assert_eq!(token.len(), 43, "32 random bytes, base64url");
    assert!(a.starts_with(&format!("{}/exec/", server.base_url())));
}

#[tokio::test]
async fn invalid_requests_get_no_url() {
    let server = start(Arc::new(HostBackend::with_container("c1"))).await;
    let tty_stderr = ExecRequest {
        tty: true,
        stderr: true,
        ..exec()
    };
    assert_eq!(server.exec_url(tty_stderr), Err(RequestError::TtyWithStderr));
    let no_streams = ExecRequest {
        stdout: false,
        ..exec()
    };
    assert_eq!(server.exec_url(no_streams), Err(RequestError::NoStreams));
    assert_eq!(
        server.attach_url(AttachRequest::default()),
        Err(RequestError::MissingContainerId)
    );
    assert_eq!(
        server.port_forward_url(PortForwardRequest::default()),
        Err(RequestError::MissingPodId)
    );
}

#[tokio::test]
async fn pending_urls_are_bounded() {
    let options = ServerOptions {
        max_pending: 2,
        ..Default::default()
    };
    let server = start_with(Arc::new(HostBackend::with_container("c1")), options).await;
    server.exec_url(exec()).unwrap();
    server.exec_url(exec()).unwrap();
    assert_eq!(server.exec_url(exec()), Err(RequestError::TooManyPending(2)));
}

#[tokio::test]
async fn unsupported_protocols_are_refused() {
    let server = start(Arc::new(HostBackend::with_container("c1"))).await;
    let url = server.exec_url(exec()).unwrap();
    let refused = spdy_upgrade(&url, &["v9.channel.k8s.io"]).await;
    assert_eq!(refused.status, 403);
    assert!(refused.header("X-Accepted-Stream-Protocol-Versions").is_some());
    let url = server.exec_url(exec()).unwrap();
    assert_eq!(ws_connect(&url, &["nope.k8s.io"]).await.unwrap_err(), 400);
}

#[tokio::test]
async fn a_client_that_never_creates_its_streams_is_dropped() {
    let options = ServerOptions {
        stream_creation_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let server = start_with(Arc::new(HostBackend::with_container("c1")), options).await;
    let url = server.exec_url(exec()).unwrap();
    let (session, _) = spdy_session(&url, V4).await;
    within(5, session.closed()).await;
}
