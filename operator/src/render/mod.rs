//! Pure builders: every object the operator writes for a `SyncNode`, from its spec and what the
//! reconciler resolved (upstream URLs, whether TLS is on). No client, no I/O: unit-tested directly.
//!
//! Names: Service `<node>`, headless Service `<node>-peers` (replicas > 1), ConfigMap `<node>-config`,
//! identity Secret `<node>-identity`, StatefulSet or Deployment `<node>`, and with `spec.backup` a
//! PersistentVolumeClaim and CronJob `<node>-backup`; with `spec.tls.issuerRef` a cert-manager
//! Certificate `<node>` writing Secret `<node>-tls` (or `spec.tls.secretName`).

pub mod backup;
pub mod certificate;
pub mod chain;
pub mod config;
pub mod monitoring;
pub mod service;
pub mod workload;

use std::collections::BTreeMap;

use syncrelay_node::config::Role;

/// Where things are mounted in a node's pod.
pub mod paths {
    pub const CONFIG_DIR: &str = "/etc/syncrelay/config";
    pub const CONFIG_FILE: &str = "/etc/syncrelay/config/node.yaml";
    pub const IDENTITY_DIR: &str = "/etc/syncrelay/identity";
    pub const AUTH_DIR: &str = "/etc/syncrelay/auth";
    pub const DIRECTORY_DIR: &str = "/etc/syncrelay/directory";
    pub const TLS_DIR: &str = "/etc/syncrelay/tls";
    pub const UPSTREAM_CA_DIR: &str = "/etc/syncrelay/upstream-ca";
    pub const DATA_DIR: &str = "/data";
}

pub const FIELD_MANAGER: &str = "syncrelay-operator";
pub const CONFIG_HASH_ANNOTATION: &str = "syncrelay.io/config-hash";
pub const NODE_LABEL: &str = "syncrelay.io/node";
/// The cluster's DNS domain (the kubelet's `clusterDomain`; the operator assumes the default).
pub const CLUSTER_DOMAIN: &str = "cluster.local";

pub fn config_map_name(node: &str) -> String {
    format!("{node}-config")
}

pub fn identity_secret_name(node: &str) -> String {
    format!("{node}-identity")
}

pub fn peers_service_name(node: &str) -> String {
    format!("{node}-peers")
}

/// Whether a node set's replicas sync with each other as peers through the headless Service.
pub fn has_peers(spec: &crate::crd::SyncNodeSpec) -> bool {
    is_stateful(spec.role) && spec.replicas > 1
}

/// Fully qualified DNS name of replica `i` of a node set, through its headless Service (what its
/// peers dial).
pub fn peer_host(node: &str, i: i32, namespace: &str) -> String {
    format!(
        "{node}-{i}.{}.{namespace}.svc.{CLUSTER_DOMAIN}",
        peers_service_name(node)
    )
}

/// Labels selecting a node's pods (stable: part of the workload selector).
pub fn selector_labels(node: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "syncrelay-node".to_string(),
        ),
        ("app.kubernetes.io/instance".to_string(), node.to_string()),
    ])
}

/// Labels on everything the operator creates for a node.
pub fn labels(node: &str, role: Role) -> BTreeMap<String, String> {
    let mut l = selector_labels(node);
    l.insert("app.kubernetes.io/component".into(), role.as_str().into());
    l.insert("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into());
    l.insert(NODE_LABEL.into(), node.into());
    l
}

/// Whether a role runs as a StatefulSet with a volume per pod.
pub fn is_stateful(role: Role) -> bool {
    role.has_local_copy()
}

#[cfg(test)]
mod tests;
