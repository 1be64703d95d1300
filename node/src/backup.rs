//! `syncrelay-node backup` and `restore`: snapshots of every database a node carries, taken over the
//! sync protocol with the node's own identity (the incremental pull of `sync pull`), and pushed back
//! into an empty node.
//!
//! Layout of a backup folder:
//! - `current/`: the sled store the pulls go into; kept between runs, so each run transfers only
//!   what is new.
//! - `snapshots/<name>/`: a copy of `current/` after a run in which every store was pulled
//!   completely (nothing rejected, nothing held back), with `manifest.json` (time, source, stores
//!   and their entry counts). Names are the time in milliseconds, zero-padded, so they sort by
//!   time; a copy in progress is `.partial-<name>` and never counts as a snapshot. Only the newest
//!   `keep` snapshots are kept.
//!
//! A run that fails takes no snapshot. `restore` pushes a snapshot's stores to a node from a
//! scratch copy (the snapshot itself is never written to).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::client::RemoteSession;
use crate::status::NodeStatus;
use crate::store::engine::EngineKind;
use crate::store::{StorageBackend, StoreRegistry};
use crate::tools::{self, Direction};
use crate::wire::{StoreId, StoreKind};

pub const MANIFEST: &str = "manifest.json";
const CURRENT: &str = "current";
const SNAPSHOTS: &str = "snapshots";
const PARTIAL: &str = ".partial-";
/// Stores a node may list in `/status` that one backup run takes (a hostile answer is bounded).
const MAX_STORES: usize = 100_000;

/// Who to act as and where: the node's URL and the identity it knows (its own, as a trusted server).
pub struct Access<'a> {
    pub url: &'a str,
    pub keys: &'a Path,
    pub username: &'a str,
    pub ca_file: Option<&'a Path>,
}

/// What a snapshot holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// When the run finished (Unix milliseconds).
    pub taken_at_ms: i64,
    /// The node it was pulled from.
    pub source: String,
    pub stores: Vec<StoreCount>,
    /// Entries over all stores.
    pub entries: u64,
}

/// What one backup run says about itself in a few hundred bytes: the last line of its output and,
/// on Kubernetes, its pod's termination message (at most 4096 bytes), which the operator reads into
/// the SyncNode's status. A failed run has only `error`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stores: Option<u64>,
    /// The snapshot's folder name under `snapshots/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Room a summary may take: Kubernetes keeps 4096 bytes of a termination message.
pub const SUMMARY_MAX_BYTES: usize = 4096;

impl RunSummary {
    pub fn of(manifest: &Manifest) -> Self {
        RunSummary {
            taken_at_ms: Some(manifest.taken_at_ms),
            entries: Some(manifest.entries),
            stores: Some(manifest.stores.len() as u64),
            snapshot: Some(snapshot_name(manifest.taken_at_ms)),
            error: None,
        }
    }

