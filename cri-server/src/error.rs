//! The one place where berth's errors become gRPC status codes.

use berth_core::lifecycle::LifecycleError;
use berth_core::plugin::PluginError;
use berth_core::store::StoreError;
use tonic::{Code, Status};

/// An error of a CRI handler, carrying the gRPC code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

impl From<CriError> for Status {
    fn from(e: CriError) -> Status {
        let code = match &e {
            CriError::InvalidArgument(_) => Code::InvalidArgument,
            CriError::NotFound(_) => Code::NotFound,
            CriError::AlreadyExists(_) => Code::AlreadyExists,
            CriError::FailedPrecondition(_) => Code::FailedPrecondition,
            CriError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            CriError::Unimplemented(_) => Code::Unimplemented,
            CriError::Unauthenticated(_) => Code::Unauthenticated,
            CriError::Unavailable(_) => Code::Unavailable,
            CriError::ResourceExhausted(_) => Code::ResourceExhausted,
            CriError::Plugin(p) => match p {
                PluginError::InvalidArgument(_) => Code::InvalidArgument,
                PluginError::NotFound(_) => Code::NotFound,
                PluginError::AlreadyExists(_) => Code::AlreadyExists,
                PluginError::FailedPrecondition(_) => Code::FailedPrecondition,
                PluginError::Unsupported(_) => Code::Unimplemented,
                PluginError::Io { .. } | PluginError::Internal(_) => Code::Internal,
            },
            CriError::Store(_) | CriError::Internal(_) => Code::Internal,
        };
        let message = e.to_string();
        Status::new(internal_or_out_of_space(code, &message), message)
    }
}

/// A full disk is gRPC's ResourceExhausted ("the entire file system is out of space"), not a runtime fault:
/// whatever layer met ENOSPC, its message carries the OS error (Rust's io::Error prints "(os error 28)").
fn internal_or_out_of_space(code: Code, message: &str) -> Code {
    if code == Code::Internal && message.contains(&format!("(os error {})", nix::libc::ENOSPC)) {
        Code::ResourceExhausted
    } else {
        code
    }
}

impl From<LifecycleError> for CriError {
    fn from(e: LifecycleError) -> CriError {
        match e {
            LifecycleError::NotFound(m) => CriError::NotFound(m),
            LifecycleError::AlreadyExists(m) => CriError::AlreadyExists(m),
            LifecycleError::FailedPrecondition(m) => CriError::FailedPrecondition(m),
            LifecycleError::InvalidArgument(m) => CriError::InvalidArgument(m),
            LifecycleError::DeadlineExceeded(m) => CriError::DeadlineExceeded(m),
            LifecycleError::Plugin(p) => CriError::Plugin(p),
            LifecycleError::Store(s) => CriError::Store(s),
            e @ LifecycleError::Io { .. } => CriError::Internal(e.to_string()),
        }
    }
}

impl From<berth_images::ImageError> for CriError {
    fn from(e: berth_images::ImageError) -> CriError {
        use berth_images::ErrorKind;
        let m = e.to_string();
        match e.kind() {
            ErrorKind::InvalidArgument => CriError::InvalidArgument(m),
            ErrorKind::NotFound => CriError::NotFound(m),
            ErrorKind::FailedPrecondition => CriError::FailedPrecondition(m),
            ErrorKind::Unauthenticated => CriError::Unauthenticated(m),
            ErrorKind::Unavailable => CriError::Unavailable(m),
            ErrorKind::Internal => CriError::Internal(m),
        }
    }
}

pub type CriResult<T> = Result<T, CriError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_errors_keep_their_code() {
        let s: Status = CriError::from(PluginError::NotFound("container abc not found".into())).into();
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "container abc not found");
        let s: Status = CriError::InvalidArgument("metadata.name: must not be empty".into()).into();
        assert_eq!(s.code(), Code::InvalidArgument);
    }

    #[test]
    fn a_full_disk_is_resource_exhausted() {
        let full = std::io::Error::from_raw_os_error(nix::libc::ENOSPC);
        let s: Status = CriError::from(PluginError::io("writing layer", full)).into();
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        let other = std::io::Error::from_raw_os_error(nix::libc::EIO);
        let s: Status = CriError::from(PluginError::io("writing layer", other)).into();
        assert_eq!(s.code(), Code::Internal, "{s:?}");
    }
}
