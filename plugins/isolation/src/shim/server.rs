//! The shim's event loop: one listening SEQPACKET socket, one signalfd for SIGCHLD/SIGTERM, the containers'
//! output fds. Requests are handled one at a time; only waits are deferred.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_core::plugin::isolation::{ContainerState, ExitStatus, ProcessState};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{AddressFamily, Backlog, SockFlag, SockType, accept4, bind, listen, socket};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::Args;
use crate::cri_log::{CriLog, Stream, now_nanos};
use crate::init::{ChildStdio, SpawnContext};
use crate::plan::{InitPlan, NsEntry};
use crate::protocol::{ErrorKind, FdLayout, Reply, Request, adopt, recv_message, send_message};

/// `<state>/pods/<pod-id>`: the shim's socket, pid file and log.
pub fn pod_dir(state: &Path, pod_id: &str) -> PathBuf {
    state.join("pods").join(pod_id)
}

/// `<state>/containers/<id>`: state.json, exit.json and (for snapshot mounts) the rootfs mount point.
pub fn container_dir(state: &Path, id: &str) -> PathBuf {
    state.join("containers").join(id)
}

/// Finished exec sessions kept for `WaitExec`, oldest dropped first.
const MAX_FINISHED_EXECS: usize = 64;
const READ_CHUNK: usize = 32 * 1024;

fn shim_log(message: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{} {message}", crate::cri_log::rfc3339_nano(now_nanos()));
}

/// Writes `data` to `path` atomically: temp file, fsync, rename.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

enum Status {
    Created { sync: OwnedFd },
    Running,
    Exited(ExitStatus),
}

struct Output {
    fd: OwnedFd,
    stream: Stream,
}

struct Container {
    plan: InitPlan,
    pid: u32,
    started_at: i64,
    status: Status,
    log: Option<CriLog>,
    outputs: Vec<Output>,
    /// Host end of the container's stdin (pipe write end, or the pty master).
    stdin: Option<OwnedFd>,
    /// CRI `stdin_once`: without a tty, the first attach with stdin takes the shim's end of the stdin pipe, so
    /// the container's stdin closes when that attach's stdin does.
    stdin_once: bool,
    pty_master: Option<OwnedFd>,
    /// Write ends handed out by attach, fed with every chunk of output.
    attached: Vec<(Stream, OwnedFd)>,
}

struct ExecSession {
    container: String,
    pid: u32,
    exit: Option<ExitStatus>,
    pty_master: Option<OwnedFd>,
}

enum WaitFor {
    Container(String),
    Exec(String),
}

struct Waiter {
    conn: OwnedFd,
    what: WaitFor,
    deadline: Instant,
}

pub struct Shim {
    pod_id: String,
    state: PathBuf,
    socket_path: PathBuf,
    listener: OwnedFd,
    signals: SignalFd,
    containers: BTreeMap<String, Container>,
    execs: BTreeMap<String, ExecSession>,
    finished_execs: VecDeque<String>,
    waiters: Vec<Waiter>,
    pending_conns: Vec<OwnedFd>,
    next_session: u64,
    spawn_ctx: SpawnContext,
    oom_warned: bool,
    infra_pid: Option<u32>,
    shutting_down: bool,
    read_buf: Vec<u8>,
}

fn own_oom_score_adj() -> i32 {
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn set_nonblocking(fd: BorrowedFd<'_>) {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    if let Ok(bits) = fcntl(fd, FcntlArg::F_GETFL) {
        let _ = fcntl(
            fd,
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(bits) | OFlag::O_NONBLOCK),
        );
    }
}

fn exit_status(status: WaitStatus) -> Option<(i32, ExitStatus)> {
    let finished_at = now_nanos();
    match status {
        WaitStatus::Exited(pid, code) => Some((
            pid.as_raw(),
            ExitStatus {
                code,
                signal: None,
                finished_at,
            },
        )),
        WaitStatus::Signaled(pid, sig, _) => Some((
            pid.as_raw(),
            ExitStatus {
                code: 128 + sig as i32,
                signal: Some(sig as i32),
                finished_at,
            },
        )),
        _ => None,
    }
}

