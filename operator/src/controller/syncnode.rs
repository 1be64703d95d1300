//! The SyncNode reconciler: resolve upstreams → ensure the identity Secret (generated once, kept) →
//! render (pure) → server-side apply of ConfigMap, Services and the workload → status from the
//! workload and from the node's own `/status`.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::ByteString;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ObjectMeta, Patch,
    PatchParams, PostParams,
};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use syncrelay_node::crypto::keys::Identity;

use super::conditions::{self, Want};
use super::{fetch_status, owned, write_status, Context, Error};
use crate::crd::{SyncNode, SyncNodeStatus};
use crate::render::config::{self as cfg, ResolvedUpstream};
use crate::render::workload::{self, PodInputs, Workload};
use crate::render::{self, monitoring, service, FIELD_MANAGER};
use crate::validate;

/// Annotation overriding where the operator reads the node's `/status` (tests, or nodes reached
/// through another address than their Service).
pub const STATUS_URL_ANNOTATION: &str = "syncrelay.io/status-url";
/// How often figures are refreshed when nothing else happens.
const REFRESH: Duration = Duration::from_secs(30);

/// Server-side apply, skipped when this operator already applied the same content and nobody has
/// changed the object since (same resourceVersion): a steady state costs reads, not writes. When
/// that is not known (an operator restart, another writer's change), a dry run of the apply tells
/// whether it would change anything; only then is it applied. Without the dry run a replacement
/// operator rewrote every StatefulSet and Deployment: Kubernetes 1.20 treats an apply of their
/// unchanged pod template as a change and stores it again with a new managedFields time (a write,
/// a new resourceVersion, watch events), while Services and ConfigMaps were left alone.
pub async fn apply<K>(ctx: &Context, api: &Api<K>, name: &str, object: &K) -> Result<K, Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    use sha2::Digest;
    let body = serde_json::to_vec(object).map_err(|e| Error::Serialize(e.to_string()))?;
    let hash = hex::encode(&sha2::Sha256::digest(&body)[..12]);
    // The collection's URL names group, version, kind and namespace (also of a DynamicObject).
    let key = format!("{}/{name}", api.resource_url());
    let remember = |applied: &K| {
        if let Some(rv) = applied.resource_version() {
            ctx.applied
                .lock()
                .expect("applied")
                .insert(key.clone(), (hash.clone(), rv));
        }
    };
    if let Some(existing) = api.get_opt(name).await? {
        let seen = ctx.applied.lock().expect("applied").get(&key).cloned();
        if seen.is_some_and(|(h, rv)| h == hash && Some(rv) == existing.resource_version()) {
            return Ok(existing);
        }
        let would_be = api
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force().dry_run(),
                &Patch::Apply(object),
            )
            .await?;
        if same_content(&existing, &would_be) {
            remember(&existing);
            return Ok(existing);
        }
    }
    let applied = api
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(object),
        )
        .await?;
    remember(&applied);
    Ok(applied)
}

/// Whether two versions of an object hold the same content: everything but the bookkeeping an
/// apply updates by itself (managedFields, resourceVersion).
fn same_content<K: Serialize>(a: &K, b: &K) -> bool {
    let content = |o: &K| {
        let mut v = serde_json::to_value(o).unwrap_or_default();
        if let Some(meta) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            meta.remove("managedFields");
            meta.remove("resourceVersion");
        }
        v
    };
    content(a) == content(b)
}

/// An HTTP client for `/status` that trusts the `ca.crt` of a node's TLS Secret (None when the
/// Secret or its CA is missing or unreadable: the default client is used).
async fn status_client_for(
    client: &kube::Client,
    namespace: &str,
    secret: &str,
) -> Option<reqwest::Client> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let data = secrets.get_opt(secret).await.ok()??.data?;
    let ca = reqwest::Certificate::from_pem_bundle(&data.get("ca.crt")?.0).ok()?;
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(3));
    for cert in ca {
        builder = builder.add_root_certificate(cert);
    }
    builder.build().ok()
}

