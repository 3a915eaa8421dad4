//! The OpenAPI 3.1 document of the API, served unauthenticated at
//! `GET /openapi.json`.
//!
//! The document is written by hand as one `serde_json` value rather than
//! generated from handler annotations: the handlers stay free of large macro
//! attributes, and the schemas below mirror the DTOs of `dto.rs`, `apps.rs`,
//! `webhooks.rs`, `events.rs` and `providers.rs` field by field.
//!
//! How it stays in step with the router (both directions are tested):
//! - every documented (method, path) is served: `tests/openapi.rs` sends a
//!   request to each one (dummy ids) and fails on the router's fallback
//!   answers ("route not found", "method not allowed on this route");
//! - every served route is documented: the unit test below reads the
//!   router's source (`api/mod.rs`), collects each `.route(path, methods)`
//!   (routes before `.nest("/v1", v1)` get the `/v1` prefix) and fails on any
//!   (method, path) missing from the document. A route added to the router
//!   without documentation therefore fails `cargo test`.

use axum::Json;
use serde_json::{Map, Value, json};

/// `GET /openapi.json`.
pub async fn serve() -> Json<Value> {
    Json(document())
}

/// Every (method, path template) the document describes, sorted.
pub fn documented_routes() -> Vec<(String, String)> {
    let doc = document();
    let mut routes = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, item) in paths {
            for method in item.as_object().into_iter().flat_map(|o| o.keys()) {
                if METHODS.contains(&method.as_str()) {
                    routes.push((method.to_uppercase(), path.clone()));
                }
            }
        }
    }
    routes.sort();
    routes
}

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

const ERROR_DESCRIPTION: &str = "Every error is `{\"error\": {code, type, message, request_id}}`.\n\n\
| code | type | HTTP |\n|---|---|---|\n\
| 1600 | bad_request | 400 |\n| 1601 | internal | 500 |\n\
| 1602 | unavailable | 503 (with `Retry-After`) |\n| 1603 | not_found | 404 |\n\
| 1604 | conflict | 409 |\n| 1605 | unauthorized | 401 |\n| 1606 | forbidden | 403 |\n\
| 1607 | rate_limited | 429 (with `Retry-After`) |\n| 1610 | needs_reauth | 409 |\n\
| 1611 | provider_error | 502 |\n\
| 1612 | payload_too_large | 413 (body over `limits.max_body_bytes`) |\n\
| 1613 | headers_too_large | 431 (target and headers over `limits.max_header_bytes`) |\n\n\
A request not answered within `limits.request_timeout` gets 1602 (503).\n";

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn json_body(schema: Value) -> Value {
    json!({"application/json": {"schema": schema}})
}

fn ok(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": json_body(schema)})
}

/// The usual error answers of an authenticated operation, plus `extra`.
fn responses(success: (&str, Value), extra: &[&str]) -> Value {
    let mut map = Map::new();
    map.insert(success.0.to_owned(), success.1);
    for code in ["400", "401", "403"].iter().chain(extra) {
        map.insert(
            (*code).to_owned(),
            json!({"$ref": format!("#/components/responses/E{code}")}),
        );
    }
    // Every route: the size limits, rate limits (forced refreshes, failed
    // authentication from the client's address) and the request timeout (503).
    for code in ["413", "429", "431", "500", "503"] {
        map.insert(code.into(), json!({"$ref": format!("#/components/responses/E{code}")}));
    }
    Value::Object(map)
}

/// The answers of a browser-facing route: HTML pages and redirects (plus
/// the limits' JSON errors).
fn browser_responses(statuses: &[&str]) -> Value {
    let mut map = Map::new();
    for status in statuses {
        let answer = if *status == "302" {
            json!({"description": "redirect (Location)"})
        } else {
            json!({"description": "a short HTML page", "content": {"text/html": {"schema": {"type": "string"}}}})
        };
        map.insert((*status).to_owned(), answer);
    }
    for code in ["413", "431", "503"] {
        map.insert(code.into(), json!({"$ref": format!("#/components/responses/E{code}")}));
    }
    Value::Object(map)
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description, "schema": {"type": "string"}})
}

fn query(name: &str, schema: Value, description: &str) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema})
}

fn op(
    id: &str,
    tag: &str,
    summary: &str,
    parameters: Vec<Value>,
    body: Option<(Value, bool)>,
    responses: Value,
) -> Value {
    let mut o = json!({
        "operationId": id,
        "tags": [tag],
        "summary": summary,
        "responses": responses,
    });
    if !parameters.is_empty() {
        o["parameters"] = Value::Array(parameters);
    }
    if let Some((schema, required)) = body {
        o["requestBody"] = json!({"required": required, "content": json_body(schema)});
    }
    o
}

