//! The refresh client: one grant request to a provider app's token endpoint
//! (`refresh_token`, RFC 6749 §6; `authorization_code`; `client_credentials`,
//! RFC 6749 §4.4; the JWT bearer grant, RFC 7523), turned into a
//! [`RefreshOutcome`](thermos_core::oauth::RefreshOutcome).
//!
//! It owns the wire details — client authentication (Basic credentials are
//! form-URL-encoded before base64, RFC 6749 §2.3.1, unlike reqwest's
//! `basic_auth`), a capped body read, no redirects — and leaves the meaning
//! of the answer to [`classify_response`]. It never retries, never sleeps,
//! never logs, and never puts a token, a secret or the request body into an
//! outcome: transport errors are described by their error chain (without
//! the URL's query), and any text the provider echoes is scrubbed of the
//! refresh token and client secret that were sent, in every encoding the
//! request carried them in (form body, Basic credentials).
//!
//! Read next: `thermos_core::oauth` (classification) and `crate::engine`
//! (what is done with the outcome).

use std::error::Error as _;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use reqwest::redirect::Policy;
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};
use thermos_core::clock::Clock;
use thermos_core::oauth::{AuthMethod, RefreshOutcome, TransientFailure, TransientKind, classify_response};
use url::Url;

use super::ProviderApp;

mod revoke;

pub use revoke::{Revocation, TokenTypeHint};

/// The `User-Agent` sent to token endpoints.
pub const USER_AGENT: &str = concat!("thermos/", env!("CARGO_PKG_VERSION"));
/// Default cap on a token response body; a larger body is a malformed response.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// Upper bound of the connect timeout (the request timeout applies too).
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound of a revocation request's timeout (RFC 7009): a delete waits
/// for it, so it is shorter than a refresh may take.
pub const MAX_REVOKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Form parameters the client sets itself; `extra_params` cannot override them.
const RESERVED_PARAMS: [&str; 4] = ["grant_type", "refresh_token", "client_id", "client_secret"];

/// Refreshes tokens at providers' token endpoints over one pooled HTTP
/// client. Cloning is cheap (the pool is shared).
#[derive(Debug, Clone)]
pub struct RefreshClient {
    http: reqwest::Client,
    max_body_bytes: usize,
    /// `min(request_timeout, MAX_REVOKE_TIMEOUT)`.
    revoke_timeout: Duration,
}

impl RefreshClient {
    /// A client whose every request (connect, send, read) must finish within
    /// `request_timeout`. Rustls with built-in roots, no redirects.
    pub fn new(request_timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(request_timeout)
            .connect_timeout(request_timeout.min(MAX_CONNECT_TIMEOUT))
            .redirect(Policy::none())
            .user_agent(USER_AGENT)
            .build()
            // Building fails only when the TLS backend cannot initialise;
            // rustls with bundled webpki roots has no system dependency, so
            // this is a broken build, not a runtime condition.
            .unwrap_or_else(|e| panic!("build the token endpoint HTTP client: {e}"));
        Self {
            http,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            revoke_timeout: request_timeout.min(MAX_REVOKE_TIMEOUT),
        }
    }

    /// The same client with another cap on response bodies.
    pub fn with_max_body_bytes(mut self, max_body_bytes: usize) -> Self {
        self.max_body_bytes = max_body_bytes;
        self
    }

