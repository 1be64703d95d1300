//! HTTP errors: every failure answers with the protocol's status code and a `{"error": "..."}` body.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::wire::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("Request body too large")]
    PayloadTooLarge,
    /// A response that would be too large (413 with the reason).
    #[error("{0}")]
    ResponseTooLarge(String),
    /// Rate limited; the decision's `RateLimit-*` headers and `Retry-After` go with the answer.
    #[error("{message}")]
    TooManyRequests {
        message: &'static str,
        decision: crate::server::limits::RateDecision,
    },
    #[error("{0}")]
    NotImplemented(String),
    #[error("{0}")]
    Unavailable(String),
    /// The upstream answered with an error this node cannot fix (502).
    #[error("{0}")]
    BadGateway(String),
    /// The node's storage cannot take the write: disk full, or a database limit (507).
    #[error("{0}")]
    InsufficientStorage(String),
    /// The request already passed through this node (a cycle in the chain).
    #[error("{0}")]
    LoopDetected(String),
    /// Logged with its detail; the client sees only "Internal server error".
    #[error("internal error: {0}")]
    Internal(String),
}

pub const MISSING_AUTH: &str = "Missing or invalid Authorization header";
pub const INVALID_TOKEN: &str = "Invalid or expired token";

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::PayloadTooLarge | ApiError::ResponseTooLarge(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::LoopDetected(_) => StatusCode::LOOP_DETECTED,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match e {
            StoreError::Upstream {
                transient: true, ..
            } => ApiError::Unavailable(e.to_string()),
            StoreError::Upstream {
                status: Some(508), ..
            } => ApiError::LoopDetected(e.to_string()),
            StoreError::Upstream { .. } | StoreError::Unsupported { .. } => {
                ApiError::BadGateway(e.to_string())
            }
            StoreError::InvalidEntry { .. } | StoreError::PayloadMismatch { .. } => {
                ApiError::BadRequest(e.to_string())
            }
            StoreError::TooManyDatabases { .. } => ApiError::InsufficientStorage(e.to_string()),
            ref full if full.is_disk_full() => ApiError::InsufficientStorage(format!(
                "This node's storage is full; the write was not stored ({e})"
            )),
            ref failing if failing.is_storage_failure() => ApiError::Unavailable(format!(
                "This node's storage is failing; the write was not stored ({e})"
            )),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<crate::roles::ResolveError> for ApiError {
    fn from(e: crate::roles::ResolveError) -> Self {
        use crate::roles::ResolveError;
        match e {
            ResolveError::NoUpstream => ApiError::Unavailable(e.to_string()),
            ResolveError::Loop { .. } => ApiError::LoopDetected(e.to_string()),
            ResolveError::Store(e) => e.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = match &self {
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "request failed");
                "Internal server error".to_string()
            }
            other => other.to_string(),
        };
        let mut response = (self.status(), Json(ErrorBody { error: message })).into_response();
        if let ApiError::TooManyRequests { decision, .. } = self {
            decision.write_headers(response.headers_mut());
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from(decision.reset_secs.max(1)));
        }
        response
    }
}
