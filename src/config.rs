//! Typed configuration: one TOML file, every key overridable from the environment, checked
//! once at start-up with errors that name the key and the file.
//!
//! Environment overrides: `MCP_OAUTH_GATEWAY_<SECTION>__<KEY>` (double underscore between
//! levels), for example `MCP_OAUTH_GATEWAY_SERVER__PUBLIC_URL=https://gw.example.com`.
//! A value is read as TOML when it parses as a TOML value (numbers, booleans, arrays) and as a
//! plain string otherwise.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use url::Url;

pub use crate::secret::Secret;

pub const ENV_PREFIX: &str = "MCP_OAUTH_GATEWAY_";

/// A resource path that is the same before and after URL parsing: unreserved characters and
/// `/`, no dot segments. Resource identifiers are compared in canonical form, and a path the
/// parser would re-encode or resolve could never match.
fn plain_path(path: &str) -> bool {
    path.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/'))
        && !path.split('/').any(|seg| seg == "." || seg == "..")
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{origin}: key `{key}`: {message}")]
    Invalid {
        origin: String,
        key: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub authorization: AuthorizationConfig,
    pub registration: RegistrationConfig,
    pub login: LoginConfig,
    pub whoami: WhoamiConfig,
    pub clients: Vec<StaticClientConfig>,
    pub upstreams: Vec<UpstreamConfig>,
    pub proxy: ProxyConfig,
    pub keys: KeysConfig,
    /// Issuers whose assertions the gateway accepts (`[[trust.id_jag]]`).
    pub trust: TrustConfig,
    /// The gateway as an OAuth client of upstreams (`[broker]`).
    pub broker: BrokerConfig,
    /// Prometheus series at `/metrics` (`[metrics]`).
    pub metrics: MetricsConfig,
    /// The audit log of security events (`[audit]`).
    pub audit: AuditConfig,
    /// Who administers the gateway at the console (`[console]`).
    pub console: ConsoleConfig,
    /// OpenTelemetry traces (`[traces]`; the cargo feature `otel`).
    pub traces: TracesConfig,
    /// Where the configuration came from, for error messages.
    #[serde(skip)]
    pub origin: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            store: StoreConfig::default(),
            authorization: AuthorizationConfig::default(),
            registration: RegistrationConfig::default(),
            login: LoginConfig::default(),
            whoami: WhoamiConfig::default(),
            clients: Vec::new(),
            upstreams: Vec::new(),
            proxy: ProxyConfig::default(),
            keys: KeysConfig::default(),
            trust: TrustConfig::default(),
            broker: BrokerConfig::default(),
            metrics: MetricsConfig::default(),
            audit: AuditConfig::default(),
            console: ConsoleConfig::default(),
            traces: TracesConfig::default(),
            origin: "defaults".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// The issuer and the base of every resource URL. Defaults to `http://<listen>`.
    pub public_url: Option<String>,
    /// Peers whose `X-Forwarded-For` is believed (IP addresses or CIDR ranges).
    pub trusted_proxies: Vec<String>,
    /// Largest request body accepted on the OAuth endpoints, in bytes.
    pub max_body_bytes: usize,
    /// An HTTP proxy for fetching URLs that came from outside (CIMD documents). Proxy
    /// environment variables are never used for those fetches.
    pub egress_proxy: Option<String>,
    /// Seconds a client has to send a request's headers, on a new or kept-alive connection.
    pub header_read_timeout_secs: u64,
    /// Most client connections open at once; further ones wait to be accepted.
    pub max_connections: usize,
    /// Seconds a client has to send a whole request body (OAuth forms, MCP messages).
    pub body_read_timeout_secs: u64,
    /// Serve https directly: the certificate chain (PEM, leaf first) and its private key
    /// (PEM: PKCS#8, PKCS#1 or SEC1). Both files are read again when they change.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            trusted_proxies: Vec::new(),
            max_body_bytes: 64 * 1024,
            egress_proxy: None,
            header_read_timeout_secs: 10,
            max_connections: 10_000,
            body_read_timeout_secs: 30,
            tls_cert: None,
            tls_key: None,
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub url: String,
    /// Seconds between sweeps of expired codes, tokens and unused clients.
    pub sweep_interval_secs: u64,
    /// Database connections per instance (default: SQLite 8, PostgreSQL 16).
    pub max_connections: Option<u32>,
    /// Milliseconds a request waits for a database connection before a 503.
    pub acquire_timeout_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://mcp-oauth-gateway.db".into(),
            sweep_interval_secs: 300,
            max_connections: None,
            acquire_timeout_ms: 3000,
        }
    }
}

// By hand: a PostgreSQL URL may hold the database password.
impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("url", &UrlWithoutPassword(&self.url))
            .field("sweep_interval_secs", &self.sweep_interval_secs)
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout_ms", &self.acquire_timeout_ms)
            .finish()
    }
}

/// A URL for `Debug`, with a password in it (`user:password@`, or libpq's `?password=`)
/// replaced.
struct UrlWithoutPassword<'a>(&'a str);

impl fmt::Debug for UrlWithoutPassword<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Ok(mut url) = Url::parse(self.0) else {
            // Nothing to tell a password from the rest by.
            return f.write_str("<not a URL>");
        };
        let in_userinfo = url.password().is_some();
        let in_query = url
            .query_pairs()
            .any(|(k, _)| k.eq_ignore_ascii_case("password"));
        if !in_userinfo && !in_query {
            // As written: parsing would lower-case a SQLite file name given as the host.
            return fmt::Debug::fmt(self.0, f);
        }
        if in_userinfo {
            // Cannot fail: a URL that has a password can have another.
            let _ = url.set_password(Some("redacted"));
        }
        if in_query {
            url.set_query(Some("redacted"));
        }
        fmt::Debug::fmt(url.as_str(), f)
    }
}

