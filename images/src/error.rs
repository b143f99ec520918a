//! The image store's errors, each naming what it was about; [`ImageError::kind`] tells the CRI layer
//! which gRPC code to answer with.

use std::fmt;
use std::path::PathBuf;

use berth_core::plugin::PluginError;
use berth_core::store::StoreError;

/// What kind of failure, for the one place that maps errors to gRPC codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    Unauthenticated,
    FailedPrecondition,
    Unavailable,
    Internal,
}

/// One registry host that was tried and how it failed.
#[derive(Debug)]
pub struct HostAttempt {
    pub host: String,
    pub error: oci_client::errors::OciDistributionError,
}

/// The attempts of a fetch that tried every host, for the error message.
#[derive(Debug)]
pub struct Attempts(pub Vec<HostAttempt>);

impl fmt::Display for Attempts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no host with the needed capability is configured");
        }
        for (i, a) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", a.host, a.error)?;
            // The transport's causes (e.g. rustls' "invalid peer certificate: UnknownIssuer") are in the
            // source chain, not in the top error's text.
            let mut cause = std::error::Error::source(&a.error);
            while let Some(c) = cause {
                write!(f, ": {c}")?;
                cause = c.source();
            }
        }
        Ok(())
    }
}

impl Attempts {
    fn all_not_found(&self) -> bool {
        use oci_client::errors::{OciDistributionError as E, OciErrorCode};
        !self.0.is_empty()
            && self.0.iter().all(|a| match &a.error {
                E::ImageManifestNotFoundError(_) => true,
                E::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
                    matches!(
                        e.code,
                        OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::BlobUnknown
                    )
                }),
                E::ServerError { code, .. } => *code == 404,
                _ => false,
            })
    }

    fn any_unauthorized(&self) -> bool {
        use oci_client::errors::{OciDistributionError as E, OciErrorCode};
        self.0.iter().any(|a| match &a.error {
            E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => true,
            E::RegistryError { envelope, .. } => envelope
                .errors
                .iter()
                .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)),
            E::ServerError { code, .. } => *code == 401 || *code == 403,
            _ => false,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {reference:?}: {message}")]
    InvalidReference { reference: String, message: String },
    #[error("cannot resolve {reference}: {attempts}")]
    Resolve { reference: String, attempts: Attempts },
    #[error("cannot fetch blob {digest} of {reference}: {attempts}")]
    Fetch {
        reference: String,
        digest: String,
        attempts: Attempts,
    },
    #[error("{reference}: no manifest for linux/amd64 (the index has: {available})")]
    NoPlatform { reference: String, available: String },
    #[error("{reference}: the image is for {platform}, this host runs linux/{host}")]
    WrongPlatform {
        reference: String,
        platform: String,
        host: &'static str,
    },
    #[error("{reference}: unsupported {what}")]
    Unsupported { reference: String, what: String },
    #[error("blob {expected}: content has digest {actual}")]
    Digest { expected: String, actual: String },
    #[error("blob {digest}: expected {expected} bytes, got {actual}{}", if *.truncated { " (truncated)" } else { "" })]
    Size {
        digest: String,
        expected: u64,
        actual: u64,
        truncated: bool,
    },
    #[error("{what} {digest} is not valid: {message}")]
    BadDocument {
        what: &'static str,
        digest: String,
        message: String,
    },
    #[error("cannot unpack layer {digest} ({chain}): {source}")]
    Unpack {
        digest: String,
        chain: String,
        #[source]
        source: PluginError,
    },
    #[error("snapshotter: {0}")]
    Snapshotter(#[source] PluginError),
    #[error("content store {path}: {source}")]
    Content {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("registry hosts config {path}: {message}")]
    HostsConfig { path: PathBuf, message: String },
    #[error("image {0:?} not found")]
    NotFound(String),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("import {path}: {message}")]
    Import { path: PathBuf, message: String },
    #[error("registry client for {host}: {source}")]
    Client {
        host: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    #[error("the pull of {reference} was cancelled")]
    Cancelled { reference: String },
}

impl ImageError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ImageError::InvalidReference { .. } => ErrorKind::InvalidArgument,
            ImageError::Resolve { attempts, .. } | ImageError::Fetch { attempts, .. } => {
                if attempts.any_unauthorized() {
                    ErrorKind::Unauthenticated
                } else if attempts.all_not_found() {
                    ErrorKind::NotFound
                } else {
                    ErrorKind::Unavailable
                }
            }
            ImageError::NotFound(_) => ErrorKind::NotFound,
            ImageError::NoPlatform { .. }
            | ImageError::WrongPlatform { .. }
            | ImageError::Unsupported { .. }
            | ImageError::Digest { .. }
            | ImageError::Size { .. }
            | ImageError::BadDocument { .. }
            | ImageError::Import { .. } => ErrorKind::FailedPrecondition,
            ImageError::Unpack { source, .. } | ImageError::Snapshotter(source) => match source {
                PluginError::InvalidArgument(_) => ErrorKind::FailedPrecondition,
                PluginError::NotFound(_) => ErrorKind::NotFound,
                _ => ErrorKind::Internal,
            },
            ImageError::HostsConfig { .. } => ErrorKind::FailedPrecondition,
            ImageError::Cancelled { .. } => ErrorKind::Unavailable,
            ImageError::Content { .. } | ImageError::Store(_) | ImageError::Client { .. } => ErrorKind::Internal,
        }
    }
}

pub type Result<T> = std::result::Result<T, ImageError>;
