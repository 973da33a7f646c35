//! The broker at work: for each upstream that demands OAuth, the person's connect flow (a
//! confirmed start, the way back with `state`, `iss` and the code), the vault (token sets
//! sealed to their row), refresh (one at a time per person and upstream, across instances),
//! disconnection with revocation, and what the connections page shows.
//!
//! Nothing here knows HTTP routing: `web/connect.rs` calls it and renders the answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

use super::discovery::{self, Discovered};
use super::registration;
use crate::clock::{SharedClock, Timestamp};
use crate::config::{Config, UpstreamCredentials};
use crate::crypto;
use crate::login::LoginContexts;
use crate::net::SafeFetcher;
use crate::secret::Secret;
use crate::store::{SharedStore, UpstreamConnectRecord, UpstreamTokenRecord};

/// How long discovery results are trusted (a failure forgets them at once).
const DISCOVERY_TTL: i64 = 3600;
/// A connect flow's lifetime: from the confirmation to the way back.
const CONNECT_TTL: i64 = 600;
/// Refresh this long before the access token expires.
const REFRESH_AHEAD: i64 = 60;
/// A refresh lease lasts at most this long (a crashed holder frees it by time).
const LEASE_SECS: i64 = 30;
/// Largest token endpoint answer read.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;
/// How long a token read from the vault is used without reading its row again.
const VAULT_CACHE_SECS: i64 = 5;
/// Stripes of the in-process refresh lock.
const STRIPES: usize = 64;

pub const CONNECTED: &str = "connected";
pub const BROKEN: &str = "broken";

/// One upstream that demands OAuth, as configured.
#[derive(Debug, Clone)]
pub struct OAuthUpstream {
    pub name: String,
    pub url: Url,
    pub scopes: Vec<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    /// A fingerprint of what the tokens and registrations depend on.
    pub settings: String,
    /// One service identity for everyone (`client_credentials`), in the slot [`SHARED`].
    pub shared: bool,
    /// Each person's token obtained by token exchange (RFC 8693) with the gateway's
    /// assertion about them as the subject token.
    pub exchange: bool,
    /// Connect right after consenting to a client for this upstream.
    pub connect_on_consent: bool,
    /// The authorization server's issuer, when the operator pinned it.
    pub pinned_issuer: Option<String>,
    /// Token exchange with the person's identity provider token (from this login source)
    /// as the subject token.
    pub subject_source: Option<Arc<crate::proxy::provider_token::ProviderToken>>,
}

/// The vault slot of an upstream reached with the gateway's own service identity.
pub const SHARED: &str = "*";

/// What went wrong, in words a person or an operator can act on; never a token.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("no upstream `{0}` uses OAuth here")]
    UnknownUpstream(String),
    #[error("the upstream's authorization server could not be found: {0}")]
    Discovery(String),
    #[error("the gateway could not register at the upstream's authorization server: {0}")]
    Registration(String),
    #[error("this connection request has expired or was already used; start again")]
    UnknownState,
    #[error("this connection was started in another browser session; start again here")]
    OtherSession,
    #[error("the authorization server answered as `{found}`, not as `{expected}`")]
    WrongIssuer { expected: String, found: String },
    #[error("the answer arrived at another upstream's address; nothing was stored")]
    WrongRedirect,
    #[error("the authorization server did not say who it is (`iss`), as it promised to")]
    MissingIssuer,
    #[error("the authorization was not given: {0}")]
    Denied(String),
    #[error("the authorization server's token endpoint refused: {0}")]
    TokenRefused(String),
    #[error("the authorization server's token endpoint could not be used: {0}")]
    TokenFailed(String),
    #[error("this upstream is reached with your sign-in at `{0}`: sign in there")]
    Subject(String),
    #[error("the scope asked for is not valid")]
    BadScope,
    #[error(
        "`{0}` is reached without connecting (the gateway's service identity, or token exchange)"
    )]
    Shared(String),
    #[error("tokens cannot be sealed: {0}")]
    Sealing(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// The token set kept in the vault (sealed).
#[derive(Clone, Serialize, Deserialize)]
struct TokenSet {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    /// The client the tokens were issued to (a refresh must use the same one).
    client_id: String,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet")
            .field("client_id", &self.client_id)
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "…"))
            .finish_non_exhaustive()
    }
}

/// What a connect flow needs back (sealed in its row).
#[derive(Serialize, Deserialize)]
struct Leg {
    verifier: String,
    client_id: String,
    scope: String,
    resource: String,
    /// The authorization request (handle and form token) whose code waits for this flow.
    #[serde(default)]
    then: Option<(String, String)>,
}

/// The client the gateway is at an authorization server.
struct ClientIdentity {
    client_id: String,
    secret: Option<String>,
}

/// One connection's state, for the connections page, the JSON API and the CLI.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionStatus {
    pub upstream: String,
    /// `connected`, `expired`, `broken` or `not_connected`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connected_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

/// A connect flow that ended well: the upstream, and the authorization request whose code
/// was waiting for it, if any.
#[derive(Debug)]
pub struct Finished {
    pub upstream: String,
    pub then: Option<(String, String)>,
}

/// What the confirmation page names before a connect flow starts.
#[derive(Debug, Clone)]
pub struct ConnectPlan {
    pub upstream: String,
    pub upstream_url: String,
    pub issuer: String,
    pub scope: String,
}

/// The gateway as an OAuth client of its upstreams.
pub struct Broker {
    /// Itself, for work that must outlive the call that started it (a leased refresh).
    me: std::sync::Weak<Broker>,
    upstreams: HashMap<String, OAuthUpstream>,
    store: SharedStore,
    contexts: LoginContexts,
    clock: SharedClock,
    public_url: String,
    fetcher: SafeFetcher,
    /// For the upstream's own origin (configured, so as trusted as the proxy's target).
    client: reqwest::Client,
    discovered: Mutex<HashMap<String, (Arc<Discovered>, Timestamp)>>,
    allow_http_loopback: bool,
    client_metadata_url: Option<String>,
    /// Signs the subject tokens of token exchange.
    signer: Option<Arc<crate::proxy::Signer>>,
    stripes: Vec<tokio::sync::Mutex<()>>,
    /// Usable access tokens recently read from the vault, per (person, upstream), so that a
    /// call does not read and open its row every time: trusted `VAULT_CACHE_SECS` at most
    /// (another instance's refresh or disconnect is seen within that; an upstream refusal
    /// empties the entry at once), emptied here by every write to the row.
    recent: crate::cache::TtlCache<(String, Option<Timestamp>, i64)>,
    /// Refreshes performed by this instance (for tests and metrics).
    refreshes: std::sync::atomic::AtomicU64,
    observer: crate::observe::SharedObserver,
    /// Connections by (upstream, state), counted from the vault every minute for the metrics.
    counts: std::sync::Mutex<Vec<((String, String), i64)>>,
}

/// The settings fingerprint of an OAuth upstream: its URL, the gateway's redirect URI, the
/// scopes and the configured client.
pub fn settings_of(
    url: &str,
    public_url: &str,
    scopes: &[String],
    client_id: Option<&str>,
) -> String {
    let base = registration::settings_fingerprint(url, public_url);
    let mut h = <sha2::Sha256 as sha2::Digest>::new();
    sha2::Digest::update(&mut h, base.as_bytes());
    sha2::Digest::update(&mut h, [0]);
    sha2::Digest::update(&mut h, scopes.join(" ").as_bytes());
    sha2::Digest::update(&mut h, [0]);
    sha2::Digest::update(&mut h, client_id.unwrap_or("").as_bytes());
    crypto::hex(&sha2::Digest::finalize(h)[..16])
}

