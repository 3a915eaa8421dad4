//! The provider catalogue: common OAuth providers (Google, Microsoft, Slack,
//! …) with their endpoints, client authentication, default scopes, token
//! lifetimes, rotation and quirks, so that a configured `[[provider]]` can
//! say `catalogue = "google"` and add only its client credentials.
//!
//! The data is `providers.toml`, compiled into the binary and parsed once
//! ([`entries`]). Endpoint URLs may hold `{name}` placeholders (a Microsoft
//! tenant, a Salesforce domain) filled from the provider's
//! `catalogue_params` or the entry's defaults ([`Entry::endpoints`]). The
//! generic `oidc` entry has no endpoints of its own: they are discovered
//! from the issuer's metadata at startup ([`discovery`]).
//!
//! This module never sees a client secret and does no IO except
//! [`discovery`]'s one metadata fetch per `oidc` provider.
//!
//! Read next: `config/build/provider.rs` (how an entry fills a provider),
//! `cli/providers.rs` (`thermos providers list|show`), docs/providers.md.

pub mod discovery;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Toml};
use serde::Deserialize;
use thermos_core::oauth::AuthMethod;
use url::Url;

pub use discovery::{DiscoveryError, DiscoveryErrors, PendingDiscovery, resolve_discovery};

/// The catalogue as written, compiled into the binary.
pub const CATALOGUE_TOML: &str = include_str!("providers.toml");

/// Whether a refresh answers a new refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// Every refresh answers a new refresh token (store it; the old one may die).
    Yes,
    /// The refresh token stays the same.
    No,
    /// A setting of the provider's app (or server) decides.
    Optional,
}

impl Rotation {
    /// `yes`, `no` or `optional`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Yes => "yes",
            Self::No => "no",
            Self::Optional => "optional",
        }
    }

    fn parse(raw: &str) -> Option<Self> {
        match raw {
            "yes" => Some(Self::Yes),
            "no" => Some(Self::No),
            "optional" => Some(Self::Optional),
            _ => None,
        }
    }
}

/// A `{name}` placeholder of an entry's URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The value used when the provider's `catalogue_params` has none;
    /// `None`: the provider must give one.
    pub default: Option<String>,
    /// What the value is, for `providers show` and error messages.
    pub description: String,
}

/// One provider of the catalogue.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The catalogue name (`catalogue = "…"` in a `[[provider]]`).
    pub slug: String,
    /// The provider's human name.
    pub name: String,
    /// The provider's OAuth documentation.
    pub docs: Option<String>,
    /// Authorization endpoint template (`None` for discovery entries).
    pub authorization_url: Option<String>,
    /// Token endpoint template (`None` for discovery entries).
    pub token_url: Option<String>,
    /// RFC 7009 revocation endpoint template, where the provider has one.
    pub revocation_url: Option<String>,
    /// Whether the endpoints come from the issuer's metadata (RFC 8414, OIDC discovery).
    pub discovery: bool,
    /// How the client authenticates at the token endpoint.
    pub auth_method: AuthMethod,
    /// Default scopes.
    pub scopes: Vec<String>,
    /// How scopes are joined in a request (`" "`, or `","` for Slack and Linear).
    pub scope_separator: String,
    /// Parameters added to the authorization URL's query.
    pub authorization_params: BTreeMap<String, String>,
    /// Extra form parameters of every refresh request.
    pub token_params: BTreeMap<String, String>,
    /// Whether refresh tokens rotate.
    pub rotation: Rotation,
    /// How long a rotated-out refresh token still works, when published.
    pub reuse_grace: Option<Duration>,
    /// Default access-token lifetime (used when a response has no `expires_in`).
    pub access_token_ttl: Duration,
    /// Absolute refresh-token lifetime, when there is one.
    pub refresh_token_ttl: Option<Duration>,
    /// Refresh-token expiry when unused, when there is one.
    pub refresh_token_idle: Option<Duration>,
    /// Token response fields beyond RFC 6749's (`refresh_token_expires_in`, …).
    pub response_fields: Vec<String>,
    /// What is unusual about the provider and how Thermos handles it.
    pub quirks: String,
    /// The placeholders of the URLs, by name.
    pub params: BTreeMap<String, Param>,
}

/// An entry's endpoints with their placeholders filled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// The authorization endpoint, with the entry's `authorization_params` in its query.
    pub authorization_url: Url,
    /// The token endpoint.
    pub token_url: Url,
    /// The RFC 7009 revocation endpoint, if any.
    pub revocation_url: Option<Url>,
}

