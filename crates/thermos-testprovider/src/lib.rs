//! A real OAuth 2.0 token endpoint on loopback, for Thermos's integration
//! tests, `thermos demo` and benchmarks.
//!
//! [`TestProvider::start`] binds `127.0.0.1:0` and serves:
//!
//! - `POST /token` — the `refresh_token` grant (RFC 6749 §6), with client
//!   authentication as strict as the strictest real providers:
//!   `client_secret_basic` credentials are form-URL-decoded after base64
//!   (RFC 6749 §2.3.1, so a client that forgets to encode a secret such as
//!   the default `s3cr+t/=:%` is refused), one method per request, form
//!   bodies only, no repeated parameters;
//! - `GET /authorize` and the `authorization_code` grant at `POST /token`
//!   — the authorization code flow with PKCE (S256), approving at once
//!   without a user interface (see [`authorize`]);
//! - the `client_credentials` grant and the JWT bearer grant (RFC 7523) at
//!   `POST /token` — a machine token without a refresh token; assertions
//!   are verified with keys registered by [`TestProvider::register_jwt_key`]
//!   (see `grants.rs`);
//! - `POST /revoke` — token revocation (RFC 7009): a refresh token revokes
//!   its grant family, an access token itself, an unknown token is 200;
//!   switchable to 503 or `unsupported_token_type` (see [`RevocationMode`]);
//! - `GET /resource` — a protected API: 200 for a live `Bearer` access token, else 401;
//! - `GET /health` — 200;
//! - only when started with [`TestProvider::try_start_with_admin`] (the
//!   `thermos-testprovider` binary, for benchmarks in another process):
//!   `POST /admin/grants?count=N` issues N grants and answers them as JSON
//!   lines, `GET /admin/stats` answers the counters as one JSON object.
//!
//! Grants behave like Atlassian's or GitHub's: with rotation on, each refresh
//! returns a new refresh token and marks the old one used; presenting a used
//! one again outside the reuse grace window revokes the whole family (every
//! refresh and access token of that grant) and answers `invalid_grant`.
//! Inside the grace window the provider answers again with the grant's
//! current refresh token (Xero, Okta). Unknown tokens are `invalid_grant`,
//! wrong credentials `401 invalid_client`.
//!
//! Tests observe it through the handle ([`TestProvider::token_calls`],
//! [`TestProvider::max_in_flight_for`], [`TestProvider::is_revoked`], …) and
//! break it on purpose with [`Fault`]s.
//!
//! It never persists anything, never reaches beyond loopback unless told to
//! bind elsewhere, and never sleeps unboundedly (the longest wait is
//! [`fault::HANG_FOR`]). Memory grows with the refresh tokens issued (kept
//! for reuse detection); expired access tokens are pruned.
//!
//! ```no_run
//! # async fn demo() {
//! use thermos_testprovider::{ProviderOptions, TestProvider};
//! let provider = TestProvider::start(ProviderOptions::default()).await;
//! let grant = provider.issue_grant();
//! // POST provider.token_url() with grant_type=refresh_token&refresh_token=…
//! # let _ = grant;
//! # }
//! ```

pub mod authorize;
mod book;
pub mod fault;
mod grants;
mod revoke;
mod server;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::Instant;

pub use book::{GrantId, IssuedGrant};
pub use fault::Fault;
pub use revoke::RevocationMode;

use server::Shared;

/// Default client id.
pub const DEFAULT_CLIENT_ID: &str = "thermos-test";
/// Default client secret: every character that breaks a client which skips
/// the form-URL-encoding of Basic credentials.
pub const DEFAULT_CLIENT_SECRET: &str = "s3cr+t/=:%";
/// Default access-token lifetime.
pub const DEFAULT_ACCESS_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// A client authentication method (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `Authorization: Basic base64(urlencode(id) ":" urlencode(secret))`.
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Post,
    /// A public client: `client_id` in the body, no secret.
    None,
}

