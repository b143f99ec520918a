//! The plugin's typed errors, each naming the file or directory involved, and their one mapping onto
//! [`PluginError`] (and so onto gRPC codes).

use std::io;
use std::path::PathBuf;

use berth_core::plugin::PluginError;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A value the kernel or our own checks refuse: the caller's fault (InvalidArgument).
    #[error("invalid {what}: {message}")]
    Invalid { what: String, message: String },
    /// The kernel refused a value written to a cgroup file (EINVAL, ERANGE, EBUSY, EOVERFLOW…).
    #[error("cgroup file {path} refused {value:?}: {source}")]
    Refused {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot parse {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("cannot create cgroup {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove cgroup {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {path} not found")]
    NotFound { path: String },
    #[error("processes {pids:?} are still in cgroup {path} after SIGKILL")]
    Stragglers { path: String, pids: Vec<i32> },
    #[error("cannot {what} for cgroup {path}: {source}{}", if log.is_empty() { String::new() } else { format!("; verifier: {log}") })]
    Bpf {
        path: PathBuf,
        what: String,
        #[source]
        source: io::Error,
        log: String,
    },
    #[error("{0}")]
    Unsupported(String),
}

impl CgroupError {
    pub fn invalid(what: impl Into<String>, message: impl Into<String>) -> Self {
        CgroupError::Invalid {
            what: what.into(),
            message: message.into(),
        }
    }

    /// A failed write: errnos that mean "this value is not acceptable here" become [`CgroupError::Refused`].
    pub fn write(path: PathBuf, value: &str, source: io::Error) -> Self {
        let refused = matches!(
            source.raw_os_error(),
            Some(libc_errno::EINVAL | libc_errno::ERANGE | libc_errno::EBUSY | libc_errno::EOVERFLOW)
        );
        let value = value.to_string();
        if refused {
            CgroupError::Refused { path, value, source }
        } else {
            CgroupError::Write { path, value, source }
        }
    }

    pub fn read(path: PathBuf, source: io::Error) -> Self {
        CgroupError::Read { path, source }
    }
}

/// The errno values we classify (from nix, to avoid a direct libc dependency).
mod libc_errno {
    use nix::errno::Errno;
    pub const EINVAL: i32 = Errno::EINVAL as i32;
    pub const ERANGE: i32 = Errno::ERANGE as i32;
    pub const EBUSY: i32 = Errno::EBUSY as i32;
    pub const EOVERFLOW: i32 = Errno::EOVERFLOW as i32;
}

impl From<CgroupError> for PluginError {
    fn from(e: CgroupError) -> Self {
        match e {
            CgroupError::Invalid { .. } | CgroupError::Refused { .. } => PluginError::InvalidArgument(e.to_string()),
            CgroupError::NotFound { .. } => PluginError::NotFound(e.to_string()),
            CgroupError::Unsupported(_) => PluginError::Unsupported(e.to_string()),
            CgroupError::Stragglers { .. } => PluginError::FailedPrecondition(e.to_string()),
            CgroupError::Write { path, value, source } => {
                PluginError::io(format!("write {value:?} to {}", path.display()), source)
            }
            CgroupError::Read { path, source } => PluginError::io(format!("read {}", path.display()), source),
            CgroupError::Create { path, source } => PluginError::io(format!("mkdir {}", path.display()), source),
            CgroupError::Remove { path, source } => PluginError::io(format!("rmdir {}", path.display()), source),
            CgroupError::Parse { .. } | CgroupError::Bpf { .. } => PluginError::Internal(e.to_string()),
        }
    }
}

pub type Result<T, E = CgroupError> = std::result::Result<T, E>;