fn public(o: Value) -> Value {
    let mut o = o;
    o["security"] = json!([]);
    o
}

fn nullable(ty: &str) -> Value {
    json!({"type": [ty, "null"]})
}

fn date_time() -> Value {
    json!({"type": "string", "format": "date-time"})
}

fn nullable_date_time() -> Value {
    json!({"type": ["string", "null"], "format": "date-time"})
}

fn object(required: &[&str], properties: Value) -> Value {
    json!({"type": "object", "required": required, "properties": properties})
}

fn list_of(name: &str) -> Value {
    object(&["data"], json!({"data": {"type": "array", "items": schema_ref(name)}}))
}

fn page_of(name: &str) -> Value {
    object(
        &["data", "next_cursor"],
        json!({
            "data": {"type": "array", "items": schema_ref(name)},
            "next_cursor": {"type": ["string", "null"], "description": "pass as `cursor` for the next page; null on the last"},
        }),
    )
}

fn provider_schema() -> Value {
    let counters = [
        "window_seconds",
        "window_attempts",
        "window_failures",
        "total_attempts",
        "total_failures",
        "rate_limited",
        "lost_responses",
        "deferred",
        "in_flight",
        "waiting_on_demand",
        "waiting_scheduled",
        "shared_by_instances",
    ];
    let mut schema = object(
        &[
            "provider",
            "client_id",
            "token_url",
            "state",
            "breaker",
            "paused",
            "max_concurrency",
            "rate_limit_per_second",
        ],
        json!({
            "provider": {"type": "string"},
            "client_id": {"type": "string"},
            "token_url": {"type": "string"},
            "state": {"type": "string", "enum": ["healthy", "paused"]},
            "breaker": {"type": "string", "enum": ["closed", "open"]},
            "paused": {"oneOf": [schema_ref("Paused"), {"type": "null"}]},
            "max_concurrency": nullable("integer"),
            "rate_limit_per_second": nullable("integer"),
        }),
    );
    for name in counters {
        schema["properties"][name] = json!({"type": "integer"});
        if let Some(required) = schema["required"].as_array_mut() {
            required.push(json!(name));
        }
    }
    schema
}

/// A project name (`thermos_core::id::is_valid_slug`).
const SLUG_PATTERN: &str = "^[a-z0-9._-]{1,64}$";

/// The connect-session schemas (`connect.rs`).
fn connect_schemas() -> Value {
    json!({
        "CreateConnectSession": {
            "type": "object", "additionalProperties": false,
            "required": ["provider", "external_id"],
            "properties": {
                "project": {"type": ["string", "null"], "pattern": SLUG_PATTERN, "description": "defaults to the caller's project"},
                "provider": {"type": "string", "description": "a configured provider slug with an authorization_url"},
                "external_id": {"type": "string", "minLength": 1, "maxLength": super::connections::MAX_EXTERNAL_ID, "pattern": "\\S"},
                "scopes": {"type": ["array", "null"], "maxItems": super::connect::MAX_SCOPES,
                    "items": {"type": "string", "minLength": 1, "maxLength": super::connect::MAX_SCOPE_LEN, "pattern": "^[!#-\\[\\]-~]+$"},
                    "description": "defaults to the provider's configured scopes"},
                "redirect_after": {"type": ["string", "null"], "maxLength": super::connect::MAX_REDIRECT_AFTER,
                    "description": "absolute https URL (http only to a loopback host, or with security.allow_private_targets), no user info or fragment; gets connection_id, status, error and session_id in its query"},
            },
        },
        "ConnectSession": object(
            &["id", "url", "project", "provider", "external_id", "scopes", "redirect_after", "status", "connection_id", "error", "created_at", "expires_at", "finished_at"],
            json!({
                "id": {"type": "string"},
                "url": {"type": "string", "description": "send the end user's browser here"},
                "project": {"type": "string"},
                "provider": {"type": "string"},
                "external_id": {"type": "string"},
                "scopes": {"type": "array", "items": {"type": "string"}},
                "redirect_after": nullable("string"),
                "status": {"type": "string", "enum": ["pending", "exchanging", "completed", "failed", "expired"]},
                "connection_id": nullable("string"),
                "error": {"oneOf": [object(&["code", "message"], json!({"code": {"type": "string"}, "message": {"type": "string"}})), {"type": "null"}]},
                "created_at": date_time(),
                "expires_at": date_time(),
                "finished_at": nullable_date_time(),
            }),
        ),
    })
}

