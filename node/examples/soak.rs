//! Load generator of `scripts/soak.sh`: writes and reads through an origin → relay → edge chain of
//! real `syncrelay-node` processes for a given time, then checks that every acknowledged entry is
//! listed once and readable at every node.
//!
//! - `soak config --dir D --node origin|relay|edge [--upstream URL]`: the node's `D/<node>/node.yaml`
//!   (listening on an ephemeral loopback port) and, on first use, identities for the three nodes and
//!   two users and the tenant directory that lists them.
//! - `soak run --dir D --origin URL --relay URL --edge URL --seconds N`: writers push signed,
//!   encrypted entries through the edge and the origin, readers read acknowledged ones back through
//!   the relay and the edge; a progress line every 30 s; at the end one `SOAK RESULT` line. Exits
//!   with 1 when an acknowledged entry is lost or an id is listed twice.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use syncrelay_node::client::{HttpTransport, RemoteSession, RemoteStore, SessionOptions};
use syncrelay_node::config::{NodeConfig, RemoteConfig, Role};
use syncrelay_node::crypto::keys::Identity;
use syncrelay_node::crypto::payload;
use syncrelay_node::crypto::signing::author_entry;
use syncrelay_node::directory::{DirectoryFile, ServerEntry, TenantFile, UserEntry};
use syncrelay_node::store::ContentAddressedStore;
use syncrelay_node::wire::{content_hash, StoreId, StoreKind};

const TENANT: &str = "soak";
const DB: &str = "soak-db";
const NODES: [&str; 3] = ["origin", "relay", "edge"];
const USERS: [&str; 2] = ["alice", "carol"];

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Writes `DIR/NODE/node.yaml` (and the shared identities and directory on first use).
    Config {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        node: String,
        #[arg(long)]
        upstream: Option<String>,
    },
    /// Runs writers and readers against the chain, then checks it.
    Run {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        origin: String,
        #[arg(long)]
        relay: String,
        #[arg(long)]
        edge: String,
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        #[arg(long, default_value_t = 2)]
        edge_writers: usize,
        #[arg(long, default_value_t = 2)]
        origin_writers: usize,
        /// Readers, alternately at the relay and at the edge.
        #[arg(long, default_value_t = 4)]
        readers: usize,
        /// Entries per push.
        #[arg(long, default_value_t = 10)]
        batch: usize,
        /// Plaintext bytes per entry.
        #[arg(long, default_value_t = 1024)]
        payload: usize,
        /// Pause of each writer and reader between two requests.
        #[arg(long, default_value_t = 100)]
        pause_ms: u64,
        /// How long the chain may take to converge after the load stops.
        #[arg(long, default_value_t = 300)]
        settle_seconds: u64,
    },
}

fn username(user: &str) -> String {
    format!("CN={user}/O=soak")
}

/// Identities of the nodes and users (generated once) and the tenant directory.
fn ensure_shared(dir: &Path) -> anyhow::Result<()> {
    let directory_file = dir.join("directory.yaml");
    if directory_file.exists() {
        return Ok(());
    }
    let names: Vec<&str> = NODES.iter().chain(USERS.iter()).copied().collect();
    let ids: Vec<Identity> = std::thread::scope(|s| {
        let handles: Vec<_> = names.iter().map(|_| s.spawn(Identity::generate)).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("key generation"))
            .collect::<Result<_, _>>()
    })?;
    for (name, id) in names.iter().zip(&ids) {
        id.save(&dir.join("keys").join(name))?;
    }
    let mut directory = DirectoryFile::default();
    directory.tenants.insert(
        TENANT.into(),
        TenantFile {
            users: USERS
                .iter()
                .zip(&ids[3..])
                .map(|(u, id)| UserEntry {
                    username: username(u),
                    signing_public_key: id.signing_public_pem.clone(),
                    encryption_public_key: id.encryption_public_pem.clone(),
                    revoked: false,
                })
                .collect(),
            trusted_servers: NODES
                .iter()
                .zip(&ids)
                .map(|(n, id)| ServerEntry {
                    name: format!("CN={n}/O=soak"),
                    signing_public_key: id.signing_public_pem.clone(),
                    encryption_public_key: id.encryption_public_pem.clone(),
                })
                .collect(),
            ..TenantFile::default()
        },
    );
    std::fs::write(&directory_file, serde_yaml::to_string(&directory)?)?;
    Ok(())
}

