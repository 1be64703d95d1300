//! The one storage abstraction, [`ContentAddressedStore`], and its implementations.
//!
//! Contract of every implementation (spec §5.7–5.8):
//! - inserts are keyed by id and idempotent (first writer wins); payloads are deduplicated by
//!   `contentHash`;
//! - each newly inserted entry gets the next local `receiptOrder` (from 1), ignoring the incoming
//!   value, and entries become visible to scans strictly in that order;
//! - the `epoch` is persisted and changes only when numbering is reset;
//! - `put_entries` returns only once the batch is durable (for the on-disk store: survives `kill -9`);
//! - scans are exclusive of the `(receiptOrder, id)` cursor and return at most [`MAX_SCAN_PAGE`].
//!
//! The derived operations (find-new-entries, find-entries, all ids, bloom, resolve dependencies) have
//! default implementations in terms of the primitives, so a new store only implements those.

pub mod disk_store;
pub mod engine;
pub mod health;
pub mod index_compaction;
pub mod memory;
pub mod registry;

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::broadcast;

use crate::bloom::{self, BloomSummary};
use crate::wire::{
    CompactionStatus, Entry, EntryMetadata, ResolveOptions, ScanCursor, ScanFilters, ScanPage,
    StoreHead, StoreId, MAX_SCAN_PAGE,
};

pub use registry::{StorageBackend, StoreRegistry};

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage engine error in store {store}: {source}")]
    Engine {
        store: String,
        #[source]
        source: engine::EngineError,
    },
    #[error("corrupt record in store {store}: {detail}")]
    Corrupt { store: String, detail: String },
    #[error("entry {id}: encryptedSize/contentHash do not describe the payload")]
    PayloadMismatch { id: String },
    /// An entry no store may hold (its id breaks the id rules, spec §5.3): refused before writing.
    #[error("entry {id}: {reason}")]
    InvalidEntry { id: String, reason: String },
    /// The tenant has as many databases as this node allows; a further one is not created.
    #[error("tenant {tenant} has reached this node's limit of {limit} databases")]
    TooManyDatabases { tenant: String, limit: usize },
    /// The data directory's file system is below its free-space reserve: the write was refused
    /// before it reached the engine.
    #[error("the disk is full: {free} bytes free, writes need {min_free} (storage.minFreeBytes)")]
    DiskFull { free: u64, min_free: u64 },
    /// A sync link holds back more entries than it may; it does not move on until some settle.
    #[error("{held} entries are held back for an author this node does not know (limit {limit}); the link waits for the directory")]
    Held { held: usize, limit: usize },
    #[error("store task failed: {0}")]
    Task(String),
    /// A remote store's upstream failed; `transient` errors are worth retrying later.
    #[error("upstream {upstream}: {message}")]
    Upstream {
        upstream: String,
        message: String,
        status: Option<u16>,
        transient: bool,
    },
    /// The remote does not offer this operation (capability flag false or endpoint missing).
    #[error("upstream {upstream} does not support {operation}")]
    Unsupported {
        upstream: String,
        operation: &'static str,
    },
}

impl StoreError {
    /// The storage itself failed (disk full, I/O error), not the request: writes are refused
    /// until it recovers, reads may still work.
    pub fn is_storage_failure(&self) -> bool {
        matches!(self, StoreError::DiskFull { .. })
            || matches!(self, StoreError::Engine { source, .. } if source.is_storage_failure())
    }

    /// A full disk (ENOSPC) or quota (EDQUOT) among the causes.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::DiskFull { .. } => true,
            StoreError::Engine { source, .. } => source.io().is_some_and(|io| {
                io.kind() == std::io::ErrorKind::StorageFull
                    || matches!(io.raw_os_error(), Some(28) | Some(122))
                    || io.to_string().contains("No space left")
            }),
            _ => false,
        }
    }

    /// Errors that may go away on their own (upstream down, overloaded, timed out).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Upstream {
                transient: true,
                ..
            }
        )
    }
}

/// What a store made of pushed entries: one receipt (the stored record) per accepted entry, and the
/// entries it refused. Remote stores report their upstream's verdict.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PushOutcome {
    pub receipts: Vec<EntryMetadata>,
    pub rejected: Vec<crate::wire::Rejection>,
}

