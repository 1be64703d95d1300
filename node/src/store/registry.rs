//! Opens stores by address, lazily, from one backend, and shares one change channel among them (so
//! the server's SSE feed sees every store of the node).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::disk_store::DiskStore;
use super::engine::fjall::FjallEngine;
use super::engine::sled::SledEngine;
use super::engine::{self, Engine, EngineError, EngineKind, EngineMaintenance, Tree};
use super::health::SpaceGuard;
use super::index_compaction::CompactionThresholds;
use super::memory::MemoryStore;
use super::{ContentAddressedStore, StoreChange, StoreError};
use crate::wire::StoreId;

/// Where a registry keeps its stores.
pub enum StorageBackend {
    Memory,
    Disk(Box<dyn DiskBackend>),
}

impl StorageBackend {
    /// Opens the database in `dir` with the engine its files show, or `default` for a new one
    /// (a node keeps the engine its data directory was first written with), and a cache of
    /// `cache_bytes`.
    pub fn open(dir: &Path, default: EngineKind, cache_bytes: u64) -> Result<Self, StoreError> {
        let on_disk = |source: EngineError| StoreError::Engine {
            store: dir.display().to_string(),
            source,
        };
        let kind = engine::detect(dir)
            .map_err(|e| on_disk(e.into()))?
            .unwrap_or(default);
        if kind != default {
            tracing::warn!(dir = %dir.display(), engine = kind.as_str(), configured = default.as_str(),
                "the data directory was written with another engine than storage.kind names; keeping its engine");
        }
        Ok(StorageBackend::Disk(match kind {
            EngineKind::Sled => Box::new(SledEngine::open(dir, cache_bytes).map_err(on_disk)?),
            EngineKind::Fjall => Box::new(FjallEngine::open(dir, cache_bytes).map_err(on_disk)?),
        }))
    }

    /// The engine, for an on-disk backend.
    pub fn engine(&self) -> Option<EngineKind> {
        match self {
            StorageBackend::Memory => None,
            StorageBackend::Disk(disk) => Some(disk.kind()),
        }
    }
}

/// What the registry needs of an [`Engine`], without naming which one.
pub trait DiskBackend: Send + Sync {
    fn kind(&self) -> EngineKind;
    fn open_store(
        &self,
        id: &StoreId,
        changes: broadcast::Sender<StoreChange>,
        space: Option<Arc<SpaceGuard>>,
        thresholds: CompactionThresholds,
    ) -> Result<SharedStore, StoreError>;
    fn tree_names(&self) -> Vec<String>;
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError>;
    fn insert(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), EngineError>;
    fn flush(&self) -> futures::future::BoxFuture<'_, Result<(), EngineError>>;
    fn size_on_disk(&self) -> Result<u64, EngineError>;
    fn maintenance(&self) -> Option<EngineMaintenance>;
    fn check_writable(&self) -> Result<(), EngineError>;
}

impl<E: Engine> DiskBackend for E {
    fn kind(&self) -> EngineKind {
        E::KIND
    }

    fn open_store(
        &self,
        id: &StoreId,
        changes: broadcast::Sender<StoreChange>,
        space: Option<Arc<SpaceGuard>>,
        thresholds: CompactionThresholds,
    ) -> Result<SharedStore, StoreError> {
        Ok(Arc::new(
            DiskStore::open(self.clone(), id.clone(), changes)?
                .with_space_guard(space)
                .with_compaction(thresholds),
        ))
    }

    fn tree_names(&self) -> Vec<String> {
        Engine::tree_names(self)
    }

    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self.open_tree(tree)?.get(key)?.map(|v| v.as_ref().to_vec()))
    }

    fn insert(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), EngineError> {
        self.open_tree(tree)?.insert(key, value)
    }

    fn flush(&self) -> futures::future::BoxFuture<'_, Result<(), EngineError>> {
        Box::pin(Engine::flush(self))
    }

    fn size_on_disk(&self) -> Result<u64, EngineError> {
        Engine::size_on_disk(self)
    }

    fn maintenance(&self) -> Option<EngineMaintenance> {
        Engine::maintenance(self)
    }

    fn check_writable(&self) -> Result<(), EngineError> {
        Engine::check_writable(self)
    }
}

