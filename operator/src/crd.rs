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
use syncrelay_node::store::engine::EngineKind;

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
    doc = "A set of syncrelay nodes (origin, relay, edge or peer) with the same role, upstreams and storage: the operator runs it as a StatefulSet (or Deployment for edges) behind one Service, and reports its readiness, upstream link, lag and disk use in the status.",
    printcolumn = r#"{"name":"Role","type":"string","jsonPath":".spec.role"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Upstream","type":"string","jsonPath":".status.upstream"}"#,
    printcolumn = r#"{"name":"Lag","type":"integer","jsonPath":".status.lag"}"#,
    printcolumn = r#"{"name":"Disk","type":"integer","format":"int64","jsonPath":".status.diskBytes"}"#,
    printcolumn = r#"{"name":"Delay","type":"number","jsonPath":".status.delaySeconds"}"#,
    printcolumn = r#"{"name":"Backup","type":"date","jsonPath":".status.backup.lastSuccess.completionTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SyncNodeSpec {
    /// What the node does: `origin` (full copy, witnesses client writes), `relay` (full copy kept
    /// in sync with its upstreams), `edge` (bounded cache in front of its upstream), `passthrough`
    /// (no local data, forwards everything) or `peer` (full copy synced both ways with its peers).
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
    /// `failover` (default): the first reachable upstream in list order is used; `merged`: the
    /// node syncs with every upstream and holds the union (relay only).
    #[serde(default)]
    pub upstream_mode: UpstreamMode,
    /// Databases synced from the start (any database a client touches is added by the node).
    #[serde(default)]
    pub databases: Vec<DatabaseRef>,
    /// Secret holding the tenant directory under key `directory.yaml`.
    pub directory_secret: String,
    /// Persistent volume of each pod (origin, relay and peer keep their data on it).
    #[serde(default)]
    pub storage: StorageSpec,
    /// Edge cache limit in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1048576))]
    pub cache_max_bytes: Option<u64>,
    /// The Service in front of the node's pods (clients and downstream nodes use it).
    #[serde(default)]
    pub service: ServiceSpec,
    /// Serve HTTPS from a certificate Secret; downstream nodes then trust its `ca.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Sync tuning passed to the node as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncConfig>,
    /// CPU and memory requests and limits of the node container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Where the pods may run: node selector, tolerations, affinity, spread, priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling: Option<Scheduling>,
    /// Extra labels, annotations and service account of the pods.
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
    /// Scheduled backups of every database the node carries (origin, relay, peer): a CronJob
    /// pulls them with the node's own identity into a volume of its own and keeps the newest
    /// `keep` snapshots; `syncrelay-node restore` brings a snapshot back (README runbook).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,
}

fn default_keep() -> u32 {
    7
}

/// Scheduled backups of a node set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// Cron schedule of the backup runs (e.g. `0 3 * * *`), in the controller manager's time zone.
    #[schemars(length(min = 1, max = 100))]
    pub schedule: String,
    /// The backup volume (one PVC `<node>-backup`, holding the incremental store and the
    /// snapshots).
    #[serde(default)]
    pub storage: StorageSpec,
    /// Snapshots kept (the newest); older ones are deleted after each successful run.
    #[serde(default = "default_keep")]
    #[schemars(range(min = 1, max = 1000))]
    pub keep: u32,
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

/// Persistent volume of each pod.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// PVC size per pod (origin, relay, peer).
    #[serde(default = "default_storage_size")]
    pub size: String,
    /// StorageClass of the PVCs; the cluster's default class when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// The on-disk engine of a new volume (`sled` or `fjall`; unset: the node's default). A volume
    /// keeps the engine it was first written with: changing this later affects new volumes only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<EngineKind>,
}

fn default_storage_size() -> String {
    "10Gi".into()
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            size: default_storage_size(),
            storage_class_name: None,
            kind: None,
        }
    }
}

/// How the Service is exposed: `ClusterIP` (in-cluster only), `NodePort` or `LoadBalancer`.
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
    /// Service type: `ClusterIP` (default, in-cluster only), `NodePort` or `LoadBalancer`.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Annotations of the Service (e.g. for a cloud load balancer).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// TLS for the node's listener, from a Secret with `tls.crt`, `tls.key` and `ca.crt`; clients of
/// the next hop trust `ca.crt`. With `issuerRef` the operator has cert-manager issue and renew that
/// Secret (a `Certificate` for every DNS name the node is reached by).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Secret of type kubernetes.io/tls in the same namespace, with `tls.crt`, `tls.key` and
    /// `ca.crt`. Required without `issuerRef`; with it, defaults to `<node>-tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: Option<String>,
    /// A cert-manager issuer: the operator renders a cert-manager.io/v1 `Certificate` writing
    /// `secretName` (only where cert-manager's API is served; otherwise `Ready=False`, reason
    /// `CertManagerMissing`, and the pods wait for the Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,
    /// Further DNS names of the certificate besides the Service's and the pods' own (e.g. the
    /// hostname of a LoadBalancer that other clusters use). Only with `issuerRef`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub dns_names: Vec<String>,
}

