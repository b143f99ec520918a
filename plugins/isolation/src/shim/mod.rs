//! berth-shim: one small, single-threaded monitor per pod (no async runtime; poll(2)).
//!
//! berthd runs `berth-shim --pod-id ID --state DIR [--restrict-oom]`. The shim re-executes itself from a sealed
//! memfd unless berthd already started it from one, forks into its own session (the first process exits once
//! the socket listens, so berthd's spawn returns a ready shim, and the shim is no child of berthd), becomes a
//! child subreaper and serves `<state>/pods/<pod>/shim.sock`. It creates containers itself
//! ([`crate::init`]), writes their CRI logs, reaps every child, records exit statuses under
//! `<state>/containers/<id>/` and serves [`crate::protocol::Request`]s.

mod daemon;
mod server;

use std::path::PathBuf;

pub use daemon::trim_heap;
pub use server::{container_dir, pod_dir};

/// Parsed command line.
#[derive(Debug)]
pub struct Args {
    pub pod_id: String,
    pub state: PathBuf,
    pub restrict_oom: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut pod_id = None;
    let mut state = None;
    let mut restrict_oom = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--pod-id" => pod_id = it.next(),
            "--state" => state = it.next().map(PathBuf::from),
            "--restrict-oom" => restrict_oom = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let pod_id = pod_id.ok_or("--pod-id is required")?;
    if pod_id.is_empty() || pod_id.contains('/') || pod_id.starts_with('.') {
        return Err(format!("bad pod id {pod_id:?}"));
    }
    Ok(Args {
        pod_id,
        state: state.ok_or("--state is required")?,
        restrict_oom,
    })
}

/// The shim's `main`; returns the process exit code.
pub fn main() -> i32 {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("berth-shim: {e}");
            return 2;
        }
    };
    daemon::close_inherited_fds();
    if let Err(e) = crate::sealed_exe::reexec_sealed() {
        eprintln!("berth-shim: cannot run from a sealed copy of itself: {e}");
        return 1;
    }
    // Started from a memfd through `/proc/self/fd/N` (or fexecve), the kernel names this process "N" or
    // "memfd:berth-shim"; give ps and /proc/PID/comm a real name.
    let _ = nix::sys::prctl::set_name(c"berth-shim");
    match daemon::daemonize(&args) {
        Ok(daemon::Role::Parent(code)) => code,
        Ok(daemon::Role::Daemon(ready)) => match server::Shim::new(&args) {
            Ok(mut shim) => {
                daemon::signal_ready(ready);
                shim.run();
                0
            }
            Err(e) => {
                eprintln!("berth-shim: {e}");
                1
            }
        },
        Err(e) => {
            eprintln!("berth-shim: {e}");
            1
        }
    }
}
