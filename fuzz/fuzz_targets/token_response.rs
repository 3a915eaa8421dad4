//! The token-endpoint answer classifier: `thermos_core::oauth::classify_response`
//! (and through it `parse_retry_after`), fed an arbitrary HTTP status,
//! `Retry-After` header and body.
//!
//! Input layout (the seeds in `corpus/` are written by `seeds/make_seeds.py`):
//!
//! | bytes | meaning |
//! |---|---|
//! | 0–1 | HTTP status, big-endian (any u16) |
//! | 2 | `n`: 0 = no `Retry-After`; otherwise the header is the next `n - 1` bytes (lossy UTF-8) |
//! | 4 bytes | the provider's `default_ttl` in seconds, big-endian (0 means 1) |
//! | 4 bytes | when the answer arrived: seconds after 2026-01-01, big-endian |
//! | rest | the body |
//!
//! Properties checked besides "never panics":
//! - a failure has an error code, a success has none;
//! - a wait is never longer than `MAX_RETRY_AFTER`; a lifetime is positive
//!   and at most a year (or the provider's default);
//! - the message has no control characters (no log injection) and is short;
//! - a token in the body never reaches the outcome's Debug output or
//!   message: when the body is a JSON object, the target plants a marker as
//!   `access_token` and `refresh_token` and looks for it.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use secrecy::ExposeSecret;
use thermos_core::oauth::{MAX_EXPIRES_IN, MAX_RETRY_AFTER, RefreshOutcome, classify_response};
use time::OffsetDateTime;

/// 2026-01-01T00:00:00Z.
const EPOCH_2026: i64 = 1_767_225_600;
/// A token value that the input cannot contain anywhere else (checked).
const MARKER: &str = "tok_FUZZ_MARKER_9f3c1a";

struct Input<'a> {
    status: u16,
    retry_after: Option<String>,
    default_ttl: Duration,
    received_at: OffsetDateTime,
    body: &'a [u8],
}

fn split(data: &[u8]) -> Option<Input<'_>> {
    let (&[s0, s1, n], rest) = data.split_first_chunk::<3>()?;
    let (retry_after, rest) = match n {
        0 => (None, rest),
        n => {
            let len = usize::from(n - 1).min(rest.len());
            let (header, rest) = rest.split_at(len);
            (Some(String::from_utf8_lossy(header).into_owned()), rest)
        }
    };
    let (ttl, rest) = rest.split_first_chunk::<4>()?;
    let (at, body) = rest.split_first_chunk::<4>()?;
    let received_at = OffsetDateTime::from_unix_timestamp(EPOCH_2026 + i64::from(u32::from_be_bytes(*at))).ok()?;
    Some(Input {
        status: u16::from_be_bytes([s0, s1]),
        retry_after,
        default_ttl: Duration::from_secs(u64::from(u32::from_be_bytes(*ttl).max(1))),
        received_at,
        body,
    })
}

fn classify(input: &Input<'_>, body: &[u8]) -> RefreshOutcome {
    classify_response(
        input.status,
        input.retry_after.as_deref(),
        body,
        input.received_at,
        input.default_ttl,
    )
}

fn check_invariants(input: &Input<'_>, outcome: &RefreshOutcome) {
    let message = outcome.message();
    assert!(
        !message.chars().any(char::is_control),
        "control character in message {message:?}"
    );
    assert!(
        message.chars().count() <= 512,
        "message of {} chars",
        message.chars().count()
    );
    if let Some(wait) = outcome.retry_after() {
        assert!(wait <= MAX_RETRY_AFTER, "retry_after {wait:?}");
    }
    match outcome {
        RefreshOutcome::Refreshed(grant) => {
            assert!((200..300).contains(&input.status), "refreshed on {}", input.status);
            assert_eq!(outcome.error_code(), None);
            assert!(!grant.expires_in.is_zero(), "zero lifetime");
            assert!(
                grant.expires_in <= MAX_EXPIRES_IN.max(input.default_ttl),
                "lifetime {:?}",
                grant.expires_in
            );
            assert!(!grant.access_token.expose_secret().is_empty());
            assert!(!grant.token_type.chars().any(char::is_control));
        }
        _ => assert!(outcome.error_code().is_some(), "failure without a code: {outcome:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = split(data) else {
        return;
    };
    let outcome = classify(&input, input.body);
    check_invariants(&input, &outcome);

    // Plant a marker token and make sure it does not leak.
    let Ok(serde_json::Value::Object(mut map)) = serde_json::from_slice::<serde_json::Value>(input.body) else {
        return;
    };
    // serde_json writes strings unescaped (but for quotes, backslashes and
    // control characters), so a marker hidden behind `\u` escapes shows here.
    let original = serde_json::to_string(&map).expect("a JSON object serializes");
    if original.contains(MARKER) || input.retry_after.as_deref().is_some_and(|r| r.contains(MARKER)) {
        return;
    }
    map.insert("access_token".into(), MARKER.into());
    map.insert("refresh_token".into(), MARKER.into());
    let body = serde_json::to_vec(&map).expect("a JSON object serializes");
    let outcome = classify(&input, &body);
    check_invariants(&input, &outcome);
    let debug = format!("{outcome:?}");
    assert!(!debug.contains(MARKER), "token in Debug output: {debug}");
    assert!(!outcome.message().contains(MARKER), "token in message");
    if let RefreshOutcome::Refreshed(grant) = &outcome {
        assert_eq!(grant.access_token.expose_secret(), MARKER);
        assert_eq!(grant.refresh_token.as_ref().map(|t| t.expose_secret()), Some(MARKER));
    }
});
