//! The token book: grant families, the refresh tokens and access tokens each
//! one issued, and the rotation and reuse-detection rules.
//!
//! Everything here is synchronous and runs under one `std::sync::Mutex` held
//! for microseconds; it never awaits, never does IO and never sleeps. Time
//! comes in as a parameter (`tokio::time::Instant`), so the rules are plain
//! functions of their inputs. Read next: `server.rs`, which calls
//! [`Book::refresh`] for every accepted `refresh_token` grant.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::RngCore;
use tokio::time::Instant;

/// The id of one grant family: everything issued from one `issue_grant`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantId(pub(crate) String);

impl GrantId {
    /// The id as text (`g1`, `g2`, …).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GrantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The tokens a new grant starts with, as a user's first authorisation would
/// hand them out.
#[derive(Debug, Clone)]
pub struct IssuedGrant {
    /// The grant family these tokens belong to.
    pub grant: GrantId,
    /// A valid access token.
    pub access_token: String,
    /// The grant's first refresh token.
    pub refresh_token: String,
    /// The access token's lifetime.
    pub expires_in: Duration,
}

/// The rules the book applies; copied from the provider's options.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules {
    pub access_token_ttl: Duration,
    pub rotate: bool,
    pub reuse_grace: Duration,
}

/// A successful refresh.
#[derive(Debug)]
pub(crate) struct Refreshed {
    pub access_token: String,
    /// The refresh token to send back: a new one when rotating (or the
    /// current one after a reuse inside the grace window), else `None`.
    pub refresh_token: Option<String>,
}

/// Why a refresh token was refused; all of them answer `invalid_grant`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Never issued by this provider.
    Unknown,
    /// Its family was revoked earlier.
    Revoked,
    /// An already-used refresh token came back outside the grace window: the
    /// whole family has just been revoked.
    ReuseDetected,
}

impl Refused {
    pub(crate) fn description(self) -> &'static str {
        match self {
            Self::Unknown => "unknown refresh token",
            Self::Revoked => "the grant has been revoked",
            Self::ReuseDetected => "refresh token reuse detected; the grant has been revoked",
        }
    }
}

#[derive(Debug)]
struct Grant {
    current_refresh: String,
    revoked: bool,
    calls: u64,
    in_flight: u32,
    max_in_flight: u32,
}

#[derive(Debug)]
struct RefreshEntry {
    grant: GrantId,
    used_at: Option<Instant>,
    calls: u64,
}

#[derive(Debug)]
struct AccessEntry {
    grant: GrantId,
    expires_at: Instant,
}

/// All grant families and their tokens.
#[derive(Debug, Default)]
pub(crate) struct Book {
    grants: HashMap<GrantId, Grant>,
    refresh_tokens: HashMap<String, RefreshEntry>,
    access_tokens: HashMap<String, AccessEntry>,
    /// `access_tokens.len()` above which expired entries are pruned.
    prune_above: usize,
    next_grant: u64,
    reuse_detected: u64,
    refreshes: u64,
}

const PRUNE_FLOOR: usize = 4096;

impl Book {
    /// Starts a new grant family with a fresh access and refresh token.
    pub(crate) fn issue_grant(&mut self, rules: &Rules, now: Instant) -> IssuedGrant {
        self.next_grant += 1;
        let grant = GrantId(format!("g{}", self.next_grant));
        let refresh_token = new_refresh_token();
        let access_token = self.new_access_token(&grant, rules, now);
        self.refresh_tokens.insert(
            refresh_token.clone(),
            RefreshEntry {
                grant: grant.clone(),
                used_at: None,
                calls: 0,
            },
        );
        self.grants.insert(
            grant.clone(),
            Grant {
                current_refresh: refresh_token.clone(),
                revoked: false,
                calls: 0,
                in_flight: 0,
                max_in_flight: 0,
            },
        );
        IssuedGrant {
            grant,
            access_token,
            refresh_token,
            expires_in: rules.access_token_ttl,
        }
    }

    /// The grant a refresh token belongs to, if it was ever issued.
    pub(crate) fn grant_of(&self, refresh_token: &str) -> Option<GrantId> {
        self.refresh_tokens.get(refresh_token).map(|e| e.grant.clone())
    }

    /// Counts a request presenting `refresh_token` as in flight for its grant.
    pub(crate) fn enter(&mut self, refresh_token: &str) {
        if let Some(entry) = self.refresh_tokens.get_mut(refresh_token) {
            entry.calls += 1;
            if let Some(grant) = self.grants.get_mut(&entry.grant) {
                grant.calls += 1;
                grant.in_flight += 1;
                grant.max_in_flight = grant.max_in_flight.max(grant.in_flight);
            }
        }
    }

    /// Ends what [`Book::enter`] started.
    pub(crate) fn leave(&mut self, grant: &GrantId) {
        if let Some(grant) = self.grants.get_mut(grant) {
            grant.in_flight = grant.in_flight.saturating_sub(1);
        }
    }

