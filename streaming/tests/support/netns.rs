//! A private network namespace for port-forward tests: created by a thread that unshares, pinned by a bind
//! mount on a temp file (as berth pins pod namespaces), with its loopback up and servers started inside.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

pub struct TestNetns {
    _dir: tempfile::TempDir,
    path: PathBuf,
    children: Vec<Child>,
}

impl TestNetns {
    pub fn new() -> TestNetns {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("net");
        std::fs::write(&path, b"").unwrap();
        let target = path.clone();
        std::thread::spawn(move || {
            unshare(CloneFlags::CLONE_NEWNET).unwrap();
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .unwrap();
            let up = Command::new("ip").args(["link", "set", "lo", "up"]).status().unwrap();
            assert!(up.success());
        })
        .join()
        .unwrap();
        TestNetns {
            _dir: dir,
            path,
            children: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a thread inside the namespace (children it spawns live there too).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            setns(&ns, CloneFlags::CLONE_NEWNET).unwrap();
            tx.send(f()).unwrap();
        });
        rx.recv().unwrap()
    }

    /// Starts busybox httpd on 127.0.0.1:`port` inside, serving `dir`.
    pub fn httpd(&mut self, port: u16, dir: &Path) {
        let dir = dir.to_path_buf();
        let child = self.run(move || {
            Command::new("busybox")
                .args(["httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h"])
                .arg(&dir)
                .spawn()
                .unwrap()
        });
        self.children.push(child);
        // Wait until it listens.
        for _ in 0..100 {
            let up = self.run(move || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
            if up {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("httpd did not start");
    }

    /// A listener on 127.0.0.1:`port` inside, for tokio.
    pub fn listen(&self, port: u16) -> tokio::net::TcpListener {
        let listener = self.run(move || std::net::TcpListener::bind(("127.0.0.1", port)).unwrap());
        listener.set_nonblocking(true).unwrap();
        tokio::net::TcpListener::from_std(listener).unwrap()
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = umount2(&self.path, MntFlags::MNT_DETACH);
    }
}
