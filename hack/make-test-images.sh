#!/usr/bin/env bash
# Builds every image berth's tests and critest need, offline and reproducibly, as
# OCI image layouts, and pushes them to the local registry (hack/local-registry.sh)
# with the upstream host stripped:
#   registry.k8s.io/e2e-test-images/busybox:1.29-2 -> 127.0.0.1:5000/e2e-test-images/busybox:1.29-2
#   gcr.io/k8s-staging-cri-tools/test-image-1      -> 127.0.0.1:5000/k8s-staging-cri-tools/test-image-1:latest
# berth's own fixtures live under 127.0.0.1:5000/berth-test/.
# hack/test-images.txt lists every reference provided (regenerate: --list).
# The OCI layouts stay in $BERTH_TEST_IMAGES_WORKDIR/oci-<set> (ref names: the
# local reference with / and : replaced by _, e.g. oci:…/oci-base:pause_3.9).
#
# Reproducible: fixed mtimes (epoch 0), numeric owners, name-sorted tar entries,
# gzip -n, fixed timestamps in JSON; re-runs give identical digests. Inputs are
# Debian's busybox and nginx packages (.deb files fetched once into a cache, never
# installed), host binaries (ipcs, pgrep and their libraries, per ldd) and static
# C programs built with gcc. Re-runs are fast: when the registry still serves
# every tag at the digest recorded by the last build of the same inputs (a stamp
# keyed by this script's sha256 and the input package versions), nothing is done.
#
# Usage: hack/make-test-images.sh [--big] [--force] [--fetch] [--list] [--no-push]
#   --big      also build berth-test/big (~200 MB, for benchmarks); same as BIG=1
#   --force    rebuild and push even if the stamp says everything is up to date
#   --fetch    only download the .deb inputs into the cache (needs apt), then exit
#   --list     print every image reference this script provides, then exit
#   --no-push  build the OCI layouts only (no registry needed)
#
# Environment:
#   LOCAL_REGISTRY_ADDR          registry to push to (default 127.0.0.1:5000)
#   LOCAL_REGISTRY_DIR           registry storage, also holds the stamp (default /var/lib/berth-test-registry)
#   BERTH_TEST_IMAGES_WORKDIR    build area and OCI layouts (default /var/cache/berth-test-images)
#   BERTH_DEB_CACHE              cache of downloaded .deb files (default $BERTH_TEST_IMAGES_WORKDIR/debs)
#   BERTH_PUSH_JOBS              parallel skopeo pushes (default 4)
#   BIG=1                        same as --big
set -euo pipefail
shopt -s inherit_errexit
umask 022
export LC_ALL=C TZ=UTC

HACK=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF=$HACK/$(basename "${BASH_SOURCE[0]}")
REGISTRY=${LOCAL_REGISTRY_ADDR:-127.0.0.1:5000}
REGISTRY_DIR=${LOCAL_REGISTRY_DIR:-/var/lib/berth-test-registry}
WORK=${BERTH_TEST_IMAGES_WORKDIR:-/var/cache/berth-test-images}
DEB_CACHE=${BERTH_DEB_CACHE:-$WORK/debs}
STAMP_DIR=$REGISTRY_DIR/berth-test-images
BIG=${BIG:-0}
FORCE=0
PUSH=1
PUSH_JOBS=${BERTH_PUSH_JOBS:-4}
ARCH=amd64 # the only platform the runnable images are built for
DEBS=(busybox nginx nginx-common)
PATH_ENV='PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

# Media types.
MT_MANIFEST=application/vnd.oci.image.manifest.v1+json
MT_INDEX=application/vnd.oci.image.index.v1+json
MT_CONFIG=application/vnd.oci.image.config.v1+json
MT_LAYER=application/vnd.oci.image.layer.v1.tar