fn config(dir: &Path, node: &str, upstream: Option<String>) -> anyhow::Result<()> {
    let role = match node {
        "origin" => Role::Origin,
        "relay" => Role::Relay,
        "edge" => Role::Edge,
        other => anyhow::bail!("unknown node {other}"),
    };
    ensure_shared(dir)?;
    let keys = dir.join("keys").join(node);
    let mut c = NodeConfig {
        name: format!("CN={node}/O=soak"),
        role,
        listen: "127.0.0.1:0".parse()?,
        data_dir: dir.join(node).join("data"),
        directory_file: Some(dir.join("directory.yaml")),
        ..NodeConfig::default()
    };
    c.identity.signing_key_file = Some(keys.join("signing.pem"));
    c.identity.encryption_key_file = Some(keys.join("encryption.pem"));
    // Every client and hop shares 127.0.0.1: the per-IP limits would throttle the load generator,
    // not measure the nodes.
    c.limits.sync_per_minute = 1_000_000;
    c.limits.auth_per_minute = 10_000;
    c.limits.global_extra_per_minute = 1_000_000;
    c.sync.interval_ms = 1_000;
    // A bounded edge cache smaller than the data written, so that it evicts.
    c.cache.max_bytes = 32 << 20;
    if let Some(url) = upstream {
        c.upstreams = vec![RemoteConfig {
            name: "upstream".into(),
            url,
            ca_file: None,
        }];
    }
    c.validate()?;
    std::fs::create_dir_all(dir.join(node))?;
    std::fs::write(dir.join(node).join("node.yaml"), serde_yaml::to_string(&c)?)?;
    Ok(())
}

fn user_store(dir: &Path, url: &str, user: &str) -> anyhow::Result<RemoteStore> {
    let keys = dir.join("keys").join(user);
    let identity = Identity::load(&keys.join("signing.pem"), &keys.join("encryption.pem"))
        .with_context(|| format!("keys of {user}"))?;
    let transport = HttpTransport::new(url, None, Duration::from_secs(60))?;
    let session = RemoteSession::new(
        url,
        Arc::new(transport),
        TENANT,
        SessionOptions {
            username: username(user),
            identity: Arc::new(identity),
            node_id: format!("soak:{user}"),
            max_attempts: 3,
            backoff_base: Duration::from_millis(100),
        },
    );
    Ok(RemoteStore::new(
        Arc::new(session),
        StoreId::new(TENANT, DB, StoreKind::Docs)?,
    ))
}

#[derive(Default)]
struct Counters {
    pushes: AtomicU64,
    push_errors: AtomicU64,
    rejected: AtomicU64,
    reads: AtomicU64,
    read_errors: AtomicU64,
    entries_read: AtomicU64,
    /// Asked for but not (yet) there: the chain's lag, not an error during the run.
    not_yet_there: AtomicU64,
    bad_payloads: AtomicU64,
}

struct Shared {
    acknowledged: Mutex<Vec<String>>,
    counters: Counters,
    stop: AtomicBool,
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct WriterSpec {
    name: String,
    store: RemoteStore,
    author: Arc<Identity>,
    key: [u8; 32],
    batch: usize,
    payload: usize,
    pause: Duration,
}

async fn writer(w: WriterSpec, shared: Arc<Shared>) {
    let c = &shared.counters;
    let mut seq = 0usize;
    let mut errors_shown = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        let entries: Vec<_> = (0..w.batch)
            .map(|_| {
                let n = seq;
                seq += 1;
                let mut text = format!("soak {} {n} ", w.name).into_bytes();
                text.resize(w.payload, b'.');
                let sealed = payload::seal(&w.key, &text);
                author_entry(&w.author, &format!("{}-{:06}", w.name, n / 100), n, sealed)
            })
            .collect();
        c.pushes.fetch_add(1, Ordering::Relaxed);
        match w.store.push_entries(entries).await {
            Ok(outcome) => {
                c.rejected
                    .fetch_add(outcome.rejected.len() as u64, Ordering::Relaxed);
                let mut acked = shared.acknowledged.lock().unwrap();
                acked.extend(outcome.receipts.into_iter().map(|m| m.id));
            }
            Err(e) => {
                c.push_errors.fetch_add(1, Ordering::Relaxed);
                if errors_shown < 5 {
                    errors_shown += 1;
                    eprintln!("writer {}: push failed: {e}", w.name);
                }
            }
        }
        tokio::time::sleep(w.pause).await;
    }
}

