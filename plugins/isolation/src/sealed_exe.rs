//! Host binary protection (the runc CVE-2019-5736 class): the shim runs from a sealed memfd copy of its binary,
//! so even a process that reaches the shim's `/proc/<pid>/exe` cannot modify berth-shim on disk (the memfd is
//! sealed against writes, and it is not the file on disk).
//!
//! berthd makes one sealed copy and starts every shim from it (one copy in memory for all pods); a shim
//! started any other way re-executes itself from its own sealed copy first.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};

const SEALS: SealFlag = SealFlag::F_SEAL_SEAL
    .union(SealFlag::F_SEAL_SHRINK)
    .union(SealFlag::F_SEAL_GROW)
    .union(SealFlag::F_SEAL_WRITE);

/// A sealed, close-on-exec memfd holding a copy of `path`.
pub fn sealed_copy(path: &Path) -> std::io::Result<OwnedFd> {
    let mut source = File::open(path)?;
    let fd = memfd_create(c"berth-shim", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
    let mut dest = File::from(fd);
    std::io::copy(&mut source, &mut dest)?;
    let fd = OwnedFd::from(dest);
    fcntl(&fd, FcntlArg::F_ADD_SEALS(SEALS))?;
    Ok(fd)
}

/// Whether `fd` is a memfd carrying at least our seals.
pub fn is_sealed(fd: impl AsFd) -> bool {
    match fcntl(fd, FcntlArg::F_GET_SEALS) {
        Ok(bits) => SealFlag::from_bits_truncate(bits).contains(SEALS),
        Err(_) => false,
    }
}

/// Whether the running binary is a sealed memfd.
pub fn running_sealed() -> bool {
    File::open("/proc/self/exe").map(is_sealed).unwrap_or(false)
}

/// Re-executes the current program from a sealed copy unless it already runs from one. Returns only on
/// failure (or when already sealed).
pub fn reexec_sealed() -> std::io::Result<()> {
    if running_sealed() {
        return Ok(());
    }
    let fd = sealed_copy(Path::new("/proc/self/exe"))?;
    let args: Vec<CString> = std::env::args_os()
        .map(|a| CString::new(a.into_encoded_bytes()).unwrap_or_default())
        .collect();
    let env: Vec<CString> = std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = k.into_encoded_bytes();
            kv.push(b'=');
            kv.extend(v.into_encoded_bytes());
            CString::new(kv).unwrap_or_default()
        })
        .collect();
    nix::unistd::fexecve(&fd, &args, &env)?;
    Ok(())
}
