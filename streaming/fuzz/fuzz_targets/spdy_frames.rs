//! Arbitrary bytes into the SPDY frame decoder (header decompression included): no panic, bounded memory, and
//! whatever decodes re-encodes to the same frame.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use frame::{FrameDecoder, FrameEncoder};

// berth-streaming's framing modules, compiled here from their source (they refer to each other as `super::`).
#[allow(dead_code)]
#[path = "../../src/spdy/compression.rs"]
mod compression;
#[allow(dead_code)]
#[path = "../../src/spdy/frame.rs"]
mod frame;

fuzz_target!(|data: &[u8]| {
    let mut decoder = FrameDecoder::with_limits(1 << 16, Default::default());
    let mut encoder = FrameEncoder::new();
    let mut check = FrameDecoder::new();
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = decoder.decode(&mut buf) {
        let mut wire = BytesMut::new();
        encoder.encode(&frame, &mut wire).expect("a decoded frame re-encodes");
        let again = check.decode(&mut wire).expect("re-encoded frame decodes");
        assert_eq!(again.as_ref(), Some(&frame));
        assert!(wire.is_empty());
    }
});
