//! Pure checks of specs, run by the reconcilers before anything is written. The CRD schema catches
//! shapes; these catch topology (API servers before 1.25 cannot express them, and a reconciler must
//! not trust that the schema was applied).

use std::collections::{BTreeMap, BTreeSet};

use syncrelay_node::config::Role;

use crate::crd::{SyncChainSpec, SyncNodeSpec, TlsSpec, UpstreamRef};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("node name {0} is used twice")]
    DuplicateName(String),
    #[error("node {node}: upstream {upstream} is not a node of this chain")]
    UnknownUpstream { node: String, upstream: String },
    #[error("node {0} names itself as its upstream")]
    SelfUpstream(String),
    #[error("the chain has a cycle: {0}")]
    Cycle(String),
    #[error("an origin has no upstreams (node {0})")]
    OriginWithUpstream(String),
    #[error("the chain needs exactly one origin, or none and an externalOrigin; found {0}")]
    OriginCount(usize),
    #[error("the chain has both an origin node ({0}) and an externalOrigin")]
    OriginAndExternal(String),
    #[error("node {0} ({1}) needs an upstream: name one, or give the chain an externalOrigin")]
    MissingUpstream(String, &'static str),
    #[error("role peer is not available in a SyncChain (node {0}); use replicas for availability")]
    PeerInChain(String),
    #[error("upstream #{0}: give exactly one of node or url")]
    UpstreamShape(usize),
    #[error("upstream #{0}: url must start with http:// or https://")]
    UpstreamUrl(usize),
    #[error("backup: role {0} keeps no local copy to back up (origin, relay or peer only)")]
    BackupRole(&'static str),
    #[error(
        "backup: schedule {0:?} is not a cron schedule (five fields, or @hourly, @daily, ...)"
    )]
    BackupSchedule(String),
    #[error("tls: name a secretName, or an issuerRef for cert-manager to issue one")]
    TlsSource,
    #[error("tls.dnsNames: extra names are only used with an issuerRef")]
    TlsNamesWithoutIssuer,
    #[error("tls.dnsNames: {0:?} is not a DNS name (lowercase labels, optionally a leading *.)")]
    TlsDnsName(String),
    #[error("tls.issuerRef: kind {0:?} of group cert-manager.io must be Issuer or ClusterIssuer")]
    IssuerKind(String),
}

/// Whether `name` is a DNS subdomain a certificate can carry: lowercase RFC 1123 labels of at most
/// 63 characters, 253 in all, the first optionally the wildcard `*`.
pub fn dns_name(name: &str) -> bool {
    let rest = name.strip_prefix("*.").unwrap_or(name);
    name.len() <= 253
        && !rest.is_empty()
        && rest.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Checks a node's TLS settings: a Secret or an issuer to make it, extra names only for an
/// issuer, and cert-manager's own issuer kinds.
pub fn tls(tls: &TlsSpec) -> Vec<SpecError> {
    let mut errors = Vec::new();
    match &tls.issuer_ref {
        None if tls.secret_name.is_none() => errors.push(SpecError::TlsSource),
        None if !tls.dns_names.is_empty() => errors.push(SpecError::TlsNamesWithoutIssuer),
        Some(issuer)
            if issuer.group == "cert-manager.io"
                && !matches!(issuer.kind.as_str(), "Issuer" | "ClusterIssuer") =>
        {
            errors.push(SpecError::IssuerKind(issuer.kind.clone()));
        }
        _ => {}
    }
    errors.extend(
        tls.dns_names
            .iter()
            .filter(|n| !dns_name(n))
            .map(|n| SpecError::TlsDnsName(n.chars().take(260).collect())),
    );
    errors
}

/// Whether `schedule` has the shape of a cron schedule the CronJob controller takes: five fields
/// of digits and `*/,-` (or names such as `MON`, `JAN`), or one of the `@` macros.
pub fn cron_schedule(schedule: &str) -> bool {
    const MACROS: [&str; 7] = [
        "@yearly",
        "@annually",
        "@monthly",
        "@weekly",
        "@daily",
        "@midnight",
        "@hourly",
    ];
    if MACROS.contains(&schedule.trim()) {
        return true;
    }
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    fields.len() == 5
        && fields.iter().all(|f| {
            f.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '*' | '/' | ',' | '-' | '?'))
        })
}

