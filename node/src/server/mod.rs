//! The HTTP surface of a node (axum): the MindooDB sync-v5 routes under `/:tenantId/auth/*` and
//! `/:tenantId/sync/:storeKind/*`, plus `/health`, `/metrics` and `/.well-known/mindoodb-server-info`.
//!
//! Every handler authenticates against the live directory, validates ids and sizes before touching a
//! store, and answers failures with the protocol's status codes and `{error}` bodies ([`error`]).

pub mod auth_routes;
pub mod body;
pub mod connections;
pub mod error;
pub mod events;
pub mod limits;
pub mod responses;
pub mod sync;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};
use tower_http::compression::CompressionLayer;

use crate::auth::AuthService;
use crate::clock::now_ms;
use crate::directory::{Directory, TenantDirectory};
use crate::metrics::endpoint_label;
use crate::roles::SharedNode;
use crate::wire::{ids, ServerInfo, Timestamping};
use error::ApiError;
use limits::RateLimiter;

/// Rate limiters of the tiers in spec §1.5.
pub struct Limiters {
    pub challenge: RateLimiter,
    pub authenticate: RateLimiter,
    pub sync: RateLimiter,
    pub global: RateLimiter,
}

impl Limiters {
    pub fn from_config(c: &crate::config::LimitsConfig) -> Self {
        Limiters {
            challenge: RateLimiter::per_minute(c.auth_per_minute),
            authenticate: RateLimiter::per_minute(c.auth_per_minute),
            sync: RateLimiter::per_minute(c.sync_per_minute),
            global: RateLimiter::per_minute(
                c.sync_per_minute
                    .saturating_add(c.auth_per_minute)
                    .saturating_add(c.global_extra_per_minute),
            ),
        }
    }
}

/// Everything a request handler needs: the node, and what only the HTTP surface keeps (login
/// challenges and tokens, rate limiters, the body budget, the status token).
pub struct AppState {
    pub node: SharedNode,
    pub auth: AuthService,
    pub limits: Limiters,
    /// Request bodies held in memory at once ([`body`]).
    pub body_budget: body::BodyBudget,
    /// The bearer token `/status` and `/metrics` require, when configured.
    pub status_token: Option<String>,
}

pub type SharedState = Arc<AppState>;

/// Client address as seen by the listener (inserted by the outer middleware).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub std::net::IpAddr);

/// Resolves the tenant of a path: 400 for a malformed id, 404 when this node does not carry it.
pub fn resolve_tenant(state: &AppState, raw: &str) -> Result<(String, Arc<Directory>), ApiError> {
    let tenant = ids::normalize_tenant_id(raw).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let directory = state.node.directory.current();
    if directory.tenant(&tenant).is_none() {
        return Err(ApiError::NotFound(format!(
            "Tenant {tenant} not found on server {}",
            state.node.config.name
        )));
    }
    Ok((tenant, directory))
}

/// The tenant's part of a directory already checked by [`resolve_tenant`].
pub fn tenant_dir<'a>(directory: &'a Directory, tenant: &str) -> &'a TenantDirectory {
    directory.tenant(tenant).expect("tenant resolved before")
}

pub fn router(state: SharedState) -> Router {
    let compression = CompressionLayer::new().compress_when(
        SizeAbove::new(1024)
            .and(NotForContentType::const_new("application/octet-stream"))
            .and(NotForContentType::const_new("text/event-stream")),
    );
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/.well-known/mindoodb-server-info", get(server_info))
        .route("/{tenant}/auth/challenge", post(auth_routes::challenge))
        .route(
            "/{tenant}/auth/authenticate",
            post(auth_routes::authenticate),
        )
        .route(
            "/{tenant}/sync/{kind}/capabilities",
            get(sync::capabilities),
        )
        .route("/{tenant}/sync/{kind}/getAllIds", get(sync::get_all_ids))
        .route("/{tenant}/sync/{kind}/events", get(events::events))
        .route("/{tenant}/sync/{kind}/{op}", post(sync::dispatch))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(
            state.node.config.limits.max_body_bytes as usize,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            body::bounded_body,
        ))
        .layer(compression)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Outermost middleware: client address, global rate limit, request metrics.
