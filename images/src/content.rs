//! The content store: blobs addressed by digest under `<root>/content/blobs/sha256/<hex>`.
//!
//! A blob is written to `<root>/content/ingest/<random>`, its size and digest checked as it streams in,
//! then fsynced and renamed into place: a reader never sees half a blob, and an interrupted write leaves
//! only an ingest file that the next start (or GC) removes. Nothing of a blob whose size or digest is
//! wrong is kept.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use berth_core::plugin::snapshot::Usage;

use sha2::Digest as _;
use tokio::io::AsyncWriteExt;

use crate::error::{ImageError, Result};

#[derive(Clone, Debug)]
pub struct ContentStore {
    root: PathBuf,
}

fn hex_of(digest: &str) -> Result<&str> {
    match digest.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) => Ok(h),
        _ => Err(ImageError::BadDocument {
            what: "digest",
            digest: digest.to_string(),
            message: "only sha256:<64 lowercase hex> digests are supported".into(),
        }),
    }
}

impl ContentStore {
    /// Opens the store at `root` (creating it) and drops leftovers of interrupted writes.
    pub fn open(root: &Path) -> Result<ContentStore> {
        let store = ContentStore {
            root: root.to_path_buf(),
        };
        for d in [store.blobs_dir(), store.ingest_dir()] {
            std::fs::create_dir_all(&d).map_err(|source| ImageError::Content {
                path: d.clone(),
                source,
            })?;
        }
        store.clean_ingest()?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    fn ingest_dir(&self) -> PathBuf {
        self.root.join("ingest")
    }

    /// Removes every ingest file (call only when no write is in flight).
    pub fn clean_ingest(&self) -> Result<()> {
        let dir = self.ingest_dir();
        let entries = std::fs::read_dir(&dir).map_err(|source| ImageError::Content {
            path: dir.clone(),
            source,
        })?;
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        Ok(())
    }

    pub fn path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.blobs_dir().join(hex_of(digest)?))
    }

    pub fn has(&self, digest: &str) -> bool {
        self.path(digest).is_ok_and(|p| p.is_file())
    }

    pub fn size(&self, digest: &str) -> Option<u64> {
        std::fs::metadata(self.path(digest).ok()?).ok().map(|m| m.len())
    }

    pub fn read(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.path(digest)?;
        std::fs::read(&path).map_err(|source| ImageError::Content { path, source })
    }

    pub fn open_blob(&self, digest: &str) -> Result<std::fs::File> {
        let path = self.path(digest)?;
        std::fs::File::open(&path).map_err(|source| ImageError::Content { path, source })
    }

    /// Stores small bytes (manifests, configs) under their own digest; checks it when one is expected.
    pub async fn put(&self, data: &[u8], expected: Option<&str>) -> Result<String> {
        let digest = berth_core::model::sha256_digest(data);
        if let Some(e) = expected
            && e != digest
        {
            return Err(ImageError::Digest {
                expected: e.to_string(),
                actual: digest,
            });
        }
        if self.has(&digest) {
            return Ok(digest);
        }
        let mut w = self.writer(&digest, Some(data.len() as u64)).await?;
        w.write(data).await?;
        w.commit().await?;
        Ok(digest)
    }

    /// Starts writing the blob `digest`; `size` bounds it when known.
    pub async fn writer(&self, digest: &str, size: Option<u64>) -> Result<BlobWriter> {
        self.watched_writer(digest, size, None).await
    }

    /// A writer whose progress `watch` reports, so a [`FollowReader`] can read the blob as it comes in.
    pub async fn watched_writer(
        &self,
        digest: &str,
        size: Option<u64>,
        watch: Option<Arc<IngestWatch>>,
    ) -> Result<BlobWriter> {
        hex_of(digest)?;
        let path = self.ingest_dir().join(berth_core::model::new_id());
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|source| ImageError::Content {
                path: path.clone(),
                source,
            })?;
        Ok(BlobWriter {
            store: self.clone(),
            digest: digest.to_string(),
            size,
            written: 0,
            hasher: sha2::Sha256::new(),
            file: Some(tokio::io::BufWriter::with_capacity(256 * 1024, file)),
            watch: watch.inspect(|w| w.start(&path)),
            path,
        })
    }

    /// Stores a stream of unknown digest (blocking; for imports): returns its digest and size.
    pub fn ingest_sync(&self, mut src: impl std::io::Read) -> Result<(String, u64)> {
        use std::io::Write as _;
        let path = self.ingest_dir().join(berth_core::model::new_id());
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ImageError::Content { path, source }
        };
        let result = (|| {
            let mut file = std::fs::File::create_new(&path).map_err(io(&path))?;
            let mut hasher = sha2::Sha256::new();
            let mut buf = vec![0u8; 256 * 1024];
            let mut size = 0u64;
            loop {
                let n = src.read(&mut buf).map_err(io(&path))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                file.write_all(&buf[..n]).map_err(io(&path))?;
                size += n as u64;
            }
            file.sync_all().map_err(io(&path))?;
            let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
            let target = self.path(&digest)?;
            std::fs::rename(&path, &target).map_err(io(&target))?;
            Ok((digest, size))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        result
    }

    pub fn delete(&self, digest: &str) -> Result<()> {
        let path = self.path(digest)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(ImageError::Content { path, source }),
        }
    }

    /// Disk use of the stored blobs (allocated blocks) and their count.
    pub fn usage(&self) -> Result<Usage> {
        let mut usage = Usage::default();
        for digest in self.list()? {
            let path = self.path(&digest)?;
            match std::fs::symlink_metadata(&path) {
                Ok(md) => {
                    usage.bytes += md.blocks() * 512;
                    usage.inodes += 1;
                }
                // Collected since it was listed.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(ImageError::Content { path, source }),
            }
        }
        Ok(usage)
    }

    /// Every blob's digest.
    pub fn list(&self) -> Result<Vec<String>> {
        let dir = self.blobs_dir();
        let entries = std::fs::read_dir(&dir).map_err(|source| ImageError::Content {
            path: dir.clone(),
            source,
        })?;
        Ok(entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(|h| format!("sha256:{h}")))
            .collect())
    }
}