const SYNC_STATE_TREE: &str = "syncstate";

pub type SharedStore = Arc<dyn ContentAddressedStore>;

pub struct StoreRegistry {
    backend: StorageBackend,
    stores: Mutex<HashMap<StoreId, SharedStore>>,
    changes: broadcast::Sender<StoreChange>,
    data_dir: Option<PathBuf>,
    /// Sync cursors of the memory backend (an on-disk backend keeps them in its `syncstate` tree).
    sync_state: Mutex<HashMap<String, Vec<u8>>>,
    /// Databases a tenant may have; opening a store of a further one is refused.
    max_databases_per_tenant: usize,
    /// Checked before every write of an on-disk backend (stores and sync state).
    space: Option<Arc<SpaceGuard>>,
    /// When the on-disk stores' index maintenance merges keys.
    compaction: CompactionThresholds,
}

impl StoreRegistry {
    pub fn new(backend: StorageBackend, data_dir: Option<PathBuf>) -> Self {
        StoreRegistry {
            backend,
            stores: Mutex::new(HashMap::new()),
            changes: broadcast::channel(4096).0,
            data_dir,
            sync_state: Mutex::new(HashMap::new()),
            max_databases_per_tenant: usize::MAX,
            space: None,
            compaction: CompactionThresholds::default(),
        }
    }

    /// Refuses writes while the data directory's file system is below `min_free` bytes free.
    pub fn with_space_guard(mut self, dir: PathBuf, min_free: u64) -> Self {
        self.space = Some(Arc::new(SpaceGuard::new(dir, min_free)));
        self
    }

    /// Sets when the on-disk stores' index maintenance merges keys.
    pub fn with_compaction(mut self, thresholds: CompactionThresholds) -> Self {
        self.compaction = thresholds;
        self
    }

    /// An empty store standing for a database this node does not hold (reads create nothing): it
    /// answers as a fresh store of this backend would, with a fixed epoch.
    pub fn empty_view(&self, id: &StoreId) -> SharedStore {
        let compaction = match self.backend {
            StorageBackend::Memory => Default::default(),
            StorageBackend::Disk(_) => {
                super::index_compaction::CompactionFigures::default().status(&self.compaction)
            }
        };
        Arc::new(MemoryStore::empty_view(id.clone(), compaction))
    }

    /// Runs every open store's upkeep ([`ContentAddressedStore::maintain`]) once; a store that
    /// fails is reported and the others still get theirs.
    pub async fn maintain_all(&self) {
        for store in self.opened() {
            if let Err(e) = store.maintain().await {
                tracing::warn!(store = %store.id(), error = %e, "store maintenance failed");
            }
        }
    }

    /// Bounds the databases per tenant that [`Self::open`] creates (stores found on disk at start
    /// are opened whatever their number).
    pub fn with_database_limit(mut self, max: u32) -> Self {
        self.max_databases_per_tenant = max.max(1) as usize;
        self
    }

    /// Whether [`Self::open`] would create or find `id` within the database limit.
    pub fn has_room_for(&self, id: &StoreId) -> bool {
        let stores = self.stores.lock().expect("store map");
        let mut databases = std::collections::HashSet::new();
        for s in stores.keys().filter(|s| s.tenant_id == id.tenant_id) {
            if s.db_id == id.db_id {
                return true;
            }
            databases.insert(s.db_id.as_str());
        }
        databases.len() < self.max_databases_per_tenant
    }

    /// The store at `id` if it exists; never creates one (reads of an unknown database).
    pub fn get(&self, id: &StoreId) -> Option<SharedStore> {
        self.stores.lock().expect("store map").get(id).cloned()
    }