    /// Sends one `refresh_token` grant for `app` and classifies the answer.
    /// `clock` stamps the moment the response arrived (it anchors
    /// `Retry-After` dates and absolute expiries). Every failure is a value:
    /// this never panics and never returns an error.
    ///
    /// The configured `scopes` are not sent: a refresh without `scope` keeps
    /// the scope the user granted (RFC 6749 §6), while sending more fails.
    pub async fn refresh(&self, app: &ProviderApp, refresh_token: &SecretString, clock: &dyn Clock) -> RefreshOutcome {
        let secrets = secret_forms(app, &[refresh_token]);
        let grant = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose_secret()),
        ];
        let outcome = self.exchange(app, &grant, &secrets, clock).await;
        scrub(outcome, &secrets)
    }

    /// Sends one `authorization_code` grant (RFC 6749 §4.1.3) with its PKCE
    /// `code_verifier` (RFC 7636 §4.5) for `app`, with the same client
    /// authentication, limits and classification as [`RefreshClient::refresh`]:
    /// `Refreshed` carries the first tokens, `InvalidGrant` a code that is
    /// unknown, used, expired or whose verifier does not match. The code and
    /// the verifier are scrubbed from every text of the outcome.
    pub async fn exchange_code(
        &self,
        app: &ProviderApp,
        code: &SecretString,
        redirect_uri: &str,
        code_verifier: &SecretString,
        clock: &dyn Clock,
    ) -> RefreshOutcome {
        let secrets = secret_forms(app, &[code, code_verifier]);
        let grant = [
            ("grant_type", "authorization_code"),
            ("code", code.expose_secret()),
            ("redirect_uri", redirect_uri),
            ("code_verifier", code_verifier.expose_secret()),
        ];
        let outcome = self.exchange(app, &grant, &secrets, clock).await;
        scrub(outcome, &secrets)
    }

    /// Sends one `client_credentials` grant (RFC 6749 §4.4) for `app`, with
    /// `scope` when given, and the same client authentication, limits and
    /// classification as [`RefreshClient::refresh`]. A machine token comes
    /// back without a refresh token.
    pub async fn client_credentials(
        &self,
        app: &ProviderApp,
        scope: Option<&str>,
        clock: &dyn Clock,
    ) -> RefreshOutcome {
        let secrets = secret_forms(app, &[]);
        let mut grant = vec![("grant_type", "client_credentials")];
        grant.extend(scope.map(|scope| ("scope", scope)));
        let outcome = self.exchange(app, &grant, &secrets, clock).await;
        scrub(outcome, &secrets)
    }

    /// Sends one JWT bearer grant (RFC 7523 §2.1) with a signed `assertion`
    /// for `app`, with `scope` when given. Client authentication follows
    /// the app's `auth_method` as for every grant (with `none`, only the
    /// `client_id` is sent beside the assertion). The assertion is
    /// scrubbed from every text of the outcome.
    pub async fn jwt_bearer(
        &self,
        app: &ProviderApp,
        assertion: &SecretString,
        scope: Option<&str>,
        clock: &dyn Clock,
    ) -> RefreshOutcome {
        let secrets = secret_forms(app, &[assertion]);
        let mut grant = vec![
            ("grant_type", thermos_core::grant::JWT_BEARER_URN),
            ("assertion", assertion.expose_secret()),
        ];
        grant.extend(scope.map(|scope| ("scope", scope)));
        let outcome = self.exchange(app, &grant, &secrets, clock).await;
        scrub(outcome, &secrets)
    }

    async fn exchange(
        &self,
        app: &ProviderApp,
        grant: &[(&str, &str)],
        secrets: &[String],
        clock: &dyn Clock,
    ) -> RefreshOutcome {
        let endpoint = display_url(&app.token_url);
        let request = match self.request(app, grant) {
            Ok(request) => request,
            Err(detail) => return failure(TransientKind::MalformedResponse, None, detail),
        };
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) => return transport_failure(e, None, &endpoint),
        };
        let received_at = clock.now();
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let cap = self.max_body_bytes;
        if response.content_length().is_some_and(|len| len > cap as u64) {
            return over_cap(status, cap);
        }
        let mut body = Zeroizing::new(Vec::new());
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) if body.len() + chunk.len() > cap => return over_cap(status, cap),
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) => return transport_failure(e, Some(status), &endpoint),
            }
        }
        let outcome = classify_response(status, retry_after.as_deref(), &body, received_at, app.default_ttl);
        if matches!(outcome, RefreshOutcome::Refreshed(_)) || !scrub_body(&mut body, secrets) {
            return outcome;
        }
        // The answer echoed what was sent: classify it again without the
        // secrets, so that no piece of one survives in a description cut
        // to length. (A token response is never scrubbed: it may rightly
        // hand the same refresh token back.)
        classify_response(status, retry_after.as_deref(), &body, received_at, app.default_ttl)
    }

    /// The POST with its form body (the `grant` parameters first) and
    /// client authentication.
    fn request(&self, app: &ProviderApp, grant: &[(&str, &str)]) -> Result<reqwest::RequestBuilder, String> {
        let mut form: Vec<(&str, &str)> = grant.to_vec();
        let authorization = client_authentication(app, &mut form)?;
        form.extend(
            app.extra_params
                .iter()
                .filter(|(key, _)| {
                    !RESERVED_PARAMS.contains(&key.as_str()) && !grant.iter().any(|(name, _)| name == key)
                })
                .map(|(key, value)| (key.as_str(), value.as_str())),
        );
        let body = serde_urlencoded::to_string(&form).map_err(|e| format!("encode the token request: {e}"))?;
        Ok(self.post_form(app.token_url.clone(), body, authorization))
    }

    /// A form POST to `url`, with the client's `Authorization` header if any.
    fn post_form(&self, url: Url, body: String, authorization: Option<HeaderValue>) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .post(url)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .body(body);
        if let Some(value) = authorization {
            request = request.header(AUTHORIZATION, value);
        }
        request
    }
}

