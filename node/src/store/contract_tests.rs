//! The store contract, run against every implementation.

use super::disk_store::DiskStore;
use super::engine::{fjall::FjallEngine, sled::SledEngine, Engine};
use super::memory::MemoryStore;
use super::*;
use crate::wire::{b64::B64, content_hash, StoreKind};

pub(crate) fn entry(id: &str, doc: &str, deps: &[&str], entry_type: &str, payload: &[u8]) -> Entry {
    Entry {
        metadata: EntryMetadata {
            entry_type: entry_type.into(),
            id: id.into(),
            content_hash: content_hash(payload),
            doc_id: doc.into(),
            dependency_ids: deps.iter().map(|d| d.to_string()).collect(),
            created_at: 1_700_000_000_000 + id.len() as i64,
            receipt_order: Some(999),
            created_by_public_key: "K".into(),
            decryption_key_id: "default".into(),
            snapshot_head_hashes: None,
            snapshot_head_entry_ids: None,
            signature: B64(vec![1; 64]),
            metadata_signature: None,
            original_size: payload.len() as u64,
            encrypted_size: payload.len() as u64,
            received_at: None,
            received_by_public_key: None,
            received_date_signature: None,
            attachment_refs: None,
            provenance: None,
            recipients: None,
            entry_version: None,
        },
        encrypted_data: payload.to_vec(),
    }
}

/// Opens an engine's directory, which the test may have just closed: engines release the
/// directory's lock from background threads shortly after the last handle is dropped, so it is
/// polled for (with a deadline) rather than assumed free.
async fn reopen<E: Engine>(path: &std::path::Path) -> E {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match E::open(path, 16 << 20) {
            Ok(db) => return db,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot reopen {}: {e}", path.display()),
        }
    }
}

/// Runs each named generic test (`async fn name<E: Engine>()`) once per on-disk engine.
macro_rules! on_every_engine {
    ($($test:ident),* $(,)?) => {
        mod sled_engine {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test::<super::SledEngine>().await
                }
            )*
        }
        mod fjall_engine {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test::<super::FjallEngine>().await
                }
            )*
        }
    };
}

on_every_engine!(
    re_anchors_receipts_durably,
    pages_across_batches,
    meets_the_contract_and_persists,
    readers_never_miss_an_entry_being_re_anchored,
    index_compaction_reads_identically_and_reports_what_it_did,
);

fn sid() -> StoreId {
    StoreId::new("t", "db", StoreKind::Docs).unwrap()
}

