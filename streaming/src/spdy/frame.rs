//! SPDY/3.1 frames: the eight control frames and DATA, their wire format, and a decoder that turns a byte
//! buffer into frames without ever trusting a length it has not checked.
//!
//! Wire format (all integers big-endian):
//! - control frame: `1 | version:15 | type:16 | flags:8 | length:24 | payload`
//! - data frame:    `0 | stream id:31 | flags:8 | length:24 | payload`

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::compression::{HeaderCompressor, HeaderDecompressor, HeaderLimits};

pub const VERSION: u16 = 3;
/// Every frame starts with 8 bytes.
pub const FRAME_HEADER_LEN: usize = 8;
/// Largest payload a 24-bit length can describe.
pub const MAX_PAYLOAD: usize = (1 << 24) - 1;

pub const FLAG_FIN: u8 = 0x01;
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

/// RST_STREAM status codes.
pub mod rst {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INVALID_STREAM: u32 = 2;
    pub const REFUSED_STREAM: u32 = 3;
    pub const CANCEL: u32 = 5;
    pub const INTERNAL_ERROR: u32 = 6;
}

/// GOAWAY status codes.
pub mod goaway {
    pub const OK: u32 = 0;
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INTERNAL_ERROR: u32 = 2;
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("unsupported SPDY version {0}")]
    UnsupportedVersion(u16),
    #[error("control frame type {kind} has invalid length {len}")]
    BadLength { kind: u16, len: usize },
    #[error("control frame payload of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("stream id 0 is not allowed here")]
    ZeroStreamId,
    #[error("RST_STREAM with status 0")]
    ZeroStatus,
    #[error("PING id 0")]
    ZeroPingId,
    #[error("invalid flags {flags:#x} on control frame type {kind}")]
    BadFlags { kind: u16, flags: u8 },
    #[error("header block compression error")]
    Compression,
    #[error("header block too large")]
    HeaderBlockTooLarge,
    #[error("header block has {0} headers, too many")]
    TooManyHeaders(u32),
    #[error("header block truncated")]
    TruncatedHeaderBlock,
    #[error("header block has trailing bytes")]
    TrailingHeaderBytes,
}

/// Name/value pairs of a SYN_STREAM, SYN_REPLY or HEADERS frame. Names are lowercase on the wire;
/// several values of one name travel NUL-separated in one value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    pub fn new() -> Self {
        Headers(Vec::new())
    }

    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }

    /// The first value of `name` (compared case-insensitively, like Go's `http.Header.Get`).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.split('\0').next().unwrap_or(""))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<N: Into<String>, V: Into<String>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        Headers(iter.into_iter().map(|(n, v)| (n.into(), v.into())).collect())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    pub flags: u8,
    pub id: u32,
    pub value: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_to: u32,
        priority: u8,
        slot: u8,
        fin: bool,
        unidirectional: bool,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        clear: bool,
        entries: Vec<Setting>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        fin: bool,
        data: Bytes,
    },
}

/// Writes frames; owns the compression context of the outgoing direction.
#[derive(Default)]
pub struct FrameEncoder {
    headers: HeaderCompressor,
}

