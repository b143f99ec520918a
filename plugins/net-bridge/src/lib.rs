//! The bridge network plugin (`bridge`, berth's default): a Linux bridge, a veth pair per pod, host-local
//! IPAM in the metadata store, outbound NAT and hostPorts with nftables. All link, address and route work
//! goes through rtnetlink; only nftables is driven through its CLI (`nft -f -`, one atomic transaction per
//! change).

mod cidr;
mod ipam;
mod link;
mod netns;
mod nft;
mod plugin;
#[cfg(feature = "test-support")]
pub mod testsuite;

use std::sync::Arc;

use berth_core::Registry;
use berth_core::plugin::Network;
use berth_core::registry::RegistryError;

pub use cidr::Cidr;
pub use ipam::{Ipam, IpamError};
pub use plugin::{BridgeError, BridgeNetwork, POD_IFNAME, VETH_PREFIX};

/// Registers the plugin as network `bridge`, configured from `[bridge]`, allocating in the store.
pub fn register(registry: &mut Registry) -> Result<(), RegistryError> {
    registry.register_network("bridge", |ctx| {
        let network = BridgeNetwork::new(&ctx.config.bridge, ctx.store.clone())?;
        Ok(Arc::new(network) as Arc<dyn Network>)
    })
}
