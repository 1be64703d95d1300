//! The pods of a node: a StatefulSet with a volume per pod for roles that keep a local copy
//! (origin, relay, peer), a Deployment otherwise (edge, passthrough). Secure defaults: non-root,
//! read-only root filesystem, no capabilities, RuntimeDefault seccomp.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile,
    SecretVolumeSource, SecurityContext, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;

use super::config::ResolvedUpstream;
use super::{
    config_map_name, identity_secret_name, is_stateful, labels, paths, peers_service_name,
    selector_labels, CONFIG_HASH_ANNOTATION,
};
use crate::crd::{SyncNodeSpec, NODE_PORT};

/// Image used when the spec names none: this operator's own release.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/syncrelay/syncrelay:", env!("CARGO_PKG_VERSION"));
/// The image's non-root user (distroless `nonroot`).
const UID: i64 = 65532;

pub enum Workload {
    StatefulSet(Box<StatefulSet>),
    Deployment(Box<Deployment>),
}

/// What the pod template needs besides the spec.
pub struct PodInputs<'a> {
    pub config_hash: &'a str,
    pub upstreams: &'a [ResolvedUpstream],
    /// Secret with the identity the node presents upstream (generated one unless overridden).
    pub identity_secret: String,
    /// Image when the spec names none (the operator's --node-image, by default DEFAULT_IMAGE).
    pub default_image: &'a str,
}

fn secret_volume(name: &str, secret: &str, items: Option<&[&str]>) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            default_mode: Some(0o400),
            items: items.map(|keys| {
                keys.iter()
                    .map(|k| k8s_openapi::api::core::v1::KeyToPath {
                        key: k.to_string(),
                        path: k.to_string(),
                        ..Default::default()
                    })
                    .collect()
            }),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(path != paths::DATA_DIR && path != "/tmp"),
        ..VolumeMount::default()
    }
}

pub fn pod_template(node: &str, spec: &SyncNodeSpec, inputs: &PodInputs<'_>) -> PodTemplateSpec {
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map_name(node),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        secret_volume(
            "identity",
            &inputs.identity_secret,
            Some(&["signing.pem", "encryption.pem"]),
        ),
        secret_volume("auth", &identity_secret_name(node), Some(&["auth-secret"])),
        secret_volume(
            "directory",
            &spec.directory_secret,
            Some(&["directory.yaml"]),
        ),
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    let mut mounts = vec![
        mount("config", paths::CONFIG_DIR),
        mount("identity", paths::IDENTITY_DIR),
        mount("auth", paths::AUTH_DIR),
        mount("directory", paths::DIRECTORY_DIR),
        mount("tmp", "/tmp"),
        mount("data", paths::DATA_DIR),
    ];
    if !is_stateful(spec.role) {
        volumes.push(Volume {
            name: "data".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        });
    }
    if let Some(tls) = &spec.tls {
        volumes.push(secret_volume("tls", &tls.secret(node), None));
        mounts.push(mount("tls", paths::TLS_DIR));
    }
    for (i, u) in inputs.upstreams.iter().enumerate() {
        if let Some(secret) = &u.ca_secret {
            let name = format!("upstream-ca-{i}");
            volumes.push(secret_volume(&name, secret, Some(&["ca.crt"])));
            mounts.push(mount(&name, &format!("{}/{i}", paths::UPSTREAM_CA_DIR)));
        }
    }
    let scheme = if spec.tls.is_some() { "HTTPS" } else { "HTTP" };
    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("sync".into()),
            scheme: Some(scheme.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        ..Probe::default()
    };
    let container = Container {
        name: "node".into(),
        image: Some(
            spec.image
                .clone()
                .unwrap_or_else(|| inputs.default_image.into()),
        ),
        args: Some(vec![
            "serve".into(),
            "--config".into(),
            paths::CONFIG_FILE.into(),
        ]),
        env: Some(vec![EnvVar {
            name: "SYNCRELAY_INSTANCE".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }]),
        ports: Some(vec![ContainerPort {
            name: Some("sync".into()),
            container_port: NODE_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        // Ready: storage writable, upstream connected, carried stores caught up (a relay not
        // yet caught up gets no clients); alive: not wedged.
        readiness_probe: Some(probe("/ready", 5)),
        liveness_probe: Some(probe("/health", 20)),
        resources: spec.resources.clone(),
        volume_mounts: Some(mounts),
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
    let mut pod_labels = labels(node, spec.role);
    let mut annotations = BTreeMap::from([(
        CONFIG_HASH_ANNOTATION.to_string(),
        inputs.config_hash.to_string(),
    )]);
    let overrides = spec.pod_template.clone().unwrap_or_default();
    // User labels cannot replace the selector labels.
    for (k, v) in overrides.labels {
        pod_labels.entry(k).or_insert(v);
    }
    annotations.extend(overrides.annotations);
    let scheduling = spec.scheduling.clone().unwrap_or_default();
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(volumes),
            service_account_name: overrides.service_account_name,
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
            node_selector: (!scheduling.node_selector.is_empty())
                .then_some(scheduling.node_selector),
            tolerations: (!scheduling.tolerations.is_empty()).then_some(scheduling.tolerations),
            affinity: scheduling.affinity,
            topology_spread_constraints: (!scheduling.topology_spread_constraints.is_empty())
                .then_some(scheduling.topology_spread_constraints),
            priority_class_name: scheduling.priority_class_name,
            ..PodSpec::default()
        }),
    }
}

pub fn workload(
    node: &str,
    namespace: &str,
    spec: &SyncNodeSpec,
    inputs: &PodInputs<'_>,
) -> Workload {
    let metadata = ObjectMeta {
        name: Some(node.into()),
        namespace: Some(namespace.into()),
        labels: Some(labels(node, spec.role)),
        ..ObjectMeta::default()
    };
    let selector = LabelSelector {
        match_labels: Some(selector_labels(node)),
        ..LabelSelector::default()
    };
    let template = pod_template(node, spec, inputs);
    if is_stateful(spec.role) {
        let claim = PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".into()),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: spec.storage.storage_class_name.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_string(),
                        Quantity(spec.storage.size.clone()),
                    )])),
                    ..VolumeResourceRequirements::default()
                }),
                ..PersistentVolumeClaimSpec::default()
            }),
            ..PersistentVolumeClaim::default()
        };
        Workload::StatefulSet(Box::new(StatefulSet {
            metadata,
            spec: Some(StatefulSetSpec {
                replicas: Some(spec.replicas),
                selector,
                service_name: Some(peers_service_name(node)),
                template,
                volume_claim_templates: Some(vec![claim]),
                ..StatefulSetSpec::default()
            }),
            ..StatefulSet::default()
        }))
    } else {
        Workload::Deployment(Box::new(Deployment {
            metadata,
            spec: Some(DeploymentSpec {
                replicas: Some(spec.replicas),
                selector,
                template,
                ..DeploymentSpec::default()
            }),
            ..Deployment::default()
        }))
    }
}
