//! v2 `pids`: the same files as v1's.

pub use crate::v1::pids::{apply, current};
