//! Exec, attach and port-forward against a real berthd with the real crictl (v1.36, both `--transport`s):
//! exit codes, piped stdin, a tty under a pseudo-terminal with a resize, attach and detach, port-forward to a
//! busybox httpd in a pod (parallel connections, 20 MB each way with bounded daemon memory), an exec killed
//! when its client vanishes, and misused streaming URLs.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_cri::api::ExecRequest;
use berth_integration::{Berthd, BerthdOptions, crictl_path, ensure_test_images, ok_stdout, unique};

const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
const TRANSPORTS: [&str; 2] = ["spdy", "websocket"];

/// A berthd with one ready pod.
struct Pod {
    b: Berthd,
    id: String,
    config: String,
}

impl Pod {
    fn start(name: &str, extra_config: &str) -> Pod {
        ensure_test_images();
        let b = Berthd::start(BerthdOptions {
            config: extra_config.into(),
            ..Default::default()
        })
        .unwrap();
        ok_stdout(&b.crictl(&["pull", BUSYBOX]), "crictl pull");
        let config = write_json(
            b.dir.path(),
            &format!("{name}-pod.json"),
            serde_json::json!({
                "metadata": {"name": name, "namespace": "default", "uid": unique("uid-"), "attempt": 0},
                "log_directory": b.dir.path().join("logs").display().to_string(),
                "linux": {}
            }),
        );
        let id = ok_stdout(&b.crictl(&["runp", &config]), "crictl runp")
            .trim()
            .to_string();
        Pod { b, id, config }
    }

    /// Creates and starts a busybox container running `script`.
    fn container(&self, name: &str, script: &str, stdin: bool) -> String {
        let ctr = write_json(
            self.b.dir.path(),
            &format!("{name}-ctr.json"),
            serde_json::json!({
                "metadata": {"name": name},
                "image": {"image": BUSYBOX},
                "command": ["/bin/sh", "-c", script],
                "log_path": format!("{name}.log"),
                "stdin": stdin,
            }),
        );
        let id = ok_stdout(
            &self.b.crictl(&["create", &self.id, &ctr, &self.config]),
            "crictl create",
        )
        .trim()
        .to_string();
        ok_stdout(&self.b.crictl(&["start", &id]), "crictl start");
        id
    }

    /// crictl against this berthd, not yet started.
    fn crictl(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(crictl_path());
        cmd.arg("--runtime-endpoint")
            .arg(self.b.endpoint())
            .arg("--image-endpoint")
            .arg(self.b.endpoint())
            .arg("--timeout")
            .arg("60s")
            .args(args);
        cmd
    }

    fn exec_s(&self, ctr: &str, script: &str) -> String {
        ok_stdout(&self.b.crictl(&["exec", "-s", ctr, "sh", "-c", script]), script)
    }

    fn state(&self, ctr: &str) -> String {
        let v: serde_json::Value =
            serde_json::from_str(&ok_stdout(&self.b.crictl(&["inspect", ctr]), "crictl inspect")).unwrap();
        v["status"]["state"].as_str().unwrap_or_default().to_string()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = self.b.crictl(&["rmp", "-f", &self.id]);
    }
}

