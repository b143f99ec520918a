//! Version: the runtime's name and versions.

use crate::api::{VersionRequest, VersionResponse};

/// The CRI API version berth implements.
pub const RUNTIME_API_VERSION: &str = "v1";
pub const RUNTIME_NAME: &str = "berth";

pub fn handle(_req: VersionRequest) -> VersionResponse {
    VersionResponse {
        // "version of the kubelet runtime API" — the proto only defines 0.1.0 here.
        version: "0.1.0".into(),
        runtime_name: RUNTIME_NAME.into(),
        runtime_version: env!("CARGO_PKG_VERSION").into(),
        runtime_api_version: RUNTIME_API_VERSION.into(),
    }
}
