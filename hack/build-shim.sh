#!/usr/bin/env bash
# Builds the release berth-shim the way it is meant to run: the `shim` profile (opt-level z, fat LTO,
# panic=abort, stripped) linked as a static PIE, so a pod shim maps no shared libraries (VmRSS under 1 MiB).
# Prints the binary's path; point `[isolation] shim_path` in berthd's config at it (berthd otherwise runs the
# dynamically linked `berth-shim` next to its own executable).
#
# Usage: hack/build-shim.sh
#
# Why GNU ld: rust-lld (rustc's default linker on x86_64-unknown-linux-gnu since 1.90) keeps undefined weak
# symbols (`__pthread_key_create`, `__gmon_start__`…) as dynamic relocations in a static PIE. glibc's static-PIE
# self-relocation resolves every symbol to the executable itself, so they become the load address instead of
# NULL and the binary jumps there and dies with SIGSEGV before main. GNU ld resolves them to 0 at link time.
# Only this binary gets these flags (`cargo rustc`): build scripts and proc macros stay dynamic.
set -euo pipefail
shopt -s inherit_errexit

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
cargo rustc --quiet -p berth-isolation --bin berth-shim --profile shim -- \
	-C target-feature=+crt-static -C linker-features=-lld
target=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
shim=$target/shim/berth-shim
if readelf -lW "$shim" | grep -q INTERP; then
	echo "build-shim.sh: $shim is dynamically linked" >&2
	exit 1
fi
echo "$shim"