impl Shim {
    pub fn new(args: &Args) -> std::io::Result<Shim> {
        let dir = pod_dir(&args.state, &args.pod_id);
        let socket_path = dir.join("shim.sock");
        let mut mask = SigSet::empty();
        for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            mask.add(s);
        }
        mask.thread_block()?;
        // SIGPIPE: a reader of an attach pipe going away must not kill the shim.
        // Blocking it is enough: writes then fail with EPIPE, and the container's init resets its mask.
        let mut pipe = SigSet::empty();
        pipe.add(Signal::SIGPIPE);
        pipe.thread_block()?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
        let _ = std::fs::remove_file(&socket_path);
        let listener = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        let (addr, _dir) = crate::protocol::socket_addr(&socket_path)?;
        bind(listener.as_raw_fd(), &addr)?;
        listen(&listener, Backlog::new(64).unwrap_or(Backlog::MAXCONN))?;
        write_atomic(&dir.join("shim.pid"), std::process::id().to_string().as_bytes())?;
        let restrict = args.restrict_oom;
        shim_log(format_args!(
            "berth-shim for pod {} serving {} (restrict oom_score_adj: {restrict})",
            args.pod_id,
            socket_path.display()
        ));
        Ok(Shim {
            pod_id: args.pod_id.clone(),
            state: args.state.clone(),
            socket_path,
            listener,
            signals,
            containers: BTreeMap::new(),
            execs: BTreeMap::new(),
            finished_execs: VecDeque::new(),
            waiters: Vec::new(),
            pending_conns: Vec::new(),
            next_session: 1,
            spawn_ctx: SpawnContext {
                last_cap: crate::init::last_cap(),
                oom_floor: restrict.then(own_oom_score_adj),
                exec: false,
            },
            oom_warned: false,
            infra_pid: None,
            shutting_down: false,
            read_buf: Vec::new(),
        })
    }

    pub fn run(&mut self) {
        while !self.shutting_down {
            let timeout = self
                .waiters
                .iter()
                .map(|w| w.deadline.saturating_duration_since(Instant::now()))
                .min()
                .map(|d| PollTimeout::try_from(d.as_millis().min(60_000) as i32 + 1).unwrap_or(PollTimeout::MAX))
                .unwrap_or(PollTimeout::NONE);
            let (ready_listener, ready_signals, ready_conns, ready_outputs, gone_readers) = {
                let mut fds = vec![
                    PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
                ];
                for c in &self.pending_conns {
                    fds.push(PollFd::new(c.as_fd(), PollFlags::POLLIN));
                }
                let mut output_keys = Vec::new();
                for (id, c) in &self.containers {
                    for (i, o) in c.outputs.iter().enumerate() {
                        fds.push(PollFd::new(o.fd.as_fd(), PollFlags::POLLIN));
                        output_keys.push((id.clone(), i));
                    }
                }
                // Attach pipes' write ends, for POLLERR alone: their reader detached. Without this, a silent
                // container would keep one write end per past attach until it next wrote.
                let first_attached = fds.len();
                let mut attached_keys = Vec::new();
                for (id, c) in &self.containers {
                    for (_, w) in &c.attached {
                        fds.push(PollFd::new(w.as_fd(), PollFlags::empty()));
                        attached_keys.push((id.clone(), w.as_raw_fd()));
                    }
                }
                match poll(&mut fds, timeout) {
                    Err(nix::errno::Errno::EINTR) | Ok(0) => (false, false, Vec::new(), Vec::new(), Vec::new()),
                    Err(e) => {
                        shim_log(format_args!("poll: {e}"));
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                    Ok(_) => {
                        let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
                        let n_conns = self.pending_conns.len();
                        let conns: Vec<usize> = (0..n_conns).filter(|i| ready(&fds[2 + i])).collect();
                        let outputs: Vec<(String, usize)> = output_keys
                            .into_iter()
                            .enumerate()
                            .filter(|(i, _)| ready(&fds[2 + n_conns + i]))
                            .map(|(_, k)| k)
                            .collect();
                        let gone: Vec<(String, RawFd)> = attached_keys
                            .into_iter()
                            .enumerate()
                            .filter(|(i, _)| ready(&fds[first_attached + i]))
                            .map(|(_, k)| k)
                            .collect();
                        (ready(&fds[0]), ready(&fds[1]), conns, outputs, gone)
                    }
                }
            };
            // First, while no new descriptor can have taken a closed one's number.
            for (id, fd) in gone_readers {
                if let Some(c) = self.containers.get_mut(&id) {
                    c.attached.retain(|(_, w)| w.as_raw_fd() != fd);
                }
            }
            for (id, index) in ready_outputs.into_iter().rev() {
                self.pump_output(&id, index);
            }
            if ready_signals {
                self.handle_signals();
            }
            let served = !ready_conns.is_empty();
            // In the order they were accepted: a restarted berthd's List or Delete must see the outcome of the
            // Create its killed predecessor sent first.
            let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_conns)
                .into_iter()
                .enumerate()
                .partition(|(i, _)| ready_conns.contains(i));
            self.pending_conns = waiting.into_iter().map(|(_, c)| c).collect();
            for (_, conn) in ready {
                self.serve(conn);
            }
            if served {
                super::daemon::trim_heap();
            }
            if ready_listener {
                self.accept_all();
            }
            self.expire_waiters();
        }
        self.shutdown_now();
    }

    fn accept_all(&mut self) {
        loop {
            match accept4(self.listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                Ok(fd) => self.pending_conns.push(adopt(fd)),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
    }

    fn reply(conn: &OwnedFd, reply: &Reply, fds: &[RawFd]) {
        match serde_json::to_vec(reply) {
            Ok(bytes) => {
                if let Err(e) = send_message(conn.as_fd(), &bytes, fds) {
                    shim_log(format_args!("sending reply: {e}"));
                }
            }
            Err(e) => shim_log(format_args!("encoding reply: {e}")),
        }
    }

    fn serve(&mut self, conn: OwnedFd) {
        let mut buf = Vec::new();
        if recv_message(conn.as_fd(), &mut buf).is_err() || buf.is_empty() {
            return;
        }
        let request: Request = match serde_json::from_slice(&buf) {
            Ok(r) => r,
            Err(e) => {
                Self::reply(
                    &conn,
                    &Reply::error(ErrorKind::InvalidArgument, format!("bad request: {e}")),
                    &[],
                );
                return;
            }
        };
        drop(buf);
        match request {
            Request::Wait { id, timeout_ms } => self.wait(conn, WaitFor::Container(id), timeout_ms),
            Request::WaitExec {
                id: _,
                session,
                timeout_ms,
            } => self.wait(conn, WaitFor::Exec(session), timeout_ms),
            Request::Exec {
                id,
                args,
                tty,
                stdin,
                stdout,
                stderr,
            } => match self.exec(&id, args, tty, FdLayout { stdin, stdout, stderr }) {
                Ok((reply, fds)) => {
                    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
                    Self::reply(&conn, &reply, &raw);
                }
                Err(e) => Self::reply(&conn, &e, &[]),
            },
            Request::Attach {
                id,
                stdin,
                stdout,
                stderr,
            } => match self.attach(&id, FdLayout { stdin, stdout, stderr }) {
                Ok((reply, fds)) => {
                    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
                    Self::reply(&conn, &reply, &raw);
                }
                Err(e) => Self::reply(&conn, &e, &[]),
            },
            other => {
                let reply = self.handle(other);
                Self::reply(&conn, &reply, &[]);
            }
        }
    }

    fn handle(&mut self, request: Request) -> Reply {
        match request {
            Request::Create {
                id,
                plan,
                log_path,
                stdin,
                stdin_once,
            } => self.create(id, *plan, log_path, stdin, stdin_once),
            Request::Start { id } => self.start(&id),
            Request::State { id } => match self.containers.get(&id) {
                Some(_) => Reply::State(self.state_of(&id)),
                None => not_found(&id),
            },
            Request::List => Reply::States(self.containers.keys().map(|id| self.state_of(id)).collect()),
            Request::Kill { id, signal } => self.kill(&id, signal),
            Request::KillExec { id: _, session, signal } => match self.execs.get(&session) {
                Some(e) if e.exit.is_none() => signal_pid(e.pid, signal),
                Some(_) => Reply::Ok,
                None => not_found(&session),
            },
            Request::Resize {
                id,
                session,
                width,
                height,
            } => {
                let master = if session.is_empty() {
                    self.containers.get(&id).and_then(|c| c.pty_master.as_ref())
                } else {
                    self.execs.get(&session).and_then(|e| e.pty_master.as_ref())
                };
                match master {
                    Some(m) => match crate::init::set_winsize(m.as_fd(), width, height) {
                        Ok(()) => Reply::Ok,
                        Err(e) => Reply::error(ErrorKind::Internal, format!("resize: {e}")),
                    },
                    None => Reply::error(ErrorKind::FailedPrecondition, "no terminal"),
                }
            }
            Request::ReopenLog { id } => match self.containers.get_mut(&id) {
                Some(c) => match c.log.as_mut().map(|l| l.reopen()) {
                    Some(Err(e)) => Reply::error(ErrorKind::Internal, format!("reopening log: {e}")),
                    _ => Reply::Ok,
                },
                None => not_found(&id),
            },
            Request::Delete { id } => self.delete(&id),
            Request::StartInfra => self.start_infra(),
            Request::Info => Reply::Info {
                pid: std::process::id(),
                vm_rss_kb: vm_rss_kb(),
                containers: self.containers.len(),
            },
            Request::Shutdown => {
                self.shutting_down = true;
                Reply::Ok
            }
            Request::Wait { .. } | Request::WaitExec { .. } | Request::Exec { .. } | Request::Attach { .. } => {
                Reply::error(ErrorKind::Internal, "handled elsewhere")
            }
        }
    }

    fn state_of(&self, id: &str) -> ContainerState {
        let c = &self.containers[id];
        let state = match &c.status {
            Status::Created { .. } => ProcessState::Created,
            Status::Running => ProcessState::Running {
                pid: c.pid,
                started_at: c.started_at,
            },
            Status::Exited(exit) => ProcessState::Exited {
                started_at: c.started_at,
                exit: *exit,
            },
        };
        ContainerState {
            id: id.to_string(),
            pod_id: self.pod_id.clone(),
            state,
        }
    }

    fn persist_state(&self, id: &str) {
        let dir = container_dir(&self.state, id);
        let state = self.state_of(id);
        let result = std::fs::create_dir_all(&dir).and_then(|()| {
            write_atomic(&dir.join("state.json"), &serde_json::to_vec(&state).unwrap_or_default())?;
            if let ProcessState::Exited { exit, .. } = &state.state {
                write_atomic(&dir.join("exit.json"), &serde_json::to_vec(exit).unwrap_or_default())?;
            }
            Ok(())
        });
        if let Err(e) = result {
            shim_log(format_args!("container {id}: writing state: {e}"));
        }
    }

    fn create(
        &mut self,
        id: String,
        plan: InitPlan,
        log_path: Option<PathBuf>,
        want_stdin: bool,
        stdin_once: bool,
    ) -> Reply {
        if self.containers.contains_key(&id) {
            return Reply::error(ErrorKind::FailedPrecondition, format!("container {id} already exists"));
        }
        let log = match log_path.as_deref().map(CriLog::open).transpose() {
            Ok(l) => l,
            Err(e) => return Reply::error(ErrorKind::Internal, format!("opening log: {e}")),
        };
        let terminal = plan.process.terminal;
        let mut io = match make_stdio(terminal, want_stdin, true, true) {
            Ok(io) => io,
            Err(e) => return Reply::error(ErrorKind::Internal, format!("stdio: {e}")),
        };
        let ctx = SpawnContext {
            exec: false,
            ..self.spawn_ctx_copy()
        };
        let spawned = match crate::init::spawn(&plan, &ctx, &io.child) {
            Ok(s) => s,
            Err(e) => {
                shim_log(format_args!("container {id}: create failed: {e}"));
                return Reply::error(ErrorKind::Internal, e.to_string());
            }
        };
        if let Some(master) = &spawned.pty_master
            && let Err(e) = io.take_master(master, want_stdin)
        {
            let _ = signal_pid(spawned.pid, libc::SIGKILL);
            return Reply::error(ErrorKind::Internal, format!("pty master of {id}: {e}"));
        }
        drop(io.child);
        if let Some((asked, used)) = spawned.oom_clamped
            && !self.oom_warned
        {
            self.oom_warned = true;
            shim_log(format_args!(
                "oom_score_adj {asked} asked by container {id} cannot be set without CAP_SYS_RESOURCE; \
                 clamped to the shim's own {used} (logged once)"
            ));
        }
        let mut outputs = Vec::new();
        for (fd, stream) in [(io.stdout, Stream::Stdout), (io.stderr, Stream::Stderr)] {
            if let Some(fd) = fd {
                set_nonblocking(fd.as_fd());
                outputs.push(Output { fd, stream });
            }
        }
        self.containers.insert(
            id.clone(),
            Container {
                plan,
                pid: spawned.pid,
                started_at: 0,
                status: Status::Created { sync: spawned.sync },
                log,
                outputs,
                stdin: io.stdin,
                stdin_once,
                pty_master: spawned.pty_master,
                attached: Vec::new(),
            },
        );
        self.persist_state(&id);
        Reply::Ok
    }

    fn spawn_ctx_copy(&self) -> SpawnContext {
        SpawnContext {
            last_cap: self.spawn_ctx.last_cap,
            oom_floor: self.spawn_ctx.oom_floor,
            exec: self.spawn_ctx.exec,
        }
    }

    fn start(&mut self, id: &str) -> Reply {
        let Some(c) = self.containers.get_mut(id) else {
            return not_found(id);
        };
        let status = std::mem::replace(&mut c.status, Status::Running);
        let Status::Created { sync } = status else {
            c.status = status;
            return Reply::error(ErrorKind::FailedPrecondition, format!("container {id} is not created"));
        };
        c.started_at = now_nanos();
        let result = crate::init::start(&sync);
        let pid = c.pid;
        drop(sync);
        self.persist_state(id);
        match result {
            Ok(()) => Reply::Pid(pid),
            Err(e) => Reply::error(ErrorKind::Internal, format!("starting {id}: {e}")),
        }
    }

    fn kill(&mut self, id: &str, signal: i32) -> Reply {
        match self.containers.get(id) {
            None => not_found(id),
            Some(c) => match c.status {
                Status::Exited(_) => Reply::Ok,
                _ => signal_pid(c.pid, signal),
            },
        }
    }

    fn delete(&mut self, id: &str) -> Reply {
        let Some(c) = self.containers.get(id) else {
            let _ = remove_container_dir(&self.state, id);
            return Reply::Ok;
        };
        match c.status {
            Status::Running => {
                return Reply::error(ErrorKind::FailedPrecondition, format!("container {id} is running"));
            }
            Status::Created { .. } => {
                let _ = signal_pid(c.pid, libc::SIGKILL);
            }
            Status::Exited(_) => {}
        }
        self.containers.remove(id);
        self.execs.retain(|_, e| e.container != id);
        self.finished_execs.retain(|s| self.execs.contains_key(s));
        if let Err(e) = remove_container_dir(&self.state, id) {
            return Reply::error(ErrorKind::Internal, format!("removing state of {id}: {e}"));
        }
        Reply::Ok
    }

    fn exec(&mut self, id: &str, args: Vec<String>, tty: bool, want: FdLayout) -> Result<(Reply, Vec<OwnedFd>), Reply> {
        let c = self.containers.get(id).ok_or_else(|| not_found(id))?;
        if !matches!(c.status, Status::Running) {
            return Err(Reply::error(
                ErrorKind::FailedPrecondition,
                format!("container {id} is not running"),
            ));
        }
        if args.is_empty() {
            return Err(Reply::error(ErrorKind::InvalidArgument, "exec needs a command"));
        }
        let mut plan = InitPlan {
            namespaces: c
                .plan
                .namespaces
                .iter()
                .map(|n| NsEntry {
                    kind: n.kind,
                    path: Some(PathBuf::from(format!("/proc/{}/ns/{}", c.pid, n.kind.proc_name()))),
                })
                .collect(),
            process: c.plan.process.clone(),
            cgroup_procs: c.plan.cgroup_procs.clone(),
            ..InitPlan::default()
        };
        plan.process.args = args;
        plan.process.terminal = tty;
        plan.process.oom_score_adj = None;
        let io = make_stdio(tty, want.stdin, want.stdout, want.stderr)
            .map_err(|e| Reply::error(ErrorKind::Internal, format!("stdio: {e}")))?;
        let ctx = SpawnContext {
            exec: true,
            ..self.spawn_ctx_copy()
        };
        let init_pid = c.pid;
        let spawned = crate::init::spawn(&plan, &ctx, &io.child).map_err(|e| {
            // The main process exited a moment ago and its SIGCHLD is still queued: its namespaces are gone
            // (a zombie has none). That is "not running", not a runtime fault.
            if std::fs::metadata(format!("/proc/{init_pid}/ns/mnt")).is_err() {
                Reply::error(ErrorKind::FailedPrecondition, format!("container {id} is not running"))
            } else {
                Reply::error(ErrorKind::Internal, format!("exec in {id}: {e}"))
            }
        })?;
        drop(io.child);
        let session = format!("exec-{}", self.next_session);
        self.next_session += 1;
        let mut fds = Vec::new();
        let mut layout = FdLayout::default();
        if tty {
            let master = spawned
                .pty_master
                .ok_or_else(|| Reply::error(ErrorKind::Internal, "no pty master"))?;
            let keep = master.try_clone().ok();
            layout.stdout = true;
            fds.push(master);
            self.execs.insert(
                session.clone(),
                ExecSession {
                    container: id.to_string(),
                    pid: spawned.pid,
                    exit: None,
                    pty_master: keep,
                },
            );
        } else {
            for (slot, fd) in [
                (&mut layout.stdin, io.stdin),
                (&mut layout.stdout, io.stdout),
                (&mut layout.stderr, io.stderr),
            ] {
                if let Some(fd) = fd {
                    *slot = true;
                    fds.push(fd);
                }
            }
            self.execs.insert(
                session.clone(),
                ExecSession {
                    container: id.to_string(),
                    pid: spawned.pid,
                    exit: None,
                    pty_master: None,
                },
            );
        }
        Ok((
            Reply::Exec {
                session,
                pid: spawned.pid,
                fds: layout,
            },
            fds,
        ))
    }

    fn attach(&mut self, id: &str, want: FdLayout) -> Result<(Reply, Vec<OwnedFd>), Reply> {
        let c = self.containers.get_mut(id).ok_or_else(|| not_found(id))?;
        let mut layout = FdLayout::default();
        // With a pty, everything comes out of the master: stdout only.
        let streams: &[Stream] = if c.pty_master.is_some() {
            &[Stream::Stdout]
        } else {
            &[Stream::Stdout, Stream::Stderr]
        };
        let mut outputs = Vec::new();
        for stream in streams {
            let asked = match stream {
                Stream::Stdout => want.stdout,
                Stream::Stderr => want.stderr,
            };
            if !asked {
                continue;
            }
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| Reply::error(ErrorKind::Internal, format!("pipe: {e}")))?;
            set_nonblocking(w.as_fd());
            outputs.push((*stream, r, w));
        }
        let mut fds = Vec::new();
        if want.stdin {
            // stdin_once (kubelet's semantics, without a tty): this attach gets the shim's own end of the pipe,
            // so the container reads EOF once the attach's stdin ends; later attaches get no stdin. Otherwise
            // a duplicate, and the container's stdin outlives the session.
            let fd = if c.stdin_once && c.pty_master.is_none() {
                c.stdin.take()
            } else {
                c.stdin
                    .as_ref()
                    .map(|stdin| stdin.try_clone())
                    .transpose()
                    .map_err(|e| Reply::error(ErrorKind::Internal, format!("dup stdin: {e}")))?
            };
            if let Some(fd) = fd {
                layout.stdin = true;
                fds.push(fd);
            }
        }
        for (stream, r, w) in outputs {
            // An output already at EOF (the container exited): the reader gets EOF right away.
            if c.outputs.iter().any(|o| o.stream == stream) {
                c.attached.push((stream, w));
            }
            match stream {
                Stream::Stdout => layout.stdout = true,
                Stream::Stderr => layout.stderr = true,
            }
            fds.push(r);
        }
        Ok((Reply::Attach { fds: layout }, fds))
    }

    fn wait(&mut self, conn: OwnedFd, what: WaitFor, timeout_ms: u64) {
        let done = match &what {
            WaitFor::Container(id) => match self.containers.get(id) {
                None => Some(not_found(id)),
                Some(c) => match c.status {
                    Status::Exited(e) => Some(Reply::Exit(Some(e))),
                    _ => None,
                },
            },
            WaitFor::Exec(session) => match self.execs.get(session) {
                None => Some(not_found(session)),
                Some(e) => e.exit.map(|x| Reply::Exit(Some(x))),
            },
        };
        match done {
            Some(reply) => Self::reply(&conn, &reply, &[]),
            None => self.waiters.push(Waiter {
                conn,
                what,
                deadline: Instant::now() + Duration::from_millis(timeout_ms),
            }),
        }
    }

    fn expire_waiters(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.waiters.len() {
            let exit = match &self.waiters[i].what {
                WaitFor::Container(id) => match self.containers.get(id).map(|c| &c.status) {
                    Some(Status::Exited(e)) => Some(Some(*e)),
                    None => Some(None),
                    _ => None,
                },
                WaitFor::Exec(s) => match self.execs.get(s) {
                    Some(e) => e.exit.map(Some),
                    None => Some(None),
                },
            };
            let reply = match exit {
                Some(e) => Some(Reply::Exit(e)),
                None if self.waiters[i].deadline <= now => Some(Reply::Exit(None)),
                None => None,
            };
            match reply {
                Some(r) => {
                    let w = self.waiters.swap_remove(i);
                    Self::reply(&w.conn, &r, &[]);
                }
                None => i += 1,
            }
        }
    }

    /// Reads what is available from one output fd into the log and the attached readers.
    fn pump_output(&mut self, id: &str, index: usize) {
        let Some(c) = self.containers.get_mut(id) else {
            return;
        };
        if self.read_buf.len() != READ_CHUNK {
            self.read_buf = vec![0; READ_CHUNK];
        }
        let mut eof = false;
        let stream = c.outputs[index].stream;
        // Bounded per wakeup so one chatty container cannot starve the others.
        for _ in 0..8 {
            match nix::unistd::read(&c.outputs[index].fd, &mut self.read_buf) {
                Ok(0) | Err(nix::errno::Errno::EIO) => {
                    eof = true;
                    break;
                }
                Ok(n) => deliver(c, stream, &self.read_buf[..n], false),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
        if eof {
            deliver(c, stream, &[], true);
            c.outputs.remove(index);
            c.attached.retain(|(s, _)| *s != stream);
        }
        if self.read_buf.capacity() > READ_CHUNK {
            self.read_buf = Vec::new();
        }
    }

    /// Drains all remaining output of a container whose main process exited (the pipes may still be held by
    /// orphans: those are read later as they come).
    fn drain_outputs(&mut self, id: &str) {
        for index in (0..self.containers.get(id).map(|c| c.outputs.len()).unwrap_or(0)).rev() {
            self.pump_output(id, index);
        }
    }

    fn handle_signals(&mut self) {
        let mut got_chld = false;
        while let Ok(Some(info)) = self.signals.read_signal() {
            match info.ssi_signo as i32 {
                libc::SIGCHLD => got_chld = true,
                libc::SIGTERM | libc::SIGINT => {
                    shim_log(format_args!("signal {}: shutting down", info.ssi_signo));
                    self.shutting_down = true;
                }
                _ => {}
            }
        }
        if got_chld {
            self.reap();
        }
    }

    fn reap(&mut self) {
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(s) => s,
            };
            let Some((pid, exit)) = exit_status(status) else {
                continue;
            };
            let pid = pid as u32;
            if self.infra_pid == Some(pid) {
                shim_log(format_args!("infra process {pid} exited with {}", exit.code));
                self.infra_pid = None;
                continue;
            }
            let container = self
                .containers
                .iter()
                .find(|(_, c)| c.pid == pid && !matches!(c.status, Status::Exited(_)))
                .map(|(id, _)| id.clone());
            if let Some(id) = container {
                self.drain_outputs(&id);
                if let Some(c) = self.containers.get_mut(&id) {
                    c.status = Status::Exited(exit);
                    c.stdin = None;
                }
                self.persist_state(&id);
                continue;
            }
            if let Some((session, e)) = self.execs.iter_mut().find(|(_, e)| e.pid == pid && e.exit.is_none()) {
                e.exit = Some(exit);
                e.pty_master = None;
                self.finished_execs.push_back(session.clone());
                while self.finished_execs.len() > MAX_FINISHED_EXECS {
                    if let Some(old) = self.finished_execs.pop_front() {
                        self.execs.remove(&old);
                    }
                }
            }
        }
    }

    fn start_infra(&mut self) -> Reply {
        if let Some(pid) = self.infra_pid {
            return Reply::Pid(pid);
        }
        match crate::init::spawn_infra() {
            Ok(pid) => {
                self.infra_pid = Some(pid);
                Reply::Pid(pid)
            }
            Err(e) => Reply::error(ErrorKind::Internal, format!("starting infra: {e}")),
        }
    }

    fn shutdown_now(&mut self) {
        for c in self.containers.values() {
            if !matches!(c.status, Status::Exited(_)) {
                let _ = signal_pid(c.pid, libc::SIGKILL);
            }
        }
        if let Some(pid) = self.infra_pid {
            let _ = signal_pid(pid, libc::SIGKILL);
        }
        for w in self.waiters.drain(..) {
            Self::reply(&w.conn, &Reply::Exit(None), &[]);
        }
        let _ = std::fs::remove_file(&self.socket_path);
        let dir = pod_dir(&self.state, &self.pod_id);
        let _ = std::fs::remove_file(dir.join("shim.pid"));
        shim_log(format_args!("berth-shim for pod {} exiting", self.pod_id));
    }
}

