//! Which IP addresses a project-supplied URL may reach: the classification
//! behind the SSRF guard. Pure functions, no IO.
//!
//! Everything that is not ordinary global unicast is blocked: loopback,
//! private (RFC 1918, RFC 4193), link-local, carrier-grade NAT, unspecified,
//! multicast, broadcast, documentation, benchmarking and other reserved
//! ranges, cloud metadata addresses — and IPv6 forms that embed an IPv4
//! address (mapped, compatible, NAT64, 6to4) are judged by that address.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is not a public target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    Loopback,
    Private,
    LinkLocal,
    /// 100.64.0.0/10, shared address space (carrier-grade NAT).
    SharedCgnat,
    Unspecified,
    Multicast,
    Broadcast,
    Documentation,
    /// Benchmarking, IETF protocol assignments, discard-only, "this network"
    /// and other special-purpose ranges.
    Reserved,
    /// A cloud provider's instance metadata service (169.254.169.254,
    /// fd00:ec2::254, metadata.google.internal).
    Metadata,
}

impl Blocked {
    /// The kind as a few words: "a private address".
    pub fn describe(self) -> &'static str {
        match self {
            Self::Loopback => "a loopback address",
            Self::Private => "a private address",
            Self::LinkLocal => "a link-local address",
            Self::SharedCgnat => "a shared (carrier-grade NAT) address",
            Self::Unspecified => "the unspecified address",
            Self::Multicast => "a multicast address",
            Self::Broadcast => "the broadcast address",
            Self::Documentation => "a documentation address",
            Self::Reserved => "a reserved address",
            Self::Metadata => "a cloud metadata address",
        }
    }
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// AWS/GCP/Azure/OpenStack metadata over IPv4.
pub const METADATA_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// AWS metadata over IPv6 (Nitro).
pub const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

/// Host names that are metadata services or loopback whatever DNS says.
pub fn classify_name(host: &str) -> Option<Blocked> {
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        return Some(Blocked::Loopback);
    }
    const METADATA_NAMES: &[&str] = &[
        "metadata.google.internal",
        "metadata.goog",
        "metadata",
        "instance-data",
        "instance-data.ec2.internal",
    ];
    METADATA_NAMES.contains(&name.as_str()).then_some(Blocked::Metadata)
}

/// `None` for a public (global unicast) address, else why it is blocked.
pub fn classify(ip: IpAddr) -> Option<Blocked> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<Blocked> {
    let [a, b, c, _] = ip.octets();
    let blocked = if ip == METADATA_V4 {
        Blocked::Metadata
    } else if ip.is_unspecified() {
        Blocked::Unspecified
    } else if a == 0 {
        // 0.0.0.0/8, "this network".
        Blocked::Reserved
    } else if ip.is_loopback() {
        Blocked::Loopback
    } else if ip.is_private() {
        Blocked::Private
    } else if ip.is_link_local() {
        Blocked::LinkLocal
    } else if a == 100 && (64..128).contains(&b) {
        Blocked::SharedCgnat
    } else if ip.is_broadcast() {
        Blocked::Broadcast
    } else if ip.is_multicast() {
        Blocked::Multicast
    } else if (a, b, c) == (192, 0, 2) || (a, b, c) == (198, 51, 100) || (a, b, c) == (203, 0, 113) {
        Blocked::Documentation
    } else if (a, b, c) == (192, 0, 0)
        // 192.88.99.0/24, the former 6to4 relay anycast.
        || (a, b, c) == (192, 88, 99)
        // 198.18.0.0/15, benchmarking.
        || (a == 198 && (b & 0xfe) == 18)
        // 240.0.0.0/4, reserved for future use.
        || a >= 240
    {
        Blocked::Reserved
    } else {
        return None;
    };
    Some(blocked)
}

