//! `/v1/keys`: project API keys — create (the key shown once), list, revoke.
//!
//! Every route here needs the `admin` scope (decided in
//! [`super::auth::required_scope`]). The admin key manages every project's
//! keys; a project key with `admin` manages its own project's keys only
//! (another project's key is a 404 to it) and cannot grant a scope it does
//! not hold itself.
//!
//! The key text is in the answer to its creation and nowhere else: listings
//! show the public prefix `thk_<key id>`, never the secret or its hash, and
//! no log line or error carries it.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use thermos_core::id::is_valid_slug;
use thermos_store::{ApiKeyRecord, truncate_to_millis};
use time::OffsetDateTime;

use super::AppState;
use super::auth::{Caller, Identity, Scopes};
use super::dto::DataList;
use super::error::{ApiError, ErrorKind};
use super::extract::{ApiJson, ApiQuery};
use crate::api_key;

/// `POST /v1/keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// The key's project; a project key's own when absent. Required for
    /// the admin key.
    pub project: Option<String>,
    /// `read`, `token`, `admin` (`token` and `admin` imply `read`).
    pub scopes: Vec<String>,
    /// Lifetime such as `90d` or `12h`; the key never expires when absent.
    pub expires_in: Option<String>,
}

/// `GET /v1/keys` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListKeysQuery {
    pub project: Option<String>,
}

/// A key as listed: its public prefix, never the secret or its hash.
#[derive(Debug, Serialize)]
pub struct KeyView {
    /// The public key id.
    pub key_id: String,
    /// `thk_<key_id>`: how the key text starts.
    pub prefix: String,
    pub project: String,
    pub scopes: Vec<String>,
    /// `active`, `expired` or `revoked`.
    pub status: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

impl KeyView {
    /// The view of `record` at `now`.
    pub fn new(record: &ApiKeyRecord, now: OffsetDateTime) -> Self {
        Self {
            key_id: record.key_id.clone(),
            prefix: api_key::display_prefix(&record.key_id),
            project: record.project.clone(),
            scopes: Scopes::from_stored(&record.scopes).names(),
            status: api_key::status(record, now),
            created_at: record.created_at,
            expires_at: record.expires_at,
            revoked_at: record.revoked_at,
        }
    }
}

/// The answer to a creation: the view and, this once, the key.
#[derive(Debug, Serialize)]
pub struct CreatedKeyView {
    #[serde(flatten)]
    pub view: KeyView,
    /// The key text (`thk_<key_id>_<secret>`); never shown again.
    pub key: String,
}

/// `POST /v1/keys`: 201 with the key (shown only here).
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    identity: Identity,
    ApiJson(body): ApiJson<CreateKey>,
) -> Result<(StatusCode, Json<CreatedKeyView>), ApiError> {
    let project = match (&caller, body.project.as_deref()) {
        (Caller::Admin, None) => return Err(ApiError::bad_request("project: required with the admin key")),
        (_, requested) => caller.project_for(requested)?,
    };
    if !is_valid_slug(&project) {
        return Err(ApiError::bad_request(format!(
            "project: {project:?} is not a valid name (1-64 of a-z 0-9 - _ .)"
        )));
    }
    if body.scopes.is_empty() {
        return Err(ApiError::bad_request(
            "scopes: at least one of read, token, admin is required",
        ));
    }
    let scopes = Scopes::parse(&body.scopes).map_err(|e| ApiError::bad_request(format!("scopes: {e}")))?;
    if !identity.scopes.includes(scopes) {
        let missing: Vec<String> = scopes
            .iter()
            .filter(|s| !identity.scopes.contains(*s))
            .map(|s| s.to_string())
            .collect();
        return Err(ApiError::new(
            ErrorKind::Forbidden,
            format!("this key may not grant scopes it does not hold: {}", missing.join(", ")),
        ));
    }
    let now = truncate_to_millis(state.engine.now());
    let expires_at = match body.expires_in.as_deref() {
        None => None,
        Some(text) => {
            let lifetime =
                api_key::parse_lifetime(text).map_err(|e| ApiError::bad_request(format!("expires_in: {e}")))?;
            Some(truncate_to_millis(now + lifetime))
        }
    };
    let created = api_key::create_with(&project, scopes, expires_at, now);
    state.engine.store().insert_api_key(created.record.clone()).await?;
    tracing::info!(
        key_id = %created.record.key_id,
        project = %project,
        scopes = %scopes,
        "api key created"
    );
    Ok((
        StatusCode::CREATED,
        Json(CreatedKeyView {
            view: KeyView::new(&created.record, now),
            key: created.key.expose_secret().to_owned(),
        }),
    ))
}

