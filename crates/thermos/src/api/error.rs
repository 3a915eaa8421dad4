//! The one error body of the API: `{"error": {code, type, message,
//! request_id}}` with the codes of DESIGN.md. Messages never hold a secret.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::engine::TokenError;

tokio::task_local! {
    /// The id of the request being served, for error bodies.
    pub static REQUEST_ID: String;
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    pub retry_after: Option<Duration>,
}

/// The error codes of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    Internal,
    Unavailable,
    NotFound,
    Conflict,
    Unauthorized,
    Forbidden,
    RateLimited,
    NeedsReauth,
    ProviderError,
    /// The request body is over `limits.max_body_bytes`.
    PayloadTooLarge,
    /// The request target and headers are over `limits.max_header_bytes`.
    HeadersTooLarge,
}

impl ErrorKind {
    /// (code, type, HTTP status).
    pub fn parts(self) -> (u16, &'static str, StatusCode) {
        match self {
            Self::BadRequest => (1600, "bad_request", StatusCode::BAD_REQUEST),
            Self::Internal => (1601, "internal", StatusCode::INTERNAL_SERVER_ERROR),
            Self::Unavailable => (1602, "unavailable", StatusCode::SERVICE_UNAVAILABLE),
            Self::NotFound => (1603, "not_found", StatusCode::NOT_FOUND),
            Self::Conflict => (1604, "conflict", StatusCode::CONFLICT),
            Self::Unauthorized => (1605, "unauthorized", StatusCode::UNAUTHORIZED),
            Self::Forbidden => (1606, "forbidden", StatusCode::FORBIDDEN),
            Self::RateLimited => (1607, "rate_limited", StatusCode::TOO_MANY_REQUESTS),
            Self::NeedsReauth => (1610, "needs_reauth", StatusCode::CONFLICT),
            Self::ProviderError => (1611, "provider_error", StatusCode::BAD_GATEWAY),
            Self::PayloadTooLarge => (1612, "payload_too_large", StatusCode::PAYLOAD_TOO_LARGE),
            Self::HeadersTooLarge => (1613, "headers_too_large", StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        }
    }
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }
    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorKind::NotFound, format!("{what} not found"))
    }
    pub fn internal() -> Self {
        Self::new(
            ErrorKind::Internal,
            "internal error; see the server log for this request_id",
        )
    }
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: BodyInner<'a>,
}

#[derive(Serialize)]
struct BodyInner<'a> {
    code: u16,
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
    request_id: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, kind, status) = self.kind.parts();
        let request_id = REQUEST_ID.try_with(Clone::clone).unwrap_or_default();
        let body = Body {
            error: BodyInner {
                code,
                kind,
                message: &self.message,
                request_id,
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        let retry_after = match (self.retry_after, self.kind) {
            (Some(d), _) => Some(d),
            (None, ErrorKind::Unavailable | ErrorKind::RateLimited) => Some(Duration::from_secs(1)),
            _ => None,
        };
        if let Some(after) = retry_after {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            if let Ok(value) = HeaderValue::from_str(&secs.max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

impl From<thermos_store::StoreError> for ApiError {
    fn from(error: thermos_store::StoreError) -> Self {
        match error {
            thermos_store::StoreError::Conflict => Self::new(ErrorKind::Conflict, error.to_string()),
            other => {
                tracing::error!(error.message = %other, error.chain = %crate::engine::error_chain(&other), "store failed");
                Self::internal()
            }
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(error: TokenError) -> Self {
        match error {
            TokenError::NotFound => Self::not_found("connection"),
            TokenError::NeedsReauth { .. } => Self::new(ErrorKind::NeedsReauth, error.to_string()),
            TokenError::NotRefreshable { .. } => Self::new(ErrorKind::Conflict, error.to_string()),
            TokenError::ProviderFailed {
                retry_after: Some(after),
                ..
            } => Self::new(ErrorKind::Unavailable, error.to_string()).with_retry_after(after),
            TokenError::ProviderFailed { .. } => Self::new(ErrorKind::ProviderError, error.to_string()),
            TokenError::Unavailable { retry_after, .. } => {
                Self::new(ErrorKind::Unavailable, error.to_string()).with_retry_after(retry_after)
            }
            TokenError::RateLimited { retry_after } => {
                Self::new(ErrorKind::RateLimited, error.to_string()).with_retry_after(retry_after)
            }
            TokenError::Busy { retry_after } => {
                Self::new(ErrorKind::Unavailable, error.to_string()).with_retry_after(retry_after)
            }
            TokenError::Internal(message) => {
                tracing::error!(error.message = %message, "token request failed");
                Self::internal()
            }
        }
    }
}