/// RFC 6749 §2.3.1 client authentication for `app`: the Basic header it
/// returns, or the credentials pushed onto `form`.
fn client_authentication<'a>(
    app: &'a ProviderApp,
    form: &mut Vec<(&'a str, &'a str)>,
) -> Result<Option<HeaderValue>, String> {
    let secret = app.client_secret.as_ref().map_or("", ExposeSecret::expose_secret);
    match app.auth_method {
        AuthMethod::ClientSecretBasic => return Ok(Some(basic_authorization(&app.client_id, secret)?)),
        AuthMethod::ClientSecretPost => {
            form.push(("client_id", &app.client_id));
            form.push(("client_secret", secret));
        }
        AuthMethod::None => form.push(("client_id", &app.client_id)),
    }
    Ok(None)
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 §2.3.1),
/// marked sensitive so HTTP-layer debugging never prints it.
fn basic_authorization(client_id: &str, client_secret: &str) -> Result<HeaderValue, String> {
    let encode = |raw: &str| url::form_urlencoded::byte_serialize(raw.as_bytes()).collect::<String>();
    let credentials = Zeroizing::new(format!("{}:{}", encode(client_id), encode(client_secret)));
    let header = Zeroizing::new(format!("Basic {}", STANDARD.encode(credentials.as_bytes())));
    let mut value =
        HeaderValue::from_str(&header).map_err(|_| "client credentials do not fit an HTTP header".to_owned())?;
    value.set_sensitive(true);
    Ok(value)
}

fn failure(kind: TransientKind, http_status: Option<u16>, detail: String) -> RefreshOutcome {
    RefreshOutcome::Transient(TransientFailure::new(kind, http_status, detail))
}

fn over_cap(status: u16, cap: usize) -> RefreshOutcome {
    let detail = format!("token endpoint answered {status} with a body larger than {cap} bytes");
    failure(TransientKind::MalformedResponse, Some(status), detail)
}

/// A send or read error: `Timeout` or `Network`, described by its error
/// chain with reqwest's URL removed (the endpoint is named without its query).
fn transport_failure(error: reqwest::Error, http_status: Option<u16>, endpoint: &str) -> RefreshOutcome {
    let error = error.without_url();
    // A failure to connect means the provider never saw the request; any
    // later failure leaves its outcome unknown.
    let kind = match (error.is_connect(), error.is_timeout() || chain_has_timeout(&error)) {
        (true, true) => TransientKind::Timeout,
        (true, false) => TransientKind::Network,
        (false, _) => TransientKind::ResponseLost,
    };
    let verb = if http_status.is_some() {
        "read response from"
    } else {
        "call"
    };
    let detail = with_chain(format!("{verb} token endpoint {endpoint}"), &error);
    failure(kind, http_status, detail)
}

/// `context: cause: cause…`, each text of the error chain once.
fn with_chain(mut detail: String, error: &dyn std::error::Error) -> String {
    let mut cause: Option<&dyn std::error::Error> = Some(error);
    while let Some(current) = cause {
        let text = current.to_string();
        if !detail.ends_with(&text) {
            detail.push_str(": ");
            detail.push_str(&text);
        }
        cause = current.source();
    }
    detail
}

fn chain_has_timeout(error: &reqwest::Error) -> bool {
    let mut cause = error.source();
    while let Some(current) = cause {
        if current
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cause = current.source();
    }
    false
}

