//! The SyncNode controller against a real kube-apiserver (and kube-controller-manager for garbage
//! collection): children with owner references, config changes rolling only the changed node,
//! invalid specs, pausing, status from a real node process, and deletion.

mod common;

use std::time::Duration;

use common::{eventually, ControlPlane};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::json;
use syncrelay_operator::crd::SyncNode;

fn node(name: &str, spec: serde_json::Value) -> SyncNode {
    serde_json::from_value(json!({
        "apiVersion": "syncrelay.io/v1alpha1",
        "kind": "SyncNode",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }))
    .unwrap()
}

fn pod_hash(sts: &StatefulSet) -> String {
    sts.spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap()["syncrelay.io/config-hash"]
        .clone()
}

fn condition(sn: &SyncNode, type_: &str) -> Option<(String, String, Option<i64>)> {
    sn.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.observed_generation))
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_nodes_are_reconciled_against_a_real_api_server() {
    let mut cp = ControlPlane::start(true).await;
    let operator = cp.start_operator();
    let client = cp.client().await;
    let nodes: Api<SyncNode> = Api::namespaced(client.clone(), "default");
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();

    // A 3-hop chain of SyncNodes: origin (3 replicas) ← relay ← edge.
    nodes
        .create(
            &pp,
            &node(
                "origin",
                json!({"role": "origin", "replicas": 3, "directorySecret": "dir"}),
            ),
        )
        .await
        .unwrap();
    nodes.create(&pp, &node("relay", json!({"role": "relay", "directorySecret": "dir", "upstreams": [{"node": "origin"}]}))).await.unwrap();
    nodes.create(&pp, &node("edge", json!({"role": "edge", "directorySecret": "dir", "upstreams": [{"node": "relay"}], "cacheMaxBytes": 67108864}))).await.unwrap();

    eventually("children of all three nodes", || async {
        sts.get_opt("origin").await.unwrap().is_some()
            && sts.get_opt("relay").await.unwrap().is_some()
            && deployments.get_opt("edge").await.unwrap().is_some()
    })
    .await;
    let origin = nodes.get("origin").await.unwrap();
    for owned_by_origin in [
        sts.get("origin").await.unwrap().owner_references().to_vec(),
        cms.get("origin-config")
            .await
            .unwrap()
            .owner_references()
            .to_vec(),
        services
            .get("origin")
            .await
            .unwrap()
            .owner_references()
            .to_vec(),
        services
            .get("origin-peers")
            .await
            .unwrap()
            .owner_references()
            .to_vec(),
        secrets
            .get("origin-identity")
            .await
            .unwrap()
            .owner_references()
            .to_vec(),
    ] {
        assert_eq!(owned_by_origin.len(), 1);
        assert_eq!(owned_by_origin[0].uid, origin.uid().unwrap());
        assert_eq!(owned_by_origin[0].controller, Some(true));
    }
    // Wiring: the relay's config points at the origin's Service; replicas are peers with affinity.
    let relay_yaml = cms.get("relay-config").await.unwrap().data.unwrap()["node.yaml"].clone();
    assert!(
        relay_yaml.contains("http://origin.default.svc.cluster.local:1661"),
        "{relay_yaml}"
    );
    let origin_yaml = cms.get("origin-config").await.unwrap().data.unwrap()["node.yaml"].clone();
    assert!(
        origin_yaml.contains("origin-2.origin-peers.default.svc.cluster.local"),
        "{origin_yaml}"
    );
    let svc = services.get("origin").await.unwrap();
    assert_eq!(
        svc.spec.unwrap().session_affinity.as_deref(),
        Some("ClientIP")
    );
    let identity = secrets.get("origin-identity").await.unwrap();
    let keys = identity.data.unwrap();
    assert!(
        keys.contains_key("signing.pem")
            && keys.contains_key("encryption.pem")
            && keys.contains_key("auth-secret")
    );

    // Status with observedGeneration; no node runs (no kubelet): Ready False, not Degraded.
    eventually("origin status written", || async {
        let sn = nodes.get("origin").await.unwrap();
        condition(&sn, "Degraded")
            .is_some_and(|(s, _, g)| s == "False" && g == sn.metadata.generation)
    })
    .await;
    let sn = nodes.get("origin").await.unwrap();
    assert_eq!(condition(&sn, "Ready").unwrap().0, "False");

    // A real node process reports through /status: the operator marks the SyncNode Ready, and
    // `kubectl wait` sees it.
    let (_origin_process, origin_url, _origin_data) = common::start_node();
    nodes
        .patch(
            "origin",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "syncrelay.io/status-url": format!("{origin_url}/status")
            }}})),
        )
        .await
        .unwrap();
    let waited = std::process::Command::new("kubectl")
        .args([
            "wait",
            "--for=condition=Ready",
            "syncnode/origin",
            "--timeout=60s",
        ])
        .env("KUBECONFIG", &cp.kubeconfig)
        .output()
        .expect("kubectl");
    assert!(
        waited.status.success(),
        "kubectl wait: {}{}",
        String::from_utf8_lossy(&waited.stdout),
        String::from_utf8_lossy(&waited.stderr)
    );
    let sn = nodes.get("origin").await.unwrap();
    assert_eq!(condition(&sn, "Ready").unwrap().1, "NodeReady");
    assert_eq!(sn.status.as_ref().unwrap().entries, Some(0));
    // Its disk use as the node measures it (an empty sled store still occupies its log).
    let disk = sn.status.as_ref().unwrap().disk_bytes;
    assert!(disk.is_some_and(|b| b > 0), "diskBytes: {disk:?}");
    assert_eq!(sn.status.as_ref().unwrap().payload_bytes, Some(0));

    // A real relay whose upstream does not answer: UpstreamConnected=False, reason Unreachable
    // (from the link state in its /status), with a Warning Event for the transition.
    let (_relay_process, relay_url, _relay_data) = common::start_node_with(&format!(
        "role: relay\nupstreams: [{{name: origin, url: 'http://127.0.0.1:{}'}}]\n\
         databases: [{{tenant: t, db: d}}]\nsync: {{intervalMs: 200, maxAttempts: 1}}\n",
        common::free_port()
    ));
    nodes
        .patch(
            "relay",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "syncrelay.io/status-url": format!("{relay_url}/status")
            }}})),
        )
        .await
        .unwrap();
    eventually("relay UpstreamConnected=False/Unreachable", || async {
        let sn = nodes.get("relay").await.unwrap();
        condition(&sn, "UpstreamConnected").is_some_and(|(s, r, g)| {
            s == "False" && r == "Unreachable" && g == sn.metadata.generation
        })
    })
    .await;
    eventually(
        "an UpstreamUnreachable Warning event for the relay",
        || async {
            common::event_count(&client, "relay", "Warning", Some("UpstreamUnreachable")).await > 0
        },
    )
    .await;

    // Changing the relay's config rolls only the relay.
    let origin_hash = pod_hash(&sts.get("origin").await.unwrap());
    let relay_hash = pod_hash(&sts.get("relay").await.unwrap());
    let identity_before = secrets.get("relay-identity").await.unwrap().data;
    nodes
        .patch(
            "relay",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"sync": {"intervalMs": 1000}}})),
        )
        .await
        .unwrap();
    eventually("relay pod template hash changed", || async {
        pod_hash(&sts.get("relay").await.unwrap()) != relay_hash
    })
    .await;
    assert_eq!(pod_hash(&sts.get("origin").await.unwrap()), origin_hash);
    assert_eq!(
        secrets.get("relay-identity").await.unwrap().data,
        identity_before,
        "identity kept"
    );

    // An invalid node: Degraded with a clear message and an Event, and no children.
    nodes.create(&pp, &node("lost", json!({"role": "relay", "directorySecret": "dir", "upstreams": [{"node": "nowhere"}]}))).await.unwrap();
    eventually("lost is Degraded", || async {
        let sn = nodes.get("lost").await.unwrap();
        condition(&sn, "Degraded").is_some_and(|(s, r, _)| s == "True" && r == "UnknownUpstream")
    })
    .await;
    common::warning_event_for(&client, "lost").await;
    assert!(sts.get_opt("lost").await.unwrap().is_none());
    assert!(cms.get_opt("lost-config").await.unwrap().is_none());

    // Paused: spec changes are not applied.
    nodes
        .patch(
            "edge",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": true}})),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let edge_cm = cms.get("edge-config").await.unwrap();
    nodes
        .patch(
            "edge",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"cacheMaxBytes": 134217728}})),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        cms.get("edge-config").await.unwrap().data,
        edge_cm.data,
        "paused: nothing written"
    );
    nodes
        .patch(
            "edge",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": false}})),
        )
        .await
        .unwrap();
    eventually("unpaused edge picks up the change", || async {
        cms.get("edge-config").await.unwrap().data.unwrap()["node.yaml"]
            .contains("maxBytes: 134217728")
    })
    .await;

    // The operator's own metrics and probes.
    let http = reqwest::Client::new();
    let base = cp.operator_url(operator);
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let reconciles: u64 = metrics
        .lines()
        .find(|l| l.starts_with("syncrelay_operator_reconciles_total{controller=\"syncnode\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(reconciles > 0, "{metrics}");
    assert!(metrics.contains("syncrelay_operator_reconcile_duration_seconds_bucket"));

    // Deleting a node garbage-collects its children (kube-controller-manager).
    nodes
        .delete("edge", &DeleteParams::default())
        .await
        .unwrap();
    eventually("edge children collected", || async {
        deployments.get_opt("edge").await.unwrap().is_none()
            && cms.get_opt("edge-config").await.unwrap().is_none()
            && secrets.get_opt("edge-identity").await.unwrap().is_none()
    })
    .await;
}
