//! Fresh tokens on demand: hand out the stored token when it is valid long
//! enough, else refresh first (joining any refresh in flight).
//!
//! Never hands out a token the store knows to be expired.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use thermos_core::id::ConnectionId;
use thermos_core::plan;
use thermos_core::status::ConnectionStatus;
use thermos_store::ConnectionRecord;
use time::OffsetDateTime;

use super::flight::{Flight, RefreshFailure, refresh_shared_since};
use super::refresh::open_access;
use super::{Engine, Trigger};
use crate::metrics as m;
use crate::metrics::outcome::{CURRENT_RETURNED, REFRESHED};

/// How often a caller re-reads a connection while another worker holds its lease.
const BUSY_POLL: Duration = Duration::from_millis(25);

/// A usable access token and what callers need to know about it.
#[derive(Debug, Clone)]
pub struct FreshToken {
    pub access_token: SecretString,
    pub token_type: String,
    pub scope: Option<String>,
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// Why no token could be handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("connection not found")]
    NotFound,
    #[error("the connection needs the user to reconnect ({code}: {message})")]
    NeedsReauth { code: String, message: String },
    #[error("the connection is {status}")]
    NotRefreshable { status: ConnectionStatus },
    #[error("the token expired and the provider did not refresh it ({code}: {message})")]
    ProviderFailed {
        code: String,
        message: String,
        http_status: Option<u16>,
        retry_after: Option<Duration>,
    },
    #[error("the provider app is paused ({}); try again later", reason.as_str())]
    Unavailable {
        retry_after: Duration,
        reason: super::guard::PauseReason,
    },
    #[error("too many forced refreshes of this connection; try again later")]
    RateLimited { retry_after: Duration },
    #[error("the connection is being refreshed elsewhere; try again shortly")]
    Busy { retry_after: Duration },
    #[error("internal error: {0}")]
    Internal(String),
}

/// How a refresh is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need<'a> {
    /// A token valid for at least this long.
    MinTtl(Duration),
    /// A new token, unless the current one differs from this rejected one.
    ReplaceRejected(Option<&'a str>),
}

impl Engine {
    /// A token valid for at least `min_ttl` (capped at half its lifetime),
    /// refreshing first if needed. `record` is the connection as the caller
    /// just read it (saves the hot path a second read).
    pub async fn fresh_token(&self, record: ConnectionRecord, min_ttl: Duration) -> Result<FreshToken, TokenError> {
        self.obtain(record, Need::MinTtl(min_ttl), Trigger::OnDemand).await
    }

    /// A fresh token after an application got a 401 with `rejected`: if that
    /// token is no longer the current one, the current one is returned
    /// without a refresh; with no `rejected` token, always refreshes.
    pub async fn replace_rejected(
        &self,
        record: ConnectionRecord,
        rejected: Option<&str>,
    ) -> Result<FreshToken, TokenError> {
        self.obtain(record, Need::ReplaceRejected(rejected), Trigger::Forced)
            .await
    }

