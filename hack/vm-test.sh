#!/usr/bin/env bash
# hack/vm-test.sh BINARY [ARGS...]
#
# Runs BINARY (a host-built test binary, or a /bin/sh script) inside a throw-away qemu VM whose kernel has a pure
# cgroup2 hierarchy, and exits with its exit code. Meant as a cargo runner:
#
#   CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=$PWD/hack/vm-test.sh cargo test --test some_v2_test
#
# Needs root (apt-get, qemu, mknod). Installs what is missing: qemu-system-x86 and xz-utils via apt-get; Debian's
# linux-image-6.1.0-N-amd64 and busybox-static are only downloaded (apt-get download + dpkg -x into the cache),
# never installed. See hack/vm/README.md for the guest layout, the environment knobs and the traps.
#
# Environment:
#   BERTH_VM_CACHE    cache dir (default /var/cache/berth-vm): debs, kernel, vmlinux, initramfs
#   BERTH_VM_TIMEOUT  seconds before the VM is killed (default 600)
#   BERTH_VM_EXTRA    colon-separated host paths (files or dirs) copied into the guest at the same absolute path
#   BERTH_VM_ENV      extra variable names (space/colon/comma separated) passed into the guest; RUST_*, BERTH_*
#                     (except BERTH_VM_*), LD_LIBRARY_PATH, TERM, NO_COLOR and cargo's runtime CARGO_* always are
#   BERTH_VM_MODULES  extra kernel modules (names) for the initramfs, with their dependencies
#   BERTH_VM_CWD_SHARE rw (default) | ro | 0: mount the working directory at the same path in the guest
#   BERTH_VM_KERNEL   pin a kernel ABI, e.g. 6.1.0-57-amd64 (default: newest linux-image-6.1.0-N-amd64, resolved
#                     once and then kept; BERTH_VM_REFRESH=1 resolves again)
#   BERTH_VM_MEM / BERTH_VM_SMP  guest memory in MiB (1024) / vCPUs (2); BERTH_VM_ACCEL (tcg,thread=multi),
#                     BERTH_VM_CPU (max)
#   BERTH_VM_BOOT_TIMEOUT  seconds for the guest to start the job before the boot is killed and retried once (120)
#   BERTH_VM_DEBUG=1  kernel messages and a traced init on stderr; BERTH_VM_KEEP=1 keeps the run's share dir
#   BERTH_VM_QUIET=1  no timing line on stderr
#
# Exit code: the binary's; 124 on timeout; 125 when the VM did not boot or the binary's exit code never came back.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VMDIR=$HERE/vm
CACHE=${BERTH_VM_CACHE:-/var/cache/berth-vm}
TIMEOUT=${BERTH_VM_TIMEOUT:-600}
MEM=${BERTH_VM_MEM:-1024}
SMP=${BERTH_VM_SMP:-2}
ACCEL=${BERTH_VM_ACCEL:-tcg,thread=multi}
BASE_MODULES="virtio_pci virtio_console 9pnet_virtio 9p overlay veth bridge"
# Bump when the initramfs layout changes (it is part of the initramfs cache key).
INITRD_FORMAT=3
# Bump when the kernel cache dir's content changes.
KERNEL_FORMAT=2