    /// Applies the `refresh_token` grant: rotation, grace window, reuse
    /// detection (which revokes the whole family).
    pub(crate) fn refresh(&mut self, presented: &str, rules: &Rules, now: Instant) -> Result<Refreshed, Refused> {
        let Some(entry) = self.refresh_tokens.get(presented) else {
            return Err(Refused::Unknown);
        };
        let grant_id = entry.grant.clone();
        let used_at = entry.used_at;
        let Some(grant) = self.grants.get(&grant_id) else {
            return Err(Refused::Unknown);
        };
        if grant.revoked {
            return Err(Refused::Revoked);
        }
        let refresh_token = match used_at {
            Some(used_at) if now.saturating_duration_since(used_at) <= rules.reuse_grace => {
                // Inside the grace window (a response may have been lost):
                // answer again with the grant's current refresh token.
                Some(grant.current_refresh.clone())
            }
            Some(_) => {
                self.revoke(&grant_id);
                self.reuse_detected += 1;
                return Err(Refused::ReuseDetected);
            }
            None if rules.rotate => {
                let next = new_refresh_token();
                if let Some(entry) = self.refresh_tokens.get_mut(presented) {
                    entry.used_at = Some(now);
                }
                self.refresh_tokens.insert(
                    next.clone(),
                    RefreshEntry {
                        grant: grant_id.clone(),
                        used_at: None,
                        calls: 0,
                    },
                );
                if let Some(grant) = self.grants.get_mut(&grant_id) {
                    grant.current_refresh = next.clone();
                }
                Some(next)
            }
            None => None,
        };
        self.refreshes += 1;
        let access_token = self.new_access_token(&grant_id, rules, now);
        Ok(Refreshed {
            access_token,
            refresh_token,
        })
    }

    /// Revokes a whole family: its refresh and access tokens stop working.
    pub(crate) fn revoke(&mut self, grant: &GrantId) -> bool {
        match self.grants.get_mut(grant) {
            Some(g) => {
                g.revoked = true;
                true
            }
            None => false,
        }
    }

    /// Revokes one access token (RFC 7009): it expires at `now` (and stays
    /// among the issued tokens); false if it was not known.
    pub(crate) fn revoke_access_token(&mut self, token: &str, now: Instant) -> bool {
        match self.access_tokens.get_mut(token) {
            Some(entry) => {
                entry.expires_at = entry.expires_at.min(now);
                true
            }
            None => false,
        }
    }

    pub(crate) fn is_revoked(&self, grant: &GrantId) -> bool {
        self.grants.get(grant).is_some_and(|g| g.revoked)
    }

    pub(crate) fn access_token_is_valid(&self, token: &str, now: Instant) -> bool {
        self.access_token_grant(token, now).is_some()
    }

    /// The grant of a live access token (exists, not expired, family not revoked).
    pub(crate) fn access_token_grant(&self, token: &str, now: Instant) -> Option<GrantId> {
        let entry = self.access_tokens.get(token)?;
        (now < entry.expires_at && !self.is_revoked(&entry.grant)).then(|| entry.grant.clone())
    }

    pub(crate) fn current_refresh_token(&self, grant: &GrantId) -> Option<String> {
        self.grants
            .get(grant)
            .filter(|g| !g.revoked)
            .map(|g| g.current_refresh.clone())
    }

    pub(crate) fn calls_for(&self, grant: &GrantId) -> u64 {
        self.grants.get(grant).map_or(0, |g| g.calls)
    }

    pub(crate) fn calls_with(&self, refresh_token: &str) -> u64 {
        self.refresh_tokens.get(refresh_token).map_or(0, |e| e.calls)
    }

    pub(crate) fn max_in_flight_for(&self, grant: &GrantId) -> u32 {
        self.grants.get(grant).map_or(0, |g| g.max_in_flight)
    }

    pub(crate) fn reuse_detected(&self) -> u64 {
        self.reuse_detected
    }

    pub(crate) fn refreshes(&self) -> u64 {
        self.refreshes
    }

    /// Every refresh token issued, and every access token not yet pruned.
    pub(crate) fn issued_tokens(&self) -> Vec<String> {
        self.refresh_tokens
            .keys()
            .chain(self.access_tokens.keys())
            .cloned()
            .collect()
    }

    pub(crate) fn grants_issued(&self) -> u64 {
        self.next_grant
    }

    fn new_access_token(&mut self, grant: &GrantId, rules: &Rules, now: Instant) -> String {
        if self.access_tokens.len() > self.prune_above.max(PRUNE_FLOOR) {
            // Amortised: prune expired entries only when the map has doubled,
            // so a long benchmark does not grow without bound.
            self.access_tokens.retain(|_, e| e.expires_at > now);
            self.prune_above = self.access_tokens.len() * 2;
        }
        let token = format!("at_{}", random_text(&URL_SAFE_NO_PAD, 32));
        self.access_tokens.insert(
            token.clone(),
            AccessEntry {
                grant: grant.clone(),
                expires_at: now + rules.access_token_ttl,
            },
        );
        token
    }
}

/// Refresh tokens use the standard base64 alphabet plus a fixed `+/=` tail,
/// so a client that forgets to form-encode the request body sends a token
/// the provider does not know.
fn new_refresh_token() -> String {
    format!("rt_{}+/=", random_text(&STANDARD, 30))
}

fn random_text(engine: &impl base64::Engine, bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut raw);
    engine.encode(raw)
}
