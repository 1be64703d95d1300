//! The on-disk store, on sled. One sled tree per store, keys by prefix:
//!
//! | key | value |
//! |---|---|
//! | `m` id | `u64be receiptOrder` ‖ metadata JSON (the wire record with this store's receiptOrder) |
//! | `o` `u64be receiptOrder` id | empty: the scan order |
//! | `d` `u32be len(docId)` docId id | empty: entries per document |
//! | `p` contentHash | payload bytes, once per distinct hash |
//! | `s:epoch`, `s:max`, `s:count`, `s:bytes` | store state |
//!
//! A batch is one atomic sled batch, flushed before `put_entries` returns, under a per-store write
//! lock. Readers see entries only up to the *durable watermark* (the highest receiptOrder whose batch
//! has been flushed), so nothing is visible that a crash could take back and scans see receiptOrders
//! in order without gaps.

use std::collections::HashSet;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::{
    check_payload, new_epoch, ContentAddressedStore, PutSummary, StoreChange, StoreError,
    StoreStats,
};
use crate::bloom::{self, BloomSummary};
use crate::wire::{
    CompactionStatus, Entry, EntryMetadata, ScanCursor, ScanFilters, ScanPage, StoreHead, StoreId,
    MAX_SCAN_PAGE,
};

const EPOCH: &[u8] = b"s:epoch";
const MAX: &[u8] = b"s:max";
const COUNT: &[u8] = b"s:count";
const BYTES: &[u8] = b"s:bytes";

fn meta_key(id: &str) -> Vec<u8> {
    [b"m", id.as_bytes()].concat()
}

fn order_key(ro: u64, id: &str) -> Vec<u8> {
    [&b"o"[..], &ro.to_be_bytes(), id.as_bytes()].concat()
}

fn doc_prefix(doc_id: &str) -> Vec<u8> {
    [
        &b"d"[..],
        &(doc_id.len() as u32).to_be_bytes(),
        doc_id.as_bytes(),
    ]
    .concat()
}

fn payload_key(hash: &str) -> Vec<u8> {
    [b"p", hash.as_bytes()].concat()
}

