#!/usr/bin/env bash
# berth against Debian's containerd 1.6 (+ runc, CNI bridge/host-local/portmap), in one run, on the same images.
# Each runtime is started by this script on a private root, state, socket, bridge, CIDR and cgroup parent, measured,
# then stopped and cleaned up (also on failure or Ctrl-C). Per runtime, in this order:
#   1. daemon memory idle;
#   2. pods one after the other, each with one container: pod ready (RunPodSandbox) and container create+start
#      latency; daemon and shim memory (RSS, PSS from smaps_rollup) at 1, 5, 10, 25, 50 and all pods;
#   3. rounds of pods started at once, the same latencies;
#   4. exec probes: --probe-pods pods, ExecSync `true` in each container every second for --probe-secs s; the
#      CPU time of the daemon and its shims (with their reaped children: runc for containerd) per 1000 probes;
#   5. a cold pull + unpack of --pull-image (wall time, daemon peak RSS), not for berth-cni (same image code);
#   6. critest --benchmark (pod, container and image lifecycles), p50/p90 per operation.
# Steps 1-5 are integration/src/bin/berth-bench.rs (a gRPC client on one connection, as kubelet); the table, the
# berth/containerd ratios and the plots are hack/bench-report.py.
#
# Usage: hack/bench.sh [--ci] [--pods N] [--concurrent N] [--rounds N] [--probe-pods N] [--probe-secs N]
#                      [--runtimes LIST] [--out DIR] [--no-plots] [--no-readme]
#   --ci          reduced run that CI uses so the script cannot rot: debug build, 5 pods, 5 concurrent, 1 round,
#                 3 probed pods for 5 s, a small pull image, 3 critest iterations, berth and containerd only, no
#                 plots, README untouched
#   --pods N      sequential pods (default 100)
#   --concurrent N  pods started at once per round (default 20); --rounds N rounds (default 3)
#   --probe-pods N  pods probed with ExecSync every second (default 20); --probe-secs N for how long (default 30)
#   --runtimes    comma-separated, from berth, berth-cni, containerd (default all three)
#   --out DIR     results: raw JSON, table.md, PNG plots (default bench-results/ in the repo, --ci: bench-results/ci)
#   --no-plots    skip the PNG plots (they need python3-matplotlib, installed when missing)
#   --no-readme   do not write hack/bench-results.md and README.md's bench section (a full run does)
# Environment: BERTH_SKIP_DEPS=1 skips hack/install-deps.sh; BERTH_TOOLS_BIN as in install-deps.sh;
# BENCH_PULL_IMAGE overrides the cold-pull image (default berth-test/big, ~200 MB, built here when missing);
# BENCH_BERTHD runs that berthd binary instead of the one built from this tree (another build, say).
set -euo pipefail
shopt -s inherit_errexit

HACK=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HACK")
TOOLS=${BERTH_TOOLS_BIN:-/usr/local/bin}
REGISTRY=${LOCAL_REGISTRY_ADDR:-127.0.0.1:5000}
IMAGE=registry.k8s.io/e2e-test-images/busybox:1.29-2
PAUSE=registry.k8s.io/pause:3.9

ci=0 pods=100 concurrent=20 rounds=3 probe_pods=20 probe_secs=30 runtimes=berth,berth-cni,containerd out=$REPO/bench-results plots=1 readme=1
pull_image=${BENCH_PULL_IMAGE:-$REGISTRY/berth-test/big:latest}
while (($#)); do
	case $1 in
	--ci) ci=1 pods=5 concurrent=5 rounds=1 probe_pods=3 probe_secs=5 runtimes=berth,containerd plots=0 readme=0 out=$REPO/bench-results/ci
		pull_image=${BENCH_PULL_IMAGE:-registry.k8s.io/e2e-test-images/nginx:1.14-2} ;;
	--pods) pods=$2; shift ;;
	--concurrent) concurrent=$2; shift ;;
	--rounds) rounds=$2; shift ;;
	--probe-pods) probe_pods=$2; shift ;;
	--probe-secs) probe_secs=$2; shift ;;
	--runtimes) runtimes=$2; shift ;;
	--out) out=$2; shift ;;
	--no-plots) plots=0 ;;
	--no-readme) readme=0 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "bench.sh: unknown argument $1" >&2; exit 2 ;;
	esac
	shift
done
for n in "$pods" "$concurrent" "$rounds" "$probe_pods" "$probe_secs"; do [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "bench.sh: counts must be positive integers" >&2; exit 2; }; done

# Debian's python (python3-matplotlib is installed for it), not one an environment put first on PATH.
PY=/usr/bin/python3
[[ -x $PY ]] || PY=python3
log() { printf '[bench] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

IFS=, read -ra RUNTIMES <<<"$runtimes"
for r in "${RUNTIMES[@]}"; do
	case $r in berth | berth-cni | containerd) ;; *) die "unknown runtime '$r' (berth, berth-cni, containerd)" ;; esac
