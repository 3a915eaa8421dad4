//! The `[[provider]]` rules: slugs unique and valid, token endpoints on
//! https (http only on loopback), exactly one way to get the client secret.
//! A provider naming a catalogue entry (`catalogue = "google"`) takes the
//! entry's endpoints (revocation too), auth method, scopes, token parameters
//! and default lifetime for every key it does not set itself; `catalogue = "oidc"`
//! leaves its endpoints to discovery (`catalogue::discovery`).
//!
//! A `client_secret_env` variable is read here, once, through the injected
//! `lookup`; its value goes straight into a [`SecretString`].

use std::collections::{BTreeMap, HashMap};

use secrecy::SecretString;
use thermos_core::id::is_valid_slug;
use thermos_core::oauth::AuthMethod;
use url::{Host, Url};

use super::{Checker, shown_text, shown_url};
use crate::catalogue::{self, Entry, PendingDiscovery};
use crate::config::raw::RawProvider;
use crate::provider::{DEFAULT_TTL, ProviderApp};

/// One checked `[[provider]]`.
enum Built {
    /// Complete.
    App(ProviderApp),
    /// Its endpoints come from discovery.
    Pending(PendingDiscovery),
}

/// What a catalogue entry fills in for one provider.
#[derive(Default)]
struct Defaults {
    /// The named entry, when it exists.
    entry: Option<&'static Entry>,
    /// The entry's token endpoint, placeholders filled (the issuer for discovery).
    token_url: Option<Url>,
    /// The entry's authorization endpoint with its parameters.
    authorization_url: Option<Url>,
    /// The entry's RFC 7009 revocation endpoint, if it has one.
    revocation_url: Option<Url>,
    /// The configured issuer, for discovery entries.
    issuer: Option<String>,
}

/// Form parameters Thermos sets itself, refused in `extra_params`.
const RESERVED_PARAMS: &[&str] = &["grant_type", "refresh_token", "client_id", "client_secret"];

/// Whether an `http://` URL may use this host: loopback only.
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

impl Checker {
    /// An endpoint the server calls or sends browsers to: https, or http on loopback.
    fn endpoint_url(&mut self, key: &str, text: &str) -> Option<Url> {
        let Ok(url) = Url::parse(text.trim()) else {
            self.problem(key, format!("not a URL (got {})", shown_text(text)));
            return None;
        };
        match url.scheme() {
            "https" if url.host().is_some() => Some(url),
            "http" if is_loopback(&url) => Some(url),
            "http" => {
                self.problem(
                    key,
                    format!("http:// is allowed only for loopback hosts (got {})", shown_url(&url)),
                );
                None
            }
            _ => {
                self.problem(key, format!("expected an https:// URL (got {})", shown_url(&url)));
                None
            }
        }
    }