impl TlsSpec {
    /// The Secret the node serves from: `secretName`, or `<node>-tls` when cert-manager issues it.
    pub fn secret(&self, node: &str) -> String {
        self.secret_name
            .clone()
            .unwrap_or_else(|| format!("{node}-tls"))
    }
}

fn default_issuer_kind() -> String {
    "Issuer".into()
}

fn default_issuer_group() -> String {
    "cert-manager.io".into()
}

/// The cert-manager issuer of a node's certificate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// Name of the Issuer (same namespace) or ClusterIssuer.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `Issuer` (default) or `ClusterIssuer`; an external issuer's own kind with its `group`.
    #[serde(default = "default_issuer_kind")]
    #[schemars(length(min = 1, max = 63))]
    pub kind: String,
    /// API group of the issuer: `cert-manager.io` (default) or an external issuer's group.
    #[serde(default = "default_issuer_group")]
    #[schemars(length(min = 1, max = 253))]
    pub group: String,
}

/// Where the pods may run (copied into the pod spec as is).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Scheduling {
    /// Labels a Kubernetes node must carry for the pods to run on it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Node and pod (anti-)affinity of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// How the pods spread over zones or hosts (e.g. one replica of an origin per zone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

/// Additions to the pods the operator renders.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    /// Extra labels of the pods (the operator's own selector labels always win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra annotations of the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// ServiceAccount the pods run as (the namespace's default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
}

/// What the operator last saw of the node set (from the pods' own `/status`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncNodeStatus {
    /// The `metadata.generation` this status describes; older means the operator has not yet
    /// acted on the latest spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (serving), `Progressing` (pods rolling out), `Degraded` (the spec cannot be
    /// applied) and `UpstreamConnected` (an upstream link works), each with `observedGeneration`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// In-cluster URL clients and downstream nodes use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The upstreams this node set pulls from (SyncNode names or URLs, comma-separated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Largest pull lag (entries) the node's pods report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// Replication delay, p99 over the last 5 minutes, of the node's slowest link (seconds from
    /// the origin's receipt of an entry to its storage here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_seconds: Option<f64>,
    /// Entries the answering pod holds, over all carried databases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<i64>,
    /// Bytes the answering pod's data directory occupies on disk (each replica holds a full copy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<i64>,
    /// Distinct payload bytes that pod holds: what the disk use is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_bytes: Option<i64>,
    /// When an upstream link last completed a sync (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<String>,
    /// Scheduled backups (`spec.backup`): the newest run and the newest successful one, from the
    /// backup Jobs Kubernetes still keeps (the last three of each outcome).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupStatus>,
}

/// What the operator knows of a node set's backups.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// Whether the cluster runs the CronJob (false: its API is not served, see `message`).
    pub scheduled: bool,
    /// Why backups are not scheduled, when they are not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The newest backup run, whatever its outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<BackupRun>,
    /// The newest run that took a snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<BackupRun>,
}

/// One backup run (a Job of the backup CronJob).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRun {
    /// The Job's name.
    pub job: String,
    /// `Running`, `Succeeded` or `Failed`.
    pub result: String,
    /// When the Job started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When it succeeded or failed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    /// Entries in the snapshot, over all databases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<i64>,
    /// Databases (stores) in the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stores: Option<i64>,
    /// The snapshot's folder under `snapshots/` on the backup volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Why a run failed (the backup's own message, cut to fit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
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
    doc = "A declared relay topology (origin → relays → edges): the operator creates one SyncNode per node, an identity for each, and the chain's directory Secret trusting them, and reports the chain's readiness and worst lag in the status.",
    printcolumn = r#"{"name":"Nodes","type":"integer","jsonPath":".status.nodeCount"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Lag","type":"integer","jsonPath":".status.lag"}"#,
    printcolumn = r#"{"name":"Delay","type":"number","jsonPath":".status.delaySeconds"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SyncChainSpec {
    /// The nodes of the chain (one SyncNode each); upstreams name other nodes of this list.
    #[schemars(length(min = 1, max = 64))]
    pub nodes: Vec<ChainNode>,
    /// The origin lives elsewhere (another cluster or region); nodes without upstreams sync from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_origin: Option<UpstreamRef>,
    /// Secret with the tenant directory, distributed to every node.
    pub directory_secret: String,
    /// Container image of every node; defaults to the operator's own version of `syncrelay`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Databases every node syncs from the start (any database a client touches is added).
    #[serde(default)]
    pub databases: Vec<DatabaseRef>,
    /// Stop reconciling the chain (its SyncNodes stay as they are).
    #[serde(default)]
    pub paused: bool,
}