done

if [[ ${BERTH_SKIP_DEPS:-0} != 1 ]]; then
	"$HACK/install-deps.sh" --bench --no-debs
	if ((plots)) && ! "$PY" -c 'import matplotlib' 2>/dev/null; then
		log "installing python3-matplotlib for the plots"
		DEBIAN_FRONTEND=noninteractive apt-get -y -q --no-install-recommends install python3-matplotlib >/dev/null ||
			die "could not install python3-matplotlib (or run with --no-plots)"
	fi
fi
[[ -x $TOOLS/critest && -x $TOOLS/crictl ]] || die "critest/crictl not in $TOOLS (run hack/install-deps.sh)"
crictl_bin=$TOOLS/crictl critest_bin=$TOOLS/critest
for r in "${RUNTIMES[@]}"; do
	if [[ $r == containerd ]]; then
		for b in containerd containerd-shim-runc-v2 runc; do command -v "$b" >/dev/null || die "$b missing (hack/install-deps.sh --bench)"; done
	fi
	if [[ $r == containerd || $r == berth-cni ]]; then
		for b in bridge host-local portmap loopback; do [[ -x /usr/lib/cni/$b ]] || die "CNI plugin /usr/lib/cni/$b missing (Debian containernetworking-plugins)"; done
	fi
done
((plots == 0)) || "$PY" -c 'import matplotlib' 2>/dev/null || die "python3-matplotlib missing (or run with --no-plots)"

