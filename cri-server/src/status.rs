//! Status: RuntimeReady and NetworkReady from the plugins, verbose info with the config and plugins.

use std::collections::HashMap;

use berth_core::Config;
use berth_core::plugin::Readiness;
use berth_core::registry::Plugins;

use crate::api::{RuntimeCondition, RuntimeStatus, StatusRequest, StatusResponse};

pub const RUNTIME_READY: &str = "RuntimeReady";
pub const NETWORK_READY: &str = "NetworkReady";

fn condition(kind: &str, r: Readiness) -> RuntimeCondition {
    RuntimeCondition {
        r#type: kind.into(),
        status: r.ready,
        reason: r.reason,
        message: r.message,
    }
}

/// The runtime is ready when isolation and the snapshotter are; the network has its own condition.
pub async fn handle(req: StatusRequest, plugins: &Plugins, config: &Config) -> StatusResponse {
    let isolation = plugins.isolation.readiness().await;
    let snapshotter = plugins.snapshotter.readiness().await;
    let runtime = if !isolation.ready {
        isolation
    } else if !snapshotter.ready {
        snapshotter
    } else {
        Readiness::ready()
    };
    let network = plugins.network.readiness().await;
    let mut info = HashMap::new();
    if req.verbose {
        let json = |v: serde_json::Value| v.to_string();
        info.insert("config".into(), json(serde_json::to_value(config).unwrap_or_default()));
        // Objects only: crictl decodes an info value when it is a JSON object.
        info.insert(
            "plugins".into(),
            json(serde_json::json!({
                "inventory": plugins.inventory,
                "loadFailures": plugins.load_failures,
            })),
        );
        info.insert("cgroups".into(), json(plugins.resources.info()));
    }
    StatusResponse {
        status: Some(RuntimeStatus {
            conditions: vec![condition(RUNTIME_READY, runtime), condition(NETWORK_READY, network)],
        }),
        info,
        runtime_handlers: vec![crate::api::RuntimeHandler {
            name: String::new(),
            features: Some(crate::api::RuntimeHandlerFeatures {
                recursive_read_only_mounts: false,
                user_namespaces: false,
            }),
        }],
        features: Some(crate::api::RuntimeFeatures {
            supplemental_groups_policy: false,
            user_namespaces_host_network: false,
        }),
    }
}
