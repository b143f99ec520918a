//! The container's first process: forked from the single-threaded shim, it joins or creates namespaces, sets up
//! the root filesystem (inside its own mount namespace), drops privileges and execs the container's program.
//! It never execs the shim binary again, so nothing in the container can reach berth-shim through
//! `/proc/<pid>/exe` of a process it can see; it is non-dumpable until its final execve.
//!
//! Stages (runc's nsexec order): the **child** joins the namespaces given by path, creates the user namespace
//! (the shim writes its id maps, cgroup.procs and oom_score_adj), then creates the other namespaces; when the
//! PID namespace differs from the shim's it forks the **init**, which becomes PID 1 (the child reports the pid
//! and exits; the shim, a subreaper, adopts the init). The init mounts, pivots, drops privileges, reports
//! ready, waits for "start", then loads seccomp and execs.
//!
//! Why allocation after fork is acceptable here: the shim is single-threaded, so no other thread can hold the
//! allocator's (or any) lock at fork time; the child is an ordinary single-threaded copy. Everything that can be
//! prepared before the fork is (namespace fds, argv/envp, exec candidates, the seccomp program).

#![allow(unsafe_code)]

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use nix::unistd::{ForkResult, Gid, Pid, Uid};

use crate::plan::{InitPlan, MountOp, NsKind, TargetKind};
use crate::protocol::{recv_message, send_message};

/// Why a container process could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
    #[error("container init: {0}")]
    Init(String),
    #[error("container init did not answer within {0:?}")]
    Timeout(Duration),
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> SpawnError {
    let what = what.into();
    move |source| SpawnError::Sys { what, source }
}

/// The container's stdio, child ends (the shim keeps the other ends).
pub enum ChildStdio {
    /// Pipes (or /dev/null), dup'ed onto 0, 1 and 2.
    Pipes {
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    /// A pty the process opens itself once it sees the container's filesystem (its `/dev/ptmx`, the devpts
    /// newinstance), so the slave is the container's own `/dev/pts/N` and `tty` works inside; the master comes
    /// back to the shim over the sync socket (runc's console socket). The slave becomes the controlling
    /// terminal and fds 0, 1 and 2.
    Terminal,
}

/// What the shim knows besides the plan.
pub struct SpawnContext {
    pub last_cap: u32,
    /// The shim's own oom_score_adj when lowering below it is not permitted (no CAP_SYS_RESOURCE).
    pub oom_floor: Option<i32>,
    /// Exec into an existing container: namespaces are joined, the filesystem is already set up.
    pub exec: bool,
}

/// A container process that finished its setup and waits for [`start`] (or, for an exec, already runs).
pub struct Spawned {
    pub pid: u32,
    pub sync: OwnedFd,
    /// Set when oom_score_adj had to be clamped (the requested value, the value used).
    pub oom_clamped: Option<(i32, i32)>,
    /// The pty master, with [`ChildStdio::Terminal`].
    pub pty_master: Option<OwnedFd>,
}

const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything the child needs, prepared before the fork.
struct Prepared<'a> {
    plan: &'a InitPlan,
    ctx: &'a SpawnContext,
    /// Namespaces to join, user first, with their open fds.
    join: Vec<(NsKind, OwnedFd)>,
    new_user: bool,
    new_flags: CloneFlags,
    fork_for_pid: bool,
    argv: Vec<CString>,
    envp: Vec<CString>,
    exec_candidates: Vec<CString>,
    seccomp: Option<Vec<libc::sock_filter>>,
    stdio: &'a ChildStdio,
}

fn cstring(s: &str, what: &str) -> Result<CString, SpawnError> {
    CString::new(s).map_err(|_| SpawnError::Init(format!("{what} contains a NUL byte")))
}

fn prepare<'a>(plan: &'a InitPlan, ctx: &'a SpawnContext, stdio: &'a ChildStdio) -> Result<Prepared<'a>, SpawnError> {
    let mut join = Vec::new();
    let mut new_user = false;
    let mut new_flags = CloneFlags::empty();
    let mut fork_for_pid = false;
    let mut ordered = plan.namespaces.clone();
    ordered.sort_by_key(|n| n.kind != NsKind::User);
    for ns in &ordered {
        match &ns.path {
            Some(path) => {
                let fd = std::fs::File::open(path).map_err(|e| {
                    SpawnError::Init(format!(
                        "opening {} namespace {}: {e}",
                        ns.kind.proc_name(),
                        path.display()
                    ))
                })?;
                join.push((ns.kind, OwnedFd::from(fd)));
                if ns.kind == NsKind::Pid {
                    fork_for_pid = true;
                }
            }
            None if ns.kind == NsKind::User => new_user = true,
            None => {
                new_flags |= CloneFlags::from_bits_retain(ns.kind.clone_flag());
                if ns.kind == NsKind::Pid {
                    fork_for_pid = true;
                }
            }
        }
    }
    let p = &plan.process;
    let argv = p
        .args
        .iter()
        .map(|a| cstring(a, "process.args"))
        .collect::<Result<Vec<_>, _>>()?;
    let envp = p
        .env
        .iter()
        .map(|e| cstring(e, "process.env"))
        .collect::<Result<Vec<_>, _>>()?;
    let arg0 = p
        .args
        .first()
        .ok_or_else(|| SpawnError::Init("process.args is empty".into()))?;
    let exec_candidates = if arg0.contains('/') {
        vec![cstring(arg0, "process.args")?]
    } else {
        let path = p
            .env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| cstring(&format!("{d}/{arg0}"), "PATH"))
            .collect::<Result<Vec<_>, _>>()?
    };
    let seccomp = match &p.seccomp_bpf {
        None => None,
        Some(hex) => {
            let bytes = crate::plan::hex_decode(hex).ok_or_else(|| SpawnError::Init("bad seccomp program".into()))?;
            if bytes.is_empty() || !bytes.len().is_multiple_of(8) {
                return Err(SpawnError::Init("bad seccomp program length".into()));
            }
            Some(
                bytes
                    .chunks_exact(8)
                    .map(|c| libc::sock_filter {
                        code: u16::from_ne_bytes([c[0], c[1]]),
                        jt: c[2],
                        jf: c[3],
                        k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
                    })
                    .collect(),
            )
        }
    };
    Ok(Prepared {
        plan,
        ctx,
        join,
        new_user,
        new_flags,
        fork_for_pid,
        argv,
        envp,
        exec_candidates,
        seccomp,
        stdio,
    })
}

