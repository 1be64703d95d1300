//! `/:tenantId/sync/:storeKind/*` (spec §3–§4). [`authorize`] runs the common checks in the
//! reference's order (tenant → Authorization header → rate limit → body → dbId → token), then one
//! function per operation talks to the store.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use rayon::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::{ApiError, INVALID_TOKEN, MISSING_AUTH};
use super::{resolve_tenant, responses, tenant_dir, ClientIp, SharedState};
use crate::clock::now_ms;
use crate::config::Role;
use crate::crypto::transport::{hybrid_encrypt, SessionKey};
use crate::directory::{Directory, Principal};
use crate::ingest::{self, IngestInput, Witness};
use crate::roles::Access;
use crate::store::registry::SharedStore;
use crate::store::PutSummary;
use crate::wire::*;

/// An authorised sync request.
pub struct SyncCtx {
    pub state: SharedState,
    pub tenant: String,
    pub directory: Arc<Directory>,
    pub principal: Arc<Principal>,
    pub kind: StoreKind,
}

impl SyncCtx {
    pub fn store_id(&self, db_id: &str) -> Result<StoreId, ApiError> {
        StoreId::new(&self.tenant, db_id, self.kind)
            .map_err(|e| ApiError::BadRequest(e.to_string()))
    }

    /// The store serving reads of `db_id` for this node's role (never creates one).
    pub fn store(&self, db_id: &str) -> Result<SharedStore, ApiError> {
        Ok(self
            .state
            .node
            .backing_store(&self.store_id(db_id)?, Access::Read)?)
    }

    /// The store taking writes to `db_id` (created within the tenant's database limit).
    pub fn store_for_write(&self, db_id: &str) -> Result<SharedStore, ApiError> {
        Ok(self
            .state
            .node
            .backing_store(&self.store_id(db_id)?, Access::Write)?)
    }
}

/// Maps the body extractor's rejection: over the limit → 413, anything else → 400.
pub fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::BadRequest(format!("Unreadable request body: {rejection}"))
        }
    })
}

/// Parses a JSON body; an empty body counts as `{}` (like Express).
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            ApiError::BadRequest("Invalid JSON body".into())
        } else {
            ApiError::BadRequest(format!("Invalid request body: {e}"))
        }
    })
}

/// Validates a dbId (400 with the protocol's message when missing or malformed).
pub fn db_id(raw: Option<&str>) -> Result<String, ApiError> {
    let raw = raw.unwrap_or("");
    ids::validate_db_id(raw).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(raw.to_string())
}

fn check_len(name: &str, len: usize, max: usize) -> Result<(), ApiError> {
    if len > max {
        return Err(ApiError::BadRequest(format!(
            "{name} must be an array with at most {max} items"
        )));
    }
    Ok(())
}

pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ")?.trim();
    (!token.is_empty()).then_some(token)
}

/// A sync request's tenant and the principal its bearer token names.
pub struct TokenHolder {
    pub tenant: String,
    pub directory: Arc<Directory>,
    /// `None` when the token is invalid or expired.
    pub principal: Option<Arc<Principal>>,
}

/// The checks of a sync request that need no body, in the protocol's order: the tenant, the
/// header, then the token.
pub fn token_holder(
    state: &SharedState,
    tenant_raw: &str,
    headers: &HeaderMap,
) -> Result<TokenHolder, ApiError> {
    let (tenant, directory) = resolve_tenant(state, tenant_raw)?;
    let token = bearer(headers).ok_or(ApiError::Unauthorized(MISSING_AUTH))?;
    let principal =
        state
            .auth
            .validate_token(&tenant, tenant_dir(&directory, &tenant), token, now_ms());
    Ok(TokenHolder {
        tenant,
        directory,
        principal,
    })
}

