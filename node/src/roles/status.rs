//! Builds the `/status` report ([`crate::status::NodeStatus`]) from the node's stores and links.
//! Readiness is [`Node::not_ready_reasons`], the same answer `/ready` gives.

use super::{replication, Node};
use crate::status::{LinkState, NodeStatus, StoreStatus};

/// Brings the per-link gauges up to now: seconds since the last successful pass, the link's
/// state and how long it has been stalled (both depend on the time, not only on events).
pub fn refresh_link_metrics(node: &Node) {
    let Some(links) = &node.links else {
        return;
    };
    let now = crate::clock::now_ms();
    let metrics = &node.metrics;
    for link in links.all() {
        let name = link.name.as_str();
        if let Some(t) = link.last_success_ms() {
            metrics
                .sync_age_seconds
                .with_label_values(&[name])
                .set((now - t).max(0) / 1000);
        }
        let verdict = link.verdict();
        for state in LinkState::ALL {
            metrics
                .link_state
                .with_label_values(&[name, state.as_str()])
                .set(i64::from(state == verdict.state));
        }
        metrics
            .link_stalled_seconds
            .with_label_values(&[name])
            .set(verdict.stalled_ms / 1000);
    }
}

pub async fn node_status(node: &Node) -> NodeStatus {
    let mut stores = Vec::new();
    let mut entries = 0;
    let mut max_lag = 0;
    let mut payload_bytes = 0;
    let mut opened = node.stores.opened();
    opened.sort_by_key(|s| s.id().to_string());
    for store in opened {
        let id = store.id().clone();
        let stats = store.stats().await.unwrap_or_default();
        let head = store.get_store_head().await.ok();
        let links: Vec<_> = node
            .links
            .iter()
            .flat_map(|l| l.all())
            .map(|l| l.store_status(&id))
            .collect();
        max_lag = links.iter().map(|l| l.pull_lag).fold(max_lag, u64::max);
        entries += stats.entries;
        payload_bytes += stats.payload_bytes;
        stores.push(StoreStatus {
            tenant: id.tenant_id.clone(),
            db: id.db_id.clone(),
            kind: id.kind.as_str().to_string(),
            entries: stats.entries,
            max_receipt_order: head.as_ref().map_or(0, |h| h.max_receipt_order),
            epoch: head.map(|h| h.epoch).unwrap_or_default(),
            links,
        });
    }
    let links = match &node.links {
        Some(l) => l
            .all()
            .map(|link| {
                let lag = stores
                    .iter()
                    .flat_map(|s| &s.links)
                    .filter(|s| s.link == link.name)
                    .map(|s| s.pull_lag)
                    .sum();
                link.status(lag)
            })
            .collect(),
        None => Vec::new(),
    };
    let catching_up = replication::catching_up(node) as u64;
    let storage_failure = node.storage_health.failure().map(|f| f.reason);
    let ready = node.not_ready_reasons().is_empty();
    NodeStatus {
        node_id: node.node_id.clone(),
        name: node.config.name.clone(),
        role: node.config.role,
        version: env!("CARGO_PKG_VERSION").to_string(),
        chain: node.links.as_ref().map(|l| l.chain()).unwrap_or_default(),
        ready,
        links,
        stores,
        cache: node.cache.as_ref().map(|c| c.status()),
        entries,
        max_lag,
        queued_writes: replication::queued_writes(node).await,
        catching_up,
        storage_failure,
        held_entries: replication::held_entries(node),
        disk_bytes: node.stores.size_on_disk(),
        payload_bytes,
        storage_engine: node.stores.engine().map(|e| e.as_str().to_string()),
    }
}