/// Marks the node Degraded with `message`, publishes a Warning Event, touches nothing else.
async fn degrade(
    ctx: &Context,
    api: &Api<SyncNode>,
    sn: &SyncNode,
    reason: &str,
    message: String,
) -> Result<Action, Error> {
    let old = sn.status.clone().unwrap_or_default();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let conditions = conditions::merge(
        &old.conditions,
        conditions::failing(
            &[
                conditions::READY,
                conditions::PROGRESSING,
                conditions::DEGRADED,
                conditions::UPSTREAM_CONNECTED,
            ],
            reason,
            &message,
        ),
        sn.metadata.generation,
        &now,
    );
    let changed = conditions::message(&old.conditions, conditions::DEGRADED) != Some(&message);
    write_status(
        api,
        sn,
        sn.status.as_ref(),
        SyncNodeStatus {
            observed_generation: sn.metadata.generation,
            conditions,
            ..old
        },
    )
    .await?;
    if changed {
        ctx.event(sn, true, reason, message).await;
    }
    Ok(Action::await_change())
}

/// Resolves upstream references to URLs (and CA Secrets); a missing SyncNode is an error message.
async fn resolve_upstreams(
    api: &Api<SyncNode>,
    sn: &SyncNode,
    namespace: &str,
) -> Result<Result<Vec<ResolvedUpstream>, String>, Error> {
    let mut out = Vec::new();
    for (i, u) in sn.spec.upstreams.iter().enumerate() {
        match (&u.node, &u.url) {
            (Some(node), _) => match api.get_opt(node).await? {
                Some(up) => out.push(ResolvedUpstream {
                    name: node.clone(),
                    url: cfg::service_url(node, namespace, up.spec.tls.is_some()),
                    ca_secret: cfg::upstream_ca_secret(
                        u.ca_secret.as_deref(),
                        node,
                        up.spec.tls.as_ref(),
                    ),
                }),
                None => {
                    return Ok(Err(format!(
                        "upstream SyncNode {node} does not exist in namespace {namespace}"
                    )))
                }
            },
            (None, Some(url)) => out.push(ResolvedUpstream {
                name: format!("external-{i}"),
                url: url.clone(),
                ca_secret: u.ca_secret.clone(),
            }),
            (None, None) => return Ok(Err(format!("upstream #{i} names neither node nor url"))),
        }
    }
    Ok(Ok(out))
}

static KEYGEN: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Creates `<node>-identity` once (Ed25519 + RSA-3072 + the replicas' shared auth secret); an
/// existing one is kept as it is, so the node's identity survives every reconcile.
pub async fn ensure_identity(
    ctx: &Context,
    sn: &SyncNode,
    namespace: &str,
) -> Result<Secret, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let name = render::identity_secret_name(&sn.name_any());
    if let Some(existing) = api.get_opt(&name).await? {
        return Ok(existing);
    }
    // RSA-3072 generation is CPU-heavy: at most one per core at a time, so that a burst of new
    // nodes neither starves the reconciler nor spawns hundreds of blocking threads (each of which
    // would keep its own allocator arena resident).
    let _permit = KEYGEN
        .acquire()
        .await
        .map_err(|e| Error::Identity(e.to_string()))?;
    let identity = tokio::task::spawn_blocking(Identity::generate)
        .await
        .map_err(|e| Error::Identity(e.to_string()))?
        .map_err(|e| Error::Identity(e.to_string()))?;
    let auth_secret: String = {
        use rand::RngExt;
        let mut rng = rand::rng();
        (0..64)
            .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
            .collect()
    };
    let mut metadata = ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(namespace.into()),
        labels: Some(render::labels(&sn.name_any(), sn.spec.role)),
        ..ObjectMeta::default()
    };
    owned(&mut metadata, sn);
    let secret = Secret {
        metadata,
        data: Some(
            [
                ("signing.pem", identity.signing_private_pem()),
                ("encryption.pem", identity.encryption_private_pem()),
                ("signing.pub.pem", identity.signing_public_pem.clone()),
                ("encryption.pub.pem", identity.encryption_public_pem.clone()),
                ("auth-secret", auth_secret),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
            .collect(),
        ),
        ..Secret::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(s) => Ok(s),
        // Another reconcile created it first: keep theirs.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(api.get(&name).await?),
        Err(e) => Err(e.into()),
    }
}

