//! Against a real API server: an operator killed in the middle of its first reconciles and started
//! again converges; optional kinds are written only where their APIs are served (ServiceMonitor once
//! its CRD exists; PodDisruptionBudget policy/v1 is not served by this 1.20 API server).

mod common;

use common::{create_crd, eventually, ControlPlane};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::ResourceExt;
use serde_json::json;
use syncrelay_operator::crd::SyncNode;

fn node(name: &str, spec: serde_json::Value) -> SyncNode {
    serde_json::from_value(json!({
        "apiVersion": "syncrelay.io/v1alpha1", "kind": "SyncNode",
        "metadata": {"name": name, "namespace": "default"}, "spec": spec
    }))
    .unwrap()
}

/// A minimal ServiceMonitor CRD, as the Prometheus operator would install it.
fn service_monitor_crd() -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com", "scope": "Namespaced",
            "names": {"kind": "ServiceMonitor", "plural": "servicemonitors", "singular": "servicemonitor"},
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                "type": "object", "x-kubernetes-preserve-unknown-fields": true
            }}}]
        }
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn restarted_operator_converges_and_optional_apis_are_respected() {
    let mut cp = ControlPlane::start(false).await;
    let client = cp.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    create_crd(&crds, &service_monitor_crd()).await;
    let nodes: Api<SyncNode> = Api::namespaced(client.clone(), "default");
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    for i in 0..4 {
        let spec = json!({"role": "origin", "replicas": 2, "directorySecret": "d", "serviceMonitor": i == 0});
        nodes
            .create(&PostParams::default(), &node(&format!("n{i}"), spec))
            .await
            .unwrap();
    }
    // Start, and kill as soon as the first object exists: reconciles are cut short.
    let first = cp.start_operator();
    eventually("the first operator began", || async {
        sts.get_opt("n0").await.unwrap().is_some()
    })
    .await;
    cp.stop_operator(first);
    cp.start_operator();
    eventually("everything converged after the restart", || async {
        let mut done = true;
        for i in 0..4 {
            let name = format!("n{i}");
            done &= sts.get_opt(&name).await.unwrap().is_some();
            done &= nodes.get(&name).await.unwrap().status.is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Degraded" && c.status == "False")
            });
        }
        done
    })
    .await;
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
        "servicemonitors",
    );
    let monitors: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
    let sm = monitors.get("n0").await.expect("ServiceMonitor for n0");
    assert_eq!(sm.owner_references()[0].name, "n0");
    assert!(
        monitors.get_opt("n1").await.unwrap().is_none(),
        "not asked for"
    );
}
