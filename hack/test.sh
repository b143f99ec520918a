#!/usr/bin/env bash
# Everything CI runs (.ci/run calls this): dependencies, lint, build, the critest subset, every cargo test.
# Run as root on a Debian 12 machine: the tests make real namespaces, mounts, cgroups and links.
set -euo pipefail
shopt -s inherit_errexit

HACK=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HACK")
cd "$REPO"
step() { printf '\n=== %s\n' "$*"; }

step "dependencies"
"$HACK/install-deps.sh"

step "format and lint"
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
shellcheck -x hack/*.sh .ci/run

step "build"
cargo build --workspace --all-targets --quiet

step "critest: the specs that must keep passing (hack/critest-expected-pass.txt)"
BERTH_SKIP_DEPS=1 "$HACK/critest.sh" --ci

step "the static shim (hack/build-shim.sh, what bench.sh and the demo run) passes the container tests"
BERTH_SHIM=$("$HACK/build-shim.sh") cargo test -p berth-isolation --test containers

step "bench, reduced: berth and containerd side by side, 5 pods (hack/bench.sh --ci)"
"$HACK/bench.sh" --ci

step "cgroup v2, for real, in a VM (this host is cgroup v1)"
"$HACK/install-deps.sh" --vm --no-tools --no-debs
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$HACK/vm-test.sh" cargo test -p berth-cgroups --test v2
# berthd itself on cgroup v2: its binaries and the test images' OCI layout (built by the critest step) go along.
bin=$(cd "${CARGO_TARGET_DIR:-$HACK/../target}/debug" && pwd)
BERTH_VM_EXTRA="$bin/berthd:$bin/berth-shim:${BERTH_TEST_IMAGES_WORKDIR:-/var/cache/berth-test-images}/oci-base" \
	CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$HACK/vm-test.sh" cargo test -p berth-integration --test vm_smoke

step "fuzz: each cargo-fuzz target for 30 s (nightly)"
"$HACK/fuzz.sh" 30

step "cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --no-fail-fast 2>&1 | tee "$log"
# One closing line for the whole run (cargo prints one per test binary, the last often a doc-test's "0 passed").
awk '/^test result:/ { p += $4; f += $6; s += $8 } END { printf "total: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
