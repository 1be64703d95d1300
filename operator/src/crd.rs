//! The custom resources. `SyncNode` is one node set (role, replicas, upstreams, storage, exposure);
//! `SyncChain` declares a topology of named nodes and owns the `SyncNode`s it implies.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use syncrelay_node::config::{DatabaseRef, Role, SyncConfig, UpstreamMode};

pub const GROUP: &str = "syncrelay.io";
/// Port every node listens on inside its pod (the reference server's default).
pub const NODE_PORT: i32 = 1661;

fn default_replicas() -> i32 {
    1
}

/// One node set.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "syncrelay.io",
    version = "v1alpha1",
    kind = "SyncNode",
    namespaced,
    status = "SyncNodeStatus",
    shortname = "sn",
    printcolumn = r#"{"name":"Role","type":"string","jsonPath":".spec.role"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Upstream","type":"string","jsonPath":".status.upstream"}"#,
    printcolumn = r#"{"name":"Lag","type":"integer","jsonPath":".status.lag"}"#,
    printcolumn = r#"{"name":"Disk","type":"integer","format":"int64","jsonPath":".status.diskBytes"}"#,
    printcolumn = r#"{"name":"Delay","type":"number","jsonPath":".status.delaySeconds"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SyncNodeSpec {
    pub role: Role,
    /// Pods of this node set; replicas of an origin or relay sync with each other as peers.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 16))]
    pub replicas: i32,
    /// Container image; defaults to the operator's own version of `syncrelay`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Upstreams in failover order (or merged, see `upstreamMode`).
    #[serde(default)]
    pub upstreams: Vec<UpstreamRef>,
    #[serde(default)]
    pub upstream_mode: UpstreamMode,
    /// Databases synced from the start (any database a client touches is added by the node).
    #[serde(default)]
    pub databases: Vec<DatabaseRef>,
    /// Secret holding the tenant directory under key `directory.yaml`.
    pub directory_secret: String,
    #[serde(default)]
    pub storage: StorageSpec,
    /// Edge cache limit in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1048576))]
    pub cache_max_bytes: Option<u64>,
    #[serde(default)]
    pub service: ServiceSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Sync tuning passed to the node as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling: Option<Scheduling>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodOverrides>,
    /// A Prometheus-operator ServiceMonitor for the node's /metrics (only where that API is served).
    #[serde(default)]
    pub service_monitor: bool,
    /// PodDisruptionBudget `maxUnavailable` for node sets with more than one replica (policy/v1,
    /// only where that API is served). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_unavailable: Option<i32>,
    /// Stop reconciling this node set (its objects stay as they are).
    #[serde(default)]
    pub paused: bool,
}

/// An upstream: another SyncNode in this namespace, or an external URL.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamRef {
    /// Name of a SyncNode in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Base URL of an external node or MindooDB server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// For an external URL: Secret with this node's identity as registered there
    /// (`signing.pem`, `encryption.pem`); otherwise the generated identity is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_secret: Option<String>,
    /// Secret with the CA bundle (`ca.crt`) to trust for an https upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// PVC size per pod (origin, relay, peer).
    #[serde(default = "default_storage_size")]
    pub size: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

fn default_storage_size() -> String {
    "10Gi".into()
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            size: default_storage_size(),
            storage_class_name: None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// TLS for the node's listener, from a Secret (e.g. issued by cert-manager) with `tls.crt`,
/// `tls.key` and `ca.crt`; clients of the next hop trust `ca.crt`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    pub secret_name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Scheduling {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncNodeStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// In-cluster URL clients and downstream nodes use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Largest pull lag (entries) the node's pods report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// Replication delay, p99 over the last 5 minutes, of the node's slowest link (seconds from
    /// the origin's receipt of an entry to its storage here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<i64>,
    /// Bytes the answering pod's data directory occupies on disk (each replica holds a full copy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<i64>,
    /// Distinct payload bytes that pod holds: what the disk use is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_bytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<String>,
}

/// A declared topology.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "syncrelay.io",
    version = "v1alpha1",
    kind = "SyncChain",
    namespaced,
    status = "SyncChainStatus",
    shortname = "sc",
    printcolumn = r#"{"name":"Nodes","type":"integer","jsonPath":".status.nodeCount"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Lag","type":"integer","jsonPath":".status.lag"}"#,
    printcolumn = r#"{"name":"Delay","type":"number","jsonPath":".status.delaySeconds"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SyncChainSpec {
    #[schemars(length(min = 1, max = 64))]
    pub nodes: Vec<ChainNode>,
    /// The origin lives elsewhere (another cluster or region); nodes without upstreams sync from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_origin: Option<UpstreamRef>,
    /// Secret with the tenant directory, distributed to every node.
    pub directory_secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default)]
    pub databases: Vec<DatabaseRef>,
    #[serde(default)]
    pub paused: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChainNode {
    /// Name within the chain; the SyncNode is named `<chain>-<name>`.
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    pub role: Role,
    /// Names of other nodes of this chain, in failover order.
    #[serde(default)]
    pub upstreams: Vec<String>,
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 16))]
    pub replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_max_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling: Option<Scheduling>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncChainStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_count: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// The worst hop's p99 replication delay (seconds from the origin's receipt of an entry to its
    /// storage at that hop, over the last 5 minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_seconds: Option<f64>,
    /// The node of that hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_node: Option<String>,
    #[serde(default)]
    pub nodes: Vec<ChainNodeStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChainNodeStatus {
    pub name: String,
    pub role: String,
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// The node's p99 replication delay (seconds; see `SyncNode.status.delaySeconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<i64>,
}

/// Every CRD as YAML documents: what `syncrelay-operator crd` prints and `crds/` holds.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    let mut out = String::new();
    for crd in [SyncNode::crd(), SyncChain::crd()] {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_in_crds_match_the_types() {
        let checked_in = include_str!("../../crds/syncrelay.io.yaml");
        assert!(
            checked_in == crd_yaml().unwrap(),
            "crds/syncrelay.io.yaml is stale: run `cargo run -p syncrelay-operator -- crd > crds/syncrelay.io.yaml`"
        );
    }

    #[test]
    fn specs_take_their_defaults() {
        let spec: SyncNodeSpec =
            serde_json::from_value(serde_json::json!({"role": "relay", "directorySecret": "dir"}))
                .unwrap();
        assert_eq!(spec.replicas, 1);
        assert_eq!(spec.storage.size, "10Gi");
        assert_eq!(spec.service.type_, ServiceType::ClusterIP);
        assert!(!spec.paused);
        let bad = serde_json::from_value::<SyncNodeSpec>(
            serde_json::json!({"role": "router", "directorySecret": "dir"}),
        );
        assert!(bad.is_err(), "unknown roles are refused");
    }
}