target=$(cd "$REPO" && cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
if ((ci)); then
	# CI has just built the debug binaries; its figures only prove the script still runs.
	log "building berthd, berth-shim and the driver (debug)"
	(cd "$REPO" && cargo build --quiet -p berth-cri --bin berthd -p berth-integration --bin berth-bench \
		-p berth-isolation --bin berth-shim)
	berthd=$target/debug/berthd driver=$target/debug/berth-bench shim=$target/debug/berth-shim
else
	log "building berthd (release), berth-shim (static, shim profile: hack/build-shim.sh) and the driver"
	(cd "$REPO" && cargo build --release --quiet -p berth-cri --bin berthd -p berth-integration --bin berth-bench)
	shim=$("$HACK/build-shim.sh")
	berthd=$target/release/berthd driver=$target/release/berth-bench
fi
berthd=${BENCH_BERTHD:-$berthd}
for b in "$berthd" "$driver" "$shim"; do [[ -x $b ]] || die "not built: $b"; done

"$HACK/local-registry.sh" start
if [[ $pull_image == "$REGISTRY/berth-test/big:latest" ]]; then
	"$HACK/make-test-images.sh" --big
else
	"$HACK/make-test-images.sh"
fi
# The images every runtime pulls must be served (a missing one fails here, not halfway through a runtime).
manifest_of() { # REF(local registry form) -> prints the manifest, fails when the registry lacks it
	local repo=${1#"$REGISTRY"/} tag=latest
	[[ $repo == *:* ]] && { tag=${repo##*:}; repo=${repo%:*}; }
	curl -fsS -H 'Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json' \
		"http://$REGISTRY/v2/$repo/manifests/$tag"
}
local_ref() { # upstream ref -> the local registry's name for it (hosts stripped like hack/mirror-config.sh)
	case $1 in
	"$REGISTRY"/*) echo "$1" ;;
	*.*/* | *:*/*) echo "$REGISTRY/${1#*/}" ;;
	*) echo "$REGISTRY/$1" ;;
	esac
}
for ref in "$IMAGE" "$PAUSE" "$pull_image"; do
	manifest_of "$(local_ref "$ref")" >/dev/null || die "the local registry does not serve $ref (hack/make-test-images.sh)"
done
# Read the pull image's blobs once so that neither runtime pays for a cold page cache of the registry's disk.
pull_local=$(local_ref "$pull_image") pull_repo=${pull_local#"$REGISTRY"/}
pull_repo=${pull_repo%:*}
manifest_of "$pull_local" | jq -r '.config.digest, (.layers // [] | .[].digest)' | while read -r d; do
	curl -fsS -o /dev/null "http://$REGISTRY/v2/$pull_repo/blobs/$d"
done

mkdir -p "$out"
out=$(cd "$out" && pwd)
tmp=$(mktemp -d /tmp/berth-bench.XXXXXX)
id=$(($$ % 100000))
cg_parent=/berth-bench-$id
daemon_pid="" cur_sock="" cur_dir="" cur_bridge=""

# Stops the current runtime and removes everything it made: its pods (through CRI, so that netns, iptables
# rules and host-local leases go too), the daemon, leftover shims of this run, mounts under its dir, its bridge
# and nft table, the cgroup parent.
stop_runtime() {
	[[ -n $cur_dir ]] || return 0
	if [[ -n $daemon_pid ]] && kill -0 "$daemon_pid" 2>/dev/null; then
		timeout 120 "$crictl_bin" --runtime-endpoint "unix://$cur_sock" --timeout 60s rmp -af >/dev/null 2>&1 || true
		kill -TERM "$daemon_pid" 2>/dev/null || true
		for _ in $(seq 100); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$daemon_pid" 2>/dev/null || true
		wait "$daemon_pid" 2>/dev/null || true
	fi
	daemon_pid=""
	# This run's shims only: they name this runtime's private state dir or socket on their command line.
	pkill -KILL -f -- "--state $cur_dir/state" 2>/dev/null || true
	pkill -KILL -f -- "-address $cur_sock" 2>/dev/null || true
	sleep 0.2
	"$HACK/cleanup-host.sh" "$cur_bridge" "$cg_parent"
	{ grep -o " ${cur_dir}[^ ]*" /proc/self/mountinfo || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
	cur_dir=""
}
cleanup() {
	local rc=$?
	stop_runtime
	# critest's own pods ask for /system.slice when RuntimeConfig is unimplemented (containerd 1.6); runc removes
	# those cgroups with the pods, nothing to do here.
	if ((rc != 0)); then
		log "failed; logs kept in $tmp"
	else
		rm -rf "$tmp"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A /24 of 10.80-89.x.0 per runtime: away from the tests' (10.100-199) and critest.sh's (10.90-99).
cidr() { echo "10.$((80 + RANDOM % 10)).$((RANDOM % 250)).0/24"; }

# A CNI conflist like a kubeadm node's: bridge + host-local + portmap (loopback is run by both runtimes).
write_conflist() { # DIR NAME BRIDGE CIDR IPAM_DIR
	mkdir -p "$1"
	cat >"$1/10-bench.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "$2",
  "plugins": [
    { "type": "bridge", "bridge": "$3", "isGateway": true, "ipMasq": true, "hairpinMode": true,
      "ipam": { "type": "host-local", "dataDir": "$5", "ranges": [[{ "subnet": "$4" }]],
                "routes": [{ "dst": "0.0.0.0/0" }] } },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
JSON
}

start_berth() { # NAME NETWORK(bridge|cni)
	local dir=$tmp/$1
	cur_dir=$dir cur_sock=$dir/berth.sock cur_bridge=bb${2:0:1}$id
	mkdir -p "$dir"
	"$HACK/mirror-config.sh" "$dir/certs.d"
	{
		printf '[registry]\nconfig_path = "%s"\n' "$dir/certs.d"
		printf '[cgroups]\ndefault_parent = "%s"\n' "$cg_parent"
		printf '[isolation]\nshim_path = "%s"\n' "$shim"
		if [[ $2 == cni ]]; then
			write_conflist "$dir/net.d" "bench-$id" "$cur_bridge" "$(cidr)" "$dir/ipam"
			printf '[plugins]\nnetwork = "cni"\n[cni]\nconf_dir = "%s"\nbin_dirs = ["/usr/lib/cni"]\n' "$dir/net.d"
		else
			printf '[bridge]\nbridge = "%s"\ncidr = "%s"\n' "$cur_bridge" "$(cidr)"
		fi
	} >"$dir/config.toml"
	RUST_LOG=${RUST_LOG:-warn} "$berthd" --config "$dir/config.toml" --root "$dir/root" --state "$dir/state" \
		--socket "$cur_sock" >"$dir/daemon.log" 2>&1 &
	daemon_pid=$!
	shim_match="--state $dir/state"
}

start_containerd() {
	local dir=$tmp/containerd
	cur_dir=$dir cur_sock=$dir/containerd.sock cur_bridge=bbc$id
	mkdir -p "$dir"
	"$HACK/mirror-config.sh" "$dir/certs.d"
	write_conflist "$dir/net.d" "bench-$id" "$cur_bridge" "$(cidr)" "$dir/ipam"
	cat >"$dir/config.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
[grpc]
  address = "$cur_sock"
[ttrpc]
  address = "$cur_sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$dir/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$dir/certs.d"
TOML
	containerd --config "$dir/config.toml" --log-level warn >"$dir/daemon.log" 2>&1 &
	daemon_pid=$!
	shim_match="-address $cur_sock"
}

wait_ready() { # NAME
	for _ in $(seq 300); do
		kill -0 "$daemon_pid" 2>/dev/null || { tail -30 "$cur_dir/daemon.log" >&2; die "$1 exited at start (log: $cur_dir/daemon.log)"; }
		"$crictl_bin" --runtime-endpoint "unix://$cur_sock" --timeout 5s version >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	tail -30 "$cur_dir/daemon.log" >&2
	die "$1 did not answer CRI Version in 30 s (log: $cur_dir/daemon.log)"
}

if ((ci)); then
	crit_n=3
	mem_at=1,5
else
	crit_n=50
	mem_at=1,5,10,25,50
fi
cat >"$tmp/critest-params.yaml" <<YAML
containersNumber: $crit_n
containersNumberParallel: 1
podsNumber: $crit_n
podsNumberParallel: 1
imagesNumber: $((crit_n < 20 ? crit_n : 20))
imagesNumberParallel: 1
YAML

cat >"$out/run.json" <<JSON
{ "date": "$(date -u +%FT%TZ)", "commit": "$(cd "$REPO" && git describe --always --dirty 2>/dev/null || echo unknown)",
  "kernel": "$(uname -r)", "cpus": $(nproc), "load": "$(cut -d' ' -f1-3 /proc/loadavg)",
  "mem_mib": $(($(awk '/MemTotal/ { print $2 }' /proc/meminfo) / 1024)),
  "containerd": "$(containerd --version 2>/dev/null | awk '{ print $3 }')", "runc": "$(runc --version 2>/dev/null | awk 'NR == 1 { print $3 }')",
  "critest": "$("$critest_bin" --version 2>/dev/null | awk 'NR == 1 { print $NF }')",
  "pods": $pods, "concurrent": $concurrent, "rounds": $rounds, "probe_pods": $probe_pods, "probe_secs": $probe_secs,
  "pull_image": "$pull_image", "ci": $ci,
  "runtimes": "$runtimes" }
JSON

for r in "${RUNTIMES[@]}"; do
	log "=== $r"
	case $r in
	berth) start_berth berth bridge ;;
	berth-cni) start_berth berth-cni cni ;;
	containerd) start_containerd ;;
	esac
	wait_ready "$r"
	rm -rf "${out:?}/$r"
	mkdir -p "$out/$r/critest"
	sleep 2 # let the daemon settle before the idle memory sample
	# The cold pull once per daemon kind: berth-cni shares berth's image code.
	pull=$pull_image
	[[ $r == berth-cni ]] && pull=""
	prepull=$IMAGE
	[[ $r == containerd ]] && prepull=$PAUSE,$IMAGE
	log "$r: latency and memory ($pods sequential pods, $rounds x $concurrent concurrent), $probe_pods pods probed for ${probe_secs}s"
	"$driver" --socket "$cur_sock" --daemon-pid "$daemon_pid" --shim-match="$shim_match" --image "$IMAGE" \
		--prepull "$prepull" --pull-image "$pull" --pods "$pods" --concurrent "$concurrent" --rounds "$rounds" \
		--mem-at "$mem_at" --probe-pods "$probe_pods" --probe-secs "$probe_secs" --cgroup-parent "$cg_parent" --log-dir "$cur_dir/logs" --out "$out/$r/driver.json" ||
		{ tail -30 "$cur_dir/daemon.log" >&2; die "$r: the latency/memory driver failed (daemon log: $cur_dir/daemon.log)"; }
	log "$r: critest --benchmark ($crit_n iterations)"
	set +e
	(cd "$cur_dir" && "$critest_bin" --runtime-endpoint "unix://$cur_sock" --image-endpoint "unix://$cur_sock" \
		--benchmark --benchmarking-params-file "$tmp/critest-params.yaml" --benchmarking-output-dir "$out/$r/critest" \
		--ginkgo.no-color) >"$cur_dir/critest.log" 2>&1
	crc=$?
	set -e
	if ((crc != 0)); then
		grep -E '^\s*\[(FAIL|PANICKED)\]|FAIL!' "$cur_dir/critest.log" | head -20 >&2 || true
		tail -20 "$cur_dir/critest.log" >&2
		die "$r: critest --benchmark failed (exit $crc; log: $cur_dir/critest.log)"
	fi
	kill -0 "$daemon_pid" 2>/dev/null || die "$r died during critest (log: $cur_dir/daemon.log)"
	for f in pod_benchmark_data container_benchmark_data image_lifecycle_benchmark_data image_listing_benchmark_data; do
		[[ -s $out/$r/critest/$f.json ]] || die "$r: critest wrote no $f.json (log: $cur_dir/critest.log)"
	done
	stop_runtime
done

report_args=("$out")
((plots)) && report_args+=(--plots)
if ((readme)); then
	report_args+=(--markdown "$HACK/bench-results.md")
fi
"$PY" "$HACK/bench-report.py" "${report_args[@]}" >"$out/table.md" || die "hack/bench-report.py failed"
cat "$out/table.md"
if ((readme)); then
	"$HACK/readme-section.sh" bench "$REPO/README.md" <"$HACK/bench-results.md"
	log "README.md and hack/bench-results.md updated"
fi
log "results in $out"
