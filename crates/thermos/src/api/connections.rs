//! `/v1/connections` handlers.

mod delete;
mod grants;

pub use delete::{REVOCATION_HEADER, delete};

pub(crate) use grants::MAX_CLAIM_CHARS;

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use secrecy::ExposeSecret;
use thermos_core::id::{ConnectionId, is_valid_slug};
use thermos_core::plan::{self, Jitter};
use thermos_core::seal::Field;
use thermos_core::status::ConnectionStatus;
use thermos_store::{ConnectionFilter, ConnectionRecord, NewConnection, TokenUpdate};
use time::OffsetDateTime;

use super::AppState;
use super::auth::Caller;
use super::dto::{
    AttemptView, AttemptsQuery, ConnectionPage, ConnectionView, CreateConnection, DataList, ListQuery, RefreshRequest,
    ReplaceTokens, TokenInput, TokenQuery, TokenView,
};
use super::error::{ApiError, ErrorKind};
use super::extract::{ApiJson, ApiQuery, OptionalJson, PathId};
use crate::engine::{Engine, FreshToken, Trigger, events, truncate_ms};
use crate::metrics as m;

/// Default `min_ttl` of `GET …/token`, in seconds.
pub const DEFAULT_MIN_TTL_SECS: u64 = 60;
const DEFAULT_PAGE: u32 = 100;
/// Largest `limit` of a connection or attempt listing; more is refused (400).
pub const MAX_PAGE: u32 = 1000;
pub(crate) const MAX_EXTERNAL_ID: usize = 255;
const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Longest token lifetime accepted at import (10 years).
pub(crate) const MAX_EXPIRES_IN_SECS: i64 = 10 * 365 * 24 * 3600;

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(mut body): ApiJson<CreateConnection>,
) -> Result<(StatusCode, Json<ConnectionView>), ApiError> {
    let project = caller.project_for(body.project.as_deref())?;
    let mut problems = Vec::new();
    if !is_valid_slug(&project) {
        problems.push(format!(
            "project: {project:?} is not a valid name (1-64 of a-z 0-9 - _ .)"
        ));
    }
    let app = state.engine.provider(&body.provider);
    if app.is_none() {
        problems.push(format!("provider: {:?} is not a configured provider", body.provider));
    }
    if body.external_id.trim().is_empty() || body.external_id.chars().count() > MAX_EXTERNAL_ID {
        problems.push(format!("external_id: must be 1-{MAX_EXTERNAL_ID} characters"));
    }
    let metadata = body.metadata.take().unwrap_or_else(|| serde_json::json!({}));
    if !metadata.is_object() {
        problems.push("metadata: must be a JSON object".to_owned());
    } else if metadata.to_string().len() > MAX_METADATA_BYTES {
        problems.push(format!("metadata: larger than {MAX_METADATA_BYTES} bytes"));
    }
    let id = ConnectionId::generate();
    let grant = grants::parse(&state.engine, id, &mut body, app.as_deref(), &mut problems);
    let tokens = body.tokens();
    let keep_alive = app.as_ref().and_then(|a| a.refresh_token_rules.keep_alive);
    let default_ttl = app.map(|a| a.default_ttl).unwrap_or(crate::provider::DEFAULT_TTL);
    let now = truncate_ms(state.engine.now());
    let sealed = match &tokens {
        Some(tokens) => {
            let lifetime = token_lifetime(tokens, now, default_ttl, &mut problems);
            lifetime.map(|(issued_at, expires_at)| {
                seal_tokens(&state.engine, id, tokens, (issued_at, expires_at), keep_alive)
            })
        }
        // A machine grant without a token: an expired placeholder, due now;
        // the first token is issued below, before answering.
        None => Some(grants::placeholder(&state.engine, id, body.scope.clone(), now)),
    };
    let (Some(sealed), Some(grant)) = (sealed, grant) else {
        return Err(ApiError::bad_request(problems.join("; ")));
    };
    if !problems.is_empty() {
        return Err(ApiError::bad_request(problems.join("; ")));
    }
    let issue_now = tokens.is_none();
    let new = NewConnection {
        id,
        project,
        provider: body.provider,
        external_id: body.external_id,
        access_token: sealed.access_token,
        refresh_token: grant.private_key.or(sealed.refresh_token),
        token_type: sealed.token_type,
        scope: sealed.scope,
        issued_at: sealed.issued_at,
        expires_at: sealed.expires_at,
        metadata,
        next_refresh_at: sealed.next_refresh_at,
        grant: grant.stored,
        refresh_token_expires_at: sealed.refresh_token_expires_at,
    };
    let subject = events::Subject {
        id,
        project: &new.project,
        provider: &new.provider,
        external_id: &new.external_id,
    };
    let created = events::subject_event("connection.created", &subject, serde_json::json!({}), now);
    let record = match state.limits.max_connections_per_project {
        None => state.engine.store().insert_connection(new, now, vec![created]).await?,
        Some(max) => {
            let _counting = state.import_lock.lock().await;
            let held = state.engine.store().count_project_connections(&new.project).await?;
            if held >= u64::from(max) {
                return Err(ApiError::new(
                    ErrorKind::Forbidden,
                    format!(
                        "project {:?} holds {held} connections, the maximum (limits.max_connections_per_project = {max}); delete some or raise the limit",
                        new.project
                    ),
                ));
            }
            state.engine.store().insert_connection(new, now, vec![created]).await?
        }
    };
    state.engine.events_committed();
    tracing::info!(connection_id = %record.id, provider = %record.provider, grant_type = %record.grant.grant_type, "connection imported");
    if !issue_now {
        state.engine.wake();
        return Ok((StatusCode::CREATED, Json(ConnectionView::from(&record))));
    }
    // The outcome is on the connection (status, last_error): a failed
    // first issue leaves it created and retried like any failed refresh.
    let _ = state.engine.refresh_now(id, Trigger::OnDemand).await;
    let record = visible(&state, &caller, id).await?;
    Ok((StatusCode::CREATED, Json(ConnectionView::from(&record))))
}

