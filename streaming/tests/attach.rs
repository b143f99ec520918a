//! Attach to a main process over both transports: stdio joined, tty resize of the main process, and
//! detaching leaves it running.

mod support;

use std::sync::Arc;
use std::time::Duration;

use berth_streaming::spdy::StreamReader;
use berth_streaming::{AttachRequest, TerminalSize};
use futures_util::{SinkExt, StreamExt};
use support::client::{spdy_session, stream_headers, ws_connect};
use support::{HostBackend, start, within};
use tokio_tungstenite::tungstenite::Message;

async fn read_until(rd: &mut StreamReader, needle: &str) -> String {
    let mut seen = Vec::new();
    while let Some(chunk) = rd.read().await {
        seen.extend_from_slice(&chunk);
        if String::from_utf8_lossy(&seen).contains(needle) {
            break;
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn spdy_attach_without_tty_keeps_stdout_and_stderr_apart() {
    let backend = Arc::new(HostBackend::default());
    backend.start_main(
        "m1",
        r#"while read l; do echo "out:$l"; echo "err:$l" >&2; done"#,
        false,
    );
    let server = start(backend.clone()).await;
    for round in 0..2 {
        let url = server
            .attach_url(AttachRequest {
                container_id: "m1".into(),
                stdin: true,
                stdout: true,
                stderr: true,
                tty: false,
                stdin_once: false,
            })
            .unwrap();
        let (session, _) = spdy_session(&url, &["v4.channel.k8s.io"]).await;
        let open = |kind: &'static str| session.open(stream_headers(&[("streamType", kind)]));
        let _error = open("error").await.unwrap();
        let (_, mut stdin) = open("stdin").await.unwrap();
        let (mut stdout, _) = open("stdout").await.unwrap();
        let (mut stderr, _) = open("stderr").await.unwrap();
        stdin.write(format!("line{round}\n").as_bytes()).await.unwrap();
        let out = within(10, read_until(&mut stdout, &format!("out:line{round}"))).await;
        assert_eq!(out, format!("out:line{round}\n"));
        let err = within(10, read_until(&mut stderr, &format!("err:line{round}"))).await;
        assert_eq!(err, format!("err:line{round}\n"));
        // Detach: the container keeps running and can be attached again.
        session.close().await;
        drop(session);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(backend.main_alive("m1"));
    }
}

#[tokio::test]
async fn websocket_attach_with_tty_resizes_the_main_process() {
    let backend = Arc::new(HostBackend::default());
    backend.start_main("t1", r#"while read l; do echo "got:$l"; stty size; done"#, true);
    let server = start(backend.clone()).await;
    let url = server
        .attach_url(AttachRequest {
            container_id: "t1".into(),
            stdin: true,
            stdout: true,
            stderr: false,
            tty: true,
            stdin_once: false,
        })
        .unwrap();
    let (ws, _) = ws_connect(&url, &["v5.channel.k8s.io"]).await.unwrap();
    let (mut sink, mut stream) = ws.split();
    let size = serde_json::to_vec(&TerminalSize { width: 90, height: 33 }).unwrap();
    sink.send(Message::Binary([&[4u8][..], &size].concat().into()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    sink.send(Message::Binary(b"\x00hi\n".to_vec().into())).await.unwrap();
    let mut out = Vec::new();
    within(10, async {
        while let Some(Ok(message)) = stream.next().await {
            if let Message::Binary(m) = message
                && m.first() == Some(&1)
            {
                out.extend_from_slice(&m[1..]);
                if String::from_utf8_lossy(&out).contains("33 90") {
                    break;
                }
            }
        }
    })
    .await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("got:hi"), "{out}");
    let resizes = backend.resizes.lock().unwrap().clone();
    assert_eq!(
        resizes,
        vec![("t1".to_string(), String::new(), TerminalSize { width: 90, height: 33 })]
    );
    drop((sink, stream));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(backend.main_alive("t1"), "detaching must not stop the container");
}

#[tokio::test]
async fn attach_to_an_unknown_container_reports_an_error() {
    let server = start(Arc::new(HostBackend::default())).await;
    let url = server
        .attach_url(AttachRequest {
            container_id: "ghost".into(),
            stdout: true,
            ..Default::default()
        })
        .unwrap();
    let (ws, _) = ws_connect(&url, &["v5.channel.k8s.io"]).await.unwrap();
    let out = within(10, support::client::ws_run(ws, Default::default())).await;
    assert!(
        out.error()
            .contains("error attaching to container: container ghost not found"),
        "{}",
        out.error()
    );
}

/// Reads a stream to its end (FIN or RST).
async fn read_to_end(rd: &mut StreamReader) -> String {
    let mut seen = Vec::new();
    while let Some(chunk) = rd.read().await {
        seen.extend_from_slice(&chunk);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn spdy_attach_detaches_when_stdin_ends_unless_stdin_once() {
    let backend = Arc::new(HostBackend::default());
    backend.start_main("d1", r#"while read l; do echo "out:$l"; done"#, false);
    // Reads one line, then keeps writing after the client's stdin has ended.
    backend.start_main("o1", r#"read l; echo "got:$l"; sleep 0.5; echo late"#, false);
    let server = start(backend.clone()).await;
    for (id, stdin_once) in [("d1", false), ("o1", true)] {
        let url = server
            .attach_url(AttachRequest {
                container_id: id.into(),
                stdin: true,
                stdout: true,
                stderr: false,
                tty: false,
                stdin_once,
            })
            .unwrap();
        let (session, _) = spdy_session(&url, &["v4.channel.k8s.io"]).await;
        let open = |kind: &'static str| session.open(stream_headers(&[("streamType", kind)]));
        let (mut error, _) = open("error").await.unwrap();
        let (_, mut stdin) = open("stdin").await.unwrap();
        let (mut stdout, _) = open("stdout").await.unwrap();
        stdin.write(b"x\n").await.unwrap();
        let first = within(10, read_until(&mut stdout, ":x")).await;
        // The client's stdin ends (client-go does so when its input reaches EOF).
        stdin.close().await.unwrap();
        let rest = within(10, read_to_end(&mut stdout)).await;
        let status = within(10, read_to_end(&mut error)).await;
        assert!(
            status.contains(r#""status":"Success""#),
            "a detach or the output's end is a success: {status}"
        );
        if stdin_once {
            assert_eq!(format!("{first}{rest}"), "got:x\nlate\n");
        } else {
            assert_eq!(format!("{first}{rest}"), "out:x\n");
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(backend.main_alive(id), "detaching must leave the container running");
        }
    }
}
