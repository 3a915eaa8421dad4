//! Discovery for the generic `oidc` catalogue entry: a provider's endpoints
//! come from its issuer's metadata document, fetched once at startup.
//!
//! [`resolve_discovery`] runs after the (synchronous) configuration load and
//! before the engine is built (`thermos serve`, `config check` and every
//! command that loads the configuration, and at a SIGHUP reload). For each
//! waiting provider it fetches `{issuer}/.well-known/openid-configuration`
//! (OpenID Connect Discovery), falling back to the RFC 8414 document
//! (`/.well-known/oauth-authorization-server` inserted before the issuer's
//! path), with a short timeout, no redirects and a capped body. The
//! document's `issuer` must equal the configured one exactly (RFC 8414
//! §3.3) and its endpoints must be https (http only on loopback hosts, as
//! everywhere in the configuration). Any failure is a startup error naming
//! the provider.
//!
//! Never sends a client secret: the metadata request carries no credentials.

use std::fmt;
use std::time::Duration;

use futures::future::join_all;
use reqwest::header::ACCEPT;
use serde::Deserialize;
use thermos_core::oauth::AuthMethod;
use url::{Host, Url};

use crate::config::Config;
use crate::provider::ProviderApp;

/// How long one metadata request may take.
pub const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest metadata document read.
pub const MAX_METADATA_BYTES: usize = 256 * 1024;

/// A `[[provider]]` with `catalogue = "oidc"`, validated but for its
/// endpoints, waiting for [`resolve_discovery`].
#[derive(Debug, Clone)]
pub struct PendingDiscovery {
    /// Where the provider goes in `Config::providers` (file order).
    pub position: usize,
    /// The configured issuer, exactly as written.
    pub issuer: String,
    /// The provider; its `token_url` is the issuer until discovery fills it,
    /// unless given explicitly.
    pub app: ProviderApp,
    /// `token_url` was given in the configuration (it wins over the metadata).
    pub token_url_given: bool,
    /// `authorization_url` was given in the configuration.
    pub authorization_url_given: bool,
    /// `revocation_url` was given in the configuration.
    pub revocation_url_given: bool,
    /// `auth_method` was given in the configuration.
    pub auth_method_given: bool,
}

/// One provider whose discovery failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryError {
    /// The provider's slug.
    pub slug: String,
    /// The configured issuer.
    pub issuer: String,
    /// What went wrong.
    pub reason: String,
}

impl fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "provider {:?}: discovery for issuer {} failed: {}",
            self.slug, self.issuer, self.reason
        )
    }
}

/// Every provider whose discovery failed (at least one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryErrors(pub Vec<DiscoveryError>);

impl fmt::Display for DiscoveryErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DiscoveryErrors {}

/// The fields of an authorization server's metadata that Thermos uses.
#[derive(Deserialize)]
struct Metadata {
    issuer: String,
    authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
    revocation_endpoint: Option<String>,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
}

/// Fills the endpoints of every provider waiting for discovery and moves
/// them into `config.providers` at their place. On failure `config` keeps
/// them waiting and every failure is returned.
pub async fn resolve_discovery(config: &mut Config) -> Result<(), DiscoveryErrors> {
    if config.pending_discovery.is_empty() {
        return Ok(());
    }
    let client = reqwest::Client::builder()
        .timeout(DISCOVERY_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| {
            DiscoveryErrors(
                config
                    .pending_discovery
                    .iter()
                    .map(|p| DiscoveryError {
                        slug: p.app.slug.clone(),
                        issuer: p.issuer.clone(),
                        reason: format!("build the HTTP client: {e}"),
                    })
                    .collect(),
            )
        })?;
    let results = join_all(config.pending_discovery.iter().map(|p| discover(&client, p))).await;
    let mut apps = Vec::with_capacity(results.len());
    let mut errors = Vec::new();
    for (pending, result) in config.pending_discovery.iter().zip(results) {
        match result {
            Ok(app) => apps.push((pending.position, app)),
            Err(reason) => errors.push(DiscoveryError {
                slug: pending.app.slug.clone(),
                issuer: pending.issuer.clone(),
                reason,
            }),
        }
    }
    if !errors.is_empty() {
        return Err(DiscoveryErrors(errors));
    }
    config.pending_discovery.clear();
    apps.sort_by_key(|(position, _)| *position);
    for (position, app) in apps {
        let at = position.min(config.providers.len());
        config.providers.insert(at, app);
    }
    Ok(())
}

