//! Netlink sockets inside a pod's network namespace.
//!
//! A netlink socket talks to the namespace it was created in, whatever thread later drives it. So the socket
//! is opened on a throwaway `std::thread` that `setns`-ed into the pod netns (never a tokio worker or
//! blocking-pool thread: those are reused, and a thread's namespace sticks), and then driven from tokio.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open the network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enter the network namespace {path}: {source}")]
    Enter {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot open a netlink socket in {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the netns helper thread for {path} died")]
    Thread { path: PathBuf },
}

/// Opens the namespace file (checking it is one) for `IFLA_NET_NS_FD`.
pub fn open(path: &Path) -> Result<File, NetnsError> {
    File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_path_buf(),
        source,
    })
}

/// A netlink handle whose socket lives in the network namespace at `path`. Must be called inside a tokio
/// runtime: the connection task is spawned on it and ends when the handle is dropped.
pub async fn netlink_in(path: &Path) -> Result<rtnetlink::Handle, NetnsError> {
    let runtime = tokio::runtime::Handle::current();
    let owned = path.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("berth-netns".into())
        .spawn(move || {
            let result = (|| {
                // The socket registers with the runtime's reactor when created.
                let _guard = runtime.enter();
                let ns = open(&owned)?;
                setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
                    path: owned.clone(),
                    source,
                })?;
                rtnetlink::new_connection().map_err(|source| NetnsError::Socket {
                    path: owned.clone(),
                    source,
                })
            })();
            let _ = tx.send(result);
            // The thread ends here, taking its namespace with it.
        })
        .map_err(|source| NetnsError::Socket {
            path: path.to_path_buf(),
            source,
        })?;
    let (connection, handle, _) = rx.await.map_err(|_| NetnsError::Thread {
        path: path.to_path_buf(),
    })??;
    tokio::spawn(connection);
    Ok(handle)
}

/// A netlink handle in the caller's (host) namespace.
pub fn netlink_here() -> std::io::Result<rtnetlink::Handle> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    Ok(handle)
}