/// Why an entry's endpoints could not be filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointError {
    /// A placeholder without a default was not given.
    MissingParam(String),
    /// A filled-in template is not a URL.
    NotAUrl(String),
    /// The entry discovers its endpoints; there are none to fill.
    Discovery,
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingParam(name) => write!(f, "parameter {name:?} is required"),
            Self::NotAUrl(text) => write!(f, "not a URL: {text}"),
            Self::Discovery => f.write_str("the endpoints come from discovery"),
        }
    }
}

impl Entry {
    /// The placeholder values: the given ones, else the defaults. Unknown
    /// names and values are the caller's to check ([`Entry::check_param`]).
    pub fn param_values(&self, given: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>, EndpointError> {
        let mut values = BTreeMap::new();
        for (name, param) in &self.params {
            match given.get(name).or(param.default.as_ref()) {
                Some(value) => {
                    values.insert(name.clone(), value.clone());
                }
                None => return Err(EndpointError::MissingParam(name.clone())),
            }
        }
        Ok(values)
    }

    /// Fills the URL templates from `given` (else the defaults).
    pub fn endpoints(&self, given: &BTreeMap<String, String>) -> Result<Endpoints, EndpointError> {
        let (Some(authorization), Some(token)) = (&self.authorization_url, &self.token_url) else {
            return Err(EndpointError::Discovery);
        };
        let values = self.param_values(given)?;
        let fill = |template: &str| -> Result<Url, EndpointError> {
            let text = fill_template(template, &values);
            Url::parse(&text).map_err(|_| EndpointError::NotAUrl(text))
        };
        let mut authorization_url = fill(authorization)?;
        if !self.authorization_params.is_empty() {
            let mut query = authorization_url.query_pairs_mut();
            for (name, value) in &self.authorization_params {
                query.append_pair(name, value);
            }
        }
        Ok(Endpoints {
            authorization_url,
            token_url: fill(token)?,
            revocation_url: self.revocation_url.as_deref().map(fill).transpose()?,
        })
    }

    /// Whether `value` may fill placeholder `name`: a declared name, and a
    /// value of letters, digits, `-`, `_` and `.` only (it lands in a host
    /// name or a path segment, so nothing may change the URL's shape).
    pub fn check_param(&self, name: &str, value: &str) -> Result<(), String> {
        if !self.params.contains_key(name) {
            let known: Vec<&str> = self.params.keys().map(String::as_str).collect();
            return Err(if known.is_empty() {
                format!("catalogue entry {:?} takes no parameters", self.slug)
            } else {
                format!(
                    "unknown parameter of catalogue entry {:?} (expected one of: {})",
                    self.slug,
                    known.join(", ")
                )
            });
        }
        let fine = !value.is_empty()
            && value.len() <= 253
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !fine {
            return Err(format!(
                "expected letters, digits, '-', '_' and '.' only (got {value:?})"
            ));
        }
        Ok(())
    }
}

/// Replaces every `{name}` of `template` by its value.
fn fill_template(template: &str, values: &BTreeMap<String, String>) -> String {
    let mut text = template.to_owned();
    for (name, value) in values {
        text = text.replace(&format!("{{{name}}}"), value);
    }
    text
}

/// Every catalogue entry, in catalogue order.
pub fn entries() -> &'static [Entry] {
    static ENTRIES: OnceLock<Vec<Entry>> = OnceLock::new();
    ENTRIES.get_or_init(|| {
        // The compiled-in catalogue is checked by the tests
        // (`every_entry_parses…`), so it always parses.
        parse(CATALOGUE_TOML).expect("the built-in provider catalogue parses")
    })
}

/// The entry named `slug`.
pub fn entry(slug: &str) -> Option<&'static Entry> {
    entries().iter().find(|e| e.slug == slug)
}

/// The entries' slugs, for error messages.
pub fn slugs() -> Vec<&'static str> {
    entries().iter().map(|e| e.slug.as_str()).collect()
}

/// Formats a catalogue duration the way it is written (`90d`, `12h`, `30m`, `45s`).
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 => "0s".to_owned(),
        s if s % 86_400 == 0 && s > 86_400 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The configuration name of an auth method.
pub fn auth_method_name(method: AuthMethod) -> &'static str {
    match method {
        AuthMethod::ClientSecretBasic => "client_secret_basic",
        AuthMethod::ClientSecretPost => "client_secret_post",
        AuthMethod::None => "none",
    }
}