impl FrameEncoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the wire form of `frame` to `out`.
    pub fn encode(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), FrameError> {
        let mut payload = Vec::new();
        let (kind, flags) = match frame {
            Frame::Data { stream_id, fin, data } => {
                if *stream_id == 0 {
                    return Err(FrameError::ZeroStreamId);
                }
                check_len(data.len())?;
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32((u32::from(flag(*fin, FLAG_FIN)) << 24) | data.len() as u32);
                out.put_slice(data);
                return Ok(());
            }
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                slot,
                fin,
                unidirectional,
                headers,
            } => {
                nonzero(*stream_id)?;
                payload.put_u32(stream_id & 0x7fff_ffff);
                payload.put_u32(associated_to & 0x7fff_ffff);
                payload.put_u8((priority & 0x07) << 5);
                payload.put_u8(*slot);
                self.headers.compress(headers, &mut payload)?;
                (
                    TYPE_SYN_STREAM,
                    flag(*fin, FLAG_FIN) | flag(*unidirectional, FLAG_UNIDIRECTIONAL),
                )
            }
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            } => {
                nonzero(*stream_id)?;
                payload.put_u32(stream_id & 0x7fff_ffff);
                self.headers.compress(headers, &mut payload)?;
                (TYPE_SYN_REPLY, flag(*fin, FLAG_FIN))
            }
            Frame::Headers {
                stream_id,
                fin,
                headers,
            } => {
                nonzero(*stream_id)?;
                payload.put_u32(stream_id & 0x7fff_ffff);
                self.headers.compress(headers, &mut payload)?;
                (TYPE_HEADERS, flag(*fin, FLAG_FIN))
            }
            Frame::RstStream { stream_id, status } => {
                nonzero(*stream_id)?;
                if *status == 0 {
                    return Err(FrameError::ZeroStatus);
                }
                payload.put_u32(stream_id & 0x7fff_ffff);
                payload.put_u32(*status);
                (TYPE_RST_STREAM, 0)
            }
            Frame::Settings { clear, entries } => {
                payload.put_u32(entries.len() as u32);
                for s in entries {
                    payload.put_u32((u32::from(s.flags) << 24) | (s.id & 0x00ff_ffff));
                    payload.put_u32(s.value);
                }
                (TYPE_SETTINGS, flag(*clear, 0x01))
            }
            Frame::Ping { id } => {
                if *id == 0 {
                    return Err(FrameError::ZeroPingId);
                }
                payload.put_u32(*id);
                (TYPE_PING, 0)
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                payload.put_u32(last_good_stream_id & 0x7fff_ffff);
                payload.put_u32(*status);
                (TYPE_GOAWAY, 0)
            }
            Frame::WindowUpdate { stream_id, delta } => {
                payload.put_u32(stream_id & 0x7fff_ffff);
                payload.put_u32(delta & 0x7fff_ffff);
                (TYPE_WINDOW_UPDATE, 0)
            }
        };
        check_len(payload.len())?;
        out.put_u32(0x8000_0000 | (u32::from(VERSION) << 16) | u32::from(kind));
        out.put_u32((u32::from(flags) << 24) | payload.len() as u32);
        out.put_slice(&payload);
        Ok(())
    }
}

