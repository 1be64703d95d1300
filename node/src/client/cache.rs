//! The edge cache: [`CachedStore`] composes a bounded in-memory cache ([`EdgeCache`], shared by all
//! stores of the node) with a remote store. Entries are immutable once written (id → record), so a
//! cached entry never goes stale; metadata queries that depend on the upstream's state (head, scan,
//! bloom, has) are forwarded so that they stay consistent with it.
//!
//! Entries are kept as the upstream serialised them ([`RawEntry`]: metadata JSON and payload in
//! shared buffers): a binary response is served from them without parsing or copying. The remote
//! store reads only each entry's id and content hash and hands on only payloads matching it.
//!
//! Misses are filled from the upstream with concurrent misses for the same ids collapsed: the first
//! request claims the ids it misses and fetches them in one upstream call; a request that misses an
//! id already being fetched waits for that fetch instead of asking again.
//!
//! The cache counts its own hits, misses, evictions and upstream fetches ([`EdgeCache::status`]);
//! `/status` and `/metrics` read those counters.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use foldhash::HashMapExt;
use futures::future::{BoxFuture, FutureExt, Shared};
use lru::LruCache;
use tokio::sync::broadcast;

use super::RemoteStore;
use crate::bloom::BloomSummary;
use crate::status::CacheStatus;
use crate::store::{
    ContentAddressedStore, PushOutcome, PutSummary, RawEntry, StoreChange, StoreError, StoreStats,
};
use crate::wire::{
    CompactionStatus, Entry, EntryMetadata, ResolveOptions, ScanCursor, ScanFilters, ScanPage,
    StoreHead, StoreId,
};

/// A cached entry's key: the store's number within the cache and the entry id, shared with the
/// entry it files.
#[derive(Clone)]
struct Key {
    store: u32,
    id: Arc<str>,
}

/// What keys are hashed and compared by, so that a lookup by `(store, &str)` finds a [`Key`]
/// without building one (no allocation per id looked up).
trait KeyParts {
    fn parts(&self) -> (u32, &str);
}

impl KeyParts for Key {
    fn parts(&self) -> (u32, &str) {
        (self.store, &self.id)
    }
}

impl KeyParts for (u32, &str) {
    fn parts(&self) -> (u32, &str) {
        *self
    }
}

impl Hash for dyn KeyParts + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state)
    }
}

impl PartialEq for dyn KeyParts + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn KeyParts + '_ {}

// Hashes and compares exactly as its `dyn KeyParts` view does, as `Borrow` requires.
impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state)
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for Key {}

impl<'a> Borrow<dyn KeyParts + 'a> for Key {
    fn borrow(&self) -> &(dyn KeyParts + 'a) {
        self
    }
}

/// What one upstream fetch delivered: the entries asked for that the upstream vouched for.
type Fetched = Result<Arc<Vec<RawEntry>>, Arc<String>>;
type Flight = Shared<BoxFuture<'static, Fetched>>;

/// Approximate resident cost of a cached entry: its buffers, key and bookkeeping.
fn cost(e: &RawEntry) -> u64 {
    (e.metadata_json.len() + e.encrypted_data.len() + e.id.len() + 160) as u64
}

struct Slots {
    lru: LruCache<Key, RawEntry>,
    bytes: u64,
}

pub struct EdgeCache {
    max_bytes: u64,
    slots: Mutex<Slots>,
    in_flight: Mutex<foldhash::HashMap<Key, Flight>>,
    /// Fetches that have filed their entries and left `in_flight` (changed under its lock): a
    /// request that saw no change since its cache lookup need not look again before claiming.
    landed: AtomicU64,
    /// Each store's number, so that keys need no copy of the store id.
    stores: Mutex<HashMap<StoreId, u32>>,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    upstream_fetches: AtomicU64,
}