/// The settings fingerprint of an OAuth upstream as configured (the running gateway and the
/// operator's probe must agree, or each would forget the other's registration): its URL, the
/// gateway's address, the scopes, the client (configured, or where the gateway's metadata
/// document is published) and the grant.
pub fn oauth_settings(config: &Config, u: &crate::config::UpstreamConfig) -> Option<String> {
    let UpstreamCredentials::Oauth {
        scopes,
        client_id,
        grant,
        authorization_server,
        ..
    } = &u.credentials
    else {
        return None;
    };
    let url = Url::parse(u.url.as_deref()?).ok()?;
    // `v2`: one redirect URI per upstream (registrations made with the shared one go).
    let client = format!(
        "v2#{}#{grant:?}#{}#{}",
        client_id.as_deref().unwrap_or(""),
        config.broker.client_metadata_url.as_deref().unwrap_or(""),
        authorization_server.as_deref().unwrap_or("")
    );
    Some(settings_of(
        url.as_str(),
        &config.public_url(),
        scopes,
        Some(&client),
    ))
}

fn recent_key(user: &str, upstream: &str) -> String {
    format!("{user}\n{upstream}")
}

fn token_row(user: &str, upstream: &str, issuer: &str) -> String {
    format!("upstream-token\n{user}\n{upstream}\n{issuer}")
}

fn connect_row(state_hash: &str, user: &str, upstream: &str) -> String {
    format!("upstream-connect\n{state_hash}\n{user}\n{upstream}")
}

/// A scope string of valid scope tokens (RFC 6749 §3.3), space-separated, bounded.
fn valid_scope(s: &str) -> bool {
    s.len() <= 1024
        && s.split(' ').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
        })
}

fn union_scopes(a: &str, b: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for s in a.split(' ').chain(b.split(' ')) {
        if !s.is_empty() && !out.contains(&s) {
            out.push(s);
        }
    }
    out.join(" ")
}

impl Broker {
    /// The broker for the configuration's OAuth upstreams; `None` when there are none.
    pub fn from_config(
        config: &Config,
        store: SharedStore,
        contexts: LoginContexts,
        clock: SharedClock,
        signer: Option<Arc<crate::proxy::Signer>>,
        subjects: &HashMap<String, Arc<crate::proxy::provider_token::ProviderToken>>,
        observer: crate::observe::SharedObserver,
    ) -> Result<Option<Arc<Self>>, String> {
        let public_url = config.public_url();
        let mut upstreams = HashMap::new();
        for u in &config.upstreams {
            let UpstreamCredentials::Oauth {
                scopes,
                client_id,
                client_secret,
                grant,
                connect_on_consent,
                subject_source,
                authorization_server,
            } = &u.credentials
            else {
                continue;
            };
            let shared = *grant == crate::config::OauthGrant::ClientCredentials;
            let exchange = *grant == crate::config::OauthGrant::TokenExchange;
            let Some(settings) = oauth_settings(config, u) else {
                continue;
            };
            let Some(raw) = &u.url else { continue };
            let url = Url::parse(raw).map_err(|e| format!("upstream `{}`: url: {e}", u.name))?;
            upstreams.insert(
                u.name.clone(),
                OAuthUpstream {
                    name: u.name.clone(),
                    settings,
                    shared,
                    exchange,
                    connect_on_consent: *connect_on_consent && !shared && !exchange,
                    pinned_issuer: authorization_server.clone(),
                    subject_source: match subject_source {
                        None => None,
                        Some(name) => Some(subjects.get(name).cloned().ok_or_else(|| {
                            format!(
                                "upstream `{}`: no login source `{name}` keeps provider tokens",
                                u.name
                            )
                        })?),
                    },
                    url,
                    scopes: scopes.clone(),
                    client_id: client_id.clone(),
                    client_secret: client_secret.clone(),
                },
            );
        }
        if upstreams.is_empty() {
            return Ok(None);
        }
        if contexts.keys().is_none() {
            return Err(
                "upstreams with OAuth keep each person's tokens sealed: configure [keys] encryption"
                    .into(),
            );
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(
                config.proxy.connect_timeout_secs.max(1),
            ))
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?;
        let fetcher = SafeFetcher::new(
            config.broker.allow_http_loopback,
            config.server.egress_proxy.as_deref(),
        )
        .map_err(|e| e.to_string())?;
        Ok(Some(Arc::new_cyclic(|me| Self {
            me: me.clone(),
            upstreams,
            store,
            contexts,
            clock,
            public_url,
            fetcher,
            client,
            discovered: Mutex::new(HashMap::new()),
            allow_http_loopback: config.broker.allow_http_loopback,
            client_metadata_url: config.broker.client_metadata_url.clone(),
            signer,
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            refreshes: std::sync::atomic::AtomicU64::new(0),
            recent: crate::cache::TtlCache::new(VAULT_CACHE_SECS, 100_000),
            observer,
            counts: Default::default(),
        })))
    }

    /// Records one of the broker's security events (action `upstream_…`), in the log
    /// (target `audit`) and through the observer.
    fn audit(
        &self,
        action: &'static str,
        upstream: &str,
        user: Option<&str>,
        reason: Option<&str>,
    ) {
        tracing::info!(target: "audit", action, upstream, user, reason);
        self.observer.record(
            crate::observe::Event::Upstream {
                action,
                upstream: upstream.to_string(),
                user: user.map(str::to_string),
                reason: reason.map(str::to_string),
            },
            None,
        );
    }

    /// The vault cache's hits and misses.
    pub fn cache_stats(&self) -> Arc<crate::observe::metrics::CacheStats> {
        self.recent.stats()
    }

