//! Project API keys: `thk_<key id>_<secret>`. Shown once at creation; only
//! a SHA-256 hash is stored, looked up by the public key id and compared in
//! constant time. A key carries scopes ([`Scopes`]), may expire and may be
//! revoked; an expired or revoked key fails exactly like an unknown one.
//!
//! Never logs, returns in an error or shows a key after creation; listings
//! show the public prefix `thk_<key id>` only.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thermos_store::ApiKeyRecord;
use time::OffsetDateTime;

const PREFIX: &str = "thk_";
const KEY_ID_BYTES: usize = 6;
const SECRET_BYTES: usize = 32;

/// One permission a key may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Metadata: reading connections, attempts, events, webhooks, runs,
    /// providers, apps, keys. Never a token.
    Read,
    /// Fetching access tokens (`GET …/token`, `POST …/refresh`).
    Token,
    /// Every change of state: imports, token replacement, deletes, resets,
    /// webhooks, runs, apps, redelivery, keys.
    Admin,
}

impl Scope {
    /// Every scope, in canonical order.
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Token, Scope::Admin];

    /// The scope named `name` (`read`, `token`, `admin`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "read" => Some(Self::Read),
            "token" => Some(Self::Token),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    /// The scope's name on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Token => "token",
            Self::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Self::Read => 1,
            Self::Token => 2,
            Self::Admin => 4,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of scopes, always closed under implication: `token` and `admin`
/// each imply `read` (fetching a token or changing a connection without
/// seeing it makes no sense); `admin` does NOT imply `token`, so a key that
/// manages connections cannot read their tokens unless granted `token` too.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    /// No scope at all.
    pub const NONE: Scopes = Scopes(0);
    /// Every scope (the admin key; keys created before scopes existed).
    pub const ALL: Scopes = Scopes(7);

    /// The set holding `scopes` and what they imply.
    pub fn of(scopes: impl IntoIterator<Item = Scope>) -> Self {
        let mut bits = scopes.into_iter().fold(0, |bits, s| bits | s.bit());
        if bits & (Scope::Token.bit() | Scope::Admin.bit()) != 0 {
            bits |= Scope::Read.bit();
        }
        Self(bits)
    }

    /// Parses scope names; an unknown name is an error naming it.
    pub fn parse<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Result<Self, String> {
        let mut scopes = Vec::new();
        for name in names {
            let name = name.as_ref().trim();
            scopes.push(
                Scope::parse(name).ok_or_else(|| format!("unknown scope {name:?} (expected read, token or admin)"))?,
            );
        }
        Ok(Self::of(scopes))
    }

    /// The scopes of a stored key; names this version does not know grant
    /// nothing.
    pub fn from_stored(names: &[String]) -> Self {
        Self::of(names.iter().filter_map(|n| Scope::parse(n)))
    }

    /// Whether `scope` is in the set.
    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// Whether every scope of `other` is in this set.
    pub fn includes(self, other: Scopes) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The scopes held, in canonical order (`read`, `token`, `admin`).
    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    /// The names held, in canonical order.
    pub fn names(self) -> Vec<String> {
        self.iter().map(|s| s.as_str().to_owned()).collect()
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter().map(Scope::as_str)).finish()
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Scope::as_str).collect();
        f.write_str(&names.join(" "))
    }
}

/// A newly created key: the record to store and the key text to show once.
#[derive(Debug)]
pub struct CreatedKey {
    pub record: ApiKeyRecord,
    pub key: SecretString,
}

/// Creates a key for `project` with every scope and no expiry (what
/// `thermos keys create` without `--scope` makes).
pub fn create(project: &str, now: OffsetDateTime) -> CreatedKey {
    create_with(project, Scopes::ALL, None, now)
}

/// Creates a key for `project` holding `scopes`, valid until `expires_at`
/// (`None`: until revoked).
pub fn create_with(
    project: &str,
    scopes: Scopes,
    expires_at: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> CreatedKey {
    let mut id = [0u8; KEY_ID_BYTES];
    let mut secret = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut id);
    rand::rng().fill_bytes(&mut secret);
    let key_id = hex(&id);
    let key = SecretString::from(format!("{PREFIX}{key_id}_{}", URL_SAFE_NO_PAD.encode(secret)));
    CreatedKey {
        record: ApiKeyRecord {
            key_id,
            project: project.to_owned(),
            secret_hash: hash(key.expose_secret()),
            created_at: now,
            scopes: scopes.names(),
            expires_at,
            revoked_at: None,
        },
        key,
    }
}

/// The longest lifetime a key may be given (ten years).
pub const MAX_LIFETIME: std::time::Duration = std::time::Duration::from_secs(10 * 366 * 24 * 3600);

/// Parses a key lifetime such as `90d`, `12h` or `1y` (at least a minute,
/// at most [`MAX_LIFETIME`]).
pub fn parse_lifetime(text: &str) -> Result<std::time::Duration, String> {
    let lifetime = humantime::parse_duration(text.trim())
        .map_err(|e| format!("expected a duration such as 90d or 12h (got {text:?}: {e})"))?;
    if lifetime < std::time::Duration::from_secs(60) {
        return Err(format!("must be at least a minute (got {text:?})"));
    }
    if lifetime > MAX_LIFETIME {
        return Err(format!("must be at most ten years (got {text:?})"));
    }
    Ok(lifetime)
}

