//! The CRI v1 bindings generated from `proto/api.proto` (k8s.io/cri-api, see `hack/update-cri-proto.sh`).
#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("runtime.v1");