pub async fn reconcile(sn: Arc<SyncNode>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.is_leader() {
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    let name = sn.name_any();
    let namespace = sn.namespace().unwrap_or_else(|| "default".into());
    let client = ctx.client.clone();
    let api: Api<SyncNode> = Api::namespaced(client.clone(), &namespace);
    if sn.spec.paused {
        tracing::debug!(%name, "paused: nothing written");
        return Ok(Action::await_change());
    }
    if let Err(errors) = validate::sync_node(&name, &sn.spec) {
        let message = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        return degrade(&ctx, &api, &sn, "InvalidSpec", message).await;
    }
    let upstreams = match resolve_upstreams(&api, &sn, &namespace).await? {
        Ok(u) => u,
        Err(message) => return degrade(&ctx, &api, &sn, "UnknownUpstream", message).await,
    };
    ensure_identity(&ctx, &sn, &namespace).await?;

    // Build (pure).
    let config = cfg::node_config(&name, &namespace, &sn.spec, &upstreams);
    let yaml = cfg::config_yaml(&config);
    let hash = cfg::config_hash(&yaml);
    let identity_secret = sn
        .spec
        .upstreams
        .iter()
        .find_map(|u| u.identity_secret.clone())
        .unwrap_or_else(|| render::identity_secret_name(&name));
    let inputs = PodInputs {
        config_hash: &hash,
        upstreams: &upstreams,
        identity_secret,
        default_image: &ctx.node_image,
    };
    let mut config_map = cfg::config_map(&name, &namespace, &sn.spec, &yaml);
    owned(&mut config_map.metadata, sn.as_ref());
    let mut client_service = service::client_service(&name, &namespace, &sn.spec);
    owned(&mut client_service.metadata, sn.as_ref());
    let peers = service::peers_service(&name, &namespace, &sn.spec).map(|mut s| {
        owned(&mut s.metadata, sn.as_ref());
        s
    });

    // Apply: configuration first, then Services, the workload last (it mounts the others).
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    apply(&ctx, &cms, &render::config_map_name(&name), &config_map).await?;
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    apply(&ctx, &services, &name, &client_service).await?;
    let peers_name = render::peers_service_name(&name);
    match peers {
        Some(p) => {
            apply(&ctx, &services, &peers_name, &p).await?;
        }
        None => {
            // Scaled down to one replica: the headless Service is no longer wanted.
            if services.get_opt(&peers_name).await?.is_some() {
                services
                    .delete(&peers_name, &DeleteParams::default())
                    .await?;
            }
        }
    }
    // The certificate before the workload that mounts its Secret.
    let certificate = super::certificate::reconcile(&ctx, &sn, &name, &namespace).await?;
    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    let deploy_api: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let (ready_replicas, updated) = match workload::workload(&name, &namespace, &sn.spec, &inputs) {
        Workload::StatefulSet(mut s) => {
            owned(&mut s.metadata, sn.as_ref());
            let applied = apply(&ctx, &sts_api, &name, &s).await?;
            // A role change leaves the other kind behind.
            if deploy_api.get_opt(&name).await?.is_some() {
                deploy_api.delete(&name, &DeleteParams::default()).await?;
            }
            let st = applied.status.unwrap_or_default();
            (
                st.ready_replicas.unwrap_or(0),
                st.updated_replicas.unwrap_or(0),
            )
        }
        Workload::Deployment(mut d) => {
            owned(&mut d.metadata, sn.as_ref());
            let applied = apply(&ctx, &deploy_api, &name, &d).await?;
            if sts_api.get_opt(&name).await?.is_some() {
                sts_api.delete(&name, &DeleteParams::default()).await?;
            }
            let st = applied.status.unwrap_or_default();
            (
                st.ready_replicas.unwrap_or(0),
                st.updated_replicas.unwrap_or(0),
            )
        }
    };

    // Optional objects, where the cluster serves their APIs.
    if ctx.served.pdb_v1 {
        let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &namespace);
        match monitoring::pdb(&name, &namespace, &sn.spec) {
            Some(mut p) => {
                owned(&mut p.metadata, sn.as_ref());
                apply(&ctx, &pdbs, &name, &p).await?;
            }
            None => {
                if pdbs.get_opt(&name).await?.is_some() {
                    pdbs.delete(&name, &DeleteParams::default()).await?;
                }
            }
        }
    }
    if ctx.served.service_monitor {
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
            "servicemonitors",
        );
        let monitors: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &namespace, &resource);
        match monitoring::service_monitor(&name, &namespace, &sn.spec) {
            Some(json) => {
                let mut object: DynamicObject =
                    serde_json::from_value(json).map_err(|e| Error::Serialize(e.to_string()))?;
                owned(&mut object.metadata, sn.as_ref());
                monitors
                    .patch(
                        &name,
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(&object),
                    )
                    .await?;
            }
            None => {
                if monitors.get_opt(&name).await?.is_some() {
                    monitors.delete(&name, &DeleteParams::default()).await?;
                }
            }
        }
    }

    let backup = super::backup::reconcile(&ctx, sn.as_ref(), &name, &namespace).await?;
    ctx.metrics
        .record_backup(&namespace, &name, backup.as_ref());

    // Status: the node's own report decides Ready and UpstreamConnected.
    let endpoint = cfg::service_url(&name, &namespace, sn.spec.tls.is_some());
    let status_url = sn
        .annotations()
        .get(STATUS_URL_ANNOTATION)
        .cloned()
        .unwrap_or_else(|| format!("{endpoint}/status"));
    // A TLS node's certificate is usually issued by a private CA (cert-manager): read its status
    // trusting the `ca.crt` of its TLS Secret, as the next hop does.
    let tls_client = match &sn.spec.tls {
        Some(tls) => status_client_for(&client, &namespace, &tls.secret(&name)).await,
        None => None,
    };
    let report = fetch_status(tls_client.as_ref().unwrap_or(&ctx.http), &status_url).await;
    let old = sn.status.clone().unwrap_or_default();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let (ready, ready_reason, ready_message) = match &report {
        Some(r) if r.ready => (
            true,
            "NodeReady",
            format!("{} reports ready ({} entries)", r.name, r.entries),
        ),
        Some(r) => (
            false,
            "NodeNotReady",
            format!("{} is not connected to an upstream", r.name),
        ),
        None => (false, "NoStatus", format!("no answer from {status_url}")),
    };
    let tls_secret = sn.spec.tls.as_ref().map(|t| t.secret(&name));
    let cert_missing = certificate.not_ready(&name, tls_secret.as_deref().unwrap_or_default());
    // Announced once, after the status write (as the upstream transition below).
    let cert_event = cert_missing
        .clone()
        .filter(|_| super::certificate::announce(&old.conditions, &certificate));
    let (ready, ready_reason, ready_message) = match cert_missing {
        Some((reason, message)) => (false, reason, message),
        None => (ready, ready_reason, ready_message),
    };
    let upstream = super::upstream::condition(
        sn.spec.role,
        !sn.spec.upstreams.is_empty(),
        report.as_ref(),
        &status_url,
    );
    let announcement = super::upstream::transition(&old.conditions, &upstream);
    let progressing = updated < sn.spec.replicas || report.is_none();
    let conditions = conditions::merge(
        &old.conditions,
        vec![
            Want {
                type_: conditions::READY,
                status: ready,
                reason: ready_reason,
                message: ready_message,
            },
            Want {
                type_: conditions::PROGRESSING,
                status: progressing,
                reason: if progressing { "RollingOut" } else { "Settled" },
                message: format!(
                    "{updated}/{} pods updated, {ready_replicas} ready",
                    sn.spec.replicas
                ),
            },
            Want {
                type_: conditions::DEGRADED,
                status: false,
                reason: "Reconciled",
                message: String::new(),
            },
            upstream,
        ],
        sn.metadata.generation,
        &now,
    );
    let last_sync = report
        .as_ref()
        .and_then(|r| r.links.iter().filter_map(|l| l.last_success_at).max());
    let status = SyncNodeStatus {
        observed_generation: sn.metadata.generation,
        conditions,
        endpoint: Some(endpoint),
        upstream: (!upstreams.is_empty()).then(|| {
            upstreams
                .iter()
                .map(|u| u.name.clone())
                .collect::<Vec<_>>()
                .join(",")
        }),
        lag: report.as_ref().map(|r| r.max_lag as i64),
        delay_seconds: report.as_ref().and_then(worst_p99),
        entries: report.as_ref().map(|r| r.entries as i64),
        disk_bytes: report.as_ref().and_then(|r| r.disk_bytes).map(|b| b as i64),
        payload_bytes: report.as_ref().map(|r| r.payload_bytes as i64),
        last_sync_time: last_sync.and_then(|ms| {
            k8s_openapi::jiff::Timestamp::from_millisecond(ms)
                .ok()
                .map(|t| t.to_string())
        }),
        backup,
    };
    let backup_failure = status
        .backup
        .as_ref()
        .and_then(|b| super::backup::newly_failed(old.backup.as_ref(), b))
        .map(|run| {
            format!(
                "backup {} failed: {}",
                run.job,
                run.message.as_deref().unwrap_or("no message")
            )
        });
    write_status(&api, sn.as_ref(), sn.status.as_ref(), status).await?;
    if let Some(note) = backup_failure {
        ctx.event(sn.as_ref(), true, "BackupFailed", note).await;
    }
    // After the write: a failed write is retried, and announces the change then.
    if let Some(a) = announcement {
        ctx.event(sn.as_ref(), a.warning, &a.reason, a.note).await;
    }
    if let Some((reason, message)) = cert_event {
        ctx.event(sn.as_ref(), true, reason, message).await;
    }
    ctx.reset_backoff(&format!("SyncNode/{namespace}/{name}"));
    Ok(Action::requeue(REFRESH))
}

