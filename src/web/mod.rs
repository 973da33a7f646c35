//! HTTP: the router, thin handlers, and the mapping from results to responses. The logic they
//! call lives in `authorization`, `login` and `mcp`.

mod admin;
mod admin_pages;
pub mod challenge;
mod connect;
mod console;
mod device;
mod errors;
pub mod headers;
pub mod listen;
mod mcp;
mod oauth;
mod observe;
mod pages;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, HeaderName, Method, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tower_http::cors::{Any, CorsLayer};

use crate::authorization::AuthorizationServer;
use crate::clock::SharedClock;
use crate::config::{Config, parse_net};
use crate::proxy::Proxy;
use crate::store::SharedStore;

/// What every handler shares.
#[derive(Clone)]
pub struct App {
    pub auth: Arc<AuthorizationServer>,
    pub proxy: Arc<Proxy>,
    /// The OAuth broker, when an upstream needs each person's own account.
    pub broker: Option<Arc<crate::broker::Broker>>,
    trusted_proxies: Arc<Vec<ipnet::IpNet>>,
    max_body: usize,
    body_timeout: Duration,
    origins: Arc<OriginPolicy>,
    /// Series and audit log.
    pub observer: crate::observe::SharedObserver,
    /// The token that opens `/metrics` on the main listener to a non-loopback client.
    metrics_token: Option<Arc<str>>,
    /// The administration service the administrators' console acts through.
    admin: crate::admin::Admin,
    /// Who administers.
    console: Arc<crate::config::ConsoleConfig>,
    /// The registration settings, shown to administrators.
    registration: Arc<crate::config::RegistrationConfig>,
    /// `[traces] trust_any_traceparent` (read only in the `otel` build).
    #[cfg_attr(not(feature = "otel"), allow(dead_code))]
    trust_any_traceparent: bool,
}

/// Which Host and Origin headers MCP requests may carry (DNS-rebinding protection).
struct OriginPolicy {
    hosts: Vec<String>,
    origins: Vec<String>,
    /// The gateway itself is on loopback: pages served from loopback may call it.
    loopback_origins: bool,
}

fn is_loopback_origin(origin: &str) -> bool {
    url::Url::parse(origin)
        .is_ok_and(|u| u.scheme() == "http" && crate::authorization::redirect::is_loopback(&u))
}

impl OriginPolicy {
    fn new(config: &Config) -> Self {
        let public = url::Url::parse(&config.public_url()).ok();
        let mut hosts: Vec<String> = config
            .proxy
            .allowed_hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        let mut origins: Vec<String> = config
            .proxy
            .allowed_origins
            .iter()
            .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
            .collect();
        let mut loopback = config.server.listen.ip().is_loopback();
        if let Some(u) = &public {
            if let Some(h) = u.host_str() {
                hosts.push(match u.port() {
                    Some(p) => format!("{h}:{p}"),
                    None => h.to_string(),
                });
            }
            origins.push(u.origin().ascii_serialization());
            loopback = loopback && crate::authorization::redirect::is_loopback(u);
        }
        hosts.push(config.server.listen.to_string());
        if config.server.listen.ip().is_loopback() {
            let port = config.server.listen.port();
            hosts.extend([
                format!("localhost:{port}"),
                format!("127.0.0.1:{port}"),
                format!("[::1]:{port}"),
            ]);
        }
        Self {
            hosts,
            origins,
            loopback_origins: loopback,
        }
    }
}

impl App {
    /// Refuses MCP requests that name a host this gateway is not, or come from a browser page
    /// of an origin that is not allowed.
    pub fn check_origin_and_host(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        if let Some(host) = headers.get(header::HOST) {
            let host = host.to_str().unwrap_or("").to_ascii_lowercase();
            if !self.origins.hosts.contains(&host) {
                return Err("the Host header names no address of this gateway");
            }
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin
                .to_str()
                .unwrap_or("")
                .trim_end_matches('/')
                .to_ascii_lowercase();
            let allowed = self.origins.origins.contains(&origin)
                || (self.origins.loopback_origins && is_loopback_origin(&origin));
            if !allowed {
                return Err("requests from this origin are not allowed");
            }
        }
        Ok(())
    }

