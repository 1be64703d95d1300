//! fjall 3 as an [`Engine`]: a keyspace (its own LSM tree) per store, cross-keyspace atomic write
//! batches, and `persist(SyncAll)` for durability. fjall compacts its tables in background
//! threads and counts what it did ([`Engine::maintenance`]).

use std::ops::Bound;
use std::path::Path;

use super::{Engine, EngineError, EngineKind, EngineMaintenance, KvIter, Tree, WriteBatch};

#[derive(Clone)]
pub struct FjallEngine(pub ::fjall::Database);

/// Journal bytes fjall keeps before it flushes the oldest memtables.
const JOURNAL_BYTES: u64 = 128 << 20;

/// A store's keyspace: memtables of 16 MiB (fjall's default, 64 MiB, with up to four sealed ones
/// waiting, would let one busy store hold 320 MiB). Fixed at creation: fjall stores the options.
fn keyspace_options() -> ::fjall::KeyspaceCreateOptions {
    ::fjall::KeyspaceCreateOptions::default().max_memtable_size(16 << 20)
}

/// Whether `dir` holds a fjall database (its version marker and keyspaces folder).
pub fn is_fjall_dir(dir: &Path) -> bool {
    dir.join("version").is_file() && dir.join("keyspaces").is_dir()
}

/// A store's keyspace and the database its batches go through.
#[derive(Clone)]
pub struct FjallTree {
    db: ::fjall::Database,
    keyspace: ::fjall::Keyspace,
}

fn pairs(iter: ::fjall::Iter) -> KvIter<::fjall::Slice> {
    Box::new(iter.map(|guard| guard.into_inner().map_err(Into::into)))
}

impl Tree for FjallTree {
    type Value = ::fjall::Slice;

    fn get(&self, key: &[u8]) -> Result<Option<Self::Value>, EngineError> {
        Ok(self.keyspace.get(key)?)
    }

    fn contains_key(&self, key: &[u8]) -> Result<bool, EngineError> {
        Ok(self.keyspace.contains_key(key)?)
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> Result<(), EngineError> {
        Ok(self.keyspace.insert(key, value)?)
    }

    fn apply(&self, batch: WriteBatch) -> Result<(), EngineError> {
        let mut fjall_batch = self.db.batch();
        for (key, value) in batch.into_ops() {
            match value {
                Some(value) => fjall_batch.insert(&self.keyspace, key, value),
                None => fjall_batch.remove(&self.keyspace, key),
            }
        }
        Ok(fjall_batch.commit()?)
    }

    fn range(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> KvIter<Self::Value> {
        pairs(self.keyspace.range::<&[u8], _>((start, end)))
    }

    fn prefix(&self, prefix: &[u8]) -> KvIter<Self::Value> {
        pairs(self.keyspace.prefix(prefix))
    }
}

impl Engine for FjallEngine {
    type Tree = FjallTree;
    const KIND: EngineKind = EngineKind::Fjall;

    /// Opens (creating if needed) the database in `dir` with a block cache of `cache_bytes`.
    fn open(dir: &Path, cache_bytes: u64) -> Result<Self, EngineError> {
        Ok(FjallEngine(
            ::fjall::Database::builder(dir)
                .cache_size(cache_bytes)
                // Unflushed data across all stores (fjall's default is 512 MiB): bounds memory
                // and recovery time of a node carrying many databases.
                .max_journaling_size(JOURNAL_BYTES)
                .open()?,
        ))
    }

    fn open_tree(&self, name: &str) -> Result<Self::Tree, EngineError> {
        Ok(FjallTree {
            db: self.0.clone(),
            keyspace: self.0.keyspace(name, keyspace_options)?,
        })
    }

    fn tree_names(&self) -> Vec<String> {
        self.0
            .list_keyspace_names()
            .iter()
            .map(|n| n.to_string())
            .collect()
    }

    async fn flush(&self) -> Result<(), EngineError> {
        let db = self.0.clone();
        tokio::task::spawn_blocking(move || db.persist(::fjall::PersistMode::SyncAll))
            .await
            .map_err(|e| EngineError::Io(std::io::Error::other(e)))??;
        Ok(())
    }

    fn flush_blocking(&self) -> Result<(), EngineError> {
        Ok(self.0.persist(::fjall::PersistMode::SyncAll)?)
    }

    fn size_on_disk(&self) -> Result<u64, EngineError> {
        Ok(self.0.disk_space()?)
    }

    /// A buffered persist writes nothing new and fails once the database is poisoned.
    fn check_writable(&self) -> Result<(), EngineError> {
        Ok(self.0.persist(::fjall::PersistMode::Buffer)?)
    }

    fn maintenance(&self) -> Option<EngineMaintenance> {
        let tables = self
            .0
            .list_keyspace_names()
            .iter()
            .filter_map(|name| self.0.keyspace(name, keyspace_options).ok())
            .map(|k| k.table_count() as u64)
            .sum();
        Some(EngineMaintenance {
            compactions: self.0.compactions_completed() as u64,
            compacting: self.0.time_compacting(),
            tables,
        })
    }
}
