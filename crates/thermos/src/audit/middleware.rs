//! Which requests the audit log records, and the middleware that records
//! them: every token fetch and every change made through `/v1`, by the key
//! that authenticated it (`api::auth::Identity`), with the resource it
//! concerned, the client's address, the request id and the status answered
//! — refused attempts included. Requests that did not authenticate are not
//! recorded here (they have no actor; failed authentication is counted and
//! rate-limited by `api::auth`). Plain reads of metadata are not recorded.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

use thermos_core::id::{ConnectionId, is_valid_slug};

use super::{AuditLog, Occurrence};
use crate::api::auth::Identity;

/// Largest answer body read back for the id of a created resource.
const MAX_CREATED_BODY: usize = 1 << 20;

/// How a request is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audited {
    /// A token handed out: folded with equal ones, written within a quarter second.
    Read(&'static str),
    /// A change: written before the answer goes out. `created_id` names the
    /// answer's field holding the new resource's id, when the path has none.
    Change {
        action: String,
        created_id: Option<&'static str>,
    },
}

/// How `method` on `route` (the route template, with or without the `/v1`
/// prefix) is audited, if at all. Every method but GET and HEAD changes
/// something, so a route missing from the list below is still recorded,
/// as `METHOD route`.
pub fn audited(method: &Method, route: &str) -> Option<Audited> {
    let route = route.strip_prefix("/v1").unwrap_or(route);
    let change = |action: &str| {
        Some(Audited::Change {
            action: action.to_owned(),
            created_id: None,
        })
    };
    let create = |action: &str, field: &'static str| {
        Some(Audited::Change {
            action: action.to_owned(),
            created_id: Some(field),
        })
    };
    match (method.as_str(), route) {
        ("GET", "/connections/{id}/token") => Some(Audited::Read("token.read")),
        ("POST", "/connections/{id}/refresh") => Some(Audited::Read("token.refresh")),
        ("GET" | "HEAD" | "OPTIONS", _) => None,
        ("POST", "/connections") => create("connection.create", "id"),
        ("PUT", "/connections/{id}/tokens") => change("connection.replace_tokens"),
        ("DELETE", "/connections/{id}") => change("connection.delete"),
        ("POST", "/connections/{id}/reset") => change("connection.reset"),
        ("POST", "/webhooks") => create("webhook.create", "id"),
        ("DELETE", "/webhooks/{id}") => change("webhook.delete"),
        ("POST", "/events/{id}/redeliver") => change("event.redeliver"),
        ("POST", "/runs") => create("run.start", "id"),
        ("POST", "/runs/{id}/cancel") => change("run.cancel"),
        ("POST", "/apps") => create("app.create", "provider"),
        ("DELETE", "/apps/{provider}") => change("app.delete"),
        ("POST", "/keys") => create("key.create", "key_id"),
        ("POST", "/connect/sessions") => create("connect_session.create", "id"),
        ("DELETE", "/keys/{key_id}") => change("key.revoke"),
        (method, route) => change(&format!("{method} {route}")),
    }
}

/// Recorded instead of a path parameter that does not have the shape of an
/// id: whatever a client put in a path (a token pasted by mistake, say) is
/// not copied into the audit log.
pub const NOT_AN_ID: &str = "(not an id)";

/// The value of the last `{parameter}` of `route` in `path`, if it has the
/// shape of an id ([`NOT_AN_ID`] otherwise).
pub fn path_target(route: &str, path: &str) -> Option<String> {
    let route = route.strip_prefix("/v1").unwrap_or(route);
    let path = path.strip_prefix("/v1").unwrap_or(path);
    let (template, value) = route
        .split('/')
        .zip(path.split('/'))
        .filter(|(template, _)| template.starts_with('{'))
        .last()?;
    let is_id = match (route.split('/').nth(1), template) {
        (Some("connections"), "{id}") => ConnectionId::parse(value).is_ok(),
        (Some("keys"), "{key_id}") => crate::api_key::parse_key_ref(value).is_some(),
        (Some("apps"), "{provider}") => is_valid_slug(value),
        // Webhook, event and run ids: a prefix and hex or base32 digits.
        _ => value.len() <= 64 && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
    };
    Some(if is_id { value.to_owned() } else { NOT_AN_ID.to_owned() })
}

