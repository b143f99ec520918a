//! Pod and container lifecycle: the orchestration of the four plugins behind the CRI.
//!
//! Each multi-step operation records its intent (and the object's record, with every fact needed to undo it
//! planned up front) in one store transaction *before* its first side effect. A failure rolls the steps back
//! in reverse; a crash leaves the intent, and the next start cleans up from the record alone, since every
//! undo step is idempotent. The CRI layer validates requests, builds OCI specs and resolves images; this
//! module only sees berth's own types.

mod container;
mod pod;
mod podfiles;
mod recover;

pub use recover::RecoveryReport;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::OwnedMutexGuard;

pub use container::{ContainerRequest, ExitReason};
pub use pod::{DnsConfig, PodRequest};

use crate::config::Config;
use crate::events::{Event, EventBus, EventKind};
use crate::model::now_nanos;
use crate::plugin::PluginError;
use crate::registry::Plugins;
use crate::store::{Store, StoreError, StoreResult, Table, WriteTxn};

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

pub type LifecycleResult<T> = Result<T, LifecycleError>;

/// An operation that was started and not finished; what recovery looks at after a crash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Intent {
    RunPod,
    StopPod,
    RemovePod,
    CreateContainer,
    RemoveContainer,
}

fn intent_key(kind: &str, id: &str) -> String {
    format!("{kind}/{id}")
}

/// One async mutex per object id: calls on one pod or container run one at a time, others in parallel.
#[derive(Default)]
struct KeyedLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl KeyedLocks {
    async fn lock(&self, key: &str) -> OwnedMutexGuard<()> {
        let m = {
            let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.to_string()).or_default().clone()
        };
        m.lock_owned().await
    }

    fn forget(&self, key: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

/// The lifecycle engine: cheap to clone, shared by every CRI handler.
#[derive(Clone)]
pub struct Lifecycle {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    plugins: Plugins,
    events: EventBus,
    config: Arc<Config>,
    locks: KeyedLocks,
}

impl Lifecycle {
    pub fn new(store: Store, plugins: Plugins, events: EventBus, config: Arc<Config>) -> Lifecycle {
        Lifecycle {
            inner: Arc::new(Inner {
                store,
                plugins,
                events,
                config,
                locks: KeyedLocks::default(),
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn plugins(&self) -> &Plugins {
        &self.inner.plugins
    }

    pub fn events(&self) -> &EventBus {
        &self.inner.events
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Runs a store transaction on a blocking thread (commits fsync).
    async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut WriteTxn<'_>) -> StoreResult<R> + Send + 'static,
    ) -> StoreResult<R> {
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || store.write(f))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    fn publish(&self, kind: EventKind, container_id: &str, pod_id: &str) {
        self.inner.events.publish(Event {
            kind,
            container_id: container_id.to_string(),
            pod_id: pod_id.to_string(),
            at: now_nanos(),
        });
    }

    /// Deletes an intent record (the operation finished, or was rolled back).
    async fn finish(&self, kind: &'static str, id: &str) -> StoreResult<()> {
        let key = intent_key(kind, id);
        self.write(move |tx| tx.delete(Table::Intents, &key).map(drop)).await
    }
}

/// Logs an undo step that failed; the caller keeps the record so Remove can retry.
fn undo_failed(what: &str, id: &str, e: &dyn std::fmt::Display) {
    tracing::warn!(id, "rollback step {what} failed: {e}");
}
