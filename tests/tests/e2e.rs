//! End to end: the Helm chart installed into a real API server, the operator reconciling a SyncChain,
//! and real `syncrelay-node` processes started from exactly what the operator rendered (ConfigMap
//! node config, identity and directory Secrets, the pod's instance name) with the Services' names
//! mapped to loopback. Alice writes at one edge, Bob reads at another; the chain's status reports
//! the nodes Ready with their lag; the relay's link stalls for real (its upstream, behind a test
//! proxy, answers heads but refuses every entry transfer) and the operator reports
//! `UpstreamConnected=False/Stalled` with one Warning Event, then the recovery; an added edge
//! joins and a revoked user is refused.

#[path = "../../operator/tests/common/mod.rs"]
mod control;
#[path = "../../node/tests/common/proxy.rs"]
#[allow(dead_code)] // this test uses a part of it
mod proxy;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use control::{eventually, free_port, workspace_bin, ControlPlane, Proc};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams, PostParams};
use proxy::Proxy;
use serde_json::json;
use syncrelay_node::client::{HttpTransport, RemoteSession, RemoteStore, SessionOptions};
use syncrelay_node::config::NodeConfig;
use syncrelay_node::crypto::keys::Identity;
use syncrelay_node::directory::{DirectoryFile, TenantFile, UserEntry};
use syncrelay_node::store::ContentAddressedStore;
use syncrelay_node::wire::{StoreId, StoreKind};
use syncrelay_operator::crd::{SyncChain, SyncNode};

const TENANT: &str = "acme";
const DB: &str = "contacts";

fn vector_identity(name: &str) -> (String, Identity) {
    let keys = syncrelay_node::testdata::load("keys.json");
    let id = &keys["identities"][name];
    (
        id["username"].as_str().unwrap().to_string(),
        Identity::from_pkcs8_pem(
            id["signingPrivateKeyPkcs8"].as_str().unwrap(),
            id["encryptionPrivateKeyPkcs8"].as_str().unwrap(),
        )
        .unwrap(),
    )
}

/// Alice's entries `ns` of one document, signed with her vector identity.
fn alice_entries(ns: std::ops::Range<usize>) -> Vec<syncrelay_node::wire::Entry> {
    let alice = vector_identity("alice").1;
    ns.map(|n| {
        syncrelay_node::crypto::signing::author_entry(
            &alice,
            "doc",
            n,
            format!("ciphertext {n}").into_bytes(),
        )
    })
    .collect()
}

fn users_directory(alice_revoked: bool) -> String {
    let mut file = DirectoryFile::default();
    let user = |name: &str, revoked: bool| {
        let (username, id) = vector_identity(name);
        UserEntry {
            username,
            signing_public_key: id.signing_public_pem,
            encryption_public_key: id.encryption_public_pem,
            revoked,
        }
    };
    file.tenants.insert(
        TENANT.into(),
        TenantFile {
            users: vec![user("alice", alice_revoked), user("bob", false)],
            ..TenantFile::default()
        },
    );
    serde_yaml::to_string(&file).unwrap()
}

fn user_store(url: &str, who: &str) -> RemoteStore {
    let (username, identity) = vector_identity(who);
    let session = RemoteSession::new(
        url,
        Arc::new(HttpTransport::new(url, None, Duration::from_secs(30)).unwrap()),
        TENANT,
        SessionOptions {
            username,
            identity: Arc::new(identity),
            node_id: format!("e2e-{who}"),
            max_attempts: 2,
            backoff_base: Duration::from_millis(100),
        },
    );
    RemoteStore::new(
        Arc::new(session),
        StoreId::new(TENANT, DB, StoreKind::Docs).unwrap(),
    )
}

/// One node process run from the operator's rendering, as its pod would run it.
struct RunningNode {
    _process: Proc,
    url: String,
    dir: tempfile::TempDir,
}

fn secret_file(secret: &Secret, key: &str, path: &Path) {
    let data = secret.data.as_ref().unwrap();
    std::fs::write(path, &data[key].0).unwrap();
}

