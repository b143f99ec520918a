//! Minimal SPDY/3.1, as Kubernetes' streaming protocols use it (moby/spdystream on the Go side): framing with
//! zlib-compressed header blocks ([`frame`], [`compression`]) and stream multiplexing over one connection
//! ([`session`]). Server push, priorities, flow control and credentials are not implemented, as in Go.

pub mod compression;
pub mod frame;
pub mod session;

#[cfg(test)]
mod tests;

pub use frame::{Frame, FrameDecoder, FrameEncoder, FrameError, Headers};
pub use session::{
    IncomingStream, Role, Session, SessionConfig, SessionError, SessionHandle, StreamReader, StreamWriter,
};
