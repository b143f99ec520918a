//! Against a real registry: Debian's docker-registry (distribution 2.8) started on a free 127.0.0.1 port
//! with temp storage, images pushed with the distribution API's monolithic upload, pulled through a
//! hosts.toml mirror for `docker.io` as the test images are.

mod common;

use std::process::{Child, Command, Stdio};

use berth_core::model::sha256_digest;
use berth_images::PullAuth;
use berth_images::snapshot_testsuite::{base_layer, check_rootfs, mount_all, second_layer};
use common::{Compress, Env, compress, config_json, mirror};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = "/usr/bin/docker-registry";

struct RegistryProcess {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for RegistryProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start() -> RegistryProcess {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let child = Command::new(BIN)
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let reg = RegistryProcess { child, addr, _dir: dir };
    for _ in 0..100 {
        if request(&reg.addr, "GET", "/v2/", "", &[])
            .await
            .is_ok_and(|(s, _)| s == 200)
        {
            return reg;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("docker-registry did not come up on {}", reg.addr);
}

/// One HTTP/1.1 request; returns the status and the Location header.
async fn request(
    addr: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut sock = tokio::net::TcpStream::connect(addr).await?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !content_type.is_empty() {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    head.push_str("\r\n");
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body).await?;
    let mut out = Vec::new();
    sock.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out);
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let location = text
        .lines()
        .find_map(|l| l.strip_prefix("Location: ").or_else(|| l.strip_prefix("location: ")))
        .unwrap_or("")
        .trim()
        .to_string();
    Ok((status, location))
}

async fn push_blob(addr: &str, repo: &str, data: &[u8]) -> String {
    let digest = sha256_digest(data);
    let (status, location) = request(addr, "POST", &format!("/v2/{repo}/blobs/uploads/"), "", &[])
        .await
        .unwrap();
    assert_eq!(status, 202);
    let path = location.trim_start_matches(&format!("http://{addr}"));
    let sep = if path.contains('?') { '&' } else { '?' };
    let (status, _) = request(
        addr,
        "PUT",
        &format!("{path}{sep}digest={digest}"),
        "application/octet-stream",
        data,
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "upload of {digest}");
    digest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_from_docker_registry_through_a_mirror() {
    if !std::path::Path::new(BIN).exists() {
        eprintln!("SKIP: {BIN} is not installed (apt-get install docker-registry)");
        return;
    }
    let reg = start().await;
    let repo = "library/busybox";
    let (l1, l2) = (base_layer(), second_layer());
    let (gz1, mt1) = compress(&l1, Compress::Gzip);
    let (gz2, mt2) = compress(&l2, Compress::Gzip);
    let config = config_json(
        &[sha256_digest(&l1), sha256_digest(&l2)],
        json!({"Cmd": ["sh"]}),
        "amd64",
    );
    let mut layers = Vec::new();
    for (blob, mt) in [(&gz1, mt1), (&gz2, mt2)] {
        let d = push_blob(&reg.addr, repo, blob).await;
        layers.push(json!({"mediaType": mt, "digest": d, "size": blob.len()}));
    }
    let config_digest = push_blob(&reg.addr, repo, &config).await;
    let mt = "application/vnd.oci.image.manifest.v1+json";
    let manifest = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": mt,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": layers}))
    .unwrap();
    let (status, _) = request(&reg.addr, "PUT", &format!("/v2/{repo}/manifests/latest"), mt, &manifest)
        .await
        .unwrap();
    assert_eq!(status, 201);

    for snapshotter in ["overlayfs", "native"] {
        let env = Env::new(snapshotter);
        mirror(&env.hosts_dir(), "docker.io", &[&format!("http://{}", reg.addr)]);
        let image = env.images.pull("busybox", &PullAuth::default()).await.unwrap();
        assert_eq!(image.id, config_digest);
        assert_eq!(
            image.repo_digests,
            [format!("docker.io/library/busybox@{}", sha256_digest(&manifest))]
        );
        let mounts = env.snap.prepare("c", image.chain_ids.last()).await.unwrap();
        let m = mount_all(&mounts, &env.mnt()).unwrap();
        check_rootfs(m.target());
    }
}
