//! The background side of relays and peers: keeps every carried store in sync with the node's
//! links, and forwards client writes upstream.
//!
//! What triggers a pass for a store: the link's SSE change feed (pull), a local change (push), and a
//! periodic head check (both; the fallback when a feed is down). Passes with one link run one store
//! at a time per trigger batch; cursors are persisted per (link, direction, store) with both epochs,
//! so a restart resumes where it stopped and an idle pass costs one store-head request.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;

use super::{Node, SharedNode};
use crate::client::transport::SseParser;
use crate::config::UpstreamMode;
use crate::directory::Directory;
use crate::ingest::{self, IngestInput};
use crate::status::LinkKind;
use crate::store::{ContentAddressedStore, PushOutcome, StoreError};
use crate::sync::engine::{self, Admission, Admitted, SyncOptions, SyncState};
use crate::sync::link_state::Observation;
use crate::sync::links::{Link, LinkError};
use crate::wire::{ChangeEventData, Entry, StoreId, StoreKind};

/// Which directions a store needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Want {
    pub pull: bool,
    pub push: bool,
}

/// Stores waiting for a pass, and the bell that wakes the loop.
#[derive(Default)]
pub struct SyncQueue {
    pending: Mutex<HashMap<StoreId, Want>>,
    wake: Notify,
}

/// Stores waiting at once; a request beyond is dropped (the next touch asks again). Readers can
/// name databases faster than a pass opens them; this bounds what they can queue.
const MAX_PENDING: usize = 10_000;

impl SyncQueue {
    pub fn request(&self, id: StoreId, want: Want) {
        let mut pending = self.pending.lock().expect("pending");
        if pending.len() >= MAX_PENDING && !pending.contains_key(&id) {
            return;
        }
        let w = pending.entry(id).or_default();
        w.pull |= want.pull;
        w.push |= want.push;
        drop(pending);
        self.wake.notify_one();
    }

    pub fn is_queued(&self, id: &StoreId) -> bool {
        self.pending.lock().expect("pending").contains_key(id)
    }

    fn take(&self) -> HashMap<StoreId, Want> {
        std::mem::take(&mut *self.pending.lock().expect("pending"))
    }
}

/// Stores a node with upstreams has caught up on since it started: a pull pass with each ended
/// with nothing left past its cursor. Until then a relay serves the store from its upstream, and
/// readiness waits for every carried store.
#[derive(Default)]
pub struct CaughtUp(Mutex<HashSet<StoreId>>);

impl CaughtUp {
    pub fn contains(&self, id: &StoreId) -> bool {
        self.0.lock().expect("caught up").contains(id)
    }

    fn insert(&self, id: &StoreId) {
        let mut set = self.0.lock().expect("caught up");
        if !set.contains(id) {
            tracing::info!(store = %id, "caught up with the upstream; serving the local copy");
            set.insert(id.clone());
        }
    }
}

/// Verifies pulled entries like pushed ones (content hash, size, signature), without stamping: a
/// relay passes its upstream's receipts through.
///
/// Authors: an entry the upstream accepted is history, so its author needs to be *known* to this
/// node's directory, not active — revoking a user stops their new writes, it does not unmake what
/// they wrote before (the reference server does not re-check pulled entries at all). An author
/// the directory does not know (yet), or a tenant it does not carry (yet), holds the entry back:
/// it is retried when the directory changes, never passed over.
///
/// What is stored is timed: now − the origin's receipt time, per entry, into the link's delay
/// histogram and window.
pub struct DirectoryAdmission<'a> {
    pub node: SharedNode,
    pub directory: Arc<Directory>,
    pub store: StoreId,
    pub link: &'a Link,
}

