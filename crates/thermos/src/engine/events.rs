//! Which events a state change produces. Pure functions: the engine and the
//! API pass their results to the store transition that makes the change, so
//! an event commits with its change or not at all.
//!
//! Payloads carry codes, messages and counts — never a token or a secret.

use serde_json::{Value, json};
use thermos_store::ConnectionRecord;
use thermos_store::outbox::NewEvent;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Consecutive failures after which `connection.failing` escalates, by default.
pub const DEFAULT_ESCALATE_AFTER: u32 = 3;

/// A new event id: `evt_` + UUIDv7 (time-ordered).
pub fn new_event_id() -> String {
    format!("evt_{}", uuid::Uuid::now_v7().simple())
}

/// An event about one connection.
pub fn connection_event(kind: &str, record: &ConnectionRecord, data: Value, at: OffsetDateTime) -> NewEvent {
    let subject = Subject {
        id: record.id,
        project: &record.project,
        provider: &record.provider,
        external_id: &record.external_id,
    };
    subject_event(kind, &subject, data, at)
}

/// What a connection event is about, when there is no record yet (an import).
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub id: thermos_core::id::ConnectionId,
    pub project: &'a str,
    pub provider: &'a str,
    pub external_id: &'a str,
}

/// An event about the connection described by `subject`.
pub fn subject_event(kind: &str, subject: &Subject<'_>, data: Value, at: OffsetDateTime) -> NewEvent {
    let mut data = data;
    if let Value::Object(map) = &mut data {
        map.insert("connection_id".into(), json!(subject.id.to_string()));
        map.insert("external_id".into(), json!(subject.external_id));
        map.insert("provider".into(), json!(subject.provider));
    }
    NewEvent {
        id: new_event_id(),
        kind: kind.to_owned(),
        project: Some(subject.project.to_owned()),
        connection_id: Some(subject.id),
        provider: Some(subject.provider.to_owned()),
        data,
        at,
    }
}

/// An event about a provider app (no project: it reaches operators).
pub fn provider_event(kind: &str, provider: &str, client_id: &str, data: Value, at: OffsetDateTime) -> NewEvent {
    let mut data = data;
    if let Value::Object(map) = &mut data {
        map.insert("provider".into(), json!(provider));
        map.insert("client_id".into(), json!(client_id));
    }
    NewEvent {
        id: new_event_id(),
        kind: kind.to_owned(),
        project: None,
        connection_id: None,
        provider: Some(provider.to_owned()),
        data,
        at,
    }
}

/// What a failed refresh did to a connection.
#[derive(Debug, Clone)]
pub struct FailureFacts<'a> {
    pub code: &'a str,
    pub message: &'a str,
    pub http_status: Option<u16>,
    /// Consecutive failures including this one.
    pub failures: u32,
    pub needs_reauth: bool,
    pub entered_recovery: bool,
    /// The grant died after a response was lost in transit.
    pub lost_response: bool,
    pub next_attempt_at: Option<OffsetDateTime>,
}

/// Events of a failed refresh: the first failure, the escalation, entering
/// active recovery, or the grant's death.
pub fn after_failure(
    record: &ConnectionRecord,
    facts: &FailureFacts<'_>,
    escalate_after: u32,
    at: OffsetDateTime,
) -> Vec<NewEvent> {
    let error = json!({"code": facts.code, "message": facts.message, "http_status": facts.http_status});
    let next = facts.next_attempt_at.and_then(|t| t.format(&Rfc3339).ok());
    let mut events = Vec::new();
    if facts.needs_reauth {
        events.push(connection_event(
            "connection.needs_reauth",
            record,
            json!({"error": error, "lost_response": facts.lost_response}),
            at,
        ));
        return events;
    }
    if facts.failures == 1 {
        events.push(connection_event(
            "connection.refresh_failed",
            record,
            json!({"error": error, "consecutive_failures": 1, "next_attempt_at": next}),
            at,
        ));
    }
    if facts.failures == escalate_after.max(1) && facts.failures > 1 {
        events.push(connection_event(
            "connection.failing",
            record,
            json!({"error": error, "consecutive_failures": facts.failures, "next_attempt_at": next}),
            at,
        ));
    }
    if facts.entered_recovery {
        events.push(connection_event(
            "connection.recovering",
            record,
            json!({"error": error, "consecutive_failures": facts.failures, "next_attempt_at": next}),
            at,
        ));
    }
    events
}

/// Events of a successful refresh: `connection.recovered` after failures.
pub fn after_success(record: &ConnectionRecord, at: OffsetDateTime) -> Vec<NewEvent> {
    if record.consecutive_failures == 0 {
        return Vec::new();
    }
    vec![connection_event(
        "connection.recovered",
        record,
        json!({"after_failures": record.consecutive_failures}),
        at,
    )]
}

/// `connection.deleted`: the connection and its attempts are gone;
/// `revocation` is what happened at the provider (RFC 7009) — an object
/// with `revocation` (`revoked` | `not_supported` | `failed` | `skipped`)
/// and its details (docs/revocation.md), merged into the data.
pub fn connection_deleted(record: &ConnectionRecord, revocation: Value, at: OffsetDateTime) -> NewEvent {
    let mut data = json!({"status": record.status.as_str(), "grant_type": record.grant.grant_type.as_str()});
    if let (Value::Object(map), Value::Object(extra)) = (&mut data, revocation) {
        map.extend(extra);
    }
    connection_event("connection.deleted", record, data, at)
}

