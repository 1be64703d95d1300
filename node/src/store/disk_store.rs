//! The on-disk store, over an [`Engine`] (sled or fjall: one store, two engines, the same bytes).
//! One tree per store, keys by prefix:
//! | key | value |
//! |---|---|
//! | `m` id | the entry's record, in one of two forms (below) |
//! | `o` `u64be first receiptOrder` | the ids of one batch, in receiptOrder order (see [`IdList`]); an entry re-anchored later (a witness receipt applied) leaves an empty id in its old place |
//! | `d` `u32be len(docId)` docId `u64be first receiptOrder` | the ids of that document in that batch |
//! | `q` contentHash | the id of the record holding that payload inline |
//! | `p` contentHash | payload bytes (written by layout 2 only, still read) |
//! | `s:epoch`, `s:max`, `s:count`, `s:bytes`, `s:format` | store state |
//!
//! Payload bytes are stored once per contentHash, inside the record of the first entry that brought
//! them, so that serving an entry is one lookup that needs no parsing to find its payload:
//! - *inline*: `u64be receiptOrder` ‖ `u32be len(JSON)` ‖ metadata JSON ‖ payload bytes;
//! - *shared*: `u64be receiptOrder` ‖ metadata JSON, the payload held by the record `q` names (or,
//!   written by layout 2, under `p`).
//!
//! The JSON is the wire record without its receiptOrder, which is the prefix. The forms are told
//! apart by byte 8: `{` starts a shared record's JSON, and as the top byte of an inline record's
//! length it would mean a 2 GB record. Layout 2 wrote only shared records with `p` payloads, so a
//! store of layout 2 is read as it is and re-stamped 3 on open.
//!
//! The scan and document indexes hold one key per *batch* rather than per entry: every sled key costs
//! about as much to write as a whole 1 KiB record (and in an LSM every key is written again by each
//! compaction), and a batch's entries get consecutive
//! receiptOrders, so entry `i` of the batch keyed `first` has receiptOrder `first + i`.
//!
//! Keeping the receiptOrder out of the JSON lets a batch be checked and serialised on every core
//! before the write lock is taken; under the lock only numbering and the engine's batch remain. A
//! batch is one atomic engine batch, flushed before `put_entries` returns, under a per-store write lock.
//! Readers see entries only up to the *durable watermark* (the highest receiptOrder whose batch has
//! been flushed), so nothing is visible that a crash could take back and scans see receiptOrders in
//! order without gaps.

use std::collections::HashSet;
use std::ops::Bound::{Excluded, Included};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use rayon::prelude::*;
use tokio::sync::broadcast;