/// Whether the key of `record` is `active`, `expired` or `revoked` at `now`.
pub fn status(record: &ApiKeyRecord, now: OffsetDateTime) -> &'static str {
    if record.revoked_at.is_some() {
        "revoked"
    } else if record.expires_at.is_some_and(|at| at <= now) {
        "expired"
    } else {
        "active"
    }
}

/// The public key id of a presented key, if it has the right shape.
pub fn key_id(presented: &str) -> Option<&str> {
    let rest = presented.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (is_key_id(id) && !secret.is_empty()).then_some(id)
}

/// The key id named by `text`: `thk_<key id>` or the bare key id (what
/// listings show), never a whole key.
pub fn parse_key_ref(text: &str) -> Option<&str> {
    let text = text.trim();
    let id = text.strip_prefix(PREFIX).unwrap_or(text);
    is_key_id(id).then_some(id)
}

/// The public prefix shown for a key: `thk_<key id>`.
pub fn display_prefix(key_id: &str) -> String {
    format!("{PREFIX}{key_id}")
}

fn is_key_id(id: &str) -> bool {
    id.len() == KEY_ID_BYTES * 2 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `presented` is the key whose hash is stored in `record`.
pub fn matches(record: &ApiKeyRecord, presented: &str) -> bool {
    bool::from(hash(presented).ct_eq(&record.secret_hash))
}

/// Whether `record` may authenticate at `now`: the presented key matches,
/// and the key is neither revoked nor expired. The hash is always compared,
/// so a revoked or expired key takes the same time as any other.
pub fn accepts(record: &ApiKeyRecord, presented: &str, now: OffsetDateTime) -> bool {
    let matched = matches(record, presented);
    let live = record.revoked_at.is_none() && record.expires_at.is_none_or(|at| now < at);
    matched && live
}

/// Constant-time equality of two secrets (for the admin key).
pub fn secrets_equal(a: &str, b: &str) -> bool {
    bool::from(Sha256::digest(a.as_bytes()).ct_eq(&Sha256::digest(b.as_bytes())))
}

fn hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_key_matches_its_record_and_nothing_else() {
        let created = create("acme", OffsetDateTime::UNIX_EPOCH);
        let text = created.key.expose_secret();
        assert_eq!(key_id(text), Some(created.record.key_id.as_str()));
        assert!(matches(&created.record, text));
        assert!(!matches(&created.record, &format!("{text}x")));
        assert!(
            !created
                .record
                .secret_hash
                .windows(8)
                .any(|w| text.as_bytes().windows(8).any(|t| t == w))
        );
    }

    #[test]
    fn malformed_keys_have_no_key_id() {
        for raw in ["", "thk_", "thk_abc_def", "abc_0123456789ab_x", "thk_0123456789ab_"] {
            assert_eq!(key_id(raw), None, "{raw}");
        }
    }

    #[test]
    fn token_and_admin_imply_read_but_admin_does_not_imply_token() {
        assert_eq!(Scopes::of([Scope::Token]).names(), ["read", "token"]);
        assert_eq!(Scopes::of([Scope::Admin]).names(), ["read", "admin"]);
        assert!(!Scopes::of([Scope::Admin]).contains(Scope::Token));
        assert_eq!(Scopes::of([Scope::Read]).names(), ["read"]);
        assert_eq!(Scopes::parse(["admin", "token"]).unwrap(), Scopes::ALL);
        assert!(Scopes::parse(["write"]).unwrap_err().contains("\"write\""));
        assert!(Scopes::ALL.includes(Scopes::of([Scope::Token])));
        assert!(!Scopes::of([Scope::Admin]).includes(Scopes::of([Scope::Token])));
        assert_eq!(
            Scopes::from_stored(&["token".into(), "future".into()]).names(),
            ["read", "token"]
        );
    }

    #[test]
    fn an_expired_or_revoked_key_is_not_accepted() {
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(10);
        let created = create_with("acme", Scopes::ALL, Some(now), OffsetDateTime::UNIX_EPOCH);
        let text = created.key.expose_secret();
        assert!(accepts(&created.record, text, now - time::Duration::seconds(1)));
        assert!(!accepts(&created.record, text, now));
        let revoked = ApiKeyRecord {
            expires_at: None,
            revoked_at: Some(now),
            ..created.record.clone()
        };
        assert!(!accepts(&revoked, text, now));
    }

    #[test]
    fn lifetimes_are_durations_between_a_minute_and_ten_years() {
        assert_eq!(
            parse_lifetime("90d").unwrap(),
            std::time::Duration::from_secs(90 * 86_400)
        );
        assert_eq!(
            parse_lifetime(" 12h ").unwrap(),
            std::time::Duration::from_secs(12 * 3600)
        );
        assert!(parse_lifetime("30s").unwrap_err().contains("at least a minute"));
        assert!(parse_lifetime("11y").unwrap_err().contains("at most ten years"));
        assert!(parse_lifetime("soon").unwrap_err().contains("expected a duration"));
    }

    #[test]
    fn a_key_is_named_by_its_prefix_or_bare_id_never_by_the_whole_key() {
        assert_eq!(parse_key_ref("thk_0123456789ab"), Some("0123456789ab"));
        assert_eq!(parse_key_ref("0123456789ab"), Some("0123456789ab"));
        assert_eq!(parse_key_ref("thk_0123456789ab_secret"), None);
        assert_eq!(parse_key_ref("0123456789AB"), None);
        assert_eq!(display_prefix("0123456789ab"), "thk_0123456789ab");
    }
}