/// Common checks; `db_of` extracts the dbId once the body is parsed.
pub fn authorize(
    state: &SharedState,
    tenant_raw: &str,
    kind_raw: &str,
    headers: &HeaderMap,
    ip: std::net::IpAddr,
) -> Result<(SyncCtxPending, Arc<Directory>), ApiError> {
    let kind = StoreKind::parse(kind_raw)
        .ok_or_else(|| ApiError::NotFound(format!("Cannot POST /{tenant_raw}/sync/{kind_raw}")))?;
    let TokenHolder {
        tenant,
        directory,
        principal,
    } = token_holder(state, tenant_raw, headers)?;
    let who = principal
        .as_ref()
        .map(|p| p.signing_pem.as_str())
        .unwrap_or("anonymous");
    let decision = state
        .limits
        .sync
        .check(&format!("sync:{tenant}:{who}:{ip}"));
    if !decision.allowed {
        return Err(ApiError::TooManyRequests {
            message: "Too many sync requests, please try again later",
            decision,
        });
    }
    Ok((
        SyncCtxPending {
            tenant,
            principal,
            kind,
        },
        directory,
    ))
}

/// A request that passed the header checks; the token verdict is applied after dbId validation.
pub struct SyncCtxPending {
    tenant: String,
    principal: Option<Arc<Principal>>,
    kind: StoreKind,
}

impl SyncCtxPending {
    pub fn finish(
        self,
        state: &SharedState,
        directory: Arc<Directory>,
    ) -> Result<SyncCtx, ApiError> {
        let principal = self.principal.ok_or_else(|| {
            state
                .node
                .metrics
                .auth_failures
                .with_label_values(&["token"])
                .inc();
            ApiError::Unauthorized(INVALID_TOKEN)
        })?;
        Ok(SyncCtx {
            state: state.clone(),
            tenant: self.tenant,
            directory,
            principal,
            kind: self.kind,
        })
    }
}

fn json<T: Serialize>(value: &T) -> Response {
    Json(value).into_response()
}

