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

/// Artifact Hub's view of the chart: the CRD list names exactly the CRDs the operator generates,
/// each example is an object the operator accepts, and the operator flag is set.
#[test]
fn artifact_hub_annotations_describe_the_real_crds() {
    use kube::CustomResourceExt;
    let chart: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("charts/syncrelay/Chart.yaml")).unwrap(),
    )
    .unwrap();
    let annotations = &chart["annotations"];
    let nested = |key: &str| -> Vec<serde_yaml::Value> {
        let text = annotations[key]
            .as_str()
            .unwrap_or_else(|| panic!("Chart.yaml: no annotation {key}"));
        serde_yaml::from_str(text).unwrap_or_else(|e| panic!("Chart.yaml {key}: {e}"))
    };
    assert_eq!(
        annotations["artifacthub.io/operator"].as_str(),
        Some("true")
    );
    assert_eq!(
        annotations["artifacthub.io/license"].as_str(),
        Some("Apache-2.0")
    );
    let listed: Vec<(String, String, String)> = nested("artifacthub.io/crds")
        .iter()
        .map(|c| {
            assert!(
                c["description"].as_str().is_some_and(|d| !d.is_empty()),
                "{c:?}"
            );
            assert!(c["displayName"].as_str().is_some(), "{c:?}");
            let field = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (field("kind"), field("version"), field("name"))
        })
        .collect();
    let generated: Vec<(String, String, String)> = [
        syncrelay_operator::crd::SyncNode::crd(),
        syncrelay_operator::crd::SyncChain::crd(),
    ]
    .into_iter()
    .map(|crd| {
        (
            crd.spec.names.kind.clone(),
            crd.spec.versions[0].name.clone(),
            crd.metadata.name.clone().unwrap(),
        )
    })
    .collect();
    assert_eq!(listed, generated);
    let examples = nested("artifacthub.io/crdsExamples");
    let mut kinds = Vec::new();
    for example in examples {
        let json = serde_json::to_value(&example).unwrap();
        let kind = json["kind"].as_str().unwrap_or_default().to_string();
        let parsed = match kind.as_str() {
            "SyncNode" => serde_json::from_value::<syncrelay_operator::crd::SyncNode>(json)
                .map(|n| syncrelay_operator::validate::sync_node("example", &n.spec).is_ok()),
            "SyncChain" => serde_json::from_value::<syncrelay_operator::crd::SyncChain>(json)
                .map(|c| syncrelay_operator::validate::sync_chain(&c.spec).is_ok()),
            other => panic!("crdsExamples: unknown kind {other}"),
        };
        assert!(
            parsed.unwrap_or_else(|e| panic!("crdsExamples {kind}: {e}")),
            "crdsExamples {kind}: refused by the operator's validation"
        );
        kinds.push(kind);
    }
    kinds.sort();
    assert_eq!(kinds, ["SyncChain", "SyncNode"]);
}

/// The chart installs on the Kubernetes the tests run (1.20.2) and refuses older ones.
#[test]
fn kube_version_constraint_admits_the_tested_kubernetes() {
    let (ok, text) = run(&[
        "template",
        "t",
        "charts/syncrelay",
        "--kube-version",
        "1.20.2",
    ]);
    assert!(ok, "{text}");
    let (ok, text) = run(&[
        "template",
        "t",
        "charts/syncrelay",
        "--kube-version",
        "1.19.16",
    ]);
    assert!(!ok, "Kubernetes 1.19 accepted: {text}");
    assert!(text.contains("kubeVersion"), "{text}");
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
    let rules = role.rules.unwrap();
    let rule_for = |resource: &str| {
        rules
            .iter()
            .find(|r| {
                r.resources
                    .as_ref()
                    .is_some_and(|res| res.iter().any(|x| x == resource))
            })
            .cloned()
            .unwrap_or_else(|| panic!("no rule for {resource}"))
    };
    assert_eq!(
        rule_for("syncnodes/status").verbs,
        vec!["patch".to_string()]
    );
    // What the operator does to a node's cert-manager Certificate: read, apply, remove.
    let certificates = rule_for("certificates");
    assert_eq!(
        certificates.api_groups,
        Some(vec!["cert-manager.io".to_string()])
    );
    assert_eq!(certificates.verbs, ["get", "create", "patch", "delete"]);
}

/// Every SyncChain in examples/ parses into the CRD type and passes the operator's validation
/// (except the health-check samples under `testdata/`, some invalid on purpose).
#[test]
fn examples_are_valid_chains() {
    let mut found = 0;
    let mut stack = vec![repo().join("examples")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().and_then(|n| n.to_str()) != Some("testdata") {
                    stack.push(path);
                }
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