impl StoreConfig {
    pub fn pool(&self) -> crate::store::PoolSettings {
        crate::store::PoolSettings {
            max_connections: self.max_connections,
            acquire_timeout_ms: self.acquire_timeout_ms,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthorizationConfig {
    /// Every scope the authorization server knows.
    pub scopes: Vec<String>,
    /// Scopes granted when a client asks for none.
    pub default_scopes: Vec<String>,
    pub access_token_ttl_secs: i64,
    pub refresh_token_ttl_secs: i64,
    /// No grant lives longer than this, however often it is refreshed: then the person
    /// signs in again.
    pub grant_max_lifetime_secs: i64,
    pub code_ttl_secs: i64,
    /// How long a rotated refresh token may be presented again and get the same answer,
    /// provided its successor has not been used yet.
    pub refresh_retry_window_secs: i64,
    /// Remember a user's consent per (client, redirect URI, resource, scopes).
    pub remember_consent: bool,
    /// How long an unfinished authorization request (login, consent) stays valid.
    pub request_ttl_secs: i64,
    /// `gateway`: the gateway is the authorization server. `external`: another
    /// authorization server issues the tokens (`external`), the gateway only checks them.
    pub mode: AuthorizationMode,
    /// The authorization servers whose tokens are accepted in `external` mode.
    pub external: Vec<ExternalIssuerConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuthorizationMode {
    #[default]
    Gateway,
    External,
}

/// An authorization server whose access tokens the gateway validates (external mode).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalIssuerConfig {
    /// Its issuer identifier, as in its metadata and its tokens' `iss`.
    pub issuer: String,
    /// Its keys, for access tokens that are JWTs.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// The JWT signature algorithms accepted (RS256, ES256, EdDSA).
    #[serde(default = "default_external_algorithms")]
    pub algorithms: Vec<String>,
    /// RFC 7662 introspection, for opaque tokens (and JWTs of an issuer without `jwks_uri`).
    #[serde(default)]
    pub introspection_endpoint: Option<String>,
    /// The gateway's credentials at the introspection endpoint.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// How long an introspection answer is reused (a token revoked at the server is still
    /// accepted this long); at most 300.
    #[serde(default = "default_introspection_cache")]
    pub introspection_cache_secs: i64,
}

fn default_external_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}

fn default_introspection_cache() -> i64 {
    30
}

impl ExternalIssuerConfig {
    fn validate(&self, i: usize) -> Checked {
        let key = |k: &str| format!("authorization.external[{i}].{k}");
        let urls = [
            ("issuer", Some(&self.issuer)),
            ("jwks_uri", self.jwks_uri.as_ref()),
            (
                "introspection_endpoint",
                self.introspection_endpoint.as_ref(),
            ),
        ];
        for (k, v) in urls {
            let Some(v) = v else { continue };
            let u = Url::parse(v).map_err(|e| Invalid::at(key(k), format!("not a URL: {e}")))?;
            let ok = u.scheme() == "https"
                || (u.scheme() == "http" && crate::authorization::redirect::is_loopback(&u));
            if !ok || u.fragment().is_some() {
                return Err(Invalid::at(
                    key(k),
                    "must be an https URL (http only on loopback)",
                ));
            }
        }
        if self.jwks_uri.is_none() && self.introspection_endpoint.is_none() {
            return Err(Invalid::at(
                key("jwks_uri"),
                "needs jwks_uri (JWT access tokens) or introspection_endpoint (opaque ones)",
            ));
        }
        if self.introspection_endpoint.is_some()
            && (self.client_id.is_none() || self.client_secret.is_none())
        {
            return Err(Invalid::at(
                key("client_id"),
                "introspection needs client_id and client_secret",
            ));
        }
        if let Some(a) = self
            .algorithms
            .iter()
            .find(|a| crate::jwt::Alg::parse(a).is_none())
        {
            return Err(Invalid::at(
                key("algorithms"),
                format!("{a:?} is not one of RS256, ES256, EdDSA"),
            ));
        }
        if self.algorithms.is_empty() {
            return Err(Invalid::at(key("algorithms"), "must name at least one"));
        }
        if !(0..=300).contains(&self.introspection_cache_secs) {
            return Err(Invalid::at(key("introspection_cache_secs"), "0 to 300"));
        }
        Ok(())
    }
}

const TEN_YEARS: i64 = 10 * 365 * 24 * 3600;

impl Default for AuthorizationConfig {
    fn default() -> Self {
        Self {
            scopes: vec!["mcp".into()],
            default_scopes: vec!["mcp".into()],
            access_token_ttl_secs: 3600,
            refresh_token_ttl_secs: 30 * 24 * 3600,
            grant_max_lifetime_secs: 90 * 24 * 3600,
            code_ttl_secs: 60,
            refresh_retry_window_secs: 10,
            remember_consent: true,
            request_ttl_secs: 600,
            mode: AuthorizationMode::Gateway,
            external: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DcrMode {
    /// Anyone may register (what most MCP clients need).
    Open,
    /// Registration needs an initial access token (RFC 7591 §3).
    Token,
    Off,
}

impl DcrMode {
    /// As the configuration, the command line and the audit log write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Token => "token",
            Self::Off => "off",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Open, Self::Token, Self::Off]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrationConfig {
    pub dcr: DcrMode,
    /// Bearer tokens accepted at the registration endpoint when `dcr = "token"`.
    pub initial_access_tokens: Vec<Secret>,
    /// Most dynamically registered clients kept at once.
    pub max_clients: i64,
    /// A dynamically registered client that never completed an authorization is deleted
    /// after this many seconds.
    pub unused_client_ttl_secs: i64,
    /// Registrations per client IP per hour.
    pub per_ip_per_hour: i64,
    /// Accept Client ID Metadata Documents (an https URL as `client_id`).
    pub cimd: bool,
    /// Also fetch `http://` CIMD URLs on loopback addresses. For tests and local development
    /// only: never enable it on a gateway that others can reach.
    pub cimd_allow_http_loopback: bool,
    /// Seconds a fetched CIMD document is cached when its response says nothing.
    pub cimd_default_cache_secs: u64,
    /// Hosts whose Client ID Metadata Documents are trusted to name real clients (exact, or
    /// `*.example.com` for its subdomains). Their clients, like configured ones, get errors
    /// found before sign-in redirected back (RFC 6749 §4.1.2.1); every other client's are
    /// shown on the gateway's own page, so it is never an open redirector.
    pub cimd_trusted_domains: Vec<String>,
    /// When not empty, Client ID Metadata Documents are accepted only from these hosts
    /// (exact, or `*.example.com`). Administrators can change it at run time.
    pub cimd_allowed_domains: Vec<String>,
    /// Client ID Metadata Documents from these hosts are refused.
    pub cimd_blocked_domains: Vec<String>,
    /// Registered and metadata document clients wait for an administrator's approval (the
    /// console, `clients approve`) before anyone can authorize them.
    pub approve_new_clients: bool,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        Self {
            dcr: DcrMode::Open,
            initial_access_tokens: Vec::new(),
            max_clients: 10_000,
            unused_client_ttl_secs: 24 * 3600,
            per_ip_per_hour: 30,
            cimd: true,
            cimd_allow_http_loopback: false,
            cimd_default_cache_secs: 300,
            cimd_trusted_domains: Vec::new(),
            cimd_allowed_domains: Vec::new(),
            cimd_blocked_domains: Vec::new(),
            approve_new_clients: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginConfig {
    /// Failed logins allowed per account within `throttle_window_secs`.
    pub max_failures_per_account: i64,
    /// Failed logins allowed per client IP within `throttle_window_secs`.
    pub max_failures_per_ip: i64,
    pub throttle_window_secs: i64,
    /// Lifetime of the browser login session at the authorization server.
    pub session_ttl_secs: i64,
    /// What a first sign-in through a source other than local accounts does: `create` a
    /// user (without a password) linked to the source's subject, or `refuse` anyone not
    /// linked already.
    pub first_sign_in: crate::login::FirstSignIn,
    /// Whether the sign-in page offers the gateway's own accounts. Off when everyone signs
    /// in at an identity provider (the accounts stay, for the command line).
    pub local_accounts: bool,
    /// Identity providers people sign in at (`[[login.oidc]]`).
    pub oidc: Vec<crate::login::oidc::config::OidcConfig>,
    /// Databases people sign in to with their own accounts (`[[login.database]]`).
    pub database: Vec<crate::dbtools::DatabaseLoginConfig>,
}

impl Default for LoginConfig {
    fn default() -> Self {
        Self {
            max_failures_per_account: 5,
            max_failures_per_ip: 30,
            throttle_window_secs: 900,
            session_ttl_secs: 12 * 3600,
            first_sign_in: crate::login::FirstSignIn::Create,
            local_accounts: true,
            oidc: Vec::new(),
            database: Vec::new(),
        }
    }
}

/// `[broker]`: the gateway as an OAuth client of upstream MCP servers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Fetch http:// metadata on loopback addresses (local development and tests only; every
    /// other URL an upstream names must be https on a public address).
    pub allow_http_loopback: bool,
    /// Where the gateway's Client ID Metadata Document is published, when not at its own
    /// `<public_url>/connect/client-metadata.json` (an https URL; the document there must be
    /// the gateway's, with this URL as its `client_id`).
    pub client_metadata_url: Option<String>,
}

/// `[trust]`: who else's signed statements the gateway acts on.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrustConfig {
    /// Enterprise identity providers whose Identity Assertion JWT Authorization Grants
    /// (ID-JAG, the MCP Enterprise-Managed Authorization extension) the token endpoint takes.
    pub id_jag: Vec<IdJagIssuerConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdJagIssuerConfig {
    /// The name its users are linked under in the identities table: the same as a
    /// `[[login.oidc]]` at the same provider, so that one person is one user either way.
    pub name: String,
    /// The `iss` of its assertions, exactly.
    pub issuer: String,
    /// Where its signing keys are published.
    pub jwks_uri: String,
    /// The signature algorithms accepted (RS256, ES256, EdDSA); never `none`.
    #[serde(default = "default_id_jag_algorithms")]
    pub algorithms: Vec<String>,
}

fn default_id_jag_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}

impl TrustConfig {
    fn validate(&self) -> Checked {
        let mut issuers = HashSet::new();
        for (i, t) in self.id_jag.iter().enumerate() {
            let key = |k: &str| format!("trust.id_jag[{i}].{k}");
            if t.name.is_empty()
                || t.name.len() > 32
                || !t
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
                || t.name == crate::login::LOCAL
            {
                return Err(Invalid::at(
                    key("name"),
                    "1 to 32 of a-z, 0-9, - and _, and not `local`",
                ));
            }
            for (k, v) in [("issuer", &t.issuer), ("jwks_uri", &t.jwks_uri)] {
                let u =
                    Url::parse(v).map_err(|e| Invalid::at(key(k), format!("not a URL: {e}")))?;
                let ok = u.scheme() == "https"
                    || (u.scheme() == "http" && crate::authorization::redirect::is_loopback(&u));
                if !ok || u.fragment().is_some() {
                    return Err(Invalid::at(
                        key(k),
                        "must be an https URL (http only on loopback)",
                    ));
                }
            }
            if !issuers.insert(t.issuer.as_str()) {
                return Err(Invalid::at(key("issuer"), "duplicated"));
            }
            if self.id_jag[..i].iter().any(|o| o.name == t.name) {
                return Err(Invalid::at(
                    key("name"),
                    "duplicated: two issuers would share users",
                ));
            }
            if t.algorithms.is_empty() {
                return Err(Invalid::at(
                    key("algorithms"),
                    "must name at least one algorithm",
                ));
            }
            if let Some(a) = t
                .algorithms
                .iter()
                .find(|a| crate::jwt::Alg::parse(a).is_none())
            {
                return Err(Invalid::at(
                    key("algorithms"),
                    format!("{a:?} is not one of RS256, ES256, EdDSA"),
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WhoamiConfig {
    pub enabled: bool,
    /// Path of the protected MCP endpoint.
    pub path: String,
    /// Scopes a token needs to call it.
    pub scopes: Vec<String>,
}

impl Default for WhoamiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: "/mcp".into(),
            scopes: vec!["mcp".into()],
        }
    }
}

/// `[metrics]`: the Prometheus series.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Off: nothing is counted and `/metrics` is not served.
    pub enabled: bool,
    /// A separate address that serves `/metrics` (to whoever reaches it) instead of the
    /// main listener.
    pub listen: Option<SocketAddr>,
    /// On the main listener, `/metrics` answers loopback clients and requests bearing this
    /// token; everyone else gets 404.
    pub bearer_token: Option<Secret>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
            bearer_token: None,
        }
    }
}

/// `[traces]`: OpenTelemetry traces over OTLP/HTTP, in builds with the cargo feature `otel`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracesConfig {
    /// The collector's OTLP/HTTP traces address (`http://collector:4318/v1/traces`); none:
    /// no traces are exported.
    pub endpoint: Option<String>,
    /// `service.name` of the spans.
    pub service_name: String,
    /// Share of new traces kept (0 to 1); a request that arrives inside a trusted caller's
    /// trace follows its decision.
    pub sample_ratio: f64,
    /// Join the trace a `traceparent` names when anyone sends it; otherwise only when it comes
    /// through one of `server.trusted_proxies` (a stranger could otherwise have every request
    /// of theirs sampled, or hang the gateway's spans on someone else's trace).
    pub trust_any_traceparent: bool,
}

impl Default for TracesConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            service_name: "mcp-oauth-gateway".into(),
            sample_ratio: 1.0,
            trust_any_traceparent: false,
        }
    }
}

impl TracesConfig {
    fn validate(&self) -> Checked {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(Invalid::at("traces.sample_ratio", "0 to 1"));
        }
        if self.service_name.trim().is_empty() {
            return Err(Invalid::at("traces.service_name", "must not be empty"));
        }
        let Some(endpoint) = self.endpoint.as_deref() else {
            return Ok(());
        };
        if !cfg!(feature = "otel") {
            return Err(Invalid::at(
                "traces.endpoint",
                "this build has no OpenTelemetry: build it with `cargo build --release --features otel`",
            ));
        }
        match Url::parse(endpoint) {
            Ok(u)
                if matches!(u.scheme(), "http" | "https")
                    && u.username().is_empty()
                    && u.password().is_none() =>
            {
                Ok(())
            }
            Ok(_) => Err(Invalid::at(
                "traces.endpoint",
                "must be an http or https URL without a user or password (headers are not supported)",
            )),
            Err(e) => Err(Invalid::at("traces.endpoint", format!("not a URL: {e}"))),
        }
    }
}

/// `[console]`: who administers the gateway at the web console.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Who administers: the username of a local account, or `source:subject` for a person
    /// of a login source (the subject the source vouches for, never a name it lets people
    /// choose: a provider's `preferred_username` is first come, first served).
    pub admins: Vec<String>,
    /// Local accounts in any of these groups administer too (groups an administrator set
    /// with `users add|update --group`; a provider's groups claim does not count: some let
    /// anyone make a group of any name).
    pub admin_groups: Vec<String>,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            // The account the first start creates.
            admins: vec!["admin".into()],
            admin_groups: Vec::new(),
        }
    }
}

impl ConsoleConfig {
    /// Whether a user administers: a local account (no `identities`) by its name or
    /// groups, a person of a login source by a `source:subject` it is linked to. (A disabled
    /// user signs in to nothing, so is not asked about.)
    pub fn administers(
        &self,
        username: &str,
        groups: &[String],
        identities: &[(String, String)],
    ) -> bool {
        if identities.is_empty() {
            return self.admins.iter().any(|a| a == username)
                || groups.iter().any(|g| self.admin_groups.contains(g));
        }
        identities.iter().any(|(source, subject)| {
            self.admins.iter().any(|a| {
                a.split_once(':')
                    .is_some_and(|(s, sub)| s == source && sub == subject)
            })
        })
    }
}

/// `[audit]`: security events as JSON lines.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// A file to append to, or `-` for standard output; none: the audit events appear only
    /// in the log (target `audit`).
    pub path: Option<String>,
}

impl AuditConfig {
    pub fn destination(&self) -> Option<crate::observe::audit::Destination> {
        use crate::observe::audit::Destination;
        match self.path.as_deref() {
            None | Some("") => None,
            Some("-") => Some(Destination::Stdout),
            Some(p) => Some(Destination::File(p.into())),
        }
    }
}

