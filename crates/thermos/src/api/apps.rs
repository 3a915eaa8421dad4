//! `/v1/apps`: custom apps — a project's own OAuth client for a configured
//! provider. Its connections then refresh with it instead of the configured
//! app.
//!
//! Owns the validation of a registration (shared with `thermos apps create`),
//! its wire formats, sealing the client secret (owner
//! `app/{project}/{provider}`, field `client_secret`) and keeping the
//! engine's [`crate::engine::AppRegistry`] in step with the store — on each
//! change, and at start through [`load_into_registry`]. A client secret is
//! never logged, returned or stored in clear: it arrives as a
//! `SecretString`, is sealed before it reaches the store, and no response
//! carries it.
//!
//! Read next: `engine/apps.rs` (how the engine picks the app of a
//! connection), `thermos-store/src/sqlite/custom_app.rs` (the table).

use anyhow::Context as _;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use thermos_core::id::is_valid_slug;
use thermos_core::oauth::AuthMethod;
use thermos_core::seal::{Field, MasterKey};
use thermos_store::{CustomAppRecord, truncate_to_millis};
use time::OffsetDateTime;

use super::AppState;
use super::auth::Caller;
use super::dto::DataList;
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery};
use crate::engine::Engine;
use crate::provider::ProviderApp;

/// Longest client id accepted.
pub const MAX_CLIENT_ID: usize = 255;
/// Longest client secret accepted (bytes).
pub const MAX_CLIENT_SECRET: usize = 4096;

/// `POST /v1/apps`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterApp {
    pub project: Option<String>,
    pub provider: String,
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    pub auth_method: Option<String>,
}

/// `GET /v1/apps` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListAppsQuery {
    pub project: Option<String>,
}

/// `DELETE /v1/apps/{provider}` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteAppQuery {
    pub project: Option<String>,
}

