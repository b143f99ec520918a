//! The bridge network plugin: a Linux bridge, a veth pair per pod, host-local IPAM, NAT and hostPorts.
