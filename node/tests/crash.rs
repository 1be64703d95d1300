//! Crash safety: an acknowledged write survives `kill -9`.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn acknowledged_entries_survive_kill_9_on_sled() {
    acknowledged_entries_survive_kill_9("sled").await
}

#[tokio::test]
async fn acknowledged_entries_survive_kill_9_on_fjall() {
    acknowledged_entries_survive_kill_9("fjall").await
}

async fn acknowledged_entries_survive_kill_9(engine: &str) {
    let tmp = tempfile::tempdir().unwrap();
    prepare(tmp.path(), &format!("storage:\n  kind: {engine}\n"));
    let node = Node::start_in(tmp.path());
    let mut c = node.client();
    c.login("alice").await;
    assert_eq!(c.get("/status").await.json()["storageEngine"], engine);
    let mut acked = Vec::new();
    for round in 0..5 {
        let batch: Vec<_> = (0..40)
            .map(|n| signed_entry("alice", "crash", round * 100 + n, 300))
            .collect();
        let r = c
            .sync(
                "putEntries",
                json!({"dbId": DB, "entries": wire_entries(&batch)}),
            )
            .await;
        assert_eq!(r.status, 200);
        acked.extend(batch.into_iter().map(|e| e.metadata.id));
    }
    let before = c.sync("getStoreHead", json!({"dbId": DB})).await.json()["head"].clone();
    let order_before = c
        .get(&format!("/vectors/sync/docs/getAllIds?dbId={DB}"))
        .await
        .json()["ids"]
        .clone();
    // One more acknowledged single-entry write, then SIGKILL immediately.
    let last = signed_entry("alice", "crash", 999, 300);
    let r = c
        .sync(
            "putEntries",
            json!({"dbId": DB, "entries": wire_entries(std::slice::from_ref(&last))}),
        )
        .await;
    assert_eq!(r.status, 200);
    acked.push(last.metadata.id.clone());
    node.kill9();

    let node = Node::start_in(tmp.path());
    let mut c = node.client();
    c.login("alice").await;
    let head = c.sync("getStoreHead", json!({"dbId": DB})).await.json()["head"].clone();
    assert_eq!(head["epoch"], before["epoch"], "epoch intact");
    assert_eq!(head["maxReceiptOrder"], 201);
    let has = c
        .sync("hasEntries", json!({"dbId": DB, "ids": acked}))
        .await
        .json();
    assert_eq!(
        has["ids"].as_array().unwrap().len(),
        201,
        "every acknowledged entry is there"
    );
    let ids = c
        .get(&format!("/vectors/sync/docs/getAllIds?dbId={DB}"))
        .await
        .json()["ids"]
        .clone();
    assert_eq!(
        ids.as_array().unwrap()[..200],
        order_before.as_array().unwrap()[..],
        "receiptOrder intact"
    );
    let meta = c
        .sync(
            "getEntryMetadata",
            json!({"dbId": DB, "id": last.metadata.id}),
        )
        .await
        .json();
    assert_eq!(meta["entry"]["receiptOrder"], 201);
    // Still usable.
    let more = signed_entry("alice", "crash", 1000, 300);
    let r = c
        .sync(
            "putEntries",
            json!({"dbId": DB, "entries": wire_entries(&[more])}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        c.sync("getStoreHead", json!({"dbId": DB})).await.json()["head"]["maxReceiptOrder"],
        202
    );
}

/// Reads the whole store back: every scan page (small pages cross index keys) and each document's
/// entries; asserts that the acknowledged ids are all there, each once, in receiptOrder, and that
/// each document's index names exactly the scan's entries of that document.
async fn check_index(c: &Client, acked: &[(String, &str)], docs: &[&str]) {
    let mut scanned: Vec<(u64, String)> = Vec::new();
    let mut cursor = serde_json::Value::Null;
    loop {
        let page = c
            .sync(
                "scanEntriesSince",
                json!({"dbId": DB, "cursor": cursor, "limit": 7}),
            )
            .await
            .json();
        for e in page["entries"].as_array().unwrap() {
            let ro = e["receiptOrder"].as_u64().unwrap();
            scanned.push((ro, e["id"].as_str().unwrap().to_string()));
        }
        if page["hasMore"] != true {
            break;
        }
        cursor = page["nextCursor"].clone();
    }
    assert!(
        scanned.windows(2).all(|w| w[0].0 < w[1].0),
        "receiptOrders ascend without repeats"
    );
    let mut ids: Vec<&str> = scanned.iter().map(|(_, id)| id.as_str()).collect();
    ids.sort();
    let mut expected: Vec<&str> = acked.iter().map(|(id, _)| id.as_str()).collect();
    expected.sort();
    assert_eq!(ids, expected, "every acknowledged entry, each once");
    for doc in docs {
        let found = c
            .sync(
                "findNewEntriesForDoc",
                json!({"dbId": DB, "haveIds": [], "docId": doc}),
            )
            .await
            .json();
        let found: Vec<(u64, String)> = found["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["receiptOrder"].as_u64().unwrap(),
                    e["id"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let of_doc: Vec<(u64, String)> = scanned
            .iter()
            .filter(|(_, id)| acked.iter().any(|(a, d)| a == id && d == doc))
            .cloned()
            .collect();
        assert_eq!(found, of_doc, "document {doc} agrees with the scan");
    }
}

/// `kill -9` at six points of a workload of single-entry pushes while the index compaction runs
/// every 100 ms (the shortest interval; two small keys make it due): each process first waits until it has compacted at
/// least once, then pushes more and is killed right after its last acknowledgement, or a few
/// milliseconds later, while the next merge is being planned, applied or flushed. Every restart
/// finds every acknowledged entry once, in receiptOrder, with document indexes that agree.
#[tokio::test]
async fn kill_9_during_index_compaction_loses_nothing_on_sled() {
    kill_9_during_index_compaction_loses_nothing("sled").await
}

#[tokio::test]
async fn kill_9_during_index_compaction_loses_nothing_on_fjall() {
    kill_9_during_index_compaction_loses_nothing("fjall").await
}

async fn kill_9_during_index_compaction_loses_nothing(engine: &str) {
    let tmp = tempfile::tempdir().unwrap();
    prepare(
        tmp.path(),
        &format!(
            "storage:\n  kind: {engine}\n  compaction: {{minKeys: 2, targetEntries: 16, intervalMs: 100}}\n"
        ),
    );
    let docs = ["d0", "d1", "d2"];
    let mut acked: Vec<(String, &str)> = Vec::new();
    let push = |c: &Client, n: usize| {
        let c = c.clone();
        let doc = docs[n % 3];
        async move {
            let e = signed_entry("alice", doc, n, 64);
            let r = c
                .sync(
                    "putEntries",
                    json!({"dbId": DB, "entries": wire_entries(std::slice::from_ref(&e))}),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.text());
            (e.metadata.id, doc)
        }
    };
    for round in 0..6usize {
        let node = Node::start_in(tmp.path());
        let mut c = node.client();
        c.login("alice").await;
        assert_eq!(c.get("/status").await.json()["storageEngine"], engine);
        check_index(&c, &acked, &docs).await;
        for n in 0..12 {
            acked.push(push(&c, round * 100 + n).await);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let status = c
                .sync("getCompactionStatus", json!({"dbId": DB}))
                .await
                .json();
            let compactions = status["status"]["totalCompactions"].as_u64().unwrap();
            if compactions > 0 {
                let keys = status["status"]["totalCompactedFiles"].as_u64().unwrap();
                assert!(keys > 0, "{status}");
                // /metrics reports the same figures (they are read when scraped, so a merge
                // may land in between: never fewer).
                let metrics = c.get("/metrics").await.text();
                let figure = |name: &str| -> u64 {
                    metrics
                        .lines()
                        .find(|l| l.starts_with(name) && l.contains(&format!("db=\"{DB}\"")))
                        .and_then(|l| l.rsplit(' ').next())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
                };
                assert!(figure("syncrelay_store_compactions_total") >= compactions);
                assert!(figure("syncrelay_store_compacted_keys_total") >= keys);
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no compaction within 20 s: {status}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        for n in 50..62 {
            acked.push(push(&c, round * 100 + n).await);
        }
        tokio::time::sleep(std::time::Duration::from_millis(round as u64 * 5)).await;
        node.kill9();
    }
    let node = Node::start_in(tmp.path());
    let mut c = node.client();
    c.login("alice").await;
    check_index(&c, &acked, &docs).await;
    assert_eq!(acked.len(), 6 * 24);
}
