//! The OAuth 2.1 authorization server for MCP clients: metadata, client registration,
//! authorization (login and consent are steps of it), tokens, revocation and introspection.
//! Nothing here knows about HTTP framing; `web` turns requests into calls and results into
//! responses.

pub mod authorize;
pub mod cimd;
pub mod clients;
pub mod device;
pub mod error;
pub mod external;
pub mod id_jag;
pub mod metadata;
pub mod own;
pub mod params;
pub mod policy;
pub mod redirect;
pub mod token;

use std::sync::Arc;

use url::Url;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::crypto;
use crate::login::{LocalAccounts, LocalSource, LoginContexts, LoginSource, LoginSources};
use crate::net::SafeFetcher;
use crate::store::{SharedStore, StoreEvent};

pub use clients::Client;
pub use error::{ErrorCode, OAuthError};

/// A protected resource (an MCP endpoint) that tokens can be minted for.
#[derive(Debug, Clone)]
pub struct Resource {
    /// Its identifier (RFC 8707), an absolute URL: the public URL plus `path`.
    pub url: String,
    pub path: String,
    pub name: String,
    /// Scopes a token needs to use it.
    pub scopes: Vec<String>,
    /// Which of the proxy's backends serves it: the configured upstreams in order, then
    /// the built-in servers (`whoami`).
    pub backend: usize,
    /// For a legacy HTTP+SSE upstream: the path its clients POST messages to.
    pub messages_path: Option<String>,
}

/// Settings the authorization server reads on every request, derived once from `Config`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub issuer: String,
    /// The path prefix of the issuer URL ("" at the root).
    pub base_path: String,
    pub scopes: Vec<String>,
    pub default_scopes: Vec<String>,
    pub access_token_ttl: i64,
    pub refresh_token_ttl: i64,
    /// No grant lives longer, however often it is refreshed.
    pub grant_max_lifetime: i64,
    pub code_ttl: i64,
    pub refresh_retry_window: i64,
    pub remember_consent: bool,
    pub request_ttl: i64,
    pub initial_access_token_hashes: Vec<String>,
    pub max_clients: i64,
    pub unused_client_ttl: i64,
    pub dcr_per_ip_per_hour: i64,
    pub cimd_trusted_domains: Vec<String>,
    pub secure_cookies: bool,
    /// The issuer's host is loopback: native clients' callbacks share it.
    pub issuer_is_loopback: bool,
}

pub struct AuthorizationServer {
    pub settings: Settings,
    pub store: SharedStore,
    pub clock: SharedClock,
    pub accounts: LocalAccounts,
    /// The ways to sign in, local accounts first.
    pub login: LoginSources,
    /// Seals what a login source keeps to the grant it is for.
    pub contexts: LoginContexts,
    pub resources: Vec<Resource>,
    /// Identity providers whose ID-JAGs the token endpoint takes.
    pub id_jag: Vec<Arc<id_jag::TrustedIssuer>>,
    /// In the resource-server-only mode: who checks the bearer tokens (another
    /// authorization server's), and that server's issuers for the resource metadata.
    pub external: Option<(Arc<dyn external::TokenValidator>, Vec<String>)>,
    session_ttl: i64,
    static_clients: Vec<Client>,
    cimd: cimd::CimdResolver,
    /// Whether and whom registration and metadata documents admit, as administrators set it.
    pub policy: policy::PolicyCache,
    pub tokens: Arc<token::TokenCache>,
    /// Registered clients recently read, so `/token` does not read the client on every call.
    /// A removed client's grants, tokens and codes go with it, and the removal empties this
    /// on every instance (it is a revocation); at worst it lingers `TOKEN_CACHE_SECS`.
    clients_seen: Arc<crate::cache::TtlCache<Client>>,
    /// Where security events are recorded (audit log and series).
    pub observer: crate::observe::SharedObserver,
}

