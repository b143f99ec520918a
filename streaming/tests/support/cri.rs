//! Just enough of a CRI server for crictl's streaming commands: Version, Exec, Attach and PortForward
//! over gRPC (HTTP/2 cleartext on a unix socket), with hand-rolled protobuf.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use berth_streaming::{AttachRequest, ExecRequest, PortForwardRequest, RequestError, StreamingServer};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::UnixListener;

type Body = StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// Serves the CRI subset on `socket` until the returned task is aborted.
pub fn serve(socket: &Path, server: Arc<StreamingServer>) -> tokio::task::JoinHandle<()> {
    let listener = UnixListener::bind(socket).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let server = server.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let server = server.clone();
                    async move { Ok::<_, Infallible>(handle(&server, req).await) }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

async fn handle(server: &StreamingServer, req: Request<Incoming>) -> Response<Body> {
    let method = req.uri().path().rsplit('/').next().unwrap_or("").to_owned();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let message = body.get(5..).unwrap_or(&[]);
    let fields = decode(message);
    let url = match method.as_str() {
        "Version" => {
            let mut out = Vec::new();
            for (n, v) in [(1, "0.1.0"), (2, "berth-test"), (3, "0.1.0"), (4, "v1")] {
                put_string(&mut out, n, v);
            }
            return grpc_ok(out);
        }
        // crictl validates the image service with it; an empty answer will do.
        "ImageFsInfo" => return grpc_ok(Vec::new()),
        "Exec" => server.exec_url(ExecRequest {
            container_id: string(&fields, 1),
            cmd: strings(&fields, 2),
            tty: flag(&fields, 3),
            stdin: flag(&fields, 4),
            stdout: flag(&fields, 5),
            stderr: flag(&fields, 6),
        }),
        "Attach" => server.attach_url(AttachRequest {
            container_id: string(&fields, 1),
            stdin: flag(&fields, 2),
            tty: flag(&fields, 3),
            stdout: flag(&fields, 4),
            stderr: flag(&fields, 5),
            stdin_once: false,
        }),
        "PortForward" => server.port_forward_url(PortForwardRequest {
            pod_id: string(&fields, 1),
            ports: ints(&fields, 2),
        }),
        _ => return grpc_error(12, &format!("{method} is not implemented by the test CRI server")),
    };
    match url {
        Ok(url) => {
            let mut out = Vec::new();
            put_string(&mut out, 1, &url);
            grpc_ok(out)
        }
        Err(e @ RequestError::TooManyPending(_)) => grpc_error(8, &e.to_string()),
        Err(e) => grpc_error(3, &e.to_string()),
    }
}

fn response(frames: Vec<Frame<Bytes>>) -> Response<Body> {
    let body = StreamBody::new(futures_util::stream::iter(
        frames.into_iter().map(Ok).collect::<Vec<_>>(),
    ));
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    response
}

fn trailers(code: u32, message: &str) -> Frame<Bytes> {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from_str(&code.to_string()).unwrap());
    if !message.is_empty() {
        t.insert(
            "grpc-message",
            HeaderValue::from_str(&message.replace(['\n', '\r'], " ")).unwrap(),
        );
    }
    Frame::trailers(t)
}

fn grpc_ok(message: Vec<u8>) -> Response<Body> {
    let mut data = vec![0u8];
    data.extend_from_slice(&(message.len() as u32).to_be_bytes());
    data.extend(message);
    response(vec![Frame::data(Bytes::from(data)), trailers(0, "")])
}

fn grpc_error(code: u32, message: &str) -> Response<Body> {
    response(vec![trailers(code, message)])
}

enum Field {
    Varint(u64),
    Bytes(Vec<u8>),
}

fn varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn decode(mut b: &[u8]) -> Vec<(u64, Field)> {
    let mut out = Vec::new();
    while let Some(key) = varint(&mut b) {
        let field = key >> 3;
        match key & 7 {
            0 => out.push((field, Field::Varint(varint(&mut b).unwrap()))),
            2 => {
                let len = varint(&mut b).unwrap() as usize;
                out.push((field, Field::Bytes(b[..len].to_vec())));
                b = &b[len..];
            }
            1 => b = &b[8..],
            5 => b = &b[4..],
            other => panic!("wire type {other}"),
        }
    }
    out
}

fn string(fields: &[(u64, Field)], n: u64) -> String {
    strings(fields, n).pop().unwrap_or_default()
}

fn strings(fields: &[(u64, Field)], n: u64) -> Vec<String> {
    fields
        .iter()
        .filter_map(|(f, v)| match v {
            Field::Bytes(b) if *f == n => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        })
        .collect()
}

fn flag(fields: &[(u64, Field)], n: u64) -> bool {
    fields
        .iter()
        .any(|(f, v)| *f == n && matches!(v, Field::Varint(x) if *x != 0))
}

fn ints(fields: &[(u64, Field)], n: u64) -> Vec<i32> {
    let mut out = Vec::new();
    for (f, v) in fields {
        if *f != n {
            continue;
        }
        match v {
            Field::Varint(x) => out.push(*x as i32),
            Field::Bytes(packed) => {
                let mut b = &packed[..];
                while let Some(x) = varint(&mut b) {
                    out.push(x as i32);
                }
            }
        }
    }
    out
}

fn put_string(out: &mut Vec<u8>, field: u8, value: &str) {
    out.push(field << 3 | 2);
    let mut len = value.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(value.as_bytes());
}