/// Reads frames; owns the decompression context of the incoming direction.
pub struct FrameDecoder {
    headers: HeaderDecompressor,
    max_control_payload: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::with_limits(1 << 20, HeaderLimits::default())
    }

    pub fn with_limits(max_control_payload: usize, headers: HeaderLimits) -> Self {
        FrameDecoder {
            headers: HeaderDecompressor::new(headers),
            max_control_payload,
        }
    }

    /// Bytes needed before [`FrameDecoder::decode`] can make progress on `buf`: 0 when a whole frame is there.
    pub fn missing(&self, buf: &[u8]) -> usize {
        if buf.len() < FRAME_HEADER_LEN {
            return FRAME_HEADER_LEN - buf.len();
        }
        let total = FRAME_HEADER_LEN + payload_len(buf);
        total.saturating_sub(buf.len())
    }

    /// Takes one frame off the front of `buf`; `Ok(None)` when more bytes are needed. Unknown control frame
    /// types are skipped, as the protocol asks. After an error the connection must be dropped: the header
    /// decompression context may be out of step with the peer's.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        loop {
            if buf.len() < FRAME_HEADER_LEN {
                return Ok(None);
            }
            let len = payload_len(buf);
            let control = buf[0] & 0x80 != 0;
            if control && len > self.max_control_payload {
                return Err(FrameError::TooLarge(len));
            }
            if buf.len() < FRAME_HEADER_LEN + len {
                return Ok(None);
            }
            let mut frame = buf.split_to(FRAME_HEADER_LEN + len).freeze();
            let first = frame.get_u32();
            let second = frame.get_u32();
            let flags = (second >> 24) as u8;
            if !control {
                let stream_id = first & 0x7fff_ffff;
                if stream_id == 0 {
                    return Err(FrameError::ZeroStreamId);
                }
                return Ok(Some(Frame::Data {
                    stream_id,
                    fin: flags & FLAG_FIN != 0,
                    data: frame,
                }));
            }
            let version = ((first >> 16) & 0x7fff) as u16;
            if version != VERSION {
                return Err(FrameError::UnsupportedVersion(version));
            }
            let kind = (first & 0xffff) as u16;
            if let Some(parsed) = self.control(kind, flags, frame)? {
                return Ok(Some(parsed));
            }
        }
    }

    fn control(&mut self, kind: u16, flags: u8, mut p: Bytes) -> Result<Option<Frame>, FrameError> {
        let len = p.len();
        let bad_len = || FrameError::BadLength { kind, len };
        let frame = match kind {
            TYPE_SYN_STREAM => {
                if len < 10 {
                    return Err(bad_len());
                }
                let stream_id = p.get_u32() & 0x7fff_ffff;
                let associated_to = p.get_u32() & 0x7fff_ffff;
                let priority = p.get_u8() >> 5;
                let slot = p.get_u8();
                // Decompress even when the frame is invalid otherwise, to stay in step with the peer.
                let headers = self.headers.decompress(&p)?;
                nonzero(stream_id)?;
                Frame::SynStream {
                    stream_id,
                    associated_to,
                    priority,
                    slot,
                    fin: flags & FLAG_FIN != 0,
                    unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
                    headers,
                }
            }
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                if len < 4 {
                    return Err(bad_len());
                }
                let stream_id = p.get_u32() & 0x7fff_ffff;
                let headers = self.headers.decompress(&p)?;
                nonzero(stream_id)?;
                let fin = flags & FLAG_FIN != 0;
                if kind == TYPE_SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        fin,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        fin,
                        headers,
                    }
                }
            }
            TYPE_RST_STREAM => {
                if len != 8 {
                    return Err(bad_len());
                }
                let stream_id = p.get_u32() & 0x7fff_ffff;
                let status = p.get_u32();
                nonzero(stream_id)?;
                if status == 0 {
                    return Err(FrameError::ZeroStatus);
                }
                Frame::RstStream { stream_id, status }
            }
            TYPE_SETTINGS => {
                if len < 4 {
                    return Err(bad_len());
                }
                let count = p.get_u32() as usize;
                if count.checked_mul(8) != Some(len - 4) {
                    return Err(bad_len());
                }
                let entries = (0..count)
                    .map(|_| {
                        let flag_id = p.get_u32();
                        Setting {
                            flags: (flag_id >> 24) as u8,
                            id: flag_id & 0x00ff_ffff,
                            value: p.get_u32(),
                        }
                    })
                    .collect();
                Frame::Settings {
                    clear: flags & 0x01 != 0,
                    entries,
                }
            }
            TYPE_PING => {
                if len != 4 {
                    return Err(bad_len());
                }
                if flags != 0 {
                    return Err(FrameError::BadFlags { kind, flags });
                }
                let id = p.get_u32();
                if id == 0 {
                    return Err(FrameError::ZeroPingId);
                }
                Frame::Ping { id }
            }
            TYPE_GOAWAY => {
                if len != 8 {
                    return Err(bad_len());
                }
                if flags != 0 {
                    return Err(FrameError::BadFlags { kind, flags });
                }
                Frame::GoAway {
                    last_good_stream_id: p.get_u32() & 0x7fff_ffff,
                    status: p.get_u32(),
                }
            }
            TYPE_WINDOW_UPDATE => {
                if len != 8 {
                    return Err(bad_len());
                }
                if flags != 0 {
                    return Err(FrameError::BadFlags { kind, flags });
                }
                Frame::WindowUpdate {
                    stream_id: p.get_u32() & 0x7fff_ffff,
                    delta: p.get_u32() & 0x7fff_ffff,
                }
            }
            // Unknown types (and CREDENTIAL, type 10) are ignored.
            _ => return Ok(None),
        };
        Ok(Some(frame))
    }
}

fn payload_len(buf: &[u8]) -> usize {
    (usize::from(buf[5]) << 16) | (usize::from(buf[6]) << 8) | usize::from(buf[7])
}

fn flag(on: bool, bit: u8) -> u8 {
    if on { bit } else { 0 }
}

fn nonzero(stream_id: u32) -> Result<(), FrameError> {
    if stream_id == 0 {
        Err(FrameError::ZeroStreamId)
    } else {
        Ok(())
    }
}

fn check_len(len: usize) -> Result<(), FrameError> {
    if len > MAX_PAYLOAD {
        Err(FrameError::TooLarge(len))
    } else {
        Ok(())
    }
}