async fn contract(store: &dyn ContentAddressedStore) {
    let head = store.get_store_head().await.unwrap();
    assert_eq!(head.max_receipt_order, 0);
    let mut changes = store.subscribe_changes();

    let batch = vec![
        entry("b", "d1", &[], "doc_create", b"same"),
        entry("a", "d1", &["b"], "doc_change", b"same"),
        entry("c", "d2", &[], "doc_create", b"other"),
        entry("a", "d1", &["b"], "doc_change", b"same"),
    ];
    let put = store.put_entries(batch).await.unwrap();
    assert_eq!(put.inserted, vec!["b", "a", "c"]);
    assert_eq!(put.head.max_receipt_order, 3);
    assert_eq!(put.head.epoch, head.epoch);
    assert_eq!(changes.recv().await.unwrap().head.max_receipt_order, 3);

    // Idempotent: a second push changes nothing and does not notify.
    let again = store
        .put_entries(vec![entry("a", "d1", &[], "doc_change", b"x")])
        .await
        .unwrap();
    assert!(again.inserted.is_empty());
    assert_eq!(again.head.max_receipt_order, 3);
    let stored = store.get_entry_metadata("a").await.unwrap().unwrap();
    assert_eq!(
        stored.receipt_order,
        Some(2),
        "local receiptOrder replaces the incoming one"
    );
    assert_eq!(stored.dependency_ids, vec!["b"], "first writer wins");

    // Payload dedup: two entries share "same".
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.entries, 3);
    assert_eq!(stats.payload_bytes, 4 + 5);
    let shared = store.get_entries(&["a".into(), "b".into()]).await.unwrap();
    assert!(shared.iter().all(|e| e.encrypted_data == b"same"));
    let shared = store.get_entries_raw(&["a".into()]).await.unwrap();
    assert_eq!(shared[0].encrypted_data.as_ref(), b"same");

    let got = store
        .get_entries(&["c".into(), "zz".into(), "b".into()])
        .await
        .unwrap();
    assert_eq!(
        got.iter()
            .map(|e| e.metadata.id.as_str())
            .collect::<Vec<_>>(),
        vec!["c", "b"]
    );
    assert_eq!(got[0].encrypted_data, b"other");
    // The serialised form carries the same records, receiptOrder included.
    let raw = store
        .get_entries_raw(&["c".into(), "zz".into(), "b".into()])
        .await
        .unwrap();
    assert_eq!(raw.len(), 2);
    for (raw, entry) in raw.iter().zip(&got) {
        let parsed: EntryMetadata = serde_json::from_slice(&raw.metadata_json).unwrap();
        assert_eq!(parsed, entry.metadata);
        assert_eq!(raw.encrypted_data, entry.encrypted_data);
    }
    assert_eq!(
        store
            .has_entries(&["zz".into(), "c".into(), "a".into()])
            .await
            .unwrap(),
        vec!["c", "a"]
    );

    // Cursor scans, exclusive, paged, filtered.
    let p1 = store
        .scan_entries_since(None, 2, &ScanFilters::default())
        .await
        .unwrap();
    assert_eq!(
        p1.entries.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        vec!["b", "a"]
    );
    assert!(p1.has_more);
    let p2 = store
        .scan_entries_since(p1.next_cursor.as_ref(), 2, &ScanFilters::default())
        .await
        .unwrap();
    assert_eq!(p2.entries.len(), 1);
    assert!(!p2.has_more);
    let p3 = store
        .scan_entries_since(p2.next_cursor.as_ref(), 2, &ScanFilters::default())
        .await
        .unwrap();
    assert!(p3.entries.is_empty());
    assert_eq!(
        p3.next_cursor, p2.next_cursor,
        "empty page echoes the cursor"
    );
    let filtered = store
        .scan_entries_since(
            None,
            1000,
            &ScanFilters {
                doc_id: Some("d1".into()),
                entry_types: Some(vec!["doc_change".into()]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(filtered.entries.len(), 1);
    assert_eq!(filtered.entries[0].id, "a");

    assert_eq!(store.get_all_ids().await.unwrap(), vec!["b", "a", "c"]);
    assert_eq!(
        store
            .find_new_entries(&["a".into()])
            .await
            .unwrap()
            .iter()
            .map(|e| e.id.clone())
            .collect::<Vec<_>>(),
        vec!["b", "c"]
    );
    assert_eq!(
        store
            .find_new_entries_for_doc(&["b".into()], "d1")
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        store
            .find_entries("doc_create", None, None)
            .await
            .unwrap()
            .len(),
        2
    );
    let bloom = store.get_id_bloom_summary().await.unwrap();
    assert_eq!(bloom, crate::bloom::build(["b", "a", "c"].into_iter()));
    assert_eq!(
        store
            .resolve_dependencies("a", &Default::default())
            .await
            .unwrap(),
        vec!["b", "a"]
    );
    let without_start = ResolveOptions {
        include_start: Some(false),
        ..Default::default()
    };
    assert_eq!(
        store
            .resolve_dependencies("a", &without_start)
            .await
            .unwrap(),
        vec!["b"]
    );
}

/// Several batches of different sizes: pages of every size walk all entries exactly once and in
/// order, from any cursor — also one that falls inside a batch or names an id the store lacks — and
/// the per-document lookup spans batches.
async fn paging_across_batches(store: &dyn ContentAddressedStore) {
    let mut n = 0;
    for size in [1, 7, 3, 12, 1, 5] {
        let batch = (0..size)
            .map(|_| {
                n += 1;
                let id = format!("e{n:03}");
                entry(
                    &id,
                    &format!("doc{}", n % 3),
                    &[],
                    "doc_change",
                    id.as_bytes(),
                )
            })
            .collect();
        store.put_entries(batch).await.unwrap();
    }
    let all: Vec<String> = (1..=n).map(|i| format!("e{i:03}")).collect();
    for limit in [1, 2, 5, 1000] {
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = store
                .scan_entries_since(cursor.as_ref(), limit, &ScanFilters::default())
                .await
                .unwrap();
            assert!(page.entries.len() <= limit);
            seen.extend(page.entries.iter().map(|m| m.id.clone()));
            cursor = page.next_cursor;
            if !page.has_more {
                break;
            }
        }
        assert_eq!(seen, all, "page size {limit}");
    }
    let after = |ro: u64, id: &str| ScanCursor {
        receipt_order: ro,
        id: id.to_string(),
    };
    let ids = |page: ScanPage| page.entries.into_iter().map(|m| m.id).collect::<Vec<_>>();
    let page = store
        .scan_entries_since(Some(&after(10, "e010")), 3, &ScanFilters::default())
        .await
        .unwrap();
    assert_eq!(ids(page), vec!["e011", "e012", "e013"]);
    // (10, "a") sorts before (10, "e010"); (10, "z") after it.
    let page = store
        .scan_entries_since(Some(&after(10, "a")), 2, &ScanFilters::default())
        .await
        .unwrap();
    assert_eq!(ids(page), vec!["e010", "e011"]);
    let page = store
        .scan_entries_since(Some(&after(10, "z")), 1, &ScanFilters::default())
        .await
        .unwrap();
    assert_eq!(ids(page), vec!["e011"]);
    let page = store
        .scan_entries_since(Some(&after(n as u64, "e029")), 5, &ScanFilters::default())
        .await
        .unwrap();
    assert!(page.entries.is_empty() && !page.has_more);
    assert_eq!(store.get_all_ids().await.unwrap(), all);
    let doc1: Vec<String> = store
        .find_new_entries_for_doc(&["e004".into()], "doc1")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    let expected: Vec<String> = (1..=n)
        .filter(|i| i % 3 == 1 && *i != 4)
        .map(|i| format!("e{i:03}"))
        .collect();
    assert_eq!(doc1, expected);
    raw_scans_are_the_typed_pages(store).await;
}

pub(crate) fn receipt_for(id: &str, doc: &str, payload: &[u8], at: i64) -> EntryMetadata {
    let mut m = entry(id, doc, &[], "doc_create", payload).metadata;
    m.received_at = Some(at);
    m.received_by_public_key = Some("W".into());
    m.received_date_signature = Some(B64(vec![at as u8; 64]));
    m
}

/// Witness receipts applied to stored entries: copied on, re-anchored at fresh receiptOrders in
/// order after everything else, listed once everywhere, idempotent. Leaves the store at head 7.
async fn receipts_re_anchor(store: &dyn ContentAddressedStore) {
    // The sync engine hands receipts only to stores that say they keep them.
    assert!(store.keeps_receipts());
    let put: Vec<Entry> = (1..=5)
        .map(|i| {
            entry(
                &format!("r{i}"),
                if i % 2 == 0 { "even" } else { "odd" },
                &[],
                "doc_create",
                &[i as u8],
            )
        })
        .collect();
    store.put_entries(put[..3].to_vec()).await.unwrap();
    store.put_entries(put[3..].to_vec()).await.unwrap();
    let mut changes = store.subscribe_changes();

    let receipts = vec![
        receipt_for("r2", "even", &[2], 10),
        receipt_for("unknown", "odd", &[9], 10),
        entry("r3", "odd", &[], "doc_create", &[3]).metadata, // no receipt in it
        receipt_for("r4", "even", &[4], 11),
        receipt_for("r2", "even", &[2], 10), // twice in one call
    ];
    assert_eq!(
        store.apply_receipts(&receipts).await.unwrap(),
        vec!["r2", "r4"]
    );
    assert_eq!(changes.recv().await.unwrap().head.max_receipt_order, 7);
    let r2 = store.get_entry_metadata("r2").await.unwrap().unwrap();
    assert_eq!(
        (
            r2.receipt_order,
            r2.received_at,
            r2.received_by_public_key.as_deref()
        ),
        (Some(6), Some(10), Some("W"))
    );
    assert_eq!(r2.received_date_signature, Some(B64(vec![10; 64])));
    assert_eq!(
        store.get_entries(&["r2".into()]).await.unwrap()[0].encrypted_data,
        vec![2]
    );
    assert_eq!(
        store.get_all_ids().await.unwrap(),
        vec!["r1", "r3", "r5", "r2", "r4"],
        "each id once, re-anchored ones last"
    );
    let scanned = store
        .scan_entries_since(None, 1000, &ScanFilters::default())
        .await
        .unwrap();
    let orders: Vec<(String, u64)> = scanned
        .entries
        .iter()
        .map(|m| (m.id.clone(), m.receipt_order.unwrap()))
        .collect();
    assert_eq!(
        orders,
        vec![
            ("r1".into(), 1),
            ("r3".into(), 3),
            ("r5".into(), 5),
            ("r2".into(), 6),
            ("r4".into(), 7)
        ]
    );
    // A scanner whose cursor had passed r4's old place sees it again at its new one.
    let cursor = ScanCursor {
        receipt_order: 4,
        id: "r4".into(),
    };
    let later = store
        .scan_entries_since(Some(&cursor), 1000, &ScanFilters::default())
        .await
        .unwrap();
    let later: Vec<&str> = later.entries.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(later, vec!["r5", "r2", "r4"]);
    let even: Vec<String> = store
        .find_new_entries_for_doc(&[], "even")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(even, vec!["r2", "r4"], "the document index lists each once");
    assert_eq!(
        store.stats().await.unwrap().entries,
        5,
        "no entry added by re-anchoring"
    );

    // The same receipts again change nothing; a newer receipt re-anchors once more.
    assert!(store.apply_receipts(&receipts).await.unwrap().is_empty());
    assert_eq!(store.get_store_head().await.unwrap().max_receipt_order, 7);
    assert_eq!(
        store
            .apply_receipts(&[receipt_for("r2", "even", &[2], 12)])
            .await
            .unwrap(),
        vec!["r2"]
    );
    assert_eq!(
        store
            .get_entry_metadata("r2")
            .await
            .unwrap()
            .unwrap()
            .receipt_order,
        Some(8)
    );
    assert_eq!(
        store.get_all_ids().await.unwrap(),
        vec!["r1", "r3", "r5", "r4", "r2"]
    );
    raw_scans_are_the_typed_pages(store).await;
}

/// Every page of `scan_entries_since_raw` is, parsed, the page `scan_entries_since` returns: from
/// the start, mid-way, past the end, page by page at several sizes, and filtered.
async fn raw_scans_are_the_typed_pages(store: &dyn ContentAddressedStore) {
    let unfiltered = ScanFilters::default();
    let by_type = ScanFilters {
        entry_types: Some(vec!["doc_create".into()]),
        ..ScanFilters::default()
    };
    for filters in [&unfiltered, &by_type] {
        for limit in [1, 3, 1000] {
            let mut cursor: Option<ScanCursor> = None;
            let mut pages = 0;
            loop {
                let typed = store
                    .scan_entries_since(cursor.as_ref(), limit, filters)
                    .await
                    .unwrap();
                let raw = store
                    .scan_entries_since_raw(cursor.as_ref(), limit, filters)
                    .await
                    .unwrap();
                let parsed: ScanPage = serde_json::from_slice(&raw).unwrap();
                assert_eq!(parsed, typed, "limit {limit}, page {pages}, {filters:?}");
                pages += 1;
                if !typed.has_more {
                    // Past the end: the cursor is echoed, nothing more.
                    let end = store
                        .scan_entries_since_raw(typed.next_cursor.as_ref(), limit, filters)
                        .await
                        .unwrap();
                    let end: ScanPage = serde_json::from_slice(&end).unwrap();
                    assert!(end.entries.is_empty() && !end.has_more);
                    assert_eq!(end.next_cursor, typed.next_cursor);
                    break;
                }
                cursor = typed.next_cursor;
            }
            assert!(pages >= 1);
        }
    }
}

#[tokio::test]
async fn memory_store_meets_the_contract() {
    contract(&MemoryStore::standalone(sid())).await;
    paging_across_batches(&MemoryStore::standalone(sid())).await;
    receipts_re_anchor(&MemoryStore::standalone(sid())).await;
}

async fn re_anchors_receipts_durably<E: Engine>() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, _) = broadcast::channel(16);
    {
        let store = DiskStore::open(reopen::<E>(dir.path()).await, sid(), tx.clone()).unwrap();
        receipts_re_anchor(&store).await;
    }
    let store = DiskStore::open(reopen::<E>(dir.path()).await, sid(), tx).unwrap();
    assert_eq!(store.get_store_head().await.unwrap().max_receipt_order, 8);
    assert_eq!(
        store.get_all_ids().await.unwrap(),
        vec!["r1", "r3", "r5", "r4", "r2"]
    );
    let r2 = store.get_entry_metadata("r2").await.unwrap().unwrap();
    assert_eq!((r2.receipt_order, r2.received_at), (Some(8), Some(12)));
}