fn read_u64(bytes: Option<sled::IVec>) -> u64 {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// Name of the sled tree holding a store.
pub fn tree_name(id: &StoreId) -> String {
    format!("store/{}/{}/{}", id.tenant_id, id.db_id, id.kind)
}

pub struct SledStore {
    id: StoreId,
    db: sled::Db,
    tree: sled::Tree,
    epoch: String,
    write_lock: tokio::sync::Mutex<()>,
    /// Highest receiptOrder that is durable and visible.
    visible: AtomicU64,
    changes: broadcast::Sender<StoreChange>,
    bloom_cache: Mutex<Option<(u64, BloomSummary)>>,
}

impl SledStore {
    /// Opens (creating if needed) the store `id` inside `db`.
    pub fn open(
        db: sled::Db,
        id: StoreId,
        changes: broadcast::Sender<StoreChange>,
    ) -> Result<Self, StoreError> {
        let err = |source| StoreError::Sled {
            store: id.to_string(),
            source,
        };
        let tree = db.open_tree(tree_name(&id)).map_err(err)?;
        let epoch = match tree.get(EPOCH).map_err(err)? {
            Some(e) => String::from_utf8(e.to_vec()).map_err(|_| StoreError::Corrupt {
                store: id.to_string(),
                detail: "epoch is not UTF-8".into(),
            })?,
            None => {
                let e = new_epoch();
                // Only set the epoch if no other opener raced us; then make it durable.
                let _ = tree
                    .compare_and_swap(EPOCH, None as Option<&[u8]>, Some(e.as_bytes()))
                    .map_err(err)?;
                db.flush().map_err(err)?;
                let stored = tree.get(EPOCH).map_err(err)?.expect("epoch just written");
                String::from_utf8_lossy(&stored).into_owned()
            }
        };
        let visible = read_u64(tree.get(MAX).map_err(err)?);
        Ok(SledStore {
            id,
            db,
            tree,
            epoch,
            write_lock: tokio::sync::Mutex::new(()),
            visible: AtomicU64::new(visible),
            changes,
            bloom_cache: Mutex::new(None),
        })
    }

    fn err(&self) -> impl Fn(sled::Error) -> StoreError + '_ {
        move |source| StoreError::Sled {
            store: self.id.to_string(),
            source,
        }
    }

    fn corrupt(&self, detail: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            store: self.id.to_string(),
            detail: detail.into(),
        }
    }

    fn visible(&self) -> u64 {
        self.visible.load(Ordering::Acquire)
    }

    /// Reads a metadata record if it exists and is visible.
    fn load_meta(&self, id: &str) -> Result<Option<EntryMetadata>, StoreError> {
        let Some(raw) = self.tree.get(meta_key(id)).map_err(self.err())? else {
            return Ok(None);
        };
        if raw.len() < 8 {
            return Err(self.corrupt(format!("metadata of {id} is truncated")));
        }
        let ro = u64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
        if ro > self.visible() {
            return Ok(None);
        }
        serde_json::from_slice(&raw[8..])
            .map(Some)
            .map_err(|e| self.corrupt(format!("metadata of {id}: {e}")))
    }

    fn is_visible(&self, id: &str) -> Result<bool, StoreError> {
        Ok(match self.tree.get(meta_key(id)).map_err(self.err())? {
            Some(raw) if raw.len() >= 8 => {
                u64::from_be_bytes(raw[..8].try_into().expect("8 bytes")) <= self.visible()
            }
            _ => false,
        })
    }

    /// Visible `(receiptOrder, id)` keys strictly after `cursor`.
    fn order_range(
        &self,
        cursor: Option<&ScanCursor>,
    ) -> impl Iterator<Item = Result<(u64, String), StoreError>> + '_ {
        let start = match cursor {
            Some(c) => Bound::Excluded(order_key(c.receipt_order, &c.id)),
            None => Bound::Included(b"o".to_vec()),
        };
        let end = Bound::Excluded([&b"o"[..], &(self.visible() + 1).to_be_bytes()].concat());
        self.tree
            .range::<Vec<u8>, _>((start, end))
            .map(move |item| {
                let (key, _) = item.map_err(self.err())?;
                let ro =
                    u64::from_be_bytes(key[1..9].try_into().expect("order key has a receiptOrder"));
                let id = std::str::from_utf8(&key[9..])
                    .map_err(|_| self.corrupt("order key id is not UTF-8"))?
                    .to_string();
                Ok((ro, id))
            })
    }

    fn payload_bytes_total(&self) -> Result<u64, StoreError> {
        Ok(read_u64(self.tree.get(BYTES).map_err(self.err())?))
    }
}

#[async_trait]
impl ContentAddressedStore for SledStore {
    fn id(&self) -> &StoreId {
        &self.id
    }

    async fn put_entries(&self, entries: Vec<Entry>) -> Result<PutSummary, StoreError> {
        for entry in &entries {
            check_payload(entry)?;
        }
        let _writer = self.write_lock.lock().await;
        let mut ro = self.visible();
        let mut count = read_u64(self.tree.get(COUNT).map_err(self.err())?);
        let mut bytes = self.payload_bytes_total()?;
        let mut batch = sled::Batch::default();
        let mut inserted = Vec::new();
        let mut batch_ids = HashSet::new();
        let mut batch_hashes = HashSet::new();
        for entry in entries {
            let meta = entry.metadata;
            if batch_ids.contains(&meta.id)
                || self
                    .tree
                    .contains_key(meta_key(&meta.id))
                    .map_err(self.err())?
            {
                continue;
            }
            ro += 1;
            count += 1;
            let pkey = payload_key(&meta.content_hash);
            if batch_hashes.insert(meta.content_hash.clone())
                && !self.tree.contains_key(&pkey).map_err(self.err())?
            {
                bytes += entry.encrypted_data.len() as u64;
                batch.insert(pkey, entry.encrypted_data);
            }
            let mut record = ro.to_be_bytes().to_vec();
            let mut stored = meta;
            stored.receipt_order = Some(ro);
            serde_json::to_writer(&mut record, &stored).expect("metadata serialises");
            batch.insert(meta_key(&stored.id), record);
            batch.insert(order_key(ro, &stored.id), &[][..]);
            batch.insert(
                [doc_prefix(&stored.doc_id), stored.id.as_bytes().to_vec()].concat(),
                &[][..],
            );
            batch_ids.insert(stored.id.clone());
            inserted.push(stored.id);
        }
        if !inserted.is_empty() {
            batch.insert(MAX, &ro.to_be_bytes()[..]);
            batch.insert(COUNT, &count.to_be_bytes()[..]);
            batch.insert(BYTES, &bytes.to_be_bytes()[..]);
            self.tree.apply_batch(batch).map_err(self.err())?;
            self.db.flush_async().await.map_err(self.err())?;
            self.visible.store(ro, Ordering::Release);
        }
        let head = StoreHead {
            epoch: self.epoch.clone(),
            max_receipt_order: ro,
        };
        Ok(super::announce_put(&self.changes, &self.id, inserted, head))
    }

