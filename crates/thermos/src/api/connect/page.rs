//! What the end user's browser sees: redirects and short HTML pages, with
//! no caching, no referrer and everything shown escaped.

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, REFERRER_POLICY};
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use thermos_core::id::ConnectionId;
use thermos_store::connect::ConnectSessionRecord;
use url::Url;

/// An OAuth error code as the provider sent it, if it looks like one
/// (RFC 6749 §4.1.2.1: `%x20-21 / %x23-5B / %x5D-7E`, kept to a token).
pub(super) fn oauth_code(raw: &str) -> String {
    let clean = raw.len() <= 64
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if clean {
        raw.to_owned()
    } else {
        "provider_error".to_owned()
    }
}

/// At most `max` characters of `text`, control characters dropped.
pub(super) fn clip(text: &str, max: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max).collect()
}

/// Where the browser goes when a session ends: `redirect_after` with the
/// outcome in its query, or a short page (`status` when it failed).
pub(super) fn finish_page(
    session: &ConnectSessionRecord,
    outcome: Result<ConnectionId, (&str, &str)>,
    status: StatusCode,
) -> Response {
    if let Some(target) = session.redirect_after.as_deref().and_then(|raw| Url::parse(raw).ok()) {
        let mut target = target;
        {
            let mut query = target.query_pairs_mut();
            match outcome {
                Ok(id) => {
                    query
                        .append_pair("connection_id", &id.to_string())
                        .append_pair("status", "connected");
                }
                Err((code, _)) => {
                    query.append_pair("status", "failed").append_pair("error", code);
                }
            }
            query.append_pair("session_id", &session.id);
        }
        return redirect(target.as_str());
    }
    match outcome {
        Ok(_) => page(
            StatusCode::OK,
            "Account connected",
            &format!(
                "Your {} account is connected. You can close this window.",
                session.provider
            ),
        ),
        Err((code, message)) => page(
            status,
            "Connection failed",
            &format!("The account could not be connected ({code}): {message}"),
        ),
    }
}

/// Headers on every browser answer: nothing cached, no `Referer` carrying
/// the callback's query onwards.
pub(super) fn browser_headers() -> [(HeaderName, &'static str); 2] {
    [(CACHE_CONTROL, "no-store"), (REFERRER_POLICY, "no-referrer")]
}

pub(super) fn redirect(location: &str) -> Response {
    (StatusCode::FOUND, browser_headers(), [(LOCATION, location.to_owned())]).into_response()
}

/// A minimal HTML page; everything shown is escaped.
pub(super) fn page(status: StatusCode, title: &str, message: &str) -> Response {
    let (title, message) = (escape(title), escape(message));
    let body = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body><h1>{title}</h1><p>{message}</p></body></html>\n"
    );
    (
        status,
        browser_headers(),
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (HeaderName::from_static("content-security-policy"), "default-src 'none'"),
        ],
        body,
    )
        .into_response()
}

/// HTML-escapes `&<>"'`.
pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_escape_what_they_show() {
        assert_eq!(
            escape("<b>\"x\" & 'y'</b>"),
            "&lt;b&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/b&gt;"
        );
    }

    #[test]
    fn only_token_like_error_codes_are_kept() {
        assert_eq!(oauth_code("access_denied"), "access_denied");
        assert_eq!(oauth_code("<script>"), "provider_error");
    }
}
