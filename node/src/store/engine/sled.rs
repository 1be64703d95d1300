//! sled 0.34 as an [`Engine`]: a tree per store, `apply_batch` for atomic batches, `flush_async`
//! for durability (it groups concurrent flushes).

use std::ops::Bound;
use std::path::Path;

use super::{Engine, EngineError, EngineKind, EngineMaintenance, KvIter, Tree, WriteBatch};

#[derive(Clone)]
pub struct SledEngine(pub ::sled::Db);

impl Tree for ::sled::Tree {
    type Value = ::sled::IVec;

    fn get(&self, key: &[u8]) -> Result<Option<Self::Value>, EngineError> {
        Ok(::sled::Tree::get(self, key)?)
    }

    fn contains_key(&self, key: &[u8]) -> Result<bool, EngineError> {
        Ok(::sled::Tree::contains_key(self, key)?)
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> Result<(), EngineError> {
        ::sled::Tree::insert(self, key, value)?;
        Ok(())
    }

    fn apply(&self, batch: WriteBatch) -> Result<(), EngineError> {
        let mut sled_batch = ::sled::Batch::default();
        for (key, value) in batch.into_ops() {
            match value {
                Some(value) => sled_batch.insert(key, value),
                None => sled_batch.remove(key),
            }
        }
        Ok(self.apply_batch(sled_batch)?)
    }

    fn range(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> KvIter<Self::Value> {
        let owned = |b: Bound<&[u8]>| b.map(::sled::IVec::from);
        Box::new(
            ::sled::Tree::range(self, (owned(start), owned(end))).map(|r| r.map_err(Into::into)),
        )
    }

    fn prefix(&self, prefix: &[u8]) -> KvIter<Self::Value> {
        Box::new(self.scan_prefix(prefix).map(|r| r.map_err(Into::into)))
    }
}

impl Engine for SledEngine {
    type Tree = ::sled::Tree;
    const KIND: EngineKind = EngineKind::Sled;

    /// Opens (creating if needed) the database in `dir` with a page cache of `cache_bytes`.
    fn open(dir: &Path, cache_bytes: u64) -> Result<Self, EngineError> {
        Ok(SledEngine(
            ::sled::Config::new()
                .path(dir)
                .cache_capacity(cache_bytes)
                .mode(::sled::Mode::HighThroughput)
                .open()?,
        ))
    }

    fn open_tree(&self, name: &str) -> Result<Self::Tree, EngineError> {
        Ok(self.0.open_tree(name)?)
    }

    fn tree_names(&self) -> Vec<String> {
        self.0
            .tree_names()
            .iter()
            .filter_map(|n| std::str::from_utf8(n).ok().map(str::to_string))
            .collect()
    }

    async fn flush(&self) -> Result<(), EngineError> {
        self.0.flush_async().await?;
        Ok(())
    }

    fn flush_blocking(&self) -> Result<(), EngineError> {
        self.0.flush()?;
        Ok(())
    }

    fn size_on_disk(&self) -> Result<u64, EngineError> {
        Ok(self.0.size_on_disk()?)
    }

    /// sled reclaims its log segments internally and reports nothing about it.
    fn maintenance(&self) -> Option<EngineMaintenance> {
        None
    }
}