fn schemas() -> Value {
    let token_fields = json!({
        "access_token": {"type": "string", "minLength": 1, "writeOnly": true},
        "refresh_token": {"type": ["string", "null"], "minLength": 1, "writeOnly": true},
        "expires_in": {"type": ["integer", "null"], "format": "int64", "minimum": 1, "maximum": super::connections::MAX_EXPIRES_IN_SECS,
            "description": "seconds from now; or give expires_at (not both)"},
        "expires_at": nullable_date_time(),
        "refresh_token_expires_in": {"type": ["integer", "null"], "format": "int64", "minimum": 1, "maximum": super::connections::MAX_EXPIRES_IN_SECS,
            "description": "how long the refresh token lives, seconds from now; or give refresh_token_expires_at (not both); only with a refresh_token. \
                Absent: unknown (docs/refresh-token-lifetime.md)"},
        "refresh_token_expires_at": nullable_date_time(),
        "scope": nullable("string"),
        "token_type": nullable("string"),
    });
    let mut create = token_fields.clone();
    for (k, v) in [
        (
            "project",
            json!({"type": ["string", "null"], "pattern": SLUG_PATTERN, "description": "defaults to the caller's project"}),
        ),
        (
            "provider",
            json!({"type": "string", "description": "a configured provider slug"}),
        ),
        (
            "external_id",
            json!({"type": "string", "minLength": 1, "maxLength": super::connections::MAX_EXTERNAL_ID, "pattern": "\\S"}),
        ),
        (
            "metadata",
            json!({"type": ["object", "null"], "description": "a JSON object, at most 16 KiB"}),
        ),
        (
            "grant_type",
            json!({"type": ["string", "null"], "enum": ["refresh_token", "client_credentials", "jwt_bearer", null],
                "description": "how the tokens are re-issued (docs/grants.md); default refresh_token, which needs access_token. \
                    client_credentials and jwt_bearer need no token: Thermos issues the first one before answering"}),
        ),
        (
            "private_key",
            json!({"type": ["string", "null"], "minLength": 1, "maxLength": crate::engine::grant::MAX_PRIVATE_KEY_BYTES, "writeOnly": true,
                "description": "jwt_bearer only: the PEM private key that signs assertions (RSA, EC or Ed25519); sealed, never returned"}),
        ),
        (
            "assertion_claims",
            json!({"oneOf": [{
                "type": "object", "additionalProperties": false,
                "required": ["iss", "sub"],
                "properties": {
                    "iss": {"type": "string", "minLength": 1, "maxLength": super::connections::MAX_CLAIM_CHARS, "pattern": "\\S"},
                    "sub": {"type": "string", "minLength": 1, "maxLength": super::connections::MAX_CLAIM_CHARS, "pattern": "\\S"},
                    "aud": {"type": ["string", "null"], "minLength": 1, "maxLength": super::connections::MAX_CLAIM_CHARS, "pattern": "\\S",
                        "description": "default: the provider's token URL"},
                    "scope": {"type": ["string", "null"], "minLength": 1, "maxLength": super::connections::MAX_CLAIM_CHARS, "pattern": "\\S",
                        "description": "a scope claim in the assertion"},
                    "kid": {"type": ["string", "null"], "minLength": 1, "maxLength": super::connections::MAX_CLAIM_CHARS, "pattern": "\\S"},
                    "alg": {"type": ["string", "null"], "enum": ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", null],
                        "description": "default RS256"},
                },
            }, {"type": "null"}], "description": "jwt_bearer only: the assertion's claims"}),
        ),
    ] {
        create[k] = v;
    }
    let mut schemas = json!({
        "Error": object(&["error"], json!({"error": object(&["code", "type", "message", "request_id"], json!({
            "code": {"type": "integer", "enum": [1600, 1601, 1602, 1603, 1604, 1605, 1606, 1607, 1610, 1611, 1612, 1613]},
            "type": {"type": "string", "enum": ["bad_request", "internal", "unavailable", "not_found", "conflict", "unauthorized", "forbidden", "rate_limited", "needs_reauth", "provider_error", "payload_too_large", "headers_too_large"]},
            "message": {"type": "string"},
            "request_id": {"type": "string"},
        }))})),
        "CreateConnection": {
            "type": "object", "additionalProperties": false,
            "required": ["provider", "external_id"],
            "properties": create,
        },
        "ReplaceTokens": {
            "type": "object", "additionalProperties": false,
            "required": ["access_token"],
            "properties": token_fields,
        },
        "RefreshRequest": {
            "type": "object", "additionalProperties": false,
            "properties": {"rejected_token": {"type": ["string", "null"], "writeOnly": true,
                "description": "the token a provider just rejected; refreshes only if it is still the current one"}},
        },
        "LastError": object(&["code", "message", "http_status", "at"], json!({
            "code": {"type": "string"},
            "message": {"type": "string"},
            "http_status": nullable("integer"),
            "at": date_time(),
        })),
        "Connection": object(
            &["id", "project", "provider", "external_id", "status", "grant_type", "scope", "expires_at", "refresh_token_expires_at",
              "next_refresh_at", "last_refreshed_at", "refresh_count", "consecutive_failures", "last_error", "metadata", "created_at", "updated_at"],
            json!({
                "id": {"type": "string"},
                "project": {"type": "string"},
                "provider": {"type": "string"},
                "external_id": {"type": "string"},
                "status": {"type": "string", "description": "`active`, `failing`, `needs_reauth`, …"},
                "grant_type": {"type": "string", "enum": ["refresh_token", "client_credentials", "jwt_bearer"]},
                "scope": nullable("string"),
                "expires_at": date_time(),
                "refresh_token_expires_at": {"type": ["string", "null"], "format": "date-time",
                    "description": "when the refresh token dies, as the provider or the importer said; null: unknown"},
                "next_refresh_at": nullable_date_time(),
                "last_refreshed_at": nullable_date_time(),
                "refresh_count": {"type": "integer", "format": "int64"},
                "consecutive_failures": {"type": "integer"},
                "last_error": {"oneOf": [schema_ref("LastError"), {"type": "null"}]},
                "metadata": {"description": "any JSON value"},
                "created_at": date_time(),
                "updated_at": date_time(),
            }),
        ),
        "ConnectionPage": page_of("Connection"),
        "Token": object(&["access_token", "token_type", "expires_at", "expires_in", "scope"], json!({
            "access_token": {"type": "string"},
            "token_type": {"type": "string"},
            "expires_at": date_time(),
            "expires_in": {"type": "integer", "format": "int64", "description": "seconds left"},
            "scope": nullable("string"),
        })),
        "Attempt": object(&["id", "at", "trigger", "outcome", "error_code", "http_status", "duration_ms"], json!({
            "id": {"type": "integer", "format": "int64"},
            "at": date_time(),
            "trigger": {"type": "string"},
            "outcome": {"type": "string"},
            "error_code": nullable("string"),
            "http_status": nullable("integer"),
            "duration_ms": {"type": "integer"},
        })),
        "AttemptList": list_of("Attempt"),
        "RegisterApp": {
            "type": "object", "additionalProperties": false,
            "required": ["provider", "client_id"],
            "properties": {
                "project": {"type": ["string", "null"], "pattern": SLUG_PATTERN},
                "provider": {"type": "string", "description": "a configured provider slug"},
                "client_id": {"type": "string", "minLength": 1, "maxLength": super::apps::MAX_CLIENT_ID, "pattern": "^[^\\x00-\\x1f\\x7f]*\\S[^\\x00-\\x1f\\x7f]*$"},
                "client_secret": {"type": ["string", "null"], "writeOnly": true},
                "auth_method": {"type": ["string", "null"], "enum": ["client_secret_basic", "client_secret_post", "none", null]},
            },
        },
        "App": object(&["project", "provider", "client_id", "auth_method", "created_at", "updated_at"], json!({
            "project": {"type": "string"},
            "provider": {"type": "string"},
            "client_id": {"type": "string"},
            "auth_method": {"type": "string"},
            "created_at": date_time(),
            "updated_at": date_time(),
        })),
        "AppList": list_of("App"),
        "RegisterWebhook": {
            "type": "object", "additionalProperties": false,
            "required": ["url"],
            "properties": {
                "project": nullable("string"),
                "url": {"type": "string", "format": "uri"},
                "events": {"type": ["array", "null"], "items": {"type": "string"}, "description": "event types wanted; every type when absent"},
            },
        },
        "Webhook": object(&["id", "project", "url", "events", "created_at"], json!({
            "id": {"type": "string"},
            "project": {"type": "string"},
            "url": {"type": "string"},
            "events": {"type": ["array", "null"], "items": {"type": "string"}},
            "created_at": date_time(),
        })),
        "CreatedWebhook": {"allOf": [schema_ref("Webhook"), object(&["secret"], json!({
            "secret": {"type": "string", "description": "the signing secret, shown only once"},
        }))]},
        "WebhookList": list_of("Webhook"),
        "DeliveryAttempt": object(&["at", "http_status", "latency_ms", "error"], json!({
            "at": date_time(),
            "http_status": nullable("integer"),
            "latency_ms": {"type": "integer"},
            "error": nullable("string"),
        })),
        "Delivery": object(&["id", "webhook_id", "status", "attempts", "last_http_status", "last_error", "next_attempt_at", "delivered_at"], json!({
            "id": {"type": "integer", "format": "int64"},
            "webhook_id": {"type": ["string", "null"], "description": "null for the operators' alert channel"},
            "status": {"type": "string", "enum": ["pending", "delivered", "failed"]},
            "attempts": {"type": "integer"},
            "last_http_status": nullable("integer"),
            "last_error": nullable("string"),
            "next_attempt_at": date_time(),
            "delivered_at": nullable_date_time(),
            "attempt_log": {"type": "array", "items": schema_ref("DeliveryAttempt"), "description": "only on GET /v1/events/{id}"},
        })),
        "Event": object(&["id", "type", "at", "project", "connection_id", "provider", "data", "deliveries"], json!({
            "id": {"type": "string"},
            "type": {"type": "string"},
            "at": date_time(),
            "project": nullable("string"),
            "connection_id": nullable("string"),
            "provider": nullable("string"),
            "data": {"description": "the event's payload"},
            "deliveries": {"type": "array", "items": schema_ref("Delivery")},
        })),
        "EventPage": page_of("Event"),
        "Redelivered": object(&["redelivered"], json!({
            "redelivered": {"type": "integer", "description": "how many deliveries were queued again"},
        })),
        "Paused": object(&["reason", "until"], json!({
            "reason": {"type": "string", "enum": ["rate_limited", "circuit_open", "client_invalid"]},
            "until": date_time(),
        })),
        "StartRun": super::runs::start_run_schema(),
        "Run": super::runs::run_schema(),
        "RunList": list_of("Run"),
        "Provider": provider_schema(),
        "ProviderList": list_of("Provider"),
        "Status": object(&["status"], json!({
            "status": {"type": "string"},
            "reasons": {"type": "array", "items": {"type": "string"}},
            "instance": {"type": "string", "description": "this instance's name (its lease owner)"},
            "instances": {"type": "array", "description": "the live instances sharing the database",
                "items": schema_ref("Instance")},
        })),
        "Instance": object(&["name", "engine_enabled", "version", "started_at", "heartbeat_at"], json!({
            "name": {"type": "string"},
            "engine_enabled": {"type": "boolean"},
            "version": {"type": "string"},
            "started_at": {"type": "string", "format": "date-time"},
            "heartbeat_at": {"type": "string", "format": "date-time"},
        })),
        "CreateKey": super::keys::create_key_schema(),
        "ApiKey": super::keys::key_schema(),
        "CreatedApiKey": super::keys::created_key_schema(),
        "ApiKeyList": list_of("ApiKey"),
    });
    if let (Some(all), Value::Object(connect)) = (schemas.as_object_mut(), connect_schemas()) {
        all.extend(connect);
    }
    schemas
}