impl AuthorizationServer {
    pub fn new(
        config: &Config,
        store: SharedStore,
        clock: SharedClock,
    ) -> Result<Arc<Self>, String> {
        Self::with_login_sources(config, store, clock, Vec::new())
    }

    /// [`Self::new`] with login sources beside local accounts.
    pub fn with_login_sources(
        config: &Config,
        store: SharedStore,
        clock: SharedClock,
        sources: Vec<Arc<dyn LoginSource>>,
    ) -> Result<Arc<Self>, String> {
        Self::build(
            config,
            store,
            clock,
            sources,
            crate::observe::Observer::off(),
        )
    }

    /// [`Self::with_login_sources`], recording security events with `observer`.
    pub fn build(
        config: &Config,
        store: SharedStore,
        clock: SharedClock,
        sources: Vec<Arc<dyn LoginSource>>,
        observer: crate::observe::SharedObserver,
    ) -> Result<Arc<Self>, String> {
        let mut login = LoginSources::new(store.clone(), clock.clone(), config.login.first_sign_in);
        if config.login.local_accounts {
            login.add(Arc::new(LocalSource::new(LocalAccounts::new(
                store.clone(),
                clock.clone(),
                &config.login,
            ))))?;
        }
        for (i, o) in config.login.oidc.iter().enumerate() {
            let settings = o
                .resolve(i)
                .map_err(|(key, message)| format!("{key}: {message}"))?;
            login.add(Arc::new(crate::login::oidc::OidcSource::new(
                settings,
                clock.clone(),
            )?))?;
        }
        for s in sources {
            login.add(s)?;
        }
        if login.all().is_empty() {
            return Err(
                "login.local_accounts: local accounts are off and no other login source is configured, so nobody could sign in".into(),
            );
        }
        // Login sources that keep something, and upstreams whose tokens live in the vault.
        let needed_by = login
            .needing_keys()
            .map(|s| format!("the login source `{s}`"))
            .or_else(|| {
                config
                    .upstreams
                    .iter()
                    .find(|u| {
                        matches!(
                            u.credentials,
                            crate::config::UpstreamCredentials::Oauth { .. }
                        )
                    })
                    .map(|u| format!("the OAuth upstream `{}`", u.name))
            });
        let keys = crate::login::context::resolve_keys(
            config.keys.encryption_keys()?,
            &config.store.url,
            needed_by.as_deref(),
        )?;
        let contexts = LoginContexts::new(keys.map(Arc::new));
        let issuer = config.public_url();
        let issuer_url = Url::parse(&issuer).map_err(|e| format!("server.public_url: {e}"))?;
        let base_path = issuer_url.path().trim_end_matches('/').to_string();
        let mut resources = Vec::new();
        if config.whoami.enabled {
            resources.push(Resource {
                url: format!("{issuer}{}", config.whoami.path),
                path: format!("{base_path}{}", config.whoami.path),
                name: "whoami".into(),
                scopes: config.whoami.scopes.clone(),
                backend: config.upstreams.len(),
                messages_path: None,
            });
        }
        for (i, u) in config.upstreams.iter().enumerate() {
            let path = Config::upstream_path(u);
            resources.push(Resource {
                url: format!("{issuer}{path}"),
                path: format!("{base_path}{path}"),
                name: u.name.clone(),
                scopes: u
                    .scopes
                    .clone()
                    .unwrap_or_else(|| config.authorization.default_scopes.clone()),
                backend: i,
                messages_path: (u.transport == crate::config::UpstreamTransport::Sse)
                    .then(|| format!("{base_path}{path}/messages")),
            });
        }
        let settings = Settings {
            secure_cookies: issuer_url.scheme() == "https",
            issuer_is_loopback: redirect::is_loopback(&issuer_url),
            issuer,
            base_path,
            scopes: config.authorization.scopes.clone(),
            default_scopes: config.authorization.default_scopes.clone(),
            access_token_ttl: config.authorization.access_token_ttl_secs,
            refresh_token_ttl: config.authorization.refresh_token_ttl_secs,
            grant_max_lifetime: config.authorization.grant_max_lifetime_secs,
            code_ttl: config.authorization.code_ttl_secs,
            refresh_retry_window: config.authorization.refresh_retry_window_secs,
            remember_consent: config.authorization.remember_consent,
            request_ttl: config.authorization.request_ttl_secs,
            initial_access_token_hashes: config
                .registration
                .initial_access_tokens
                .iter()
                .map(|t| crypto::hash_secret(t.expose()))
                .collect(),
            max_clients: config.registration.max_clients,
            unused_client_ttl: config.registration.unused_client_ttl_secs,
            dcr_per_ip_per_hour: config.registration.per_ip_per_hour,
            cimd_trusted_domains: config
                .registration
                .cimd_trusted_domains
                .iter()
                .map(|d| policy::normal_domain(d).unwrap_or_else(|_| d.to_ascii_lowercase()))
                .collect(),
        };
        let static_clients: Vec<Client> = config
            .clients
            .iter()
            .map(|c| {
                let mut client = Client::from_config(c);
                client.introspection_audiences = client
                    .introspection_audiences
                    .iter()
                    .map(|r| {
                        resources
                            .iter()
                            .find(|res| res.name == *r)
                            .map(|res| res.url.clone())
                            .or_else(|| {
                                Url::parse(r).ok().and_then(|u| {
                                    let normal = u.as_str().trim_end_matches('/');
                                    resources
                                        .iter()
                                        .find(|res| res.url == normal)
                                        .map(|res| res.url.clone())
                                })
                            })
                            .ok_or_else(|| {
                                format!(
                                    "clients `{}`: introspection_resources: `{r}` is not a resource of this gateway",
                                    c.client_id
                                )
                            })
                    })
                    .collect::<Result<_, _>>()?;
                Ok(client)
            })
            .collect::<Result<_, String>>()?;
        let fetcher = SafeFetcher::new(
            config.registration.cimd_allow_http_loopback,
            config.server.egress_proxy.as_deref(),
        )
        .map_err(|e| e.to_string())?;
        let tokens = Arc::new(token::TokenCache::default());
        let clients_seen = Arc::new(crate::cache::TtlCache::new(token::TOKEN_CACHE_SECS, 10_000));
        {
            let (tokens, clients_seen) = (tokens.clone(), clients_seen.clone());
            store.on_event(Arc::new(move |event| {
                tokens.forget(event);
                match event {
                    StoreEvent::ClientRemoved { client } => clients_seen.remove(client),
                    StoreEvent::Resync => clients_seen.clear(),
                    _ => {}
                }
            }));
        }
        let id_jag = config
            .trust
            .id_jag
            .iter()
            .map(|t| id_jag::TrustedIssuer::from_config(t, clock.clone()))
            .collect::<Result<_, _>>()?;
        let external = match config.authorization.mode {
            crate::config::AuthorizationMode::Gateway => None,
            crate::config::AuthorizationMode::External => {
                let v = external::ExternalValidator::new(
                    &config.authorization.external,
                    clock.clone(),
                )?;
                let issuers = v.issuers();
                Some((v as Arc<dyn external::TokenValidator>, issuers))
            }
        };
        let policy = policy::PolicyCache::new(
            store.clone(),
            clock.clone(),
            policy::RegistrationPolicy::from_config(&config.registration),
        );
        Ok(Arc::new(Self {
            external,
            accounts: LocalAccounts::new(store.clone(), clock.clone(), &config.login),
            login,
            contexts,
            settings,
            store,
            clock,
            resources,
            id_jag,
            session_ttl: config.login.session_ttl_secs,
            static_clients,
            cimd: cimd::CimdResolver::new(fetcher, config.registration.cimd_default_cache_secs),
            policy,
            tokens,
            clients_seen,
            observer,
        }))
    }