/// The environment variable `config_toml` names for the client secret
/// (`GOOGLE_CLIENT_SECRET`).
pub fn secret_env_name(slug: &str) -> String {
    let upper: String = slug
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("{upper}_CLIENT_SECRET")
}

/// The `[[provider]]` table that configures `entry`: its name, client
/// credentials to fill in, its parameters (commented out when they have
/// defaults) and, for discovery, the issuer.
pub fn config_toml(entry: &Entry) -> String {
    let mut toml = String::from("[[provider]]\n");
    toml.push_str(&format!("slug = {:?}\n", entry.slug));
    toml.push_str(&format!("catalogue = {:?}\n", entry.slug));
    toml.push_str("client_id = \"YOUR_CLIENT_ID\"\n");
    if entry.auth_method != AuthMethod::None {
        toml.push_str(&format!("client_secret_env = {:?}\n", secret_env_name(&entry.slug)));
    }
    if entry.discovery {
        toml.push_str("issuer = \"https://login.example.com\"   # exactly as in the server's metadata\n");
    }
    if !entry.params.is_empty() {
        let pairs: Vec<String> = entry
            .params
            .iter()
            .map(|(name, p)| format!("{name} = {:?}", p.default.as_deref().unwrap_or("CHANGE_ME")))
            .collect();
        let required = entry.params.values().any(|p| p.default.is_none());
        let line = format!("catalogue_params = {{ {} }}", pairs.join(", "));
        if required {
            toml.push_str(&format!("{line}\n"));
        } else {
            toml.push_str(&format!("#{line}   # the defaults\n"));
        }
    }
    toml
}

// ----- parsing -----------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalogue {
    provider: Vec<RawEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    slug: String,
    name: String,
    docs: Option<String>,
    authorization_url: Option<String>,
    token_url: Option<String>,
    revocation_url: Option<String>,
    #[serde(default)]
    discovery: bool,
    auth_method: String,
    #[serde(default)]
    scopes: Vec<String>,
    scope_separator: Option<String>,
    #[serde(default)]
    authorization_params: BTreeMap<String, String>,
    #[serde(default)]
    token_params: BTreeMap<String, String>,
    rotation: String,
    reuse_grace: Option<String>,
    access_token_ttl: String,
    refresh_token_ttl: Option<String>,
    refresh_token_idle: Option<String>,
    #[serde(default)]
    response_fields: Vec<String>,
    #[serde(default)]
    quirks: String,
    #[serde(default)]
    params: BTreeMap<String, RawParam>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParam {
    default: Option<String>,
    description: String,
}