/// Notes on every `/v1` operation the scope it needs
/// ([`super::auth::required_scope`], the one place that decides it), as
/// `x-required-scope` and in its description.
fn with_required_scopes(mut doc: Value) -> Value {
    let Some(paths) = doc["paths"].as_object_mut() else {
        return doc;
    };
    for (path, item) in paths.iter_mut().filter(|(path, _)| path.starts_with("/v1/")) {
        for method in METHODS {
            let Ok(http_method) = method.to_uppercase().parse::<axum::http::Method>() else {
                continue;
            };
            if let Some(operation) = item.get_mut(method) {
                let scope = super::auth::required_scope(&http_method, path);
                operation["x-required-scope"] = json!(scope.as_str());
                operation["description"] = json!(format!("Needs the `{scope}` scope."));
            }
        }
    }
    doc
}

fn error_responses() -> Value {
    let mut map = Map::new();
    for (code, description) in [
        ("400", "bad request (1600)"),
        ("401", "missing, unknown, expired or revoked API key (1605)"),
        (
            "403",
            "the key lacks the scope this needs, may not do this, or the project is at limits.max_connections_per_project (1606)",
        ),
        ("404", "not found (1603)"),
        ("409", "conflict (1604) or needs_reauth (1610)"),
        ("413", "request body over limits.max_body_bytes (1612)"),
        ("431", "request target and headers over limits.max_header_bytes (1613)"),
        ("429", "rate limited (1607); see `Retry-After`"),
        ("500", "internal error (1601); see the server log for the request_id"),
        ("502", "the provider failed (1611)"),
        (
            "503",
            "unavailable, or not answered within limits.request_timeout (1602); see `Retry-After`",
        ),
    ] {
        map.insert(
            format!("E{code}"),
            json!({"description": description, "content": json_body(schema_ref("Error"))}),
        );
    }
    Value::Object(map)
}

