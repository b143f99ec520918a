//! Test fixtures: a tiny registry (distribution API v2, reads only) on 127.0.0.1 that the tests control
//! entirely (it can lie about digests, cut blobs short, demand auth), image builders, and an image store
//! over a chosen snapshotter in a temp dir.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use berth_core::Store;
use berth_core::model::sha256_digest;
use berth_core::plugin::snapshot::{Snapshotter, UnpackLimits};
use berth_images::{ImageStore, ImageStoreConfig};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Debug)]
pub enum Auth {
    None,
    Basic(String, String),
    /// A token service at `/token` that takes Basic credentials and hands out `token`.
    Bearer {
        user: String,
        pass: String,
        token: String,
    },
    /// A token service at `/token` that trades the OAuth2 refresh token `refresh` (POST
    /// `grant_type=refresh_token`) for the access token `token`.
    Identity {
        refresh: String,
        token: String,
    },
}

#[derive(Default)]
struct State {
    /// (repo, tag or digest) → (media type, body)
    manifests: HashMap<(String, String), (String, Vec<u8>)>,
    blobs: HashMap<String, Vec<u8>>,
    /// Blobs served with other bytes than their digest says.
    corrupt: HashMap<String, Vec<u8>>,
    /// Blobs cut off after this many bytes (with the full Content-Length announced).
    truncate: HashMap<String, usize>,
    /// Blobs that send this many bytes and then hang.
    stall: HashMap<String, usize>,
    requests: Vec<String>,
    auth: Option<Auth>,
}

#[derive(Clone)]
pub struct Registry {
    pub addr: String,
    state: Arc<Mutex<State>>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Drop for Registry {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

fn response(status: &str, headers: &[(&str, String)], body: &[u8], announced: Option<usize>) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        announced.unwrap_or(body.len())
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn error(status: &str, code: &str) -> Vec<u8> {
    let body = json!({"errors": [{"code": code, "message": code.to_lowercase()}]}).to_string();
    response(
        status,
        &[("Content-Type", "application/json".into())],
        body.as_bytes(),
        None,
    )
}

impl Registry {
    pub async fn start() -> Registry {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let a = addr.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let st = st.clone();
                let a = a.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    // A body (the token POST's form) follows the head: read it whole.
                    let head_len = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    let length = String::from_utf8_lossy(&buf[..head_len])
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(str::to_string)
                        })
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    while buf.len() < head_len + length {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).into_owned();
                    let (reply, stall) = handle(&st, &a, &head);
                    let _ = sock.write_all(&reply).await;
                    if stall {
                        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                    }
                    let _ = sock.shutdown().await;
                });
            }
        });
        Registry {
            addr,
            state,
            task: Arc::new(task),
        }
    }

    pub fn set_auth(&self, auth: Auth) {
        self.state.lock().unwrap().auth = Some(auth);
    }

    pub fn put_blob(&self, data: &[u8]) -> String {
        let d = sha256_digest(data);
        self.state.lock().unwrap().blobs.insert(d.clone(), data.to_vec());
        d
    }

    pub fn put_manifest(&self, repo: &str, tag: Option<&str>, media_type: &str, body: &[u8]) -> String {
        let d = sha256_digest(body);
        let mut s = self.state.lock().unwrap();
        s.manifests
            .insert((repo.into(), d.clone()), (media_type.into(), body.to_vec()));
        if let Some(t) = tag {
            s.manifests
                .insert((repo.into(), t.into()), (media_type.into(), body.to_vec()));
        }
        d
    }

    pub fn corrupt(&self, digest: &str, bytes: Vec<u8>) {
        self.state.lock().unwrap().corrupt.insert(digest.into(), bytes);
    }

    pub fn truncate(&self, digest: &str, at: usize) {
        self.state.lock().unwrap().truncate.insert(digest.into(), at);
    }

    pub fn stall(&self, digest: &str, at: usize) {
        self.state.lock().unwrap().stall.insert(digest.into(), at);
    }

    pub fn heal(&self) {
        let mut s = self.state.lock().unwrap();
        s.corrupt.clear();
        s.truncate.clear();
        s.stall.clear();
    }

    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn clear_requests(&self) {
        self.state.lock().unwrap().requests.clear();
    }
}

fn authorized(auth: &Option<Auth>, head: &str) -> bool {
    use base64::Engine as _;
    let given = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("authorization: ")
                .or_else(|| l.strip_prefix("Authorization: "))
        })
        .unwrap_or("")
        .trim();
    match auth {
        None | Some(Auth::None) => true,
        Some(Auth::Basic(u, p)) => {
            given
                == format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                )
        }
        Some(Auth::Bearer { token, .. }) | Some(Auth::Identity { token, .. }) => given == format!("Bearer {token}"),
    }
}