    /// Connections by (upstream, state) as last counted by [`Self::count_connections`].
    pub fn connection_counts(&self) -> Vec<((String, String), i64)> {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Counts the vault's rows by upstream and state, for the metrics.
    pub async fn count_connections(&self) -> Result<(), BrokerError> {
        let rows = self.store.upstream_tokens(None).await?;
        let mut counts: std::collections::BTreeMap<(String, String), i64> = Default::default();
        for name in self.upstreams.keys() {
            counts.insert((name.clone(), "connected".into()), 0);
        }
        for r in rows {
            *counts.entry((r.upstream, r.status)).or_insert(0) += 1;
        }
        if let Ok(mut c) = self.counts.lock() {
            *c = counts.into_iter().collect();
        }
        Ok(())
    }

    /// Forgets tokens, flows and registrations made under other settings (a changed URL,
    /// redirect, scopes or client): run once at start.
    pub async fn purge_changed(&self) -> Result<(), BrokerError> {
        for u in self.upstreams.values() {
            let tokens = self
                .store
                .purge_upstream_tokens(&u.name, &u.settings)
                .await?;
            let clients = self
                .store
                .purge_upstream_clients(&u.name, &u.settings)
                .await?;
            if tokens + clients > 0 {
                tracing::warn!(
                    upstream = %u.name,
                    tokens,
                    registrations = clients,
                    "the upstream's OAuth settings changed: its stored connections and registrations are forgotten"
                );
            }
        }
        Ok(())
    }

    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.upstreams.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    pub fn has(&self, name: &str) -> bool {
        self.upstreams.contains_key(name)
    }

    /// Reached with the gateway's own service identity (nobody connects).
    pub fn is_shared(&self, name: &str) -> bool {
        self.upstreams.get(name).is_some_and(|u| u.shared)
    }

    /// Whether `user_id`, having just consented to a client for `name`, should connect it
    /// first: the upstream asks for it and they have no connection yet.
    pub async fn connect_before_code(&self, name: &str, user_id: &str) -> bool {
        let Some(u) = self.upstreams.get(name).filter(|u| u.connect_on_consent) else {
            return false;
        };
        match self.store.upstream_token(user_id, name).await {
            Ok(None) => true,
            Ok(Some(r)) => r.settings != u.settings || r.status != CONNECTED,
            // The vault cannot be read: the code is not held back for it.
            Err(_) => false,
        }
    }

    /// Each person's token comes from token exchange (nobody connects).
    pub fn is_exchanged(&self, name: &str) -> bool {
        self.upstreams.get(name).is_some_and(|u| u.exchange)
    }

    /// The gateway's client metadata document: for `upstream`, or (`None`) the one the
    /// operator publishes elsewhere, naming every upstream's redirect URI.
    pub fn client_metadata(&self, upstream: Option<&str>) -> Option<serde_json::Value> {
        match upstream {
            Some(name) => {
                let u = self.upstreams.get(name)?;
                let id = registration::client_metadata_url(&self.public_url, None, &u.name);
                Some(registration::client_metadata(
                    &self.public_url,
                    &id,
                    &[&u.name],
                ))
            }
            None => {
                let id = self.client_metadata_url.as_deref()?;
                Some(registration::client_metadata(
                    &self.public_url,
                    id,
                    &self.names(),
                ))
            }
        }
    }

    /// Refreshes this instance has made.
    pub fn refresh_count(&self) -> u64 {
        self.refreshes.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn upstream(&self, name: &str) -> Result<&OAuthUpstream, BrokerError> {
        self.upstreams
            .get(name)
            .ok_or_else(|| BrokerError::UnknownUpstream(name.to_string()))
    }

    /// The connect page's address for `upstream` (never pre-authenticated), with scopes to
    /// add for a step-up.
    pub fn connect_url(&self, upstream: &str, more_scope: Option<&str>) -> String {
        let mut url = format!("{}/authorize/connect/{upstream}", self.public_url);
        if let Some(s) = more_scope.filter(|s| valid_scope(s)) {
            url.push_str("?scope=");
            url.extend(form_urlencoded::byte_serialize(s.as_bytes()));
        }
        url
    }

    /// Discovery for `name`, cached for an hour; a failure is not cached.
    async fn discovery(&self, name: &str) -> Result<Arc<Discovered>, BrokerError> {
        let u = self.upstream(name)?;
        let now = self.clock.now();
        if let Ok(cache) = self.discovered.lock()
            && let Some((d, at)) = cache.get(name)
            && now - at < DISCOVERY_TTL
        {
            return Ok(d.clone());
        }
        let mut steps = Vec::new();
        let found = discovery::discover(&u.url, &self.client, &self.fetcher, &mut steps)
            .await
            .map_err(|e| e.to_string())
            .and_then(|d| match &u.pinned_issuer {
                // The operator named the server: another one is never used.
                Some(pinned) if *pinned != d.server.issuer => Err(format!(
                    "the upstream names authorization server `{}`, not the configured `{pinned}`",
                    d.server.issuer
                )),
                _ => Ok(d),
            });
        match found {
            Ok(d) => {
                let d = Arc::new(d);
                if let Ok(mut cache) = self.discovered.lock() {
                    cache.insert(name.to_string(), (d.clone(), now));
                }
                Ok(d)
            }
            Err(e) => {
                self.forget_discovery(name);
                let e = crate::text::printable(&e).into_owned();
                tracing::warn!(upstream = name, error = %e, "upstream OAuth discovery failed");
                Err(BrokerError::Discovery(e))
            }
        }
    }

    fn forget_discovery(&self, name: &str) {
        if let Ok(mut cache) = self.discovered.lock() {
            cache.remove(name);
        }
    }

    /// The client identity to use at the discovered server: configured, else registered.
    async fn identity(
        &self,
        u: &OAuthUpstream,
        d: &Discovered,
    ) -> Result<ClientIdentity, BrokerError> {
        if let Some(id) = &u.client_id {
            return Ok(ClientIdentity {
                client_id: id.clone(),
                secret: u.client_secret.as_ref().map(|s| s.expose().to_string()),
            });
        }
        // The specification's order: configured, then the gateway's own document, then DCR.
        let published = self.client_metadata_url.as_deref();
        if d.server.client_id_metadata_document_supported
            && registration::client_metadata_usable(
                &self.public_url,
                published,
                self.allow_http_loopback,
            )
        {
            return Ok(ClientIdentity {
                client_id: registration::client_metadata_url(&self.public_url, published, &u.name),
                secret: None,
            });
        }
        let mut steps = Vec::new();
        let r = registration::register(
            &u.name,
            &u.settings,
            d,
            &self.public_url,
            &self.store,
            &self.fetcher,
            self.contexts.keys(),
            self.clock.now(),
            &mut steps,
        )
        .await
        .map_err(|e| BrokerError::Registration(e.to_string()))?;
        let secret = match self
            .store
            .upstream_client(&u.name, &d.server.issuer)
            .await?
        {
            Some(rec) => match (rec.client_secret, self.contexts.keys()) {
                (Some(sealed), Some(keys)) => {
                    registration::open_secret(keys, &u.name, &d.server.issuer, &sealed)
                }
                _ => None,
            },
            None => None,
        };
        Ok(ClientIdentity {
            client_id: r.client_id,
            secret,
        })
    }

    /// The scopes a connect flow asks for: configured, else the upstream's challenge, else
    /// its resource metadata, else the server's; `offline_access` when the server offers it.
    fn scope_for(u: &OAuthUpstream, d: &Discovered, more: Option<&str>) -> String {
        let base = if !u.scopes.is_empty() {
            u.scopes.join(" ")
        } else if let Some(s) = &d.challenge_scope {
            s.clone()
        } else if !d.resource_scopes.is_empty() {
            d.resource_scopes.join(" ")
        } else {
            d.server
                .scopes_supported
                .iter()
                .filter(|s| *s != "offline_access")
                .cloned()
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut scope = union_scopes(&base, more.unwrap_or(""));
        if d.server
            .scopes_supported
            .iter()
            .any(|s| s == "offline_access")
        {
            scope = union_scopes(&scope, "offline_access");
        }
        scope
    }

    /// What the confirmation page shows.
    pub async fn plan(&self, name: &str, more: Option<&str>) -> Result<ConnectPlan, BrokerError> {
        if more.is_some_and(|s| !valid_scope(s)) {
            return Err(BrokerError::BadScope);
        }
        let u = self.upstream(name)?;
        if u.shared || u.exchange {
            return Err(BrokerError::Shared(name.to_string()));
        }
        let d = self.discovery(name).await?;
        Ok(ConnectPlan {
            upstream: name.to_string(),
            upstream_url: u.url.to_string(),
            issuer: d.server.issuer.clone(),
            scope: Self::scope_for(u, &d, more),
        })
    }

    /// Starts a confirmed connect flow for `user_id` in the browser session `session_hash`:
    /// the URL of the upstream's authorization endpoint.
    pub async fn start(
        &self,
        name: &str,
        user_id: &str,
        session_hash: &str,
        more: Option<&str>,
        then: Option<(String, String)>,
    ) -> Result<String, BrokerError> {
        if more.is_some_and(|s| !valid_scope(s)) {
            return Err(BrokerError::BadScope);
        }
        let u = self.upstream(name)?;
        if u.shared || u.exchange {
            return Err(BrokerError::Shared(name.to_string()));
        }
        let d = self.discovery(name).await?;
        let client = self.identity(u, &d).await?;
        let endpoint = d
            .server
            .authorization_endpoint
            .as_deref()
            .and_then(|e| Url::parse(e).ok())
            .ok_or_else(|| BrokerError::Discovery("no usable authorization_endpoint".into()))?;
        // The browser goes there with a code coming back: https (or loopback when allowed).
        self.fetcher
            .check_url(&endpoint)
            .map_err(|e| BrokerError::Discovery(format!("authorization_endpoint: {e}")))?;
        let scope = Self::scope_for(u, &d, more);
        let state = crypto::new_secret("");
        let state_hash = crypto::hash_secret(&state);
        let verifier = crypto::new_secret("");
        let leg = Leg {
            verifier: verifier.clone(),
            client_id: client.client_id.clone(),
            scope: scope.clone(),
            resource: d.resource.clone(),
            then,
        };
        let plain = serde_json::to_vec(&leg).map_err(|e| BrokerError::Sealing(e.to_string()))?;
        let sealed = self
            .contexts
            .seal_as(&connect_row(&state_hash, user_id, name), &plain)
            .map_err(|e| BrokerError::Sealing(e.to_string()))?;
        self.store
            .put_upstream_connect(&UpstreamConnectRecord {
                state_hash,
                user_id: user_id.to_string(),
                session_hash: session_hash.to_string(),
                upstream: name.to_string(),
                issuer: d.server.issuer.clone(),
                sealed,
                settings: u.settings.clone(),
                expires_at: self.clock.now() + CONNECT_TTL,
            })
            .await?;
        let mut url = endpoint;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &client.client_id)
                .append_pair(
                    "redirect_uri",
                    &registration::redirect_uri(&self.public_url, name),
                )
                .append_pair("code_challenge", &crypto::pkce_s256_challenge(&verifier))
                .append_pair("code_challenge_method", "S256")
                .append_pair("state", &state)
                .append_pair("resource", &d.resource);
            if !scope.is_empty() {
                q.append_pair("scope", &scope);
            }
        }
        self.audit("upstream_connect_started", name, Some(user_id), None);
        Ok(url.into())
    }

    /// A way back in a browser that is not signed in: the flow its `state` names is used up
    /// (nobody can finish it later, in any browser), and nothing is stored.
    pub async fn abandon(&self, params: &HashMap<String, String>) {
        if let Some(state) = params
            .get("state")
            .filter(|s| !s.is_empty() && s.len() <= 200)
        {
            let _ = self
                .store
                .take_upstream_connect(&crypto::hash_secret(state), self.clock.now())
                .await;
        }
    }

    /// The way back from the upstream's authorization server, in the browser session
    /// `session_hash`: the upstream's name once the tokens are in the vault.
    pub async fn finish(
        &self,
        via: &str,
        params: &HashMap<String, String>,
        session_hash: &str,
    ) -> Result<Finished, BrokerError> {
        let state = params.get("state").map(String::as_str).unwrap_or("");
        if state.is_empty() || state.len() > 200 {
            return Err(BrokerError::UnknownState);
        }
        let now = self.clock.now();
        let Some(rec) = self
            .store
            .take_upstream_connect(&crypto::hash_secret(state), now)
            .await?
        else {
            return Err(BrokerError::UnknownState);
        };
        if !crypto::constant_time_eq(rec.session_hash.as_bytes(), session_hash.as_bytes()) {
            return Err(BrokerError::OtherSession);
        }
        // The answer came back at another upstream's address: a mix-up (or a mistake).
        if rec.upstream != via {
            tracing::warn!(upstream = %rec.upstream, arrived_for = via, "a connect flow came back at another upstream's address");
            self.audit(
                "upstream_connect_failed",
                &rec.upstream,
                Some(&rec.user_id),
                Some("wrong_redirect_uri"),
            );
            return Err(BrokerError::WrongRedirect);
        }
        let name = rec.upstream.clone();
        let audit_fail = |reason: &str| {
            self.audit(
                "upstream_connect_failed",
                &name,
                Some(&rec.user_id),
                Some(reason),
            );
        };
        let u = self.upstream(&name)?;
        let d = self.discovery(&name).await?;
        // RFC 9207: compared exactly when present; required when promised.
        match params.get("iss") {
            Some(iss) if *iss != rec.issuer => {
                audit_fail("wrong_issuer");
                return Err(BrokerError::WrongIssuer {
                    expected: rec.issuer.clone(),
                    found: iss.clone(),
                });
            }
            None if d.server.authorization_response_iss_parameter_supported => {
                audit_fail("missing_issuer");
                return Err(BrokerError::MissingIssuer);
            }
            _ => {}
        }
        if let Some(error) = params.get("error") {
            audit_fail("denied");
            let text = match params.get("error_description") {
                Some(d) => format!("{error}: {d}"),
                None => error.clone(),
            };
            return Err(BrokerError::Denied(
                crate::text::printable(&text).into_owned(),
            ));
        }
        let code = params
            .get("code")
            .filter(|c| !c.is_empty() && c.len() <= 2048)
            .ok_or_else(|| BrokerError::Denied("no authorization code came back".into()))?;
        if d.server.issuer != rec.issuer {
            audit_fail("issuer_changed");
            return Err(BrokerError::WrongIssuer {
                expected: rec.issuer.clone(),
                found: d.server.issuer.clone(),
            });
        }
        let plain = self
            .contexts
            .open_as(
                &connect_row(&rec.state_hash, &rec.user_id, &name),
                &rec.sealed,
            )
            .map_err(|e| BrokerError::Sealing(e.to_string()))?;
        let leg: Leg =
            serde_json::from_slice(&plain).map_err(|e| BrokerError::Sealing(e.to_string()))?;
        let client = self.identity(u, &d).await?;
        if client.client_id != leg.client_id {
            audit_fail("client_changed");
            return Err(BrokerError::Registration(
                "the gateway's registration changed during the flow; start again".into(),
            ));
        }
        let redirect = registration::redirect_uri(&self.public_url, &name);
        let answer = self
            .token_request(
                &u.url,
                &d,
                &client,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("redirect_uri", &redirect),
                    ("code_verifier", &leg.verifier),
                    ("resource", &leg.resource),
                ],
            )
            .await
            .inspect_err(|_| audit_fail("token_request"))?;
        let scope = answer.scope.clone().unwrap_or_else(|| leg.scope.clone());
        self.store_tokens(
            u,
            &rec.user_id,
            &rec.issuer,
            TokenSet {
                access_token: answer.access_token,
                refresh_token: answer.refresh_token,
                client_id: client.client_id,
            },
            &scope,
            answer.expires_in.map(|s| now + s),
            now,
        )
        .await?;
        self.audit("upstream_connected", &name, Some(&rec.user_id), None);
        Ok(Finished {
            upstream: name,
            then: leg.then,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn store_tokens(
        &self,
        u: &OAuthUpstream,
        user_id: &str,
        issuer: &str,
        set: TokenSet,
        scope: &str,
        expires_at: Option<Timestamp>,
        connected_at: Timestamp,
    ) -> Result<(), BrokerError> {
        self.write_tokens(
            u,
            user_id,
            issuer,
            set,
            scope,
            expires_at,
            connected_at,
            false,
        )
        .await
        .map(|_| ())
    }

    /// Seals and stores a token set: a new row (or replacing one) after a connect flow, or
    /// with `refreshed`, only into the row that still exists (false when it is gone).
    #[allow(clippy::too_many_arguments)]
    async fn write_tokens(
        &self,
        u: &OAuthUpstream,
        user_id: &str,
        issuer: &str,
        set: TokenSet,
        scope: &str,
        expires_at: Option<Timestamp>,
        connected_at: Timestamp,
        refreshed: bool,
    ) -> Result<bool, BrokerError> {
        self.recent.remove(&recent_key(user_id, &u.name));
        let plain = serde_json::to_vec(&set).map_err(|e| BrokerError::Sealing(e.to_string()))?;
        let sealed = self
            .contexts
            .seal_as(&token_row(user_id, &u.name, issuer), &plain)
            .map_err(|e| BrokerError::Sealing(e.to_string()))?;
        let record = UpstreamTokenRecord {
            user_id: user_id.to_string(),
            upstream: u.name.clone(),
            issuer: issuer.to_string(),
            sealed,
            status: CONNECTED.into(),
            scope: scope.to_string(),
            expires_at,
            settings: u.settings.clone(),
            connected_at,
            updated_at: self.clock.now(),
        };
        if refreshed {
            Ok(self.store.update_upstream_token(&record).await?)
        } else {
            self.store.put_upstream_token(&record).await?;
            Ok(true)
        }
    }

    fn open(&self, r: &UpstreamTokenRecord) -> Option<TokenSet> {
        let plain = self
            .contexts
            .open_as(&token_row(&r.user_id, &r.upstream, &r.issuer), &r.sealed)
            .ok()?;
        serde_json::from_slice(&plain).ok()
    }

    async fn token_request(
        &self,
        upstream: &Url,
        d: &Discovered,
        client: &ClientIdentity,
        fields: &[(&str, &str)],
    ) -> Result<TokenAnswer, BrokerError> {
        let endpoint = d
            .server
            .token_endpoint
            .as_deref()
            .and_then(|e| Url::parse(e).ok())
            .ok_or_else(|| BrokerError::TokenFailed("no usable token_endpoint".into()))?;
        let mut form: Vec<(&str, &str)> = fields.to_vec();
        let methods = &d.server.token_endpoint_auth_methods_supported;
        let basic = match &client.secret {
            None => {
                form.push(("client_id", &client.client_id));
                None
            }
            Some(secret)
                if methods.iter().any(|m| m == "client_secret_post")
                    && !methods.iter().any(|m| m == "client_secret_basic") =>
            {
                form.push(("client_id", &client.client_id));
                form.push(("client_secret", secret));
                None
            }
            Some(secret) => Some((client.client_id.as_str(), secret.as_str())),
        };
        let (status, body) = self
            .post_form(
                upstream,
                &d.server.issuer,
                &endpoint,
                &form,
                basic,
                MAX_TOKEN_RESPONSE,
            )
            .await
            .map_err(|e| BrokerError::TokenFailed(e.to_string()))?;
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            let code = v["error"].as_str().unwrap_or("no error code");
            let text = format!(
                "HTTP {status}: {code} {}",
                v["error_description"].as_str().unwrap_or("")
            );
            let text = crate::text::printable(text.trim()).into_owned();
            return Err(
                if code == "invalid_grant" || code == "invalid_client" || status == 401 {
                    BrokerError::TokenRefused(text)
                } else {
                    BrokerError::TokenFailed(text)
                },
            );
        }
        TokenAnswer::read(&v)
    }

    /// The shared slot's token (`client_credentials`): the kept one while it is fresh,
    /// renewed under the same lease as any refresh, obtained on first use.
    async fn shared_token(
        &self,
        u: &OAuthUpstream,
    ) -> Result<String, crate::proxy::CredentialError> {
        let row = self
            .store
            .upstream_token(SHARED, &u.name)
            .await
            .map_err(|_| unavailable("the vault cannot be read now"))?;
        let now = self.clock.now();
        match row.filter(|r| r.settings == u.settings && r.status == CONNECTED) {
            Some(r) => {
                let Some(set) = self.open(&r) else {
                    return Err(unavailable("the shared token cannot be read"));
                };
                if r.expires_at.is_some_and(|e| e - REFRESH_AHEAD <= now) {
                    return match self.refresh(u, SHARED, &set.access_token).await {
                        Refreshed::Token(t) => Ok(t),
                        Refreshed::Broken => Err(unavailable(
                            "the upstream refuses the gateway's service identity",
                        )),
                        Refreshed::Unavailable(why) => Err(unavailable(&why)),
                    };
                }
                Ok(set.access_token)
            }
            None => {
                // First use (or after a refusal): one fetch at a time in this process; another
                // instance may fetch too, which a client_credentials grant tolerates.
                let _guard = self.stripe(SHARED, &u.name).lock().await;
                if let Ok(Some(r)) = self.store.upstream_token(SHARED, &u.name).await
                    && r.settings == u.settings
                    && r.status == CONNECTED
                    && let Some(set) = self.open(&r)
                {
                    return Ok(set.access_token);
                }
                self.fetch_shared(u)
                    .await
                    .map_err(|e| unavailable(&e.to_string()))
            }
        }
    }

    /// The person's token at a token-exchange upstream: the kept one while it is fresh, else
    /// exchanged now for the gateway's assertion about them (RFC 8693), one exchange at a
    /// time per person in this process.
    pub async fn exchanged_token(
        &self,
        name: &str,
        principal: &crate::authorization::token::Principal,
    ) -> Result<String, crate::proxy::CredentialError> {
        let u = self
            .upstream(name)
            .map_err(|e| unavailable(&e.to_string()))?;
        let Some(user) = principal.user_id.as_deref() else {
            return Err(unavailable(
                "token exchange needs a person: a client acting for nobody has none",
            ));
        };
        let fresh = |r: &UpstreamTokenRecord, now: Timestamp| {
            r.settings == u.settings
                && r.status == CONNECTED
                && r.expires_at.is_none_or(|e| e - REFRESH_AHEAD > now)
        };
        let kept = |r: Option<UpstreamTokenRecord>| {
            r.filter(|r| fresh(r, self.clock.now()))
                .and_then(|r| self.open(&r))
                .map(|s| s.access_token)
        };
        let read = || async {
            self.store
                .upstream_token(user, name)
                .await
                .map_err(|_| unavailable("the vault cannot be read now"))
        };
        if let Some(t) = kept(read().await?) {
            return Ok(t);
        }
        let _guard = self.stripe(user, name).lock().await;
        if let Some(t) = kept(read().await?) {
            return Ok(t);
        }
        self.exchange(u, user, principal)
            .await
            .map_err(|e| unavailable(&e.to_string()))
    }

    async fn exchange(
        &self,
        u: &OAuthUpstream,
        user: &str,
        principal: &crate::authorization::token::Principal,
    ) -> Result<String, BrokerError> {
        let d = self.discovery(&u.name).await?;
        let client = self.identity(u, &d).await?;
        let now = self.clock.now();
        let (assertion, subject_type) = match &u.subject_source {
            // The person's own identity provider token, from their sign-in there.
            Some(provider) => {
                let (Some(grant), Some(source)) = (&principal.grant_id, &principal.login_source)
                else {
                    return Err(BrokerError::Subject(provider.source_name().to_string()));
                };
                if source != provider.source_name() {
                    return Err(BrokerError::Subject(provider.source_name().to_string()));
                }
                let tokens = provider
                    .token_for(grant, false)
                    .await
                    .map_err(|e| BrokerError::TokenFailed(e.to_string()))?;
                (
                    tokens.access_token,
                    "urn:ietf:params:oauth:token-type:access_token",
                )
            }
            // The gateway's assertion, addressed to the upstream's server, valid a minute.
            None => (
                self.signer
                    .as_ref()
                    .and_then(|s| s.assert(&self.public_url, &d.server.issuer, principal, now, 60))
                    .ok_or_else(|| {
                        BrokerError::Sealing("the identity assertion could not be signed".into())
                    })?,
                "urn:ietf:params:oauth:token-type:jwt",
            ),
        };
        let token = self
            .obtain(
                u,
                user,
                &d,
                client,
                &[
                    (
                        "grant_type",
                        "urn:ietf:params:oauth:grant-type:token-exchange",
                    ),
                    ("subject_token", assertion.as_str()),
                    ("subject_token_type", subject_type),
                    (
                        "requested_token_type",
                        "urn:ietf:params:oauth:token-type:access_token",
                    ),
                ],
            )
            .await?;
        self.audit("upstream_token_exchanged", &u.name, Some(user), None);
        Ok(token)
    }

    /// The upstream refused an exchanged token: it is forgotten (unless another call has
    /// replaced it already), so that the retry exchanges afresh.
    pub async fn forget_exchanged(&self, name: &str, user_id: &str, used: &str) {
        self.forget_discovery(name);
        if let Ok(Some(r)) = self.store.upstream_token(user_id, name).await
            && self.open(&r).is_none_or(|s| s.access_token == used)
        {
            let _ = self.store.delete_upstream_token(user_id, name).await;
        }
    }

    /// A `client_credentials` token for the shared slot, stored.
    async fn fetch_shared(&self, u: &OAuthUpstream) -> Result<String, BrokerError> {
        let d = self.discovery(&u.name).await?;
        let client = self.identity(u, &d).await?;
        let token = self
            .obtain(
                u,
                SHARED,
                &d,
                client,
                &[("grant_type", "client_credentials")],
            )
            .await?;
        self.audit("upstream_service_token", &u.name, None, None);
        Ok(token)
    }

    /// A grant nobody watches (token exchange, client credentials): the token request with
    /// `resource` and the scopes (configured, else the upstream's challenge or resource
    /// metadata), its answer sealed into the vault slot `slot`.
    async fn obtain(
        &self,
        u: &OAuthUpstream,
        slot: &str,
        d: &Discovered,
        client: ClientIdentity,
        grant: &[(&str, &str)],
    ) -> Result<String, BrokerError> {
        let scope = if u.scopes.is_empty() {
            d.challenge_scope
                .clone()
                .unwrap_or_else(|| d.resource_scopes.join(" "))
        } else {
            u.scopes.join(" ")
        };
        let mut fields = grant.to_vec();
        fields.push(("resource", d.resource.as_str()));
        if !scope.is_empty() {
            fields.push(("scope", scope.as_str()));
        }
        let answer = self.token_request(&u.url, d, &client, &fields).await?;
        self.refreshes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = self.clock.now();
        let token = answer.access_token.clone();
        self.store_tokens(
            u,
            slot,
            &d.server.issuer,
            TokenSet {
                access_token: answer.access_token,
                refresh_token: None,
                client_id: client.client_id,
            },
            &answer.scope.unwrap_or(scope),
            answer.expires_in.map(|s| now + s),
            now,
        )
        .await?;
        Ok(token)
    }

    fn stripe(&self, user_id: &str, upstream: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (user_id, upstream).hash(&mut h);
        let i = (h.finish() as usize) % STRIPES;
        // `STRIPES` locks are made in `from_config`, so `i` is in range.
        &self.stripes[i]
    }

    /// POSTs a form: on the upstream's own origin like the upstream itself (configured, so
    /// an internal address is fine), anywhere else through the guarded fetcher.
    async fn post_form(
        &self,
        upstream: &Url,
        issuer: &str,
        url: &Url,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
        max: usize,
    ) -> Result<(u16, Vec<u8>), crate::net::FetchError> {
        // Only when the authorization server itself lives there: a stranger's document
        // naming an address on the upstream's origin gets the guarded fetcher.
        let own = Url::parse(issuer).is_ok_and(|i| i.origin() == upstream.origin());
        if own && url.origin() == upstream.origin() {
            let request = crate::net::form_request(&self.client, url, form, basic);
            crate::net::bounded(request, max).await
        } else {
            self.fetcher.post_form(url, form, basic, max).await
        }
    }

    /// The access token to send for `user_id`: refreshed first when it is about to expire.
    /// `Ok(None)` when the person has never connected (the request may go without a token);
    /// `Err(ConnectFirst)` when a connection exists but cannot be used.
    pub async fn access_token(
        &self,
        name: &str,
        user_id: &str,
    ) -> Result<Option<String>, crate::proxy::CredentialError> {
        let connect = |why: &str| crate::proxy::CredentialError::ConnectFirst {
            url: self.connect_url(name, None),
            message: format!(
                "{why} Open this address to connect your account at `{name}`, then try again: {}",
                self.connect_url(name, None)
            ),
        };
        let Ok(u) = self.upstream(name) else {
            return Err(crate::proxy::CredentialError::Unavailable(format!(
                "no OAuth upstream `{name}`"
            )));
        };
        if u.shared {
            return self.shared_token(u).await.map(Some);
        }
        let key = recent_key(user_id, name);
        let now = self.clock.now();
        if let Some((token, expires_at, margin)) = self.recent.get(&key, now)
            && expires_at.is_none_or(|e| e - margin > now)
        {
            return Ok(Some(token));
        }
        let generation = self.recent.generation();
        let row = self
            .store
            .upstream_token(user_id, name)
            .await
            .map_err(|_| unavailable("the vault cannot be read now"))?;
        let Some(row) = row.filter(|r| r.settings == u.settings) else {
            return Ok(None);
        };
        if row.status != CONNECTED {
            return Err(connect("Your connection to this upstream stopped working."));
        }
        let Some(set) = self.open(&row) else {
            return Err(connect(
                "Your stored connection to this upstream cannot be read.",
            ));
        };
        let now = self.clock.now();
        // Without a refresh token the token is used until it really expires.
        let margin = if set.refresh_token.is_some() {
            REFRESH_AHEAD
        } else {
            0
        };
        if row.expires_at.is_some_and(|e| e - margin <= now) {
            return match self.refresh(u, user_id, &set.access_token).await {
                Refreshed::Token(t) => Ok(Some(t)),
                Refreshed::Broken => Err(connect("Your connection to this upstream expired.")),
                Refreshed::Unavailable(why) => Err(unavailable(&why)),
            };
        }
        self.recent.put_unless_removed_since(
            generation,
            key,
            (set.access_token.clone(), row.expires_at, margin),
            now,
        );
        Ok(Some(set.access_token))
    }

    /// "Connect first" for `user_id`, after the upstream refused a request that carried no
    /// token: the connect page's address, with the scope the upstream's challenge named.
    pub async fn connect_first(
        &self,
        name: &str,
        user_id: &str,
        scope: Option<&str>,
    ) -> crate::proxy::CredentialError {
        let row = self
            .store
            .upstream_token(user_id, name)
            .await
            .ok()
            .flatten();
        let why = match row {
            Some(r) if r.status != CONNECTED => "Your connection to this upstream stopped working.",
            Some(_) => "Your connection to this upstream expired.",
            None => "Your account at this upstream is not connected yet.",
        };
        let url = self.connect_url(name, scope);
        crate::proxy::CredentialError::ConnectFirst {
            message: format!(
                "{why} Open this address to connect your account at `{name}`, then try again: {url}"
            ),
            url,
        }
    }

    /// The upstream refused even a renewed token: the connection is marked broken and the
    /// person asked to reconnect (discovery is done afresh: its server may have moved).
    pub async fn give_up(&self, name: &str, user_id: &str) -> crate::proxy::CredentialError {
        self.forget_discovery(name);
        self.recent.remove(&recent_key(user_id, name));
        if self.is_shared(name) {
            let _ = self
                .store
                .set_upstream_token_status(SHARED, name, BROKEN, self.clock.now())
                .await;
            return unavailable("the upstream refuses the gateway's service identity");
        }
        let _ = self
            .store
            .set_upstream_token_status(user_id, name, BROKEN, self.clock.now())
            .await;
        self.audit("upstream_connection_broken", name, Some(user_id), None);
        self.connect_first(name, user_id, None).await
    }

    /// The upstream refused `used` (a `401`): one refresh unless another call refreshed
    /// already. `Ok(())` means try again; an error is what to answer.
    pub async fn refused(
        &self,
        name: &str,
        user_id: &str,
        used: &str,
    ) -> Result<(), crate::proxy::CredentialError> {
        let Ok(u) = self.upstream(name) else {
            return Err(unavailable("no such upstream"));
        };
        // A refusal may mean the upstream moved to another authorization server: the next
        // look at its metadata is fresh. The refused token is not used again from memory.
        self.forget_discovery(name);
        self.recent.remove(&recent_key(user_id, name));
        let user_id = if u.shared { SHARED } else { user_id };
        match self.refresh(u, user_id, used).await {
            Refreshed::Broken if u.shared => Err(unavailable(
                "the upstream refuses the gateway's service identity",
            )),
            Refreshed::Token(_) => Ok(()),
            Refreshed::Broken => Err(crate::proxy::CredentialError::ConnectFirst {
                url: self.connect_url(name, None),
                message: format!(
                    "The upstream `{name}` no longer accepts your connection. Open this address to reconnect, then try again: {}",
                    self.connect_url(name, None)
                ),
            }),
            Refreshed::Unavailable(why) => Err(unavailable(&why)),
        }
    }

    /// Refreshes the tokens of (`user_id`, `u`) unless the stored access token is no longer
    /// `stale` (someone else refreshed): one refresh at a time per row, in this process by a
    /// striped lock, across instances by the row's lease.
    async fn refresh(&self, u: &OAuthUpstream, user_id: &str, stale: &str) -> Refreshed {
        let _guard = self.stripe(user_id, &u.name).lock().await;
        // Another instance may hold the lease: wait for its result, up to the lease's length.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(LEASE_SECS as u64);
        loop {
            let row = match self.store.upstream_token(user_id, &u.name).await {
                Ok(Some(r)) => r,
                Ok(None) => return Refreshed::Broken,
                Err(_) => return Refreshed::Unavailable("the vault cannot be read now".into()),
            };
            if row.status != CONNECTED {
                return Refreshed::Broken;
            }
            let Some(set) = self.open(&row) else {
                return Refreshed::Broken;
            };
            let now = self.clock.now();
            let fresh = row.expires_at.is_none_or(|e| e - REFRESH_AHEAD > now);
            if set.access_token != stale && fresh {
                return Refreshed::Token(set.access_token);
            }
            let leased = self
                .store
                .lease_upstream_token(user_id, &u.name, now, now + LEASE_SECS)
                .await;
            match leased {
                Ok(true) => {
                    // What another instance stored between our read and our lease counts.
                    let again = self.store.upstream_token(user_id, &u.name).await;
                    let Ok(Some(row)) = again else {
                        let _ = self.store.release_upstream_token(user_id, &u.name).await;
                        return Refreshed::Broken;
                    };
                    let Some(set) = self.open(&row) else {
                        let _ = self.store.release_upstream_token(user_id, &u.name).await;
                        return Refreshed::Broken;
                    };
                    let now = self.clock.now();
                    if set.access_token != stale
                        && row.status == CONNECTED
                        && row.expires_at.is_none_or(|e| e - REFRESH_AHEAD > now)
                    {
                        let _ = self.store.release_upstream_token(user_id, &u.name).await;
                        return Refreshed::Token(set.access_token);
                    }
                    // In a task of its own: a caller that goes away (the client hung up)
                    // must not lose a rotated refresh token or leave the lease held.
                    let Some(me) = self.me.upgrade() else {
                        return self.refresh_leased(u, user_id, &row, set).await;
                    };
                    let (u, user) = (u.clone(), user_id.to_string());
                    let task =
                        tokio::spawn(async move { me.refresh_leased(&u, &user, &row, set).await });
                    return task.await.unwrap_or_else(|_| {
                        Refreshed::Unavailable("the refresh did not finish".into())
                    });
                }
                Ok(false) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(false) => {
                    return Refreshed::Unavailable(
                        "another instance is renewing this connection".into(),
                    );
                }
                Err(_) => return Refreshed::Unavailable("the vault cannot be written now".into()),
            }
        }
    }

    async fn refresh_leased(
        &self,
        u: &OAuthUpstream,
        user_id: &str,
        row: &UpstreamTokenRecord,
        set: TokenSet,
    ) -> Refreshed {
        let release = async || {
            let _ = self.store.release_upstream_token(user_id, &u.name).await;
        };
        let broken = async |why: &str| {
            let _ = self
                .store
                .set_upstream_token_status(user_id, &u.name, BROKEN, self.clock.now())
                .await;
            self.audit("upstream_refresh_failed", &u.name, Some(user_id), Some(why));
            Refreshed::Broken
        };
        if u.shared {
            // A service identity asks again; a refusal is the operator's to mend.
            return match self.fetch_shared(u).await {
                Ok(t) => Refreshed::Token(t),
                Err(e) => {
                    release().await;
                    Refreshed::Unavailable(e.to_string())
                }
            };
        }
        let Some(refresh_token) = set.refresh_token.clone() else {
            return broken("no_refresh_token").await;
        };
        let d = match self.discovery(&u.name).await {
            Ok(d) => d,
            Err(e) => {
                release().await;
                return Refreshed::Unavailable(e.to_string());
            }
        };
        if d.server.issuer != row.issuer {
            return broken("issuer_changed").await;
        }
        let client = match self.identity(u, &d).await {
            Ok(c) if c.client_id == set.client_id => c,
            Ok(_) => return broken("client_changed").await,
            Err(e) => {
                release().await;
                return Refreshed::Unavailable(e.to_string());
            }
        };
        let resource = d.resource.clone();
        let answer = self
            .token_request(
                &u.url,
                &d,
                &client,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &refresh_token),
                    ("resource", &resource),
                ],
            )
            .await;
        self.refreshes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match answer {
            Ok(a) => {
                let now = self.clock.now();
                let scope = a.scope.clone().unwrap_or_else(|| row.scope.clone());
                let token = a.access_token.clone();
                let stored = self
                    .write_tokens(
                        u,
                        user_id,
                        &row.issuer,
                        TokenSet {
                            access_token: a.access_token,
                            // A server that does not rotate keeps the old one valid.
                            refresh_token: a.refresh_token.or(Some(refresh_token)),
                            client_id: set.client_id,
                        },
                        &scope,
                        a.expires_in.map(|s| now + s),
                        row.connected_at,
                        true,
                    )
                    .await;
                match stored {
                    // Disconnected (or removed) while this refresh ran: it stays gone.
                    Ok(false) => Refreshed::Broken,
                    Ok(true) => {
                        self.audit("upstream_refreshed", &u.name, Some(user_id), None);
                        Refreshed::Token(token)
                    }
                    Err(e) => {
                        release().await;
                        Refreshed::Unavailable(e.to_string())
                    }
                }
            }
            Err(BrokerError::TokenRefused(why)) => {
                tracing::info!(upstream = %u.name, reason = %why, "upstream refused a refresh");
                broken("refresh_refused").await
            }
            Err(e) => {
                release().await;
                Refreshed::Unavailable(e.to_string())
            }
        }
    }

