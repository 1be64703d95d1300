//! Commands for people: `syncrelay-node sync pull|push` between a local store and a node, with
//! a progress bar, and `syncrelay-node status URL`, a readable table of a node's `/status`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use crate::client::{HttpTransport, RemoteSession, RemoteStore, SessionOptions};
use crate::crypto::keys::Identity;
use crate::status::NodeStatus;
use crate::store::{StorageBackend, StoreRegistry};
use crate::sync::engine::{self, Progress, SyncOptions, SyncReport, SyncState};
use crate::wire::{StoreId, StoreKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Pull,
    Push,
}

pub struct SyncArgs<'a> {
    pub direction: Direction,
    pub url: &'a str,
    pub tenant: &'a str,
    pub db: &'a str,
    pub kind: StoreKind,
    /// Folder of the local store (created when missing).
    pub local: &'a Path,
    /// The engine of a new local store (an existing one keeps its own).
    pub engine: crate::store::engine::EngineKind,
    /// Folder with `signing.pem` and `encryption.pem` of the user (or node) to act as.
    pub keys: &'a Path,
    pub username: &'a str,
    pub ca_file: Option<&'a Path>,
}

/// One pull or push pass; the cursor is kept in the local store, so a repeated run is incremental.
pub async fn sync(args: SyncArgs<'_>) -> anyhow::Result<()> {
    let session = session(
        args.url,
        args.tenant,
        args.keys,
        args.username,
        args.ca_file,
    )?;
    let id = StoreId::new(args.tenant, args.db, args.kind)?;
    std::fs::create_dir_all(args.local)?;
    let registry = StoreRegistry::new(
        StorageBackend::open(args.local, args.engine, 64 << 20)?,
        None,
    );
    let direction = args.direction;
    let report = sync_store(&registry, session, args.url, &id, direction, true).await?;
    let direction = direction.as_str();
    if report.idle {
        println!("{direction} {id}: already up to date (one store-head request)");
    } else {
        println!(
            "{direction} {id}: {} scanned, {} transferred ({} bytes), {} rejected{}",
            report.scanned,
            report.transferred,
            report.bytes,
            report.rejected.len(),
            if report.full_scan { ", full scan" } else { "" }
        );
    }
    for r in &report.rejected {
        println!("  rejected {}: {}", r.id, r.reason);
    }
    Ok(())
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Pull => "pull",
            Direction::Push => "push",
        }
    }
}

/// A session with tenant `tenant` of the node at `url` as the user (or node) whose keys are in
/// `keys`.
pub fn session(
    url: &str,
    tenant: &str,
    keys: &Path,
    username: &str,
    ca_file: Option<&Path>,
) -> anyhow::Result<Arc<RemoteSession>> {
    let identity = Identity::load(&keys.join("signing.pem"), &keys.join("encryption.pem"))
        .context("loading the keys to act as")?;
    let transport = HttpTransport::new(url, ca_file, Duration::from_secs(60))?;
    Ok(Arc::new(RemoteSession::new(
        url,
        Arc::new(transport),
        tenant,
        SessionOptions {
            username: username.into(),
            identity: Arc::new(identity),
            node_id: format!("cli:{username}"),
            max_attempts: 4,
            backoff_base: Duration::from_millis(200),
        },
    )))
}

/// One pull or push pass of store `id` between `registry` (a local store) and the node behind
/// `session`; the cursor is kept in `registry` under the node's URL, so a repeated run is
/// incremental. Flushes the local store before returning.
pub async fn sync_store(
    registry: &StoreRegistry,
    session: Arc<RemoteSession>,
    url: &str,
    id: &StoreId,
    direction: Direction,
    progress: bool,
) -> anyhow::Result<SyncReport> {
    let remote = RemoteStore::new(session, id.clone());
    let local = registry.open(id)?;
    let key = format!("{url}|{}|{id}", direction.as_str());
    let mut state: SyncState = registry
        .load_sync_state(&key)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let bar = if progress {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:40}] {pos}/{len} scanned ({per_sec})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(format!("{} {id}", direction.as_str()));
    let mut on_page = |s: &SyncState, p: &Progress| {
        bar.set_length(p.total);
        bar.set_position(p.scanned);
        if let Ok(bytes) = serde_json::to_vec(s) {
            let _ = registry.save_sync_state(&key, &bytes);
        }
    };
    let options = SyncOptions::default();
    let report = match direction {
        Direction::Pull => {
            engine::pull_changes_from(
                &remote,
                local.as_ref(),
                &mut state,
                options,
                None,
                &mut on_page,
            )
            .await?
        }
        Direction::Push => {
            engine::push_changes_to(local.as_ref(), &remote, &mut state, options, &mut on_page)
                .await?
        }
    };
    bar.finish_and_clear();
    registry.save_sync_state(&key, &serde_json::to_vec(&state)?)?;
    registry.flush_all().await?;
    Ok(report)
}

