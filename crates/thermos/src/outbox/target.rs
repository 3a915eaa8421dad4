//! Where a project webhook may point: `https` to a public host, or — only
//! with `[security] allow_private_targets = true` (development, tests) —
//! `https` to a loopback/private address and `http` to loopback.
//!
//! The check is on the URL as written: a literal IP address is classified,
//! and `localhost` (and `*.localhost`) count as loopback. A public name that
//! resolves to a private address is not caught here (that would need a
//! resolver hook at connect time). It never logs. Read next: `dispatch.rs`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

/// Longest webhook URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// Parses and checks a webhook URL. `allow_private_targets` is the
/// `[security]` setting. The message of an error says what is wrong and how
/// to fix it; it names no field (the caller does).
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
    let kind = classify(&host);
    match parsed.scheme() {
        "https" => match kind {
            HostKind::Public => Ok(parsed),
            _ if allow_private_targets => Ok(parsed),
            HostKind::Loopback | HostKind::Private => Err(format!(
                "{host} is a loopback or private address; such targets need [security] allow_private_targets = true"
            )),
        },
        "http" => match kind {
            HostKind::Loopback if allow_private_targets => Ok(parsed),
            HostKind::Loopback => Err(format!(
                "http to {host} needs [security] allow_private_targets = true (development and tests); use https otherwise"
            )),
            HostKind::Public | HostKind::Private => Err(format!(
                "http is only allowed to a loopback address (127.0.0.0/8, ::1, localhost); use https for {host}"
            )),
        },
        other => Err(format!("scheme {other:?} is not supported; use https")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostKind {
    Loopback,
    /// Private, link-local, unspecified, shared, multicast or broadcast:
    /// nothing a public receiver lives at.
    Private,
    Public,
}

fn classify(host: &Host<&str>) -> HostKind {
    match host {
        Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if name == "localhost" || name.ends_with(".localhost") {
                HostKind::Loopback
            } else {
                HostKind::Public
            }
        }
        Host::Ipv4(ip) => classify_ip(IpAddr::V4(*ip)),
        Host::Ipv6(ip) => classify_ip(IpAddr::V6(*ip)),
    }
}

fn classify_ip(ip: IpAddr) -> HostKind {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => classify_v4(v4),
            None => classify_v6(v6),
        },
    }
}

fn classify_v4(ip: Ipv4Addr) -> HostKind {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        HostKind::Loopback
    } else if ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0
        // 100.64.0.0/10, carrier-grade NAT (shared address space).
        || (a == 100 && (64..128).contains(&b))
    {
        HostKind::Private
    } else {
        HostKind::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> HostKind {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        HostKind::Loopback
    } else if ip.is_unspecified()
        || ip.is_multicast()
        // fc00::/7, unique local.
        || (first & 0xfe00) == 0xfc00
        // fe80::/10, link-local.
        || (first & 0xffc0) == 0xfe80
    {
        HostKind::Private
    } else {
        HostKind::Public
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
    fn http_to_a_non_loopback_host_is_refused_in_every_configuration() {
        for allow in [false, true] {
            for url in [
                "http://example.com/hook",
                "http://10.0.0.5/hook",
                "http://93.184.216.34/",
            ] {
                let error = validate_target(url, allow).unwrap_err();
                assert!(error.contains("http is only allowed to a loopback"), "{url}: {error}");
            }
        }
    }

    #[test]
    fn http_to_loopback_needs_allow_private_targets() {
        for url in [
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
