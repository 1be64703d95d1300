//! The node's configuration: one serde type, read from YAML by the node and rendered by the operator.
//!
//! Every field has a default, so an empty file (or none) gives a working origin on 127.0.0.1:1661
//! with its data under `./data`. Unknown keys are refused so that typos do not pass silently.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors of loading a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// What a node does in a chain (architecture §2).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    /// Full local copy, no upstream; verifies and witnesses what clients write.
    Origin,
    /// Full local copy of what it carries, kept in sync with its upstream(s); store-and-forward.
    Relay,
    /// Bounded cache in front of the upstream; writes forwarded synchronously.
    Edge,
    /// No local data; every operation forwarded to the upstream.
    Passthrough,
    /// Full local copy, synced in both directions with every configured peer (P2P, mesh).
    Peer,
}

impl Role {
    /// Whether the node keeps a full local copy in its own store.
    pub fn has_local_copy(self) -> bool {
        matches!(self, Role::Origin | Role::Relay | Role::Peer)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Origin => "origin",
            Role::Relay => "relay",
            Role::Edge => "edge",
            Role::Passthrough => "passthrough",
            Role::Peer => "peer",
        }
    }
}

/// How several upstreams are used.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamMode {
    /// The first reachable upstream in list order is used.
    #[default]
    Failover,
    /// The node syncs with every upstream and holds the union (relay only).
    Merged,
}

/// Where a node keeps its stores. A data directory keeps the engine it was first written with:
/// `sled` or `fjall` names the engine of a new one (see `store::engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// Embedded sled database under `dataDir/store`.
    Sled,
    /// Embedded fjall database (LSM tree) under `dataDir/store`.
    Fjall,
    /// Nothing persisted (tests, throw-away nodes).
    Memory,
}

impl StorageKind {
    /// The on-disk engine a new data directory gets; `None` for memory.
    pub fn engine(self) -> Option<crate::store::engine::EngineKind> {
        use crate::store::engine::EngineKind;
        match self {
            StorageKind::Sled => Some(EngineKind::Sled),
            StorageKind::Fjall => Some(EngineKind::Fjall),
            StorageKind::Memory => None,
        }
    }
}

/// The default engine's ([`crate::store::engine::EngineKind::default`]).
impl Default for StorageKind {
    fn default() -> Self {
        crate::store::engine::EngineKind::default().into()
    }
}

