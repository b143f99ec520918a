#!/usr/bin/env bash
# Refreshes cri-server/proto/api.proto from the k8s.io/cri-api Go module of a Kubernetes release (through the Go
# module proxy). berthd's bindings are generated from it at build time (cri-server/build.rs, protox: no protoc).
#
# Usage: hack/update-cri-proto.sh [VERSION]   (default v0.36.0, the cri-api of Kubernetes 1.36 / cri-tools 1.36)
set -euo pipefail
version=${1:-v0.36.0}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=$(GOFLAGS=-mod=mod go mod download -json "k8s.io/cri-api@$version" | jq -r .Dir)
src=$dir/pkg/apis/runtime/v1/api.proto
[[ -f $src ]] || { echo "update-cri-proto: no api.proto in k8s.io/cri-api@$version" >&2; exit 1; }
install -m 0644 "$src" "$repo/cri-server/proto/api.proto"
echo "cri-server/proto/api.proto now from k8s.io/cri-api@$version; rebuild with cargo build -p berth-cri"
