//! `syncrelay-node demo`: the whole idea in one command. On loopback, with on-disk stores (the default engine) in a
//! temporary folder, it starts an origin, a regional relay and an edge; creates tenant `demo` with
//! users Alice and Carol, whose payload key no node has; Alice writes signed, AES-256-GCM-encrypted
//! notes at the edge; Carol pulls them through the relay and decrypts them. It shows each hop's
//! counts and lag while that happens, checks that the relay's disk holds only ciphertext, and ends
//! with a summary.

use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::client::{HttpTransport, RemoteSession, RemoteStore, SessionOptions};
use crate::config::{NodeConfig, RemoteConfig, Role};
use crate::crypto::keys::Identity;
use crate::crypto::payload;
use crate::crypto::signing::author_entry;
use crate::directory::{DirectoryFile, ServerEntry, TenantFile, UserEntry};
use crate::server::SharedState;
use crate::store::ContentAddressedStore;
use crate::wire::{Entry, StoreId, StoreKind};

const TENANT: &str = "demo";
const DB: &str = "notes";

pub struct DemoOptions {
    pub entries: usize,
    pub batch: usize,
}

struct Hop {
    name: &'static str,
    state: SharedState,
    url: String,
}

fn user(name: &str, id: &Identity) -> UserEntry {
    UserEntry {
        username: name.into(),
        signing_public_key: id.signing_public_pem.clone(),
        encryption_public_key: id.encryption_public_pem.clone(),
        revoked: false,
    }
}

/// Starts one node in this process on an ephemeral loopback port.
async fn start_hop(
    name: &'static str,
    role: Role,
    upstream: Option<&str>,
    identity: &Identity,
    dir: &Path,
    directory_file: &Path,
) -> anyhow::Result<Hop> {
    let data_dir = dir.join(name);
    let keys = data_dir.join("identity");
    identity.save(&keys)?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut config = NodeConfig {
        name: format!("CN={name}/O=demo"),
        role,
        listen: addr,
        data_dir: data_dir.clone(),
        directory_file: Some(directory_file.to_path_buf()),
        ..NodeConfig::default()
    };
    config.identity.signing_key_file = Some(keys.join("signing.pem"));
    config.identity.encryption_key_file = Some(keys.join("encryption.pem"));
    config.sync.interval_ms = 500;
    if let Some(url) = upstream {
        config.upstreams = vec![RemoteConfig {
            name: "upstream".into(),
            url: url.into(),
            ca_file: None,
        }];
    }
    config.validate()?;
    let state = crate::node::build_state(config)?;
    let url = format!("http://{addr}");
    let serving = state.clone();
    tokio::spawn(async move {
        if let Err(e) = crate::node::serve(serving, listener, std::future::pending()).await {
            eprintln!("{name} stopped: {e:#}");
        }
    });
    Ok(Hop { name, state, url })
}

/// A user's view of one node: a remote store authenticated as that user.
fn user_store(url: &str, username: &str, identity: Arc<Identity>) -> anyhow::Result<RemoteStore> {
    let transport = HttpTransport::new(url, None, Duration::from_secs(30))?;
    let session = RemoteSession::new(
        url,
        Arc::new(transport),
        TENANT,
        SessionOptions {
            username: username.into(),
            identity,
            node_id: format!("client:{username}"),
            max_attempts: 3,
            backoff_base: Duration::from_millis(100),
        },
    );
    Ok(RemoteStore::new(
        Arc::new(session),
        StoreId::new(TENANT, DB, StoreKind::Docs)?,
    ))
}

async fn hop_line(hops: &[Hop]) -> String {
    let mut parts = Vec::new();
    for hop in hops {
        let s = crate::roles::status::node_status(&hop.state.node).await;
        let detail = match s.role {
            Role::Edge => {
                let c = s.cache.unwrap_or_default();
                format!("cache {} entries / {} KiB", c.entries, c.bytes / 1024)
            }
            Role::Origin => format!("{} entries", s.entries),
            _ => format!(
                "{} entries, lag {}, queued {}",
                s.entries, s.max_lag, s.queued_writes
            ),
        };
        parts.push(format!("{} [{}]", hop.name, detail));
    }
    parts.join("  →  ")
}

