//! The node's links to other nodes (upstreams and peers): one HTTP transport per link, one
//! authenticated session per tenant, one [`RemoteStore`] per store, and what is known about each
//! link's health and chain. [`Links`] also chooses which upstream serves a request (failover order).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::delay_window::DelayWindow;
use super::link_state::{LinkTracker, LinkVerdict, Observation};
use crate::client::transport::{Method, TransportRequest};
use crate::client::{HttpTransport, RemoteSession, RemoteStore, SessionOptions, Transport};
use crate::config::{NodeConfig, RemoteConfig, UpstreamMode};
use crate::status::{DelayStatus, LinkKind, LinkStatus, NodeStatus, StoreLinkStatus};
use crate::store::StoreError;
use crate::wire::StoreId;

/// How long a link that failed transiently is skipped in failover order.
const DOWN_FOR: Duration = Duration::from_secs(15);
/// How often the upstream's chain is re-read for cycle detection.
const CHAIN_REFRESH: Duration = Duration::from_secs(30);
/// Replication delays are summarised over the last 5 minutes, in 10 s slots.
const DELAY_SLOT_MS: i64 = 10_000;
const DELAY_SLOTS: usize = 30;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("link {0}: {1}")]
    Transport(String, String),
    #[error(
        "link {link}: joining it would close a cycle (this node {node} is already upstream of it: {chain:?})"
    )]
    Cycle {
        link: String,
        node: String,
        chain: Vec<String>,
    },
}

#[derive(Default)]
struct Health {
    connected: bool,
    last_success_ms: Option<i64>,
    last_error: Option<String>,
    down_until: Option<Instant>,
    node_id: Option<String>,
    chain: Vec<String>,
    chain_checked: Option<Instant>,
    cycle: bool,
}

/// Per (link, store) sync figures.
#[derive(Debug, Clone, Default)]
pub struct StoreFigures {
    pub pull_lag: u64,
    pub push_lag: u64,
    pub last_sync_ms: Option<i64>,
    pub pulled: u64,
    pub pushed: u64,
    /// Passes that started from the beginning (first sync or an epoch change).
    pub full_scans: u64,
    /// Entries held back for a reason that can change, retried later: pulled ones whose author
    /// this node's directory does not know yet, pushed ones the upstream refused as untrusted.
    pub pull_held: u64,
    pub push_held: u64,
    /// `pull_lag` was learned since the link last became reachable (a pull pass finished, or a
    /// failed one read the upstream's head); false again once it is unreachable.
    pub pull_lag_known: bool,
}

impl StoreFigures {
    pub fn held(&self) -> u64 {
        self.pull_held + self.push_held
    }
}

pub struct Link {
    pub name: String,
    pub url: String,
    pub kind: LinkKind,
    transport: Arc<dyn Transport>,
    options: SessionOptions,
    sessions: Mutex<HashMap<String, Arc<RemoteSession>>>,
    stores: Mutex<HashMap<StoreId, Arc<RemoteStore>>>,
    health: Mutex<Health>,
    figures: Mutex<HashMap<StoreId, StoreFigures>>,
    /// Current / catching up / stalled / down, from the observations of its passes.
    tracker: Mutex<LinkTracker>,
    /// How long a reachable link that is behind may go without movement before it is stalled.
    stall_after_ms: i64,
    delays: Mutex<DelayWindow>,
    /// Per store, why its last pull pass failed (absent once one succeeds): a link's state
    /// gathers every store, so one store's success does not hide another's failure.
    pull_errors: Mutex<HashMap<StoreId, String>>,
    /// Per store, the failure last logged: each store's failures are deduplicated on their own.
    logged_failures: Mutex<LoggedFailures<StoreId>>,
}

