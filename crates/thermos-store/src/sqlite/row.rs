//! Conversions between SQLite rows and the store's records.
//!
//! Owns the column list of `connections`, the millisecond encoding of
//! timestamps and the reading of every row into a record. A value this
//! version cannot read (bad id, unknown status, out-of-range number, broken
//! JSON) becomes [`StoreError::Corrupt`]; this module never panics on data.

use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use thermos_core::grant::GrantType;
use thermos_core::id::ConnectionId;
use thermos_core::seal::Sealed;
use thermos_core::status::ConnectionStatus;
use time::OffsetDateTime;

use crate::{AttemptRecord, ConnectionGrant, ConnectionRecord, LastError, NewAttempt, StoreError, StoreResult};

/// The columns of `connections` that make a [`ConnectionRecord`]; every
/// query that returns a record selects (or returns) exactly these.
pub(super) const CONNECTION_COLUMNS: &str = "id, project, provider, external_id, access_token, refresh_token, \
     token_type, scope, issued_at, expires_at, metadata, status, next_refresh_at, last_refreshed_at, \
     refresh_count, consecutive_failures, last_error_code, last_error_message, last_error_http_status, \
     last_error_at, version, lease_owner, lease_until, created_at, updated_at, grant_type, grant_params, \
     refresh_token_expires_at, refresh_token_warned_at";

/// The columns of `refresh_attempts`.
pub(super) const ATTEMPT_COLUMNS: &str =
    r#"id, connection_id, started_at, "trigger", outcome, error_code, http_status, duration_ms"#;

/// A timestamp as stored: unix milliseconds, sub-millisecond part dropped
/// (floored, so that the stored instant is never later than the given one).
pub(super) fn millis(at: OffsetDateTime) -> i64 {
    // Every OffsetDateTime lies within ±9999 years, about ±3.2e14 ms: the
    // quotient always fits an i64.
    at.unix_timestamp_nanos().div_euclid(1_000_000) as i64
}

/// [`millis`] of an optional timestamp.
pub(super) fn opt_millis(at: Option<OffsetDateTime>) -> Option<i64> {
    at.map(millis)
}

/// A stored millisecond timestamp, back in UTC.
pub(super) fn from_millis(ms: i64, column: &str) -> StoreResult<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|_| StoreError::Corrupt(format!("{column}: timestamp {ms} out of range")))
}

pub(super) fn time_at(row: &SqliteRow, column: &str) -> StoreResult<OffsetDateTime> {
    from_millis(row.try_get(column)?, column)
}

pub(super) fn opt_time_at(row: &SqliteRow, column: &str) -> StoreResult<Option<OffsetDateTime>> {
    row.try_get::<Option<i64>, _>(column)?
        .map(|ms| from_millis(ms, column))
        .transpose()
}

pub(super) fn opt_http_status(row: &SqliteRow, column: &str) -> StoreResult<Option<u16>> {
    row.try_get::<Option<i64>, _>(column)?
        .map(|raw| {
            u16::try_from(raw).map_err(|_| StoreError::Corrupt(format!("{column}: {raw} is not an HTTP status")))
        })
        .transpose()
}

pub(super) fn connection_id(row: &SqliteRow, column: &str) -> StoreResult<ConnectionId> {
    let raw: String = row.try_get(column)?;
    ConnectionId::parse(&raw).map_err(|_| StoreError::Corrupt(format!("{column}: {raw:?} is not a connection id")))
}

