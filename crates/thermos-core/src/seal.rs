//! Sealing tokens at rest: XChaCha20-Poly1305 under the master key.
//!
//! A [`Sealed`] value carries a format byte, the id of the key that sealed
//! it (so the master key can be rotated later), a random 24-byte nonce and the
//! ciphertext with its tag. The associated data binds it to one owner (a
//! connection, or a project's custom app: `app/{project}/{provider}`) and one
//! field: a ciphertext copied to another row or column does not open.
//! Tampering fails to open; it is never decrypted into garbage.

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
    /// A project's own client secret (custom apps).
    ClientSecret,
}

impl Field {
    fn as_str(self) -> &'static str {
        match self {
            Self::AccessToken => "access_token",
            Self::RefreshToken => "refresh_token",
            Self::ClientSecret => "client_secret",
        }
    }
}

/// The 32-byte master key. Its Debug output never shows the key.
pub struct MasterKey {
    cipher: XChaCha20Poly1305,
    id: [u8; KEY_ID_LEN],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id_hex())
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    /// A key from 32 raw bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        let digest = Sha256::new()
            .chain_update(b"thermos key id v1")
            .chain_update(bytes)
            .finalize();
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        Self {
            cipher: XChaCha20Poly1305::new(bytes.into()),
            id,
        }
    }

    /// Parses the base64 text form (32 bytes once decoded; surrounding
    /// whitespace is ignored).
    pub fn parse_base64(text: &str) -> Result<Self, KeyError> {
        let bytes = Zeroizing::new(STANDARD.decode(text.trim()).map_err(|_| KeyError::NotBase64)?);
        let array: &[u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::WrongLength(bytes.len()))?;
        Ok(Self::from_bytes(array))
    }

    /// A fresh random key, returned with its base64 text form for storing.
    pub fn generate() -> (Self, SecretString) {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(bytes.as_mut());
        let text = SecretString::from(STANDARD.encode(bytes.as_ref()));
        (Self::from_bytes(&bytes), text)
    }

    /// The key's id, in hex: a fingerprint that reveals nothing of the key.
    pub fn id_hex(&self) -> String {
        self.id.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Seals `plaintext` for `field` of connection `owner`.
    pub fn seal(&self, owner: &ConnectionId, field: Field, plaintext: &SecretString) -> Sealed {
        self.seal_for(&owner.to_string(), field, plaintext)
    }

    /// Opens a value sealed for `field` of connection `owner`.
    pub fn open(&self, owner: &ConnectionId, field: Field, sealed: &Sealed) -> Result<SecretString, SealError> {
        self.open_for(&owner.to_string(), field, sealed)
    }

    /// Seals `plaintext` for `field` of any `owner`: the associated data is
    /// `thermos/v1/{owner}/{field}`. A connection's owner is its id (what
    /// [`MasterKey::seal`] uses); a project's custom app is
    /// `app/{project}/{provider}`. Owners of different kinds never collide
    /// because a connection id never contains a `/`.
    pub fn seal_for(&self, owner: &str, field: Field, plaintext: &SecretString) -> Sealed {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let aad = associated_data(owner, field);
        let ciphertext = self
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
        bytes.extend_from_slice(&self.id);
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&ciphertext);
        Sealed(bytes)
    }

    /// Opens a value sealed by [`MasterKey::seal_for`] with the same `owner`
    /// and `field`.
    pub fn open_for(&self, owner: &str, field: Field, sealed: &Sealed) -> Result<SecretString, SealError> {
        let bytes = &sealed.0;
        if bytes.len() < HEADER_LEN || bytes[0] != FORMAT_V1 {
            return Err(SealError::Malformed);
        }
        if bytes[1..1 + KEY_ID_LEN] != self.id {
            return Err(SealError::UnknownKey);
        }
        let nonce = &bytes[1 + KEY_ID_LEN..HEADER_LEN];
        let aad = associated_data(owner, field);
        let plaintext = Zeroizing::new(
            self.cipher
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

    /// The id of the key that sealed this value, in hex, if well-formed.
    pub fn key_id_hex(&self) -> Option<String> {
        (self.0.len() >= HEADER_LEN).then(|| self.0[1..1 + KEY_ID_LEN].iter().map(|b| format!("{b:02x}")).collect())
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
}

/// Why a sealed value could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// Not something this version of Thermos wrote.
    #[error("sealed value is malformed")]
    Malformed,
    /// Sealed under another master key.
    #[error("sealed value was written under another master key")]
    UnknownKey,
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
            SealError::UnknownKey
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
}
