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
    #[error("{message}")]
    TooManyRequests {
        message: &'static str,
        retry_after_secs: u64,
    },
    #[error("{0}")]
    NotImplemented(String),
    #[error("{0}")]
    Unavailable(String),
    /// The upstream answered with an error this node cannot fix (502).
    #[error("{0}")]
    BadGateway(String),
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
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::LoopDetected(_) => StatusCode::LOOP_DETECTED,
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
            other => ApiError::Internal(other.to_string()),
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
        if let ApiError::TooManyRequests {
            retry_after_secs, ..
        } = self
        {
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from(retry_after_secs.max(1)));
        }
        response
    }
}