/// What a `put_entries` call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutSummary {
    /// Ids that were new and are now stored, in insertion (= receiptOrder) order.
    pub inserted: Vec<String>,
    /// Head after the batch.
    pub head: StoreHead,
}

/// A change notification: the store's head after a batch that inserted something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreChange {
    pub store: StoreId,
    pub head: StoreHead,
}

/// An entry whose metadata is still serialised: a JSON object with the wire fields, the id read
/// from it. Both parts are shared buffers, so that a cache serves one copy to every reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    /// Shared, so that the edge cache files an entry under its id without copying it.
    pub id: Arc<str>,
    pub metadata_json: Bytes,
    pub encrypted_data: Bytes,
}

impl RawEntry {
    pub fn from_entry(entry: Entry) -> Self {
        RawEntry {
            id: entry.metadata.id.as_str().into(),
            metadata_json: serde_json::to_vec(&entry.metadata)
                .expect("metadata serialises")
                .into(),
            encrypted_data: entry.encrypted_data.into(),
        }
    }

    pub fn metadata(&self) -> Result<EntryMetadata, serde_json::Error> {
        serde_json::from_slice(&self.metadata_json)
    }
}

/// Size figures for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub entries: u64,
    pub payload_bytes: u64,
    /// Index keys the store's maintenance would merge away, as it last found them (0 for stores
    /// that keep no index of their own): work that piles up when maintenance stops running.
    pub index_keys_waiting: u64,
}

#[async_trait]
pub trait ContentAddressedStore: Send + Sync {
    fn id(&self) -> &StoreId;

    /// Stores new entries durably; existing ids are skipped.
    async fn put_entries(&self, entries: Vec<Entry>) -> Result<PutSummary, StoreError>;

    /// Full entries for the known ids, in request order; unknown ids are skipped.
    async fn get_entries(&self, ids: &[String]) -> Result<Vec<Entry>, StoreError>;

    /// Like [`get_entries`](Self::get_entries), with each metadata record as its wire JSON object
    /// (receiptOrder included), for responses that pass metadata through unchanged. A store that
    /// keeps records serialised overrides this to skip a parse and a re-serialisation per entry.
    async fn get_entries_raw(&self, ids: &[String]) -> Result<Vec<RawEntry>, StoreError> {
        Ok(self
            .get_entries(ids)
            .await?
            .into_iter()
            .map(RawEntry::from_entry)
            .collect())
    }

    /// Stores entries and returns receipts and rejections. A local store accepts everything (its
    /// caller verified it) and acknowledges each id with the record it holds; a remote store
    /// forwards and returns its upstream's answer.
    async fn push_entries(&self, entries: Vec<Entry>) -> Result<PushOutcome, StoreError> {
        let ids: Vec<String> = entries.iter().map(|e| e.metadata.id.clone()).collect();
        self.put_entries(entries).await?;
        let mut receipts = Vec::with_capacity(ids.len());
        for id in &ids {
            if let Some(meta) = self.get_entry_metadata(id).await? {
                receipts.push(meta);
            }
        }
        Ok(PushOutcome {
            receipts,
            rejected: Vec::new(),
        })
    }

    async fn get_entry_metadata(&self, id: &str) -> Result<Option<EntryMetadata>, StoreError>;

    /// Copies witness receipts (`receivedAt`, `receivedByPublicKey`, `receivedDateSignature`) from
    /// `receipts` onto the stored entries of the same ids and re-anchors every entry that changed at
    /// a fresh receiptOrder (spec §4.11, §5.7), so that scanners see the updated record. Unknown ids,
    /// records without a receipt and receipts already held are left alone (idempotent). The caller
    /// verified the receipts. Returns the ids updated, in receipt order. A store without a local
    /// copy (a remote store, an edge cache) holds nothing to update.
    async fn apply_receipts(&self, receipts: &[EntryMetadata]) -> Result<Vec<String>, StoreError> {
        let _ = receipts;
        Ok(Vec::new())
    }

    /// Whether [`apply_receipts`](Self::apply_receipts) can change anything here: only stores that
    /// hold their own copy of the entries. Spares callers preparing receipts for nobody.
    fn keeps_receipts(&self) -> bool {
        false
    }

    /// The subset of `ids` that exists, in request order.
    async fn has_entries(&self, ids: &[String]) -> Result<Vec<String>, StoreError>;