/// The whole document.
/// The connect-session operations (`connect.rs`): two under `/v1`, and
/// the two routes the end user's browser opens, which need no key.
fn connect_paths() -> Value {
    json!({
            "/v1/connect/sessions": {
                "post": op("createConnectSession", "connect", "Start connecting an account: a session whose url the end user's browser opens", vec![],
                    Some((schema_ref("CreateConnectSession"), true)),
                    responses(("201", ok("created", schema_ref("ConnectSession"))), &[])),
            },
            "/v1/connect/sessions/{id}": {
                "get": op("getConnectSession", "connect", "A connect session: its status and outcome (connection or error)",
                    vec![path_param("id", "session id (cs_…)")], None,
                    responses(("200", ok("the session", schema_ref("ConnectSession"))), &["404"])),
            },
            "/connect/{id}": {
                "get": public(op("startConnectSession", "connect", "The end user's browser: redirects to the provider's authorization endpoint (authorization code, PKCE S256)",
                    vec![path_param("id", "session id (cs_…)")], None, browser_responses(&["302", "404", "410", "500"]))),
            },
            "/oauth/callback": {
                "get": public(op("oauthCallback", "connect", "The provider redirects the browser here: the code is exchanged and the connection created or reconnected, then the browser goes to redirect_after or sees a short page",
                    vec![
                        query("state", json!({"type": "string"}), "the session's state"),
                        query("code", json!({"type": "string"}), "the authorization code"),
                        query("error", json!({"type": "string"}), "the provider's error (access_denied, …)"),
                        query("error_description", json!({"type": "string"}), "the provider's description of it"),
                    ], None, browser_responses(&["200", "302", "400", "403", "409", "410", "500", "502"]))),
            },
    })
}

