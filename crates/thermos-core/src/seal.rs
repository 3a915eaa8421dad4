//! Sealing tokens at rest: XChaCha20-Poly1305 under the master key ring.
//!
//! A [`Sealed`] value carries a format byte, the id of the key that sealed
//! it, a random 24-byte nonce and the ciphertext with its tag. The associated
//! data binds it to one owner (a connection, or a project's custom app:
//! `app/{project}/{provider}`) and one field: a ciphertext copied to another
//! row or column does not open. Tampering fails to open; it is never
//! decrypted into garbage.
//!
//! [`MasterKey`] is a key ring: one or more keys, the first of which (the
//! primary) seals; every key opens what it sealed, picked by the key id in
//! the ciphertext. That is what lets the master key be rotated while values
//! sealed under the old one are still stored (`thermos keys rotate-master`,
//! docs/security.md). The ring can be replaced while in use (every holder of
//! the shared `Arc<MasterKey>` sees the new keys at once), and a
//! [`KeyReload`] hook may be asked for the current keys when a ciphertext
//! names a key the ring does not hold. This module does no IO itself: where
//! keys come from is `thermos::config::key`.

use std::sync::{Arc, PoisonError, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::id::ConnectionId;

const FORMAT_V1: u8 = 1;
const KEY_ID_LEN: usize = 8;
const NONCE_LEN: usize = 24;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;

/// Which secret a ciphertext holds; part of the associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The OAuth access token.
    AccessToken,
    /// The OAuth refresh token.
    RefreshToken,
    /// A project's own client secret (custom apps; also webhook signing
    /// secrets, under the owner `webhook/{id}`).
    ClientSecret,
    /// A connection's private key (PEM) that signs JWT-bearer assertions
    /// (RFC 7523); stored in the refresh token's column.
    PrivateKey,
}

impl Field {
    fn as_str(self) -> &'static str {
        match self {
            Self::AccessToken => "access_token",
            Self::RefreshToken => "refresh_token",
            Self::ClientSecret => "client_secret",
            Self::PrivateKey => "private_key",
        }
    }
}

/// A key's id: the first 8 bytes of a SHA-256 fingerprint of the key,
/// written into every value it seals. Reveals nothing of the key; shown as
/// 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; KEY_ID_LEN]);

impl KeyId {
    /// The id from its 8 raw bytes (as stored in a ciphertext's header).
    pub const fn from_bytes(bytes: [u8; KEY_ID_LEN]) -> Self {
        Self(bytes)
    }