    pub fn memory() -> Self {
        Self::new(StorageBackend::Memory, None)
    }

    /// The store at `id`, created on first use.
    pub fn open(&self, id: &StoreId) -> Result<SharedStore, StoreError> {
        self.open_reporting(id).map(|(store, _)| store)
    }

    /// Like [`Self::open`], also telling whether this call opened it first. A store of a database
    /// new to its tenant is created only while the tenant has fewer than the limit.
    pub fn open_reporting(&self, id: &StoreId) -> Result<(SharedStore, bool), StoreError> {
        self.open_inner(id, self.max_databases_per_tenant)
    }

    fn open_inner(&self, id: &StoreId, limit: usize) -> Result<(SharedStore, bool), StoreError> {
        let mut stores = self.stores.lock().expect("store map");
        if let Some(store) = stores.get(id) {
            return Ok((store.clone(), false));
        }
        let known_database = stores
            .keys()
            .any(|s| s.tenant_id == id.tenant_id && s.db_id == id.db_id);
        if !known_database {
            let databases: std::collections::HashSet<&str> = stores
                .keys()
                .filter(|s| s.tenant_id == id.tenant_id)
                .map(|s| s.db_id.as_str())
                .collect();
            if databases.len() >= limit {
                return Err(StoreError::TooManyDatabases {
                    tenant: id.tenant_id.clone(),
                    limit,
                });
            }
        }
        let store: SharedStore = match &self.backend {
            StorageBackend::Memory => Arc::new(MemoryStore::new(id.clone(), self.changes.clone())),
            StorageBackend::Disk(disk) => disk.open_store(
                id,
                self.changes.clone(),
                self.space.clone(),
                self.compaction,
            )?,
        };
        stores.insert(id.clone(), store.clone());
        Ok((store, true))
    }

    /// Opens every store that exists on disk (at startup, so metrics cover them all).
    pub fn open_existing(&self) -> Result<usize, StoreError> {
        let StorageBackend::Disk(disk) = &self.backend else {
            return Ok(0);
        };
        let mut opened = 0;
        for name in disk.tree_names() {
            let parts: Vec<&str> = name.split('/').collect();
            if let ["store", tenant, db_id, kind] = parts[..] {
                let kind = crate::wire::StoreKind::parse(kind);
                if let Some(id) = kind.and_then(|k| StoreId::new(tenant, db_id, k).ok()) {
                    self.open_inner(&id, usize::MAX)?;
                    opened += 1;
                }
            }
        }
        Ok(opened)
    }

    /// A persisted sync cursor (see `roles::replication`).
    pub fn load_sync_state(&self, key: &str) -> Option<Vec<u8>> {
        match &self.backend {
            StorageBackend::Disk(disk) => disk.get(SYNC_STATE_TREE, key.as_bytes()).ok().flatten(),
            StorageBackend::Memory => self
                .sync_state
                .lock()
                .expect("sync state")
                .get(key)
                .cloned(),
        }
    }

    /// Saves a sync cursor. Not flushed here: it is saved after the entries it covers are durable,
    /// and losing it to a crash only means rescanning a little more.
    pub fn save_sync_state(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        if let Some(space) = &self.space {
            space.check()?;
        }
        match &self.backend {
            StorageBackend::Disk(disk) => disk
                .insert(SYNC_STATE_TREE, key.as_bytes(), value)
                .map_err(|source| StoreError::Engine {
                    store: SYNC_STATE_TREE.into(),
                    source,
                })?,
            StorageBackend::Memory => {
                self.sync_state
                    .lock()
                    .expect("sync state")
                    .insert(key.to_string(), value.to_vec());
            }
        }
        Ok(())
    }

