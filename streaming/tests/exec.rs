//! Exec over both transports against real host processes: stdin, separated and merged output, tty, resize,
//! exit codes.

mod support;

use std::sync::Arc;
use std::time::Duration;

use berth_streaming::{ExecRequest, TerminalSize};
use support::client::{Script, spdy_run, spdy_session, ws_connect, ws_run};
use support::{HostBackend, start, within};

fn exec(cmd: &str, tty: bool, stdin: bool) -> ExecRequest {
    ExecRequest {
        container_id: "c1".into(),
        cmd: vec!["sh".into(), "-c".into(), cmd.into()],
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    }
}

const SPDY_V4: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
];

#[tokio::test]
async fn spdy_exec_separates_stdout_and_stderr_and_reports_success() {
    let server = start(Arc::new(HostBackend::with_container("c1"))).await;
    let url = server.exec_url(exec("echo out; echo err >&2", false, false)).unwrap();
    let (session, protocol) = spdy_session(&url, SPDY_V4).await;
    assert_eq!(protocol, "v4.channel.k8s.io");
    let out = within(10, spdy_run(session, Script::default())).await;
    assert_eq!(out.stdout(), "out\n");
    assert_eq!(out.stderr(), "err\n");
    assert_eq!(out.error(), r#"{"metadata":{},"status":"Success"}"#);
}

#[tokio::test]
async fn spdy_exec_pipes_stdin_and_reports_exit_code() {
    let server = start(Arc::new(HostBackend::with_container("c1"))).await;
    let url = server.exec_url(exec("tr a-z A-Z; exit 7", false, true)).unwrap();
    let (session, _) = spdy_session(&url, SPDY_V4).await;
    let big: Vec<u8> = b"hello world\n".repeat(20_000);
    let script = Script {
        stdin: Some(big.clone()),
        ..Default::default()
    };
    let out = within(20, spdy_run(session, script)).await;
    assert_eq!(out.stdout, big.to_ascii_uppercase());
    assert_eq!(out.exit_code(), Some(7), "{}", out.error());
    assert!(out.error().contains("NonZeroExitCode"));
}

#[tokio::test]
async fn spdy_exec_with_tty_merges_output_and_applies_resizes() {
    let backend = Arc::new(HostBackend::with_container("c1"));
    let server = start(backend.clone()).await;
    let url = server
        .exec_url(exec("tty; read x; stty size; echo oops >&2", true, true))
        .unwrap();
    let (session, _) = spdy_session(&url, SPDY_V4).await;
    let script = Script {
        stdin: Some(b"go\n".to_vec()),
        tty: true,
        resizes: vec![
            TerminalSize { width: 80, height: 24 },
            TerminalSize { width: 132, height: 43 },
        ],
        stdin_delay: Duration::from_millis(300),
        ..Default::default()
    };
    let out = within(10, spdy_run(session, script)).await;
    let stdout = out.stdout();
    assert!(stdout.contains("/dev/pts/"), "{stdout:?}");
    assert!(stdout.contains("43 132"), "{stdout:?}");
    assert!(stdout.contains("oops"), "stderr is merged: {stdout:?}");
    assert_eq!(out.exit_code(), Some(0));
    let resizes = backend.resizes.lock().unwrap().clone();
    assert_eq!(resizes.last().unwrap().2, TerminalSize { width: 132, height: 43 });
    assert!(resizes.iter().all(|(c, s, _)| c == "c1" && s.starts_with("exec-")));
}

#[tokio::test]
async fn spdy_v2_client_gets_text_errors() {
    let server = start(Arc::new(HostBackend::with_container("c1"))).await;
    let url = server.exec_url(exec("exit 3", false, false)).unwrap();
    let (session, protocol) = spdy_session(&url, &["v2.channel.k8s.io"]).await;
    assert_eq!(protocol, "v2.channel.k8s.io");
    let out = within(10, spdy_run(session, Script::default())).await;
    assert!(
        out.error().starts_with("command terminated with non-zero exit code"),
        "{}",
        out.error()
    );
}

#[tokio::test]
async fn exec_in_unknown_container_reports_an_internal_error() {
    let server = start(Arc::new(HostBackend::with_container("c1"))).await;
    let mut request = exec("true", false, false);
    request.container_id = "nope".into();
    let url = server.exec_url(request).unwrap();
    let (session, _) = spdy_session(&url, SPDY_V4).await;
    let out = within(10, spdy_run(session, Script::default())).await;
    let status: serde_json::Value = serde_json::from_slice(&out.error).unwrap();
    assert_eq!(status["reason"], "InternalError");
    assert!(status["message"].as_str().unwrap().contains("container nope not found"));
}

#[tokio::test]
async fn websocket_v5_exec_with_stdin_close_signal() {
    let server = start(Arc::new(HostBackend::with_container("c1"))).await;
    let url = server
        .exec_url(exec("cat; echo done >&2; exit 4", false, true))
        .unwrap();
    let (ws, protocol) = ws_connect(&url, &["v5.channel.k8s.io", "v4.channel.k8s.io"])
        .await
        .unwrap();
    assert_eq!(protocol, "v5.channel.k8s.io");
    let script = Script {
        stdin: Some(b"piped\n".to_vec()),
        ..Default::default()
    };
    let out = within(10, ws_run(ws, script)).await;
    assert_eq!(out.stdout(), "piped\n");
    assert_eq!(out.stderr(), "done\n");
    assert_eq!(out.exit_code(), Some(4), "{}", out.error());
}

#[tokio::test]
async fn websocket_v4_exec_with_tty_and_resize() {
    let server = start(Arc::new(HostBackend::with_container("c1"))).await;
    let url = server.exec_url(exec("read x; stty size; exit 7", true, true)).unwrap();
    let (ws, protocol) = ws_connect(&url, &["v4.channel.k8s.io"]).await.unwrap();
    assert_eq!(protocol, "v4.channel.k8s.io");
    let script = Script {
        stdin: Some(b"go\n".to_vec()),
        tty: true,
        resizes: vec![TerminalSize { width: 100, height: 30 }],
        stdin_delay: Duration::from_millis(300),
        keep_stdin_open: true,
        ..Default::default()
    };
    let out = within(10, ws_run(ws, script)).await;
    assert!(out.stdout().contains("30 100"), "{:?}", out.stdout());
    assert_eq!(out.exit_code(), Some(7));
}

#[tokio::test]
async fn websocket_base64_protocol() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let server = start(Arc::new(HostBackend::with_container("c1"))).await;
    let url = server.exec_url(exec("printf hi", false, false)).unwrap();
    let (mut ws, protocol) = ws_connect(&url, &["v4.base64.channel.k8s.io"]).await.unwrap();
    assert_eq!(protocol, "v4.base64.channel.k8s.io");
    let mut texts = Vec::new();
    while let Some(Ok(message)) = within(10, ws.next()).await {
        if let Message::Text(t) = message {
            texts.push(t.to_string());
        }
    }
    assert_eq!(texts[0], "1", "empty message on stdout first");
    assert!(texts.contains(&"1aGk=".to_string()), "{texts:?}");
    assert!(texts.iter().any(|t| t.starts_with('3')), "{texts:?}");
}