/// Settings shared by every proxied upstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Seconds to establish a connection to an upstream.
    pub connect_timeout_secs: u64,
    /// Seconds an upstream may take to send its response headers (a JSON answer to a long
    /// tool call arrives only when the call is done).
    pub header_timeout_secs: u64,
    /// Seconds a response body may go without a byte before the stream is closed.
    pub idle_timeout_secs: u64,
    /// Seconds between keep-alive comments on an idle SSE stream to the client.
    pub sse_keepalive_secs: u64,
    /// Largest request body forwarded, in bytes.
    pub max_request_bytes: usize,
    /// Origins (scheme://host[:port]) allowed to call MCP endpoints from a browser, besides
    /// the gateway's own. Requests without an Origin header are not affected.
    pub allowed_origins: Vec<String>,
    /// Host names (with port) accepted in the Host header of MCP requests, besides the public
    /// URL's. Protects against DNS rebinding.
    pub allowed_hosts: Vec<String>,
    /// How long an idle MCP session stays bound to its user, in seconds.
    pub session_ttl_secs: i64,
    /// MCP requests per user (or per client acting for itself) per minute; 0 = no limit.
    pub per_user_per_minute: u32,
    /// MCP requests per OAuth client per minute, over all its users; 0 = no limit.
    pub per_client_per_minute: u32,
    /// MCP requests of one user in flight at once (a stream counts until it ends); 0 = no limit.
    pub max_concurrent_per_user: u32,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            connect_timeout_secs: 5,
            header_timeout_secs: 300,
            idle_timeout_secs: 300,
            sse_keepalive_secs: 15,
            max_request_bytes: 4 * 1024 * 1024,
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            session_ttl_secs: 24 * 3600,
            per_user_per_minute: 600,
            per_client_per_minute: 3000,
            max_concurrent_per_user: 64,
        }
    }
}

/// One upstream MCP server behind the gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Its name; also its default path, `/mcp/<name>`.
    pub name: String,
    /// A Streamable HTTP MCP endpoint (`http://…/mcp` or `https://…`) …
    #[serde(default)]
    pub url: Option<String>,
    /// How `url` speaks: `streamable_http` (the default) or the legacy `sse` transport (then
    /// `url` is the SSE endpoint, such as `http://host/sse`).
    #[serde(default)]
    pub transport: UpstreamTransport,
    /// … or a stdio MCP server the gateway starts: program and arguments.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Environment of the stdio server (added to a minimal PATH/HOME environment). Its API
    /// keys go here, so every value is kept as a secret.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, Secret>,
    /// One stdio process per user instead of one shared by everybody.
    #[serde(default)]
    pub per_user: bool,
    /// Per-user environment of a `per_user` server; `{user}`, `{user_id}` and `{client_id}`
    /// are replaced by the caller's.
    #[serde(default)]
    pub per_user_env: std::collections::BTreeMap<String, String>,
    /// A stdio process unused this long (seconds) is stopped; the next call starts it again.
    #[serde(default = "default_idle_secs")]
    pub idle_secs: i64,
    /// Where the gateway serves it; `/mcp/<name>` by default.
    #[serde(default)]
    pub path: Option<String>,
    /// Scopes a token needs; `authorization.default_scopes` by default.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// What the gateway sends upstream in place of the client's token.
    #[serde(default)]
    pub credentials: UpstreamCredentials,
    /// Rules for `tools/call`, tried in order; the first whose pattern matches decides. A
    /// call no rule matches is allowed.
    #[serde(default)]
    pub tools: Vec<ToolRule>,
    /// … or the built-in database tools, run as each person through the
    /// `[[login.database]]` of this name.
    #[serde(default)]
    pub dbtools: Option<String>,
    /// `dbtools`: whether `query` may change data (read-only by default).
    #[serde(default)]
    pub writable: bool,
    /// `dbtools`: rows one `query` returns at most (default 1000).
    #[serde(default)]
    pub row_limit: Option<usize>,
    /// `dbtools`: seconds one statement may run (default 30).
    #[serde(default)]
    pub statement_timeout_secs: Option<u64>,
    /// `dbtools`: bytes of cells one result carries at most (default 1 MiB).
    #[serde(default)]
    pub max_result_bytes: Option<usize>,
}

impl UpstreamConfig {
    /// What a `dbtools` upstream allows.
    pub fn tool_limits(&self) -> crate::dbtools::config::ToolLimits {
        crate::dbtools::config::ToolLimits {
            writable: self.writable,
            row_limit: self.row_limit.unwrap_or(1000),
            statement_timeout: std::time::Duration::from_secs(
                self.statement_timeout_secs.unwrap_or(30),
            ),
            max_result_bytes: self.max_result_bytes.unwrap_or(1 << 20),
        }
    }
}

/// Who may call which tools of an upstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolRule {
    /// Tool names; a trailing `*` matches any suffix (`"delete_*"`), `"*"` every tool.
    pub tools: Vec<String>,
    /// Refuse these tools outright.
    #[serde(default)]
    pub deny: bool,
    /// Scopes the token needs for these tools (a missing one is a 403 insufficient_scope
    /// challenge, so the client can step up).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Only these users (usernames) — or members of `groups` — may call them; with both
    /// empty, anyone with the scopes.
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamTransport {
    #[default]
    StreamableHttp,
    /// HTTP+SSE of protocol revision 2024-11-05: a GET event stream that names a POST endpoint.
    Sse,
}

fn default_idle_secs() -> i64 {
    600
}

/// How the gateway obtains an OAuth upstream's tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OauthGrant {
    #[default]
    AuthorizationCode,
    ClientCredentials,
    /// RFC 8693: the upstream's authorization server trusts the gateway as a token issuer;
    /// each person's upstream token is obtained for them, no connecting.
    TokenExchange,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum UpstreamCredentials {
    /// Nothing.
    #[default]
    None,
    /// `Authorization: Bearer <token>`.
    Bearer { token: Secret },
    /// A fixed header, such as an API key.
    Header { name: String, value: Secret },
    /// The user's identity as `X-Forwarded-User` (and `X-Forwarded-Client`); any such headers
    /// from the client are removed first.
    Identity,
    /// A short-lived JWT (ES256) naming the user and the client, signed by the gateway and
    /// verifiable with its JWKS at `/.well-known/jwks.json`.
    Assertion {
        /// The header it travels in: `Authorization` (as a Bearer token, the default) or
        /// any other name (the bare JWT).
        #[serde(default)]
        header: Option<String>,
        /// Its `aud`; the upstream's URL by default.
        #[serde(default)]
        audience: Option<String>,
        /// Seconds it is valid (default 60).
        #[serde(default)]
        ttl_secs: Option<i64>,
    },
    /// The user's access token from the identity provider they signed in at (the
    /// `[[login.oidc]]` named `source`, which must keep provider tokens) as
    /// `Authorization: Bearer`; renewed before it expires. Opt-in per upstream: the one
    /// exception to "no token passthrough", because the token is the provider's, never the
    /// MCP client's.
    ProviderToken { source: String },
    /// The upstream demands OAuth of its own: each person connects their own account once
    /// (the gateway is the OAuth client, their tokens are kept sealed in the vault) and calls
    /// go out with that person's upstream token. The authorization server is discovered.
    Oauth {
        /// Scopes to ask for; by default the upstream's challenge, else what its metadata
        /// lists.
        #[serde(default)]
        scopes: Vec<String>,
        /// A client registered by hand at the upstream's authorization server; by default the
        /// gateway registers itself (dynamic registration).
        #[serde(default)]
        client_id: Option<String>,
        #[serde(default)]
        client_secret: Option<Secret>,
        /// The issuer of the upstream's authorization server, pinned: discovery that names
        /// another is refused. Required for `client_credentials` and `token_exchange` (they
        /// send a secret or a person's token without anyone looking).
        #[serde(default)]
        authorization_server: Option<String>,
        /// With `grant = "token_exchange"`: the subject token is the person's access token from
        /// this `[[login.oidc]]` source (which must keep provider tokens) instead of the
        /// gateway's signed assertion about them.
        #[serde(default)]
        subject_source: Option<String>,
        /// Ask each person to connect right after they consent to a client for this
        /// upstream (before the client gets its code), rather than at their first call.
        #[serde(default)]
        connect_on_consent: bool,
        /// `authorization_code` (the default): each person connects their own account.
        /// `client_credentials`: one service identity for everyone (the configured client),
        /// its token kept in one shared vault slot; nobody connects anything.
        #[serde(default)]
        grant: OauthGrant,
    },
    /// The user's own database username and password, from the `[[login.database]]` named
    /// `source` they signed in with, in two headers (for an operator's own database MCP
    /// server run per user). Opt-in per upstream; the password travels only to this
    /// upstream, so it should be reached over TLS or on the same host.
    DatabaseLogin {
        source: String,
        /// For a `url` upstream: the headers they travel in.
        #[serde(default)]
        username_header: Option<String>,
        #[serde(default)]
        password_header: Option<String>,
        /// For a `command` upstream with `per_user = true`: the environment variables they
        /// are given in (a process per person and credential).
        #[serde(default)]
        username_env: Option<String>,
        #[serde(default)]
        password_env: Option<String>,
    },
}

/// Keys for secrets the gateway keeps in its store (today the signing keys' private halves).
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// Encryption keys, `id:base64 of 32 bytes` each: a list, or one string of entries
    /// separated by spaces, commas or newlines (handy in an environment variable). Every
    /// instance on one store needs the same keys. Empty: stored secrets are not encrypted.
    #[serde(deserialize_with = "entries")]
    pub encryption: Vec<Secret>,
    /// The id of the key that encrypts; the first entry by default.
    pub encryption_active: Option<String>,
}

// By hand, to show the key ids: they are not secret, and say which keys are configured.
impl fmt::Debug for KeysConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self
            .encryption
            .iter()
            .map(|e| e.expose().split_once(':').map_or("?", |(id, _)| id))
            .collect();
        f.debug_struct("KeysConfig")
            .field("encryption", &format_args!("{ids:?} (material redacted)"))
            .field("encryption_active", &self.encryption_active)
            .finish()
    }
}

impl KeysConfig {
    /// The parsed encryption keys, if any are configured (checked by `validate`).
    pub fn encryption_keys(
        &self,
    ) -> Result<Option<crate::crypto::EncryptionKeys>, crate::crypto::KeysError> {
        if self.encryption.is_empty() {
            return Ok(None);
        }
        // The parser reads plain strings; these copies live only for the call.
        let entries: Vec<String> = self
            .encryption
            .iter()
            .map(|e| e.expose().to_owned())
            .collect();
        crate::crypto::EncryptionKeys::parse(&entries, self.encryption_active.as_deref()).map(Some)
    }
}

/// A list of strings, or one string split at whitespace and commas. Errors never quote the
/// value: these entries hold key material.
fn entries<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Secret>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Entries {
        One(String),
        Many(Vec<Secret>),
    }
    match Entries::deserialize(d) {
        Ok(Entries::One(s)) => Ok(s
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|e| !e.is_empty())
            .map(Secret::from)
            .collect()),
        Ok(Entries::Many(v)) => Ok(v),
        Err(_) => Err(serde::de::Error::custom(
            "expected a list of `id:key` strings, or one string of them",
        )),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticClientConfig {
    pub client_id: String,
    /// The secret in clear (prefer an environment override) ...
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// ... or its SHA-256, hex.
    #[serde(default)]
    pub client_secret_sha256: Option<String>,
    #[serde(default)]
    pub client_name: Option<String>,
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    #[serde(default)]
    pub token_endpoint_auth_method: TokenEndpointAuthMethod,
    #[serde(default = "default_static_grant_types")]
    pub grant_types: Vec<GrantType>,
    /// Scopes this client may obtain; empty means every configured scope.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// May call the introspection endpoint (a resource server).
    #[serde(default)]
    pub introspection: bool,
    /// The resources (`whoami`, an upstream's name, or a resource URL) whose access tokens
    /// this client may see as active when it introspects; required with `introspection`.
    #[serde(default)]
    pub introspection_resources: Vec<String>,
}

