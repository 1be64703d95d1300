//! cert-manager against a real API server (no cert-manager controller: the test checks what the
//! operator asks of it). Without cert-manager's API a SyncNode with `tls.issuerRef` gets no
//! Certificate but `Ready=False` (reason `CertManagerMissing`) and a Warning Event, and its pods
//! still mount the Secret they wait for. Once the Certificate CRD is installed (a faithful subset of
//! cert-manager's v1 CRD, `tests/fixtures/`), the running operator applies the Certificate with the
//! node's DNS names, Secret, issuer and owner; a chain's hops trust their TLS upstream's Secret;
//! dropping the issuer removes the Certificate.

mod common;

use common::{create_crd, eventually, ControlPlane};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Client, ResourceExt};
use serde_json::json;
use syncrelay_operator::crd::{SyncChain, SyncNode};

fn node(name: &str, spec: serde_json::Value) -> SyncNode {
    serde_json::from_value(json!({
        "apiVersion": "syncrelay.io/v1alpha1", "kind": "SyncNode",
        "metadata": {"name": name, "namespace": "default"}, "spec": spec
    }))
    .unwrap()
}

fn certificates(client: &Client) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate"),
        "certificates",
    );
    Api::namespaced_with(client.clone(), "default", &resource)
}

async fn install_certificate_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/cert-manager-certificates-crd.yaml"),
    )
    .unwrap();
    create_crd(&crds, &serde_yaml::from_str(&text).unwrap()).await;
}

fn ready_reason(sn: &SyncNode) -> Option<String> {
    sn.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| format!("{}/{}", c.status, c.reason))
    })
}

