//! The client-facing Service of a node (session affinity when it has several replicas, because
//! each replica has its own receiptOrder lineage) and the headless Service its replicas use to find
//! each other.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec as K8sServiceSpec};
use kube::api::ObjectMeta;

use super::{has_peers, labels, peers_service_name, selector_labels};
use crate::crd::{ServiceType, SyncNodeSpec, NODE_PORT};

fn port() -> ServicePort {
    ServicePort {
        name: Some("sync".into()),
        port: NODE_PORT,
        target_port: Some(
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("sync".into()),
        ),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

pub fn client_service(node: &str, namespace: &str, spec: &SyncNodeSpec) -> Service {
    let type_ = match spec.service.type_ {
        ServiceType::ClusterIP => "ClusterIP",
        ServiceType::NodePort => "NodePort",
        ServiceType::LoadBalancer => "LoadBalancer",
    };
    Service {
        metadata: ObjectMeta {
            name: Some(node.into()),
            namespace: Some(namespace.into()),
            labels: Some(labels(node, spec.role)),
            annotations: (!spec.service.annotations.is_empty())
                .then(|| spec.service.annotations.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(K8sServiceSpec {
            type_: Some(type_.into()),
            selector: Some(selector_labels(node)),
            ports: Some(vec![port()]),
            session_affinity: (spec.replicas > 1).then(|| "ClientIP".to_string()),
            ..K8sServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Headless Service giving each replica a stable DNS name (`<node>-<i>.<node>-peers`).
pub fn peers_service(node: &str, namespace: &str, spec: &SyncNodeSpec) -> Option<Service> {
    if !has_peers(spec) {
        return None;
    }
    Some(Service {
        metadata: ObjectMeta {
            name: Some(peers_service_name(node)),
            namespace: Some(namespace.into()),
            labels: Some(labels(node, spec.role)),
            ..ObjectMeta::default()
        },
        spec: Some(K8sServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector_labels(node)),
            ports: Some(vec![port()]),
            // Peers must reach a replica before it is Ready (it becomes ready by syncing).
            publish_not_ready_addresses: Some(true),
            ..K8sServiceSpec::default()
        }),
        ..Service::default()
    })
    .map(|mut s| {
        s.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert("syncrelay.io/purpose".into(), "replica peers".into());
        s
    })
}