# ---------------------------------------------------------------------------
# The images. One row per image: set, references (comma-separated; all get the
# same manifest), recipe, recipe arguments. Every reference maps to
# $REGISTRY/<reference without its registry host>.
# ---------------------------------------------------------------------------
E2E=registry.k8s.io/e2e-test-images
CRIT=gcr.io/k8s-staging-cri-tools
ECR=public.ecr.aws/docker/library
LOCAL=127.0.0.1:5000/berth-test
IMAGES=$(
	cat <<EOF
base $E2E/busybox:1.29-2 busybox
base $E2E/nginx:1.14-2 nginx 80
base $CRIT/hostnet-nginx-amd64:latest nginx 12003
base $E2E/httpd:2.4.39-4 httpd
base $E2E/nonewprivs:1.3 nonewprivs
base $CRIT/test-image-user-uid:latest user 1002
base $CRIT/test-image-user-username:latest user www-data
base $CRIT/test-image-user-uid-group:latest user 1003:1004
base $CRIT/test-image-user-username-group:latest user www-data:1004
base $CRIT/test-image-predefined-group:latest predefined-group
base $CRIT/test-image-latest:latest marker test-image-latest
base $CRIT/test-image-1:latest marker test-image-1
base $CRIT/test-image-2:latest marker test-image-2
base $CRIT/test-image-3:latest marker test-image-3
base $CRIT/test-image-digest:latest marker test-image-digest
base $CRIT/test-image-tag:test marker test
base $CRIT/test-image-tag:all marker all
base $CRIT/test-image-tags:1,$CRIT/test-image-tags:2,$CRIT/test-image-tags:3 marker same-image
base registry.k8s.io/pause:3.9,k8s.gcr.io/pause:3.9 pause 3.9
base registry.k8s.io/pause:3.6 pause 3.6
base $ECR/busybox:1.35.0-glibc busybox
base $ECR/busybox:1-uclibc busybox
base $ECR/busybox:1 busybox
base $ECR/busybox:1-glibc busybox
base $ECR/busybox:1-musl busybox
base docker.io/library/busybox:latest busybox
base docker.io/library/busybox:1.36 busybox
base $LOCAL/busybox:latest busybox
base $LOCAL/whiteout:latest whiteout
base $LOCAL/many-layers:latest many-layers 120
base $LOCAL/multiarch:latest multiarch
base $LOCAL/arm64-only:latest arm64-only index
base $LOCAL/arm64-only:manifest arm64-only manifest
base $LOCAL/compression:gzip compression gzip
base $LOCAL/compression:zstd compression zstd
base $LOCAL/compression:uncompressed compression none
base $LOCAL/compression:mixed compression mixed
big $LOCAL/big:latest big 4 48
EOF
)

log() { printf '[make-test-images] %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}
usage() { sed -n '2,/^set -euo/p' "$SELF" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; }

# registry.k8s.io/pause:3.9 -> pause:3.9 (the first path component is a host when
# it contains a dot or a colon, or is localhost).
local_ref() {
	local ref=$1 first=${1%%/*}
	if [[ $ref == */* && ($first == *.* || $first == *:* || $first == localhost) ]]; then
		ref=${ref#*/}
	fi
	echo "$ref"
}

list_refs() {
	local set refs _
	while read -r set refs _; do
		if [[ $set == big && $BIG != 1 && ${1:-} != all ]]; then continue; fi
		tr ',' '\n' <<<"$refs"
	done <<<"$IMAGES"
}

need() {
	local c
	for c in "$@"; do
		command -v "$c" >/dev/null || die "'$c' not found; run hack/install-deps.sh"
	done
}

# ---------------------------------------------------------------------------
# Inputs: Debian .deb files (downloaded once, extracted, never installed).
# ---------------------------------------------------------------------------
fetch_debs() {
	local pkg missing=()
	mkdir -p "$DEB_CACHE"
	for pkg in "${DEBS[@]}"; do
		compgen -G "$DEB_CACHE/${pkg}_*.deb" >/dev/null || missing+=("$pkg")
	done
	((${#missing[@]})) || return 0
	need apt-get
	log "downloading ${missing[*]} (.deb only, not installed) into $DEB_CACHE"
	if ! (cd "$DEB_CACHE" && apt-get download -q -o APT::Sandbox::User=root "${missing[@]}" >/dev/null); then
		log "apt-get download failed; running apt-get update and retrying"
		apt-get update -q >/dev/null
		(cd "$DEB_CACHE" && apt-get download -q -o APT::Sandbox::User=root "${missing[@]}" >/dev/null) ||
			die "could not download ${missing[*]} from Debian's archive"
	fi
}

# Newest cached .deb of a package.
deb_file() {
	local f
	f=$(compgen -G "$DEB_CACHE/${1}_*.deb" | sort -V | tail -n1) || true
	[[ -n $f ]] || die "no .deb of $1 in $DEB_CACHE (run hack/make-test-images.sh --fetch)"
	echo "$f"
}

# Extracts a cached .deb once; prints the directory.
deb_root() {
	local deb dir
	deb=$(deb_file "$1")
	dir=$WORK/debroot/$(basename "$deb" .deb)
	if [[ ! -e $dir/.done ]]; then
		rm -rf "$dir"
		mkdir -p "$dir"
		dpkg-deb -x "$deb" "$dir"
		touch "$dir/.done"
	fi
	echo "$dir"
}

# The stamp key: this script, the .debs used, and the host packages whose files
# end up in the images or shape the output.
inputs_key() {
	{
		sha256sum "$SELF" | cut -d' ' -f1
		echo "set=$1 arch=$ARCH"
		local pkg
		for pkg in "${DEBS[@]}"; do basename "$(deb_file "$pkg")"; done
		dpkg-query -W -f='${Package} ${Version}\n' libc6 libc6-dev gcc procps util-linux libproc2-0 \
			libsystemd0 libcap2 libgcrypt20 liblzma5 libzstd1 liblz4-1 libgpg-error0 libcrypt1 \
			libpcre2-8-0 libssl3 zlib1g gzip zstd tar jq 2>/dev/null || true
	} | sha256sum | cut -d' ' -f1
}

# ---------------------------------------------------------------------------
# OCI layout primitives. All blobs go into one layout per set ($LAYOUT), so
# shared layers are stored once. Descriptors travel as "mediaType digest size".
# ---------------------------------------------------------------------------
sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# Moves a file into the layout's blob store; prints "sha256:<hex> <size>".
blob_put() {
	local f=$1 hex size
	hex=$(sha256_of "$f")
	size=$(stat -c %s "$f")
	if [[ -e $LAYOUT/blobs/sha256/$hex ]]; then rm -f "$f"; else mv "$f" "$LAYOUT/blobs/sha256/$hex"; fi
	echo "sha256:$hex $size"
}

# Writes a JSON document (stdin) as a blob; prints "mediaType digest size".
json_blob() {
	local mt=$1 tmp
	tmp=$(mktemp "$WORK/tmp/json.XXXXXX")
	cat >"$tmp"
	echo "$mt $(blob_put "$tmp")"
}

# Reproducible tar of a directory's contents: entries sorted by name, no "./"
# prefix, mtime 0, numeric owners as staged, hard links kept, no atime/ctime/xattrs.
tar_dir() {
	local dir=$1 out=$2 list
	list=$(mktemp "$WORK/tmp/list.XXXXXX")
	(cd "$dir" && find . -mindepth 1 -printf '%P\n' | sort) >"$list"
	tar -C "$dir" --create --file "$out" --no-recursion --verbatim-files-from --files-from "$list" \
		--numeric-owner --mtime=@0 --format=posix \
		--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
		--no-acls --no-xattrs --no-selinux
	rm -f "$list"
}

# Layer blob from a staged directory; prints "mediaType digest size diffID".
# Cached on disk by name + compression (recipes run in subshells), so a layer
# shared by many images is built once per run.
layer() {
	local name=$1 dir=$2 comp=${3:-gzip} cache tar diffid out mt
	cache=$WORK/tmp/layers/$name@$comp
	if [[ -s $cache ]]; then
		cat "$cache"
		return
	fi
	[[ -d $dir ]] || die "layer $name: no directory $dir"
	tar=$(mktemp "$WORK/tmp/layer.XXXXXX")
	tar_dir "$dir" "$tar"
	diffid=sha256:$(sha256_of "$tar")
	case $comp in
	gzip)
		gzip -n -6 "$tar"
		out=$tar.gz mt=$MT_LAYER+gzip
		;;
	gzip-fast)
		gzip -n -1 "$tar"
		out=$tar.gz mt=$MT_LAYER+gzip
		;;
	zstd)
		zstd -q -3 --rm "$tar" -o "$tar.zst"
		out=$tar.zst mt=$MT_LAYER+zstd
		;;
	none) out=$tar mt=$MT_LAYER ;;
	*) die "unknown compression $comp" ;;
	esac
	mkdir -p "${cache%/*}"
	echo "$mt $(blob_put "$out") $diffid" | tee "$cache"
}

