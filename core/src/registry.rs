//! The plugin registry: built-in plugins register a factory by kind and name; dynamic plugins are loaded
//! from `.so` files; `build` picks one per kind from the config. An unknown name is a startup error that
//! lists what is available, never a silent fallback.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use crate::config::Config;
use crate::dylib::{DylibError, DylibNetwork, LoadedPlugin};
use crate::events::EventBus;
use crate::plugin::{Isolation, Network, PluginError, PluginKind, Resources, Snapshotter};
use crate::store::Store;

/// What a plugin gets to initialise itself.
#[derive(Clone)]
pub struct InitContext {
    pub config: Arc<Config>,
    pub store: Store,
    pub events: EventBus,
}

impl InitContext {
    /// The plugin's own persistent directory: `<root>/<kind>/<name>` (not created here).
    pub fn plugin_root(&self, kind: PluginKind, name: &str) -> PathBuf {
        self.config.root.join(kind.as_str()).join(name)
    }

    /// The plugin's own runtime directory: `<state>/<kind>/<name>` (not created here).
    pub fn plugin_state(&self, kind: PluginKind, name: &str) -> PathBuf {
        self.config.state.join(kind.as_str()).join(name)
    }
}

pub type Factory<T> = Box<dyn Fn(&InitContext) -> Result<Arc<T>, PluginError> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("unknown {kind} plugin {name:?} (config plugins.{kind}); available: {available}{failed}")]
    Unknown {
        kind: PluginKind,
        name: String,
        available: String,
        /// Dynamic plugins that failed to load, in case the name was meant to come from one of them.
        failed: String,
    },
    // The reason is the source: `{:#}` prints the chain, so naming it here too printed it twice.
    #[error("{kind} plugin {name:?} failed to start")]
    Init {
        kind: PluginKind,
        name: String,
        #[source]
        source: PluginError,
    },
    #[error("a {kind} plugin named {name:?} is already registered")]
    Duplicate { kind: PluginKind, name: String },
}

/// One line of the plugin inventory, for `Status` verbose info.
#[derive(Clone, Debug, Serialize)]
pub struct PluginInfo {
    pub kind: PluginKind,
    pub name: String,
    /// `builtin`, or the `.so` path.
    pub source: String,
    pub selected: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abi: Option<String>,
}

/// A dynamic plugin that could not be loaded; kept so `Status` can say why.
#[derive(Clone, Debug, Serialize)]
pub struct LoadFailure {
    pub path: PathBuf,
    pub error: String,
}

#[derive(Default)]
pub struct Registry {
    snapshotters: BTreeMap<String, Factory<dyn Snapshotter>>,
    networks: BTreeMap<String, Factory<dyn Network>>,
    isolations: BTreeMap<String, Factory<dyn Isolation>>,
    resources: BTreeMap<String, Factory<dyn Resources>>,
    sources: BTreeMap<(PluginKind, String), (String, Option<String>)>,
    failures: Vec<LoadFailure>,
}

/// The selected plugins, one per kind.
#[derive(Clone)]
pub struct Plugins {
    pub snapshotter: Arc<dyn Snapshotter>,
    pub network: Arc<dyn Network>,
    pub isolation: Arc<dyn Isolation>,
    pub resources: Arc<dyn Resources>,
    pub inventory: Vec<PluginInfo>,
    pub load_failures: Vec<LoadFailure>,
}