pub async fn replace_tokens(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    ApiJson(body): ApiJson<ReplaceTokens>,
) -> Result<Json<ConnectionView>, ApiError> {
    let record = visible(&state, &caller, id).await?;
    if record.grant.grant_type.is_machine() {
        return Err(ApiError::bad_request(format!(
            "a {} connection's tokens are issued by Thermos, not replaced; reset it to issue a new one, or delete and create it again to change its credentials",
            record.grant.grant_type
        )));
    }
    let tokens = TokenInput::from(body);
    let app = state.engine.provider(&record.provider);
    let keep_alive = app.as_ref().and_then(|a| a.refresh_token_rules.keep_alive);
    let default_ttl = app.map(|a| a.default_ttl).unwrap_or(crate::provider::DEFAULT_TTL);
    let now = truncate_ms(state.engine.now());
    let mut problems = Vec::new();
    let lifetime = token_lifetime(&tokens, now, default_ttl, &mut problems);
    let Some((issued_at, expires_at)) = lifetime.filter(|_| problems.is_empty()) else {
        return Err(ApiError::bad_request(problems.join("; ")));
    };
    let update = seal_tokens(&state.engine, id, &tokens, (issued_at, expires_at), keep_alive);
    let saved = state
        .engine
        .store()
        .replace_tokens(
            id,
            update,
            now,
            vec![events::connection_event(
                "connection.reconnected",
                &record,
                serde_json::json!({"previous_status": record.status.as_str()}),
                now,
            )],
        )
        .await?
        .ok_or_else(|| ApiError::not_found("connection"))?;
    tracing::info!(connection_id = %id, provider = %saved.provider, "tokens replaced");
    state.engine.wake();
    state.engine.events_committed();
    Ok(Json(ConnectionView::from(&saved)))
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<ConnectionPage>, ApiError> {
    let status = match query.status.as_deref() {
        None => None,
        Some(raw) => Some(
            ConnectionStatus::parse(raw)
                .ok_or_else(|| ApiError::bad_request(format!("status: unknown status {raw:?}")))?,
        ),
    };
    let after = match query.cursor.as_deref() {
        None | Some("") => None,
        Some(raw) => Some(ConnectionId::parse(raw).map_err(|_| ApiError::bad_request("cursor: not a valid cursor"))?),
    };
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(format!("limit: must be 1-{MAX_PAGE}")));
    }
    let filter = ConnectionFilter {
        project: caller.project_filter(query.project)?,
        provider: query.provider,
        status,
    };
    let records = state.engine.store().list_connections(&filter, after, limit).await?;
    let next_cursor = (records.len() as u32 == limit)
        .then(|| records.last().map(|r| r.id.to_string()))
        .flatten();
    Ok(Json(ConnectionPage {
        data: records.iter().map(ConnectionView::from).collect(),
        next_cursor,
    }))
}

pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<Json<ConnectionView>, ApiError> {
    let record = visible(&state, &caller, id).await?;
    Ok(Json(ConnectionView::from(&record)))
}

pub async fn token(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    ApiQuery(query): ApiQuery<TokenQuery>,
) -> Result<Json<TokenView>, ApiError> {
    let record = visible(&state, &caller, id).await?;
    let min_ttl = Duration::from_secs(query.min_ttl.unwrap_or(DEFAULT_MIN_TTL_SECS));
    let provider = record.provider.clone();
    let token = state.engine.fresh_token(record, min_ttl).await?;
    hand_out(&state.engine, &provider, token)
}

pub async fn refresh(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    OptionalJson(body): OptionalJson<RefreshRequest>,
) -> Result<Json<TokenView>, ApiError> {
    let record = visible(&state, &caller, id).await?;
    let rejected = body.and_then(|b| b.rejected_token);
    let provider = record.provider.clone();
    let token = state
        .engine
        .replace_rejected(record, rejected.as_ref().map(|t| t.expose_secret()))
        .await?;
    hand_out(&state.engine, &provider, token)
}

pub async fn reset(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<Json<ConnectionView>, ApiError> {
    visible(&state, &caller, id).await?;
    state.engine.check_forced(id)?;
    let now = truncate_ms(state.engine.now());
    state
        .engine
        .store()
        .reset_connection(id, now)
        .await?
        .ok_or_else(|| ApiError::not_found("connection"))?;
    tracing::info!(connection_id = %id, "connection reset");
    // The outcome is on the connection (status, last_error); a failed refresh is not an API error here.
    let _ = state.engine.refresh_now(id, Trigger::Reset).await;
    let record = visible(&state, &caller, id).await?;
    Ok(Json(ConnectionView::from(&record)))
}

pub async fn attempts(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    ApiQuery(query): ApiQuery<AttemptsQuery>,
) -> Result<Json<DataList<AttemptView>>, ApiError> {
    visible(&state, &caller, id).await?;
    let limit = query.limit.unwrap_or(thermos_store::ATTEMPTS_KEPT_PER_CONNECTION);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(format!("limit: must be 1-{MAX_PAGE}")));
    }
    let attempts = state.engine.store().list_attempts(id, limit).await?;
    Ok(Json(DataList {
        data: attempts.iter().map(AttemptView::from).collect(),
    }))
}

/// The connection if the caller may see it; another project's is a 404.
async fn visible(state: &AppState, caller: &Caller, id: ConnectionId) -> Result<ConnectionRecord, ApiError> {
    match state.engine.store().get_connection(id).await? {
        Some(record) if caller.may_see(&record) => Ok(record),
        _ => Err(ApiError::not_found("connection")),
    }
}

/// Builds the token body; refuses (and never sends) an expired token.
fn hand_out(engine: &Engine, provider: &str, token: FreshToken) -> Result<Json<TokenView>, ApiError> {
    let now = engine.now();
    let expires_in = (token.expires_at - now).whole_seconds();
    if token.expires_at <= now {
        // Counts the refusals: the alert on this counter means the engine tried to hand one out.
        metrics::counter!(m::TOKENS_SERVED_EXPIRED_TOTAL).increment(1);
        tracing::error!("refusing to hand out an expired token");
        return Err(ApiError::new(
            ErrorKind::Unavailable,
            "the token expired and could not be refreshed yet",
        ));
    }
    metrics::counter!(m::TOKENS_SERVED_TOTAL, m::LABEL_PROVIDER => provider.to_owned()).increment(1);
    Ok(Json(TokenView {
        access_token: token.access_token.expose_secret().to_owned(),
        token_type: token.token_type,
        expires_at: token.expires_at,
        expires_in,
        scope: token.scope,
    }))
}

