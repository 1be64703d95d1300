//! The on-disk engines under [`super::disk_store::DiskStore`]: ordered byte-key trees with atomic
//! batches, one tree per store, in one database per data directory.
//!
//! The store needs little of an engine: point reads, ordered range and prefix scans in both
//! directions, an atomic batch that later reads see at once, and a flush after which everything
//! applied survives `kill -9`. [`Engine`] and [`Tree`] are exactly that; [`sled`] and [`fjall`]
//! implement them. Which engine a data directory holds is read from its files ([`detect`]), so a
//! node keeps the engine it was started with whatever the configured default.

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::Bound;
use std::path::Path;
use std::time::Duration;

pub mod fjall;
pub mod sled;

/// An engine's own failure.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("sled: {0}")]
    Sled(#[from] ::sled::Error),
    #[error("fjall: {0}")]
    Fjall(#[from] ::fjall::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl EngineError {
    /// The I/O error underneath, if that is what failed.
    pub fn io(&self) -> Option<&std::io::Error> {
        match self {
            EngineError::Sled(::sled::Error::Io(io)) => Some(io),
            EngineError::Fjall(::fjall::Error::Io(io))
            | EngineError::Fjall(::fjall::Error::Storage(::fjall::LsmError::Io(io))) => Some(io),
            EngineError::Io(io) => Some(io),
            _ => None,
        }
    }

    /// The engine failed for good, not the request: an I/O error, or an engine that stopped
    /// taking writes after one (sled keeps its log writer's error; fjall poisons itself).
    pub fn is_storage_failure(&self) -> bool {
        self.io().is_some()
            || matches!(
                self,
                EngineError::Sled(::sled::Error::ReportableBug(_))
                    | EngineError::Fjall(::fjall::Error::Poisoned)
            )
    }
}

/// Writes applied together: all or none survive a crash. A concurrent reader may see part of a
/// batch (fjall reads the latest sequence number); the store never relies on that (new records lie
/// above the visible watermark, re-anchoring and merges hold the gate). A key written twice keeps
/// its last value (engines differ on duplicates inside one batch; this has none).
#[derive(Debug, Default)]
pub struct WriteBatch(BTreeMap<Vec<u8>, Option<Vec<u8>>>);

impl WriteBatch {
    pub fn insert(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.0.insert(key.into(), Some(value.into()));
    }

    pub fn remove(&mut self, key: impl Into<Vec<u8>>) {
        self.0.insert(key.into(), None);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_ops(self) -> impl Iterator<Item = (Vec<u8>, Option<Vec<u8>>)> {
        self.0.into_iter()
    }
}

/// Key–value pairs in key order, either way.
pub type KvIter<V> = Box<dyn DoubleEndedIterator<Item = Result<(V, V), EngineError>> + Send>;

/// One store's ordered key space.
pub trait Tree: Clone + Send + Sync + 'static {
    /// A stored key or value, shared rather than copied where the engine allows.
    type Value: std::ops::Deref<Target = [u8]> + AsRef<[u8]> + Clone + Send + Sync + 'static;

    fn get(&self, key: &[u8]) -> Result<Option<Self::Value>, EngineError>;

    fn contains_key(&self, key: &[u8]) -> Result<bool, EngineError> {
        self.get(key).map(|v| v.is_some())
    }

    /// Writes one key (visible at once, durable after the next flush).
    fn insert(&self, key: &[u8], value: &[u8]) -> Result<(), EngineError>;

    /// Applies `batch` atomically (visible at once, durable after the next flush).
    fn apply(&self, batch: WriteBatch) -> Result<(), EngineError>;

    fn range(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> KvIter<Self::Value>;

    fn prefix(&self, prefix: &[u8]) -> KvIter<Self::Value>;
}

/// What an engine did on its own to reclaim space (its LSM compactions), since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineMaintenance {
    pub compactions: u64,
    pub compacting: Duration,
    /// Table files it holds now.
    pub tables: u64,
}

/// One database: a data directory's trees.
pub trait Engine: Clone + Send + Sync + 'static {
    type Tree: Tree;

    /// Its name in config, metrics and `/status`.
    const KIND: EngineKind;

    /// Opens (creating if needed) the database in `dir`, with a cache of `cache_bytes`.
    fn open(dir: &Path, cache_bytes: u64) -> Result<Self, EngineError>;

    fn open_tree(&self, name: &str) -> Result<Self::Tree, EngineError>;

    fn tree_names(&self) -> Vec<String>;

    /// Makes everything applied so far durable.
    fn flush(&self) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// [`Self::flush`], blocking (opening a store, outside the runtime's workers' hot paths).
    fn flush_blocking(&self) -> Result<(), EngineError>;

    fn size_on_disk(&self) -> Result<u64, EngineError>;

    /// Whether the engine still takes writes (writes nothing): fjall refuses every write after
    /// one failed journal write or fsync, while its reads go on working.
    fn check_writable(&self) -> Result<(), EngineError> {
        Ok(())
    }

    /// The engine's own maintenance, where it reports any (sled does not).
    fn maintenance(&self) -> Option<EngineMaintenance>;
}

/// The on-disk engines, as named in `storage.kind` (and a SyncNode's `spec.storage.kind`).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// sled 0.34: a B-tree over a log; the engine syncrelay started with.
    Sled,
    /// fjall 3: an LSM tree with background compaction that reports what it did. The engine of
    /// new data directories, chosen by `storage_bench` (BENCHMARKS.md "Storage engines").
    #[default]
    Fjall,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Sled => "sled",
            EngineKind::Fjall => "fjall",
        }
    }
}

/// The engine whose files `dir` holds; `None` for a folder that is empty or missing.
/// sled writes `conf` and `db`; fjall writes a `version` marker and a `keyspaces` folder.
pub fn detect(dir: &Path) -> Result<Option<EngineKind>, std::io::Error> {
    let has = |name: &str| dir.join(name).exists();
    if has("conf") && has("db") {
        return Ok(Some(EngineKind::Sled));
    }
    if self::fjall::is_fjall_dir(dir) {
        return Ok(Some(EngineKind::Fjall));
    }
    match std::fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            None => Ok(None),
            Some(_) => Err(std::io::Error::other(format!(
                "{} holds files of no engine this node knows (sled or fjall)",
                dir.display()
            ))),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