/// One token request as the provider saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenCall {
    /// When the request arrived.
    pub arrived: Instant,
    /// When the answer was handed to the server (None while pending).
    pub answered: Option<Instant>,
    /// The answer's HTTP status.
    pub status: Option<u16>,
}

/// How `expires_in` appears in a token response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpiresIn {
    /// A JSON number (most providers).
    #[default]
    Number,
    /// A numeric string (Azure AD v1).
    String,
    /// Absent (Salesforce).
    Omitted,
}

/// How the provider behaves. `Default` is a strict rotating provider.
#[derive(Debug, Clone)]
pub struct ProviderOptions {
    /// Where to listen; default `127.0.0.1:0` (a free loopback port).
    pub bind: SocketAddr,
    /// The one registered client's id.
    pub client_id: String,
    /// The one registered client's secret.
    pub client_secret: String,
    /// Client authentication methods accepted; default Basic and Post.
    pub accepted_auth: Vec<ClientAuth>,
    /// Lifetime of issued access tokens; `expires_in` is its seconds, rounded up.
    pub access_token_ttl: Duration,
    /// How `expires_in` is sent.
    pub expires_in: ExpiresIn,
    /// Whether each refresh issues a new refresh token (and uses up the old one).
    pub rotation: bool,
    /// How long after its use an old refresh token may still be presented
    /// without revoking the family; default zero (no grace, like GitHub).
    pub reuse_grace: Duration,
    /// Added to every token request while it is counted in flight; makes
    /// overlapping refreshes observable. Default zero.
    pub latency: Duration,
    /// `scope` sent in token responses when the request names none.
    pub scope: Option<String>,
    /// When set, refresh and code-exchange responses say how long the
    /// refresh token lives (`refresh_token_expires_in`, seconds rounded
    /// up), as GitHub does. Reported only: the provider does not expire
    /// refresh tokens by it. Default `None`.
    pub refresh_token_ttl: Option<Duration>,
}

impl Default for ProviderOptions {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            client_id: DEFAULT_CLIENT_ID.to_owned(),
            client_secret: DEFAULT_CLIENT_SECRET.to_owned(),
            accepted_auth: vec![ClientAuth::Basic, ClientAuth::Post],
            access_token_ttl: DEFAULT_ACCESS_TOKEN_TTL,
            expires_in: ExpiresIn::Number,
            rotation: true,
            reuse_grace: Duration::ZERO,
            latency: Duration::ZERO,
            scope: Some("read write".to_owned()),
            refresh_token_ttl: None,
        }
    }
}

