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

/// What a node does in a chain (architecture §2). Part 1 implements `origin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Origin,
    Relay,
    Edge,
    Passthrough,
    Peer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// Embedded sled database under `dataDir/store`.
    #[default]
    Sled,
    /// Nothing persisted (tests, throw-away nodes).
    Memory,
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
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct StorageConfig {
    pub kind: StorageKind,
    /// sled page cache; bounds resident memory of large stores.
    pub cache_capacity_bytes: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            kind: StorageKind::Sled,
            cache_capacity_bytes: 128 * 1024 * 1024,
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
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            secret_file: None,
            token_ttl_secs: 3600,
            challenge_ttl_secs: 300,
            max_outstanding_challenges: 10_000,
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
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: 5 * 1024 * 1024,
            auth_per_minute: 120,
            sync_per_minute: 3000,
            global_extra_per_minute: 500,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl NodeConfig {
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
        if self.role != Role::Origin {
            return Err(ConfigError::Invalid(format!(
                "role {:?} is not available in this build yet; use origin",
                self.role
            )));
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
}
