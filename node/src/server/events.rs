//! `GET /:tenantId/sync/:storeKind/events`: the SSE change feed (spec §4.17). LF-only framing, a
//! `hello` event first, a `change` event per stored batch of any database of the tenant and store
//! kind, and a heartbeat comment every 30 s. An edge or passthrough relays its upstreams' events.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures::stream::{self, StreamExt};
use tokio_stream::wrappers::{BroadcastStream, IntervalStream};

use super::error::ApiError;
use super::sync::{authorize, db_id};
use super::{ClientIp, SharedState};
use crate::clock::now_ms;
use crate::wire::{ChangeEventData, PROTOCOL_VERSION};

pub const HEARTBEAT: Duration = Duration::from_secs(30);

/// How often an open stream re-checks its token against the live directory.
const TOKEN_RECHECK: Duration = Duration::from_secs(1);

/// Resolves once the stream's token is no longer valid — its user revoked or removed, or the token
/// expired — so that an open stream ends within [`TOKEN_RECHECK`] of a revocation, as a new request
/// would be refused.
async fn token_lapsed(state: SharedState, tenant: String, token: String) {
    let mut tick = tokio::time::interval(TOKEN_RECHECK);
    loop {
        tick.tick().await;
        let directory = state.node.directory.current();
        let valid = directory
            .tenant(&tenant)
            .and_then(|t| state.auth.validate_token(&tenant, t, &token, now_ms()))
            .is_some();
        if !valid {
            tracing::info!(%tenant, "change feed closed: its token is no longer valid");
            return;
        }
    }
}

pub async fn events(
    State(state): State<SharedState>,
    Path((tenant, kind)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (pending, directory) = authorize(&state, &tenant, &kind, &headers, ip)?;
    db_id(Some(
        query.get("dbId").map(String::as_str).unwrap_or("directory"),
    ))?;
    let ctx = pending.finish(&state, directory)?;
    let (tenant, kind) = (ctx.tenant.clone(), ctx.kind);
    let token = super::sync::bearer(&headers)
        .unwrap_or_default()
        .to_string();
    let ended = token_lapsed(state.clone(), tenant.clone(), token);
    if !state.node.config.role.has_local_copy() {
        // An edge or passthrough has no changes of its own: it relays its upstreams'.
        crate::roles::replication::UpstreamFeeds::follow(&state.node, &tenant, kind);
    }

    let hello = Event::default()
        .event("hello")
        .data(serde_json::json!({ "protocolVersion": PROTOCOL_VERSION }).to_string());
    let changes = BroadcastStream::new(state.node.stores.subscribe()).filter_map(move |change| {
        let event = match change {
            Ok(c) if c.store.tenant_id == tenant && c.store.kind == kind => {
                let data = ChangeEventData {
                    db_id: c.store.db_id,
                    store_kind: c.store.kind,
                    epoch: c.head.epoch,
                    max_receipt_order: c.head.max_receipt_order,
                };
                Some(
                    Event::default()
                        .event("change")
                        .data(serde_json::to_string(&data).expect("serialises")),
                )
            }
            _ => None,
        };
        std::future::ready(event)
    });
    let heartbeat = IntervalStream::new(tokio::time::interval_at(
        tokio::time::Instant::now() + HEARTBEAT,
        HEARTBEAT,
    ))
    .map(|_| Event::default().comment(format!("heartbeat {}", now_ms())));
    let stream = stream::once(std::future::ready(hello))
        .chain(stream::select(changes, heartbeat))
        .take_until(ended)
        .map(Ok::<_, Infallible>);
    Ok((
        [
            ("cache-control", "no-cache, no-transform"),
            ("x-accel-buffering", "no"),
        ],
        Sse::new(stream),
    )
        .into_response())
}
