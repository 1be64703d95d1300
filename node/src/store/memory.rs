//! In-memory store: the reference semantics without persistence (tests, caches, ephemeral nodes).
//! One lock guards a batch, so a batch's entries become visible together and in receiptOrder order.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::{
    check_payload, new_epoch, ContentAddressedStore, PutSummary, StoreChange, StoreError,
    StoreStats,
};
use crate::wire::{
    CompactionStatus, Entry, EntryMetadata, ScanCursor, ScanFilters, ScanPage, StoreHead, StoreId,
    MAX_SCAN_PAGE,
};

#[derive(Default)]
struct Inner {
    by_id: HashMap<String, Arc<EntryMetadata>>,
    order: BTreeSet<(u64, String)>,
    payloads: HashMap<String, Arc<Vec<u8>>>,
    payload_bytes: u64,
    max_receipt_order: u64,
}

/// Epoch of [`MemoryStore::empty_view`]: a database that does not exist here yet.
pub const EMPTY_VIEW_EPOCH: &str = "00000000-0000-7000-8000-000000000000";

pub struct MemoryStore {
    id: StoreId,
    epoch: String,
    inner: RwLock<Inner>,
    changes: broadcast::Sender<StoreChange>,
    /// What `getCompactionStatus` answers: nothing to compact in memory, unless this is the empty
    /// view of an on-disk node's database (which answers as a fresh store of that node would).
    compaction: CompactionStatus,
}

impl MemoryStore {
    pub fn new(id: StoreId, changes: broadcast::Sender<StoreChange>) -> Self {
        MemoryStore {
            id,
            epoch: new_epoch(),
            inner: RwLock::new(Inner::default()),
            changes,
            compaction: CompactionStatus::default(),
        }
    }

    /// An empty store with a fixed epoch, standing for a database this node does not hold: reads
    /// of it are answered without creating anything, and the same epoch every time.
    pub fn empty_view(id: StoreId, compaction: CompactionStatus) -> Self {
        MemoryStore {
            id,
            epoch: EMPTY_VIEW_EPOCH.into(),
            inner: RwLock::new(Inner::default()),
            changes: broadcast::channel(1).0,
            compaction,
        }
    }

    /// A store with its own change channel.
    pub fn standalone(id: StoreId) -> Self {
        Self::new(id, broadcast::channel(1024).0)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn head(&self, inner: &Inner) -> StoreHead {
        StoreHead {
            epoch: self.epoch.clone(),
            max_receipt_order: inner.max_receipt_order,
        }
    }
}

#[async_trait]
impl ContentAddressedStore for MemoryStore {
    fn id(&self) -> &StoreId {
        &self.id
    }

    async fn put_entries(&self, entries: Vec<Entry>) -> Result<PutSummary, StoreError> {
        for entry in &entries {
            check_payload(entry)?;
        }
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let mut inserted = Vec::new();
        for entry in entries {
            if inner.by_id.contains_key(&entry.metadata.id) {
                continue;
            }
            inner.max_receipt_order += 1;
            let ro = inner.max_receipt_order;
            let mut meta = entry.metadata;
            meta.receipt_order = Some(ro);
            if !inner.payloads.contains_key(&meta.content_hash) {
                inner.payload_bytes += entry.encrypted_data.len() as u64;
                inner
                    .payloads
                    .insert(meta.content_hash.clone(), Arc::new(entry.encrypted_data));
            }
            inner.order.insert((ro, meta.id.clone()));
            inserted.push(meta.id.clone());
            inner.by_id.insert(meta.id.clone(), Arc::new(meta));
        }
        let head = self.head(&inner);
        drop(inner);
        Ok(super::announce_put(&self.changes, &self.id, inserted, head))
    }

    fn keeps_receipts(&self) -> bool {
        true
    }

    async fn apply_receipts(&self, receipts: &[EntryMetadata]) -> Result<Vec<String>, StoreError> {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let mut updated = Vec::new();
        for receipt in receipts {
            let Some(stored) = inner.by_id.get(&receipt.id) else {
                continue;
            };
            let Some(mut record) = super::with_receipt(stored, receipt) else {
                continue;
            };
            let old = (stored.receipt_order.unwrap_or(0), receipt.id.clone());
            inner.order.remove(&old);
            inner.max_receipt_order += 1;
            let ro = inner.max_receipt_order;
            record.receipt_order = Some(ro);
            inner.order.insert((ro, record.id.clone()));
            inner.by_id.insert(record.id.clone(), Arc::new(record));
            updated.push(receipt.id.clone());
        }
        let head = self.head(&inner);
        drop(inner);
        Ok(super::announce_put(&self.changes, &self.id, updated, head).inserted)
    }

    async fn get_entries(&self, ids: &[String]) -> Result<Vec<Entry>, StoreError> {
        let inner = self.read();
        Ok(ids
            .iter()
            .filter_map(|id| {
                let meta = inner.by_id.get(id)?;
                let payload = inner.payloads.get(&meta.content_hash)?;
                Some(Entry {
                    metadata: (**meta).clone(),
                    encrypted_data: (**payload).clone(),
                })
            })
            .collect())
    }

    async fn get_entry_metadata(&self, id: &str) -> Result<Option<EntryMetadata>, StoreError> {
        Ok(self.read().by_id.get(id).map(|m| (**m).clone()))
    }

    async fn has_entries(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let inner = self.read();
        Ok(ids
            .iter()
            .filter(|id| inner.by_id.contains_key(*id))
            .cloned()
            .collect())
    }

    async fn scan_entries_since(
        &self,
        cursor: Option<&ScanCursor>,
        limit: usize,
        filters: &ScanFilters,
    ) -> Result<ScanPage, StoreError> {
        let limit = limit.clamp(1, MAX_SCAN_PAGE);
        let inner = self.read();
        let start = match cursor {
            Some(c) => Bound::Excluded((c.receipt_order, c.id.clone())),
            None => Bound::Unbounded,
        };
        let mut entries = Vec::new();
        let mut has_more = false;
        for (_, id) in inner.order.range((start, Bound::Unbounded)) {
            let meta = &inner.by_id[id];
            if !filters.matches(meta) {
                continue;
            }
            if entries.len() == limit {
                has_more = true;
                break;
            }
            entries.push((**meta).clone());
        }
        Ok(super::page(entries, cursor, has_more))
    }

    async fn get_store_head(&self) -> Result<StoreHead, StoreError> {
        Ok(self.head(&self.read()))
    }

    async fn compaction_status(&self) -> Result<CompactionStatus, StoreError> {
        Ok(self.compaction.clone())
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let inner = self.read();
        Ok(StoreStats {
            entries: inner.by_id.len() as u64,
            payload_bytes: inner.payload_bytes,
            index_keys_waiting: 0,
        })
    }

    fn subscribe_changes(&self) -> broadcast::Receiver<StoreChange> {
        self.changes.subscribe()
    }

    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn get_all_ids(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.read().order.iter().map(|(_, id)| id.clone()).collect())
    }

    async fn find_new_entries(
        &self,
        have_ids: &[String],
    ) -> Result<Vec<EntryMetadata>, StoreError> {
        let have: HashSet<&str> = have_ids.iter().map(String::as_str).collect();
        let inner = self.read();
        Ok(inner
            .order
            .iter()
            .filter(|(_, id)| !have.contains(id.as_str()))
            .map(|(_, id)| (*inner.by_id[id]).clone())
            .collect())
    }
}
