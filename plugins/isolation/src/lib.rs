//! The linux isolation plugin: namespaces, pivot_root and one berth-shim per pod.