/// Fetches `URL/status` and prints it as tables.
pub async fn status(url: &str) -> anyhow::Result<()> {
    let url = format!("{}/status", url.trim_end_matches('/'));
    let status: NodeStatus = reqwest::get(&url)
        .await
        .with_context(|| format!("GET {url}"))?
        .error_for_status()?
        .json()
        .await
        .context("decoding /status")?;
    print!("{}", render_status(&status));
    Ok(())
}

/// The table `status` prints (pure, for tests).
pub fn render_status(s: &NodeStatus) -> String {
    let mut out = format!(
        "{} ({}) role={} ready={} entries={} max_lag={} queued={}\n",
        s.name,
        s.node_id,
        s.role.as_str(),
        s.ready,
        s.entries,
        s.max_lag,
        s.queued_writes
    );
    if !s.chain.is_empty() {
        out += &format!("chain: {}\n", s.chain.join(" → "));
    }
    if !s.links.is_empty() {
        out += &format!(
            "\n{:<16} {:<9} {:<10} {:>8} {:>10}  {}\n",
            "LINK", "KIND", "CONNECTED", "LAG", "LAST SYNC", "URL / ERROR"
        );
        for l in &s.links {
            let kind = format!("{:?}", l.kind).to_lowercase();
            let age = l
                .seconds_since_success
                .map(|a| format!("{a}s ago"))
                .unwrap_or_else(|| "never".into());
            let tail = match &l.last_error {
                Some(e) => format!("{} ({e})", l.url),
                None => l.url.clone(),
            };
            out += &format!(
                "{:<16} {:<9} {:<10} {:>8} {:>10}  {tail}\n",
                l.name, kind, l.connected, l.lag, age
            );
        }
    }
    if !s.stores.is_empty() {
        out += &format!(
            "\n{:<40} {:>9} {:>9}  {}\n",
            "STORE", "ENTRIES", "MAX RO", "LINKS (pull lag / push lag)"
        );
        for st in &s.stores {
            let links: Vec<String> = st
                .links
                .iter()
                .map(|l| format!("{}: {}/{}", l.link, l.pull_lag, l.push_lag))
                .collect();
            out += &format!(
                "{:<40} {:>9} {:>9}  {}\n",
                format!("{}/{}/{}", st.tenant, st.db, st.kind),
                st.entries,
                st.max_receipt_order,
                links.join(", ")
            );
        }
    }
    if let Some(c) = &s.cache {
        out += &format!(
            "\ncache: {} entries, {} / {} bytes, {} hits, {} misses, {} evictions, {} upstream fetches\n",
            c.entries, c.bytes, c.max_bytes, c.hits, c.misses, c.evictions, c.upstream_fetches
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_table_shows_the_cache_figures() {
        let status: NodeStatus = serde_json::from_value(serde_json::json!({
            "nodeId": "n1", "name": "edge-1", "role": "edge", "version": "0.1.0",
            "chain": ["n0"], "ready": true, "links": [], "stores": [],
            "cache": {"maxBytes": 1000, "bytes": 600, "entries": 3, "hits": 7, "misses": 3,
                      "evictions": 1, "upstreamFetches": 2},
            "entries": 0, "maxLag": 0, "queuedWrites": 0
        }))
        .unwrap();
        let table = render_status(&status);
        assert!(
            table.starts_with("edge-1 (n1) role=edge ready=true"),
            "{table}"
        );
        assert!(table.contains("chain: n0\n"), "{table}");
        assert!(
            table.contains(
                "cache: 3 entries, 600 / 1000 bytes, 7 hits, 3 misses, 1 evictions, 2 upstream fetches"
            ),
            "{table}"
        );
    }

    #[test]
    fn cache_figures_of_a_node_without_the_fetch_count_still_read() {
        let cache: crate::status::CacheStatus = serde_json::from_value(serde_json::json!({
            "maxBytes": 1, "bytes": 0, "entries": 0, "hits": 0, "misses": 0, "evictions": 0
        }))
        .unwrap();
        assert_eq!(cache.upstream_fetches, 0);
    }
}
