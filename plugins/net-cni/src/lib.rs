//! The CNI network plugin: runs standard CNI plugin binaries from a conflist.
