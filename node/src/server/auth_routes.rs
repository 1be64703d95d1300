//! `POST /:tenantId/auth/challenge` and `/auth/authenticate` (spec §2.1–2.3).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::error::ApiError;
use super::sync::{body_bytes, parse_json};
use super::{resolve_tenant, tenant_dir, ClientIp, SharedState};
use crate::auth::{AuthenticateError, ChallengeError};
use crate::clock::now_ms;
use crate::wire::{AuthenticateRequest, AuthenticateResponse, ChallengeRequest, ChallengeResponse};

const MAX_FIELD: usize = 4096;
const AUTH_LIMITED: &str = "Too many authentication attempts, please try again later";

fn limited(decision: super::limits::RateDecision) -> Result<(), ApiError> {
    if decision.allowed {
        Ok(())
    } else {
        Err(ApiError::TooManyRequests {
            message: AUTH_LIMITED,
            decision,
        })
    }
}

fn check_username(name: &str) -> Result<(), ApiError> {
    if name.is_empty() {
        return Err(ApiError::BadRequest(
            "username is required and must be a non-empty string".into(),
        ));
    }
    if name.chars().count() > 256 {
        return Err(ApiError::BadRequest(
            "username must be at most 256 characters".into(),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "username must not contain control characters".into(),
        ));
    }
    Ok(())
}

pub async fn challenge(
    State(state): State<SharedState>,
    Path(tenant): Path<String>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    let (tenant, directory) = resolve_tenant(&state, &tenant)?;
    let request: ChallengeRequest = parse_json(&body)?;
    if let Some(name) = &request.username {
        check_username(name)?;
    }
    if request
        .signing_public_key
        .as_ref()
        .is_some_and(|k| k.len() > MAX_FIELD)
    {
        return Err(ApiError::BadRequest(format!(
            "signingPublicKey must be at most {MAX_FIELD} characters"
        )));
    }
    let who = request
        .username
        .as_deref()
        .map(str::to_lowercase)
        .or_else(|| request.signing_public_key.clone())
        .unwrap_or_else(|| "-".into());
    limited(
        state
            .limits
            .challenge
            .check(&format!("{tenant}:challenge:{ip}:{who}")),
    )?;
    let issued = state.auth.issue_challenge(
        &tenant,
        tenant_dir(&directory, &tenant),
        request.username.as_deref(),
        request.signing_public_key.as_deref(),
        now_ms(),
    );
    match issued {
        Ok(challenge) => Ok(Json(ChallengeResponse { challenge }).into_response()),
        Err(e) => {
            state
                .node
                .metrics
                .auth_failures
                .with_label_values(&["challenge"])
                .inc();
            Err(match e {
                ChallengeError::Revoked(_) => ApiError::Forbidden(e.to_string()),
                other => ApiError::NotFound(other.to_string()),
            })
        }
    }
}

pub async fn authenticate(
    State(state): State<SharedState>,
    Path(tenant): Path<String>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    let (tenant, directory) = resolve_tenant(&state, &tenant)?;
    let request: AuthenticateRequest = parse_json(&body)?;
    let (Some(challenge), Some(signature)) = (request.challenge, request.signature) else {
        return Err(ApiError::BadRequest(
            "challenge and signature are required".into(),
        ));
    };
    if challenge.is_empty() || signature.is_empty() {
        return Err(ApiError::BadRequest(
            "challenge and signature are required".into(),
        ));
    }
    if challenge.len() > MAX_FIELD || signature.len() > MAX_FIELD {
        return Err(ApiError::BadRequest(format!(
            "challenge and signature must be at most {MAX_FIELD} characters"
        )));
    }
    limited(
        state
            .limits
            .authenticate
            .check(&format!("{tenant}:authenticate:{ip}")),
    )?;
    let result = state.auth.authenticate(
        &tenant,
        tenant_dir(&directory, &tenant),
        &challenge,
        &signature,
        now_ms(),
    );
    Ok(match result {
        Ok(token) => Json(AuthenticateResponse {
            success: true,
            token: Some(token),
            error: None,
        })
        .into_response(),
        Err(e) => {
            state
                .node
                .metrics
                .auth_failures
                .with_label_values(&["authenticate"])
                .inc();
            let status = match e {
                AuthenticateError::Busy => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::UNAUTHORIZED,
            };
            (
                status,
                Json(AuthenticateResponse {
                    success: false,
                    token: None,
                    error: Some(e.to_string()),
                }),
            )
                .into_response()
        }
    })
}
