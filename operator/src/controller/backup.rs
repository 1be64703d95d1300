//! Scheduled backups of a node set (`spec.backup`): applies the backup volume and CronJob built by
//! `render::backup`, removes the CronJob when backups are turned off, and reads what the runs did
//! into `status.backup`.
//!
//! The volume is created once and never owned by the SyncNode: deleting a node set must not delete
//! its backups. The CronJob is applied in the API version the cluster serves (`batch/v1`, or
//! `batch/v1beta1` on Kubernetes 1.20). A run's outcome comes from its Job; its entry count and
//! snapshot from the summary the backup writes as its pod's termination message
//! (`syncrelay_node::backup::RunSummary`). Only the Jobs Kubernetes keeps are seen (three of each
//! outcome), which always includes the newest success if there was one.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, PostParams,
};
use kube::ResourceExt;
use syncrelay_node::backup::RunSummary;

use super::{owned, Context, Error};
use crate::crd::{BackupRun, BackupStatus, SyncNode};
use crate::render::backup as build;

/// Longest failure message copied into the status.
const MESSAGE_MAX_CHARS: usize = 1000;

pub const SUCCEEDED: &str = "Succeeded";
pub const FAILED: &str = "Failed";
pub const RUNNING: &str = "Running";

/// Applies or removes the backup objects of `sn` and returns its backup status (None when the
/// node has no `spec.backup`).
pub async fn reconcile(
    ctx: &Context,
    sn: &SyncNode,
    name: &str,
    namespace: &str,
) -> Result<Option<BackupStatus>, Error> {
    let client = ctx.client.clone();
    let cron_api = ctx.served.cron_job.map(|version| {
        let (group, version) = version.split_once('/').expect("group/version");
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(group, version, "CronJob"),
            "cronjobs",
        );
        (
            Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &resource),
            resource,
        )
    });
    let cron_name = build::backup_name(name);
    let Some(backup) = &sn.spec.backup else {
        if let Some((crons, _)) = &cron_api {
            if crons.get_opt(&cron_name).await?.is_some() {
                crons.delete(&cron_name, &DeleteParams::default()).await?;
            }
        }
        return Ok(None);
    };
    let Some((crons, resource)) = cron_api else {
        return Ok(Some(BackupStatus {
            scheduled: false,
            message: Some(
                "this cluster serves no CronJob API (batch/v1 or batch/v1beta1): no backups run"
                    .into(),
            ),
            ..BackupStatus::default()
        }));
    };

    // The volume: created once, kept (no owner) when the node set or its backups go away.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    if claims.get_opt(&cron_name).await?.is_none() {
        let claim = build::volume_claim(name, namespace, &sn.spec, backup);
        match claims.create(&PostParams::default(), &claim).await {
            Ok(_) => {}
            // Another writer was first: the claim is there, which is all we want.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let cron = build::cron_job(name, namespace, &sn.spec, backup, &ctx.node_image);
    let mut object: DynamicObject =
        serde_json::from_value(build::cron_job_as(&cron, &resource.api_version))
            .map_err(|e| Error::Serialize(e.to_string()))?;
    owned(&mut object.metadata, sn);
    super::syncnode::apply(ctx, &crons, &cron_name, &object).await?;

    let selector = ListParams::default().labels(&build::backup_selector(name));
    let jobs = Api::<Job>::namespaced(client.clone(), namespace)
        .list(&selector)
        .await?
        .items;
    let pods = Api::<Pod>::namespaced(client, namespace)
        .list(&selector)
        .await?
        .items;
    let (last_run, last_success) = runs(&jobs, &pods);
    Ok(Some(BackupStatus {
        scheduled: true,
        message: None,
        last_run,
        last_success,
    }))
}