/// Reads a `connections` row selected with [`CONNECTION_COLUMNS`].
pub(super) fn connection(row: &SqliteRow) -> StoreResult<ConnectionRecord> {
    let id = connection_id(row, "id")?;
    let status_raw: String = row.try_get("status")?;
    let status = ConnectionStatus::parse(&status_raw)
        .ok_or_else(|| StoreError::Corrupt(format!("connection {id}: unknown status {status_raw:?}")))?;
    let metadata_raw: String = row.try_get("metadata")?;
    let metadata = serde_json::from_str(&metadata_raw)
        .map_err(|e| StoreError::Corrupt(format!("connection {id}: metadata is not JSON: {e}")))?;
    let failures: i64 = row.try_get("consecutive_failures")?;
    let consecutive_failures = u32::try_from(failures)
        .map_err(|_| StoreError::Corrupt(format!("connection {id}: consecutive_failures {failures} out of range")))?;
    let last_error = match row.try_get::<Option<String>, _>("last_error_code")? {
        None => None,
        Some(code) => Some(LastError {
            code,
            message: row
                .try_get::<Option<String>, _>("last_error_message")?
                .unwrap_or_default(),
            http_status: opt_http_status(row, "last_error_http_status")?,
            at: opt_time_at(row, "last_error_at")?.ok_or_else(|| {
                StoreError::Corrupt(format!("connection {id}: last_error_code without last_error_at"))
            })?,
        }),
    };
    let grant_raw: String = row.try_get("grant_type")?;
    let grant_type = GrantType::parse(&grant_raw)
        .ok_or_else(|| StoreError::Corrupt(format!("connection {id}: unknown grant type {grant_raw:?}")))?;
    let grant_params: Option<serde_json::Value> = row
        .try_get::<Option<String>, _>("grant_params")?
        .map(|raw| serde_json::from_str(&raw))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("connection {id}: grant_params is not JSON: {e}")))?;
    Ok(ConnectionRecord {
        project: row.try_get("project")?,
        provider: row.try_get("provider")?,
        external_id: row.try_get("external_id")?,
        access_token: Sealed::from_bytes(row.try_get("access_token")?),
        refresh_token: row
            .try_get::<Option<Vec<u8>>, _>("refresh_token")?
            .map(Sealed::from_bytes),
        token_type: row.try_get("token_type")?,
        scope: row.try_get("scope")?,
        issued_at: time_at(row, "issued_at")?,
        expires_at: time_at(row, "expires_at")?,
        metadata,
        status,
        next_refresh_at: opt_time_at(row, "next_refresh_at")?,
        last_refreshed_at: opt_time_at(row, "last_refreshed_at")?,
        refresh_count: row.try_get("refresh_count")?,
        consecutive_failures,
        last_error,
        version: row.try_get("version")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_until: opt_time_at(row, "lease_until")?,
        created_at: time_at(row, "created_at")?,
        updated_at: time_at(row, "updated_at")?,
        grant: ConnectionGrant {
            grant_type,
            params: grant_params,
        },
        refresh_token_expires_at: opt_time_at(row, "refresh_token_expires_at")?,
        refresh_token_warned_at: opt_time_at(row, "refresh_token_warned_at")?,
        id,
    })
}

/// Reads a `refresh_attempts` row selected with [`ATTEMPT_COLUMNS`].
pub(super) fn attempt(row: &SqliteRow) -> StoreResult<AttemptRecord> {
    let duration: i64 = row.try_get("duration_ms")?;
    Ok(AttemptRecord {
        id: row.try_get("id")?,
        connection_id: connection_id(row, "connection_id")?,
        attempt: NewAttempt {
            started_at: time_at(row, "started_at")?,
            trigger: row.try_get("trigger")?,
            outcome: row.try_get("outcome")?,
            error_code: row.try_get("error_code")?,
            http_status: opt_http_status(row, "http_status")?,
            duration_ms: u64::try_from(duration)
                .map_err(|_| StoreError::Corrupt(format!("refresh_attempts.duration_ms: {duration} is negative")))?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn timestamps_are_stored_as_milliseconds_floored() {
        let at = datetime!(2025-06-01 12:00:00.123_456_789 UTC);
        assert_eq!(millis(at), 1_748_779_200_123);
        let before_epoch = datetime!(1969-12-31 23:59:59.999_5 UTC);
        assert_eq!(millis(before_epoch), -1);
        assert_eq!(
            from_millis(millis(at), "t").unwrap(),
            datetime!(2025-06-01 12:00:00.123 UTC)
        );
    }

    #[test]
    fn an_out_of_range_timestamp_is_corrupt() {
        assert!(matches!(from_millis(i64::MAX, "t"), Err(StoreError::Corrupt(_))));
    }
}
