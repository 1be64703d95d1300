//! The edge cache: [`CachedStore`] composes a bounded in-memory cache ([`EdgeCache`], shared by all
//! stores of the node) with a remote store. Entries are immutable once written (id → record), so a
//! cached entry never goes stale; metadata queries that depend on the upstream's state (head, scan,
//! bloom, has) are forwarded so that they stay consistent with it.
//!
//! Misses are filled from the upstream with concurrent misses for the same ids collapsed: the first
//! request claims the ids it misses and fetches them in one upstream call; a request that misses an
//! id already being fetched waits for that fetch instead of asking again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::future::{BoxFuture, FutureExt, Shared};
use lru::LruCache;
use tokio::sync::broadcast;

use super::{ContentAddressedStore, PushOutcome, PutSummary, StoreChange, StoreError, StoreStats};
use crate::bloom::BloomSummary;
use crate::client::RemoteStore;
use crate::metrics::Metrics;
use crate::status::CacheStatus;
use crate::wire::{
    CompactionStatus, Entry, EntryMetadata, ResolveOptions, ScanCursor, ScanFilters, ScanPage,
    StoreHead, StoreId,
};

type Key = (StoreId, String);
type Fetched = Result<Arc<HashMap<String, Arc<Entry>>>, Arc<String>>;
type Flight = Shared<BoxFuture<'static, Fetched>>;

/// Approximate resident cost of a cached entry: payload, metadata strings, bookkeeping.
fn cost(e: &Entry) -> u64 {
    let m = &e.metadata;
    (e.encrypted_data.len()
        + m.created_by_public_key.len()
        + m.received_by_public_key.as_ref().map_or(0, String::len)
        + m.id.len() * 3
        + m.doc_id.len()
        + m.signature.0.len()
        + m.metadata_signature.as_ref().map_or(0, |s| s.0.len())
        + 512) as u64
}

struct Slots {
    lru: LruCache<Key, Arc<Entry>>,
    bytes: u64,
}

pub struct EdgeCache {
    max_bytes: u64,
    slots: Mutex<Slots>,
    in_flight: Mutex<HashMap<Key, Flight>>,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    upstream_fetches: AtomicU64,
    metrics: Arc<Metrics>,
}

