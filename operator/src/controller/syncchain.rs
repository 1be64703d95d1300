//! The SyncChain reconciler: validate → the chain's directory Secret (the user's directory plus every
//! node's identity as a trusted server) → one owned SyncNode per declared node (server-side apply) →
//! removal of SyncNodes no longer declared → status from the SyncNodes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta};
use kube::runtime::controller::Action;
use kube::ResourceExt;
use syncrelay_node::crypto::keys::Identity;
use syncrelay_node::directory::DirectoryFile;

use super::conditions::{self, Want};
use super::syncnode::apply;
use super::{owned, write_status, Context, Error};
use crate::crd::{ChainNodeStatus, SyncChain, SyncChainStatus, SyncNode};
use crate::render;
use crate::render::chain::{self, NodeKeys, CHAIN_LABEL};
use crate::validate;

/// The public keys of the identity a node authenticates with: the Secret its upstream names
/// (`identitySecret` of an external origin: private keys only, the public halves derived) or
/// else the identity its SyncNode reconciler generated, once created.
async fn node_keys(secrets: &Api<Secret>, node: &SyncNode) -> Result<Option<NodeKeys>, Error> {
    let name = node.name_any();
    let own = node
        .spec
        .upstreams
        .iter()
        .find_map(|u| u.identity_secret.clone());
    let secret_name = own
        .clone()
        .unwrap_or_else(|| render::identity_secret_name(&name));
    let Some(secret) = secrets.get_opt(&secret_name).await? else {
        return Ok(None);
    };
    let data = secret.data.unwrap_or_default();
    let text = |k: &str| {
        data.get(k)
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
    };
    let keys = |signing_public_key, encryption_public_key| NodeKeys {
        node: name.clone(),
        signing_public_key,
        encryption_public_key,
    };
    if own.is_some() {
        return Ok(match (text("signing.pem"), text("encryption.pem")) {
            (Some(s), Some(e)) => match Identity::from_pkcs8_pem(&s, &e) {
                Ok(id) => Some(keys(id.signing_public_pem, id.encryption_public_pem)),
                Err(e) => {
                    tracing::warn!(node = %name, secret = %secret_name, error = %e, "identity Secret unreadable");
                    None
                }
            },
            _ => None,
        });
    }
    Ok(
        match (text("signing.pub.pem"), text("encryption.pub.pem")) {
            (Some(s), Some(e)) => Some(keys(s, e)),
            _ => None,
        },
    )
}