    /// The id from the 8 bytes of `bytes`, if that is its length.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// Parses the 16 hex digits [`KeyId`]'s Display shows.
    pub fn parse_hex(text: &str) -> Result<Self, KeyIdError> {
        let text = text.trim();
        if text.len() != 2 * KEY_ID_LEN || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(KeyIdError);
        }
        let mut id = [0u8; KEY_ID_LEN];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| KeyIdError)?;
        }
        Ok(Self(id))
    }

    /// The raw bytes (as stored in a ciphertext's header).
    pub fn as_bytes(&self) -> &[u8; KEY_ID_LEN] {
        &self.0
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// A key id that is not 16 hex digits.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a key id is 16 hex digits")]
pub struct KeyIdError;

/// One 32-byte key with its id.
struct Key {
    cipher: XChaCha20Poly1305,
    id: KeyId,
}

impl Key {
    fn from_bytes(bytes: &[u8; 32]) -> Self {
        let digest = Sha256::new()
            .chain_update(b"thermos key id v1")
            .chain_update(bytes)
            .finalize();
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        Self {
            cipher: XChaCha20Poly1305::new(bytes.into()),
            id: KeyId(id),
        }
    }

    fn parse_base64(text: &str) -> Result<Self, KeyError> {
        let bytes = Zeroizing::new(STANDARD.decode(text.trim()).map_err(|_| KeyError::NotBase64)?);
        let array: &[u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::WrongLength(bytes.len()))?;
        Ok(Self::from_bytes(array))
    }
}

/// The keys of a ring, primary first; never empty, no id twice.
type Ring = Arc<Vec<Arc<Key>>>;

/// Asked to bring a ring up to date when a ciphertext names a key the ring
/// does not hold (another process rotated the master key and sealed with the
/// new one). Implementations do the IO, install what they read with
/// [`MasterKey::replace_keys`], limit how often they read, and report their
/// own failures. Calls may come from several threads at once: one that
/// arrives while another reads should wait for it, so that it then sees the
/// new keys.
pub trait KeyReload: Send + Sync {
    /// Replaces the keys of `ring` with those configured now, unless they
    /// cannot be had or were read too recently.
    fn reload(&self, ring: &MasterKey);
}

/// The master key ring: one or more 32-byte keys; the first (the primary)
/// seals, each opens what it sealed. Shared as `Arc<MasterKey>`, its keys can
/// be replaced while in use ([`MasterKey::replace_keys`]). Its Debug output
/// shows only key ids.
pub struct MasterKey {
    ring: RwLock<Ring>,
    reload: RwLock<Option<Arc<dyn KeyReload>>>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id_hex())
            .field("keys", &self.key_ids())
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    fn from_ring(keys: Vec<Arc<Key>>) -> Self {
        debug_assert!(!keys.is_empty());
        Self {
            ring: RwLock::new(Arc::new(keys)),
            reload: RwLock::new(None),
        }
    }

    fn ring(&self) -> Ring {
        Arc::clone(&self.ring.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// A ring of one key from 32 raw bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self::from_ring(vec![Arc::new(Key::from_bytes(bytes))])
    }

    /// Parses the base64 text form of one key (32 bytes once decoded;
    /// surrounding whitespace is ignored).
    pub fn parse_base64(text: &str) -> Result<Self, KeyError> {
        Ok(Self::from_ring(vec![Arc::new(Key::parse_base64(text)?)]))
    }

    /// Parses a list of base64 keys, the primary first: one per line (the
    /// key file) or separated by commas (`THERMOS_MASTER_KEY`); blank lines
    /// and lines starting with `#` are skipped. A key listed twice counts
    /// once, where it first appears.
    pub fn parse_list(text: &str) -> Result<Self, KeyError> {
        let entries: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.starts_with('#'))
            .flat_map(|line| line.split(','))
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .collect();
        if entries.is_empty() {
            return Err(KeyError::Empty);
        }
        let count = entries.len();
        let mut keys: Vec<Arc<Key>> = Vec::with_capacity(count);
        for (index, entry) in entries.into_iter().enumerate() {
            let key = Key::parse_base64(entry).map_err(|source| {
                if count == 1 {
                    source
                } else {
                    KeyError::Entry {
                        position: index + 1,
                        count,
                        source: Box::new(source),
                    }
                }
            })?;
            if !keys.iter().any(|k| k.id == key.id) {
                keys.push(Arc::new(key));
            }
        }
        Ok(Self::from_ring(keys))
    }

    /// The keys of `rings`, in order (each ring's primary first), as one
    /// ring; a key held twice counts once. `None` when `rings` is empty.
    pub fn join<'a>(rings: impl IntoIterator<Item = &'a MasterKey>) -> Option<Self> {
        let mut keys: Vec<Arc<Key>> = Vec::new();
        for ring in rings {
            for key in ring.ring().iter() {
                if !keys.iter().any(|k| k.id == key.id) {
                    keys.push(Arc::clone(key));
                }
            }
        }
        (!keys.is_empty()).then(|| Self::from_ring(keys))
    }

    /// A fresh random key (a ring of one), returned with its base64 text
    /// form for storing.
    pub fn generate() -> (Self, SecretString) {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(bytes.as_mut());
        let text = SecretString::from(STANDARD.encode(bytes.as_ref()));
        (Self::from_bytes(&bytes), text)
    }

    /// The primary key's id, in hex: a fingerprint that reveals nothing of
    /// the key.
    pub fn id_hex(&self) -> String {
        self.primary_id().to_string()
    }

    /// The primary key's id: the key that seals.
    pub fn primary_id(&self) -> KeyId {
        self.ring()[0].id
    }

    /// Every key's id, the primary first.
    pub fn key_ids(&self) -> Vec<KeyId> {
        self.ring().iter().map(|k| k.id).collect()
    }

    /// Replaces this ring's keys with those of `keys`, at once for every
    /// holder; returns whether the ids (or their order) changed.
    pub fn replace_keys(&self, keys: &MasterKey) -> bool {
        let new = keys.ring();
        let mut ring = self.ring.write().unwrap_or_else(PoisonError::into_inner);
        let changed = ring.iter().map(|k| k.id).ne(new.iter().map(|k| k.id));
        *ring = new;
        changed
    }

    /// Installs the hook asked for the current keys when a ciphertext names
    /// a key this ring does not hold.
    pub fn set_reload(&self, reload: Arc<dyn KeyReload>) {
        *self.reload.write().unwrap_or_else(PoisonError::into_inner) = Some(reload);
    }

    /// Seals `plaintext` for `field` of connection `owner`.
    pub fn seal(&self, owner: &ConnectionId, field: Field, plaintext: &SecretString) -> Sealed {
        self.seal_for(&owner.to_string(), field, plaintext)
    }

    /// Opens a value sealed for `field` of connection `owner`.
    pub fn open(&self, owner: &ConnectionId, field: Field, sealed: &Sealed) -> Result<SecretString, SealError> {
        self.open_for(&owner.to_string(), field, sealed)
    }

    /// Seals `plaintext` for `field` of any `owner` under the primary key:
    /// the associated data is `thermos/v1/{owner}/{field}`. A connection's
    /// owner is its id (what [`MasterKey::seal`] uses); a project's custom
    /// app is `app/{project}/{provider}`. Owners of different kinds never
    /// collide because a connection id never contains a `/`.
    pub fn seal_for(&self, owner: &str, field: Field, plaintext: &SecretString) -> Sealed {
        seal_with(&self.ring()[0], owner, field, plaintext)
    }

    /// Opens a value sealed by [`MasterKey::seal_for`] with the same `owner`
    /// and `field`, under whichever key of the ring its key id names. When
    /// the ring does not hold that key and a [`KeyReload`] hook is installed,
    /// the hook is asked for the current keys and the value tried once more.
    pub fn open_for(&self, owner: &str, field: Field, sealed: &Sealed) -> Result<SecretString, SealError> {
        match open_with(&self.ring(), owner, field, sealed) {
            Err(SealError::UnknownKey { key_id }) => {
                let reload = self.reload.read().unwrap_or_else(PoisonError::into_inner).clone();
                let Some(reload) = reload else {
                    return Err(SealError::UnknownKey { key_id });
                };
                reload.reload(self);
                // Once more with the keys as they are now (reloaded here, or
                // by a concurrent caller this one waited for).
                open_with(&self.ring(), owner, field, sealed)
            }
            other => other,
        }
    }

    /// Whether `sealed` was sealed under a key other than the primary (so
    /// that re-encryption would move it to the primary).
    pub fn needs_reseal(&self, sealed: &Sealed) -> bool {
        sealed.key_id() != Some(self.primary_id())
    }

    /// Opens `sealed` (sealed for `field` of `owner`, under any key of the
    /// ring) and seals its plaintext again under the primary key.
    pub fn reseal_for(&self, owner: &str, field: Field, sealed: &Sealed) -> Result<Sealed, SealError> {
        let plaintext = self.open_for(owner, field, sealed)?;
        Ok(self.seal_for(owner, field, &plaintext))
    }
}

