#!/usr/bin/env bash
# Writes a registry hosts directory (containerd's hosts.toml layout, berth's `registry.config_path`) that maps
# the upstream registries critest and the tests name onto the local registry, host stripped:
# registry.k8s.io/e2e-test-images/busybox -> http://127.0.0.1:5000/v2/e2e-test-images/busybox.
#
# Usage: hack/mirror-config.sh DIR [REGISTRY_ADDR]   (REGISTRY_ADDR default 127.0.0.1:5000)
set -euo pipefail
dir=${1:?usage: hack/mirror-config.sh DIR [REGISTRY_ADDR]}
addr=${2:-${LOCAL_REGISTRY_ADDR:-127.0.0.1:5000}}
for host in registry.k8s.io k8s.gcr.io gcr.io docker.io public.ecr.aws quay.io "$addr"; do
	mkdir -p "$dir/$host"
	server="https://$host"
	[[ $host == "$addr" ]] && server="http://$addr"
	cat >"$dir/$host/hosts.toml" <<TOML
server = "$server"

[host."http://$addr"]
  capabilities = ["pull", "resolve"]
TOML
done