    async fn obtain(
        &self,
        first: ConnectionRecord,
        need: Need<'_>,
        trigger: Trigger,
    ) -> Result<FreshToken, TokenError> {
        let id = first.id;
        let deadline = tokio::time::Instant::now() + self.inner.settings.lease_ttl();
        let mut refreshed_version = None;
        let mut first = Some(first);
        loop {
            let record = match first.take() {
                Some(record) => record,
                None => self.load(id).await?,
            };
            check_status(&record)?;
            let now = self.inner.clock.now();
            let current_is_enough = match need {
                _ if refreshed_version.is_some_and(|v| v != record.version) => true,
                Need::MinTtl(_) if in_backoff(&record, now) => true,
                Need::MinTtl(min_ttl) => {
                    let wanted = plan::effective_min_ttl(min_ttl, record.issued_at, record.expires_at);
                    record.expires_at > now && remaining(&record, now) >= wanted
                }
                Need::ReplaceRejected(Some(rejected)) => {
                    record.expires_at > now && !self.is_current(&record, rejected)?
                }
                Need::ReplaceRejected(None) => false,
            };
            if current_is_enough && record.expires_at > now {
                // After a superseded refresh of ours, the newer token is a refreshed one.
                let outcome = if refreshed_version.is_some() {
                    REFRESHED
                } else {
                    CURRENT_RETURNED
                };
                count_report(need, &record, outcome);
                return self.current(&record);
            }
            if record.grant.grant_type.needs_refresh_token() && record.refresh_token.is_none() {
                return self.current_or(&record, now, || TokenError::NeedsReauth {
                    code: "no_refresh_token".into(),
                    message: "the token expired and there is no refresh token".into(),
                });
            }
            refreshed_version = Some(record.version);
            if trigger == Trigger::Forced {
                self.check_forced(id)?;
            }
            match refresh_shared_since(&self.inner, id, trigger, Some(record.version)).await {
                Ok(Flight::Refreshed(token)) => {
                    count_report(need, &record, REFRESHED);
                    return Ok(token);
                }
                Ok(Flight::Superseded) => continue,
                Ok(Flight::Busy { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(BUSY_POLL).await;
                    refreshed_version = None;
                    if let Need::ReplaceRejected(None) = need {
                        // Someone else is refreshing: their result is as fresh as ours would be.
                        refreshed_version = Some(record.version);
                    }
                }
                Ok(Flight::Busy { .. }) => {
                    return self.current_or(&record, self.inner.clock.now(), || TokenError::Busy {
                        retry_after: Duration::from_secs(1),
                    });
                }
                Err(failure) => {
                    let latest = self.load(id).await?;
                    let now = self.inner.clock.now();
                    let error = match failure {
                        RefreshFailure::Unavailable { until, reason } => TokenError::Unavailable {
                            retry_after: Duration::try_from(until - now)
                                .unwrap_or_default()
                                .max(Duration::from_secs(1)),
                            reason,
                        },
                        other => other.into(),
                    };
                    // A 401 report whose refresh failed must not get the rejected token back.
                    if let Need::ReplaceRejected(Some(rejected)) = need
                        && self.is_current(&latest, rejected)?
                    {
                        return Err(error);
                    }
                    return self.current_or(&latest, now, || error);
                }
            }
        }
    }

    async fn load(&self, id: ConnectionId) -> Result<ConnectionRecord, TokenError> {
        self.inner
            .store
            .get_connection(id)
            .await
            .map_err(|e| TokenError::Internal(format!("read connection: {e}")))?
            .ok_or(TokenError::NotFound)
    }

    fn is_current(&self, record: &ConnectionRecord, candidate: &str) -> Result<bool, TokenError> {
        let current = open_access(&self.inner, record).map_err(|e| TokenError::Internal(format!("open token: {e}")))?;
        Ok(bool::from(
            current.expose_secret().as_bytes().ct_eq(candidate.as_bytes()),
        ))
    }

    fn current(&self, record: &ConnectionRecord) -> Result<FreshToken, TokenError> {
        let access_token =
            open_access(&self.inner, record).map_err(|e| TokenError::Internal(format!("open token: {e}")))?;
        Ok(FreshToken {
            access_token,
            token_type: record.token_type.clone(),
            scope: record.scope.clone(),
            issued_at: record.issued_at,
            expires_at: record.expires_at,
        })
    }

    /// The current token if it has not expired (shorter-lived than asked,
    /// but usable), else the error.
    fn current_or(
        &self,
        record: &ConnectionRecord,
        now: OffsetDateTime,
        error: impl FnOnce() -> TokenError,
    ) -> Result<FreshToken, TokenError> {
        if record.status == ConnectionStatus::NeedsReauth {
            check_status(record)?;
        }
        if record.expires_at > now {
            self.current(record)
        } else {
            Err(error())
        }
    }
}

/// Counts a 401 report (`replace_rejected`) answered with a token: a new
/// one (`refreshed`) or the current one because the rejected token was
/// already stale (`current_returned`). Other needs are not reports.
fn count_report(need: Need<'_>, record: &ConnectionRecord, outcome: &'static str) {
    if let Need::ReplaceRejected(_) = need {
        metrics::counter!(
            m::UNAUTHORIZED_REPORTS_TOTAL,
            m::LABEL_PROVIDER => record.provider.clone(),
            m::LABEL_OUTCOME => outcome,
        )
        .increment(1);
    }
}

/// A failing connection waiting out its backoff: while its token is still
/// valid, callers get it rather than an extra call to a provider in trouble.
fn in_backoff(record: &ConnectionRecord, now: OffsetDateTime) -> bool {
    record.status == ConnectionStatus::Failing
        && record.expires_at > now
        && record.lease_owner.is_none()
        && record.next_refresh_at.is_some_and(|at| at > now)
}

fn remaining(record: &ConnectionRecord, now: OffsetDateTime) -> Duration {
    Duration::try_from(record.expires_at - now).unwrap_or_default()
}

fn check_status(record: &ConnectionRecord) -> Result<(), TokenError> {
    match record.status {
        ConnectionStatus::Active | ConnectionStatus::Failing => Ok(()),
        ConnectionStatus::NeedsReauth => Err(match &record.last_error {
            Some(e) => TokenError::NeedsReauth {
                code: e.code.clone(),
                message: e.message.clone(),
            },
            None => TokenError::NeedsReauth {
                code: "needs_reauth".into(),
                message: "the user must reconnect".into(),
            },
        }),
        status => Err(TokenError::NotRefreshable { status }),
    }
}

impl From<RefreshFailure> for TokenError {
    fn from(failure: RefreshFailure) -> Self {
        match failure {
            RefreshFailure::NotFound => Self::NotFound,
            RefreshFailure::NotRefreshable { status } => Self::NotRefreshable { status },
            RefreshFailure::NeedsReauth { code, message } => Self::NeedsReauth { code, message },
            RefreshFailure::Failed {
                code,
                message,
                http_status,
                retry_after,
            } => Self::ProviderFailed {
                code,
                message,
                http_status,
                retry_after,
            },
            // Callers with a clock turn `until` into the real wait (see `obtain`).
            RefreshFailure::Unavailable { reason, .. } => Self::Unavailable {
                retry_after: Duration::from_secs(1),
                reason,
            },
            RefreshFailure::Internal(message) => Self::Internal(message),
        }
    }
}
