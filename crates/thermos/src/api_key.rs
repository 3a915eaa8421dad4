//! Project API keys: `thk_<key id>_<secret>`. Shown once at creation; only
//! a SHA-256 hash is stored, looked up by the public key id and compared in
//! constant time.

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

/// A newly created key: the record to store and the key text to show once.
#[derive(Debug)]
pub struct CreatedKey {
    pub record: ApiKeyRecord,
    pub key: SecretString,
}

/// Creates a key for `project`.
pub fn create(project: &str, now: OffsetDateTime) -> CreatedKey {
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
        },
        key,
    }
}

/// The public key id of a presented key, if it has the right shape.
pub fn key_id(presented: &str) -> Option<&str> {
    let rest = presented.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == KEY_ID_BYTES * 2 && !secret.is_empty()).then_some(id)
}

/// Whether `presented` is the key whose hash is stored in `record`.
pub fn matches(record: &ApiKeyRecord, presented: &str) -> bool {
    bool::from(hash(presented).ct_eq(&record.secret_hash))
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
}
