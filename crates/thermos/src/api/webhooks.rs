//! `/v1/webhooks`: a project's webhook endpoints — register, list, delete.
//!
//! Owns the validation of a registration (shared with `thermos webhooks
//! create`): the URL ([`crate::outbox::target`]), the event types
//! ([`crate::outbox::EVENT_TYPES`]) and the project; and minting the
//! `whsec_` secret, sealed (owner `webhook/{id}`, field `client_secret`)
//! before it reaches the store. The secret is shown once, in the answer to
//! the registration, and never again: listings, logs and errors never
//! carry it.
//!
//! Read next: `outbox/dispatch.rs` (how deliveries are sent).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use thermos_core::id::is_valid_slug;
use thermos_core::seal::{Field, MasterKey};
use thermos_store::outbox::WebhookRecord;
use thermos_store::truncate_to_millis;
use time::OffsetDateTime;
use url::Url;

use super::AppState;
use super::auth::Caller;
use super::dto::DataList;
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery};
use crate::egress::EgressPolicy;
use crate::outbox::dispatch::secret_owner;
use crate::outbox::target::{check_resolved, validate_target};
use crate::outbox::{EVENT_TYPES, is_event_type, sign};

/// `POST /v1/webhooks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterWebhook {
    pub project: Option<String>,
    pub url: String,
    /// Event types wanted; every type when absent.
    pub events: Option<Vec<String>>,
}

/// `GET /v1/webhooks` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListWebhooksQuery {
    pub project: Option<String>,
}

/// A webhook as listed: never its secret. `events` is `null` when it
/// receives every type.
#[derive(Debug, Serialize)]
pub struct WebhookView {
    pub id: String,
    pub project: String,
    pub url: String,
    pub events: Option<Vec<String>>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl From<&WebhookRecord> for WebhookView {
    fn from(r: &WebhookRecord) -> Self {
        Self {
            id: r.id.clone(),
            project: r.project.clone(),
            url: r.url.clone(),
            events: r.events.clone(),
            created_at: r.created_at,
        }
    }
}

/// The answer to a registration: the webhook and, this once, its secret.
/// No Debug: it holds the secret in clear.
#[derive(Serialize)]
pub struct CreatedWebhookView {
    #[serde(flatten)]
    pub webhook: WebhookView,
    /// `whsec_…`: verify the `webhook-signature` header with it.
    pub secret: String,
}

/// A registration that passed validation.
#[derive(Debug, Clone)]
pub struct WebhookRegistration {
    pub project: String,
    pub url: Url,
    /// `None` = every type.
    pub events: Option<Vec<String>>,
}

impl WebhookRegistration {
    /// Checks a registration for `project` (already authorised), reporting
    /// every problem at once, each naming its field.
    pub fn parse(
        project: String,
        url: &str,
        events: Option<Vec<String>>,
        allow_private_targets: bool,
    ) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        if !is_valid_slug(&project) {
            problems.push(format!(
                "project: {project:?} is not a valid name (1-64 of a-z 0-9 - _ .)"
            ));
        }
        let url = validate_target(url, allow_private_targets)
            .map_err(|reason| problems.push(format!("url: {reason}")))
            .ok();
        let events = match events {
            None => None,
            Some(list) if list.is_empty() => {
                problems.push("events: must not be empty (leave it out to receive every type)".to_owned());
                None
            }
            Some(list) => {
                let unknown: Vec<&str> = list
                    .iter()
                    .map(String::as_str)
                    .filter(|kind| !is_event_type(kind))
                    .collect();
                if !unknown.is_empty() {
                    problems.push(format!(
                        "events: unknown event types {} (known: {})",
                        unknown.join(", "),
                        EVENT_TYPES.join(", ")
                    ));
                }
                let mut list = list;
                list.sort();
                list.dedup();
                Some(list)
            }
        };
        match url {
            Some(url) if problems.is_empty() => Ok(Self { project, url, events }),
            _ => Err(problems),
        }
    }

    /// The registration-time SSRF check of the URL's host name: refused
    /// when it resolves to an address the guard blocks (the message names
    /// the field). Literal addresses were checked by [`Self::parse`].
    pub async fn check_resolved(&self, policy: &EgressPolicy) -> Result<(), String> {
        check_resolved(&self.url, policy)
            .await
            .map_err(|reason| format!("url: {reason}"))
    }

    /// The record to store, with a new id and secret, registered at `now`;
    /// the secret is returned in clear this once.
    pub fn record(&self, key: &MasterKey, now: OffsetDateTime) -> (WebhookRecord, SecretString) {
        let id = format!("wh_{}", uuid::Uuid::now_v7().simple());
        let secret = sign::new_secret();
        let record = WebhookRecord {
            secret: key.seal_for(&secret_owner(&id), Field::ClientSecret, &secret),
            id,
            project: self.project.clone(),
            url: self.url.to_string(),
            events: self.events.clone(),
            created_at: truncate_to_millis(now),
        };
        (record, secret)
    }
}

