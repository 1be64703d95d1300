//! Optional objects whose APIs not every cluster serves: a PodDisruptionBudget (policy/v1, 1.21+)
//! for node sets with several replicas, and a Prometheus-operator ServiceMonitor. The reconciler
//! asks discovery first and only then applies them.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;
use serde_json::json;

use super::{labels, selector_labels};
use crate::crd::SyncNodeSpec;

pub fn pdb(node: &str, namespace: &str, spec: &SyncNodeSpec) -> Option<PodDisruptionBudget> {
    if spec.replicas < 2 {
        return None;
    }
    Some(PodDisruptionBudget {
        metadata: ObjectMeta {
            name: Some(node.into()),
            namespace: Some(namespace.into()),
            labels: Some(labels(node, spec.role)),
            ..ObjectMeta::default()
        },
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(spec.max_unavailable.unwrap_or(1))),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(node)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

/// The ServiceMonitor as JSON (its type is not part of k8s-openapi).
pub fn service_monitor(
    node: &str,
    namespace: &str,
    spec: &SyncNodeSpec,
) -> Option<serde_json::Value> {
    if !spec.service_monitor {
        return None;
    }
    let scheme = if spec.tls.is_some() { "https" } else { "http" };
    Some(json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": node, "namespace": namespace, "labels": labels(node, spec.role)},
        "spec": {
            "selector": {"matchLabels": selector_labels(node)},
            "endpoints": [{"port": "sync", "path": "/metrics", "scheme": scheme, "interval": "30s"}]
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(replicas: i32, monitor: bool) -> SyncNodeSpec {
        serde_json::from_value(json!({
            "role": "relay", "replicas": replicas, "directorySecret": "d",
            "upstreams": [{"node": "o"}], "serviceMonitor": monitor
        }))
        .unwrap()
    }

    #[test]
    fn pdb_only_for_several_replicas() {
        assert!(pdb("r", "ns", &spec(1, false)).is_none());
        let p = pdb("r", "ns", &spec(3, false)).unwrap();
        assert_eq!(p.spec.unwrap().max_unavailable, Some(IntOrString::Int(1)));
    }

    #[test]
    fn service_monitor_only_when_asked() {
        assert!(service_monitor("r", "ns", &spec(1, false)).is_none());
        let sm = service_monitor("r", "ns", &spec(1, true)).unwrap();
        assert_eq!(sm["spec"]["endpoints"][0]["port"], "sync");
        assert_eq!(
            sm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"],
            "r"
        );
    }
}
