//! Opens stores by address, lazily, from one backend, and shares one change channel among them (so
//! the server's SSE feed sees every store of the node).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::health::SpaceGuard;
use super::memory::MemoryStore;
use super::sled_compaction::CompactionThresholds;
use super::sled_store::SledStore;
use super::{ContentAddressedStore, StoreChange, StoreError};
use crate::wire::StoreId;

/// Where a registry keeps its stores.
pub enum StorageBackend {
    Memory,
    Sled(sled::Db),
}

impl StorageBackend {
    /// Opens the sled database in `dir` with a page cache of `cache_bytes`.
    pub fn sled(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|source| StoreError::Sled {
                store: dir.display().to_string(),
                source,
            })?;
        Ok(StorageBackend::Sled(db))
    }
}

const SYNC_STATE_TREE: &str = "syncstate";

pub type SharedStore = Arc<dyn ContentAddressedStore>;

pub struct StoreRegistry {
    backend: StorageBackend,
    stores: Mutex<HashMap<StoreId, SharedStore>>,
    changes: broadcast::Sender<StoreChange>,
    data_dir: Option<PathBuf>,
    /// Sync cursors of the memory backend (the sled backend keeps them in its `syncstate` tree).
    sync_state: Mutex<HashMap<String, Vec<u8>>>,
    /// Databases a tenant may have; opening a store of a further one is refused.
    max_databases_per_tenant: usize,
    /// Checked before every write of the sled backend (stores and sync state).
    space: Option<Arc<SpaceGuard>>,
    /// When the sled stores' index maintenance merges keys.
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

    /// Sets when the sled stores' index maintenance merges keys.
    pub fn with_compaction(mut self, thresholds: CompactionThresholds) -> Self {
        self.compaction = thresholds;
        self
    }

    /// An empty store standing for a database this node does not hold (reads create nothing): it
    /// answers as a fresh store of this backend would, with a fixed epoch.
    pub fn empty_view(&self, id: &StoreId) -> SharedStore {
        let compaction = match self.backend {
            StorageBackend::Memory => Default::default(),
            StorageBackend::Sled(_) => {
                super::sled_compaction::CompactionFigures::default().status(&self.compaction)
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
            StorageBackend::Sled(db) => Arc::new(
                SledStore::open(db.clone(), id.clone(), self.changes.clone())?
                    .with_space_guard(self.space.clone())
                    .with_compaction(self.compaction),
            ),
        };
        stores.insert(id.clone(), store.clone());
        Ok((store, true))
    }

    /// Opens every store that exists on disk (at startup, so metrics cover them all).
    pub fn open_existing(&self) -> Result<usize, StoreError> {
        let StorageBackend::Sled(db) = &self.backend else {
            return Ok(0);
        };
        let mut opened = 0;
        for name in db.tree_names() {
            let Ok(name) = std::str::from_utf8(&name) else {
                continue;
            };
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
            StorageBackend::Sled(db) => db
                .open_tree(SYNC_STATE_TREE)
                .ok()?
                .get(key)
                .ok()
                .flatten()
                .map(|v| v.to_vec()),
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
            StorageBackend::Sled(db) => {
                let sled_err = |source| StoreError::Sled {
                    store: SYNC_STATE_TREE.into(),
                    source,
                };
                db.open_tree(SYNC_STATE_TREE)
                    .map_err(sled_err)?
                    .insert(key, value)
                    .map_err(sled_err)?;
            }
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
        if let StorageBackend::Sled(db) = &self.backend {
            db.flush_async().await.map_err(|source| StoreError::Sled {
                store: "all".into(),
                source,
            })?;
        }
        Ok(())
    }

    /// Whether the storage would take a write now: room on the disk, and an engine that still
    /// answers reads (`Err` other than `DiskFull`: the engine failed for good — sled keeps an I/O
    /// error of its log writer and fails everything after it). Writes nothing.
    pub fn probe(&self) -> Result<(), StoreError> {
        if let StorageBackend::Sled(db) = &self.backend {
            db.get(b"probe").map_err(|source| StoreError::Sled {
                store: "probe".into(),
                source,
            })?;
        }
        if let Some(space) = &self.space {
            space.check()?;
        }
        Ok(())
    }

    /// Bytes the backend occupies on disk, if it is on disk.
    pub fn size_on_disk(&self) -> Option<u64> {
        match &self.backend {
            StorageBackend::Sled(db) => db.size_on_disk().ok(),
            StorageBackend::Memory => None,
        }
    }

    pub fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_deref()
    }
}
