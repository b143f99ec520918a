//! The overlayfs snapshotter: layers unpacked once per chain id, containers get upper+work over the lowers.