    /// A failed run; the error text is cut so that the JSON fits `SUMMARY_MAX_BYTES`.
    pub fn failed(error: &str) -> Self {
        // JSON escaping makes at most 6 bytes of one (`\u0001`); the rest is `{"error":""}`.
        let mut end = error.len().min((SUMMARY_MAX_BYTES - 16) / 6);
        while !error.is_char_boundary(end) {
            end -= 1;
        }
        RunSummary {
            error: Some(error[..end].to_string()),
            ..RunSummary::default()
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a summary serialises")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreCount {
    pub tenant: String,
    pub db: String,
    pub kind: StoreKind,
    pub entries: u64,
}

/// The folder name of a snapshot taken at `ms` (sorts by time as text).
pub fn snapshot_name(ms: i64) -> String {
    format!("{:016}", ms.max(0))
}

/// Whether `name` is a complete snapshot's folder name.
fn is_snapshot_name(name: &str) -> bool {
    name.len() == 16 && name.bytes().all(|b| b.is_ascii_digit())
}

/// The snapshots to delete so that the newest `keep` remain (oldest first; names that are not
/// snapshots are never listed).
pub fn to_prune(names: &[String], keep: usize) -> Vec<String> {
    let mut snapshots: Vec<&String> = names.iter().filter(|n| is_snapshot_name(n)).collect();
    snapshots.sort();
    let excess = snapshots.len().saturating_sub(keep);
    snapshots[..excess].iter().map(|n| n.to_string()).collect()
}

/// Complete snapshots under `dir`, oldest first.
pub fn snapshots(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let root = dir.join(SNAPSHOTS);
    if !root.exists() {
        return Ok(Vec::new());
    }
    let mut names: Vec<String> = std::fs::read_dir(&root)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_snapshot_name(n))
        .collect();
    names.sort();
    Ok(names.into_iter().map(|n| root.join(n)).collect())
}

/// A snapshot folder itself, or the newest snapshot of a backup folder.
pub fn resolve_snapshot(path: &Path) -> anyhow::Result<PathBuf> {
    if path.join(MANIFEST).is_file() {
        return Ok(path.to_path_buf());
    }
    snapshots(path)?
        .pop()
        .with_context(|| format!("{} holds no snapshot", path.display()))
}

pub fn read_manifest(snapshot: &Path) -> anyhow::Result<Manifest> {
    let path = snapshot.join(MANIFEST);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("decoding {}", path.display()))
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

async fn node_status(url: &str, ca_file: Option<&Path>) -> anyhow::Result<NodeStatus> {
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)? {
            builder = builder.add_root_certificate(cert);
        }
    }
    let url = format!("{}/status", url.trim_end_matches('/'));
    let status: NodeStatus = builder
        .build()?
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?
        .error_for_status()?
        .json()
        .await
        .context("decoding /status")?;
    anyhow::ensure!(
        status.stores.len() <= MAX_STORES,
        "{url} lists {} stores, more than {MAX_STORES}",
        status.stores.len()
    );
    Ok(status)
}

/// Sessions per tenant (each session logs in to one tenant).
struct Sessions<'a> {
    access: &'a Access<'a>,
    by_tenant: BTreeMap<String, Arc<RemoteSession>>,
}

impl Sessions<'_> {
    fn get(&mut self, tenant: &str) -> anyhow::Result<Arc<RemoteSession>> {
        if let Some(s) = self.by_tenant.get(tenant) {
            return Ok(s.clone());
        }
        let a = self.access;
        let s = tools::session(a.url, tenant, a.keys, a.username, a.ca_file)?;
        self.by_tenant.insert(tenant.to_string(), s.clone());
        Ok(s)
    }
}

/// Pulls every store the node lists in `/status` into `dir/current`, then copies it to a new
/// snapshot and deletes all but the newest `keep`. Fails, taking no snapshot, when a store cannot
/// be pulled completely.
pub async fn backup(access: &Access<'_>, dir: &Path, keep: usize) -> anyhow::Result<Manifest> {
    anyhow::ensure!(keep >= 1, "keep at least one snapshot");
    let status = node_status(access.url, access.ca_file).await?;
    let current = dir.join(CURRENT);
    std::fs::create_dir_all(&current)?;
    let mut stores = Vec::new();
    {
        let registry = StoreRegistry::new(
            StorageBackend::open(&current, EngineKind::default(), 64 << 20)?,
            None,
        );
        let mut sessions = Sessions {
            access,
            by_tenant: BTreeMap::new(),
        };
        for s in &status.stores {
            let kind = StoreKind::parse(&s.kind)
                .with_context(|| format!("{}/{}: unknown store kind {}", s.tenant, s.db, s.kind))?;
            let id = StoreId::new(&s.tenant, &s.db, kind)?;
            let session = sessions.get(&id.tenant_id)?;
            let report =
                tools::sync_store(&registry, session, access.url, &id, Direction::Pull, false)
                    .await
                    .with_context(|| format!("pulling {id}"))?;
            anyhow::ensure!(
                report.rejected.is_empty() && report.held == 0,
                "{id}: {} entries rejected, {} held back: the snapshot would be incomplete",
                report.rejected.len(),
                report.held
            );
            let entries = registry.open(&id)?.stats().await?.entries;
            tracing::info!(store = %id, transferred = report.transferred, entries, "pulled");
            stores.push(StoreCount {
                tenant: id.tenant_id.clone(),
                db: id.db_id.clone(),
                kind,
                entries,
            });
        }
        registry.flush_all().await?;
    }
    let manifest = Manifest {
        taken_at_ms: crate::clock::now_ms(),
        source: access.url.to_string(),
        entries: stores.iter().map(|s| s.entries).sum(),
        stores,
    };
    let root = dir.join(SNAPSHOTS);
    std::fs::create_dir_all(&root)?;
    let name = snapshot_name(manifest.taken_at_ms);
    let partial = root.join(format!("{PARTIAL}{name}"));
    copy_dir(&current, &partial).context("copying the store into a snapshot")?;
    std::fs::write(
        partial.join(MANIFEST),
        serde_json::to_vec_pretty(&manifest)?,
    )?;
    std::fs::rename(&partial, root.join(&name))?;
    let names: Vec<String> = std::fs::read_dir(&root)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    for old in to_prune(&names, keep) {
        std::fs::remove_dir_all(root.join(&old))
            .with_context(|| format!("deleting snapshot {old}"))?;
    }
    Ok(manifest)
}