fn recv_timeout(sock: BorrowedFd<'_>, buf: &mut Vec<u8>, timeout: Duration) -> Result<Vec<OwnedFd>, SpawnError> {
    let mut fds = [nix::poll::PollFd::new(sock, nix::poll::PollFlags::POLLIN)];
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    loop {
        match nix::poll::poll(&mut fds, ms) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(sys("poll on init sync socket")(e)),
            Ok(0) => return Err(SpawnError::Timeout(timeout)),
            Ok(_) => break,
        }
    }
    recv_message(sock, buf).map_err(sys("reading from container init"))
}

/// Interprets one message from the init: `Ok(None)` at EOF (it exec'd or died), an error for `E…`.
fn expect(buf: &[u8], tag: u8) -> Result<Option<&[u8]>, SpawnError> {
    match buf.first() {
        None => Ok(None),
        Some(b'E') => Err(SpawnError::Init(String::from_utf8_lossy(&buf[1..]).into_owned())),
        Some(t) if *t == tag => Ok(Some(&buf[1..])),
        Some(_) => Err(SpawnError::Init(format!(
            "unexpected message {:?}",
            String::from_utf8_lossy(buf)
        ))),
    }
}

fn write_file(path: &Path, data: &str) -> Result<(), SpawnError> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(data.as_bytes()))
        .map_err(|e| SpawnError::Init(format!("writing {}: {e}", path.display())))
}

fn id_map_text(maps: &[crate::plan::IdMap]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.container_id, m.host_id, m.size))
        .collect()
}

/// Forks the container process and runs it up to "ready" (created, stopped before exec). For an exec
/// (`ctx.exec`), it is started right away.
pub fn spawn(plan: &InitPlan, ctx: &SpawnContext, stdio: &ChildStdio) -> Result<Spawned, SpawnError> {
    let prepared = prepare(plan, ctx, stdio)?;
    let (parent_sock, child_sock) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
        .map_err(sys("socketpair"))?;
    // SAFETY: the shim is single-threaded (no tokio, no helper threads), so the child is a consistent copy of
    // the whole process; it runs `child_main`, which never returns, and ends with execve or _exit.
    let fork = unsafe { nix::unistd::fork() }.map_err(sys("fork"))?;
    let child = match fork {
        ForkResult::Child => {
            drop(parent_sock);
            child_main(&prepared, child_sock)
        }
        ForkResult::Parent { child } => child,
    };
    drop(child_sock);
    let result = parent_side(plan, ctx, stdio, child, &parent_sock);
    if result.is_err() {
        let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
    }
    result.map(|setup| Spawned {
        pid: setup.pid,
        sync: parent_sock,
        oom_clamped: setup.oom_clamped,
        pty_master: setup.pty_master,
    })
}

struct Setup {
    pid: u32,
    oom_clamped: Option<(i32, i32)>,
    pty_master: Option<OwnedFd>,
}

type ParentResult = Result<Setup, SpawnError>;

