//! The cert-manager Certificate of a SyncNode, applied only where cert-manager's
//! `cert-manager.io/v1` API is served.
//!
//! Contract: a node whose `tls.issuerRef` is set gets its Certificate (owned by the SyncNode, so
//! garbage-collected with it); one without it has a Certificate of ours removed (a Certificate of
//! the same name that the SyncNode does not own is left alone). Where the API is not served the
//! node does not silently run without TLS: the reconciler reports `Ready=False` with reason
//! `CertManagerMissing` and a Warning Event once, and the pods wait for their Secret. Discovery
//! is asked again on each reconcile of such a node, so installing cert-manager later is picked up
//! without restarting the operator (from then on for every node).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
};
use kube::{Client, Resource, ResourceExt};

use super::conditions::READY;
use super::{owned, Context, Error};
use crate::crd::SyncNode;
use crate::render::certificate::{self as cert, API_VERSION, KIND, PLURAL};
use crate::render::FIELD_MANAGER;

/// Reason of `Ready=False` while cert-manager's API is missing.
pub const CERT_MANAGER_MISSING: &str = "CertManagerMissing";

/// What became of a node's Certificate in this reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The node asks for none.
    NotWanted,
    /// Applied (or already as wanted).
    Applied,
    /// Wanted, but this cluster does not serve cert-manager.io/v1 Certificates.
    ApiMissing,
}

impl Outcome {
    /// `Ready=False` reason and message replacing the node's own readiness, if any.
    pub fn not_ready(&self, node: &str, secret: &str) -> Option<(&'static str, String)> {
        (self == &Outcome::ApiMissing).then(|| {
            (
                CERT_MANAGER_MISSING,
                format!(
                    "spec.tls.issuerRef asks cert-manager for a certificate, but this cluster does not \
                     serve {API_VERSION} {KIND}: install cert-manager, or create Secret {secret} \
                     yourself and set spec.tls.secretName; {node}'s pods wait for that Secret"
                ),
            )
        })
    }
}

/// Whether an Event should announce that `Ready` turned to `CertManagerMissing` (once: not when
/// the previous status already said so).
pub fn announce(old: &[Condition], outcome: &Outcome) -> bool {
    outcome == &Outcome::ApiMissing
        && !old
            .iter()
            .any(|c| c.type_ == READY && c.reason == CERT_MANAGER_MISSING)
}

fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cert-manager.io", "v1", KIND),
        PLURAL,
    )
}

/// Whether the cluster serves cert-manager.io/v1 Certificates (discovery).
pub async fn served(client: &Client) -> bool {
    client
        .list_api_group_resources(API_VERSION)
        .await
        .map(|l| l.resources.iter().any(|r| r.kind == KIND))
        .unwrap_or(false)
}

/// Whether `object` is controlled by `sn`.
fn owned_by(object: &DynamicObject, sn: &SyncNode) -> bool {
    let uid = sn.meta().uid.as_deref();
    object
        .owner_references()
        .iter()
        .any(|r| r.controller == Some(true) && Some(r.uid.as_str()) == uid)
}

/// Applies, keeps or removes the node's Certificate.
pub async fn reconcile(
    ctx: &Context,
    sn: &SyncNode,
    name: &str,
    namespace: &str,
) -> Result<Outcome, Error> {
    use std::sync::atomic::Ordering::Relaxed;
    let wanted = cert::certificate(name, namespace, &sn.spec);
    // Discovery again only for a node that wants a Certificate; once found, every node (also one
    // that dropped its issuer and must lose its Certificate) knows.
    let is_served = ctx.served.certificate
        || ctx.certificates_found.load(Relaxed)
        || (wanted.is_some() && served(&ctx.client).await);
    if is_served {
        ctx.certificates_found.store(true, Relaxed);
    }
    if !is_served {
        return Ok(match wanted {
            Some(_) => Outcome::ApiMissing,
            None => Outcome::NotWanted,
        });
    }
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), namespace, &resource());
    let cert_name = cert::certificate_name(name);
    let existing = api.get_opt(&cert_name).await?;
    let Some(json) = wanted else {
        if let Some(e) = existing.filter(|e| owned_by(e, sn)) {
            api.delete(&e.name_any(), &DeleteParams::default()).await?;
        }
        return Ok(Outcome::NotWanted);
    };
    let mut object: DynamicObject =
        serde_json::from_value(json).map_err(|e| Error::Serialize(e.to_string()))?;
    owned(&mut object.metadata, sn);
    // Steady state: no write when the live object already carries what we would apply.
    let current = existing.as_ref().is_some_and(|e| {
        e.data.get("spec") == object.data.get("spec")
            && e.metadata.labels == object.metadata.labels
            && owned_by(e, sn)
    });
    if !current {
        api.patch(
            &cert_name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await?;
    }
    Ok(Outcome::Applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(reason: &str) -> Condition {
        Condition {
            type_: READY.into(),
            status: "False".into(),
            reason: reason.into(),
            message: "-".into(),
            observed_generation: None,
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ),
        }
    }

    #[test]
    fn a_missing_api_is_announced_once_and_says_what_to_do() {
        assert!(announce(&[], &Outcome::ApiMissing));
        assert!(announce(&[ready("NoStatus")], &Outcome::ApiMissing));
        assert!(!announce(
            &[ready(CERT_MANAGER_MISSING)],
            &Outcome::ApiMissing
        ));
        assert!(!announce(&[], &Outcome::Applied));
        let (reason, message) = Outcome::ApiMissing.not_ready("o", "o-tls").unwrap();
        assert_eq!(reason, CERT_MANAGER_MISSING);
        assert!(
            message.contains("cert-manager.io/v1 Certificate"),
            "{message}"
        );
        assert!(message.contains("o-tls"), "{message}");
        assert_eq!(Outcome::Applied.not_ready("o", "o-tls"), None);
        assert_eq!(Outcome::NotWanted.not_ready("o", "o-tls"), None);
    }
}
