//! The image store.
