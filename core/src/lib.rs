//! berth-core: the model, the plugin traits and registry, configuration, the metadata store and events.
//!
//! Core makes no raw syscalls: those live in the plugins, so core is testable anywhere. The one `unsafe`
//! module is [`dylib`], the C-ABI boundary of dynamic plugins.

pub mod config;
pub mod dylib;
pub mod events;
pub mod failpoint;
pub mod lifecycle;
pub mod model;
pub mod plugin;
pub mod registry;
pub mod store;

pub use config::Config;
pub use events::{Event, EventBus, EventKind};
pub use lifecycle::{Lifecycle, LifecycleError};
pub use registry::{InitContext, Plugins, Registry};
pub use store::{Store, Table};
