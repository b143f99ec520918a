//! The built-in plugins, registered by name; config picks one per kind.

use berth_core::Registry;
use berth_core::registry::RegistryError;

pub fn register(registry: &mut Registry) -> Result<(), RegistryError> {
    berth_snapshot_overlay::register(registry)?;
    berth_snapshot_native::register(registry)?;
    berth_net_bridge::register(registry)?;
    berth_net_cni::register(registry)?;
    berth_isolation::register(registry)?;
    berth_cgroups::register(registry)?;
    Ok(())
}
