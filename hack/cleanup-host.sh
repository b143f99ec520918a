#!/usr/bin/env bash
# Removes the host objects a test berthd made and leaves behind by design (a berthd keeps its bridge, its nft
# table and its cgroup parent across restarts, as containerd keeps cni0): the bridge, nft table inet
# berth_<bridge>, and the cgroup parent in every hierarchy. Run it after the berthd has stopped.
#
# Usage: hack/cleanup-host.sh BRIDGE CGROUP_PARENT    (e.g. bt1a2b3c /berth-it-1a2b3c)
set -euo pipefail
bridge=${1:?usage: hack/cleanup-host.sh BRIDGE CGROUP_PARENT}
parent=${2:?usage: hack/cleanup-host.sh BRIDGE CGROUP_PARENT}
case $parent in /?*) ;; *) echo "cleanup-host: CGROUP_PARENT must be an absolute cgroup path" >&2; exit 2 ;; esac
[[ $parent == / ]] && { echo "cleanup-host: refusing the root cgroup" >&2; exit 2; }

ip link del "$bridge" 2>/dev/null || true
nft delete table inet "berth_$bridge" 2>/dev/null || true
# Every hierarchy (v1 controllers, named ones, the v2 unified mount): kill what is left, remove leaves first.
while read -r mnt; do
	dir=$mnt$parent
	[[ -d $dir ]] || continue
	find "$dir" -name cgroup.procs -exec sh -c 'for p in $(cat "$1"); do kill -9 "$p" 2>/dev/null; done' _ {} \; || true
	find "$dir" -depth -type d -exec rmdir {} \; 2>/dev/null || true
done < <(awk '$3 == "cgroup" || $3 == "cgroup2" { print $2 }' /proc/self/mounts)