impl Admission for DirectoryAdmission<'_> {
    fn admit(&self, entries: Vec<Entry>) -> Admitted {
        let Some(tenant) = self.directory.tenant(&self.store.tenant_id) else {
            return Admitted {
                held: entries.into_iter().map(|e| e.metadata.id).collect(),
                ..Admitted::default()
            };
        };
        let input = IngestInput {
            directory: tenant,
            db_id: &self.store.db_id,
            witness: None,
            now_ms: crate::clock::now_ms(),
            history: true,
        };
        let plan = ingest::plan(&input, entries, &HashMap::new());
        let mut admitted = Admitted {
            accepted: plan.accepted,
            ..Admitted::default()
        };
        for (reason, rejection) in plan.reasons.into_iter().zip(plan.rejected) {
            if reason == ingest::RejectReason::UntrustedAuthor {
                tracing::info!(link = %self.link.name, store = %self.store, id = %rejection.id,
                    "entry from a link held back: its author is not in this node's directory yet");
                admitted.held.push(rejection.id);
                continue;
            }
            self.node
                .metrics
                .verification_failures
                .with_label_values(&[reason.label()])
                .inc();
            tracing::warn!(link = %self.link.name, store = %self.store, id = %rejection.id,
                reason = %rejection.reason, "entry from a link refused for good");
            admitted.rejected.push(rejection);
        }
        admitted
    }

    fn generation(&self) -> String {
        self.directory
            .tenant(&self.store.tenant_id)
            .map_or_else(|| "absent".into(), |t| t.fingerprint())
    }

    fn stored(&self, received_at: &[Option<i64>]) {
        let now = crate::clock::now_ms();
        let name = self.link.name.as_str();
        let metrics = &self.node.metrics;
        let delays: Vec<i64> = received_at.iter().flatten().map(|t| now - t).collect();
        let histogram = metrics.replication_delay.with_label_values(&[name]);
        for d in &delays {
            histogram.observe(*d.max(&0) as f64 / 1000.0);
        }
        let unmeasured = (received_at.len() - delays.len()) as u64;
        if unmeasured > 0 {
            metrics
                .replication_unmeasured
                .with_label_values(&[name])
                .inc_by(unmeasured);
        }
        let skewed = self.link.record_delays(delays);
        if skewed > 0 {
            metrics
                .replication_clock_skew
                .with_label_values(&[name])
                .inc_by(skewed);
        }
    }
}

fn state_key(link: &str, direction: &str, id: &StoreId) -> String {
    format!("{link}|{direction}|{id}")
}