    /// One page of a cursor scan in `(receiptOrder, id)` order. `limit` is clamped to 1..=1000.
    async fn scan_entries_since(
        &self,
        cursor: Option<&ScanCursor>,
        limit: usize,
        filters: &ScanFilters,
    ) -> Result<ScanPage, StoreError>;

    /// [`scan_entries_since`](Self::scan_entries_since) as its wire JSON, for responses that pass
    /// pages on: a store keeping records serialised, or a remote store, overrides this to skip a
    /// parse and a re-serialisation per entry.
    async fn scan_entries_since_raw(
        &self,
        cursor: Option<&ScanCursor>,
        limit: usize,
        filters: &ScanFilters,
    ) -> Result<Bytes, StoreError> {
        Ok(page_json(
            &self.scan_entries_since(cursor, limit, filters).await?,
        ))
    }

    async fn get_store_head(&self) -> Result<StoreHead, StoreError>;

    async fn compaction_status(&self) -> Result<CompactionStatus, StoreError>;

    /// Background upkeep, called periodically (the sled store merges its index keys when due;
    /// see `getCompactionStatus`). Reads and writes go on meanwhile.
    async fn maintain(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn stats(&self) -> Result<StoreStats, StoreError>;

    /// Change notifications. The channel may carry other stores' changes too (stores opened by one
    /// registry share it); filter on [`StoreChange::store`].
    fn subscribe_changes(&self) -> broadcast::Receiver<StoreChange>;

    /// Makes everything written so far durable.
    async fn flush(&self) -> Result<(), StoreError>;

    /// Every entry whose id is not in `have_ids`, in scan order.
    async fn find_new_entries(
        &self,
        have_ids: &[String],
    ) -> Result<Vec<EntryMetadata>, StoreError> {
        let have: HashSet<&str> = have_ids.iter().map(String::as_str).collect();
        collect_scan_dyn(self, &ScanFilters::default(), &|m| {
            !have.contains(m.id.as_str())
        })
        .await
    }

    /// Entries of one document whose id is not in `have_ids`.
    async fn find_new_entries_for_doc(
        &self,
        have_ids: &[String],
        doc_id: &str,
    ) -> Result<Vec<EntryMetadata>, StoreError> {
        let have: HashSet<&str> = have_ids.iter().map(String::as_str).collect();
        let filters = ScanFilters {
            doc_id: Some(doc_id.to_string()),
            ..ScanFilters::default()
        };
        collect_scan_dyn(self, &filters, &|m| !have.contains(m.id.as_str())).await
    }

    /// Entries of one type created in `[from, until)` (either bound optional).
    async fn find_entries(
        &self,
        entry_type: &str,
        from: Option<i64>,
        until: Option<i64>,
    ) -> Result<Vec<EntryMetadata>, StoreError> {
        let filters = ScanFilters {
            entry_types: Some(vec![entry_type.to_string()]),
            creation_date_from: from,
            creation_date_until: until,
            ..ScanFilters::default()
        };
        collect_scan_dyn(self, &filters, &|_| true).await
    }

    /// All ids in scan order.
    async fn get_all_ids(&self) -> Result<Vec<String>, StoreError> {
        Ok(collect_scan_dyn(self, &ScanFilters::default(), &|_| true)
            .await?
            .into_iter()
            .map(|m| m.id)
            .collect())
    }

    /// bloom-v1 summary of all ids (spec §4.6).
    async fn get_id_bloom_summary(&self) -> Result<BloomSummary, StoreError> {
        let ids = self.get_all_ids().await?;
        Ok(bloom::build(ids.iter().map(String::as_str)))
    }

    /// Breadth-first walk over `dependencyIds` from `start_id`, dependencies first (spec §4.13).
    async fn resolve_dependencies(
        &self,
        start_id: &str,
        options: &ResolveOptions,
    ) -> Result<Vec<String>, StoreError> {
        let max_depth = options.max_depth.filter(|d| d.is_finite());
        let include_start = options.include_start.unwrap_or(true);
        let mut seen = HashSet::from([start_id.to_string()]);
        let mut queue = VecDeque::from([(start_id.to_string(), 0u64)]);
        let mut emitted = Vec::new();
        while let Some((id, depth)) = queue.pop_front() {
            if max_depth.is_some_and(|max| depth as f64 > max) {
                continue;
            }
            let Some(meta) = self.get_entry_metadata(&id).await? else {
                continue;
            };
            let is_start = id == start_id;
            if !is_start || include_start {
                emitted.push(id.clone());
            }
            let stop = !is_start
                && options
                    .stop_at_entry_type
                    .as_deref()
                    .is_some_and(|t| t == meta.entry_type);
            if stop {
                continue;
            }
            for dep in meta.dependency_ids {
                if seen.insert(dep.clone()) {
                    queue.push_back((dep, depth + 1));
                }
            }
        }
        emitted.reverse();
        Ok(emitted)
    }
}

/// Runs a filtered scan to the end, keeping what `keep` accepts.
pub async fn collect_scan_dyn<S: ContentAddressedStore + ?Sized>(
    store: &S,
    filters: &ScanFilters,
    keep: &(dyn Fn(&EntryMetadata) -> bool + Send + Sync),
) -> Result<Vec<EntryMetadata>, StoreError> {
    let mut out = Vec::new();
    let mut cursor: Option<ScanCursor> = None;
    loop {
        let page = store
            .scan_entries_since(cursor.as_ref(), MAX_SCAN_PAGE, filters)
            .await?;
        out.extend(page.entries.into_iter().filter(|m| keep(m)));
        if !page.has_more {
            return Ok(out);
        }
        cursor = page.next_cursor;
    }
}

/// Verifies that an entry's declared hash and size describe its payload (defence in depth: the
/// server checks this before calling the store, the store refuses to persist a lie).
pub fn check_payload(entry: &Entry) -> Result<(), StoreError> {
    crate::wire::ids::validate_entry_id(&entry.metadata.id).map_err(|e| {
        StoreError::InvalidEntry {
            id: entry.metadata.id.chars().take(80).collect(),
            reason: e.to_string(),
        }
    })?;
    if !crate::wire::has_content_hash(&entry.encrypted_data, &entry.metadata.content_hash) {
        return Err(StoreError::PayloadMismatch {
            id: entry.metadata.id.clone(),
        });
    }
    Ok(())
}

/// A scan page as its wire JSON.
pub(crate) fn page_json(page: &ScanPage) -> Bytes {
    serde_json::to_vec(page).expect("a page serialises").into()
}

/// Assembles a scan page: `nextCursor` is the last returned entry, or the request cursor echoed as
/// received when the page is empty (spec §4.4).
pub(crate) fn page(
    entries: Vec<EntryMetadata>,
    cursor: Option<&ScanCursor>,
    has_more: bool,
) -> ScanPage {
    let next_cursor = match entries.last() {
        Some(last) => Some(ScanCursor {
            receipt_order: last.receipt_order.unwrap_or(0),
            id: last.id.clone(),
        }),
        None => cursor.cloned(),
    };
    ScanPage {
        entries,
        next_cursor,
        has_more,
    }
}

/// Ends a `put_entries`: notifies subscribers when something was inserted, and summarises.
pub(crate) fn announce_put(
    changes: &broadcast::Sender<StoreChange>,
    store: &StoreId,
    inserted: Vec<String>,
    head: StoreHead,
) -> PutSummary {
    if !inserted.is_empty() {
        // No subscriber is not an error.
        let _ = changes.send(StoreChange {
            store: store.clone(),
            head: head.clone(),
        });
    }
    PutSummary { inserted, head }
}

/// The stored record `stored` with the witness receipt of `receipt` copied onto it, when `receipt`
/// carries one that `stored` does not already hold.
pub fn with_receipt(stored: &EntryMetadata, receipt: &EntryMetadata) -> Option<EntryMetadata> {
    let (Some(at), Some(by), Some(signature)) = (
        receipt.received_at,
        receipt.received_by_public_key.as_ref(),
        receipt.received_date_signature.as_ref(),
    ) else {
        return None;
    };
    if stored.received_at == Some(at)
        && stored.received_by_public_key.as_ref() == Some(by)
        && stored.received_date_signature.as_ref() == Some(signature)
    {
        return None;
    }
    let mut updated = stored.clone();
    updated.received_at = Some(at);
    updated.received_by_public_key = Some(by.clone());
    updated.received_date_signature = Some(signature.clone());
    Some(updated)
}

/// Fresh epoch: a UUIDv7 string like the reference's.
pub(crate) fn new_epoch() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
pub(crate) mod contract_tests;