    /// Whether `ip` is one of `server.trusted_proxies`.
    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }

    /// The client's address: the peer, or, when the peer is a trusted proxy, the last
    /// untrusted address of `X-Forwarded-For`.
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let trusted = |ip: &IpAddr| self.trusted_proxies.iter().any(|n| n.contains(ip));
        let peer_ip = peer.ip();
        if !trusted(&peer_ip) {
            return peer_ip;
        }
        let forwarded: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        forwarded
            .iter()
            .rev()
            .find(|ip| !trusted(ip))
            .copied()
            .unwrap_or(peer_ip)
    }
}

/// How often the TLS certificate files are looked at for a change.
pub const CERT_CHECK_SECS: u64 = 2;

/// Series whose figures live elsewhere, read when `/metrics` is scraped: cache hit counts,
/// database pools, the broker's connections.
fn read_at_scrape(
    m: &crate::observe::Metrics,
    auth: &AuthorizationServer,
    proxy: &Proxy,
    broker: Option<&Arc<crate::broker::Broker>>,
    databases: &std::collections::HashMap<String, Arc<crate::dbtools::DatabaseSource>>,
) {
    use crate::observe::metrics::{CacheCollector, GaugeCollector};
    let mut caches = vec![
        ("access_tokens", auth.tokens.stats()),
        ("mcp_sessions", proxy.session_cache_stats()),
    ];
    if let Some(b) = broker {
        caches.push(("upstream_tokens", b.cache_stats()));
    }
    m.read_at_scrape(CacheCollector(caches));
    // Registered whether or not anything is configured to fill them, so that the series
    // (and the dashboard's panels) exist on every gateway.
    let pools: Arc<Vec<(String, Arc<crate::dbtools::pools::UserPools>)>> = Arc::new(
        databases
            .iter()
            .map(|(name, d)| (name.clone(), d.pools.clone()))
            .collect(),
    );
    let p2 = pools.clone();
    m.read_at_scrape(GaugeCollector {
        name: "database_pools_open",
        help: "Per-person database pools open on this instance, by login source",
        read: Box::new(move || {
            pools
                .iter()
                .map(|(n, p)| (vec![("source", n.clone())], p.stats().0 as i64))
                .collect()
        }),
    });
    m.read_at_scrape(GaugeCollector {
        name: "database_connections_open",
        help: "Connections those pools hold, by login source",
        read: Box::new(move || {
            p2.iter()
                .map(|(n, p)| (vec![("source", n.clone())], i64::from(p.stats().1)))
                .collect()
        }),
    });
    // Weak: the broker holds the observer that holds these series, and a strong reference
    // back would keep the broker (and its store's connections) alive for ever.
    let broker = broker.map(Arc::downgrade);
    m.read_at_scrape(GaugeCollector {
        name: "upstream_connections",
        help: "People's upstream OAuth connections, by upstream and state (counted every minute)",
        read: Box::new(move || {
            broker
                .as_ref()
                .and_then(std::sync::Weak::upgrade)
                .map(|b| b.connection_counts())
                .unwrap_or_default()
                .into_iter()
                .map(|((u, state), n)| (vec![("upstream", u), ("state", state)], n))
                .collect()
        }),
    });
}

/// The assembled gateway: configuration checked, store open, routes built.
/// What is plugged in beside the configuration: login sources and credential sources that
/// the configuration cannot describe (the ones of later capabilities, and tests' own).
#[derive(Default)]
pub struct Extensions {
    pub login_sources: Vec<Arc<dyn crate::login::LoginSource>>,
    /// For named upstreams, in place of their configured credentials.
    pub credential_sources: Vec<(String, Arc<dyn crate::proxy::CredentialSource>)>,
}

pub struct Gateway {
    pub app: App,
    pub config: Config,
}

impl Gateway {
    pub async fn new(
        config: Config,
        store: SharedStore,
        clock: SharedClock,
    ) -> Result<Self, String> {
        Self::with_extensions(config, store, clock, Extensions::default()).await
    }