pub async fn capabilities(
    State(state): State<SharedState>,
    Path((tenant, kind)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (pending, directory) = authorize(&state, &tenant, &kind, &headers, ip)?;
    db_id(query.get("dbId").map(String::as_str))?;
    let _ctx = pending.finish(&state, directory)?;
    Ok(json(&CapabilitiesResponse {
        capabilities: Capabilities {
            protocol_version: PROTOCOL_VERSION.into(),
            supports_cursor_scan: true,
            supports_id_bloom_summary: true,
            supports_compaction_status: true,
            supports_materialization_planning: false,
            supports_batch_materialization_planning: false,
            supports_attachment_read_planning: false,
            server_time: Some(now_ms()),
            supports_access_control_v1: state.node.config.stamps_witness(),
            supports_remote_wipe_v1: false,
            supports_store_head: true,
            supports_session_key_wrap: true,
            supports_binary_entries: true,
            // Nodes without a local copy relay their upstreams' change feeds.
            supports_change_events: true,
        },
    }))
}

pub async fn get_all_ids(
    State(state): State<SharedState>,
    Path((tenant, kind)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (pending, directory) = authorize(&state, &tenant, &kind, &headers, ip)?;
    let db = db_id(query.get("dbId").map(String::as_str))?;
    let ctx = pending.finish(&state, directory)?;
    let ids = ctx.store(&db)?.get_all_ids().await?;
    Ok(json(&IdsResponse { ids }))
}

pub async fn dispatch(
    State(state): State<SharedState>,
    Path((tenant, kind, op)): Path<(String, String, String)>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if !POST_OPERATIONS.contains(&op.as_str()) || StoreKind::parse(&kind).is_none() {
        return Err(ApiError::NotFound(format!(
            "Cannot POST /{tenant}/sync/{kind}/{op}"
        )));
    }
    let body = body_bytes(body)?;
    let (pending, directory) = authorize(&state, &tenant, &kind, &headers, ip)?;
    if op == "putEntriesBinary" {
        return put_entries_binary(&state, pending, directory, &headers, &body).await;
    }
    macro_rules! ctx {
        ($db:expr) => {{
            let db = db_id($db)?;
            (pending.finish(&state, directory)?, db)
        }};
    }
    match op.as_str() {
        "getStoreHead" => {
            let r: DbRequest = parse_json(&body)?;
            let (ctx, db) = ctx!(r.db_id.as_deref());
            Ok(json(&StoreHeadResponse {
                head: ctx.store(&db)?.get_store_head().await?,
            }))
        }
        "getIdBloomSummary" => {
            let r: DbRequest = parse_json(&body)?;
            let (ctx, db) = ctx!(r.db_id.as_deref());
            Ok(json(&BloomResponse {
                summary: ctx.store(&db)?.get_id_bloom_summary().await?,
            }))
        }
        "getCompactionStatus" => {
            let r: DbRequest = parse_json(&body)?;
            let (ctx, db) = ctx!(r.db_id.as_deref());
            Ok(json(&CompactionResponse {
                status: ctx.store(&db)?.compaction_status().await?,
            }))
        }
        "scanEntriesSince" => {
            let r: ScanRequest = parse_json(&body)?;
            let (ctx, db) = ctx!(r.db_id.as_deref());
            let filters = r.filters.unwrap_or_default();
            let page = ctx
                .store(&db)?
                .scan_entries_since_raw(r.cursor.as_ref(), clamp_scan_limit(r.limit), &filters)
                .await?;
            Ok(([(header::CONTENT_TYPE, "application/json")], page).into_response())
        }
        "hasEntries" => {
            let r: IdsRequest = parse_json(&body)?;
            let (ctx, db) = ctx!(r.db_id.as_deref());
            check_len("ids", r.ids.len(), MAX_IDS_PER_REQUEST)?;
            Ok(json(&IdsResponse {
                ids: ctx.store(&db)?.has_entries(&r.ids).await?,
            }))
        }
        "getEntryMetadata" => {
            let r: MetadataRequest = parse_json(&body)?;
            let (ctx, db) = ctx!(r.db_id.as_deref());
            let id =
                r.id.filter(|i| !i.is_empty())
                    .ok_or_else(|| ApiError::BadRequest("id is required".into()))?;
            Ok(json(&MetadataResponse {
                entry: ctx.store(&db)?.get_entry_metadata(&id).await?,
            }))
        }
        "findNewEntries" => {
            let r: FindNewEntriesRequest = parse_json(&body)?;
            let (ctx, db) = ctx!(r.db_id.as_deref());
            check_len("haveIds", r.have_ids.len(), MAX_IDS_PER_REQUEST)?;
            Ok(json(&EntriesResponse {
                entries: ctx.store(&db)?.find_new_entries(&r.have_ids).await?,
            }))
        }
        "findNewEntriesForDoc" => {
            let r: FindNewEntriesRequest = parse_json(&body)?;
            let (ctx, db) = ctx!(r.db_id.as_deref());
            check_len("haveIds", r.have_ids.len(), MAX_IDS_PER_REQUEST)?;
            let doc = r
                .doc_id
                .filter(|d| !d.is_empty())
                .ok_or_else(|| ApiError::BadRequest("docId is required".into()))?;
            let entries = ctx
                .store(&db)?
                .find_new_entries_for_doc(&r.have_ids, &doc)
                .await?;
            Ok(json(&EntriesResponse { entries }))
        }
        "findEntries" => {
            let r: FindEntriesRequest = parse_json(&body)?;
            let (ctx, db) = ctx!(r.db_id.as_deref());
            let entry_type = r.entry_type.unwrap_or_default();
            let entries = ctx
                .store(&db)?
                .find_entries(&entry_type, r.creation_date_from, r.creation_date_until)
                .await?;
            Ok(json(&EntriesResponse { entries }))
        }
        "resolveDependencies" => {
            let r: ResolveRequest = parse_json(&body)?;
            let (ctx, db) = ctx!(r.db_id.as_deref());
            let start = r
                .start_id
                .filter(|s| !s.is_empty())
                .ok_or_else(|| ApiError::BadRequest("startId is required".into()))?;
            let ids = ctx
                .store(&db)?
                .resolve_dependencies(&start, &r.options.unwrap_or_default())
                .await?;
            Ok(json(&IdsResponse { ids }))
        }
        "getEntries" | "getEntriesBinary" => {
            let r: IdsRequest = parse_json(&body)?;
            let (ctx, db) = ctx!(r.db_id.as_deref());
            check_len("ids", r.ids.len(), MAX_IDS_PER_REQUEST)?;
            // Each entry once, however often it is named: a response is never larger than the
            // distinct entries it holds.
            let ids = responses::distinct(r.ids);
            let store = ctx.store(&db)?;
            if op == "getEntriesBinary" {
                return responses::binary(&ctx, store, ids).await;
            }
            let entries = responses::read_within_cap(&ctx, &store, ids).await?;
            let session = r.session_key_wrap == Some(true);
            let reader = ctx.principal.clone();
            crate::cpu::run(move || wrap_entries(&reader, entries, session))
                .await
                .map_err(ApiError::internal)?
        }
        "putEntries" => {
            let r: PutEntriesRequest = parse_json(&body)?;
            let (ctx, db) = ctx!(r.db_id.as_deref());
            check_len("entries", r.entries.len(), MAX_ENTRIES_PER_PUSH)?;
            let entries = r.entries.into_iter().map(Entry::from).collect();
            put_entries(&ctx, &db, entries).await
        }
        _ => {
            let db = parse_json::<DbRequest>(&body)?.db_id;
            let _ = ctx!(db.as_deref());
            Err(ApiError::NotImplemented(format!(
                "{op} is not supported by this node (its capability flag is false)"
            )))
        }
    }
}

/// The JSON formats (spec §2.7, §4.9): the classic per-entry RSA envelope, or one session key per
/// response; the per-entry work (RSA or AES) runs on every core.
fn wrap_entries(
    reader: &Principal,
    entries: Vec<Entry>,
    session: bool,
) -> Result<Response, ApiError> {
    let key = &reader.encryption_key;
    if !session {
        let entries = entries
            .into_par_iter()
            .map(|e| {
                Ok(RsaWrappedEntry {
                    rsa_encrypted_payload: b64::B64(
                        hybrid_encrypt(key, &e.encrypted_data).map_err(ApiError::internal)?,
                    ),
                    metadata: e.metadata,
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        return Ok(json(&ClassicEntriesResponse { entries }));
    }
    let session_key = SessionKey::new(key).map_err(ApiError::internal)?;
    let entries = entries
        .into_par_iter()
        .map(|e| {
            let (iv, sealed) = session_key.seal(&e.encrypted_data);
            SessionWrappedEntry {
                metadata: e.metadata,
                iv: b64::B64(iv.to_vec()),
                session_encrypted_payload: b64::B64(sealed),
            }
        })
        .collect();
    Ok(json(&SessionEntriesResponse {
        wrapped_session_key: b64::B64(session_key.wrapped),
        entries,
    }))
}

/// The push pipeline: existing ids acknowledged with the stored record, new ones verified (and
/// stamped by a witness) on every core, then stored per role: locally (origin, peer), locally and
/// forwarded upstream with the upstream's receipts returned (relay; queued when the upstream is
/// away), or only forwarded (edge, passthrough). Rejections are reported per entry.
///
/// An origin or peer serialises the response while the store writes (the store's single writer
/// leaves a core free); it is sent only once the write is durable. Splitting a request into
/// smaller steps so that the write of one overlaps the verification of the next was measured and
/// lost: verification already keeps both cores busy, and smaller signature batches cost more.
pub async fn put_entries(
    ctx: &SyncCtx,
    db: &str,
    entries: Vec<Entry>,
) -> Result<Response, ApiError> {
    let id = ctx.store_id(db)?;
    // Ids no store may hold refuse the request as a whole: nothing of it is stored.
    for (i, entry) in entries.iter().enumerate() {
        ids::validate_entry_id(&entry.metadata.id)
            .map_err(|e| ApiError::BadRequest(format!("entries[{i}]: {e}")))?;
    }
    let role = ctx.state.node.config.role;
    if role.has_local_copy() {
        if let Some(failure) = ctx.state.node.storage_health.failure() {
            ctx.state
                .node
                .metrics
                .requests_refused
                .with_label_values(&["storage_unwritable"])
                .inc();
            let message = format!(
                "This node's storage does not take writes right now ({}); nothing was stored, try again later",
                failure.reason
            );
            return Err(if failure.disk_full {
                ApiError::InsufficientStorage(message)
            } else {
                ApiError::Unavailable(message)
            });
        }
    }
    let store = ctx.store_for_write(db)?;
    let plan = verify(ctx, db, &store, role, entries).await?;
    let mut response = PutEntriesResponse {
        success: true,
        receipts: plan.receipts,
        rejected: plan.rejected,
    };
    let accepted = plan.accepted;
    if accepted.is_empty() {
        return Ok(json(&response));
    }
    let to_store = match role {
        Role::Origin | Role::Peer => {
            let body = crate::cpu::run(move || serde_json::to_vec(&response));
            let (written, body) = tokio::join!(store.put_entries(accepted), body);
            count_ingested(ctx, noted(ctx, written)?);
            let body = body
                .map_err(ApiError::internal)?
                .map_err(ApiError::internal)?;
            return Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response());
        }
        Role::Relay => {
            match crate::roles::replication::forward_writes(&ctx.state.node, &id, accepted.clone())
                .await
            {
                Some(outcome) => merge_upstream_verdict(db, accepted, outcome, &mut response),
                None => {
                    tracing::info!(store = %id, entries = accepted.len(), "upstream away: write kept and queued");
                    crate::roles::replication::note_queued(
                        &ctx.state.node,
                        &id,
                        accepted.len() as u64,
                    );
                    accepted
                }
            }
        }
        Role::Edge | Role::Passthrough => {
            let outcome = store.push_entries(accepted.clone()).await?;
            merge_upstream_verdict(db, accepted, outcome, &mut response);
            return Ok(json(&response));
        }
    };
    if !to_store.is_empty() {
        count_ingested(ctx, noted(ctx, store.put_entries(to_store).await)?);
    }
    Ok(json(&response))
}

/// Looks up which ids the node already holds, then verifies (and stamps) the rest on the CPU pool.
async fn verify(
    ctx: &SyncCtx,
    db: &str,
    store: &SharedStore,
    role: Role,
    entries: Vec<Entry>,
) -> Result<ingest::IngestPlan, ApiError> {
    let mut existing = HashMap::new();
    if role.has_local_copy() {
        let ids: Vec<String> = entries.iter().map(|e| e.metadata.id.clone()).collect();
        for id in store.has_entries(&ids).await? {
            if let Some(meta) = store.get_entry_metadata(&id).await? {
                existing.insert(id, meta);
            }
        }
    }
    let state = ctx.state.clone();
    let directory = ctx.directory.clone();
    let tenant = ctx.tenant.clone();
    let db = db.to_string();
    let plan = crate::cpu::run(move || {
        let input = IngestInput {
            directory: tenant_dir(&directory, &tenant),
            db_id: &db,
            witness: state.node.config.stamps_witness().then(|| Witness {
                key: &state.node.identity.signer,
                pem: &state.node.identity.signing_public_pem,
            }),
            now_ms: now_ms(),
            history: false,
        };
        ingest::plan(&input, entries, &existing)
    })
    .await
    .map_err(ApiError::internal)?;
    for reason in &plan.reasons {
        ctx.state
            .node
            .metrics
            .verification_failures
            .with_label_values(&[reason.label()])
            .inc();
    }
    Ok(plan)
}

/// Marks the storage unwritable when a local write failed for the storage's own reasons.
fn noted(
    ctx: &SyncCtx,
    written: Result<PutSummary, crate::store::StoreError>,
) -> Result<PutSummary, crate::store::StoreError> {
    if let Err(e) = &written {
        if ctx.state.node.storage_health.note(e, now_ms()) {
            ctx.state.node.metrics.storage_unwritable.set(1);
        }
    }
    written
}

fn count_ingested(ctx: &SyncCtx, summary: PutSummary) {
    ctx.state
        .node
        .metrics
        .entries_ingested
        .with_label_values(&[&ctx.tenant, ctx.kind.as_str()])
        .inc_by(summary.inserted.len() as u64);
}

/// Folds the upstream's answer for forwarded entries into the client's response (its receipts
/// replace ours, its rejections become ours) and returns the entries to keep locally: each with
/// the upstream's receipt when it describes the same payload.
fn merge_upstream_verdict(
    db: &str,
    forwarded: Vec<Entry>,
    outcome: crate::store::PushOutcome,
    response: &mut PutEntriesResponse,
) -> Vec<Entry> {
    // Only the upstream's witness receipts are taken, and only where they verify over the entry
    // this node checked: an upstream cannot change what is stored here or answered to the client.
    let pushed = forwarded.iter().map(|e| &e.metadata);
    let stamped: HashMap<String, EntryMetadata> =
        crate::sync::engine::verified_receipts(pushed, &outcome.receipts, db)
            .into_iter()
            .map(|m| (m.id.clone(), m))
            .collect();
    let refused: std::collections::HashSet<&str> =
        outcome.rejected.iter().map(|r| r.id.as_str()).collect();
    response
        .receipts
        .retain(|r| !refused.contains(r.id.as_str()));
    for receipt in &mut response.receipts {
        if let Some(stamped) = stamped.get(&receipt.id) {
            *receipt = stamped.clone();
        }
    }
    let kept = forwarded
        .into_iter()
        .filter(|e| !refused.contains(e.metadata.id.as_str()))
        .map(|mut e| {
            if let Some(stamped) = stamped.get(&e.metadata.id) {
                e.metadata = stamped.clone();
            }
            e
        })
        .collect();
    response.rejected.extend(outcome.rejected);
    kept
}

async fn put_entries_binary(
    state: &SharedState,
    pending: SyncCtxPending,
    directory: Arc<Directory>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let is_binary = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim()
                .to_ascii_lowercase()
                .starts_with("application/octet-stream")
        });
    if !is_binary {
        return Err(ApiError::BadRequest(
            "putEntriesBinary requires a application/octet-stream body".into(),
        ));
    }
    let framed = framing::decode(body)
        .map_err(|e| ApiError::BadRequest(format!("Malformed binary entry body: {e}")))?;
    let header: BinaryPutHeader = serde_json::from_slice(framed.header)
        .map_err(|e| ApiError::BadRequest(format!("Malformed binary entry header: {e}")))?;
    if header.format != BINARY_PUT_FORMAT {
        return Err(ApiError::BadRequest(format!(
            "Unsupported binary entry format: {}",
            header.format
        )));
    }
    let db = db_id(header.db_id.as_deref())?;
    let ctx = pending.finish(state, directory)?;
    check_len("entries", framed.frames.len(), MAX_ENTRIES_PER_PUSH)?;
    let entries = framed
        .frames
        .par_iter()
        .enumerate()
        .map(|(i, (meta, payload))| {
            let metadata: EntryMetadata = serde_json::from_slice(meta).map_err(|e| {
                ApiError::BadRequest(format!("Malformed metadata in frame {i}: {e}"))
            })?;
            Ok(Entry {
                metadata,
                encrypted_data: payload.to_vec(),
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    put_entries(&ctx, &db, entries).await
}
