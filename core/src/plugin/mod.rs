//! The four plugin kinds berth's core drives, and the vocabulary they share.
//!
//! Each trait is small and describes rather than does where it can (a snapshotter returns mount specs; the
//! caller mounts). Plugins are named; the registry picks one per kind from the config.

pub mod isolation;
pub mod network;
pub mod resources;
pub mod snapshot;

use std::fmt;

pub use isolation::Isolation;
pub use network::Network;
pub use resources::Resources;
pub use snapshot::Snapshotter;

/// The kinds of plugin, as named in config and in the dynamic-plugin ABI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    Snapshotter,
    Network,
    Isolation,
    Resources,
}

impl PluginKind {
    pub const ALL: [PluginKind; 4] = [
        PluginKind::Snapshotter,
        PluginKind::Network,
        PluginKind::Isolation,
        PluginKind::Resources,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Snapshotter => "snapshotter",
            PluginKind::Network => "network",
            PluginKind::Isolation => "isolation",
            PluginKind::Resources => "resources",
        }
    }

    pub fn parse(s: &str) -> Option<PluginKind> {
        PluginKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a plugin is or is not ready; feeds the CRI `Status` conditions.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Readiness {
    pub ready: bool,
    /// CamelCase machine-readable reason when not ready (CRI convention).
    pub reason: String,
    pub message: String,
}

impl Readiness {
    pub fn ready() -> Self {
        Readiness {
            ready: true,
            ..Default::default()
        }
    }

    pub fn not_ready(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Readiness {
            ready: false,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// The error every plugin call returns. Kinds map to gRPC codes in exactly one place (cri-server).
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
}

impl PluginError {
    /// Wraps an I/O error with what was being done (usually naming the path).
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        PluginError::Io {
            context: context.into(),
            source,
        }
    }
}

pub type PluginResult<T> = Result<T, PluginError>;