/// The reply, and whether to hang after sending it.
fn handle(st: &Mutex<State>, addr: &str, head: &str) -> (Vec<u8>, bool) {
    let stall = {
        let s = st.lock().unwrap();
        let target = head
            .lines()
            .next()
            .unwrap_or("")
            .split(' ')
            .nth(1)
            .unwrap_or("")
            .to_string();
        s.stall
            .iter()
            .find(|(d, _)| target.contains(d.as_str()))
            .map(|(d, at)| (s.blobs[d].clone(), *at))
    };
    if let Some((body, at)) = stall {
        let headers = [("Content-Type", "application/octet-stream".to_string())];
        return (response("200 OK", &headers, &body[..at], Some(body.len())), true);
    }
    (reply(st, addr, head), false)
}

fn reply(st: &Mutex<State>, addr: &str, head: &str) -> Vec<u8> {
    let mut s = st.lock().unwrap();
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    s.requests.push(format!("{method} {target}"));
    let (path, _query) = target.split_once('?').unwrap_or((&target, ""));

    if path == "/token" {
        if let Some(Auth::Bearer { user, pass, token }) = &s.auth {
            if authorized(&Some(Auth::Basic(user.clone(), pass.clone())), head) {
                let body = json!({"token": token}).to_string();
                return response(
                    "200 OK",
                    &[("Content-Type", "application/json".into())],
                    body.as_bytes(),
                    None,
                );
            }
            return error("401 Unauthorized", "UNAUTHORIZED");
        }
        if let Some(Auth::Identity { refresh, token }) = &s.auth {
            let body = head.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            let form: HashMap<&str, &str> = body.split('&').filter_map(|kv| kv.split_once('=')).collect();
            if method == "POST"
                && form.get("grant_type") == Some(&"refresh_token")
                && form.get("refresh_token") == Some(&refresh.as_str())
            {
                let body = json!({"access_token": token}).to_string();
                return response(
                    "200 OK",
                    &[("Content-Type", "application/json".into())],
                    body.as_bytes(),
                    None,
                );
            }
            return error("401 Unauthorized", "UNAUTHORIZED");
        }
        return error("404 Not Found", "NOT_FOUND");
    }
    if !authorized(&s.auth, head) {
        let challenge = match &s.auth {
            Some(Auth::Basic(..)) => "Basic realm=\"fixture\"".to_string(),
            _ => format!("Bearer realm=\"http://{addr}/token\",service=\"fixture\""),
        };
        let body = json!({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}).to_string();
        return response(
            "401 Unauthorized",
            &[
                ("WWW-Authenticate", challenge),
                ("Content-Type", "application/json".into()),
            ],
            body.as_bytes(),
            None,
        );
    }
    if path == "/v2/" || path == "/v2" {
        return response("200 OK", &[], b"{}", None);
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return error("404 Not Found", "NOT_FOUND");
    };
    let head_only = method == "HEAD";
    if let Some((repo, reference)) = rest.split_once("/manifests/") {
        return match s.manifests.get(&(repo.to_string(), reference.to_string())) {
            Some((mt, body)) => {
                let headers = [
                    ("Content-Type", mt.clone()),
                    ("Docker-Content-Digest", sha256_digest(body)),
                ];
                response("200 OK", &headers, if head_only { b"" } else { body }, Some(body.len()))
            }
            None => error("404 Not Found", "MANIFEST_UNKNOWN"),
        };
    }
    if let Some((_repo, digest)) = rest.split_once("/blobs/") {
        let Some(real) = s.blobs.get(digest).cloned() else {
            return error("404 Not Found", "BLOB_UNKNOWN");
        };
        let body = s.corrupt.get(digest).cloned().unwrap_or(real);
        let headers = [("Content-Type", "application/octet-stream".to_string())];
        if let Some(at) = s.truncate.get(digest) {
            return response("200 OK", &headers, &body[..*at], Some(body.len()));
        }
        return response(
            "200 OK",
            &headers,
            if head_only { b"" } else { &body },
            Some(body.len()),
        );
    }
    error("404 Not Found", "NOT_FOUND")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compress {
    None,
    Gzip,
    Zstd,
}

pub fn compress(tar: &[u8], c: Compress) -> (Vec<u8>, &'static str) {
    match c {
        Compress::None => (tar.to_vec(), "application/vnd.oci.image.layer.v1.tar"),
        Compress::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(tar).unwrap();
            (gz.finish().unwrap(), "application/vnd.oci.image.layer.v1.tar+gzip")
        }
        Compress::Zstd => (
            ruzstd::encoding::compress_to_vec(tar, ruzstd::encoding::CompressionLevel::Fastest),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
    }
}

/// An image pushed to the fixture registry.
#[derive(Clone, Debug)]
pub struct Pushed {
    pub manifest: String,
    pub config: String,
    pub layers: Vec<String>,
    pub diff_ids: Vec<String>,
}

pub fn config_json(diff_ids: &[String], runtime: serde_json::Value, arch: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": arch, "os": "linux", "config": runtime,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

/// Pushes the blobs and the manifest (OCI or Docker schema 2) of an image; tags it when `tag` is given.
pub fn push_image(
    reg: &Registry,
    repo: &str,
    tag: Option<&str>,
    layers: &[(Vec<u8>, Compress)],
    runtime: serde_json::Value,
    docker: bool,
) -> Pushed {
    let diff_ids: Vec<String> = layers.iter().map(|(t, _)| sha256_digest(t)).collect();
    let config = config_json(&diff_ids, runtime, "amd64");
    let config_digest = reg.put_blob(&config);
    let mut descs = Vec::new();
    let mut digests = Vec::new();
    for (tar, c) in layers {
        let (blob, mut mt) = compress(tar, *c);
        if docker {
            mt = match c {
                Compress::Gzip => "application/vnd.docker.image.rootfs.diff.tar.gzip",
                _ => "application/vnd.docker.image.rootfs.diff.tar",
            };
        }
        let d = reg.put_blob(&blob);
        descs.push(json!({"mediaType": mt, "digest": d, "size": blob.len()}));
        digests.push(d);
    }
    let (mt, config_mt) = if docker {
        (
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.container.image.v1+json",
        )
    } else {
        (
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.config.v1+json",
        )
    };
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": mt,
        "config": {"mediaType": config_mt, "digest": config_digest, "size": config.len()},
        "layers": descs,
    }))
    .unwrap();
    let manifest_digest = reg.put_manifest(repo, tag, mt, &manifest);
    Pushed {
        manifest: manifest_digest,
        config: config_digest,
        layers: digests,
        diff_ids,
    }
}