fn load_state(node: &Node, key: &str) -> SyncState {
    node.stores
        .load_sync_state(key)
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

fn save_state(node: &Node, key: &str, value: &SyncState) {
    let bytes = serde_json::to_vec(value).expect("sync state serialises");
    if let Err(e) = node.stores.save_sync_state(key, &bytes) {
        tracing::warn!(error = %e, key, "cannot persist a sync cursor; the next pass rescans more");
    }
}

/// The links a pass for one store uses: every peer, plus the upstreams per mode (the first
/// reachable one in failover order, every one when merged).
fn links_for_pass(node: &Node) -> Vec<Arc<Link>> {
    let Some(links) = &node.links else {
        return Vec::new();
    };
    let mut out: Vec<Arc<Link>> = match links.mode {
        UpstreamMode::Merged => links.upstreams.clone(),
        UpstreamMode::Failover => links.upstream_order(),
    };
    out.extend(links.peers.iter().cloned());
    out
}

/// Runs one pull and/or push pass of `id` with `link`.
async fn sync_with_link(
    node: &SharedNode,
    link: &Link,
    id: &StoreId,
    want: Want,
) -> Result<(), StoreError> {
    let local = node.stores.open(id)?;
    let remote = link.store(id);
    let options = SyncOptions {
        batch_size: node.config.sync.batch_size,
        batch_bytes: node.config.sync.batch_bytes,
        max_in_flight: node.config.sync.max_in_flight,
    };
    if want.pull {
        let key = state_key(&link.name, "pull", id);
        let mut cursor = load_state(node, &key);
        let admission = DirectoryAdmission {
            node: node.clone(),
            directory: node.directory.current(),
            store: id.clone(),
            link,
        };
        let lag_before = link.figures(id).pull_lag;
        // A long pass (a large catch-up) is movement page by page, not only when it ends.
        let mut persist = |s: &SyncState, p: &engine::Progress| {
            save_state(node, &key, s);
            if p.scanned > 0 {
                link.note_movement();
            }
        };
        let result = engine::pull_changes_from(
            remote.as_ref(),
            local.as_ref(),
            &mut cursor,
            options,
            Some(&admission),
            &mut persist,
        )
        .await;
        let report = match result {
            Ok(report) => report,
            Err(e) => {
                observe_failed_pull(link, remote.as_ref(), id, &cursor, &e, lag_before).await;
                return Err(e);
            }
        };
        save_state(node, &key, &cursor);
        if link.kind == LinkKind::Upstream && report.lag == 0 {
            node.caught_up.insert(id);
        }
        record_pass(node, link, id, Direction::Pull, &report);
        link.observe(Observation::Reachable {
            lag: link.known_pull_lag(),
            moved: report.transferred > 0 || report.lag < lag_before,
            error: link.pull_outcome(id, None),
        });
    }
    if want.push {
        // Everything queued before this pass starts is delivered when it succeeds.
        let queued_at_start = queued_for(node, id);
        let key = state_key(&link.name, "push", id);
        let mut cursor = load_state(node, &key);
        let mut persist = |s: &SyncState, _: &engine::Progress| save_state(node, &key, s);
        let report = engine::push_changes_to(
            local.as_ref(),
            remote.as_ref(),
            &mut cursor,
            options,
            &mut persist,
        )
        .await?;
        save_state(node, &key, &cursor);
        if link.kind == LinkKind::Upstream && queued_at_start > 0 {
            let _guard = QUEUED_LOCK.lock().expect("queued lock");
            set_queued(
                node,
                id,
                queued_for(node, id).saturating_sub(queued_at_start),
            );
        }
        for r in &report.rejected {
            tracing::warn!(link = %link.name, store = %id, id = %r.id, reason = %r.reason,
                "upstream rejected an entry");
        }
        record_pass(node, link, id, Direction::Push, &report);
    }
    Ok(())
}

/// No HTTP answer at all, or a gateway's answer that the node behind it did not give one.
fn unreachable(error: &StoreError) -> bool {
    matches!(
        error,
        StoreError::Upstream {
            status: None,
            transient: true,
            ..
        } | StoreError::Upstream {
            status: Some(502..=504),
            ..
        }
    )
}

/// A pull pass failed: tells the link's state whether the upstream still answers (one store-head
/// request, unless the failure already says it does not) and how far behind the store is now
/// (the cursor keeps what the pass stored before it failed).
async fn observe_failed_pull(
    link: &Link,
    remote: &dyn ContentAddressedStore,
    id: &StoreId,
    cursor: &SyncState,
    error: &StoreError,
    lag_before: u64,
) {
    let failed = |error: &StoreError| Observation::Unreachable {
        error: error.to_string(),
    };
    if matches!(
        error,
        StoreError::Upstream {
            status: None,
            transient: true,
            ..
        }
    ) {
        return link.observe(failed(error));
    }
    let observation = match remote.get_store_head().await {
        Ok(head) => {
            let lag = cursor.lag_to(&head);
            link.update_figures(id, |f| {
                f.pull_lag = lag;
                f.pull_lag_known = true;
            });
            Observation::Reachable {
                lag: link.known_pull_lag(),
                moved: lag < lag_before,
                error: link.pull_outcome(id, Some(error.to_string())),
            }
        }
        Err(e) if unreachable(&e) => failed(&e),
        Err(_) => Observation::Reachable {
            lag: None,
            moved: false,
            error: link.pull_outcome(id, Some(error.to_string())),
        },
    };
    link.observe(observation);
}

#[derive(Clone, Copy)]
enum Direction {
    Pull,
    Push,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Direction::Pull => "pull",
            Direction::Push => "push",
        }
    }
}

/// Metrics, log line and per-link figures of one successful pass.
fn record_pass(
    node: &Node,
    link: &Link,
    id: &StoreId,
    direction: Direction,
    report: &engine::SyncReport,
) {
    let metrics = &node.metrics;
    let dir = direction.label();
    metrics
        .sync_entries
        .with_label_values(&[&link.name, dir])
        .inc_by(report.transferred);
    metrics
        .sync_bytes
        .with_label_values(&[&link.name, dir])
        .inc_by(report.bytes);
    metrics
        .bloom_rechecks
        .with_label_values(&[&link.name])
        .inc_by(report.bloom_false_positives);
    metrics
        .sync_lag
        .with_label_values(&[&link.name, &id.tenant_id, &id.db_id, id.kind.as_str(), dir])
        .set(report.lag as i64);
    metrics
        .held_entries
        .with_label_values(&[&link.name, &id.tenant_id, &id.db_id, id.kind.as_str(), dir])
        .set(report.held as i64);
    if report.transferred > 0 {
        tracing::info!(link = %link.name, store = %id, entries = report.transferred,
            full_scan = report.full_scan, direction = dir, "synced");
    }
    link.update_figures(id, |f| {
        match direction {
            Direction::Pull => {
                f.pull_lag = report.lag;
                f.pull_lag_known = true;
                f.pulled += report.transferred;
                f.pull_held = report.held;
            }
            Direction::Push => {
                f.push_lag = report.lag;
                f.pushed += report.transferred;
                f.push_held = report.held;
            }
        }
        f.full_scans += u64::from(report.full_scan);
        f.last_sync_ms = Some(crate::clock::now_ms());
    });
}

