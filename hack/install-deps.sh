#!/usr/bin/env bash
# Installs what berth's build, tests and test images need on Debian 12
# (idempotent: a second run does nothing and takes about a second).
#
# Usage: hack/install-deps.sh [--bench] [--vm] [--no-tools] [--no-debs]
#   --bench     also Debian's containerd + runc (reference runtime for benchmarks)
#   --vm        also qemu-system-x86 (cgroup v2 VM harness)
#   --no-tools  skip crictl/critest
#   --no-debs   skip pre-fetching the .deb inputs of hack/make-test-images.sh
#
# 1. Debian packages (apt-get update only when a package is missing and the
#    install without it fails). Services those packages would start (Debian's
#    docker-registry on :5000, containerd) are kept from starting.
# 2. crictl and critest from cri-tools $CRI_TOOLS_VERSION into $BERTH_TOOLS_BIN,
#    built from the Go module source (crictl: go build, critest: go test -c),
#    skipped when the installed binaries already report that version.
# 3. The .deb files make-test-images.sh unpacks (busybox, nginx), so that script
#    then runs offline.
#
# Environment:
#   CRI_TOOLS_VERSION   cri-tools release (default v1.36.0)
#   BERTH_TOOLS_BIN     where crictl/critest go (default /usr/local/bin)
#   BERTH_GO            go binary to use (default: go on PATH, else /usr/local/go/bin/go,
#                       else a Go toolchain fetched from the Go module proxy)
#   BERTH_GO_VERSION    toolchain to fetch when there is no usable go (default 1.26.8),
#                       unpacked under BERTH_GO_TOOLCHAIN_DIR (default /usr/local/lib/berth-go)
#   GOPATH, GOCACHE, GOPROXY   honoured; GOFLAGS gets -mod=mod
set -euo pipefail
shopt -s inherit_errexit

HACK=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CRI_TOOLS_VERSION=${CRI_TOOLS_VERSION:-v1.36.0}
BERTH_TOOLS_BIN=${BERTH_TOOLS_BIN:-/usr/local/bin}
BERTH_GO_VERSION=${BERTH_GO_VERSION:-1.26.8}
GO_TOOLCHAIN_DIR=${BERTH_GO_TOOLCHAIN_DIR:-/usr/local/lib/berth-go}

BASE_PKGS=(
	# runtime under test: namespaces, networking, seccomp
	iproute2 nftables iptables util-linux procps libseccomp-dev pkg-config containernetworking-plugins socat
	# test images and the local registry
	busybox-static docker-registry skopeo jq curl ca-certificates tar gzip zstd python3
	# static test programs
	gcc libc6-dev
	# lint of hack/*.sh
	shellcheck
)
BENCH_PKGS=(containerd runc)
VM_PKGS=(qemu-system-x86)
# Services the packages above ship. docker-registry (Debian's, on :5000 for all
# addresses) is always kept stopped: hack/local-registry.sh runs its own. The
# others are only kept from starting when this script installs them.
ALWAYS_QUIET=(docker-registry)
PKG_SERVICES=(docker-registry containerd)

log() { printf '[install-deps] %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}
usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; }

# ---------------------------------------------------------------------------
# Debian packages
# ---------------------------------------------------------------------------
missing_pkgs() {
	local p
	for p in "$@"; do
		[[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null) == installed ]] || echo "$p"
	done
}

# Keeps maintainer scripts from starting services while apt runs (policy-rc.d is
# honoured by invoke-rc.d and deb-systemd-invoke). An existing policy is left alone.
POLICY=/usr/sbin/policy-rc.d
POLICY_OURS=0
block_services() {
	[[ -e $POLICY ]] && return 0
	printf '#!/bin/sh\n# temporary, from berth hack/install-deps.sh\nexit 101\n' >"$POLICY"
	chmod 0755 "$POLICY"
	POLICY_OURS=1
}
unblock_services() {
	if ((POLICY_OURS)); then rm -f "$POLICY"; fi
	POLICY_OURS=0
}

# Services that got started or enabled anyway (e.g. a policy-rc.d that allows
# everything was already present): stop and disable them.
quiet_services() {
	local s
	for s in "$@"; do
		if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
			if systemctl is-enabled --quiet "$s.service" 2>/dev/null || systemctl is-active --quiet "$s.service" 2>/dev/null; then
				log "disabling and stopping $s.service (berth's scripts run their own instances)"
				systemctl disable --now "$s.service" >/dev/null 2>&1 || log "warning: could not stop $s.service"
			fi
		elif [[ -x /etc/init.d/$s ]]; then
			if [[ -r /var/run/$s.pid ]] && kill -0 "$(cat "/var/run/$s.pid")" 2>/dev/null; then
				log "stopping /etc/init.d/$s"
				"/etc/init.d/$s" stop >/dev/null 2>&1 || log "warning: could not stop /etc/init.d/$s"
			fi
			update-rc.d "$s" disable >/dev/null 2>&1 || true
		fi
	done
}