/// Pushes an index (OCI, or a Docker manifest list) over already pushed manifests, by platform.
pub fn push_index(reg: &Registry, repo: &str, tag: &str, entries: &[(&str, &str, &str)], docker: bool) -> String {
    let (mt, entry_mt) = if docker {
        (
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
    } else {
        (
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.oci.image.manifest.v1+json",
        )
    };
    let manifests: Vec<serde_json::Value> = entries
        .iter()
        .map(|(digest, os, arch)| {
            let size = reg.state.lock().unwrap().manifests[&(repo.to_string(), digest.to_string())]
                .1
                .len();
            json!({"mediaType": entry_mt, "digest": digest, "size": size, "platform": {"os": os, "architecture": arch}})
        })
        .collect();
    let body = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": mt, "manifests": manifests})).unwrap();
    reg.put_manifest(repo, Some(tag), mt, &body)
}

/// Writes `<dir>/<host>/hosts.toml` mapping `host` onto the given mirrors.
pub fn mirror(hosts_dir: &Path, host: &str, mirrors: &[&str]) {
    let dir = hosts_dir.join(host);
    std::fs::create_dir_all(&dir).unwrap();
    let mut text = format!("server = \"https://{host}\"\n");
    for m in mirrors {
        text.push_str(&format!("\n[host.\"{m}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"));
    }
    std::fs::write(dir.join("hosts.toml"), text).unwrap();
}

/// An image store in a temp dir over the named snapshotter.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub images: ImageStore,
    pub snap: Arc<dyn Snapshotter>,
    pub store: Store,
}

impl Env {
    pub fn new(snapshotter: &str) -> Env {
        Env::with_limits(snapshotter, UnpackLimits::default())
    }

    pub fn with_limits(snapshotter: &str, limits: UnpackLimits) -> Env {
        Env::in_dir(tempfile::tempdir().unwrap(), snapshotter, limits)
    }

    /// An image store with its root (content, snapshots, metadata) under `dir`.
    pub fn in_dir(dir: tempfile::TempDir, snapshotter: &str, limits: UnpackLimits) -> Env {
        let root = dir.path().join("root");
        let snap_root = root.join("snapshotter").join(snapshotter);
        let snap: Arc<dyn Snapshotter> = match snapshotter {
            "overlayfs" => Arc::new(berth_snapshot_overlay::OverlaySnapshotter::open(&snap_root).unwrap()),
            "native" => Arc::new(berth_snapshot_native::NativeSnapshotter::open(&snap_root).unwrap()),
            other => panic!("no snapshotter {other}"),
        };
        let store = Store::open(&root.join("meta.redb")).unwrap();
        std::fs::create_dir_all(dir.path().join("certs.d")).unwrap();
        std::fs::create_dir_all(dir.path().join("mnt")).unwrap();
        let config = ImageStoreConfig {
            content_root: root.join("content"),
            hosts_dir: dir.path().join("certs.d"),
            limits,
            max_concurrent_downloads: 3,
        };
        let images = ImageStore::new(config, store.clone(), snap.clone()).unwrap();
        Env {
            dir,
            images,
            snap,
            store,
        }
    }

    pub fn hosts_dir(&self) -> PathBuf {
        self.dir.path().join("certs.d")
    }

    pub fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// Files under the content store's blob directory and ingest directory.
    pub fn content_files(&self) -> (usize, usize) {
        let root = self.dir.path().join("root/content");
        let n = |p: PathBuf| std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0);
        (n(root.join("blobs/sha256")), n(root.join("ingest")))
    }
}