/// Copies the chain's directory Secret into a node's directory file (what the kubelet does for a
/// mounted Secret).
fn write_directory(dir: &Path, directory: &Secret) {
    let tmp = dir.join("directory.yaml.tmp");
    secret_file(directory, "directory.yaml", &tmp);
    std::fs::rename(tmp, dir.join("directory.yaml")).unwrap();
}

async fn run_node(client: &kube::Client, node: &str, ports: &BTreeMap<String, u16>) -> RunningNode {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let yaml = cms
        .get(&format!("{node}-config"))
        .await
        .unwrap()
        .data
        .unwrap()["node.yaml"]
        .clone();
    let mut config: NodeConfig = serde_yaml::from_str(&yaml).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let identity = secrets.get(&format!("{node}-identity")).await.unwrap();
    secret_file(&identity, "signing.pem", &d.join("signing.pem"));
    secret_file(&identity, "encryption.pem", &d.join("encryption.pem"));
    secret_file(&identity, "auth-secret", &d.join("auth-secret"));
    let chain_directory = secrets.get("e2e-directory").await.unwrap();
    write_directory(d, &chain_directory);
    // Mounted paths → this folder; Service names → loopback ports.
    config.listen = ([127, 0, 0, 1], ports[node]).into();
    config.data_dir = d.join("data");
    config.identity.signing_key_file = Some(d.join("signing.pem"));
    config.identity.encryption_key_file = Some(d.join("encryption.pem"));
    config.auth.secret_file = Some(d.join("auth-secret"));
    config.directory_file = Some(d.join("directory.yaml"));
    config.sync.interval_ms = 300;
    // Five minutes by default: this test stalls the relay's link and waits for it.
    config.sync.stall_after_ms = 2_000;
    for upstream in &mut config.upstreams {
        let host = upstream
            .url
            .trim_start_matches("http://")
            .split('.')
            .next()
            .unwrap()
            .to_string();
        upstream.url = format!("http://127.0.0.1:{}", ports[&host]);
    }
    std::fs::write(d.join("node.yaml"), config.to_yaml()).unwrap();
    let child = Command::new(workspace_bin("syncrelay-node"))
        .args(["serve", "--config"])
        .arg(d.join("node.yaml"))
        .env("SYNCRELAY_INSTANCE", format!("{node}-0"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{}", ports[node]);
    let http = reqwest::Client::new();
    eventually(&format!("{node} serving"), || async {
        http.get(format!("{url}/health")).send().await.is_ok()
    })
    .await;
    // The operator reads this node's /status through the loopback address.
    let nodes: Api<SyncNode> = Api::namespaced(client.clone(), "default");
    nodes
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"syncrelay.io/status-url": format!("{url}/status")}}})),
        )
        .await
        .unwrap();
    RunningNode {
        _process: Proc::from(child),
        url,
        dir,
    }
}

