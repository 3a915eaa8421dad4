//! The SSRF guard: where Thermos may connect on a project's behalf.
//!
//! A project supplies URLs (today: webhook endpoints) that Thermos later
//! connects to from inside the deployment. Unless the operator sets
//! `[security] allow_private_targets = true`, such a URL may only reach
//! public addresses ([`ip::classify`]): never loopback, private, link-local,
//! metadata or other special ranges. It is checked twice:
//!
//! - at registration, [`EgressPolicy::check_host`] classifies a literal
//!   address or resolves the name and refuses it if any address is blocked,
//!   so the project learns at once;
//! - at connect time, the HTTP client resolves names through a
//!   [`GuardedResolver`], which drops blocked addresses and fails when none
//!   is left: the address connected to is the address checked, so a name
//!   that changes its answer after registration (DNS rebinding) reaches
//!   nothing private. Literal addresses never reach a resolver; the caller
//!   checks them with [`EgressPolicy::check_ip`] before sending.
//!
//! Guarded clients follow no redirect and use no proxy (a proxy would
//! resolve the name itself, behind the guard's back). Name resolution is a
//! [`NameLookup`], injectable so tests can change a name's answer. Never
//! logs. Read next: `ip.rs`, `outbox/target.rs`.

pub mod ip;

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

pub use ip::Blocked;

/// How long a registration waits for a name to resolve.
pub const REGISTRATION_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Resolves a host name to its addresses.
pub trait NameLookup: Send + Sync + fmt::Debug {
    /// Every address of `host` (a name, never a literal address).
    fn lookup<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>>;
}

/// The operating system's resolver (`getaddrinfo` on a blocking thread).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemLookup;

impl NameLookup for SystemLookup {
    fn lookup<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host, 0)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    }
}

/// Why a target was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The host is, or resolves to, a blocked address.
    Address { host: String, ip: IpAddr, kind: Blocked },
    /// The host name itself is blocked (`localhost`, metadata names).
    Name { host: String, kind: Blocked },
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Address { host, ip, kind } if host == &ip.to_string() => {
                write!(f, "{host} is {kind}")?;
            }
            Self::Address { host, ip, kind } => write!(f, "{host} resolves to {kind} {ip}")?,
            Self::Name { host, kind } => write!(f, "{host} is {kind}")?,
        }
        f.write_str("; set security.allow_private_targets = true to allow")
    }
}

impl std::error::Error for Refused {}

/// The guard's settings and resolver. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EgressPolicy {
    /// `[security] allow_private_targets`: everything is allowed.
    pub allow_private_targets: bool,
    lookup: Arc<dyn NameLookup>,
}

impl EgressPolicy {
    /// A policy resolving names with `lookup`.
    pub fn new(allow_private_targets: bool, lookup: Arc<dyn NameLookup>) -> Self {
        Self {
            allow_private_targets,
            lookup,
        }
    }

    /// A policy with the system resolver.
    pub fn system(allow_private_targets: bool) -> Self {
        Self::new(allow_private_targets, Arc::new(SystemLookup))
    }

    /// The resolver.
    pub fn lookup(&self) -> &Arc<dyn NameLookup> {
        &self.lookup
    }

    /// Refuses a blocked literal address (`host` is how the URL wrote it).
    pub fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), Refused> {
        match ip::classify(ip) {
            Some(kind) if !self.allow_private_targets => Err(Refused::Address {
                host: host.to_owned(),
                ip,
                kind,
            }),
            _ => Ok(()),
        }
    }

    /// Refuses a blocked host name without resolving it.
    pub fn check_name(&self, host: &str) -> Result<(), Refused> {
        match ip::classify_name(host) {
            Some(kind) if !self.allow_private_targets => Err(Refused::Name {
                host: host.to_owned(),
                kind,
            }),
            _ => Ok(()),
        }
    }

    /// The registration check of `host`: a literal address is classified; a
    /// name is checked by name, then resolved (for at most
    /// [`REGISTRATION_LOOKUP_TIMEOUT`]) and refused if any of its addresses
    /// is blocked. Returns the addresses seen (empty when the name did not
    /// resolve: the connect-time guard still applies then).
    pub async fn check_host(&self, host: &url::Host<&str>) -> Result<Vec<IpAddr>, Refused> {
        let name = match host {
            url::Host::Ipv4(ip) => return self.check_ip(&ip.to_string(), IpAddr::V4(*ip)).map(|()| vec![]),
            url::Host::Ipv6(ip) => return self.check_ip(&ip.to_string(), IpAddr::V6(*ip)).map(|()| vec![]),
            url::Host::Domain(name) => *name,
        };
        self.check_name(name)?;
        if self.allow_private_targets {
            return Ok(vec![]);
        }
        let resolved = tokio::time::timeout(REGISTRATION_LOOKUP_TIMEOUT, self.lookup.lookup(name)).await;
        let addrs = match resolved {
            Ok(Ok(addrs)) => addrs,
            Ok(Err(_)) | Err(_) => return Ok(vec![]),
        };
        for ip in &addrs {
            self.check_ip(name, *ip)?;
        }
        Ok(addrs)
    }

    /// The resolver for a guarded HTTP client.
    pub fn resolver(&self) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver { policy: self.clone() })
    }

    /// A `reqwest` client builder that resolves through the guard, follows
    /// no redirect and uses no proxy.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .dns_resolver(self.resolver())
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
    }
}