/// `POST /v1/webhooks`: 201 with the secret (shown only here).
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<RegisterWebhook>,
) -> Result<(StatusCode, Json<CreatedWebhookView>), ApiError> {
    let project = caller.project_for(body.project.as_deref())?;
    let registration = WebhookRegistration::parse(project, &body.url, body.events, state.allow_private_targets)
        .map_err(|problems| ApiError::bad_request(problems.join("; ")))?;
    registration
        .check_resolved(&state.egress)
        .await
        .map_err(ApiError::bad_request)?;
    let (record, secret) = registration.record(state.engine.key(), state.engine.now());
    state.engine.store().insert_webhook(record.clone()).await?;
    tracing::info!(webhook_id = %record.id, project = %record.project, "webhook registered");
    Ok((
        StatusCode::CREATED,
        Json(CreatedWebhookView {
            webhook: WebhookView::from(&record),
            secret: secret.expose_secret().to_owned(),
        }),
    ))
}

/// `GET /v1/webhooks`: a project key sees its own project's webhooks only.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListWebhooksQuery>,
) -> Result<Json<DataList<WebhookView>>, ApiError> {
    let project = caller.project_filter(query.project)?;
    let records = state.engine.store().list_webhooks(project.as_deref()).await?;
    Ok(Json(DataList {
        data: records.iter().map(WebhookView::from).collect(),
    }))
}

/// `DELETE /v1/webhooks/{id}`: 204, or 404 when unknown or another
/// project's. Its pending deliveries fail ("webhook deleted").
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let store = state.engine.store();
    let visible = match (store.get_webhook(&id).await?, &caller) {
        (None, _) => false,
        (Some(_), Caller::Admin) => true,
        (Some(webhook), Caller::Project(own)) => webhook.project == *own,
    };
    if !visible || !store.delete_webhook(&id, state.engine.now()).await? {
        return Err(ApiError::not_found("webhook"));
    }
    tracing::info!(webhook_id = %id, "webhook deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str, events: Option<Vec<&str>>) -> Result<WebhookRegistration, Vec<String>> {
        WebhookRegistration::parse(
            "p1".into(),
            url,
            events.map(|e| e.into_iter().map(str::to_owned).collect()),
            false,
        )
    }

    #[test]
    fn a_registration_keeps_the_url_and_the_sorted_distinct_event_types() {
        let registration = parse(
            "https://hooks.example.com/t",
            Some(vec!["run.failed", "connection.created", "run.failed"]),
        )
        .unwrap();
        assert_eq!(registration.url.as_str(), "https://hooks.example.com/t");
        assert_eq!(registration.events.unwrap(), ["connection.created", "run.failed"]);
        assert!(parse("https://hooks.example.com/t", None).unwrap().events.is_none());
    }

    #[test]
    fn every_problem_is_reported_naming_its_field_and_the_unknown_types() {
        let problems = WebhookRegistration::parse(
            "Bad Project".into(),
            "http://example.com/hook",
            Some(vec![
                "connection.created".into(),
                "connection.exploded".into(),
                "nope".into(),
            ]),
            true,
        )
        .unwrap_err()
        .join("; ");
        for expected in [
            "project:",
            "url:",
            "events: unknown event types connection.exploded, nope",
        ] {
            assert!(problems.contains(expected), "{expected} missing from {problems}");
        }
        let empty = parse("https://hooks.example.com/t", Some(vec![])).unwrap_err();
        assert!(empty[0].starts_with("events:"), "{empty:?}");
    }

    #[test]
    fn the_stored_record_seals_a_fresh_secret_for_the_webhook() {
        let (key, _) = MasterKey::generate();
        let registration = parse("https://hooks.example.com/t", None).unwrap();
        let (record, secret) = registration.record(&key, OffsetDateTime::now_utc());
        assert!(record.id.starts_with("wh_"));
        assert!(secret.expose_secret().starts_with("whsec_"));
        let opened = key
            .open_for(&format!("webhook/{}", record.id), Field::ClientSecret, &record.secret)
            .unwrap();
        assert_eq!(opened.expose_secret(), secret.expose_secret());
        assert!(
            key.open_for("webhook/wh_other", Field::ClientSecret, &record.secret)
                .is_err()
        );
        let (other, other_secret) = registration.record(&key, OffsetDateTime::now_utc());
        assert_ne!(other.id, record.id);
        assert_ne!(other_secret.expose_secret(), secret.expose_secret());
    }
}