impl Link {
    pub fn new(
        remote: &RemoteConfig,
        kind: LinkKind,
        options: SessionOptions,
        timeout: Duration,
    ) -> Result<Self, LinkError> {
        let transport = HttpTransport::new(&remote.url, remote.ca_file.as_deref(), timeout)
            .map_err(|e| LinkError::Transport(remote.name.clone(), e.to_string()))?;
        Ok(Self::with_transport(
            remote,
            kind,
            options,
            Arc::new(transport),
        ))
    }

    pub fn with_transport(
        remote: &RemoteConfig,
        kind: LinkKind,
        options: SessionOptions,
        transport: Arc<dyn Transport>,
    ) -> Self {
        Link {
            name: remote.name.clone(),
            url: remote.url.clone(),
            kind,
            transport,
            options,
            sessions: Mutex::new(HashMap::new()),
            stores: Mutex::new(HashMap::new()),
            health: Mutex::new(Health::default()),
            figures: Mutex::new(HashMap::new()),
            tracker: Mutex::new(LinkTracker::default()),
            stall_after_ms: crate::config::SyncConfig::default().stall_after_ms as i64,
            delays: Mutex::new(DelayWindow::new(DELAY_SLOT_MS, DELAY_SLOTS)),
            pull_errors: Mutex::new(HashMap::new()),
            logged_failures: Mutex::new(LoggedFailures::default()),
        }
    }

    /// Records the outcome of a pull pass of `id` (`None`: it succeeded); returns why some
    /// store's last pull failed, if one did (the first by store id).
    pub fn pull_outcome(&self, id: &StoreId, error: Option<String>) -> Option<String> {
        let mut errors = self.pull_errors.lock().expect("pull errors");
        match error {
            Some(e) => errors.insert(id.clone(), e),
            None => errors.remove(id),
        };
        first_error(&errors)
    }

    /// Sets how long the link may stay behind without movement before it counts as stalled.
    pub fn with_stall_after(mut self, stall_after: Duration) -> Self {
        self.stall_after_ms = stall_after.as_millis().min(i64::MAX as u128) as i64;
        self
    }

    /// Records what a pass (or probe) found, now. Unreachable: every store's pull lag is unknown
    /// from now on, until a pass learns it again.
    pub fn observe(&self, observation: Observation) {
        if matches!(observation, Observation::Unreachable { .. }) {
            for f in self.figures.lock().expect("figures").values_mut() {
                f.pull_lag_known = false;
            }
        }
        self.tracker
            .lock()
            .expect("tracker")
            .observe(crate::clock::now_ms(), observation);
    }

    /// Entries moved in a pass that is still running (a page of it is done).
    pub fn note_movement(&self) {
        let error = first_error(&self.pull_errors.lock().expect("pull errors"));
        self.observe(Observation::Reachable {
            lag: None,
            moved: true,
            error,
        });
    }

    /// The link's state now.
    pub fn verdict(&self) -> LinkVerdict {
        self.tracker
            .lock()
            .expect("tracker")
            .report(crate::clock::now_ms(), self.stall_after_ms)
    }

    /// Records replication delays (ms; negative ones count as 0 and as skewed) measured now;
    /// returns how many were negative.
    pub fn record_delays(&self, delays_ms: impl IntoIterator<Item = i64>) -> u64 {
        let now = crate::clock::now_ms();
        let mut window = self.delays.lock().expect("delays");
        delays_ms
            .into_iter()
            .map(|d| u64::from(window.record(now, d)))
            .sum()
    }

    pub fn delay_status(&self) -> Option<DelayStatus> {
        let window = self.delays.lock().expect("delays");
        let s = window.summary(crate::clock::now_ms())?;
        Some(DelayStatus {
            samples: s.samples,
            p50_seconds: s.p50_ms as f64 / 1000.0,
            p99_seconds: s.p99_ms as f64 / 1000.0,
            max_seconds: s.max_ms as f64 / 1000.0,
            window_seconds: (window.span_ms() / 1000) as u64,
            clock_skewed: s.skewed,
        })
    }

