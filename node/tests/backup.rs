//! Backup and restore of an origin with real processes on loopback: Alice writes to two databases,
//! `syncrelay-node backup` pulls them with the origin's own identity (a trusted server in its
//! directory) into snapshots (incremental, only the newest `--keep` kept), the origin's data
//! directory is destroyed, the origin starts empty, `syncrelay-node restore` pushes the newest
//! snapshot back, and a client reads every entry with the same ids, content hashes and payloads.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{directory, identity, prepare, signed_entry, Node, DB};
use serde_json::Value;
use syncrelay_node::directory::ServerEntry;

const SECOND_DB: &str = "second-db";
const NODE_NAME: &str = "CN=server1";

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_syncrelay-node"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run syncrelay-node");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The manifest a successful `backup` or `restore` prints.
fn manifest(args: &[&str]) -> Value {
    let (ok, text) = run(args);
    assert!(ok, "{args:?} failed: {text}");
    serde_json::from_str(text.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{args:?} printed no manifest ({e}): {text}"))
}

/// The node's directory with the node itself as a trusted server, so it can log in as itself.
fn trust_itself(dir: &Path) {
    let server = identity("server");
    let mut file = directory(false);
    for tenant in file.tenants.values_mut() {
        tenant.trusted_servers.push(ServerEntry {
            name: NODE_NAME.into(),
            signing_public_key: server.signing_public_pem.clone(),
            encryption_public_key: server.encryption_public_pem.clone(),
        });
    }
    std::fs::write(
        dir.join("directory.yaml"),
        serde_yaml::to_string(&file).unwrap(),
    )
    .unwrap();
}

/// Every entry of both databases as Bob reads them: id → (contentHash, payload).
async fn contents(node: &Node) -> BTreeMap<(String, String), (String, Vec<u8>)> {
    let mut bob = node.client();
    bob.login("bob").await;
    let mut out = BTreeMap::new();
    for db in [DB, SECOND_DB] {
        let ids = bob.ids(db).await;
        for e in bob.fetch(db, &ids, "bob").await {
            out.insert(
                (db.to_string(), e.metadata.id.clone()),
                (e.metadata.content_hash.clone(), e.encrypted_data),
            );
        }
        assert_eq!(
            out.keys().filter(|(d, _)| d == db).count(),
            ids.len(),
            "every listed entry of {db} was read"
        );
    }
    out
}

fn snapshot_count(backup: &Path) -> usize {
    std::fs::read_dir(backup.join("snapshots"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_origin_is_backed_up_destroyed_and_restored_entry_for_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("origin");
    prepare(&dir, "");
    trust_itself(&dir);
    let backup = tmp.path().join("backup");
    let keys = dir.join("keys");
    let origin = Node::start_in(&dir);

    let mut alice = origin.client();
    alice.login("alice").await;
    let first: Vec<_> = (0..40)
        .map(|n| signed_entry("alice", "backup-doc", n, 700))
        .collect();
    alice.push(DB, &first).await;
    let second: Vec<_> = (0..15)
        .map(|n| signed_entry("alice", "other-doc", n, 300))
        .collect();
    alice.push(SECOND_DB, &second).await;

    let backup_args = |url: &str| -> Vec<String> {
        [
            "backup",
            "--url",
            url,
            "--dir",
            backup.to_str().unwrap(),
            "--keep",
            "2",
            "--keys",
            keys.to_str().unwrap(),
            "--username",
            NODE_NAME,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let take = |url: &str| {
        let args = backup_args(url);
        manifest(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let m1 = take(&origin.url);
    assert_eq!(m1["entries"], 55, "{m1}");
    assert_eq!(m1["stores"].as_array().unwrap().len(), 2, "{m1}");
    let m2 = take(&origin.url);
    assert_eq!(m2["entries"], 55, "{m2}");
    assert_eq!(snapshot_count(&backup), 2);

    // More writes; the next run picks them up, and only the newest two snapshots remain.
    let more: Vec<_> = (40..50)
        .map(|n| signed_entry("alice", "backup-doc", n, 700))
        .collect();
    alice.push(DB, &more).await;
    let summary_file = tmp.path().join("summary.json");
    let m3 = {
        let mut args = backup_args(&origin.url);
        args.extend(["--summary-file".into(), summary_file.display().to_string()]);
        manifest(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    assert_eq!(m3["entries"], 65, "{m3}");
    // The summary the operator reads from the pod's termination message.
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary_file).unwrap()).unwrap();
    assert_eq!(summary["entries"], 65, "{summary}");
    assert_eq!(summary["stores"], 2, "{summary}");
    assert_eq!(summary["takenAtMs"], m3["takenAtMs"], "{summary}");
    assert!(
        backup
            .join("snapshots")
            .join(summary["snapshot"].as_str().unwrap())
            .join("manifest.json")
            .is_file(),
        "the summary names the snapshot: {summary}"
    );
    assert_eq!(snapshot_count(&backup), 2, "--keep 2");

    let before = contents(&origin).await;
    assert_eq!(before.len(), 65);

    // The volume is lost: the origin comes back empty, with the same identity and directory.
    let mut origin = origin;
    origin.stop_hard();
    std::fs::remove_dir_all(dir.join("data")).unwrap();
    let origin = Node::start_in(&dir);
    assert!(
        contents(&origin).await.is_empty(),
        "the new origin starts empty"
    );

    let restored = manifest(&[
        "restore",
        "--url",
        &origin.url,
        "--from",
        backup.to_str().unwrap(),
        "--keys",
        keys.to_str().unwrap(),
        "--username",
        NODE_NAME,
    ]);
    assert_eq!(
        restored["takenAtMs"], m3["takenAtMs"],
        "the newest snapshot"
    );
    let after = contents(&origin).await;
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "the same ids"
    );
    assert!(
        after == before,
        "the same content hashes and payloads for every id"
    );

    // A backup of a node that refuses the identity fails and takes no snapshot.
    let (ok, text) = run(&[
        "backup",
        "--url",
        &origin.url,
        "--dir",
        backup.to_str().unwrap(),
        "--keys",
        keys.to_str().unwrap(),
        "--username",
        "CN=nobody",
        "--summary-file",
        summary_file.to_str().unwrap(),
    ]);
    assert!(!ok, "an unknown identity was accepted: {text}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary_file).unwrap()).unwrap();
    assert!(
        summary["error"].as_str().is_some_and(|e| !e.is_empty()) && summary["entries"].is_null(),
        "a failed run's summary says why and nothing else: {summary}"
    );
    assert_eq!(snapshot_count(&backup), 2, "no snapshot from a failed run");
}
