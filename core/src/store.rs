//! The metadata store: one redb file of typed JSON records in named tables, with a schema version.
//!
//! Every write is an ACID transaction (redb's default durability fsyncs on commit), so a daemon killed with
//! SIGKILL leaves the store at its last committed state. Calls block briefly: async callers run them
//! through `spawn_blocking` where latency matters.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bump when a record's layout changes incompatibly; an older or newer store is refused, never misread.
pub const SCHEMA_VERSION: u32 = 1;

/// The named tables. Keys are strings; values are JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    Pods,
    Containers,
    Images,
    /// Reserved names (`name_namespace_uid_attempt` → id).
    Names,
    /// IP allocations (`network/ip` → pod id).
    IpAllocations,
    /// Intents of half-done lifecycle steps, for recovery.
    Intents,
    /// Free-form per-plugin records (`plugin/key`).
    Plugins,
    Meta,
}

impl Table {
    fn definition(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        TableDefinition::new(match self {
            Table::Pods => "pods",
            Table::Containers => "containers",
            Table::Images => "images",
            Table::Names => "names",
            Table::IpAllocations => "ip_allocations",
            Table::Intents => "intents",
            Table::Plugins => "plugins",
            Table::Meta => "meta",
        })
    }

    const ALL: [Table; 8] = [
        Table::Pods,
        Table::Containers,
        Table::Images,
        Table::Names,
        Table::IpAllocations,
        Table::Intents,
        Table::Plugins,
        Table::Meta,
    ];
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the store directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the metadata store {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: Box<redb::DatabaseError>,
    },
    #[error("the metadata store {path} has schema version {found}, this berth reads version {expected}")]
    Schema {
        path: PathBuf,
        found: String,
        expected: u32,
    },
    #[error("the metadata store {path} met an I/O error (is its disk full?) and cannot be reopened yet: {source}")]
    Reopen {
        path: PathBuf,
        #[source]
        source: Box<StoreError>,
    },
    #[error(
        "metadata store: a transaction met an earlier I/O error; the store was reopened, the request may be retried"
    )]
    Interrupted,
    #[error("metadata store: {0}")]
    Db(#[from] Box<redb::Error>),
    #[error("metadata store record {table:?}/{key} is not valid: {source}")]
    Decode {
        table: Table,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("metadata store: cannot encode a record: {0}")]
    Encode(#[source] serde_json::Error),
}

macro_rules! db_err {
    ($($ty:ty),*) => {$(
        impl From<$ty> for StoreError {
            fn from(e: $ty) -> Self {
                StoreError::Db(Box::new(e.into()))
            }
        }
    )*};
}
db_err!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl StoreError {
    /// redb's answer while an earlier I/O error is latched.
    fn is_previous_io(&self) -> bool {
        matches!(self, StoreError::Db(e) if matches!(**e, redb::Error::PreviousIo))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// The open database. After an I/O error (ENOSPC, EIO) redb latches: every later transaction fails with
    /// `PreviousIo` until the database is closed and opened again, which repairs the file from its last
    /// commit. So the store reopens it itself (see [`Store::with_db`]) instead of failing until berthd
    /// restarts. Calls hold the read lock for their whole transaction, so a reopen (write lock) waits for
    /// them: redb locks the file, and a second open in this process would be refused while the first lives.
    /// `None` after a reopen failed (the disk still full): the next call tries again.
    slot: RwLock<Slot>,
}

struct Slot {
    db: Option<Database>,
    /// Counts reopens, so that calls that met the same failure reopen once, not once each.
    generation: u64,
}

impl Store {
    /// Opens (or creates) the store at `path`, creating its directory, and checks the schema version.
    pub fn open(path: &Path) -> StoreResult<Store> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let db = open_db(path)?;
        let store = Store {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                slot: RwLock::new(Slot {
                    db: Some(db),
                    generation: 0,
                }),
            }),
        };
        store.init_schema()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn init_schema(&self) -> StoreResult<()> {
        let found: Option<String> = self.get(Table::Meta, "schema_version")?;
        match found {
            Some(v) if v == SCHEMA_VERSION.to_string() => Ok(()),
            Some(v) => Err(StoreError::Schema {
                path: self.inner.path.clone(),
                found: v,
                expected: SCHEMA_VERSION,
            }),
            None => self.write(|tx| {
                // Create every table so readers never meet a missing one.
                for t in Table::ALL {
                    tx.tx.open_table(t.definition())?;
                }
                tx.put(Table::Meta, "schema_version", &SCHEMA_VERSION.to_string())
            }),
        }
    }

    /// Runs `op` on the database. When redb answers `PreviousIo` (an earlier I/O error latched it), the
    /// database is closed and reopened and `op` runs once more; a reopen that fails is a clear error, and
    /// the next call tries again. `op` must not call the store itself (a pending reopen would deadlock).
    fn with_db<R>(&self, mut op: impl FnMut(&Database) -> StoreResult<R>) -> StoreResult<R> {
        let mut retried = false;
        loop {
            let seen = {
                let slot = self.inner.slot.read().unwrap_or_else(PoisonError::into_inner);
                match &slot.db {
                    Some(db) => match op(db) {
                        Err(e) if !retried && e.is_previous_io() => slot.generation,
                        r => return r,
                    },
                    None => slot.generation,
                }
            };
            retried = true;
            self.reopen(seen)?;
        }
    }

    /// Closes and reopens the database, unless another call did since `seen`.
    fn reopen(&self, seen: u64) -> StoreResult<()> {
        let mut slot = self.inner.slot.write().unwrap_or_else(PoisonError::into_inner);
        if slot.generation != seen && slot.db.is_some() {
            return Ok(());
        }
        slot.generation += 1;
        let path = &self.inner.path;
        tracing::warn!(path = %path.display(), "metadata store: reopening after an I/O error");
        if let Some(db) = slot.db.take()
            && let Err(e) = db.close()
        {
            // Its file is what the reopen repairs; a close that cannot write its clean flag changes nothing.
            tracing::debug!(error = %e, "metadata store: close after an I/O error");
        }
        slot.db = Some(open_db(path).map_err(|e| StoreError::Reopen {
            path: path.clone(),
            source: Box::new(e),
        })?);
        Ok(())
    }

    pub fn get<T: DeserializeOwned>(&self, table: Table, key: &str) -> StoreResult<Option<T>> {
        self.with_db(|db| {
            let rtx = db.begin_read()?;
            let t = match rtx.open_table(table.definition()) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            match t.get(key)? {
                None => Ok(None),
                Some(v) => decode(table, key, v.value()).map(Some),
            }
        })
    }

    /// Every record of a table, in key order.
    pub fn list<T: DeserializeOwned>(&self, table: Table) -> StoreResult<Vec<(String, T)>> {
        self.with_db(|db| {
            let rtx = db.begin_read()?;
            let t = match rtx.open_table(table.definition()) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let mut out = Vec::new();
            for entry in t.iter()? {
                let (k, v) = entry?;
                out.push((k.value().to_string(), decode(table, k.value(), v.value())?));
            }
            Ok(out)
        })
    }

    pub fn put<T: Serialize + ?Sized>(&self, table: Table, key: &str, value: &T) -> StoreResult<()> {
        self.write(|tx| tx.put(table, key, value))
    }

    /// Deletes a record; returns whether it existed.
    pub fn delete(&self, table: Table, key: &str) -> StoreResult<bool> {
        self.write(|tx| tx.delete(table, key))
    }

    /// Runs `f` in one write transaction: all of its changes commit together, or none if it fails.
    ///
    /// `f` runs at most once: a `PreviousIo` met when the transaction begins is retried after the reopen
    /// (the usual case: the write after the one that hit ENOSPC); one met after `f` ran reopens the store
    /// and answers [`StoreError::Interrupted`]. `f` must not call the store (see [`Store::with_db`]).
    pub fn write<R>(&self, f: impl FnOnce(&mut WriteTxn<'_>) -> StoreResult<R>) -> StoreResult<R> {
        let mut f = Some(f);
        self.with_db(|db| {
            let tx = db.begin_write()?;
            let Some(f) = f.take() else {
                return Err(StoreError::Interrupted);
            };
            let r = {
                let mut w = WriteTxn { tx: &tx };
                f(&mut w)?
            };
            tx.commit()?;
            Ok(r)
        })
    }
}

fn open_db(path: &Path) -> StoreResult<Database> {
    Database::create(path).map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source: Box::new(source),
    })
}