fn secret_volumes(sts: &StatefulSet) -> Vec<(String, String)> {
    sts.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.volumes.clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| Some((v.name, v.secret?.secret_name?)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_only_where_cert_manager_is_served() {
    let mut cp = ControlPlane::start(false).await;
    let client = cp.client().await;
    cp.start_operator();
    let nodes: Api<SyncNode> = Api::namespaced(client.clone(), "default");
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();

    // No cert-manager: no silent plain HTTP, but a reason and an Event; the pod waits for its Secret.
    nodes
        .create(
            &pp,
            &node(
                "solo",
                json!({"role": "origin", "directorySecret": "d",
                       "tls": {"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}}),
            ),
        )
        .await
        .unwrap();
    eventually("Ready=False, reason CertManagerMissing", || async {
        ready_reason(&nodes.get("solo").await.unwrap()).as_deref()
            == Some("False/CertManagerMissing")
    })
    .await;
    let message = nodes.get("solo").await.unwrap().status.unwrap().conditions;
    let message = &message.iter().find(|c| c.type_ == "Ready").unwrap().message;
    assert!(
        message.contains("cert-manager.io/v1 Certificate") && message.contains("solo-tls"),
        "{message}"
    );
    eventually("a Warning Event CertManagerMissing for solo", || async {
        common::event_count(&client, "solo", "Warning", Some("CertManagerMissing")).await > 0
    })
    .await;
    let solo_sts = sts.get("solo").await.expect("the workload is applied");
    assert!(
        secret_volumes(&solo_sts).contains(&("tls".into(), "solo-tls".into())),
        "the pods mount the Secret cert-manager will write: {:?}",
        secret_volumes(&solo_sts)
    );
    assert!(
        client
            .list_api_group_resources("cert-manager.io/v1")
            .await
            .is_err(),
        "nothing serves Certificates yet"
    );

    // cert-manager installed: the running operator notices and applies the Certificate.
    install_certificate_crd(&client).await;
    let certs = certificates(&client);
    eventually("the Certificate of solo", || async {
        certs.get_opt("solo").await.unwrap().is_some()
    })
    .await;
    let solo = nodes.get("solo").await.unwrap();
    let c = certs.get("solo").await.unwrap();
    // Read back through the API server's structural schema: every field the operator wrote is a
    // Certificate field (unknown ones would have been pruned).
    assert_eq!(c.data["spec"]["secretName"], "solo-tls");
    assert_eq!(
        c.data["spec"]["dnsNames"],
        json!([
            "solo",
            "solo.default",
            "solo.default.svc",
            "solo.default.svc.cluster.local"
        ])
    );
    assert_eq!(
        c.data["spec"]["issuerRef"],
        json!({"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"})
    );
    assert_eq!(c.data["spec"]["privateKey"]["rotationPolicy"], "Always");
    assert_eq!(c.data["spec"]["privateKey"]["algorithm"], "ECDSA");
    assert_eq!(
        c.data["spec"]["usages"],
        json!(["server auth", "digital signature"])
    );
    assert_eq!(c.data["spec"]["renewBefore"], "720h");
    let owner = &c.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("SyncNode", "solo")
    );
    assert_eq!(Some(owner.uid.clone()), solo.uid());
    assert_eq!(owner.controller, Some(true));
    eventually("Ready no longer blames cert-manager", || async {
        ready_reason(&nodes.get("solo").await.unwrap()).is_some_and(|r| !r.contains("CertManager"))
    })
    .await;

    // A chain: peers' names on a replicated origin, and each hop trusts its TLS upstream's Secret.
    let chains: Api<SyncChain> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let directory: Secret = serde_json::from_value(json!({
        "metadata": {"name": "d"},
        "stringData": {"directory.yaml": "tenants:\n  acme:\n    users: []\n"}
    }))
    .unwrap();
    secrets.create(&pp, &directory).await.unwrap();
    let chain: SyncChain = serde_json::from_value(json!({
        "apiVersion": "syncrelay.io/v1alpha1", "kind": "SyncChain",
        "metadata": {"name": "acme", "namespace": "default"},
        "spec": {"directorySecret": "d", "nodes": [
            {"name": "origin", "role": "origin", "replicas": 2,
             "tls": {"issuerRef": {"name": "ca"}, "dnsNames": ["origin.sync.example.com"]}},
            {"name": "relay", "role": "relay", "upstreams": ["origin"],
             "tls": {"issuerRef": {"name": "ca"}}},
            {"name": "edge", "role": "edge", "upstreams": ["relay"]}
        ]}
    }))
    .unwrap();
    chains.create(&pp, &chain).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while !(certs.get_opt("acme-origin").await.unwrap().is_some()
        && certs.get_opt("acme-relay").await.unwrap().is_some())
    {
        if std::time::Instant::now() > deadline {
            let c = chains.get("acme").await.unwrap();
            let listed: Vec<String> = nodes
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .iter()
                .map(|n| format!("{} {:?}", n.name_any(), n.status))
                .collect();
            panic!(
                "no Certificates for the chain's TLS hops; chain status {:?}; nodes {listed:#?}",
                c.status
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let origin = certs.get("acme-origin").await.unwrap();
    assert_eq!(origin.data["spec"]["secretName"], "acme-origin-tls");
    assert_eq!(
        origin.data["spec"]["dnsNames"],
        json!([
            "acme-origin",
            "acme-origin.default",
            "acme-origin.default.svc",
            "acme-origin.default.svc.cluster.local",
            "acme-origin-0.acme-origin-peers.default.svc.cluster.local",
            "acme-origin-1.acme-origin-peers.default.svc.cluster.local",
            "origin.sync.example.com"
        ])
    );
    assert_eq!(origin.data["spec"]["issuerRef"]["kind"], "Issuer");
    assert_eq!(origin.owner_references()[0].name, "acme-origin");
    assert!(
        certs.get_opt("acme-edge").await.unwrap().is_none(),
        "the edge asks for no TLS"
    );
    let relay = nodes.get("acme-relay").await.unwrap();
    assert_eq!(
        relay.spec.upstreams[0].ca_secret.as_deref(),
        Some("acme-origin-tls")
    );
    eventually("the relay's pods mount the origin's CA", || async {
        sts.get_opt("acme-relay").await.unwrap().is_some_and(|s| {
            secret_volumes(&s).contains(&("upstream-ca-0".into(), "acme-origin-tls".into()))
        })
    })
    .await;
    let edge = nodes.get("acme-edge").await.unwrap();
    assert_eq!(
        edge.spec.upstreams[0].ca_secret.as_deref(),
        Some("acme-relay-tls")
    );

    // The issuer dropped for a Secret of the user's own: the Certificate goes.
    nodes
        .patch(
            "solo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"tls": {"issuerRef": null, "secretName": "own-tls"}}})),
        )
        .await
        .unwrap();
    eventually("solo's Certificate removed", || async {
        certs.get_opt("solo").await.unwrap().is_none()
    })
    .await;
}