    /// [`Self::new`] with what is plugged in beside the configuration.
    pub async fn with_extensions(
        config: Config,
        store: SharedStore,
        clock: SharedClock,
        extensions: Extensions,
    ) -> Result<Self, String> {
        let observer = crate::observe::Observer::from_config(&config, clock.clone())?;
        // Databases people sign in to: login sources, and the pools their tools run in.
        let mut login_sources = extensions.login_sources;
        let mut databases = std::collections::HashMap::new();
        for d in &config.login.database {
            let source = crate::dbtools::DatabaseSource::new(
                d,
                &config.login,
                store.clone(),
                clock.clone(),
            )?;
            login_sources.push(source.clone());
            databases.insert(d.name.clone(), source);
        }
        let auth = AuthorizationServer::build(
            &config,
            store.clone(),
            clock.clone(),
            login_sources,
            observer.clone(),
        )?;
        // A policy an administrator set at run time outlives edits of the file: say so.
        if let Ok(Some(_)) = store.setting(crate::authorization::policy::SETTING).await {
            let in_force = auth.policy.get().await;
            if *in_force
                != crate::authorization::policy::RegistrationPolicy::from_config(
                    &config.registration,
                )
            {
                tracing::warn!(
                    "the registration policy an administrator set at run time is in force, not the configuration file's [registration] (`registration show`; `registration reset` goes back to the file's)"
                );
            }
        }
        let encryption = config.keys.encryption_keys()?.map(Arc::new);
        let signer = Arc::new(crate::proxy::Signer::load(&store, clock.now(), encryption).await?);
        // Upstreams that receive the user's identity provider token get it from the login
        // source that keeps it.
        let mut credential_sources = extensions.credential_sources;
        for u in &config.upstreams {
            if let crate::config::UpstreamCredentials::ProviderToken { source } = &u.credentials {
                let login =
                    auth.login.get(source).cloned().ok_or_else(|| {
                        format!("upstream `{}`: no login source `{source}`", u.name)
                    })?;
                credential_sources.push((
                    u.name.clone(),
                    Arc::new(crate::proxy::provider_token::ProviderToken::new(
                        login,
                        auth.contexts.clone(),
                        store.clone(),
                        clock.clone(),
                    )),
                ));
            }
        }
        // Upstreams that demand OAuth of their own: each person's token from the vault.
        // Identity provider tokens as token-exchange subjects, from the sources keeping them.
        let mut subjects = std::collections::HashMap::new();
        for u in &config.upstreams {
            if let crate::config::UpstreamCredentials::Oauth {
                subject_source: Some(source),
                ..
            } = &u.credentials
            {
                let login =
                    auth.login.get(source).cloned().ok_or_else(|| {
                        format!("upstream `{}`: no login source `{source}`", u.name)
                    })?;
                subjects.insert(
                    source.clone(),
                    Arc::new(crate::proxy::provider_token::ProviderToken::new(
                        login,
                        auth.contexts.clone(),
                        store.clone(),
                        clock.clone(),
                    )),
                );
            }
        }
        let broker = crate::broker::Broker::from_config(
            &config,
            store.clone(),
            auth.contexts.clone(),
            clock.clone(),
            Some(signer.clone()),
            &subjects,
            observer.clone(),
        )?;
        if let Some(b) = &broker {
            b.purge_changed().await.map_err(|e| e.to_string())?;
            for name in b.names() {
                credential_sources.push((
                    name.to_string(),
                    Arc::new(crate::broker::source::VaultCredential::new(b.clone(), name)),
                ));
            }
        }
        let mut built_ins: Vec<(String, Arc<dyn crate::mcp::server::McpServer>)> = Vec::new();
        for u in &config.upstreams {
            let database = |source: &str| {
                databases
                    .get(source)
                    .cloned()
                    .ok_or_else(|| format!("upstream `{}`: no login.database `{source}`", u.name))
            };
            if let Some(source) = &u.dbtools {
                built_ins.push((
                    u.name.clone(),
                    Arc::new(crate::dbtools::tools::DbTools::server(
                        &u.name,
                        database(source)?,
                        auth.contexts.clone(),
                        store.clone(),
                        clock.clone(),
                        u.tool_limits(),
                    )),
                ));
            }
            if let crate::config::UpstreamCredentials::DatabaseLogin {
                source,
                username_header,
                password_header,
                username_env,
                password_env,
            } = &u.credentials
            {
                use crate::dbtools::forward::{DatabaseLogin, Target};
                let target = match (username_header, password_header, username_env, password_env) {
                    (Some(user), Some(pass), None, None) => Target::Headers {
                        username: HeaderName::from_bytes(user.as_bytes()).map_err(|_| {
                            format!("upstream `{}`: `{user}` is not a header name", u.name)
                        })?,
                        password: HeaderName::from_bytes(pass.as_bytes()).map_err(|_| {
                            format!("upstream `{}`: `{pass}` is not a header name", u.name)
                        })?,
                    },
                    (None, None, Some(user), Some(pass)) => Target::Environment {
                        username: user.clone(),
                        password: pass.clone(),
                    },
                    _ => {
                        return Err(format!(
                            "upstream `{}`: database_login needs two header names or two environment names",
                            u.name
                        ));
                    }
                };
                credential_sources.push((
                    u.name.clone(),
                    Arc::new(DatabaseLogin::new(
                        database(source)?,
                        auth.contexts.clone(),
                        store.clone(),
                        target,
                    )),
                ));
            }
        }
        let admin = crate::admin::Admin::new(store.clone(), clock.clone(), &config, "console")
            .map_err(|e| e.to_string())?
            .observed_by(observer.clone());
        let proxy = Arc::new(Proxy::new(
            &config,
            store,
            clock,
            signer,
            credential_sources,
            built_ins,
            observer.clone(),
        )?);
        if let Some(m) = observer.metrics() {
            read_at_scrape(m, &auth, &proxy, broker.as_ref(), &databases);
        }
        let trusted = config
            .server
            .trusted_proxies
            .iter()
            .filter_map(|s| parse_net(s))
            .collect();
        Ok(Self {
            app: App {
                auth,
                proxy,
                broker,
                trusted_proxies: Arc::new(trusted),
                max_body: config.server.max_body_bytes,
                body_timeout: Duration::from_secs(config.server.body_read_timeout_secs),
                origins: Arc::new(OriginPolicy::new(&config)),
                observer,
                metrics_token: config
                    .metrics
                    .bearer_token
                    .as_ref()
                    .map(|t| t.expose().into()),
                admin,
                console: Arc::new(config.console.clone()),
                registration: Arc::new(config.registration.clone()),
                trust_any_traceparent: config.traces.trust_any_traceparent,
            },
            config,
        })
    }

