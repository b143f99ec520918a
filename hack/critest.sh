#!/usr/bin/env bash
# Runs the CRI validation suite (critest, pinned by hack/install-deps.sh) against a berthd of this tree on a
# private root, state and socket, then prints the totals and the failing specs, and cleans up what it started.
#
# Usage: hack/critest.sh [--ci] [--focus REGEX] [--skip REGEX] [--report FILE] [--no-images] [--release]
#   --ci         run only the specs in hack/critest-expected-pass.txt and fail when any of them does not pass
#   --focus/--skip   ginkgo regexes selecting specs (default: all)
#   --report     where to write critest's JSON report (default: in the temp dir, path printed)
#   --no-images  do not start the local registry nor build the test images
#   --release    build and run a release berthd
# Environment: BERTH_SKIP_DEPS=1 skips hack/install-deps.sh; BERTH_KEEP=1 keeps the logs of a passing run
# (a failing run always keeps them); BERTH_TOOLS_BIN as in install-deps.sh.
set -euo pipefail
shopt -s inherit_errexit

HACK=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HACK")
TOOLS=${BERTH_TOOLS_BIN:-/usr/local/bin}
EXPECTED=$HACK/critest-expected-pass.txt
ci=0 focus="" skip="" report="" images=1 profile=debug
while (($#)); do
	case $1 in
	--ci) ci=1 ;;
	--focus) focus=$2; shift ;;
	--skip) skip=$2; shift ;;
	--report) report=$2; shift ;;
	--no-images) images=0 ;;
	--release) profile=release ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "critest.sh: unknown argument $1" >&2; exit 2 ;;
	esac
	shift
done

