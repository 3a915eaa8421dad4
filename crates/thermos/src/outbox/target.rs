//! Where a project webhook may point: `https` to a public host, or — only
//! with `[security] allow_private_targets = true` (development, tests) —
//! `https` or `http` to a loopback, private or otherwise non-public address.
//!
//! [`validate_target`] checks the URL as written: a literal IP address is
//! classified ([`crate::egress::ip`]), and `localhost` (`*.localhost`) and
//! metadata names are refused by name. [`check_resolved`] adds, at
//! registration, the addresses the name resolves to; at delivery the
//! dispatcher's HTTP client resolves through the guard, so a name that
//! changes its answer later (DNS rebinding) still reaches nothing private.
//! It never logs. Read next: `egress/mod.rs`, `dispatch.rs`.

use std::net::IpAddr;

use url::{Host, Url};

use crate::egress::{self, EgressPolicy};

/// Longest webhook URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// Parses and checks a webhook URL as written. `allow_private_targets` is
/// the `[security]` setting. The message of an error says what is wrong and
/// how to fix it; it names no field (the caller does).
pub fn validate_target(url: &str, allow_private_targets: bool) -> Result<Url, String> {
    if url.len() > MAX_URL_LEN {
        return Err(format!("longer than {MAX_URL_LEN} characters"));
    }
    let parsed = Url::parse(url).map_err(|e| format!("not a valid absolute URL ({e})"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(
            "must not contain credentials (user:password@); authenticate receivers with the webhook signature".into(),
        );
    }
    let host = parsed.host().ok_or("must have a host")?;
    let policy = EgressPolicy::system(allow_private_targets);
    let refused = match &host {
        Host::Domain(name) => policy.check_name(name),
        Host::Ipv4(ip) => policy.check_ip(&ip.to_string(), IpAddr::V4(*ip)),
        Host::Ipv6(ip) => policy.check_ip(&ip.to_string(), IpAddr::V6(*ip)),
    };
    refused.map_err(|refused| refused.to_string())?;
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if is_non_public(&host) && allow_private_targets => Ok(parsed),
        "http" if is_non_public(&host) => Err(format!(
            "http to {host} needs security.allow_private_targets = true (development and tests); use https otherwise"
        )),
        "http" => Err(format!(
            "http is only allowed to a loopback or private address (with security.allow_private_targets = true); use https for {host}"
        )),
        other => Err(format!("scheme {other:?} is not supported; use https")),
    }
}

/// The registration-time check of a URL that passed [`validate_target`]:
/// a host name is resolved and refused if any of its addresses is blocked.
pub async fn check_resolved(url: &Url, policy: &EgressPolicy) -> Result<(), String> {
    let Some(host) = url.host() else {
        return Err("must have a host".into());
    };
    policy
        .check_host(&host)
        .await
        .map(drop)
        .map_err(|refused| refused.to_string())
}

/// A literal address that is not public, or a name that is by definition
/// loopback (`localhost`) or a metadata service.
fn is_non_public(host: &Host<&str>) -> bool {
    match host {
        Host::Domain(name) => egress::ip::classify_name(name).is_some(),
        Host::Ipv4(ip) => egress::ip::classify(IpAddr::V4(*ip)).is_some(),
        Host::Ipv6(ip) => egress::ip::classify(IpAddr::V6(*ip)).is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_to_a_public_host_is_accepted_in_every_configuration() {
        for allow in [false, true] {
            for url in [
                "https://hooks.example.com/thermos",
                "https://93.184.216.34:8443/x?y=1",
                "https://[2606:2800:220:1::1]/h",
            ] {
                assert!(validate_target(url, allow).is_ok(), "{url}");
            }
        }
    }

    #[test]
    fn http_to_a_public_host_is_refused_in_every_configuration() {
        for allow in [false, true] {
            for url in ["http://example.com/hook", "http://93.184.216.34/"] {
                let error = validate_target(url, allow).unwrap_err();
                assert!(
                    error.contains("http is only allowed to a loopback or private"),
                    "{url}: {error}"
                );
            }
        }
    }

    #[test]
    fn http_to_a_loopback_or_private_address_needs_allow_private_targets() {
        for url in [
            "http://10.0.0.5/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://127.0.0.1:9000/hook",
            "http://127.8.9.10/hook",
            "http://[::1]:80/hook",
            "http://localhost:3000/hook",
            "http://api.localhost/hook",
            "http://[::ffff:127.0.0.1]/hook",
        ] {
            assert!(validate_target(url, true).is_ok(), "{url}");
            let error = validate_target(url, false).unwrap_err();
            assert!(error.contains("allow_private_targets = true"), "{url}: {error}");
        }
    }

    #[test]
    fn https_to_a_private_or_loopback_address_needs_allow_private_targets() {
        for url in [
            "https://127.0.0.1/hook",
            "https://10.1.2.3/hook",
            "https://172.16.0.1/hook",
            "https://192.168.1.1/hook",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1/hook",
            "https://0.0.0.0/hook",
            "https://[fd00::1]/hook",
            "https://[fe80::1]/hook",
            "https://[::ffff:10.0.0.1]/hook",
            "https://localhost/hook",
            "https://metadata.google.internal/computeMetadata/v1/",
            "https://[::ffff:169.254.169.254]/",
            "https://[fd00:ec2::254]/",
        ] {
            let error = validate_target(url, false).unwrap_err();
            assert!(error.contains("allow_private_targets"), "{url}: {error}");
            assert!(validate_target(url, true).is_ok(), "{url}");
        }
    }

    #[test]
    fn an_obfuscated_loopback_address_is_still_loopback() {
        // The URL parser normalises these to 127.0.0.1.
        for url in ["http://0x7f.0.0.1/", "http://2130706433/", "http://127.1/"] {
            assert!(validate_target(url, false).is_err(), "{url}");
            assert!(validate_target(url, true).is_ok(), "{url}");
        }
    }

    #[test]
    fn credentials_other_schemes_and_garbage_are_refused_with_a_reason() {
        let cases = [
            ("https://user:pw@hooks.example.com/", "credentials"),
            ("https://user@hooks.example.com/", "credentials"),
            ("ftp://hooks.example.com/", "scheme \"ftp\""),
            ("file:///etc/passwd", "host"),
            ("hooks.example.com/x", "not a valid absolute URL"),
            ("", "not a valid absolute URL"),
        ];
        for (url, expected) in cases {
            let error = validate_target(url, true).unwrap_err();
            assert!(error.contains(expected), "{url}: {error}");
        }
        let long = format!("https://hooks.example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(validate_target(&long, true).unwrap_err().contains("longer than"));
    }
}
