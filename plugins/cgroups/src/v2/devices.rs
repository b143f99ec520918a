//! v2 devices: an eBPF program of type `BPF_PROG_TYPE_CGROUP_DEVICE`, attached to the container cgroup, that
//! allows the default devices and the container's own and denies the rest (cgroup v2 has no devices files).
//!
//! The program is assembled here by hand, as runc does (`libcontainer/cgroups/devices/ebpf` with cilium/ebpf's
//! assembler): it is about 6 instructions of prologue plus ≤ 6 per rule, and a hand assembler keeps berth free of
//! a BPF toolchain. `aya` was the alternative: it loads programs from ELF objects built for the `bpf` target (a
//! nightly/LLVM build step), far more than these few instructions need. Loading and attaching is in [`bpf`].
//!
//! The kernel calls the program with `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }`,
//! `access_type = (BPF_DEVCG_ACC_* << 16) | BPF_DEVCG_DEV_*`; it returns 1 to allow, 0 to deny (EPERM).
//! Rules are checked from the last to the first, the first match decides, nothing matching denies: a later
//! rule overrides an earlier one, like the v1 files.

use std::path::Path;

use berth_core::plugin::resources::DeviceRule;

use crate::devices::with_defaults;
use crate::error::Result;

#[allow(unsafe_code)]
pub mod bpf;

/// `BPF_DEVCG_DEV_BLOCK`, `BPF_DEVCG_DEV_CHAR`.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
/// `BPF_DEVCG_ACC_MKNOD | READ | WRITE`.
const ACC_ALL: i32 = 1 | 2 | 4;

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub dst: u8,
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    /// The kernel's 8-byte encoding (little-endian host: dst in the low nibble).
    pub fn encode(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.code;
        b[1] = (self.dst & 0xf) | (self.src << 4);
        b[2..4].copy_from_slice(&self.off.to_le_bytes());
        b[4..8].copy_from_slice(&self.imm.to_le_bytes());
        b
    }
}

// Opcodes: class | op | source.
const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU32_AND_K: u8 = 0x54;
const ALU32_RSH_K: u8 = 0x74;
const ALU32_MOV_K: u8 = 0xb4;
const ALU32_MOV_X: u8 = 0xbc;
const JMP_JNE_K: u8 = 0x55;
const JMP_JNE_X: u8 = 0x5d;
const JMP_JEQ_K: u8 = 0x15;
const JMP_EXIT: u8 = 0x95;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        dst,
        src,
        off,
        imm,
    }
}

/// The access bits of `rwm`.
fn access_bits(access: &str) -> i32 {
    access.chars().fold(0, |b, c| {
        b | match c {
            'm' => 1,
            'r' => 2,
            'w' => 4,
            _ => 0,
        }
    })
}

/// The instructions of one rule: every check jumps past the block when it fails; the block ends in
/// `return allow`.
fn rule_block(r: &DeviceRule) -> Vec<Insn> {
    // (instructions of one check, its jump is the last)
    let mut checks: Vec<Vec<Insn>> = Vec::new();
    match r.kind {
        'b' => checks.push(vec![insn(JMP_JNE_K, 2, 0, 0, DEV_BLOCK)]),
        'c' => checks.push(vec![insn(JMP_JNE_K, 2, 0, 0, DEV_CHAR)]),
        _ => {}
    }
    let bits = access_bits(&r.access);
    if bits != ACC_ALL {
        // An allow matches when it grants every requested bit ((requested & rule) == requested); a deny when it
        // names any of them ((requested & rule) != 0), so "deny w" also refuses an open for rw.
        let skip = if r.allow {
            insn(JMP_JNE_X, 1, 3, 0, 0)
        } else {
            insn(JMP_JEQ_K, 1, 0, 0, 0)
        };
        checks.push(vec![
            insn(ALU32_MOV_X, 1, 3, 0, 0),
            insn(ALU32_AND_K, 1, 0, 0, bits),
            skip,
        ]);
    }
    if let Some(major) = r.major {
        checks.push(vec![insn(JMP_JNE_K, 4, 0, 0, major as i32)]);
    }
    if let Some(minor) = r.minor {
        checks.push(vec![insn(JMP_JNE_K, 5, 0, 0, minor as i32)]);
    }
    let tail = [insn(ALU32_MOV_K, 0, 0, 0, r.allow as i32), insn(JMP_EXIT, 0, 0, 0, 0)];
    let total: usize = checks.iter().map(Vec::len).sum::<usize>() + tail.len();
    let mut out = Vec::with_capacity(total);
    for check in checks {
        out.extend(check);
        // The jump skips what remains of the block.
        let last = out.len() - 1;
        out[last].off = (total - out.len()) as i16;
    }
    out.extend(tail);
    out
}

/// The whole program for `rules` (already including the defaults).
pub fn program(rules: &[DeviceRule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0), // r2 = ctx->access_type
        insn(ALU32_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_MEM_W, 3, 1, 0, 0), // r3 = ctx->access_type >> 16
        insn(ALU32_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0), // r4 = ctx->major
        insn(LDX_MEM_W, 5, 1, 8, 0), // r5 = ctx->minor
    ];
    for r in rules.iter().rev() {
        p.extend(rule_block(r));
    }
    p.extend([insn(ALU32_MOV_K, 0, 0, 0, 0), insn(JMP_EXIT, 0, 0, 0, 0)]);
    p
}

