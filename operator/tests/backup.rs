//! Backups (`spec.backup`) against a real kube-apiserver (1.20, with kube-controller-manager for
//! garbage collection): the CronJob in the CronJob API the server serves (batch/v1beta1 there),
//! owned by the SyncNode; the backup volume created once and owned by nobody, so it outlives the
//! node set; the status and metrics saying backups are scheduled; turning backups off removes the
//! CronJob and keeps the volume. Runs and their summaries are covered by unit tests
//! (`controller::backup`) and by the real-pods test, where a kubelet runs them.

mod common;

use common::{eventually, ControlPlane};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::ResourceExt;
use serde_json::json;
use syncrelay_operator::crd::SyncNode;

#[tokio::test(flavor = "multi_thread")]
async fn backups_are_scheduled_and_their_volume_outlives_the_node_set() {
    let mut cp = ControlPlane::start(true).await;
    let operator = cp.start_operator();
    let client = cp.client().await;
    let nodes: Api<SyncNode> = Api::namespaced(client.clone(), "default");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("batch", "v1beta1", "CronJob"),
        "cronjobs",
    );
    let crons: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);

    let origin: SyncNode = serde_json::from_value(json!({
        "apiVersion": "syncrelay.io/v1alpha1",
        "kind": "SyncNode",
        "metadata": {"name": "origin", "namespace": "default"},
        "spec": {"role": "origin", "directorySecret": "dir",
                 "backup": {"schedule": "0 3 * * *", "storage": {"size": "2Gi"}, "keep": 4}},
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &origin).await.unwrap();
    eventually("the backup CronJob (batch/v1beta1) and volume", || async {
        crons.get_opt("origin-backup").await.unwrap().is_some()
            && claims.get_opt("origin-backup").await.unwrap().is_some()
    })
    .await;
    let uid = nodes.get("origin").await.unwrap().uid().unwrap();
    let cron = crons.get("origin-backup").await.unwrap();
    assert_eq!(cron.owner_references().len(), 1);
    assert_eq!(cron.owner_references()[0].uid, uid);
    assert_eq!(cron.data["spec"]["schedule"], "0 3 * * *");
    assert_eq!(cron.data["spec"]["concurrencyPolicy"], "Forbid");
    let args =
        &cron.data["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"];
    assert_eq!(args[0], "backup", "{args}");
    assert!(
        args.as_array()
            .unwrap()
            .windows(2)
            .any(|w| w[0] == "--keep" && w[1] == "4"),
        "{args}"
    );
    let claim = claims.get("origin-backup").await.unwrap();
    assert!(
        claim.owner_references().is_empty(),
        "the backup volume belongs to nobody: {:?}",
        claim.owner_references()
    );
    assert_eq!(
        claim.spec.unwrap().resources.unwrap().requests.unwrap()["storage"].0,
        "2Gi"
    );
    eventually("status.backup.scheduled", || async {
        nodes
            .get("origin")
            .await
            .unwrap()
            .status
            .and_then(|s| s.backup)
            .is_some_and(|b| b.scheduled && b.last_run.is_none())
    })
    .await;
    let metrics = reqwest::get(format!("{}/metrics", cp.operator_url(operator)))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "syncrelay_operator_backup_last_success_timestamp_seconds{namespace=\"default\",syncnode=\"origin\"} 0"
        ),
        "{metrics}"
    );

    // Backups off: the CronJob goes, the volume stays.
    nodes
        .patch(
            "origin",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"backup": null}})),
        )
        .await
        .unwrap();
    eventually("the CronJob removed", || async {
        crons.get_opt("origin-backup").await.unwrap().is_none()
    })
    .await;
    eventually("status.backup cleared", || async {
        nodes
            .get("origin")
            .await
            .unwrap()
            .status
            .is_some_and(|s| s.backup.is_none())
    })
    .await;
    // The node set deleted: its children are collected, the backup volume is not.
    nodes
        .delete("origin", &DeleteParams::default())
        .await
        .unwrap();
    let configs: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "default");
    eventually("origin's children collected", || async {
        configs.get_opt("origin-config").await.unwrap().is_none()
    })
    .await;
    assert!(claims.get_opt("origin-backup").await.unwrap().is_some());
}