use super::engine::{Engine, EngineError, Tree, WriteBatch};
use super::index_compaction::{
    due, merge_lists, plan_merges, CompactionFigures, CompactionRun, CompactionThresholds, IndexKey,
};
use super::{
    check_payload, new_epoch, ContentAddressedStore, PutSummary, RawEntry, StoreChange, StoreError,
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
const FORMAT: &[u8] = b"s:format";
/// Version of the key layout above; a store written with another layout (except 2, whose records
/// this one reads) is refused at open.
const FORMAT_VERSION: &[u8] = b"3";
const READABLE_FORMAT: &[u8] = b"2";
/// Present in a store first written with layout 2.
const LAYOUT_2: &[u8] = b"s:layout2";

/// One index merge, ready to apply.
struct Merge {
    batch: WriteBatch,
    removed_keys: u64,
    rewritten_bytes: u64,
}

/// The one field of a record the index maintenance reads.
#[derive(serde::Deserialize)]
struct DocOf {
    #[serde(rename = "docId")]
    doc_id: String,
}

fn meta_key(id: impl AsRef<[u8]>) -> Vec<u8> {
    [b"m", id.as_ref()].concat()
}

fn batch_key(first_ro: u64) -> Vec<u8> {
    [&b"o"[..], &first_ro.to_be_bytes()].concat()
}

fn doc_prefix(doc_id: &str) -> Vec<u8> {
    [
        &b"d"[..],
        &(doc_id.len() as u32).to_be_bytes(),
        doc_id.as_bytes(),
    ]
    .concat()
}

fn doc_batch_key(doc_id: &str, first_ro: u64) -> Vec<u8> {
    [doc_prefix(doc_id), first_ro.to_be_bytes().to_vec()].concat()
}

/// A list of entry ids as stored in the index values: each id as one length byte and its bytes.
/// Every id is 1 to 250 bytes: [`check_payload`] refuses any other entry before a batch is
/// prepared, and `push` refuses again rather than write a length it cannot represent. An empty id
/// is a tombstone (below).
#[derive(Debug, Default)]
struct IdList(Vec<u8>);

impl IdList {
    fn push(&mut self, id: &str) {
        // Refuse rather than write a length that reads back as another id (an empty id is a
        // tombstone; entries with one never get here).
        assert!(
            id.len() <= u8::MAX as usize,
            "entry ids are validated (at most 250 bytes) before they are indexed"
        );
        self.0.push(id.len() as u8);
        self.0.extend_from_slice(id.as_bytes());
    }

    /// Replaces the id at `position` with an empty id (a tombstone: later positions keep their
    /// receiptOrders); false when the list has no such position or names another id there.
    fn tombstone(bytes: &mut Vec<u8>, position: usize, id: &str) -> bool {
        let mut at = 0;
        for _ in 0..position {
            match bytes.get(at) {
                Some(&len) => at += 1 + len as usize,
                None => return false,
            }
        }
        let Some(&len) = bytes.get(at) else {
            return false;
        };
        let end = at + 1 + len as usize;
        if bytes.get(at + 1..end) != Some(id.as_bytes()) {
            return false;
        }
        bytes.splice(at..end, [0u8]);
        true
    }

    /// The list without `id` (document lists are sets; their positions carry no meaning).
    fn without(bytes: &[u8], id: &str) -> Option<Vec<u8>> {
        let mut out = IdList::default();
        for kept in Self::decode(bytes)?.into_iter().filter(|k| *k != id) {
            out.push(kept);
        }
        Some(out.0)
    }

    /// How many ids (tombstones included) `bytes` holds, or `None` when it is not a well-formed
    /// list; reads only the length bytes.
    fn count(bytes: &[u8]) -> Option<usize> {
        let (mut at, mut n) = (0, 0);
        while let Some(&len) = bytes.get(at) {
            at += 1 + len as usize;
            n += 1;
        }
        (at == bytes.len()).then_some(n)
    }

    /// The ids in `bytes`, or `None` when the value is not a well-formed list.
    fn decode(bytes: &[u8]) -> Option<Vec<&str>> {
        let mut ids = Vec::new();
        let mut rest = bytes;
        while let Some((&len, tail)) = rest.split_first() {
            let len = len as usize;
            if tail.len() < len {
                return None;
            }
            ids.push(std::str::from_utf8(&tail[..len]).ok()?);
            rest = &tail[len..];
        }
        Some(ids)
    }
}

fn payload_key(hash: &str) -> Vec<u8> {
    [b"p", hash.as_bytes()].concat()
}

fn holder_key(hash: &str) -> Vec<u8> {
    [b"q", hash.as_bytes()].concat()
}

/// An inline record: `receiptOrder` (patched in later by writers that number under the write
/// lock) ‖ the JSON's length ‖ metadata JSON ‖ payload.
fn encode_inline(ro: u64, json: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(12 + json.len() + payload.len());
    record.extend_from_slice(&ro.to_be_bytes());
    record.extend_from_slice(&(json.len() as u32).to_be_bytes());
    record.extend_from_slice(json);
    record.extend_from_slice(payload);
    record
}

/// A shared record: `receiptOrder` ‖ metadata JSON; its payload is held elsewhere.
fn encode_shared(ro: u64, json: &[u8]) -> Vec<u8> {
    [&ro.to_be_bytes()[..], json].concat()
}

/// Where a stored record's metadata JSON is, and its payload when inline (`None` for a shared
/// record); `None` when the value is malformed.
fn record_parts(raw: &[u8]) -> Option<(Range<usize>, Option<Range<usize>>)> {
    if raw.len() < 10 {
        return None;
    }
    if raw[8] == b'{' {
        return Some((8..raw.len(), None));
    }
    let len = u32::from_be_bytes(raw.get(8..12)?.try_into().ok()?) as usize;
    let end = 12usize.checked_add(len)?;
    (raw.get(12) == Some(&b'{') && end <= raw.len()).then_some((12..end, Some(end..raw.len())))
}

fn read_u64(bytes: Option<impl AsRef<[u8]>>) -> u64 {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// Name of the tree holding a store.
pub fn tree_name(id: &StoreId) -> String {
    format!("store/{}/{}/{}", id.tenant_id, id.db_id, id.kind)
}

/// An entry made ready for a batch outside the write lock: payload checked against its hash, record
/// encoded with room for the receiptOrder prefix.
struct Prepared {
    id: String,
    doc_id: String,
    content_hash: String,
    /// Inline; re-encoded shared when the store holds the payload already.
    record: Vec<u8>,
    json: Range<usize>,
    payload_len: u64,
}

fn prepare(entries: Vec<Entry>) -> Result<Vec<Prepared>, StoreError> {
    entries
        .into_par_iter()
        .map(|entry| {
            check_payload(&entry)?;
            let mut meta = entry.metadata;
            meta.receipt_order = None;
            let json = serde_json::to_vec(&meta).expect("metadata serialises");
            Ok(Prepared {
                id: meta.id,
                doc_id: meta.doc_id,
                content_hash: meta.content_hash,
                record: encode_inline(0, &json, &entry.encrypted_data),
                json: 12..12 + json.len(),
                payload_len: entry.encrypted_data.len() as u64,
            })
        })
        .collect()
}

/// The prior values of the keys a batch writes, to put back if the batch does not become durable.
#[derive(Default)]
struct Undo {
    recorded: HashSet<Vec<u8>>,
    batch: WriteBatch,
}

impl Undo {
    /// Records `key`'s value before the batch (`None`: absent); the first record of a key wins.
    fn restore(&mut self, key: Vec<u8>, prior: Option<impl AsRef<[u8]>>) {
        if !self.recorded.insert(key.clone()) {
            return;
        }
        match prior {
            Some(value) => self.batch.insert(key, value.as_ref()),
            None => self.batch.remove(key),
        }
    }

    fn into_batch(self) -> WriteBatch {
        self.batch
    }
}

/// Reads at one visibility watermark; cheap to clone (trees are shared handles) and to create
/// per read, so that a batch of reads can be taken into a CPU task.
#[derive(Clone)]
struct Reader<T: Tree> {
    tree: T,
    visible: u64,
    store: Arc<str>,
}

/// A stored record's metadata JSON as wire JSON: `receiptOrder` spliced in as the first field, the
/// rest the stored bytes.
fn wire_json(ro: u64, json: &[u8]) -> Vec<u8> {
    let mut wire = format!("{{\"receiptOrder\":{ro},").into_bytes();
    wire.extend_from_slice(&json[1..]);
    wire
}

/// Reads one id's record at a reader's watermark (`None`: no such visible entry).
type ReadOne<V, T> = fn(&Reader<V>, &str) -> Result<Option<T>, StoreError>;

/// A visible stored record: its receiptOrder, the value as stored and where its parts are.
struct Record<V> {
    ro: u64,
    raw: V,
    json: Range<usize>,
    /// `None` for a shared record.
    payload: Option<Range<usize>>,
}

impl<V: std::ops::Deref<Target = [u8]> + AsRef<[u8]> + Clone + Send + Sync + 'static> Record<V> {
    fn json(&self) -> &[u8] {
        &self.raw.as_ref()[self.json.clone()]
    }

    /// The payload of an inline record, a view of the stored value.
    fn inline_payload(&self) -> Option<Bytes> {
        let range = self.payload.clone()?;
        Some(Bytes::from_owner(self.raw.clone()).slice(range))
    }
}

impl<T: Tree> Reader<T> {
    fn corrupt(&self, detail: String) -> StoreError {
        StoreError::Corrupt {
            store: self.store.to_string(),
            detail,
        }
    }

    fn engine(&self, source: EngineError) -> StoreError {
        StoreError::Engine {
            store: self.store.to_string(),
            source,
        }
    }

    /// The visible stored record of `id`.
    fn record(&self, id: &str) -> Result<Option<Record<T::Value>>, StoreError> {
        let Some(raw) = self.tree.get(&meta_key(id)).map_err(|e| self.engine(e))? else {
            return Ok(None);
        };
        let Some((json, payload)) = record_parts(&raw) else {
            return Err(self.corrupt(format!("metadata of {id} is truncated")));
        };
        let ro = u64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
        Ok((ro <= self.visible).then_some(Record {
            ro,
            raw,
            json,
            payload,
        }))
    }

    /// The payload of `id`, a shared record, found by its `content_hash`: under `p` (layout 2),
    /// else in the record that `q` names.
    fn shared_payload(&self, id: &str, content_hash: &str) -> Result<Bytes, StoreError> {
        let get = |key: Vec<u8>| self.tree.get(&key).map_err(|e| self.engine(e));
        if let Some(stored) = get(payload_key(content_hash))? {
            return Ok(Bytes::from_owner(stored));
        }
        let missing = || self.corrupt(format!("payload of {id} is missing"));
        let holder = get(holder_key(content_hash))?.ok_or_else(missing)?;
        // The holder came first and payloads never change: its visibility does not matter.
        let raw = get(meta_key(holder))?.ok_or_else(missing)?;
        match record_parts(&raw) {
            Some((_, Some(range))) => Ok(Bytes::from_owner(raw).slice(range)),
            _ => Err(missing()),
        }
    }

    fn meta(&self, id: &str) -> Result<Option<EntryMetadata>, StoreError> {
        let Some(record) = self.record(id)? else {
            return Ok(None);
        };
        self.parse_meta(id, record.ro, record.json()).map(Some)
    }

    /// A stored record's metadata JSON parsed, with its receiptOrder.
    fn parse_meta(&self, id: &str, ro: u64, json: &[u8]) -> Result<EntryMetadata, StoreError> {
        let mut meta: EntryMetadata = serde_json::from_slice(json)
            .map_err(|e| self.corrupt(format!("metadata of {id}: {e}")))?;
        meta.receipt_order = Some(ro);
        Ok(meta)
    }

    /// The stored record as wire JSON (the receiptOrder spliced in as the first field, the rest the
    /// stored bytes) and its payload, neither parsed; only a shared record's contentHash is read,
    /// to find its payload.
    fn raw_entry(&self, id: &str) -> Result<Option<RawEntry>, StoreError> {
        let Some(record) = self.record(id)? else {
            return Ok(None);
        };
        let encrypted_data = match record.inline_payload() {
            Some(payload) => payload,
            None => {
                let keys: crate::wire::RecordKeys<'_> = serde_json::from_slice(record.json())
                    .map_err(|e| self.corrupt(format!("metadata of {id}: {e}")))?;
                self.shared_payload(id, &keys.content_hash)?
            }
        };
        Ok(Some(RawEntry {
            id: id.into(),
            metadata_json: wire_json(record.ro, record.json()).into(),
            encrypted_data,
        }))
    }

    fn entry(&self, id: &str) -> Result<Option<Entry>, StoreError> {
        let Some(record) = self.record(id)? else {
            return Ok(None);
        };
        let metadata = self.parse_meta(id, record.ro, record.json())?;
        Ok(Some(Entry {
            encrypted_data: match record.inline_payload() {
                Some(payload) => payload,
                None => self.shared_payload(id, &metadata.content_hash)?,
            }
            .to_vec(),
            metadata,
        }))
    }
}

pub struct DiskStore<E: Engine> {
    id: StoreId,
    /// `id` as text, for errors (kept so that a read does not format it).
    name: Arc<str>,
    db: E,
    tree: E::Tree,
    epoch: String,
    /// Written by layout 2: payloads may be under `p` too (checked at ingest for dedup).
    has_layout_2: bool,
    write_lock: tokio::sync::Mutex<()>,
    /// Re-anchoring an entry (a receipt applied) moves it to a new receiptOrder that becomes visible
    /// only after its flush; in between it would be at neither place. Reads hold this shared, the
    /// re-anchoring write holds it exclusively for that window (rare, a few milliseconds). No read
    /// takes it twice, so a waiting writer cannot deadlock a reader.
    reanchor_gate: tokio::sync::RwLock<()>,
    /// Highest receiptOrder that is durable and visible.
    visible: AtomicU64,
    changes: broadcast::Sender<StoreChange>,
    bloom_cache: Mutex<Option<(u64, BloomSummary)>>,
    /// Refuses writes before they reach the engine when the disk is (nearly) full.
    space: Option<Arc<super::health::SpaceGuard>>,
    /// When the index maintenance merges keys ([`super::index_compaction`]).
    thresholds: CompactionThresholds,
    /// What it has done since the process started.
    figures: Mutex<CompactionFigures>,
    /// Index writes since maintenance last looked (it skips a store nothing was written to).
    unmaintained: AtomicU64,
    /// Keys the last look found to merge and no merge has removed yet.
    waiting_keys: AtomicU64,
    /// receiptOrder of the first key the next maintenance pass needs to look at.
    settled_before: AtomicU64,
}

impl<E: Engine> DiskStore<E> {
    /// Opens (creating if needed) the store `id` inside `db`.
    pub fn open(
        db: E,
        id: StoreId,
        changes: broadcast::Sender<StoreChange>,
    ) -> Result<Self, StoreError> {
        let err = |source| StoreError::Engine {
            store: id.to_string(),
            source,
        };
        let tree = db.open_tree(&tree_name(&id)).map_err(err)?;
        let epoch = match tree.get(EPOCH).map_err(err)? {
            Some(e) => String::from_utf8(e.as_ref().to_vec()).map_err(|_| StoreError::Corrupt {
                store: id.to_string(),
                detail: "epoch is not UTF-8".into(),
            })?,
            None => {
                // The registry opens each store once, under its lock: no other opener races.
                let e = new_epoch();
                tree.insert(EPOCH, e.as_bytes()).map_err(err)?;
                db.flush_blocking().map_err(err)?;
                e
            }
        };
        let visible = read_u64(tree.get(MAX).map_err(err)?);
        let format = tree.get(FORMAT).map_err(err)?;
        let has_layout_2 = match format {
            Some(ref f) if f.as_ref() == FORMAT_VERSION => {
                tree.get(LAYOUT_2).map_err(err)?.is_some()
            }
            Some(ref f) if f.as_ref() == READABLE_FORMAT => true,
            _ => false,
        };
        match format {
            Some(f) if f.as_ref() == FORMAT_VERSION => {}
            // Its records stay readable; the new stamp keeps older nodes, which cannot read the
            // inline records written from now on, from opening it.
            Some(f) if f.as_ref() == READABLE_FORMAT => {
                let mut stamp = WriteBatch::default();
                stamp.insert(FORMAT, FORMAT_VERSION);
                stamp.insert(LAYOUT_2, &b"1"[..]);
                tree.apply(stamp).map_err(err)?;
                db.flush_blocking().map_err(err)?;
            }
            None if visible == 0 => {
                tree.insert(FORMAT, FORMAT_VERSION).map_err(err)?;
            }
            other => {
                return Err(StoreError::Corrupt {
                    store: id.to_string(),
                    detail: format!(
                        "written with key layout {} (this node reads layout {}); sync it again into an empty data directory",
                        other.map_or("1".into(), |f| String::from_utf8_lossy(&f).into_owned()),
                        String::from_utf8_lossy(FORMAT_VERSION),
                    ),
                });
            }
        }
        Ok(DiskStore {
            name: id.to_string().into(),
            id,
            db,
            tree,
            epoch,
            has_layout_2,
            write_lock: tokio::sync::Mutex::new(()),
            reanchor_gate: tokio::sync::RwLock::new(()),
            visible: AtomicU64::new(visible),
            changes,
            bloom_cache: Mutex::new(None),
            space: None,
            thresholds: CompactionThresholds::default(),
            figures: Mutex::new(CompactionFigures::default()),
            // The first pass after opening looks at what earlier runs left.
            unmaintained: AtomicU64::new(1),
            waiting_keys: AtomicU64::new(0),
            settled_before: AtomicU64::new(0),
        })
    }

    /// Sets when the index maintenance merges keys.
    pub fn with_compaction(mut self, thresholds: CompactionThresholds) -> Self {
        self.thresholds = thresholds;
        self
    }

    /// Checks the free-space reserve before every write (see [`super::health::SpaceGuard`]).
    pub fn with_space_guard(mut self, space: Option<Arc<super::health::SpaceGuard>>) -> Self {
        self.space = space;
        self
    }

    fn check_space(&self) -> Result<(), StoreError> {
        match &self.space {
            Some(space) => space.check(),
            None => Ok(()),
        }
    }

    fn err(&self) -> impl Fn(EngineError) -> StoreError + '_ {
        move |source| StoreError::Engine {
            store: self.name.to_string(),
            source,
        }
    }

    fn corrupt(&self, detail: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            store: self.name.to_string(),
            detail: detail.into(),
        }
    }

    fn visible(&self) -> u64 {
        self.visible.load(Ordering::Acquire)
    }

    /// Reads a metadata record if it exists and is visible.
    fn load_meta(&self, id: &str) -> Result<Option<EntryMetadata>, StoreError> {
        self.reader().meta(id)
    }

    /// Runs `read` for every id on the CPU pool (reading and parsing a batch of records is CPU work
    /// worth spreading over the cores); unknown ids are skipped, request order is kept.
    async fn read_all<T: Send + 'static>(
        &self,
        ids: &[String],
        read: ReadOne<E::Tree, T>,
    ) -> Result<Vec<T>, StoreError> {
        let _gate = self.reanchor_gate.read().await;
        let reader = self.reader();
        let ids = ids.to_vec();
        let found = crate::cpu::run(move || {
            ids.par_iter()
                .map(|id| read(&reader, id))
                .collect::<Result<Vec<_>, StoreError>>()
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        Ok(found.into_iter().flatten().collect())
    }

    /// A snapshot of what reads need, to take into a CPU task.
    fn reader(&self) -> Reader<E::Tree> {
        Reader {
            tree: self.tree.clone(),
            visible: self.visible(),
            store: self.name.clone(),
        }
    }

    /// Visible `(receiptOrder, id)` pairs strictly after `cursor`, in order, one batch at a time.
    fn order_range(
        &self,
        cursor: Option<&ScanCursor>,
    ) -> impl Iterator<Item = Result<(u64, String), StoreError>> + '_ {
        let visible = self.visible();
        let after = cursor.map(|c| (c.receipt_order, c.id.clone()));
        // Start at the batch holding the cursor's receiptOrder: the last batch key at or below it.
        let start = match &after {
            Some((ro, _)) => match self
                .tree
                .range(Included(&batch_key(0)), Included(&batch_key(*ro)))
                .next_back()
            {
                Some(Ok((key, _))) => key.to_vec(),
                _ => batch_key(0),
            },
            None => batch_key(0),
        };
        let end = batch_key(visible.saturating_add(1));
        self.tree
            .range(Included(&start), Excluded(&end))
            .map(move |item| -> Result<Vec<(u64, String)>, StoreError> {
                let (key, value) = item.map_err(self.err())?;
                let first = u64::from_be_bytes(
                    key[1..]
                        .try_into()
                        .map_err(|_| self.corrupt("malformed batch key"))?,
                );
                let ids = IdList::decode(&value)
                    .ok_or_else(|| self.corrupt(format!("malformed batch index at {first}")))?;
                Ok(ids
                    .into_iter()
                    .enumerate()
                    .filter(|(_, id)| !id.is_empty()) // re-anchored elsewhere
                    .map(|(i, id)| (first + i as u64, id.to_string()))
                    .filter(|(ro, id)| {
                        *ro <= visible
                            && after.as_ref().is_none_or(|(after_ro, after_id)| {
                                (*ro, id) > (*after_ro, after_id)
                            })
                    })
                    .collect())
            })
            .flat_map(|batch| match batch {
                Ok(pairs) => pairs.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(e) => vec![Err(e)],
            })
    }

    /// Walks the visible records after `cursor` in scan order and keeps what `keep` makes of each
    /// (`(receiptOrder, id, stored metadata JSON)`; `None` skips it) until `limit` are kept; also
    /// whether more follow. The caller holds the re-anchoring gate.
    fn scan_records<T>(
        &self,
        cursor: Option<&ScanCursor>,
        limit: usize,
        mut keep: impl FnMut(&Reader<E::Tree>, u64, String, &[u8]) -> Result<Option<T>, StoreError>,
    ) -> Result<(Vec<T>, bool), StoreError> {
        let limit = limit.clamp(1, MAX_SCAN_PAGE);
        let reader = self.reader();
        let mut kept = Vec::new();
        for item in self.order_range(cursor) {
            let (_, id) = item?;
            let Some(record) = reader.record(&id)? else {
                return Err(self.corrupt(format!("order index names {id} without metadata")));
            };
            let Some(value) = keep(&reader, record.ro, id, record.json())? else {
                continue;
            };
            if kept.len() == limit {
                return Ok((kept, true));
            }
            kept.push(value);
        }
        Ok((kept, false))
    }

    /// Ends a write under the write lock: adds the index of the new batch (receiptOrders
    /// `first..=last`, its ids and its per-document lists) and the new maximum to `batch`, applies
    /// it atomically, flushes, and only then makes `last` visible.
    /// Writes a batch with its index keys and the new maximum, durably, then makes it visible.
    ///
    /// When the write or its flush fails (a full disk), `undo` — the prior value of every key the
    /// batch writes, as recorded by the caller — is applied, so that the in-memory tree holds
    /// nothing that is not durable: otherwise the failed entries would count as "already stored"
    /// to the next push of the same ids, which would then be acknowledged and never stored.
    async fn commit(
        &self,
        mut batch: WriteBatch,
        mut undo: Undo,
        first: u64,
        ids: IdList,
        doc_ids: std::collections::BTreeMap<String, IdList>,
        last: u64,
    ) -> Result<(), StoreError> {
        batch.insert(batch_key(first), ids.0);
        undo.restore(batch_key(first), None::<&[u8]>);
        for (doc, ids) in doc_ids {
            let key = doc_batch_key(&doc, first);
            // Fresh positions: nothing was there before.
            batch.insert(key.clone(), ids.0);
            undo.restore(key, None::<&[u8]>);
        }
        batch.insert(MAX, &last.to_be_bytes()[..]);
        undo.restore(MAX.to_vec(), self.tree.get(MAX).map_err(self.err())?);
        let written = match self.tree.apply(batch) {
            Ok(()) => self.db.flush().await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            if let Err(undo_error) = self.tree.apply(undo.into_batch()) {
                tracing::error!(store = %self.name, error = %undo_error,
                    "could not undo a failed write in memory; the store stays unwritable until a restart");
            }
            return Err(self.err()(e));
        }
        self.visible.store(last, Ordering::Release);
        self.unmaintained.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Under the write lock, before a write: makes durable and visible whatever a write that was
    /// interrupted after applying its batch left above the watermark — its caller went away during
    /// the flush, or the flush failed and could not be undone (fjall refuses every write once a
    /// journal write failed). Otherwise the next write would number over it, or count its entries
    /// as stored and acknowledge them undurable. `Err`: the engine cannot flush; the write is refused.
    async fn settle(&self) -> Result<(), StoreError> {
        let stored = read_u64(self.tree.get(MAX).map_err(self.err())?);
        if stored > self.visible() {
            self.db.flush().await.map_err(self.err())?;
            self.visible.store(stored, Ordering::Release);
        }
        Ok(())
    }

    /// How many scan-index and document-index keys the store holds.
    #[cfg(test)]
    pub(crate) fn index_key_counts(&self) -> (usize, usize) {
        let count = |prefix: &[u8]| self.tree.prefix(prefix).count();
        (count(b"o"), count(b"d"))
    }

    /// The visible scan-index keys from the last one at or below receiptOrder `from`, in order.
    /// Positions are counted from the length bytes; no id is decoded.
    fn index_keys(&self, from: u64) -> Result<Vec<IndexKey>, StoreError> {
        let end = batch_key(self.visible().saturating_add(1));
        let start = match self
            .tree
            .range(Included(&batch_key(0)), Included(&batch_key(from)))
            .next_back()
        {
            Some(item) => item.map_err(self.err())?.0.to_vec(),
            None => batch_key(0),
        };
        let mut keys = Vec::new();
        for item in self.tree.range(Included(&start), Excluded(&end)) {
            let (key, value) = item.map_err(self.err())?;
            let first = u64::from_be_bytes(
                key[1..]
                    .try_into()
                    .map_err(|_| self.corrupt("malformed batch key"))?,
            );
            let positions = IdList::count(&value)
                .ok_or_else(|| self.corrupt(format!("malformed batch index at {first}")))?
                as u64;
            keys.push(IndexKey {
                first,
                positions,
                bytes: value.len() as u64,
            });
        }
        Ok(keys)
    }

    /// Merges runs of small scan-index keys, and with them their documents' keys, when the
    /// thresholds say it is due ([`super::index_compaction`]). Each run is one atomic batch,
    /// written under the write lock and applied under the re-anchoring gate: a crash leaves the old
    /// keys or the merged ones, and no reader walks a half-merged index. `None`: nothing merged.
    /// A pass that fails is retried by the next one, written to or not.
    pub async fn compact_index(&self) -> Result<Option<CompactionRun>, StoreError> {
        if !self.thresholds.enabled() || self.unmaintained.swap(0, Ordering::Relaxed) == 0 {
            return Ok(None);
        }
        let result = self.compaction_pass().await;
        if result.is_err() {
            self.unmaintained.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn compaction_pass(&self) -> Result<Option<CompactionRun>, StoreError> {
        let started = std::time::Instant::now();
        // Keys before the first run the last pass left can join no run later (receipts only put
        // tombstones in place, new keys come after the last): the plan starts there.
        let keys = self.index_keys(self.settled_before.load(Ordering::Relaxed))?;
        let runs = plan_merges(&keys, self.thresholds.target_entries);
        let waiting: usize = runs.iter().map(|r| r.len() - 1).sum();
        self.waiting_keys.store(waiting as u64, Ordering::Relaxed);
        let last = keys.last().map_or(0, |k| k.first);
        if !due(&keys, &runs, &self.thresholds) {
            let settled = runs.first().map_or(last, |r| keys[r.start].first);
            self.settled_before.store(settled, Ordering::Relaxed);
            return Ok(None);
        }
        let mut done = CompactionRun::default();
        let mut merged = 0;
        let mut settled = last;
        let mut failure = None;
        for run in runs {
            let firsts: Vec<u64> = keys[run].iter().map(|k| k.first).collect();
            match self.merge_and_apply(&firsts, &mut done).await {
                Ok(true) => merged += 1,
                // Changed since it was planned: the next pass looks again.
                Ok(false) => {
                    settled = settled.min(firsts[0]);
                    self.unmaintained.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if merged > 0 {
            done.duration = started.elapsed();
            done.finished_at_ms = crate::clock::now_ms();
            self.figures.lock().expect("figures").record(done);
        }
        if let Some(e) = failure {
            return Err(e);
        }
        self.settled_before.store(settled, Ordering::Relaxed);
        Ok((merged > 0).then_some(done))
    }

    /// Merges one planned run under the write lock and adds what it did to `done`; false when
    /// the run changed since it was planned.
    async fn merge_and_apply(
        &self,
        firsts: &[u64],
        done: &mut CompactionRun,
    ) -> Result<bool, StoreError> {
        self.check_space()?;
        let _writer = self.write_lock.lock().await;
        self.settle().await?;
        let Some(merge) = self.merge_run(firsts)? else {
            return Ok(false);
        };
        {
            let _gate = self.reanchor_gate.write().await;
            self.tree.apply(merge.batch).map_err(self.err())?;
        }
        // Counted once applied: the merged index reads as the old one did, so an unflushed
        // merge needs no undo and becomes durable with the next flush.
        done.removed_keys += merge.removed_keys;
        done.rewritten_bytes += merge.rewritten_bytes;
        let merged_away = firsts.len() as u64 - 1;
        let _ = self
            .waiting_keys
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                Some(w.saturating_sub(merged_away))
            });
        self.db.flush().await.map_err(self.err())?;
        Ok(true)
    }

    /// The batch merging the scan-index keys at `firsts` (consecutive, in order) and their
    /// documents' keys, or `None` when they no longer follow each other. The caller holds the
    /// write lock.
    fn merge_run(&self, firsts: &[u64]) -> Result<Option<Merge>, StoreError> {
        let reader = self.reader();
        let mut values = Vec::with_capacity(firsts.len());
        for &first in firsts {
            match self.tree.get(&batch_key(first)).map_err(self.err())? {
                Some(v) => values.push((first, v)),
                None => return Ok(None),
            }
        }
        let mut lists: Vec<(u64, Vec<&str>)> = Vec::with_capacity(values.len());
        for (first, value) in &values {
            let ids = IdList::decode(value)
                .ok_or_else(|| self.corrupt(format!("malformed batch index at {first}")))?;
            if let Some((prev_first, prev)) = lists.last() {
                if prev_first + prev.len() as u64 != *first {
                    return Ok(None);
                }
            }
            lists.push((*first, ids));
        }
        let mut rewritten_bytes: u64 = values.iter().map(|(_, v)| v.len() as u64).sum();
        // Each live id's document: its old key (`d doc first`) goes, its new one gathers them.
        let mut old_docs: std::collections::BTreeMap<Vec<u8>, HashSet<&str>> = Default::default();
        let mut doc_of: std::collections::HashMap<&str, String> = Default::default();
        for (first, ids) in &lists {
            for (i, id) in ids.iter().enumerate().filter(|(_, id)| !id.is_empty()) {
                let Some(record) = reader.record(id)? else {
                    return Err(self.corrupt(format!("order index names {id} without metadata")));
                };
                if record.ro != first + i as u64 {
                    return Err(self.corrupt(format!(
                        "batch {first} holds {id} at receiptOrder {} but its record says {}",
                        first + i as u64,
                        record.ro
                    )));
                }
                let doc = serde_json::from_slice::<DocOf>(record.json())
                    .map_err(|e| self.corrupt(format!("metadata of {id}: {e}")))?
                    .doc_id;
                old_docs
                    .entry(doc_batch_key(&doc, *first))
                    .or_default()
                    .insert(id);
                doc_of.insert(id, doc);
            }
        }
        let mut batch = WriteBatch::default();
        for first in firsts {
            batch.remove(batch_key(*first));
        }
        for (key, expected) in &old_docs {
            let stored = self.tree.get(key).map_err(self.err())?;
            let stored: &[u8] = stored.as_deref().unwrap_or_default();
            rewritten_bytes += stored.len() as u64;
            let ids =
                IdList::decode(stored).ok_or_else(|| self.corrupt("malformed document index"))?;
            if ids.len() != expected.len() || !ids.iter().all(|id| expected.contains(id)) {
                return Err(
                    self.corrupt("a document index disagrees with the scan index; left as it is")
                );
            }
            batch.remove(key.clone());
        }
        let mut new_keys = 0;
        if let Some((first, ids)) = merge_lists(&lists) {
            let mut merged = IdList::default();
            let mut docs: std::collections::BTreeMap<&str, IdList> = Default::default();
            for id in ids {
                merged.push(id);
                if let Some(doc) = doc_of.get(id) {
                    docs.entry(doc.as_str()).or_default().push(id);
                }
            }
            batch.insert(batch_key(first), merged.0);
            new_keys += 1 + docs.len();
            for (doc, list) in docs {
                batch.insert(doc_batch_key(doc, first), list.0);
            }
        }
        Ok(Some(Merge {
            batch,
            removed_keys: (firsts.len() + old_docs.len() - new_keys) as u64,
            rewritten_bytes,
        }))
    }

    fn payload_bytes_total(&self) -> Result<u64, StoreError> {
        Ok(read_u64(self.tree.get(BYTES).map_err(self.err())?))
    }
}

#[async_trait]
impl<E: Engine> ContentAddressedStore for DiskStore<E> {
    fn id(&self) -> &StoreId {
        &self.id
    }

    async fn put_entries(&self, entries: Vec<Entry>) -> Result<PutSummary, StoreError> {
        let prepared = crate::cpu::run(move || prepare(entries))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        self.check_space()?;
        let _writer = self.write_lock.lock().await;
        self.settle().await?;
        let mut ro = self.visible();
        let mut count = read_u64(self.tree.get(COUNT).map_err(self.err())?);
        let mut bytes = self.payload_bytes_total()?;
        let mut batch = WriteBatch::default();
        let mut inserted = Vec::new();
        let first = ro + 1;
        let mut batch_ids = IdList::default();
        let mut doc_ids: std::collections::BTreeMap<String, IdList> = Default::default();
        let mut seen = HashSet::new();
        // What the store already holds, looked up on every core (the lock keeps writers out, and
        // the lookups are a sizeable share of a batch's time under it).
        let tree = &self.tree;
        let layout_2 = self.has_layout_2;
        let held: Vec<(bool, bool)> = prepared
            .par_iter()
            .map(|entry| {
                Ok((
                    tree.contains_key(&meta_key(&entry.id))?,
                    tree.contains_key(&holder_key(&entry.content_hash))?
                        || (layout_2 && tree.contains_key(&payload_key(&entry.content_hash))?),
                ))
            })
            .collect::<Result<_, EngineError>>()
            .map_err(self.err())?;
        let mut batch_hashes = HashSet::new();
        let mut undo = Undo::default();
        undo.restore(COUNT.to_vec(), self.tree.get(COUNT).map_err(self.err())?);
        undo.restore(BYTES.to_vec(), self.tree.get(BYTES).map_err(self.err())?);
        for (entry, (id_held, payload_held)) in prepared.into_iter().zip(held) {
            if id_held || seen.contains(&entry.id) {
                continue;
            }
            ro += 1;
            count += 1;
            let mut record = if !payload_held && batch_hashes.insert(entry.content_hash.clone()) {
                bytes += entry.payload_len;
                batch.insert(holder_key(&entry.content_hash), entry.id.as_bytes());
                undo.restore(holder_key(&entry.content_hash), None::<&[u8]>);
                entry.record
            } else {
                encode_shared(0, &entry.record[entry.json.clone()])
            };
            record[..8].copy_from_slice(&ro.to_be_bytes());
            batch.insert(meta_key(&entry.id), record);
            undo.restore(meta_key(&entry.id), None::<&[u8]>);
            batch_ids.push(&entry.id);
            doc_ids.entry(entry.doc_id).or_default().push(&entry.id);
            seen.insert(entry.id.clone());
            inserted.push(entry.id);
        }
        if !inserted.is_empty() {
            batch.insert(COUNT, &count.to_be_bytes()[..]);
            batch.insert(BYTES, &bytes.to_be_bytes()[..]);
            self.commit(batch, undo, first, batch_ids, doc_ids, ro)
                .await?;
        }
        let head = StoreHead {
            epoch: self.epoch.clone(),
            max_receipt_order: ro,
        };
        Ok(super::announce_put(&self.changes, &self.id, inserted, head))
    }

    fn keeps_receipts(&self) -> bool {
        true
    }

    async fn apply_receipts(&self, receipts: &[EntryMetadata]) -> Result<Vec<String>, StoreError> {
        self.check_space()?;
        let _writer = self.write_lock.lock().await;
        self.settle().await?;
        let reader = self.reader();
        let mut ro = reader.visible;
        let first = ro + 1;
        let mut batch = WriteBatch::default();
        let mut batch_ids = IdList::default();
        let mut doc_ids: std::collections::BTreeMap<String, IdList> = Default::default();
        // Index values rewritten by this call, read once and changed in memory.
        let mut old_batches: std::collections::HashMap<Vec<u8>, Vec<u8>> = Default::default();
        let mut old_docs: std::collections::HashMap<Vec<u8>, Vec<u8>> = Default::default();
        let mut updated = Vec::new();
        // Ids already re-anchored by this call: `reader` still sees their old place, so a second
        // receipt for one of them is not applied again.
        let mut moved: HashSet<String> = HashSet::new();
        let mut undo = Undo::default();
        for receipt in receipts {
            if moved.contains(&receipt.id) {
                continue;
            }
            let Some(found) = reader.record(&receipt.id)? else {
                continue;
            };
            let stored = reader.parse_meta(&receipt.id, found.ro, found.json())?;
            let Some(mut record) = super::with_receipt(&stored, receipt) else {
                continue;
            };
            let old_ro = found.ro;
            let (key, list) = match self
                .tree
                .range(Included(&batch_key(0)), Included(&batch_key(old_ro)))
                .next_back()
            {
                Some(item) => item.map_err(self.err())?,
                None => return Err(self.corrupt(format!("no batch holds {}", record.id))),
            };
            let old_first = u64::from_be_bytes(
                key[1..]
                    .try_into()
                    .map_err(|_| self.corrupt("malformed batch key"))?,
            );
            undo.restore(key.to_vec(), Some(list.clone()));
            let list = old_batches
                .entry(key.to_vec())
                .or_insert_with(|| list.to_vec());
            if !IdList::tombstone(list, (old_ro - old_first) as usize, &record.id) {
                return Err(self.corrupt(format!(
                    "batch {old_first} does not hold {} at receiptOrder {old_ro}",
                    record.id
                )));
            }
            let doc_key = doc_batch_key(&record.doc_id, old_first);
            let doc_list = match old_docs.get(&doc_key) {
                Some(list) => list.clone(),
                None => {
                    let prior = self.tree.get(&doc_key).map_err(self.err())?;
                    undo.restore(doc_key.clone(), prior.clone());
                    prior.map(|v| v.to_vec()).unwrap_or_default()
                }
            };
            let doc_list = IdList::without(&doc_list, &record.id)
                .ok_or_else(|| self.corrupt(format!("malformed index of {}", record.doc_id)))?;
            old_docs.insert(doc_key, doc_list);

            ro += 1;
            record.receipt_order = None;
            let json = serde_json::to_vec(&record).expect("metadata serialises");
            // The record keeps its form: records sharing its payload may point at it.
            let value = match &found.payload {
                Some(payload) => encode_inline(ro, &json, &found.raw[payload.clone()]),
                None => encode_shared(ro, &json),
            };
            undo.restore(meta_key(&record.id), Some(found.raw.clone()));
            batch.insert(meta_key(&record.id), value);
            batch_ids.push(&record.id);
            doc_ids.entry(record.doc_id).or_default().push(&record.id);
            moved.insert(record.id.clone());
            updated.push(record.id);
        }
        if !updated.is_empty() {
            for (key, list) in old_batches {
                batch.insert(key, list);
            }
            for (key, list) in old_docs {
                if list.is_empty() {
                    batch.remove(key);
                } else {
                    batch.insert(key, list);
                }
            }
            let _gate = self.reanchor_gate.write().await;
            self.commit(batch, undo, first, batch_ids, doc_ids, ro)
                .await?;
        }
        let head = StoreHead {
            epoch: self.epoch.clone(),
            max_receipt_order: ro,
        };
        Ok(super::announce_put(&self.changes, &self.id, updated, head).inserted)
    }

    async fn get_entries(&self, ids: &[String]) -> Result<Vec<Entry>, StoreError> {
        self.read_all(ids, Reader::<E::Tree>::entry).await
    }

    async fn get_entries_raw(&self, ids: &[String]) -> Result<Vec<RawEntry>, StoreError> {
        self.read_all(ids, Reader::<E::Tree>::raw_entry).await
    }

    async fn get_entry_metadata(&self, id: &str) -> Result<Option<EntryMetadata>, StoreError> {
        let _gate = self.reanchor_gate.read().await;
        self.load_meta(id)
    }

    async fn has_entries(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        self.read_all(ids, |reader, id| {
            Ok(reader.record(id)?.map(|_| id.to_string()))
        })
        .await
    }

    async fn scan_entries_since(
        &self,
        cursor: Option<&ScanCursor>,
        limit: usize,
        filters: &ScanFilters,
    ) -> Result<ScanPage, StoreError> {
        let _gate = self.reanchor_gate.read().await;
        let (entries, has_more) = self.scan_records(cursor, limit, |reader, ro, id, json| {
            let meta = reader.parse_meta(&id, ro, json)?;
            Ok(filters.matches(&meta).then_some(meta))
        })?;
        Ok(super::page(entries, cursor, has_more))
    }

    /// Unfiltered pages are assembled from the stored records without parsing them.
    async fn scan_entries_since_raw(
        &self,
        cursor: Option<&ScanCursor>,
        limit: usize,
        filters: &ScanFilters,
    ) -> Result<bytes::Bytes, StoreError> {
        if !filters.is_empty() {
            return Ok(super::page_json(
                &self.scan_entries_since(cursor, limit, filters).await?,
            ));
        }
        let _gate = self.reanchor_gate.read().await;
        let (records, has_more) = self.scan_records(cursor, limit, |_, ro, id, json| {
            Ok(Some((
                ScanCursor {
                    receipt_order: ro,
                    id,
                },
                wire_json(ro, json),
            )))
        })?;
        let next = records.last().map(|(c, _)| c).or(cursor);
        Ok(crate::wire::scan_page_json(
            records.iter().map(|(_, json)| json.as_slice()),
            next,
            has_more,
        )
        .into())
    }

    async fn get_store_head(&self) -> Result<StoreHead, StoreError> {
        Ok(StoreHead {
            epoch: self.epoch.clone(),
            max_receipt_order: self.visible(),
        })
    }

    /// What the index maintenance did since the process started (sled reclaims its own log
    /// segments internally and reports nothing about it).
    async fn compaction_status(&self) -> Result<CompactionStatus, StoreError> {
        Ok(self
            .figures
            .lock()
            .expect("figures")
            .status(&self.thresholds))
    }

    async fn maintain(&self) -> Result<(), StoreError> {
        self.compact_index().await.map(|_| ())
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        Ok(StoreStats {
            entries: read_u64(self.tree.get(COUNT).map_err(self.err())?),
            payload_bytes: self.payload_bytes_total()?,
            index_keys_waiting: self.waiting_keys.load(Ordering::Relaxed),
        })
    }

    fn subscribe_changes(&self) -> broadcast::Receiver<StoreChange> {
        self.changes.subscribe()
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().await.map_err(self.err())?;
        Ok(())
    }

    async fn get_all_ids(&self) -> Result<Vec<String>, StoreError> {
        let _gate = self.reanchor_gate.read().await;
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
        let _gate = self.reanchor_gate.read().await;
        let have: HashSet<&str> = have_ids.iter().map(String::as_str).collect();
        let mut out = Vec::new();
        for item in self.tree.prefix(&doc_prefix(doc_id)) {
            let (_, value) = item.map_err(self.err())?;
            let ids = IdList::decode(&value)
                .ok_or_else(|| self.corrupt(format!("malformed index of document {doc_id}")))?;
            for id in ids {
                if have.contains(id) {
                    continue;
                }
                if let Some(meta) = self.load_meta(id)? {
                    out.push(meta);
                }
            }
        }
        out.sort_by(|a, b| (a.receipt_order, &a.id).cmp(&(b.receipt_order, &b.id)));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::engine::sled::SledEngine;
    use crate::wire::StoreKind;

    #[test]
    fn id_lists_round_trip_and_refuse_truncation() {
        let mut list = IdList::default();
        for id in [
            "a",
            "",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            list.push(id);
        }
        assert_eq!(
            IdList::decode(&list.0).unwrap(),
            vec![
                "a",
                "",
                "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
            ]
        );
        assert_eq!(IdList::decode(&[]).unwrap(), Vec::<&str>::new());
        assert!(IdList::decode(&list.0[..list.0.len() - 1]).is_none());
        assert!(IdList::decode(&[2, 0xff, 0xfe]).is_none(), "not UTF-8");
        assert_eq!(IdList::count(&list.0), Some(3));
        assert_eq!(IdList::count(&[]), Some(0));
        assert_eq!(IdList::count(&list.0[..list.0.len() - 1]), None);
    }

    /// A put whose caller went away during its flush leaves its batch applied and the watermark
    /// where it was. The next write makes it durable and visible first: nothing is numbered twice,
    /// and its entries are not counted as stored before they are durable.
    #[tokio::test]
    async fn a_write_interrupted_after_its_batch_is_settled_by_the_next() {
        use crate::store::contract_tests::entry;
        let dir = tempfile::tempdir().unwrap();
        let db = SledEngine(sled::open(dir.path()).unwrap());
        let (tx, _) = broadcast::channel(16);
        let store =
            DiskStore::open(db, StoreId::new("t", "db", StoreKind::Docs).unwrap(), tx).unwrap();
        store
            .put_entries(vec![entry("a", "d", &[], "doc_create", b"1")])
            .await
            .unwrap();
        store
            .put_entries(vec![entry("b", "d", &[], "doc_create", b"2")])
            .await
            .unwrap();
        // Interrupted: applied, the watermark not moved.
        store.visible.store(1, Ordering::Release);
        assert_eq!(store.get_all_ids().await.unwrap(), vec!["a"]);
        let put = store
            .put_entries(vec![
                entry("b", "d", &[], "doc_create", b"2"),
                entry("c", "d", &[], "doc_create", b"3"),
            ])
            .await
            .unwrap();
        assert_eq!(put.inserted, vec!["c"]);
        assert_eq!(put.head.max_receipt_order, 3);
        assert_eq!(store.get_all_ids().await.unwrap(), vec!["a", "b", "c"]);
        let b = store.get_entry_metadata("b").await.unwrap().unwrap();
        assert_eq!(b.receipt_order, Some(2));
    }

    #[test]
    fn a_store_of_another_key_layout_is_refused_not_misread() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let id = StoreId::new("t", "db", StoreKind::Docs).unwrap();
        // A layout-1 store: entries but no format marker.
        let tree = db.open_tree(tree_name(&id)).unwrap();
        tree.insert(EPOCH, "e").unwrap();
        tree.insert(MAX, &5u64.to_be_bytes()).unwrap();
        let (tx, _) = broadcast::channel(1);
        let err = DiskStore::open(SledEngine(db.clone()), id.clone(), tx.clone())
            .err()
            .expect("refused");
        assert!(err.to_string().contains("key layout 1"), "{err}");
        // A new store is stamped with the current layout and opens again.
        let other = StoreId::new("t", "db2", StoreKind::Docs).unwrap();
        DiskStore::open(SledEngine(db.clone()), other.clone(), tx.clone()).unwrap();
        DiskStore::open(SledEngine(db), other, tx).unwrap();
    }

    #[test]
    fn records_are_split_by_layout_and_malformed_ones_refused() {
        let inline = encode_inline(7, b"{\"id\":\"a\"}", b"payload");
        let (json, payload) = record_parts(&inline).unwrap();
        assert_eq!(&inline[json], b"{\"id\":\"a\"}");
        assert_eq!(&inline[payload.unwrap()], b"payload");
        let empty_payload = encode_inline(7, b"{}", b"");
        assert_eq!(record_parts(&empty_payload).unwrap().1, Some(14..14));
        let legacy = [&7u64.to_be_bytes()[..], b"{\"id\":\"a\"}"].concat();
        assert_eq!(record_parts(&legacy).unwrap(), (8..legacy.len(), None));
        assert!(record_parts(&inline[..13]).is_none(), "JSON cut short");
        assert!(record_parts(&inline[..9]).is_none(), "no length");
        let mut no_object = inline.clone();
        no_object[12] = b'[';
        assert!(record_parts(&no_object).is_none());
    }

    /// Rewrites `tree` as layout 2 left it: every record shared, payloads under `p` contentHash,
    /// no `q` keys, stamped 2.
    fn rewrite_as_layout_2(tree: &sled::Tree) {
        for item in tree.prefix(b"m") {
            let (key, raw) = item.unwrap();
            let (json, payload) = record_parts(&raw).unwrap();
            let Some(payload) = payload else { continue };
            let keys: crate::wire::RecordKeys<'_> =
                serde_json::from_slice(&raw[json.clone()]).unwrap();
            tree.insert(payload_key(&keys.content_hash), &raw[payload])
                .unwrap();
            let mut shared = encode_shared(0, &raw[json]);
            shared[..8].copy_from_slice(&raw[..8]);
            tree.insert(key, shared).unwrap();
        }
        for item in tree.prefix(b"q") {
            tree.remove(item.unwrap().0).unwrap();
        }
        tree.insert(FORMAT, READABLE_FORMAT).unwrap();
        tree.flush().unwrap();
    }

    #[tokio::test]
    async fn a_layout_2_store_is_read_as_before_and_written_on_inline() {
        use crate::store::contract_tests::{entry, receipt_for};
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let id = StoreId::new("t", "db", StoreKind::Docs).unwrap();
        let (tx, _) = broadcast::channel(16);
        let ids: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let (entries, raw, page) = {
            let store = DiskStore::open(SledEngine(db.clone()), id.clone(), tx.clone()).unwrap();
            store
                .put_entries(vec![
                    entry("a", "d1", &[], "doc_create", b"alpha"),
                    entry("b", "d1", &[], "doc_change", b"shared"),
                    entry("c", "d2", &[], "doc_create", b"shared"),
                ])
                .await
                .unwrap();
            (
                store.get_entries(&ids).await.unwrap(),
                store.get_entries_raw(&ids).await.unwrap(),
                store
                    .scan_entries_since_raw(None, 10, &ScanFilters::default())
                    .await
                    .unwrap(),
            )
        };
        let tree = db.open_tree(tree_name(&id)).unwrap();
        assert_eq!(
            tree.prefix(b"q").count(),
            2,
            "one payload per distinct hash"
        );
        let c = tree.get(meta_key("c")).unwrap().unwrap();
        assert_eq!(record_parts(&c).unwrap().1, None, "c shares b's payload");
        rewrite_as_layout_2(&tree);
        assert_eq!(tree.prefix(b"p").count(), 2);

        let store = DiskStore::open(SledEngine(db.clone()), id.clone(), tx).unwrap();
        assert_eq!(tree.get(FORMAT).unwrap().unwrap().as_ref(), FORMAT_VERSION);
        assert_eq!(store.get_entries(&ids).await.unwrap(), entries);
        let raw_again = store.get_entries_raw(&ids).await.unwrap();
        for (before, after) in raw.iter().zip(&raw_again) {
            assert_eq!(before.metadata_json, after.metadata_json);
            assert_eq!(before.encrypted_data, after.encrypted_data);
        }
        let page_again = store
            .scan_entries_since_raw(None, 10, &ScanFilters::default())
            .await
            .unwrap();
        assert_eq!(page_again, page);

        // A new payload is written inline; one that layout 2 holds under `p` is not stored again.
        let bytes_before = store.stats().await.unwrap().payload_bytes;
        store
            .put_entries(vec![
                entry("d", "d1", &[], "doc_change", b"delta"),
                entry("e", "d3", &[], "doc_create", b"alpha"),
            ])
            .await
            .unwrap();
        let form = |id: &str| {
            record_parts(&tree.get(meta_key(id)).unwrap().unwrap())
                .unwrap()
                .1
        };
        assert!(form("d").is_some());
        assert_eq!(form("e"), None);
        assert_eq!(store.stats().await.unwrap().payload_bytes, bytes_before + 5);
        // A receipt applied to a layout-2 record keeps it shared and its payload where it was.
        store
            .apply_receipts(&[receipt_for("b", "d1", b"shared", 10)])
            .await
            .unwrap();
        assert_eq!(form("b"), None);
        let all: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        let now = store.get_entries(&all).await.unwrap();
        let payloads: Vec<&[u8]> = now.iter().map(|e| e.encrypted_data.as_slice()).collect();
        assert_eq!(
            payloads,
            vec![
                &b"alpha"[..],
                &b"shared"[..],
                &b"shared"[..],
                &b"delta"[..],
                &b"alpha"[..]
            ]
        );
        assert_eq!(now[1].metadata.received_at, Some(10));
        assert_eq!(now[1].metadata.receipt_order, Some(6));
    }
}

/// The on-disk readers, for the fuzz targets (`fuzz/`): what a stored record or batch-index value
/// decodes to. Not part of the node's API.
#[doc(hidden)]
pub mod fuzz_hooks {
    /// Where a stored record's metadata JSON and inline payload are (`None` when malformed).
    pub fn record_parts(
        raw: &[u8],
    ) -> Option<(std::ops::Range<usize>, Option<std::ops::Range<usize>>)> {
        super::record_parts(raw)
    }

    /// The ids of a batch-index value (`None` when malformed).
    pub fn decode_id_list(bytes: &[u8]) -> Option<Vec<&str>> {
        super::IdList::decode(bytes)
    }
}