/// The largest p99 replication delay over the node's links (seconds), if any was measured.
pub fn worst_p99(report: &syncrelay_node::status::NodeStatus) -> Option<f64> {
    report
        .links
        .iter()
        .filter_map(|l| l.delay.as_ref().map(|d| d.p99_seconds))
        .fold(None, |worst, d| Some(worst.map_or(d, |w: f64| w.max(d))))
}

pub fn error_policy(sn: Arc<SyncNode>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = format!(
        "SyncNode/{}/{}",
        sn.namespace().unwrap_or_default(),
        sn.name_any()
    );
    let delay = ctx.backoff(&key);
    tracing::warn!(object = %key, error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::same_content;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn config_map(value: serde_json::Value) -> ConfigMap {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn bookkeeping_alone_is_no_change() {
        let live = config_map(serde_json::json!({
            "metadata": {"name": "c", "resourceVersion": "7", "generation": 1,
                "managedFields": [{"manager": "syncrelay-operator", "operation": "Apply", "time": "2026-12-06T00:51:07Z"}]},
            "data": {"node.yaml": "a"}
        }));
        let mut dry_run = live.clone();
        dry_run.metadata.resource_version = Some("8".into());
        dry_run.metadata.managed_fields = None;
        assert!(same_content(&live, &dry_run));
        let mut changed = dry_run.clone();
        changed.data = Some([("node.yaml".to_string(), "b".to_string())].into());
        assert!(!same_content(&live, &changed));
        let mut relabelled = dry_run;
        relabelled.metadata.labels = Some([("x".to_string(), "y".to_string())].into());
        assert!(!same_content(&live, &relabelled));
    }
}
