//! The on-disk engines side by side, in one run on this machine (ratios matter; absolute figures
//! drift on a shared machine). Run: `cargo bench -p syncrelay-node --bench storage_bench`
//! (`STORAGE_BENCH_ENTRIES`, default 1 000 000, sets the store size).
//!
//! For each engine (sled, fjall):
//! 1. raw: the engine's own durable batches of 1 000 records of a stored entry's size, for the
//!    first `RATE_ENTRIES` entries;
//! 2. ingest: `putEntriesBinary` of 1 000 signed 1 KiB entries per request through a real node on
//!    that engine, full verification, 3 requests in flight (the sync engine's window): the rate
//!    over the first `RATE_ENTRIES` (as a ratio to 1) and over all of them;
//! 3. serving: `getEntriesBinary` (session-key wrap) of `SERVE_ENTRIES` ids spread over the
//!    whole store, the next batch in flight;
//! 4. the node's resident memory and the bytes on disk per entry at the full size;
//! 5. receipts churn: the node stopped, its store opened in this process, witness receipts
//!    applied to every other entry (batches of 1 000, as a relay applies an upstream's), bytes on
//!    disk; then the index maintenance run until it has nothing left, the engine given time to
//!    settle (until its disk use stops shrinking), bytes on disk again.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use serde_json::json;
use syncrelay_node::crypto::transport::{AesKey, SessionKey};
use syncrelay_node::store::engine::fjall::FjallEngine;
use syncrelay_node::store::engine::sled::SledEngine;
use syncrelay_node::store::engine::{Engine, EngineKind, Tree, WriteBatch};
use syncrelay_node::store::{ContentAddressedStore, StorageBackend, StoreRegistry};
use syncrelay_node::wire::{b64, framing, EntryMetadata, ScanCursor, ScanFilters, MAX_SCAN_PAGE};

const BATCH: usize = 1000;
const RATE_ENTRIES: usize = 100_000;
const SERVE_ENTRIES: usize = 100_000;
const PUSH_IN_FLIGHT: usize = 3;
const CACHE_BYTES: u64 = 128 << 20;

