//! Backups of a node set (`spec.backup`): a PersistentVolumeClaim `<node>-backup` and a CronJob
//! `<node>-backup` whose pod runs `syncrelay-node backup` against the node's own Service with the
//! node's own identity (the generated `<node>-identity`, a trusted server in a chain's directory),
//! pulling every carried database into the volume and keeping the newest `keep` snapshots.
//! One run at a time (`concurrencyPolicy: Forbid`): the runs share the incremental store.
//!
//! Each run writes a summary (entries, stores, snapshot, or the error) to its termination message,
//! which the reconciler reads into the SyncNode's status. The backup pods carry labels of their
//! own (`app.kubernetes.io/name: syncrelay-backup`): the node's Service, workload selector and
//! disruption budget must never count them as node pods.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec,
    PodTemplateSpec, SeccompProfile, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::ObjectMeta;

use super::config::{node_identity_name, service_url};
use super::{identity_secret_name, labels, paths};
use crate::crd::{BackupSpec, SyncNodeSpec};

/// Where the backup volume is mounted in the backup pod.
pub const BACKUP_DIR: &str = "/backup";
/// The image's non-root user (distroless `nonroot`), as in the node pods.
const UID: i64 = 65532;

pub fn backup_name(node: &str) -> String {
    format!("{node}-backup")
}

/// Where the backup container writes its run summary: the file Kubernetes keeps as the
/// container's termination message.
pub const SUMMARY_FILE: &str = "/dev/termination-log";

/// Labels of the backup objects and pods (never the node pods' selector).
pub fn backup_labels(node: &str, spec: &SyncNodeSpec) -> BTreeMap<String, String> {
    let mut l = labels(node, spec.role);
    l.insert("app.kubernetes.io/name".into(), "syncrelay-backup".into());
    l.insert("app.kubernetes.io/component".into(), "backup".into());
    l
}

/// Selects the backup Jobs (and their pods) of a node.
pub fn backup_selector(node: &str) -> String {
    format!(
        "app.kubernetes.io/name=syncrelay-backup,{}={node}",
        super::NODE_LABEL
    )
}

fn meta(node: &str, namespace: &str, spec: &SyncNodeSpec) -> ObjectMeta {
    let l = backup_labels(node, spec);
    ObjectMeta {
        name: Some(backup_name(node)),
        namespace: Some(namespace.into()),
        labels: Some(l),
        ..ObjectMeta::default()
    }
}

