//! The `[[provider]]` rules: slugs unique and valid, token endpoints on
//! https (http only on loopback), exactly one way to get the client secret.
//!
//! A `client_secret_env` variable is read here, once, through the injected
//! `lookup`; its value goes straight into a [`SecretString`].

use std::collections::{BTreeMap, HashMap};

use secrecy::SecretString;
use thermos_core::id::is_valid_slug;
use thermos_core::oauth::AuthMethod;
use url::{Host, Url};

use super::{Checker, shown_text, shown_url};
use crate::config::raw::RawProvider;
use crate::provider::{DEFAULT_TTL, ProviderApp};

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

    pub(super) fn providers(
        &mut self,
        raw: Vec<RawProvider>,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Vec<ProviderApp> {
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut apps = Vec::with_capacity(raw.len());
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
            if let Some(app) = self.provider(&at, p, lookup) {
                apps.push(app);
            }
        }
        apps
    }

    fn provider(&mut self, at: &str, p: RawProvider, lookup: &dyn Fn(&str) -> Option<String>) -> Option<ProviderApp> {
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
        let token_url = match p.token_url {
            None => {
                self.problem(format!("{at}.token_url"), "required");
                None
            }
            Some(text) => self.endpoint_url(&format!("{at}.token_url"), &text),
        };
        let authorization_url = p
            .authorization_url
            .and_then(|text| self.endpoint_url(&format!("{at}.authorization_url"), &text));
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
        let auth_method = match p.auth_method.as_deref() {
            None => AuthMethod::default(),
            Some(name) => AuthMethod::parse(name).unwrap_or_else(|| {
                self.problem(
                    format!("{at}.auth_method"),
                    format!("unknown auth method {name:?} (expected client_secret_basic, client_secret_post or none)"),
                );
                AuthMethod::default()
            }),
        };
        let client_secret = self.client_secret(at, auth_method, p.client_secret, p.client_secret_env, lookup);
        let scopes = p.scopes.unwrap_or_default();
        for (i, scope) in scopes.iter().enumerate() {
            if scope.is_empty() || scope.contains(char::is_whitespace) {
                self.problem(
                    format!("{at}.scopes[{i}]"),
                    format!("a scope is one non-empty word (got {scope:?})"),
                );
            }
        }
        let mut extra_params = BTreeMap::new();
        for (name, value) in p.extra_params.unwrap_or_default() {
            if RESERVED_PARAMS.contains(&name.as_str()) {
                self.problem(
                    format!("{at}.extra_params.{name}"),
                    "reserved: Thermos sets this parameter itself",
                );
            }
            extra_params.insert(name, value.to_text());
        }
        let default_ttl = self.duration(&format!("{at}.default_ttl"), p.default_ttl.as_ref(), DEFAULT_TTL);
        let max_concurrency = self.optional_whole(&format!("{at}.max_concurrency"), p.max_concurrency.as_ref(), 1);
        let rate_limit_per_second = self.optional_whole(
            &format!("{at}.rate_limit_per_second"),
            p.rate_limit_per_second.as_ref(),
            1,
        );

        Some(ProviderApp {
            slug: slug?,
            token_url: token_url?,
            authorization_url,
            client_id: client_id?,
            client_secret: client_secret.ok()?,
            auth_method,
            scopes,
            extra_params,
            default_ttl: default_ttl?,
            max_concurrency: max_concurrency?,
            rate_limit_per_second: rate_limit_per_second?,
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
