//! The native snapshotter: plain directory copies, for filesystems without overlay.