/// A blob being written; dropped without `commit`, it leaves nothing.
pub struct BlobWriter {
    store: ContentStore,
    digest: String,
    size: Option<u64>,
    written: u64,
    hasher: sha2::Sha256,
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    watch: Option<Arc<IngestWatch>>,
    path: PathBuf,
}

impl BlobWriter {
    pub async fn write(&mut self, data: &[u8]) -> Result<()> {
        self.written += data.len() as u64;
        if let Some(size) = self.size
            && self.written > size
        {
            return Err(ImageError::Size {
                digest: self.digest.clone(),
                expected: size,
                actual: self.written,
                truncated: false,
            });
        }
        self.hasher.update(data);
        let file = self.file.as_mut().expect("writer in use");
        file.write_all(data).await.map_err(|source| ImageError::Content {
            path: self.path.clone(),
            source,
        })?;
        if let Some(w) = &self.watch {
            // A follower reads the file itself: what it is told about must be there.
            file.flush().await.map_err(|source| ImageError::Content {
                path: self.path.clone(),
                source,
            })?;
            w.advance(self.written);
        }
        Ok(())
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Checks size and digest, syncs, and moves the blob into place.
    pub async fn commit(mut self) -> Result<()> {
        if let Some(size) = self.size
            && self.written != size
        {
            return Err(ImageError::Size {
                digest: self.digest.clone(),
                expected: size,
                actual: self.written,
                truncated: self.written < size,
            });
        }
        let actual = format!("sha256:{}", hex::encode(std::mem::take(&mut self.hasher).finalize()));
        if actual != self.digest {
            return Err(ImageError::Digest {
                expected: self.digest.clone(),
                actual,
            });
        }
        let mut file = self.file.take().expect("writer in use");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ImageError::Content { path, source }
        };
        file.flush().await.map_err(io(&self.path))?;
        file.get_ref().sync_all().await.map_err(io(&self.path))?;
        drop(file);
        let target = self.store.path(&self.digest)?;
        match &self.watch {
            // Renamed under the watch's lock, so a follower never opens the name that just went away.
            Some(w) => {
                let mut renamed = Ok(());
                w.update(|st| {
                    renamed = std::fs::rename(&self.path, &target);
                    if renamed.is_ok() {
                        st.file = Some(target.clone());
                    }
                });
                renamed.map_err(io(&target))?;
            }
            None => tokio::fs::rename(&self.path, &target).await.map_err(io(&target))?,
        }
        if let Ok(dir) = tokio::fs::File::open(self.store.blobs_dir()).await {
            let _ = dir.sync_all().await;
        }
        self.path = PathBuf::new();
        if let Some(w) = &self.watch {
            w.finish(Ok(()));
        }
        Ok(())
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
            if let Some(w) = &self.watch {
                w.finish(Err(format!("the download of {} failed", self.digest)));
            }
        }
    }
}

/// The progress of one blob download, shared with a [`FollowReader`].
#[derive(Default)]
pub struct IngestWatch {
    state: Mutex<WatchState>,
    changed: Condvar,
}

#[derive(Default)]
struct WatchState {
    file: Option<PathBuf>,
    available: u64,
    done: Option<std::result::Result<(), String>>,
}

