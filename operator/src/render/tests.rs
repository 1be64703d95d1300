//! Unit tests of the builders: what each role renders to, the peer wiring of replicas, and the
//! config hash that rolls pods.

use syncrelay_node::config::{NodeConfig, Role};

use super::config::{config_hash, config_yaml, node_config, service_url, ResolvedUpstream};
use super::service::{client_service, peers_service};
use super::workload::{workload, PodInputs, Workload};
use crate::crd::{SyncNodeSpec, TlsSpec};

fn spec(role: Role, replicas: i32) -> SyncNodeSpec {
    serde_json::from_value(serde_json::json!({
        "role": role.as_str(), "replicas": replicas, "directorySecret": "acme-directory"
    }))
    .unwrap()
}

fn upstream() -> Vec<ResolvedUpstream> {
    vec![ResolvedUpstream {
        name: "origin".into(),
        url: service_url("origin", "sync", false),
        ca_secret: None,
    }]
}

fn render(name: &str, spec: &SyncNodeSpec, ups: &[ResolvedUpstream]) -> (NodeConfig, Workload) {
    let config = node_config(name, "sync", spec, ups);
    let hash = config_hash(&config_yaml(&config));
    let inputs = PodInputs {
        config_hash: &hash,
        upstreams: ups,
        identity_secret: super::identity_secret_name(name),
        default_image: super::workload::DEFAULT_IMAGE,
    };
    (config.clone(), workload(name, "sync", spec, &inputs))
}

#[test]
fn every_role_renders_a_config_the_node_accepts_and_the_right_workload() {
    for role in [Role::Origin, Role::Relay, Role::Edge, Role::Passthrough] {
        let ups = if role == Role::Origin {
            vec![]
        } else {
            upstream()
        };
        let (config, workload) = render("n", &spec(role, 1), &ups);
        // The node parses and validates exactly what the operator renders.
        let parsed =
            NodeConfig::from_yaml(&config_yaml(&config), std::path::Path::new("x")).unwrap();
        assert_eq!(parsed, config);
        assert_eq!(config.role, role);
        assert_eq!(config.listen.to_string(), "0.0.0.0:1661");
        match (role.has_local_copy(), workload) {
            (true, Workload::StatefulSet(s)) => {
                let claims = s.spec.unwrap().volume_claim_templates.unwrap();
                assert_eq!(claims[0].metadata.name.as_deref(), Some("data"));
            }
            (false, Workload::Deployment(_)) => {}
            (stateful, _) => panic!("{role:?}: wrong workload kind (stateful={stateful})"),
        }
    }
}

#[test]
fn relay_config_points_at_its_upstream_and_does_not_witness() {
    let (config, _) = render("eu", &spec(Role::Relay, 1), &upstream());
    assert_eq!(
        config.upstreams[0].url,
        "http://origin.sync.svc.cluster.local:1661"
    );
    assert_eq!(config.name, "CN=eu.sync");
    assert!(!config.stamps_witness());
    assert!(config.peers.is_empty());
    let (origin, _) = render("origin", &spec(Role::Origin, 1), &[]);
    assert!(origin.stamps_witness());
}

#[test]
fn replicas_are_wired_as_peers_with_session_affinity() {
    let s = spec(Role::Origin, 3);
    let (config, workload) = render("origin", &s, &[]);
    let urls: Vec<&str> = config.peers.iter().map(|p| p.url.as_str()).collect();
    assert_eq!(
        urls,
        vec![
            "http://origin-0.origin-peers.sync.svc.cluster.local:1661",
            "http://origin-1.origin-peers.sync.svc.cluster.local:1661",
            "http://origin-2.origin-peers.sync.svc.cluster.local:1661",
        ]
    );
    let Workload::StatefulSet(sts) = workload else {
        panic!("origin is a StatefulSet")
    };
    assert_eq!(
        sts.spec.as_ref().unwrap().service_name.as_deref(),
        Some("origin-peers")
    );
    let svc = client_service("origin", "sync", &s);
    assert_eq!(
        svc.spec.unwrap().session_affinity.as_deref(),
        Some("ClientIP")
    );
    let headless = peers_service("origin", "sync", &s).unwrap();
    assert_eq!(headless.spec.unwrap().cluster_ip.as_deref(), Some("None"));
    // One replica: no peers, no headless Service, no affinity needed.
    let single = spec(Role::Origin, 1);
    assert!(peers_service("origin", "sync", &single).is_none());
    assert!(client_service("origin", "sync", &single)
        .spec
        .unwrap()
        .session_affinity
        .is_none());
}