/// Pushes every store of `snapshot` to the node (from a scratch copy) and returns its manifest.
pub async fn restore(access: &Access<'_>, snapshot: &Path) -> anyhow::Result<Manifest> {
    let manifest = read_manifest(snapshot)?;
    let scratch = tempfile::tempdir()?;
    copy_dir(snapshot, scratch.path()).context("copying the snapshot")?;
    let registry = StoreRegistry::new(
        StorageBackend::open(scratch.path(), EngineKind::default(), 64 << 20)?,
        None,
    );
    let mut sessions = Sessions {
        access,
        by_tenant: BTreeMap::new(),
    };
    for s in &manifest.stores {
        let id = StoreId::new(&s.tenant, &s.db, s.kind)?;
        let session = sessions.get(&id.tenant_id)?;
        let report = tools::sync_store(&registry, session, access.url, &id, Direction::Push, false)
            .await
            .with_context(|| format!("pushing {id}"))?;
        anyhow::ensure!(
            report.rejected.is_empty(),
            "{id}: the node rejected {} entries, first: {}",
            report.rejected.len(),
            report.rejected[0].reason
        );
        tracing::info!(store = %id, transferred = report.transferred, "pushed");
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_time_and_only_the_newest_are_kept() {
        let names: Vec<String> = [5_i64, 1_000, 30, 2_000_000_000_000]
            .iter()
            .map(|ms| snapshot_name(*ms))
            .chain([".partial-0000000000000001".into(), "notes.txt".into()])
            .collect();
        assert_eq!(snapshot_name(30), "0000000000000030");
        assert_eq!(
            to_prune(&names, 2),
            [snapshot_name(5), snapshot_name(30)],
            "oldest first; partial copies and other files are never snapshots"
        );
        assert!(to_prune(&names, 4).is_empty());
        assert_eq!(to_prune(&names, 1).len(), 3);
    }

    #[test]
    fn a_failed_run_summary_fits_a_termination_message() {
        for text in [
            "x".repeat(100_000),
            "\u{1}".repeat(100_000),
            "é\"".repeat(50_000),
        ] {
            let json = RunSummary::failed(&text).to_json();
            assert!(json.len() <= SUMMARY_MAX_BYTES, "{} bytes", json.len());
            let back: RunSummary = serde_json::from_str(&json).unwrap();
            assert!(text.starts_with(back.error.as_deref().unwrap()));
        }
        let ok = RunSummary::of(&Manifest {
            taken_at_ms: 42,
            source: "http://origin:1661".into(),
            stores: vec![],
            entries: 7,
        });
        assert_eq!(
            ok.to_json(),
            r#"{"takenAtMs":42,"entries":7,"stores":0,"snapshot":"0000000000000042"}"#
        );
    }

    #[test]
    fn a_snapshot_path_or_the_newest_of_a_backup_folder() {
        let dir = tempfile::tempdir().unwrap();
        assert!(resolve_snapshot(dir.path()).is_err(), "empty folder");
        for name in [snapshot_name(10), snapshot_name(20)] {
            let s = dir.path().join(SNAPSHOTS).join(name);
            std::fs::create_dir_all(&s).unwrap();
            std::fs::write(s.join(MANIFEST), "{}").unwrap();
        }
        std::fs::create_dir_all(dir.path().join(SNAPSHOTS).join(".partial-0000000000000099"))
            .unwrap();
        let newest = dir.path().join(SNAPSHOTS).join(snapshot_name(20));
        assert_eq!(resolve_snapshot(dir.path()).unwrap(), newest);
        assert_eq!(resolve_snapshot(&newest).unwrap(), newest);
    }
}