# Image config blob. $1: architecture, $2: JSON object merged into "config"
# (Cmd, Entrypoint, User, ...; Env defaults to PATH), rest: layer descriptors.
image_config() {
	local arch=$1 cfg=$2
	shift 2
	local l diffids=()
	for l in "$@"; do diffids+=("${l##* }"); done
	jq -cn --arg arch "$arch" --arg path "$PATH_ENV" --argjson cfg "$cfg" \
		'{created: "1970-01-01T00:00:00Z", architecture: $arch, os: "linux"}
		 + (if $arch == "arm64" then {variant: "v8"} else {} end)
		 + {config: ({Env: [$path]} + $cfg | with_entries(select(.value != null))),
		    rootfs: {type: "layers", diff_ids: $ARGS.positional},
		    history: [$ARGS.positional[] | {created: "1970-01-01T00:00:00Z",
		                                    created_by: "berth hack/make-test-images.sh"}]}' \
		--args "${diffids[@]}" | json_blob "$MT_CONFIG"
}

# Manifest blob. $1: config descriptor, rest: layer descriptors (base first).
image_manifest() {
	local config=$1
	shift
	printf '%s\n' "$@" | jq -cnR --arg config "$config" \
		'def desc: split(" ") | {mediaType: .[0], digest: .[1], size: (.[2] | tonumber)};
		 {schemaVersion: 2, mediaType: "'"$MT_MANIFEST"'", config: ($config | desc),
		  layers: [inputs | desc]}'
}

# Builds config + manifest; prints the manifest descriptor.
image() {
	local arch=$1 cfg=$2
	shift 2
	local config l
	jq -e 'type == "object"' <<<"$cfg" >/dev/null || die "bad image config fragment: $cfg"
	for l in "$@"; do
		[[ $l =~ ^application/[^\ ]+\ sha256:[0-9a-f]{64}\ [0-9]+\ sha256:[0-9a-f]{64}$ ]] ||
			die "bad layer descriptor '$l' (a layer failed to build)"
	done
	config=$(image_config "$arch" "$cfg" "$@")
	image_manifest "$config" "$@" | json_blob "$MT_MANIFEST"
}

