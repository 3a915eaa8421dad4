//! Standard Webhooks signatures: the `whsec_` secrets of project webhooks
//! and the `webhook-signature` header (`v1,` + base64 of HMAC-SHA256 over
//! `"{id}.{timestamp}.{body}"`, keyed with the base64-decoded part of the
//! secret after `whsec_`).
//!
//! It never logs and never puts a secret into an error. Read next:
//! `dispatch.rs` (which sends the signed requests).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// The prefix of a webhook secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// How many random bytes a new secret holds.
pub const SECRET_BYTES: usize = 32;
/// The version prefix of a signature.
pub const SIGNATURE_VERSION: &str = "v1";

/// A secret that cannot sign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The secret does not start with `whsec_`.
    #[error("webhook secret does not start with {SECRET_PREFIX}")]
    MissingPrefix,
    /// The part after `whsec_` is not base64 (or is empty).
    #[error("webhook secret is not base64 after {SECRET_PREFIX}")]
    NotBase64,
}

/// A new secret: `whsec_` + base64 of 32 random bytes.
pub fn new_secret() -> SecretString {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    let text = format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes));
    bytes.fill(0);
    SecretString::from(text)
}

/// The `webhook-signature` value of a message: `v1,` + base64(HMAC-SHA256(
/// key, "{msg_id}.{timestamp}.{body}")).
pub fn sign(secret: &SecretString, msg_id: &str, timestamp: i64, body: &[u8]) -> Result<String, SignError> {
    let encoded = secret
        .expose_secret()
        .strip_prefix(SECRET_PREFIX)
        .ok_or(SignError::MissingPrefix)?;
    let key = secrecy::zeroize::Zeroizing::new(STANDARD.decode(encoded).map_err(|_| SignError::NotBase64)?);
    if key.is_empty() {
        return Err(SignError::NotBase64);
    }
    // HMAC accepts keys of any length: this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes a key of any length");
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    Ok(format!("{SIGNATURE_VERSION},{}", STANDARD.encode(tag)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(text: &str) -> SecretString {
        SecretString::from(text.to_owned())
    }

    #[test]
    fn the_signature_matches_the_standard_webhooks_reference_vector() {
        // The example of the Standard Webhooks specification, recomputed
        // independently with Python's hmac module.
        let signature = sign(
            &secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn the_signature_matches_an_independently_computed_vector_for_a_32_byte_key() {
        // python3: key = bytes(range(32)); hmac.new(key, b"msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330." + body, sha256)
        let signature = sign(
            &secret("whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="),
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"id":"evt_1","type":"connection.failing"}"#,
        )
        .unwrap();
        assert_eq!(signature, "v1,hVl2GOt7TORvYfGzzun9kHXQreQEqrgqq3ZqjRPezsQ=");
    }

    #[test]
    fn a_new_secret_is_whsec_and_32_random_bytes() {
        let a = new_secret();
        let b = new_secret();
        let encoded = a.expose_secret().strip_prefix(SECRET_PREFIX).unwrap();
        assert_eq!(STANDARD.decode(encoded).unwrap().len(), SECRET_BYTES);
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert!(sign(&a, "evt_1", 1, b"{}").unwrap().starts_with("v1,"));
    }

    #[test]
    fn a_malformed_secret_is_an_error_that_does_not_show_it() {
        let missing = sign(&secret("nope-abc"), "m", 1, b"").unwrap_err();
        assert_eq!(missing, SignError::MissingPrefix);
        assert!(!missing.to_string().contains("nope-abc"));
        assert_eq!(
            sign(&secret("whsec_!!!"), "m", 1, b"").unwrap_err(),
            SignError::NotBase64
        );
        assert_eq!(sign(&secret("whsec_"), "m", 1, b"").unwrap_err(), SignError::NotBase64);
    }
}
