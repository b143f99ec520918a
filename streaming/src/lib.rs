//! The streaming server.