impl From<crate::store::engine::EngineKind> for StorageKind {
    fn from(engine: crate::store::engine::EngineKind) -> Self {
        use crate::store::engine::EngineKind;
        match engine {
            EngineKind::Sled => StorageKind::Sled,
            EngineKind::Fjall => StorageKind::Fjall,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Name published in `/.well-known/mindoodb-server-info` and used as username towards upstreams.
    pub name: String,
    pub role: Role,
    /// Listen address of the HTTP(S) server.
    pub listen: SocketAddr,
    /// Root of everything the node persists (store, generated identity).
    pub data_dir: PathBuf,
    pub storage: StorageConfig,
    pub identity: IdentityConfig,
    /// Tenant directory (YAML, see `directory`); reloaded when it changes. None = no tenants.
    pub directory_file: Option<PathBuf>,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    /// Serve HTTPS with these PEM files (reloaded when they change).
    pub tls: Option<TlsConfig>,
    /// Stamp witness receipts (spec §5.6) on entries new to this node.
    pub witness: bool,
    pub log_format: LogFormat,
    /// Upstream nodes of a relay, edge or passthrough (other syncrelay nodes or MindooDB servers).
    pub upstreams: Vec<RemoteConfig>,
    pub upstream_mode: UpstreamMode,
    /// Peers synced in both directions (peer role, and replicas of one origin or relay set).
    pub peers: Vec<RemoteConfig>,
    /// Databases synced from the start; any database a client touches is added while running.
    pub databases: Vec<DatabaseRef>,
    pub sync: SyncConfig,
    /// Edge cache bounds.
    pub cache: CacheConfig,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: "CN=syncrelay-node".into(),
            role: Role::Origin,
            listen: SocketAddr::from(([127, 0, 0, 1], 1661)),
            data_dir: PathBuf::from("./data"),
            storage: StorageConfig::default(),
            identity: IdentityConfig::default(),
            directory_file: None,
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            tls: None,
            witness: true,
            log_format: LogFormat::Text,
            upstreams: Vec::new(),
            upstream_mode: UpstreamMode::Failover,
            peers: Vec::new(),
            databases: Vec::new(),
            sync: SyncConfig::default(),
            cache: CacheConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct StorageConfig {
    pub kind: StorageKind,
    /// The engine's page or block cache; bounds resident memory of large stores.
    pub cache_capacity_bytes: u64,
    /// Free space the data directory's file system keeps: writes are refused (507) below it,
    /// before the engine meets a full disk.
    pub min_free_bytes: u64,
    /// The on-disk store's index maintenance.
    pub compaction: CompactionConfig,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            kind: StorageKind::default(),
            cache_capacity_bytes: 128 * 1024 * 1024,
            min_free_bytes: 64 * 1024 * 1024,
            compaction: CompactionConfig::default(),
        }
    }
}

/// When the on-disk store merges the index keys that small pushes and witness receipts leave
/// behind (`getCompactionStatus` and `syncrelay_store_compactions_total` report what it did).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct CompactionConfig {
    /// Merge once this many index keys would disappear (the reference's `compactionMinFiles`);
    /// 0 disables this trigger.
    pub min_keys: i64,
    /// Merge once the index keys to merge hold this many bytes (the reference's
    /// `compactionMaxBytes`); 0 disables this trigger.
    pub max_bytes: i64,
    /// Entries a merged index key holds at most.
    pub target_entries: u64,
    /// How often each store is looked at.
    pub interval_ms: u64,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            min_keys: 32,
            max_bytes: 0,
            target_entries: 4096,
            interval_ms: 2000,
        }
    }
}