    async fn get_entries(&self, ids: &[String]) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(metadata) = self.load_meta(id)? else {
                continue;
            };
            let payload = self
                .tree
                .get(payload_key(&metadata.content_hash))
                .map_err(self.err())?
                .ok_or_else(|| self.corrupt(format!("payload of {id} is missing")))?;
            out.push(Entry {
                metadata,
                encrypted_data: payload.to_vec(),
            });
        }
        Ok(out)
    }

    async fn get_entry_metadata(&self, id: &str) -> Result<Option<EntryMetadata>, StoreError> {
        self.load_meta(id)
    }

    async fn has_entries(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for id in ids {
            if self.is_visible(id)? {
                out.push(id.clone());
            }
        }
        Ok(out)
    }

    async fn scan_entries_since(
        &self,
        cursor: Option<&ScanCursor>,
        limit: usize,
        filters: &ScanFilters,
    ) -> Result<ScanPage, StoreError> {
        let limit = limit.clamp(1, MAX_SCAN_PAGE);
        let mut entries = Vec::new();
        let mut has_more = false;
        for item in self.order_range(cursor) {
            let (_, id) = item?;
            let Some(meta) = self.load_meta(&id)? else {
                return Err(self.corrupt(format!("order index names {id} without metadata")));
            };
            if !filters.matches(&meta) {
                continue;
            }
            if entries.len() == limit {
                has_more = true;
                break;
            }
            entries.push(meta);
        }
        Ok(super::page(entries, cursor, has_more))
    }

    async fn get_store_head(&self) -> Result<StoreHead, StoreError> {
        Ok(StoreHead {
            epoch: self.epoch.clone(),
            max_receipt_order: self.visible(),
        })
    }

    async fn compaction_status(&self) -> Result<CompactionStatus, StoreError> {
        // sled reclaims its log segments internally and exposes no figures for it; this store keeps
        // no write-ahead index of its own that would need compacting. Report that honestly.
        Ok(CompactionStatus::default())
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        Ok(StoreStats {
            entries: read_u64(self.tree.get(COUNT).map_err(self.err())?),
            payload_bytes: self.payload_bytes_total()?,
        })
    }

    fn subscribe_changes(&self) -> broadcast::Receiver<StoreChange> {
        self.changes.subscribe()
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await.map_err(self.err())?;
        Ok(())
    }

    async fn get_all_ids(&self) -> Result<Vec<String>, StoreError> {
        self.order_range(None)
            .map(|r| r.map(|(_, id)| id))
            .collect()
    }

    async fn get_id_bloom_summary(&self) -> Result<BloomSummary, StoreError> {
        let at = self.visible();
        if let Some((built_at, summary)) = self.bloom_cache.lock().expect("bloom cache").as_ref() {
            if *built_at == at {
                return Ok(summary.clone());
            }
        }
        let ids = self.get_all_ids().await?;
        let summary = bloom::build(ids.iter().map(String::as_str));
        *self.bloom_cache.lock().expect("bloom cache") = Some((at, summary.clone()));
        Ok(summary)
    }

    async fn find_new_entries_for_doc(
        &self,
        have_ids: &[String],
        doc_id: &str,
    ) -> Result<Vec<EntryMetadata>, StoreError> {
        let have: HashSet<&str> = have_ids.iter().map(String::as_str).collect();
        let prefix = doc_prefix(doc_id);
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(&prefix) {
            let (key, _) = item.map_err(self.err())?;
            let id = std::str::from_utf8(&key[prefix.len()..])
                .map_err(|_| self.corrupt("doc index id is not UTF-8"))?;
            if have.contains(id) {
                continue;
            }
            if let Some(meta) = self.load_meta(id)? {
                out.push(meta);
            }
        }
        out.sort_by(|a, b| (a.receipt_order, &a.id).cmp(&(b.receipt_order, &b.id)));
        Ok(out)
    }
}
