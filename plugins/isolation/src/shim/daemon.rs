//! Detaching the shim from berthd: fork, new session, subreaper, stdio to /dev/null and the shim log.

#![allow(unsafe_code)]

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::unistd::ForkResult;

use super::Args;

pub enum Role {
    /// The launching process: exit with this code (0 once the daemon is ready).
    Parent(i32),
    /// The daemon; signal readiness on this pipe once serving.
    Daemon(OwnedFd),
}

pub fn daemonize(args: &Args) -> std::io::Result<Role> {
    let dir = super::pod_dir(&args.state, &args.pod_id);
    std::fs::create_dir_all(&dir)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("shim.log"))?;
    let devnull = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null")?;
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: the shim has no threads yet (no runtime, nothing spawned), so forking is sound.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Parent { .. } => {
            drop(write_end);
            let mut answer = String::new();
            let _ = std::fs::File::from(read_end).read_to_string(&mut answer);
            match answer.strip_prefix('R') {
                Some(pid) => {
                    // berthd may have died while waiting (kill -9): a closed pipe is no reason to panic, the
                    // shim runs on and the next berthd finds it by its socket.
                    use std::io::Write;
                    let _ = writeln!(std::io::stdout(), "{pid}");
                    Ok(Role::Parent(0))
                }
                None => Ok(Role::Parent(1)),
            }
        }
        ForkResult::Child => {
            drop(read_end);
            nix::unistd::setsid()?;
            nix::sys::prctl::set_child_subreaper(true)?;
            std::env::set_current_dir("/")?;
            for (fd, target) in [(devnull.as_raw_fd(), 0), (devnull.as_raw_fd(), 1), (log.as_raw_fd(), 2)] {
                // SAFETY: dup2 onto the standard descriptors of this process, from descriptors it owns.
                if unsafe { libc::dup2(fd, target) } < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(Role::Daemon(write_end))
        }
    }
}

/// Closes every descriptor above stdio the spawner leaked into us (a jobserver pipe, a test harness's
/// pipes…): a long-lived daemon must not keep its spawner's pipes open.
pub fn close_inherited_fds() {
    // SAFETY: close_range on descriptors of this process at startup, before any of ours are opened.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
}

pub fn signal_ready(ready: OwnedFd) {
    let mut f = std::fs::File::from(ready);
    let _ = write!(f, "R{}", std::process::id());
}

/// Hands the heap's free memory back to the kernel. A create or an exec parses a plan and builds a seccomp
/// program (tens of KiB, freed right after); glibc would keep those pages resident in every shim.
pub fn trim_heap() {
    // SAFETY: malloc_trim only releases free memory of this process's malloc arenas; no pointer is involved.
    unsafe { libc::malloc_trim(0) };
}
