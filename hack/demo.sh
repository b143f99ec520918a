#!/usr/bin/env bash
# The README's first command: installs what berth needs, builds it, starts berthd on its default socket
# (/run/berth/berth.sock, root /var/lib/berth) and runs a busybox pod through crictl: pods, ps, logs, exec,
# then removes it. Images come from the local registry (127.0.0.1:5000, hack/local-registry.sh), which
# berth's registry mirrors map docker.io and registry.k8s.io onto: this machine has no internet.
# berthd keeps running afterwards; stop it with `kill $(cat /run/berth/berthd.pid)`.
set -euo pipefail
shopt -s inherit_errexit

HACK=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HACK")
SOCK=${BERTH_SOCKET:-/run/berth/berth.sock}
IMAGE=registry.k8s.io/e2e-test-images/busybox:1.29-2
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

"$HACK/install-deps.sh"
command -v cargo >/dev/null || { echo "demo: cargo is missing: install Rust first" >&2; exit 1; }
(cd "$REPO" && cargo build --release --bins)
shim=$("$HACK/build-shim.sh")
target=$(cd "$REPO" && cargo metadata --format-version 1 --no-deps | jq -r .target_directory)/release
"$HACK/local-registry.sh" start
"$HACK/make-test-images.sh"

demo=/run/berth/demo
mkdir -p "$demo/logs"
"$HACK/mirror-config.sh" "$demo/certs.d"
printf '[registry]\nconfig_path = "%s"\n[isolation]\nshim_path = "%s"\n' "$demo/certs.d" "$shim" >"$demo/config.toml"
if crictl --runtime-endpoint "unix://$SOCK" version >/dev/null 2>&1; then
	echo "demo: a berthd already serves $SOCK; using it"
else
	"$target/berthd" --config "$demo/config.toml" --socket "$SOCK" >/run/berth/berthd.log 2>&1 &
	echo $! >/run/berth/berthd.pid
	for _ in $(seq 100); do
		crictl --runtime-endpoint "unix://$SOCK" version >/dev/null 2>&1 && break
		sleep 0.1
	done
fi
export CONTAINER_RUNTIME_ENDPOINT=unix://$SOCK IMAGE_SERVICE_ENDPOINT=unix://$SOCK

cat >"$demo/pod.json" <<JSON
{"metadata": {"name": "demo", "namespace": "default", "uid": "demo-$$"}, "hostname": "demo",
 "log_directory": "$demo/logs", "linux": {}}
JSON
cat >"$demo/container.json" <<JSON
{"metadata": {"name": "hello"}, "image": {"image": "$IMAGE"},
 "command": ["/bin/sh", "-c", "echo hello from a berth container; exec sleep 3600"], "log_path": "hello.log",
 "linux": {"security_context": {"namespace_options": {"pid": 1}}}}
JSON

say "berthd check";                     "$target/berthd" check || true
say "crictl version";                   crictl version
say "crictl pull $IMAGE";               crictl pull "$IMAGE"
say "crictl runp pod.json";             pod=$(crictl runp "$demo/pod.json"); echo "$pod"
say "crictl create/start";              ctr=$(crictl create "$pod" "$demo/container.json" "$demo/pod.json"); crictl start "$ctr"
say "crictl pods";                      crictl pods
say "crictl ps";                        crictl ps
sleep 1
say "crictl logs $ctr";                 crictl logs "$ctr"
say "crictl exec -s $ctr hostname";     crictl exec -s "$ctr" hostname
say "crictl exec -s $ctr ps";           crictl exec -s "$ctr" ps
say "crictl stop/rm, stopp/rmp";        crictl stop -t 1 "$ctr" >/dev/null; crictl rm "$ctr" >/dev/null
crictl stopp "$pod" >/dev/null; crictl rmp "$pod"
echo
echo "berthd is still running (pid $(cat /run/berth/berthd.pid 2>/dev/null || echo '?'), log /run/berth/berthd.log)."
