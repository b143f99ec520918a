//! The shim protocol: one JSON request and one JSON reply per connection, each one `SOCK_SEQPACKET` message;
//! file descriptors (pipe ends, pty masters) ride along as `SCM_RIGHTS`.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use berth_core::plugin::isolation::{ContainerState, ExitStatus};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};

use crate::plan::InitPlan;

/// Largest message either side sends (a create request with a seccomp program is well under this).
pub const MAX_MESSAGE: usize = 512 * 1024;
const MAX_FDS: usize = 4;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    Create {
        id: String,
        plan: Box<InitPlan>,
        log_path: Option<PathBuf>,
        stdin: bool,
        stdin_once: bool,
    },
    Start {
        id: String,
    },
    State {
        id: String,
    },
    List,
    Kill {
        id: String,
        signal: i32,
    },
    /// Replies when the container has exited or after `timeout_ms`.
    Wait {
        id: String,
        timeout_ms: u64,
    },
    /// Replies with the session id and, as fds, the host ends: stdin, stdout, stderr (those asked for; a tty
    /// gives its master as stdout).
    Exec {
        id: String,
        args: Vec<String>,
        tty: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
    WaitExec {
        id: String,
        session: String,
        timeout_ms: u64,
    },
    KillExec {
        id: String,
        session: String,
        signal: i32,
    },
    Attach {
        id: String,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
    Resize {
        id: String,
        session: String,
        width: u16,
        height: u16,
    },
    ReopenLog {
        id: String,
    },
    Delete {
        id: String,
    },
    /// Starts the pod's infra process: PID 1 of a new PID namespace the pod's containers join.
    StartInfra,
    /// The shim's own pid and memory, for status and benchmarks.
    Info,
    Shutdown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    NotFound,
    InvalidArgument,
    FailedPrecondition,
    Internal,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Reply {
    Ok,
    Error {
        kind: ErrorKind,
        message: String,
    },
    Pid(u32),
    State(ContainerState),
    States(Vec<ContainerState>),
    Exit(Option<ExitStatus>),
    /// Exec started: session id and pid; the fds are attached, in the order stdin, stdout, stderr (present ones).
    Exec {
        session: String,
        pid: u32,
        fds: FdLayout,
    },
    /// Attach: fds attached as for exec.
    Attach {
        fds: FdLayout,
    },
    Info {
        pid: u32,
        vm_rss_kb: u64,
        containers: usize,
    },
}

/// Which of stdin/stdout/stderr were attached (in that order) to a reply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdLayout {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

impl Reply {
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Reply {
        Reply::Error {
            kind,
            message: message.into(),
        }
    }
}

/// Sends one message with optional fds.
pub fn send_message(sock: BorrowedFd<'_>, payload: &[u8], fds: &[RawFd]) -> nix::Result<()> {
    let iov = [IoSlice::new(payload)];
    let cmsgs: Vec<ControlMessage> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(fds)]
    };
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => return other.map(|_| ()),
        }
    }
}

/// Receives one message (empty at EOF) and the fds that came with it.
pub fn recv_message(sock: BorrowedFd<'_>, buf: &mut Vec<u8>) -> nix::Result<Vec<OwnedFd>> {
    // Size the buffer to the message (MSG_PEEK|MSG_TRUNC gives a SEQPACKET message's real length): a fixed
    // 512 KiB buffer per request would raise glibc's mmap threshold and stay resident in the shim.
    let len = loop {
        match nix::sys::socket::recv(sock.as_raw_fd(), &mut [], MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other?,
        }
    };
    buf.clear();
    buf.resize(len.clamp(1, MAX_MESSAGE), 0);
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (len, fds) = loop {
        let mut iov = [IoSliceMut::new(buf.as_mut_slice())];
        match recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e),
            Ok(msg) => {
                let mut fds = Vec::new();
                for c in msg.cmsgs()? {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        for fd in raw {
                            fds.push(adopt(fd));
                        }
                    }
                }
                break (msg.bytes, fds);
            }
        }
    };
    buf.truncate(len);
    Ok(fds)
}

#[allow(unsafe_code)]
pub(crate) fn adopt(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just received via SCM_RIGHTS, so it is open and owned by no one else in this process.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// The most bytes of a path that fit in `sockaddr_un.sun_path` with its NUL.
const SUN_PATH_MAX: usize = 107;

/// A socket address for `path`, which may be longer than `sun_path` allows (a deep state directory, e.g.
/// a test's temp dir, plus a 64-hex pod id): then it names the socket through `/proc/self/fd/<dir>/<name>`,
/// with the directory held open (O_PATH) for as long as the returned fd lives — keep it until bind/connect
/// returns.
pub fn socket_addr(path: &std::path::Path) -> nix::Result<(nix::sys::socket::UnixAddr, Option<OwnedFd>)> {
    use std::os::unix::ffi::OsStrExt;
    if path.as_os_str().as_bytes().len() <= SUN_PATH_MAX {
        return Ok((nix::sys::socket::UnixAddr::new(path)?, None));
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(nix::errno::Errno::ENAMETOOLONG);
    };
    let dirfd = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let short = PathBuf::from(format!("/proc/self/fd/{}", dirfd.as_raw_fd())).join(name);
    Ok((nix::sys::socket::UnixAddr::new(&short)?, Some(dirfd)))
}

#[cfg(test)]
mod socket_addr_tests {
    use super::*;

    #[test]
    fn a_socket_deeper_than_sun_path_still_binds_and_connects() {
        use nix::sys::socket::{AddressFamily, Backlog, SockFlag, SockType, bind, connect, listen, socket};
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("x".repeat(60)).join("y".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let path = deep.join("shim.sock");
        assert!(path.as_os_str().len() > SUN_PATH_MAX);
        let l = socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).unwrap();
        let (addr, _dir) = socket_addr(&path).unwrap();
        bind(l.as_raw_fd(), &addr).unwrap();
        listen(&l, Backlog::new(4).unwrap()).unwrap();
        assert!(path.exists(), "the socket is created at its real path");
        let c = socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).unwrap();
        let (addr, _dir) = socket_addr(&path).unwrap();
        connect(c.as_raw_fd(), &addr).unwrap();
    }
}