fn seal_with(key: &Key, owner: &str, field: Field, plaintext: &SecretString) -> Sealed {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let aad = associated_data(owner, field);
    let ciphertext = key
        .cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext.expose_secret().as_bytes(),
                aad: aad.as_bytes(),
            },
        )
        // XChaCha20-Poly1305 encryption fails only for messages over ~256 GiB.
        .expect("plaintext within AEAD limits");
    let mut bytes = Vec::with_capacity(HEADER_LEN + ciphertext.len());
    bytes.push(FORMAT_V1);
    bytes.extend_from_slice(key.id.as_bytes());
    bytes.extend_from_slice(&nonce);
    bytes.extend_from_slice(&ciphertext);
    Sealed(bytes)
}

fn open_with(ring: &[Arc<Key>], owner: &str, field: Field, sealed: &Sealed) -> Result<SecretString, SealError> {
    let bytes = &sealed.0;
    if bytes.len() < HEADER_LEN || bytes[0] != FORMAT_V1 {
        return Err(SealError::Malformed);
    }
    let key_id = KeyId::from_slice(&bytes[1..1 + KEY_ID_LEN]).ok_or(SealError::Malformed)?;
    let key = ring
        .iter()
        .find(|k| k.id == key_id)
        .ok_or(SealError::UnknownKey { key_id })?;
    let nonce = &bytes[1 + KEY_ID_LEN..HEADER_LEN];
    let aad = associated_data(owner, field);
    let plaintext = Zeroizing::new(
        key.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: &bytes[HEADER_LEN..],
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SealError::Tampered)?,
    );
    let text = std::str::from_utf8(&plaintext).map_err(|_| SealError::Malformed)?;
    Ok(SecretString::from(text.to_owned()))
}

