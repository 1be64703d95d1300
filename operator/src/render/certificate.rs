//! The cert-manager `Certificate` of a node set whose `spec.tls` names an `issuerRef` (JSON: the
//! type is not part of k8s-openapi). cert-manager writes the node's TLS Secret from it and renews
//! it before it expires; the node reloads renewed files without a restart.
//!
//! Contract: `dnsNames` hold every name a client or the next hop reaches the node by — the client
//! Service's short, namespaced, `.svc` and fully qualified names, each replica's name through the
//! headless Service when the replicas sync as peers (they verify each other by that name), then the
//! user's extra names — without duplicates, in that order. The private key is rotated on every
//! renewal; the certificate is for server authentication only (nodes authenticate to each other
//! with their signed identities, not with client certificates).

use serde_json::json;

use super::{has_peers, labels, peer_host, CLUSTER_DOMAIN};
use crate::crd::SyncNodeSpec;

pub const API_VERSION: &str = "cert-manager.io/v1";
pub const KIND: &str = "Certificate";
pub const PLURAL: &str = "certificates";
/// Lifetime of an issued certificate (cert-manager's default, stated so that it is visible).
pub const DURATION: &str = "2160h";
/// Renewal starts this long before expiry: a third of the lifetime, leaving a month to notice
/// and fix a failing issuer.
pub const RENEW_BEFORE: &str = "720h";

/// Name of the Certificate of a node set.
pub fn certificate_name(node: &str) -> String {
    node.to_string()
}

/// The DNS names the node is reached by (see the module contract).
pub fn dns_names(node: &str, namespace: &str, spec: &SyncNodeSpec) -> Vec<String> {
    let mut names = vec![
        node.to_string(),
        format!("{node}.{namespace}"),
        format!("{node}.{namespace}.svc"),
        format!("{node}.{namespace}.svc.{CLUSTER_DOMAIN}"),
    ];
    if has_peers(spec) {
        names.extend((0..spec.replicas).map(|i| peer_host(node, i, namespace)));
    }
    if let Some(tls) = &spec.tls {
        names.extend(tls.dns_names.iter().cloned());
    }
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

/// The Certificate, or None when the node does not ask cert-manager for one.
pub fn certificate(node: &str, namespace: &str, spec: &SyncNodeSpec) -> Option<serde_json::Value> {
    let tls = spec.tls.as_ref()?;
    let issuer = tls.issuer_ref.as_ref()?;
    Some(json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": certificate_name(node),
            "namespace": namespace,
            "labels": labels(node, spec.role),
        },
        "spec": {
            "secretName": tls.secret(node),
            "dnsNames": dns_names(node, namespace, spec),
            "duration": DURATION,
            "renewBefore": RENEW_BEFORE,
            // ECDSA P-256 in PKCS#8: small, fast handshakes, and read by the node's rustls.
            "privateKey": {"algorithm": "ECDSA", "size": 256, "encoding": "PKCS8", "rotationPolicy": "Always"},
            "usages": ["server auth", "digital signature"],
            "issuerRef": {"name": issuer.name, "kind": issuer.kind, "group": issuer.group},
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(role: &str, replicas: i32, tls: serde_json::Value) -> SyncNodeSpec {
        serde_json::from_value(json!({
            "role": role, "replicas": replicas, "directorySecret": "d",
            "upstreams": if role == "origin" { json!([]) } else { json!([{"node": "o"}]) },
            "tls": tls
        }))
        .unwrap()
    }

    #[test]
    fn no_certificate_without_an_issuer() {
        assert!(certificate("e", "ns", &spec("edge", 1, json!(null))).is_none());
        let own_secret = spec("edge", 1, json!({"secretName": "mine"}));
        assert!(certificate("e", "ns", &own_secret).is_none());
    }

    #[test]
    fn a_single_replica_gets_its_service_names() {
        let s = spec("relay", 1, json!({"issuerRef": {"name": "ca"}}));
        let c = certificate("eu", "sync", &s).unwrap();
        assert_eq!(c["apiVersion"], "cert-manager.io/v1");
        assert_eq!(c["kind"], "Certificate");
        assert_eq!(c["metadata"]["name"], "eu");
        assert_eq!(c["metadata"]["namespace"], "sync");
        assert_eq!(c["metadata"]["labels"]["syncrelay.io/node"], "eu");
        assert_eq!(c["spec"]["secretName"], "eu-tls");
        assert_eq!(
            c["spec"]["dnsNames"],
            json!(["eu", "eu.sync", "eu.sync.svc", "eu.sync.svc.cluster.local"])
        );
        assert_eq!(
            c["spec"]["issuerRef"],
            json!({"name": "ca", "kind": "Issuer", "group": "cert-manager.io"})
        );
        assert_eq!(c["spec"]["privateKey"]["rotationPolicy"], "Always");
        assert_eq!(
            c["spec"]["usages"],
            json!(["server auth", "digital signature"])
        );
        assert_eq!(c["spec"]["duration"], "2160h");
        assert_eq!(c["spec"]["renewBefore"], "720h");
    }

    #[test]
    fn peers_names_match_the_urls_the_replicas_dial() {
        let s = spec(
            "origin",
            3,
            json!({"issuerRef": {"name": "corp", "kind": "ClusterIssuer"}, "secretName": "o-cert"}),
        );
        let names = dns_names("o", "ns", &s);
        assert_eq!(names.len(), 4 + 3);
        assert_eq!(names[4], "o-0.o-peers.ns.svc.cluster.local");
        assert_eq!(names[6], "o-2.o-peers.ns.svc.cluster.local");
        // Every peer URL of the rendered node config names a host of the certificate.
        let config = super::super::config::node_config("o", "ns", &s, &[]);
        assert_eq!(config.peers.len(), 3);
        for peer in &config.peers {
            let host = peer
                .url
                .strip_prefix("https://")
                .and_then(|u| u.split(':').next())
                .unwrap();
            assert!(names.iter().any(|n| n == host), "{host} not in {names:?}");
        }
        let c = certificate("o", "ns", &s).unwrap();
        assert_eq!(c["spec"]["secretName"], "o-cert");
        assert_eq!(c["spec"]["issuerRef"]["kind"], "ClusterIssuer");
    }

    #[test]
    fn the_client_service_url_is_covered() {
        let s = spec("edge", 2, json!({"issuerRef": {"name": "ca"}}));
        // Edges have no peers: replicas share nothing, so no per-pod names.
        let names = dns_names("e", "ns", &s);
        assert_eq!(names.len(), 4);
        let url = super::super::config::service_url("e", "ns", true);
        let host = url
            .strip_prefix("https://")
            .and_then(|u| u.split(':').next())
            .unwrap();
        assert!(names.iter().any(|n| n == host));
    }

    #[test]
    fn extra_names_are_appended_once() {
        let s = spec(
            "origin",
            1,
            json!({"issuerRef": {"name": "le", "kind": "ClusterIssuer"},
                   "dnsNames": ["origin.sync.example.com", "o.ns", "origin.sync.example.com"]}),
        );
        assert_eq!(
            dns_names("o", "ns", &s),
            [
                "o",
                "o.ns",
                "o.ns.svc",
                "o.ns.svc.cluster.local",
                "origin.sync.example.com"
            ]
        );
    }
}