fn classify_v6(ip: Ipv6Addr) -> Option<Blocked> {
    let s = ip.segments();
    if ip == METADATA_V6 {
        return Some(Blocked::Metadata);
    }
    if ip.is_unspecified() {
        return Some(Blocked::Unspecified);
    }
    if ip.is_loopback() {
        return Some(Blocked::Loopback);
    }
    // Forms that carry an IPv4 address are judged by it.
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    let blocked = if (s[0] & 0xfe00) == 0xfc00 {
        // fc00::/7, unique local (RFC 4193).
        Blocked::Private
    } else if (s[0] & 0xffc0) == 0xfe80 {
        Blocked::LinkLocal
    } else if (s[0] & 0xffc0) == 0xfec0 {
        // fec0::/10, the deprecated site-local range.
        Blocked::Private
    } else if (s[0] & 0xff00) == 0xff00 {
        Blocked::Multicast
    } else if (s[0], s[1]) == (0x2001, 0x0db8) || (s[0] & 0xfff0) == 0x3ff0 {
        // 2001:db8::/32 and 3fff::/20 (RFC 9637).
        Blocked::Documentation
    } else if (s[0], s[1], s[2], s[3]) == (0x0100, 0, 0, 0)
        // 64:ff9b:1::/48, local-use NAT64.
        || (s[0], s[1], s[2]) == (0x0064, 0xff9b, 0x0001)
        // 2001::/23, IETF protocol assignments (Teredo, ORCHID…).
        || (s[0] == 0x2001 && s[1] < 0x0200)
        // ::/8 apart from the forms above.
        || s[0] == 0
    {
        Blocked::Reserved
    } else {
        return None;
    };
    Some(blocked)
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`), well-known NAT64 (`64:ff9b::a.b.c.d`) or
/// 6to4 (`2002:AABB:CCDD::`) address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let o = ip.octets();
    let tail = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0, 0, _, _] => Some(tail),
        [0x0064, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail),
        [0x2002, ..] => Some(Ipv4Addr::new(o[2], o[3], o[4], o[5])),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(cases: &[(&str, Option<Blocked>)]) {
        for (text, expected) in cases {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(classify(ip), *expected, "{text}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        check(&[
            ("93.184.216.34", None),
            ("8.8.8.8", None),
            ("1.1.1.1", None),
            ("100.63.255.255", None),
            ("100.128.0.0", None),
            ("172.15.255.255", None),
            ("172.32.0.0", None),
            ("192.167.1.1", None),
            ("169.253.1.1", None),
            ("198.20.0.1", None),
            ("223.255.255.254", None),
            ("2606:2800:220:1:248:1893:25c8:1946", None),
            ("2a00:1450:4001:81c::200e", None),
            ("2001:4860:4860::8888", None),
            ("::ffff:93.184.216.34", None),
            ("64:ff9b::808:808", None),
            ("2002:5db8:d822::1", None),
        ]);
    }

    #[test]
    fn every_ipv4_special_range_is_blocked() {
        use Blocked::*;
        check(&[
            ("127.0.0.1", Some(Loopback)),
            ("127.255.255.254", Some(Loopback)),
            ("10.0.0.0", Some(Private)),
            ("10.255.255.255", Some(Private)),
            ("172.16.0.1", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("192.168.0.1", Some(Private)),
            ("169.254.0.1", Some(LinkLocal)),
            ("169.254.169.254", Some(Metadata)),
            ("100.64.0.1", Some(SharedCgnat)),
            ("100.127.255.255", Some(SharedCgnat)),
            ("0.0.0.0", Some(Unspecified)),
            ("0.1.2.3", Some(Reserved)),
            ("224.0.0.1", Some(Multicast)),
            ("239.255.255.255", Some(Multicast)),
            ("255.255.255.255", Some(Broadcast)),
            ("192.0.2.1", Some(Documentation)),
            ("198.51.100.7", Some(Documentation)),
            ("203.0.113.200", Some(Documentation)),
            ("192.0.0.8", Some(Reserved)),
            ("192.88.99.1", Some(Reserved)),
            ("198.18.0.1", Some(Reserved)),
            ("198.19.255.255", Some(Reserved)),
            ("240.0.0.1", Some(Reserved)),
        ]);
    }

    #[test]
    fn every_ipv6_special_range_is_blocked() {
        use Blocked::*;
        check(&[
            ("::1", Some(Loopback)),
            ("::", Some(Unspecified)),
            ("fc00::1", Some(Private)),
            ("fd12:3456:789a::1", Some(Private)),
            ("fd00:ec2::254", Some(Metadata)),
            ("fe80::1", Some(LinkLocal)),
            ("febf::1", Some(LinkLocal)),
            ("fec0::1", Some(Private)),
            ("ff02::1", Some(Multicast)),
            ("ff0e::1", Some(Multicast)),
            ("2001:db8::1", Some(Documentation)),
            ("3fff::1", Some(Documentation)),
            ("100::1", Some(Reserved)),
            ("64:ff9b:1::1", Some(Reserved)),
            ("2001::1", Some(Reserved)),
            ("2001:10::1", Some(Reserved)),
            ("::2:0:0:1", Some(Reserved)),
        ]);
    }

    #[test]
    fn ipv6_forms_embedding_an_ipv4_address_are_judged_by_it() {
        use Blocked::*;
        check(&[
            // IPv4-mapped.
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::ffff:10.1.2.3", Some(Private)),
            ("::ffff:169.254.169.254", Some(Metadata)),
            ("::ffff:100.64.0.1", Some(SharedCgnat)),
            ("::ffff:0.0.0.0", Some(Unspecified)),
            ("::ffff:255.255.255.255", Some(Broadcast)),
            ("::ffff:7f00:1", Some(Loopback)),
            // IPv4-compatible (deprecated).
            ("::127.0.0.1", Some(Loopback)),
            ("::192.168.1.1", Some(Private)),
            ("::169.254.169.254", Some(Metadata)),
            // NAT64 well-known prefix.
            ("64:ff9b::127.0.0.1", Some(Loopback)),
            ("64:ff9b::a9fe:a9fe", Some(Metadata)),
            // 6to4.
            ("2002:7f00:1::1", Some(Loopback)),
            ("2002:0a00:0001::", Some(Private)),
        ]);
    }

    #[test]
    fn localhost_and_metadata_names_are_blocked_by_name() {
        for name in ["localhost", "LOCALHOST.", "api.localhost"] {
            assert_eq!(classify_name(name), Some(Blocked::Loopback), "{name}");
        }
        for name in ["metadata.google.internal", "Metadata.Google.Internal.", "metadata.goog"] {
            assert_eq!(classify_name(name), Some(Blocked::Metadata), "{name}");
        }
        for name in ["hooks.example.com", "localhost.example.com", "metadata.example.com"] {
            assert_eq!(classify_name(name), None, "{name}");
        }
    }
}