/// The node's own Ed25519 + RSA-3072 identity (PKCS#8 PEM files). When both are absent the node
/// generates one under `dataDir/identity` on first start and keeps it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct IdentityConfig {
    pub signing_key_file: Option<PathBuf>,
    pub encryption_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Secret shared by all replicas of a node set (challenges and tokens of one replica are
    /// accepted by the others). None = a random secret per process: tokens die on restart.
    pub secret_file: Option<PathBuf>,
    pub token_ttl_secs: u64,
    pub challenge_ttl_secs: u64,
    /// Cap on remembered (redeemed, unexpired) challenges per process.
    pub max_outstanding_challenges: usize,
    /// A file holding a bearer token that `/status` and `/metrics` then require (they name every
    /// tenant and database with counts). None = both are open, for scrapers and the operator
    /// on a trusted network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_token_file: Option<PathBuf>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            secret_file: None,
            token_ttl_secs: 3600,
            challenge_ttl_secs: 300,
            max_outstanding_challenges: 10_000,
            status_token_file: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Request body limit (413 above), advertised in server info.
    pub max_body_bytes: u64,
    /// Per minute, per tenant, IP and username/key (challenge) or IP (authenticate).
    pub auth_per_minute: u32,
    /// Per minute, per tenant, principal and IP.
    pub sync_per_minute: u32,
    /// Per minute per IP over all routes: sync + auth + this.
    pub global_extra_per_minute: u32,
    /// Open connections over all clients; one more is answered 503 and closed.
    pub max_connections: u32,
    /// Open connections per client address (IPv6: per /56).
    pub max_connections_per_ip: u32,
    /// Time a client has to send a request's headers (a connection that sends nothing, and idle
    /// keep-alive connections, included).
    pub header_timeout_ms: u64,
    /// Time a client has to send a request's body once its headers are in (408 after).
    pub body_timeout_ms: u64,
    /// Request body bytes held in memory at once over all requests; a request that would go over
    /// waits briefly, then is answered 503. Bounds what concurrent uploads can take.
    pub max_inflight_body_bytes: u64,
    /// Largest `getEntries`/`getEntriesBinary` response (payload bytes); a request for more is
    /// answered 413 before anything is sent, so a reader asks for fewer ids.
    pub max_response_bytes: u64,
    /// Databases a tenant may have on this node; pushes to a further one are refused (reads of an
    /// unknown database never create one).
    pub max_databases_per_tenant: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: 5 * 1024 * 1024,
            auth_per_minute: 120,
            sync_per_minute: 3000,
            global_extra_per_minute: 500,
            max_connections: 4096,
            max_connections_per_ip: 256,
            header_timeout_ms: 10_000,
            body_timeout_ms: 60_000,
            max_inflight_body_bytes: 256 * 1024 * 1024,
            max_response_bytes: 256 * 1024 * 1024,
            max_databases_per_tenant: 1000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Another node this node talks to as a client, with its own identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RemoteConfig {
    /// Label in metrics, status and logs.
    pub name: String,
    /// Base URL of the node, without the tenant (e.g. `https://origin.example:1661`).
    pub url: String,
    /// PEM bundle of CAs to trust for an HTTPS URL, in addition to the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// A database carried by the node.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DatabaseRef {
    /// Tenant (MindooDB tenant id) the database belongs to.
    pub tenant: String,
    /// Database name within the tenant.
    pub db: String,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct SyncConfig {
    /// Fallback store-head check interval (change events trigger syncs sooner).
    pub interval_ms: u64,
    /// Entries per transfer batch (one getEntries request)...
    pub batch_size: usize,
    /// ...and payload bytes per batch, whichever is reached first.
    pub batch_bytes: u64,
    /// Transfer batches in flight per sync.
    pub max_in_flight: usize,
    /// Timeout of one upstream request.
    pub request_timeout_ms: u64,
    /// Attempts of one upstream request on transient errors (exponential backoff between them).
    pub max_attempts: u32,
    /// First backoff delay; doubled per attempt.
    pub backoff_base_ms: u64,
    /// How long a client write waits for the upstream before it is queued (relay).
    pub forward_timeout_ms: u64,
    /// A link whose upstream answers while this node is behind, and nothing moves (no entry
    /// stored, lag not shrinking) for this long, is `stalled` (default 5 minutes).
    pub stall_after_ms: u64,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            interval_ms: 5_000,
            batch_size: 1000,
            batch_bytes: 4 << 20,
            max_in_flight: 3,
            request_timeout_ms: 30_000,
            max_attempts: 4,
            backoff_base_ms: 200,
            forward_timeout_ms: 5_000,
            stall_after_ms: 300_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Byte limit of cached payloads and metadata (edge).
    pub max_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

impl NodeConfig {
    /// Whether stamping witness receipts is in effect: only nodes that hold the authoritative copy
    /// stamp; a relay passes its upstream's receipts through (spec §5.6).
    pub fn stamps_witness(&self) -> bool {
        self.witness && matches!(self.role, Role::Origin | Role::Peer)
    }

    pub fn from_yaml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: NodeConfig = if text.trim().is_empty() {
            NodeConfig::default()
        } else {
            serde_yaml::from_str(text).map_err(|source| ConfigError::Parse {
                path: path.to_path_buf(),
                source,
            })?
        };
        config.validate()?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&text, path)
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("config serialises")
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let role = self.role.as_str();
        match self.role {
            Role::Origin if !self.upstreams.is_empty() => {
                return Err(ConfigError::Invalid(
                    "an origin has no upstreams (use role relay, or peers for replicas)".into(),
                ))
            }
            Role::Relay | Role::Edge | Role::Passthrough if self.upstreams.is_empty() => {
                return Err(ConfigError::Invalid(format!(
                    "role {role} needs at least one entry in upstreams"
                )))
            }
            Role::Edge | Role::Passthrough if !self.peers.is_empty() => {
                return Err(ConfigError::Invalid(format!(
                    "role {role} keeps no local copy and cannot have peers"
                )))
            }
            Role::Edge | Role::Passthrough if self.upstream_mode == UpstreamMode::Merged => {
                return Err(ConfigError::Invalid(format!(
                    "upstreamMode merged needs a local copy to hold the union; role {role} has none"
                )))
            }
            Role::Peer if self.peers.is_empty() => {
                return Err(ConfigError::Invalid(
                    "role peer needs at least one entry in peers".into(),
                ))
            }
            _ => {}
        }
        let mut names = std::collections::HashSet::new();
        for remote in self.upstreams.iter().chain(&self.peers) {
            if !names.insert(remote.name.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "upstream/peer name {} is used twice",
                    remote.name
                )));
            }
            let ok = remote.url.starts_with("http://") || remote.url.starts_with("https://");
            if !ok {
                return Err(ConfigError::Invalid(format!(
                    "{}: url must start with http:// or https://",
                    remote.name
                )));
            }
        }
        for d in &self.databases {
            crate::wire::ids::normalize_tenant_id(&d.tenant)
                .and_then(|_| crate::wire::ids::validate_db_id(&d.db))
                .map_err(|e| ConfigError::Invalid(format!("databases: {e}")))?;
        }
        if self.sync.batch_size == 0
            || self.sync.batch_bytes == 0
            || self.sync.max_in_flight == 0
            || self.sync.max_attempts == 0
        {
            return Err(ConfigError::Invalid(
                "sync.batchSize, sync.batchBytes, sync.maxInFlight and sync.maxAttempts must be at least 1"
                    .into(),
            ));
        }
        if self.sync.stall_after_ms == 0 {
            return Err(ConfigError::Invalid(
                "sync.stallAfterMs must be at least 1".into(),
            ));
        }
        if self.identity.signing_key_file.is_some() != self.identity.encryption_key_file.is_some() {
            return Err(ConfigError::Invalid(
                "identity needs both signingKeyFile and encryptionKeyFile, or neither".into(),
            ));
        }
        if self.limits.max_body_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "limits.maxBodyBytes must be at least 1024".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default_and_round_trips() {
        let c = NodeConfig::from_yaml("", Path::new("x")).unwrap();
        assert_eq!(c, NodeConfig::default());
        assert_eq!(c.listen.to_string(), "127.0.0.1:1661");
        let again = NodeConfig::from_yaml(&c.to_yaml(), Path::new("x")).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn typos_and_half_identities_are_refused() {
        assert!(NodeConfig::from_yaml("lisen: 1.2.3.4:5", Path::new("x")).is_err());
        assert!(NodeConfig::from_yaml("identity: {signingKeyFile: a}", Path::new("x")).is_err());
        let c = NodeConfig::from_yaml("limits: {syncPerMinute: 10}", Path::new("x")).unwrap();
        assert_eq!(c.limits.sync_per_minute, 10);
        assert_eq!(c.limits.auth_per_minute, 120);
    }

    #[test]
    fn roles_need_their_links() {
        let relay = "role: relay\nupstreams: [{name: o, url: 'http://127.0.0.1:1'}]";
        assert!(NodeConfig::from_yaml(relay, Path::new("x")).is_ok());
        assert!(NodeConfig::from_yaml("role: relay", Path::new("x")).is_err());
        assert!(NodeConfig::from_yaml("role: peer", Path::new("x")).is_err());
        let origin_up = "upstreams: [{name: o, url: 'http://a'}]";
        assert!(NodeConfig::from_yaml(origin_up, Path::new("x")).is_err());
        let edge_merged =
            "role: edge\nupstreamMode: merged\nupstreams: [{name: o, url: 'http://a'}]";
        assert!(NodeConfig::from_yaml(edge_merged, Path::new("x")).is_err());
        let twice =
            "role: relay\nupstreams: [{name: o, url: 'http://a'}, {name: o, url: 'http://b'}]";
        assert!(NodeConfig::from_yaml(twice, Path::new("x")).is_err());
        let bad_url = "role: relay\nupstreams: [{name: o, url: 'ftp://a'}]";
        assert!(NodeConfig::from_yaml(bad_url, Path::new("x")).is_err());
    }
}
