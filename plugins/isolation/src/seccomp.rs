//! Seccomp: the `RuntimeDefault` profile, `Localhost` profiles in the Docker/OCI JSON format, and compilation of
//! an OCI `LinuxSeccomp` to a classic-BPF program.
//!
//! libseccomp (0.4, over the C library) rather than seccompiler: profiles name syscalls and architectures, and
//! libseccomp resolves names per architecture, handles multi-arch filters (x86_64 + x86 + x32 in one program),
//! argument comparisons incl. masked-equal and the errno/trace/log actions exactly as runc, crun and youki do.
//! seccompiler takes syscall numbers for a single arch only. The program is compiled here, in berthd, and
//! shipped to the shim as bytes, so the shim neither links libseccomp nor parses profiles.

use std::io::{Read, Seek};
use std::path::Path;

use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};
use serde::Deserialize;

use crate::lower::capability_number;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("libseccomp: {0}")]
    Lib(#[from] libseccomp::error::SeccompError),
    #[error("unsupported seccomp action {0}")]
    Action(String),
    #[error("reading profile {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing profile {path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("building profile: {0}")]
    Build(String),
}

/// Which profile a container asks for (CRI `SecurityProfile`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeccompProfile {
    RuntimeDefault,
    Unconfined,
    /// A JSON profile on the host, in the Docker (or plain OCI) format.
    Localhost(std::path::PathBuf),
}

impl SeccompProfile {
    /// The OCI seccomp section for a process whose bounding set is `bounding` (capability bit mask); `None` for
    /// unconfined.
    pub fn resolve(&self, bounding: u64) -> Result<Option<LinuxSeccomp>, SeccompError> {
        match self {
            SeccompProfile::Unconfined => Ok(None),
            SeccompProfile::RuntimeDefault => Ok(Some(runtime_default(bounding))),
            SeccompProfile::Localhost(path) => localhost(path, bounding).map(Some),
        }
    }
}

/// A profile in Docker's format (a superset of OCI's `linux.seccomp`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DockerProfile {
    pub default_action: LinuxSeccompAction,
    #[serde(default)]
    pub default_errno_ret: Option<u32>,
    #[serde(default)]
    pub architectures: Vec<Arch>,
    #[serde(default)]
    pub arch_map: Vec<ArchMap>,
    #[serde(default)]
    pub syscalls: Vec<DockerSyscall>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchMap {
    pub architecture: Arch,
    #[serde(default)]
    pub sub_architectures: Option<Vec<Arch>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DockerSyscall {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub names: Vec<String>,
    pub action: LinuxSeccompAction,
    #[serde(default)]
    pub errno_ret: Option<u32>,
    #[serde(default)]
    pub args: Option<Vec<LinuxSeccompArg>>,
    #[serde(default)]
    pub includes: Filter,
    #[serde(default)]
    pub excludes: Filter,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    #[serde(default)]
    pub caps: Vec<String>,
    #[serde(default)]
    pub arches: Vec<String>,
    #[serde(default)]
    pub min_kernel: Option<String>,
}

/// Go's name for the architecture berth runs on (Docker profiles use these in includes/excludes).
fn native_go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "arm" => "arm",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn native_arch() -> Arch {
    match std::env::consts::ARCH {
        "x86_64" => Arch::ScmpArchX86_64,
        "x86" => Arch::ScmpArchX86,
        "aarch64" => Arch::ScmpArchAarch64,
        "arm" => Arch::ScmpArchArm,
        "riscv64" => Arch::ScmpArchRiscv64,
        "s390x" => Arch::ScmpArchS390x,
        _ => Arch::ScmpArchNative,
    }
}

fn kernel_at_least(min: &str) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let parse = |s: &str| -> (u32, u32) {
        let mut it = s.split(|c: char| !c.is_ascii_digit()).filter(|p| !p.is_empty());
        let major = it.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let minor = it.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        (major, minor)
    };
    parse(release.trim()) >= parse(min)
}

impl Filter {
    fn caps_all_in(&self, bounding: u64) -> bool {
        self.caps
            .iter()
            .all(|c| capability_number(c).is_some_and(|n| bounding & (1 << n) != 0))
    }
}

