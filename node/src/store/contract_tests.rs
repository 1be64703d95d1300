//! The store contract, run against every implementation.

use super::memory::MemoryStore;
use super::sled_store::SledStore;
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

#[tokio::test]
async fn memory_store_meets_the_contract() {
    contract(&MemoryStore::standalone(sid())).await;
}

#[tokio::test]
async fn sled_store_meets_the_contract_and_persists() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, _) = broadcast::channel(16);
    let epoch;
    {
        let db = sled::open(dir.path()).unwrap();
        let store = SledStore::open(db, sid(), tx.clone()).unwrap();
        contract(&store).await;
        epoch = store.get_store_head().await.unwrap().epoch;
    }
    let db = sled::open(dir.path()).unwrap();
    let store = SledStore::open(db, sid(), tx).unwrap();
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

#[tokio::test]
async fn a_lying_content_hash_is_refused_by_the_store() {
    let store = MemoryStore::standalone(sid());
    let mut bad = entry("x", "d", &[], "doc_create", b"payload");
    bad.encrypted_data = b"other".to_vec();
    assert!(store.put_entries(vec![bad]).await.is_err());
    assert_eq!(store.get_store_head().await.unwrap().max_receipt_order, 0);
}