impl IngestWatch {
    fn update(&self, f: impl FnOnce(&mut WatchState)) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut st);
        self.changed.notify_all();
    }

    fn start(&self, path: &Path) {
        self.update(|st| {
            st.file = Some(path.to_path_buf());
            st.available = 0;
        });
    }

    fn advance(&self, written: u64) {
        self.update(|st| st.available = written);
    }

    /// Ends the watch: `Ok` once the blob is verified and in place, `Err` if it never will be. The first
    /// end wins.
    pub fn finish(&self, result: std::result::Result<(), String>) {
        self.update(|st| {
            st.done.get_or_insert(result);
        });
    }

    /// A blocking reader of the blob as it downloads; it reaches EOF only once the blob is verified.
    pub fn follow(self: &Arc<Self>) -> FollowReader {
        FollowReader {
            watch: self.clone(),
            file: None,
            pos: 0,
        }
    }
}

/// Reads a blob while it downloads (blocking, for a snapshotter's unpack thread).
pub struct FollowReader {
    watch: Arc<IngestWatch>,
    file: Option<std::fs::File>,
    pos: u64,
}

impl std::io::Read for FollowReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut st = self.watch.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(Err(e)) = &st.done {
                return Err(std::io::Error::other(e.clone()));
            }
            if self.file.is_none()
                && let Some(path) = &st.file
            {
                // Opened before the rename into place; the open file stays readable either way.
                self.file = Some(std::fs::File::open(path)?);
            }
            if st.available > self.pos
                && let Some(file) = self.file.as_mut()
            {
                let want = buf.len().min((st.available - self.pos) as usize);
                drop(st);
                let n = std::io::Read::read(file, &mut buf[..want])?;
                self.pos += n as u64;
                return Ok(n);
            }
            if matches!(st.done, Some(Ok(()))) {
                return Ok(0);
            }
            st = self.watch.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wrong_digest_or_size_keeps_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(tmp.path()).unwrap();
        let good = berth_core::model::sha256_digest(b"hello");
        let mut w = cs.writer(&good, Some(5)).await.unwrap();
        w.write(b"hellx").await.unwrap();
        assert!(matches!(w.commit().await, Err(ImageError::Digest { .. })));
        let mut w = cs.writer(&good, Some(5)).await.unwrap();
        w.write(b"hel").await.unwrap();
        let err = w.commit().await.unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        let mut w = cs.writer(&good, Some(5)).await.unwrap();
        assert!(w.write(b"hello!").await.is_err());
        drop(w);
        assert!(!cs.has(&good));
        assert_eq!(std::fs::read_dir(tmp.path().join("ingest")).unwrap().count(), 0);
        assert_eq!(cs.put(b"hello", Some(&good)).await.unwrap(), good);
        assert_eq!(cs.read(&good).unwrap(), b"hello");
        assert_eq!(cs.list().unwrap(), vec![good.clone()]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_follower_reads_while_it_downloads_and_sees_eof_only_when_verified() {
        use std::io::Read as _;
        let tmp = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(tmp.path()).unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        for corrupt in [false, true] {
            let digest = berth_core::model::sha256_digest(&data);
            let watch = Arc::new(IngestWatch::default());
            let mut follower = watch.follow();
            let reader = std::thread::spawn(move || {
                let mut out = Vec::new();
                follower.read_to_end(&mut out).map(|_| out)
            });
            let mut w = cs
                .watched_writer(&digest, Some(data.len() as u64), Some(watch))
                .await
                .unwrap();
            for chunk in data.chunks(7000) {
                let mut chunk = chunk.to_vec();
                if corrupt {
                    chunk[0] ^= 1;
                }
                w.write(&chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
            let committed = w.commit().await;
            let read = reader.join().unwrap();
            if corrupt {
                assert!(committed.is_err());
                assert!(read.is_err(), "a follower of a bad blob never sees EOF");
            } else {
                committed.unwrap();
                assert_eq!(read.unwrap(), data);
            }
        }
    }

    #[tokio::test]
    async fn an_interrupted_write_is_invisible_and_cleaned() {
        let tmp = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(tmp.path()).unwrap();
        let d = berth_core::model::sha256_digest(b"x");
        let mut w = cs.writer(&d, None).await.unwrap();
        w.write(b"x").await.unwrap();
        std::mem::forget(w); // the daemon died here
        assert!(!cs.has(&d));
        assert_eq!(std::fs::read_dir(tmp.path().join("ingest")).unwrap().count(), 1);
        let cs = ContentStore::open(tmp.path()).unwrap();
        assert_eq!(std::fs::read_dir(tmp.path().join("ingest")).unwrap().count(), 0);
        assert!(cs.list().unwrap().is_empty());
    }
}
