//! Conversions between PostgreSQL rows and the store's records.
//!
//! Owns the column list of `connections`, the millisecond truncation of
//! timestamps before they are bound, and the reading of every row into a
//! record. A value this version cannot read (bad id, unknown status,
//! out-of-range number) becomes [`StoreError::Corrupt`]; this module never
//! panics on data.

use sqlx::Row;
use sqlx::postgres::PgRow;
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

/// A timestamp as stored: the sub-millisecond part dropped (floored), as
/// SQLite stores it, so that both backends hand back the same instants.
pub(super) fn ms(at: OffsetDateTime) -> OffsetDateTime {
    crate::truncate_to_millis(at)
}

/// [`ms`] of an optional timestamp.
pub(super) fn opt_ms(at: Option<OffsetDateTime>) -> Option<OffsetDateTime> {
    at.map(ms)
}

/// An HTTP status as stored (`INTEGER`).
pub(super) fn http_status(status: Option<u16>) -> Option<i32> {
    status.map(i32::from)
}

/// A count or duration as stored (`BIGINT`); beyond `i64` it saturates.
pub(super) fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(super) fn opt_http_status(row: &PgRow, column: &str) -> StoreResult<Option<u16>> {
    row.try_get::<Option<i32>, _>(column)?
        .map(|raw| {
            u16::try_from(raw).map_err(|_| StoreError::Corrupt(format!("{column}: {raw} is not an HTTP status")))
        })
        .transpose()
}

/// A non-negative `BIGINT` column as a `u64`.
pub(super) fn unsigned(row: &PgRow, column: &str) -> StoreResult<u64> {
    let n: i64 = row.try_get(column)?;
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("{column}: {n} is negative")))
}

/// A `BIGINT` column that must fit a `u32`.
pub(super) fn small(row: &PgRow, column: &str) -> StoreResult<u32> {
    let n: i64 = row.try_get(column)?;
    u32::try_from(n).map_err(|_| StoreError::Corrupt(format!("{column}: {n} out of range")))
}

pub(super) fn connection_id(row: &PgRow, column: &str) -> StoreResult<ConnectionId> {
    let raw: String = row.try_get(column)?;
    ConnectionId::parse(&raw).map_err(|_| StoreError::Corrupt(format!("{column}: {raw:?} is not a connection id")))
}

/// Reads a `connections` row selected with [`CONNECTION_COLUMNS`].
pub(super) fn connection(row: &PgRow) -> StoreResult<ConnectionRecord> {
    let id = connection_id(row, "id")?;
    let status_raw: String = row.try_get("status")?;
    let status = ConnectionStatus::parse(&status_raw)
        .ok_or_else(|| StoreError::Corrupt(format!("connection {id}: unknown status {status_raw:?}")))?;
    let last_error = match row.try_get::<Option<String>, _>("last_error_code")? {
        None => None,
        Some(code) => Some(LastError {
            code,
            message: row
                .try_get::<Option<String>, _>("last_error_message")?
                .unwrap_or_default(),
            http_status: opt_http_status(row, "last_error_http_status")?,
            at: row
                .try_get::<Option<OffsetDateTime>, _>("last_error_at")?
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("connection {id}: last_error_code without last_error_at"))
                })?,
        }),
    };
    let grant_raw: String = row.try_get("grant_type")?;
    let grant_type = GrantType::parse(&grant_raw)
        .ok_or_else(|| StoreError::Corrupt(format!("connection {id}: unknown grant type {grant_raw:?}")))?;
    let grant_params: Option<serde_json::Value> = row.try_get("grant_params")?;
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
        issued_at: row.try_get("issued_at")?,
        expires_at: row.try_get("expires_at")?,
        metadata: row.try_get("metadata")?,
        status,
        next_refresh_at: row.try_get("next_refresh_at")?,
        last_refreshed_at: row.try_get("last_refreshed_at")?,
        refresh_count: row.try_get("refresh_count")?,
        consecutive_failures: small(row, "consecutive_failures")?,
        last_error,
        version: row.try_get("version")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_until: row.try_get("lease_until")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        grant: ConnectionGrant {
            grant_type,
            params: grant_params,
        },
        refresh_token_expires_at: row.try_get("refresh_token_expires_at")?,
        refresh_token_warned_at: row.try_get("refresh_token_warned_at")?,
        id,
    })
}

/// Reads a `refresh_attempts` row selected with [`ATTEMPT_COLUMNS`].
pub(super) fn attempt(row: &PgRow) -> StoreResult<AttemptRecord> {
    Ok(AttemptRecord {
        id: row.try_get("id")?,
        connection_id: connection_id(row, "connection_id")?,
        attempt: NewAttempt {
            started_at: row.try_get("started_at")?,
            trigger: row.try_get("trigger")?,
            outcome: row.try_get("outcome")?,
            error_code: row.try_get("error_code")?,
            http_status: opt_http_status(row, "http_status")?,
            duration_ms: unsigned(row, "duration_ms")?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn timestamps_are_bound_as_milliseconds_floored() {
        let at = datetime!(2025-06-01 12:00:00.123_456_789 UTC);
        assert_eq!(ms(at), datetime!(2025-06-01 12:00:00.123 UTC));
        let before_epoch = datetime!(1969-12-31 23:59:59.999_5 UTC);
        assert_eq!(ms(before_epoch), datetime!(1969-12-31 23:59:59.999 UTC));
    }
}
