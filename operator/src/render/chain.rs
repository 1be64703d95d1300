//! What a `SyncChain` renders to: one `SyncNode` per declared node (named `<chain>-<node>`, wired
//! to its upstreams, or to the chain's external origin), and the chain's directory — the user's
//! directory with every chain node's identity added as a trusted server of every tenant, so that
//! each hop can authenticate to the next.

use std::collections::BTreeMap;

use kube::api::ObjectMeta;
use syncrelay_node::directory::{DirectoryFile, ServerEntry};

use super::config::{node_identity_name, upstream_ca_secret};
use crate::crd::{ChainNode, SyncChainSpec, SyncNode, SyncNodeSpec, UpstreamRef};

pub const CHAIN_LABEL: &str = "syncrelay.io/chain";

pub fn node_name(chain: &str, node: &str) -> String {
    format!("{chain}-{node}")
}

pub fn directory_secret_name(chain: &str) -> String {
    format!("{chain}-directory")
}

fn node_spec(chain: &str, spec: &SyncChainSpec, n: &ChainNode) -> SyncNodeSpec {
    let upstreams = if n.upstreams.is_empty() {
        spec.external_origin.iter().cloned().collect()
    } else {
        n.upstreams
            .iter()
            .map(|u| {
                let node = node_name(chain, u);
                // A hop trusts its upstream's CA: the `ca.crt` of the upstream's TLS Secret.
                let tls = spec
                    .nodes
                    .iter()
                    .find(|m| &m.name == u)
                    .and_then(|m| m.tls.as_ref());
                UpstreamRef {
                    ca_secret: upstream_ca_secret(None, &node, tls),
                    node: Some(node),
                    ..UpstreamRef::default()
                }
            })
            .collect()
    };
    SyncNodeSpec {
        role: n.role,
        replicas: n.replicas,
        image: spec.image.clone(),
        upstreams,
        upstream_mode: Default::default(),
        databases: spec.databases.clone(),
        directory_secret: directory_secret_name(chain),
        storage: n.storage.clone().unwrap_or_default(),
        cache_max_bytes: n.cache_max_bytes,
        service: n.service.clone().unwrap_or_default(),
        tls: n.tls.clone(),
        sync: None,
        resources: n.resources.clone(),
        scheduling: n.scheduling.clone(),
        pod_template: None,
        service_monitor: false,
        max_unavailable: None,
        paused: false,
        backup: n.backup.clone(),
    }
}

/// The SyncNodes of a chain (owner references are added by the reconciler).
pub fn sync_nodes(chain: &str, namespace: &str, spec: &SyncChainSpec) -> Vec<SyncNode> {
    spec.nodes
        .iter()
        .map(|n| {
            let name = node_name(chain, &n.name);
            let mut node = SyncNode::new(&name, node_spec(chain, spec, n));
            node.metadata = ObjectMeta {
                name: Some(name),
                namespace: Some(namespace.into()),
                labels: Some(BTreeMap::from([
                    (CHAIN_LABEL.to_string(), chain.to_string()),
                    (
                        "app.kubernetes.io/managed-by".to_string(),
                        super::FIELD_MANAGER.to_string(),
                    ),
                ])),
                ..ObjectMeta::default()
            };
            node
        })
        .collect()
}

/// A node identity's public half, as read from its identity Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeKeys {
    pub node: String,
    pub signing_public_key: String,
    pub encryption_public_key: String,
}

