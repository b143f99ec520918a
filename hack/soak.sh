#!/usr/bin/env bash
# Crash soak: random pod, container, exec and image operations against a berthd of this tree that is
# SIGKILLed at random moments and restarted, then a clean shutdown and a leak check (mounts, pins, veths,
# nft rules, cgroups, shims, zombies, store records, blobs, snapshots). It is the integration test
# integration/tests/crash_soak.rs (200 operations in `cargo test`) run for a duration.
#
# Usage: hack/soak.sh [SECONDS] [--seed N] [--report FILE]     (default 1800 s, report soak-report.json)
# Environment: BERTH_SKIP_DEPS=1 skips hack/install-deps.sh.
set -euo pipefail
shopt -s inherit_errexit

HACK=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HACK")
secs=1800 seed="" report=$PWD/soak-report.json
while (($#)); do
	case $1 in
	--seed) seed=$2; shift ;;
	--report) report=$2; shift ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; exit 0 ;;
	[0-9]*) secs=$1 ;;
	*) echo "soak.sh: unknown argument $1" >&2; exit 2 ;;
	esac
	shift
done

[[ ${BERTH_SKIP_DEPS:-0} == 1 ]] || "$HACK/install-deps.sh" --no-tools
cd "$REPO"
# The test starts the berthd and berth-shim binaries of the workspace: build them first.
cargo build --workspace --bins
export BERTH_SOAK_SECS=$secs BERTH_SOAK_REPORT=$report
[[ -z $seed ]] || export BERTH_SOAK_SEED=$seed
rc=0
cargo test -p berth-integration --test crash_soak -- --nocapture || rc=$?
if [[ -f $report ]]; then
	echo "soak report ($report):"
	cat "$report"
fi
exit "$rc"
