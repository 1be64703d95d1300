//! The node itself, below its HTTP surface: for its role, which `ContentAddressedStore` serves a
//! request (local store, edge cache over a remote store, or the remote store), plus the links, the
//! directory, the metrics handle and the background [`replication`] that keeps carried stores in
//! step. The start-up code (`node.rs`) builds a [`Node`]; `server/` serves it over HTTP and
//! [`status`] reports on it. Nothing here knows about HTTP.

pub mod replication;
pub mod status;

use std::sync::Arc;

use crate::client::cache::{CachedStore, EdgeCache};
use crate::config::{NodeConfig, Role};
use crate::crypto::keys::Identity;
use crate::directory::DirectoryHandle;
use crate::metrics::Metrics;
use crate::store::health::StorageHealth;
use crate::store::registry::SharedStore;
use crate::store::{StoreError, StoreRegistry};
use crate::sync::links::Links;
use crate::wire::StoreId;
use replication::{CaughtUp, SyncQueue, UpstreamFeeds, Want};

/// A running node's parts, shared by the HTTP surface and the background replication.
pub struct Node {
    pub config: NodeConfig,
    pub identity: Arc<Identity>,
    /// Stable id of this node (see [`node_id`]), sent in the via header and published in /status.
    pub node_id: String,
    pub directory: DirectoryHandle,
    pub stores: StoreRegistry,
    pub metrics: Arc<Metrics>,
    /// Upstreams and peers (none for a lone origin).
    pub links: Option<Arc<Links>>,
    pub sync_queue: SyncQueue,
    /// Upstream change feeds relayed by a node without a local copy.
    pub upstream_feeds: UpstreamFeeds,
    /// The edge role's cache.
    pub cache: Option<Arc<EdgeCache>>,
    /// Whether the storage takes writes (disk full, I/O errors).
    pub storage_health: StorageHealth,
    /// Stores a relay or peer has caught up on with its upstream since it started.
    pub caught_up: CaughtUp,
}

pub type SharedNode = Arc<Node>;

/// What a request does with a store: a read never creates one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// Why no store can serve a request.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no upstream is configured")]
    NoUpstream,
    /// Every upstream would close a cycle (the same loop the via header reports).
    #[error("Loop detected: every upstream of node {node_id} would close a cycle")]
    Loop { node_id: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Node {
    /// The store that serves `id` for this node's role: the local store (origin, relay, peer), the
    /// cache in front of the upstream (edge), or the upstream itself (passthrough).
    ///
    /// - A read of a database this node does not hold creates nothing: it is answered from an
    ///   empty view (a node with links asks the sync loop to carry the database, within the
    ///   tenant's database limit).
    /// - A relay serves reads of a store it has not caught up on since it started from its
    ///   upstream, as a passthrough would, while an upstream is reachable: a client never takes
    ///   a cold relay's partial copy for the whole database.
    pub fn backing_store(&self, id: &StoreId, access: Access) -> Result<SharedStore, ResolveError> {
        match self.config.role {
            Role::Origin | Role::Relay | Role::Peer => {
                if access == Access::Read {
                    return Ok(self.local_read_store(id));
                }
                let (store, created) = self.stores.open_reporting(id)?;
                if created {
                    self.carry(id);
                }
                Ok(store)
            }
            Role::Edge | Role::Passthrough => {
                let links = self.links.as_ref().ok_or(ResolveError::NoUpstream)?;
                // The config requires an upstream for these roles: none to offer means every
                // upstream was found to close a cycle.
                let link = links.upstream_order().into_iter().next().ok_or_else(|| {
                    ResolveError::Loop {
                        node_id: self.node_id.clone(),
                    }
                })?;
                let remote = link.store(id);
                Ok(match &self.cache {
                    Some(cache) => Arc::new(CachedStore::new(remote, cache.clone())),
                    None => remote,
                })
            }
        }
    }

    fn local_read_store(&self, id: &StoreId) -> SharedStore {
        let local = self.stores.get(id);
        if local.is_none() {
            self.carry(id);
        }
        if self.config.role == Role::Relay && !self.caught_up.contains(id) {
            if let Some(link) = self
                .links
                .as_ref()
                .and_then(|l| l.upstream_order().into_iter().find(|l| l.usable()))
            {
                return link.store(id);
            }
        }
        local.unwrap_or_else(|| self.stores.empty_view(id))
    }

    /// Asks the sync loop to carry `id` (nodes with links), as long as the tenant has room for
    /// another database: the loop creates the store when it first pulls it.
    fn carry(&self, id: &StoreId) {
        if self.links.is_some() && !self.sync_queue.is_queued(id) && self.stores.has_room_for(id) {
            self.sync_queue.request(
                id.clone(),
                Want {
                    pull: true,
                    push: true,
                },
            );
        }
    }

    /// Why clients should not be routed here now (empty when ready): storage refusing writes, no
    /// upstream connected (nodes that need one), stores a relay is still catching up on.
    pub fn not_ready_reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if let Some(f) = self.storage_health.failure() {
            reasons.push(format!("storage refuses writes: {}", f.reason));
        }
        let needs_upstream = matches!(
            self.config.role,
            Role::Relay | Role::Edge | Role::Passthrough
        );
        if needs_upstream
            && !self
                .links
                .as_ref()
                .is_some_and(|l| l.any_upstream_connected())
        {
            reasons.push("no upstream is connected".into());
        }
        let catching_up = replication::catching_up(self);
        if catching_up > 0 {
            reasons.push(format!(
                "catching up with the upstream on {catching_up} store(s)"
            ));
        }
        reasons
    }
}

/// A node's id: the first 16 hex digits of SHA-256 over its signing public key PEM and its instance
/// name (`SYNCRELAY_INSTANCE`, set per pod by the operator) — stable across restarts, and distinct
/// for replicas that share one identity.
pub fn node_id(identity: &Identity) -> String {
    use sha2::Digest;
    let instance = std::env::var("SYNCRELAY_INSTANCE").unwrap_or_default();
    let mut hasher = sha2::Sha256::new();
    hasher.update(identity.signing_public_pem.as_bytes());
    if !instance.is_empty() {
        hasher.update(b"\n");
        hasher.update(instance.as_bytes());
    }
    hex::encode(&hasher.finalize()[..8])
}