fn chain(nodes: serde_json::Value) -> SyncChain {
    serde_json::from_value(json!({
        "apiVersion": "syncrelay.io/v1alpha1", "kind": "SyncChain",
        "metadata": {"name": "e2e", "namespace": "default"},
        "spec": {"directorySecret": "acme-users", "databases": [{"tenant": TENANT, "db": DB}], "nodes": nodes}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chain_the_operator_wired_carries_data() {
    let mut cp = ControlPlane::start_bare(true).await;
    // The chart, as a user installs it (its CRDs included).
    let helm = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/helm.sh"))
        .output()
        .unwrap();
    let helm = String::from_utf8(helm.stdout).unwrap().trim().to_string();
    let installed = Command::new(&helm)
        .args(["install", "syncrelay"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/syncrelay"))
        .args(["--namespace", "default", "--kubeconfig"])
        .arg(&cp.kubeconfig)
        .output()
        .unwrap();
    assert!(
        installed.status.success(),
        "{}",
        String::from_utf8_lossy(&installed.stderr)
    );
    let client = cp.client().await;
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    control::wait_established(&crds, "syncchains.syncrelay.io").await;
    // No kubelet runs the chart's Deployment: the operator runs here, from the same binary.
    cp.start_operator();

    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let users = |revoked: bool| Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("acme-users".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "directory.yaml".to_string(),
            ByteString(users_directory(revoked).into_bytes()),
        )])),
        ..Default::default()
    };
    secrets
        .create(&PostParams::default(), &users(false))
        .await
        .unwrap();
    let chains: Api<SyncChain> = Api::namespaced(client.clone(), "default");
    let three_hops = json!([
        {"name": "origin", "role": "origin"},
        {"name": "relay", "role": "relay", "upstreams": ["origin"]},
        {"name": "edge1", "role": "edge", "upstreams": ["relay"]},
        {"name": "edge2", "role": "edge", "upstreams": ["relay"]}
    ]);
    chains
        .create(&PostParams::default(), &chain(three_hops.clone()))
        .await
        .unwrap();
    let names = [
        "e2e-origin",
        "e2e-relay",
        "e2e-edge1",
        "e2e-edge2",
        "e2e-edge3",
    ];
    let ports: BTreeMap<String, u16> = names.iter().map(|n| (n.to_string(), free_port())).collect();
    eventually("the chain's directory lists the four nodes", || async {
        secrets
            .get_opt("e2e-directory")
            .await
            .unwrap()
            .is_some_and(|s| {
                String::from_utf8_lossy(&s.data.unwrap()["directory.yaml"].0)
                    .matches("name: CN=e2e-")
                    .count()
                    == 4
            })
    })
    .await;
    let mut running = BTreeMap::new();
    running.insert(
        "e2e-origin".to_string(),
        run_node(&client, "e2e-origin", &ports).await,
    );
    // The relay reaches the origin through a proxy that this test can make refuse entry
    // transfers.
    let proxy = Proxy::start(&running["e2e-origin"].url);
    let mut via_proxy = ports.clone();
    let proxy_port = proxy.url.rsplit(':').next().unwrap().parse().unwrap();
    via_proxy.insert("e2e-origin".to_string(), proxy_port);
    running.insert(
        "e2e-relay".to_string(),
        run_node(&client, "e2e-relay", &via_proxy).await,
    );
    for node in &names[2..4] {
        running.insert(node.to_string(), run_node(&client, node, &ports).await);
    }

    // Alice writes at edge1; Bob reads at edge2.
    let alice = user_store(&running["e2e-edge1"].url, "alice");
    let written = alice_entries(0..20);
    let outcome = alice.push_entries(written.clone()).await.unwrap();
    assert!(outcome.rejected.is_empty(), "{:?}", outcome.rejected);
    let bob = user_store(&running["e2e-edge2"].url, "bob");
    let ids: Vec<String> = written.iter().map(|e| e.metadata.id.clone()).collect();
    let read = bob.get_entries(&ids).await.unwrap();
    assert_eq!(read.len(), 20);
    assert_eq!(read[5].encrypted_data, written[5].encrypted_data);

    // The chain's status: every node Ready, with its real lag.
    eventually("the chain reports Ready", || async {
        chains.get("e2e").await.unwrap().status.is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
                && s.nodes.iter().all(|n| n.ready && n.lag.is_some())
        })
    })
    .await;
    // Figures are refreshed from the nodes' /status (every 30 s, or on any change of the SyncNode).
    eventually(
        "the chain reports the relay's 20 entries and no lag",
        || async {
            chains.get("e2e").await.unwrap().status.is_some_and(|s| {
                s.nodes
                    .iter()
                    .any(|n| n.name == "relay" && n.entries == Some(20) && n.lag == Some(0))
            })
        },
    )
    .await;

    // Replication silently stops: through the proxy the origin still answers heads and scans,
    // but every entry transfer is refused. The relay's link stalls; the operator puts it in the
    // relay's `UpstreamConnected` condition (False, Stalled) with a Warning Event, and both
    // clear once entries flow again.
    proxy.refuse_transfers(true);
    let more = alice_entries(20..30);
    let at_origin = user_store(&running["e2e-origin"].url, "alice");
    let outcome = at_origin.push_entries(more).await.unwrap();
    assert!(outcome.rejected.is_empty(), "{:?}", outcome.rejected);
    let http = reqwest::Client::new();
    let relay_link = || async {
        let status: serde_json::Value = http
            .get(format!("{}/status", running["e2e-relay"].url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        status["links"][0].clone()
    };
    eventually("the relay's link stalled", || async {
        relay_link().await["state"] == "stalled"
    })
    .await;
    assert!(proxy.refused() > 0);
    let sync_nodes: Api<SyncNode> = Api::namespaced(client.clone(), "default");
    let upstream_condition = || async {
        let sn = sync_nodes.get("e2e-relay").await.unwrap();
        let generation = sn.metadata.generation;
        sn.status.and_then(|s| {
            s.conditions
                .into_iter()
                .find(|c| c.type_ == "UpstreamConnected" && c.observed_generation == generation)
                .map(|c| (c.status, c.reason, c.message))
        })
    };
    // The operator reads the node's /status on its 30 s refresh.
    eventually("e2e-relay UpstreamConnected=False/Stalled", || async {
        upstream_condition()
            .await
            .is_some_and(|(status, reason, _)| status == "False" && reason == "Stalled")
    })
    .await;
    let (_, _, message) = upstream_condition().await.unwrap();
    assert!(message.contains("stalled: e2e-origin"), "{message}");
    let event = |reason: &'static str, type_: &'static str| {
        control::event_count(&client, "e2e-relay", type_, Some(reason))
    };
    eventually("an UpstreamStalled Warning Event", || async {
        event("UpstreamStalled", "Warning").await == 1
    })
    .await;
    proxy.refuse_transfers(false);
    eventually("the relay's link current again", || async {
        let link = relay_link().await;
        link["state"] == "current" && link["lag"] == 0
    })
    .await;
    eventually("e2e-relay UpstreamConnected=True/Connected", || async {
        upstream_condition()
            .await
            .is_some_and(|(status, reason, _)| status == "True" && reason == "Connected")
    })
    .await;
    eventually("an UpstreamRecovered Event", || async {
        event("UpstreamRecovered", "Normal").await == 1
    })
    .await;
    assert_eq!(
        event("UpstreamStalled", "Warning").await,
        1,
        "one Warning for the one transition"
    );

    // The chain grows: edge3 is rendered, started from its rendering, and serves Bob.
    let mut four = three_hops.as_array().unwrap().clone();
    four.push(json!({"name": "edge3", "role": "edge", "upstreams": ["relay"]}));
    chains
        .patch(
            "e2e",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"nodes": four}})),
        )
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    eventually("edge3 rendered and in the directory", || async {
        cms.get_opt("e2e-edge3-config").await.unwrap().is_some()
            && secrets
                .get("e2e-directory")
                .await
                .unwrap()
                .data
                .is_some_and(|d| {
                    String::from_utf8_lossy(&d["directory.yaml"].0).contains("CN=e2e-edge3.default")
                })
    })
    .await;
    // The relay must trust edge3's identity: refresh every mounted directory, as the kubelet would.
    let directory = secrets.get("e2e-directory").await.unwrap();
    for node in running.values() {
        write_directory(node.dir.path(), &directory);
    }
    running.insert(
        "e2e-edge3".into(),
        run_node(&client, "e2e-edge3", &ports).await,
    );
    let bob3 = user_store(&running["e2e-edge3"].url, "bob");
    assert_eq!(bob3.get_entries(&ids).await.unwrap().len(), 20);

    // Revoking Alice in the users' Secret reaches the chain's directory and every node.
    secrets
        .replace("acme-users", &PostParams::default(), &{
            let mut s = users(true);
            s.metadata.resource_version = secrets
                .get("acme-users")
                .await
                .unwrap()
                .metadata
                .resource_version;
            s
        })
        .await
        .unwrap();
    eventually("the chain's directory revokes alice", || async {
        secrets
            .get("e2e-directory")
            .await
            .unwrap()
            .data
            .is_some_and(|d| {
                String::from_utf8_lossy(&d["directory.yaml"].0).contains("revoked: true")
            })
    })
    .await;
    let directory = secrets.get("e2e-directory").await.unwrap();
    for node in running.values() {
        write_directory(node.dir.path(), &directory);
    }
    for (name, node) in &running {
        let fresh = user_store(&node.url, "alice");
        let refused = fresh.get_store_head().await;
        assert!(refused.is_err(), "{name} still serves a revoked user");
    }
}