# Index blob. Args: "arch manifest-descriptor" pairs, as "arch|mt digest size".
image_index() {
	printf '%s\n' "$@" | jq -cnR \
		'def desc: split("|") as [$arch, $d] | ($d | split(" ")) as [$mt, $dg, $sz]
		   | {mediaType: $mt, digest: $dg, size: ($sz | tonumber),
		      platform: ({architecture: $arch, os: "linux"}
		                 + (if $arch == "arm64" then {variant: "v8"} else {} end))};
		 {schemaVersion: 2, mediaType: "'"$MT_INDEX"'", manifests: [inputs | desc]}' |
		json_blob "$MT_INDEX"
}

# ---------------------------------------------------------------------------
# Root filesystems.
# ---------------------------------------------------------------------------

# Copies a binary and every library ldd lists (plus the loader) into a rootfs.
install_with_libs() {
	local root=$1 src=$2 dest=$3 lib
	install -D -m 0755 "$src" "$root$dest"
	while read -r lib; do
		[[ -e $root$lib ]] && continue
		install -D -m 0644 "$lib" "$root$lib"
		[[ $lib != */ld-linux* ]] || chmod 0755 "$root$lib"
	done < <(ldd "$src" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}')
}

write_passwd() {
	cat >"$1/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
EOF
	cat >"$1/etc/group" <<'EOF'
root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
lp:x:7:
mail:x:8:
kmem:x:9:
wheel:x:10:root
cdrom:x:11:
dialout:x:18:
floppy:x:19:
video:x:28:
audio:x:29:
tape:x:32:
www-data:x:33:
operator:x:37:
utmp:x:43:
plugdev:x:46:
staff:x:50:
lock:x:54:
netdev:x:82:
users:x:100:
nogroup:x:65534:
EOF
	cat >"$1/etc/shadow" <<'EOF'
root:*:10933:0:99999:7:::
daemon:*:10933:0:99999:7:::
bin:*:10933:0:99999:7:::
sys:*:10933:0:99999:7:::
sync:*:10933:0:99999:7:::
mail:*:10933:0:99999:7:::
www-data:*:10933:0:99999:7:::
operator:*:10933:0:99999:7:::
nobody:*:10933:0:99999:7:::
EOF
	chmod 0640 "$1/etc/shadow"
}

# busybox like the upstream image: every applet a hard link to /bin/busybox (so
# "sh -c ls" execs /bin/ls: Debian's dynamic busybox has no FEATURE_PREFER_APPLETS,
# unlike busybox-static), plus real ipcs/ipcrm (util-linux) and pgrep/pkill (procps)
# with their libraries, and passwd/group like upstream busybox.
stage_busybox() {
	local root=$1 bb applet
	bb=$(deb_root busybox)/bin/busybox
	[[ -x $bb ]] || die "no bin/busybox in the busybox .deb"
	mkdir -p "$root"/{bin,dev,etc,home,proc,root,sys,tmp,usr/sbin,usr/bin,var/spool/mail,var/www}
	chmod 0700 "$root/root"
	chmod 1777 "$root/tmp"
	install_with_libs "$root" "$bb" /bin/busybox
	for applet in $("$bb" --list); do
		[[ $applet == busybox ]] || ln -f "$root/bin/busybox" "$root/bin/$applet"
	done
	install_with_libs "$root" "$(command -v ipcs)" /bin/ipcs
	install_with_libs "$root" "$(command -v ipcrm)" /bin/ipcrm
	install_with_libs "$root" "$(readlink -f "$(command -v pgrep)")" /bin/pgrep
	ln -f "$root/bin/pgrep" "$root/bin/pkill"
	write_passwd "$root"
	printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
	# Smoke test; nothing may be written into the rootfs (it has no /dev/null).
	local out
	out=$(chroot "$root" /bin/sh -c 'ls /bin/ls && ipcs -m && pgrep -V && id -u www-data' 2>&1) ||
		die "the staged busybox rootfs does not work (chroot test failed): $out"
	[[ $out == *pgrep\ from\ procps* && $out == *$'\n'33 ]] || die "unexpected smoke test output: $out"
}

# Static C programs, built once per run.
build_c() {
	local name=$1 out=$WORK/bin/$1 src=$WORK/src/$1.c
	shift
	mkdir -p "$WORK/bin" "$WORK/src"
	cat >"$src"
	gcc -static -O2 -s -Wl,--build-id=none "$@" -o "$out" "$src" || die "gcc -static failed for $name"
	echo "$out"
}