/// The associated data binding a ciphertext to its owner and field. Never
/// change this spelling: every stored ciphertext depends on it.
fn associated_data(owner: &str, field: Field) -> String {
    format!("thermos/v1/{owner}/{}", field.as_str())
}

/// A sealed secret as stored: opaque bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed(Vec<u8>);

impl Sealed {
    /// Wraps bytes read from storage.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The bytes to store.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The id of the key that sealed this value, if well-formed.
    pub fn key_id(&self) -> Option<KeyId> {
        if self.0.len() < HEADER_LEN {
            return None;
        }
        KeyId::from_slice(&self.0[1..1 + KEY_ID_LEN])
    }

    /// The id of the key that sealed this value, in hex, if well-formed.
    pub fn key_id_hex(&self) -> Option<String> {
        self.key_id().map(|id| id.to_string())
    }
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealed({} bytes)", self.0.len())
    }
}

/// Why a master key could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// Not valid base64.
    #[error("master key is not valid base64")]
    NotBase64,
    /// Decoded, but not 32 bytes.
    #[error("master key must be 32 bytes, found {0}")]
    WrongLength(usize),
    /// A list of keys holds none.
    #[error("no master key in the list (one base64 key per line or comma-separated, the primary first)")]
    Empty,
    /// One entry of a list of several keys is wrong.
    #[error("key {position} of {count}")]
    Entry {
        /// Its position, from 1.
        position: usize,
        /// How many keys the list has.
        count: usize,
        /// What is wrong with it.
        #[source]
        source: Box<KeyError>,
    },
}