pub async fn run(options: DemoOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("syncrelay-demo-")
        .tempdir()?;
    let dir = tmp.path();
    println!("syncrelay demo — an origin, a regional relay and an edge on loopback");
    println!("  data: {} (removed at the end)", dir.display());
    println!("  generating identities (Ed25519 + RSA-3072) for 3 nodes and 2 users...");
    let names = ["origin", "relay", "edge", "alice", "carol"];
    let mut ids: Vec<Identity> = std::thread::scope(|s| {
        let handles: Vec<_> = names.iter().map(|_| s.spawn(Identity::generate)).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("key generation thread"))
            .collect::<Result<_, _>>()
    })?;
    let carol = Arc::new(ids.pop().expect("carol"));
    let alice = Arc::new(ids.pop().expect("alice"));

    let mut directory = DirectoryFile::default();
    directory.tenants.insert(
        TENANT.into(),
        TenantFile {
            users: vec![
                user("CN=alice/O=demo", &alice),
                user("CN=carol/O=demo", &carol),
            ],
            trusted_servers: ["origin", "relay", "edge"]
                .iter()
                .zip(&ids)
                .map(|(n, id)| ServerEntry {
                    name: format!("CN={n}/O=demo"),
                    signing_public_key: id.signing_public_pem.clone(),
                    encryption_public_key: id.encryption_public_pem.clone(),
                })
                .collect(),
            ..TenantFile::default()
        },
    );
    let directory_file = dir.join("directory.yaml");
    std::fs::write(&directory_file, serde_yaml::to_string(&directory)?)?;

    let origin = start_hop("origin", Role::Origin, None, &ids[0], dir, &directory_file).await?;
    let relay = start_hop(
        "relay",
        Role::Relay,
        Some(&origin.url),
        &ids[1],
        dir,
        &directory_file,
    )
    .await?;
    let edge = start_hop(
        "edge",
        Role::Edge,
        Some(&relay.url),
        &ids[2],
        dir,
        &directory_file,
    )
    .await?;
    println!(
        "  origin {}   relay {} (upstream: origin)   edge {} (upstream: relay)",
        origin.url, relay.url, edge.url
    );
    let hops = [origin, relay, edge];

    // The payload key lives only with Alice and Carol (in MindooDB: the tenant key they share).
    let payload_key = payload::random_key();
    let alice_at_edge = user_store(&hops[2].url, "CN=alice/O=demo", alice.clone())?;
    let carol_at_relay = user_store(&hops[1].url, "CN=carol/O=demo", carol.clone())?;

    println!(
        "\nAlice writes {} encrypted, signed notes at the edge:",
        options.entries
    );
    let mut written = Vec::new();
    let mut receipts_from_origin = 0;
    let origin_pem = ids[0].signing_public_pem.clone();
    for start in (0..options.entries).step_by(options.batch.max(1)) {
        let end = (start + options.batch).min(options.entries);
        let batch: Vec<Entry> = (start..end)
            .map(|n| {
                let note = format!("note {n}: meet at the harbour at {} o'clock", 9 + n % 8);
                let sealed = payload::seal(&payload_key, note.as_bytes());
                author_entry(&alice, &format!("doc{}", n / 10), n, sealed)
            })
            .collect();
        let outcome = alice_at_edge.push_entries(batch.clone()).await?;
        anyhow::ensure!(
            outcome.rejected.is_empty(),
            "rejected: {:?}",
            outcome.rejected
        );
        receipts_from_origin += outcome
            .receipts
            .iter()
            .filter(|r| r.received_by_public_key.as_deref() == Some(origin_pem.as_str()))
            .count();
        written.extend(batch.into_iter().map(|e| e.metadata.id));
        println!("  {:>4} written   {}", end, hop_line(&hops).await);
    }

    println!("\nCarol pulls through the relay and decrypts:");
    let deadline = Instant::now() + Duration::from_secs(30);
    let ids_at_relay = loop {
        let have = carol_at_relay.get_all_ids().await?;
        if have.len() >= written.len() || Instant::now() > deadline {
            break have;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let entries = carol_at_relay.get_entries(&ids_at_relay).await?;
    let mut decrypted = 0;
    let mut sample = String::new();
    for e in &entries {
        if let Ok(plain) = payload::open(&payload_key, &e.encrypted_data) {
            decrypted += 1;
            if sample.is_empty() {
                sample = String::from_utf8_lossy(&plain).into_owned();
            }
        }
    }
    println!(
        "  {} entries received, {} decrypted with the tenant key; first: \"{sample}\"",
        entries.len(),
        decrypted
    );
    // Let the last writes settle everywhere before the summary.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let s = crate::roles::status::node_status(&hops[1].state.node).await;
        if s.max_lag == 0 && s.queued_writes == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("  {}", hop_line(&hops).await);

    // What the relay keeps on disk: ciphertext only.
    hops[1].state.node.stores.flush_all().await?;
    let relay_bytes = read_all(&dir.join("relay"))?;
    let plaintext_hits = (0..options.entries)
        .filter(|n| contains(&relay_bytes, format!("note {n}:").as_bytes()))
        .count();
    let key_on_disk = contains(&relay_bytes, &payload_key);
    println!("\nThe relay's data folder: {} KiB; plaintext notes found: {plaintext_hits}; payload key found: {key_on_disk}", relay_bytes.len() / 1024);

    println!("\nSummary");
    println!("  written at the edge      {}", written.len());
    println!("  witnessed by the origin  {receipts_from_origin} receipts returned to Alice through edge and relay");
    println!(
        "  read by Carol at relay   {} ({decrypted} decrypted)",
        entries.len()
    );
    println!(
        "  relay holds plaintext    {}",
        if plaintext_hits == 0 && !key_on_disk {
            "no"
        } else {
            "YES (bug)"
        }
    );
    println!(
        "  took                     {:.1} s",
        started.elapsed().as_secs_f64()
    );
    anyhow::ensure!(
        decrypted == written.len() && plaintext_hits == 0 && !key_on_disk,
        "the demo did not end as expected"
    );
    Ok(())
}

fn read_all(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(read_all(&path)?);
        } else {
            out.extend(std::fs::read(&path).unwrap_or_default());
        }
    }
    Ok(out)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
