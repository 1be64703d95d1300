//! Operator benchmark against a real kube-apiserver + etcd (from scripts/control-plane.sh).
//! Run: `cargo bench -p syncrelay-operator` (CHAINS=… to change the default of 100).
//!
//! 1. time from creating CHAINS SyncChains of 3 nodes until every SyncNode has its workload and a
//!    status, and every chain a status;
//! 2. write requests to the API server during 70 s of steady state (more than two 30 s refresh
//!    periods), from the API server's own request counters;
//! 3. the operator's resident memory.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::ControlPlane;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use syncrelay_operator::crd::{SyncChain, SyncNode};

const MANAGED: &[&str] = &[
    "syncnodes",
    "syncchains",
    "statefulsets",
    "deployments",
    "services",
    "configmaps",
    "secrets",
];

async fn api_writes(cp: &ControlPlane) -> u64 {
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let text = http
        .get(format!("{}/metrics", cp.url))
        .bearer_auth("admin-token")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| {
            ["PATCH", "PUT", "POST", "DELETE", "APPLY"]
                .iter()
                .any(|v| l.contains(&format!("verb=\"{v}\"")))
        })
        // Only the kinds the operator manages (not the API server's own leases and events).
        .filter(|l| {
            MANAGED
                .iter()
                .any(|r| l.contains(&format!("resource=\"{r}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn main() {
    tokio::runtime::Runtime::new().unwrap().block_on(run());
}

async fn run() {
    let chains_n: usize = std::env::var("CHAINS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let mut cp = ControlPlane::start(false).await;
    let client = cp.client().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    secrets
        .create(
            &PostParams::default(),
            &Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some("acme".into()),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([(
                    "directory.yaml".to_string(),
                    ByteString(b"tenants:\n  acme:\n    users: []\n".to_vec()),
                )])),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let operator = cp.start_operator();
    let chains: Api<SyncChain> = Api::namespaced(client.clone(), "default");
    let nodes: Api<SyncNode> = Api::namespaced(client.clone(), "default");
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let started = Instant::now();
    for i in 0..chains_n {
        let chain: SyncChain = serde_json::from_value(json!({
            "apiVersion": "syncrelay.io/v1alpha1", "kind": "SyncChain",
            "metadata": {"name": format!("c{i}"), "namespace": "default"},
            "spec": {"directorySecret": "acme", "nodes": [
                {"name": "origin", "role": "origin"},
                {"name": "relay", "role": "relay", "upstreams": ["origin"]},
                {"name": "edge", "role": "edge", "upstreams": ["relay"]}
            ]}
        }))
        .unwrap();
        chains.create(&PostParams::default(), &chain).await.unwrap();
    }
    let total = chains_n * 3;
    loop {
        let workloads = sts.list(&ListParams::default()).await.unwrap().items.len()
            + deployments
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .len();
        let with_status = nodes
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|n| n.status.is_some())
            .count();
        let chain_status = chains
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|c| c.status.as_ref().is_some_and(|s| s.node_count == Some(3)))
            .count();
        eprint!("\r{workloads}/{total} workloads, {with_status}/{total} node statuses, {chain_status}/{chains_n} chain statuses   ");
        if workloads == total && with_status == total && chain_status == chains_n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let converge = started.elapsed();
    eprintln!();
    let rss_after_converge = rss_mib(cp.operator_pid(operator));
    // Let the identities settle into the chain directories, then count writes over an idle window.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let before = api_writes(&cp).await;
    tokio::time::sleep(Duration::from_secs(70)).await;
    let idle_writes = api_writes(&cp).await - before;
    let rss = rss_mib(cp.operator_pid(operator));
    println!("operator benchmark: {chains_n} SyncChains × 3 nodes = {total} SyncNodes, one run on this machine");
    println!(
        "  created → all workloads and statuses written: {:.1} s (includes {total} RSA-3072 identity generations)",
        converge.as_secs_f64()
    );
    println!("  write requests to the API server in 70 s of steady state: {idle_writes} (goal: 0)");
    println!("  operator RSS: {rss_after_converge:.1} MiB after converging, {rss:.1} MiB after the idle window (goal < 64 MiB)");
}
