//! Side-by-side throughput of a real `syncrelay-node` process against raw sled on this machine
//! (ratios matter; absolute figures drift on a shared machine). Run: `cargo bench -p syncrelay-node`.
//!
//! 1. raw sled: durable batches of 1 000 records of the same size as a stored 1 KiB entry;
//! 2. ingest: `putEntriesBinary` of 1 000 signed 1 KiB entries per request, full verification, one
//!    request at a time and with the sync engine's window of 3 requests in flight;
//! 3. serving: `getEntriesBinary` (session-key wrap) of 1 000 entries per request, the client
//!    opening every payload, one request at a time and with the next one in flight;
//! 4. idle store-head check: bytes on the wire, headers included.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::time::Instant;

use common::*;
use futures::StreamExt;
use serde_json::json;
use syncrelay_node::crypto::transport::{AesKey, SessionKey};
use syncrelay_node::wire::{b64, framing, EntryMetadata};

const BATCH: usize = 1000;

#[derive(serde::Deserialize)]
struct PutVerdict {
    receipts: Vec<serde::de::IgnoredAny>,
    rejected: Vec<serde::de::IgnoredAny>,
}
const BATCHES: usize = 20;
/// The sync engine's default window of pushes in flight.
const PUSH_IN_FLIGHT: usize = 3;
/// Passes over the stored ids when measuring serving.
const PASSES: usize = 3;

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(run());
}

async fn run() {
    // Half the entries are pushed one request at a time, half with the sync engine's window.
    let entries: Vec<_> = {
        use rayon::prelude::*;
        (0..BATCH * BATCHES * 2)
            .into_par_iter()
            .map(|n| signed_entry("alice", &format!("doc{}", n % 97), n, 1024))
            .collect()
    };
    let record_len = serde_json::to_vec(&entries[0].metadata).unwrap().len() + 1024;

    // 1. raw sled, same cache size as the node's default, as many records as the node will store.
    let tmp = tempfile::tempdir().unwrap();
    let db = sled::Config::new()
        .path(tmp.path())
        .cache_capacity(128 << 20)
        .mode(sled::Mode::HighThroughput)
        .open()
        .unwrap();
    let started = Instant::now();
    for chunk in entries.chunks(BATCH) {
        let mut batch = sled::Batch::default();
        for e in chunk {
            batch.insert(e.metadata.id.as_bytes(), vec![7u8; record_len]);
        }
        db.apply_batch(batch).unwrap();
        db.flush().unwrap();
    }
    let raw_rate = entries.len() as f64 / started.elapsed().as_secs_f64();
    drop(db);

    // 2. ingest through the real node: first one request at a time, then with up to
    //    PUSH_IN_FLIGHT requests in flight, as the sync engine pushes (`sync.maxInFlight`).
    let node = Node::start(
        "limits: {syncPerMinute: 10000000, authPerMinute: 10000, globalExtraPerMinute: 10000000}\n",
    );
    let mut c = node.client();
    c.login("alice").await;
    let mut bodies: Vec<Vec<u8>> = entries
        .chunks(BATCH)
        .map(|chunk| {
            let mut w = framing::FrameWriter::new(
                br#"{"format":"mdb-put-v2","dbId":"bench"}"#,
                chunk.len() * 1700,
            );
            for e in chunk {
                w.push(&serde_json::to_vec(&e.metadata).unwrap(), &e.encrypted_data);
            }
            w.finish()
        })
        .collect();
    let windowed_bodies = bodies.split_off(BATCHES);
    let (ingest_rate, ingest_cores) = ingest(&c, node.pid(), bodies, 1).await;
    let (windowed_rate, windowed_cores) =
        ingest(&c, node.pid(), windowed_bodies, PUSH_IN_FLIGHT).await;

    // 3. serving with session-key wrap, PASSES passes over every stored id; the client unwraps one
    //    key per batch and opens every payload. First one request at a time, then with the next
    //    batch in flight while the client opens the last (as the remote store's prefetch does).
    let ids: Vec<String> = entries.iter().map(|e| e.metadata.id.clone()).collect();
    let serial = serve(&c, node.pid(), &ids, 1).await;
    let windowed = serve(&c, node.pid(), &ids, 2).await;

    // 4. idle head check, raw bytes on the wire.
    let addr = node.url.trim_start_matches("http://").to_string();
    let body = r#"{"dbId":"bench"}"#;
    let request = format!(
        "POST /vectors/sync/docs/getStoreHead HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        c.token.as_ref().unwrap(),
        body.len()
    );
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response);
    let head_body = text.split("\r\n\r\n").nth(1).unwrap_or("");

    let rss_after_run = rss_kib(node.pid());

    println!(
        "entries: {} x {} B payload ({} B stored record)",
        entries.len(),
        1024,
        record_len
    );
    println!("raw sled durable batches      {raw_rate:>10.0} entries/s");
    println!(
        "putEntriesBinary, verified, 1 request at a time  {ingest_rate:>8.0} entries/s   ratio to raw sled: {:.2}   node CPU {ingest_cores:.2} cores",
        ingest_rate / raw_rate
    );
    println!(
        "putEntriesBinary, verified, {PUSH_IN_FLIGHT} in flight         {windowed_rate:>8.0} entries/s   ratio to raw sled: {:.2}   node CPU {windowed_cores:.2} cores",
        windowed_rate / raw_rate
    );
    for (label, s) in [
        ("1 request at a time", &serial),
        ("next batch in flight", &windowed),
    ] {
        println!(
            "getEntriesBinary, session key, {label:<20} {:>8.0} entries/s   node CPU {:.2} cores   client RSA private-key ops: {} for {} entries",
            s.rate, s.node_cores, s.rsa_ops, s.served
        );
    }
    println!("idle getStoreHead             body {} B ({head_body}); on the wire: request {} B, response {} B", head_body.len(), request.len(), response.len());
    println!(
        "node resident memory after the run: {} MiB",
        rss_after_run / 1024
    );

    // 5. Optional: keep ingesting up to RSS_ENTRIES (e.g. 1000000) and report the node's memory.
    if let Some(target) = std::env::var("RSS_ENTRIES")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        let mut stored = entries.len();
        let mut peak = rss_after_run;
        while stored < target {
            let first = stored;
            let body = tokio::task::spawn_blocking(move || {
                use rayon::prelude::*;
                let batch: Vec<_> = (first..first + BATCH)
                    .into_par_iter()
                    .map(|n| signed_entry("alice", &format!("doc{}", n % 97), n, 1024))
                    .collect();
                let mut w = framing::FrameWriter::new(
                    br#"{"format":"mdb-put-v2","dbId":"bench"}"#,
                    BATCH * 1700,
                );
                for e in &batch {
                    w.push(&serde_json::to_vec(&e.metadata).unwrap(), &e.encrypted_data);
                }
                w.finish()
            })
            .await
            .unwrap();
            if (stored / BATCH) % 200 == 0 {
                c.login("alice").await; // tokens expire; a long run logs in again now and then
            }
            let r = c
                .send(
                    "POST",
                    "/vectors/sync/docs/putEntriesBinary",
                    Some(body),
                    "application/octet-stream",
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.text());
            stored += BATCH;
            peak = peak.max(rss_kib(node.pid()));
            if stored % 100_000 == 0 {
                eprintln!(
                    "{stored} entries stored, node RSS {} MiB (peak {} MiB)",
                    rss_kib(node.pid()) / 1024,
                    peak / 1024
                );
            }
        }
        println!(
            "node resident memory at {stored} stored entries: {} MiB (peak while ingesting: {} MiB)",
            rss_kib(node.pid()) / 1024,
            peak / 1024
        );
    }
}