pause_bin() {
	build_c "pause-$1" "-DVERSION=\"$1\"" <<'EOF'
/* Minimal pause: sleeps in pause(), reaps children, exits 0 on SIGINT/SIGTERM. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void sigdown(int signo) {
	psignal(signo, "Shutting down, got signal");
	_exit(0);
}

static void sigreap(int signo) {
	(void)signo;
	while (waitpid(-1, NULL, WNOHANG) > 0) {}
}

int main(int argc, char **argv) {
	if (argc > 1 && strcmp(argv[1], "-v") == 0) {
		printf("pause.c %s (berth test image)\n", VERSION);
		return 0;
	}
	if (getpid() != 1)
		fprintf(stderr, "Warning: pause should be the first process\n");
	struct sigaction down = {.sa_handler = sigdown}, reap = {.sa_handler = sigreap, .sa_flags = SA_NOCLDSTOP};
	if (sigaction(SIGINT, &down, NULL) < 0 || sigaction(SIGTERM, &down, NULL) < 0 ||
	    sigaction(SIGCHLD, &reap, NULL) < 0)
		return 1;
	for (;;)
		pause();
}
EOF
}

nonewprivs_bin() {
	build_c nnp <<'EOF'
/* Like kubernetes' e2e nonewprivs image: installed setuid root, prints the euid. */
#include <stdio.h>
#include <unistd.h>

int main(void) {
	printf("Effective uid: %d\n", (int)geteuid());
	return 0;
}
EOF
}

