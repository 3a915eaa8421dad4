//! Token revocation (RFC 7009): one POST of `token` and `token_type_hint`
//! to a provider app's revocation endpoint, with the same client
//! authentication as a token request, turned into a [`Revocation`].
//!
//! Like the rest of the client it never retries, never logs, and never puts
//! the token, the client secret or any text of the answer into the outcome:
//! an error code is kept only when it is a short OAuth error name, and
//! transport errors are described by their chain without the URL's query.

use std::time::Duration;

use reqwest::header::RETRY_AFTER;
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};

use super::{RefreshClient, client_authentication, display_url, with_chain};
use crate::provider::ProviderApp;

/// Which kind of token is revoked (RFC 7009 §2.1 `token_type_hint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenTypeHint {
    /// A refresh token: providers revoke the whole grant with it.
    RefreshToken,
    /// An access token.
    AccessToken,
}

impl TokenTypeHint {
    /// The hint as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RefreshToken => "refresh_token",
            Self::AccessToken => "access_token",
        }
    }
}

/// What a revocation request ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// 200: the token is no longer valid (RFC 7009 §2.2: also the answer
    /// for a token the provider did not know or had already invalidated).
    Revoked,
    /// The provider does not revoke this type of token
    /// (`unsupported_token_type`), or the app has no revocation endpoint.
    Unsupported,
    /// Worth trying again later: a 5xx (503 with `Retry-After` included),
    /// 429, a timeout, a network error or an answer over the size cap.
    Failed {
        /// What went wrong, without the token or the endpoint's query.
        detail: String,
        /// The endpoint's HTTP status, when it answered.
        http_status: Option<u16>,
        /// The endpoint's `Retry-After`, in seconds, when it sent one.
        retry_after: Option<Duration>,
    },
    /// The provider refused the client (`invalid_client`,
    /// `unauthorized_client`) or the request (another 4xx): trying again
    /// does not help until the configuration changes.
    Refused {
        /// The OAuth error code (`invalid_client`), or `http_{status}` when
        /// the answer named none.
        code: String,
        /// The endpoint's HTTP status.
        http_status: u16,
    },
}

/// Longest OAuth error code kept from an answer.
const MAX_CODE_LEN: usize = 64;

impl RefreshClient {
    /// Revokes `token` at `app`'s revocation endpoint (RFC 7009 §2.1) with
    /// the app's client authentication, within
    /// `min(request_timeout, MAX_REVOKE_TIMEOUT)`, reading at most the
    /// client's body cap. `extra_params` are not sent: they belong to token
    /// requests. Every outcome is a value; none carries the token.
    pub async fn revoke(&self, app: &ProviderApp, token: &SecretString, hint: TokenTypeHint) -> Revocation {
        let Some(url) = app.revocation_url.clone() else {
            return Revocation::Unsupported;
        };
        let endpoint = display_url(&url);
        let mut form = vec![("token", token.expose_secret()), ("token_type_hint", hint.as_str())];
        let request = client_authentication(app, &mut form).and_then(|authorization| {
            let body = serde_urlencoded::to_string(&form).map_err(|e| format!("encode the revocation request: {e}"))?;
            Ok(self.post_form(url, body, authorization))
        });
        let request = match request {
            Ok(request) => request.timeout(self.revoke_timeout),
            Err(detail) => return failed(detail, None, None),
        };
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                return failed(
                    with_chain(format!("call revocation endpoint {endpoint}"), &e.without_url()),
                    None,
                    None,
                );
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let cap = self.max_body_bytes;
        let over_cap = || {
            let detail = format!("revocation endpoint answered {status} with a body larger than {cap} bytes");
            failed(detail, Some(status), retry_after)
        };
        if response.content_length().is_some_and(|len| len > cap as u64) {
            return over_cap();
        }
        let mut body = Zeroizing::new(Vec::new());
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) if body.len() + chunk.len() > cap => return over_cap(),
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) => {
                    let context = format!("read response from revocation endpoint {endpoint}");
                    return failed(with_chain(context, &e.without_url()), Some(status), retry_after);
                }
            }
        }
        classify(status, retry_after, &body)
    }
}

/// The outcome of an answer (RFC 7009 §2.2, §2.2.1).
fn classify(status: u16, retry_after: Option<Duration>, body: &[u8]) -> Revocation {
    if status == 200 {
        return Revocation::Revoked;
    }
    let code = error_code(body);
    match (status, code.as_deref()) {
        (_, Some("unsupported_token_type")) => Revocation::Unsupported,
        (429 | 500..=599, _) => failed(
            format!(
                "revocation endpoint answered {status}{}",
                code.as_deref().map(|c| format!(" {c}")).unwrap_or_default()
            ),
            Some(status),
            retry_after,
        ),
        (400..=499, Some(code)) => Revocation::Refused {
            code: code.to_owned(),
            http_status: status,
        },
        (401, None) => Revocation::Refused {
            code: "invalid_client".to_owned(),
            http_status: status,
        },
        (400..=499, None) => Revocation::Refused {
            code: format!("http_{status}"),
            http_status: status,
        },
        // 1xx, 2xx other than 200, 3xx (redirects are not followed).
        _ => failed(
            format!("revocation endpoint answered {status}"),
            Some(status),
            retry_after,
        ),
    }
}

/// The answer's OAuth `error`, when it is a plausible error name (ASCII
/// letters, digits and `_`, at most [`MAX_CODE_LEN`]): anything else may
/// be an echo of the request and is not kept.
fn error_code(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let code = value.get("error")?.as_str()?;
    let plausible =
        !code.is_empty() && code.len() <= MAX_CODE_LEN && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    plausible.then(|| code.to_owned())
}

fn failed(detail: String, http_status: Option<u16>, retry_after: Option<Duration>) -> Revocation {
    Revocation::Failed {
        detail,
        http_status,
        retry_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_as_rfc_7009_says() {
        assert_eq!(classify(200, None, b""), Revocation::Revoked);
        assert_eq!(
            classify(400, None, br#"{"error":"unsupported_token_type"}"#),
            Revocation::Unsupported
        );
        assert!(matches!(
            classify(503, Some(Duration::from_secs(7)), b"down"),
            Revocation::Failed { http_status: Some(503), retry_after: Some(r), .. } if r == Duration::from_secs(7)
        ));
        assert!(matches!(classify(429, None, b""), Revocation::Failed { .. }));
        assert_eq!(
            classify(401, None, br#"{"error":"invalid_client"}"#),
            Revocation::Refused {
                code: "invalid_client".into(),
                http_status: 401
            }
        );
        assert_eq!(
            classify(403, None, b"<html>no</html>"),
            Revocation::Refused {
                code: "http_403".into(),
                http_status: 403
            }
        );
    }

    #[test]
    fn an_error_that_is_no_error_name_is_not_kept() {
        let echo = br#"{"error":"token=rt_SECRET+/= is bad"}"#;
        assert_eq!(
            classify(400, None, echo),
            Revocation::Refused {
                code: "http_400".into(),
                http_status: 400
            }
        );
    }
}
