//! Framing against frames captured from Go's spdystream, round trips, malformed input, and the session.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::{Setting, rst};
use super::*;

fn decode_all(bytes: &[u8]) -> Vec<Frame> {
    let mut decoder = FrameDecoder::new();
    let mut buf = BytesMut::from(bytes);
    let mut frames = Vec::new();
    while let Some(frame) = decoder.decode(&mut buf).expect("valid frames") {
        frames.push(frame);
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    frames
}

fn headers(pairs: &[(&str, &str)]) -> Headers {
    pairs.iter().map(|(n, v)| (*n, *v)).collect()
}

fn syn(stream_id: u32, priority: u8, h: Headers) -> Frame {
    Frame::SynStream {
        stream_id,
        associated_to: 0,
        priority,
        slot: 0,
        fin: false,
        unidirectional: false,
        headers: h,
    }
}

fn data(stream_id: u32, fin: bool, payload: &[u8]) -> Frame {
    Frame::Data {
        stream_id,
        fin,
        data: Bytes::copy_from_slice(payload),
    }
}

fn client_exec_frames() -> Vec<Frame> {
    vec![
        syn(1, 0, headers(&[("streamtype", "error")])),
        syn(3, 0, headers(&[("streamtype", "stdin")])),
        syn(5, 0, headers(&[("streamtype", "stdout")])),
        syn(7, 3, headers(&[("streamtype", "resize")])),
        data(3, false, b"echo hello\n"),
        data(7, false, br#"{"Width":80,"Height":24}"#),
        data(3, true, b""),
        Frame::Ping { id: 1 },
        Frame::RstStream {
            stream_id: 5,
            status: rst::CANCEL,
        },
        Frame::Settings {
            clear: false,
            entries: vec![
                Setting {
                    flags: 0,
                    id: 7,
                    value: 65536,
                },
                Setting {
                    flags: 1,
                    id: 4,
                    value: 100,
                },
            ],
        },
        Frame::WindowUpdate {
            stream_id: 3,
            delta: 4096,
        },
        Frame::Headers {
            stream_id: 1,
            fin: false,
            headers: headers(&[("x-multi", "a\0b")]),
        },
        Frame::GoAway {
            last_good_stream_id: 0,
            status: 0,
        },
    ]
}

#[test]
fn decodes_client_frames_captured_from_go() {
    let frames = decode_all(include_bytes!("testdata/client_exec.bin"));
    assert_eq!(frames, client_exec_frames());
    // Go canonicalizes "streamType" to "streamtype" on the wire; lookups ignore case.
    let Frame::SynStream { headers, .. } = &frames[0] else {
        panic!("not a SYN_STREAM")
    };
    assert_eq!(headers.get("streamType"), Some("error"));
    let Frame::Headers { headers, .. } = &frames[11] else {
        panic!("not HEADERS")
    };
    assert_eq!(headers.get("X-Multi"), Some("a"));
}

#[test]
fn decodes_server_frames_captured_from_go() {
    let frames = decode_all(include_bytes!("testdata/server_replies.bin"));
    let reply = |stream_id, fin| Frame::SynReply {
        stream_id,
        fin,
        headers: Headers::new(),
    };
    assert_eq!(
        frames,
        vec![
            reply(1, false),
            reply(3, false),
            reply(5, true),
            data(5, true, b"hello\n"),
            data(1, false, br#"{"metadata":{},"status":"Success"}"#),
            Frame::Ping { id: 2 },
        ]
    );
}

#[test]
fn decodes_port_forward_frames_captured_from_go() {
    let frames = decode_all(include_bytes!("testdata/client_portforward.bin"));
    assert_eq!(frames.len(), 6);
    let expect = [(1, "error", "0"), (3, "data", "0"), (5, "error", "1"), (7, "data", "1")];
    let syns: Vec<_> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::SynStream { stream_id, headers, .. } => Some((*stream_id, headers.clone())),
            _ => None,
        })
        .collect();
    for ((id, kind, request), (got_id, h)) in expect.iter().zip(&syns) {
        assert_eq!(id, got_id);
        assert_eq!(h.get("streamtype"), Some(*kind));
        assert_eq!(h.get("port"), Some("8080"));
        assert_eq!(h.get("requestid"), Some(*request));
    }
    assert_eq!(frames[1], data(1, true, b""));
    assert_eq!(frames[5], data(3, false, b"GET / HTTP/1.0\r\n\r\n"));
}

#[test]
fn decodes_byte_by_byte() {
    let bytes = include_bytes!("testdata/client_exec.bin");
    let mut decoder = FrameDecoder::new();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for &b in bytes.iter() {
        buf.put_u8(b);
        while let Some(frame) = decoder.decode(&mut buf).unwrap() {
            frames.push(frame);
        }
    }
    assert_eq!(frames, client_exec_frames());
}

#[test]
fn every_frame_round_trips() {
    let mut frames = client_exec_frames();
    frames.extend([
        Frame::SynReply {
            stream_id: 9,
            fin: true,
            headers: headers(&[("a", "b"), ("c", "")]),
        },
        Frame::SynStream {
            stream_id: 0x7fff_ffff,
            associated_to: 3,
            priority: 7,
            slot: 9,
            fin: true,
            unidirectional: true,
            headers: Headers::new(),
        },
        Frame::Settings {
            clear: true,
            entries: vec![],
        },
        data(11, false, &vec![0xa5; 70_000]),
    ]);
    let mut encoder = FrameEncoder::new();
    let mut buf = BytesMut::new();
    for frame in &frames {
        encoder.encode(frame, &mut buf).unwrap();
    }
    assert_eq!(decode_all(&buf), frames);
}

#[test]
fn encoder_refuses_invalid_frames() {
    let mut encoder = FrameEncoder::new();
    let mut buf = BytesMut::new();
    assert_eq!(
        encoder.encode(&data(0, false, b"x"), &mut buf),
        Err(FrameError::ZeroStreamId)
    );
    assert_eq!(
        encoder.encode(&Frame::Ping { id: 0 }, &mut buf),
        Err(FrameError::ZeroPingId)
    );
    assert_eq!(
        encoder.encode(
            &Frame::RstStream {
                stream_id: 1,
                status: 0
            },
            &mut buf
        ),
        Err(FrameError::ZeroStatus)
    );
    assert!(buf.is_empty());
}

fn control(kind: u16, flags: u8, payload: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u32(0x8003_0000 | u32::from(kind));
    b.put_u32((u32::from(flags) << 24) | payload.len() as u32);
    b.put_slice(payload);
    b
}

#[test]
fn malformed_frames_are_rejected() {
    let cases: Vec<(BytesMut, FrameError)> = vec![
        (
            {
                let mut b = control(6, 0, &[0, 0, 0, 1]);
                b[1] = 2; // version 2
                b
            },
            FrameError::UnsupportedVersion(2),
        ),
        (control(6, 0, &[0, 0, 0, 0]), FrameError::ZeroPingId),
        (control(6, 1, &[0, 0, 0, 1]), FrameError::BadFlags { kind: 6, flags: 1 }),
        (control(6, 0, &[0, 0, 1]), FrameError::BadLength { kind: 6, len: 3 }),
        (control(3, 0, &[0, 0, 0, 1, 0, 0, 0, 0]), FrameError::ZeroStatus),
        (control(3, 0, &[0, 0, 0, 0, 0, 0, 0, 1]), FrameError::ZeroStreamId),
        (control(7, 0, &[0, 0, 0, 1]), FrameError::BadLength { kind: 7, len: 4 }),
        (control(9, 0, &[0; 9]), FrameError::BadLength { kind: 9, len: 9 }),
        (
            control(4, 0, &[0, 0, 0, 2, 0, 0, 0, 0]),
            FrameError::BadLength { kind: 4, len: 8 },
        ),
        (
            control(4, 0, &[0xff, 0xff, 0xff, 0xff]),
            FrameError::BadLength { kind: 4, len: 4 },
        ),
        (control(1, 0, &[0, 0, 0, 1]), FrameError::BadLength { kind: 1, len: 4 }),
        (
            control(1, 0, &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3]),
            FrameError::Compression,
        ),
        (control(2, 0, &[0, 0, 0, 1]), FrameError::TruncatedHeaderBlock),
        (
            {
                let mut b = BytesMut::new();
                b.put_u32(0);
                b.put_u32(1);
                b.put_u8(0);
                b
            },
            FrameError::ZeroStreamId,
        ),
    ];
    for (mut bytes, want) in cases {
        let got = FrameDecoder::new().decode(&mut bytes);
        assert_eq!(got, Err(want));
    }
}