/// The user's directory plus every chain node as a trusted server of every tenant (existing
/// entries of the same name are replaced, so a regenerated identity takes over).
pub fn chain_directory(user: &DirectoryFile, namespace: &str, nodes: &[NodeKeys]) -> DirectoryFile {
    let mut out = user.clone();
    for tenant in out.tenants.values_mut() {
        for keys in nodes {
            let name = node_identity_name(&keys.node, namespace);
            tenant.trusted_servers.retain(|s| s.name != name);
            tenant.trusted_servers.push(ServerEntry {
                name,
                signing_public_key: keys.signing_public_key.clone(),
                encryption_public_key: keys.encryption_public_key.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncrelay_node::config::Role;
    use syncrelay_node::directory::TenantFile;

    fn chain_spec(external: bool) -> SyncChainSpec {
        serde_json::from_value(serde_json::json!({
            "directorySecret": "acme",
            "externalOrigin": if external { serde_json::json!({"url": "https://central.example:1661"}) } else { serde_json::Value::Null },
            "nodes": if external {
                serde_json::json!([{"name": "relay", "role": "relay"}, {"name": "edge", "role": "edge", "upstreams": ["relay"]}])
            } else {
                serde_json::json!([
                    {"name": "origin", "role": "origin"},
                    {"name": "relay", "role": "relay", "upstreams": ["origin"], "replicas": 2},
                    {"name": "edge", "role": "edge", "upstreams": ["relay"]}
                ])
            }
        }))
        .unwrap()
    }

    #[test]
    fn nodes_are_named_labelled_and_wired() {
        let nodes = sync_nodes("acme", "sync", &chain_spec(false));
        let names: Vec<String> = nodes
            .iter()
            .map(|n| n.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["acme-origin", "acme-relay", "acme-edge"]);
        assert_eq!(
            nodes[1].spec.upstreams[0].node.as_deref(),
            Some("acme-origin")
        );
        assert_eq!(nodes[1].spec.replicas, 2);
        assert_eq!(nodes[2].spec.role, Role::Edge);
        assert!(nodes
            .iter()
            .all(|n| n.spec.directory_secret == "acme-directory"));
        assert_eq!(
            nodes[0].metadata.labels.as_ref().unwrap()[CHAIN_LABEL],
            "acme"
        );
    }

    #[test]
    fn nodes_without_upstreams_use_the_external_origin() {
        let nodes = sync_nodes("eu", "sync", &chain_spec(true));
        assert_eq!(
            nodes[0].spec.upstreams[0].url.as_deref(),
            Some("https://central.example:1661")
        );
        assert_eq!(nodes[1].spec.upstreams[0].node.as_deref(), Some("eu-relay"));
    }

    #[test]
    fn a_hop_trusts_the_ca_of_its_tls_upstream() {
        let spec: SyncChainSpec = serde_json::from_value(serde_json::json!({
            "directorySecret": "acme",
            "nodes": [
                {"name": "origin", "role": "origin", "tls": {"issuerRef": {"name": "ca"}}},
                {"name": "relay", "role": "relay", "upstreams": ["origin"],
                 "tls": {"secretName": "relay-cert"}},
                {"name": "edge", "role": "edge", "upstreams": ["relay"]},
                {"name": "plain", "role": "edge", "upstreams": ["edge"]}
            ]
        }))
        .unwrap();
        let nodes = sync_nodes("acme", "sync", &spec);
        // cert-manager's default Secret name of the upstream, then a Secret the user named.
        assert_eq!(
            nodes[1].spec.upstreams[0].ca_secret.as_deref(),
            Some("acme-origin-tls")
        );
        assert_eq!(
            nodes[2].spec.upstreams[0].ca_secret.as_deref(),
            Some("relay-cert")
        );
        // An upstream without TLS: nothing to trust.
        assert_eq!(nodes[3].spec.upstreams[0].ca_secret, None);
        // The issuer travels with the node.
        assert_eq!(
            nodes[0]
                .spec
                .tls
                .as_ref()
                .unwrap()
                .issuer_ref
                .as_ref()
                .unwrap()
                .name,
            "ca"
        );
    }

    #[test]
    fn every_node_becomes_a_trusted_server_of_every_tenant() {
        let mut user = DirectoryFile::default();
        user.tenants.insert("acme".into(), TenantFile::default());
        user.tenants.insert("globex".into(), TenantFile::default());
        let keys = vec![
            NodeKeys {
                node: "c-relay".into(),
                signing_public_key: "S1".into(),
                encryption_public_key: "E1".into(),
            },
            NodeKeys {
                node: "c-edge".into(),
                signing_public_key: "S2".into(),
                encryption_public_key: "E2".into(),
            },
        ];
        let dir = chain_directory(&user, "sync", &keys);
        for tenant in dir.tenants.values() {
            let names: Vec<&str> = tenant
                .trusted_servers
                .iter()
                .map(|s| s.name.as_str())
                .collect();
            assert_eq!(names, ["CN=c-relay.sync", "CN=c-edge.sync"]);
        }
        // Idempotent, and a new key replaces the old entry.
        let mut rotated = keys.clone();
        rotated[0].signing_public_key = "S1b".into();
        let again = chain_directory(&dir, "sync", &rotated);
        let acme = &again.tenants["acme"];
        assert_eq!(acme.trusted_servers.len(), 2);
        assert!(acme
            .trusted_servers
            .iter()
            .any(|s| s.signing_public_key == "S1b"));
    }
}
