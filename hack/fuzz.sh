#!/usr/bin/env bash
# Runs every cargo-fuzz target in the repository (each crate's fuzz/ directory) for a bounded time: CI's short
# fuzzing pass. Installs what it needs: a nightly toolchain (minimal profile) and cargo-fuzz from crates.io.
# A crash fails the run and leaves its input under <crate>/fuzz/artifacts/<target>/.
# Usage: hack/fuzz.sh [SECONDS per target, default 30]
set -euo pipefail
shopt -s inherit_errexit

secs=${1:-30}
HACK=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HACK")

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

corpus=$(mktemp -d)
trap 'rm -rf "$corpus"' EXIT
for fuzz in "$REPO"/*/fuzz; do
  cd "$(dirname "$fuzz")"
  targets=$(cargo +nightly fuzz list)
  for target in $targets; do
    # Seeds (captured real traffic) when the crate has them: fuzz/seeds/<target>.
    seeds=()
    if [[ -d $fuzz/seeds/$target ]]; then
      seeds=("$fuzz/seeds/$target")
    fi
    mkdir -p "$corpus/$target"
    printf '=== fuzzing %s/%s for %s s\n' "$(basename "$PWD")" "$target" "$secs"
    cargo +nightly fuzz run "$target" "$corpus/$target" "${seeds[@]}" -- \
      -max_total_time="$secs" -timeout=10 -print_final_stats=1
  done
done
