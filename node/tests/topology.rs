//! Topologies of real `syncrelay-node` processes on loopback (issue: node part 2): relay
//! store-and-forward without payload keys, an origin → relay → edge chain, an upstream outage, a
//! tampered entry from upstream, revocation at every hop, a four-peer mesh, and a refused cycle.

mod common;

use std::collections::BTreeSet;

use common::cluster::Cluster;
use common::{eventually, signed_payload_entry, EventStream, DB};
use syncrelay_node::crypto::payload;
use syncrelay_node::wire::Entry;

/// The tenant's payload key: known to Alice and Bob (Carol's role), never to a node.
const PAYLOAD_KEY: [u8; 32] = *b"alice-and-bob-share-this-key-32b";

/// Entries whose payload is `iv ‖ AES-256-GCM(PAYLOAD_KEY, "secret note <tag> <n>")`.
fn encrypted_entries(tag: &str, count: usize) -> Vec<Entry> {
    (0..count)
        .map(|n| {
            let sealed = payload::seal(&PAYLOAD_KEY, format!("secret note {tag} {n}").as_bytes());
            signed_payload_entry("alice", &format!("doc-{tag}"), n, sealed)
        })
        .collect()
}

fn decrypt(entry: &Entry) -> String {
    String::from_utf8(payload::open(&PAYLOAD_KEY, &entry.encrypted_data).unwrap()).unwrap()
}

fn ids(entries: &[Entry]) -> Vec<String> {
    entries.iter().map(|e| e.metadata.id.clone()).collect()
}