async fn pages_across_batches<E: Engine>() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, _) = broadcast::channel(16);
    let store = DiskStore::open(reopen::<E>(dir.path()).await, sid(), tx).unwrap();
    paging_across_batches(&store).await;
}

async fn meets_the_contract_and_persists<E: Engine>() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, _) = broadcast::channel(16);
    let epoch;
    {
        let db = reopen::<E>(dir.path()).await;
        let store = DiskStore::open(db, sid(), tx.clone()).unwrap();
        contract(&store).await;
        epoch = store.get_store_head().await.unwrap().epoch;
    }
    let db = reopen::<E>(dir.path()).await;
    let store = DiskStore::open(db, sid(), tx).unwrap();
    let head = store.get_store_head().await.unwrap();
    assert_eq!(head.epoch, epoch, "epoch persists");
    assert_eq!(head.max_receipt_order, 3);
    assert_eq!(store.get_all_ids().await.unwrap(), vec!["b", "a", "c"]);
    let next = store
        .put_entries(vec![entry("d", "d3", &[], "doc_create", b"n")])
        .await
        .unwrap();
    assert_eq!(
        next.head.max_receipt_order, 4,
        "numbering continues after reopen"
    );
}

/// Readers running while receipts are applied see every entry exactly once, every time: a
/// re-anchored entry is never at neither place (nor at both).
async fn readers_never_miss_an_entry_being_re_anchored<E: Engine>() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, _) = broadcast::channel(1024);
    let store =
        std::sync::Arc::new(DiskStore::open(reopen::<E>(dir.path()).await, sid(), tx).unwrap());
    let n = 200;
    let entries: Vec<Entry> = (0..n)
        .map(|i| entry(&format!("e{i:03}"), "doc", &[], "doc_create", &[i as u8, 1]))
        .collect();
    store.put_entries(entries).await.unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (store, done) = (store.clone(), done.clone());
        tokio::spawn(async move {
            let mut reads = 0;
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                let ids = store.get_all_ids().await.unwrap();
                let unique: std::collections::HashSet<&String> = ids.iter().collect();
                assert_eq!((ids.len(), unique.len()), (n, n), "after {reads} reads");
                let page = store
                    .scan_entries_since(None, 1000, &ScanFilters::default())
                    .await
                    .unwrap();
                assert_eq!(page.entries.len(), n);
                let held = store.get_entry_metadata("e007").await.unwrap();
                assert!(held.is_some(), "e007 is always readable");
                reads += 1;
                tokio::task::yield_now().await;
            }
            reads
        })
    };
    for round in 0..30 {
        let receipts: Vec<EntryMetadata> = (0..n)
            .step_by(3)
            .map(|i| receipt_for(&format!("e{i:03}"), "doc", &[i as u8, 1], 100 + round))
            .collect();
        assert_eq!(
            store.apply_receipts(&receipts).await.unwrap().len(),
            receipts.len()
        );
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    let reads = reader.await.unwrap();
    assert!(reads > 0);
}