install_pkgs() {
	local missing
	mapfile -t missing < <(missing_pkgs "$@")
	if ((${#missing[@]} == 0)); then
		log "Debian packages: all ${#@} present"
		quiet_services "${ALWAYS_QUIET[@]}"
		return 0
	fi
	((EUID == 0)) || die "missing Debian packages (${missing[*]}) and not root; run as root"
	log "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	local apt=(apt-get -y -q -o Dpkg::Use-Pty=0 --no-install-recommends install)
	block_services
	trap unblock_services EXIT
	# Try without an index refresh first (fast when the lists are fresh); on
	# failure (unknown package, stale index -> 404) refresh and retry once.
	if ! "${apt[@]}" "${missing[@]}" >/tmp/berth-install-deps.apt.log 2>&1; then
		log "apt-get install failed without a fresh index; running apt-get update"
		apt-get update -q >>/tmp/berth-install-deps.apt.log 2>&1 || {
			tail -n 20 /tmp/berth-install-deps.apt.log >&2
			die "apt-get update failed (log: /tmp/berth-install-deps.apt.log)"
		}
		"${apt[@]}" "${missing[@]}" >>/tmp/berth-install-deps.apt.log 2>&1 || {
			tail -n 20 /tmp/berth-install-deps.apt.log >&2
			die "apt-get install ${missing[*]} failed (log: /tmp/berth-install-deps.apt.log)"
		}
	fi
	unblock_services
	trap - EXIT
	local s quiet=("${ALWAYS_QUIET[@]}")
	for s in "${PKG_SERVICES[@]}"; do
		[[ " ${missing[*]} " == *" $s "* ]] && quiet+=("$s")
	done
	quiet_services "${quiet[@]}"
	mapfile -t missing < <(missing_pkgs "$@")
	((${#missing[@]} == 0)) || die "still missing after apt-get install: ${missing[*]}"
	log "Debian packages installed"
}

# ---------------------------------------------------------------------------
# Go
# ---------------------------------------------------------------------------

# Minor version number of a go binary (1.26.2 -> 26), 0 when unknown.
go_minor() {
	local v
	v=$("$1" env GOVERSION 2>/dev/null) || v=
	v=${v#go}
	[[ $v =~ ^1\.([0-9]+) ]] && echo "${BASH_REMATCH[1]}" || echo 0
}

# Fetches golang.org/toolchain (the module the go command itself uses to switch
# toolchains) from the Go module proxy, and unpacks it.
fetch_go() {
	local ver=$BERTH_GO_VERSION dir=$GO_TOOLCHAIN_DIR/go$BERTH_GO_VERSION
	local proxy=${GOPROXY:-https://proxy.golang.org}
	proxy=${proxy%%[,|]*}
	[[ $proxy == http* ]] || proxy=https://proxy.golang.org
	if [[ ! -x $dir/bin/go ]]; then
		local zip url="$proxy/golang.org/toolchain/@v/v0.0.1-go$ver.linux-amd64.zip"
		log "no usable go; fetching go$ver from $url"
		zip=$(mktemp /tmp/berth-go.XXXXXX.zip)
		curl -fsSL --retry 3 -o "$zip" "$url" || die "could not download $url"
		rm -rf "$dir.tmp"
		python3 - "$zip" "$dir.tmp" <<'EOF' || die "could not unpack the Go toolchain zip"
import os, sys, zipfile
src, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(src) as z:
    for info in z.infolist():
        # Entries are "golang.org/toolchain@v0.0.1-goX.Y.Z.linux-amd64/<path>".
        name = info.filename.split("@", 1)[-1].partition("/")[2]
        if not name or name.endswith("/"):
            continue
        path = os.path.join(dest, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with z.open(info) as r, open(path, "wb") as w:
            w.write(r.read())
        # The module zip drops exec bits; restore them like the go command does.
        if name.startswith("bin/") or name.startswith("pkg/tool/"):
            os.chmod(path, 0o755)
EOF
		rm -f "$zip"
		mv "$dir.tmp" "$dir"
	fi
	echo "$dir/bin/go"
}

find_go() {
	local g
	for g in "${BERTH_GO:-}" "$(command -v go || true)" /usr/local/go/bin/go; do
		[[ -n $g && -x $g ]] || continue
		# 1.21+ switches to the toolchain go.mod asks for by itself (GOTOOLCHAIN=auto).
		if (($(go_minor "$g") >= 21)); then
			echo "$g"
			return
		fi
		log "ignoring $g ($("$g" version 2>/dev/null || echo unknown version)): older than go1.21"
	done
	fetch_go
}

# A writable GOPATH/GOCACHE even on a fresh CI box with an odd HOME.
setup_go_env() {
	local gp gc
	gp=$("$GO" env GOPATH)
	gc=$("$GO" env GOCACHE)
	if ! mkdir -p "${gp%%:*}" 2>/dev/null || [[ ! -w ${gp%%:*} ]]; then
		export GOPATH=/var/cache/berth-go/gopath
		log "GOPATH $gp is not writable; using $GOPATH"
	fi
	if [[ $gc == off ]] || ! mkdir -p "$gc" 2>/dev/null || [[ ! -w $gc ]]; then
		export GOCACHE=/var/cache/berth-go/cache
		log "GOCACHE $gc is not usable; using $GOCACHE"
	fi
	# cri-tools is built from its module zip, which has no vendor/ directory.
	local f flags=()
	for f in ${GOFLAGS:-}; do [[ $f == -mod=* ]] || flags+=("$f"); done
	GOFLAGS="${flags[*]} -mod=mod"
	export GOFLAGS=${GOFLAGS# }
	export GOTOOLCHAIN=${GOTOOLCHAIN:-auto}
}

# ---------------------------------------------------------------------------
# crictl / critest
# ---------------------------------------------------------------------------
has_version() {
	# Output first, then grep: `cmd | grep -q` under pipefail fails when grep exits before critest has written
	# its last line (SIGPIPE), which happened at random.
	local out
	[[ -x $1 ]] || return 1
	out=$("$1" --version 2>/dev/null) || true
	grep -qE "version:? $CRI_TOOLS_VERSION\$" <<<"$out"
}

install_cri_tools() {
	local crictl=$BERTH_TOOLS_BIN/crictl critest=$BERTH_TOOLS_BIN/critest
	if has_version "$crictl" && has_version "$critest"; then
		log "crictl and critest $CRI_TOOLS_VERSION already in $BERTH_TOOLS_BIN"
		return 0
	fi
	if ! mkdir -p "$BERTH_TOOLS_BIN" 2>/dev/null || [[ ! -w $BERTH_TOOLS_BIN ]]; then
		die "$BERTH_TOOLS_BIN is not writable (set BERTH_TOOLS_BIN or run as root)"
	fi
	GO=$(find_go)
	setup_go_env
	log "building crictl and critest $CRI_TOOLS_VERSION with $("$GO" version) (a few minutes on a cold cache)"
	local tmp src ldflags
	tmp=$(mktemp -d /tmp/berth-cri-tools.XXXXXX)
	# -mod=mod only makes sense inside a module; the download runs outside one.
	src=$(cd "$tmp" && GOFLAGS='' GO111MODULE=on "$GO" mod download -json "sigs.k8s.io/cri-tools@$CRI_TOOLS_VERSION" | jq -r .Dir) ||
		die "go mod download sigs.k8s.io/cri-tools@$CRI_TOOLS_VERSION failed"
	[[ -d $src/cmd/critest ]] || die "no cmd/critest in $src"
	ldflags="-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRI_TOOLS_VERSION"
	(cd "$src" && CGO_ENABLED=0 "$GO" build -trimpath -ldflags "$ldflags" -o "$tmp/crictl" ./cmd/crictl) ||
		die "building crictl failed"
	(cd "$src" && CGO_ENABLED=0 "$GO" test -c -trimpath -ldflags "$ldflags" -o "$tmp/critest" ./cmd/critest) ||
		die "building critest failed"
	install -m 0755 "$tmp/crictl" "$crictl.new" && mv -f "$crictl.new" "$crictl"
	install -m 0755 "$tmp/critest" "$critest.new" && mv -f "$critest.new" "$critest"
	rm -rf "$tmp"
	if ! has_version "$crictl" || ! has_version "$critest"; then
		die "the new binaries do not report $CRI_TOOLS_VERSION"
	fi
	log "installed $("$crictl" --version) and critest $CRI_TOOLS_VERSION into $BERTH_TOOLS_BIN"
}

main() {
	local pkgs=("${BASE_PKGS[@]}") tools=1 debs=1 start=$SECONDS
	while (($#)); do
		case $1 in
		--bench) pkgs+=("${BENCH_PKGS[@]}") ;;
		--vm) pkgs+=("${VM_PKGS[@]}") ;;
		--no-tools) tools=0 ;;
		--no-debs) debs=0 ;;
		-h | --help)
			usage
			return 0
			;;
		*) die "unknown argument '$1' (see --help)" ;;
		esac
		shift
	done
	[[ -r /etc/debian_version ]] || die "this script expects Debian (12, bookworm)"
	install_pkgs "${pkgs[@]}"
	((tools == 0)) || install_cri_tools
	((debs == 0)) || "$HACK/make-test-images.sh" --fetch
	log "done in $((SECONDS - start)) s"
}

main "$@"