async fn reader(name: String, store: RemoteStore, pause: Duration, shared: Arc<Shared>) {
    let c = &shared.counters;
    let mut rng = name
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31) ^ b as u64);
    let mut errors_shown = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        let ask: Vec<String> = {
            let acked = shared.acknowledged.lock().unwrap();
            if acked.is_empty() {
                Vec::new()
            } else {
                // Half recent entries, half anywhere in what was written.
                (0..50)
                    .map(|k| {
                        let r = splitmix(&mut rng) as usize;
                        let i = if k % 2 == 0 {
                            acked.len() - 1 - r % acked.len().min(500)
                        } else {
                            r % acked.len()
                        };
                        acked[i].clone()
                    })
                    .collect::<HashSet<_>>()
                    .into_iter()
                    .collect()
            }
        };
        if !ask.is_empty() {
            c.reads.fetch_add(1, Ordering::Relaxed);
            match store.get_entries(&ask).await {
                Ok(entries) => {
                    c.entries_read
                        .fetch_add(entries.len() as u64, Ordering::Relaxed);
                    c.not_yet_there
                        .fetch_add((ask.len() - entries.len()) as u64, Ordering::Relaxed);
                    let bad = entries
                        .iter()
                        .filter(|e| content_hash(&e.encrypted_data) != e.metadata.content_hash)
                        .count();
                    c.bad_payloads.fetch_add(bad as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    c.read_errors.fetch_add(1, Ordering::Relaxed);
                    if errors_shown < 5 {
                        errors_shown += 1;
                        eprintln!("reader {name}: read failed: {e}");
                    }
                }
            }
        }
        tokio::time::sleep(pause).await;
    }
}

fn progress(started: Instant, shared: &Shared) -> String {
    let c = &shared.counters;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    format!(
        "t={:>4}s acknowledged={} pushes={} push_errors={} rejected={} reads={} entries_read={} \
         not_yet_there={} read_errors={} bad_payloads={}",
        started.elapsed().as_secs(),
        shared.acknowledged.lock().unwrap().len(),
        get(&c.pushes),
        get(&c.push_errors),
        get(&c.rejected),
        get(&c.reads),
        get(&c.entries_read),
        get(&c.not_yet_there),
        get(&c.read_errors),
        get(&c.bad_payloads)
    )
}