impl StaticClientConfig {
    fn is_public(&self) -> bool {
        self.token_endpoint_auth_method == TokenEndpointAuthMethod::None
    }
}

/// How a configured client authenticates at the token endpoint.
#[derive(Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenEndpointAuthMethod {
    /// A public client: no secret.
    None,
    #[default]
    ClientSecretBasic,
    ClientSecretPost,
}

impl TokenEndpointAuthMethod {
    /// The name in the configuration and in OAuth metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::ClientSecretBasic => "client_secret_basic",
            Self::ClientSecretPost => "client_secret_post",
        }
    }
}

// As spelled in the file: `clients show` prints configured clients with `Debug`.
impl fmt::Debug for TokenEndpointAuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// A grant a configured client may use at the token endpoint.
#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantType {
    AuthorizationCode,
    RefreshToken,
    /// A confidential client acting for itself.
    ClientCredentials,
    /// An identity assertion (ID-JAG) from a trusted issuer (RFC 7523 §2.1).
    #[serde(rename = "urn:ietf:params:oauth:grant-type:jwt-bearer")]
    JwtBearer,
    /// The device authorization grant (RFC 8628).
    #[serde(rename = "urn:ietf:params:oauth:grant-type:device_code")]
    DeviceCode,
}

impl GrantType {
    /// The name in the configuration and in OAuth requests.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthorizationCode => "authorization_code",
            Self::RefreshToken => "refresh_token",
            Self::ClientCredentials => "client_credentials",
            Self::JwtBearer => crate::authorization::id_jag::JWT_BEARER,
            Self::DeviceCode => crate::authorization::device::DEVICE_CODE,
        }
    }
}

// As spelled in the file: `clients show` prints configured clients with `Debug`.
impl fmt::Debug for GrantType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

fn default_static_grant_types() -> Vec<GrantType> {
    vec![GrantType::AuthorizationCode, GrantType::RefreshToken]
}