/// Pushes the framed bodies with up to `window` requests in flight; entries/s and node CPU cores.
async fn ingest(c: &Client, pid: u32, bodies: Vec<Vec<u8>>, window: usize) -> (f64, f64) {
    let count = bodies.len() * BATCH;
    let cpu_before = cpu_ticks(pid);
    let started = Instant::now();
    let mut replies = futures::stream::iter(bodies)
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
        .buffered(window);
    while let Some(r) = replies.next().await {
        let r = r.unwrap();
        assert_eq!(r.status, 200);
        // Only the verdict is checked (receipts counted, not parsed): the client's JSON work is
        // not the node's ingest rate.
        let verdict: PutVerdict = serde_json::from_slice(&r.body).unwrap();
        assert_eq!((verdict.receipts.len(), verdict.rejected.len()), (BATCH, 0));
    }
    let secs = started.elapsed().as_secs_f64();
    let cores = (cpu_ticks(pid) - cpu_before) as f64 / 100.0 / secs;
    (count as f64 / secs, cores)
}

struct Served {
    rate: f64,
    node_cores: f64,
    rsa_ops: usize,
    served: usize,
}

/// Reads every id PASSES times in batches, `window` requests in flight, and opens every payload.
async fn serve(c: &Client, pid: u32, ids: &[String], window: usize) -> Served {
    let alice = identity("alice");
    let mut out = Served {
        rate: 0.0,
        node_cores: 0.0,
        rsa_ops: 0,
        served: 0,
    };
    let chunks: Vec<Vec<String>> = (0..PASSES)
        .flat_map(|_| ids.chunks(BATCH).map(<[String]>::to_vec))
        .collect();
    let cpu_before = cpu_ticks(pid);
    let started = Instant::now();
    let mut replies = futures::stream::iter(chunks)
        .map(|chunk| {
            let c = c.clone();
            tokio::spawn(async move {
                c.sync("getEntriesBinary", json!({"dbId": "bench", "ids": chunk}))
                    .await
            })
        })
        .buffered(window);
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
        out.rsa_ops += 1;
        for (meta, payload) in &framed.frames {
            let (iv, meta) = framing::split_iv(meta).unwrap();
            let _: EntryMetadata = serde_json::from_slice(&meta).unwrap();
            key.open(&iv, payload).unwrap();
            out.served += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    out.rate = out.served as f64 / secs;
    out.node_cores = (cpu_ticks(pid) - cpu_before) as f64 / 100.0 / secs;
    assert_eq!(out.served, ids.len() * PASSES);
    out
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

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}