    /// Pull lag over every store synced with this link.
    pub fn pull_lag(&self) -> u64 {
        self.figures
            .lock()
            .expect("figures")
            .values()
            .map(|f| f.pull_lag)
            .sum()
    }

    /// Pull lag over every store synced with this link, if each one's is known since the link
    /// last became reachable: a sum with a stale part would claim too little.
    pub fn known_pull_lag(&self) -> Option<u64> {
        let figures = self.figures.lock().expect("figures");
        figures
            .values()
            .all(|f| f.pull_lag_known)
            .then(|| figures.values().map(|f| f.pull_lag).sum())
    }

    pub fn session(&self, tenant: &str) -> Arc<RemoteSession> {
        self.sessions
            .lock()
            .expect("sessions")
            .entry(tenant.to_string())
            .or_insert_with(|| {
                Arc::new(RemoteSession::new(
                    &self.name,
                    self.transport.clone(),
                    tenant,
                    self.options.clone(),
                ))
            })
            .clone()
    }

    /// The remote store for `id` (kept, so that capabilities are negotiated once).
    pub fn store(&self, id: &StoreId) -> Arc<RemoteStore> {
        if let Some(s) = self.stores.lock().expect("stores").get(id) {
            return s.clone();
        }
        let store = Arc::new(RemoteStore::new(self.session(&id.tenant_id), id.clone()));
        self.stores
            .lock()
            .expect("stores")
            .entry(id.clone())
            .or_insert(store)
            .clone()
    }

    /// HTTP requests sent through this link's sessions so far.
    pub fn requests_sent(&self) -> u64 {
        self.sessions
            .lock()
            .expect("sessions")
            .values()
            .map(|s| s.requests_sent())
            .sum()
    }

    pub fn record_success(&self) {
        let mut h = self.health.lock().expect("health");
        h.connected = true;
        h.last_success_ms = Some(crate::clock::now_ms());
        h.last_error = None;
        h.down_until = None;
    }

    /// Records a failure; returns whether it differs from the previous one (worth a log line).
    pub fn record_error(&self, error: &StoreError) -> bool {
        let mut h = self.health.lock().expect("health");
        let text = error.to_string();
        let new = h.last_error.as_deref() != Some(text.as_str());
        h.last_error = Some(text);
        if error.is_transient() {
            h.connected = false;
            h.down_until = Some(Instant::now() + DOWN_FOR);
        }
        new
    }

    /// A pass of store `id` failed: recorded like [`record_error`](Self::record_error); returns
    /// whether it differs from the failure last logged for this store (worth a log line).
    pub fn record_store_error(&self, id: &StoreId, error: &StoreError) -> bool {
        self.record_error(error);
        self.logged_failures
            .lock()
            .expect("logged failures")
            .failed(id.clone(), &error.to_string())
    }

    /// A pass of store `id` succeeded: the link is healthy, and the store's next failure is new.
    pub fn record_store_success(&self, id: &StoreId) {
        self.record_success();
        self.logged_failures
            .lock()
            .expect("logged failures")
            .succeeded(id);
    }

    /// Not known to close a cycle, and not marked down after failures: worth a request now.
    pub fn usable(&self) -> bool {
        let h = self.health.lock().expect("health");
        !h.cycle && h.down_until.is_none_or(|t| Instant::now() >= t)
    }

    pub fn update_figures(&self, id: &StoreId, f: impl FnOnce(&mut StoreFigures)) {
        f(self
            .figures
            .lock()
            .expect("figures")
            .entry(id.clone())
            .or_default());
    }

    pub fn figures(&self, id: &StoreId) -> StoreFigures {
        self.figures
            .lock()
            .expect("figures")
            .get(id)
            .cloned()
            .unwrap_or_default()
    }

    pub fn last_success_ms(&self) -> Option<i64> {
        self.health.lock().expect("health").last_success_ms
    }