#[test]
fn oversized_control_frame_is_rejected_before_buffering() {
    let mut b = BytesMut::new();
    b.put_u32(0x8003_0001);
    b.put_u32(0x00ff_ffff);
    let mut decoder = FrameDecoder::with_limits(1024, Default::default());
    assert_eq!(decoder.decode(&mut b), Err(FrameError::TooLarge(0xff_ffff)));
}

#[test]
fn unknown_control_frames_are_skipped() {
    let mut b = control(10, 0, &[1, 2, 3]);
    b.extend_from_slice(&control(6, 0, &[0, 0, 0, 5]));
    assert_eq!(FrameDecoder::new().decode(&mut b), Ok(Some(Frame::Ping { id: 5 })));
}

#[test]
fn header_block_shares_one_zlib_stream() {
    // The second SYN_STREAM of the capture depends on the first's compression state.
    let bytes = include_bytes!("testdata/client_exec.bin");
    let first_len = 8 + (usize::from(bytes[5]) << 16 | usize::from(bytes[6]) << 8 | usize::from(bytes[7]));
    let mut fresh = FrameDecoder::new();
    let mut buf = BytesMut::from(&bytes[first_len..]);
    assert!(fresh.decode(&mut buf).is_err());
}

/// xorshift64*: deterministic pseudo-random bytes without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Random bytes and mutated captures never panic the decoder (the cargo-fuzz target does this at scale).
#[test]
fn random_and_mutated_input_never_panics() {
    let seeds: [&[u8]; 3] = [
        include_bytes!("testdata/client_exec.bin"),
        include_bytes!("testdata/server_replies.bin"),
        include_bytes!("testdata/client_portforward.bin"),
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // One compression context each way for the whole run: they stay in step frame by frame.
    let mut encoder = FrameEncoder::new();
    let mut check = FrameDecoder::new();
    for round in 0..3000 {
        let mut input: Vec<u8> = if round % 3 == 0 {
            (0..rng.below(300)).map(|_| rng.next() as u8).collect()
        } else {
            seeds[round % seeds.len()].to_vec()
        };
        for _ in 0..=rng.below(6) {
            if input.is_empty() {
                break;
            }
            let at = rng.below(input.len());
            match rng.below(3) {
                0 => input[at] = rng.next() as u8,
                1 => input.truncate(at),
                _ => input.insert(at, rng.next() as u8),
            }
        }
        let mut decoder = FrameDecoder::with_limits(1 << 16, Default::default());
        let mut buf = BytesMut::from(&input[..]);
        let mut n = 0;
        // Whatever decodes re-encodes to the same frame (the fuzz target's property too).
        while let Ok(Some(frame)) = decoder.decode(&mut buf) {
            let mut wire = BytesMut::new();
            encoder.encode(&frame, &mut wire).unwrap();
            assert_eq!(check.decode(&mut wire).unwrap(), Some(frame));
            n += 1;
            assert!(n < 10_000);
        }
    }
}

async fn pair() -> (Session, Session) {
    let (a, b) = tokio::io::duplex(4096);
    let config = SessionConfig {
        linger: Duration::from_millis(200),
        ..Default::default()
    };
    (
        Session::new(a, Role::Client, config),
        Session::new(b, Role::Server, config),
    )
}

#[tokio::test]
async fn session_streams_data_both_ways_and_half_closes() {
    let (client, mut server) = pair().await;
    let server_side = tokio::spawn(async move {
        let incoming = server.accept().await.unwrap();
        assert_eq!(incoming.headers().get("streamType"), Some("stdin"));
        assert_eq!(incoming.id(), 1);
        let (mut rd, mut wr) = incoming.accept().await.unwrap();
        let mut got = Vec::new();
        while let Some(chunk) = rd.read().await {
            got.extend_from_slice(&chunk);
        }
        wr.write(&got).await.unwrap();
        wr.close().await.unwrap();
        server.close().await;
        got.len()
    });
    let (mut rd, mut wr) = client.open(headers(&[("streamType", "stdin")])).await.unwrap();
    let big = vec![7u8; 200_000];
    wr.write(&big).await.unwrap();
    wr.close().await.unwrap();
    assert!(wr.write(b"late").await.is_err());
    let mut echoed = Vec::new();
    while let Some(chunk) = rd.read().await {
        echoed.extend_from_slice(&chunk);
    }
    assert_eq!(echoed, big);
    assert_eq!(server_side.await.unwrap(), big.len());
    tokio::time::timeout(Duration::from_secs(2), client.closed())
        .await
        .expect("GOAWAY ends the client's reader");
}

#[tokio::test]
async fn rejected_stream_fails_open() {
    let (client, mut server) = pair().await;
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            incoming.reject().await;
        }
    });
    match client.open(Headers::new()).await {
        Err(SessionError::Reset { stream_id: 1, status }) => assert_eq!(status, rst::CANCEL),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("stream was accepted"),
    }
}

