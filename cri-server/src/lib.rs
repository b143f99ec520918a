//! berth-cri: the CRI v1 gRPC services of berthd, the daemon's startup, and the host check.

pub mod api;
pub mod builtin;
pub mod check;
pub mod container_create;
pub mod container_events;
pub mod container_lifecycle;
pub mod container_status;
pub mod container_update;
pub mod daemon;
pub mod detached;
pub mod error;
pub mod exec_sync;
pub mod image_service;
pub mod resources;
pub mod rootfs_files;
pub mod runtime_config;
pub mod runtime_update;
pub mod sandbox_run;
pub mod sandbox_status;
pub mod sandbox_stop;
pub mod service;
pub mod spec;
pub mod stats;
pub mod status;
pub mod streaming;
pub mod version;