/// `scheme://host[:port]/path`, without query, fragment or user info.
fn display_url(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

/// Secrets shorter than this are not scrubbed from texts: real tokens and
/// client secrets are far longer, and replacing a two-letter string would
/// mangle every detail.
const MIN_SCRUBBED_LEN: usize = 8;

/// The secrets a token request sends — the refresh token (or the code and
/// verifier) and the client secret — in every form a provider may echo them: as is, form-encoded (in
/// the body), percent-encoded, JSON-escaped, and the Basic credentials
/// (base64). Longest first, so a form is replaced before any it contains.
fn secret_forms(app: &ProviderApp, sent: &[&SecretString]) -> Zeroizing<Vec<String>> {
    let secret = app.client_secret.as_ref().map(ExposeSecret::expose_secret);
    let mut forms = Zeroizing::new(Vec::new());
    let sent = sent.iter().map(|s| s.expose_secret());
    for raw in sent.chain(secret) {
        let form: String = url::form_urlencoded::byte_serialize(raw.as_bytes()).collect();
        forms.push(form.replace('+', "%20"));
        forms.push(form);
        forms.push(raw.replace('/', "\\/"));
        forms.push(raw.to_owned());
    }
    if let (Some(secret), AuthMethod::ClientSecretBasic) = (secret, app.auth_method)
        && let Ok(header) = basic_authorization(&app.client_id, secret)
        && let Ok(text) = header.to_str()
    {
        forms.push(text.trim_start_matches("Basic ").to_owned());
    }
    forms.retain(|f| f.len() >= MIN_SCRUBBED_LEN);
    forms.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    forms.dedup();
    forms
}

/// Replaces every secret form in a response body with `[redacted]`; true if
/// there was one.
fn scrub_body(body: &mut Zeroizing<Vec<u8>>, secrets: &[String]) -> bool {
    let mut found = false;
    for secret in secrets {
        let needle = secret.as_bytes();
        if !body.windows(needle.len()).any(|w| w == needle) {
            continue;
        }
        found = true;
        let mut clean = Zeroizing::new(Vec::with_capacity(body.len()));
        let mut rest: &[u8] = body;
        while !rest.is_empty() {
            if rest.starts_with(needle) {
                clean.extend_from_slice(b"[redacted]");
                rest = &rest[needle.len()..];
            } else {
                clean.push(rest[0]);
                rest = &rest[1..];
            }
        }
        *body = clean;
    }
    found
}

/// Replaces any secret that was sent (and that a provider may echo) in the
/// outcome's texts with `[redacted]`.
fn scrub(mut outcome: RefreshOutcome, secrets: &[String]) -> RefreshOutcome {
    let clean = |text: &mut String| {
        for secret in secrets {
            if text.contains(secret) {
                *text = text.replace(secret, "[redacted]");
            }
        }
    };
    match &mut outcome {
        RefreshOutcome::InvalidGrant(e) | RefreshOutcome::ClientInvalid(e) => {
            clean(&mut e.error);
            if let Some(description) = &mut e.description {
                clean(description);
            }
        }
        RefreshOutcome::Transient(t) => clean(&mut t.detail),
        RefreshOutcome::Refreshed(_) | RefreshOutcome::RateLimited { .. } => {}
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_encoded_before_base64() {
        let value = basic_authorization("thermos test", "s3cr+t/=:%").expect("a header");
        let encoded = value.to_str().expect("ascii").strip_prefix("Basic ").expect("basic");
        let decoded = String::from_utf8(STANDARD.decode(encoded).expect("base64")).expect("utf-8");
        assert_eq!(decoded, "thermos+test:s3cr%2Bt%2F%3D%3A%25");
        assert!(value.is_sensitive());
    }

    #[test]
    fn the_endpoint_is_shown_without_query_or_user_info() {
        let url = Url::parse("https://user:pw@auth.example.com/oauth/token?key=abc#x").expect("a url");
        assert_eq!(display_url(&url), "https://auth.example.com/oauth/token");
    }

    #[test]
    fn echoed_secrets_are_scrubbed_from_descriptions_and_details() {
        let outcome = classify_response(
            400,
            None,
            br#"{"error":"invalid_grant","error_description":"token rt_SECRET is unknown"}"#,
            time::OffsetDateTime::UNIX_EPOCH,
            Duration::from_secs(60),
        );
        let scrubbed = scrub(outcome, &["rt_SECRET".to_owned()]);
        assert_eq!(scrubbed.message(), "invalid_grant: token [redacted] is unknown");
    }

    #[test]
    fn every_encoding_of_a_sent_secret_is_scrubbed_from_an_echoing_body() {
        let app = ProviderApp {
            slug: "example".into(),
            token_url: Url::parse("https://auth.example.com/token").unwrap(),
            authorization_url: None,
            revocation_url: None,
            client_id: "client".into(),
            client_secret: Some("s3cr+t/=:%x".to_owned().into()),
            auth_method: AuthMethod::ClientSecretBasic,
            scopes: Vec::new(),
            scope_separator: ' ',
            extra_params: std::collections::BTreeMap::new(),
            default_ttl: Duration::from_secs(3600),
            max_concurrency: None,
            rate_limit_per_second: None,
            refresh_token_rules: Default::default(),
        };
        let token: SecretString = "rt_abc+def/ghi=".to_owned().into();
        let secrets = secret_forms(&app, &[&token]);
        let basic = basic_authorization("client", "s3cr+t/=:%x").unwrap();
        let basic = basic.to_str().unwrap();
        // As a provider that escapes slashes in JSON strings would write it.
        let body = format!(
            r#"{{"error":"invalid_grant","error_description":"refresh_token=rt_abc%2Bdef%2Fghi%3D {basic} rt_abc+def\/ghi= s3cr%2Bt%2F%3D%3A%25x {}"}}"#,
            "x".repeat(300)
        );
        let mut body = Zeroizing::new(body.into_bytes());
        assert!(scrub_body(&mut body, &secrets));
        let text = String::from_utf8(body.to_vec()).unwrap();
        for leaked in ["rt_abc", "s3cr", "Y2xpZW50"] {
            assert!(!text.contains(leaked), "{leaked} in {text}");
        }
    }
}