    /// Stores opened so far.
    pub fn opened(&self) -> Vec<SharedStore> {
        self.stores
            .lock()
            .expect("store map")
            .values()
            .cloned()
            .collect()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<StoreChange> {
        self.changes.subscribe()
    }

    /// Publishes a change that did not come from a store of this registry (an upstream's, relayed
    /// by a node without a local copy). No subscriber is not an error.
    pub fn announce(&self, change: StoreChange) {
        let _ = self.changes.send(change);
    }

    /// Flushes everything (graceful shutdown).
    pub async fn flush_all(&self) -> Result<(), StoreError> {
        if let StorageBackend::Disk(disk) = &self.backend {
            disk.flush().await.map_err(|source| StoreError::Engine {
                store: "all".into(),
                source,
            })?;
        }
        Ok(())
    }

    /// Whether the storage would take a write now: room on the disk, and an engine that still
    /// answers reads and takes writes (`Err` other than `DiskFull`: the engine failed for good —
    /// sled keeps an I/O error of its log writer, fjall poisons itself — and only a restart
    /// recovers it). Writes nothing.
    pub fn probe(&self) -> Result<(), StoreError> {
        if let StorageBackend::Disk(disk) = &self.backend {
            let failed = |source| StoreError::Engine {
                store: "probe".into(),
                source,
            };
            disk.get(SYNC_STATE_TREE, b"probe").map_err(failed)?;
            disk.check_writable().map_err(failed)?;
        }
        if let Some(space) = &self.space {
            space.check()?;
        }
        Ok(())
    }

    /// Bytes the backend occupies on disk, if it is on disk.
    pub fn size_on_disk(&self) -> Option<u64> {
        match &self.backend {
            StorageBackend::Disk(disk) => disk.size_on_disk().ok(),
            StorageBackend::Memory => None,
        }
    }

    /// The on-disk engine, if the backend is on disk.
    pub fn engine(&self) -> Option<EngineKind> {
        self.backend.engine()
    }

    /// What the engine did on its own to reclaim space, where it reports that.
    pub fn engine_maintenance(&self) -> Option<EngineMaintenance> {
        match &self.backend {
            StorageBackend::Disk(disk) => disk.maintenance(),
            StorageBackend::Memory => None,
        }
    }

    pub fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::StoreKind;

    /// A data directory keeps the engine it was written with, whatever the configured default; a
    /// new one gets the default.
    #[tokio::test]
    async fn a_data_directory_keeps_its_engine() {
        let id = StoreId::new("t", "db", StoreKind::Docs).unwrap();
        for (written, configured) in [
            (EngineKind::Sled, EngineKind::Fjall),
            (EngineKind::Fjall, EngineKind::Sled),
        ] {
            let dir = tempfile::tempdir().unwrap();
            {
                let registry = StoreRegistry::new(
                    StorageBackend::open(dir.path(), written, 1 << 20).unwrap(),
                    None,
                );
                assert_eq!(registry.engine(), Some(written));
                let store = registry.open(&id).unwrap();
                store
                    .put_entries(vec![crate::store::contract_tests::entry(
                        "a",
                        "d",
                        &[],
                        "doc_create",
                        b"x",
                    )])
                    .await
                    .unwrap();
            }
            assert_eq!(engine::detect(dir.path()).unwrap(), Some(written));
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let backend = loop {
                match StorageBackend::open(dir.path(), configured, 1 << 20) {
                    Ok(b) => break b,
                    // The engine releases its lock from a background thread.
                    Err(_) if std::time::Instant::now() < deadline => {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await
                    }
                    Err(e) => panic!("reopen: {e}"),
                }
            };
            let registry = StoreRegistry::new(backend, None);
            assert_eq!(
                registry.engine(),
                Some(written),
                "configured {configured:?}"
            );
            assert_eq!(registry.open_existing().unwrap(), 1);
            let store = registry.get(&id).unwrap();
            assert_eq!(store.get_all_ids().await.unwrap(), vec!["a"]);
        }
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(engine::detect(empty.path()).unwrap(), None);
        std::fs::write(empty.path().join("stray"), b"x").unwrap();
        assert!(
            engine::detect(empty.path()).is_err(),
            "files of no known engine are not taken for an empty directory"
        );
    }
}