log() { echo "berth-vm: $*" >&2; }
die() { echo "berth-vm: error: $*" >&2; exit 125; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

[ $# -ge 1 ] || { echo "usage: $0 BINARY [ARGS...]" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "must run as root (apt-get, qemu with a 9p share, mknod)"
[ -f "$1" ] || die "no such file: $1"

T0=$(now)

# ---------------------------------------------------------------------------------------------------------------
# Host packages
# ---------------------------------------------------------------------------------------------------------------
export DEBIAN_FRONTEND=noninteractive
APT_UPDATED=
apt_update() { [ -n "$APT_UPDATED" ] || { log "apt-get update"; apt-get update -qq >&2; APT_UPDATED=1; }; }
# apt_retry CMD...: run an apt command; on failure (package not found, stale lists) update the lists and retry.
apt_retry() { "$@" >&2 || { apt_update; "$@" >&2; }; }
apt_install() { log "installing $*"; apt_retry apt-get install -y -qq --no-install-recommends "$@"; }

ensure_host_tools() {
	local pkgs=()
	command -v qemu-system-x86_64 >/dev/null || pkgs+=(qemu-system-x86)
	command -v xz >/dev/null || pkgs+=(xz-utils)
	[ ${#pkgs[@]} -eq 0 ] || apt_install "${pkgs[@]}"
	# Not Essential in Debian 12 (but nearly always there).
	command -v ldd >/dev/null || die "ldd missing (libc-bin)"
}

# apt_download DIR PKG: download PKG's .deb into DIR (never installs it); prints the .deb path.
apt_download() {
	local dir=$1 pkg=$2 deb
	# -o APT::Sandbox::User=root: the _apt user may not be able to write into DIR.
	(cd "$dir" && apt_retry apt-get download -qq -o APT::Sandbox::User=root "$pkg") || die "apt-get download $pkg failed"
	deb=$(find "$dir" -maxdepth 1 -name "${pkg}_*.deb" | head -n1)
	[ -n "$deb" ] || die "apt-get download $pkg left no .deb in $dir"
	echo "$deb"
}

# ---------------------------------------------------------------------------------------------------------------
# Kernel: Debian's linux-image-6.1.0-N-amd64, extracted, never installed. (The -cloud- flavour has no 9p.)
# ---------------------------------------------------------------------------------------------------------------
newest_kernel() {
	local k
	# Only when nothing is cached yet (the choice is kept): refresh the lists first, or a machine with stale lists
	# picks an old point release.
	apt_update
	k=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' | awk '{print $1}' | sort -V | tail -n1)
	[ -n "$k" ] || die "no linux-image-6.1.0-N-amd64 package known to apt"
	echo "${k#linux-image-}"
}

# extract_vmlinux VMLINUZ OUT: the uncompressed ELF from the XZ payload of a bzImage (for qemu's PVH entry).
extract_vmlinux() {
	local z=$1 out=$2 off
	# Every XZ magic in the file is a candidate (normally the first one is the payload).
	for off in $(LC_ALL=C grep -obUaP '\xfd\x37\x7a\x58\x5a\x00' "$z" | head -n 4 | cut -d: -f1); do
		# (xz reads a process substitution, not a pipe: tail gets SIGPIPE when xz stops after the stream, and
		# pipefail would call that a failure)
		if xz -dc --single-stream < <(tail -c +$((off + 1)) "$z") > "$out.tmp" 2>/dev/null &&
			[ "$(head -c 4 "$out.tmp" | od -An -c | tr -d ' ')" = '177ELF' ]; then
			mv "$out.tmp" "$out"
			return 0
		fi
	done
	rm -f "$out.tmp"
	return 1
}

prepare_kernel() {
	if [ -n "${BERTH_VM_KERNEL:-}" ]; then
		KVER=$BERTH_VM_KERNEL
	elif [ -z "${BERTH_VM_REFRESH:-}" ] && [ -s "$CACHE/current-kernel" ] &&
		[ -s "$CACHE/kernel/$(cat "$CACHE/current-kernel")/kernel.deb" ]; then
		KVER=$(cat "$CACHE/current-kernel")
	else
		KVER=$(newest_kernel)
	fi
	KDIR=$CACHE/kernel/$KVER
	# .ok holds the format of this directory: older ones are redone (from the kept .deb).
	if [ "$(cat "$KDIR/.ok" 2>/dev/null)" != "$KERNEL_FORMAT" ]; then
		local deb x m
		rm -f "$KDIR/.ok"
		mkdir -p "$KDIR"
		if [ ! -s "$KDIR/kernel.deb" ]; then
			log "fetching kernel linux-image-$KVER"
			deb=$(apt_download "$KDIR" "linux-image-$KVER")
			mv "$deb" "$KDIR/kernel.deb"
		fi
		x=$KDIR/x
		rm -rf "$x"
		dpkg-deb -x "$KDIR/kernel.deb" "$x"
		cp "$x/boot/vmlinuz-$KVER" "$KDIR/vmlinuz"
		cp "$x/boot/config-$KVER" "$KDIR/config"
		grep -q '^CONFIG_NET_9P_VIRTIO=[ym]' "$KDIR/config" || die "kernel $KVER has no 9p over virtio"
		# busybox depmod writes modules.dep and modules.alias (the package ships neither) but no modules.softdep:
		# take the softdep= strings out of the modules. Keep these lists, not the 390 MB tree.
		m=$x/lib/modules/$KVER
		"$BUSYBOX" depmod -b "$x" "$KVER"
		cp "$m/modules.dep" "$m/modules.alias" "$m/modules.builtin" "$KDIR/"
		(cd "$m" && LC_ALL=C grep -raoE --include='*.ko' 'softdep=[^[:cntrl:]]*' kernel) > "$KDIR/modules.softdep" || true
		rm -rf "$x"
		rm -f "$KDIR/vmlinux"
		if extract_vmlinux "$KDIR/vmlinuz" "$KDIR/vmlinux"; then :; else log "could not extract vmlinux; using bzImage"; fi
		echo "$KERNEL_FORMAT" > "$KDIR/.ok"
	fi
	echo "$KVER" > "$CACHE/current-kernel"
}

# ---------------------------------------------------------------------------------------------------------------
# busybox-static, downloaded (the host may have the conflicting dynamic busybox package)
# ---------------------------------------------------------------------------------------------------------------
prepare_busybox() {
	local d=$CACHE/busybox
	BUSYBOX=$d/busybox
	if [ -n "${BERTH_VM_REFRESH:-}" ] || [ ! -x "$BUSYBOX" ]; then
		log "fetching busybox-static"
		rm -rf "$d"
		mkdir -p "$d"
		local deb
		deb=$(apt_download "$d" busybox-static)
		dpkg-deb -x "$deb" "$d/x"
		cp "$d/x/bin/busybox" "$BUSYBOX.tmp"
		rm -rf "$d/x" "$deb"
		mv "$BUSYBOX.tmp" "$BUSYBOX"
	fi
}

# ---------------------------------------------------------------------------------------------------------------
# initramfs: busybox + /init + the needed modules, uncompressed (decompressing under TCG costs more than reading)
# ---------------------------------------------------------------------------------------------------------------
# module_closure NAME...: relative .ko paths of the modules NAME (module names or aliases) with their dependencies
# and soft dependencies, each after what it needs.
module_closure() {
	local -A path_of=() deps_of=() soft_of=() alias_of=() seen=()
	local line key name a
	while IFS= read -r line; do
		key=${line%%:*}
		name=${key##*/}
		name=${name%.ko*}
		path_of[${name//-/_}]=$key
		deps_of[$key]=${line#*:}
	done < "$KDIR/modules.dep"
	# "alias NAME MODULE" lines; only plain names matter here (e.g. crc32c -> crc32c_generic crc32c_intel).
	while read -r _ a name; do
		case "$a" in *[*?[]*) continue ;; esac
		alias_of[${a//-/_}]+=" ${name//-/_}"
	done < "$KDIR/modules.alias"
	# "kernel/lib/libcrc32c.ko:softdep=pre: crc32c" (pre and post both go first: loading early is harmless)
	while IFS= read -r line; do
		key=${line%%:softdep=*}
		a=${line#*:softdep=}
		a=${a//pre:/}
		soft_of[$key]+=" ${a//post:/}"
	done < "$KDIR/modules.softdep"
	resolve() { # NAME -> module names
		local n=${1//-/_}
		if [ -n "${path_of[$n]:-}" ]; then echo "$n"; else echo "${alias_of[$n]:-}"; fi
	}
	visit() {
		local p=$1 d n
		[ -z "${seen[$p]:-}" ] || return 0
		seen[$p]=1
		for d in ${soft_of[$p]:-}; do
			for n in $(resolve "$d"); do [ -z "${path_of[$n]:-}" ] || visit "${path_of[$n]}"; done
		done
		for d in ${deps_of[$p]:-}; do visit "$d"; done
		echo "$p"
	}
	local m n found
	for m in "$@"; do
		found=
		for n in $(resolve "$m"); do
			[ -n "${path_of[$n]:-}" ] && { visit "${path_of[$n]}"; found=1; }
		done
		[ -n "$found" ] && continue
		if tr '-' '_' < "$KDIR/modules.builtin" | grep -qE "/${m//-/_}\.ko$"; then
			:	# built into the kernel
		else
			log "module $m is not a module of $KVER (built in?); skipped"
		fi
	done
}

# strip_module_signatures DIR: drop the appended signatures of DIR/**.ko. Checking the RSA signature costs ~0.07 s
# per insmod under TCG (0.7 s for the base set); an unsigned module loads all the same (signatures are not enforced,
# the kernel only sets taint flag E).
strip_module_signatures() {
	local f size siglen magic='~Module signature appended~'
	while IFS= read -r f; do
		size=$(stat -c %s "$f")
		[ "$(tail -c 28 "$f" | head -c 27)" = "$magic" ] || continue
		# struct module_signature (12 bytes) ends with the signature's length, big-endian.
		siglen=$(tail -c 32 "$f" | head -c 4 | od -An -tu1 | awk '{ print (($1 * 256 + $2) * 256 + $3) * 256 + $4 }')
		truncate -s $((size - 28 - 12 - siglen)) "$f"
	done < <(find "$1" -name '*.ko')
}

prepare_initrd() {
	local mods key stage m
	mods="$BASE_MODULES ${BERTH_VM_MODULES:-}"
	mods=$(echo "$mods" | tr ',:' '  ' | xargs -n1 | awk '!s[$0]++' | xargs)
	key=$( { echo "format $INITRD_FORMAT/$KERNEL_FORMAT kernel $KVER modules $mods"; sha256sum "$BUSYBOX" "$VMDIR/init" | cut -d' ' -f1; } |
		sha256sum | cut -c1-16)
	INITRD=$CACHE/initrd/$key.cpio
	# (touched on use: images of other keys unused for a day are deleted when a new one is built)
	[ -s "$INITRD" ] && { touch "$INITRD"; return 0; }
	log "building initramfs ($mods)"
	mkdir -p "$CACHE/initrd"
	stage=$(mktemp -d "$CACHE/initrd/stage.XXXXXX")
	(
		cd "$stage"
		mkdir -p bin sbin usr/bin usr/sbin etc/berth-vm dev proc sys tmp run root mnt berth-vm/share \
			"lib/modules/$KVER"
		cp "$BUSYBOX" bin/busybox
		local a
		while IFS= read -r a; do
			case "$a" in bin/busybox|linuxrc|*/init) continue ;; esac
			mkdir -p "$(dirname "$a")"
			ln -sf /bin/busybox "$a"
		done < <("$BUSYBOX" --list-full)
		cp "$VMDIR/init" init
		chmod 755 init
		mknod -m 600 dev/console c 5 1
		mknod -m 666 dev/null c 1 3
		printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > etc/passwd
		printf 'root:x:0:\ntty:x:5:\nnogroup:x:65534:\n' > etc/group
		ln -s /proc/self/mounts etc/mtab
		mkdir -p var/tmp var/lib
		ln -s /run var/run
		printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tberth-vm\n' > etc/hosts
		echo berth-vm > etc/hostname
		# shellcheck disable=SC2086
		module_closure $mods > etc/berth-vm/modules
		local -a kos
		mapfile -t kos < <(sed "s|^|./lib/modules/$KVER/|" etc/berth-vm/modules)
		[ ${#kos[@]} -eq 0 ] || dpkg-deb --fsys-tarfile "$KDIR/kernel.deb" | tar -x -C "$stage" "${kos[@]}"
		strip_module_signatures "lib/modules/$KVER"
		"$BUSYBOX" depmod -b "$stage" "$KVER"
		find . -mindepth 1 | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc > "$INITRD.tmp" 2>/dev/null
	) || { rm -rf "$stage" "$INITRD.tmp"; die "building the initramfs failed"; }
	rm -rf "$stage"
	mv "$INITRD.tmp" "$INITRD"
	find "$CACHE/initrd" -name '*.cpio' ! -name "$key.cpio" -mtime +0 -delete 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------------------------------
# Prepare (under a lock: concurrent runners share the cache)
# ---------------------------------------------------------------------------------------------------------------
mkdir -p "$CACHE"
exec 9> "$CACHE/.lock"
flock 9
ensure_host_tools
prepare_busybox
prepare_kernel
prepare_initrd
flock -u 9
exec 9>&-

# ---------------------------------------------------------------------------------------------------------------
# The run's share: job, copied files, results
# ---------------------------------------------------------------------------------------------------------------
mkdir -p "$CACHE/runs"
# Share dirs of runs that were SIGKILLed.
find "$CACHE/runs" -mindepth 1 -maxdepth 1 -mmin +1440 -exec rm -rf {} + 2>/dev/null || true
RUN=$(mktemp -d "$CACHE/runs/run.XXXXXX")
SHARE=$RUN/share
mkdir -p "$SHARE/root"
QPID=
cleanup() {
	[ -z "$QPID" ] || kill "$QPID" 2>/dev/null || true
	if [ -n "${BERTH_VM_KEEP:-}" ]; then log "kept $RUN"; else rm -rf "$RUN"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# q WORD: WORD single-quoted for sh.
q() { local s=${1//\'/\'\\\'\'}; printf "'%s'" "$s"; }

abspath() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }

declare -A COPIED=()
# mirror PATH: copy a host file or directory to the same absolute path under the share's root/.
mirror() {
	local p=$1 dst
	p=$(abspath "$p")
	[ -z "${COPIED[$p]:-}" ] || return 0
	COPIED[$p]=1
	dst=$SHARE/root$p
	mkdir -p "$(dirname "$dst")"
	if [ -d "$p" ]; then
		cp -a --reflink=auto "$p" "$dst"
	else
		cp -L --preserve=mode,timestamps --reflink=auto "$p" "$dst"
	fi
	printf '%s\n' "$p" >> "$SHARE/files"
}
# mirror_libs FILE: the shared libraries and loader that ldd lists for an ELF file (nothing for scripts).
mirror_libs() {
	local lib
	while IFS= read -r lib; do
		[ -n "$lib" ] && [ -e "$lib" ] && mirror "$lib"
	done < <(ldd "$1" 2>/dev/null | awk '/=>/ { if ($3 ~ /^\//) print $3; next } $1 ~ /^\// { print $1 }')
}

: > "$SHARE/files"
BIN=$(abspath "$1")
shift
mirror "$BIN"
mirror_libs "$BIN"
if [ -n "${BERTH_VM_EXTRA:-}" ]; then
	IFS=: read -r -a extras <<< "$BERTH_VM_EXTRA"
	for x in "${extras[@]}"; do
		[ -n "$x" ] || continue
		[ -e "$x" ] || die "BERTH_VM_EXTRA: no such file: $x"
		mirror "$x"
		[ -f "$x" ] && mirror_libs "$x"
	done
fi

# The environment of the binary: a fixed base plus selected host variables.
envs=("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" "HOME=/root" "USER=root" "LOGNAME=root"
	"RUST_BACKTRACE=${RUST_BACKTRACE:-1}" "BERTH_IN_VM=1")
extra_names=" $(echo "${BERTH_VM_ENV:-}" | tr ',:' '  ') "
while IFS= read -r name; do
	case "$name" in
	RUST_BACKTRACE | BERTH_VM_* | BERTH_IN_VM) continue ;;
	RUST_* | BERTH_* | LD_LIBRARY_PATH | TERM | NO_COLOR | CLICOLOR* | TZ | NEXTEST_* | \
		CARGO_MANIFEST_DIR | CARGO_MANIFEST_PATH | CARGO_PKG_* | CARGO_CRATE_NAME | CARGO_BIN_NAME | \
		CARGO_PRIMARY_PACKAGE | CARGO_TARGET_TMPDIR) ;;
	*) case "$extra_names" in *" $name "*) ;; *) continue ;; esac ;;
	esac
	envs+=("$name=${!name}")
done < <(compgen -e)

CWD_SHARE=${BERTH_VM_CWD_SHARE:-rw}
case "$PWD" in /|/proc|/proc/*|/sys|/sys/*|/dev|/dev/*) CWD_SHARE=0 ;; esac
TTY=0
[ -t 1 ] && TTY=1
TARGET_TMPDIR=
case "$BIN" in */target/*/deps/*) TARGET_TMPDIR=${BIN%/*/deps/*}/tmp ;; esac

{
	echo "BERTH_VM_CWD=$(q "$PWD")"
	echo "BERTH_VM_CWD_SHARE=$(q "$CWD_SHARE")"
	echo "BERTH_VM_TTY=$TTY"
	echo "BERTH_VM_TARGET_TMPDIR=$(q "$TARGET_TMPDIR")"
	printf 'set --'
	for e in "${envs[@]}"; do printf ' %s' "$(q "$e")"; done
	printf ' %s' "$(q "$BIN")"
	for a in "$@"; do printf ' %s' "$(q "$a")"; done
	echo
} > "$SHARE/job"

# ---------------------------------------------------------------------------------------------------------------
# Boot
# ---------------------------------------------------------------------------------------------------------------
# qemu option values: a comma is written twice.
qv() { echo "${1//,/,,}"; }

# Guest output: hvc0 (virtio console) = the binary's stdout, hvc1 = its stderr, ttyS0 = the kernel console and
# init's messages, kept in $RUN/console.log and shown when the VM fails (streamed live with BERTH_VM_DEBUG=1). A
# 16550 under TCG moves only ~200 KB/s; the virtio consoles are ~20x faster. Each goes through a FIFO relayed by cat,
# never straight to our stdio: qemu's stdio chardev sets O_NONBLOCK on the shared file description, which makes
# cargo's (or a CI log writer's) next write fail with EAGAIN.
mkfifo "$RUN/out" "$RUN/err" "$RUN/log"
BOOT_TIMEOUT=${BERTH_VM_BOOT_TIMEOUT:-120}

# run_vm KERNEL_IMAGE: boots once; sets VM_RC (qemu's exit; 124 on timeout, 123 when the job had not started after
# BOOT_TIMEOUT seconds) and VM_SECS.
run_vm() {
	local kimg=$1 append t0
	append="console=ttyS0 panic=-1 oops=panic cgroup_no_v1=all mitigations=off tsc=reliable no_timer_check"
	append+=" i8042.noaux i8042.nokbd i8042.nopnp"
	# quiet: the console gets KERN_ERR and worse (panics, oopses, OOM kills, lockups, RCU stalls).
	if [ -n "${BERTH_VM_DEBUG:-}" ]; then append+=" loglevel=7 berth.debug=1"; else append+=" quiet"; fi
	# shellcheck disable=SC2054 # (commas inside qemu option values)
	local qemu=(qemu-system-x86_64 -nodefaults -no-user-config -display none -no-reboot
		-accel "$ACCEL" -cpu "${BERTH_VM_CPU:-max}" -m "$MEM" -smp "$SMP"
		-kernel "$(qv "$kimg")" -initrd "$(qv "$INITRD")" -append "$append"
		-chardev "file,id=log,path=$(qv "$RUN/log")" -serial chardev:log
		-device virtio-serial-pci,max_ports=2
		-chardev "file,id=out,path=$(qv "$RUN/out")" -device virtconsole,chardev=out
		-chardev "file,id=err,path=$(qv "$RUN/err")" -device virtconsole,chardev=err
		-virtfs "local,path=$(qv "$SHARE"),mount_tag=host0,security_model=none")
	[ "$CWD_SHARE" = 0 ] || qemu+=(-virtfs "local,path=$(qv "$PWD"),mount_tag=cwd,security_model=none")
	# Hold the FIFOs open read-write ourselves, so the relays' opens never block, and they see EOF once qemu is gone
	# and we close them, even if qemu never opened them.
	exec 5<> "$RUN/out" 6<> "$RUN/err" 7<> "$RUN/log"
	cat "$RUN/out" 5>&- 6>&- 7>&- &
	local cat_out=$!
	cat "$RUN/err" 5>&- 6>&- 7>&- >&2 &
	local cat_err=$!
	if [ -n "${BERTH_VM_DEBUG:-}" ]; then
		tee -a "$RUN/console.log" < "$RUN/log" 5>&- 6>&- 7>&- >&2 &
	else
		cat "$RUN/log" 5>&- 6>&- 7>&- >> "$RUN/console.log" &
	fi
	local cat_log=$!
	t0=$(now)
	timeout -k 10 "$TIMEOUT" "${qemu[@]}" </dev/null >&2 5>&- 6>&- 7>&- &
	QPID=$!
	# Boot watchdog: a TCG guest on a loaded host has been seen to hang in boot, rarely; such a boot is killed
	# (and retried by the caller) instead of eating the whole BERTH_VM_TIMEOUT.
	local booted='' start=$SECONDS
	while [ -z "$booted" ] && kill -0 "$QPID" 2>/dev/null; do
		if [ -e "$SHARE/started" ]; then
			booted=1
		else
			if [ $((SECONDS - start)) -ge "$BOOT_TIMEOUT" ]; then
				log "the guest did not start the job within ${BOOT_TIMEOUT}s (BERTH_VM_BOOT_TIMEOUT); killing it"
				kill "$QPID" 2>/dev/null || true
				booted=hung
			else
				sleep 0.1
			fi
		fi
	done
	set +e
	wait "$QPID"
	VM_RC=$?
	set -e
	[ "$booted" != hung ] || VM_RC=123
	QPID=
	VM_SECS=$(elapsed "$t0" "$(now)")
	exec 5>&- 6>&- 7>&-
	wait "$cat_out" "$cat_err" "$cat_log" 2>/dev/null || true
}

show_console_log() {
	[ -z "${BERTH_VM_DEBUG:-}" ] || return 0	# it was streamed
	if [ -s "$RUN/console.log" ]; then
		log "guest console (kernel errors, init messages), last 60 lines:"
		tail -n 60 "$RUN/console.log" | sed 's/^/  | /' >&2
	else
		log "the guest console is empty (no kernel error reported)"
	fi
	: > "$RUN/console.log"
}

KIMG=$KDIR/vmlinuz
PVH=0
if [ -s "$KDIR/vmlinux" ] && [ ! -e "$KDIR/pvh-broken" ]; then KIMG=$KDIR/vmlinux; PVH=1; fi
T_PREP=$(elapsed "$T0" "$(now)")
run_vm "$KIMG"
if [ ! -e "$SHARE/started" ] && [ "$VM_RC" != 124 ]; then
	show_console_log
	if [ $PVH = 1 ] && [ "$VM_RC" != 123 ]; then
		log "the VM did not come up from the ELF vmlinux (PVH entry, qemu exit $VM_RC); retrying with the bzImage"
		KIMG=$KDIR/vmlinuz
	else
		log "retrying the boot once"
	fi
	run_vm "$KIMG"
	if [ -e "$SHARE/started" ] && [ $PVH = 1 ] && [ "$KIMG" = "$KDIR/vmlinuz" ]; then touch "$KDIR/pvh-broken"; fi
fi

timing=
if [ -s "$SHARE/timing" ]; then
	read -r up end < "$SHARE/timing"
	timing=" (guest: boot ${up}s, test $(elapsed "$up" "$end")s)"
fi
if [ -s "$SHARE/exitcode" ]; then
	rc=$(cat "$SHARE/exitcode")
	[ -n "${BERTH_VM_QUIET:-}" ] || log "$(basename "$BIN") exited $rc; prep ${T_PREP}s, VM ${VM_SECS}s$timing"
	exit "$rc"
fi
show_console_log
if [ "$VM_RC" = 124 ]; then
	log "error: timed out after ${TIMEOUT}s (BERTH_VM_TIMEOUT); the test $([ -e "$SHARE/started" ] && echo "was running" || echo "had not started")"
	exit 124
fi
if [ -e "$SHARE/started" ]; then
	die "the test started but its exit code never came back (guest crash or panic? qemu exit $VM_RC; BERTH_VM_DEBUG=1 shows the whole kernel log)"
fi
die "the VM failed to boot or to run the test (qemu exit $VM_RC; BERTH_VM_DEBUG=1 shows the whole kernel log)"