/// The newest run and the newest successful run among `jobs` (pods give their summaries).
pub fn runs(jobs: &[Job], pods: &[Pod]) -> (Option<BackupRun>, Option<BackupRun>) {
    let mut jobs: Vec<&Job> = jobs.iter().collect();
    // Oldest first; the name breaks ties (Jobs of a CronJob are named after their schedule time).
    jobs.sort_by_key(|j| {
        (
            j.metadata.creation_timestamp.clone().map(|t| t.0),
            j.name_any(),
        )
    });
    let all: Vec<BackupRun> = jobs.iter().map(|j| run(j, pods)).collect();
    let last_success = all.iter().rev().find(|r| r.result == SUCCEEDED).cloned();
    (all.last().cloned(), last_success)
}

/// One Job as a run: its outcome and times, and what its newest finished pod said.
pub fn run(job: &Job, pods: &[Pod]) -> BackupRun {
    let status = job.status.clone().unwrap_or_default();
    let condition = |kind: &str| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == kind && c.status == "True")
    };
    let (result, finished) = if let Some(c) = condition("Complete") {
        (
            SUCCEEDED,
            status
                .completion_time
                .clone()
                .or(c.last_transition_time.clone()),
        )
    } else if let Some(c) = condition("Failed") {
        (FAILED, c.last_transition_time.clone())
    } else {
        (RUNNING, None)
    };
    let job_name = job.name_any();
    let message = pods
        .iter()
        .filter(|p| p.labels().get("job-name") == Some(&job_name))
        .filter_map(|p| {
            let state = p.status.as_ref()?.container_statuses.as_ref()?.first()?;
            let terminated = state.state.as_ref()?.terminated.as_ref()?;
            Some((
                terminated.finished_at.clone().map(|t| t.0),
                terminated.message.clone(),
            ))
        })
        .max_by_key(|(finished, _)| *finished)
        .and_then(|(_, message)| message);
    let summary: Option<RunSummary> = message
        .as_deref()
        .and_then(|m| serde_json::from_str(m).ok());
    let mut run = BackupRun {
        job: job_name,
        result: result.into(),
        start_time: status.start_time.map(|t| t.0.to_string()),
        completion_time: finished.map(|t| t.0.to_string()),
        ..BackupRun::default()
    };
    match summary {
        Some(s) => {
            run.entries = s.entries.map(|n| n as i64);
            run.stores = s.stores.map(|n| n as i64);
            run.snapshot = s.snapshot;
            run.message = s.error.map(|e| cut(&e));
        }
        // Not a summary: the log tail Kubernetes kept because the process died before writing one.
        None => {
            run.message = message
                .filter(|m| !m.trim().is_empty())
                .map(|m| cut(m.trim()))
        }
    }
    run
}

fn cut(text: &str) -> String {
    text.chars().take(MESSAGE_MAX_CHARS).collect()
}

