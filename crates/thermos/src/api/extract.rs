//! Extractors whose rejections are API errors (code 1600), not axum's
//! plain-text defaults.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use thermos_core::id::ConnectionId;

use super::error::{ApiError, ErrorKind};

/// The body limit in force for a request (put there by the limits
/// middleware), for the message of a 413.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

fn body_limit(req: &Request) -> Option<usize> {
    req.extensions().get::<BodyLimit>().map(|l| l.0)
}

/// 413, code 1612.
fn too_large(limit: Option<usize>) -> ApiError {
    let at_most = limit.map_or_else(String::new, |n| format!(" of {n} bytes"));
    ApiError::new(
        ErrorKind::PayloadTooLarge,
        format!("request body over the limit{at_most} (limits.max_body_bytes)"),
    )
}

/// A JSON body; any problem is a 400 with code 1600 naming it.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = body_limit(&req);
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(too_large(limit)),
            Err(rejection) => Err(ApiError::bad_request(without_values(&rejection.body_text()))),
        }
    }
}

/// Longest name (a JSON key, quoted in backticks) an error message repeats;
/// longer ones are no field name of this API and may be a secret sent as a key.
const MAX_ECHOED_NAME: usize = 40;

/// A JSON error message without the values the body held: serde quotes the
/// string it could not use (`invalid type: string "…", expected i64`), and a
/// body may carry a token in the wrong field. Double-quoted values become
/// `"…"`; backticked names longer than [`MAX_ECHOED_NAME`] become `…`
/// wherever they appear (the path before the message repeats them).
fn without_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut long_names = Vec::new();
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                out.push_str("\"…\"");
                let mut escaped = false;
                for inner in chars.by_ref() {
                    match inner {
                        _ if escaped => escaped = false,
                        '\\' => escaped = true,
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '`' => {
                let name: String = chars.by_ref().take_while(|&inner| inner != '`').collect();
                if name.chars().count() > MAX_ECHOED_NAME {
                    out.push_str("`…`");
                    long_names.push(name);
                } else {
                    out.push('`');
                    out.push_str(&name);
                    out.push('`');
                }
            }
            _ => out.push(c),
        }
    }
    for name in long_names {
        out = out.replace(&name, "…");
    }
    out
}

/// An optional JSON body: empty means `None`.
#[derive(Debug)]
pub struct OptionalJson<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = body_limit(&req);
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|r| match r.status() {
                StatusCode::PAYLOAD_TOO_LARGE => too_large(limit),
                _ => ApiError::bad_request(r.body_text()),
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(None));
        }
        serde_json::from_slice(&bytes)
            .map(|v| Self(Some(v)))
            .map_err(|e| ApiError::bad_request(without_values(&format!("invalid JSON body: {e}"))))
    }
}

/// Query parameters; any problem is a 400 with code 1600.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|r| ApiError::bad_request(r.body_text()))
    }
}

/// A connection id from the path; a malformed id is simply not found.
#[derive(Debug, Clone, Copy)]
pub struct PathId(pub ConnectionId);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(raw) = axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::not_found("connection"))?;
        ConnectionId::parse(&raw)
            .map(Self)
            .map_err(|_| ApiError::not_found("connection"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_name_the_field_but_not_the_value_it_held() {
        let message = "expires_in: invalid type: string \"rt_SECRET \\\" quoted\", expected i64 at line 1 column 9";
        assert_eq!(
            without_values(message),
            "expires_in: invalid type: string \"…\", expected i64 at line 1 column 9"
        );
        let long = "rt_SECRET0123456789012345678901234567890123";
        let message = format!("{long}: unknown field `{long}`, expected one of `provider`, `scope`");
        assert_eq!(
            without_values(&message),
            "…: unknown field `…`, expected one of `provider`, `scope`"
        );
        assert_eq!(
            without_values("unknown field `colour`, expected `color`"),
            "unknown field `colour`, expected `color`"
        );
    }
}