/// Every file under `dir`, concatenated.
fn all_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(all_bytes(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.extend(bytes);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_stores_and_forwards_ciphertext_it_cannot_read() {
    let mut c = Cluster::new(&["origin", "relay"]);
    c.configure(0, "role: origin\n");
    c.configure(1, &format!("role: relay\n{}", c.remotes("upstreams", &[0])));
    c.start(0);
    c.start(1);

    let mut alice = c.client(1);
    alice.login("alice").await;
    let written = encrypted_entries("relay", 20);
    let answer = alice.push(DB, &written).await;
    assert_eq!(answer["rejected"].as_array().unwrap().len(), 0, "{answer}");
    // The upstream was reachable: the receipts are the origin's witness stamps.
    let origin_pem = c.members[0].identity.signing_public_pem.clone();
    for receipt in answer["receipts"].as_array().unwrap() {
        assert_eq!(
            receipt["receivedByPublicKey"].as_str(),
            Some(origin_pem.as_str())
        );
    }

    // Carol (bob) reads at the relay and at the origin, and decrypts with the tenant key.
    let mut carol_relay = c.client(1);
    carol_relay.login("bob").await;
    let got = carol_relay.fetch(DB, &ids(&written), "bob").await;
    assert_eq!(got.len(), 20);
    assert_eq!(decrypt(&got[3]), "secret note relay 3");
    let mut carol_origin = c.client(0);
    carol_origin.login("bob").await;
    assert_eq!(carol_origin.ids(DB).await.len(), 20);

    // Writes at the origin reach the relay through its change feed subscription.
    let later = encrypted_entries("from-origin", 5);
    carol_origin.push(DB, &later).await;
    eventually("origin writes pulled by the relay", || async {
        carol_relay.ids(DB).await.len() == 25
    })
    .await;

    // The relay holds only ciphertext and no key that opens it.
    let bytes = all_bytes(&c.dir(1));
    for n in 0..20 {
        assert!(!contains(
            &bytes,
            format!("secret note relay {n}").as_bytes()
        ));
    }
    assert!(
        !contains(&bytes, &PAYLOAD_KEY),
        "payload key on the relay's disk"
    );
    assert!(
        contains(&bytes, &written[0].encrypted_data[12..40]),
        "ciphertext is stored"
    );

    let status = c.status(1).await;
    assert_eq!(status["role"], "relay");
    assert_eq!(status["ready"], true);
    assert_eq!(status["chain"][0], c.status(0).await["nodeId"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn three_hop_chain_carries_writes_both_ways() {
    let mut c = Cluster::new(&["origin", "relay", "edge1", "edge2"]);
    c.configure(0, "role: origin\n");
    c.configure(1, &format!("role: relay\n{}", c.remotes("upstreams", &[0])));
    c.configure(2, &format!("role: edge\n{}", c.remotes("upstreams", &[1])));
    c.configure(3, &format!("role: edge\n{}", c.remotes("upstreams", &[1])));
    for i in 0..4 {
        c.start(i);
    }
    let mut alice = c.client(2);
    alice.login("alice").await;
    let written = encrypted_entries("chain", 30);
    let answer = alice.push(DB, &written).await;
    assert_eq!(answer["receipts"].as_array().unwrap().len(), 30, "{answer}");

    // Read at the origin and at the other edge.
    let mut at_origin = c.client(0);
    at_origin.login("bob").await;
    eventually("the origin has the edge's writes", || async {
        at_origin.ids(DB).await.len() == 30
    })
    .await;
    let mut at_edge2 = c.client(3);
    at_edge2.login("bob").await;
    let expected: BTreeSet<String> = ids(&written).into_iter().collect();
    let seen: BTreeSet<String> = at_edge2.ids(DB).await.into_iter().collect();
    assert_eq!(seen, expected);
    let first = at_edge2.fetch(DB, &ids(&written), "bob").await;
    assert_eq!(decrypt(&first[7]), "secret note chain 7");
    // A second read is served from the edge's cache.
    let again = at_edge2.fetch(DB, &ids(&written), "bob").await;
    assert_eq!(ids(&again), ids(&first));
    let cache = &c.status(3).await["cache"];
    assert!(cache["hits"].as_u64().unwrap() >= 30, "{cache}");
    assert!(cache["misses"].as_u64().unwrap() >= 30, "{cache}");
    assert!(cache["bytes"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_misses_at_an_edge_make_one_upstream_request() {
    let mut c = Cluster::new(&["origin", "edge"]);
    c.configure(0, "role: origin\n");
    c.configure(1, &format!("role: edge\n{}", c.remotes("upstreams", &[0])));
    c.start(0);
    c.start(1);
    let mut alice = c.client(0);
    alice.login("alice").await;
    let written = encrypted_entries("burst", 40);
    alice.push(DB, &written).await;

    // Twenty readers ask the edge at once for the same missing entries; the request repeats one
    // id, which is answered once (each id once per response: no read amplification).
    let mut asked = ids(&written);
    asked.push(asked[3].clone());
    let mut readers = Vec::new();
    for _ in 0..20 {
        let mut bob = c.client(1);
        bob.login("bob").await;
        readers.push(bob);
    }
    let before = served(&c, 0, "sync/docs/getEntriesBinary").await
        + served(&c, 0, "sync/docs/getEntries").await;
    let answers =
        futures::future::join_all(readers.iter().map(|bob| bob.fetch(DB, &asked, "bob"))).await;
    for answer in &answers {
        assert_eq!(ids(answer), ids(&written));
        assert_eq!(decrypt(&answer[3]), "secret note burst 3");
    }
    let after = served(&c, 0, "sync/docs/getEntriesBinary").await
        + served(&c, 0, "sync/docs/getEntries").await;
    assert_eq!(
        after - before,
        1,
        "one upstream request fills every reader's miss"
    );
    let cache = &c.status(1).await["cache"];
    assert_eq!(cache["entries"], 40, "{cache}");
    assert_eq!(cache["upstreamFetches"], 1, "{cache}");
    assert_eq!(
        cache["hits"].as_u64().unwrap() + cache["misses"].as_u64().unwrap(),
        20 * 40,
        "each reader's distinct ids are counted once: {cache}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn edges_and_passthroughs_relay_their_upstreams_change_feed() {
    let mut c = Cluster::new(&["origin", "edge", "passthrough"]);
    c.configure(0, "role: origin\n");
    c.configure(1, &format!("role: edge\n{}", c.remotes("upstreams", &[0])));
    c.configure(
        2,
        &format!("role: passthrough\n{}", c.remotes("upstreams", &[1])),
    );
    for i in 0..3 {
        c.start(i);
    }
    let mut alice = c.client(0);
    alice.login("alice").await;
    let mut feeds = Vec::new();
    for i in [1, 2] {
        let mut bob = c.client(i);
        let token = bob.login("bob").await;
        let caps = bob
            .get(&format!("/vectors/sync/docs/capabilities?dbId={DB}"))
            .await
            .json();
        assert_eq!(caps["capabilities"]["supportsChangeEvents"], true, "{caps}");
        let mut events = EventStream::open(&c.url(i), &token).await;
        assert!(events.next_message().await.starts_with("event: hello"));
        feeds.push(events);
    }
    // A node starts following its upstream's feed when its first subscriber arrives, so a write
    // made before that is not announced: write until each feed has announced one.
    for (n, events) in feeds.iter_mut().enumerate() {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let change = loop {
            assert!(
                std::time::Instant::now() < deadline,
                "no change event relayed"
            );
            alice
                .push(DB, &encrypted_entries(&format!("feed{n}"), 1))
                .await;
            let wait = std::time::Duration::from_millis(500);
            if let Ok(change) = tokio::time::timeout(wait, events.next_change()).await {
                break change;
            }
        };
        assert_eq!(change["dbId"], DB);
        assert_eq!(change["storeKind"], "docs");
        let origin_head = alice
            .sync("getStoreHead", serde_json::json!({ "dbId": DB }))
            .await
            .json()["head"]
            .clone();
        assert_eq!(change["epoch"], origin_head["epoch"], "the upstream's head");
        assert!(change["maxReceiptOrder"].as_u64() <= origin_head["maxReceiptOrder"].as_u64());
        assert!(change["maxReceiptOrder"].as_u64() >= Some(1));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_rides_out_an_upstream_outage() {
    let mut c = Cluster::new(&["origin", "relay"]);
    c.configure(0, "role: origin\n");
    c.configure(1, &format!("role: relay\n{}", c.remotes("upstreams", &[0])));
    c.start(0);
    c.start(1);
    let mut alice = c.client(1);
    alice.login("alice").await;
    let before = encrypted_entries("before", 10);
    alice.push(DB, &before).await;
    let mut at_origin = c.client(0);
    at_origin.login("bob").await;
    assert_eq!(at_origin.ids(DB).await.len(), 10);
    // Both directions have had their first (full) pass.
    eventually("the relay synced both ways once", || async {
        let s = c.status(1).await;
        s["stores"][0]["links"][0]["fullScans"].as_u64() >= Some(2)
    })
    .await;
    let scans_before = c.status(1).await["stores"][0]["links"][0]["fullScans"]
        .as_u64()
        .unwrap();

    c.kill(0);
    // Reads and writes keep working at the relay.
    assert_eq!(alice.fetch(DB, &ids(&before), "alice").await.len(), 10);
    let during = encrypted_entries("during", 10);
    let answer = alice.push(DB, &during).await;
    assert_eq!(answer["receipts"].as_array().unwrap().len(), 10);
    assert!(
        answer["receipts"][0]["receivedAt"].is_null(),
        "no witness while the origin is away"
    );
    eventually("the writes are reported as queued", || async {
        c.status(1).await["queuedWrites"].as_u64().unwrap() >= 10
    })
    .await;

    c.start(0);
    let mut at_origin = c.client(0);
    at_origin.login("bob").await;
    eventually("queued writes reached the origin", || async {
        at_origin.ids(DB).await.len() == 20
    })
    .await;
    let all: Vec<String> = at_origin.ids(DB).await;
    let unique: BTreeSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), 20, "nothing duplicated");
    eventually("the queue drained", || async {
        c.status(1).await["queuedWrites"].as_u64() == Some(0)
    })
    .await;
    let scans_after = c.status(1).await["stores"][0]["links"][0]["fullScans"]
        .as_u64()
        .unwrap();
    assert_eq!(
        scans_after, scans_before,
        "cursors resumed: no full re-scan"
    );
    // The origin's witness receipts for the queued writes reach the relay's own copy.
    let at_origin = at_origin.fetch(DB, &ids(&during), "bob").await;
    assert_eq!(at_origin.len(), 10);
    let origin_witness = at_origin[0].metadata.received_by_public_key.clone();
    assert!(origin_witness.is_some(), "the origin stamped the entries");
    eventually("the relay's copy carries the origin's receipts", || async {
        let at_relay = alice.fetch(DB, &ids(&during), "alice").await;
        at_relay.len() == 10
            && at_relay.iter().all(|e| {
                e.metadata.received_by_public_key == origin_witness
                    && syncrelay_node::crypto::signing::verify_witness(&e.metadata, DB)
            })
    })
    .await;
    let at_relay = alice.fetch(DB, &ids(&during), "alice").await;
    for (relay_copy, origin_copy) in at_relay.iter().zip(&at_origin) {
        assert_eq!(relay_copy.metadata.id, origin_copy.metadata.id);
        assert_eq!(
            relay_copy.metadata.received_date_signature,
            origin_copy.metadata.received_date_signature
        );
        assert_eq!(relay_copy.encrypted_data, origin_copy.encrypted_data);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_user_is_refused_at_every_hop() {
    let mut c = Cluster::new(&["origin", "relay", "edge"]);
    c.configure(0, "role: origin\n");
    c.configure(1, &format!("role: relay\n{}", c.remotes("upstreams", &[0])));
    c.configure(2, &format!("role: edge\n{}", c.remotes("upstreams", &[1])));
    for i in 0..3 {
        c.start(i);
    }
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut client = c.client(i);
        client.login("alice").await;
        assert_eq!(client.ids(DB).await.len(), 0);
        clients.push(client);
    }
    c.write_directory(true);
    for client in &clients {
        let r = client
            .sync("getStoreHead", serde_json::json!({"dbId": DB}))
            .await;
        assert_eq!(r.status, 401, "{}", r.text());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn four_peers_converge() {
    let mut c = Cluster::new(&["p0", "p1", "p2", "p3"]);
    for i in 0..4 {
        let others: Vec<usize> = (0..4).filter(|&j| j != i).collect();
        c.configure(i, &format!("role: peer\n{}", c.remotes("peers", &others)));
    }
    for i in 0..4 {
        c.start(i);
    }
    let mut expected = BTreeSet::new();
    let mut clients = Vec::new();
    for i in 0..4 {
        let mut client = c.client(i);
        client.login("alice").await;
        let written = encrypted_entries(&format!("peer{i}"), 5 + i * 3);
        client.push(DB, &written).await;
        expected.extend(ids(&written));
        clients.push(client);
    }
    for (i, client) in clients.iter().enumerate() {
        eventually(&format!("peer {i} holds everything"), || async {
            client.ids(DB).await.into_iter().collect::<BTreeSet<_>>() == expected
        })
        .await;
        // Stored once, whatever the number of peers it arrived from.
        assert_eq!(client.ids(DB).await.len(), expected.len());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cycle_of_relays_is_refused() {
    let mut c = Cluster::new(&["a", "b"]);
    c.configure(0, &format!("role: relay\n{}", c.remotes("upstreams", &[1])));
    c.configure(1, &format!("role: relay\n{}", c.remotes("upstreams", &[0])));
    c.start(0);
    c.start(1);
    eventually("one of them detects the cycle", || async {
        let mut found = false;
        for i in 0..2 {
            let s = c.status(i).await;
            if let Some(link) = s["links"].as_array().unwrap().first() {
                if link["cycle"] == true {
                    let error = link["lastError"].as_str().unwrap_or("");
                    assert!(error.contains("cycle"), "{error}");
                    found = true;
                }
            }
        }
        found
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_passthrough_loop_answers_508() {
    let mut c = Cluster::new(&["a", "b"]);
    c.configure(
        0,
        &format!("role: passthrough\n{}", c.remotes("upstreams", &[1])),
    );
    c.configure(
        1,
        &format!("role: passthrough\n{}", c.remotes("upstreams", &[0])),
    );
    c.start(0);
    c.start(1);
    let mut client = c.client(0);
    client.login("alice").await;
    let answers_loop_detected = || async {
        let r = client
            .sync("getStoreHead", serde_json::json!({"dbId": DB}))
            .await;
        assert_eq!(r.status, 508, "{}", r.text());
        assert!(r.json()["error"]
            .as_str()
            .unwrap()
            .contains("Loop detected"));
    };
    answers_loop_detected().await;
    // Once the chain check has marked a link as closing the cycle (as in the relay case, one side
    // finds it), the answer is the same whichever node holds the marked link.
    eventually("a link is marked as a cycle", || async {
        let mut marked = 0;
        for i in 0..2 {
            let s = c.status(i).await;
            marked += s["links"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|link| link["cycle"] == true)
                .count();
        }
        marked > 0
    })
    .await;
    answers_loop_detected().await;
}

/// Requests an endpoint has served, from a node's /metrics.
async fn served(c: &Cluster, i: usize, endpoint: &str) -> u64 {
    let text = c.client(i).get("/metrics").await.text();
    let needle = format!("endpoint=\"{endpoint}\"");
    text.lines()
        .filter(|l| l.starts_with("syncrelay_http_requests_total") && l.contains(&needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_relay_only_asks_for_store_heads() {
    let mut c = Cluster::new(&["origin", "relay"]);
    c.configure(0, "role: origin\n");
    c.configure(1, &format!("role: relay\n{}", c.remotes("upstreams", &[0])));
    c.start(0);
    c.start(1);
    let mut alice = c.client(1);
    alice.login("alice").await;
    alice.push(DB, &encrypted_entries("idle", 40)).await;
    let busy = [
        "sync/docs/scanEntriesSince",
        "sync/docs/hasEntries",
        "sync/docs/getEntriesBinary",
        "sync/docs/putEntriesBinary",
        "sync/docs/getIdBloomSummary",
    ];
    // Wait for a window of several sync ticks in which the origin saw no work requests at all.
    let heads = std::sync::Mutex::new((0, 0));
    eventually("the relay settles", || async {
        let before: Vec<u64> =
            futures::future::join_all(busy.iter().map(|e| served(&c, 0, e))).await;
        let h0 = served(&c, 0, "sync/docs/getStoreHead").await;
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        let after: Vec<u64> =
            futures::future::join_all(busy.iter().map(|e| served(&c, 0, e))).await;
        *heads.lock().unwrap() = (h0, served(&c, 0, "sync/docs/getStoreHead").await);
        before == after
    })
    .await;
    let heads = *heads.lock().unwrap();
    assert!(
        heads.1 > heads.0,
        "idle passes still check the store head: {heads:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_entries_from_upstream_never_reach_a_client() {
    use syncrelay_node::config::NodeConfig;
    use syncrelay_node::wire::{content_hash, StoreId, StoreKind};

    let mut c = Cluster::new(&["evil", "relay"]);
    // The upstream runs in this process so that the test can write into its store directly,
    // bypassing the verification a real node does on ingest.
    c.configure(0, "role: origin\nstorage: {kind: memory}\n");
    c.configure(1, &format!("role: relay\n{}", c.remotes("upstreams", &[0])));
    let config = NodeConfig::load(&c.dir(0).join("node.yaml")).unwrap();
    let state = syncrelay_node::node::build_state(config).unwrap();
    let good = encrypted_entries("tamper", 3);
    let mut payload_forged = good[1].clone();
    payload_forged.encrypted_data[20] ^= 0xff;
    payload_forged.metadata.content_hash = content_hash(&payload_forged.encrypted_data);
    let mut metadata_forged = good[2].clone();
    metadata_forged.metadata.doc_id = "someone-elses-doc".into();
    let store = state
        .node
        .stores
        .open(&StoreId::new(common::TENANT, DB, StoreKind::Docs).unwrap())
        .unwrap();
    store
        .put_entries(vec![good[0].clone(), payload_forged, metadata_forged])
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(syncrelay_node::node::run(state, async move {
        let _ = stopped.await;
    }));

    c.start(1);
    let mut carol = c.client(1);
    carol.login("bob").await;
    carol.ids(DB).await; // touching the database makes the relay carry it
    eventually("the relay pulled from the upstream", || async {
        c.status(1).await["stores"][0]["links"][0]["lastSyncAt"].is_number()
    })
    .await;
    assert_eq!(carol.ids(DB).await, vec![good[0].metadata.id.clone()]);
    let metrics = c.client(1).get("/metrics").await.text();
    let rejected: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("syncrelay_verification_failures_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(rejected >= 2, "{metrics}");
    drop(c); // the relay's change feed would otherwise hold the upstream's graceful shutdown
    let _ = stop.send(());
    let _ = server.await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failover_and_merged_upstreams() {
    let mut c = Cluster::new(&["a", "b", "failover", "merged"]);
    c.configure(0, "role: origin\n");
    c.configure(1, "role: origin\n");
    // The first upstream of the failover relay never answers (a port nobody listens on).
    let dead = "{name: dead, url: 'http://127.0.0.1:9'}";
    c.configure(
        2,
        &format!(
            "role: relay\nupstreams: [{dead}, {{name: a, url: '{}'}}]\n",
            c.url(0)
        ),
    );
    c.configure(
        3,
        &format!(
            "role: relay\nupstreamMode: merged\n{}",
            c.remotes("upstreams", &[0, 1])
        ),
    );
    for i in 0..4 {
        c.start(i);
    }
    let mut at_a = c.client(0);
    at_a.login("alice").await;
    let mut at_b = c.client(1);
    at_b.login("alice").await;
    let from_a = encrypted_entries("from-a", 4);
    let from_b = encrypted_entries("from-b", 6);
    at_a.push(DB, &from_a).await;
    at_b.push(DB, &from_b).await;

    // Failover: writes at the relay reach the second upstream.
    let mut at_failover = c.client(2);
    at_failover.login("alice").await;
    let written = encrypted_entries("via-failover", 3);
    let answer = at_failover.push(DB, &written).await;
    assert_eq!(answer["receipts"].as_array().unwrap().len(), 3);
    eventually("failover relay delivered to a", || async {
        at_a.ids(DB).await.len() == 7
    })
    .await;
    eventually("failover relay pulled from a", || async {
        at_failover.ids(DB).await.len() == 7
    })
    .await;

    // Merged: the relay holds the union of both origins.
    let mut at_merged = c.client(3);
    at_merged.login("bob").await;
    let mut expected: BTreeSet<String> = ids(&from_a).into_iter().collect();
    expected.extend(ids(&from_b));
    expected.extend(ids(&written));
    eventually("merged relay holds the union", || async {
        at_merged.ids(DB).await.into_iter().collect::<BTreeSet<_>>() == expected
    })
    .await;
}