/// (issued_at, expires_at) of tokens handed in, or a problem noted.
fn token_lifetime(
    tokens: &TokenInput,
    now: OffsetDateTime,
    default_ttl: Duration,
    problems: &mut Vec<String>,
) -> Option<(OffsetDateTime, OffsetDateTime)> {
    if tokens.access_token.expose_secret().is_empty() {
        problems.push("access_token: must not be empty".to_owned());
    }
    if tokens
        .refresh_token
        .as_ref()
        .is_some_and(|t| t.expose_secret().is_empty())
    {
        problems.push("refresh_token: must not be empty when given".to_owned());
    }
    let expires_at = match (tokens.expires_in, tokens.expires_at) {
        (Some(_), Some(_)) => {
            problems.push("expires_in, expires_at: give one of them, not both".to_owned());
            return None;
        }
        (Some(secs), None) if !(1..=MAX_EXPIRES_IN_SECS).contains(&secs) => {
            problems.push(format!("expires_in: must be 1-{MAX_EXPIRES_IN_SECS} seconds"));
            return None;
        }
        (Some(secs), None) => now + Duration::from_secs(secs as u64),
        (None, Some(at)) => truncate_ms(at.to_offset(time::UtcOffset::UTC)),
        (None, None) => now + default_ttl,
    };
    let rt_given = tokens.refresh_token_expires_in.is_some() || tokens.refresh_token_expires_at.is_some();
    if tokens.refresh_token_expires_in.is_some() && tokens.refresh_token_expires_at.is_some() {
        problems.push("refresh_token_expires_in, refresh_token_expires_at: give one of them, not both".to_owned());
        return None;
    }
    if rt_given && tokens.refresh_token.is_none() {
        problems.push("refresh_token_expires_in, refresh_token_expires_at: given without a refresh_token".to_owned());
        return None;
    }
    if let Some(secs) = tokens.refresh_token_expires_in
        && !(1..=MAX_EXPIRES_IN_SECS).contains(&secs)
    {
        problems.push(format!(
            "refresh_token_expires_in: must be 1-{MAX_EXPIRES_IN_SECS} seconds"
        ));
        return None;
    }
    Some((now, expires_at))
}

/// When a refresh token handed in dies (checked by [`token_lifetime`]).
fn refresh_token_expiry(tokens: &TokenInput, now: OffsetDateTime) -> Option<OffsetDateTime> {
    match (tokens.refresh_token_expires_in, tokens.refresh_token_expires_at) {
        (Some(secs), _) => Some(now + Duration::from_secs(secs.unsigned_abs())),
        (None, Some(at)) => Some(truncate_ms(at.to_offset(time::UtcOffset::UTC))),
        (None, None) => None,
    }
}

/// Seals tokens handed in for connection `id` and plans their refresh.
fn seal_tokens(
    engine: &Engine,
    id: ConnectionId,
    tokens: &TokenInput,
    (issued_at, expires_at): (OffsetDateTime, OffsetDateTime),
    keep_alive: Option<Duration>,
) -> TokenUpdate {
    let key = engine.key();
    let refresh_token_expires_at = refresh_token_expiry(tokens, issued_at);
    TokenUpdate {
        access_token: key.seal(&id, Field::AccessToken, &tokens.access_token),
        refresh_token: tokens
            .refresh_token
            .as_ref()
            .map(|t| key.seal(&id, Field::RefreshToken, t)),
        token_type: tokens.token_type.clone().unwrap_or_else(|| "Bearer".to_owned()),
        scope: tokens.scope.clone(),
        issued_at,
        expires_at,
        next_refresh_at: truncate_ms(plan::plan_refresh(
            issued_at,
            expires_at,
            engine.settings().policy.margin,
            Jitter::random(),
            keep_alive,
            refresh_token_expires_at,
        )),
        refresh_token_expires_at,
    }
}
