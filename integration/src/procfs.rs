//! Per-process figures from /proc that the load test and the bench driver read: CPU time and open fds.

use std::time::Duration;

/// `/proc/PID/stat` counts in USER_HZ, which the kernel fixes at 100 for userspace on every architecture
/// berth runs on (a constant rather than `sysconf(_SC_CLK_TCK)`, which needs unsafe or another nix feature).
const USER_HZ: u64 = 100;

/// CPU time of one process: its own (utime + stime) and that of its reaped children (cutime + cstime), which
/// is where short-lived helpers (exec'd probes, runc) end up once their parent has waited for them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cpu {
    pub own: Duration,
    pub children: Duration,
}

impl Cpu {
    pub fn total(&self) -> Duration {
        self.own + self.children
    }
}

impl std::ops::Add for Cpu {
    type Output = Cpu;
    fn add(self, o: Cpu) -> Cpu {
        Cpu {
            own: self.own + o.own,
            children: self.children + o.children,
        }
    }
}

impl std::iter::Sum for Cpu {
    fn sum<I: Iterator<Item = Cpu>>(iter: I) -> Cpu {
        iter.fold(Cpu::default(), |a, b| a + b)
    }
}

/// The fields of `/proc/PID/stat` after `comm` (which may hold spaces and parentheses): index 0 is the state.
pub fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The CPU time of `pid`, `None` once it is gone.
pub fn cpu(pid: i32) -> Option<Cpu> {
    let f = stat_fields(pid)?;
    // utime, stime, cutime, cstime are fields 14-17 of proc(5); index 0 here is field 3 (state).
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let d = |t: u64| Duration::from_millis(t * 1000 / USER_HZ);
    Some(Cpu {
        own: d(ticks(11) + ticks(12)),
        children: d(ticks(13) + ticks(14)),
    })
}

/// How many fds `pid` has open, `None` once it is gone.
pub fn fd_count(pid: i32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}
