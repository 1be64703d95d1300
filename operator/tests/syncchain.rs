//! The SyncChain controller against a real API server: owned SyncNodes wired per the declared
//! topology, the chain's directory with every node as a trusted server, nodes removed from the spec
//! cleaned up, an invalid topology refused, and garbage collection of the whole chain.

mod common;

use std::collections::BTreeMap;

use common::{eventually, ControlPlane};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::json;
use syncrelay_node::directory::DirectoryFile;
use syncrelay_operator::crd::{SyncChain, SyncNode};

fn chain(name: &str, nodes: serde_json::Value) -> SyncChain {
    serde_json::from_value(json!({
        "apiVersion": "syncrelay.io/v1alpha1",
        "kind": "SyncChain",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"directorySecret": "acme", "nodes": nodes},
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn chains_become_wired_sync_nodes() {
    let mut cp = ControlPlane::start(true).await;
    cp.start_operator();
    let client = cp.client().await;
    let chains: Api<SyncChain> = Api::namespaced(client.clone(), "default");
    let nodes: Api<SyncNode> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    let user_dir = "tenants:\n  acme:\n    users: []\n";
    secrets
        .create(
            &pp,
            &Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some("acme".into()),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([(
                    "directory.yaml".to_string(),
                    ByteString(user_dir.as_bytes().to_vec()),
                )])),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    let three_hops = json!([
        {"name": "origin", "role": "origin"},
        {"name": "relay", "role": "relay", "upstreams": ["origin"]},
        {"name": "edge", "role": "edge", "upstreams": ["relay"]}
    ]);
    chains.create(&pp, &chain("c", three_hops)).await.unwrap();
    eventually("three SyncNodes", || async {
        nodes
            .list(&ListParams::default().labels("syncrelay.io/chain=c"))
            .await
            .unwrap()
            .items
            .len()
            == 3
    })
    .await;
    let owner = chains.get("c").await.unwrap().uid().unwrap();
    let relay = nodes.get("c-relay").await.unwrap();
    assert_eq!(relay.owner_references()[0].uid, owner);
    assert_eq!(relay.spec.upstreams[0].node.as_deref(), Some("c-origin"));
    assert_eq!(relay.spec.directory_secret, "c-directory");

    // Every node's identity ends up as a trusted server in the chain's directory.
    eventually(
        "the chain's directory lists the three node identities",
        || async {
            let Some(s) = secrets.get_opt("c-directory").await.unwrap() else {
                return false;
            };
            let text = String::from_utf8(s.data.unwrap()["directory.yaml"].0.clone()).unwrap();
            let dir: DirectoryFile = serde_yaml::from_str(&text).unwrap();
            let names: Vec<String> = dir.tenants["acme"]
                .trusted_servers
                .iter()
                .map(|t| t.name.clone())
                .collect();
            names.len() == 3 && names.contains(&"CN=c-relay.default".to_string())
        },
    )
    .await;
    let relay_pub =
        secrets.get("c-relay-identity").await.unwrap().data.unwrap()["signing.pub.pem"].clone();
    let dir_text = String::from_utf8(
        secrets.get("c-directory").await.unwrap().data.unwrap()["directory.yaml"]
            .0
            .clone(),
    )
    .unwrap();
    assert!(dir_text.contains(
        String::from_utf8(relay_pub.0)
            .unwrap()
            .lines()
            .nth(1)
            .unwrap()
    ));
    eventually("chain status", || async {
        let c = chains.get("c").await.unwrap();
        c.status.is_some_and(|s| {
            s.node_count == Some(3)
                && s.observed_generation == c.metadata.generation
                && s.conditions
                    .iter()
                    .any(|k| k.type_ == "Progressing" && k.status == "False")
        })
    })
    .await;

    // Dropping a node from the spec removes its SyncNode.
    chains
        .patch(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"nodes": [
                {"name": "origin", "role": "origin"},
                {"name": "relay", "role": "relay", "upstreams": ["origin"]}
            ]}})),
        )
        .await
        .unwrap();
    eventually("c-edge removed", || async {
        nodes.get_opt("c-edge").await.unwrap().is_none()
    })
    .await;

    // A cycle: Degraded with the cycle named, an Event, no SyncNodes.
    chains
        .create(
            &pp,
            &chain(
                "loop",
                json!([
                    {"name": "origin", "role": "origin"},
                    {"name": "a", "role": "relay", "upstreams": ["b"]},
                    {"name": "b", "role": "relay", "upstreams": ["a"]}
                ]),
            ),
        )
        .await
        .unwrap();
    eventually("loop is Degraded", || async {
        chains.get("loop").await.unwrap().status.is_some_and(|s| {
            s.conditions
                .iter()
                .any(|k| k.type_ == "Degraded" && k.status == "True" && k.message.contains("cycle"))
        })
    })
    .await;
    common::warning_event_for(&client, "loop").await;
    assert!(nodes
        .list(&ListParams::default().labels("syncrelay.io/chain=loop"))
        .await
        .unwrap()
        .items
        .is_empty());

    // Deleting the chain collects its SyncNodes (and through them everything else).
    chains.delete("c", &DeleteParams::default()).await.unwrap();
    eventually("chain c collected", || async {
        nodes
            .list(&ListParams::default().labels("syncrelay.io/chain=c"))
            .await
            .unwrap()
            .items
            .is_empty()
            && secrets.get_opt("c-directory").await.unwrap().is_none()
    })
    .await;
}
