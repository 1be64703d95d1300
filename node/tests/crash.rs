//! Crash safety: an acknowledged write survives `kill -9`.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn acknowledged_entries_survive_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    prepare(tmp.path(), "");
    let node = Node::start_in(tmp.path());
    let mut c = node.client();
    c.login("alice").await;
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