fn main() {
    let total: usize = std::env::var("STORAGE_BENCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let total = total.div_ceil(BATCH).max(RATE_ENTRIES / BATCH) * BATCH;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(run(total));
}

/// Framed `putEntriesBinary` bodies of `total` signed 1 KiB entries, made once for both engines.
fn bodies(total: usize) -> (Vec<Vec<u8>>, Vec<String>, usize) {
    use rayon::prelude::*;
    let started = Instant::now();
    let made: Vec<(Vec<u8>, Vec<String>, usize)> = (0..total / BATCH)
        .into_par_iter()
        .map(|b| {
            let entries: Vec<_> = (b * BATCH..(b + 1) * BATCH)
                .map(|n| signed_entry("alice", &format!("doc{}", n % 997), n, 1024))
                .collect();
            let record = serde_json::to_vec(&entries[0].metadata).unwrap().len() + 1024;
            let mut w = framing::FrameWriter::new(
                br#"{"format":"mdb-put-v2","dbId":"bench"}"#,
                BATCH * 1700,
            );
            for e in &entries {
                w.push(&serde_json::to_vec(&e.metadata).unwrap(), &e.encrypted_data);
            }
            let ids = entries.into_iter().map(|e| e.metadata.id).collect();
            (w.finish(), ids, record)
        })
        .collect();
    eprintln!("{total} signed entries made in {:?}", started.elapsed());
    let record = made[0].2;
    let mut bodies = Vec::new();
    let mut ids = Vec::new();
    for (body, batch_ids, _) in made {
        bodies.push(body);
        ids.extend(batch_ids);
    }
    (bodies, ids, record)
}

struct Figures {
    engine: EngineKind,
    raw_rate: f64,
    ingest_rate_first: f64,
    ingest_rate_all: f64,
    serve_rate: f64,
    rss_mib: u64,
    peak_rss_mib: u64,
    disk_after_ingest: u64,
    disk_after_churn: u64,
    disk_after_compaction: u64,
    churned: usize,
    index_merges: u64,
    merged_keys: u64,
    engine_compactions: Option<u64>,
}

async fn run(total: usize) {
    let (bodies, ids, record) = bodies(total);
    let mut all = Vec::new();
    for engine in [EngineKind::Sled, EngineKind::Fjall] {
        let raw_rate = match engine {
            EngineKind::Sled => raw::<SledEngine>(&ids[..RATE_ENTRIES], record),
            EngineKind::Fjall => raw::<FjallEngine>(&ids[..RATE_ENTRIES], record),
        };
        let figures = through_the_node(engine, raw_rate, &bodies, &ids).await;
        report(&figures, total, record);
        all.push(figures);
    }
    println!();
    println!("{total} entries of 1 KiB ({record} B stored record), this run, side by side:");
    println!(
        "| engine | raw batch write | ingest (first {}k) | ratio to raw | ingest (all) | getEntriesBinary | RSS after serving / peak while ingesting | disk/entry | after churn | after compaction |",
        RATE_ENTRIES / 1000
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for f in &all {
        let per = |b: u64| b as f64 / total as f64;
        println!(
            "| {} | {:.0}/s | {:.0}/s | {:.2} | {:.0}/s | {:.0}/s | {} / {} MiB | {:.0} B ({:.2}x record) | {:.0} B | {:.0} B ({:.2}x record) |",
            f.engine.as_str(),
            f.raw_rate,
            f.ingest_rate_first,
            f.ingest_rate_first / f.raw_rate,
            f.ingest_rate_all,
            f.serve_rate,
            f.rss_mib,
            f.peak_rss_mib,
            per(f.disk_after_ingest),
            per(f.disk_after_ingest) / record as f64,
            per(f.disk_after_churn),
            per(f.disk_after_compaction),
            per(f.disk_after_compaction) / record as f64,
        );
    }
}

/// The engine's own durable batches: `ids.len()` records of `record` bytes, 1 000 per batch.
fn raw<E: Engine>(ids: &[String], record: usize) -> f64 {
    let tmp = tempfile::tempdir().unwrap();
    let db = E::open(tmp.path(), CACHE_BYTES).unwrap();
    let tree = db.open_tree("raw").unwrap();
    let value = vec![7u8; record];
    let started = Instant::now();
    for chunk in ids.chunks(BATCH) {
        let mut batch = WriteBatch::default();
        for id in chunk {
            batch.insert(id.as_bytes(), value.clone());
        }
        tree.apply(batch).unwrap();
        db.flush_blocking().unwrap();
    }
    ids.len() as f64 / started.elapsed().as_secs_f64()
}

async fn through_the_node(
    engine: EngineKind,
    raw_rate: f64,
    bodies: &[Vec<u8>],
    ids: &[String],
) -> Figures {
    let tmp = tempfile::tempdir().unwrap();
    prepare(
        tmp.path(),
        &format!(
            "storage:\n  kind: {}\nlimits: {{syncPerMinute: 10000000, authPerMinute: 10000, globalExtraPerMinute: 10000000}}\n",
            engine.as_str()
        ),
    );
    let mut node = Node::start_in(tmp.path());
    let mut c = node.client();
    c.login("alice").await;
    let pid = node.pid();

    // 2. ingest.
    let first = RATE_ENTRIES / BATCH;
    let started = Instant::now();
    let mut peak = 0;
    ingest(&c, &bodies[..first], &mut peak, pid).await;
    let ingest_rate_first = RATE_ENTRIES as f64 / started.elapsed().as_secs_f64();
    for (n, chunk) in bodies[first..].chunks(200).enumerate() {
        c.login("alice").await; // tokens expire on a long run
        ingest(&c, chunk, &mut peak, pid).await;
        eprintln!(
            "{}: {} entries stored, node RSS {} MiB",
            engine.as_str(),
            (first + (n + 1) * 200).min(bodies.len()) * BATCH,
            rss_kib(pid) / 1024
        );
    }
    let ingest_rate_all = ids.len() as f64 / started.elapsed().as_secs_f64();

    // 3. serving, over ids spread across the store.
    c.login("alice").await;
    let step = (ids.len() / SERVE_ENTRIES).max(1);
    let sample: Vec<String> = ids
        .iter()
        .step_by(step)
        .take(SERVE_ENTRIES)
        .cloned()
        .collect();
    let serve_rate = serve(&c, &sample).await;

    // 4. memory and disk at the full size.
    let rss_mib = rss_kib(pid) / 1024;
    let store_dir = tmp.path().join("data/store");
    node.stop();
    let disk_after_ingest = disk_bytes(&store_dir);

    // 5. receipts churn and compaction, in this process on the node's data directory.
    let registry = StoreRegistry::new(
        StorageBackend::open(&store_dir, engine, CACHE_BYTES).unwrap(),
        None,
    );
    registry.open_existing().unwrap();
    let store = registry.opened().pop().expect("the bench store");
    let churned = churn(store.as_ref()).await;
    store.flush().await.unwrap();
    let disk_after_churn = disk_bytes(&store_dir);
    loop {
        let before = store.compaction_status().await.unwrap().total_compactions;
        store.maintain().await.unwrap();
        if store.compaction_status().await.unwrap().total_compactions == before {
            break;
        }
    }
    store.flush().await.unwrap();
    let status = store.compaction_status().await.unwrap();
    let disk_after_compaction = settled_disk_bytes(&store_dir).await;
    let engine_compactions = registry.engine_maintenance().map(|m| m.compactions);
    Figures {
        engine,
        raw_rate,
        ingest_rate_first,
        ingest_rate_all,
        serve_rate,
        rss_mib,
        peak_rss_mib: peak / 1024,
        disk_after_ingest,
        disk_after_churn,
        disk_after_compaction,
        churned,
        index_merges: status.total_compactions,
        merged_keys: status.total_compacted_files,
        engine_compactions,
    }
}

fn report(f: &Figures, total: usize, record: usize) {
    let per = |b: u64| b as f64 / total as f64;
    println!(
        "== {} ({total} entries, {record} B stored record)",
        f.engine.as_str()
    );
    println!(
        "raw batch write                     {:>9.0} entries/s",
        f.raw_rate
    );
    println!(
        "putEntriesBinary, first {:>4}k       {:>9.0} entries/s   ratio to raw: {:.2}",
        RATE_ENTRIES / 1000,
        f.ingest_rate_first,
        f.ingest_rate_first / f.raw_rate
    );
    println!(
        "putEntriesBinary, all               {:>9.0} entries/s",
        f.ingest_rate_all
    );
    println!(
        "getEntriesBinary, session key       {:>9.0} entries/s",
        f.serve_rate
    );
    println!(
        "node RSS at the end / peak          {} / {} MiB",
        f.rss_mib, f.peak_rss_mib
    );
    println!(
        "disk after ingest                   {} MiB, {:.0} B/entry ({:.2}x the record)",
        f.disk_after_ingest >> 20,
        per(f.disk_after_ingest),
        per(f.disk_after_ingest) / record as f64
    );
    println!(
        "disk after receipts on {} entries   {} MiB, {:.0} B/entry",
        f.churned,
        f.disk_after_churn >> 20,
        per(f.disk_after_churn)
    );
    println!(
        "disk after compaction               {} MiB, {:.0} B/entry ({:.2}x the record); index merges {} ({} keys); engine compactions {}",
        f.disk_after_compaction >> 20,
        per(f.disk_after_compaction),
        per(f.disk_after_compaction) / record as f64,
        f.index_merges,
        f.merged_keys,
        f.engine_compactions.map_or("not reported".into(), |n| n.to_string())
    );
}

/// Pushes framed bodies with the sync engine's window of requests in flight.
async fn ingest(c: &Client, bodies: &[Vec<u8>], peak: &mut u64, pid: u32) {
    let mut replies = futures::stream::iter(bodies.to_vec())
        .map(|body| {
            let c = c.clone();
            tokio::spawn(async move {
                c.send(
                    "POST",
                    "/vectors/sync/docs/putEntriesBinary",
                    Some(body),
                    "application/octet-stream",
                )
                .await
            })
        })
        .buffered(PUSH_IN_FLIGHT);
    while let Some(r) = replies.next().await {
        let r = r.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        *peak = (*peak).max(rss_kib(pid));
    }
}

/// Reads `ids` in batches with the next one in flight, opening every payload; entries/s.
async fn serve(c: &Client, ids: &[String]) -> f64 {
    let alice = identity("alice");
    let started = Instant::now();
    let mut served = 0;
    let mut replies = futures::stream::iter(ids.chunks(BATCH).map(<[String]>::to_vec))
        .map(|chunk| {
            let c = c.clone();
            tokio::spawn(async move {
                c.sync("getEntriesBinary", json!({"dbId": "bench", "ids": chunk}))
                    .await
            })
        })
        .buffered(2);
    while let Some(r) = replies.next().await {
        let r = r.unwrap();
        assert_eq!(r.status, 200);
        let framed = framing::decode(&r.body).unwrap();
        let header: serde_json::Value = serde_json::from_slice(framed.header).unwrap();
        let key = AesKey::new(
            &SessionKey::unwrap(
                &alice.encryption,
                &b64::decode(header["wrappedSessionKey"].as_str().unwrap()).unwrap(),
            )
            .unwrap(),
        );
        for (meta, payload) in &framed.frames {
            let (iv, meta) = framing::split_iv(meta).unwrap();
            let _: EntryMetadata = serde_json::from_slice(&meta).unwrap();
            key.open(&iv, payload).unwrap();
            served += 1;
        }
    }
    assert_eq!(served, ids.len());
    served as f64 / started.elapsed().as_secs_f64()
}

/// Witness receipts on every other entry, in scan order, 1 000 per call; how many were applied.
async fn churn(store: &dyn ContentAddressedStore) -> usize {
    let mut cursor: Option<ScanCursor> = None;
    let mut receipts = Vec::new();
    loop {
        let page = store
            .scan_entries_since(cursor.as_ref(), MAX_SCAN_PAGE, &ScanFilters::default())
            .await
            .unwrap();
        receipts.extend(page.entries.into_iter().step_by(2).map(|mut m| {
            m.received_at = Some(1_800_000_000_000);
            m.received_by_public_key = Some("relay-bench".into());
            m.received_date_signature = Some(b64::B64(vec![9; 64]));
            m
        }));
        if !page.has_more {
            break;
        }
        cursor = page.next_cursor;
    }
    let mut applied = 0;
    for chunk in receipts.chunks(BATCH) {
        applied += store.apply_receipts(chunk).await.unwrap().len();
    }
    applied
}

/// Blocks the files under `dir` occupy.
fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            disk_bytes(&entry.path())
        } else {
            meta.blocks() * 512
        };
    }
    total
}

/// Disk use once the engine's background maintenance has stopped shrinking it (polled every 2 s,
/// at most a minute).
async fn settled_disk_bytes(dir: &Path) -> u64 {
    let mut last = disk_bytes(dir);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = disk_bytes(dir);
        if now >= last {
            return now;
        }
        last = now;
    }
    last
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
        })
        .unwrap_or(0)
}