/// One node of a chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChainNode {
    /// Name within the chain; the SyncNode is named `<chain>-<name>`.
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// `origin`, `relay`, `edge` or `passthrough` (not `peer`: use replicas); a chain has one
    /// origin, or none and an `externalOrigin`.
    pub role: Role,
    /// Names of other nodes of this chain, in failover order.
    #[serde(default)]
    pub upstreams: Vec<String>,
    /// Pods of this node; replicas of an origin or relay sync with each other as peers.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 16))]
    pub replicas: i32,
    /// Persistent volume of each pod (default 10Gi of the default StorageClass).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
    /// Edge cache limit in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_max_bytes: Option<u64>,
    /// The Service in front of this node's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceSpec>,
    /// CPU and memory requests and limits of the node container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Where the pods may run: node selector, tolerations, affinity, spread, priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling: Option<Scheduling>,
    /// Serve HTTPS from a certificate Secret; downstream nodes of the chain trust its `ca.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Scheduled backups of this node (origin or relay), as `SyncNode.spec.backup`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,
}

/// What the operator last saw of the chain (from its SyncNodes).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncChainStatus {
    /// The `metadata.generation` this status describes; older means the operator has not yet
    /// acted on the latest spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (every node ready), `Progressing` (node identities still being wired) and
    /// `Degraded` (invalid topology or missing directory), each with `observedGeneration`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Number of nodes in the chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_count: Option<i32>,
    /// Largest pull lag (entries) over the chain's nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// The worst hop's p99 replication delay (seconds from the origin's receipt of an entry to its
    /// storage at that hop, over the last 5 minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_seconds: Option<f64>,
    /// The node of that hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_node: Option<String>,
    /// Each node's readiness, lag and entry count, in the order of `spec.nodes`.
    #[serde(default)]
    pub nodes: Vec<ChainNodeStatus>,
}

/// One node of the chain as its SyncNode reports it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChainNodeStatus {
    /// The node's name within the chain.
    pub name: String,
    /// The node's role.
    pub role: String,
    /// Whether the node's SyncNode has `Ready=True`.
    pub ready: bool,
    /// The node's largest pull lag (entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// The node's p99 replication delay (seconds; see `SyncNode.status.delaySeconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_seconds: Option<f64>,
    /// Entries the node holds.
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

    /// Whether a schema node has a description that says something (kube's placeholder does not).
    fn described(schema: &serde_json::Value) -> bool {
        schema["description"]
            .as_str()
            .is_some_and(|d| !d.trim().is_empty() && !d.starts_with("Auto-generated"))
    }

    /// Paths of schema nodes without a (teaching) description: every property, list item and map
    /// value that is an object, walked through `anyOf`/`oneOf`/`allOf`, so `kubectl explain` has
    /// something to say at every level.
    fn undescribed(schema: &serde_json::Value, path: &str, out: &mut Vec<String>) {
        if let Some(props) = schema["properties"].as_object() {
            for (name, prop) in props {
                let p = format!("{path}.{name}");
                if !described(prop) {
                    out.push(p.clone());
                }
                undescribed(prop, &p, out);
            }
        }
        if schema["items"].is_object() {
            undescribed(&schema["items"], &format!("{path}[]"), out);
        }
        if schema["additionalProperties"].is_object() {
            undescribed(&schema["additionalProperties"], &format!("{path}{{}}"), out);
        }
        for key in ["anyOf", "oneOf", "allOf"] {
            for alternative in schema[key].as_array().into_iter().flatten() {
                undescribed(alternative, path, out);
            }
        }
    }

    #[test]
    fn every_field_of_every_crd_has_a_description() {
        use kube::CustomResourceExt;
        let mut missing = Vec::new();
        for crd in [SyncNode::crd(), SyncChain::crd()] {
            let kind = crd.spec.names.kind.clone();
            let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
            let root = &schema["openAPIV3Schema"];
            assert!(root.is_object(), "{kind}: no schema");
            let mut here = Vec::new();
            if !described(root) {
                here.push(kind.clone());
            }
            undescribed(root, &kind, &mut here);
            missing.extend(here);
        }
        assert!(
            missing.is_empty(),
            "fields without a description (add a /// comment):\n{}",
            missing.join("\n")
        );
    }

    #[test]
    fn the_description_walker_finds_what_is_missing() {
        let schema = serde_json::json!({
            "properties": {
                "a": {"description": "ok", "properties": {"b": {"type": "string"}}},
                "l": {"description": "ok", "items": {"properties": {"c": {"description": ""}}}},
                "m": {"description": "ok", "additionalProperties": {"properties": {"d": {}}}},
                "e": {"description": "ok", "anyOf": [{"properties": {"f": {}}}]},
                "g": {"description": "Auto-generated derived type"}
            }
        });
        let mut out = Vec::new();
        undescribed(&schema, "X", &mut out);
        out.sort();
        assert_eq!(out, ["X.a.b", "X.e.f", "X.g", "X.l[].c", "X.m{}.d"]);
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
