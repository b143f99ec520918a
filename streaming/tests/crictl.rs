//! The real crictl (cri-tools v1.36, /usr/local/bin) against the streaming server, through a minimal test
//! CRI server: exec (stdin, tty under tmux with a resize, exit codes), attach and port-forward, on both
//! transports. Skipped when crictl is not installed.

#[path = "support/cri.rs"]
mod cri;
mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use berth_streaming::StreamingServer;
use support::netns::TestNetns;
use support::{HostBackend, start, within};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const TRANSPORTS: [&str; 2] = ["spdy", "websocket"];

struct Crictl {
    dir: tempfile::TempDir,
    config: PathBuf,
    _cri: tokio::task::JoinHandle<()>,
    _server: Arc<StreamingServer>,
}

fn installed() -> bool {
    let found = std::process::Command::new("crictl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("crictl not installed: skipping");
    }
    found
}

impl Crictl {
    async fn new(backend: Arc<HostBackend>) -> Crictl {
        let server = Arc::new(start(backend).await);
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("cri.sock");
        let cri = cri::serve(&socket, server.clone());
        let config = dir.path().join("crictl.yaml");
        let endpoint = format!("unix://{}", socket.display());
        std::fs::write(
            &config,
            format!("runtime-endpoint: {endpoint}\nimage-endpoint: {endpoint}\ntimeout: 10\n"),
        )
        .unwrap();
        Crictl {
            dir,
            config,
            _cri: cri,
            _server: server,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("crictl");
        cmd.arg("--config").arg(&self.config).args(args);
        cmd.kill_on_drop(true);
        cmd
    }

    fn shell_line(&self, args: &str) -> String {
        format!("crictl --config {} {args}", self.config.display())
    }

    async fn run(&self, args: &[&str], stdin: &[u8]) -> std::process::Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin).await.unwrap();
        drop(input);
        within(30, child.wait_with_output()).await.unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn crictl_exec_on_both_transports() {
    if !installed() {
        return;
    }
    let crictl = Crictl::new(Arc::new(HostBackend::with_container("c1"))).await;
    for transport in TRANSPORTS {
        let out = crictl
            .run(
                &[
                    "exec",
                    "--transport",
                    transport,
                    "c1",
                    "sh",
                    "-c",
                    "echo out; echo err >&2",
                ],
                b"",
            )
            .await;
        assert!(out.status.success(), "{transport}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "out\n", "{transport}");
        assert!(
            text(&out.stderr).contains("err\n"),
            "{transport}: {}",
            text(&out.stderr)
        );

        let out = crictl
            .run(&["exec", "--transport", transport, "c1", "sh", "-c", "exit 7"], b"")
            .await;
        assert!(!out.status.success());
        // crictl 1.36 exits 1 and prints client-go's decoding of our Status, which carries the code.
        assert!(
            text(&out.stderr).contains("command terminated with exit code 7"),
            "{transport}: {}",
            text(&out.stderr)
        );

        let out = crictl
            .run(
                &["exec", "-i", "--transport", transport, "c1", "tr", "a-z", "A-Z"],
                b"piped stdin\n",
            )
            .await;
        assert!(out.status.success(), "{transport}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "PIPED STDIN\n", "{transport}");
    }
}

#[tokio::test]
async fn crictl_exec_refused_for_unknown_container() {
    if !installed() {
        return;
    }
    let crictl = Crictl::new(Arc::new(HostBackend::with_container("c1"))).await;
    let out = crictl.run(&["exec", "missing", "true"], b"").await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("container missing not found"),
        "{}",
        text(&out.stderr)
    );
}

struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .env("TERM", "xterm")
            .output()
            .unwrap();
        assert!(out.status.success(), "tmux {args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    }

    fn screen(&self) -> String {
        self.cmd(&["capture-pane", "-p", "-t", "t"])
    }

    async fn wait_for(&self, needle: &str) -> String {
        for _ in 0..200 {
            let screen = self.screen();
            if screen.contains(needle) {
                return screen;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{needle:?} never appeared:\n{}", self.screen());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
    }
}

fn tmux_installed() -> bool {
    std::process::Command::new("tmux").arg("-V").output().is_ok()
}

#[tokio::test]
async fn crictl_exec_tty_under_tmux_with_resize() {
    if !installed() || !tmux_installed() {
        return;
    }
    let crictl = Crictl::new(Arc::new(HostBackend::with_container("c1"))).await;
    for transport in TRANSPORTS {
        let tmux = Tmux {
            socket: crictl.dir.path().join(format!("tmux-{transport}")),
        };
        let line = crictl.shell_line(&format!("exec -it --transport {transport} c1 sh"));
        let script = format!("{line}; echo EXIT=$?; sleep 60");
        tmux.cmd(&["new-session", "-d", "-s", "t", "-x", "120", "-y", "40", &script]);
        tmux.cmd(&["send-keys", "-t", "t", "tty; stty size", "Enter"]);
        let screen = tmux.wait_for("40 120").await;
        assert!(screen.contains("/dev/pts/"), "{screen}");
        tmux.cmd(&["resize-window", "-t", "t", "-x", "100", "-y", "30"]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        tmux.cmd(&["send-keys", "-t", "t", "stty size", "Enter"]);
        tmux.wait_for("30 100").await;
        tmux.cmd(&["send-keys", "-t", "t", "exit 7", "Enter"]);
        let screen = tmux.wait_for("EXIT=").await;
        assert!(
            screen.contains("command terminated with exit code 7"),
            "{transport}:\n{screen}"
        );
    }
}

#[tokio::test]
async fn crictl_attach_echoes_and_detaching_leaves_the_container_running() {
    if !installed() {
        return;
    }
    let backend = Arc::new(HostBackend::default());
    backend.start_main("main1", r#"while read l; do echo "echo:$l"; done"#, false);
    let crictl = Crictl::new(backend.clone()).await;
    for (i, transport) in TRANSPORTS.iter().enumerate() {
        let mut child = crictl
            .command(&["attach", "-i", "--transport", transport, "main1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let word = format!("hello{i}");
        stdin.write_all(format!("{word}\n").as_bytes()).await.unwrap();
        let line = within(15, stdout.next_line()).await.unwrap().unwrap();
        assert_eq!(line, format!("echo:{word}"), "{transport}");
        // Detach.
        child.kill().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            backend.main_alive("main1"),
            "{transport}: detaching must not stop the container"
        );
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn http_get(port: u16) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    text(&out)
}

fn web_root(dir: &Path) -> PathBuf {
    let root = dir.join("www");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("index.html"), "hello from inside the pod\n").unwrap();
    root
}

#[tokio::test]
async fn crictl_port_forward_to_httpd_in_a_pod_netns() {
    if !installed() {
        return;
    }
    let mut netns = TestNetns::new();
    let dir = tempfile::tempdir().unwrap();
    netns.httpd(8080, &web_root(dir.path()));
    let backend = Arc::new(HostBackend::default());
    backend
        .netns
        .lock()
        .unwrap()
        .insert("pod1".into(), Some(netns.path().to_path_buf()));
    let crictl = Crictl::new(backend).await;
    for transport in TRANSPORTS {
        let local = free_port();
        let mut child = crictl
            .command(&[
                "port-forward",
                "--transport",
                transport,
                "pod1",
                &format!("{local}:8080"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = within(15, stdout.next_line()).await.unwrap().unwrap();
        assert!(line.contains("Forwarding from"), "{line}");
        for round in 0..2 {
            let (a, b) = within(15, async { tokio::join!(http_get(local), http_get(local)) }).await;
            for page in [a, b] {
                assert!(page.contains(" 200 OK"), "{transport} round {round}: {page}");
                assert!(page.contains("hello from inside the pod"), "{transport}: {page}");
            }
        }
        child.kill().await.unwrap();
    }
}