impl EdgeCache {
    pub fn new(max_bytes: u64) -> Self {
        EdgeCache {
            max_bytes,
            slots: Mutex::new(Slots {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
            in_flight: Mutex::new(foldhash::HashMap::new()),
            landed: AtomicU64::new(0),
            stores: Mutex::new(HashMap::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            upstream_fetches: AtomicU64::new(0),
        }
    }

    fn store_number(&self, store: &StoreId) -> u32 {
        let mut stores = self.stores.lock().expect("stores");
        let next = stores.len() as u32;
        *stores.entry(store.clone()).or_insert(next)
    }

    fn get(&self, store: u32, id: &str) -> Option<RawEntry> {
        let key: &dyn KeyParts = &(store, id);
        self.slots.lock().expect("cache").lru.get(key).cloned()
    }

    /// Inserts, evicting least recently used entries beyond the byte limit; one lock and one
    /// counter update for the lot. An entry larger than the whole cache is not kept.
    fn insert<'a>(&self, store: u32, entries: impl IntoIterator<Item = &'a RawEntry>) {
        let mut evicted = Vec::new();
        let mut slots = self.slots.lock().expect("cache");
        for entry in entries {
            let c = cost(entry);
            if c > self.max_bytes {
                continue;
            }
            let key = Key {
                store,
                id: entry.id.clone(),
            };
            if let Some(old) = slots.lru.put(key, entry.clone()) {
                slots.bytes -= cost(&old);
            }
            slots.bytes += c;
            while slots.bytes > self.max_bytes {
                let Some((_, old)) = slots.lru.pop_lru() else {
                    break;
                };
                slots.bytes -= cost(&old);
                evicted.push(old);
            }
        }
        drop(slots);
        // Evicted buffers are freed here, outside the lock.
        let evictions = evicted.len() as u64;
        drop(evicted);
        self.evictions.fetch_add(evictions, Ordering::Relaxed);
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
            upstream_fetches: self.upstream_fetches.load(Ordering::Relaxed),
        }
    }

    fn count(&self, hits: u64, misses: u64) {
        self.hits.fetch_add(hits, Ordering::Relaxed);
        self.misses.fetch_add(misses, Ordering::Relaxed);
    }
}

/// A store served through the edge cache.
pub struct CachedStore {
    remote: Arc<RemoteStore>,
    cache: Arc<EdgeCache>,
    store: u32,
}

impl CachedStore {
    pub fn new(remote: Arc<RemoteStore>, cache: Arc<EdgeCache>) -> Self {
        let store = cache.store_number(remote.id());
        CachedStore {
            remote,
            cache,
            store,
        }
    }

    /// Claims the ids nobody fetches yet (one new flight for all of them) and returns the flights
    /// to wait for. `landed_before` is [`EdgeCache::landed`] as it was before the caller's cache
    /// lookup.
    fn flights_for(&self, missing: &[&str], landed_before: u64) -> Vec<Flight> {
        let store = self.store;
        let mut in_flight = self.cache.in_flight.lock().expect("in flight");
        // A flight may have landed between the caller's cache lookup and this lock; only then
        // is the cache worth asking again.
        let recheck = self.cache.landed.load(Ordering::SeqCst) != landed_before;
        let mut flights: Vec<Flight> = Vec::new();
        let mut unclaimed: Vec<String> = Vec::new();
        for &id in missing {
            let key: &dyn KeyParts = &(store, id);
            match in_flight.get(key) {
                Some(f) => {
                    if !flights.iter().any(|g| g.ptr_eq(f)) {
                        flights.push(f.clone());
                    }
                }
                None if recheck && self.cache.get(store, id).is_some() => {}
                None => unclaimed.push(id.to_string()),
            }
        }
        if !unclaimed.is_empty() {
            let keys: Vec<Key> = unclaimed
                .iter()
                .map(|id| Key {
                    store,
                    id: id.as_str().into(),
                })
                .collect();
            let remote = self.remote.clone();
            let cache = self.cache.clone();
            let fetch = async move {
                cache.upstream_fetches.fetch_add(1, Ordering::Relaxed);
                // The remote store hands on only payloads that match their contentHash.
                let result = remote.get_entries_raw(&unclaimed).await.map(|delivered| {
                    let wanted = only_asked(&unclaimed, delivered);
                    cache.insert(store, &wanted);
                    wanted
                });
                // Released only after the cache holds the entries, so that a request arriving now
                // finds them in one place or the other.
                let mut in_flight = cache.in_flight.lock().expect("in flight");
                for id in &unclaimed {
                    let key: &dyn KeyParts = &(store, id.as_str());
                    in_flight.remove(key);
                }
                cache.landed.fetch_add(1, Ordering::SeqCst);
                drop(in_flight);
                Ok(Arc::new(result.map_err(|e| Arc::new(e.to_string()))?))
            }
            .boxed()
            .shared();
            for key in keys {
                in_flight.insert(key, fetch.clone());
            }
            flights.push(fetch);
        }
        flights
    }