#[tokio::test]
async fn a_lying_content_hash_is_refused_by_the_store() {
    let store = MemoryStore::standalone(sid());
    let mut bad = entry("x", "d", &[], "doc_create", b"payload");
    bad.encrypted_data = b"other".to_vec();
    assert!(store.put_entries(vec![bad]).await.is_err());
    assert_eq!(store.get_store_head().await.unwrap().max_receipt_order, 0);
}

/// Everything a reader can observe of a store: every scan page (a small page size crosses index
/// keys), each document's entries, the head, the ids and every record.
async fn observable(store: &dyn ContentAddressedStore, docs: &[&str]) -> Vec<String> {
    let mut seen = Vec::new();
    let mut cursor: Option<ScanCursor> = None;
    loop {
        let page = store
            .scan_entries_since(cursor.as_ref(), 7, &ScanFilters::default())
            .await
            .unwrap();
        for e in &page.entries {
            seen.push(format!("scan {:?} {}", e.receipt_order, e.id));
        }
        if !page.has_more {
            break;
        }
        cursor = page.next_cursor.clone();
    }
    for doc in docs {
        let found = store.find_new_entries_for_doc(&[], doc).await.unwrap();
        let found: Vec<_> = found.iter().map(|m| (&m.id, m.receipt_order)).collect();
        seen.push(format!("doc {doc} {found:?}"));
    }
    seen.push(format!("head {:?}", store.get_store_head().await.unwrap()));
    let ids = store.get_all_ids().await.unwrap();
    seen.push(format!("ids {ids:?}"));
    for e in store.get_entries(&ids).await.unwrap() {
        seen.push(format!("entry {:?}", e.metadata));
    }
    seen
}