impl EdgeCache {
    pub fn new(max_bytes: u64, metrics: Arc<Metrics>) -> Self {
        metrics
            .cache_bytes
            .with_label_values(&["limit"])
            .set(max_bytes as i64);
        EdgeCache {
            max_bytes,
            slots: Mutex::new(Slots {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
            in_flight: Mutex::new(HashMap::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            upstream_fetches: AtomicU64::new(0),
            metrics,
        }
    }

    fn get(&self, key: &Key) -> Option<Arc<Entry>> {
        self.slots.lock().expect("cache").lru.get(key).cloned()
    }

    /// Inserts, evicting least recently used entries beyond the byte limit. An entry larger than
    /// the whole cache is not kept.
    pub fn insert(&self, store: &StoreId, entry: Arc<Entry>) {
        let c = cost(&entry);
        if c > self.max_bytes {
            return;
        }
        let mut slots = self.slots.lock().expect("cache");
        let key = (store.clone(), entry.metadata.id.clone());
        if let Some(old) = slots.lru.put(key, entry) {
            slots.bytes -= cost(&old);
        }
        slots.bytes += c;
        let mut evicted = 0;
        while slots.bytes > self.max_bytes {
            let Some((_, old)) = slots.lru.pop_lru() else {
                break;
            };
            slots.bytes -= cost(&old);
            evicted += 1;
        }
        let bytes = slots.bytes;
        drop(slots);
        if evicted > 0 {
            self.evictions.fetch_add(evicted, Ordering::Relaxed);
            self.metrics
                .cache_events
                .with_label_values(&["eviction"])
                .inc_by(evicted);
        }
        self.metrics
            .cache_bytes
            .with_label_values(&["used"])
            .set(bytes as i64);
    }

    /// Upstream `getEntries` calls made to fill misses (for tests and benchmarks).
    pub fn upstream_fetches(&self) -> u64 {
        self.upstream_fetches.load(Ordering::Relaxed)
    }

    pub fn status(&self) -> CacheStatus {
        let slots = self.slots.lock().expect("cache");
        CacheStatus {
            max_bytes: self.max_bytes,
            bytes: slots.bytes,
            entries: slots.lru.len() as u64,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }

    fn count(&self, hits: u64, misses: u64) {
        self.hits.fetch_add(hits, Ordering::Relaxed);
        self.misses.fetch_add(misses, Ordering::Relaxed);
        self.metrics
            .cache_events
            .with_label_values(&["hit"])
            .inc_by(hits);
        self.metrics
            .cache_events
            .with_label_values(&["miss"])
            .inc_by(misses);
    }
}

/// A store served through the edge cache.
pub struct CachedStore {
    remote: Arc<RemoteStore>,
    cache: Arc<EdgeCache>,
}

impl CachedStore {
    pub fn new(remote: Arc<RemoteStore>, cache: Arc<EdgeCache>) -> Self {
        CachedStore { remote, cache }
    }

    /// Claims the ids nobody fetches yet (one new flight for all of them) and returns the flights
    /// to wait for.
    fn flights_for(&self, missing: Vec<String>) -> Vec<Flight> {
        let store = self.remote.id().clone();
        let mut in_flight = self.cache.in_flight.lock().expect("in flight");
        let mut flights: Vec<Flight> = Vec::new();
        let mut unclaimed = Vec::new();
        for id in missing {
            let key = (store.clone(), id);
            match in_flight.get(&key) {
                Some(f) => {
                    if !flights.iter().any(|g| g.ptr_eq(f)) {
                        flights.push(f.clone());
                    }
                }
                // A flight may have landed between the caller's cache lookup and this lock.
                None if self.cache.get(&key).is_some() => {}
                None => unclaimed.push(key.1),
            }
        }
        if !unclaimed.is_empty() {
            let remote = self.remote.clone();
            let cache = self.cache.clone();
            let ids = unclaimed.clone();
            let flight_store = store.clone();
            let fetch = async move {
                cache.upstream_fetches.fetch_add(1, Ordering::Relaxed);
                let result = remote.get_entries(&ids).await;
                let mut map = HashMap::new();
                if let Ok(entries) = &result {
                    for e in entries {
                        // Only what the upstream vouches for under the requested id is kept.
                        if crate::store::check_payload(e).is_ok() {
                            let e = Arc::new(e.clone());
                            cache.insert(&flight_store, e.clone());
                            map.insert(e.metadata.id.clone(), e);
                        }
                    }
                }
                // Released only after the cache holds the entries, so that a request arriving now
                // finds them in one place or the other.
                let mut in_flight = cache.in_flight.lock().expect("in flight");
                for id in &ids {
                    in_flight.remove(&(flight_store.clone(), id.clone()));
                }
                drop(in_flight);
                result.map_err(|e| Arc::new(e.to_string()))?;
                Ok(Arc::new(map))
            }
            .boxed()
            .shared();
            for id in unclaimed {
                in_flight.insert((store.clone(), id), fetch.clone());
            }
            flights.push(fetch);
        }
        flights
    }
}

#[async_trait]
impl ContentAddressedStore for CachedStore {
    fn id(&self) -> &StoreId {
        self.remote.id()
    }

    async fn put_entries(&self, entries: Vec<Entry>) -> Result<PutSummary, StoreError> {
        let outcome = self.push_entries(entries).await?;
        let head = self.remote.get_store_head().await?;
        Ok(PutSummary {
            inserted: outcome.receipts.into_iter().map(|m| m.id).collect(),
            head,
        })
    }

    /// Forwarded synchronously; what the upstream accepted is cached with its receipt.
    async fn push_entries(&self, entries: Vec<Entry>) -> Result<PushOutcome, StoreError> {
        let payloads: HashMap<String, Vec<u8>> = entries
            .iter()
            .map(|e| (e.metadata.id.clone(), e.encrypted_data.clone()))
            .collect();
        let outcome = self.remote.push_entries(entries).await?;
        for receipt in &outcome.receipts {
            if let Some(data) = payloads.get(&receipt.id) {
                let mut metadata = receipt.clone();
                metadata.receipt_order = None;
                let entry = Entry {
                    metadata,
                    encrypted_data: data.clone(),
                };
                if crate::store::check_payload(&entry).is_ok() {
                    self.cache.insert(self.remote.id(), Arc::new(entry));
                }
            }
        }
        Ok(outcome)
    }

    async fn get_entries(&self, ids: &[String]) -> Result<Vec<Entry>, StoreError> {
        let store = self.remote.id().clone();
        let mut found: HashMap<String, Arc<Entry>> = HashMap::new();
        let mut missing = Vec::new();
        for id in ids {
            match self.cache.get(&(store.clone(), id.clone())) {
                Some(e) => {
                    found.insert(id.clone(), e);
                }
                None if !missing.contains(id) => missing.push(id.clone()),
                None => {}
            }
        }
        self.cache.count(found.len() as u64, missing.len() as u64);
        if !missing.is_empty() {
            for flight in self.flights_for(missing.clone()) {
                let fetched = flight.await.map_err(|message| StoreError::Upstream {
                    upstream: self.remote.session().upstream().to_string(),
                    message: message.to_string(),
                    status: None,
                    transient: true,
                })?;
                for (id, e) in fetched.iter() {
                    found.entry(id.clone()).or_insert_with(|| e.clone());
                }
            }
            // Ids another request's flight delivered just before ours were claimed.
            for id in missing {
                if let std::collections::hash_map::Entry::Vacant(slot) = found.entry(id) {
                    if let Some(e) = self.cache.get(&(store.clone(), slot.key().clone())) {
                        slot.insert(e);
                    }
                }
            }
        }
        Ok(ids
            .iter()
            .filter_map(|id| found.get(id).map(|e| (**e).clone()))
            .collect())
    }

    async fn get_entry_metadata(&self, id: &str) -> Result<Option<EntryMetadata>, StoreError> {
        if let Some(e) = self.cache.get(&(self.remote.id().clone(), id.to_string())) {
            let mut m = e.metadata.clone();
            m.receipt_order = None;
            return Ok(Some(m));
        }
        self.remote.get_entry_metadata(id).await
    }

    async fn has_entries(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        self.remote.has_entries(ids).await
    }

    async fn scan_entries_since(
        &self,
        cursor: Option<&ScanCursor>,
        limit: usize,
        filters: &ScanFilters,
    ) -> Result<ScanPage, StoreError> {
        self.remote.scan_entries_since(cursor, limit, filters).await
    }

    async fn get_store_head(&self) -> Result<StoreHead, StoreError> {
        self.remote.get_store_head().await
    }

    async fn compaction_status(&self) -> Result<CompactionStatus, StoreError> {
        self.remote.compaction_status().await
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        Ok(StoreStats::default())
    }

    fn subscribe_changes(&self) -> broadcast::Receiver<StoreChange> {
        self.remote.subscribe_changes()
    }

    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn find_new_entries(
        &self,
        have_ids: &[String],
    ) -> Result<Vec<EntryMetadata>, StoreError> {
        self.remote.find_new_entries(have_ids).await
    }

    async fn get_all_ids(&self) -> Result<Vec<String>, StoreError> {
        self.remote.get_all_ids().await
    }

    async fn get_id_bloom_summary(&self) -> Result<BloomSummary, StoreError> {
        self.remote.get_id_bloom_summary().await
    }

    async fn resolve_dependencies(
        &self,
        start_id: &str,
        options: &ResolveOptions,
    ) -> Result<Vec<String>, StoreError> {
        self.remote.resolve_dependencies(start_id, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, size: usize) -> Arc<Entry> {
        let data = vec![1u8; size];
        let mut m: EntryMetadata = serde_json::from_value(serde_json::json!({
            "entryType": "doc_change", "id": id, "contentHash": "", "docId": "d",
            "dependencyIds": [], "createdAt": 1, "createdByPublicKey": "k",
            "decryptionKeyId": "default", "signature": "AQ==", "originalSize": size,
            "encryptedSize": size
        }))
        .unwrap();
        m.content_hash = crate::wire::content_hash(&data);
        Arc::new(Entry {
            metadata: m,
            encrypted_data: data,
        })
    }

    #[test]
    fn evicts_least_recently_used_beyond_the_byte_limit() {
        let store = StoreId::new("t", "db", crate::wire::StoreKind::Docs).unwrap();
        let one = cost(&entry("a", 10_000));
        let cache = EdgeCache::new(one * 3, Arc::new(Metrics::new()));
        for id in ["a", "b", "c"] {
            cache.insert(&store, entry(id, 10_000));
        }
        assert!(cache.get(&(store.clone(), "a".into())).is_some()); // a is now most recent
        cache.insert(&store, entry("d", 10_000));
        assert!(
            cache.get(&(store.clone(), "b".into())).is_none(),
            "b was least recent"
        );
        assert!(cache.get(&(store.clone(), "a".into())).is_some());
        let status = cache.status();
        assert_eq!((status.entries, status.evictions), (3, 1));
        assert!(status.bytes <= status.max_bytes);
        // Larger than the whole cache: not kept, nothing evicted for it.
        cache.insert(&store, entry("huge", 1_000_000));
        assert_eq!(cache.status().entries, 3);
    }
}