/// Whether `new` reports a failed run the previous status did not: announced once per run.
pub fn newly_failed<'a>(
    old: Option<&BackupStatus>,
    new: &'a BackupStatus,
) -> Option<&'a BackupRun> {
    let run = new.last_run.as_ref().filter(|r| r.result == FAILED)?;
    let seen = old
        .and_then(|o| o.last_run.as_ref())
        .is_some_and(|o| o.job == run.job && o.result == FAILED);
    (!seen).then_some(run)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(name: &str, created: &str, status: serde_json::Value) -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": name, "creationTimestamp": created},
            "spec": {"template": {}},
            "status": status,
        }))
        .unwrap()
    }

    fn pod(job: &str, finished: &str, message: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{job}-x"), "labels": {"job-name": job}},
            "status": {"containerStatuses": [{
                "name": "backup", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "finishedAt": finished, "message": message}},
            }]},
        }))
        .unwrap()
    }

    fn complete(at: &str) -> serde_json::Value {
        json!({"startTime": "2026-12-06T03:00:00Z", "completionTime": at, "succeeded": 1,
               "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": at}]})
    }

    fn failed(at: &str) -> serde_json::Value {
        json!({"startTime": "2026-12-06T03:00:00Z", "failed": 3,
               "conditions": [{"type": "Failed", "status": "True", "lastTransitionTime": at,
                               "reason": "BackoffLimitExceeded"}]})
    }

    #[test]
    fn the_newest_run_and_the_newest_success_with_their_summaries() {
        let jobs = [
            job(
                "b-1",
                "2026-12-04T03:00:00Z",
                complete("2026-12-04T03:01:00Z"),
            ),
            job(
                "b-2",
                "2026-12-05T03:00:00Z",
                complete("2026-12-05T03:02:00Z"),
            ),
            job(
                "b-3",
                "2026-12-06T03:00:00Z",
                failed("2026-12-06T03:05:00Z"),
            ),
        ];
        let pods = [
            pod(
                "b-1",
                "2026-12-04T03:01:00Z",
                r#"{"takenAtMs":1,"entries":10,"stores":1,"snapshot":"0000000000000001"}"#,
            ),
            pod(
                "b-2",
                "2026-12-05T03:02:00Z",
                r#"{"takenAtMs":2,"entries":25,"stores":2,"snapshot":"0000000000000002"}"#,
            ),
            pod("b-3", "2026-12-06T03:01:00Z", r#"{"error":"first try"}"#),
            pod(
                "b-3",
                "2026-12-06T03:04:00Z",
                r#"{"error":"GET /status: connection refused"}"#,
            ),
        ];
        let (last, success) = runs(&jobs, &pods);
        let last = last.unwrap();
        assert_eq!((last.job.as_str(), last.result.as_str()), ("b-3", FAILED));
        assert_eq!(
            last.completion_time.as_deref(),
            Some("2026-12-06T03:05:00Z")
        );
        assert_eq!(
            last.message.as_deref(),
            Some("GET /status: connection refused"),
            "the newest attempt's message"
        );
        assert_eq!(last.entries, None);
        let success = success.unwrap();
        assert_eq!(success.job, "b-2");
        assert_eq!(success.entries, Some(25));
        assert_eq!(success.stores, Some(2));
        assert_eq!(success.snapshot.as_deref(), Some("0000000000000002"));
        assert_eq!(
            success.completion_time.as_deref(),
            Some("2026-12-05T03:02:00Z")
        );
    }

    #[test]
    fn a_run_in_progress_and_a_process_that_died_before_its_summary() {
        let jobs = [
            job(
                "b-1",
                "2026-12-05T03:00:00Z",
                failed("2026-12-05T03:01:00Z"),
            ),
            job(
                "b-2",
                "2026-12-06T03:00:00Z",
                json!({"startTime": "2026-12-06T03:00:00Z", "active": 1}),
            ),
        ];
        let pods = [pod(
            "b-1",
            "2026-12-05T03:01:00Z",
            "thread 'main' panicked at ...\n",
        )];
        let (last, success) = runs(&jobs, &pods);
        assert_eq!(last.unwrap().result, RUNNING);
        assert_eq!(success, None, "no run ever succeeded");
        let failed_run = run(&jobs[0], &pods);
        assert_eq!(
            failed_run.message.as_deref(),
            Some("thread 'main' panicked at ...")
        );
        let long = "y".repeat(5000);
        let pods = [pod("b-1", "2026-12-05T03:01:00Z", &long)];
        assert_eq!(
            run(&jobs[0], &pods).message.unwrap().len(),
            MESSAGE_MAX_CHARS
        );
        assert_eq!(runs(&[], &[]), (None, None));
    }

    #[test]
    fn a_failed_run_is_announced_once() {
        let failed_run = BackupRun {
            job: "b-3".into(),
            result: FAILED.into(),
            ..BackupRun::default()
        };
        let status = |run: Option<BackupRun>| BackupStatus {
            scheduled: true,
            last_run: run,
            ..BackupStatus::default()
        };
        let new = status(Some(failed_run.clone()));
        assert!(newly_failed(None, &new).is_some());
        let running = BackupRun {
            result: RUNNING.into(),
            ..failed_run.clone()
        };
        assert!(newly_failed(Some(&status(Some(running))), &new).is_some());
        assert!(newly_failed(Some(&new), &new).is_none(), "already reported");
        let next = status(Some(BackupRun {
            job: "b-4".into(),
            ..failed_run
        }));
        assert!(
            newly_failed(Some(&new), &next).is_some(),
            "another run failed"
        );
        assert!(newly_failed(None, &status(None)).is_none());
    }
}
