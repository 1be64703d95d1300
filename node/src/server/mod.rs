//! The HTTP surface of a node (axum): the MindooDB sync-v5 routes under `/:tenantId/auth/*` and
//! `/:tenantId/sync/:storeKind/*`, plus `/health`, `/metrics` and `/.well-known/mindoodb-server-info`.
//!
//! Every handler authenticates against the live directory, validates ids and sizes before touching a
//! store, and answers failures with the protocol's status codes and `{error}` bodies ([`error`]).

pub mod auth_routes;
pub mod error;
pub mod events;
pub mod ingest;
pub mod limits;
pub mod sync;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};
use tower_http::compression::CompressionLayer;

use crate::auth::AuthService;
use crate::config::{NodeConfig, Role};
use crate::crypto::keys::Identity;
use crate::directory::{Directory, DirectoryHandle, TenantDirectory};
use crate::metrics::{endpoint_label, Metrics};
use crate::store::cache::{CachedStore, EdgeCache};
use crate::store::registry::SharedStore;
use crate::store::StoreRegistry;
use crate::sync::links::Links;
use crate::sync::service::{SyncQueue, UpstreamFeeds, Want};
use crate::wire::{ids, ServerInfo, StoreId, Timestamping};
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

/// Everything a request handler needs.
pub struct AppState {
    pub config: NodeConfig,
    pub identity: Arc<Identity>,
    /// Stable id of this node (see [`node_id`]), sent in the via header and published in /status.
    pub node_id: String,
    pub directory: DirectoryHandle,
    pub auth: AuthService,
    pub stores: StoreRegistry,
    pub metrics: Arc<Metrics>,
    pub limits: Limiters,
    /// Upstreams and peers (none for a lone origin).
    pub links: Option<Arc<Links>>,
    pub sync_queue: SyncQueue,
    /// Upstream change feeds relayed by a node without a local copy.
    pub upstream_feeds: UpstreamFeeds,
    /// The edge role's cache.
    pub cache: Option<Arc<EdgeCache>>,
}

impl AppState {
    /// The store that serves `id` for this node's role: the local store (origin, relay, peer), the
    /// cache in front of the upstream (edge), or the upstream itself (passthrough).
    pub fn backing_store(&self, id: &StoreId) -> Result<SharedStore, ApiError> {
        match self.config.role {
            Role::Origin | Role::Relay | Role::Peer => {
                let (store, created) = self.stores.open_reporting(id)?;
                if created && self.links.is_some() {
                    // A database a client touched: carried from now on.
                    self.sync_queue.request(
                        id.clone(),
                        Want {
                            pull: true,
                            push: true,
                        },
                    );
                }
                Ok(store)
            }
            Role::Edge | Role::Passthrough => {
                let links = self
                    .links
                    .as_ref()
                    .ok_or_else(|| ApiError::Unavailable("no upstream is configured".into()))?;
                // The config requires an upstream for these roles: none to offer means every
                // upstream was found to close a cycle — the same loop the via header reports.
                let link = links.upstream_order().into_iter().next().ok_or_else(|| {
                    ApiError::LoopDetected(format!(
                        "Loop detected: every upstream of node {} would close a cycle",
                        self.node_id
                    ))
                })?;
                let remote = link.store(id);
                Ok(match &self.cache {
                    Some(cache) => Arc::new(CachedStore::new(remote, cache.clone())),
                    None => remote,
                })
            }
        }
    }
}

/// A node's id: the first 16 hex digits of SHA-256 over its signing public key PEM and its instance
/// name (`SYNCRELAY_INSTANCE`, set per pod by the operator) — stable across restarts, and distinct
/// for replicas that share one identity.
pub fn node_id(identity: &Identity) -> String {
    use sha2::Digest;
    let instance = std::env::var("SYNCRELAY_INSTANCE").unwrap_or_default();
    let mut hasher = sha2::Sha256::new();
    hasher.update(identity.signing_public_pem.as_bytes());
    if !instance.is_empty() {
        hasher.update(b"\n");
        hasher.update(instance.as_bytes());
    }
    hex::encode(&hasher.finalize()[..8])
}

pub type SharedState = Arc<AppState>;

/// Client address as seen by the listener (inserted by the outer middleware).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub std::net::IpAddr);

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Resolves the tenant of a path: 400 for a malformed id, 404 when this node does not carry it.
pub fn resolve_tenant(state: &AppState, raw: &str) -> Result<(String, Arc<Directory>), ApiError> {
    let tenant = ids::normalize_tenant_id(raw).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let directory = state.directory.current();
    if directory.tenant(&tenant).is_none() {
        return Err(ApiError::NotFound(format!(
            "Tenant {tenant} not found on server {}",
            state.config.name
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
            state.config.limits.max_body_bytes as usize,
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
    let decision = state.limits.global.check(&global_key(ip));
    let via = request
        .headers()
        .get(crate::client::VIA_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let response = if via.split(',').any(|hop| hop.trim() == state.node_id) {
        ApiError::LoopDetected(format!(
            "Loop detected: this request already passed through node {} ({via})",
            state.node_id
        ))
        .into_response()
    } else if decision.allowed {
        crate::client::INCOMING_VIA
            .scope(via, next.run(request))
            .await
    } else {
        let mut r = ApiError::TooManyRequests {
            message: "Too many requests, please try again later",
            retry_after_secs: decision.reset_secs,
        }
        .into_response();
        decision.write_headers(r.headers_mut());
        r
    };
    let status = response.status().as_u16().to_string();
    state
        .metrics
        .requests
        .with_label_values(&[&endpoint, &status])
        .inc();
    state
        .metrics
        .latency
        .with_label_values(&[&endpoint])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// IPv6 clients are limited per /56, like the reference.
fn global_key(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/56", s[0], s[1], s[2], s[3] & 0xff00)
        }
    }
}

async fn health() -> Response {
    Json(serde_json::json!({"status": "ok", "timestamp": now_ms()})).into_response()
}

async fn status(State(state): State<SharedState>) -> Response {
    Json(crate::sync::status::node_status(&state).await).into_response()
}

async fn metrics(State(state): State<SharedState>) -> Response {
    if let Some(links) = &state.links {
        let now = now_ms();
        for link in links.all() {
            if let Some(t) = link.last_success_ms() {
                state
                    .metrics
                    .sync_age_seconds
                    .with_label_values(&[&link.name])
                    .set((now - t).max(0) / 1000);
            }
        }
    }
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(&state.stores).await,
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
        name: state.config.name.clone(),
        signing_public_key: state.identity.signing_public_pem.clone(),
        encryption_public_key: state.identity.encryption_public_pem.clone(),
        max_json_request_body_limit: body_limit_text(state.config.limits.max_body_bytes),
        max_json_request_body_bytes: state.config.limits.max_body_bytes,
        timestamping: Timestamping::default(),
    })
    .into_response()
}

async fn not_found(method: Method, uri: Uri) -> Response {
    ApiError::NotFound(format!("Cannot {method} {}", uri.path())).into_response()
}

/// How long in-flight requests may take to finish on shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
