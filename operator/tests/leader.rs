//! Two operator replicas with leader election against a real API server: one holds the Lease and
//! reconciles; the other writes nothing until the holder is gone and the Lease has expired.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, ControlPlane};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use serde_json::json;
use syncrelay_operator::crd::SyncNode;

fn origin(name: &str) -> SyncNode {
    serde_json::from_value(json!({
        "apiVersion": "syncrelay.io/v1alpha1", "kind": "SyncNode",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"role": "origin", "directorySecret": "dir"}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_lease_holder_reconciles() {
    let mut cp = ControlPlane::start(false).await;
    let first = cp.start_operator_with(&["--leader-election"]);
    let second = cp.start_operator_with(&["--leader-election"]);
    let client = cp.client().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let nodes: Api<SyncNode> = Api::namespaced(client.clone(), "default");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    let holder = std::sync::Mutex::new(String::new());
    eventually("a replica holds the Lease", || async {
        let h = leases
            .get_opt("syncrelay-operator")
            .await
            .unwrap()
            .and_then(|l| l.spec?.holder_identity)
            .unwrap_or_default();
        *holder.lock().unwrap() = h.clone();
        !h.is_empty()
    })
    .await;
    nodes
        .create(&PostParams::default(), &origin("a"))
        .await
        .unwrap();
    eventually("the leader reconciles", || async {
        cms.get_opt("a-config").await.unwrap().is_some()
    })
    .await;

    // Stop the holder: the survivor must not write before the Lease expires (15 s after the last
    // renewal, which was at most 2 s before the kill).
    let holder = holder.lock().unwrap().clone();
    let (gone, survivor) = if holder.contains(&format!("-{}-", cp.operator_pid(first))) {
        (first, second)
    } else {
        (second, first)
    };
    cp.stop_operator(gone);
    let stopped = Instant::now();
    nodes
        .create(&PostParams::default(), &origin("b"))
        .await
        .unwrap();
    while stopped.elapsed() < Duration::from_secs(10) {
        assert!(
            cms.get_opt("b-config").await.unwrap().is_none(),
            "a non-holder wrote"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eventually("the survivor takes over and reconciles", || async {
        cms.get_opt("b-config").await.unwrap().is_some()
    })
    .await;
    let now_holder = leases
        .get("syncrelay-operator")
        .await
        .unwrap()
        .spec
        .unwrap();
    assert!(now_holder
        .holder_identity
        .unwrap()
        .contains(&format!("-{}-", cp.operator_pid(survivor))));
    assert_eq!(now_holder.lease_transitions, Some(1));
}
