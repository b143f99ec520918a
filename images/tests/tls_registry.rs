//! hosts.toml `ca` and `skip_verify`, and CRI basic auth, against a real registry: a second Debian
//! `docker-registry` on 127.0.0.1 (a free port) serving https with a throwaway CA made here by the openssl
//! CLI and demanding htpasswd credentials. The test image is copied in from the project's local registry
//! with skopeo. Skipped (with a message) when a tool or the local registry is missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_images::{ErrorKind, PullAuth};
use common::Env;

const LOCAL: &str = "127.0.0.1:5000";
const USER: &str = "berth";
const PASS: &str = "s3cret-pw";
/// The name the test pulls; hosts.toml maps it onto the TLS registry.
const NAME: &str = "tls.example/berth-test/busybox:latest";

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A CA and a server certificate for 127.0.0.1 signed by it: `(ca.crt, server.crt, server.key)`.
fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |n: &str| dir.join(n);
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=berth test CA",
        ])
        .arg("-keyout")
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.crt")));
    run(Command::new("openssl")
        .args(["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1"])
        .arg("-keyout")
        .arg(p("server.key"))
        .arg("-out")
        .arg(p("server.csr")));
    std::fs::write(
        p("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
        .arg("-in")
        .arg(p("server.csr"))
        .arg("-CA")
        .arg(p("ca.crt"))
        .arg("-CAkey")
        .arg(p("ca.key"))
        .arg("-extfile")
        .arg(p("ext.cnf"))
        .arg("-out")
        .arg(p("server.crt")));
    (p("ca.crt"), p("server.crt"), p("server.key"))
}

/// An htpasswd line (bcrypt, which docker-registry requires) made with Python's crypt module.
fn htpasswd(path: &Path) {
    let out = Command::new("python3")
        .args([
            "-W",
            "ignore",
            "-c",
            &format!("import crypt; print('{USER}:' + crypt.crypt('{PASS}', crypt.mksalt(crypt.METHOD_BLOWFISH)))"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(path, out.stdout).unwrap();
}

/// The second registry; killed (and its temp dir removed) on drop.
struct TlsRegistry {
    child: Child,
    addr: String,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for TlsRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TlsRegistry {
    fn start() -> TlsRegistry {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = make_certs(dir.path());
        htpasswd(&dir.path().join("htpasswd"));
        let addr = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {store}\n\
                 auth:\n  htpasswd:\n    realm: berth-test\n    path: {htpasswd}\n\
                 http:\n  addr: {addr}\n  tls:\n    certificate: {cert}\n    key: {key}\n",
                store = dir.path().join("storage").display(),
                htpasswd = dir.path().join("htpasswd").display(),
                cert = cert.display(),
                key = key.display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut reg = TlsRegistry {
            child,
            addr,
            ca,
            _dir: dir,
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(&reg.addr).is_err() {
            if let Ok(Some(status)) = reg.child.try_wait() {
                let log = std::fs::read_to_string(reg._dir.path().join("registry.log")).unwrap_or_default();
                panic!("docker-registry exited ({status}): {log}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "docker-registry did not listen"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // The test image, from the project's local registry.
        run(Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false"])
            .arg(format!("--dest-creds={USER}:{PASS}"))
            .arg(format!("docker://{LOCAL}/berth-test/busybox:latest"))
            .arg(format!("docker://{}/berth-test/busybox:latest", reg.addr)));
        reg
    }
}

fn hosts_toml(env: &Env, text: &str) {
    let dir = env.hosts_dir().join("tls.example");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hosts.toml"), text).unwrap();
}

fn basic() -> PullAuth {
    PullAuth {
        username: USER.into(),
        password: PASS.into(),
        ..PullAuth::default()
    }
}

/// The error and its whole source chain, lowercased.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s.to_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_ca_skip_verify_and_basic_auth_against_a_real_registry() {
    let missing: Vec<&str> = ["docker-registry", "skopeo", "openssl", "python3"]
        .into_iter()
        .filter(|t| !have(t))
        .collect();
    if !missing.is_empty() || std::net::TcpStream::connect(LOCAL).is_err() {
        eprintln!("SKIP: missing {missing:?} or no local registry on {LOCAL}");
        return;
    }
    let reg = TlsRegistry::start();
    let server = format!("https://{}", reg.addr);

    // 1. The CA in a [host] section (relative to the hosts.toml directory, as containerd resolves it).
    let env = Env::new("overlayfs");
    hosts_toml(&env, "");
    std::fs::copy(&reg.ca, env.hosts_dir().join("tls.example/ca.crt")).unwrap();
    hosts_toml(
        &env,
        &format!(
            "server = \"{server}\"\n\n[host.\"{server}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"ca.crt\"\n"
        ),
    );
    let image = env.images.pull(NAME, &basic()).await.unwrap();
    assert!(!image.chain_ids.is_empty());
    assert!(env.images.status(NAME).unwrap().is_some());

    // 2. Basic auth is enforced: no credentials, or wrong ones, are Unauthenticated.
    env.images.remove(NAME).await.unwrap();
    let err = env.images.pull(NAME, &PullAuth::default()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{}", chain(&err));
    let wrong = PullAuth {
        password: "nope".into(),
        ..basic()
    };
    let err = env.images.pull(NAME, &wrong).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{}", chain(&err));
    // The same credentials as CRI's base64 `auth` field.
    use base64::Engine as _;
    let encoded = PullAuth {
        auth: base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}")),
        ..PullAuth::default()
    };
    env.images.pull(NAME, &encoded).await.unwrap();

    // 3. Without the CA the certificate is unknown: a clear certificate error, nothing kept.
    let env = Env::new("overlayfs");
    hosts_toml(&env, &format!("server = \"{server}\"\n"));
    let err = env.images.pull(NAME, &basic()).await.unwrap_err();
    let text = err.to_string().to_lowercase();
    eprintln!("without the CA: {err}");
    assert!(
        text.contains("certificate") && text.contains(&reg.addr),
        "the error should name the host and the certificate problem: {text}"
    );
    assert_eq!(env.content_files(), (0, 0));
    assert!(env.images.list(None).unwrap().is_empty());

    // 4. skip_verify at the top level (the server's own settings).
    hosts_toml(&env, &format!("server = \"{server}\"\nskip_verify = true\n"));
    env.images.pull(NAME, &basic()).await.unwrap();
    assert!(env.images.status(NAME).unwrap().is_some());
}