/// The view of one write transaction.
pub struct WriteTxn<'a> {
    tx: &'a redb::WriteTransaction,
}

impl WriteTxn<'_> {
    pub fn get<T: DeserializeOwned>(&self, table: Table, key: &str) -> StoreResult<Option<T>> {
        let t = self.tx.open_table(table.definition())?;
        let v = t.get(key)?;
        match v {
            None => Ok(None),
            Some(v) => decode(table, key, v.value()).map(Some),
        }
    }

    pub fn put<T: Serialize + ?Sized>(&mut self, table: Table, key: &str, value: &T) -> StoreResult<()> {
        let bytes = serde_json::to_vec(value).map_err(StoreError::Encode)?;
        let mut t = self.tx.open_table(table.definition())?;
        t.insert(key, bytes.as_slice())?;
        Ok(())
    }

    /// Inserts only when the key is free; returns the current holder's value otherwise.
    pub fn insert_new<T: Serialize + DeserializeOwned>(
        &mut self,
        table: Table,
        key: &str,
        value: &T,
    ) -> StoreResult<Result<(), T>> {
        if let Some(existing) = self.get(table, key)? {
            return Ok(Err(existing));
        }
        self.put(table, key, value)?;
        Ok(Ok(()))
    }

    pub fn delete(&mut self, table: Table, key: &str) -> StoreResult<bool> {
        let mut t = self.tx.open_table(table.definition())?;
        let existed = t.remove(key)?.is_some();
        Ok(existed)
    }

    pub fn list<T: DeserializeOwned>(&self, table: Table) -> StoreResult<Vec<(String, T)>> {
        let t = self.tx.open_table(table.definition())?;
        let mut out = Vec::new();
        for entry in t.iter()? {
            let (k, v) = entry?;
            out.push((k.value().to_string(), decode(table, k.value(), v.value())?));
        }
        Ok(out)
    }
}