impl Config {
    /// Reads the file (if any), applies environment overrides, and validates.
    pub fn load(
        file: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let config = Self::load_unchecked(file, env)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses the configuration without the checks of [`Self::validate`] (for
    /// `check-config`, which reports every problem through [`Self::problems`]).
    pub fn load_unchecked(
        file: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let origin = match file {
            Some(p) => p.display().to_string(),
            None => "defaults".to_string(),
        };
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    file: origin.clone(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Parse {
                        file: origin.clone(),
                        message: e.to_string(),
                    })?
            }
            None => toml::Table::new(),
        };
        let mut overridden = Vec::new();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            // Not configuration keys: the log filter and format, and the configuration
            // file's path.
            if rest == "LOG" || rest == "LOG_FORMAT" || rest == "CONFIG" {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
            if path.iter().any(|p| p.is_empty()) {
                continue;
            }
            set_path(&mut table, &path, parse_env_value(&value)).map_err(|message| {
                ConfigError::Invalid {
                    origin: format!("environment variable {name}"),
                    key: path.join("."),
                    message,
                }
            })?;
            overridden.push(name);
        }
        let origin_desc = if overridden.is_empty() {
            origin.clone()
        } else {
            format!("{origin} (with environment overrides)")
        };
        let deserializer = toml::Value::Table(table);
        let mut config: Config =
            serde_path_to_error::deserialize(deserializer).map_err(|e| ConfigError::Invalid {
                origin: origin_desc.clone(),
                key: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        config.origin = origin_desc;
        Ok(config)
    }

    /// Every problem found, not only the first: each section's own checks, then (when they
    /// pass) what spans sections.
    pub fn problems(&self) -> Vec<ConfigError> {
        let sections: [&dyn Fn() -> Checked; 6] = [
            &|| self.keys.validate(),
            &|| self.server.validate(),
            &|| self.store.validate(),
            &|| self.authorization.validate(),
            &|| self.login.validate(),
            &|| self.trust.validate(),
        ];
        let mut found: Vec<ConfigError> = sections
            .iter()
            .filter_map(|check| check().err())
            .map(|Invalid { key, message }| self.invalid(&key, message))
            .collect();
        if found.is_empty()
            && let Err(e) = self.validate()
        {
            found.push(e);
        }
        found
    }

    /// The effective settings as `check-config` prints them: what decides behaviour, with
    /// every URL reduced to scheme, host, port and path (no user, password or query) and
    /// no secret at all (a secret shows only as set).
    pub fn summary(&self) -> Vec<String> {
        // Scheme, host and port only: some servers carry a key in the path too.
        fn url(u: &str) -> String {
            match Url::parse(u) {
                Ok(p) => {
                    let mut out = p.origin().ascii_serialization();
                    if p.path().len() > 1 {
                        out.push_str("/…");
                    }
                    out
                }
                Err(_) => "<not a URL>".into(),
            }
        }
        let set = |b: bool| if b { "set" } else { "not set" };
        let mut out = vec![
            format!("server.listen = {}", self.server.listen),
            format!("issuer (server.public_url) = {}", self.public_url()),
            format!(
                "server.tls = {}",
                match &self.server.tls_cert {
                    Some(c) => format!("https, certificate {}", c.display()),
                    None => "off (plain http on the listener)".into(),
                }
            ),
            format!("server.trusted_proxies = {:?}", self.server.trusted_proxies),
            format!(
                "store = {}",
                match Url::parse(&self.store.url) {
                    // A file: its path is no secret (and holds no user or password).
                    Ok(u) if u.scheme() == "sqlite" => {
                        self.store.url.split('?').next().unwrap_or("").to_string()
                    }
                    Ok(u) => format!(
                        "{}://{}{}",
                        u.scheme(),
                        u.host_str().unwrap_or(""),
                        u.path()
                    ),
                    Err(_) => "<not a URL>".into(),
                }
            ),
            format!(
                "keys.encryption = {} key(s){}",
                self.keys.encryption.len(),
                self.keys
                    .encryption_active
                    .as_deref()
                    .map(|a| format!(", active `{a}`"))
                    .unwrap_or_default()
            ),
            format!("authorization.mode = {:?}", self.authorization.mode),
            format!("authorization.scopes = {:?}", self.authorization.scopes),
            format!(
                "registration: dcr = {:?}, cimd = {}, initial access tokens {}",
                self.registration.dcr,
                self.registration.cimd,
                set(!self.registration.initial_access_tokens.is_empty())
            ),
            format!("login.local_accounts = {}", self.login.local_accounts),
        ];
        for o in &self.login.oidc {
            out.push(format!(
                "login.oidc `{}`: {:?}{}",
                o.name,
                o.provider,
                o.issuer
                    .as_deref()
                    .map(|i| format!(" at {}", url(i)))
                    .unwrap_or_default()
            ));
        }
        for d in &self.login.database {
            out.push(format!("login.database `{}`: {:?}", d.name, d.kind));
        }
        if self.whoami.enabled {
            out.push(format!("whoami at {}", self.whoami.path));
        }
        for u in &self.upstreams {
            let target = match (&u.url, &u.command) {
                (Some(x), _) => url(x),
                (None, Some(c)) => {
                    format!("stdio `{}`", c.first().map(String::as_str).unwrap_or(""))
                }
                _ if u.dbtools.is_some() => "built-in database tools".into(),
                _ => "?".into(),
            };
            let credentials = match &u.credentials {
                UpstreamCredentials::None => "none",
                UpstreamCredentials::Bearer { .. } => "bearer (secret set)",
                UpstreamCredentials::Header { .. } => "header (secret set)",
                UpstreamCredentials::Identity => "identity headers",
                UpstreamCredentials::Assertion { .. } => "signed assertion",
                UpstreamCredentials::ProviderToken { .. } => "provider token",
                UpstreamCredentials::Oauth { .. } => "OAuth (each person's token, the vault)",
                UpstreamCredentials::DatabaseLogin { .. } => "database login",
            };
            out.push(format!(
                "upstream `{}` at {} → {target}, credentials: {credentials}",
                u.name,
                Self::upstream_path(u)
            ));
        }
        for c in &self.clients {
            let grants: Vec<&str> = c.grant_types.iter().map(|g| g.as_str()).collect();
            out.push(format!("client `{}`: {}", c.client_id, grants.join(", ")));
        }
        out.push(format!(
            "metrics: {}{}",
            if self.metrics.enabled { "on" } else { "off" },
            match (&self.metrics.listen, &self.metrics.bearer_token) {
                (Some(l), _) => format!(", served on {l}"),
                (None, Some(_)) => ", on the main listener (bearer token set)".into(),
                (None, None) => ", on the main listener (local processes only)".into(),
            }
        ));
        out.push(format!(
            "audit: {}",
            self.audit
                .path
                .as_deref()
                .unwrap_or("off (the log's `audit` target only)")
        ));
        out
    }

    /// What is allowed but probably not meant, for `check-config`.
    pub fn advice(&self) -> Vec<String> {
        let mut out = self.warnings();
        if self.audit.path.is_none() {
            out.push(
                "audit.path is not set: security events go only to the log (target `audit`)".into(),
            );
        }
        let public_loopback = Url::parse(&self.public_url())
            .ok()
            .as_ref()
            .is_some_and(is_loopback_host);
        if self.registration.dcr == DcrMode::Open && !public_loopback {
            out.push("registration.dcr is open: anyone can register a client (the consent page marks them unverified); consider initial access tokens or CIMD".into());
        }
        out
    }

    /// The part of [`Self::advice`] that points at a risk (plain http beyond loopback, a
    /// proxy that makes every client look alike or local): logged as warnings at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let public = self.public_url();
        let public_url = Url::parse(&public).ok();
        let public_loopback = public_url.as_ref().is_some_and(is_loopback_host);
        if public.starts_with("http://") && !public_loopback {
            out.push(format!(
                "server.public_url `{public}` is plain http on a host that is not loopback: OAuth 2.1 clients expect https (use a reverse proxy, or server.tls_cert)"
            ));
        }
        let listen_public = !self.server.listen.ip().is_loopback();
        if listen_public
            && self.server.tls_cert.is_none()
            && public.starts_with("https://")
            && self.server.trusted_proxies.is_empty()
        {
            out.push("server.trusted_proxies is empty while a reverse proxy seems to terminate TLS: every client will look like the proxy's address to the login throttles and rate limits".into());
        }
        if self.metrics.enabled
            && self.metrics.listen.is_none()
            && !listen_public
            && public.starts_with("https://")
            && self.server.tls_cert.is_none()
            && self.server.trusted_proxies.is_empty()
        {
            out.push("metrics: a reverse proxy on this host seems to forward to the gateway, but server.trusted_proxies is empty: every request it forwards looks local, so /metrics answers whoever reaches the proxy; list the proxy in trusted_proxies, block /metrics at the proxy, or set metrics.listen".into());
        }
        if self.metrics.enabled
            && self.metrics.listen.is_none()
            && listen_public
            && self.metrics.bearer_token.is_none()
        {
            out.push("metrics: /metrics on the main listener answers only local processes (not through a proxy); set metrics.listen or metrics.bearer_token for a scraper elsewhere".into());
        }
        out
    }

    fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin.clone(),
            key: key.into(),
            message: message.into(),
        }
    }

    /// The issuer / resource base URL in canonical form: scheme and host in lower case, no
    /// default port, no trailing slash. Metadata, `resource` matching and the audience of
    /// every token derive from it, so they can never disagree on spelling.
    pub fn public_url(&self) -> String {
        let raw = match &self.server.public_url {
            Some(u) => u.clone(),
            None if self.server.tls_cert.is_some() => format!("https://{}", self.server.listen),
            None => format!("http://{}", self.server.listen),
        };
        match Url::parse(&raw) {
            Ok(u) => u.as_str().trim_end_matches('/').to_string(),
            Err(_) => raw.trim_end_matches('/').to_string(),
        }
    }

    /// Checks each section, then what spans sections. The first mistake found is the error;
    /// it names the key and where the configuration came from.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check()
            .map_err(|Invalid { key, message }| self.invalid(&key, message))
    }

    fn check(&self) -> Checked {
        self.keys.validate()?;
        self.server.validate()?;
        self.store.validate()?;
        self.authorization.validate()?;
        self.login.validate()?;
        self.trust.validate()?;
        self.traces.validate()?;
        for (key, list) in [
            (
                "cimd_trusted_domains",
                &self.registration.cimd_trusted_domains,
            ),
            (
                "cimd_allowed_domains",
                &self.registration.cimd_allowed_domains,
            ),
            (
                "cimd_blocked_domains",
                &self.registration.cimd_blocked_domains,
            ),
        ] {
            for (i, d) in list.iter().enumerate() {
                crate::authorization::policy::normal_domain(d)
                    .map_err(|m| Invalid::at(format!("registration.{key}[{i}]"), m))?;
            }
        }
        // A name shared with a sign-in source links the same users: only for the same
        // provider, or one provider's subjects would become another's users.
        for (i, t) in self.trust.id_jag.iter().enumerate() {
            if let Some(o) = self.login.oidc.iter().find(|o| o.name == t.name)
                && o.issuer.as_deref().map(|x| x.trim_end_matches('/'))
                    != Some(t.issuer.trim_end_matches('/'))
            {
                return Err(Invalid::at(
                    format!("trust.id_jag[{i}].name"),
                    format!(
                        "is the [[login.oidc]] `{}`, whose issuer is another",
                        o.name
                    ),
                ));
            }
        }
        // Opaque tokens are sent for introspection: to one server only, never to another
        // server than the one that issued them.
        if self
            .authorization
            .external
            .iter()
            .filter(|e| e.introspection_endpoint.is_some())
            .count()
            > 1
        {
            return Err(Invalid::at(
                "authorization.external",
                "at most one server may have an introspection_endpoint (an opaque token does not say whose it is)",
            ));
        }
        self.registration.validate()?;
        self.whoami.validate()?;
        if self.whoami.enabled {
            known_scopes(
                "whoami.scopes",
                &self.whoami.scopes,
                &self.authorization.scopes,
            )?;
        }
        self.check_upstreams()?;
        self.proxy.validate()?;
        self.check_clients()
    }

    /// The path an upstream is served at.
    pub fn upstream_path(u: &UpstreamConfig) -> String {
        u.path.clone().unwrap_or_else(|| format!("/mcp/{}", u.name))
    }

    /// Each upstream, then what involves others: names used once, paths that no other
    /// resource (`whoami` included) has, scopes the authorization server knows.
    fn check_upstreams(&self) -> Checked {
        if let Some(u) = &self.broker.client_metadata_url {
            let ok = Url::parse(u).is_ok_and(|p| {
                p.scheme() == "https"
                    && p.path() != "/"
                    && p.fragment().is_none()
                    && p.username().is_empty()
                    && p.password().is_none()
            });
            if !ok {
                return Err(Invalid::at(
                    "broker.client_metadata_url",
                    "an https URL with a path (the document's address is the client id)",
                ));
            }
        }
        let known = &self.authorization.scopes;
        let mut paths = HashSet::new();
        if self.whoami.enabled {
            paths.insert(self.whoami.path.clone());
        }
        let mut names = HashSet::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            u.validate(i)?;
            let key = |k: &str| format!("upstreams[{i}].{k}");
            if !names.insert(u.name.as_str()) {
                return Err(Invalid::at(key("name"), "duplicated"));
            }
            if let Some(source) = &u.dbtools
                && !self.login.database.iter().any(|d| &d.name == source)
            {
                return Err(Invalid::at(
                    key("dbtools"),
                    format!("`{source}` is no [[login.database]]"),
                ));
            }
            if let UpstreamCredentials::DatabaseLogin {
                source,
                username_header,
                password_header,
                username_env,
                password_env,
            } = &u.credentials
            {
                if !self.login.database.iter().any(|d| &d.name == source) {
                    return Err(Invalid::at(
                        key("credentials.source"),
                        format!("`{source}` is no [[login.database]]"),
                    ));
                }
                let (names, other, what) = if u.url.is_some() {
                    (
                        [
                            ("username_header", username_header),
                            ("password_header", password_header),
                        ],
                        username_env.is_some() || password_env.is_some(),
                        "a `url` upstream takes username_header and password_header",
                    )
                } else {
                    if !u.per_user {
                        return Err(Invalid::at(
                            key("per_user"),
                            "database_login credentials go to a stdio upstream run per user (per_user = true)",
                        ));
                    }
                    (
                        [
                            ("username_env", username_env),
                            ("password_env", password_env),
                        ],
                        username_header.is_some() || password_header.is_some(),
                        "a `command` upstream takes username_env and password_env",
                    )
                };
                if other {
                    return Err(Invalid::at(key("credentials"), what));
                }
                // The password travels in the request: over TLS, or not off this host.
                if let Some(url) = u.url.as_deref().and_then(|x| Url::parse(x).ok())
                    && url.scheme() != "https"
                    && !matches!(url.host(), Some(url::Host::Ipv4(ip)) if ip.is_loopback())
                    && !matches!(url.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback())
                    && url.host_str() != Some("localhost")
                {
                    return Err(Invalid::at(
                        key("url"),
                        "database_login credentials go only to an https:// upstream or one on this host",
                    ));
                }
                for (k, v) in names {
                    let k = key(&format!("credentials.{k}"));
                    let Some(v) = v else {
                        return Err(Invalid::at(k, format!("is required: {what}")));
                    };
                    let ok = if u.url.is_some() {
                        http::HeaderName::from_bytes(v.as_bytes()).is_ok()
                            && !GATEWAY_HEADERS.contains(&v.to_ascii_lowercase().as_str())
                    } else {
                        !v.is_empty()
                            && !v.starts_with(|c: char| c.is_ascii_digit())
                            && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    };
                    if !ok {
                        return Err(Invalid::at(
                            k,
                            "not a name that can be set (a header the gateway handles itself, or not a header or environment variable name)",
                        ));
                    }
                }
                if names[0].1.as_deref().map(str::to_ascii_lowercase)
                    == names[1].1.as_deref().map(str::to_ascii_lowercase)
                {
                    return Err(Invalid::at(
                        key("credentials"),
                        "the username and the password need two different names",
                    ));
                }
            }
            if matches!(u.credentials, UpstreamCredentials::Oauth { .. })
                && self.authorization.mode == AuthorizationMode::External
            {
                return Err(Invalid::at(
                    key("credentials"),
                    "OAuth upstreams need the gateway's own sign-in and pages, which the external mode does not serve",
                ));
            }
            if matches!(u.credentials, UpstreamCredentials::Oauth { .. }) && u.url.is_none() {
                return Err(Invalid::at(
                    key("credentials"),
                    "OAuth is for `url` upstreams (a command is started by the gateway itself)",
                ));
            }
            if let UpstreamCredentials::Oauth {
                subject_source: Some(source),
                ..
            } = &u.credentials
                && !self
                    .login
                    .oidc
                    .iter()
                    .any(|o| &o.name == source && o.keep_provider_tokens)
            {
                return Err(Invalid::at(
                    key("credentials.subject_source"),
                    format!("`{source}` is no [[login.oidc]] with keep_provider_tokens = true"),
                ));
            }
            if let UpstreamCredentials::ProviderToken { source } = &u.credentials
                && !self
                    .login
                    .oidc
                    .iter()
                    .any(|o| &o.name == source && o.keep_provider_tokens)
            {
                return Err(Invalid::at(
                    key("credentials.source"),
                    format!("`{source}` is no [[login.oidc]] with keep_provider_tokens = true"),
                ));
            }
            let path = Self::upstream_path(u);
            if !paths.insert(path.clone()) {
                return Err(Invalid::at(key("path"), format!("`{path}` is used twice")));
            }
            known_scopes(
                &key("scopes"),
                u.scopes.as_deref().unwrap_or_default(),
                known,
            )?;
            for (j, rule) in u.tools.iter().enumerate() {
                known_scopes(
                    &format!("upstreams[{i}].tools[{j}].scopes"),
                    &rule.scopes,
                    known,
                )?;
            }
        }
        Ok(())
    }

    /// Each configured client, then what involves others: ids used once, introspection
    /// resources that exist, scopes the authorization server knows.
    fn check_clients(&self) -> Checked {
        let mut seen = HashSet::new();
        for (i, c) in self.clients.iter().enumerate() {
            c.validate(i)?;
            let key = |k: &str| format!("clients[{i}].{k}");
            if !seen.insert(c.client_id.as_str()) {
                return Err(Invalid::at(key("client_id"), "duplicated"));
            }
            for (j, r) in c.introspection_resources.iter().enumerate() {
                let known = (self.whoami.enabled && r == "whoami")
                    || self.upstreams.iter().any(|u| &u.name == r)
                    || r.starts_with("https://")
                    || r.starts_with("http://");
                if !known {
                    return Err(Invalid::at(
                        format!("clients[{i}].introspection_resources[{j}]"),
                        "not `whoami`, an upstream's name, or a resource URL",
                    ));
                }
            }
            known_scopes(&key("scopes"), &c.scopes, &self.authorization.scopes)?;
        }
        Ok(())
    }
}

/// A check that failed: the key at fault and what is wrong with it. `Config::validate` adds
/// where the configuration came from.
struct Invalid {
    key: String,
    message: String,
}

