//! The streaming server over TLS: crictl (which skips verification unless given a CA) on both transports.

#[path = "support/cri.rs"]
mod cri;
mod support;

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use berth_streaming::{ExecRequest, ServerOptions, StartError, StreamingServer, TlsFiles};
use support::{HostBackend, start_with, within};

fn self_signed(dir: &Path) -> Option<TlsFiles> {
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(&files.key)
        .arg("-out")
        .arg(&files.cert)
        .args([
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    status.success().then_some(files)
}

#[tokio::test]
async fn tls_urls_are_https_and_crictl_execs_through_them() {
    let dir = tempfile::tempdir().unwrap();
    let Some(tls) = self_signed(dir.path()) else {
        eprintln!("openssl not available: skipping");
        return;
    };
    let options = ServerOptions {
        tls: Some(tls),
        ..Default::default()
    };
    let server = Arc::new(start_with(Arc::new(HostBackend::with_container("c1")), options).await);
    let url = server
        .exec_url(ExecRequest {
            container_id: "c1".into(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
        .unwrap();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    if std::process::Command::new("crictl").arg("--version").output().is_err() {
        eprintln!("crictl not installed: skipping the client part");
        return;
    }
    let socket = dir.path().join("cri.sock");
    let _cri = cri::serve(&socket, server.clone());
    let config = dir.path().join("crictl.yaml");
    std::fs::write(
        &config,
        format!("runtime-endpoint: unix://{}\ntimeout: 10\n", socket.display()),
    )
    .unwrap();
    for transport in ["spdy", "websocket"] {
        let out = within(
            30,
            tokio::process::Command::new("crictl")
                .arg("--config")
                .arg(&config)
                .args(["exec", "--transport", transport, "c1", "echo", "over tls"])
                .output(),
        )
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{transport}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "over tls\n");
    }
}

#[tokio::test]
async fn unreadable_tls_files_fail_the_start() {
    let options = ServerOptions {
        tls: Some(TlsFiles {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
        }),
        ..Default::default()
    };
    let result = StreamingServer::start_with(options, Arc::new(HostBackend::default())).await;
    match result {
        Err(StartError::TlsRead { path, .. }) => assert_eq!(path, Path::new("/nonexistent/cert.pem")),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("started without a certificate"),
    }
}