/// Counts a failed pass and logs it once per new failure of this (link, store), not once per
/// retry of the same outage.
fn record_failure(node: &Node, link: &Link, id: &StoreId, error: &StoreError) {
    let kind = if error.is_transient() {
        "transient"
    } else {
        "permanent"
    };
    node.metrics
        .sync_errors
        .with_label_values(&[&link.name, kind])
        .inc();
    if link.record_store_error(id, error) {
        tracing::warn!(link = %link.name, store = %id, error = %error, "sync pass failed");
    } else {
        tracing::debug!(link = %link.name, store = %id, error = %error, "sync pass failed again");
    }
}

/// One store, all its links.
async fn sync_store(node: &SharedNode, id: &StoreId, want: Want) {
    let own_id = node.node_id.clone();
    let failover = node
        .links
        .as_ref()
        .is_some_and(|l| l.mode == UpstreamMode::Failover);
    let mut upstream_served = false;
    for link in links_for_pass(node) {
        // Failover: one healthy upstream is enough; the others are skipped, peers are not.
        if failover && upstream_served && link.kind == LinkKind::Upstream {
            continue;
        }
        match link.check_chain(&own_id).await {
            Ok(_) => {}
            Err(LinkError::Cycle { .. }) if link.kind == LinkKind::Peer => {
                // The replica list of a node set names every pod, this one included: nothing
                // to pull from oneself.
                tracing::debug!(link = %link.name, "this peer is this node itself; skipped");
                link.observe(Observation::Reachable {
                    lag: Some(0),
                    moved: false,
                    error: None,
                });
                continue;
            }
            Err(e) if link.kind == LinkKind::Upstream => {
                tracing::debug!(error = %e, "not syncing with this upstream");
                link.observe(Observation::Unreachable {
                    error: e.to_string(),
                });
                node.metrics
                    .sync_errors
                    .with_label_values(&[&link.name, "cycle_or_unreachable"])
                    .inc();
                continue;
            }
            // A peer that is unreachable right now: the pass below records the failure.
            Err(_) => {}
        }
        match sync_with_link(node, &link, id, want).await {
            Ok(()) => {
                link.record_store_success(id);
                upstream_served |= link.kind == LinkKind::Upstream;
            }
            Err(e) => record_failure(node, &link, id, &e),
        }
    }
}

/// Entries held back over all links and stores (see `StoreFigures::held`).
pub fn held_entries(node: &Node) -> u64 {
    let Some(links) = &node.links else {
        return 0;
    };
    node.stores
        .opened()
        .iter()
        .map(|s| links.all().map(|l| l.figures(s.id()).held()).sum::<u64>())
        .sum()
}

/// Carried stores a relay has not caught up on since it started (0 for other roles): while any
/// is left the relay is not ready.
pub fn catching_up(node: &Node) -> usize {
    if node.config.role != crate::config::Role::Relay {
        return 0;
    }
    carried_stores(node)
        .iter()
        .filter(|id| !node.caught_up.contains(id))
        .count()
}

/// Stores the node carries: configured databases (both kinds) and every store opened locally.
fn carried_stores(node: &Node) -> HashSet<StoreId> {
    let mut out: HashSet<StoreId> = node
        .stores
        .opened()
        .iter()
        .map(|s| s.id().clone())
        .collect();
    for d in &node.config.databases {
        for kind in [StoreKind::Docs, StoreKind::Attachments] {
            if let Ok(id) = StoreId::new(&d.tenant, &d.db, kind) {
                out.insert(id);
            }
        }
    }
    out
}

