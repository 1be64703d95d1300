//! `syncrelay-operator run`: the SyncNode controller over the owned kinds, probes on an HTTP port,
//! graceful shutdown on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::Api;
use kube::runtime::{watcher, Controller};
use kube::Client;

use crate::controller::{syncchain, syncnode, Context};
use crate::crd::{SyncChain, SyncNode};

pub struct Options {
    pub namespace: Option<String>,
    pub probe_addr: SocketAddr,
    /// Run only while holding the Lease (for more than one operator replica).
    pub leader_election: bool,
    /// Namespace of the Lease.
    pub lease_namespace: String,
    /// Image of node pods whose spec names none.
    pub node_image: String,
}

fn api<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// `/healthz`, `/readyz` and `/metrics`.
async fn probes(addr: SocketAddr, ctx: Arc<Context>) -> anyhow::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let ctx = ctx.clone();
                async move { ctx.metrics.render() }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "probes and metrics listening");
    axum::serve(listener, app).await?;
    Ok(())
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let leader = Arc::new(AtomicBool::new(!options.leader_election));
    if options.leader_election {
        let me = std::env::var("POD_NAME").unwrap_or_else(|_| {
            format!("syncrelay-operator-{}-{}", std::process::id(), uuid_like())
        });
        tokio::spawn(crate::leader::run(
            client.clone(),
            options.lease_namespace.clone(),
            me,
            leader.clone(),
        ));
    }
    let served = crate::controller::ServedApis::discover(&client).await;
    tracing::info!(?served, "optional APIs");
    let mut ctx = Context::new(client.clone(), leader, served);
    ctx.node_image = options.node_image.clone();
    let ctx = Arc::new(ctx);
    let probe_ctx = ctx.clone();
    tokio::spawn(async move {
        if let Err(e) = probes(options.probe_addr, probe_ctx).await {
            tracing::error!(error = %e, "probe server failed");
        }
    });
    let ns = &options.namespace;
    let nodes = Controller::new(api::<SyncNode>(&client, ns), watcher::Config::default())
        .owns(api::<ConfigMap>(&client, ns), watcher::Config::default())
        .owns(api::<Service>(&client, ns), watcher::Config::default())
        .owns(api::<Secret>(&client, ns), watcher::Config::default())
        .owns(api::<StatefulSet>(&client, ns), watcher::Config::default())
        .owns(api::<Deployment>(&client, ns), watcher::Config::default())
        .graceful_shutdown_on(syncrelay_node::node::shutdown_signal())
        .run(
            |sn, ctx: Arc<Context>| async move {
                ctx.clone()
                    .observe("syncnode", syncnode::reconcile(sn, ctx))
                    .await
            },
            syncnode::error_policy,
            ctx.clone(),
        )
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(object = %object.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        });
    let chains = Controller::new(api::<SyncChain>(&client, ns), watcher::Config::default())
        .owns(api::<SyncNode>(&client, ns), watcher::Config::default())
        .owns(api::<Secret>(&client, ns), watcher::Config::default())
        .graceful_shutdown_on(syncrelay_node::node::shutdown_signal())
        .run(
            |chain, ctx: Arc<Context>| async move {
                ctx.clone()
                    .observe("syncchain", syncchain::reconcile(chain, ctx))
                    .await
            },
            syncchain::error_policy,
            ctx,
        )
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile error");
            }
        });
    tracing::info!(namespace = ?options.namespace, "syncrelay-operator running");
    futures::join!(nodes, chains);
    Ok(())
}

/// A random suffix so that two replicas on one host never share an identity.
fn uuid_like() -> String {
    use rand::RngExt;
    let mut rng = rand::rng();
    (0..8)
        .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
        .collect()
}