    /// Reads the remote's `/status` (at most every 30 s) and refuses the link when this node is
    /// already in the remote's upstream chain. Returns the remote's id and chain.
    pub async fn check_chain(&self, own_id: &str) -> Result<Vec<String>, LinkError> {
        {
            let h = self.health.lock().expect("health");
            if let (Some(at), Some(id)) = (h.chain_checked, &h.node_id) {
                if at.elapsed() < CHAIN_REFRESH {
                    let chain: Vec<String> =
                        std::iter::once(id.clone()).chain(h.chain.clone()).collect();
                    if h.cycle {
                        return Err(LinkError::Cycle {
                            link: self.name.clone(),
                            node: own_id.to_string(),
                            chain,
                        });
                    }
                    return Ok(chain);
                }
            }
        }
        let response = self
            .transport
            .send(TransportRequest {
                method: Method::Get,
                path: "/status".into(),
                bearer: None,
                body: None,
                via: self.options.node_id.clone(),
            })
            .await
            .map_err(|e| LinkError::Transport(self.name.clone(), e.to_string()))?;
        // A plain MindooDB server has no /status and no chain: nothing to check against.
        let remote: Option<NodeStatus> = (response.status == 200)
            .then(|| serde_json::from_slice(&response.body.to_bytes()).ok())
            .flatten();
        let mut h = self.health.lock().expect("health");
        h.chain_checked = Some(Instant::now());
        let Some(remote) = remote else {
            h.node_id = Some(format!("external:{}", self.url));
            return Ok(Vec::new());
        };
        let chain: Vec<String> = std::iter::once(remote.node_id.clone())
            .chain(remote.chain.clone())
            .collect();
        // A remote with upstreams whose own chain is still unknown (both just started) is asked
        // again at the next check instead of being trusted for the refresh period.
        let incomplete =
            remote.chain.is_empty() && remote.links.iter().any(|l| l.kind == LinkKind::Upstream);
        if incomplete {
            h.chain_checked = None;
        }
        h.node_id = Some(remote.node_id);
        h.chain = remote.chain;
        h.cycle = chain.iter().any(|id| id == own_id);
        if h.cycle {
            let e = LinkError::Cycle {
                link: self.name.clone(),
                node: own_id.to_string(),
                chain,
            };
            h.last_error = Some(e.to_string());
            h.connected = false;
            return Err(e);
        }
        Ok(chain)
    }

    pub fn status(&self, lag: u64) -> LinkStatus {
        let verdict = self.verdict();
        let delay = self.delay_status();
        let h = self.health.lock().expect("health");
        let now = crate::clock::now_ms();
        LinkStatus {
            name: self.name.clone(),
            url: self.url.clone(),
            kind: self.kind,
            connected: h.connected,
            node_id: h.node_id.clone(),
            last_success_at: h.last_success_ms,
            seconds_since_success: h
                .last_success_ms
                .map(|t| (now.saturating_sub(t) / 1000).max(0) as u64),
            last_error: h.last_error.clone(),
            cycle: h.cycle,
            lag,
            state: Some(verdict.state),
            state_reason: Some(verdict.reason),
            state_since: verdict.since_ms,
            stalled_seconds: (verdict.stalled_ms / 1000) as u64,
            delay,
        }
    }

    pub fn store_status(&self, id: &StoreId) -> StoreLinkStatus {
        let f = self.figures(id);
        StoreLinkStatus {
            link: self.name.clone(),
            pull_lag: f.pull_lag,
            push_lag: f.push_lag,
            last_sync_at: f.last_sync_ms,
            pulled: f.pulled,
            pushed: f.pushed,
            full_scans: f.full_scans,
            held: f.held(),
        }
    }
}

/// The pull error of the first store (by id) whose last pass failed.
/// The failure last logged per key (a store of a link): a failure is worth a log line when it
/// differs from the one logged for the same key — not from another key's, which would make two
/// failing stores log on every pass.
#[derive(Debug)]
struct LoggedFailures<K>(HashMap<K, String>);