#[tokio::test]
async fn reset_by_peer_ends_reads_and_fails_writes() {
    let (client, mut server) = pair().await;
    let server_side = tokio::spawn(async move {
        let (_rd, mut wr) = server.accept().await.unwrap().accept().await.unwrap();
        wr.reset(rst::CANCEL).await;
        server
    });
    let (mut rd, mut wr) = client.open(Headers::new()).await.unwrap();
    assert!(rd.read().await.is_none());
    let _server = server_side.await.unwrap();
    assert!(wr.write(b"x").await.is_err());
}

#[tokio::test]
async fn server_answers_pings_and_refuses_streams_when_not_accepting() {
    let (a, b) = tokio::io::duplex(4096);
    let mut server = Session::new(b, Role::Server, SessionConfig::default());
    server.stop_accepting();
    let mut encoder = FrameEncoder::new();
    let mut out = BytesMut::new();
    encoder.encode(&Frame::Ping { id: 1 }, &mut out).unwrap();
    encoder.encode(&syn(1, 0, Headers::new()), &mut out).unwrap();
    let (mut rd, mut wr) = tokio::io::split(a);
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    wr.write_all(&out).await.unwrap();
    let mut decoder = FrameDecoder::new();
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    while got.len() < 2 {
        if let Some(frame) = decoder.decode(&mut buf).unwrap() {
            got.push(frame);
            continue;
        }
        assert!(rd.read_buf(&mut buf).await.unwrap() > 0);
    }
    assert_eq!(
        got,
        vec![
            Frame::Ping { id: 1 },
            Frame::RstStream {
                stream_id: 1,
                status: rst::REFUSED_STREAM
            }
        ]
    );
}

#[tokio::test]
async fn garbage_closes_the_session() {
    let (a, b) = tokio::io::duplex(4096);
    let server = Session::new(b, Role::Server, SessionConfig::default());
    use tokio::io::AsyncWriteExt;
    let (_rd, mut wr) = tokio::io::split(a);
    wr.write_all(&[0x80, 0x02, 0, 1, 0, 0, 0, 0]).await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), server.closed())
        .await
        .expect("closed on protocol error");
}

#[tokio::test]
async fn idle_session_is_closed() {
    let (a, b) = tokio::io::duplex(4096);
    let config = SessionConfig {
        idle_timeout: Some(Duration::from_millis(100)),
        ..Default::default()
    };
    let server = Session::new(b, Role::Server, config);
    tokio::time::timeout(Duration::from_secs(2), server.closed())
        .await
        .expect("idle timeout");
    drop(a);
}
