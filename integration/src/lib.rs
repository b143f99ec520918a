//! Shared helpers of the end-to-end tests: start a berthd, find the built binaries, run crictl.