/// A custom app as shown: never its secret.
#[derive(Debug, Serialize)]
pub struct AppView {
    pub project: String,
    pub provider: String,
    pub client_id: String,
    pub auth_method: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl From<&CustomAppRecord> for AppView {
    fn from(r: &CustomAppRecord) -> Self {
        Self {
            project: r.project.clone(),
            provider: r.provider.clone(),
            client_id: r.client_id.clone(),
            auth_method: r.auth_method.clone(),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// A registration that passed validation: the configured provider app it
/// derives from and the project's own credentials.
#[derive(Debug)]
pub struct Registration {
    pub project: String,
    /// The configured app of the provider.
    pub configured: ProviderApp,
    pub client_id: String,
    /// `None` exactly when `auth_method` is [`AuthMethod::None`].
    pub client_secret: Option<SecretString>,
    pub auth_method: AuthMethod,
}

impl Registration {
    /// Checks a registration for `project` (already authorised), reporting
    /// every problem at once, each naming its field. `configured` is the
    /// configured app of `provider`, if there is one.
    pub fn parse(
        project: String,
        provider: &str,
        configured: Option<&ProviderApp>,
        client_id: String,
        client_secret: Option<SecretString>,
        auth_method: Option<&str>,
    ) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        if !is_valid_slug(&project) {
            problems.push(format!(
                "project: {project:?} is not a valid name (1-64 of a-z 0-9 - _ .)"
            ));
        }
        if configured.is_none() {
            problems.push(format!("provider: {provider:?} is not a configured provider"));
        }
        if client_id.trim().is_empty()
            || client_id.chars().count() > MAX_CLIENT_ID
            || client_id.chars().any(char::is_control)
        {
            problems.push(format!(
                "client_id: must be 1-{MAX_CLIENT_ID} characters, not blank, without control characters"
            ));
        }
        let auth_method = match auth_method {
            None => configured.map(|app| app.auth_method),
            Some(raw) => match AuthMethod::parse(raw) {
                Some(method) => Some(method),
                None => {
                    problems.push(format!(
                        "auth_method: {raw:?} is not one of client_secret_basic, client_secret_post, none"
                    ));
                    None
                }
            },
        };
        match (auth_method, &client_secret) {
            (Some(AuthMethod::None), Some(_)) => {
                problems.push("client_secret: must be absent when auth_method is none".to_owned());
            }
            (Some(AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost), None) => {
                problems.push("client_secret: required unless auth_method is none".to_owned());
            }
            (_, Some(secret)) if secret.expose_secret().is_empty() => {
                problems.push("client_secret: must not be empty".to_owned());
            }
            (_, Some(secret)) if secret.expose_secret().len() > MAX_CLIENT_SECRET => {
                problems.push(format!("client_secret: longer than {MAX_CLIENT_SECRET} bytes"));
            }
            _ => {}
        }
        match (configured, auth_method) {
            (Some(configured), Some(auth_method)) if problems.is_empty() => Ok(Self {
                project,
                configured: configured.clone(),
                client_id,
                client_secret,
                auth_method,
            }),
            _ => Err(problems),
        }
    }

    /// The record to store, the secret sealed, registered at `now`.
    pub fn record(&self, key: &MasterKey, now: OffsetDateTime) -> CustomAppRecord {
        let now = truncate_to_millis(now);
        let provider = self.configured.slug.clone();
        CustomAppRecord {
            client_secret: self
                .client_secret
                .as_ref()
                .map(|secret| key.seal_for(&owner(&self.project, &provider), Field::ClientSecret, secret)),
            project: self.project.clone(),
            provider,
            client_id: self.client_id.clone(),
            auth_method: auth_method_name(self.auth_method).to_owned(),
            created_at: now,
            updated_at: now,
        }
    }

    /// The app the project's connections refresh with.
    pub fn app(&self) -> ProviderApp {
        custom_app(
            &self.configured,
            self.client_id.clone(),
            self.client_secret.clone(),
            self.auth_method,
        )
    }
}

/// The owner a custom app's secret is sealed for: `app/{project}/{provider}`.
pub fn owner(project: &str, provider: &str) -> String {
    format!("app/{project}/{provider}")
}

/// The configuration name of an auth method.
pub fn auth_method_name(method: AuthMethod) -> &'static str {
    match method {
        AuthMethod::ClientSecretBasic => "client_secret_basic",
        AuthMethod::ClientSecretPost => "client_secret_post",
        AuthMethod::None => "none",
    }
}

/// The configured app with the project's credentials in place of its own;
/// everything else (token URL, scopes, limits, …) is the configured one's.
fn custom_app(
    configured: &ProviderApp,
    client_id: String,
    client_secret: Option<SecretString>,
    auth_method: AuthMethod,
) -> ProviderApp {
    ProviderApp {
        client_id,
        client_secret,
        auth_method,
        ..configured.clone()
    }
}

/// The app a stored custom app stands for, its secret opened.
fn app_from_record(key: &MasterKey, configured: &ProviderApp, record: &CustomAppRecord) -> anyhow::Result<ProviderApp> {
    let auth_method = AuthMethod::parse(&record.auth_method)
        .with_context(|| format!("unknown auth_method {:?}", record.auth_method))?;
    let client_secret = record
        .client_secret
        .as_ref()
        .map(|sealed| key.open_for(&owner(&record.project, &record.provider), Field::ClientSecret, sealed))
        .transpose()
        .context("open the client secret")?;
    Ok(custom_app(
        configured,
        record.client_id.clone(),
        client_secret,
        auth_method,
    ))
}

/// Registers every stored custom app in the engine's registry; call once at
/// start, after building the engine. An app whose provider is no longer
/// configured is skipped with a warning. A secret that does not open (another
/// master key, a tampered row) is an error naming the app: refreshing that
/// project's connections with the configured app instead would present
/// their refresh tokens to the wrong client. Returns how many were loaded.
pub async fn load_into_registry(engine: &Engine) -> anyhow::Result<usize> {
    let records = engine
        .store()
        .list_custom_apps(None)
        .await
        .context("read custom apps")?;
    let mut loaded = 0;
    for record in &records {
        let Some(configured) = engine.provider(&record.provider) else {
            tracing::warn!(
                project = %record.project,
                provider = %record.provider,
                "custom app skipped: its provider is no longer configured"
            );
            continue;
        };
        let app = app_from_record(engine.key(), &configured, record)
            .with_context(|| format!("load custom app of project {} for {}", record.project, record.provider))?;
        engine.apps().set_custom(&record.project, app);
        loaded += 1;
    }
    Ok(loaded)
}

/// `POST /v1/apps`: 201 when new, 200 when it replaced the project's app
/// for that provider.
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<RegisterApp>,
) -> Result<(StatusCode, Json<AppView>), ApiError> {
    let project = caller.project_for(body.project.as_deref())?;
    let configured = state.engine.provider(&body.provider);
    let registration = Registration::parse(
        project,
        &body.provider,
        configured.as_deref(),
        body.client_id,
        body.client_secret,
        body.auth_method.as_deref(),
    )
    .map_err(|problems| ApiError::bad_request(problems.join("; ")))?;
    let record = registration.record(state.engine.key(), state.engine.now());
    let registered_at = record.created_at;
    let stored = state.engine.store().upsert_custom_app(record).await?;
    state
        .engine
        .apps()
        .set_custom(&registration.project, registration.app());
    let replaced = stored.created_at < registered_at;
    tracing::info!(
        project = %stored.project,
        provider = %stored.provider,
        client_id = %stored.client_id,
        replaced,
        "custom app registered"
    );
    let status = if replaced { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(AppView::from(&stored))))
}

/// `GET /v1/apps`: a project key sees its own project's apps only.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListAppsQuery>,
) -> Result<Json<DataList<AppView>>, ApiError> {
    let project = caller.project_filter(query.project)?;
    let records = state.engine.store().list_custom_apps(project.as_deref()).await?;
    Ok(Json(DataList {
        data: records.iter().map(AppView::from).collect(),
    }))
}