/// A running test provider. Dropping it (or [`TestProvider::shutdown`])
/// stops accepting connections and closes idle ones.
#[derive(Debug)]
pub struct TestProvider {
    shared: Arc<Shared>,
    revocations: Arc<revoke::Revocations>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl TestProvider {
    /// Binds and starts serving; panics if the address cannot be bound
    /// (use [`TestProvider::try_start`] to handle that). Needs a tokio runtime.
    pub async fn start(options: ProviderOptions) -> Self {
        match Self::try_start(options).await {
            Ok(provider) => provider,
            Err(e) => panic!("start the test provider: {e}"),
        }
    }

    /// Binds and starts serving.
    pub async fn try_start(options: ProviderOptions) -> std::io::Result<Self> {
        Self::serve(options, false).await
    }

    /// Binds and starts serving, with the admin endpoints too (issuing
    /// grants and reading the counters over HTTP), for a provider that runs
    /// in a process of its own. They are as unauthenticated as the rest:
    /// bind to loopback only.
    pub async fn try_start_with_admin(options: ProviderOptions) -> std::io::Result<Self> {
        Self::serve(options, true).await
    }

    async fn serve(options: ProviderOptions, admin: bool) -> std::io::Result<Self> {
        let listener = TcpListener::bind(options.bind).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(options));
        let (stop, stopped) = oneshot::channel::<()>();
        let revocations = Arc::new(revoke::Revocations::default());
        let mut app =
            server::router(Arc::clone(&shared)).merge(revoke::router(Arc::clone(&shared), Arc::clone(&revocations)));
        if admin {
            app = app.merge(server::admin_router(Arc::clone(&shared)));
        }
        tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                tracing::warn!(error.message = %e, "test provider stopped");
            }
        });
        Ok(Self {
            shared,
            revocations,
            addr,
            stop: Some(stop),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The token endpoint, `http://127.0.0.1:<port>/token`.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.base_url())
    }

    /// The authorization endpoint, `http://127.0.0.1:<port>/authorize`: it
    /// approves at once and redirects back with a code (see [`authorize`]).
    pub fn authorize_url(&self) -> String {
        format!("{}/authorize", self.base_url())
    }

    /// The revocation endpoint (RFC 7009), `http://127.0.0.1:<port>/revoke`.
    pub fn revoke_url(&self) -> String {
        format!("{}/revoke", self.base_url())
    }

    /// The protected resource, `http://127.0.0.1:<port>/resource`.
    pub fn resource_url(&self) -> String {
        format!("{}/resource", self.base_url())
    }

    /// The registered client id.
    pub fn client_id(&self) -> &str {
        &self.shared.options.client_id
    }

    /// The registered client secret.
    pub fn client_secret(&self) -> &str {
        &self.shared.options.client_secret
    }

    /// The options it runs with.
    pub fn options(&self) -> &ProviderOptions {
        &self.shared.options
    }

    /// Stops accepting connections and closes idle ones; requests in flight
    /// finish (or are dropped when their client goes away).
    pub fn shutdown(mut self) {
        self.stop_serving();
    }

    fn stop_serving(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    // ----- grants ----------------------------------------------------------

    /// Starts a grant family, as a user's first authorisation would.
    pub fn issue_grant(&self) -> IssuedGrant {
        self.shared.book().issue_grant(&self.shared.rules, Instant::now())
    }

    /// Revokes a grant, as a user removing the app's access would; later
    /// refreshes answer `invalid_grant`. False if the grant is unknown.
    pub fn revoke(&self, grant: &GrantId) -> bool {
        self.shared.book().revoke(grant)
    }

    /// Whether the grant's family has been revoked (by reuse or [`TestProvider::revoke`]).
    pub fn is_revoked(&self, grant: &GrantId) -> bool {
        self.shared.book().is_revoked(grant)
    }

    /// Whether an access token exists, has not expired and its family is not revoked.
    pub fn access_token_is_valid(&self, access_token: &str) -> bool {
        self.shared.book().access_token_is_valid(access_token, Instant::now())
    }

    /// The refresh token that currently works for the grant (`None` when
    /// revoked or unknown).
    pub fn current_refresh_token(&self, grant: &GrantId) -> Option<String> {
        self.shared.book().current_refresh_token(grant)
    }

    /// Registers a public key (SPKI PEM: RSA, EC or Ed25519) that verifies
    /// JWT-bearer assertions whose header names `kid`. Panics if the PEM is
    /// not a public key (a broken test).
    pub fn register_jwt_key(&self, kid: &str, public_pem: &str) {
        if let Err(e) = self.shared.machine.register_key(kid, public_pem) {
            panic!("register JWT key {kid}: {e}");
        }
    }

    /// `client_credentials` token requests that passed client authentication.
    pub fn client_credentials_calls(&self) -> u64 {
        self.shared.machine.client_credentials_calls()
    }

    /// JWT-bearer token requests that passed client authentication
    /// (accepted or not).
    pub fn jwt_bearer_calls(&self) -> u64 {
        self.shared.machine.jwt_bearer_calls()
    }

    /// JWT-bearer assertions refused (`invalid_grant`).
    pub fn assertions_refused(&self) -> u64 {
        self.shared.machine.assertions_refused()
    }

    /// The claims of every accepted JWT-bearer assertion, oldest first.
    pub fn accepted_assertions(&self) -> Vec<serde_json::Value> {
        self.shared.machine.accepted_assertions()
    }

    /// Makes `GET /authorize` redirect back with `error` (e.g.
    /// `access_denied`, as a user refusing would) instead of a code, until
    /// called again with `None`.
    pub fn set_authorize_error(&self, error: Option<&str>) {
        self.shared.authorizations.set_error(error.map(str::to_owned));
    }

    /// The grants started by authorization code exchanges, oldest first.
    pub fn authorized_grants(&self) -> Vec<GrantId> {
        self.shared.authorizations.grants()
    }

    /// Authorization codes `GET /authorize` issued.
    pub fn codes_issued(&self) -> u64 {
        self.shared.authorizations.codes_issued()
    }

    // ----- revocation (RFC 7009) --------------------------------------------

    /// How `POST /revoke` answers from now on.
    pub fn set_revocation_mode(&self, mode: RevocationMode) {
        self.revocations.set_mode(mode);
    }

    /// Every `POST /revoke` received, whatever its answer.
    pub fn revocation_requests(&self) -> u64 {
        self.revocations.requests()
    }

    /// `POST /revoke` requests that failed client authentication.
    pub fn revocations_refused(&self) -> u64 {
        self.revocations.refused_clients()
    }

    /// Grant families revoked through `POST /revoke` with a refresh token.
    pub fn grants_revoked_by_request(&self) -> u64 {
        self.revocations.grants_revoked()
    }

    /// Access tokens revoked one by one through `POST /revoke`.
    pub fn access_tokens_revoked(&self) -> u64 {
        self.revocations.access_tokens_revoked()
    }

    // ----- observations ----------------------------------------------------

    /// Every `POST /token` request received, faults included.
    pub fn token_calls(&self) -> u64 {
        self.shared.token_calls.load(Ordering::SeqCst)
    }

    /// The token requests received, in arrival order (the first 10 000):
    /// when each arrived and when and how it was answered.
    pub fn token_call_log(&self) -> Vec<TokenCall> {
        self.shared.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Token requests that presented any refresh token of this grant.
    pub fn calls_for(&self, grant: &GrantId) -> u64 {
        self.shared.book().calls_for(grant)
    }

    /// Token requests that presented this exact refresh token.
    pub fn calls_with(&self, refresh_token: &str) -> u64 {
        self.shared.book().calls_with(refresh_token)
    }

    /// Successful refreshes (new access tokens issued by `/token`).
    pub fn refreshes(&self) -> u64 {
        self.shared.book().refreshes()
    }

    /// Every refresh token this provider issued (rotated ones included) and
    /// every access token it issued that has not been pruned (expired ones go
    /// only once more than 4096 are held): what a test must never find in
    /// logs or answers.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.shared.book().issued_tokens()
    }

    /// Grants started with [`TestProvider::issue_grant`].
    pub fn grants_issued(&self) -> u64 {
        self.shared.book().grants_issued()
    }

    /// Times a used refresh token came back outside the grace window (each
    /// one revoked a family).
    pub fn reuse_detected(&self) -> u64 {
        self.shared.book().reuse_detected()
    }

    /// The most token requests of this grant ever in flight at once; above 1
    /// means two refreshes of one grant overlapped.
    pub fn max_in_flight_for(&self, grant: &GrantId) -> u32 {
        self.shared.book().max_in_flight_for(grant)
    }

    /// The most token requests ever in flight at once, all grants together.
    pub fn max_in_flight(&self) -> u32 {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Token requests in flight now.
    pub fn in_flight(&self) -> u32 {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    // ----- faults ------------------------------------------------------------

    /// Applies `fault` to every token request (after any queued ones) until cleared.
    pub fn set_fault(&self, fault: Fault) {
        self.shared.faults().set(fault);
    }

    /// Back to normal: removes the standing fault and any queued ones.
    pub fn clear_fault(&self) {
        self.shared.faults().clear();
    }

    /// Queues one-shot faults, consumed one per token request, oldest first.
    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.shared.faults().push(faults);
    }

    /// Queued faults not yet consumed.
    pub fn pending_faults(&self) -> usize {
        self.shared.faults().pending()
    }
}

impl Drop for TestProvider {
    fn drop(&mut self) {
        self.stop_serving();
    }
}