    /// Ends a connection: revoked at the upstream when it offers revocation (best effort),
    /// then forgotten. False when there was none.
    pub async fn disconnect(&self, name: &str, user_id: &str) -> Result<bool, BrokerError> {
        self.recent.remove(&recent_key(user_id, name));
        let u = self.upstream(name)?;
        let Some(row) = self.store.upstream_token(user_id, name).await? else {
            return Ok(false);
        };
        if let Some(set) = self.open(&row)
            && let Ok(d) = self.discovery(name).await
            && d.server.issuer == row.issuer
            && let Some(endpoint) = d
                .server
                .revocation_endpoint
                .as_deref()
                .and_then(|e| Url::parse(e).ok())
            && let Ok(client) = self.identity(u, &d).await
        {
            let (token, hint) = match &set.refresh_token {
                Some(r) => (r.as_str(), "refresh_token"),
                None => (set.access_token.as_str(), "access_token"),
            };
            let mut form = vec![("token", token), ("token_type_hint", hint)];
            let basic = match &client.secret {
                None => {
                    form.push(("client_id", &client.client_id));
                    None
                }
                Some(s) => Some((client.client_id.as_str(), s.as_str())),
            };
            match self
                .post_form(&u.url, &d.server.issuer, &endpoint, &form, basic, 16 * 1024)
                .await
            {
                Ok((200, _)) => {}
                Ok((status, _)) => {
                    tracing::info!(
                        upstream = name,
                        status,
                        "the upstream did not confirm revocation"
                    )
                }
                Err(e) => {
                    tracing::info!(upstream = name, error = %e, "revocation at the upstream failed")
                }
            }
        }
        let removed = self.store.delete_upstream_token(user_id, name).await?;
        self.audit("upstream_disconnected", name, Some(user_id), None);
        Ok(removed)
    }