fn decode<T: DeserializeOwned>(table: Table, key: &str, bytes: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Decode {
        table,
        key: key.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    #[test]
    fn round_trips_and_lists_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("meta.redb")).unwrap();
        store.put(Table::Pods, "b", &vec![2u8]).unwrap();
        store.put(Table::Pods, "a", &vec![1u8]).unwrap();
        assert_eq!(store.get::<Vec<u8>>(Table::Pods, "a").unwrap(), Some(vec![1]));
        assert_eq!(store.get::<Vec<u8>>(Table::Pods, "zz").unwrap(), None);
        let keys: Vec<String> = store
            .list::<Vec<u8>>(Table::Pods)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["a", "b"]);
        assert!(store.delete(Table::Pods, "a").unwrap());
        assert!(!store.delete(Table::Pods, "a").unwrap());
        drop(store);
        let again = Store::open(&dir.path().join("meta.redb")).unwrap();
        assert_eq!(again.get::<Vec<u8>>(Table::Pods, "b").unwrap(), Some(vec![2]));
    }

    #[test]
    fn a_failed_transaction_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("meta.redb")).unwrap();
        let r: StoreResult<()> = store.write(|tx| {
            tx.put(Table::Names, "web_default_u_0", "pod1")?;
            Err(StoreError::Encode(serde_json::from_str::<u8>("x").unwrap_err()))
        });
        assert!(r.is_err());
        assert_eq!(store.get::<String>(Table::Names, "web_default_u_0").unwrap(), None);
    }

    #[test]
    fn insert_new_reports_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("meta.redb")).unwrap();
        let first = store
            .write(|tx| tx.insert_new(Table::Names, "n", &"pod1".to_string()))
            .unwrap();
        assert!(first.is_ok());
        let second = store
            .write(|tx| tx.insert_new(Table::Names, "n", &"pod2".to_string()))
            .unwrap();
        assert_eq!(second, Err("pod1".to_string()));
    }

    #[test]
    fn another_schema_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        Store::open(&path)
            .unwrap()
            .put(Table::Meta, "schema_version", "999")
            .unwrap();
        let err = Store::open(&path).err().expect("must refuse");
        assert!(err.to_string().contains("schema version 999"), "{err}");
    }

    /// Not a test on its own: the writer process of `survives_kill_9_mid_write`.
    #[test]
    fn crash_writer_child() {
        let Ok(path) = std::env::var("BERTH_STORE_CRASH_PATH") else {
            return;
        };
        let store = Store::open(Path::new(&path)).unwrap();
        let filler = vec![7u8; 64 * 1024];
        for n in 0u64.. {
            store
                .write(|tx| {
                    tx.put(Table::Containers, &format!("k{n:08}"), &filler)?;
                    tx.put(Table::Meta, "last", &n)
                })
                .unwrap();
            println!("committed {n}");
        }
    }

    #[test]
    fn survives_kill_9_mid_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::tests::crash_writer_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("BERTH_STORE_CRASH_PATH", &path)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = 0u64;
        while seen < 40 {
            let line = lines.next().expect("writer ended early").unwrap();
            if let Some(n) = line.strip_prefix("committed ") {
                seen = n.parse().unwrap();
            }
        }
        // SIGKILL while it is in the middle of further commits.
        nix_kill(child.id());
        child.wait().unwrap();

        let store = Store::open(&path).expect("store opens after kill -9");
        let last: u64 = store.get(Table::Meta, "last").unwrap().expect("a committed state");
        assert!(last >= seen, "lost a committed write: last {last} < seen {seen}");
        let records = store.list::<Vec<u8>>(Table::Containers).unwrap();
        // Exactly the records of the committed transactions, each whole.
        assert_eq!(records.len() as u64, last + 1);
        assert!(records.iter().all(|(_, v)| v.len() == 64 * 1024));
    }

    /// A tmpfs of `size` on a fresh temp dir, lazily unmounted on drop (also when the test fails).
    struct Tmpfs(tempfile::TempDir);

    impl Tmpfs {
        fn mount(size: &str) -> Tmpfs {
            let dir = tempfile::Builder::new().prefix("berth-store-enospc").tempdir().unwrap();
            let out = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "berth-store-enospc"])
                .arg(dir.path())
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            Tmpfs(dir)
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
        }
    }

    /// Writes a file in `dir` until the file system is full.
    fn fill(dir: &Path) -> PathBuf {
        use std::io::Write;
        let path = dir.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        for chunk in [1 << 20, 4096, 1] {
            let bytes = vec![0xa5u8; chunk];
            while f.write_all(&bytes).is_ok() {}
        }
        path
    }

    /// A commit that hits ENOSPC fails with the kernel's error, and once space is back the same handle
    /// works again (redb latches the I/O error; the store reopens the database) with every earlier commit.
    #[test]
    fn works_again_once_a_full_disk_has_space() {
        let fs = Tmpfs::mount("4m");
        let store = Store::open(&fs.0.path().join("meta.redb")).unwrap();
        store.put(Table::Pods, "before", "kept").unwrap();
        let filler = fill(fs.0.path());

        let value = vec![7u8; 16 * 1024];
        let mut committed = 0;
        let err = loop {
            match store.put(Table::Containers, &format!("k{committed:05}"), &value) {
                Ok(()) => committed += 1,
                Err(e) => break e,
            }
            assert!(committed < 10_000, "the store never met the full disk");
        };
        assert!(err.to_string().contains("No space left on device"), "{err}");
        // Still full: whatever the answer (an error, or a commit into pages the failed one had claimed), no
        // panic.
        if store.put(Table::Containers, "while-full", &value).is_ok() {
            committed += 1;
        }

        std::fs::remove_file(filler).unwrap();
        store.put(Table::Pods, "after", "written").unwrap();
        assert_eq!(
            store.get::<String>(Table::Pods, "after").unwrap().as_deref(),
            Some("written")
        );
        assert_eq!(
            store.get::<String>(Table::Pods, "before").unwrap().as_deref(),
            Some("kept")
        );
        assert_eq!(store.list::<Vec<u8>>(Table::Containers).unwrap().len(), committed);
        drop(store);
        let again = Store::open(&fs.0.path().join("meta.redb")).unwrap();
        assert_eq!(
            again.get::<String>(Table::Pods, "after").unwrap().as_deref(),
            Some("written")
        );
    }

    fn nix_kill(pid: u32) {
        let status = Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
        assert!(status.success());
    }
}