/// A `reqwest` resolver that only hands out addresses the policy allows.
#[derive(Debug)]
pub struct GuardedResolver {
    policy: EgressPolicy,
}

impl GuardedResolver {
    /// The allowed addresses of `host`; an error when there are none.
    pub async fn resolve_allowed(&self, host: &str) -> Result<Vec<IpAddr>, Box<dyn std::error::Error + Send + Sync>> {
        let policy = &self.policy;
        policy.check_name(host)?;
        let addrs = policy
            .lookup
            .lookup(host)
            .await
            .map_err(|e| format!("resolve {host}: {e}"))?;
        let mut first_refusal = None;
        let allowed: Vec<IpAddr> = addrs
            .into_iter()
            .filter(|ip| match policy.check_ip(host, *ip) {
                Ok(()) => true,
                Err(refused) => {
                    first_refusal.get_or_insert(refused);
                    false
                }
            })
            .collect();
        match (allowed.is_empty(), first_refusal) {
            (true, Some(refused)) => Err(Box::new(refused)),
            (true, None) => Err(format!("resolve {host}: no addresses").into()),
            (false, _) => Ok(allowed),
        }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let resolver = GuardedResolver {
            policy: self.policy.clone(),
        };
        Box::pin(async move {
            let allowed = resolver.resolve_allowed(name.as_str()).await?;
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// A [`NameLookup`] with fixed answers that can be changed while running,
/// for tests (DNS rebinding) and the demo. Unknown names fail to resolve.
#[derive(Debug, Default)]
pub struct StaticLookup {
    answers: std::sync::Mutex<std::collections::HashMap<String, Vec<IpAddr>>>,
}

impl StaticLookup {
    /// Makes `host` resolve to `addrs` from now on.
    pub fn set(&self, host: &str, addrs: &[IpAddr]) {
        self.answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(host.to_ascii_lowercase(), addrs.to_vec());
    }
}

impl NameLookup for StaticLookup {
    fn lookup<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
        let answer = self
            .answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&host.to_ascii_lowercase())
            .cloned();
        Box::pin(async move { answer.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such host")) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn policy(allow: bool) -> (EgressPolicy, Arc<StaticLookup>) {
        let lookup = Arc::new(StaticLookup::default());
        (EgressPolicy::new(allow, lookup.clone()), lookup)
    }

    #[tokio::test]
    async fn registration_refuses_a_name_with_any_blocked_address_and_says_why() {
        let (policy, lookup) = policy(false);
        lookup.set("mixed.test", &ips(&["93.184.216.34", "10.0.0.5"]));
        let error = policy.check_host(&url::Host::Domain("mixed.test")).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "mixed.test resolves to a private address 10.0.0.5; set security.allow_private_targets = true to allow"
        );
        lookup.set("public.test", &ips(&["93.184.216.34"]));
        assert!(policy.check_host(&url::Host::Domain("public.test")).await.is_ok());
        // A name that does not resolve now is left to the connect-time guard.
        assert!(policy.check_host(&url::Host::Domain("unknown.test")).await.is_ok());
    }

    #[tokio::test]
    async fn the_resolver_hands_out_only_allowed_addresses() {
        let (policy, lookup) = policy(false);
        let resolver = policy.resolver();
        lookup.set("mixed.test", &ips(&["127.0.0.1", "93.184.216.34"]));
        assert_eq!(
            resolver.resolve_allowed("mixed.test").await.unwrap(),
            ips(&["93.184.216.34"])
        );
        lookup.set("rebound.test", &ips(&["127.0.0.1", "::1"]));
        let error = resolver.resolve_allowed("rebound.test").await.unwrap_err().to_string();
        assert!(
            error.contains("rebound.test resolves to a loopback address 127.0.0.1"),
            "{error}"
        );
        let error = resolver
            .resolve_allowed("metadata.google.internal")
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("cloud metadata"), "{error}");
    }

    #[tokio::test]
    async fn allow_private_targets_allows_everything() {
        let (policy, lookup) = policy(true);
        lookup.set("rebound.test", &ips(&["127.0.0.1"]));
        assert_eq!(
            policy.resolver().resolve_allowed("rebound.test").await.unwrap(),
            ips(&["127.0.0.1"])
        );
        assert!(policy.check_host(&url::Host::Domain("localhost")).await.is_ok());
        assert!(policy.check_ip("10.0.0.1", "10.0.0.1".parse().unwrap()).is_ok());
    }
}