/// The provider with its endpoints from the issuer's metadata.
async fn discover(client: &reqwest::Client, pending: &PendingDiscovery) -> Result<ProviderApp, String> {
    let metadata = fetch_metadata(client, &pending.issuer).await?;
    let mut app = pending.app.clone();
    if !pending.token_url_given {
        let Some(token) = metadata.token_endpoint.as_deref() else {
            return Err("the metadata has no token_endpoint".to_owned());
        };
        app.token_url = endpoint("token_endpoint", token)?;
    }
    if !pending.authorization_url_given
        && let Some(authorization) = metadata.authorization_endpoint.as_deref()
    {
        app.authorization_url = Some(endpoint("authorization_endpoint", authorization)?);
    }
    if !pending.revocation_url_given
        && let Some(revocation) = metadata.revocation_endpoint.as_deref()
    {
        app.revocation_url = Some(endpoint("revocation_endpoint", revocation)?);
    }
    if !pending.auth_method_given
        && let Some(methods) = &metadata.token_endpoint_auth_methods_supported
        && !methods.iter().any(|m| m == "client_secret_basic")
        && methods.iter().any(|m| m == "client_secret_post")
        && app.auth_method == AuthMethod::ClientSecretBasic
    {
        app.auth_method = AuthMethod::ClientSecretPost;
    }
    Ok(app)
}

/// The metadata documents to try for `issuer`, in order: OpenID Connect
/// Discovery (appended to the issuer), then RFC 8414 (inserted between the
/// host and the issuer's path; the same URL when the issuer has no path).
pub fn well_known_urls(issuer: &str) -> Result<Vec<Url>, String> {
    let parsed = Url::parse(issuer).map_err(|_| format!("issuer {issuer:?} is not a URL"))?;
    let base = issuer.trim_end_matches('/');
    let oidc = Url::parse(&format!("{base}/.well-known/openid-configuration"))
        .map_err(|_| format!("issuer {issuer:?} is not a URL"))?;
    let path = parsed.path().trim_end_matches('/');
    let mut rfc8414 = parsed.clone();
    rfc8414.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
    let mut urls = vec![oidc];
    if !urls.contains(&rfc8414) {
        urls.push(rfc8414);
    }
    Ok(urls)
}

/// Fetches the first metadata document that answers; a document for
/// another issuer is an error at once.
async fn fetch_metadata(client: &reqwest::Client, issuer: &str) -> Result<Metadata, String> {
    let mut failures = Vec::new();
    for url in well_known_urls(issuer)? {
        match fetch_json(client, &url).await {
            Ok(metadata) if metadata.issuer == issuer => return Ok(metadata),
            Ok(metadata) => {
                return Err(format!(
                    "{url} is the metadata of issuer {:?}, not of the configured {issuer:?} \
                     (they must be identical, RFC 8414 §3.3)",
                    metadata.issuer
                ));
            }
            Err(reason) => failures.push(format!("{url}: {reason}")),
        }
    }
    Err(format!("no metadata document: {}", failures.join("; ")))
}

/// GET `url` as a JSON metadata document, at most [`MAX_METADATA_BYTES`].
async fn fetch_json(client: &reqwest::Client, url: &Url) -> Result<Metadata, String> {
    let mut response = client
        .get(url.clone())
        .header(ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| format!("request failed: {}", e.without_url()))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("HTTP {}", status.as_u16()));
    }
    if response.content_length().is_some_and(|n| n > MAX_METADATA_BYTES as u64) {
        return Err(format!("the document is larger than {MAX_METADATA_BYTES} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading the body failed: {}", e.without_url()))?
    {
        if body.len() + chunk.len() > MAX_METADATA_BYTES {
            return Err(format!("the document is larger than {MAX_METADATA_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| format!("not a metadata document: {e}"))
}

/// A discovered endpoint: https, or http on a loopback host.
fn endpoint(field: &str, text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|_| format!("{field} is not a URL (got {text:?})"))?;
    let loopback = match url.host() {
        Some(Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" if url.host().is_some() => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err(format!(
            "{field} must be https (http only on loopback hosts), got {text:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_well_known_documents_of_an_issuer_without_a_path() {
        let urls = well_known_urls("https://idp.example.com").unwrap();
        let urls: Vec<&str> = urls.iter().map(Url::as_str).collect();
        assert_eq!(
            urls,
            [
                "https://idp.example.com/.well-known/openid-configuration",
                "https://idp.example.com/.well-known/oauth-authorization-server",
            ]
        );
    }

    #[test]
    fn the_rfc_8414_document_of_an_issuer_with_a_path_goes_before_the_path() {
        let urls = well_known_urls("https://idp.example.com/tenant/1/").unwrap();
        assert_eq!(
            urls[0].as_str(),
            "https://idp.example.com/tenant/1/.well-known/openid-configuration"
        );
        assert_eq!(
            urls[1].as_str(),
            "https://idp.example.com/.well-known/oauth-authorization-server/tenant/1"
        );
    }

    #[test]
    fn discovered_endpoints_are_https_or_loopback() {
        assert!(endpoint("token_endpoint", "https://idp.example.com/token").is_ok());
        assert!(endpoint("token_endpoint", "http://127.0.0.1:9/token").is_ok());
        let error = endpoint("token_endpoint", "http://idp.example.com/token").unwrap_err();
        assert!(error.contains("token_endpoint must be https"), "{error}");
    }
}
