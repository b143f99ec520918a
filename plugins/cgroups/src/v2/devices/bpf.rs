//! The two bpf(2) calls berth needs: load a `BPF_PROG_TYPE_CGROUP_DEVICE` program and attach it to a cgroup
//! (`BPF_PROG_ATTACH`, `BPF_CGROUP_DEVICE`, `BPF_F_ALLOW_MULTI` like runc, so a nested runtime inside the
//! container can still add its own). The attachment holds the program: the fds are closed afterwards and the
//! program lives as long as the cgroup. Neither libc nor nix wraps bpf(2); the attribute structs below are the
//! leading fields of the kernel's `union bpf_attr` for these commands (the kernel zero-fills the rest).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::Insn;
use crate::error::{CgroupError, Result};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

/// bpf(cmd, attr, sizeof attr).
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, exclusively borrowed #[repr(C)] prefix of `union bpf_attr` for `cmd`, and the
    // size passed is its own; the kernel reads (and for PROG_LOAD writes into the log buffer it points to) only
    // within what the fields describe.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Loads `insns`; on failure loads again with the verifier log, which goes into the error.
fn load(insns: &[Insn]) -> std::result::Result<OwnedFd, (io::Error, String)> {
    let code: Vec<u8> = insns.iter().flat_map(Insn::encode).collect();
    let license = c"Apache-2.0";
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: code.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: *b"berth_devices\0\0\0",
        ..Default::default()
    };
    let fd = match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => fd,
        Err(e) => {
            let mut log = vec![0u8; 64 * 1024];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            let _ = bpf(BPF_PROG_LOAD, &mut attr);
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            return Err((e, String::from_utf8_lossy(&log[..end]).trim().to_string()));
        }
    };
    // SAFETY: a successful BPF_PROG_LOAD returns a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Loads the program and attaches it to the cgroup directory `dir`.
pub fn attach_device_program(dir: &Path, insns: &[Insn]) -> Result<()> {
    let err = |what: &str, source: io::Error, log: String| CgroupError::Bpf {
        path: dir.to_path_buf(),
        what: what.to_string(),
        source,
        log,
    };
    let prog = load(insns).map_err(|(e, log)| err("load the device program", e, log))?;
    let cgroup = File::open(dir).map_err(|e| CgroupError::read(dir.to_path_buf(), e))?;
    let mut attr = ProgAttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
    };
    bpf(BPF_PROG_ATTACH, &mut attr).map_err(|e| err("attach the device program", e, String::new()))?;
    Ok(())
}