pub async fn reconcile(chain: Arc<SyncChain>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.is_leader() {
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    let name = chain.name_any();
    let namespace = chain.namespace().unwrap_or_else(|| "default".into());
    let client = ctx.client.clone();
    let chains: Api<SyncChain> = Api::namespaced(client.clone(), &namespace);
    let nodes_api: Api<SyncNode> = Api::namespaced(client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    if chain.spec.paused {
        return Ok(Action::await_change());
    }
    let old = chain.status.clone().unwrap_or_default();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    if let Err(errors) = validate::sync_chain(&chain.spec) {
        let message = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        let reason = "InvalidTopology";
        let changed = conditions::message(&old.conditions, conditions::DEGRADED) != Some(&message);
        let conditions = conditions::merge(
            &old.conditions,
            conditions::failing(
                &[
                    conditions::READY,
                    conditions::PROGRESSING,
                    conditions::DEGRADED,
                ],
                reason,
                &message,
            ),
            chain.metadata.generation,
            &now,
        );
        write_status(
            &chains,
            chain.as_ref(),
            chain.status.as_ref(),
            SyncChainStatus {
                observed_generation: chain.metadata.generation,
                conditions,
                ..old
            },
        )
        .await?;
        if changed {
            ctx.event(chain.as_ref(), true, reason, message).await;
        }
        return Ok(Action::await_change());
    }

    // The chain's directory: the user's, plus every node identity that exists so far.
    let desired = chain::sync_nodes(&name, &namespace, &chain.spec);
    let user_dir: DirectoryFile = match secrets.get_opt(&chain.spec.directory_secret).await? {
        Some(s) => {
            let text = s
                .data
                .unwrap_or_default()
                .get("directory.yaml")
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                .unwrap_or_default();
            serde_yaml::from_str(&text).map_err(|e| {
                Error::Invalid(format!(
                    "Secret {} key directory.yaml: {e}",
                    chain.spec.directory_secret
                ))
            })?
        }
        None => {
            let message = format!(
                "directory Secret {} does not exist",
                chain.spec.directory_secret
            );
            let conditions = conditions::merge(
                &old.conditions,
                conditions::failing(
                    &[conditions::READY, conditions::DEGRADED],
                    "MissingDirectory",
                    &message,
                ),
                chain.metadata.generation,
                &now,
            );
            write_status(
                &chains,
                chain.as_ref(),
                chain.status.as_ref(),
                SyncChainStatus {
                    observed_generation: chain.metadata.generation,
                    conditions,
                    ..old
                },
            )
            .await?;
            return Ok(Action::requeue(Duration::from_secs(10)));
        }
    };
    let mut keys = Vec::new();
    for node in &desired {
        if let Some(k) = node_keys(&secrets, node).await? {
            keys.push(k);
        }
    }
    let directory = chain::chain_directory(&user_dir, &namespace, &keys);
    let mut dir_meta = ObjectMeta {
        name: Some(chain::directory_secret_name(&name)),
        namespace: Some(namespace.clone()),
        labels: Some(BTreeMap::from([(CHAIN_LABEL.to_string(), name.clone())])),
        ..ObjectMeta::default()
    };
    owned(&mut dir_meta, chain.as_ref());
    let dir_secret = Secret {
        metadata: dir_meta,
        data: Some(BTreeMap::from([(
            "directory.yaml".to_string(),
            ByteString(
                serde_yaml::to_string(&directory)
                    .map_err(|e| Error::Serialize(e.to_string()))?
                    .into_bytes(),
            ),
        )])),
        ..Secret::default()
    };
    apply(
        &ctx,
        &secrets,
        &chain::directory_secret_name(&name),
        &dir_secret,
    )
    .await?;

    // The SyncNodes, then removal of those no longer declared.
    let wanted: BTreeSet<String> = desired.iter().map(|n| n.name_any()).collect();
    for mut node in desired {
        owned(&mut node.metadata, chain.as_ref());
        apply(&ctx, &nodes_api, &node.name_any(), &node).await?;
    }
    let existing = nodes_api
        .list(&ListParams::default().labels(&format!("{CHAIN_LABEL}={name}")))
        .await?;
    for node in existing.items {
        if !wanted.contains(&node.name_any()) {
            nodes_api
                .delete(&node.name_any(), &DeleteParams::default())
                .await?;
        }
    }

    // Status from the SyncNodes.
    let mut node_status = Vec::new();
    for n in &chain.spec.nodes {
        let sn = nodes_api.get_opt(&chain::node_name(&name, &n.name)).await?;
        let st = sn.and_then(|s| s.status).unwrap_or_default();
        node_status.push(ChainNodeStatus {
            name: n.name.clone(),
            role: n.role.as_str().into(),
            ready: conditions::is_true(&st.conditions, conditions::READY),
            lag: st.lag,
            delay_seconds: st.delay_seconds,
            entries: st.entries,
        });
    }
    let worst = worst_delay(&node_status);
    let all_ready = node_status.iter().all(|n| n.ready);
    let identities_complete = keys.len() == chain.spec.nodes.len();
    let not_ready: Vec<&str> = node_status
        .iter()
        .filter(|n| !n.ready)
        .map(|n| n.name.as_str())
        .collect();
    let conditions = conditions::merge(
        &old.conditions,
        vec![
            Want {
                type_: conditions::READY,
                status: all_ready,
                reason: if all_ready {
                    "AllNodesReady"
                } else {
                    "NodesNotReady"
                },
                message: if all_ready {
                    "every node reports ready".into()
                } else {
                    format!("not ready: {}", not_ready.join(", "))
                },
            },
            Want {
                type_: conditions::PROGRESSING,
                status: !identities_complete,
                reason: if identities_complete {
                    "Wired"
                } else {
                    "WaitingForIdentities"
                },
                message: format!(
                    "{}/{} node identities in the chain's directory",
                    keys.len(),
                    chain.spec.nodes.len()
                ),
            },
            Want {
                type_: conditions::DEGRADED,
                status: false,
                reason: "Reconciled",
                message: "topology is valid and applied".into(),
            },
        ],
        chain.metadata.generation,
        &now,
    );
    write_status(
        &chains,
        chain.as_ref(),
        chain.status.as_ref(),
        SyncChainStatus {
            observed_generation: chain.metadata.generation,
            conditions,
            node_count: Some(chain.spec.nodes.len() as i32),
            lag: node_status.iter().filter_map(|n| n.lag).max(),
            delay_seconds: worst.map(|(_, d)| d),
            delay_node: worst.map(|(n, _)| n.to_string()),
            nodes: node_status,
        },
    )
    .await?;
    ctx.reset_backoff(&format!("SyncChain/{namespace}/{name}"));
    // Identities appear as the SyncNode reconciler creates them: look again soon until complete.
    Ok(Action::requeue(if identities_complete {
        Duration::from_secs(30)
    } else {
        Duration::from_secs(2)
    }))
}

/// The hop with the largest p99 replication delay, and that delay.
pub fn worst_delay(nodes: &[ChainNodeStatus]) -> Option<(&str, f64)> {
    nodes
        .iter()
        .filter_map(|n| n.delay_seconds.map(|d| (n.name.as_str(), d)))
        .fold(None, |worst, (n, d)| match worst {
            Some((_, w)) if w >= d => worst,
            _ => Some((n, d)),
        })
}

pub fn error_policy(chain: Arc<SyncChain>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = format!(
        "SyncChain/{}/{}",
        chain.namespace().unwrap_or_default(),
        chain.name_any()
    );
    let delay = ctx.backoff(&key);
    tracing::warn!(object = %key, error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(name: &str, delay: Option<f64>) -> ChainNodeStatus {
        ChainNodeStatus {
            name: name.into(),
            role: "relay".into(),
            ready: true,
            lag: None,
            delay_seconds: delay,
            entries: None,
        }
    }

    #[test]
    fn the_worst_hop_is_the_one_with_the_largest_p99() {
        assert_eq!(worst_delay(&[]), None);
        assert_eq!(worst_delay(&[hop("origin", None)]), None);
        let hops = [
            hop("origin", None),
            hop("relay", Some(0.4)),
            hop("edge-eu", Some(2.5)),
            hop("edge-us", Some(1.0)),
        ];
        assert_eq!(worst_delay(&hops), Some(("edge-eu", 2.5)));
    }
}