/// Parses a catalogue document: every problem, each naming its entry.
pub fn parse(text: &str) -> Result<Vec<Entry>, String> {
    let raw: RawCatalogue = Figment::from(Toml::string(text))
        .extract()
        .map_err(|e| format!("provider catalogue: {e}"))?;
    let mut problems = Vec::new();
    let mut entries: Vec<Entry> = Vec::with_capacity(raw.provider.len());
    for r in raw.provider {
        let at = format!("catalogue entry {:?}", r.slug);
        let mut problem = |message: String| problems.push(format!("{at}: {message}"));
        if entries.iter().any(|e| e.slug == r.slug) {
            problem("duplicate slug".to_owned());
        }
        if !thermos_core::id::is_valid_slug(&r.slug) {
            problem("invalid slug".to_owned());
        }
        if r.name.trim().is_empty() {
            problem("name is empty".to_owned());
        }
        if r.discovery != (r.authorization_url.is_none() && r.token_url.is_none()) {
            problem("either discovery = true or both authorization_url and token_url".to_owned());
        }
        let auth_method = AuthMethod::parse(&r.auth_method).unwrap_or_else(|| {
            problem(format!("unknown auth_method {:?}", r.auth_method));
            AuthMethod::default()
        });
        let rotation = Rotation::parse(&r.rotation).unwrap_or_else(|| {
            problem(format!("rotation must be yes, no or optional (got {:?})", r.rotation));
            Rotation::Optional
        });
        let mut duration = |key: &str, raw: Option<&str>| -> Option<Duration> {
            let raw = raw?;
            humantime::parse_duration(raw)
                .inspect_err(|e| problem(format!("{key}: {e} (got {raw:?})")))
                .ok()
        };
        let reuse_grace = duration("reuse_grace", r.reuse_grace.as_deref());
        let access_token_ttl = duration("access_token_ttl", Some(&r.access_token_ttl)).unwrap_or_default();
        let refresh_token_ttl = duration("refresh_token_ttl", r.refresh_token_ttl.as_deref());
        let refresh_token_idle = duration("refresh_token_idle", r.refresh_token_idle.as_deref());
        if access_token_ttl.is_zero() {
            problem("access_token_ttl must be positive".to_owned());
        }
        let scope_separator = r.scope_separator.unwrap_or_else(|| " ".to_owned());
        if scope_separator != " " && scope_separator != "," {
            problem(format!(
                "scope_separator must be \" \" or \",\" (got {scope_separator:?})"
            ));
        }
        let params: BTreeMap<String, Param> = r
            .params
            .into_iter()
            .map(|(name, p)| {
                (
                    name,
                    Param {
                        default: p.default,
                        description: p.description,
                    },
                )
            })
            .collect();
        for template in [&r.authorization_url, &r.token_url, &r.revocation_url]
            .into_iter()
            .flatten()
        {
            for name in placeholders(template) {
                if !params.contains_key(&name) {
                    problem(format!("placeholder {{{name}}} has no [params.{name}]"));
                }
            }
        }
        entries.push(Entry {
            slug: r.slug,
            name: r.name,
            docs: r.docs,
            authorization_url: r.authorization_url,
            token_url: r.token_url,
            revocation_url: r.revocation_url,
            discovery: r.discovery,
            auth_method,
            scopes: r.scopes,
            scope_separator,
            authorization_params: r.authorization_params,
            token_params: r.token_params,
            rotation,
            reuse_grace,
            access_token_ttl,
            refresh_token_ttl,
            refresh_token_idle,
            response_fields: r.response_fields,
            quirks: r.quirks.split_whitespace().collect::<Vec<_>>().join(" "),
            params,
        });
    }
    if problems.is_empty() {
        Ok(entries)
    } else {
        Err(problems.join("\n"))
    }
}

/// The `{name}`s of a template.
fn placeholders(template: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        names.push(rest[start + 1..start + len].to_owned());
        rest = &rest[start + len + 1..];
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_catalogue_parses() {
        let entries = parse(CATALOGUE_TOML).unwrap();
        assert!(entries.len() >= 16, "{} entries", entries.len());
    }

    #[test]
    fn placeholders_are_found_and_filled() {
        assert_eq!(
            placeholders("https://{domain}/x/{tenant}/y"),
            vec!["domain".to_owned(), "tenant".to_owned()]
        );
        let microsoft = entry("microsoft").unwrap();
        let given = BTreeMap::from([("tenant".to_owned(), "contoso.onmicrosoft.com".to_owned())]);
        let endpoints = microsoft.endpoints(&given).unwrap();
        assert_eq!(
            endpoints.token_url.as_str(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        let default = microsoft.endpoints(&BTreeMap::new()).unwrap();
        assert!(default.token_url.as_str().contains("/common/"));
    }

    #[test]
    fn a_parameter_value_cannot_change_the_url_shape() {
        let salesforce = entry("salesforce").unwrap();
        assert!(salesforce.check_param("domain", "acme.my.salesforce.com").is_ok());
        assert!(salesforce.check_param("domain", "evil.example/x").is_err());
        assert!(salesforce.check_param("domain", "a@b").is_err());
        assert!(salesforce.check_param("tenant", "x").is_err());
    }

    #[test]
    fn a_broken_catalogue_names_its_entry_and_key() {
        let text = r#"
            [[provider]]
            slug = "x"
            name = ""
            token_url = "https://{host}/token"
            authorization_url = "https://a.example/auth"
            auth_method = "private_key_jwt"
            rotation = "sometimes"
            access_token_ttl = "soon"
        "#;
        let error = parse(text).unwrap_err();
        for needle in ["name is empty", "auth_method", "rotation", "access_token_ttl", "{host}"] {
            assert!(error.contains(needle), "{needle}: {error}");
        }
        assert!(error.starts_with("catalogue entry \"x\""), "{error}");
    }

    #[test]
    fn durations_are_shown_as_written() {
        assert_eq!(format_duration(Duration::from_secs(90 * 86_400)), "90d");
        assert_eq!(format_duration(Duration::from_secs(12 * 3_600)), "12h");
        assert_eq!(format_duration(Duration::from_secs(1_800)), "30m");
        assert_eq!(format_duration(Duration::from_secs(45)), "45s");
    }
}