/// `connection.refresh_token_expiring`: the refresh token dies at
/// `record.refresh_token_expires_at` (`None` when it has no known expiry:
/// then no event). `expires_in_seconds` is what is left at `at` (0 once it
/// has passed, with `expired`).
pub fn refresh_token_expiring(record: &ConnectionRecord, at: OffsetDateTime) -> Option<NewEvent> {
    let expires_at = record.refresh_token_expires_at?;
    let left = (expires_at - at).whole_seconds().max(0);
    let data = json!({
        "refresh_token_expires_at": expires_at.format(&Rfc3339).ok(),
        "expires_in_seconds": left,
        "expired": expires_at <= at,
        "status": record.status.as_str(),
    });
    Some(connection_event("connection.refresh_token_expiring", record, data, at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use thermos_core::id::ConnectionId;
    use thermos_core::seal::Sealed;
    use thermos_core::status::ConnectionStatus;

    fn record(failures: u32) -> ConnectionRecord {
        let t = OffsetDateTime::UNIX_EPOCH;
        ConnectionRecord {
            id: ConnectionId::generate(),
            project: "p".into(),
            provider: "slack".into(),
            external_id: "u1".into(),
            access_token: Sealed::from_bytes(vec![1]),
            refresh_token: None,
            token_type: "Bearer".into(),
            scope: None,
            issued_at: t,
            expires_at: t,
            metadata: json!({}),
            status: ConnectionStatus::Active,
            next_refresh_at: None,
            last_refreshed_at: None,
            refresh_count: 0,
            consecutive_failures: failures,
            last_error: None,
            version: 1,
            lease_owner: None,
            lease_until: None,
            created_at: t,
            updated_at: t,
            grant: Default::default(),
            refresh_token_expires_at: None,
            refresh_token_warned_at: None,
        }
    }

    fn facts(failures: u32) -> FailureFacts<'static> {
        FailureFacts {
            code: "server_error",
            message: "503",
            http_status: Some(503),
            failures,
            needs_reauth: false,
            entered_recovery: false,
            lost_response: false,
            next_attempt_at: None,
        }
    }

    fn kinds(events: &[NewEvent]) -> Vec<&str> {
        events.iter().map(|e| e.kind.as_str()).collect()
    }

    #[test]
    fn the_first_failure_and_the_escalation_each_produce_one_event() {
        let r = record(0);
        let at = OffsetDateTime::UNIX_EPOCH;
        assert_eq!(
            kinds(&after_failure(&r, &facts(1), 3, at)),
            ["connection.refresh_failed"]
        );
        assert!(after_failure(&r, &facts(2), 3, at).is_empty());
        assert_eq!(kinds(&after_failure(&r, &facts(3), 3, at)), ["connection.failing"]);
        assert!(after_failure(&r, &facts(4), 3, at).is_empty());
        let recovery = FailureFacts {
            entered_recovery: true,
            ..facts(6)
        };
        assert_eq!(kinds(&after_failure(&r, &recovery, 3, at)), ["connection.recovering"]);
    }

    #[test]
    fn a_dead_grant_produces_needs_reauth_only_saying_whether_a_response_was_lost() {
        let r = record(0);
        let dead = FailureFacts {
            needs_reauth: true,
            lost_response: true,
            ..facts(1)
        };
        let events = after_failure(&r, &dead, 3, OffsetDateTime::UNIX_EPOCH);
        assert_eq!(kinds(&events), ["connection.needs_reauth"]);
        assert_eq!(events[0].data["lost_response"], true);
        assert_eq!(events[0].project.as_deref(), Some("p"));
    }

    #[test]
    fn a_refresh_token_warning_says_when_it_expires_and_how_long_is_left() {
        let at = OffsetDateTime::UNIX_EPOCH + time::Duration::days(10);
        assert!(refresh_token_expiring(&record(0), at).is_none());
        let expiring = ConnectionRecord {
            refresh_token_expires_at: Some(at + time::Duration::days(2)),
            ..record(0)
        };
        let event = refresh_token_expiring(&expiring, at).expect("an event");
        assert_eq!(event.kind, "connection.refresh_token_expiring");
        assert_eq!(event.data["expires_in_seconds"], 2 * 86_400);
        assert_eq!(event.data["expired"], false);
        assert_eq!(event.data["refresh_token_expires_at"], "1970-01-13T00:00:00Z");
        assert_eq!(event.data["provider"], "slack");
        assert_eq!(event.project.as_deref(), Some("p"));
        let expired = refresh_token_expiring(&expiring, at + time::Duration::days(3)).expect("an event");
        assert_eq!(expired.data["expires_in_seconds"], 0);
        assert_eq!(expired.data["expired"], true);
    }

    #[test]
    fn a_success_after_failures_is_a_recovery_and_a_plain_success_is_nothing() {
        let at = OffsetDateTime::UNIX_EPOCH;
        assert!(after_success(&record(0), at).is_empty());
        assert_eq!(kinds(&after_success(&record(4), at)), ["connection.recovered"]);
    }
}