    pub fn router(&self) -> Router {
        let app = self.app.clone();
        let base = app.auth.settings.base_path.clone();
        let api_cors = CorsLayer::new()
            .allow_origin(Any)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("mcp-protocol-version"),
            ])
            .max_age(Duration::from_secs(3600));
        // In the resource-server-only mode the gateway's own authorization server is off:
        // only the protected resources, their metadata and the assertion keys are served.
        let external = app.auth.external.is_some();
        let mut server_metadata = Router::new()
            .route(
                "/.well-known/oauth-authorization-server",
                get(oauth::server_metadata),
            )
            .route(
                "/.well-known/openid-configuration",
                get(oauth::server_metadata),
            );
        if !base.is_empty() {
            server_metadata = server_metadata
                .route(
                    &format!("/.well-known/oauth-authorization-server{base}"),
                    get(oauth::server_metadata),
                )
                .route(
                    &format!("/.well-known/openid-configuration{base}"),
                    get(oauth::server_metadata),
                )
                .route(
                    &format!("{base}/.well-known/oauth-authorization-server"),
                    get(oauth::server_metadata),
                )
                .route(
                    &format!("{base}/.well-known/openid-configuration"),
                    get(oauth::server_metadata),
                );
        }
        let mut metadata = Router::new();
        for r in &app.auth.resources {
            metadata = metadata.route(
                &format!("/.well-known/oauth-protected-resource{}", r.path),
                get(oauth::resource_metadata),
            );
        }
        if app.auth.resources.len() == 1 {
            metadata = metadata.route(
                "/.well-known/oauth-protected-resource",
                get(oauth::resource_metadata),
            );
        }
        let mut api = Router::new()
            .route(&format!("{base}/.well-known/jwks.json"), get(oauth::jwks))
            .merge(metadata);
        if !external {
            api = api
                .route(&format!("{base}/token"), post(oauth::token))
                .route(
                    &format!("{base}/device_authorization"),
                    post(device::device_authorization),
                )
                .route(&format!("{base}/register"), post(oauth::register))
                .route(&format!("{base}/revoke"), post(oauth::revoke))
                .route(&format!("{base}/introspect"), post(oauth::introspect))
                .route(&format!("{base}/connections"), get(connect::api_list))
                .route(
                    &format!("{base}/connect/clients/{{upstream}}"),
                    get(connect::client_metadata),
                )
                .route(
                    &format!("{base}/connect/client-metadata.json"),
                    get(connect::published_client_metadata),
                )
                .route(
                    &format!("{base}/connections/{{upstream}}"),
                    post(connect::api_start).delete(connect::api_disconnect),
                )
                .merge(server_metadata);
        }
        let api = api.layer(api_cors);
        let browser = Router::new()
            .route(
                &format!("{base}/authorize"),
                get(oauth::authorize).post(oauth::authorize_post),
            )
            .route(&format!("{base}/authorize/login"), post(oauth::login))
            // A source that redirects: started from the sign-in page, back at the callback
            // registered with it, then bounced under the browser path where the cookies are.
            .route(
                &format!("{base}/authorize/login/{{source}}"),
                post(oauth::login_redirect_start),
            )
            .route(
                &format!("{base}/authorize/login/{{source}}/return"),
                get(oauth::login_redirect_return),
            )
            .route(
                &format!("{base}/login/{{source}}/callback"),
                get(oauth::login_callback),
            )
            .route(&format!("{base}/authorize/consent"), post(oauth::consent))
            .route(
                &format!("{base}/authorize/logout"),
                get(oauth::logout_page).post(oauth::logout),
            )
            .route(&format!("{base}/logout"), get(oauth::logout_redirect))
            // The broker's pages: the gateway's own sign-in, connections, connect flows.
            .route(
                &format!("{base}/authorize/signin"),
                get(connect::sign_in_page).post(connect::sign_in),
            )
            .route(
                &format!("{base}/authorize/connections"),
                get(connect::connections_page),
            )
            // The console: a person's grants, connections and sessions.
            .route(
                &format!("{base}/authorize/console"),
                get(console::page_for_person),
            )
            .route(
                &format!("{base}/authorize/console/grants/revoke"),
                post(console::revoke_grant),
            )
            .route(
                &format!("{base}/authorize/console/sessions/end"),
                post(console::end_session),
            )
            .route(&format!("{base}/console"), get(console::redirect))
            // The administrators' console.
            .route(
                &format!("{base}/authorize/console/admin"),
                get(admin::users),
            )
            .route(
                &format!("{base}/authorize/console/admin/clients"),
                get(admin::clients),
            )
            .route(
                &format!("{base}/authorize/console/admin/grants"),
                get(admin::grants),
            )
            .route(
                &format!("{base}/authorize/console/admin/upstreams"),
                get(admin::upstreams),
            )
            .route(
                &format!("{base}/authorize/console/admin/keys"),
                get(admin::keys),
            )
            .route(
                &format!("{base}/authorize/console/admin/audit"),
                get(admin::audit),
            )
            .route(
                &format!("{base}/authorize/console/admin/do"),
                post(admin::act),
            )
            // "Authorize a device" (RFC 8628's verification URI).
            .route(
                &format!("{base}/authorize/device"),
                get(device::entry_page).post(device::enter_code),
            )
            .route(
                &format!("{base}/authorize/device/decide"),
                post(device::decide),
            )
            .route(
                &format!("{base}/authorize/connections/{{upstream}}/disconnect"),
                post(connect::disconnect),
            )
            .route(
                &format!("{base}/authorize/connect/{{upstream}}"),
                get(connect::connect_page).post(connect::connect_start),
            )
            .route(
                &format!("{base}/authorize/connect-return/{{upstream}}"),
                get(connect::connect_return),
            )
            .route(
                &format!("{base}/connect/callback/{{upstream}}"),
                get(connect::callback),
            );
        let browser = if external { Router::new() } else { browser };
        let mut protected = Router::new();
        for r in &app.auth.resources {
            protected = protected.route(&r.path, axum::routing::any(mcp::protected));
            if let Some(m) = &r.messages_path {
                protected = protected.route(m, axum::routing::any(mcp::protected));
            }
        }
        let router = Router::new()
            .merge(api)
            .merge(browser)
            .merge(protected)
            .route("/healthz", get(observe::healthz))
            .route("/readyz", get(observe::readyz));
        let router = if app.observer.metrics().is_some() && self.config.metrics.listen.is_none() {
            router.route("/metrics", get(observe::metrics))
        } else {
            router
        };
        router
            .fallback(oauth::not_found)
            .layer(axum::extract::DefaultBodyLimit::disable())
            .layer(axum::middleware::from_fn_with_state(
                app.clone(),
                observe::around,
            ))
            .with_state(app)
    }

    /// Serves until `shutdown` resolves; sweeps expired state in the background.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let auth = self.app.auth.clone();
        let every = Duration::from_secs(self.config.store.sweep_interval_secs.max(1));
        let sweeper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match auth.sweep().await {
                    Ok(c) => tracing::debug!(?c, "swept expired state"),
                    Err(e) => tracing::warn!(error = %e, "sweep failed"),
                }
            }
        });
        // What other instances (and the CLI) end reaches this one's caches.
        self.app.auth.store.hear_other_instances();
        let proxy = self.app.proxy.clone();
        let reaper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tick.tick().await;
                proxy.reap_idle().await;
            }
        });
        let (proxy, store, clock) = (
            self.app.proxy.clone(),
            self.app.auth.store.clone(),
            self.app.auth.clock.clone(),
        );
        let keys = tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(Duration::from_secs(crate::proxy::KEY_RELOAD_SECS));
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = proxy.signer.reload(&store, clock.now()).await {
                    tracing::warn!(error = %e, "could not re-read the signing keys");
                }
            }
        });
        // The broker's connection counts for the metrics, once a minute.
        let counter = match (&self.app.broker, self.app.observer.metrics()) {
            (Some(b), Some(_)) => {
                let b = b.clone();
                Some(tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(60));
                    loop {
                        tick.tick().await;
                        if let Err(e) = b.count_connections().await {
                            tracing::debug!(error = %e, "could not count the upstream connections");
                        }
                    }
                }))
            }
            _ => None,
        };
        let router = self.router();
        let metrics_server = match (self.config.metrics.listen, self.app.observer.clone()) {
            (Some(addr), observer) if observer.metrics().is_some() => {
                let l = TcpListener::bind(addr).await.map_err(|e| {
                    std::io::Error::new(e.kind(), format!("metrics.listen {addr}: {e}"))
                })?;
                let metrics_router = Router::new().route(
                    "/metrics",
                    get(move || {
                        let observer = observer.clone();
                        async move {
                            match observer.metrics() {
                                Some(m) => observe::exposition(m),
                                None => axum::http::StatusCode::NOT_FOUND.into_response(),
                            }
                        }
                    }),
                );
                let limits = listen::ConnectionLimits {
                    header_read_timeout: Duration::from_secs(5),
                    max_connections: 64,
                    tls: None,
                };
                Some(tokio::spawn(listen::serve(
                    l,
                    metrics_router,
                    limits,
                    std::future::pending(),
                )))
            }
            _ => None,
        };
        // https directly: the certificate files are looked at every `CERT_CHECK_SECS` and re-read when
        // they change.
        let (tls, watch_certs) = match (&self.config.server.tls_cert, &self.config.server.tls_key) {
            (Some(cert), Some(key)) => {
                let certs = tls::Certificates::open(cert, key).map_err(std::io::Error::other)?;
                let acceptor = certs.acceptor().map_err(std::io::Error::other)?;
                let watch = tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(CERT_CHECK_SECS));
                    loop {
                        tick.tick().await;
                        certs.reload_if_changed();
                    }
                });
                (Some(acceptor), Some(watch))
            }
            _ => (None, None),
        };
        let limits = listen::ConnectionLimits {
            header_read_timeout: Duration::from_secs(
                self.config.server.header_read_timeout_secs.max(1),
            ),
            max_connections: self.config.server.max_connections,
            tls,
        };
        let result = listen::serve(listener, router, limits, shutdown).await;
        sweeper.abort();
        reaper.abort();
        keys.abort();
        for task in [metrics_server, counter, watch_certs].into_iter().flatten() {
            task.abort();
        }
        // Off the async threads: it waits for the writer to reach the disk.
        let observer = self.app.observer.clone();
        let _ = tokio::task::spawn_blocking(move || observer.close()).await;
        result
    }
}