pub fn document() -> Value {
    let id = || path_param("id", "connection id");
    let limit = |max: u32| {
        query(
            "limit",
            json!({"type": "integer", "minimum": 1, "maximum": max}),
            "page size (more than the maximum is refused, 400)",
        )
    };
    let cursor = || {
        query(
            "cursor",
            json!({"type": "string"}),
            "the `next_cursor` of the previous page",
        )
    };
    let project = || {
        query(
            "project",
            json!({"type": "string"}),
            "project (admin key only; a project key sees its own)",
        )
    };
    let no_content = || json!({"description": "deleted"});
    let token_errors = ["404", "409", "429", "502", "503"];
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Thermos API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!(
                "Thermos keeps OAuth tokens fresh: import a connection, then ask for a token valid for as long as you need.\n\n\
                 Authenticate with `Authorization: Bearer <admin key or project key>`. `/health`, `/ready`, `/metrics` and \
                 `/openapi.json` need no key. A project key holds scopes: `read` (metadata), `token` (fetch tokens) and \
                 `admin` (change state); `token` and `admin` imply `read`, `admin` does not imply `token`. Each operation \
                 names the scope it needs (`x-required-scope`); without it the answer is 403 (1606). After \
                 `security.auth_failures_per_minute` failed authentications from one address, requests from it that \
                 present a key get 429 (1607) with `Retry-After` for a minute.\n\n{ERROR_DESCRIPTION}"
            ),
        },
        "security": [{"bearer": []}],
        "tags": [
            {"name": "connections"}, {"name": "apps"}, {"name": "webhooks"}, {"name": "events"},
            {"name": "providers"}, {"name": "keys"}, {"name": "operations"},
            {"name": "runs"}, {"name": "connect"},
        ],
        "paths": {
            "/v1/connections": {
                "post": op("createConnection", "connections", "Import a connection and its tokens", vec![],
                    Some((schema_ref("CreateConnection"), true)),
                    responses(("201", ok("created", schema_ref("Connection"))), &["409"])),
                "get": op("listConnections", "connections", "List connections", vec![
                    project(),
                    query("provider", json!({"type": "string"}), "provider slug"),
                    query("status", json!({"type": "string"}), "connection status"),
                    limit(super::connections::MAX_PAGE), cursor(),
                ], None, responses(("200", ok("a page of connections", schema_ref("ConnectionPage"))), &[])),
            },
            "/v1/connections/{id}": {
                "get": op("getConnection", "connections", "One connection (never a token)", vec![id()], None,
                    responses(("200", ok("the connection", schema_ref("Connection"))), &["404"])),
                "delete": op("deleteConnection", "connections", "Delete a connection, first revoking its grant at the provider (RFC 7009) when the provider has a revocation_url; the delete happens whatever the revocation does",
                    vec![id(), query("revoke", json!({"type": "boolean", "default": true}), "false: delete without revoking at the provider")], None,
                    responses(("204", json!({
                        "description": "deleted; the header says what the revocation did (also in the connection.deleted event)",
                        "headers": {super::connections::REVOCATION_HEADER: {"schema": {"type": "string", "enum": ["revoked", "not_supported", "failed", "skipped"]}}},
                    })), &["404"])),
            },
            "/v1/connections/{id}/tokens": {
                "put": op("replaceTokens", "connections", "Replace the tokens after the user reconnected (status becomes active)",
                    vec![id()], Some((schema_ref("ReplaceTokens"), true)),
                    responses(("200", ok("the connection", schema_ref("Connection"))), &["404", "409"])),
            },
            "/v1/connections/{id}/token": {
                "get": op("getToken", "connections", "A token valid for at least min_ttl seconds", vec![
                    id(),
                    query("min_ttl", json!({"type": "integer", "minimum": 0, "default": 60}),
                        "seconds the token must stay valid (capped at half the token's lifetime)"),
                ], None, responses(("200", ok("a token", schema_ref("Token"))), &token_errors)),
            },
            "/v1/connections/{id}/refresh": {
                "post": op("refreshConnection", "connections", "Refresh now (optionally reporting a rejected token)", vec![id()],
                    Some((schema_ref("RefreshRequest"), false)),
                    responses(("200", ok("a fresh token", schema_ref("Token"))), &token_errors)),
            },
            "/v1/connections/{id}/reset": {
                "post": op("resetConnection", "connections", "Clear failures, set status active, refresh now", vec![id()], None,
                    responses(("200", ok("the connection", schema_ref("Connection"))), &["404"])),
            },
            "/v1/connections/{id}/attempts": {
                "get": op("listAttempts", "connections", "Recent refresh attempts", vec![id(), limit(super::connections::MAX_PAGE)], None,
                    responses(("200", ok("attempts, newest first", schema_ref("AttemptList"))), &["404"])),
            },
            "/v1/apps": {
                "post": op("registerApp", "apps", "Register (or replace) a project's own OAuth client for a provider", vec![],
                    Some((schema_ref("RegisterApp"), true)),
                    {
                        let mut answers = responses(("201", ok("registered", schema_ref("App"))), &["404"]);
                        answers["200"] = ok("replaced the project's client for this provider", schema_ref("App"));
                        answers
                    }),
                "get": op("listApps", "apps", "List a project's OAuth clients", vec![project()], None,
                    responses(("200", ok("the apps", schema_ref("AppList"))), &[])),
            },
            "/v1/apps/{provider}": {
                "delete": op("deleteApp", "apps", "Remove a project's OAuth client for a provider",
                    vec![path_param("provider", "provider slug"), project()], None,
                    responses(("204", no_content()), &["404", "409"])),
            },
            "/v1/webhooks": {
                "post": op("createWebhook", "webhooks", "Register a webhook (signed per Standard Webhooks)", vec![],
                    Some((schema_ref("RegisterWebhook"), true)),
                    responses(("201", ok("registered; the secret is shown only here", schema_ref("CreatedWebhook"))), &[])),
                "get": op("listWebhooks", "webhooks", "List webhooks", vec![project()], None,
                    responses(("200", ok("the webhooks", schema_ref("WebhookList"))), &[])),
            },
            "/v1/webhooks/{id}": {
                "delete": op("deleteWebhook", "webhooks", "Delete a webhook", vec![path_param("id", "webhook id")], None,
                    responses(("204", no_content()), &["404"])),
            },
            "/v1/events": {
                "get": op("listEvents", "events", "Recent events and their deliveries", vec![
                    query("type", json!({"type": "string"}), "event type"),
                    query("connection_id", json!({"type": "string"}), "connection id"),
                    query("delivery_status", json!({"type": "string", "enum": ["pending", "delivered", "failed"]}),
                        "events with a delivery in that state"),
                    project(), limit(super::events::MAX_EVENTS_PAGE), cursor(),
                ], None, responses(("200", ok("a page of events", schema_ref("EventPage"))), &[])),
            },
            "/v1/events/{id}": {
                "get": op("getEvent", "events", "One event with every delivery attempt", vec![path_param("id", "event id")], None,
                    responses(("200", ok("the event", schema_ref("Event"))), &["404"])),
            },
            "/v1/events/{id}/redeliver": {
                "post": op("redeliverEvent", "events", "Queue the event's deliveries again", vec![path_param("id", "event id")], None,
                    responses(("202", ok("queued", schema_ref("Redelivered"))), &["404"])),
            },
            "/v1/runs": {
                "post": op("startRun", "runs", "Start a bulk refresh run over the matching connections", vec![],
                    Some((schema_ref("StartRun"), true)),
                    responses(("202", ok("started; poll GET /v1/runs/{id}", schema_ref("Run"))), &[])),
                "get": op("listRuns", "runs", "Recent runs, newest first", vec![limit(super::runs::MAX_LIST_LIMIT)], None,
                    responses(("200", ok("the runs", schema_ref("RunList"))), &[])),
            },
            "/v1/runs/{id}": {
                "get": op("getRun", "runs", "One run with its counts", vec![path_param("id", "run id")], None,
                    responses(("200", ok("the run", schema_ref("Run"))), &["404"])),
            },
            "/v1/runs/{id}/cancel": {
                "post": op("cancelRun", "runs", "Stop a running run after its current batch", vec![path_param("id", "run id")], None,
                    responses(("202", ok("cancellation requested", schema_ref("Run"))), &["404"])),
            },
            "/v1/keys": {
                "post": op("createKey", "keys", "Create a project API key (shown only in this answer)", vec![],
                    Some((schema_ref("CreateKey"), true)),
                    responses(("201", ok("created; the key is shown only here", schema_ref("CreatedApiKey"))), &[])),
                "get": op("listKeys", "keys", "List API keys by prefix (never a key or its hash), revoked ones too", vec![project()], None,
                    responses(("200", ok("the keys, oldest first", schema_ref("ApiKeyList"))), &[])),
            },
            "/v1/keys/{key_id}": {
                "delete": op("revokeKey", "keys", "Revoke an API key at once (it stays listed as revoked)",
                    vec![path_param("key_id", "thk_<key id> or the bare key id")], None,
                    responses(("204", json!({"description": "revoked"})), &["404"])),
            },
            "/v1/providers": {
                "get": op("listProviders", "providers", "Each provider app's health, breaker, pause and limits", vec![], None,
                    responses(("200", ok("the provider apps", schema_ref("ProviderList"))), &[])),
            },
            "/health": {
                "get": public(op("health", "operations", "Liveness", vec![], None,
                    json!({"200": ok("alive", schema_ref("Status"))}))),
            },
            "/ready": {
                "get": public(op("ready", "operations", "Readiness: the database answers and the engine runs", vec![], None, json!({
                    "200": ok("ready", schema_ref("Status")),
                    "503": ok("not ready, with reasons", schema_ref("Status")),
                }))),
            },
            "/metrics": {
                "get": public(op("metrics", "operations", "Prometheus text exposition (scrape from inside the deployment)", vec![], None, json!({
                    "200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}},
                }))),
            },
            "/openapi.json": {
                "get": public(op("openapi", "operations", "This document", vec![], None, json!({
                    "200": {"description": "the OpenAPI document", "content": {"application/json": {"schema": {"type": "object"}}}},
                }))),
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "admin key or project key"}},
            "schemas": schemas(),
            "responses": error_responses(),
        },
    });
    if let (Some(paths), Value::Object(connect)) = (doc["paths"].as_object_mut(), connect_paths()) {
        paths.extend(connect);
    }
    with_required_scopes(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (METHOD, path) of every `.route(…)` in the router's source.
    fn router_routes() -> Vec<(String, String)> {
        let source = include_str!("mod.rs");
        let nest = source.find(".nest(\"/v1\", v1)").expect("the router nests /v1");
        let mut routes = Vec::new();
        let mut rest = 0;
        while let Some(found) = source[rest..].find(".route(\"") {
            let start = rest + found + ".route(\"".len();
            let end = start + source[start..].find('"').expect("closing quote");
            let path = &source[start..end];
            // The handler expression: up to the parenthesis closing `.route(`.
            let mut depth = 1;
            let mut close = end;
            for (i, c) in source[end..].char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    close = end + i;
                    break;
                }
            }
            let handlers = &source[end..close];
            let prefix = if start < nest { "/v1" } else { "" };
            for method in METHODS {
                let needle = format!("{method}(");
                let mut from = 0;
                while let Some(at) = handlers[from..].find(&needle) {
                    let at = from + at;
                    let before = handlers[..at].chars().next_back().unwrap_or(' ');
                    if !(before.is_alphanumeric() || before == '_') {
                        routes.push((method.to_uppercase(), format!("{prefix}{path}")));
                    }
                    from = at + needle.len();
                }
            }
            rest = close;
        }
        routes.sort();
        routes.dedup();
        routes
    }

    #[test]
    fn every_route_of_the_router_is_documented() {
        let served = router_routes();
        assert!(served.len() >= 20, "parsed too few routes: {served:?}");
        assert!(served.contains(&("GET".into(), "/v1/connections/{id}/token".into())));
        assert!(served.contains(&("GET".into(), "/openapi.json".into())));
        let documented = documented_routes();
        let missing: Vec<_> = served.iter().filter(|r| !documented.contains(r)).collect();
        assert!(
            missing.is_empty(),
            "routes served but not in the OpenAPI document: {missing:?}"
        );
        let extra: Vec<_> = documented.iter().filter(|r| !served.contains(r)).collect();
        assert!(extra.is_empty(), "routes documented but not in the router: {extra:?}");
    }
}