stage_nginx() {
	local root=$1 port=$2 base=$3 ngx common f
	ngx=$(deb_root nginx)
	common=$(deb_root nginx-common)
	mkdir -p "$root"
	install_with_libs "$root" "$ngx/usr/sbin/nginx" /usr/sbin/nginx
	# Libraries the busybox layer already has need not be repeated.
	while read -r f; do
		[[ -e $base/$f ]] && cmp -s "$base/$f" "$root/$f" && rm "$root/$f"
	done < <(cd "$root" && find lib lib64 -type f 2>/dev/null)
	find "$root" -depth -type d -empty -delete
	mkdir -p "$root"/etc/nginx/conf.d "$root"/usr/share/nginx/html "$root"/var/log/nginx \
		"$root"/var/lib/nginx "$root"/var/run "$root"/var/cache/nginx
	install -m 0644 "$common/etc/nginx/mime.types" "$root/etc/nginx/mime.types"
	ln -s /dev/stdout "$root/var/log/nginx/access.log"
	ln -s /dev/stderr "$root/var/log/nginx/error.log"
	cat >"$root/etc/nginx/nginx.conf" <<'EOF'
user www-data;
worker_processes 1;
daemon off;
error_log /var/log/nginx/error.log notice;
pid /var/run/nginx.pid;

events {
    worker_connections 1024;
}

http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log /var/log/nginx/access.log;
    sendfile on;
    keepalive_timeout 65;
    include /etc/nginx/conf.d/*.conf;
}
EOF
	cat >"$root/etc/nginx/conf.d/default.conf" <<EOF
server {
    listen $port;
    server_name localhost;
    location / {
        root /usr/share/nginx/html;
        index index.html index.htm;
    }
    error_page 500 502 503 504 /50x.html;
    location = /50x.html {
        root /usr/share/nginx/html;
    }
}
EOF
	cat >"$root/usr/share/nginx/html/index.html" <<'EOF'
<!DOCTYPE html>
<html>
<head><title>Welcome to nginx!</title></head>
<body>
<h1>Welcome to nginx!</h1>
<p>If you see this page, the nginx web server is successfully installed and working.</p>
</body>
</html>
EOF
	printf '<html><body><h1>An error occurred.</h1></body></html>\n' >"$root/usr/share/nginx/html/50x.html"
}

stage_httpd() {
	local root=$1
	mkdir -p "$root/usr/local/apache2/htdocs" "$root/usr/local/bin"
	printf '<html><body><h1>It works!</h1></body></html>\n' >"$root/usr/local/apache2/htdocs/index.html"
	# Logs a line starting with "httpd" (critest greps the log for it) and exits on SIGTERM.
	cat >"$root/usr/local/bin/httpd-foreground" <<'EOF'
#!/bin/sh
echo "httpd: busybox httpd serving /usr/local/apache2/htdocs on port 80" >&2
httpd -f -v -p 80 -h /usr/local/apache2/htdocs &
pid=$!
trap 'kill $pid; wait $pid; exit 0' TERM INT
wait $pid
EOF
	chmod 0755 "$root/usr/local/bin/httpd-foreground"
}

# Deterministic incompressible data: $3 files of 1 MiB under $1/data, seeded by $2.
stage_random() {
	mkdir -p "$1/data"
	python3 - "$1/data" "$2" "$3" <<'EOF'
import random, sys
d, seed, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(f"berth-big-{seed}")
for i in range(n):
    with open(f"{d}/blob-{seed}-{i:03d}.bin", "wb") as f:
        f.write(rng.randbytes(1 << 20))
EOF
}

# ---------------------------------------------------------------------------
# Recipes: each prints the descriptor ("mediaType digest size") of what the
# row's references should point at. $LABEL_CFG carries the row's first
# reference as a label, so every row has its own image id.
# ---------------------------------------------------------------------------
S=""              # staging root for this set
BUSYBOX_LAYER=""  # the shared busybox layer (gzip)

busybox_layer() {
	local comp=${1:-gzip}
	if [[ ! -d $S/busybox ]]; then
		stage_busybox "$S/busybox"
	fi
	layer busybox "$S/busybox" "$comp"
}

# A small layer with one file; $1 layer name, $2 path, $3 content, $4 compression.
file_layer() {
	local dir=$S/files/$1
	rm -rf "$dir"
	mkdir -p "$(dirname "$dir/$2")"
	printf '%s' "$3" >"$dir/$2"
	layer "file-$1" "$dir" "${4:-gzip}"
}

cfg() { jq -cn --arg ref "$ROW_REF" "{Cmd: [\"sh\"], Labels: {\"io.berth.test.ref\": \$ref}} + ($1)"; }

recipe_busybox() { image $ARCH "$(cfg '{}')" "$BUSYBOX_LAYER"; }

recipe_marker() {
	image $ARCH "$(cfg '{}')" "$BUSYBOX_LAYER" "$(file_layer "marker-$1" "$1" "")"
}

recipe_user() { image $ARCH "$(cfg "{User: \"$1\"}")" "$BUSYBOX_LAYER"; }

recipe_predefined_group() {
	local root=$S/predefined-group
	rm -rf "$root"
	mkdir -p "$root/etc" "$root/home/default-user"
	# What busybox's "adduser -u 1000 -D default-user; addgroup -g 50000
	# group-defined-in-image; addgroup default-user group-defined-in-image" leaves.
	cp -p "$S/busybox/etc/passwd" "$S/busybox/etc/group" "$S/busybox/etc/shadow" "$root/etc/"
	echo 'default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh' >>"$root/etc/passwd"
	printf 'default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n' >>"$root/etc/group"
	echo 'default-user:!:10933:0:99999:7:::' >>"$root/etc/shadow"
	chown 1000:1000 "$root/home/default-user"
	image $ARCH "$(cfg '{User: "1000"}')" "$BUSYBOX_LAYER" "$(layer predefined-group "$root")"
}

recipe_nginx() {
	local port=$1 root=$S/nginx-$1
	rm -rf "$root"
	stage_nginx "$root" "$port" "$S/busybox"
	image $ARCH "$(cfg "{Cmd: [\"nginx\"], ExposedPorts: {\"$port/tcp\": {}}, StopSignal: \"SIGQUIT\",
		Env: [\"$PATH_ENV\", \"NGINX_VERSION=1.22.1\"]}")" \
		"$BUSYBOX_LAYER" "$(layer "nginx-$port" "$root")"
}

recipe_httpd() {
	local root=$S/httpd
	rm -rf "$root"
	stage_httpd "$root"
	image $ARCH "$(cfg '{Cmd: ["httpd-foreground"], ExposedPorts: {"80/tcp": {}}, WorkingDir: "/usr/local/apache2"}')" \
		"$BUSYBOX_LAYER" "$(layer httpd "$root")"
}

recipe_nonewprivs() {
	local root=$S/nonewprivs
	rm -rf "$root"
	mkdir -p "$root/usr/local/bin"
	install -m 4755 "$(nonewprivs_bin)" "$root/usr/local/bin/nnp"
	image $ARCH "$(cfg '{Cmd: null, Entrypoint: ["/usr/local/bin/nnp"]}')" "$BUSYBOX_LAYER" "$(layer nonewprivs "$root")"
}

recipe_pause() {
	local version=$1 root=$S/pause-$1
	rm -rf "$root"
	mkdir -p "$root"
	install -m 0755 "$(pause_bin "$version")" "$root/pause"
	image $ARCH "$(cfg '{Cmd: null, Entrypoint: ["/pause"], User: "65535:65535", WorkingDir: "/"}')" \
		"$(layer "pause-$version" "$root")"
}

# Lower layer adds /data/*, upper layer deletes with whiteouts and an opaque dir.
# Expected merged view: /data = {added, keep, opaque/}; /data/opaque = {+sorted-before-opq, new};
# /etc/berth-layer contains "3". See BERTH-EXPECTED in the image.
recipe_whiteout() {
	local l2=$S/whiteout-2 l3=$S/whiteout-3
	rm -rf "$l2" "$l3"
	mkdir -p "$l2/data/dir-removed/sub" "$l2/data/opaque/old-sub" "$l2/etc"
	echo keep >"$l2/data/keep"
	echo remove >"$l2/data/remove-me"
	echo child >"$l2/data/dir-removed/sub/child"
	echo old-a >"$l2/data/opaque/old-a"
	echo x >"$l2/data/opaque/old-sub/x"
	echo 2 >"$l2/etc/berth-layer"
	mkdir -p "$l3/data/opaque" "$l3/etc"
	: >"$l3/data/.wh.remove-me"
	: >"$l3/data/.wh.dir-removed"
	: >"$l3/data/opaque/.wh..wh..opq"
	echo new >"$l3/data/opaque/new"
	# Sorts before ".wh..wh..opq" in the tar: an opaque marker must not hide
	# entries of its own layer, whatever their order.
	echo early >"$l3/data/opaque/+sorted-before-opq"
	echo added >"$l3/data/added"
	echo 3 >"$l3/etc/berth-layer"
	printf '%s\n' /data/added /data/keep /data/opaque/+sorted-before-opq /data/opaque/new >"$l3/BERTH-EXPECTED"
	image $ARCH "$(cfg '{}')" "$BUSYBOX_LAYER" "$(layer whiteout-2 "$l2")" "$(layer whiteout-3 "$l3")"
}

# $1 layers in total: busybox plus $1-1 layers each adding /layers/NNN and
# overwriting /layers/top (so /layers/top holds the number of the top layer).
recipe_many_layers() {
	local n=$1 i dir layers=("$BUSYBOX_LAYER")
	for ((i = 2; i <= n; i++)); do
		dir=$S/many/$i
		rm -rf "$dir"
		mkdir -p "$dir/layers"
		printf '%03d\n' "$i" >"$dir/layers/$(printf %03d "$i")"
		printf '%03d\n' "$i" >"$dir/layers/top"
		layers+=("$(layer "many-$i" "$dir")")
	done
	image $ARCH "$(cfg '{}')" "${layers[@]}"
}

arm64_manifest() {
	image arm64 "$(jq -cn '{Cmd: ["/marker-is-arm64"], Labels: {"io.berth.test.ref": "berth-test/arm64"}}')" \
		"$(file_layer arm64 marker "linux/arm64 (not runnable: no binaries)")"
}

recipe_multiarch() {
	local amd64
	amd64=$(image $ARCH "$(cfg '{}')" "$BUSYBOX_LAYER" "$(file_layer amd64 marker "linux/amd64")")
	image_index "amd64|$amd64" "arm64|$(arm64_manifest)"
}

recipe_arm64_only() {
	case $1 in
	index) image_index "arm64|$(arm64_manifest)" ;;
	manifest) arm64_manifest ;;
	esac
}

recipe_compression() {
	local mode=$1 a b c
	case $mode in
	gzip | zstd | none) a=$mode b=$mode c=$mode ;;
	mixed) a=gzip b=zstd c=none ;;
	esac
	image $ARCH "$(cfg '{}')" "$(busybox_layer "$a")" \
		"$(file_layer "comp-$mode-1" compression/one "$mode" "$b")" \
		"$(file_layer "comp-$mode-2" compression/two "$mode" "$c")"
}

recipe_big() {
	local nlayers=$1 files=$2 i dir layers=("$BUSYBOX_LAYER")
	for ((i = 1; i <= nlayers; i++)); do
		dir=$S/big/$i
		rm -rf "$dir"
		stage_random "$dir" "$i" "$files"
		layers+=("$(layer "big-$i" "$dir" gzip-fast)")
	done
	image $ARCH "$(cfg '{}')" "${layers[@]}"
}

# ---------------------------------------------------------------------------
# Registry side.
# ---------------------------------------------------------------------------
ACCEPT="$MT_MANIFEST, $MT_INDEX, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json"

# Digest the registry serves for repo:tag (empty if none).
registry_digest() {
	local repo=${1%:*} tag=${1##*:}
	curl -sfI --max-time 10 -H "Accept: $ACCEPT" "http://$REGISTRY/v2/$repo/manifests/$tag" |
		tr -d '\r' | awk 'tolower($1) == "docker-content-digest:" {print $2}' || true
}

push() {
	local name=$1 dest=$2 mt=$3 want=$4 all=() got
	[[ $mt == "$MT_INDEX" ]] && all=(--all)
	skopeo copy -q --preserve-digests "${all[@]}" --dest-tls-verify=false \
		"oci:$LAYOUT:$name" "docker://$REGISTRY/$dest" >/dev/null ||
		die "skopeo copy oci:$LAYOUT:$name docker://$REGISTRY/$dest failed"
	got=$(registry_digest "$dest")
	[[ $got == "$want" ]] || die "$REGISTRY/$dest has digest '$got' after the push, expected $want"
}

# True when the stamp of set $1 matches $2 and the registry serves every tag at
# the recorded digest.
up_to_date() {
	local stamp=$STAMP_DIR/$1.stamp key ref digest n=0
	[[ -r $stamp ]] || return 1
	read -r _ key <"$stamp"
	[[ $key == "$2" ]] || return 1
	while read -r ref digest; do
		[[ $(registry_digest "$ref") == "$digest" ]] || return 1
		((n += 1))
	done < <(tail -n +2 "$stamp")
	((n > 0))
}

# ---------------------------------------------------------------------------
# Build one set: stage, write the layout, push, record the stamp.
# ---------------------------------------------------------------------------
build_set() {
	local set=$1 key=$2 rset refs recipe args ref name desc mt digest size dest
	local -a index_entries=() pushes=()
	LAYOUT=$WORK/oci-$set
	S=$WORK/stage-$set
	rm -rf "$LAYOUT" "$S" "$WORK/tmp"
	mkdir -p "$LAYOUT/blobs/sha256" "$S" "$WORK/tmp"
	BUSYBOX_LAYER=$(busybox_layer gzip)
	while read -r rset refs recipe args; do
		[[ $rset == "$set" ]] || continue
		ROW_REF=${refs%%,*}
		name=$(local_ref "$ROW_REF" | tr '/:' '__')
		log "building $ROW_REF ($recipe${args:+ $args})"
		# shellcheck disable=SC2086 # args are words by design
		desc=$("recipe_${recipe//-/_}" $args </dev/null)
		read -r mt digest size <<<"$desc"
		index_entries+=("$name $mt $digest $size")
		for ref in ${refs//,/ }; do
			dest=$(local_ref "$ref")
			[[ $dest == *:* ]] || dest=$dest:latest
			pushes+=("$name $dest $mt $digest")
		done
	done <<<"$IMAGES"
	printf '{"imageLayoutVersion":"1.0.0"}' >"$LAYOUT/oci-layout"
	printf '%s\n' "${index_entries[@]}" | jq -cnR \
		'{schemaVersion: 2, manifests: [inputs | split(" ") as [$n, $mt, $d, $s]
		   | {mediaType: $mt, digest: $d, size: ($s | tonumber),
		      annotations: {"org.opencontainers.image.ref.name": $n}}]}' >"$LAYOUT/index.json"
	rm -rf "$WORK/tmp" "$S"
	log "layout $LAYOUT: ${#index_entries[@]} images, $(find "$LAYOUT/blobs/sha256" -type f | wc -l) blobs, $(du -sh "$LAYOUT" | cut -f1)"
	((PUSH)) || return 0

	log "pushing ${#pushes[@]} tags to $REGISTRY ($PUSH_JOBS at a time)"
	local stamp=$STAMP_DIR/$set.stamp line running=0
	mkdir -p "$STAMP_DIR"
	rm -f "$stamp"
	for line in "${pushes[@]}"; do
		read -r name dest mt digest <<<"$line"
		push "$name" "$dest" "$mt" "$digest" &
		running=$((running + 1))
		if ((running >= PUSH_JOBS)); then
			wait -n || die "a push failed"
			running=$((running - 1))
		fi
	done
	while ((running > 0)); do
		wait -n || die "a push failed"
		running=$((running - 1))
	done
	{
		echo "key $key"
		for line in "${pushes[@]}"; do
			read -r name dest mt digest <<<"$line"
			echo "$dest $digest"
		done
	} >"$stamp"
}

main() {
	local set key sets=(base) start=$SECONDS
	while (($#)); do
		case $1 in
		--big) BIG=1 ;;
		--force) FORCE=1 ;;
		--no-push) PUSH=0 ;;
		--list)
			list_refs all
			return 0
			;;
		--fetch)
			fetch_debs
			return 0
			;;
		-h | --help)
			usage
			return 0
			;;
		*) die "unknown argument '$1' (see --help)" ;;
		esac
		shift
	done
	[[ $BIG == 1 ]] && sets+=(big)
	[[ $(uname -m) == x86_64 ]] || die "the runnable test images are built for amd64 only (this is $(uname -m))"
	need tar gzip zstd jq sha256sum curl gcc ldd dpkg-deb dpkg-query python3 chroot flock
	((PUSH == 0)) || need skopeo
	((EUID == 0)) || die "run as root (chroot smoke test, file ownership in layers, registry storage)"
	# One build at a time per work directory (several test suites may call this).
	mkdir -p "$WORK"
	exec 8>"$WORK/.lock"
	if ! flock -n 8; then
		log "waiting for another make-test-images.sh run to finish ($WORK/.lock)"
		flock -w 900 8 || die "timed out waiting for $WORK/.lock"
	fi
	fetch_debs
	if ((PUSH)); then
		"$HACK/local-registry.sh" start 8>&-
	fi
	for set in "${sets[@]}"; do
		key=$(inputs_key "$set")
		if ((PUSH && !FORCE)) && up_to_date "$set" "$key"; then
			log "set '$set': every tag is in $REGISTRY at the recorded digest; nothing to do"
			continue
		fi
		build_set "$set" "$key"
	done
	if [[ -r $HACK/test-images.txt ]] && ! diff -q <(list_refs all) "$HACK/test-images.txt" >/dev/null; then
		log "warning: hack/test-images.txt is out of date; regenerate it with: hack/make-test-images.sh --list > hack/test-images.txt"
	fi
	log "done in $((SECONDS - start)) s"
}

main "$@"