#[allow(clippy::too_many_arguments)]
async fn run(
    dir: PathBuf,
    urls: [String; 3],
    seconds: u64,
    edge_writers: usize,
    origin_writers: usize,
    readers: usize,
    batch: usize,
    payload_len: usize,
    pause: Duration,
    settle: Duration,
) -> anyhow::Result<bool> {
    let [origin, relay, edge] = &urls;
    let keys = dir.join("keys").join("alice");
    let alice = Arc::new(Identity::load(
        &keys.join("signing.pem"),
        &keys.join("encryption.pem"),
    )?);
    let tenant_key = payload::random_key();
    let shared = Arc::new(Shared {
        acknowledged: Mutex::new(Vec::new()),
        counters: Counters::default(),
        stop: AtomicBool::new(false),
    });
    let mut tasks = Vec::new();
    let writers = (0..edge_writers)
        .map(|k| (format!("edge-w{k}"), edge))
        .chain((0..origin_writers).map(|k| (format!("origin-w{k}"), origin)));
    for (name, url) in writers {
        let spec = WriterSpec {
            name,
            store: user_store(&dir, url, "alice")?,
            author: alice.clone(),
            key: tenant_key,
            batch,
            payload: payload_len,
            pause,
        };
        tasks.push(tokio::spawn(writer(spec, shared.clone())));
    }
    for k in 0..readers {
        let (name, url) = if k % 2 == 0 {
            (format!("relay-r{k}"), relay)
        } else {
            (format!("edge-r{k}"), edge)
        };
        let store = user_store(&dir, url, "carol")?;
        tasks.push(tokio::spawn(reader(name, store, pause, shared.clone())));
    }
    println!(
        "load: {edge_writers} writers at the edge, {origin_writers} at the origin, {readers} readers \
         (relay/edge), {batch} entries of {payload_len} B per push, {} ms pause, {seconds} s",
        pause.as_millis()
    );
    let started = Instant::now();
    let end = started + Duration::from_secs(seconds);
    while Instant::now() < end {
        let next = (Instant::now() + Duration::from_secs(30)).min(end);
        tokio::time::sleep_until(next.into()).await;
        println!("{}", progress(started, &shared));
    }
    shared.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    println!("load stopped: {}", progress(started, &shared));
    let acknowledged: Vec<String> = shared.acknowledged.lock().unwrap().clone();
    let acked: HashSet<&String> = acknowledged.iter().collect();
    let ack_duplicates = acknowledged.len() - acked.len();

    // Convergence: every node lists every acknowledged id (an edge lists its upstream's).
    let readers: Vec<RemoteStore> = urls
        .iter()
        .map(|u| user_store(&dir, u, "carol"))
        .collect::<Result<_, _>>()?;
    let settle_start = Instant::now();
    let mut lists: Vec<Vec<String>> = vec![Vec::new(); 3];
    loop {
        for (i, r) in readers.iter().enumerate() {
            lists[i] = r.get_all_ids().await.unwrap_or_default();
        }
        let complete = lists.iter().all(|l| {
            let have: HashSet<&String> = l.iter().collect();
            acked.iter().all(|id| have.contains(id))
        });
        if complete || settle_start.elapsed() > settle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let converge = settle_start.elapsed();

    let mut lost: HashSet<String> = HashSet::new();
    let mut duplicates = 0;
    let mut per_node = Vec::new();
    for (i, r) in readers.iter().enumerate() {
        let set: HashSet<&String> = lists[i].iter().collect();
        let dup = lists[i].len() - set.len();
        duplicates += dup;
        // Readable: fetched with a payload matching its contentHash.
        let read_started = Instant::now();
        let mut readable: HashSet<String> = HashSet::new();
        for chunk in acknowledged.chunks(1000) {
            match r.get_entries(chunk).await {
                Ok(entries) => readable.extend(
                    entries
                        .into_iter()
                        .filter(|e| content_hash(&e.encrypted_data) == e.metadata.content_hash)
                        .map(|e| e.metadata.id),
                ),
                Err(e) => eprintln!("{}: read failed: {e}", NODES[i]),
            }
        }
        let missing: Vec<&String> = acknowledged
            .iter()
            .filter(|id| !readable.contains(*id) || !set.contains(id))
            .collect();
        lost.extend(missing.iter().map(|s| s.to_string()));
        per_node.push(format!(
            "{}: listed={} duplicates={dup} unreadable_or_unlisted={} full_read={:.1}s",
            NODES[i],
            lists[i].len(),
            missing.len(),
            read_started.elapsed().as_secs_f64()
        ));
    }
    for line in &per_node {
        println!("  {line}");
    }
    let c = &shared.counters;
    println!(
        "SOAK RESULT acknowledged={} lost={} duplicates={} ack_duplicates={ack_duplicates} \
         push_errors={} rejected={} read_errors={} bad_payloads={} converged_in={:.1}s",
        acked.len(),
        lost.len(),
        duplicates,
        c.push_errors.load(Ordering::Relaxed),
        c.rejected.load(Ordering::Relaxed),
        c.read_errors.load(Ordering::Relaxed),
        c.bad_payloads.load(Ordering::Relaxed),
        converge.as_secs_f64()
    );
    Ok(lost.is_empty() && duplicates == 0 && c.bad_payloads.load(Ordering::Relaxed) == 0)
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Config {
            dir,
            node,
            upstream,
        } => config(&dir, &node, upstream),
        Cmd::Run {
            dir,
            origin,
            relay,
            edge,
            seconds,
            edge_writers,
            origin_writers,
            readers,
            batch,
            payload,
            pause_ms,
            settle_seconds,
        } => {
            let ok = tokio::runtime::Runtime::new()?.block_on(run(
                dir,
                [origin, relay, edge],
                seconds,
                edge_writers,
                origin_writers,
                readers,
                batch,
                payload,
                Duration::from_millis(pause_ms),
                Duration::from_secs(settle_seconds),
            ))?;
            if !ok {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}