fn write_json(dir: &Path, name: &str, v: serde_json::Value) -> String {
    let p = dir.join(name);
    std::fs::write(&p, v.to_string()).unwrap();
    p.display().to_string()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `cmd` with `stdin` piped in, at most `secs` seconds.
fn run_with_input(mut cmd: Command, stdin: &[u8], secs: u64) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} did not finish in {secs} s: {:?}", child.wait_with_output());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Polls `f` every 100 ms for up to `secs` seconds; panics with `what` when it never holds.
fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A child killed (and reaped) when dropped, even when the test fails.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn exec_exit_codes_and_piped_stdin_on_both_transports() {
    let pod = Pod::start("exec", "");
    let ctr = pod.container("box", "exec sleep 1000", false);

    // ExecSync: the exit code comes back (crictl 1.36 names it and exits 1).
    let out = pod.b.crictl(&["exec", "-s", &ctr, "sh", "-c", "exit 7"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("exited with 7"), "{out:?}");

    for transport in TRANSPORTS {
        let out = run_with_input(
            pod.crictl(&[
                "exec",
                "--transport",
                transport,
                &ctr,
                "sh",
                "-c",
                "echo out; echo err >&2",
            ]),
            b"",
            60,
        );
        assert!(out.status.success(), "{transport}: {out:?}");
        assert_eq!(text(&out.stdout), "out\n", "{transport}");
        assert!(text(&out.stderr).contains("err\n"), "{transport}: {out:?}");

        // The exit code travels in the error stream's Status (client-go prints it; crictl exits 1).
        let out = run_with_input(
            pod.crictl(&["exec", "--transport", transport, &ctr, "sh", "-c", "exit 7"]),
            b"",
            60,
        );
        assert!(!out.status.success(), "{transport}");
        assert!(
            text(&out.stderr).contains("command terminated with exit code 7"),
            "{transport}: {out:?}"
        );

        let input = b"piped stdin\n".repeat(5000);
        let out = run_with_input(
            pod.crictl(&["exec", "-i", "--transport", transport, &ctr, "tr", "a-z", "A-Z"]),
            &input,
            60,
        );
        assert!(out.status.success(), "{transport}: {}", text(&out.stderr));
        assert_eq!(out.stdout, input.to_ascii_uppercase(), "{transport}");
    }
}

/// A pseudo-terminal whose output is collected by a thread.
struct Pty {
    master: Arc<OwnedFd>,
    screen: Arc<Mutex<Vec<u8>>>,
}

impl Pty {
    /// Runs `cmd` as the session leader of a new pty (`setsid -c`) of `rows` x `cols`.
    fn spawn(cmd: &Command, rows: u16, cols: u16) -> (Pty, Reaped) {
        let size = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&size), None).unwrap();
        let mut setsid = Command::new("setsid");
        setsid.arg("-c").arg(cmd.get_program()).args(cmd.get_args());
        setsid
            .env("TERM", "xterm")
            .stdin(pty.slave.try_clone().unwrap())
            .stdout(pty.slave.try_clone().unwrap())
            .stderr(pty.slave);
        let child = Reaped(setsid.spawn().unwrap());
        // Our copies of the slave are gone with `setsid`: the master reads EIO once crictl exits.
        drop(setsid);
        let master = Arc::new(pty.master);
        let screen = Arc::new(Mutex::new(Vec::new()));
        let (m, s) = (master.clone(), screen.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = nix::unistd::read(&*m, &mut buf) {
                if n == 0 {
                    break;
                }
                s.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        (Pty { master, screen }, child)
    }

    fn screen(&self) -> String {
        text(&self.screen.lock().unwrap())
    }

    fn send(&self, keys: &str) {
        let mut off = 0;
        while off < keys.len() {
            off += nix::unistd::write(&*self.master, &keys.as_bytes()[off..]).unwrap();
        }
    }

    /// Waits until `needle` appears after byte `from` of the screen; returns the screen's length then.
    fn wait_for(&self, needle: &str, from: usize) -> usize {
        eventually(30, &format!("{needle:?} never appeared:\n{}", self.screen()), || {
            self.screen().get(from..).is_some_and(|s| s.contains(needle))
        });
        self.screen.lock().unwrap().len()
    }

    /// Sets the terminal size; the kernel sends SIGWINCH to crictl, which forwards the size.
    fn resize(&self, rows: u16, cols: u16) {
        let size = rustix::termios::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(&*self.master, size).unwrap();
    }
}

#[test]
fn exec_with_a_tty_under_a_pseudo_terminal_follows_resizes() {
    let pod = Pod::start("tty", "");
    let ctr = pod.container("box", "exec sleep 1000", false);
    for transport in TRANSPORTS {
        let cmd = pod.crictl(&["exec", "-it", "--transport", transport, &ctr, "sh"]);
        let (pty, mut child) = Pty::spawn(&cmd, 40, 120);
        pty.send("tty; stty size\n");
        let seen = pty.wait_for("40 120", 0);
        assert!(pty.screen().contains("/dev/pts/"), "{transport}: {}", pty.screen());
        pty.resize(30, 100);
        // The resize travels asynchronously: ask until the shell sees it.
        eventually(30, &format!("{transport}: no resize:\n{}", pty.screen()), || {
            let from = pty.screen.lock().unwrap().len().max(seen);
            pty.send("stty size\n");
            std::thread::sleep(Duration::from_millis(300));
            pty.screen().get(from..).is_some_and(|s| s.contains("30 100"))
        });
        pty.send("exit 7\n");
        let mut status = None;
        eventually(
            30,
            &format!("{transport}: crictl did not exit:\n{}", pty.screen()),
            || {
                status = child.0.try_wait().unwrap();
                status.is_some()
            },
        );
        assert!(!status.unwrap().success(), "{transport}");
        eventually(10, &format!("{transport}: no exit code:\n{}", pty.screen()), || {
            pty.screen().contains("command terminated with exit code 7")
        });
    }
}

#[test]
fn attach_echoes_stdin_and_detaching_leaves_the_container_running() {
    let pod = Pod::start("attach", "");
    let ctr = pod.container("echo", r#"while read l; do echo "echo:$l"; done"#, true);
    for (i, transport) in TRANSPORTS.iter().enumerate() {
        let mut child = Reaped(
            pod.crictl(&["attach", "-i", "--transport", transport, &ctr])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let mut stdin = child.0.stdin.take().unwrap();
        let mut stdout = child.0.stdout.take().unwrap();
        let word = format!("hello{i}-{transport}");
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                g.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        // Until the attach is set up, lines may go to the container before anyone listens: repeat.
        let expected = format!("echo:{word}\n");
        eventually(30, &format!("{transport}: no echo"), || {
            stdin.write_all(format!("{word}\n").as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(200));
            text(&got.lock().unwrap()).contains(&expected)
        });
        // Detach: crictl goes away.
        drop(child);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(pod.state(&ctr), "CONTAINER_RUNNING", "{transport}");
    }
}

#[test]
fn an_exec_whose_client_disconnects_is_killed() {
    let pod = Pod::start("kill", "");
    let ctr = pod.container("box", "exec sleep 1000", false);
    for (i, transport) in TRANSPORTS.iter().enumerate() {
        // The sleep's length marks this exec in `ps`.
        let marker = format!("sleep {}", 4242 + i);
        let child = Reaped(
            pod.crictl(&[
                "exec",
                "--transport",
                transport,
                &ctr,
                "sh",
                "-c",
                &format!("exec {marker}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        );
        eventually(30, &format!("{transport}: the exec never ran"), || {
            pod.exec_s(&ctr, "ps").contains(&marker)
        });
        // SIGKILL: the connection drops without any goodbye.
        drop(child);
        eventually(30, &format!("{transport}: {marker} outlived its client"), || {
            !pod.exec_s(&ctr, "ps").contains(&marker)
        });
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `crictl port-forward` running until dropped, forwarding a free local port to `remote` in the pod.
fn port_forward(pod: &Pod, transport: &str, remote: u16) -> (u16, Reaped) {
    let local = free_port();
    let mut child = Reaped(
        pod.crictl(&[
            "port-forward",
            "--transport",
            transport,
            &pod.id,
            &format!("{local}:{remote}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    let mut stdout = child.0.stdout.take().unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") && stdout.read(&mut byte).unwrap_or(0) == 1 {
        line.push(byte[0]);
    }
    assert!(text(&line).contains("Forwarding from"), "{transport}: {}", text(&line));
    // crictl keeps printing a line per connection: keep its pipe drained.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    (local, child)
}

fn http_get(port: u16, path: &str) -> Vec<u8> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    out
}

const HTTPD: &str = "mkdir -p /www && echo 'hello from inside the pod' > /www/index.html && \
                     dd if=/dev/urandom of=/www/big bs=1048576 count=20 2>/dev/null && \
                     exec httpd -f -p 8080 -h /www";

/// A pod whose container serves /www on :8080 (index.html and 20 MiB of random bytes in /big).
fn httpd_pod(name: &str) -> (Pod, String) {
    let pod = Pod::start(name, "");
    let ctr = pod.container("httpd", HTTPD, false);
    wait_httpd(&pod, &ctr);
    (pod, ctr)
}

fn wait_httpd(pod: &Pod, ctr: &str) {
    eventually(60, "httpd never served", || {
        pod.b
            .crictl(&[
                "exec",
                "-s",
                ctr,
                "wget",
                "-q",
                "-O",
                "-",
                "http://127.0.0.1:8080/index.html",
            ])
            .status
            .success()
    });
}

#[test]
fn port_forward_to_httpd_in_a_pod_with_parallel_connections() {
    let (pod, _ctr) = httpd_pod("pf");
    for transport in TRANSPORTS {
        let (local, _forward) = port_forward(&pod, transport, 8080);
        for round in 0..2 {
            let (a, b) = std::thread::scope(|s| {
                let a = s.spawn(|| http_get(local, "/index.html"));
                let b = s.spawn(|| http_get(local, "/index.html"));
                (a.join().unwrap(), b.join().unwrap())
            });
            for page in [a, b] {
                let page = text(&page);
                assert!(page.contains(" 200 OK"), "{transport} round {round}: {page}");
                assert!(page.contains("hello from inside the pod"), "{transport}: {page}");
            }
        }
    }
}

fn sha256(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    text(&out.stdout).split_whitespace().next().unwrap().to_string()
}

/// Peak resident memory of a process (kB).
fn vm_hwm_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn port_forward_moves_20_mb_each_way_without_buffering_it() {
    let (pod, ctr) = httpd_pod("big");
    let want = pod.exec_s(&ctr, "sha256sum /www/big");
    let want = want.split_whitespace().next().unwrap();
    let berthd = pod.b.child.as_ref().unwrap().id();
    let before = vm_hwm_kb(berthd);
    let upload: Vec<u8> = (0..20u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let upload_sum = sha256(&upload);
    for (i, transport) in TRANSPORTS.iter().enumerate() {
        // Download through a slow reader: nothing is read for a while, so whatever does not push back
        // would pile the whole file up in memory.
        let (local, _forward) = port_forward(&pod, transport, 8080);
        let mut s = std::net::TcpStream::connect(("127.0.0.1", local)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(b"GET /big HTTP/1.0\r\n\r\n").unwrap();
        std::thread::sleep(Duration::from_secs(2));
        let mut page = Vec::new();
        s.read_to_end(&mut page).unwrap();
        let split = page.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(page.len() - split, 20 << 20, "{transport}: {}", text(&page[..split]));
        assert_eq!(sha256(&page[split..]), want, "{transport}");

        // Upload to a listener in the pod (its stdin never ends, so it never half-closes first).
        let port = 9000 + i as u16;
        pod.exec_s(
            &ctr,
            &format!("(sleep 1000 | nc -l -p {port} > /tmp/up{port}) </dev/null >/dev/null 2>&1 &"),
        );
        eventually(30, "nc never listened", || {
            pod.exec_s(&ctr, "netstat -ltn").contains(&format!(":{port} "))
        });
        let (local, _forward) = port_forward(&pod, transport, port);
        let mut s = std::net::TcpStream::connect(("127.0.0.1", local)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(&upload).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        // nc exits at our EOF, which ends the connection.
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        let got = pod.exec_s(&ctr, &format!("sha256sum /tmp/up{port}"));
        assert_eq!(got.split_whitespace().next(), Some(upload_sum.as_str()), "{transport}");
    }
    let grown = vm_hwm_kb(berthd).saturating_sub(before);
    eprintln!("berthd peak RSS: {before} kB before, grew by {grown} kB");
    assert!(
        grown < 12 * 1024,
        "berthd's peak memory grew by {grown} kB while 80 MB went through it"
    );
}

/// Sends an upgrade request for `url` (SPDY, as crictl does) and returns the HTTP status.
fn upgrade_status(url: &str) -> u16 {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = std::net::TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    let line = text(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status line: {line:?}"))
}

#[test]
fn misused_streaming_urls_are_refused() {
    let pod = Pod::start("tokens", "[streaming]\ntoken_ttl_secs = 2\n");
    let ctr = pod.container("box", "exec sleep 1000", false);
    let stopped = pod.container("done", "true", false);
    eventually(30, "the container never exited", || {
        pod.state(&stopped) == "CONTAINER_EXITED"
    });
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let mut rt = tokio.block_on(pod.b.runtime()).unwrap();
    let mut exec = |container_id: &str| {
        tokio.block_on(rt.exec(ExecRequest {
            container_id: container_id.into(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        }))
    };

    // Replayed: the first use upgrades, the second finds nothing.
    let url = exec(&ctr).unwrap().into_inner().url;
    assert_eq!(upgrade_status(&url), 101);
    assert_eq!(upgrade_status(&url), 404);

    // Expired: unused past its time to live.
    let url = exec(&ctr).unwrap().into_inner().url;
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(upgrade_status(&url), 404);

    // An exec URL used for another kind of session, and a token that was never handed out.
    let url = exec(&ctr).unwrap().into_inner().url;
    assert_eq!(upgrade_status(&url.replace("/exec/", "/attach/")), 404);
    let forged = format!("{}/{}", url.rsplit_once('/').unwrap().0, "A".repeat(43));
    assert_eq!(upgrade_status(&forged), 404);

    // The wrong container gets no URL at all: unknown, or not running.
    let e = exec(&"f".repeat(64)).unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let e = exec(&stopped).unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
}