async fn observe(State(state): State<SharedState>, mut request: Request, next: Next) -> Response {
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
    request.extensions_mut().insert(ClientIp(ip));
    let endpoint = endpoint_label(request.uri().path());
    let started = Instant::now();
    // IPv6 clients are limited per /56, like the reference.
    let decision = state
        .limits
        .global
        .check(&connections::client_key(ip).to_string());
    let via = request
        .headers()
        .get(crate::client::VIA_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let response = if !path_is_utf8(request.uri().path()) {
        ApiError::BadRequest("The request path is not valid percent-encoded UTF-8".into())
            .into_response()
    } else if via.split(',').any(|hop| hop.trim() == state.node.node_id) {
        ApiError::LoopDetected(format!(
            "Loop detected: this request already passed through node {} ({via})",
            state.node.node_id
        ))
        .into_response()
    } else if decision.allowed {
        crate::client::INCOMING_VIA
            .scope(via, next.run(request))
            .await
    } else {
        ApiError::TooManyRequests {
            message: "Too many requests, please try again later",
            decision,
        }
        .into_response()
    };
    let response = json_error_body(response).await;
    let status = response.status().as_u16().to_string();
    state
        .node
        .metrics
        .requests
        .with_label_values(&[&endpoint, &status])
        .inc();
    state
        .node
        .metrics
        .latency
        .with_label_values(&[&endpoint])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Whether a path's percent-decoded bytes are UTF-8 (a tenant segment must be text).
fn path_is_utf8(path: &str) -> bool {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied(),
            bytes.get(i + 2).copied(),
        ) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                decoded.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    std::str::from_utf8(&decoded).is_ok()
}

/// Every error answers `{error}` in JSON: an answer the framework made in another form (405, a
/// rejected extractor's text) is rewritten, its headers (`Allow`, `Retry-After`) kept.
async fn json_error_body(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .ok()
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("Error").to_string());
    let body = serde_json::to_vec(&crate::wire::ErrorBody { error: text }).expect("serialises");
    parts.headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// Liveness: the process serves. It fails only when the storage stays unwritable although its
/// file system has room again — the engine is wedged, and only a restart recovers it.
async fn health(State(state): State<SharedState>) -> Response {
    if state.node.storage_health.wedged() {
        let failure = state.node.storage_health.failure().map(|f| f.reason);
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "status": "unhealthy",
                "error": format!("storage refuses writes although the disk has room: {}", failure.unwrap_or_default()),
                "timestamp": now_ms(),
            })),
        )
            .into_response();
    }
    Json(serde_json::json!({"status": "ok", "timestamp": now_ms()})).into_response()
}

/// Readiness: whether clients should be routed here (see `NodeStatus::ready`): storage writable,
/// an upstream connected (nodes that need one), every carried store caught up (relays).
async fn ready(State(state): State<SharedState>) -> Response {
    let reasons = state.node.not_ready_reasons();
    if reasons.is_empty() {
        Json(serde_json::json!({"status": "ready", "timestamp": now_ms()})).into_response()
    } else {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "not-ready", "error": reasons.join("; "), "timestamp": now_ms()})),
        )
            .into_response()
    }
}

/// `/status` and `/metrics` answer only a caller with the status token, when one is configured.
fn status_access(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.status_token else {
        return Ok(());
    };
    let given = sync::bearer(headers).unwrap_or("");
    use subtle_eq::ct_eq;
    if ct_eq(given.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized(
            "This endpoint requires the node's status token",
        ))
    }
}

/// Constant-time comparison, so that the token cannot be guessed byte by byte from timings.
mod subtle_eq {
    pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
        use sha2::{Digest, Sha256};
        // Equal-length digests compared without an early exit.
        let (a, b) = (Sha256::digest(a), Sha256::digest(b));
        a.iter()
            .zip(b.iter())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
    }
}

async fn status(State(state): State<SharedState>, headers: HeaderMap) -> Response {
    if let Err(e) = status_access(&state, &headers) {
        return e.into_response();
    }
    Json(crate::roles::status::node_status(&state.node).await).into_response()
}

async fn metrics(State(state): State<SharedState>, headers: HeaderMap) -> Response {
    if let Err(e) = status_access(&state, &headers) {
        return e.into_response();
    }
    crate::roles::status::refresh_link_metrics(&state.node);
    (
        [("content-type", "text/plain; version=0.0.4")],
        state
            .node
            .metrics
            .render(
                &state.node.stores,
                state.node.cache.as_ref().map(|c| c.status()),
            )
            .await,
    )
        .into_response()
}

/// `maxJsonRequestBodyLimit` in the reference's notation ("5mb").
pub fn body_limit_text(bytes: u64) -> String {
    const MB: u64 = 1024 * 1024;
    const KB: u64 = 1024;
    if bytes % MB == 0 {
        format!("{}mb", bytes / MB)
    } else if bytes % KB == 0 {
        format!("{}kb", bytes / KB)
    } else {
        format!("{bytes}b")
    }
}

async fn server_info(State(state): State<SharedState>) -> Response {
    Json(ServerInfo {
        name: state.node.config.name.clone(),
        signing_public_key: state.node.identity.signing_public_pem.clone(),
        encryption_public_key: state.node.identity.encryption_public_pem.clone(),
        max_json_request_body_limit: body_limit_text(state.node.config.limits.max_body_bytes),
        max_json_request_body_bytes: state.node.config.limits.max_body_bytes,
        timestamping: Timestamping::default(),
    })
    .into_response()
}

async fn not_found(method: Method, uri: Uri) -> Response {
    ApiError::NotFound(format!("Cannot {method} {}", uri.path())).into_response()
}

/// How long in-flight requests may take to finish on shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