#[tokio::test]
async fn exec_process_outliving_its_output_is_not_waited_for_forever() {
    // A background child keeps stdout open after the shell exits: the session ends anyway.
    let server = start(Arc::new(HostBackend::with_container("c1"))).await;
    let url = server.exec_url(exec("sleep 30 & echo started", false, false)).unwrap();
    let (session, _) = spdy_session(&url, SPDY_V4).await;
    let out = within(10, spdy_run(session, Script::default())).await;
    assert_eq!(out.stdout(), "started\n");
    assert_eq!(out.exit_code(), Some(0));
}

/// The pid of the one exec process `backend` runs, once it runs.
async fn exec_pid(backend: &HostBackend) -> u32 {
    within(10, async {
        loop {
            if let Some(pid) = backend.exec_pids.lock().unwrap().values().next() {
                return *pid;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

async fn wait_gone(pid: u32) {
    within(10, async {
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// containerd's behaviour: a client that vanishes (here without even half-closing) takes its exec with it.
#[tokio::test]
async fn an_exec_whose_client_disconnects_is_killed() {
    for transport in ["spdy", "websocket"] {
        let backend = Arc::new(HostBackend::with_container("c1"));
        let server = start(backend.clone()).await;
        let url = server.exec_url(exec("sleep 1000", false, false)).unwrap();
        let connection: Box<dyn std::any::Any> = if transport == "spdy" {
            let (session, _) = spdy_session(&url, SPDY_V4).await;
            let mut streams = Vec::new();
            for kind in ["error", "stdout", "stderr"] {
                let headers = support::client::stream_headers(&[("streamType", kind)]);
                streams.push(session.open(headers).await.unwrap());
            }
            Box::new((session, streams))
        } else {
            Box::new(ws_connect(&url, &["v5.channel.k8s.io"]).await.unwrap())
        };
        let pid = exec_pid(&backend).await;
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        drop(connection);
        wait_gone(pid).await;
    }
}
