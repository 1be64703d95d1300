//! Opens stores by address, lazily, from one backend, and shares one change channel among them (so
//! the server's SSE feed sees every store of the node).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::memory::MemoryStore;
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

pub type SharedStore = Arc<dyn ContentAddressedStore>;

pub struct StoreRegistry {
    backend: StorageBackend,
    stores: Mutex<HashMap<StoreId, SharedStore>>,
    changes: broadcast::Sender<StoreChange>,
    data_dir: Option<PathBuf>,
}

impl StoreRegistry {
    pub fn new(backend: StorageBackend, data_dir: Option<PathBuf>) -> Self {
        StoreRegistry {
            backend,
            stores: Mutex::new(HashMap::new()),
            changes: broadcast::channel(4096).0,
            data_dir,
        }
    }

    pub fn memory() -> Self {
        Self::new(StorageBackend::Memory, None)
    }

    /// The store at `id`, created on first use.
    pub fn open(&self, id: &StoreId) -> Result<SharedStore, StoreError> {
        let mut stores = self.stores.lock().expect("store map");
        if let Some(store) = stores.get(id) {
            return Ok(store.clone());
        }
        let store: SharedStore = match &self.backend {
            StorageBackend::Memory => Arc::new(MemoryStore::new(id.clone(), self.changes.clone())),
            StorageBackend::Sled(db) => Arc::new(SledStore::open(
                db.clone(),
                id.clone(),
                self.changes.clone(),
            )?),
        };
        stores.insert(id.clone(), store.clone());
        Ok(store)
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
                    self.open(&id)?;
                    opened += 1;
                }
            }
        }
        Ok(opened)
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
