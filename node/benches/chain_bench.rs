//! Chain benchmark (node part 2), real `syncrelay-node` processes on loopback, side by side in one
//! run. Run: `cargo bench -p syncrelay-node --bench chain_bench` (ENTRIES=… to change the size).
//!
//! 1. initial pull of ENTRIES 1 KiB entries by a client: directly from the origin vs. through
//!    origin → relay → edge once the relay is warm (its copy complete, the nodes idle; the edge
//!    cache cold), alternated three times; the ratio is the one of the medians. Measured twice:
//!    with every process sharing the machine's cores (the chain's three busy processes then
//!    compete for them, so the ratio is one of CPU sums), and with each process (client and
//!    nodes) held to CPU_SHARE cores of its own (default 0.6; cgroup quotas, needs root), as when
//!    each hop runs on its own machine and the hops pipeline;
//! 2. idle re-sync of the warm relay: requests per direction and response bytes;
//! 3. edge `getEntries` of 250 entries: cache miss vs. hit latency;
//! 4. 50 clients asking the edge for the same 250 missing entries at once: upstream requests;
//! 5. the edge's resident memory against its cache limit;
//! 6. the relay's replication delay (origin receipt → stored at the relay) from its
//!    `syncrelay_replication_delay_seconds` histogram: while the origin is being loaded (the
//!    relay pulling as the writes come in), for the 2250 fresh entries written later in one
//!    push, and (7) under load: 100 entries written every 100 ms for LOAD_SECONDS (default 15)
//!    while four clients pull complete copies over and over, two from the origin and two
//!    through the edge.

#[path = "../tests/common/mod.rs"]
mod common;
mod cpu_shares;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::*;
use cpu_shares::CpuShares;
use syncrelay_node::client::{HttpTransport, RemoteSession, RemoteStore, SessionOptions};
use syncrelay_node::store::memory::MemoryStore;
use syncrelay_node::store::ContentAddressedStore;
use syncrelay_node::sync::engine::{self, SyncOptions, SyncState};
use syncrelay_node::wire::{StoreId, StoreKind};

const LIMITS: &str =
    "limits: {syncPerMinute: 10000000, authPerMinute: 100000, globalExtraPerMinute: 10000000}\n";
const EDGE_CACHE: u64 = 64 << 20;

fn as_user(url: &str, user: &str, db: &str) -> Arc<RemoteStore> {
    let session = RemoteSession::new(
        url,
        Arc::new(HttpTransport::new(url, None, Duration::from_secs(120)).unwrap()),
        TENANT,
        SessionOptions {
            username: username(user),
            identity: Arc::new(identity(user)),
            node_id: format!("bench-{user}"),
            max_attempts: 3,
            backoff_base: Duration::from_millis(100),
        },
    );
    Arc::new(RemoteStore::new(
        Arc::new(session),
        StoreId::new(TENANT, db, StoreKind::Docs).unwrap(),
    ))
}

/// Pulls everything from `source` into a fresh memory store; entries per second.
async fn pull_rate(source: &RemoteStore) -> (f64, u64) {
    let target = MemoryStore::new(source.id().clone(), tokio::sync::broadcast::channel(4).0);
    let mut state = SyncState::default();
    let mut hook = |_: &SyncState, _: &engine::Progress| {};
    let started = Instant::now();
    let report = engine::pull_changes_from(
        source,
        &target,
        &mut state,
        SyncOptions::default(),
        None,
        &mut hook,
    )
    .await
    .unwrap();
    (
        report.transferred as f64 / started.elapsed().as_secs_f64(),
        report.transferred,
    )
}

