//! Request bodies, bounded before they are read: how much, how fast, and how much in all.
//!
//! - Only a request to a sync route that carries a valid token may send up to `maxBodyBytes`;
//!   every other request (auth routes, GETs, a sync request without a valid token) at most
//!   [`UNAUTHENTICATED_BODY_BYTES`]. A larger body from a caller without a valid token is answered
//!   (401, or 413 on the auth routes) without reading it: the token is in a header.
//! - The body must arrive within `bodyTimeoutMs` of the headers (408 after).
//! - All bodies held at once share `maxInflightBodyBytes`; a request that would go over waits
//!   briefly for room, then gets 503 — concurrent uploads cannot take the node's memory.
//!
//! Handlers then take the body as `Bytes`, already in memory and within these bounds.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use super::error::{ApiError, INVALID_TOKEN};
use super::SharedState;

/// The most a request without a valid token may send: far more than a challenge, a login or a
/// sync request's ids ever need, too little for a body to be a way to hold memory.
pub const UNAUTHENTICATED_BODY_BYTES: u64 = 64 * 1024;

/// How long a request waits for room in the in-flight body budget before it is refused.
const BUDGET_WAIT: Duration = Duration::from_secs(2);

/// The in-flight body budget, counted in KiB (semaphore permits are `u32`).
pub struct BodyBudget {
    permits: Arc<Semaphore>,
    total_kib: u32,
}

impl BodyBudget {
    pub fn new(max_bytes: u64) -> Self {
        let total_kib = u32::try_from(max_bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, Semaphore::MAX_PERMITS as u32);
        BodyBudget {
            permits: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
        }
    }

    /// Room for a body of up to `bytes`, held until the returned permit is dropped.
    async fn reserve(&self, bytes: u64) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let kib = u32::try_from(bytes.div_ceil(1024).max(1))
            .unwrap_or(u32::MAX)
            .min(self.total_kib);
        tokio::time::timeout(BUDGET_WAIT, self.permits.clone().acquire_many_owned(kib))
            .await
            .ok()?
            .ok()
    }
}

/// What a request may send, and what it is told when it sends more.
#[derive(Debug)]
enum Allowance {
    /// Up to this many bytes; more is answered 413.
    Up(u64),
    /// Up to [`UNAUTHENTICATED_BODY_BYTES`]; more is answered with this error (the token's).
    Unauthenticated(ApiError),
}

/// Bounds the request's body (see the module docs) and hands it on in memory.
pub async fn bounded_body(
    State(state): State<SharedState>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let allowance = allowance(&state, &parts.method, parts.uri.path(), &parts.headers);
    let limit = match &allowance {
        Allowance::Up(n) => *n,
        Allowance::Unauthenticated(_) => UNAUTHENTICATED_BODY_BYTES,
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let over = |allowance: Allowance| -> Response {
        refused(&state, "body_too_large");
        match allowance {
            Allowance::Up(_) => ApiError::PayloadTooLarge.into_response(),
            Allowance::Unauthenticated(e) => e.into_response(),
        }
    };
    if let Some(n) = declared.filter(|n| *n > limit) {
        // Answered at once, but the body is read and dropped (never kept) in the background, up
        // to a bound: a client writes its whole body before it reads the answer, and a
        // connection closed under it would lose the 413 (which makes the reference client split
        // its batch) or the 401 (which makes it log in again) to a broken pipe.
        if n <= drain_bound(&state) {
            let deadline = Duration::from_millis(state.node.config.limits.body_timeout_ms.max(1));
            tokio::spawn(drain(body, n, deadline));
        }
        return over(allowance);
    }
    if declared == Some(0) || (declared.is_none() && !carries_body(&parts.headers)) {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let Some(permit) = state.body_budget.reserve(declared.unwrap_or(limit)).await else {
        refused(&state, "body_budget");
        return ApiError::Unavailable(
            "Too many request bodies in flight on this server, try again shortly".into(),
        )
        .into_response();
    };
    let deadline = Duration::from_millis(state.node.config.limits.body_timeout_ms.max(1));
    let read = axum::body::to_bytes(body, usize::try_from(limit).unwrap_or(usize::MAX));
    let bytes = match tokio::time::timeout(deadline, read).await {
        Err(_) => {
            refused(&state, "body_timeout");
            return (
                StatusCode::REQUEST_TIMEOUT,
                axum::Json(crate::wire::ErrorBody {
                    error: format!(
                        "Request body not received within {} ms",
                        deadline.as_millis()
                    ),
                }),
            )
                .into_response();
        }
        Ok(Err(e)) if is_length_limit(&e) => return over(allowance),
        Ok(Err(e)) => {
            return ApiError::BadRequest(format!("Unreadable request body: {e}")).into_response()
        }
        Ok(Ok(bytes)) => bytes,
    };
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    drop(permit);
    response
}

/// The largest refused body still drained so that its sender can read the answer.
fn drain_bound(state: &SharedState) -> u64 {
    state.node.config.limits.max_body_bytes.saturating_mul(4)
}

/// Reads and drops up to `max` bytes of a refused body, within `deadline`.
async fn drain(mut body: Body, max: u64, deadline: Duration) {
    use http_body_util::BodyExt;
    let _ = tokio::time::timeout(deadline, async {
        let mut seen = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                seen += data.len() as u64;
                if seen > max {
                    return;
                }
            }
        }
    })
    .await;
}

fn refused(state: &SharedState, reason: &str) {
    state
        .node
        .metrics
        .requests_refused
        .with_label_values(&[reason])
        .inc();
}

/// A body is announced by a length or a transfer coding; a request with neither has none.
fn carries_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// A sync route (`POST /{tenant}/sync/{kind}/{op}`) with a valid token may send `maxBodyBytes`;
/// the auth routes and everything else get the unauthenticated allowance.
fn allowance(state: &SharedState, method: &Method, path: &str, headers: &HeaderMap) -> Allowance {
    let mut segments = path.trim_start_matches('/').split('/');
    let (tenant, route) = (segments.next().unwrap_or(""), segments.next());
    let max = state.node.config.limits.max_body_bytes;
    if *method != Method::POST || route != Some("sync") {
        return if route == Some("auth") {
            Allowance::Up(UNAUTHENTICATED_BODY_BYTES.min(max))
        } else {
            Allowance::Unauthenticated(ApiError::PayloadTooLarge)
        };
    }
    match token_check(state, tenant, headers) {
        Ok(()) => Allowance::Up(max),
        Err(e) => Allowance::Unauthenticated(e),
    }
}

/// A sync request's tenant, header and token, checked before its body is read.
fn token_check(state: &SharedState, tenant_raw: &str, headers: &HeaderMap) -> Result<(), ApiError> {
    super::sync::token_holder(state, tenant_raw, headers)?
        .principal
        .map(|_| ())
        .ok_or(ApiError::Unauthorized(INVALID_TOKEN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_budget_is_shared_and_given_back() {
        let budget = BodyBudget::new(10 * 1024);
        let first = budget.reserve(8 * 1024).await.expect("room");
        assert!(
            budget.reserve(4 * 1024).await.is_none(),
            "over the budget: refused after the wait"
        );
        drop(first);
        assert!(budget.reserve(4 * 1024).await.is_some());
        // A body larger than the whole budget takes all of it rather than never fitting.
        assert!(budget.reserve(1 << 30).await.is_some());
    }
}
