#!/usr/bin/env bash
# The README's first command: installs what berth needs, builds it, starts berthd on its default socket
# (/run/berth/berth.sock, root /var/lib/berth) and shows crictl talking to it. berthd keeps running afterwards;
# stop it with `kill $(cat /run/berth/berthd.pid)`.
set -euo pipefail
shopt -s inherit_errexit

HACK=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HACK")
SOCK=${BERTH_SOCKET:-/run/berth/berth.sock}
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

"$HACK/install-deps.sh"
if ! command -v cargo >/dev/null; then
	echo "demo: cargo is missing: install Rust (e.g. Debian's rustup or cargo packages) first" >&2
	exit 1
fi
(cd "$REPO" && cargo build --release --bins)
target=$(cd "$REPO" && cargo metadata --format-version 1 --no-deps | jq -r .target_directory)/release

mkdir -p /run/berth
if [[ -S $SOCK ]] && crictl --runtime-endpoint "unix://$SOCK" version >/dev/null 2>&1; then
	echo "demo: a berthd already serves $SOCK; using it"
else
	"$target/berthd" --socket "$SOCK" >/run/berth/berthd.log 2>&1 &
	echo $! >/run/berth/berthd.pid
	for _ in $(seq 100); do
		crictl --runtime-endpoint "unix://$SOCK" version >/dev/null 2>&1 && break
		sleep 0.1
	done
fi
export CONTAINER_RUNTIME_ENDPOINT=unix://$SOCK IMAGE_SERVICE_ENDPOINT=unix://$SOCK
say "$target/berthd check"
"$target/berthd" check || true
say "crictl version"
crictl version
say "crictl info"
crictl info | jq '{status, plugins: .plugins.inventory, cgroups}'
echo
echo "berthd is running (pid $(cat /run/berth/berthd.pid 2>/dev/null || echo '?'), log /run/berth/berthd.log)."