fn deliver(c: &mut Container, stream: Stream, data: &[u8], eof: bool) {
    if let Some(log) = c.log.as_mut()
        && let Err(e) = log.write(stream, data, eof)
    {
        log_error_once(e);
    }
    if data.is_empty() {
        return;
    }
    // Attach readers get what they can take; a slow reader loses output rather than stalling the pod.
    c.attached.retain(|(s, fd)| {
        if *s != stream {
            return true;
        }
        !matches!(nix::unistd::write(fd, data), Err(nix::errno::Errno::EPIPE))
    });
}

fn log_error_once(e: std::io::Error) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| shim_log(format_args!("writing container log: {e}")));
}

fn not_found(what: &str) -> Reply {
    Reply::error(ErrorKind::NotFound, format!("{what} not found"))
}

fn signal_pid(pid: u32, signal: i32) -> Reply {
    let sig = match Signal::try_from(signal) {
        Ok(s) => s,
        Err(_) => return Reply::error(ErrorKind::InvalidArgument, format!("bad signal {signal}")),
    };
    match nix::sys::signal::kill(Pid::from_raw(pid as i32), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Reply::Ok,
        Err(e) => Reply::error(ErrorKind::Internal, format!("kill {pid}: {e}")),
    }
}

fn remove_container_dir(state: &Path, id: &str) -> std::io::Result<()> {
    let dir = container_dir(state, id);
    for name in ["state.json", "exit.json", "state.tmp", "exit.tmp"] {
        match std::fs::remove_file(dir.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    // The rootfs mount point only ever had mounts inside the container's own mount namespace: rmdir, never
    // a recursive delete.
    for name in ["rootfs"] {
        match std::fs::remove_dir(dir.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    match std::fs::remove_dir(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn vm_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Both ends of a process's stdio.
struct Stdio {
    child: ChildStdio,
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
}

impl Stdio {
    /// With a terminal: the host ends over the pty master the init sent (stdout, and stdin when wanted).
    fn take_master(&mut self, master: &OwnedFd, stdin: bool) -> std::io::Result<()> {
        self.stdout = Some(master.try_clone()?);
        self.stdin = stdin.then(|| master.try_clone()).transpose()?;
        Ok(())
    }
}

fn make_stdio(terminal: bool, stdin: bool, stdout: bool, stderr: bool) -> std::io::Result<Stdio> {
    let devnull = |write: bool| -> std::io::Result<OwnedFd> {
        Ok(std::fs::OpenOptions::new()
            .read(!write)
            .write(write)
            .open("/dev/null")?
            .into())
    };
    if terminal {
        // The container's init opens the pty in its own devpts and sends the master back (`Spawned::pty_master`).
        return Ok(Stdio {
            child: ChildStdio::Terminal,
            stdin: None,
            stdout: None,
            stderr: None,
        });
    }
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC);
    let (child_in, host_in) = if stdin {
        let (r, w) = pipe()?;
        (r, Some(w))
    } else {
        (devnull(false)?, None)
    };
    let (host_out, child_out) = if stdout {
        let (r, w) = pipe()?;
        (Some(r), w)
    } else {
        (None, devnull(true)?)
    };
    let (host_err, child_err) = if stderr {
        let (r, w) = pipe()?;
        (Some(r), w)
    } else {
        (None, devnull(true)?)
    };
    Ok(Stdio {
        child: ChildStdio::Pipes {
            stdin: child_in,
            stdout: child_out,
            stderr: child_err,
        },
        stdin: host_in,
        stdout: host_out,
        stderr: host_err,
    })
}
