//! SPDY/3 header blocks: the name/value wire format and its zlib compression.
//!
//! Each direction of a connection has one zlib stream, primed with the SPDY/3 dictionary, that runs across
//! all the header blocks sent in that direction; every block ends with a sync flush. One lost or corrupt
//! block therefore breaks the connection, never just a stream.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::frame::{FrameError, Headers};

/// The zlib dictionary of SPDY/3 (draft 3, section 2.6.10.1), 1423 bytes.
pub const DICTIONARY: &[u8] = include_bytes!("dictionary.bin");

/// Limits on what a peer may make us allocate for one header block.
#[derive(Clone, Copy, Debug)]
pub struct HeaderLimits {
    /// Largest decompressed header block.
    pub max_block: usize,
    /// Most name/value pairs in one block.
    pub max_count: u32,
}

impl Default for HeaderLimits {
    fn default() -> Self {
        HeaderLimits {
            max_block: 256 * 1024,
            max_count: 1000,
        }
    }
}

/// Compresses the header blocks of one direction of a connection.
pub struct HeaderCompressor {
    zlib: Compress,
}

impl Default for HeaderCompressor {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderCompressor {
    pub fn new() -> Self {
        // Go's framer uses BestCompression; any level decodes the same.
        let mut zlib = Compress::new(Compression::best(), true);
        zlib.set_dictionary(DICTIONARY)
            .expect("setting a dictionary on a fresh deflate stream cannot fail");
        HeaderCompressor { zlib }
    }

    /// Appends the compressed block for `headers` to `out`.
    pub fn compress(&mut self, headers: &Headers, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let raw = encode_block(headers)?;
        let start_in = self.zlib.total_in();
        loop {
            let consumed = (self.zlib.total_in() - start_in) as usize;
            out.reserve(256.max(raw.len() - consumed));
            self.zlib
                .compress_vec(&raw[consumed..], out, FlushCompress::Sync)
                .map_err(|_| FrameError::Compression)?;
            let consumed = (self.zlib.total_in() - start_in) as usize;
            // Done when all input is in and the flush did not run out of room.
            if consumed == raw.len() && out.len() < out.capacity() {
                return Ok(());
            }
        }
    }
}

/// Decompresses the header blocks of one direction of a connection.
pub struct HeaderDecompressor {
    zlib: Decompress,
    limits: HeaderLimits,
}

impl HeaderDecompressor {
    pub fn new(limits: HeaderLimits) -> Self {
        HeaderDecompressor {
            zlib: Decompress::new(true),
            limits,
        }
    }

