//! Shared by the integration tests: a backend of real host processes, test clients, a private netns.
#![allow(dead_code)]

pub mod backend;
pub mod client;
pub mod netns;

use std::sync::Arc;
use std::time::Duration;

use berth_streaming::{ServerOptions, StreamingServer};

pub use backend::HostBackend;

pub async fn start(backend: Arc<HostBackend>) -> StreamingServer {
    start_with(backend, ServerOptions::default()).await
}

pub async fn start_with(backend: Arc<HostBackend>, options: ServerOptions) -> StreamingServer {
    StreamingServer::start_with(options, backend).await.unwrap()
}

/// Fails a test that hangs instead of hanging the suite.
pub async fn within<T>(secs: u64, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("timed out")
}