impl DockerProfile {
    /// Resolves arch maps and includes/excludes for this host and a process with the `bounding` capabilities.
    pub fn to_oci(&self, bounding: u64) -> Result<LinuxSeccomp, SeccompError> {
        let native = native_arch();
        let mut arches: Vec<Arch> = self.architectures.clone();
        for m in &self.arch_map {
            if m.architecture == native {
                arches.push(m.architecture);
                arches.extend(m.sub_architectures.iter().flatten().copied());
            }
        }
        let go_arch = native_go_arch();
        let mut syscalls = Vec::new();
        for s in &self.syscalls {
            let inc = &s.includes;
            if !inc.arches.is_empty() && !inc.arches.iter().any(|a| a == go_arch) {
                continue;
            }
            if !inc.caps.is_empty() && !inc.caps_all_in(bounding) {
                continue;
            }
            if inc.min_kernel.as_deref().is_some_and(|k| !kernel_at_least(k)) {
                continue;
            }
            let exc = &s.excludes;
            if exc.arches.iter().any(|a| a == go_arch) {
                continue;
            }
            if !exc.caps.is_empty() && exc.caps.iter().any(|c| Filter::caps_all_in_one(c, bounding)) {
                continue;
            }
            let mut names = s.names.clone();
            names.extend(s.name.clone());
            let mut b = LinuxSyscallBuilder::default().names(names).action(s.action);
            if let Some(e) = s.errno_ret {
                b = b.errno_ret(e);
            }
            if let Some(args) = &s.args {
                b = b.args(args.clone());
            }
            syscalls.push(b.build().map_err(|e| SeccompError::Build(e.to_string()))?);
        }
        let mut b = LinuxSeccompBuilder::default()
            .default_action(self.default_action)
            .architectures(arches)
            .syscalls(syscalls);
        if let Some(e) = self.default_errno_ret {
            b = b.default_errno_ret(e);
        }
        b.build().map_err(|e| SeccompError::Build(e.to_string()))
    }
}

impl Filter {
    fn caps_all_in_one(cap: &str, bounding: u64) -> bool {
        capability_number(cap).is_some_and(|n| bounding & (1 << n) != 0)
    }
}

/// Reads a `Localhost` profile.
pub fn localhost(path: &Path, bounding: u64) -> Result<LinuxSeccomp, SeccompError> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| SeccompError::Read {
        path: display.clone(),
        source,
    })?;
    let profile: DockerProfile =
        serde_json::from_str(&text).map_err(|source| SeccompError::Parse { path: display, source })?;
    profile.to_oci(bounding)
}

/// Syscalls every container may make (the `RuntimeDefault` allow-list; same set as containerd's and Docker's
/// default profile).
const DEFAULT_ALLOW: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Syscalls allowed only when the process keeps a capability in its bounding set.
const BY_CAPABILITY: &[(&str, &[&str])] = &[
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    ("CAP_SYS_MODULE", &["delete_module", "init_module", "finit_module"]),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
];

/// Namespace-creating clone flags: without CAP_SYS_ADMIN, clone may not set any of them.
const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

fn rule(names: &[&str], args: Option<Vec<LinuxSeccompArg>>) -> LinuxSyscall {
    let mut b = LinuxSyscallBuilder::default()
        .names(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .action(LinuxSeccompAction::ScmpActAllow);
    if let Some(args) = args {
        b = b.args(args);
    }
    b.build().expect("every field is set")
}

fn arg(index: usize, value: u64, value_two: u64, op: LinuxSeccompOperator) -> LinuxSeccompArg {
    LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .value_two(value_two)
        .op(op)
        .build()
        .expect("every field is set")
}

/// The `RuntimeDefault` profile for a process with the `bounding` capabilities: deny by default with EPERM,
/// allow the common syscalls, a few more per capability, `socket` except AF_VSOCK, `personality` for the
/// harmless personas, and `clone` without namespace flags unless CAP_SYS_ADMIN is kept.
pub fn runtime_default(bounding: u64) -> LinuxSeccomp {
    let has = |cap: &str| capability_number(cap).is_some_and(|n| bounding & (1 << n) != 0);
    let mut syscalls = vec![rule(DEFAULT_ALLOW, None)];
    syscalls.push(rule(&["process_vm_readv", "process_vm_writev", "ptrace"], None));
    syscalls.push(rule(
        &["socket"],
        Some(vec![arg(0, libc::AF_VSOCK as u64, 0, LinuxSeccompOperator::ScmpCmpNe)]),
    ));
    for persona in [0u64, 8, 0x20000, 0x20008, 0xffff_ffff] {
        syscalls.push(rule(
            &["personality"],
            Some(vec![arg(0, persona, 0, LinuxSeccompOperator::ScmpCmpEq)]),
        ));
    }
    match std::env::consts::ARCH {
        "x86_64" => syscalls.push(rule(&["arch_prctl", "modify_ldt"], None)),
        "x86" => syscalls.push(rule(&["modify_ldt"], None)),
        "aarch64" | "arm" => syscalls.push(rule(
            &[
                "arm_fadvise64_64",
                "arm_sync_file_range",
                "sync_file_range2",
                "breakpoint",
                "cacheflush",
                "set_tls",
            ],
            None,
        )),
        "riscv64" => syscalls.push(rule(&["riscv_flush_icache"], None)),
        "s390x" => syscalls.push(rule(
            &["s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"],
            None,
        )),
        _ => {}
    }
    for (cap, names) in BY_CAPABILITY {
        if has(cap) {
            syscalls.push(rule(names, None));
        }
    }
    if !has("CAP_SYS_ADMIN") {
        let index = if std::env::consts::ARCH == "s390x" { 1 } else { 0 };
        syscalls.push(rule(
            &["clone"],
            Some(vec![arg(
                index,
                CLONE_NAMESPACE_FLAGS,
                0,
                LinuxSeccompOperator::ScmpCmpMaskedEq,
            )]),
        ));
        // glibc falls back to clone when clone3 says ENOSYS; clone3's flags are behind a pointer.
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(vec!["clone3".to_string()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(libc::ENOSYS as u32)
                .build()
                .expect("every field is set"),
        );
    }
    let mut arches = vec![native_arch()];
    if std::env::consts::ARCH == "x86_64" {
        arches.extend([Arch::ScmpArchX86, Arch::ScmpArchX32]);
    } else if std::env::consts::ARCH == "aarch64" {
        arches.push(Arch::ScmpArchArm);
    }
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(libc::EPERM as u32)
        .architectures(arches)
        .syscalls(syscalls)
        .build()
        .expect("every field is set")
}

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<ScmpAction, SeccompError> {
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => ScmpAction::KillThread,
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno.unwrap_or(libc::EPERM as u32) as i32),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(errno.unwrap_or(libc::EPERM as u32) as u16),
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        other => return Err(SeccompError::Action(other.to_string())),
    })
}