/// Each document's query names exactly the scan's entries of that document, each once.
async fn documents_agree_with_the_scan(store: &dyn ContentAddressedStore, docs: &[&str]) {
    let ids = store.get_all_ids().await.unwrap();
    let entries = store.get_entries(&ids).await.unwrap();
    for doc in docs {
        let found: Vec<String> = store
            .find_new_entries_for_doc(&[], doc)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        let expected: Vec<String> = entries
            .iter()
            .filter(|e| e.metadata.doc_id == *doc)
            .map(|e| e.metadata.id.clone())
            .collect();
        assert_eq!(found, expected, "document {doc}");
    }
}

async fn index_compaction_reads_identically_and_reports_what_it_did<E: Engine>() {
    use super::index_compaction::CompactionThresholds;
    let dir = tempfile::tempdir().unwrap();
    let (tx, _) = broadcast::channel(1024);
    let thresholds = CompactionThresholds {
        min_keys: 4,
        max_bytes: 0,
        target_entries: 32,
    };
    let docs = ["a", "b", "c"];
    let open = |db: E| {
        DiskStore::open(db, sid(), tx.clone())
            .unwrap()
            .with_compaction(thresholds)
    };
    let store = open(reopen::<E>(dir.path()).await);
    // 40 small pushes (one index key each, and one document key each), then receipts churning every
    // other entry of the first 20 (two more keys, and tombstones in ten of the first ones).
    for n in 0..40u8 {
        let id = format!("e{n:02}");
        let doc = docs[n as usize % 3];
        store
            .put_entries(vec![entry(&id, doc, &[], "doc_create", &[n])])
            .await
            .unwrap();
    }
    for half in [0u8..10, 10..20] {
        let receipts: Vec<_> = half
            .filter(|n| n % 2 == 0)
            .map(|n| {
                receipt_for(
                    &format!("e{n:02}"),
                    docs[n as usize % 3],
                    &[n],
                    100 + n as i64,
                )
            })
            .collect();
        assert_eq!(store.apply_receipts(&receipts).await.unwrap().len(), 5);
    }
    let (scan_keys, doc_keys) = store.index_key_counts();
    assert_eq!(scan_keys, 42);
    let before = observable(&store, &docs).await;
    assert_eq!(
        store.compaction_status().await.unwrap().total_compactions,
        0
    );

    let run = store
        .compact_index()
        .await
        .unwrap()
        .expect("42 small keys are due");
    let (scan_after, doc_after) = store.index_key_counts();
    // 50 receiptOrders in runs of at most 32 positions: two keys (the first starts after the
    // leading tombstone of e00).
    assert_eq!(scan_after, 2);
    assert!(
        doc_after < doc_keys,
        "{doc_after} document keys of {doc_keys}"
    );
    assert_eq!(
        run.removed_keys as usize,
        scan_keys + doc_keys - scan_after - doc_after
    );
    assert_eq!(observable(&store, &docs).await, before);
    let status = store.compaction_status().await.unwrap();
    assert!(status.enabled);
    assert_eq!(status.total_compactions, 1);
    assert_eq!(status.total_compacted_files, run.removed_keys);
    assert_eq!(status.total_compacted_bytes, run.rewritten_bytes);
    assert!(status.total_compacted_bytes > 0);
    assert_eq!(status.last_compacted_files, run.removed_keys);
    assert!(status.last_compaction_at.is_some());
    assert_eq!(store.stats().await.unwrap().index_keys_waiting, 0);
    // Nothing written since: the next look does nothing and reports nothing new.
    assert_eq!(store.compact_index().await.unwrap(), None);
    assert_eq!(
        store.compaction_status().await.unwrap().total_compactions,
        1
    );

    // Receipts find their entries in the merged keys; the merged store stays one index.
    let late: Vec<_> = [21u8, 33]
        .iter()
        .map(|&n| receipt_for(&format!("e{n:02}"), docs[n as usize % 3], &[n], 500))
        .collect();
    assert_eq!(
        store.apply_receipts(&late).await.unwrap(),
        vec!["e21", "e33"]
    );
    let after_receipts = observable(&store, &docs).await;
    documents_agree_with_the_scan(&store, &docs).await;
    let scanned: Vec<&String> = after_receipts
        .iter()
        .filter(|l| l.starts_with("scan "))
        .collect();
    assert_eq!(scanned.len(), 40, "every entry once");
    assert!(scanned[38].ends_with(" e21") && scanned[39].ends_with(" e33"));

    // What is on disk reads the same after a restart.
    drop(store);
    let store = open(reopen::<E>(dir.path()).await);
    assert_eq!(observable(&store, &docs).await, after_receipts);
    documents_agree_with_the_scan(&store, &docs).await;
    // The figures are the process's own (spec §7.4). The first look finds the late receipts' key
    // mergeable with the one before it: one key waiting, below the threshold of four.
    assert_eq!(
        store.compaction_status().await.unwrap().total_compactions,
        0
    );
    assert_eq!(store.compact_index().await.unwrap(), None);
    assert_eq!(store.stats().await.unwrap().index_keys_waiting, 1);
}