    /// The connect page's address asking for the union of what `user_id` holds and `wanted`;
    /// `None` when `wanted` is no valid scope.
    pub async fn step_up_url(&self, name: &str, user_id: &str, wanted: &str) -> Option<String> {
        if !valid_scope(wanted) {
            return None;
        }
        let held = self
            .store
            .upstream_token(user_id, name)
            .await
            .ok()
            .flatten()
            .map(|r| r.scope)
            .unwrap_or_default();
        // Granted already and still refused: asking again would loop; the refusal stands.
        if wanted.split(' ').all(|w| held.split(' ').any(|h| h == w)) {
            return None;
        }
        self.audit("upstream_step_up", name, Some(user_id), None);
        Some(self.connect_url(name, Some(&union_scopes(&held, wanted))))
    }

    /// Every OAuth upstream's state for `user_id`.
    pub async fn statuses(&self, user_id: &str) -> Result<Vec<ConnectionStatus>, BrokerError> {
        let rows = self.store.upstream_tokens(Some(user_id)).await?;
        let now = self.clock.now();
        Ok(self
            .names()
            .into_iter()
            .filter_map(|name| self.upstreams.get(name).map(|u| (name, u)))
            .map(|(name, u)| {
                if u.shared || u.exchange {
                    return ConnectionStatus {
                        upstream: name.to_string(),
                        state: if u.shared { "shared" } else { "exchanged" },
                        issuer: None,
                        scope: None,
                        connected_at: None,
                        expires_at: None,
                    };
                }
                match rows
                    .iter()
                    .find(|r| r.upstream == name && r.settings == u.settings)
                {
                    None => ConnectionStatus {
                        upstream: name.to_string(),
                        state: "not_connected",
                        issuer: None,
                        scope: None,
                        connected_at: None,
                        expires_at: None,
                    },
                    Some(r) => ConnectionStatus {
                        upstream: name.to_string(),
                        state: status_of(r, self.open(r).as_ref(), now),
                        issuer: Some(r.issuer.clone()),
                        scope: Some(r.scope.clone()),
                        connected_at: Some(r.connected_at),
                        expires_at: r.expires_at,
                    },
                }
            })
            .collect())
    }
}