fn scmp_arch(a: Arch) -> Option<ScmpArch> {
    let name = serde_json::to_value(a).ok()?;
    name.as_str()?.parse().ok()
}

fn compare(a: &LinuxSeccompArg) -> ScmpArgCompare {
    let op = match a.op() {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(a.value()),
    };
    let datum = match a.op() {
        LinuxSeccompOperator::ScmpCmpMaskedEq => a.value_two().unwrap_or(0),
        _ => a.value(),
    };
    ScmpArgCompare::new(a.index() as u32, op, datum)
}

/// Compiles an OCI seccomp section to a BPF program (an array of `struct sock_filter`). Syscall names this
/// libseccomp does not know are skipped, as runc does.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<u8>, SeccompError> {
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let mut ctx = ScmpFilterContext::new(default)?;
    for a in profile.architectures().iter().flatten() {
        if let Some(arch) = scmp_arch(*a)
            && arch != ScmpArch::Native
        {
            ctx.add_arch(arch)?;
        }
    }
    ctx.set_ctl_nnp(false)?;
    for s in profile.syscalls().iter().flatten() {
        let act = action(s.action(), s.errno_ret())?;
        if act == default {
            continue;
        }
        for name in s.names() {
            let Ok(sc) = ScmpSyscall::from_name(name) else {
                continue;
            };
            let args = s.args().clone().unwrap_or_default();
            if args.is_empty() {
                ctx.add_rule(act, sc)?;
                continue;
            }
            let mut indexes: Vec<usize> = args.iter().map(|a| a.index()).collect();
            indexes.sort_unstable();
            indexes.dedup();
            if indexes.len() == args.len() {
                let cmps: Vec<ScmpArgCompare> = args.iter().map(compare).collect();
                ctx.add_rule_conditional(act, sc, &cmps)?;
            } else {
                // Several comparisons of one argument mean "any of them" (libseccomp would AND them).
                for a in &args {
                    ctx.add_rule_conditional(act, sc, &[compare(a)])?;
                }
            }
        }
    }
    // export_bpf_mem needs libseccomp 2.6; Debian 12 has 2.5: export through a memfd.
    let fd = nix::sys::memfd::memfd_create(c"seccomp-bpf", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .map_err(|e| SeccompError::Build(format!("memfd_create: {e}")))?;
    ctx.export_bpf(&fd)?;
    let mut file = std::fs::File::from(fd);
    let mut bpf = Vec::new();
    file.seek(std::io::SeekFrom::Start(0))
        .and_then(|_| file.read_to_end(&mut bpf))
        .map_err(|e| SeccompError::Build(format!("reading exported filter: {e}")))?;
    Ok(bpf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_default_compiles_and_depends_on_caps() {
        let without = runtime_default(0);
        let with_admin = runtime_default(1 << 21);
        let names = |p: &LinuxSeccomp| -> Vec<String> {
            p.syscalls().iter().flatten().flat_map(|s| s.names().clone()).collect()
        };
        assert!(!names(&without).contains(&"mount".to_string()));
        assert!(names(&with_admin).contains(&"mount".to_string()));
        let bpf = compile(&without).unwrap();
        assert_eq!(bpf.len() % 8, 0);
        assert!(bpf.len() > 8 * 50);
    }

    #[test]
    fn docker_profile_with_includes_and_arch_map() {
        let json = r#"{
            "defaultAction": "SCMP_ACT_ERRNO",
            "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
                        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
            "syscalls": [
                {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
                {"name": "mount", "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["kill"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_KILL"]}},
                {"names": ["no_such_syscall"], "action": "SCMP_ACT_ALLOW"}
            ]
        }"#;
        let p: DockerProfile = serde_json::from_str(json).unwrap();
        let oci = p.to_oci(1 << 5).unwrap();
        let names: Vec<String> = oci
            .syscalls()
            .iter()
            .flatten()
            .flat_map(|s| s.names().clone())
            .collect();
        assert_eq!(names, vec!["read", "write", "no_such_syscall"]);
        if std::env::consts::ARCH == "x86_64" {
            assert_eq!(
                oci.architectures().clone().unwrap(),
                vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86]
            );
        }
        compile(&oci).unwrap();
    }
}