fn parent_side(plan: &InitPlan, ctx: &SpawnContext, stdio: &ChildStdio, child: Pid, sock: &OwnedFd) -> ParentResult {
    let mut buf = Vec::new();
    recv_timeout(sock.as_fd(), &mut buf, SETUP_TIMEOUT)?;
    expect(&buf, b'1')?.ok_or_else(|| SpawnError::Init("exited before joining namespaces".into()))?;
    let proc_dir = PathBuf::from(format!("/proc/{child}"));
    let new_user = plan.namespace(NsKind::User).is_some_and(|n| n.path.is_none()) && !ctx.exec;
    if new_user {
        write_file(&proc_dir.join("uid_map"), &id_map_text(&plan.uid_map))?;
        write_file(&proc_dir.join("gid_map"), &id_map_text(&plan.gid_map))?;
    }
    for procs in &plan.cgroup_procs {
        write_file(procs, &child.to_string())?;
    }
    let mut oom_clamped = None;
    if let Some(mut adj) = plan.process.oom_score_adj {
        if let Some(floor) = ctx.oom_floor
            && adj < floor
        {
            oom_clamped = Some((adj, floor));
            adj = floor;
        }
        write_file(&proc_dir.join("oom_score_adj"), &adj.to_string())?;
    }
    send_message(sock.as_fd(), b"G", &[]).map_err(sys("sending go to container init"))?;
    // `P<pid>` comes from the intermediate child and `R` from the init it forked, both on this socket: under
    // load the init's `R` can overtake the `P`, so take the two in either order.
    // With a terminal, the init sends `T` with the pty master before its `R`.
    let (mut pid, mut ready, mut pty_master) = (None, false, None);
    while pid.is_none() || !ready {
        let fds = recv_timeout(sock.as_fd(), &mut buf, SETUP_TIMEOUT)?;
        match buf.first() {
            Some(b'T') => {
                let master = fds
                    .into_iter()
                    .next()
                    .ok_or_else(|| SpawnError::Init("terminal message without the pty master".into()))?;
                pty_master = Some(master);
            }
            Some(b'P') => {
                let n: u32 = std::str::from_utf8(&buf[1..])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| SpawnError::Init("bad pid message".into()))?;
                pid = Some(if n == 0 { child.as_raw() as u32 } else { n });
            }
            Some(b'R') => ready = true,
            // EOF, an error report, or garbage: `expect` turns each into its error.
            _ => {
                let what = if pid.is_none() {
                    "exited before forking"
                } else {
                    "exited during setup"
                };
                expect(&buf, b'R')?.ok_or_else(|| SpawnError::Init(what.into()))?;
            }
        }
    }
    if matches!(stdio, ChildStdio::Terminal) && pty_master.is_none() {
        return Err(SpawnError::Init("ready without sending its pty master".into()));
    }
    let pid = pid.unwrap_or(child.as_raw() as u32);
    if ctx.exec {
        start(sock)?;
    }
    Ok(Setup {
        pid,
        oom_clamped,
        pty_master,
    })
}

/// Lets a created init exec; returns once it has (its sync socket closed on exec) or reports why it could not.
pub fn start(sync: &OwnedFd) -> Result<(), SpawnError> {
    send_message(sync.as_fd(), b"S", &[]).map_err(sys("sending start to container init"))?;
    let mut buf = Vec::new();
    recv_timeout(sync.as_fd(), &mut buf, SETUP_TIMEOUT)?;
    expect(&buf, b'-')?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Child side. Errors become an `E<message>` on the sync socket, then _exit(1).

type Step = Result<(), String>;

fn err(what: impl std::fmt::Display) -> impl FnOnce(nix::Error) -> String {
    move |e| format!("{what}: {e}")
}

fn child_main(p: &Prepared<'_>, sock: OwnedFd) -> ! {
    let result = child_stages(p, &sock);
    let message = match result {
        Ok(never) => match never {},
        Err(m) => m,
    };
    let _ = send_message(sock.as_fd(), format!("E{message}").as_bytes(), &[]);
    // SAFETY: _exit is async-signal-safe and skips atexit handlers and stdio flushing, which belong to the shim.
    unsafe { libc::_exit(1) }
}

fn reset_signals() {
    // SAFETY: plain signal-mask and disposition calls on this single-threaded child; the shim's blocked
    // SIGCHLD/SIGTERM and ignored SIGPIPE must not leak into the container.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for sig in [libc::SIGPIPE, libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
}

fn child_stages(p: &Prepared<'_>, sock: &OwnedFd) -> Result<std::convert::Infallible, String> {
    reset_signals();
    nix::sys::prctl::set_dumpable(false).map_err(err("prctl(PR_SET_DUMPABLE)"))?;
    nix::sys::stat::umask(Mode::empty());
    for (kind, fd) in &p.join {
        setns(fd, CloneFlags::empty()).map_err(err(format_args!("setns({})", kind.proc_name())))?;
    }
    if p.new_user {
        unshare(CloneFlags::CLONE_NEWUSER).map_err(err("unshare(user)"))?;
    }
    send_message(sock.as_fd(), b"1", &[]).map_err(err("sync"))?;
    let mut buf = Vec::new();
    recv_message(sock.as_fd(), &mut buf).map_err(err("sync"))?;
    if buf.first() != Some(&b'G') {
        return Err("shim went away".into());
    }
    if p.new_user || p.join.iter().any(|(k, _)| *k == NsKind::User) {
        nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0)).map_err(err("setresgid(0)"))?;
        nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).map_err(err("setresuid(0)"))?;
    }
    if !p.new_flags.is_empty() {
        unshare(p.new_flags).map_err(err("unshare"))?;
    }
    if p.fork_for_pid {
        // SAFETY: this child is single-threaded (forked from the single-threaded shim).
        match unsafe { nix::unistd::fork() }.map_err(err("fork init"))? {
            ForkResult::Parent { child } => {
                let _ = send_message(sock.as_fd(), format!("P{child}").as_bytes(), &[]);
                // SAFETY: see child_main.
                unsafe { libc::_exit(0) }
            }
            ForkResult::Child => {}
        }
    } else {
        send_message(sock.as_fd(), b"P0", &[]).map_err(err("sync"))?;
    }
    init_stage(p, sock)
}