async fn served(c: &Cluster, i: usize, endpoint: &str) -> u64 {
    let text = c.client(i).get("/metrics").await.text();
    let needle = format!("endpoint=\"{endpoint}\"");
    text.lines()
        .filter(|l| l.starts_with("syncrelay_http_requests_total") && l.contains(&needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// User + system CPU seconds of a process so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// The relay's delay histogram for its link `n0`: (upper bound, cumulative count) per bucket,
/// and the sum of the delays.
async fn delay_histogram(c: &Cluster, i: usize) -> (Vec<(f64, f64)>, f64) {
    let text = c.client(i).get("/metrics").await.text();
    let mut buckets = Vec::new();
    let mut sum = 0.0;
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: f64 = value.parse().unwrap_or(0.0);
        if let Some(labels) = series.strip_prefix("syncrelay_replication_delay_seconds_bucket{") {
            if !labels.contains("link=\"n0\"") {
                continue;
            }
            let le = labels
                .split("le=\"")
                .nth(1)
                .and_then(|r| r.split('"').next());
            let le = match le {
                Some("+Inf") => f64::INFINITY,
                Some(v) => v.parse().unwrap_or(f64::INFINITY),
                None => continue,
            };
            buckets.push((le, value));
        } else if series == "syncrelay_replication_delay_seconds_sum{link=\"n0\"}" {
            sum = value;
        }
    }
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    (buckets, sum)
}

/// Waits until the relay stores `entries` entries itself and its link is current.
async fn until_relay_holds(c: &Cluster, entries: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let status = c.status(1).await;
        if status["entries"].as_u64() >= Some(entries) && status["links"][0]["state"] == "current" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "relay did not catch up: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Count, mean and the bucket bounds of p50 / p99 of the delays recorded between two snapshots.
fn delay_between(before: &(Vec<(f64, f64)>, f64), after: &(Vec<(f64, f64)>, f64)) -> String {
    let counts: Vec<(f64, f64)> = after
        .0
        .iter()
        .map(|(le, n)| {
            let was = before.0.iter().find(|(l, _)| l == le).map_or(0.0, |b| b.1);
            (*le, n - was)
        })
        .collect();
    let total = counts.last().map_or(0.0, |c| c.1);
    if total == 0.0 {
        return "no entries timed".into();
    }
    let quantile = |q: f64| {
        counts
            .iter()
            .find(|(_, n)| *n >= q * total)
            .map_or(f64::INFINITY, |c| c.0)
    };
    format!(
        "{total:.0} entries timed, mean {:.3} s, p50 ≤ {} s, p99 ≤ {} s (histogram bucket bounds)",
        (after.1 - before.1) / total,
        quantile(0.5),
        quantile(0.99)
    )
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Initial pulls directly from the origin and through the chain, alternated three times, with
/// the CPU seconds of each process (client, origin, relay, edge) during the last of each kind.
struct Comparison {
    direct: Vec<f64>,
    chained: Vec<f64>,
    cpu_direct: [f64; 4],
    cpu_chained: [f64; 4],
}

async fn compare(c: &Cluster, total: usize, pids: [u32; 4]) -> Comparison {
    let cpu = || pids.map(cpu_secs);
    let mut out = Comparison {
        direct: Vec::new(),
        chained: Vec::new(),
        cpu_direct: [0.0; 4],
        cpu_chained: [0.0; 4],
    };
    for _ in 0..3 {
        let before = cpu();
        let (rate, n) = pull_rate(&as_user(&c.url(0), "bob", "bench")).await;
        assert_eq!(n, total as u64);
        out.direct.push(rate);
        let after = cpu();
        out.cpu_direct = std::array::from_fn(|i| after[i] - before[i]);
        let (rate, n) = pull_rate(&as_user(&c.url(2), "bob", "bench")).await;
        assert_eq!(n, total as u64);
        out.chained.push(rate);
        let end = cpu();
        out.cpu_chained = std::array::from_fn(|i| end[i] - after[i]);
    }
    out
}

impl Comparison {
    fn print(&self, setting: &str) {
        let runs = |v: &[f64]| v.iter().map(|r| r.round()).collect::<Vec<_>>();
        println!("  initial pulls, {setting}:");
        println!(
            "    direct from origin                {:>9.0} entries/s (median of {:?})",
            median(&self.direct),
            runs(&self.direct)
        );
        println!(
            "    origin→relay→edge                 {:>9.0} entries/s (median of {:?}; edge cache cold, 64 MiB < data)",
            median(&self.chained),
            runs(&self.chained)
        );
        println!(
            "    ratio chain / direct              {:>9.2} of the medians; per pair {:?}   (goal ≥ 0.8)",
            median(&self.chained) / median(&self.direct),
            self.direct
                .iter()
                .zip(&self.chained)
                .map(|(d, c)| (c / d * 100.0).round() / 100.0)
                .collect::<Vec<_>>()
        );
        for (label, secs) in [("direct", self.cpu_direct), ("chain ", self.cpu_chained)] {
            println!(
                "    CPU seconds of the last {label} pull: client {:.2}, origin {:.2}, relay {:.2}, edge {:.2}",
                secs[0], secs[1], secs[2], secs[3]
            );
        }
    }
}

fn main() {
    tokio::runtime::Runtime::new().unwrap().block_on(run());
}

async fn run() {
    let total: usize = std::env::var("ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let mut c = Cluster::new(&["origin", "relay", "edge"]);
    c.configure(0, &format!("role: origin\n{LIMITS}"));
    c.configure(
        1,
        // The relay carries the database from the start, so it pulls while the origin is loaded.
        &format!(
            "role: relay\ndatabases: [{{tenant: {TENANT}, db: bench}}]\n{LIMITS}{}",
            c.remotes("upstreams", &[0])
        ),
    );
    c.configure(
        2,
        &format!(
            "role: edge\ncache: {{maxBytes: {EDGE_CACHE}}}\n{LIMITS}{}",
            c.remotes("upstreams", &[1])
        ),
    );
    for i in 0..3 {
        c.start(i);
    }
    let delay_start = delay_histogram(&c, 1).await;
    eprintln!("loading {total} signed 1 KiB entries into the origin...");
    let loader = as_user(&c.url(0), "alice", "bench");
    for chunk in (0..total).collect::<Vec<_>>().chunks(1000) {
        let batch: Vec<_> = chunk
            .iter()
            .map(|&n| signed_entry("alice", &format!("doc{}", n % 997), n, 1024))
            .collect();
        let outcome = loader.push_entries(batch).await.unwrap();
        assert!(outcome.rejected.is_empty());
    }
    eprintln!("waiting for the relay to hold a complete copy...");
    let mut relay_reader = c.client(1);
    relay_reader.login("bob").await;
    // The relay's own count: its getStoreHead is answered from the origin until its copy is
    // complete, so a head says nothing about what the relay has pulled.
    until_relay_holds(&c, total as u64, Duration::from_secs(900)).await;
    let delay_loaded = delay_histogram(&c, 1).await;
    let relay_status = c.status(1).await;
    let loaded_window = relay_status["links"][0]["delay"].clone();

    // 1. direct vs through the chain (edge cache cold), alternated three times, once the nodes
    //    are idle (the relay's catch-up leaves sled work behind that would slow the first pull).
    //    CPU seconds of each process (the client is this one) are recorded per pull. Then the
    //    same with each process held to a CPU share of its own.
    let pids = [std::process::id(), c.pid(0), c.pid(1), c.pid(2)];
    let cpu = || pids.map(cpu_secs);
    let settle = Instant::now() + Duration::from_secs(60);
    loop {
        let before = cpu();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let busy: f64 = (1..4).map(|i| cpu()[i] - before[i]).sum();
        if busy < 0.05 || Instant::now() > settle {
            break;
        }
    }
    let shared = compare(&c, total, pids).await;
    let cores: f64 = std::env::var("CPU_SHARE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.6);
    let held = match CpuShares::apply(&pids, cores) {
        Ok(shares) => {
            let held = compare(&c, total, pids).await;
            drop(shares);
            Some(held)
        }
        Err(why) => {
            eprintln!("pulls with a CPU share per process not measured: {why}");
            None
        }
    };
    let edge_rss_after_pull = rss_mib(c.pid(2));

    // 2. idle re-sync of the warm relay: count requests at the origin over passes with no news.
    let passes_before = served(&c, 0, "sync/docs/getStoreHead").await;
    let work_before = served(&c, 0, "sync/docs/scanEntriesSince").await
        + served(&c, 0, "sync/docs/hasEntries").await
        + served(&c, 0, "sync/docs/getEntriesBinary").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let heads = served(&c, 0, "sync/docs/getStoreHead").await - passes_before;
    let work = served(&c, 0, "sync/docs/scanEntriesSince").await
        + served(&c, 0, "sync/docs/hasEntries").await
        + served(&c, 0, "sync/docs/getEntriesBinary").await
        - work_before;
    let head_body = relay_reader
        .sync("getStoreHead", serde_json::json!({"dbId": "bench"}))
        .await
        .body
        .len();

    // Fresh entries the edge has never seen (written at the origin, pulled by the relay).
    let fresh: Vec<_> = (total..total + 2250)
        .map(|n| signed_entry("alice", &format!("doc{}", n % 997), n, 1024))
        .collect();
    let ids: Vec<String> = fresh.iter().map(|e| e.metadata.id.clone()).collect();
    let delay_before_fresh = delay_histogram(&c, 1).await;
    loader.push_entries(fresh).await.unwrap();
    until_relay_holds(&c, total as u64 + 2250, Duration::from_secs(300)).await;

    let delay_fresh = delay_histogram(&c, 1).await;

    // 3. miss vs hit latency of getEntries(250) at the edge.
    let mut edge_client = c.client(2);
    edge_client.login("bob").await;
    let mut miss: Vec<f64> = Vec::new();
    let mut hit: Vec<f64> = Vec::new();
    for set in ids[..2000].chunks(250) {
        let started = Instant::now();
        assert_eq!(
            edge_client.fetch("bench", set, "bob").await.len(),
            set.len()
        );
        miss.push(started.elapsed().as_secs_f64() * 1000.0);
        let started = Instant::now();
        edge_client.fetch("bench", set, "bob").await;
        hit.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let (miss_ms, hit_ms) = (median(&miss), median(&hit));

    // 4. 50 clients, the same 250 entries missing at the edge, all at once.
    let cold: Vec<String> = ids[2000..].to_vec();
    let before = served(&c, 1, "sync/docs/getEntriesBinary").await;
    let mut clients = Vec::new();
    for _ in 0..50 {
        let mut client = c.client(2);
        client.login("bob").await;
        clients.push(client);
    }
    let answers = futures::future::join_all(
        clients
            .iter()
            .map(|client| client.fetch("bench", &cold, "bob")),
    )
    .await;
    assert!(answers.iter().all(|a| a.len() == 250));
    let upstream_requests = served(&c, 1, "sync/docs/getEntriesBinary").await - before;
    let edge_rss = rss_mib(c.pid(2));

    // 7. Replication delay under load: a writer pushes a batch of 100 fresh entries at the origin
    //    every 100 ms for LOAD_SECONDS while four readers pull complete copies over and over, two
    //    from the origin and two through the edge (whose cache is smaller than the data, so the
    //    relay serves it too).
    let load_seconds: u64 = std::env::var("LOAD_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let held_before = total as u64 + 2250;
    let delay_before_load = delay_histogram(&c, 1).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = [0, 0, 2, 2]
        .into_iter()
        .map(|node| {
            let source = as_user(&c.url(node), "bob", "bench");
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut pulls, mut entries) = (0u64, 0u64);
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    entries += pull_rate(&source).await.1;
                    pulls += 1;
                }
                (pulls, entries)
            })
        })
        .collect();
    let load_started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut written = 0u64;
    while load_started.elapsed() < Duration::from_secs(load_seconds) {
        tick.tick().await;
        let first = held_before + written;
        let batch: Vec<_> = (first..first + 100)
            .map(|n| signed_entry("alice", &format!("doc{}", n % 997), n as usize, 1024))
            .collect();
        loader.push_entries(batch).await.unwrap();
        written += 100;
    }
    let write_secs = load_started.elapsed().as_secs_f64();
    until_relay_holds(&c, held_before + written, Duration::from_secs(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut pulls, mut pulled) = (0u64, 0u64);
    for reader in readers {
        let (p, e) = reader.await.unwrap();
        pulls += p;
        pulled += e;
    }
    let read_secs = load_started.elapsed().as_secs_f64();
    let delay_under_load = delay_histogram(&c, 1).await;

    println!("chain benchmark, {total} entries of 1 KiB, one run on this machine");
    shared.print("all processes sharing this machine's cores");
    match &held {
        Some(held) => held.print(&format!(
            "each process held to {cores} CPU (cgroup quota), as if on a machine of its own"
        )),
        None => println!("  (pulls with a CPU share per process not measured: see stderr)"),
    }
    println!(
        "  idle relay, 3 s (~10 passes at 300 ms): {heads} getStoreHead at the origin (one per direction per pass), {work} scan/has/get requests; head response body {head_body} B"
    );
    println!(
        "  edge getEntries(250): miss {miss_ms:.1} ms, hit {hit_ms:.1} ms (median of {})",
        miss.len()
    );
    println!("  50 clients, same 250 missing entries: {upstream_requests} upstream getEntries request(s) (goal: 1)");
    println!(
        "  edge RSS: {edge_rss_after_pull:.0} MiB after the chained pulls, {edge_rss:.0} MiB after the burst; cache limit {} MiB (goal ≤ limit + 128)",
        EDGE_CACHE >> 20
    );
    println!(
        "  relay replication delay while the origin was loaded: {}",
        delay_between(&delay_start, &delay_loaded)
    );
    println!("    relay /status window (last 5 min) then: {loaded_window}");
    println!(
        "  relay replication delay of 2250 fresh entries (one push): {}",
        delay_between(&delay_before_fresh, &delay_fresh)
    );
    println!(
        "  relay replication delay of {written} entries written at {:.0} entries/s while 4 clients pulled complete copies ({pulls} pulls, {:.0} entries/s read): {}",
        written as f64 / write_secs,
        pulled as f64 / read_secs,
        delay_between(&delay_before_load, &delay_under_load)
    );
}
