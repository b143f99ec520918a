//! Sending SIGKILL to the processes left in a cgroup.

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// SIGKILLs each pid; ones already gone (ESRCH) are fine.
pub fn sigkill(pids: &[i32]) {
    for &pid in pids {
        if pid <= 1 {
            continue;
        }
        match kill(Pid::from_raw(pid), Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => tracing::warn!(pid, error = %e, "cannot kill a process left in a cgroup"),
        }
    }
}