fn dup_onto(fd: RawFd, target: RawFd) -> Step {
    // SAFETY: dup2 on descriptors this process owns; the target is one of 0/1/2.
    if unsafe { libc::dup2(fd, target) } < 0 {
        return Err(format!("dup2 onto {target}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Runs in the init once it sees the container's filesystem (after pivot_root, or after joining the mount
/// namespace for an exec), so a terminal's `/dev/ptmx` is the container's devpts.
fn setup_stdio(stdio: &ChildStdio, sock: &OwnedFd) -> Step {
    nix::unistd::setsid().map_err(err("setsid"))?;
    match stdio {
        ChildStdio::Pipes { stdin, stdout, stderr } => {
            dup_onto(stdin.as_raw_fd(), 0)?;
            dup_onto(stdout.as_raw_fd(), 1)?;
            dup_onto(stderr.as_raw_fd(), 2)
        }
        ChildStdio::Terminal => {
            let (master, slave) = open_pty()?;
            send_message(sock.as_fd(), b"T", &[master.as_raw_fd()]).map_err(err("sending the pty master"))?;
            drop(master);
            // SAFETY: TIOCSCTTY on the pty slave we own, as the new session leader.
            if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
                return Err(format!("TIOCSCTTY: {}", std::io::Error::last_os_error()));
            }
            for target in 0..=2 {
                dup_onto(slave.as_raw_fd(), target)?;
            }
            Ok(())
        }
    }
}

/// Opens a pty through `/dev/ptmx` as this process resolves it (in a container, the `ptmx` of its devpts
/// newinstance); the slave comes from TIOCGPTPEER, so no path lookup can swap it. Both ends close on exec (the
/// slave is dup'ed onto stdio).
fn open_pty() -> Result<(OwnedFd, OwnedFd), String> {
    use nix::fcntl::OFlag;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(err("opening /dev/ptmx for the terminal"))?;
    nix::pty::unlockpt(&master).map_err(err("unlockpt"))?;
    let master = OwnedFd::from(master);
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes open(2) flags by value and returns a new descriptor for the master's slave.
    let slave = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) };
    if slave < 0 {
        return Err(format!("TIOCGPTPEER: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `slave` was just returned by the ioctl, so it is open and owned by no one else.
    Ok((master, unsafe { OwnedFd::from_raw_fd(slave) }))
}

fn init_stage(p: &Prepared<'_>, sock: &OwnedFd) -> Result<std::convert::Infallible, String> {
    let plan = p.plan;
    let proc = &plan.process;
    let new_uts = plan.namespace(NsKind::Uts).is_some_and(|n| n.path.is_none());
    if !p.ctx.exec {
        if let Some(h) = &plan.hostname
            && new_uts
        {
            nix::unistd::sethostname(h).map_err(err("sethostname"))?;
        }
        if let Some(d) = &plan.domainname
            && new_uts
        {
            // SAFETY: setdomainname reads `d.len()` bytes from a valid buffer.
            if unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) } < 0 {
                return Err(format!("setdomainname: {}", std::io::Error::last_os_error()));
            }
        }
        if plan.namespace(NsKind::Mount).is_some_and(|n| n.path.is_none()) {
            setup_rootfs(plan)?;
        }
        for (key, value) in &plan.sysctls {
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            std::fs::write(&path, value).map_err(|e| format!("sysctl {key}: {e}"))?;
        }
        if plan.namespace(NsKind::Mount).is_some_and(|n| n.path.is_none()) {
            finish_rootfs(plan)?;
        }
    }
    setup_stdio(p.stdio, sock)?;
    for r in &proc.rlimits {
        let limit = libc::rlimit {
            rlim_cur: r.soft,
            rlim_max: r.hard,
        };
        // SAFETY: setrlimit with a valid, initialised struct.
        if unsafe { libc::setrlimit(r.resource as _, &limit) } < 0 {
            return Err(format!(
                "setrlimit({}): {}",
                r.resource,
                std::io::Error::last_os_error()
            ));
        }
    }
    if !proc.no_new_privs {
        // Without no_new_privs the filter needs CAP_SYS_ADMIN, so it goes in before the capabilities drop.
        load_seccomp(p)?;
    }
    set_user_and_caps(p)?;
    nix::sys::stat::umask(Mode::from_bits_truncate(proc.umask.unwrap_or(0o022) as _));
    std::env::set_current_dir(&proc.cwd).map_err(|e| format!("chdir {}: {e}", proc.cwd))?;
    send_message(sock.as_fd(), b"R", &[]).map_err(err("sync"))?;
    let mut buf = Vec::new();
    recv_message(sock.as_fd(), &mut buf).map_err(err("sync"))?;
    if buf.first() != Some(&b'S') {
        // SAFETY: the shim went away or deleted the container before start; see child_main.
        unsafe { libc::_exit(1) }
    }
    // Only stdio (and the sync socket, itself close-on-exec) may reach the container's program.
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on descriptors of this process.
    if unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) } < 0 {
        return Err(format!("close_range: {}", std::io::Error::last_os_error()));
    }
    if proc.no_new_privs {
        nix::sys::prctl::set_no_new_privs().map_err(err("prctl(PR_SET_NO_NEW_PRIVS)"))?;
        load_seccomp(p)?;
    }
    let mut last = nix::errno::Errno::ENOENT;
    for candidate in &p.exec_candidates {
        match nix::unistd::execve(candidate.as_c_str(), &p.argv, &p.envp) {
            Err(nix::errno::Errno::ENOENT) | Err(nix::errno::Errno::ENOTDIR) => {}
            Err(e) => last = e,
            Ok(never) => match never {},
        }
    }
    Err(format!("exec {:?}: {last}", proc.args[0]))
}