macro_rules! register_fn {
    ($fn_name:ident, $field:ident, $trait:ident, $kind:expr) => {
        pub fn $fn_name(
            &mut self,
            name: &str,
            factory: impl Fn(&InitContext) -> Result<Arc<dyn $trait>, PluginError> + Send + Sync + 'static,
        ) -> Result<(), RegistryError> {
            self.insert_source($kind, name, "builtin".into(), None)?;
            self.$field.insert(name.to_string(), Box::new(factory));
            Ok(())
        }
    };
}

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    register_fn!(register_snapshotter, snapshotters, Snapshotter, PluginKind::Snapshotter);
    register_fn!(register_network, networks, Network, PluginKind::Network);
    register_fn!(register_isolation, isolations, Isolation, PluginKind::Isolation);
    register_fn!(register_resources, resources, Resources, PluginKind::Resources);

    fn insert_source(
        &mut self,
        kind: PluginKind,
        name: &str,
        source: String,
        abi: Option<String>,
    ) -> Result<(), RegistryError> {
        let key = (kind, name.to_string());
        if self.sources.contains_key(&key) {
            return Err(RegistryError::Duplicate {
                kind,
                name: name.to_string(),
            });
        }
        self.sources.insert(key, (source, abi));
        Ok(())
    }

    /// Loads one dynamic plugin. A failure is returned and also remembered for `Status`; the daemon goes on.
    pub fn load_dynamic(&mut self, path: &std::path::Path) -> Result<(), DylibError> {
        let result = LoadedPlugin::load(path).and_then(|plugin| {
            let plugin = Arc::new(plugin);
            let (kind, name) = (plugin.kind(), plugin.name().to_string());
            let source = path.display().to_string();
            self.insert_source(kind, &name, source, Some(plugin.abi().to_string()))
                .map_err(|e| DylibError::Registry {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
            match kind {
                PluginKind::Network => {
                    self.networks.insert(
                        name,
                        Box::new(move |ctx: &InitContext| {
                            let config = ctx
                                .config
                                .plugins
                                .config
                                .get(plugin.name())
                                .cloned()
                                .unwrap_or_default();
                            Ok(Arc::new(DylibNetwork::new(plugin.clone(), &config)?) as Arc<dyn Network>)
                        }),
                    );
                    Ok(())
                }
                other => Err(DylibError::UnsupportedKind {
                    path: path.to_path_buf(),
                    kind: other.to_string(),
                }),
            }
        });
        if let Err(e) = &result {
            self.failures.push(LoadFailure {
                path: path.to_path_buf(),
                error: e.to_string(),
            });
        }
        result
    }

    /// The names registered for a kind, sorted.
    pub fn available(&self, kind: PluginKind) -> Vec<String> {
        let keys: Vec<&String> = match kind {
            PluginKind::Snapshotter => self.snapshotters.keys().collect(),
            PluginKind::Network => self.networks.keys().collect(),
            PluginKind::Isolation => self.isolations.keys().collect(),
            PluginKind::Resources => self.resources.keys().collect(),
        };
        keys.into_iter().cloned().collect()
    }

    fn pick<'a, T: ?Sized>(
        &self,
        map: &'a BTreeMap<String, Factory<T>>,
        kind: PluginKind,
        name: &str,
    ) -> Result<&'a Factory<T>, RegistryError> {
        map.get(name).ok_or_else(|| {
            let failed: Vec<String> = self.failures.iter().map(|f| f.error.clone()).collect();
            let available = self.available(kind);
            RegistryError::Unknown {
                kind,
                name: name.to_string(),
                available: if available.is_empty() {
                    "none".into()
                } else {
                    available.join(", ")
                },
                failed: if failed.is_empty() {
                    String::new()
                } else {
                    format!("; dynamic plugins that failed to load: {}", failed.join("; "))
                },
            }
        })
    }

    /// Resolves every kind's configured name first (so all unknown names fail before any plugin starts),
    /// then initialises the four plugins.
    pub fn build(&self, ctx: &InitContext) -> Result<Plugins, RegistryError> {
        let cfg = &ctx.config.plugins;
        let snap = self.pick(&self.snapshotters, PluginKind::Snapshotter, &cfg.snapshotter)?;
        let net = self.pick(&self.networks, PluginKind::Network, &cfg.network)?;
        let iso = self.pick(&self.isolations, PluginKind::Isolation, &cfg.isolation)?;
        let res = self.pick(&self.resources, PluginKind::Resources, &cfg.resources)?;
        let init_err = |kind, name: &str| {
            let name = name.to_string();
            move |source| RegistryError::Init { kind, name, source }
        };
        let plugins = Plugins {
            resources: res(ctx).map_err(init_err(PluginKind::Resources, &cfg.resources))?,
            snapshotter: snap(ctx).map_err(init_err(PluginKind::Snapshotter, &cfg.snapshotter))?,
            network: net(ctx).map_err(init_err(PluginKind::Network, &cfg.network))?,
            isolation: iso(ctx).map_err(init_err(PluginKind::Isolation, &cfg.isolation))?,
            inventory: self.inventory(&ctx.config),
            load_failures: self.failures.clone(),
        };
        Ok(plugins)
    }

    pub fn inventory(&self, config: &Config) -> Vec<PluginInfo> {
        let selected = |kind: PluginKind| match kind {
            PluginKind::Snapshotter => &config.plugins.snapshotter,
            PluginKind::Network => &config.plugins.network,
            PluginKind::Isolation => &config.plugins.isolation,
            PluginKind::Resources => &config.plugins.resources,
        };
        self.sources
            .iter()
            .map(|((kind, name), (source, abi))| PluginInfo {
                kind: *kind,
                name: name.clone(),
                source: source.clone(),
                selected: selected(*kind) == name,
                abi: abi.clone(),
            })
            .collect()
    }

    pub fn load_failures(&self) -> &[LoadFailure] {
        &self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn ctx(config: Config) -> (InitContext, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("meta.redb")).unwrap();
        let ctx = InitContext {
            config: Arc::new(config),
            store,
            events: EventBus::default(),
        };
        (ctx, dir)
    }

    /// A registry of factories that fail with a message naming themselves, and count their calls: enough to see
    /// which one `build` picked without real plugins.
    fn registry(calls: &'static AtomicUsize) -> Registry {
        let mut r = Registry::new();
        for name in ["overlayfs", "native"] {
            r.register_snapshotter(name, move |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(PluginError::Internal(format!("snapshotter {name}")))
            })
            .unwrap();
        }
        for name in ["cgroupfs", "other"] {
            r.register_resources(name, move |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(PluginError::Internal(format!("resources {name}")))
            })
            .unwrap();
        }
        r.register_network("bridge", |_| Err(PluginError::Internal("network bridge".into())))
            .unwrap();
        r.register_isolation("linux", |_| Err(PluginError::Internal("isolation linux".into())))
            .unwrap();
        r
    }

    #[test]
    fn the_configured_name_is_the_one_started() {
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        let r = registry(&CALLS);
        let mut config = Config::default();
        config.plugins.resources = "other".into();
        let (ctx, _dir) = ctx(config);
        let err = r.build(&ctx).err().unwrap();
        match err {
            RegistryError::Init { kind, name, source } => {
                assert_eq!((kind, name.as_str()), (PluginKind::Resources, "other"));
                assert_eq!(source.to_string(), "resources other");
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn an_unknown_name_lists_the_available_ones_before_anything_starts() {
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        let r = registry(&CALLS);
        let mut config = Config::default();
        config.plugins.isolation = "kata".into();
        let (ctx, _dir) = ctx(config);
        let err = r.build(&ctx).err().unwrap().to_string();
        assert_eq!(
            err,
            "unknown isolation plugin \"kata\" (config plugins.isolation); available: linux"
        );
        assert_eq!(
            CALLS.load(Ordering::SeqCst),
            0,
            "no plugin may start when a name is unknown"
        );
        assert_eq!(r.available(PluginKind::Snapshotter), ["native", "overlayfs"]);
    }

    #[test]
    fn a_name_is_registered_once_per_kind() {
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        let mut r = registry(&CALLS);
        let err = r
            .register_network("bridge", |_| Err(PluginError::Internal(String::new())))
            .err()
            .unwrap();
        assert!(
            matches!(
                err,
                RegistryError::Duplicate {
                    kind: PluginKind::Network,
                    ..
                }
            ),
            "{err}"
        );
        // The same name under another kind is fine.
        r.register_network("overlayfs", |_| Err(PluginError::Internal(String::new())))
            .unwrap();
    }

    #[test]
    fn failed_dynamic_loads_are_named_when_their_plugin_is_selected() {
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        let mut r = registry(&CALLS);
        assert!(r.load_dynamic(std::path::Path::new("/nonexistent/libnet.so")).is_err());
        assert_eq!(r.load_failures().len(), 1);
        let mut config = Config::default();
        config.plugins.network = "calico".into();
        let (ctx, _dir) = ctx(config);
        let err = r.build(&ctx).err().unwrap().to_string();
        assert!(err.contains("unknown network plugin \"calico\""), "{err}");
        assert!(err.contains("/nonexistent/libnet.so: no such file"), "{err}");
    }

    #[test]
    fn the_inventory_marks_the_selected_plugins() {
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        let r = registry(&CALLS);
        let inv = r.inventory(&Config::default());
        let selected: Vec<(PluginKind, &str)> = inv
            .iter()
            .filter(|p| p.selected)
            .map(|p| (p.kind, p.name.as_str()))
            .collect();
        assert_eq!(selected.len(), 4);
        assert!(selected.contains(&(PluginKind::Snapshotter, "overlayfs")));
        assert!(inv.iter().all(|p| p.source == "builtin"));
    }
}
