//! The Helm chart: lint, template with default and full values, the schema refusing bad values, the
//! chart's CRDs equal to `crds/`, and `helm install` into a real API server.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{eventually, ControlPlane};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn helm() -> PathBuf {
    let out = Command::new("bash")
        .arg(repo().join("scripts/helm.sh"))
        .output()
        .expect("scripts/helm.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(helm())
        .args(args)
        .current_dir(repo())
        .output()
        .expect("helm");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn chart_crds_are_the_generated_crds() {
    let chart = std::fs::read_to_string(repo().join("charts/syncrelay/files/crds.yaml")).unwrap();
    assert!(
        chart == syncrelay_operator::crd::crd_yaml().unwrap(),
        "charts/syncrelay/files/crds.yaml is stale: copy crds/syncrelay.io.yaml"
    );
}

#[test]
fn chart_lints_templates_and_validates_values() {
    let (ok, text) = run(&["lint", "charts/syncrelay", "--strict"]);
    assert!(ok, "{text}");
    let (ok, default) = run(&["template", "t", "charts/syncrelay"]);
    assert!(ok, "{default}");
    assert_eq!(default.matches("kind: CustomResourceDefinition").count(), 2);
    assert_eq!(default.matches("helm.sh/resource-policy: keep").count(), 2);
    assert!(!default.contains("--leader-election"));
    // The `helm test` hook: the chart's own image checks the operator and the CRDs.
    assert!(default.contains("helm.sh/hook: test"));
    assert!(default.contains("- --ready-url=http://t-syncrelay-metrics.default.svc:8080/readyz"));
    assert!(
        default.contains("readOnlyRootFilesystem: true") && default.contains("drop: [\"ALL\"]")
    );
    let (ok, full) = run(&[
        "template",
        "t",
        "charts/syncrelay",
        "--set",
        "replicaCount=2",
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "watchNamespace=sync",
        "--set",
        "crds.enabled=false",
    ]);
    assert!(ok, "{full}");
    for expected in [
        "kind: ServiceMonitor",
        "kind: PodDisruptionBudget",
        "kind: NetworkPolicy",
        "--leader-election",
        "kind: Role\n",
        "--namespace=sync",
        "- check",
    ] {
        assert!(full.contains(expected), "{expected} missing");
    }
    assert!(!full.contains("kind: CustomResourceDefinition"));
    let bad =
        std::env::temp_dir().join(format!("syncrelay-bad-values-{}.yaml", std::process::id()));
    std::fs::write(&bad, "replicaCount: 0\nunknownKey: 1\n").unwrap();
    let (ok, text) = run(&[
        "template",
        "t",
        "charts/syncrelay",
        "-f",
        bad.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_file(&bad);
    assert!(!ok, "bad values accepted: {text}");
    assert!(
        text.contains("replicaCount") || text.contains("unknownKey"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn helm_install_creates_the_operators_objects() {
    let cp = ControlPlane::start_bare(false).await;
    let kubeconfig = cp.kubeconfig.to_str().unwrap().to_string();
    let (ok, text) = run(&[
        "install",
        "syncrelay",
        "charts/syncrelay",
        "--kubeconfig",
        &kubeconfig,
        "--namespace",
        "default",
    ]);
    assert!(ok, "{text}");
    let client = cp.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    eventually("the chart's CRDs exist", || async {
        crds.get_opt("syncnodes.syncrelay.io")
            .await
            .unwrap()
            .is_some()
            && crds
                .get_opt("syncchains.syncrelay.io")
                .await
                .unwrap()
                .is_some()
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d = deployments.get("syncrelay").await.unwrap();
    let image = d.spec.unwrap().template.spec.unwrap().containers[0]
        .image
        .clone()
        .unwrap();
    assert_eq!(
        image,
        format!("ghcr.io/syncrelay/syncrelay:{}", env!("CARGO_PKG_VERSION"))
    );
    let roles: Api<ClusterRole> = Api::all(client);
    let role = roles.get("syncrelay").await.unwrap();
    let status_rule = role.rules.unwrap().into_iter().find(|r| {
        r.resources
            .as_ref()
            .is_some_and(|res| res.contains(&"syncnodes/status".to_string()))
    });
    assert_eq!(status_rule.unwrap().verbs, vec!["patch".to_string()]);
}

/// Every SyncChain in examples/ parses into the CRD type and passes the operator's validation.
#[test]
fn examples_are_valid_chains() {
    let mut found = 0;
    let mut stack = vec![repo().join("examples")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let value: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
            if value["kind"].as_str() == Some("SyncChain") {
                let chain: syncrelay_operator::crd::SyncChain = serde_yaml::from_value(value)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                syncrelay_operator::validate::sync_chain(&chain.spec)
                    .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
                found += 1;
            }
        }
    }
    assert_eq!(found, 4, "SyncChain examples");
}