fn load_seccomp(p: &Prepared<'_>) -> Step {
    let Some(filter) = &p.seccomp else {
        return Ok(());
    };
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `filter`, a live array of `len` instructions; the kernel copies it.
    if unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
        )
    } < 0
    {
        return Err(format!("loading seccomp filter: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn set_user_and_caps(p: &Prepared<'_>) -> Step {
    let proc = &p.plan.process;
    let caps = proc.caps;
    for cap in 0..=p.ctx.last_cap {
        if caps.bounding & (1 << cap) == 0 {
            // SAFETY: PR_CAPBSET_DROP takes a capability number; no pointers involved.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } < 0 {
                return Err(format!(
                    "dropping capability {cap}: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
    }
    nix::sys::prctl::set_keepcaps(true).map_err(err("prctl(PR_SET_KEEPCAPS)"))?;
    let groups: Vec<Gid> = proc.additional_gids.iter().map(|g| Gid::from_raw(*g)).collect();
    nix::unistd::setgroups(&groups).map_err(err("setgroups"))?;
    let gid = Gid::from_raw(proc.gid);
    nix::unistd::setresgid(gid, gid, gid).map_err(err(format_args!("setresgid({})", proc.gid)))?;
    let uid = Uid::from_raw(proc.uid);
    nix::unistd::setresuid(uid, uid, uid).map_err(err(format_args!("setresuid({})", proc.uid)))?;
    let header = CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [
        CapData {
            effective: caps.effective as u32,
            permitted: caps.permitted as u32,
            inheritable: caps.inheritable as u32,
        },
        CapData {
            effective: (caps.effective >> 32) as u32,
            permitted: (caps.permitted >> 32) as u32,
            inheritable: (caps.inheritable >> 32) as u32,
        },
    ];
    // SAFETY: capset with a v3 header and the two data words v3 requires.
    if unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) } < 0 {
        return Err(format!("capset: {}", std::io::Error::last_os_error()));
    }
    for cap in 0..=p.ctx.last_cap {
        if caps.ambient & (1 << cap) != 0 {
            // SAFETY: PR_CAP_AMBIENT_RAISE takes a capability number. A cap missing from the permitted or
            // inheritable set cannot be ambient; the kernel refuses it and the container goes on without.
            unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    cap as libc::c_ulong,
                    0,
                    0,
                )
            };
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Root filesystem.

/// Resolves `path` (absolute, as seen in the container) under `root`, following symlinks as if `root` were
/// `/`, so a symlink in the image cannot point a mount outside the rootfs.
pub fn secure_join(root: &Path, path: &Path) -> PathBuf {
    let mut resolved = PathBuf::new();
    let mut pending: Vec<std::ffi::OsString> = path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        let host = root.join(&candidate);
        match std::fs::symlink_metadata(&host) {
            Ok(meta) if meta.file_type().is_symlink() && hops < 255 => {
                hops += 1;
                let Ok(target) = std::fs::read_link(&host) else {
                    resolved = candidate;
                    continue;
                };
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => pending.push(n.to_os_string()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => resolved = candidate,
        }
    }
    root.join(resolved)
}

fn mount_path(source: Option<&str>, target: &Path, fstype: Option<&str>, flags: u64, data: Option<&str>) -> Step {
    mount(
        source,
        target,
        fstype,
        MsFlags::from_bits_retain(flags as _),
        data.filter(|d| !d.is_empty()),
    )
    .map_err(err(format_args!(
        "mount {} on {}",
        source.unwrap_or("none"),
        target.display()
    )))
}

fn do_mount(m: &MountOp, target: &Path) -> Step {
    if let Some(dir) = &m.chdir {
        std::env::set_current_dir(dir).map_err(|e| format!("chdir {}: {e}", dir.display()))?;
    }
    let fstype = (!m.fstype.is_empty()).then_some(m.fstype.as_str());
    let source = (!m.source.is_empty()).then_some(m.source.as_str());
    mount_path(source, target, fstype, m.flags, Some(&m.data))?;
    if let Some(flags) = m.remount_flags {
        mount_path(None, target, None, flags | locked_flags(target), None)?;
    }
    if m.propagation != 0 {
        mount_path(None, target, None, m.propagation, None)?;
    }
    Ok(())
}

/// Flags of the mount at `path` that a remount must keep (the kernel refuses to clear them in a user
/// namespace).
fn locked_flags(path: &Path) -> u64 {
    let keep = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_NOATIME | libc::MS_NODIRATIME;
    match nix::sys::statvfs::statvfs(path) {
        Ok(s) => s.flags().bits() & keep,
        Err(_) => 0,
    }
}

fn create_target(path: &Path, kind: Option<TargetKind>) -> Step {
    match kind {
        Some(TargetKind::File) => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("mkdir {}: {e}", parent.display()))?;
            }
            if !path.exists() {
                std::fs::File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
            }
            Ok(())
        }
        _ => std::fs::create_dir_all(path).map_err(|e| format!("mkdir {}: {e}", path.display())),
    }
}

fn setup_rootfs(plan: &InitPlan) -> Step {
    let root = &plan.rootfs;
    mount_path(None, Path::new("/"), None, plan.rootfs_propagation, None)?;
    rootfs_parent_private(root)?;
    if plan.rootfs_mounts.is_empty() {
        let r = root.to_str().ok_or("rootfs path is not UTF-8")?;
        mount_path(Some(r), root, None, libc::MS_BIND | libc::MS_REC, None)?;
    } else {
        for m in &plan.rootfs_mounts {
            do_mount(m, &m.target)?;
        }
        std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    }
    mount_path(None, root, None, libc::MS_PRIVATE, None)?;
    let new_user = plan.namespace(NsKind::User).is_some();
    let mut dev_tmpfs = false;
    for m in &plan.mounts {
        let target = secure_join(root, &m.target);
        create_target(&target, m.target_kind)?;
        if m.fstype == "cgroup" || m.fstype == "cgroup2" {
            mount_cgroup(plan, m, &target)?;
            continue;
        }
        do_mount(m, &target)?;
        if m.target == Path::new("/dev") && m.fstype == "tmpfs" {
            dev_tmpfs = true;
        }
    }
    if dev_tmpfs {
        create_devices(plan, new_user)?;
    }
    pivot(root)?;
    if plan.rootfs_propagation & libc::MS_SHARED != 0 {
        mount_path(None, Path::new("/"), None, plan.rootfs_propagation, None)?;
    }
    Ok(())
}

/// cgroup v2 hosts: a fresh cgroup2 mount (rooted at the container's cgroup namespace). cgroup v1 hosts: see
/// [`mount_cgroup_v1`].
fn mount_cgroup(plan: &InitPlan, m: &MountOp, target: &Path) -> Step {
    let flags = m.flags & (libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY | libc::MS_RELATIME);
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        mount_path(Some("cgroup2"), target, Some("cgroup2"), flags, None)
    } else {
        mount_cgroup_v1(plan, flags, target)
    }
}

/// One host cgroup v1 hierarchy as the container sees it under its `/sys/fs/cgroup`.
#[derive(Debug, PartialEq)]
struct V1Hierarchy {
    /// The dir name, as on the host (`memory`, `cpu,cpuacct`, `systemd`).
    name: String,
    /// The container's own cgroup dir in that hierarchy, bound onto the dir; `None` leaves it empty.
    bind: Option<PathBuf>,
    /// Symlinks to `name`, one per controller of a co-mounted hierarchy (`cpu` and `cpuacct` → `cpu,cpuacct`).
    links: Vec<String>,
}

/// runc's `rootfsParentMountPrivate`: the mount holding the rootfs mount point goes private when it is shared
/// (as `rshared` root propagation makes it). Else the rootfs and volume mounts made on it would propagate to
/// its peers, the host's mount table among them, and pivot_root refuses a new root whose parent is shared
/// (EINVAL).
fn rootfs_parent_private(root: &Path) -> Step {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
    let parent = root.parent().unwrap_or(root);
    match mount_point_of(&mountinfo, parent) {
        Some((point, true)) => mount_path(None, &point, None, libc::MS_PRIVATE, None),
        _ => Ok(()),
    }
}

/// The mount point under which `path` lies (the longest one that is a prefix of it, the last mounted on a
/// tie), and whether that mount is shared.
fn mount_point_of(mountinfo: &str, path: &Path) -> Option<(PathBuf, bool)> {
    let mut best: Option<(PathBuf, bool)> = None;
    for line in mountinfo.lines() {
        let Some((fields, _)) = line.split_once(" - ") else {
            continue;
        };
        let mut f = fields.split(' ');
        let Some(point) = f.nth(4).map(unescape_mountinfo) else {
            continue;
        };
        let shared = f.skip(1).any(|o| o.starts_with("shared:"));
        let point = PathBuf::from(point);
        if path.starts_with(&point)
            && best
                .as_ref()
                .is_none_or(|(b, _)| point.as_os_str().len() >= b.as_os_str().len())
        {
            best = Some((point, shared));
        }
    }
    best
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape_mountinfo(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(char::from(c));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// runc's cgroup v1 layout from the host's mount table: per `cgroup` (v1) mount, the container's own cgroup
/// dir in it (one of `own_dirs`, canonical paths), if any.
fn cgroup_v1_layout(mountinfo: &str, own_dirs: &[PathBuf]) -> Vec<V1Hierarchy> {
    let mut layout = Vec::new();
    for line in mountinfo.lines() {
        let Some((fields, rest)) = line.split_once(" - ") else {
            continue;
        };
        if rest.split(' ').next() != Some("cgroup") {
            continue;
        }
        let Some(mountpoint) = fields.split(' ').nth(4).map(Path::new) else {
            continue;
        };
        let Some(name) = mountpoint.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let links = if name.contains(',') {
            name.split(',').map(str::to_string).collect()
        } else {
            Vec::new()
        };
        layout.push(V1Hierarchy {
            name: name.to_string(),
            bind: own_dirs.iter().find(|d| d.starts_with(mountpoint)).cloned(),
            links,
        });
    }
    layout
}

/// cgroup v1 hosts: a tmpfs holding [`cgroup_v1_layout`], so `memory.limit_in_bytes` inside is the
/// container's and no host cgroup shows. Binds rather than new cgroup mounts: they work without a cgroup
/// namespace and inside a user namespace (where v1 cannot be mounted).
fn mount_cgroup_v1(plan: &InitPlan, flags: u64, target: &Path) -> Step {
    let readonly = flags & libc::MS_RDONLY;
    mount_path(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        flags & !libc::MS_RDONLY,
        Some("mode=755"),
    )?;
    // The host's hierarchies: this mount namespace is still a copy of the shim's (before pivot_root).
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
    let own_dirs: Vec<PathBuf> = plan
        .cgroup_procs
        .iter()
        .filter_map(|procs| std::fs::canonicalize(procs.parent()?).ok())
        .collect();
    for h in cgroup_v1_layout(&mountinfo, &own_dirs) {
        let dir = target.join(&h.name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        if let Some(own) = &h.bind {
            let source = own.to_str().ok_or("cgroup path is not UTF-8")?;
            mount_path(Some(source), &dir, None, libc::MS_BIND, None)?;
            let remount = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
            mount_path(None, &dir, None, remount | readonly | locked_flags(&dir), None)?;
        }
        for controller in &h.links {
            let link = target.join(controller);
            std::os::unix::fs::symlink(&h.name, &link).map_err(|e| format!("symlink {}: {e}", link.display()))?;
        }
    }
    if readonly != 0 {
        let remount = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | locked_flags(target);
        mount_path(None, target, None, remount, None)?;
    }
    Ok(())
}

fn create_devices(plan: &InitPlan, new_user: bool) -> Step {
    let root = &plan.rootfs;
    for d in &plan.devices {
        let path = secure_join(root, &d.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("mkdir {}: {e}", parent.display()))?;
        }
        if new_user {
            // mknod is not allowed in a user namespace: bind the host's node instead.
            create_target(&path, Some(TargetKind::File))?;
            let host = d.path.to_str().ok_or("device path is not UTF-8")?;
            mount_path(Some(host), &path, None, libc::MS_BIND, None)?;
            continue;
        }
        let kind = if d.kind == 'b' { SFlag::S_IFBLK } else { SFlag::S_IFCHR };
        let _ = std::fs::remove_file(&path);
        mknod(
            &path,
            kind,
            Mode::from_bits_truncate(d.mode as _),
            makedev(d.major, d.minor),
        )
        .map_err(err(format_args!("mknod {}", path.display())))?;
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            &path,
            Mode::from_bits_truncate(d.mode as _),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(err(format_args!("chmod {}", path.display())))?;
        nix::unistd::chown(&path, Some(Uid::from_raw(d.uid)), Some(Gid::from_raw(d.gid)))
            .map_err(err(format_args!("chown {}", path.display())))?;
    }
    let dev = root.join("dev");
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
        ("pts/ptmx", "ptmx"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("/proc/kcore", "core"));
    }
    for (target, name) in links {
        let link = dev.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(target, &link).map_err(|e| format!("symlink {}: {e}", link.display()))?;
    }
    Ok(())
}

/// pivot_root(".", ".") (runc's trick): the old root ends up stacked under the new one, is made a slave so
/// the lazy unmount does not propagate to the host, and is detached. No directory is left behind.
fn pivot(root: &Path) -> Step {
    let open_dir = |p: &Path| {
        nix::fcntl::open(
            p,
            nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(err(format_args!("open {}", p.display())))
    };
    let old_root = open_dir(Path::new("/"))?;
    let new_root = open_dir(root)?;
    nix::unistd::fchdir(&new_root).map_err(err("fchdir new root"))?;
    nix::unistd::pivot_root(".", ".").map_err(err("pivot_root"))?;
    nix::unistd::fchdir(&old_root).map_err(err("fchdir old root"))?;
    mount_path(None, Path::new("."), None, libc::MS_SLAVE | libc::MS_REC, None)?;
    umount2(".", MntFlags::MNT_DETACH).map_err(err("unmounting old root"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

/// After sysctls: read-only paths, masked paths, read-only rootfs.
fn finish_rootfs(plan: &InitPlan) -> Step {
    for path in &plan.readonly_paths {
        let p = Path::new(path);
        match mount_path(Some(path), p, None, libc::MS_BIND | libc::MS_REC, None) {
            Err(_) if !p.exists() => continue,
            other => other?,
        }
        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC | locked_flags(p);
        mount_path(None, p, None, flags, None)?;
    }
    for path in &plan.masked_paths {
        let p = Path::new(path);
        match std::fs::metadata(p) {
            Err(_) => continue,
            Ok(meta) if meta.is_dir() => mount_path(Some("tmpfs"), p, Some("tmpfs"), libc::MS_RDONLY, None)?,
            Ok(_) => mount_path(Some("/dev/null"), p, None, libc::MS_BIND, None)?,
        }
    }
    if plan.readonly_rootfs {
        let root = Path::new("/");
        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | locked_flags(root);
        mount_path(None, root, None, flags, None)?;
    }
    Ok(())
}

/// The highest capability number this kernel knows.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Sets a pty's window size.
pub fn set_winsize(master: BorrowedFd<'_>, width: u16, height: u16) -> std::io::Result<()> {
    let size = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from a valid pointer; `master` is an open pty master.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size as *const libc::winsize) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Starts the pod's infra process: PID 1 of a new PID namespace that only reaps and waits for SIGTERM/SIGKILL.
/// It runs the shim's (sealed) image and is non-dumpable, so the containers that share its PID namespace
/// cannot open its `/proc/1/exe`.
pub fn spawn_infra() -> Result<u32, SpawnError> {
    let (parent_sock, child_sock) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
        .map_err(sys("socketpair"))?;
    // SAFETY: the shim is single-threaded; the child only makes plain syscalls and ends in _exit.
    match unsafe { nix::unistd::fork() }.map_err(sys("fork"))? {
        ForkResult::Child => {
            drop(parent_sock);
            let message = match infra_child() {
                Ok(pid) => format!("P{pid}"),
                Err(e) => format!("E{e}"),
            };
            let _ = send_message(child_sock.as_fd(), message.as_bytes(), &[]);
            // SAFETY: see child_main.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { .. } => {}
    }
    drop(child_sock);
    let mut buf = Vec::new();
    recv_timeout(parent_sock.as_fd(), &mut buf, SETUP_TIMEOUT)?;
    let pid = expect(&buf, b'P')?.ok_or_else(|| SpawnError::Init("infra exited".into()))?;
    std::str::from_utf8(pid)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| SpawnError::Init("bad infra pid".into()))
}

fn infra_child() -> Result<i32, String> {
    // Named before the fork, so the infra has its name from birth (without one it would show the shim's, see
    // `shim::main`, in the containers' `ps`).
    nix::sys::prctl::set_name(c"berth-init").map_err(err("prctl(PR_SET_NAME)"))?;
    unshare(CloneFlags::CLONE_NEWPID).map_err(err("unshare(pid)"))?;
    // SAFETY: single-threaded child (see spawn_infra).
    match unsafe { nix::unistd::fork() }.map_err(err("fork"))? {
        ForkResult::Parent { child } => Ok(child.as_raw()),
        ForkResult::Child => infra_main(),
    }
}

fn infra_main() -> ! {
    let _ = nix::sys::prctl::set_dumpable(false);
    let _ = nix::unistd::setsid();
    // SAFETY: close every inherited descriptor above stdio (the shim's sockets, pipes, logs).
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    let mut set = nix::sys::signal::SigSet::empty();
    for s in [
        nix::sys::signal::Signal::SIGCHLD,
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
    ] {
        set.add(s);
    }
    let _ = set.thread_block();
    loop {
        match set.wait() {
            Ok(nix::sys::signal::Signal::SIGCHLD) => {
                while let Ok(status) =
                    nix::sys::wait::waitpid(Pid::from_raw(-1), Some(nix::sys::wait::WaitPidFlag::WNOHANG))
                {
                    if status == nix::sys::wait::WaitStatus::StillAlive {
                        break;
                    }
                }
            }
            // SAFETY: see child_main.
            Ok(_) => unsafe { libc::_exit(0) },
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_rootfs_parent_is_the_longest_mount_point_above_it() {
        let mountinfo = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
25 22 0:23 / /run rw,nosuid shared:5 - tmpfs tmpfs rw
26 25 0:24 / /run/berth\\040x rw master:7 - tmpfs tmpfs rw
27 22 0:25 / /runner rw shared:9 - tmpfs tmpfs rw
";
        let at = |p: &str| super::mount_point_of(mountinfo, std::path::Path::new(p));
        assert_eq!(at("/run/berth x/containers/c1"), Some(("/run/berth x".into(), false)));
        assert_eq!(at("/run/other/c1"), Some(("/run".into(), true)));
        assert_eq!(at("/runner/c1"), Some(("/runner".into(), true)));
        assert_eq!(at("/var/lib"), Some(("/".into(), true)));
    }

    use super::*;

    #[test]
    fn cgroup_v1_layout_binds_the_containers_own_dirs_only() {
        let mountinfo = "\
25 1 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        let own = [
            PathBuf::from("/sys/fs/cgroup/memory/berth/pod/ctr"),
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/berth/pod/ctr"),
        ];
        let layout = cgroup_v1_layout(mountinfo, &own);
        assert_eq!(
            layout,
            [
                V1Hierarchy {
                    name: "cpu,cpuacct".into(),
                    bind: Some(own[1].clone()),
                    links: vec!["cpu".into(), "cpuacct".into()],
                },
                V1Hierarchy {
                    name: "memory".into(),
                    bind: Some(own[0].clone()),
                    links: vec![],
                },
                // Not placed in pids: an empty dir, not the host's root cgroup. cgroup2 is left out.
                V1Hierarchy {
                    name: "pids".into(),
                    bind: None,
                    links: vec![],
                },
            ]
        );
    }

    #[test]
    fn secure_join_keeps_symlinks_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("real/dir")).unwrap();
        std::os::unix::fs::symlink("/real", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", root.join("escape")).unwrap();
        std::os::unix::fs::symlink("real/dir", root.join("rel")).unwrap();
        assert_eq!(secure_join(root, Path::new("/abs/dir")), root.join("real/dir"));
        assert_eq!(secure_join(root, Path::new("/escape/passwd")), root.join("etc/passwd"));
        assert_eq!(secure_join(root, Path::new("/rel/x")), root.join("real/dir/x"));
        assert_eq!(secure_join(root, Path::new("/../../x")), root.join("x"));
    }
}