impl Invalid {
    fn at(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

type Checked = Result<(), Invalid>;

/// Every scope of `scopes` must be one of `known` (`authorization.scopes`).
fn known_scopes(key: &str, scopes: &[String], known: &[String]) -> Checked {
    match scopes.iter().find(|s| !known.contains(*s)) {
        Some(s) => Err(Invalid::at(
            key,
            format!("`{s}` is not in authorization.scopes"),
        )),
        None => Ok(()),
    }
}

/// Durations, with their keys, that must be positive.
fn positive_secs(durations: &[(&str, i64)]) -> Checked {
    for &(key, secs) in durations {
        if secs <= 0 {
            return Err(Invalid::at(key, "must be a positive number of seconds"));
        }
    }
    Ok(())
}

// Each section checks what it can alone; `Config::check` calls them in order.

impl KeysConfig {
    fn validate(&self) -> Checked {
        if let Err(e) = self.encryption_keys() {
            let key = match e {
                crate::crypto::KeysError::Active(_) => "keys.encryption_active",
                crate::crypto::KeysError::Entry(_) => "keys.encryption",
            };
            return Err(Invalid::at(key, e.to_string()));
        }
        if self.encryption.is_empty() && self.encryption_active.is_some() {
            return Err(Invalid::at(
                "keys.encryption_active",
                "names a key, but `keys.encryption` lists none",
            ));
        }
        Ok(())
    }
}

impl ServerConfig {
    fn validate(&self) -> Checked {
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err(Invalid::at(
                    "server.tls_key",
                    "is missing: tls_cert needs its private key",
                ));
            }
            (None, Some(_)) => {
                return Err(Invalid::at(
                    "server.tls_cert",
                    "is missing: tls_key needs its certificate",
                ));
            }
            (Some(cert), Some(key)) => {
                crate::web::tls::load(cert, key)
                    .map_err(|(which, why)| Invalid::at(format!("server.{which}"), why))?;
            }
            (None, None) => {}
        }
        if let Some(u) = &self.public_url {
            let url = Url::parse(u)
                .map_err(|e| Invalid::at("server.public_url", format!("not a URL: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(Invalid::at("server.public_url", "must be http or https"));
            }
            if url.query().is_some() || url.fragment().is_some() {
                return Err(Invalid::at(
                    "server.public_url",
                    "must not have a query or fragment (it is the OAuth issuer)",
                ));
            }
            // Plain http beyond loopback is advice (`Config::advice`), logged at start.
        }
        if !(1..=300).contains(&self.header_read_timeout_secs) {
            return Err(Invalid::at("server.header_read_timeout_secs", "1 to 300"));
        }
        if !(1..=600).contains(&self.body_read_timeout_secs) {
            return Err(Invalid::at("server.body_read_timeout_secs", "1 to 600"));
        }
        if self.max_connections == 0 {
            return Err(Invalid::at("server.max_connections", "at least 1"));
        }
        if let Some(p) = &self.egress_proxy {
            let ok = Url::parse(p).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
            if !ok {
                return Err(Invalid::at(
                    "server.egress_proxy",
                    "an http:// or https:// proxy URL",
                ));
            }
        }
        for (i, p) in self.trusted_proxies.iter().enumerate() {
            parse_net(p).ok_or_else(|| {
                Invalid::at(
                    format!("server.trusted_proxies[{i}]"),
                    "not an IP address or CIDR range",
                )
            })?;
        }
        if self.max_body_bytes < 1024 {
            return Err(Invalid::at(
                "server.max_body_bytes",
                "must be at least 1024",
            ));
        }
        Ok(())
    }
}

impl StoreConfig {
    fn validate(&self) -> Checked {
        if self
            .max_connections
            .is_some_and(|n| !(1..=1000).contains(&n))
        {
            return Err(Invalid::at("store.max_connections", "1 to 1000"));
        }
        if !(100..=60_000).contains(&self.acquire_timeout_ms) {
            return Err(Invalid::at("store.acquire_timeout_ms", "100 to 60000"));
        }
        let url = &self.url;
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(Invalid::at(
                "store.url",
                "expected sqlite://PATH or postgres://…",
            ));
        }
        Ok(())
    }
}

impl AuthorizationConfig {
    fn validate(&self) -> Checked {
        for (i, e) in self.external.iter().enumerate() {
            e.validate(i)?;
        }
        match (self.mode, self.external.is_empty()) {
            (AuthorizationMode::External, true) => {
                return Err(Invalid::at(
                    "authorization.external",
                    "mode = \"external\" needs at least one authorization server",
                ));
            }
            (AuthorizationMode::Gateway, false) => {
                return Err(Invalid::at(
                    "authorization.external",
                    "is used only with mode = \"external\"",
                ));
            }
            _ => {}
        }
        if self.scopes.is_empty() {
            return Err(Invalid::at(
                "authorization.scopes",
                "must name at least one scope",
            ));
        }
        for (i, s) in self.scopes.iter().enumerate() {
            if !is_valid_scope_token(s) {
                return Err(Invalid::at(
                    format!("authorization.scopes[{i}]"),
                    "a scope is printable ASCII without spaces, quotes or backslashes",
                ));
            }
        }
        known_scopes(
            "authorization.default_scopes",
            &self.default_scopes,
            &self.scopes,
        )?;
        positive_secs(&[
            (
                "authorization.access_token_ttl_secs",
                self.access_token_ttl_secs,
            ),
            (
                "authorization.refresh_token_ttl_secs",
                self.refresh_token_ttl_secs,
            ),
            (
                "authorization.grant_max_lifetime_secs",
                self.grant_max_lifetime_secs,
            ),
            ("authorization.code_ttl_secs", self.code_ttl_secs),
            ("authorization.request_ttl_secs", self.request_ttl_secs),
        ])?;
        // Lifetimes are added to the current time: ten years is more than anyone needs and
        // far from where the sum would overflow.
        for (key, v) in [
            (
                "authorization.access_token_ttl_secs",
                self.access_token_ttl_secs,
            ),
            (
                "authorization.refresh_token_ttl_secs",
                self.refresh_token_ttl_secs,
            ),
            (
                "authorization.grant_max_lifetime_secs",
                self.grant_max_lifetime_secs,
            ),
        ] {
            if v > TEN_YEARS {
                return Err(Invalid::at(key, "at most 315360000 (ten years)"));
            }
        }
        if self.code_ttl_secs > 600 {
            return Err(Invalid::at(
                "authorization.code_ttl_secs",
                "at most 600 (RFC 6749 §4.1.2 recommends 10 minutes at the most)",
            ));
        }
        if !(0..=300).contains(&self.refresh_retry_window_secs) {
            return Err(Invalid::at(
                "authorization.refresh_retry_window_secs",
                "0 to 300",
            ));
        }
        Ok(())
    }
}

impl LoginConfig {
    fn validate(&self) -> Checked {
        positive_secs(&[
            ("login.session_ttl_secs", self.session_ttl_secs),
            ("login.throttle_window_secs", self.throttle_window_secs),
        ])?;
        for (i, o) in self.oidc.iter().enumerate() {
            o.resolve(i)
                .map_err(|(key, message)| Invalid::at(key, message))?;
        }
        let mut names: HashSet<&str> = self.oidc.iter().map(|o| o.name.as_str()).collect();
        for (i, d) in self.database.iter().enumerate() {
            d.validate(i)
                .map_err(|(key, message)| Invalid::at(key, message))?;
            if !names.insert(d.name.as_str()) {
                return Err(Invalid::at(
                    format!("login.database[{i}].name"),
                    "another login source has this name",
                ));
            }
        }
        Ok(())
    }
}

impl RegistrationConfig {
    fn validate(&self) -> Checked {
        if self.dcr == DcrMode::Token && self.initial_access_tokens.is_empty() {
            return Err(Invalid::at(
                "registration.initial_access_tokens",
                "dcr = \"token\" needs at least one initial access token",
            ));
        }
        if self.max_clients < 1 {
            return Err(Invalid::at(
                "registration.max_clients",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

impl WhoamiConfig {
    fn validate(&self) -> Checked {
        if self.enabled
            && (!self.path.starts_with('/')
                || self.path.starts_with("/.well-known")
                || !plain_path(&self.path))
        {
            return Err(Invalid::at(
                "whoami.path",
                "must start with /, not be under /.well-known, and use letters, digits and - . _ ~ / only",
            ));
        }
        Ok(())
    }
}

impl ProxyConfig {
    fn validate(&self) -> Checked {
        for (i, o) in self.allowed_origins.iter().enumerate() {
            let ok = Url::parse(o)
                .is_ok_and(|u| u.origin().ascii_serialization() == o.trim_end_matches('/'));
            if !ok {
                return Err(Invalid::at(
                    format!("proxy.allowed_origins[{i}]"),
                    "an origin is scheme://host[:port]",
                ));
            }
        }
        if self.max_request_bytes < 1024 {
            return Err(Invalid::at(
                "proxy.max_request_bytes",
                "must be at least 1024",
            ));
        }
        Ok(())
    }
}

impl UpstreamConfig {
    /// What it can check alone; `i` is its place in `upstreams`, for the keys in messages.
    fn validate(&self, i: usize) -> Checked {
        let key = |k: &str| format!("upstreams[{i}].{k}");
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(Invalid::at(key("name"), "1 to 64 letters, digits, - or _"));
        }
        let dbtools_only = self.writable
            || self.row_limit.is_some()
            || self.statement_timeout_secs.is_some()
            || self.max_result_bytes.is_some();
        if self.dbtools.is_some() {
            if self.url.is_some() || self.command.is_some() {
                return Err(Invalid::at(
                    key("dbtools"),
                    "give exactly one of `url`, `command` and `dbtools`",
                ));
            }
            if !matches!(self.credentials, UpstreamCredentials::None) {
                return Err(Invalid::at(
                    key("credentials"),
                    "the database tools run with each person's own database account",
                ));
            }
            if self.per_user || !self.env.is_empty() || !self.per_user_env.is_empty() {
                return Err(Invalid::at(
                    key("per_user"),
                    "env, per_user and per_user_env are for stdio (`command`) upstreams",
                ));
            }
            if self.row_limit.is_some_and(|n| !(1..=100_000).contains(&n)) {
                return Err(Invalid::at(key("row_limit"), "must be 1 to 100000"));
            }
            if self
                .statement_timeout_secs
                .is_some_and(|n| !(1..=3600).contains(&n))
            {
                return Err(Invalid::at(
                    key("statement_timeout_secs"),
                    "must be 1 to 3600",
                ));
            }
            if self
                .max_result_bytes
                .is_some_and(|n| !(1024..=(64 << 20)).contains(&n))
            {
                return Err(Invalid::at(
                    key("max_result_bytes"),
                    "must be 1024 to 67108864",
                ));
            }
        } else if dbtools_only {
            return Err(Invalid::at(
                key("writable"),
                "writable, row_limit, statement_timeout_secs and max_result_bytes are for `dbtools` upstreams",
            ));
        }
        match (&self.url, &self.command) {
            (None, None) if self.dbtools.is_some() => {}
            (Some(url), None) => {
                let url = Url::parse(url)
                    .map_err(|e| Invalid::at(key("url"), format!("not a URL: {e}")))?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(Invalid::at(
                        key("url"),
                        "must be an http:// or https:// URL",
                    ));
                }
                if url.host().is_none() {
                    return Err(Invalid::at(key("url"), "has no host"));
                }
                if self.per_user || !self.env.is_empty() || !self.per_user_env.is_empty() {
                    return Err(Invalid::at(
                        key("per_user"),
                        "env, per_user and per_user_env are for stdio (`command`) upstreams",
                    ));
                }
            }
            (None, Some(cmd)) => {
                if cmd.is_empty() || cmd[0].is_empty() {
                    return Err(Invalid::at(
                        key("command"),
                        "the program to run, then its arguments",
                    ));
                }
                if self.transport != UpstreamTransport::StreamableHttp {
                    return Err(Invalid::at(key("transport"), "is for `url` upstreams"));
                }
                if !self.per_user && !self.per_user_env.is_empty() {
                    return Err(Invalid::at(key("per_user_env"), "needs per_user = true"));
                }
                if self.idle_secs < 1 {
                    return Err(Invalid::at(key("idle_secs"), "must be at least 1"));
                }
            }
            _ => {
                return Err(Invalid::at(
                    key("url"),
                    "give exactly one of `url`, `command` and `dbtools`",
                ));
            }
        }
        let path = Config::upstream_path(self);
        if !path.starts_with('/')
            || path.starts_with("/.well-known")
            || path.contains("//")
            || path.ends_with('/')
            || !plain_path(&path)
        {
            return Err(Invalid::at(
                key("path"),
                "must start with /, not end with /, not be under /.well-known, and use letters, digits and - . _ ~ / only",
            ));
        }
        for (j, rule) in self.tools.iter().enumerate() {
            if rule.tools.is_empty()
                || rule
                    .tools
                    .iter()
                    .any(|t| t.is_empty() || t[..t.len() - 1].contains('*'))
            {
                return Err(Invalid::at(
                    format!("upstreams[{i}].tools[{j}].tools"),
                    "tool names, with `*` only at the end",
                ));
            }
        }
        self.credentials.validate(i)
    }
}

/// Headers the gateway sets or removes itself on the way upstream: no credential may use
/// their names.
const GATEWAY_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "authorization",
    "cookie",
    "mcp-session-id",
    "mcp-protocol-version",
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-client",
];

impl UpstreamCredentials {
    /// `i` is the upstream's place in `upstreams`, for the keys in messages. Messages never
    /// quote a value: it is a secret.
    fn validate(&self, i: usize) -> Checked {
        let key = |k: &str| format!("upstreams[{i}].credentials.{k}");
        match self {
            Self::Header { name, value } => {
                let ok_name = http::HeaderName::from_bytes(name.as_bytes()).is_ok()
                    && !matches!(
                        name.to_ascii_lowercase().as_str(),
                        "host" | "content-length" | "transfer-encoding" | "connection"
                    );
                if !ok_name {
                    return Err(Invalid::at(
                        key("name"),
                        "not a header name that can be set",
                    ));
                }
                if http::HeaderValue::from_str(value.expose()).is_err() {
                    return Err(Invalid::at(key("value"), "not a valid header value"));
                }
            }
            Self::Assertion {
                header, ttl_secs, ..
            } => {
                if let Some(h) = header
                    && http::HeaderName::from_bytes(h.as_bytes()).is_err()
                {
                    return Err(Invalid::at(key("header"), "not a header name"));
                }
                if ttl_secs.is_some_and(|t| !(1..=3600).contains(&t)) {
                    return Err(Invalid::at(key("ttl_secs"), "1 to 3600"));
                }
            }
            Self::Bearer { token } => {
                let token = token.expose();
                if token.is_empty() || http::HeaderValue::from_str(token).is_err() {
                    return Err(Invalid::at(key("token"), "not a valid token"));
                }
            }
            Self::Oauth {
                scopes,
                client_id,
                client_secret,
                grant,
                connect_on_consent,
                subject_source,
                authorization_server,
            } => {
                if *grant != OauthGrant::AuthorizationCode && authorization_server.is_none() {
                    return Err(Invalid::at(
                        key("authorization_server"),
                        "client_credentials and token_exchange send a secret or a person's token: name the authorization server's issuer they may go to",
                    ));
                }
                if authorization_server
                    .as_deref()
                    .is_some_and(|a| Url::parse(a).is_err())
                {
                    return Err(Invalid::at(key("authorization_server"), "not a URL"));
                }
                if subject_source.is_some() && *grant != OauthGrant::TokenExchange {
                    return Err(Invalid::at(
                        key("subject_source"),
                        "only for grant = \"token_exchange\"",
                    ));
                }
                if *connect_on_consent && *grant != OauthGrant::AuthorizationCode {
                    return Err(Invalid::at(
                        key("connect_on_consent"),
                        "only people who connect their own account (grant = authorization_code) connect anything",
                    ));
                }
                if *grant == OauthGrant::TokenExchange && client_id.is_none() {
                    return Err(Invalid::at(
                        key("grant"),
                        "token_exchange needs the client_id the gateway has at the upstream's authorization server",
                    ));
                }
                if *grant == OauthGrant::ClientCredentials
                    && (client_id.is_none() || client_secret.is_none())
                {
                    return Err(Invalid::at(
                        key("grant"),
                        "client_credentials needs the client_id and client_secret of the gateway's service identity",
                    ));
                }
                if let Some(s) = scopes
                    .iter()
                    .find(|s| s.is_empty() || s.contains(' ') || s.chars().any(|c| c.is_control()))
                {
                    return Err(Invalid::at(key("scopes"), format!("`{s}` is not a scope")));
                }
                if client_id.as_deref().is_some_and(|c| c.trim().is_empty()) {
                    return Err(Invalid::at(key("client_id"), "empty"));
                }
                if client_secret.is_some() && client_id.is_none() {
                    return Err(Invalid::at(
                        key("client_secret"),
                        "given without a client_id",
                    ));
                }
            }
            Self::None
            | Self::Identity
            | Self::ProviderToken { .. }
            | Self::DatabaseLogin { .. } => {}
        }
        Ok(())
    }
}

impl StaticClientConfig {
    /// What it can check alone; `i` is its place in `clients`, for the keys in messages.
    fn validate(&self, i: usize) -> Checked {
        let key = |k: &str| format!("clients[{i}].{k}");
        if self.client_id.is_empty() || self.client_id.len() > 255 {
            return Err(Invalid::at(key("client_id"), "1 to 255 characters"));
        }
        if self.client_id.starts_with("https://") || self.client_id.starts_with("http://") {
            return Err(Invalid::at(
                key("client_id"),
                "a URL client_id is reserved for Client ID Metadata Documents",
            ));
        }
        if self.introspection && self.introspection_resources.is_empty() {
            return Err(Invalid::at(
                key("introspection_resources"),
                "a client that introspects must name the resources whose tokens it may see",
            ));
        }
        if self.is_public() {
            if self.client_secret.is_some() || self.client_secret_sha256.is_some() {
                return Err(Invalid::at(
                    key("client_secret"),
                    "a public client (token_endpoint_auth_method = \"none\") has no secret",
                ));
            }
        } else {
            if self.client_secret.is_none() == self.client_secret_sha256.is_none() {
                return Err(Invalid::at(
                    key("client_secret"),
                    "a confidential client needs exactly one of client_secret or client_secret_sha256",
                ));
            }
            if let Some(h) = &self.client_secret_sha256
                && (h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err(Invalid::at(key("client_secret_sha256"), "64 hex digits"));
            }
        }
        if self.grant_types.contains(&GrantType::ClientCredentials) && self.is_public() {
            return Err(Invalid::at(
                key("grant_types"),
                "client_credentials needs a confidential client",
            ));
        }
        if self.grant_types.contains(&GrantType::AuthorizationCode) && self.redirect_uris.is_empty()
        {
            return Err(Invalid::at(
                key("redirect_uris"),
                "authorization_code needs at least one",
            ));
        }
        for (j, u) in self.redirect_uris.iter().enumerate() {
            crate::authorization::redirect::check_registered_redirect_uri(u, self.is_public())
                .map_err(|m| Invalid::at(format!("clients[{i}].redirect_uris[{j}]"), m))?;
        }
        Ok(())
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut cur = table;
    for p in parents {
        let entry = cur
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(format!("`{p}` is not a section")),
        };
    }
    cur.insert(last.clone(), value);
    Ok(())
}

fn parse_env_value(raw: &str) -> toml::Value {
    // `key = <raw>` parses when raw is a TOML literal (number, bool, array, quoted string).
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

pub fn parse_net(s: &str) -> Option<ipnet::IpNet> {
    if let Ok(n) = s.parse::<ipnet::IpNet>() {
        return Some(n);
    }
    s.parse::<IpAddr>().ok().map(ipnet::IpNet::from)
}

fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
pub fn is_valid_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

/// Where the SQLite file lives, for messages.
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    url.strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .map(|p| PathBuf::from(p.split('?').next().unwrap_or(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(s: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("gw.toml");
        std::fs::write(&p, s).expect("write");
        Config::load(
            Some(&p),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    /// The error for a configuration file, which must be refused.
    fn refused(s: &str) -> String {
        load_str(s, &[]).expect_err("refused").to_string()
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::load(None, std::iter::empty()).expect("defaults");
        assert_eq!(c.public_url(), "http://127.0.0.1:8080");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = load_str("[server]\nlisten_addr = \"x\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen_addr"), "{e}");
        assert!(e.contains("gw.toml"), "{e}");
    }

    #[test]
    fn env_overrides_file() {
        let c = load_str(
            "[server]\npublic_url = \"http://a.example\"\n",
            &[
                ("MCP_OAUTH_GATEWAY_SERVER__PUBLIC_URL", "https://b.example/"),
                ("MCP_OAUTH_GATEWAY_AUTHORIZATION__CODE_TTL_SECS", "30"),
                ("MCP_OAUTH_GATEWAY_LOG", "debug"),
                ("MCP_OAUTH_GATEWAY_CONFIG", "gw.toml"),
            ],
        )
        .expect("load");
        assert_eq!(c.public_url(), "https://b.example");
        assert_eq!(c.authorization.code_ttl_secs, 30);
    }

    #[test]
    fn bad_value_names_key() {
        let e = load_str("[authorization]\ncode_ttl_secs = \"soon\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("authorization.code_ttl_secs"), "{e}");
    }

    /// An encryption key entry: `k1` and 32 bytes in base64.
    const KEY: &str = "k1:dGhpcnR5LXR3by1ieXRlcy1vZi1rZXktbWF0ZXJpYWw=";

    #[test]
    fn secrets_reach_neither_debug_nor_display() {
        let c = load_str(
            &format!(
                r#"[registration]
dcr = "token"
initial_access_tokens = ["iat-secret-1"]

[keys]
encryption = ["{KEY}"]

[[clients]]
client_id = "rs"
client_secret = "hunter2hunter2"
redirect_uris = ["https://rs.example/cb"]

[[upstreams]]
name = "bearer"
url = "http://127.0.0.1:9/mcp"
[upstreams.credentials]
type = "bearer"
token = "bearer-secret-2"

[[upstreams]]
name = "header"
url = "http://127.0.0.1:9/mcp"
credentials = {{ type = "header", name = "X-Api-Key", value = "header-secret-3" }}

[[upstreams]]
name = "stdio"
command = ["server"]
env = {{ API_KEY = "env-secret-4" }}
"#
            ),
            &[(
                "MCP_OAUTH_GATEWAY_STORE__URL",
                "postgres://gw:db-secret-5@db.example/gw",
            )],
        )
        .expect("load");
        let shown = format!("{c:?}\n{c:#?}");
        for secret in [
            "iat-secret-1",
            "dGhpcnR5",
            "hunter2",
            "bearer-secret-2",
            "header-secret-3",
            "env-secret-4",
            "db-secret-5",
        ] {
            assert!(!shown.contains(secret), "{secret} shown in {shown}");
        }
        // What is not secret still shows.
        for plain in [
            "\"k1\"",
            "X-Api-Key",
            "API_KEY",
            "db.example",
            "\"client_secret_basic\"",
        ] {
            assert!(shown.contains(plain), "{plain} not shown in {shown}");
        }
        let secrets = [
            &c.registration.initial_access_tokens[0],
            &c.keys.encryption[0],
            c.clients[0].client_secret.as_ref().expect("client secret"),
            &c.upstreams[2].env["API_KEY"],
        ];
        for s in secrets {
            assert_eq!(s.to_string(), "<redacted>");
        }
        // The code that needs them still has them.
        assert_eq!(secrets[2].expose(), "hunter2hunter2");
        assert!(matches!(
            &c.upstreams[0].credentials,
            UpstreamCredentials::Bearer { token } if token.expose() == "bearer-secret-2"
        ));
        // A secret that is refused is not repeated.
        let e = refused(
            "[[upstreams]]\nname = \"a\"\nurl = \"http://127.0.0.1:9/mcp\"\n\
             credentials = { type = \"bearer\", token = \"bad-secret\\n\" }\n",
        );
        assert!(e.contains("key `upstreams[0].credentials.token`"), "{e}");
        assert!(!e.contains("bad-secret"), "{e}");
    }

    #[test]
    fn a_store_password_is_not_shown() {
        let shown = |url: &str| {
            format!(
                "{:?}",
                StoreConfig {
                    url: url.into(),
                    ..StoreConfig::default()
                }
            )
        };
        let s = shown("postgres://db.example/gw?sslmode=require&password=db-secret");
        assert!(!s.contains("db-secret") && s.contains("db.example"), "{s}");
        let s = shown("postgresql://gw:db-secret@db.example/gw");
        assert!(
            !s.contains("db-secret") && s.contains("@db.example/gw"),
            "{s}"
        );
        // Anything else exactly as written.
        let s = shown("sqlite://State.db");
        assert!(s.contains("\"sqlite://State.db\""), "{s}");
    }

    #[test]
    fn secrets_come_from_the_environment_as_plain_strings() {
        let c = load_str(
            "",
            &[
                ("MCP_OAUTH_GATEWAY_REGISTRATION__DCR", "token"),
                (
                    "MCP_OAUTH_GATEWAY_REGISTRATION__INITIAL_ACCESS_TOKENS",
                    r#"["from-env"]"#,
                ),
                ("MCP_OAUTH_GATEWAY_KEYS__ENCRYPTION", KEY),
            ],
        )
        .expect("load");
        assert_eq!(
            c.registration.initial_access_tokens,
            vec![Secret::from("from-env")]
        );
        assert_eq!(c.keys.encryption, vec![Secret::from(KEY)]);
    }

    #[test]
    fn unknown_auth_method_or_grant_type_is_refused_naming_the_key() {
        let e = refused(
            "[[clients]]\nclient_id = \"c\"\ntoken_endpoint_auth_method = \"private_key_jwt\"\n",
        );
        assert!(
            e.contains("key `clients[0].token_endpoint_auth_method`")
                && e.contains("private_key_jwt")
                && e.contains("`client_secret_post`"),
            "{e}"
        );
        let e = refused(
            "[[clients]]\nclient_id = \"c\"\nclient_secret = \"s\"\n\
             grant_types = [\"client_credentials\", \"implicit\"]\n",
        );
        assert!(
            e.contains("key `clients[0].grant_types[1]`")
                && e.contains("implicit")
                && e.contains("`client_credentials`"),
            "{e}"
        );
        // The file's spelling reads as before, and `Debug` shows it.
        let c = load_str(
            "[[clients]]\nclient_id = \"svc\"\nclient_secret = \"s\"\n\
             token_endpoint_auth_method = \"client_secret_post\"\n\
             grant_types = [\"client_credentials\"]\n",
            &[],
        )
        .expect("load");
        let svc = &c.clients[0];
        assert_eq!(
            svc.token_endpoint_auth_method,
            TokenEndpointAuthMethod::ClientSecretPost
        );
        assert_eq!(svc.grant_types, vec![GrantType::ClientCredentials]);
        let shown = format!("{svc:?}");
        assert!(
            shown.contains("\"client_secret_post\"") && shown.contains("[\"client_credentials\"]"),
            "{shown}"
        );
    }

    /// One mistake in each section, and in each check that spans sections: the error names
    /// the file, the key and what is wrong.
    #[test]
    fn each_section_is_checked() {
        const UP: &str = "[[upstreams]]\nname = \"a\"\nurl = \"http://127.0.0.1:9/mcp\"\n";
        const SVC: &str = "[[clients]]\nclient_id = \"c\"\nclient_secret = \"s\"\n\
                           grant_types = [\"client_credentials\"]\n";
        let cases: &[(String, &str, &str)] = &[
            (
                "[authorization]\ngrant_max_lifetime_secs = 9223372036854775807\n".into(),
                "authorization.grant_max_lifetime_secs",
                "ten years",
            ),
            (
                "[keys]\nencryption_active = \"k1\"\n".into(),
                "keys.encryption_active",
                "lists none",
            ),
            (
                "[keys]\nencryption = [\"k1\"]\n".into(),
                "keys.encryption",
                "is not `id:key`",
            ),
            (
                "[server]\nmax_connections = 0\n".into(),
                "server.max_connections",
                "at least 1",
            ),
            (
                "[server]\npublic_url = \"https://gw.example/?q\"\n".into(),
                "server.public_url",
                "must not have a query or fragment",
            ),
            (
                "[store]\nacquire_timeout_ms = 5\n".into(),
                "store.acquire_timeout_ms",
                "100 to 60000",
            ),
            (
                "[store]\nurl = \"mysql://db\"\n".into(),
                "store.url",
                "expected sqlite://PATH",
            ),
            (
                "[authorization]\ncode_ttl_secs = 601\n".into(),
                "authorization.code_ttl_secs",
                "at most 600",
            ),
            (
                "[authorization]\nrefresh_retry_window_secs = -1\n".into(),
                "authorization.refresh_retry_window_secs",
                "0 to 300",
            ),
            (
                "[authorization]\ndefault_scopes = [\"admin\"]\n".into(),
                "authorization.default_scopes",
                "`admin` is not in authorization.scopes",
            ),
            (
                "[login]\nsession_ttl_secs = 0\n".into(),
                "login.session_ttl_secs",
                "must be a positive number of seconds",
            ),
            (
                "[registration]\ndcr = \"token\"\n".into(),
                "registration.initial_access_tokens",
                "needs at least one initial access token",
            ),
            (
                "[whoami]\npath = \"mcp\"\n".into(),
                "whoami.path",
                "must start with /",
            ),
            (
                "[whoami]\nscopes = [\"admin\"]\n".into(),
                "whoami.scopes",
                "`admin` is not in authorization.scopes",
            ),
            (
                "[proxy]\nmax_request_bytes = 10\n".into(),
                "proxy.max_request_bytes",
                "must be at least 1024",
            ),
            (
                "[proxy]\nallowed_origins = [\"https://a.example/x\"]\n".into(),
                "proxy.allowed_origins[0]",
                "an origin is scheme://host[:port]",
            ),
            (
                UP.replace("\"a\"", "\"a b\""),
                "upstreams[0].name",
                "1 to 64 letters",
            ),
            (
                format!("{UP}per_user = true\n"),
                "upstreams[0].per_user",
                "are for stdio",
            ),
            (
                format!(
                    "{UP}credentials = {{ type = \"header\", name = \"Host\", value = \"v\" }}\n"
                ),
                "upstreams[0].credentials.name",
                "not a header name that can be set",
            ),
            (
                format!("{UP}[[upstreams.tools]]\ntools = [\"x*y\"]\n"),
                "upstreams[0].tools[0].tools",
                "with `*` only at the end",
            ),
            (format!("{UP}{UP}"), "upstreams[1].name", "duplicated"),
            (
                format!("{UP}path = \"/mcp\"\n"),
                "upstreams[0].path",
                "`/mcp` is used twice",
            ),
            (
                format!("{UP}scopes = [\"admin\"]\n"),
                "upstreams[0].scopes",
                "`admin` is not in authorization.scopes",
            ),
            (
                format!("{UP}[[upstreams.tools]]\ntools = [\"x\"]\nscopes = [\"admin\"]\n"),
                "upstreams[0].tools[0].scopes",
                "`admin` is not in authorization.scopes",
            ),
            (
                "[[clients]]\nclient_id = \"c\"\ntoken_endpoint_auth_method = \"none\"\n\
                 client_secret = \"s\"\nredirect_uris = [\"https://c.example/cb\"]\n"
                    .into(),
                "clients[0].client_secret",
                "has no secret",
            ),
            (
                "[[clients]]\nclient_id = \"c\"\ntoken_endpoint_auth_method = \"none\"\n\
                 grant_types = [\"client_credentials\"]\n"
                    .into(),
                "clients[0].grant_types",
                "client_credentials needs a confidential client",
            ),
            (
                "[[clients]]\nclient_id = \"c\"\nclient_secret = \"s\"\n".into(),
                "clients[0].redirect_uris",
                "authorization_code needs at least one",
            ),
            (format!("{SVC}{SVC}"), "clients[1].client_id", "duplicated"),
            (
                format!("{SVC}introspection = true\nintrospection_resources = [\"nope\"]\n"),
                "clients[0].introspection_resources[0]",
                "not `whoami`, an upstream's name, or a resource URL",
            ),
            (
                format!("{SVC}scopes = [\"admin\"]\n"),
                "clients[0].scopes",
                "`admin` is not in authorization.scopes",
            ),
        ];
        for (toml, key, message) in cases {
            let e = refused(toml);
            assert!(
                e.contains("gw.toml") && e.contains(&format!("key `{key}`: ")),
                "{toml}\n=> {e}"
            );
            assert!(e.contains(*message), "{toml}\n=> {e}");
        }
    }

    /// Every TOML example in the documentation, and the example file, is a valid
    /// configuration as it stands.
    #[test]
    fn every_example_in_the_docs_parses() {
        let mut blocks = Vec::new();
        for (doc, text) in [
            ("README.md", include_str!("../README.md")),
            (
                "docs/configuration.md",
                include_str!("../docs/configuration.md"),
            ),
        ] {
            let mut rest = text;
            while let Some(start) = rest.find("```toml\n") {
                let body = &rest[start + 8..];
                let end = body.find("```").expect("a closed block");
                blocks.push((doc, body[..end].to_string()));
                rest = &body[end..];
            }
        }
        assert!(blocks.len() >= 12, "found {}", blocks.len());
        blocks.push((
            "examples/gateway.toml",
            include_str!("../examples/gateway.toml").to_string(),
        ));
        for (doc, block) in blocks {
            if let Err(e) = load_str(&block, &[]) {
                panic!("an example in {doc} does not load: {e}\n{block}");
            }
        }
    }
}