/// `DELETE /v1/apps/{provider}?project=P`: 204, or 404 when the project has
/// no app for that provider. Its connections refresh with the configured
/// app again.
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(provider): Path<String>,
    ApiQuery(query): ApiQuery<DeleteAppQuery>,
) -> Result<StatusCode, ApiError> {
    let project = caller.project_for(query.project.as_deref())?;
    if !state.engine.store().delete_custom_app(&project, &provider).await? {
        return Err(ApiError::not_found("custom app"));
    }
    state.engine.apps().remove_custom(&project, &provider);
    tracing::info!(project = %project, provider = %provider, "custom app deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn configured(auth_method: AuthMethod) -> ProviderApp {
        ProviderApp {
            slug: "acme".into(),
            token_url: "https://auth.example.com/token".parse().unwrap(),
            authorization_url: None,
            revocation_url: None,
            client_id: "configured".into(),
            client_secret: Some(SecretString::from("configured-secret".to_owned())),
            auth_method,
            scopes: vec!["read".into()],
            scope_separator: ' ',
            extra_params: BTreeMap::new(),
            default_ttl: crate::provider::DEFAULT_TTL,
            max_concurrency: Some(4),
            rate_limit_per_second: None,
            refresh_token_rules: Default::default(),
        }
    }

    fn secret(text: &str) -> Option<SecretString> {
        Some(SecretString::from(text.to_owned()))
    }

    fn parse(
        configured: Option<&ProviderApp>,
        client_id: &str,
        client_secret: Option<SecretString>,
        auth_method: Option<&str>,
    ) -> Result<Registration, Vec<String>> {
        Registration::parse(
            "p1".into(),
            "acme",
            configured,
            client_id.into(),
            client_secret,
            auth_method,
        )
    }

    #[test]
    fn a_registration_defaults_to_the_configured_auth_method_and_keeps_the_rest_of_the_configured_app() {
        let base = configured(AuthMethod::ClientSecretPost);
        let registration = parse(Some(&base), "own", secret("s"), None).unwrap();
        let app = registration.app();
        assert_eq!(app.auth_method, AuthMethod::ClientSecretPost);
        assert_eq!(app.client_id, "own");
        assert_eq!(app.client_secret.unwrap().expose_secret(), "s");
        assert_eq!(
            (app.slug, app.token_url, app.scopes),
            (base.slug, base.token_url, base.scopes)
        );
        assert_eq!(app.max_concurrency, Some(4));
    }

    #[test]
    fn every_problem_is_reported_naming_its_field() {
        let problems = Registration::parse("Bad Project".into(), "nope", None, " ".into(), None, Some("magic"))
            .unwrap_err()
            .join("; ");
        for field in ["project:", "provider:", "client_id:", "auth_method:"] {
            assert!(problems.contains(field), "{field} missing from {problems}");
        }
    }

    #[test]
    fn a_secret_is_required_unless_the_client_is_public_and_refused_when_it_is() {
        let base = configured(AuthMethod::ClientSecretBasic);
        let missing = parse(Some(&base), "own", None, None).unwrap_err();
        assert!(missing[0].starts_with("client_secret:"), "{missing:?}");
        let refused = parse(Some(&base), "own", secret("s"), Some("none")).unwrap_err();
        assert!(refused[0].starts_with("client_secret:"), "{refused:?}");
        let empty = parse(Some(&base), "own", secret(""), None).unwrap_err();
        assert!(empty[0].starts_with("client_secret:"), "{empty:?}");
        let public = parse(Some(&base), "own", None, Some("none")).unwrap();
        assert!(public.app().client_secret.is_none());
    }

    #[test]
    fn a_stored_record_seals_the_secret_for_its_project_and_provider_and_opens_back_into_the_app() {
        let (key, _) = MasterKey::generate();
        let base = configured(AuthMethod::ClientSecretBasic);
        let registration = parse(Some(&base), "own", secret("own/secr+t"), Some("client_secret_post")).unwrap();
        let record = registration.record(&key, OffsetDateTime::now_utc());
        assert_eq!(record.auth_method, "client_secret_post");
        let sealed = record.client_secret.clone().unwrap();
        assert!(!sealed.as_bytes().windows(6).any(|w| w == b"secr+t"));
        assert!(key.open_for("app/p2/acme", Field::ClientSecret, &sealed).is_err());
        let app = app_from_record(&key, &base, &record).unwrap();
        assert_eq!(app.client_secret.unwrap().expose_secret(), "own/secr+t");
        assert_eq!(app.auth_method, AuthMethod::ClientSecretPost);
    }

    #[test]
    fn a_registration_debug_never_shows_the_secret() {
        let base = configured(AuthMethod::ClientSecretBasic);
        let registration = parse(Some(&base), "own", secret("do-not-print-me"), None).unwrap();
        let shown = format!("{registration:?}");
        assert!(!shown.contains("do-not-print-me"), "{shown}");
    }
}