    /// The cached or fetched entries of `ids`, in request order; ids the upstream does not hold
    /// (or did not vouch for) are skipped.
    async fn lookup(&self, ids: &[String]) -> Result<Vec<RawEntry>, StoreError> {
        // Each distinct id has the slot of its first occurrence; found entries land there.
        let mut slot_of: foldhash::HashMap<&str, usize> =
            foldhash::HashMap::with_capacity(ids.len());
        let mut slots: Vec<Option<RawEntry>> = vec![None; ids.len()];
        let mut missing: Vec<&str> = Vec::new();
        let landed_before = self.cache.landed.load(Ordering::SeqCst);
        {
            let mut cached = self.cache.slots.lock().expect("cache");
            for (i, id) in ids.iter().enumerate() {
                if *slot_of.entry(id).or_insert(i) != i {
                    continue;
                }
                let key: &dyn KeyParts = &(self.store, id.as_str());
                match cached.lru.get(key) {
                    Some(e) => slots[i] = Some(e.clone()),
                    None => missing.push(id),
                }
            }
        }
        let misses = missing.len() as u64;
        self.cache.count(slot_of.len() as u64 - misses, misses);
        if !missing.is_empty() {
            for flight in self.flights_for(&missing, landed_before) {
                let fetched = flight.await.map_err(|message| StoreError::Upstream {
                    upstream: self.remote.session().upstream().to_string(),
                    message: message.to_string(),
                    status: None,
                    transient: true,
                })?;
                for e in fetched.iter() {
                    if let Some(&i) = slot_of.get(&*e.id) {
                        slots[i].get_or_insert_with(|| e.clone());
                    }
                }
            }
            // Ids another request's flight delivered just before ours were claimed.
            for id in missing {
                let slot = &mut slots[slot_of[id]];
                if slot.is_none() {
                    *slot = self.cache.get(self.store, id);
                }
            }
        }
        if slot_of.len() == ids.len() {
            return Ok(slots.into_iter().flatten().collect());
        }
        // Repeated ids get their first occurrence's entry.
        Ok(ids
            .iter()
            .filter_map(|id| slots[slot_of[id.as_str()]].clone())
            .collect())
    }
}

/// The delivered entries that were asked for: an upstream cannot fill the cache at will.
fn only_asked(ids: &[String], delivered: Vec<RawEntry>) -> Vec<RawEntry> {
    let asked: foldhash::HashSet<&str> = ids.iter().map(String::as_str).collect();
    delivered
        .into_iter()
        .filter(|e| asked.contains(&*e.id))
        .collect()
}

/// The parsed metadata of a cached record; `None` (and a warning) when it does not parse: the
/// upstream vouched only for its id and payload, so such a record is not served.
fn metadata_of(e: &RawEntry) -> Option<EntryMetadata> {
    match e.metadata() {
        Ok(m) => Some(m),
        Err(error) => {
            tracing::warn!(id = %e.id, %error, "upstream entry metadata does not parse; not served");
            None
        }
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
        let accepted = outcome.receipts.iter().filter_map(|receipt| {
            let mut metadata = receipt.clone();
            metadata.receipt_order = None;
            let entry = Entry {
                encrypted_data: payloads.get(&receipt.id)?.clone(),
                metadata,
            };
            crate::store::check_payload(&entry).ok()?;
            Some(RawEntry::from_entry(entry))
        });
        let accepted: Vec<RawEntry> = accepted.collect();
        self.cache.insert(self.store, &accepted);
        Ok(outcome)
    }

    async fn get_entries(&self, ids: &[String]) -> Result<Vec<Entry>, StoreError> {
        let raw = self.lookup(ids).await?;
        crate::cpu::run(move || {
            raw.iter()
                .filter_map(|e| {
                    Some(Entry {
                        metadata: metadata_of(e)?,
                        encrypted_data: e.encrypted_data.to_vec(),
                    })
                })
                .collect()
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))
    }

    async fn get_entries_raw(&self, ids: &[String]) -> Result<Vec<RawEntry>, StoreError> {
        self.lookup(ids).await
    }

    async fn get_entry_metadata(&self, id: &str) -> Result<Option<EntryMetadata>, StoreError> {
        if let Some(mut m) = self.cache.get(self.store, id).and_then(|e| metadata_of(&e)) {
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

    async fn scan_entries_since_raw(
        &self,
        cursor: Option<&ScanCursor>,
        limit: usize,
        filters: &ScanFilters,
    ) -> Result<bytes::Bytes, StoreError> {
        self.remote
            .scan_entries_since_raw(cursor, limit, filters)
            .await
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

    fn entry(id: &str, size: usize) -> Entry {
        let data = vec![1u8; size];
        let mut m: EntryMetadata = serde_json::from_value(serde_json::json!({
            "entryType": "doc_change", "id": id, "contentHash": "", "docId": "d",
            "dependencyIds": [], "createdAt": 1, "createdByPublicKey": "k",
            "decryptionKeyId": "default", "signature": "AQ==", "originalSize": size,
            "encryptedSize": size
        }))
        .unwrap();
        m.content_hash = crate::wire::content_hash(&data);
        Entry {
            metadata: m,
            encrypted_data: data,
        }
    }

    fn raw(id: &str, size: usize) -> RawEntry {
        RawEntry::from_entry(entry(id, size))
    }

    #[test]
    fn evicts_least_recently_used_beyond_the_byte_limit() {
        let one = cost(&raw("a", 10_000));
        let cache = EdgeCache::new(one * 3);
        let store =
            cache.store_number(&StoreId::new("t", "db", crate::wire::StoreKind::Docs).unwrap());
        cache.insert(store, &["a", "b", "c"].map(|id| raw(id, 10_000)));
        assert!(cache.get(store, "a").is_some()); // a is now most recent
        cache.insert(store, &[raw("d", 10_000)]);
        assert!(cache.get(store, "b").is_none(), "b was least recent");
        assert!(cache.get(store, "a").is_some());
        let status = cache.status();
        assert_eq!((status.entries, status.evictions), (3, 1));
        assert!(status.bytes <= status.max_bytes);
        // Larger than the whole cache: not kept, nothing evicted for it.
        cache.insert(store, &[raw("huge", 1_000_000)]);
        assert_eq!(cache.status().entries, 3);
    }

    #[test]
    fn only_entries_asked_for_are_filed() {
        let asked = vec!["a".to_string(), "c".to_string()];
        let delivered = vec![raw("a", 10), raw("b", 10), raw("c", 10), raw("d", 10)];
        let kept: Vec<String> = only_asked(&asked, delivered)
            .iter()
            .map(|e| e.id.to_string())
            .collect();
        assert_eq!(kept, ["a", "c"]);
    }

    #[test]
    fn stores_are_numbered_once_and_apart() {
        let cache = EdgeCache::new(1 << 20);
        let a = StoreId::new("t", "a", crate::wire::StoreKind::Docs).unwrap();
        let b = StoreId::new("t", "b", crate::wire::StoreKind::Docs).unwrap();
        let (na, nb) = (cache.store_number(&a), cache.store_number(&b));
        assert_ne!(na, nb);
        assert_eq!(cache.store_number(&a), na);
        cache.insert(na, &[raw("x", 10)]);
        assert!(
            cache.get(nb, "x").is_none(),
            "one store's entry is not another's"
        );
    }
}