/// Follows one link's change feed for one tenant and store kind and hands every `change` event to
/// `on_change`. Reconnects with backoff (1 s doubling to 60 s, reset on each event).
async fn follow_feed(
    link: Arc<Link>,
    tenant: String,
    kind: StoreKind,
    on_change: impl Fn(StoreId, ChangeEventData) + Send + 'static,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let session = link.session(&tenant);
        match session.open_events(kind).await {
            Ok(mut stream) => {
                let mut parser = SseParser::default();
                while let Some(chunk) = stream.body.next().await {
                    let Ok(chunk) = chunk else { break };
                    for (event, data) in parser.feed(&chunk) {
                        backoff = Duration::from_secs(1);
                        if event != "change" {
                            continue;
                        }
                        let Ok(change) = serde_json::from_str::<ChangeEventData>(&data) else {
                            continue;
                        };
                        if let Ok(id) = StoreId::new(&tenant, &change.db_id, change.store_kind) {
                            on_change(id, change);
                        }
                    }
                }
            }
            Err(e) => {
                tracing::debug!(link = %link.name, %tenant, error = %e, "change feed unavailable");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}

/// The upstream change feeds a node without a local copy (edge, passthrough) relays to its own
/// subscribers: one follower per (upstream, tenant, store kind), started by the first subscriber
/// and kept for the life of the process. Its events carry the upstream's head, which is the head
/// such a node serves.
#[derive(Default)]
pub struct UpstreamFeeds {
    followed: Mutex<HashSet<(String, String, StoreKind)>>,
}

impl UpstreamFeeds {
    /// Makes sure the change events of `tenant`'s `kind` stores at every upstream reach this node's
    /// change feed.
    pub fn follow(node: &SharedNode, tenant: &str, kind: StoreKind) {
        let Some(links) = node.links.clone() else {
            return;
        };
        for link in links.upstreams.iter() {
            let key = (link.name.clone(), tenant.to_string(), kind);
            if !node
                .upstream_feeds
                .followed
                .lock()
                .expect("followed feeds")
                .insert(key)
            {
                continue;
            }
            let relayed = node.clone();
            tokio::spawn(follow_feed(
                link.clone(),
                tenant.to_string(),
                kind,
                move |id, change| {
                    relayed.stores.announce(crate::store::StoreChange {
                        store: id,
                        head: crate::wire::StoreHead {
                            epoch: change.epoch,
                            max_receipt_order: change.max_receipt_order,
                        },
                    })
                },
            ));
        }
    }
}

/// Nodes without a local copy (edge, passthrough) only watch their upstreams: reachability and
/// chain (cycle) checks, every sync interval.
async fn probe_upstreams(node: SharedNode, shutdown: impl std::future::Future<Output = ()>) {
    let Some(links) = node.links.clone() else {
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_millis(node.config.sync.interval_ms));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        check_upstreams(&node, &links.upstreams, true).await;
    }
}

/// Reads each upstream's chain (cached for a while by the link) and records the outcome; a link
/// that would close a cycle is marked and skipped from then on.
///
/// Nodes without a local copy (`probe`) have nothing to pull: an upstream that answers is
/// current for them. Relays learn their links' state from their passes instead.
async fn check_upstreams(node: &Node, upstreams: &[Arc<Link>], probe: bool) {
    for link in upstreams {
        match link.check_chain(&node.node_id).await {
            Ok(_) if probe => {
                link.record_success();
                link.observe(Observation::Reachable {
                    lag: Some(0),
                    moved: false,
                    error: None,
                });
            }
            Ok(_) => {}
            Err(e) => {
                link.observe(Observation::Unreachable {
                    error: e.to_string(),
                });
                let new = link.record_error(&StoreError::Upstream {
                    upstream: link.name.clone(),
                    message: e.to_string(),
                    status: None,
                    transient: true,
                });
                if new {
                    tracing::warn!(error = %e, "upstream check failed");
                }
            }
        }
    }
}

/// The background work of a node with links; returns when `shutdown` resolves.
pub async fn run(node: SharedNode, shutdown: impl std::future::Future<Output = ()>) {
    let Some(links) = node.links.clone() else {
        return;
    };
    if !node.config.role.has_local_copy() {
        return probe_upstreams(node, shutdown).await;
    }
    let mut changes = node.stores.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(node.config.sync.interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut feeds: HashSet<(String, String, StoreKind)> = HashSet::new();
    let mut feed_tasks = Vec::new();
    tokio::pin!(shutdown);
    loop {
        let everything = tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => true,
            change = changes.recv() => {
                if let Ok(change) = change {
                    node.sync_queue.request(change.store, Want { pull: false, push: true });
                }
                false
            }
            _ = node.sync_queue.wake.notified() => false,
        };
        let mut work = node.sync_queue.take();
        if everything {
            // A node that carries no store yet has no sync pass to prove its upstreams: their
            // answer to the chain check is all there is (else a failed first check, made before
            // the upstream was up, would keep it unready for good).
            let carried = carried_stores(&node);
            check_upstreams(&node, &links.upstreams, carried.is_empty()).await;
            for id in carried {
                work.insert(
                    id,
                    Want {
                        pull: true,
                        push: true,
                    },
                );
            }
        }
        // Subscribe to the change feeds of every tenant carried.
        let tenants: HashSet<String> = carried_stores(&node)
            .into_iter()
            .map(|id| id.tenant_id)
            .collect();
        for link in links.all() {
            for tenant in &tenants {
                for kind in [StoreKind::Docs, StoreKind::Attachments] {
                    if feeds.insert((link.name.clone(), tenant.clone(), kind)) {
                        let queue = node.clone();
                        feed_tasks.push(tokio::spawn(follow_feed(
                            link.clone(),
                            tenant.clone(),
                            kind,
                            move |id, _| {
                                queue.sync_queue.request(
                                    id,
                                    Want {
                                        pull: true,
                                        push: false,
                                    },
                                )
                            },
                        )));
                    }
                }
            }
        }
        let mut ids: Vec<(StoreId, Want)> = work.into_iter().collect();
        ids.sort_by_key(|(id, _)| id.to_string());
        for (id, want) in ids {
            sync_store(&node, &id, want).await;
        }
        update_queue_gauge(&node).await;
    }
    for task in feed_tasks {
        task.abort();
    }
}

/// Serialises updates of the queued-writes figures (read-modify-write).
static QUEUED_LOCK: Mutex<()> = Mutex::new(());

fn queued_key(id: &StoreId) -> String {
    format!("queued|{id}")
}

fn queued_for(node: &Node, id: &StoreId) -> u64 {
    node.stores
        .load_sync_state(&queued_key(id))
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(0)
}

fn set_queued(node: &Node, id: &StoreId, value: u64) {
    let bytes = serde_json::to_vec(&value).expect("serialises");
    if let Err(e) = node.stores.save_sync_state(&queued_key(id), &bytes) {
        tracing::warn!(error = %e, "cannot persist the queued-writes figure");
    }
}

/// Counts client writes a relay kept without its upstream's confirmation (the data itself is in
/// the local store; the push pass delivers it).
pub fn note_queued(node: &Node, id: &StoreId, entries: u64) {
    let _guard = QUEUED_LOCK.lock().expect("queued lock");
    set_queued(node, id, queued_for(node, id) + entries);
    node.sync_queue.request(
        id.clone(),
        Want {
            pull: false,
            push: true,
        },
    );
}

/// Client writes awaiting the upstream, over all stores.
pub async fn queued_writes(node: &Node) -> u64 {
    node.stores
        .opened()
        .iter()
        .map(|s| queued_for(node, s.id()))
        .sum()
}

async fn update_queue_gauge(node: &Node) {
    if let Some(first) = node.links.as_ref().and_then(|l| l.upstreams.first()) {
        let queued = queued_writes(node).await;
        node.metrics
            .queued_writes
            .with_label_values(&[&first.name])
            .set(queued as i64);
    }
}

/// A relay's client write: forwarded to the first reachable upstream within the forward timeout.
/// `Ok(None)` means no upstream answered in time: the caller keeps the entries locally and the
/// sync loop forwards them later.
pub async fn forward_writes(node: &Node, id: &StoreId, entries: Vec<Entry>) -> Option<PushOutcome> {
    let links = node.links.as_ref()?;
    let deadline = Duration::from_millis(node.config.sync.forward_timeout_ms);
    for link in links.upstream_order() {
        let remote = link.store(id);
        match tokio::time::timeout(deadline, remote.push_entries(entries.clone())).await {
            Ok(Ok(outcome)) => {
                link.record_success();
                return Some(outcome);
            }
            Ok(Err(e)) => {
                // Whatever went wrong upstream, the write is not lost: it is kept and queued.
                link.record_error(&e);
                tracing::warn!(link = %link.name, error = %e, "upstream did not take the write; trying the next");
            }
            Err(_) => {
                tracing::warn!(link = %link.name, "upstream too slow; queueing the write");
            }
        }
    }
    None
}