    /// Whether the client's identity is vouched for: configured here, or a CIMD document on
    /// a trusted domain. Anyone can register a client (open DCR) or publish a document, so
    /// for those a redirect back is no proof of anything.
    pub fn client_is_verified(&self, client: &Client) -> bool {
        match client.kind {
            clients::ClientKind::Configured => true,
            clients::ClientKind::Registered => false,
            clients::ClientKind::Metadata => Url::parse(&client.client_id)
                .ok()
                .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
                .is_some_and(|host| {
                    self.settings
                        .cimd_trusted_domains
                        .iter()
                        .any(|d| policy::domain_matches(&host, d))
                }),
        }
    }

    pub fn configured_clients(&self) -> &[Client] {
        &self.static_clients
    }

    /// The resource a `resource` parameter names (RFC 8707), compared in normal form and
    /// ignoring one trailing slash; `None` when absent and there is exactly one resource.
    pub fn resolve_resource(&self, requested: &[String]) -> Result<&Resource, OAuthError> {
        match requested {
            [] => match self.resources.as_slice() {
                [only] => Ok(only),
                [] => Err(OAuthError::new(
                    ErrorCode::InvalidTarget,
                    "this gateway protects no resource",
                )),
                _ => Err(OAuthError::new(
                    ErrorCode::InvalidTarget,
                    "the `resource` parameter is required: this gateway protects several resources",
                )),
            },
            [one] => self.find_resource(one).ok_or_else(|| {
                OAuthError::new(
                    ErrorCode::InvalidTarget,
                    "the `resource` is not one protected by this gateway",
                )
            }),
            _ => Err(OAuthError::new(
                ErrorCode::InvalidTarget,
                "tokens are issued for one resource at a time; send one `resource` parameter",
            )),
        }
    }