/// `GET /v1/keys`: every key (revoked and expired ones too), oldest first;
/// a project key sees its own project's keys only.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListKeysQuery>,
) -> Result<Json<DataList<KeyView>>, ApiError> {
    let project = caller.project_filter(query.project)?;
    let records = state.engine.store().list_api_keys(project.as_deref()).await?;
    let now = state.engine.now();
    Ok(Json(DataList {
        data: records.iter().map(|r| KeyView::new(r, now)).collect(),
    }))
}

/// `DELETE /v1/keys/{key_id}` (`thk_<key id>` or the bare id): 204; the key
/// fails at once and stays listed as revoked. 404 when unknown or another
/// project's. Revoking a revoked key again changes nothing.
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(key_ref): Path<String>,
) -> Result<StatusCode, ApiError> {
    let not_found = || ApiError::not_found("API key");
    let key_id = api_key::parse_key_ref(&key_ref).ok_or_else(not_found)?;
    let store = state.engine.store();
    let record = store.find_api_key(key_id).await?.ok_or_else(not_found)?;
    if let Caller::Project(own) = &caller
        && record.project != *own
    {
        return Err(not_found());
    }
    store
        .revoke_api_key(key_id, truncate_to_millis(state.engine.now()))
        .await?
        .ok_or_else(not_found)?;
    tracing::info!(key_id = %key_id, project = %record.project, "api key revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// The OpenAPI schema of [`CreateKey`].
pub fn create_key_schema() -> serde_json::Value {
    serde_json::json!({
        "type": "object", "additionalProperties": false,
        "required": ["scopes"],
        "properties": {
            "project": {"type": ["string", "null"], "pattern": "^[a-z0-9._-]{1,64}$",
                "description": "the key's project; a project key's own when absent; required with the admin key"},
            "scopes": {"type": "array", "minItems": 1, "items": {"type": "string", "enum": ["read", "token", "admin"]},
                "description": "token and admin imply read; a project key may grant only scopes it holds"},
            "expires_in": {"type": ["string", "null"], "description": "lifetime such as 90d or 12h (a minute to ten years); never expires when absent"},
        },
    })
}

/// The OpenAPI schema of [`KeyView`].
pub fn key_schema() -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "required": ["key_id", "prefix", "project", "scopes", "status", "created_at", "expires_at", "revoked_at"],
        "properties": {
            "key_id": {"type": "string"},
            "prefix": {"type": "string", "description": "thk_<key_id>: how the key starts (never the key)"},
            "project": {"type": "string"},
            "scopes": {"type": "array", "items": {"type": "string", "enum": ["read", "token", "admin"]}},
            "status": {"type": "string", "enum": ["active", "expired", "revoked"]},
            "created_at": {"type": "string", "format": "date-time"},
            "expires_at": {"type": ["string", "null"], "format": "date-time"},
            "revoked_at": {"type": ["string", "null"], "format": "date-time"},
        },
    })
}

/// The OpenAPI schema of [`CreatedKeyView`].
pub fn created_key_schema() -> serde_json::Value {
    let mut schema = key_schema();
    schema["properties"]["key"] = serde_json::json!({"type": "string", "description": "the key; shown only here"});
    if let Some(required) = schema["required"].as_array_mut() {
        required.push("key".into());
    }
    schema
}
