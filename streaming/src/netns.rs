//! Connecting to a port on the loopback of a pod's network namespace, without socat and without moving a
//! runtime thread: a throwaway thread enters the namespace, connects, and hands the socket to tokio (a
//! socket stays in the namespace it was created in).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sched::{CloneFlags, setns};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `127.0.0.1:port` (then `[::1]:port` if refused) in the namespace at `netns`, or in ours.
pub(crate) async fn connect_loopback(netns: Option<&Path>, port: u16) -> io::Result<TcpStream> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    let Some(netns) = netns else {
        return match TcpStream::connect(v4).await {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => TcpStream::connect(v6).await.map_err(|_| e),
            other => other,
        };
    };
    let path: PathBuf = netns.to_path_buf();
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("berth-netns-dial".into())
        .spawn(move || {
            let _ = tx.send(connect_in(&path, v4, v6));
        })?;
    let stream = rx.await.map_err(|_| io::Error::other("namespace dial thread died"))??;
    TcpStream::from_std(stream)
}

/// Runs on a thread of its own, which it leaves in the pod's namespace: the thread ends right after.
fn connect_in(netns: &Path, v4: SocketAddr, v6: SocketAddr) -> io::Result<std::net::TcpStream> {
    let ns = std::fs::File::open(netns).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", netns.display())))?;
    setns(&ns, CloneFlags::CLONE_NEWNET)
        .map_err(|e| io::Error::other(format!("entering network namespace {}: {e}", netns.display())))?;
    let stream = match std::net::TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            std::net::TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT).map_err(|_| e)?
        }
        other => other?,
    };
    stream.set_nonblocking(true)?;
    Ok(stream)
}
