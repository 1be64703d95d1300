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
use crate::sync::engine::{self, Progress, SyncOptions, SyncState};
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
    let identity = Identity::load(
        &args.keys.join("signing.pem"),
        &args.keys.join("encryption.pem"),
    )
    .context("loading the keys to act as")?;
    let transport = HttpTransport::new(args.url, args.ca_file, Duration::from_secs(60))?;
    let session = RemoteSession::new(
        args.url,
        Arc::new(transport),
        args.tenant,
        SessionOptions {
            username: args.username.into(),
            identity: Arc::new(identity),
            node_id: format!("cli:{}", args.username),
            max_attempts: 4,
            backoff_base: Duration::from_millis(200),
        },
    );
    let id = StoreId::new(args.tenant, args.db, args.kind)?;
    let remote = RemoteStore::new(Arc::new(session), id.clone());
    std::fs::create_dir_all(args.local)?;
    let registry = StoreRegistry::new(
        StorageBackend::open(args.local, args.engine, 64 << 20)?,
        None,
    );
    let local = registry.open(&id)?;
    let direction = match args.direction {
        Direction::Pull => "pull",
        Direction::Push => "push",
    };
    let key = format!("{}|{direction}|{id}", args.url);
    let mut state: SyncState = registry
        .load_sync_state(&key)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:40}] {pos}/{len} scanned ({per_sec})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(format!("{direction} {id}"));
    let mut on_page = |s: &SyncState, p: &Progress| {
        bar.set_length(p.total);
        bar.set_position(p.scanned);
        if let Ok(bytes) = serde_json::to_vec(s) {
            let _ = registry.save_sync_state(&key, &bytes);
        }
    };
    let options = SyncOptions::default();
    let report = match args.direction {
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
