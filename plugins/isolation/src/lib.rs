//! The linux isolation plugin: namespaces, pivot_root and one berth-shim per pod.
//!
//! - [`lower`] turns an OCI runtime spec into an [`plan::InitPlan`] (pure, in berthd);
//! - [`seccomp`] builds RuntimeDefault / Localhost profiles and compiles them to BPF (in berthd);
//! - [`shim`] is the `berth-shim` binary's code: a single-threaded pod monitor;
//! - [`init`] is what the container's first process does between fork and exec (runs in the shim's child);
//! - [`plugin`] is the `Isolation` implementation berthd uses, talking to shims over [`protocol`].
//!
//! Unsafe inventory: [`init`] (fork, capset, seccomp, ioctls in the container's init), `shim::daemon` (fork,
//! dup2 when detaching, malloc_trim after requests), `protocol::adopt` (owning fds received over SCM_RIGHTS),
//! [`pins`] (none: nix wrappers only). Everything else is safe code.

pub mod client;
pub mod cri_log;
pub mod init;
pub mod lower;
pub mod pins;
pub mod plan;
pub mod plugin;
pub mod protocol;
pub mod sealed_exe;
pub mod seccomp;
pub mod shim;

pub use plugin::{LinuxIsolation, register};
/// berthd calls it too, after a pull: the only `unsafe` it needs lives here, with the shim's.
pub use shim::trim_heap;