/// `connected`, `expired` (the access token is past and nothing renews it) or `broken`.
fn status_of(r: &UpstreamTokenRecord, set: Option<&TokenSet>, now: Timestamp) -> &'static str {
    if r.status != CONNECTED || set.is_none() {
        return "broken";
    }
    let renewable = set.is_some_and(|s| s.refresh_token.is_some());
    if r.expires_at.is_some_and(|e| e <= now) && !renewable {
        "expired"
    } else {
        "connected"
    }
}

fn unavailable(why: &str) -> crate::proxy::CredentialError {
    crate::proxy::CredentialError::Unavailable(why.to_string())
}

enum Refreshed {
    Token(String),
    Broken,
    Unavailable(String),
}

/// A token endpoint's successful answer (RFC 6749 §5.1).
struct TokenAnswer {
    access_token: String,
    refresh_token: Option<String>,
    expires_in: Option<i64>,
    scope: Option<String>,
}

impl TokenAnswer {
    fn read(v: &Value) -> Result<Self, BrokerError> {
        let bad = |m: &str| BrokerError::TokenFailed(format!("the answer {m}"));
        let access_token = v["access_token"]
            .as_str()
            .filter(|t| {
                !t.is_empty() && t.len() <= 16 * 1024 && http::HeaderValue::from_str(t).is_ok()
            })
            .ok_or_else(|| bad("has no usable access_token"))?
            .to_string();
        match v["token_type"].as_str() {
            Some(t) if t.eq_ignore_ascii_case("bearer") => {}
            Some(_) => {
                return Err(bad(
                    "is not a Bearer token (other token types are not supported)",
                ));
            }
            None => return Err(bad("has no token_type")),
        }
        let refresh_token = v["refresh_token"]
            .as_str()
            .filter(|t| !t.is_empty() && t.len() <= 16 * 1024)
            .map(String::from);
        // Numbers, and (seen in the wild) numeric strings; nonsense is ignored.
        let expires_in = v["expires_in"]
            .as_i64()
            .or_else(|| v["expires_in"].as_str().and_then(|s| s.parse().ok()))
            .filter(|s| (1..=10 * 365 * 86_400).contains(s));
        let scope = v["scope"]
            .as_str()
            .filter(|s| valid_scope(s))
            .map(String::from);
        Ok(Self {
            access_token,
            refresh_token,
            expires_in,
            scope,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_checked_and_merged() {
        assert!(valid_scope("mcp:tools offline_access"));
        assert!(!valid_scope(""));
        assert!(!valid_scope("a  b"));
        assert!(!valid_scope("a\"b"));
        assert!(!valid_scope("a\\b"));
        assert_eq!(union_scopes("a b", "b c"), "a b c");
        assert_eq!(union_scopes("", "x"), "x");
    }

    #[test]
    fn token_answers_are_read_strictly() {
        let ok = TokenAnswer::read(&serde_json::json!({
            "access_token": "t", "token_type": "bearer", "expires_in": "3600"
        }))
        .unwrap();
        assert_eq!(ok.expires_in, Some(3600));
        for bad in [
            serde_json::json!({"access_token": "t"}),
            serde_json::json!({"access_token": "t", "token_type": "DPoP"}),
            serde_json::json!({"access_token": "a\nb", "token_type": "Bearer"}),
            serde_json::json!({"token_type": "Bearer"}),
        ] {
            assert!(TokenAnswer::read(&bad).is_err(), "{bad}");
        }
    }
}