#[test]
fn config_changes_change_the_pod_template_hash_and_nothing_else_does() {
    let base = spec(Role::Relay, 1);
    let pod_hash = |s: &SyncNodeSpec| {
        let (_, w) = render("eu", s, &upstream());
        let Workload::StatefulSet(sts) = w else {
            panic!()
        };
        sts.spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap()[super::CONFIG_HASH_ANNOTATION]
            .clone()
    };
    let mut tuned = base.clone();
    tuned.sync = Some(syncrelay_node::config::SyncConfig {
        interval_ms: 1000,
        ..Default::default()
    });
    assert_ne!(pod_hash(&base), pod_hash(&tuned));
    let mut more_replicas_elsewhere = base.clone();
    more_replicas_elsewhere.storage.size = "50Gi".into();
    assert_eq!(pod_hash(&base), pod_hash(&more_replicas_elsewhere));
}

#[test]
fn pods_are_locked_down_and_mount_what_the_config_names() {
    let mut s = spec(Role::Edge, 2);
    s.tls = Some(TlsSpec {
        secret_name: Some("edge-tls".into()),
        ..TlsSpec::default()
    });
    let (config, w) = render("edge", &s, &upstream());
    let Workload::Deployment(d) = w else {
        panic!("edge is a Deployment")
    };
    let pod = d.spec.unwrap().template.spec.unwrap();
    let c = &pod.containers[0];
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_ref().unwrap(),
        &vec!["ALL".to_string()]
    );
    assert_eq!(
        pod.security_context.unwrap().seccomp_profile.unwrap().type_,
        "RuntimeDefault"
    );
    let mounts: Vec<&str> = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| m.mount_path.as_str())
        .collect();
    for file in [
        config.directory_file.unwrap(),
        config.identity.signing_key_file.unwrap(),
        config.auth.secret_file.unwrap(),
        config.tls.unwrap().cert_file,
    ] {
        let dir = file.parent().unwrap().to_str().unwrap().to_string();
        assert!(
            mounts.contains(&dir.as_str()),
            "{dir} not mounted: {mounts:?}"
        );
    }
    let probe = c
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(probe.scheme.as_deref(), Some("HTTPS"));
    assert_eq!(probe.path.as_deref(), Some("/ready"));
}

#[test]
fn storage_kind_names_the_engine_of_new_volumes() {
    use syncrelay_node::config::{StorageConfig, StorageKind};
    let (config, _) = render("o", &spec(Role::Origin, 1), &[]);
    assert_eq!(config.storage.kind, StorageConfig::default().kind);
    let with_kind = |kind: &str| {
        serde_json::from_value::<SyncNodeSpec>(serde_json::json!({
            "role": "origin", "replicas": 1, "directorySecret": "d",
            "storage": {"size": "5Gi", "kind": kind}
        }))
    };
    for (kind, expected) in [("fjall", StorageKind::Fjall), ("sled", StorageKind::Sled)] {
        let (config, workload) = render("o", &with_kind(kind).unwrap(), &[]);
        assert_eq!(config.storage.kind, expected);
        assert!(config_yaml(&config).contains(&format!("kind: {kind}")));
        let Workload::StatefulSet(s) = workload else {
            panic!("an origin is a StatefulSet")
        };
        let claims = s.spec.unwrap().volume_claim_templates.unwrap();
        let size = &claims[0]
            .spec
            .as_ref()
            .unwrap()
            .resources
            .as_ref()
            .unwrap()
            .requests;
        assert_eq!(size.as_ref().unwrap()["storage"].0, "5Gi");
    }
    // Memory is no engine for a volume, and unknown engines are refused.
    assert!(with_kind("memory").is_err());
    assert!(with_kind("rocksdb").is_err());
}