/// Checks one upstream reference.
pub fn upstream_ref(index: usize, u: &UpstreamRef) -> Result<(), SpecError> {
    match (&u.node, &u.url) {
        (Some(_), None) => Ok(()),
        (None, Some(url)) if url.starts_with("http://") || url.starts_with("https://") => Ok(()),
        (None, Some(_)) => Err(SpecError::UpstreamUrl(index)),
        _ => Err(SpecError::UpstreamShape(index)),
    }
}

/// Checks a SyncNode on its own (references to other SyncNodes are resolved by the reconciler).
pub fn sync_node(name: &str, spec: &SyncNodeSpec) -> Result<(), Vec<SpecError>> {
    let mut errors = Vec::new();
    for (i, u) in spec.upstreams.iter().enumerate() {
        if let Err(e) = upstream_ref(i, u) {
            errors.push(e);
        }
        if u.node.as_deref() == Some(name) {
            errors.push(SpecError::SelfUpstream(name.into()));
        }
    }
    match spec.role {
        Role::Origin if !spec.upstreams.is_empty() => {
            errors.push(SpecError::OriginWithUpstream(name.into()))
        }
        Role::Relay | Role::Edge | Role::Passthrough if spec.upstreams.is_empty() => {
            errors.push(SpecError::MissingUpstream(name.into(), spec.role.as_str()))
        }
        _ => {}
    }
    if let Some(t) = &spec.tls {
        errors.extend(tls(t));
    }
    if let Some(backup) = &spec.backup {
        if !spec.role.has_local_copy() {
            errors.push(SpecError::BackupRole(spec.role.as_str()));
        }
        if !cron_schedule(&backup.schedule) {
            errors.push(SpecError::BackupSchedule(backup.schedule.clone()));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Checks a chain: names, references, one origin (or an external one), and no cycle.
pub fn sync_chain(spec: &SyncChainSpec) -> Result<(), Vec<SpecError>> {
    let mut errors = Vec::new();
    let mut names = BTreeSet::new();
    for n in &spec.nodes {
        if !names.insert(n.name.as_str()) {
            errors.push(SpecError::DuplicateName(n.name.clone()));
        }
    }
    let origins: Vec<&str> = spec
        .nodes
        .iter()
        .filter(|n| n.role == Role::Origin)
        .map(|n| n.name.as_str())
        .collect();
    match (origins.as_slice(), &spec.external_origin) {
        ([_], None) | ([], Some(_)) => {}
        ([one], Some(_)) => errors.push(SpecError::OriginAndExternal(one.to_string())),
        (list, _) => errors.push(SpecError::OriginCount(list.len())),
    }
    if let Some(external) = &spec.external_origin {
        if let Err(e) = upstream_ref(0, external) {
            errors.push(e);
        }
    }
    for n in &spec.nodes {
        if n.role == Role::Peer {
            errors.push(SpecError::PeerInChain(n.name.clone()));
        }
        if let Some(t) = &n.tls {
            errors.extend(tls(t));
        }
        if n.role == Role::Origin && !n.upstreams.is_empty() {
            errors.push(SpecError::OriginWithUpstream(n.name.clone()));
        }
        if n.role != Role::Origin && n.upstreams.is_empty() && spec.external_origin.is_none() {
            errors.push(SpecError::MissingUpstream(n.name.clone(), n.role.as_str()));
        }
        for u in &n.upstreams {
            if u == &n.name {
                errors.push(SpecError::SelfUpstream(n.name.clone()));
            } else if !names.contains(u.as_str()) {
                errors.push(SpecError::UnknownUpstream {
                    node: n.name.clone(),
                    upstream: u.clone(),
                });
            }
        }
    }
    if let Some(cycle) = find_cycle(spec) {
        errors.push(SpecError::Cycle(cycle.join(" → ")));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// A cycle in the upstream graph, as the list of node names around it (first repeated at the end).
pub fn find_cycle(spec: &SyncChainSpec) -> Option<Vec<String>> {
    let edges: BTreeMap<&str, Vec<&str>> = spec
        .nodes
        .iter()
        .map(|n| {
            let ups = n
                .upstreams
                .iter()
                .map(String::as_str)
                .filter(|u| *u != n.name)
                .collect();
            (n.name.as_str(), ups)
        })
        .collect();
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit<'a>(
        node: &'a str,
        edges: &BTreeMap<&'a str, Vec<&'a str>>,
        marks: &mut BTreeMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Visiting) => {
                let start = path.iter().position(|n| *n == node).unwrap_or(0);
                let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node, Mark::Visiting);
        path.push(node);
        for up in edges.get(node).into_iter().flatten() {
            if edges.contains_key(up) {
                if let Some(c) = visit(up, edges, marks, path) {
                    return Some(c);
                }
            }
        }
        path.pop();
        marks.insert(node, Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in edges.keys() {
        let mut path = Vec::new();
        if let Some(c) = visit(node, &edges, &mut marks, &mut path) {
            return Some(c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ChainNode;

    #[test]
    fn backups_need_a_local_copy_and_a_cron_schedule() {
        let spec = |role: &str, schedule: &str| -> SyncNodeSpec {
            serde_json::from_value(serde_json::json!({
                "role": role, "directorySecret": "d",
                "upstreams": if role == "origin" { serde_json::json!([]) } else { serde_json::json!([{"node": "o"}]) },
                "backup": {"schedule": schedule},
            }))
            .unwrap()
        };
        assert_eq!(
            spec("origin", "0 3 * * *").backup.unwrap().keep,
            7,
            "default keep"
        );
        assert!(sync_node("n", &spec("origin", "0 3 * * *")).is_ok());
        assert!(sync_node("n", &spec("relay", "*/15 * * * MON-FRI")).is_ok());
        assert!(sync_node("n", &spec("origin", "@daily")).is_ok());
        assert_eq!(
            sync_node("n", &spec("edge", "0 3 * * *")),
            Err(vec![SpecError::BackupRole("edge")])
        );
        for bad in ["", "0 3 * *", "0 3 * * * *", "0 3 * * $(rm)", "@sometimes"] {
            assert_eq!(
                sync_node("n", &spec("origin", bad)),
                Err(vec![SpecError::BackupSchedule(bad.into())]),
                "{bad:?}"
            );
        }
    }

    fn node(name: &str, role: Role, ups: &[&str]) -> ChainNode {
        ChainNode {
            name: name.into(),
            role,
            upstreams: ups.iter().map(|s| s.to_string()).collect(),
            replicas: 1,
            storage: None,
            cache_max_bytes: None,
            service: None,
            resources: None,
            scheduling: None,
            tls: None,
            backup: None,
        }
    }

    fn chain(nodes: Vec<ChainNode>, external: bool) -> SyncChainSpec {
        SyncChainSpec {
            nodes,
            external_origin: external.then(|| UpstreamRef {
                url: Some("https://central.example:1661".into()),
                ..UpstreamRef::default()
            }),
            directory_secret: "dir".into(),
            image: None,
            databases: vec![],
            paused: false,
        }
    }

    #[test]
    fn a_three_hop_chain_and_a_dag_are_valid() {
        let three = chain(
            vec![
                node("origin", Role::Origin, &[]),
                node("eu", Role::Relay, &["origin"]),
                node("office", Role::Edge, &["eu"]),
            ],
            false,
        );
        assert_eq!(sync_chain(&three), Ok(()));
        let dag = chain(
            vec![
                node("origin", Role::Origin, &[]),
                node("a", Role::Relay, &["origin"]),
                node("b", Role::Relay, &["origin"]),
                node("edge", Role::Edge, &["a", "b"]),
            ],
            false,
        );
        assert_eq!(sync_chain(&dag), Ok(()));
        let regional = chain(
            vec![
                node("relay", Role::Relay, &[]),
                node("edge", Role::Edge, &["relay"]),
            ],
            true,
        );
        assert_eq!(sync_chain(&regional), Ok(()));
    }

    #[test]
    fn cycles_are_found_and_named() {
        let spec = chain(
            vec![
                node("origin", Role::Origin, &[]),
                node("a", Role::Relay, &["c"]),
                node("b", Role::Relay, &["a"]),
                node("c", Role::Relay, &["b"]),
            ],
            false,
        );
        let errors = sync_chain(&spec).unwrap_err();
        let cycle = errors
            .iter()
            .find_map(|e| match e {
                SpecError::Cycle(c) => Some(c.clone()),
                _ => None,
            })
            .expect("a cycle error");
        assert_eq!(cycle, "a → c → b → a");
    }

    #[test]
    fn invalid_chains_say_why() {
        let cases: Vec<(SyncChainSpec, SpecError)> = vec![
            (
                chain(
                    vec![
                        node("o", Role::Origin, &["x"]),
                        node("x", Role::Relay, &["o"]),
                    ],
                    false,
                ),
                SpecError::OriginWithUpstream("o".into()),
            ),
            (
                chain(
                    vec![
                        node("o", Role::Origin, &[]),
                        node("r", Role::Relay, &["nope"]),
                    ],
                    false,
                ),
                SpecError::UnknownUpstream {
                    node: "r".into(),
                    upstream: "nope".into(),
                },
            ),
            (
                chain(vec![node("r", Role::Relay, &["r"])], true),
                SpecError::SelfUpstream("r".into()),
            ),
            (
                chain(
                    vec![node("a", Role::Origin, &[]), node("b", Role::Origin, &[])],
                    false,
                ),
                SpecError::OriginCount(2),
            ),
            (
                chain(vec![node("o", Role::Origin, &[])], true),
                SpecError::OriginAndExternal("o".into()),
            ),
            (
                chain(
                    vec![node("o", Role::Origin, &[]), node("e", Role::Edge, &[])],
                    false,
                ),
                SpecError::MissingUpstream("e".into(), "edge"),
            ),
            (
                chain(
                    vec![node("o", Role::Origin, &[]), node("o", Role::Relay, &["o"])],
                    false,
                ),
                SpecError::DuplicateName("o".into()),
            ),
        ];
        for (spec, expected) in cases {
            let errors = sync_chain(&spec).unwrap_err();
            assert!(errors.contains(&expected), "{expected:?} not in {errors:?}");
        }
    }

    #[test]
    fn tls_needs_a_secret_or_an_issuer_and_sane_names() {
        let spec = |tls: serde_json::Value| -> SyncNodeSpec {
            serde_json::from_value(serde_json::json!({
                "role": "origin", "directorySecret": "d", "tls": tls
            }))
            .unwrap()
        };
        assert!(sync_node("n", &spec(serde_json::json!({"secretName": "s"}))).is_ok());
        assert!(sync_node("n", &spec(serde_json::json!({"issuerRef": {"name": "ca"}}))).is_ok());
        let external = serde_json::json!({"issuerRef": {"name": "pca", "kind": "AWSPCAClusterIssuer",
            "group": "awspca.cert-manager.io"}, "dnsNames": ["*.sync.example.com", "a-1.example"]});
        assert!(sync_node("n", &spec(external)).is_ok());
        assert_eq!(
            sync_node("n", &spec(serde_json::json!({}))),
            Err(vec![SpecError::TlsSource])
        );
        assert_eq!(
            sync_node(
                "n",
                &spec(serde_json::json!({"secretName": "s", "dnsNames": ["a.example"]}))
            ),
            Err(vec![SpecError::TlsNamesWithoutIssuer])
        );
        assert_eq!(
            sync_node(
                "n",
                &spec(serde_json::json!({"issuerRef": {"name": "ca", "kind": "Issuers"}}))
            ),
            Err(vec![SpecError::IssuerKind("Issuers".into())])
        );
        let long = format!("{}.example", "a".repeat(64));
        for bad in [
            "",
            "UPPER.example",
            "a..b",
            "-a.example",
            "a.*.example",
            "*.",
            long.as_str(),
        ] {
            let tls = serde_json::json!({"issuerRef": {"name": "ca"}, "dnsNames": [bad]});
            assert_eq!(
                sync_node("n", &spec(tls)),
                Err(vec![SpecError::TlsDnsName(bad.to_string())]),
                "{bad:?}"
            );
        }
        // A chain node is checked the same way.
        let mut c = chain(vec![node("o", Role::Origin, &[])], false);
        c.nodes[0].tls = Some(TlsSpec::default());
        assert_eq!(sync_chain(&c), Err(vec![SpecError::TlsSource]));
    }

    #[test]
    fn upstream_references_need_one_target() {
        assert!(upstream_ref(0, &UpstreamRef::default()).is_err());
        let both = UpstreamRef {
            node: Some("a".into()),
            url: Some("http://x".into()),
            ..Default::default()
        };
        assert_eq!(upstream_ref(0, &both), Err(SpecError::UpstreamShape(0)));
        let ftp = UpstreamRef {
            url: Some("ftp://x".into()),
            ..Default::default()
        };
        assert_eq!(upstream_ref(1, &ftp), Err(SpecError::UpstreamUrl(1)));
    }
}