/// The volume the snapshots live on.
pub fn volume_claim(
    node: &str,
    namespace: &str,
    spec: &SyncNodeSpec,
    backup: &BackupSpec,
) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: meta(node, namespace, spec),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: backup.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(backup.storage.size.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

/// The arguments of `syncrelay-node` in the backup pod.
pub fn backup_args(node: &str, namespace: &str, spec: &SyncNodeSpec, keep: u32) -> Vec<String> {
    let mut args = vec![
        "backup".to_string(),
        "--url".into(),
        service_url(node, namespace, spec.tls.is_some()),
        "--dir".into(),
        BACKUP_DIR.into(),
        "--keep".into(),
        keep.to_string(),
        "--keys".into(),
        paths::IDENTITY_DIR.into(),
        "--username".into(),
        node_identity_name(node, namespace),
        "--summary-file".into(),
        SUMMARY_FILE.into(),
    ];
    if spec.tls.is_some() {
        args.push("--ca-file".into());
        args.push(format!("{}/ca.crt", paths::TLS_DIR));
    }
    args
}

fn secret_volume(name: &str, secret: &str, keys: &[&str]) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            default_mode: Some(0o400),
            items: Some(
                keys.iter()
                    .map(|k| k8s_openapi::api::core::v1::KeyToPath {
                        key: k.to_string(),
                        path: k.to_string(),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    }
}

/// The CronJob; `default_image` is used when the spec names none (as for the node's pods).
pub fn cron_job(
    node: &str,
    namespace: &str,
    spec: &SyncNodeSpec,
    backup: &BackupSpec,
    default_image: &str,
) -> CronJob {
    let mut volumes = vec![
        secret_volume(
            "identity",
            &identity_secret_name(node),
            &["signing.pem", "encryption.pem"],
        ),
        Volume {
            name: "backup".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: backup_name(node),
                read_only: Some(false),
            }),
            ..Volume::default()
        },
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    let mut mounts = vec![
        mount("identity", paths::IDENTITY_DIR, true),
        mount("backup", BACKUP_DIR, false),
        mount("tmp", "/tmp", false),
    ];
    if let Some(tls) = &spec.tls {
        volumes.push(secret_volume("tls", &tls.secret(node), &["ca.crt"]));
        mounts.push(mount("tls", paths::TLS_DIR, true));
    }
    let container = Container {
        name: "backup".into(),
        image: Some(spec.image.clone().unwrap_or_else(|| default_image.into())),
        args: Some(backup_args(node, namespace, spec, backup.keep)),
        volume_mounts: Some(mounts),
        // The summary file is always written; the log tail stands in if the process died first.
        termination_message_path: Some(SUMMARY_FILE.into()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let metadata = meta(node, namespace, spec);
    CronJob {
        metadata: metadata.clone(),
        spec: Some(CronJobSpec {
            schedule: backup.schedule.clone(),
            concurrency_policy: Some("Forbid".into()),
            successful_jobs_history_limit: Some(3),
            failed_jobs_history_limit: Some(3),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: metadata.labels.clone(),
                    ..ObjectMeta::default()
                }),
                spec: Some(JobSpec {
                    backoff_limit: Some(2),
                    template: PodTemplateSpec {
                        metadata: Some(ObjectMeta {
                            labels: metadata.labels.clone(),
                            ..ObjectMeta::default()
                        }),
                        spec: Some(PodSpec {
                            restart_policy: Some("Never".into()),
                            containers: vec![container],
                            volumes: Some(volumes),
                            automount_service_account_token: Some(false),
                            security_context: Some(PodSecurityContext {
                                run_as_non_root: Some(true),
                                run_as_user: Some(UID),
                                run_as_group: Some(UID),
                                fs_group: Some(UID),
                                seccomp_profile: Some(SeccompProfile {
                                    type_: "RuntimeDefault".into(),
                                    ..SeccompProfile::default()
                                }),
                                ..PodSecurityContext::default()
                            }),
                            ..PodSpec::default()
                        }),
                    },
                    ..JobSpec::default()
                }),
            },
            ..CronJobSpec::default()
        }),
        ..CronJob::default()
    }
}

