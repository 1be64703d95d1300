//! The reconcilers. Each runs the pipeline read → validate → build (pure, `render`) → server-side
//! apply with one field manager → status, with owner references for garbage collection and a
//! per-object exponential backoff on errors.

pub mod backup;
pub mod certificate;
pub mod conditions;
pub mod syncchain;
pub mod syncnode;
pub mod upstream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};

/// Errors of one reconcile; `label` is the `kind` label of the errors metric.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("invalid spec: {0}")]
    Invalid(String),
    #[error("generating the node identity: {0}")]
    Identity(String),
    #[error("serialising {0}")]
    Serialize(String),
}

impl Error {
    pub fn label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Invalid(_) => "invalid_spec",
            Error::Identity(_) => "identity",
            Error::Serialize(_) => "serialize",
        }
    }
}

/// Shared by all reconciles.
pub struct Context {
    pub client: Client,
    pub reporter: Reporter,
    /// Consecutive failures per object, for exponential backoff.
    pub failures: Mutex<HashMap<String, u32>>,
    /// Whether this replica holds the leader Lease (only the leader writes).
    pub leader: Arc<std::sync::atomic::AtomicBool>,
    pub http: reqwest::Client,
    pub metrics: crate::metrics::Metrics,
    /// Optional APIs this cluster serves (asked once at start).
    pub served: ServedApis,
    /// cert-manager's Certificate API found after the start (see `certificate`).
    pub certificates_found: std::sync::atomic::AtomicBool,
    /// Per object: hash of the content last applied and the resourceVersion it produced.
    pub applied: Mutex<HashMap<String, (String, String)>>,
    /// Image of node pods whose SyncNode names none.
    pub node_image: String,
}

/// Optional APIs found by discovery.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServedApis {
    pub pdb_v1: bool,
    pub service_monitor: bool,
    /// `batch/v1` (Kubernetes 1.21+) or `batch/v1beta1` (1.20): where backup CronJobs go.
    pub cron_job: Option<&'static str>,
    /// cert-manager.io/v1 Certificate.
    pub certificate: bool,
}

impl ServedApis {
    pub async fn discover(client: &Client) -> Self {
        let has = |list: Result<
            k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList,
            kube::Error,
        >,
                   kind: &str| {
            list.map(|l| l.resources.iter().any(|r| r.kind == kind))
                .unwrap_or(false)
        };
        ServedApis {
            pdb_v1: has(
                client.list_api_group_resources("policy/v1").await,
                "PodDisruptionBudget",
            ),
            service_monitor: has(
                client
                    .list_api_group_resources("monitoring.coreos.com/v1")
                    .await,
                "ServiceMonitor",
            ),
            cron_job: if has(client.list_api_group_resources("batch/v1").await, "CronJob") {
                Some("batch/v1")
            } else if has(
                client.list_api_group_resources("batch/v1beta1").await,
                "CronJob",
            ) {
                Some("batch/v1beta1")
            } else {
                None
            },
            certificate: certificate::served(client).await,
        }
    }
}

impl Context {
    pub fn new(
        client: Client,
        leader: Arc<std::sync::atomic::AtomicBool>,
        served: ServedApis,
    ) -> Self {
        Context {
            client,
            reporter: Reporter {
                controller: "syncrelay-operator".into(),
                instance: std::env::var("POD_NAME").ok(),
            },
            failures: Mutex::new(HashMap::new()),
            leader,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()
                .expect("HTTP client"),
            metrics: crate::metrics::Metrics::new(),
            served,
            certificates_found: std::sync::atomic::AtomicBool::new(false),
            applied: Mutex::new(HashMap::new()),
            node_image: crate::render::workload::DEFAULT_IMAGE.into(),
        }
    }

    pub fn is_leader(&self) -> bool {
        let leader = self.leader.load(std::sync::atomic::Ordering::Relaxed);
        self.metrics.leader.set(i64::from(leader));
        leader
    }

    /// Counts and times one reconcile of `controller`.
    pub async fn observe<T>(
        &self,
        controller: &str,
        work: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let started = std::time::Instant::now();
        let result = work.await;
        self.metrics
            .reconciles
            .with_label_values(&[controller])
            .inc();
        self.metrics
            .duration
            .with_label_values(&[controller])
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            self.metrics
                .errors
                .with_label_values(&[controller, e.label()])
                .inc();
        }
        result
    }

    /// Backoff for the next retry of `key`: 1 s doubling to 5 min.
    pub fn backoff(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().expect("failures");
        let n = failures.entry(key.to_string()).or_insert(0);
        *n = (*n + 1).min(10);
        Duration::from_secs((1u64 << (*n - 1)).min(300))
    }

    pub fn reset_backoff(&self, key: &str) {
        self.failures.lock().expect("failures").remove(key);
    }

    /// Publishes a Kubernetes Event about `obj` (failures to publish are logged, not fatal).
    pub async fn event<K>(&self, obj: &K, warning: bool, reason: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, object = %obj.name_any(), "cannot publish event");
        }
    }
}

/// Makes `owner` the controller owner of an object (garbage collection with it).
pub fn owned<K: Resource<DynamicType = ()>>(meta: &mut kube::api::ObjectMeta, owner: &K) {
    if let Some(r) = owner.controller_owner_ref(&()) {
        meta.owner_references = Some(vec![r]);
    }
}

/// Writes `status` with server-side apply when it differs from `current` (no write, no watch
/// event, no reconcile loop).
pub async fn write_status<K, S>(
    api: &kube::Api<K>,
    object: &K,
    current: Option<&S>,
    status: S,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: PartialEq + serde::Serialize,
{
    if current == Some(&status) {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &object.name_any(),
        &kube::api::PatchParams::apply(crate::render::FIELD_MANAGER).force(),
        &kube::api::Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Reads a node's `/status` (short timeout: a slow node must not stall reconciles).
pub async fn fetch_status(
    http: &reqwest::Client,
    url: &str,
) -> Option<syncrelay_node::status::NodeStatus> {
    let response = http.get(url).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}