/// Why a sealed value could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// Not something this version of Thermos wrote.
    #[error("sealed value is malformed")]
    Malformed,
    /// Sealed under a master key the ring does not hold.
    #[error("sealed value was written under master key {key_id}, which is not configured")]
    UnknownKey {
        /// The id the value names (never the key).
        key_id: KeyId,
    },
    /// Altered, or bound to another connection or field.
    #[error("sealed value failed authentication (tampered, or moved from another connection or field)")]
    Tampered,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(text: &str) -> SecretString {
        SecretString::from(text.to_owned())
    }

    #[test]
    fn a_sealed_token_opens_to_the_same_text() {
        let (key, _) = MasterKey::generate();
        let id = ConnectionId::generate();
        let sealed = key.seal(&id, Field::AccessToken, &secret("ya29.a0-token"));
        let opened = key.open(&id, Field::AccessToken, &sealed).unwrap();
        assert_eq!(opened.expose_secret(), "ya29.a0-token");
    }

    #[test]
    fn sealing_twice_gives_different_ciphertexts() {
        let (key, _) = MasterKey::generate();
        let id = ConnectionId::generate();
        let a = key.seal(&id, Field::AccessToken, &secret("same"));
        let b = key.seal(&id, Field::AccessToken, &secret("same"));
        assert_ne!(a, b);
    }

    #[test]
    fn the_plaintext_does_not_appear_in_the_sealed_bytes() {
        let (key, _) = MasterKey::generate();
        let sealed = key.seal(
            &ConnectionId::generate(),
            Field::RefreshToken,
            &secret("refresh-token-plaintext"),
        );
        let bytes = sealed.as_bytes();
        assert!(!bytes.windows(7).any(|w| w == b"refresh"));
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let (key, _) = MasterKey::generate();
        let id = ConnectionId::generate();
        let sealed = key.seal(&id, Field::AccessToken, &secret("token"));
        for i in 0..sealed.as_bytes().len() {
            let mut bytes = sealed.as_bytes().to_vec();
            bytes[i] ^= 0x01;
            let result = key.open(&id, Field::AccessToken, &Sealed::from_bytes(bytes));
            assert!(result.is_err(), "flip at byte {i} went unnoticed");
        }
    }

    #[test]
    fn a_ciphertext_moved_to_another_connection_or_field_does_not_open() {
        let (key, _) = MasterKey::generate();
        let id = ConnectionId::generate();
        let sealed = key.seal(&id, Field::AccessToken, &secret("token"));
        assert_eq!(
            key.open(&ConnectionId::generate(), Field::AccessToken, &sealed)
                .unwrap_err(),
            SealError::Tampered
        );
        assert_eq!(
            key.open(&id, Field::RefreshToken, &sealed).unwrap_err(),
            SealError::Tampered
        );
    }

    #[test]
    fn another_master_key_is_recognised_as_unknown() {
        let (key, _) = MasterKey::generate();
        let (other, _) = MasterKey::generate();
        let id = ConnectionId::generate();
        let sealed = key.seal(&id, Field::AccessToken, &secret("token"));
        assert_eq!(
            other.open(&id, Field::AccessToken, &sealed).unwrap_err(),
            SealError::UnknownKey {
                key_id: key.primary_id()
            }
        );
        assert_eq!(sealed.key_id_hex(), Some(key.id_hex()));
    }

    #[test]
    fn a_key_round_trips_through_base64_and_rejects_bad_text() {
        let (key, text) = MasterKey::generate();
        let again = MasterKey::parse_base64(text.expose_secret()).unwrap();
        assert_eq!(key.id_hex(), again.id_hex());
        assert_eq!(MasterKey::parse_base64("not base64!").unwrap_err(), KeyError::NotBase64);
        assert_eq!(MasterKey::parse_base64("AAAA").unwrap_err(), KeyError::WrongLength(3));
    }

    /// Sealed by the code as it was before `seal_for` existed: key
    /// `[42; 32]`, connection `con_0123456789abcdef0123456789abcdef`,
    /// refresh token `golden-refresh-token`. Every database written so far
    /// holds ciphertexts like this one; they must keep opening.
    const GOLDEN_REFRESH_TOKEN: &str =
        "AWd0xsvBT0tuIyn0FBUABPsoTuRL/8uvVgP3rysdP+IV8v0XdwcYQN4wBOPVlkahNLYbkqZb1SL6pIYGHBf+w85DYzpH";
    const GOLDEN_CONNECTION: &str = "con_0123456789abcdef0123456789abcdef";

    #[test]
    fn a_connection_token_sealed_before_seal_for_existed_still_opens() {
        let key = MasterKey::from_bytes(&[42u8; 32]);
        let id = ConnectionId::parse(GOLDEN_CONNECTION).unwrap();
        let sealed = Sealed::from_bytes(STANDARD.decode(GOLDEN_REFRESH_TOKEN).unwrap());
        let opened = key.open(&id, Field::RefreshToken, &sealed).unwrap();
        assert_eq!(opened.expose_secret(), "golden-refresh-token");
        let opened = key.open_for(GOLDEN_CONNECTION, Field::RefreshToken, &sealed).unwrap();
        assert_eq!(opened.expose_secret(), "golden-refresh-token");
    }

    #[test]
    fn connection_tokens_are_bound_to_the_literal_associated_data_thermos_v1_id_field() {
        let bytes = [9u8; 32];
        let key = MasterKey::from_bytes(&bytes);
        let id = ConnectionId::generate();
        let sealed = key.seal(&id, Field::AccessToken, &secret("tok"));
        let raw = sealed.as_bytes();
        let plain = XChaCha20Poly1305::new((&bytes).into())
            .decrypt(
                XNonce::from_slice(&raw[1 + KEY_ID_LEN..HEADER_LEN]),
                Payload {
                    msg: &raw[HEADER_LEN..],
                    aad: format!("thermos/v1/{id}/access_token").as_bytes(),
                },
            )
            .unwrap();
        assert_eq!(plain, b"tok");
        let via_owner = key.seal_for(&id.to_string(), Field::AccessToken, &secret("tok"));
        assert_eq!(
            key.open(&id, Field::AccessToken, &via_owner).unwrap().expose_secret(),
            "tok"
        );
    }

    #[test]
    fn a_custom_app_secret_opens_only_for_its_own_project_provider_and_field() {
        let (key, _) = MasterKey::generate();
        let sealed = key.seal_for("app/acme/google", Field::ClientSecret, &secret("s3cret"));
        let opened = key.open_for("app/acme/google", Field::ClientSecret, &sealed).unwrap();
        assert_eq!(opened.expose_secret(), "s3cret");
        for (owner, field) in [
            ("app/globex/google", Field::ClientSecret),
            ("app/acme/slack", Field::ClientSecret),
            ("app/acme/google", Field::RefreshToken),
        ] {
            assert_eq!(
                key.open_for(owner, field, &sealed).unwrap_err(),
                SealError::Tampered,
                "{owner} {field:?}"
            );
        }
    }

    #[test]
    fn debug_output_never_shows_key_material() {
        let key = MasterKey::from_bytes(&[7u8; 32]);
        let shown = format!("{key:?}");
        assert!(shown.contains("MasterKey"));
        assert!(!shown.contains("7, 7"));
    }
    fn ring(keys: &[&MasterKey]) -> MasterKey {
        MasterKey::join(keys.iter().copied()).unwrap()
    }

    #[test]
    fn a_value_sealed_under_an_old_key_opens_with_the_ring_and_new_values_carry_the_primary_id() {
        let (old, _) = MasterKey::generate();
        let (new, _) = MasterKey::generate();
        let id = ConnectionId::generate();
        let before = old.seal(&id, Field::RefreshToken, &secret("rotated-away"));

        let rotated = ring(&[&new, &old]);
        assert_eq!(rotated.primary_id(), new.primary_id());
        assert_eq!(rotated.key_ids(), [new.primary_id(), old.primary_id()]);
        let opened = rotated.open(&id, Field::RefreshToken, &before).unwrap();
        assert_eq!(opened.expose_secret(), "rotated-away");

        let after = rotated.seal(&id, Field::RefreshToken, &secret("fresh"));
        assert_eq!(after.key_id(), Some(new.primary_id()));
        assert!(rotated.needs_reseal(&before));
        assert!(!rotated.needs_reseal(&after));
        assert_eq!(
            old.open(&id, Field::RefreshToken, &after).unwrap_err(),
            SealError::UnknownKey {
                key_id: new.primary_id()
            }
        );
    }

    #[test]
    fn resealing_moves_a_value_to_the_primary_key_and_keeps_its_binding() {
        let (old, _) = MasterKey::generate();
        let (new, _) = MasterKey::generate();
        let sealed = old.seal_for("app/acme/google", Field::ClientSecret, &secret("s3cret"));
        let rotated = ring(&[&new, &old]);
        let resealed = rotated
            .reseal_for("app/acme/google", Field::ClientSecret, &sealed)
            .unwrap();
        assert_eq!(resealed.key_id(), Some(new.primary_id()));
        assert_eq!(
            new.open_for("app/acme/google", Field::ClientSecret, &resealed)
                .unwrap()
                .expose_secret(),
            "s3cret"
        );
        assert_eq!(
            rotated
                .reseal_for("app/acme/slack", Field::ClientSecret, &sealed)
                .unwrap_err(),
            SealError::Tampered
        );
    }

    #[test]
    fn an_unknown_key_id_is_an_error_naming_the_id_and_never_the_key() {
        let (key, text) = MasterKey::generate();
        let (other, _) = MasterKey::generate();
        let sealed = key.seal_for("webhook/wh_1", Field::ClientSecret, &secret("whsec"));
        let err = other
            .open_for("webhook/wh_1", Field::ClientSecret, &sealed)
            .unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains(&key.id_hex()), "{shown}");
        assert!(!shown.contains(text.expose_secret()), "{shown}");
        assert_eq!(
            shown,
            format!(
                "sealed value was written under master key {}, which is not configured",
                key.id_hex()
            )
        );
    }

    #[test]
    fn a_list_of_keys_parses_primary_first_from_lines_or_commas() {
        let (a, a_text) = MasterKey::generate();
        let (b, b_text) = MasterKey::generate();
        let (a_text, b_text) = (a_text.expose_secret(), b_text.expose_secret());
        let expected = [a.primary_id(), b.primary_id()];
        for text in [
            format!("{a_text}\n{b_text}\n"),
            format!("# the primary first\n\n  {a_text}  \n{b_text}"),
            format!("{a_text},{b_text}"),
            format!(" {a_text} , {b_text} ,"),
            format!("{a_text}\n{b_text}\n{a_text}\n"),
        ] {
            assert_eq!(MasterKey::parse_list(&text).unwrap().key_ids(), expected, "{text:?}");
        }
        assert_eq!(
            MasterKey::parse_list(" \n# only a comment\n").unwrap_err(),
            KeyError::Empty
        );
        assert_eq!(MasterKey::parse_list("AAAA").unwrap_err(), KeyError::WrongLength(3));
        let err = MasterKey::parse_list(&format!("{a_text},nope!")).unwrap_err();
        assert_eq!(
            err,
            KeyError::Entry {
                position: 2,
                count: 2,
                source: Box::new(KeyError::NotBase64)
            }
        );
        assert_eq!(err.to_string(), "key 2 of 2");
    }

    #[test]
    fn replacing_the_keys_is_seen_by_every_holder_of_the_ring() {
        let (old, _) = MasterKey::generate();
        let (new, _) = MasterKey::generate();
        let shared = std::sync::Arc::new(ring(&[&old]));
        let holder = std::sync::Arc::clone(&shared);
        assert!(shared.replace_keys(&ring(&[&new, &old])));
        assert!(!shared.replace_keys(&ring(&[&new, &old])));
        let id = ConnectionId::generate();
        assert_eq!(
            holder.seal(&id, Field::AccessToken, &secret("t")).key_id(),
            Some(new.primary_id())
        );
    }

    struct FixedReload(MasterKey, std::sync::atomic::AtomicUsize);

    impl KeyReload for FixedReload {
        fn reload(&self, ring: &MasterKey) {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            ring.replace_keys(&self.0);
        }
    }

    #[test]
    fn an_unknown_key_id_asks_the_reload_hook_once_and_then_opens() {
        let (old, _) = MasterKey::generate();
        let (new, _) = MasterKey::generate();
        let id = ConnectionId::generate();
        let sealed_by_new = new.seal(&id, Field::AccessToken, &secret("from another process"));
        let running = ring(&[&old]);
        let hook = std::sync::Arc::new(FixedReload(ring(&[&new, &old]), Default::default()));
        running.set_reload(hook.clone());
        let opened = running.open(&id, Field::AccessToken, &sealed_by_new).unwrap();
        assert_eq!(opened.expose_secret(), "from another process");
        assert_eq!(running.primary_id(), new.primary_id());
        assert_eq!(hook.1.load(std::sync::atomic::Ordering::SeqCst), 1);
        let (stranger, _) = MasterKey::generate();
        let foreign = stranger.seal(&id, Field::AccessToken, &secret("x"));
        assert_eq!(
            running.open(&id, Field::AccessToken, &foreign).unwrap_err(),
            SealError::UnknownKey {
                key_id: stranger.primary_id()
            }
        );
        assert_eq!(hook.1.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn a_key_id_round_trips_through_hex() {
        let (key, _) = MasterKey::generate();
        let id = key.primary_id();
        assert_eq!(KeyId::parse_hex(&id.to_string()), Ok(id));
        assert_eq!(KeyId::parse_hex("xyz"), Err(KeyIdError));
        assert_eq!(KeyId::parse_hex("0123456789abcdeg"), Err(KeyIdError));
    }
}