impl<K> Default for LoggedFailures<K> {
    fn default() -> Self {
        Self(HashMap::new())
    }
}

impl<K: Eq + Hash> LoggedFailures<K> {
    /// `key` failed with `error`; true when that is new for `key`.
    fn failed(&mut self, key: K, error: &str) -> bool {
        self.0.insert(key, error.to_string()).as_deref() != Some(error)
    }

    /// `key` succeeded: its next failure is new, whatever it says.
    fn succeeded(&mut self, key: &K) {
        self.0.remove(key);
    }
}

fn first_error(errors: &HashMap<StoreId, String>) -> Option<String> {
    errors
        .iter()
        .min_by_key(|(id, _)| id.to_string())
        .map(|(_, e)| e.clone())
}

/// All links of a node.
pub struct Links {
    pub mode: UpstreamMode,
    pub upstreams: Vec<Arc<Link>>,
    pub peers: Vec<Arc<Link>>,
    pub node_id: String,
}

impl Links {
    pub fn from_config(config: &NodeConfig, options: SessionOptions) -> Result<Self, LinkError> {
        let timeout = Duration::from_millis(config.sync.request_timeout_ms);
        let stall_after = Duration::from_millis(config.sync.stall_after_ms);
        let build = |list: &[RemoteConfig], kind| {
            list.iter()
                .map(|r| {
                    Link::new(r, kind, options.clone(), timeout)
                        .map(|l| Arc::new(l.with_stall_after(stall_after)))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Links {
            mode: config.upstream_mode,
            upstreams: build(&config.upstreams, LinkKind::Upstream)?,
            peers: build(&config.peers, LinkKind::Peer)?,
            node_id: options.node_id.clone(),
        })
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Link>> {
        self.upstreams.iter().chain(&self.peers)
    }

    /// Upstreams to try for a request, in order: usable ones first (failover), then the rest (a
    /// link marked down may have come back).
    pub fn upstream_order(&self) -> Vec<Arc<Link>> {
        let (mut usable, rest): (Vec<_>, Vec<_>) =
            self.upstreams.iter().cloned().partition(|l| l.usable());
        usable.extend(
            rest.into_iter()
                .filter(|l| !l.health.lock().expect("h").cycle),
        );
        usable
    }

    /// The chain above this node: the first usable upstream's id and its chain.
    pub fn chain(&self) -> Vec<String> {
        self.upstreams
            .iter()
            .find(|l| l.usable())
            .map(|l| {
                let h = l.health.lock().expect("health");
                h.node_id.iter().cloned().chain(h.chain.clone()).collect()
            })
            .unwrap_or_default()
    }

    pub fn any_upstream_connected(&self) -> bool {
        self.upstreams
            .iter()
            .any(|l| l.health.lock().expect("health").connected)
    }
}

#[cfg(test)]
mod tests {
    use super::LoggedFailures;

    #[test]
    fn two_stores_failing_alike_each_log_once() {
        let mut logged = LoggedFailures::default();
        let (a, b) = ("store-a", "store-b");
        assert!(logged.failed(a, "HTTP 403: a refused"));
        assert!(logged.failed(b, "HTTP 403: b refused"));
        // Every later pass fails the same way for both: nothing new to log.
        for _ in 0..5 {
            assert!(!logged.failed(a, "HTTP 403: a refused"));
            assert!(!logged.failed(b, "HTTP 403: b refused"));
        }
    }

    #[test]
    fn a_changed_failure_or_one_after_a_success_is_new() {
        let mut logged = LoggedFailures::default();
        assert!(logged.failed("a", "timeout"));
        assert!(logged.failed("a", "HTTP 500"));
        assert!(!logged.failed("a", "HTTP 500"));
        logged.succeeded(&"a");
        assert!(logged.failed("a", "HTTP 500"));
        // Another store's success does not reset this one's.
        logged.succeeded(&"b");
        assert!(!logged.failed("a", "HTTP 500"));
    }
}