    /// Every `[[provider]]`: the complete ones, and those whose endpoints
    /// wait for discovery (`catalogue = "oidc"`).
    pub(super) fn providers(
        &mut self,
        raw: Vec<RawProvider>,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> (Vec<ProviderApp>, Vec<PendingDiscovery>) {
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut apps = Vec::with_capacity(raw.len());
        let mut pending = Vec::new();
        for (index, p) in raw.into_iter().enumerate() {
            let at = format!("provider[{index}]");
            if let Some(slug) = &p.slug {
                if let Some(first) = seen.get(slug) {
                    self.problem(
                        format!("{at}.slug"),
                        format!("duplicate slug {slug:?} (also provider[{first}])"),
                    );
                } else {
                    seen.insert(slug.clone(), index);
                }
            }
            let position = apps.len() + pending.len();
            match self.provider(&at, position, p, lookup) {
                Some(Built::App(app)) => apps.push(app),
                Some(Built::Pending(discovery)) => pending.push(discovery),
                None => {}
            }
        }
        (apps, pending)
    }

    /// What the provider's catalogue entry fills in: `catalogue`,
    /// `catalogue_params` and `issuer` checked, placeholders filled.
    fn catalogue_defaults(&mut self, at: &str, p: &RawProvider) -> Defaults {
        let mut defaults = Defaults::default();
        let Some(name) = p.catalogue.as_deref() else {
            if p.catalogue_params.is_some() {
                self.problem(
                    format!("{at}.catalogue_params"),
                    "only with catalogue = \"…\" (thermos providers list)",
                );
            }
            if p.issuer.is_some() {
                self.problem(format!("{at}.issuer"), "only with catalogue = \"oidc\"");
            }
            return defaults;
        };
        let Some(entry) = catalogue::entry(name) else {
            self.problem(
                format!("{at}.catalogue"),
                format!(
                    "unknown catalogue entry {name:?} (expected one of: {})",
                    catalogue::slugs().join(", ")
                ),
            );
            return defaults;
        };
        defaults.entry = Some(entry);
        let mut given = BTreeMap::new();
        for (param, value) in p.catalogue_params.iter().flatten() {
            let value = value.to_text();
            match entry.check_param(param, &value) {
                Ok(()) => {
                    given.insert(param.clone(), value);
                }
                Err(message) => self.problem(format!("{at}.catalogue_params.{param}"), message),
            }
        }
        if entry.discovery {
            match p.issuer.as_deref() {
                None => self.problem(
                    format!("{at}.issuer"),
                    format!(
                        "required with catalogue = {:?}: the authorization server's issuer URL, \
                         whose metadata gives the endpoints",
                        entry.slug
                    ),
                ),
                Some(text) => {
                    let key = format!("{at}.issuer");
                    if let Some(url) = self.endpoint_url(&key, text) {
                        if url.query().is_some() || url.fragment().is_some() {
                            self.problem(
                                key,
                                format!("an issuer has no query or fragment (got {})", shown_url(&url)),
                            );
                        } else {
                            defaults.issuer = Some(text.trim().to_owned());
                            defaults.token_url = Some(url);
                        }
                    }
                }
            }
            return defaults;
        }
        if p.issuer.is_some() {
            self.problem(format!("{at}.issuer"), "only with catalogue = \"oidc\"");
        }
        for (param, spec) in &entry.params {
            if spec.default.is_none() && !given.contains_key(param) {
                self.problem(
                    format!("{at}.catalogue_params.{param}"),
                    format!("required by catalogue entry {:?}: {}", entry.slug, spec.description),
                );
                return defaults;
            }
        }
        match entry.endpoints(&given) {
            Ok(endpoints) => {
                defaults.token_url = Some(endpoints.token_url);
                defaults.authorization_url = Some(endpoints.authorization_url);
                defaults.revocation_url = endpoints.revocation_url;
            }
            Err(error) => self.problem(format!("{at}.catalogue"), error.to_string()),
        }
        defaults
    }

    fn provider(
        &mut self,
        at: &str,
        position: usize,
        p: RawProvider,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Option<Built> {
        let defaults = self.catalogue_defaults(at, &p);
        let entry = defaults.entry;
        let slug = match p.slug {
            None => {
                self.problem(format!("{at}.slug"), "required");
                None
            }
            Some(slug) if !is_valid_slug(&slug) => {
                self.problem(
                    format!("{at}.slug"),
                    format!("invalid slug {slug:?} (1 to 64 of a-z 0-9 - _ .)"),
                );
                None
            }
            Some(slug) => Some(slug),
        };
        let token_url_given = p.token_url.is_some();
        let token_url = match p.token_url {
            Some(text) => self.endpoint_url(&format!("{at}.token_url"), &text),
            None if defaults.token_url.is_some() => defaults.token_url,
            // A catalogue entry was named: its problem, if any, is recorded.
            None if p.catalogue.is_some() => None,
            None => {
                self.problem(
                    format!("{at}.token_url"),
                    "required (or catalogue = \"…\" naming a built-in provider: thermos providers list)",
                );
                None
            }
        };
        let authorization_url_given = p.authorization_url.is_some();
        let authorization_url = match p.authorization_url {
            Some(text) => self.endpoint_url(&format!("{at}.authorization_url"), &text),
            None => defaults.authorization_url,
        };
        let revocation_url_given = p.revocation_url.is_some();
        let revocation_url = match p.revocation_url {
            Some(text) => self.endpoint_url(&format!("{at}.revocation_url"), &text),
            None => defaults.revocation_url,
        };
        let client_id = match p.client_id.map(|id| id.to_text()) {
            Some(id) if !id.trim().is_empty() => Some(id),
            Some(_) => {
                self.problem(format!("{at}.client_id"), "is empty");
                None
            }
            None => {
                self.problem(format!("{at}.client_id"), "required");
                None
            }
        };
        let auth_method_given = p.auth_method.is_some();
        let default_method = entry.map_or_else(AuthMethod::default, |e| e.auth_method);
        let auth_method = match p.auth_method.as_deref() {
            None => default_method,
            Some(name) => AuthMethod::parse(name).unwrap_or_else(|| {
                self.problem(
                    format!("{at}.auth_method"),
                    format!("unknown auth method {name:?} (expected client_secret_basic, client_secret_post or none)"),
                );
                default_method
            }),
        };
        let client_secret = self.client_secret(at, auth_method, p.client_secret, p.client_secret_env, lookup);
        let scopes = p.scopes.or_else(|| entry.map(|e| e.scopes.clone())).unwrap_or_default();
        for (i, scope) in scopes.iter().enumerate() {
            if scope.is_empty() || scope.contains(char::is_whitespace) {
                self.problem(
                    format!("{at}.scopes[{i}]"),
                    format!("a scope is one non-empty word (got {scope:?})"),
                );
            }
        }
        let mut extra_params = entry.map(|e| e.token_params.clone()).unwrap_or_default();
        for (name, value) in p.extra_params.unwrap_or_default() {
            if RESERVED_PARAMS.contains(&name.as_str()) {
                self.problem(
                    format!("{at}.extra_params.{name}"),
                    "reserved: Thermos sets this parameter itself",
                );
            }
            extra_params.insert(name, value.to_text());
        }
        let ttl = entry.map_or(DEFAULT_TTL, |e| e.access_token_ttl);
        let default_ttl = self.duration(&format!("{at}.default_ttl"), p.default_ttl.as_ref(), ttl);
        let max_concurrency = self.optional_whole(&format!("{at}.max_concurrency"), p.max_concurrency.as_ref(), 1);
        let rate_limit_per_second = self.optional_whole(
            &format!("{at}.rate_limit_per_second"),
            p.rate_limit_per_second.as_ref(),
            1,
        );
        let keep_alive = match p.keep_alive.as_ref() {
            // A provider that revokes idle refresh tokens: refresh at least
            // twice within its idle expiry.
            None => Some(entry.and_then(|e| e.refresh_token_idle).map(|idle| idle / 2)),
            Some(raw) => self
                .duration(&format!("{at}.keep_alive"), Some(raw), std::time::Duration::ZERO)
                .map(Some),
        };
        let warn_before = self.duration(
            &format!("{at}.refresh_token_warn_before"),
            p.refresh_token_warn_before.as_ref(),
            thermos_core::plan::DEFAULT_REFRESH_TOKEN_WARN_BEFORE,
        );

        let app = ProviderApp {
            slug: slug?,
            token_url: token_url?,
            authorization_url,
            revocation_url,
            client_id: client_id?,
            client_secret: client_secret.ok()?,
            auth_method,
            scopes,
            scope_separator: entry.and_then(|e| e.scope_separator.chars().next()).unwrap_or(' '),
            extra_params,
            default_ttl: default_ttl?,
            max_concurrency: max_concurrency?,
            rate_limit_per_second: rate_limit_per_second?,
            refresh_token_rules: thermos_core::plan::RefreshTokenRules {
                keep_alive: keep_alive?,
                warn_before: warn_before?,
            },
        };
        Some(match defaults.issuer {
            None => Built::App(app),
            Some(issuer) => Built::Pending(PendingDiscovery {
                position,
                issuer,
                app,
                token_url_given,
                authorization_url_given,
                revocation_url_given,
                auth_method_given,
            }),
        })
    }

    /// Exactly one of `client_secret` / `client_secret_env`, unless the
    /// method is `none` (then neither). `Err` when a problem was recorded.
    fn client_secret(
        &mut self,
        at: &str,
        method: AuthMethod,
        literal: Option<String>,
        env_name: Option<String>,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<SecretString>, ()> {
        let key = format!("{at}.client_secret");
        let env_key = format!("{at}.client_secret_env");
        match (method, literal, env_name) {
            (AuthMethod::None, None, None) => Ok(None),
            (AuthMethod::None, literal, _) => {
                let key = if literal.is_some() { key } else { env_key };
                self.problem(key, "auth_method = \"none\" takes no client secret");
                Err(())
            }
            (_, Some(_), Some(_)) => {
                self.problem(key, "set either client_secret or client_secret_env, not both");
                Err(())
            }
            (_, None, None) => {
                self.problem(
                    key,
                    "required (or client_secret_env naming an environment variable that holds it), \
                     unless auth_method = \"none\"",
                );
                Err(())
            }
            (_, Some(secret), None) if secret.is_empty() => {
                self.problem(key, "is empty");
                Err(())
            }
            (_, Some(secret), None) => Ok(Some(SecretString::from(secret))),
            (_, None, Some(name)) => match lookup(&name) {
                Some(secret) if !secret.is_empty() => Ok(Some(SecretString::from(secret))),
                Some(_) => {
                    self.problem(env_key, format!("environment variable {name} is empty"));
                    Err(())
                }
                None => {
                    self.problem(env_key, format!("environment variable {name} is not set"));
                    Err(())
                }
            },
        }
    }
}