    pub fn find_resource(&self, requested: &str) -> Option<&Resource> {
        let url = Url::parse(requested).ok()?;
        if url.fragment().is_some() {
            return None;
        }
        let normal = url.as_str().trim_end_matches('/');
        self.resources
            .iter()
            .find(|r| r.url.trim_end_matches('/') == normal)
    }

    /// Scopes asked for, checked against what the server and the client may have; the
    /// configured defaults when none are asked for.
    pub fn check_scopes(
        &self,
        requested: Option<&str>,
        client: &Client,
    ) -> Result<Vec<String>, OAuthError> {
        let scopes = match requested {
            None => self
                .settings
                .default_scopes
                .iter()
                .filter(|s| {
                    client
                        .scopes
                        .as_ref()
                        .is_none_or(|allowed| allowed.contains(s))
                })
                .cloned()
                .collect(),
            Some(s) => {
                let mut out: Vec<String> = Vec::new();
                for sc in s.split(' ').filter(|x| !x.is_empty()) {
                    if !self.settings.scopes.iter().any(|k| k == sc) {
                        return Err(OAuthError::new(
                            ErrorCode::InvalidScope,
                            "a requested scope is not offered by this server",
                        ));
                    }
                    if let Some(allowed) = &client.scopes
                        && !allowed.iter().any(|a| a == sc)
                    {
                        return Err(OAuthError::new(
                            ErrorCode::InvalidScope,
                            "this client may not ask for one of the requested scopes",
                        ));
                    }
                    if !out.iter().any(|o| o == sc) {
                        out.push(sc.to_string());
                    }
                }
                out
            }
        };
        if scopes.is_empty() {
            return Err(OAuthError::new(
                ErrorCode::InvalidScope,
                "no scope could be granted",
            ));
        }
        Ok(scopes)
    }

    /// Deletes expired state; run periodically.
    pub async fn sweep(&self) -> Result<crate::store::SweepCounts, crate::store::StoreError> {
        let now = self.clock.now();
        let swept = self
            .store
            .sweep(
                now,
                now - self.settings.unused_client_ttl,
                Some(now - self.settings.grant_max_lifetime),
            )
            .await;
        // Unused clients may have gone.
        self.clients_seen.clear();
        swept
    }
}