    /// Decompresses and parses one compressed header block (all of it must be consumed).
    pub fn decompress(&mut self, block: &[u8]) -> Result<Headers, FrameError> {
        let mut out = Vec::with_capacity(256);
        let start_in = self.zlib.total_in();
        loop {
            let consumed = (self.zlib.total_in() - start_in) as usize;
            if out.len() >= self.limits.max_block {
                return Err(FrameError::HeaderBlockTooLarge);
            }
            let room = (self.limits.max_block - out.len()).min(16 * 1024);
            out.reserve(room);
            let before_out = out.len();
            let status = match self
                .zlib
                .decompress_vec(&block[consumed..], &mut out, FlushDecompress::Sync)
            {
                Ok(status) => status,
                Err(e) if e.needs_dictionary().is_some() => {
                    self.zlib
                        .set_dictionary(DICTIONARY)
                        .map_err(|_| FrameError::Compression)?;
                    continue;
                }
                Err(_) => return Err(FrameError::Compression),
            };
            let consumed_now = (self.zlib.total_in() - start_in) as usize;
            let produced = out.len() - before_out;
            match status {
                // The zlib stream never ends in SPDY; an end marker means a broken peer.
                Status::StreamEnd => return Err(FrameError::Compression),
                Status::Ok | Status::BufError => {
                    if consumed_now == block.len() && out.len() < out.capacity() {
                        break;
                    }
                    if consumed_now == consumed && produced == 0 {
                        // No progress with input left: truncated or corrupt block.
                        return Err(FrameError::Compression);
                    }
                }
            }
        }
        decode_block(&out, self.limits)
    }
}

fn encode_block(headers: &Headers) -> Result<Vec<u8>, FrameError> {
    let mut raw = Vec::with_capacity(64);
    let count = u32::try_from(headers.len()).map_err(|_| FrameError::HeaderBlockTooLarge)?;
    raw.extend_from_slice(&count.to_be_bytes());
    for (name, value) in headers.iter() {
        for field in [name.to_ascii_lowercase().as_bytes(), value.as_bytes()] {
            let len = u32::try_from(field.len()).map_err(|_| FrameError::HeaderBlockTooLarge)?;
            raw.extend_from_slice(&len.to_be_bytes());
            raw.extend_from_slice(field);
        }
    }
    Ok(raw)
}

fn decode_block(mut raw: &[u8], limits: HeaderLimits) -> Result<Headers, FrameError> {
    let count = take_u32(&mut raw)?;
    if count > limits.max_count {
        return Err(FrameError::TooManyHeaders(count));
    }
    let mut headers = Headers::new();
    for _ in 0..count {
        let name = take_field(&mut raw)?;
        let value = take_field(&mut raw)?;
        // Names must be lowercase on the wire; be lenient and fold them.
        headers.push(
            String::from_utf8_lossy(name).to_ascii_lowercase(),
            String::from_utf8_lossy(value).into_owned(),
        );
    }
    if !raw.is_empty() {
        return Err(FrameError::TrailingHeaderBytes);
    }
    Ok(headers)
}

fn take_u32(raw: &mut &[u8]) -> Result<u32, FrameError> {
    let (head, rest) = raw.split_first_chunk::<4>().ok_or(FrameError::TruncatedHeaderBlock)?;
    *raw = rest;
    Ok(u32::from_be_bytes(*head))
}

fn take_field<'a>(raw: &mut &'a [u8]) -> Result<&'a [u8], FrameError> {
    let len = take_u32(raw)? as usize;
    if len > raw.len() {
        return Err(FrameError::TruncatedHeaderBlock);
    }
    let (field, rest) = raw.split_at(len);
    *raw = rest;
    Ok(field)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_is_the_spdy3_one() {
        // The dictionary id zlib writes into the stream header (adler32), as seen in frames from Go.
        assert_eq!(DICTIONARY.len(), 1423);
        assert_eq!(adler32(DICTIONARY), 0xe3c6_a7c2);
    }

    fn adler32(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for &byte in data {
            a = (a + u32::from(byte)) % 65521;
            b = (b + a) % 65521;
        }
        (b << 16) | a
    }

    #[test]
    fn blocks_round_trip_across_one_zlib_stream() {
        let mut c = HeaderCompressor::new();
        let mut d = HeaderDecompressor::new(HeaderLimits::default());
        for i in 0..20 {
            let mut h = Headers::new();
            h.push("streamtype", "data");
            h.push("port", format!("{}", 8000 + i));
            h.push("requestid", i.to_string());
            let mut out = Vec::new();
            c.compress(&h, &mut out).unwrap();
            assert_eq!(d.decompress(&out).unwrap(), h);
        }
    }

    #[test]
    fn empty_block_round_trips() {
        let mut out = Vec::new();
        HeaderCompressor::new().compress(&Headers::new(), &mut out).unwrap();
        let h = HeaderDecompressor::new(HeaderLimits::default())
            .decompress(&out)
            .unwrap();
        assert!(h.is_empty());
    }

    #[test]
    fn oversized_block_is_refused() {
        let mut h = Headers::new();
        h.push("x", "a".repeat(10_000));
        let mut out = Vec::new();
        HeaderCompressor::new().compress(&h, &mut out).unwrap();
        let limits = HeaderLimits {
            max_block: 1000,
            max_count: 10,
        };
        assert!(matches!(
            HeaderDecompressor::new(limits).decompress(&out),
            Err(FrameError::HeaderBlockTooLarge)
        ));
    }

    #[test]
    fn garbage_is_an_error() {
        let mut d = HeaderDecompressor::new(HeaderLimits::default());
        assert!(d.decompress(&[0x78, 0xf9, 0xff, 0xff, 0xff, 0xff, 1, 2, 3]).is_err());
        let mut d = HeaderDecompressor::new(HeaderLimits::default());
        assert!(d.decompress(&[]).is_err());
    }
}
