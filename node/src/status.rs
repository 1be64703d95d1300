//! `GET /status`: the node's own account of its stores, links, lag and cache, as JSON. The operator
//! reads it to fill `SyncNode` status, and `syncrelay-node status URL` prints it as a table. Public
//! like `/health`: counts and lag only, never keys, tokens or entry contents.

use serde::{Deserialize, Serialize};

use crate::config::Role;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// Stable id of this node (derived from its signing key), used for cycle detection.
    pub node_id: String,
    pub name: String,
    pub role: Role,
    pub version: String,
    /// Node ids upstream of this node, nearest first (empty for an origin).
    pub chain: Vec<String>,
    /// Serving: storage writable, (for nodes with upstreams) connected to at least one of them,
    /// and (for a relay) caught up on every carried store since it started.
    pub ready: bool,
    pub links: Vec<LinkStatus>,
    pub stores: Vec<StoreStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheStatus>,
    /// Entries held locally, over all stores.
    pub entries: u64,
    /// Largest pull lag over all links and stores (entries).
    pub max_lag: u64,
    /// Client writes stored locally, not yet confirmed by an upstream.
    pub queued_writes: u64,
    /// Carried stores a relay has not caught up on since it started (served from upstream).
    #[serde(default)]
    pub catching_up: u64,
    /// Why the storage refuses writes (disk full, I/O errors); absent while it takes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_failure: Option<String>,
    /// Pulled entries held back until the directory knows their author, over all links.
    #[serde(default)]
    pub held_entries: u64,
    /// Bytes the on-disk store's data directory occupies (absent for the memory store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
    /// Distinct payload bytes held, over all stores: what the disk use is for.
    #[serde(default)]
    pub payload_bytes: u64,
    /// The on-disk engine (`sled` or `fjall`; absent for the memory store): the one the data
    /// directory was written with, which may differ from `storage.kind`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_engine: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    Upstream,
    Peer,
}

/// How a link is doing (see `sync::link_state` for the rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkState {
    /// Reachable, and a pass since it became reachable found nothing left to pull.
    Current,
    /// Reachable, behind (or the lag not learned yet since it became reachable), and moving.
    CatchingUp,
    /// Reachable and behind, but nothing moved for `sync.stallAfterMs`.
    Stalled,
    /// Not answering.
    Down,
}

impl LinkState {
    pub const ALL: [LinkState; 4] = [
        LinkState::Current,
        LinkState::CatchingUp,
        LinkState::Stalled,
        LinkState::Down,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Current => "current",
            LinkState::CatchingUp => "catching-up",
            LinkState::Stalled => "stalled",
            LinkState::Down => "down",
        }
    }
}

/// Replication delay (now − the origin's receipt time of each entry stored from a link) over
/// the last few minutes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DelayStatus {
    /// Entries measured in the window.
    pub samples: u64,
    pub p50_seconds: f64,
    pub p99_seconds: f64,
    pub max_seconds: f64,
    /// Length of the window.
    pub window_seconds: u64,
    /// Delays in the window that came out negative (this host's clock behind the origin's),
    /// counted as 0.
    pub clock_skewed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkStatus {
    pub name: String,
    pub url: String,
    pub kind: LinkKind,
    /// The last request to it succeeded.
    pub connected: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds_since_success: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// This link would close a cycle; the node refuses to sync with it.
    pub cycle: bool,
    /// Sum of pull lag over the stores synced with this link.
    pub lag: u64,
    /// Absent from nodes older than the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<LinkState>,
    /// Why the link is in its state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<String>,
    /// Since when (ms since the epoch) the link has been in its state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_since: Option<i64>,
    /// Seconds without movement while reachable and behind (0 unless stalled).
    #[serde(default)]
    pub stalled_seconds: u64,
    /// Replication delay of entries pulled from this link (absent before the first measured one
    /// in the window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<DelayStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreStatus {
    pub tenant: String,
    pub db: String,
    pub kind: String,
    pub entries: u64,
    pub max_receipt_order: u64,
    pub epoch: String,
    pub links: Vec<StoreLinkStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreLinkStatus {
    pub link: String,
    pub pull_lag: u64,
    pub push_lag: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_at: Option<i64>,
    pub pulled: u64,
    pub pushed: u64,
    /// Passes that started from the beginning (first sync or an epoch change).
    pub full_scans: u64,
    /// Entries held back until a reason that can change goes away (see `StoreFigures::held`).
    #[serde(default)]
    pub held: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheStatus {
    pub max_bytes: u64,
    pub bytes: u64,
    pub entries: u64,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    /// Upstream requests made to fill misses; concurrent misses for the same ids share one.
    #[serde(default)]
    pub upstream_fetches: u64,
}