/// Attaches the program of the default devices plus `extra` to the cgroup directory `dir`.
pub fn apply(dir: &Path, extra: &[DeviceRule]) -> Result<()> {
    let insns = program(&with_defaults(extra));
    bpf::attach_device_program(dir, &insns)
}

/// Runs `prog` over one device access, as the kernel would (the few instructions [`program`] emits), for the
/// unit tests.
#[cfg(test)]
fn interpret(prog: &[Insn], kind: i32, access: i32, major: u32, minor: u32) -> u64 {
    let ctx = [((access << 16) | kind) as u32, major, minor];
    let mut r = [0u64; 11];
    let mut pc = 0usize;
    loop {
        let i = prog[pc];
        pc += 1;
        let (d, s) = (i.dst as usize, i.src as usize);
        match i.code {
            LDX_MEM_W => r[d] = ctx[i.off as usize / 4] as u64,
            ALU32_AND_K => r[d] = (r[d] as u32 & i.imm as u32) as u64,
            ALU32_RSH_K => r[d] = ((r[d] as u32) >> i.imm) as u64,
            ALU32_MOV_K => r[d] = i.imm as u32 as u64,
            ALU32_MOV_X => r[d] = r[s] as u32 as u64,
            JMP_JNE_K if r[d] != i.imm as i64 as u64 => pc += i.off as usize,
            JMP_JNE_X if r[d] != r[s] => pc += i.off as usize,
            JMP_JEQ_K if r[d] == i.imm as i64 as u64 => pc += i.off as usize,
            JMP_JNE_K | JMP_JNE_X | JMP_JEQ_K => {}
            JMP_EXIT => return r[0],
            c => panic!("unexpected opcode {c:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: i32 = 2;
    const W: i32 = 4;
    const M: i32 = 1;

    fn rule(allow: bool, kind: char, major: Option<i64>, minor: Option<i64>, access: &str) -> DeviceRule {
        DeviceRule {
            allow,
            kind,
            major,
            minor,
            access: access.into(),
        }
    }

    #[test]
    fn defaults_allow_the_usual_nodes_and_mknod_only() {
        let p = program(&with_defaults(&[]));
        let run = |kind, access, major, minor| interpret(&p, kind, access, major, minor);
        assert_eq!(run(DEV_CHAR, R | W, 1, 3), 1, "/dev/null");
        assert_eq!(run(DEV_CHAR, R, 1, 9), 1, "/dev/urandom");
        assert_eq!(run(DEV_CHAR, R | W, 136, 7), 1, "/dev/pts/7");
        assert_eq!(run(DEV_CHAR, R | W, 5, 2), 1, "/dev/ptmx");
        assert_eq!(run(DEV_CHAR, M, 1, 1), 1, "mknod of any char device");
        assert_eq!(run(DEV_BLOCK, M, 8, 0), 1, "mknod of any block device");
        assert_eq!(run(DEV_CHAR, R, 1, 1), 0, "/dev/mem");
        assert_eq!(run(DEV_BLOCK, R, 8, 0), 0, "/dev/sda");
        assert_eq!(run(DEV_CHAR, R | M, 1, 1), 0, "r+m needs both");
    }

    #[test]
    fn requested_devices_and_later_rules_win() {
        let extra = [
            rule(true, 'c', Some(1), Some(11), "r"),
            rule(true, 'b', Some(7), None, "rw"),
            rule(false, 'c', Some(1), Some(9), "w"),
        ];
        let p = program(&with_defaults(&extra));
        let run = |kind, access, major, minor| interpret(&p, kind, access, major, minor);
        assert_eq!(run(DEV_CHAR, R, 1, 11), 1);
        assert_eq!(run(DEV_CHAR, W, 1, 11), 0, "only r was asked for");
        assert_eq!(run(DEV_BLOCK, R | W, 7, 3), 1, "any minor");
        assert_eq!(run(DEV_CHAR, R | W, 7, 3), 0, "the type matters");
        assert_eq!(run(DEV_CHAR, W, 1, 9), 0, "a later deny overrides the default allow");
        assert_eq!(run(DEV_CHAR, R | W, 1, 9), 0, "a deny refuses any overlap");
        assert_eq!(run(DEV_CHAR, R, 1, 9), 1, "for its access bits only");
    }

    #[test]
    fn allow_all_allows_everything() {
        let p = program(&with_defaults(&[rule(true, 'a', None, None, "rwm")]));
        assert_eq!(interpret(&p, DEV_BLOCK, R | W | M, 8, 1), 1);
        assert_eq!(interpret(&p, DEV_CHAR, R, 1, 1), 1);
    }

    #[test]
    fn encoding_matches_the_kernel_layout() {
        // r4 = *(u32 *)(r1 + 4)
        assert_eq!(insn(LDX_MEM_W, 4, 1, 4, 0).encode(), [0x61, 0x14, 4, 0, 0, 0, 0, 0]);
        // if r2 != 2 goto +3
        assert_eq!(insn(JMP_JNE_K, 2, 0, 3, 2).encode(), [0x55, 0x02, 3, 0, 2, 0, 0, 0]);
    }
}
