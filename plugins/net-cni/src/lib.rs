//! The CNI network plugin (`cni`): runs standard CNI plugin binaries (spec 1.0: ADD, DEL, CHECK, the
//! `CNI_*` environment, result parsing, prevResult chaining) from the first network config in the conf
//! dir (default `/etc/cni/net.d`), finding binaries in the plugin dirs (default `/opt/cni/bin`,
//! `/usr/lib/cni`). This is how users bring Calico, Cilium or Flannel.

mod conf;
mod exec;
mod plugin;
mod result;

use std::sync::Arc;

use berth_core::Registry;
use berth_core::plugin::Network;
use berth_core::registry::RegistryError;

pub use conf::ConfList;
pub use plugin::{CniError, CniNetwork, IFNAME};

/// Registers the plugin as network `cni`, configured from `[cni]`, recording pods in the store.
pub fn register(registry: &mut Registry) -> Result<(), RegistryError> {
    registry.register_network("cni", |ctx| {
        Ok(Arc::new(CniNetwork::new(&ctx.config.cni, ctx.store.clone())) as Arc<dyn Network>)
    })
}