/// Records audited requests (see the module docs). Layered inside the
/// authentication middleware, which puts the [`Identity`] in the request.
pub async fn record(State(audit): State<AuditLog>, request: Request, next: Next) -> Response {
    let Some(route) = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()) else {
        return next.run(request).await;
    };
    let Some(how) = audited(request.method(), &route) else {
        return next.run(request).await;
    };
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip().to_string());
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let target = path_target(&route, request.uri().path());
    let mut response = next.run(request).await;
    // Authentication hands back the key it resolved; none: not authenticated.
    let Some(identity) = response.extensions_mut().remove::<Identity>() else {
        return response;
    };
    let status = response.status().as_u16();
    let occurrence = |action: String, target: Option<String>| Occurrence {
        actor: identity.key_id.clone(),
        actor_project: identity.project.clone(),
        action,
        target,
        client: client.clone(),
        request_id: request_id.clone(),
        status,
    };
    match how {
        Audited::Read(action) => {
            audit.read(occurrence(action.to_owned(), target));
            response
        }
        Audited::Change { action, created_id } => {
            let (response, target) = match (target, created_id) {
                (None, Some(field)) if response.status().is_success() => created(response, field).await,
                (target, _) => (response, target),
            };
            if !audit.change(occurrence(action, target)).await {
                tracing::error!(status, "the change was made but its audit entry could not be written");
            }
            response
        }
    }
}

/// Reads the created resource's id from a JSON answer, and gives the answer
/// back whole.
async fn created(response: Response, field: &str) -> (Response, Option<String>) {
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_CREATED_BODY).await else {
        return (Response::from_parts(parts, Body::empty()), None);
    };
    let id = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|json| json.get(field).and_then(|v| v.as_str()).map(str::to_owned));
    (Response::from_parts(parts, Body::from(bytes)), id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_fetches_are_reads_and_every_other_non_get_is_a_change() {
        assert_eq!(
            audited(&Method::GET, "/v1/connections/{id}/token"),
            Some(Audited::Read("token.read"))
        );
        assert_eq!(
            audited(&Method::POST, "/connections/{id}/refresh"),
            Some(Audited::Read("token.refresh"))
        );
        assert_eq!(audited(&Method::GET, "/v1/connections/{id}"), None);
        assert_eq!(audited(&Method::GET, "/v1/connections"), None);
        assert_eq!(
            audited(&Method::DELETE, "/v1/connections/{id}"),
            Some(Audited::Change {
                action: "connection.delete".into(),
                created_id: None
            })
        );
        assert_eq!(
            audited(&Method::POST, "/v1/connections"),
            Some(Audited::Change {
                action: "connection.create".into(),
                created_id: Some("id")
            })
        );
        assert_eq!(
            audited(&Method::PATCH, "/v1/something/{id}"),
            Some(Audited::Change {
                action: "PATCH /something/{id}".into(),
                created_id: None
            }),
            "a route nobody listed is still recorded"
        );
    }

    #[test]
    fn the_target_is_the_last_path_parameter() {
        assert_eq!(
            path_target(
                "/v1/connections/{id}/token",
                "/v1/connections/con_0123456789abcdef0123456789abcdef/token"
            )
            .as_deref(),
            Some("con_0123456789abcdef0123456789abcdef")
        );
        assert_eq!(
            path_target(
                "/connections/{id}/token",
                "/connections/con_99999999999999999999999999999999/token"
            )
            .as_deref(),
            Some("con_99999999999999999999999999999999")
        );
        assert_eq!(
            path_target("/v1/apps/{provider}", "/v1/apps/slack").as_deref(),
            Some("slack")
        );
        assert_eq!(path_target("/v1/connections", "/v1/connections"), None);
        assert_eq!(
            path_target("/v1/webhooks/{id}", "/v1/webhooks/wh_01abc").as_deref(),
            Some("wh_01abc")
        );
    }

    #[test]
    fn a_path_parameter_without_an_id_shape_is_not_copied() {
        for (route, path) in [
            (
                "/v1/connections/{id}/token",
                "/v1/connections/ya29.a0AfH6SMB-secret/token",
            ),
            ("/v1/connections/{id}", "/v1/connections/con_short"),
            ("/v1/apps/{provider}", "/v1/apps/Not%20A%20Slug"),
            ("/v1/webhooks/{id}", "/v1/webhooks/whsec_abc.def"),
            ("/v1/keys/{key_id}", "/v1/keys/thk_0123456789ab_theSecretPart"),
        ] {
            assert_eq!(path_target(route, path).as_deref(), Some(NOT_AN_ID), "{path}");
        }
    }
}
