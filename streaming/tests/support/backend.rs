//! A StreamBackend running real host processes: everything is real except the container.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use berth_core::plugin::isolation::{ExecSpec, ExitStatus, ProcessIo};
use berth_core::plugin::{PluginError, PluginResult};
use berth_streaming::{StreamBackend, TerminalSize};
use tokio::process::Command;
use tokio::sync::oneshot;

/// A long-running process playing a container's main process, for attach.
pub struct MainProcess {
    tty: bool,
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: Option<OwnedFd>,
    child: std::process::Child,
}

#[derive(Default)]
pub struct HostBackend {
    /// Containers exec may run in (their names only: commands run on the host).
    pub containers: Mutex<Vec<String>>,
    /// Attachable main processes by container id.
    mains: Mutex<HashMap<String, MainProcess>>,
    exits: Mutex<HashMap<String, oneshot::Receiver<ExitStatus>>>,
    /// Exec processes by session, until they are waited for.
    pub exec_pids: Mutex<HashMap<String, u32>>,
    /// Pty masters by exec session ("" + container id for main processes), for resizes.
    masters: Mutex<HashMap<String, OwnedFd>>,
    pub resizes: Mutex<Vec<(String, String, TerminalSize)>>,
    pub netns: Mutex<HashMap<String, Option<PathBuf>>>,
    next: AtomicU32,
}

fn internal(e: impl std::fmt::Display) -> PluginError {
    PluginError::Internal(e.to_string())
}

fn open_pty() -> PluginResult<(OwnedFd, OwnedFd)> {
    let size = nix::pty::Winsize {
        ws_row: 24,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).map_err(internal)?;
    Ok((pty.master, pty.slave))
}

impl HostBackend {
    pub fn with_container(id: &str) -> Self {
        let b = HostBackend::default();
        b.containers.lock().unwrap().push(id.to_owned());
        b
    }

    fn known(&self, id: &str) -> PluginResult<()> {
        if self.containers.lock().unwrap().iter().any(|c| c == id) {
            Ok(())
        } else {
            Err(PluginError::NotFound(format!("container {id} not found")))
        }
    }

    /// Starts `script` under `sh -c` as the main process of container `id`.
    pub fn start_main(&self, id: &str, script: &str, tty: bool) -> u32 {
        self.containers.lock().unwrap().push(id.to_owned());
        let mut cmd = std::process::Command::new("setsid");
        if tty {
            cmd.arg("-c");
        }
        cmd.args(["sh", "-c", script]);
        let main = if tty {
            let (master, slave) = open_pty().unwrap();
            cmd.stdin(slave.try_clone().unwrap())
                .stdout(slave.try_clone().unwrap())
                .stderr(slave);
            let child = cmd.spawn().unwrap();
            drop(cmd);
            self.masters
                .lock()
                .unwrap()
                .insert(format!("main:{id}"), master.try_clone().unwrap());
            MainProcess {
                tty,
                stdin: master.try_clone().unwrap(),
                stdout: master,
                stderr: None,
                child,
            }
        } else {
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
            let mut child = cmd.spawn().unwrap();
            MainProcess {
                tty,
                stdin: child.stdin.take().unwrap().into(),
                stdout: child.stdout.take().unwrap().into(),
                stderr: Some(child.stderr.take().unwrap().into()),
                child,
            }
        };
        let pid = main.child.id();
        self.mains.lock().unwrap().insert(id.to_owned(), main);
        pid
    }
}

fn exit_status(status: std::process::ExitStatus) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    let signal = status.signal();
    ExitStatus {
        code: status.code().unwrap_or_else(|| 128 + signal.unwrap_or(0)),
        signal,
        finished_at: 0,
    }
}

