//! The node configuration a `SyncNode` renders to (the node's own `NodeConfig` type), its
//! ConfigMap, and the hash that rolls the pods when it changes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ObjectMeta;
use sha2::{Digest, Sha256};
use syncrelay_node::config::{
    CacheConfig, LogFormat, NodeConfig, RemoteConfig, StorageConfig, StorageKind, TlsConfig,
};

use super::{config_map_name, has_peers, labels, paths, peer_host, CLUSTER_DOMAIN};
use crate::crd::{SyncNodeSpec, TlsSpec, NODE_PORT};

/// An upstream as the reconciler resolved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUpstream {
    pub name: String,
    pub url: String,
    /// Secret (and key) holding the CA bundle to trust for it, mounted under `upstream-ca/<i>`.
    pub ca_secret: Option<String>,
}

/// In-cluster base URL of a node's client Service.
pub fn service_url(node: &str, namespace: &str, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{node}.{namespace}.svc.{CLUSTER_DOMAIN}:{NODE_PORT}")
}

/// The CA bundle Secret a node trusts for an upstream SyncNode: the one the reference names, else
/// the upstream's own TLS Secret (its `ca.crt`: cert-manager's CA-type issuers write it there), else
/// none (plain HTTP upstream).
pub fn upstream_ca_secret(
    named: Option<&str>,
    upstream_node: &str,
    upstream_tls: Option<&TlsSpec>,
) -> Option<String> {
    named
        .map(str::to_string)
        .or_else(|| upstream_tls.map(|t| t.secret(upstream_node)))
}

/// The name a node authenticates with upstream (registered there as a trusted server).
pub fn node_identity_name(node: &str, namespace: &str) -> String {
    format!("CN={node}.{namespace}")
}

pub fn node_config(
    node: &str,
    namespace: &str,
    spec: &SyncNodeSpec,
    upstreams: &[ResolvedUpstream],
) -> NodeConfig {
    let mut config = NodeConfig {
        name: node_identity_name(node, namespace),
        role: spec.role,
        listen: ([0, 0, 0, 0], NODE_PORT as u16).into(),
        data_dir: PathBuf::from(paths::DATA_DIR),
        storage: StorageConfig {
            kind: spec
                .storage
                .kind
                .map_or(StorageConfig::default().kind, StorageKind::from),
            ..StorageConfig::default()
        },
        directory_file: Some(PathBuf::from(format!(
            "{}/directory.yaml",
            paths::DIRECTORY_DIR
        ))),
        log_format: LogFormat::Json,
        upstream_mode: spec.upstream_mode,
        databases: spec.databases.clone(),
        sync: spec.sync.clone().unwrap_or_default(),
        ..NodeConfig::default()
    };
    config.identity.signing_key_file = Some(format!("{}/signing.pem", paths::IDENTITY_DIR).into());
    config.identity.encryption_key_file =
        Some(format!("{}/encryption.pem", paths::IDENTITY_DIR).into());
    config.auth.secret_file = Some(format!("{}/auth-secret", paths::AUTH_DIR).into());
    if spec.tls.is_some() {
        config.tls = Some(TlsConfig {
            cert_file: format!("{}/tls.crt", paths::TLS_DIR).into(),
            key_file: format!("{}/tls.key", paths::TLS_DIR).into(),
        });
    }
    if let Some(bytes) = spec.cache_max_bytes {
        config.cache = CacheConfig { max_bytes: bytes };
    }
    config.upstreams = upstreams
        .iter()
        .enumerate()
        .map(|(i, u)| RemoteConfig {
            name: u.name.clone(),
            url: u.url.clone(),
            ca_file: u
                .ca_secret
                .as_ref()
                .map(|_| format!("{}/{i}/ca.crt", paths::UPSTREAM_CA_DIR).into()),
        })
        .collect();
    // Replicas of a node set with local copies find each other through the headless Service and
    // sync as peers; each pod skips itself (same list in every pod).
    if has_peers(spec) {
        let scheme = if spec.tls.is_some() { "https" } else { "http" };
        config.peers = (0..spec.replicas)
            .map(|i| RemoteConfig {
                name: format!("{node}-{i}"),
                url: format!("{scheme}://{}:{NODE_PORT}", peer_host(node, i, namespace)),
                ca_file: spec
                    .tls
                    .as_ref()
                    .map(|_| format!("{}/ca.crt", paths::TLS_DIR).into()),
            })
            .collect();
    }
    config.witness = matches!(spec.role, syncrelay_node::config::Role::Origin);
    config
}

/// `node.yaml` for the ConfigMap.
pub fn config_yaml(config: &NodeConfig) -> String {
    config.to_yaml()
}

/// Hash of everything whose change must restart the pods (the config text).
pub fn config_hash(config_yaml: &str) -> String {
    hex::encode(&Sha256::digest(config_yaml.as_bytes())[..8])
}

pub fn config_map(node: &str, namespace: &str, spec: &SyncNodeSpec, yaml: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(config_map_name(node)),
            namespace: Some(namespace.into()),
            labels: Some(labels(node, spec.role)),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            "node.yaml".to_string(),
            yaml.to_string(),
        )])),
        ..ConfigMap::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upstream_node_s_ca_is_its_tls_secret_unless_one_is_named() {
        let issued = TlsSpec {
            issuer_ref: Some(crate::crd::IssuerRef {
                name: "ca".into(),
                kind: "Issuer".into(),
                group: "cert-manager.io".into(),
            }),
            ..TlsSpec::default()
        };
        assert_eq!(
            upstream_ca_secret(None, "origin", Some(&issued)).as_deref(),
            Some("origin-tls")
        );
        let own = TlsSpec {
            secret_name: Some("mine".into()),
            ..TlsSpec::default()
        };
        assert_eq!(
            upstream_ca_secret(None, "origin", Some(&own)).as_deref(),
            Some("mine")
        );
        assert_eq!(
            upstream_ca_secret(Some("corp-ca"), "origin", Some(&own)).as_deref(),
            Some("corp-ca")
        );
        assert_eq!(upstream_ca_secret(None, "origin", None), None);
    }
}