log() { printf '[critest] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ ${BERTH_SKIP_DEPS:-0} == 1 ]] || "$HACK/install-deps.sh"
[[ -x $TOOLS/critest && -x $TOOLS/crictl ]] || die "critest/crictl not in $TOOLS (run hack/install-deps.sh)"

log "building berthd ($profile)"
cargo_flags=(--bins)
[[ $profile == release ]] && cargo_flags+=(--release)
(cd "$REPO" && cargo build --workspace "${cargo_flags[@]}" --quiet)
target=$(cd "$REPO" && cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
berthd=$target/$profile/berthd
[[ -x $berthd ]] || die "no berthd at $berthd"

if ((images)); then
	"$HACK/local-registry.sh" start
	"$HACK/make-test-images.sh"
fi

tmp=$(mktemp -d /tmp/berth-critest.XXXXXX)
# Host objects of this run, removed at exit: a bridge and CIDR of its own, a cgroup parent of its own.
bridge=bcrit$$
cgroup_parent=/berth-critest-$$
sock=$tmp/berth.sock
berthd_pid=""
cleanup() {
	local rc=$?
	if [[ -n $berthd_pid ]] && kill -0 "$berthd_pid" 2>/dev/null; then
		kill -TERM "$berthd_pid" 2>/dev/null || true
		for _ in $(seq 100); do kill -0 "$berthd_pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$berthd_pid" 2>/dev/null || true
	fi
	# Shims of pods critest left outlive berthd by design; these are this run's (they name its state dir).
	pkill -KILL -f -- "--state $tmp/state" 2>/dev/null || true
	sleep 0.2
	"$HACK/cleanup-host.sh" "$bridge" "$cgroup_parent"
	# Anything still mounted under the temp dir (pinned namespaces, rootfs) goes before the dir.
	{ grep -o " ${tmp}[^ ]*" /proc/self/mountinfo || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
	if ((rc != 0)) || [[ ${BERTH_KEEP:-0} == 1 ]]; then
		log "logs kept in $tmp (berthd.log, critest.log, report.json, passed.txt)"
	else
		rm -rf "$tmp"
	fi
	exit "$rc"
}
trap cleanup EXIT

"$HACK/mirror-config.sh" "$tmp/certs.d"
cat >"$tmp/config.toml" <<TOML
[registry]
config_path = "$tmp/certs.d"
[bridge]
bridge = "$bridge"
cidr = "10.$((90 + RANDOM % 10)).$((RANDOM % 250)).0/24"
[cgroups]
default_parent = "$cgroup_parent"
TOML
RUST_LOG=${RUST_LOG:-info} "$berthd" --config "$tmp/config.toml" --root "$tmp/root" --state "$tmp/state" \
	--socket "$sock" >"$tmp/berthd.log" 2>&1 &
berthd_pid=$!
for _ in $(seq 300); do
	kill -0 "$berthd_pid" 2>/dev/null || { cat "$tmp/berthd.log" >&2; die "berthd exited at start"; }
	"$TOOLS/crictl" --runtime-endpoint "unix://$sock" version >/dev/null 2>&1 && break
	sleep 0.1
done
"$TOOLS/crictl" --runtime-endpoint "unix://$sock" version >/dev/null 2>&1 || die "berthd did not answer in 30 s"

if ((ci)); then
	[[ -f $EXPECTED ]] || die "no $EXPECTED"
	# One regex of every expected spec's full text, metacharacters escaped.
	focus=$(grep -v '^\s*\(#\|$\)' "$EXPECTED" | sed -e 's/[][\\.^$*+?(){}|/]/\\&/g' | paste -sd'|' -)
	if [[ -z $focus ]]; then
		log "the expected-pass list is empty: nothing to check"
		exit 0
	fi
fi

json=${report:-$tmp/report.json}
args=(--runtime-endpoint "unix://$sock" --image-endpoint "unix://$sock" --ginkgo.no-color
	"--ginkgo.json-report=$json")
[[ -n $focus ]] && args+=("--ginkgo.focus=$focus")
[[ -n $skip ]] && args+=("--ginkgo.skip=$skip")
log "running critest (log: $tmp/critest.log)"
set +e
(cd "$tmp" && "$TOOLS/critest" "${args[@]}") >"$tmp/critest.log" 2>&1
critest_rc=$?
set -e
kill -0 "$berthd_pid" 2>/dev/null || { tail -50 "$tmp/berthd.log" >&2; die "berthd died during critest"; }
[[ -s $json ]] || { tail -50 "$tmp/critest.log" >&2; die "critest crashed (exit $critest_rc) and wrote no report"; }

# Spec names as "hierarchy texts + leaf text", one per line, with their state.
jq -r '.[].SpecReports[] | select(.LeafNodeType == "It")
	| [.State, ((.ContainerHierarchyTexts + [.LeafNodeText]) | join(" "))] | @tsv' "$json" >"$tmp/specs.tsv"
passed=$(awk -F'\t' '$1 == "passed"' "$tmp/specs.tsv" | wc -l)
failed=$(awk -F'\t' '$1 == "failed" || $1 == "panicked" || $1 == "timedout" || $1 == "aborted"' "$tmp/specs.tsv" | wc -l)
skipped=$(awk -F'\t' '$1 == "skipped" || $1 == "pending"' "$tmp/specs.tsv" | wc -l)
if ((failed)); then
	log "failing specs:"
	awk -F'\t' '$1 != "passed" && $1 != "skipped" && $1 != "pending" { print "  - " $2 }' "$tmp/specs.tsv" >&2
fi
awk -F'\t' '$1 == "passed" { print $2 }' "$tmp/specs.tsv" | sort >"$tmp/passed.txt"

status=0
if ((ci)); then
	missing=$(grep -v '^\s*\(#\|$\)' "$EXPECTED" | sort | comm -23 - "$tmp/passed.txt")
	if [[ -n $missing ]]; then
		log "specs that passed before and do not now:"
		printf '  - %s\n' "$missing" >&2
		status=1
	fi
fi
echo "critest: $passed passed, $failed failed, $skipped skipped"
if ((ci == 0)) && [[ -z $focus && -z $skip ]]; then
	# A full run is the figure README.md shows.
	{
		printf 'critest %s, every spec, %s at berth %s: **%d passed, %d failed, %d skipped**.\n' \
			"$("$TOOLS/critest" --version 2>/dev/null | awk 'NR == 1 { print $NF }')" "$(date -u +%F)" \
			"$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown)" "$passed" "$failed" "$skipped"
		if ((failed)); then
			printf '\nFailing:\n'
			awk -F'\t' '$1 != "passed" && $1 != "skipped" && $1 != "pending" { print "- " $2 }' "$tmp/specs.tsv"
		fi
	} | "$HACK/readme-section.sh" critest "$REPO/README.md"
	log "README.md critest totals updated"
fi
((ci)) || ((failed == 0)) || status=0 # a full run reports honestly; only --ci gates
exit "$status"