#[async_trait]
impl StreamBackend for HostBackend {
    async fn exec(&self, container_id: &str, spec: &ExecSpec) -> PluginResult<ProcessIo> {
        self.known(container_id)?;
        let session = format!("exec-{}", self.next.fetch_add(1, Ordering::Relaxed));
        let mut cmd = Command::new("setsid");
        if spec.tty {
            cmd.arg("-c");
        }
        cmd.args(&spec.args);
        let (mut child, io) = if spec.tty {
            let (master, slave) = open_pty()?;
            cmd.stdin(slave.try_clone().map_err(internal)?)
                .stdout(slave.try_clone().map_err(internal)?)
                .stderr(slave);
            let child = cmd.spawn().map_err(internal)?;
            // No slave descriptor may stay open here, or the master never reads EIO.
            drop(cmd);
            self.masters
                .lock()
                .unwrap()
                .insert(session.clone(), master.try_clone().map_err(internal)?);
            let io = ProcessIo {
                session: session.clone(),
                stdin: None,
                stdout: Some(master),
                stderr: None,
            };
            (child, io)
        } else {
            let pipe = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
            cmd.stdin(pipe(spec.stdin))
                .stdout(pipe(spec.stdout))
                .stderr(pipe(spec.stderr));
            let mut child = cmd.spawn().map_err(internal)?;
            let io = ProcessIo {
                session: session.clone(),
                stdin: child.stdin.take().map(|s| s.into_owned_fd().unwrap()),
                stdout: child.stdout.take().map(|s| s.into_owned_fd().unwrap()),
                stderr: child.stderr.take().map(|s| s.into_owned_fd().unwrap()),
            };
            (child, io)
        };
        if let Some(pid) = child.id() {
            self.exec_pids.lock().unwrap().insert(session.clone(), pid);
        }
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            if let Ok(status) = child.wait().await {
                let _ = tx.send(exit_status(status));
            }
        });
        self.exits.lock().unwrap().insert(session, rx);
        Ok(io)
    }

    async fn wait_exec(&self, _container_id: &str, session: &str) -> PluginResult<ExitStatus> {
        let rx = self
            .exits
            .lock()
            .unwrap()
            .remove(session)
            .ok_or_else(|| PluginError::NotFound(format!("exec session {session}")))?;
        let status = rx.await.map_err(internal)?;
        self.exec_pids.lock().unwrap().remove(session);
        self.masters.lock().unwrap().remove(session);
        Ok(status)
    }

    async fn kill_exec(&self, _container_id: &str, session: &str) -> PluginResult<()> {
        if let Some(pid) = self.exec_pids.lock().unwrap().get(session) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        Ok(())
    }

    async fn attach(&self, container_id: &str, stdin: bool, stdout: bool, stderr: bool) -> PluginResult<ProcessIo> {
        let mains = self.mains.lock().unwrap();
        let main = mains
            .get(container_id)
            .ok_or_else(|| PluginError::NotFound(format!("container {container_id} not found")))?;
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(internal);
        Ok(ProcessIo {
            session: String::new(),
            stdin: if stdin && !main.tty {
                Some(dup(&main.stdin)?)
            } else {
                None
            },
            stdout: if stdout { Some(dup(&main.stdout)?) } else { None },
            stderr: match (&main.stderr, stderr) {
                (Some(fd), true) => Some(dup(fd)?),
                _ => None,
            },
        })
    }

    async fn resize(&self, container_id: &str, session: &str, size: TerminalSize) -> PluginResult<()> {
        self.resizes
            .lock()
            .unwrap()
            .push((container_id.to_owned(), session.to_owned(), size));
        let key = if session.is_empty() {
            format!("main:{container_id}")
        } else {
            session.to_owned()
        };
        let masters = self.masters.lock().unwrap();
        let master = masters
            .get(&key)
            .ok_or_else(|| PluginError::NotFound(format!("no tty for {key}")))?;
        let winsize = rustix::termios::Winsize {
            ws_row: size.height,
            ws_col: size.width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(master, winsize).map_err(internal)
    }

    async fn pod_netns(&self, pod_id: &str) -> PluginResult<Option<PathBuf>> {
        self.netns
            .lock()
            .unwrap()
            .get(pod_id)
            .cloned()
            .ok_or_else(|| PluginError::NotFound(format!("pod sandbox {pod_id} not found")))
    }
}

impl HostBackend {
    /// Is the main process of `id` still alive?
    pub fn main_alive(&self, id: &str) -> bool {
        let pid = self.mains.lock().unwrap().get(id).map(|m| m.child.id());
        pid.is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid))
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

impl Drop for HostBackend {
    fn drop(&mut self) {
        for main in self.mains.get_mut().unwrap().values_mut() {
            let _ = main.child.kill();
            let _ = main.child.wait();
        }
    }
}