/// The CronJob as the API version the cluster serves: `batch/v1` (Kubernetes 1.21+) or
/// `batch/v1beta1` (1.20), whose schema holds every field this builder sets.
pub fn cron_job_as(cron: &CronJob, api_version: &str) -> serde_json::Value {
    let mut value = serde_json::to_value(cron).expect("a CronJob serialises");
    value["apiVersion"] = api_version.into();
    value["kind"] = "CronJob".into();
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{StorageSpec, TlsSpec};
    use syncrelay_node::config::Role;

    fn spec(tls: bool) -> (SyncNodeSpec, BackupSpec) {
        let mut spec: SyncNodeSpec =
            serde_json::from_value(serde_json::json!({"role": "origin", "directorySecret": "d"}))
                .unwrap();
        if tls {
            spec.tls = Some(TlsSpec {
                secret_name: Some("origin-tls".into()),
                ..TlsSpec::default()
            });
        }
        let backup = BackupSpec {
            schedule: "0 3 * * *".into(),
            storage: StorageSpec {
                size: "50Gi".into(),
                storage_class_name: Some("slow".into()),
                kind: None,
            },
            keep: 5,
        };
        (spec, backup)
    }

    #[test]
    fn the_job_pulls_from_the_nodes_service_as_the_node_into_the_volume() {
        let (spec, backup) = spec(false);
        let job = cron_job("origin", "acme", &spec, &backup, "img:1");
        let s = job.spec.as_ref().unwrap();
        assert_eq!(s.schedule, "0 3 * * *");
        assert_eq!(s.concurrency_policy.as_deref(), Some("Forbid"));
        let pod = s
            .job_template
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("img:1"));
        assert_eq!(
            c.args.as_ref().unwrap(),
            &[
                "backup",
                "--url",
                "http://origin.acme.svc.cluster.local:1661",
                "--dir",
                BACKUP_DIR,
                "--keep",
                "5",
                "--keys",
                paths::IDENTITY_DIR,
                "--username",
                "CN=origin.acme",
                "--summary-file",
                SUMMARY_FILE,
            ]
        );
        assert_eq!(c.termination_message_path.as_deref(), Some(SUMMARY_FILE));
        let volumes = pod.volumes.as_ref().unwrap();
        let claim = volumes
            .iter()
            .find_map(|v| v.persistent_volume_claim.as_ref())
            .unwrap();
        assert_eq!(claim.claim_name, "origin-backup");
        let identity = volumes
            .iter()
            .find_map(|v| v.secret.as_ref())
            .and_then(|s| s.secret_name.as_deref());
        assert_eq!(identity, Some("origin-identity"));
        let security = c.security_context.as_ref().unwrap();
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(
            pod.security_context.as_ref().unwrap().fs_group,
            Some(UID),
            "the volume is writable by the non-root user"
        );
        assert_eq!(
            job.metadata.labels.as_ref().unwrap()["app.kubernetes.io/component"],
            "backup"
        );
        // The node's Service and workload select on these: a backup pod must never match.
        let pod_labels = s
            .job_template
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        let selector = crate::render::selector_labels("origin");
        assert!(
            selector.iter().any(|(k, v)| pod_labels.get(k) != Some(v)),
            "backup pods {pod_labels:?} match the node selector {selector:?}"
        );
        assert_eq!(
            backup_selector("origin"),
            "app.kubernetes.io/name=syncrelay-backup,syncrelay.io/node=origin"
        );
        assert!(backup_selector("origin")
            .split(',')
            .all(|kv| kv.split_once('=').is_some_and(|(k, v)| pod_labels[k] == v)));
        let v1beta1 = cron_job_as(&job, "batch/v1beta1");
        assert_eq!(v1beta1["apiVersion"], "batch/v1beta1");
        assert_eq!(v1beta1["spec"]["schedule"], "0 3 * * *");
    }

    #[test]
    fn tls_nodes_are_reached_over_https_trusting_their_ca() {
        let (spec, backup) = spec(true);
        let args = backup_args("origin", "acme", &spec, backup.keep);
        assert_eq!(args[2], "https://origin.acme.svc.cluster.local:1661");
        assert!(
            args.windows(2)
                .any(|w| w == ["--ca-file", "/etc/syncrelay/tls/ca.crt"]),
            "{args:?}"
        );
        let job = cron_job("origin", "acme", &spec, &backup, "img:1");
        let pod = job
            .spec
            .unwrap()
            .job_template
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        assert!(pod.volumes.unwrap().iter().any(|v| v
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.as_deref())
            == Some("origin-tls")));
    }

    #[test]
    fn the_claim_has_the_size_and_class_asked_for() {
        let (spec, backup) = spec(false);
        let pvc = volume_claim("origin", "acme", &spec, &backup);
        assert_eq!(pvc.metadata.name.as_deref(), Some("origin-backup"));
        let s = pvc.spec.unwrap();
        assert_eq!(s.storage_class_name.as_deref(), Some("slow"));
        assert_eq!(
            s.resources.unwrap().requests.unwrap()["storage"],
            Quantity("50Gi".into())
        );
        assert_eq!(spec.role, Role::Origin);
    }
}
