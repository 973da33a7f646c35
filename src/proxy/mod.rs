//! The protected MCP proxy: a request that passed the bearer check goes to its upstream in
//! named phases — bind the session, rewrite the headers (the client's token never goes
//! upstream; the configured credential does), send, stream the answer back unbuffered —
//! and each failure becomes a clear answer rather than a hang.

mod assertion;
pub mod credentials;
pub mod health;
mod policy;
pub mod provider_token;
mod relay;
pub mod sse;
mod stdio;

pub use stdio::StdioServer;

pub use assertion::{
    KEY_ACTIVATION_DELAY_SECS, KEY_RELOAD_SECS, Signer, generate_key, reseal_signing_keys,
    signing_index, stored_form,
};
pub use credentials::{AfterUnauthorized, CredentialError, CredentialSource};
pub use policy::{InFlight, Limits, ToolDecision};

use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::authorization::token::Principal;
use crate::clock::SharedClock;
use crate::config::{Config, ProxyConfig, ToolRule};
use crate::crypto;
use crate::mcp::message;
use crate::store::{SharedStore, StoreEvent};

pub const SESSION_HEADER: &str = "mcp-session-id";

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), plus the ones the
/// gateway owns.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Addresses of the client as a proxy in front would state them: only a trusted proxy may say
/// these, and the gateway is the last one before the upstream.
const CLIENT_ADDRESS_HEADERS: &[&str] = &[
    "forwarded",
    "x-forwarded",
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
];

/// Headers with which proxies and frameworks let a request say it is another request (another
/// path or method) than the one the gateway judged.
const REWRITE_HEADERS: &[&str] = &[
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Identity headers only the gateway may set; whatever a client sends under these names is
/// dropped before anything else.
const IDENTITY_HEADERS: &[&str] = &[
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-client",
];

/// What serves a protected resource.
pub enum Backend {
    /// An MCP server inside the gateway (`whoami`; next the database tools).
    BuiltIn(std::sync::Arc<dyn crate::mcp::server::McpServer>),
    /// An MCP server over Streamable HTTP, or over the legacy HTTP+SSE transport.
    Http { target: Uri, legacy_sse: bool },
    /// A stdio server the gateway runs.
    Stdio(std::sync::Arc<StdioServer>),
}

pub struct Upstream {
    pub name: String,
    pub backend: Backend,
    /// The message path a legacy SSE upstream announced in its `endpoint` event.
    pub sse_endpoint: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    /// What goes upstream as a credential.
    pub credential: std::sync::Arc<dyn CredentialSource>,
    pub tools: Vec<ToolRule>,
    /// What the last forwarded requests saw of it.
    pub health: std::sync::Arc<health::Health>,
    /// Its series, when metrics are on.
    meters: Option<crate::observe::metrics::UpstreamMeters>,
}

impl Upstream {
    /// Its state for `/readyz` and the console: `up`, `down` or `unknown` for an HTTP
    /// upstream (from what the last requests saw); built-in and stdio servers run here.
    pub fn state(&self, seen: &health::UpstreamState) -> &'static str {
        match self.backend {
            Backend::Http { .. } => seen.state(),
            Backend::BuiltIn(_) => "built_in",
            Backend::Stdio(_) => "stdio",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the MCP session does not exist")]
    UnknownSession,
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the request body could not be read")]
    BadBody,
    #[error("upstream `{0}` could not be reached")]
    Unreachable(String),
    #[error("upstream `{0}` did not answer in time")]
    Timeout(String),
    #[error("upstream `{0}` is restarting after a failure")]
    Restarting(String, u64),
    #[error("this endpoint accepts {0} only")]
    MethodNotAllowed(&'static str),
    #[error("the session store is unavailable")]
    Unavailable,
    #[error("calling tool `{0}` is not allowed")]
    ToolDenied(String),
    #[error("this tool needs more scopes")]
    InsufficientScope(Vec<String>),
    /// The body is not one unambiguous JSON-RPC message or batch.
    #[error(transparent)]
    Message(#[from] crate::mcp::message::MessageError),
    #[error("the request body did not arrive in time")]
    SlowBody,
    /// The body is not declared as plain UTF-8 JSON.
    #[error("{0}")]
    UnsupportedMedia(String),
    /// A header or parameter is repeated or malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The MCP headers disagree with the body.
    #[error(transparent)]
    HeaderMismatch(#[from] crate::mcp::message::HeaderMismatch),
    /// No credential could be put on the request.
    #[error(transparent)]
    Credential(CredentialError),
    /// The person must connect at `url` first; `declared`: whether this client said at
    /// `initialize` that it opens URLs for the user (URL-mode elicitation), when known.
    #[error("{message}")]
    ConnectRequired {
        url: String,
        message: String,
        declared: Option<bool>,
    },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnknownSession => StatusCode::NOT_FOUND,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BadBody => StatusCode::BAD_REQUEST,
            Self::Unreachable(_) => StatusCode::BAD_GATEWAY,
            Self::Restarting(..) => StatusCode::SERVICE_UNAVAILABLE,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            // A JSON-RPC error answer to the call, as the upstream itself would give.
            Self::ToolDenied(_) => StatusCode::OK,
            Self::InsufficientScope(_) => StatusCode::FORBIDDEN,
            Self::SlowBody => StatusCode::REQUEST_TIMEOUT,
            Self::UnsupportedMedia(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Message(_) | Self::BadRequest(_) | Self::HeaderMismatch(_) => {
                StatusCode::BAD_REQUEST
            }
            // A JSON-RPC error that says where to go, read like any answer to the call.
            Self::Credential(CredentialError::ConnectFirst { .. })
            | Self::ConnectRequired { .. } => StatusCode::OK,
            Self::Credential(CredentialError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

pub struct Proxy {
    client: Client<HttpsConnector<HttpConnector>, Body>,
    upstreams: Vec<Upstream>,
    settings: ProxyConfig,
    /// How long a client may take to send its request body.
    body_timeout: Duration,
    store: SharedStore,
    clock: SharedClock,
    pub limits: std::sync::Arc<Limits>,
    pub signer: std::sync::Arc<Signer>,
    /// Session bindings confirmed in the store, `upstream\nsession hash` → owner, so a busy
    /// session is not a store read per call. Only confirmed bindings are kept, and a binding
    /// never changes owner, so the cache can only be stale about a session that has ended
    /// (on another instance), for at most its lifetime — and then the upstream refuses it.
    sessions_seen: std::sync::Arc<crate::cache::TtlCache<String>>,
    /// Per (owner, upstream, session): whether the client declared URL-mode elicitation.
    url_elicitation: crate::cache::TtlCache<bool>,
}

/// How long a confirmed session binding is trusted without asking the store.
const SESSION_CACHE_SECS: i64 = 5;
const SESSION_CACHE_MAX: usize = 20_000;

/// Whose session a request belongs to: the user, or for a client acting for itself, the client.
pub fn owner_of(p: &Principal) -> String {
    match &p.user_id {
        Some(u) => format!("user:{u}"),
        None => format!("client:{}", p.client_id),
    }
}

fn session_cache_key(upstream: &str, hash: &str) -> String {
    format!("{upstream}\n{hash}")
}

impl Proxy {
    pub fn new(
        config: &Config,
        store: SharedStore,
        clock: SharedClock,
        signer: std::sync::Arc<Signer>,
        credential_sources: Vec<(String, std::sync::Arc<dyn CredentialSource>)>,
        built_ins: Vec<(String, std::sync::Arc<dyn crate::mcp::server::McpServer>)>,
        observer: crate::observe::SharedObserver,
    ) -> Result<Self, String> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(config.proxy.connect_timeout_secs)));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .try_with_platform_verifier()
            .map_err(|e| format!("TLS for upstreams: {e}"))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        let mut upstreams = config
            .upstreams
            .iter()
            .map(|u| {
                let built_in = built_ins
                    .iter()
                    .find(|(name, _)| *name == u.name)
                    .map(|(_, server)| server.clone());
                let backend = match (&u.command, &u.url) {
                    _ if u.dbtools.is_some() => Backend::BuiltIn(built_in.ok_or_else(|| {
                        format!("upstreams `{}`: its database tools are not set up", u.name)
                    })?),
                    (Some(cmd), _) => Backend::Stdio(std::sync::Arc::new(StdioServer::new(
                        u.name.clone(),
                        cmd.clone(),
                        u.env
                            .iter()
                            .map(|(k, v)| (k.clone(), v.expose().to_owned()))
                            .collect(),
                        u.per_user,
                        u.per_user_env.clone(),
                        u.idle_secs,
                        Duration::from_secs(config.proxy.idle_timeout_secs),
                        clock.clone(),
                    ))),
                    (None, Some(url)) => Backend::Http {
                        target: url
                            .parse::<Uri>()
                            .map_err(|e| format!("upstreams `{}`: url: {e}", u.name))?,
                        legacy_sse: u.transport == crate::config::UpstreamTransport::Sse,
                    },
                    (None, None) => {
                        return Err(format!("upstreams `{}`: neither url nor command", u.name));
                    }
                };
                let audience = match &backend {
                    Backend::Http { target, .. } => target.to_string(),
                    _ => String::new(),
                };
                Ok(Upstream {
                    name: u.name.clone(),
                    backend,
                    sse_endpoint: Default::default(),
                    credential: credentials::from_config(
                        &u.credentials,
                        &u.name,
                        &audience,
                        &signer,
                        &clock,
                        &config.public_url(),
                    )?,
                    tools: u.tools.clone(),
                    health: Default::default(),
                    meters: observer.metrics().map(|m| m.upstream(&u.name)),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        for (name, source) in credential_sources {
            let u = upstreams
                .iter_mut()
                .find(|u| u.name == name)
                .ok_or_else(|| format!("a credential source names no upstream `{name}`"))?;
            u.credential = source;
        }
        // Built-in servers come after the configured upstreams (the resources' order).
        if config.whoami.enabled {
            upstreams.push(Upstream {
                name: "whoami".into(),
                backend: Backend::BuiltIn(
                    std::sync::Arc::new(crate::mcp::whoami::Whoami::server()),
                ),
                sse_endpoint: Default::default(),
                credential: std::sync::Arc::new(credentials::NoCredential),
                tools: Vec::new(),
                health: Default::default(),
                meters: observer.metrics().map(|m| m.upstream("whoami")),
            });
        }
        let sessions_seen = std::sync::Arc::new(crate::cache::TtlCache::new(
            SESSION_CACHE_SECS,
            SESSION_CACHE_MAX,
        ));
        {
            // A removed user's or client's sessions are not theirs to resume anywhere.
            let seen = sessions_seen.clone();
            store.on_event(std::sync::Arc::new(move |event| match event {
                StoreEvent::UserRemoved { user } => {
                    let owner = format!("user:{user}");
                    seen.remove_where(|o| *o == owner);
                }
                StoreEvent::ClientRemoved { client } => {
                    let owner = format!("client:{client}");
                    seen.remove_where(|o| *o == owner);
                }
                StoreEvent::Resync => seen.clear(),
                _ => {}
            }));
        }
        Ok(Self {
            client,
            upstreams,
            limits: Limits::new(&config.proxy),
            signer,
            sessions_seen,
            url_elicitation: crate::cache::TtlCache::new(24 * 3600, 100_000),
            settings: config.proxy.clone(),
            body_timeout: Duration::from_secs(config.server.body_read_timeout_secs),
            store,
            clock,
        })
    }

    /// Every upstream, in configuration order.
    pub fn upstreams(&self) -> &[Upstream] {
        &self.upstreams
    }

    /// The session-binding cache's hits and misses.
    pub fn session_cache_stats(&self) -> std::sync::Arc<crate::observe::metrics::CacheStats> {
        self.sessions_seen.stats()
    }

    pub fn upstream(&self, index: usize) -> Option<&Upstream> {
        self.upstreams.get(index)
    }

    pub fn max_request_bytes(&self) -> usize {
        self.settings.max_request_bytes
    }

    /// Forwards one request of `principal` to `upstream` and relays the answer.
    /// On failure, the JSON-RPC id of the request comes with the error, to answer in kind.
    pub async fn forward(
        &self,
        upstream: &Upstream,
        principal: &Principal,
        req: Request<Body>,
        mut in_flight: InFlight,
    ) -> Result<Response<Body>, (ProxyError, Value)> {
        if let Some(m) = &upstream.meters {
            in_flight.track(m.in_flight.clone());
        }
        let (parts, body) = req.into_parts();
        // Phase: read the (small, JSON-RPC) request body, bounded, and read it once,
        // strictly: every later phase judges this reading, and the upstream gets the bytes
        // it was taken from.
        let body = read_bounded(body, self.settings.max_request_bytes, self.body_timeout)
            .await
            .map_err(|e| (e, Value::Null))?;
        let message = if body.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            message::check_body_encoding(&parts.headers)
                .map_err(|e| (ProxyError::UnsupportedMedia(e), Value::Null))?;
            Some(message::read(&body).map_err(|e| (ProxyError::Message(e), Value::Null))?)
        };
        let id = message
            .as_ref()
            .map_or(Value::Null, message::Body::reply_id);
        let body = without_gateway_state(body, message.as_ref());
        // What an `initialize` declares (URL-mode elicitation), and the session it belongs to
        // afterwards: how a later "connect first" is answered.
        let initialize = message
            .as_ref()
            .and_then(message::Body::single)
            .is_some_and(|m| m.method.as_deref() == Some("initialize"));
        let declared_now = initialize.then(|| declares_url_elicitation(&body));
        let session_key = |sid: &str| format!("{}\n{}\n{sid}", owner_of(principal), upstream.name);
        let asked_session = parts
            .headers
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let result = self
            .forward_read(
                upstream,
                principal,
                parts,
                body,
                message.as_ref(),
                in_flight,
            )
            .await;
        match result {
            Ok(resp) => {
                if let Some(declared) = declared_now
                    && let Some(sid) = resp
                        .headers()
                        .get(SESSION_HEADER)
                        .and_then(|v| v.to_str().ok())
                {
                    self.url_elicitation
                        .put(session_key(sid), declared, self.clock.now());
                }
                Ok(resp)
            }
            Err(ProxyError::Credential(CredentialError::ConnectFirst { url, message })) => {
                let declared = declared_now.or_else(|| {
                    asked_session.and_then(|sid| {
                        self.url_elicitation
                            .get(&session_key(&sid), self.clock.now())
                    })
                });
                Err((
                    ProxyError::ConnectRequired {
                        url,
                        message,
                        declared,
                    },
                    id,
                ))
            }
            Err(e) => Err((e, id)),
        }
    }

    async fn forward_read(
        &self,
        upstream: &Upstream,
        principal: &Principal,
        parts: http::request::Parts,
        body: Bytes,
        message: Option<&message::Body>,
        in_flight: InFlight,
    ) -> Result<Response<Body>, ProxyError> {
        // Phase: headers that must be single, and agree with the body.
        if parts
            .headers
            .get_all(SESSION_HEADER)
            .iter()
            .nth(1)
            .is_some()
        {
            return Err(ProxyError::BadRequest(
                "more than one Mcp-Session-Id header".into(),
            ));
        }
        message::check_headers(&parts.headers, message)?;
        // Phase: tool-level authorization.
        match policy::check_tool_calls(&upstream.tools, message, principal) {
            ToolDecision::Allow => {}
            ToolDecision::Deny(name) => return Err(ProxyError::ToolDenied(name)),
            ToolDecision::NeedScopes(s) => return Err(ProxyError::InsufficientScope(s)),
        }
        let owner = owner_of(principal);
        let target = match &upstream.backend {
            // A built-in server answers here and now, as a whole.
            Backend::BuiltIn(server) => {
                if parts.method != Method::POST {
                    return Err(ProxyError::MethodNotAllowed("POST"));
                }
                let answer = server.answer(principal, &parts.headers, &body).await;
                drop(in_flight);
                return Ok(match answer.body {
                    // Errors too are sent as application/json: clients of the stateless
                    // revision read an error body only under that media type.
                    Some(v) => {
                        let mut resp = Response::new(Body::from(v.to_string()));
                        *resp.status_mut() = answer.status;
                        resp.headers_mut().insert(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("application/json"),
                        );
                        resp
                    }
                    None => {
                        let mut resp = Response::new(Body::empty());
                        *resp.status_mut() = answer.status;
                        resp
                    }
                });
            }
            // A stdio server: bridged here, with no session of its own.
            Backend::Stdio(stdio) => {
                let env = upstream
                    .credential
                    .environment(principal)
                    .await
                    .map_err(ProxyError::Credential)?;
                return stdio
                    .handle(
                        &parts.method,
                        &parts.headers,
                        &body,
                        principal,
                        env,
                        in_flight,
                    )
                    .await
                    .map_err(|e| match e {
                        stdio::StdioError::BackingOff(secs) => {
                            ProxyError::Restarting(upstream.name.clone(), secs)
                        }
                        stdio::StdioError::Start(_) => {
                            ProxyError::Unreachable(upstream.name.clone())
                        }
                    });
            }
            Backend::Http {
                target,
                legacy_sse: true,
            } => {
                return self
                    .forward_legacy(upstream, target, principal, parts, body, in_flight)
                    .await;
            }
            Backend::Http { target, .. } => target,
        };
        // Phase: the session must belong to this principal.
        let session = parts
            .headers
            .get(SESSION_HEADER)
            .map(|v| crypto::hash_secret(&String::from_utf8_lossy(v.as_bytes())));
        let now = self.clock.now();
        let session_expiry = now + self.settings.session_ttl_secs;
        if let Some(hash) = &session
            && !self
                .session_belongs_to(&upstream.name, hash, &owner, now, session_expiry)
                .await?
        {
            // Someone else's session looks exactly like no session at all.
            return Err(ProxyError::UnknownSession);
        }
        let method = parts.method.clone();
        let (mut rparts, rbody) = self
            .send(
                upstream,
                principal,
                parts.method,
                self.target_uri(target, &parts.uri),
                &parts.headers,
                body,
            )
            .await?;
        // Phase: keep the session table in step with the upstream.
        if let Some(sid) = rparts.headers.get(SESSION_HEADER)
            && session.is_none()
            && rparts.status.is_success()
        {
            let hash = crypto::hash_secret(&String::from_utf8_lossy(sid.as_bytes()));
            self.store
                .bind_session(&upstream.name, &hash, &owner, now, session_expiry)
                .await
                .map_err(|_| ProxyError::Unavailable)?;
        }
        if let Some(hash) = &session
            && ((method == Method::DELETE && rparts.status.is_success())
                || rparts.status == StatusCode::NOT_FOUND)
        {
            self.sessions_seen
                .remove(&session_cache_key(&upstream.name, hash));
            let _ = self.store.unbind_session(&upstream.name, hash).await;
        }
        rparts.headers = response_headers(&rparts.headers);
        Ok(self.stream_back(upstream, rparts, rbody, in_flight, None))
    }

    /// Whether the session (its hash) on `upstream` was opened by `owner`; confirmed
    /// bindings are cached for [`SESSION_CACHE_SECS`], which also bounds how often a busy
    /// session's expiry is pushed back in the store.
    async fn session_belongs_to(
        &self,
        upstream: &str,
        hash: &str,
        owner: &str,
        now: crate::clock::Timestamp,
        expiry: crate::clock::Timestamp,
    ) -> Result<bool, ProxyError> {
        let key = session_cache_key(upstream, hash);
        if let Some(cached) = self.sessions_seen.get(&key, now) {
            return Ok(cached == owner);
        }
        let generation = self.sessions_seen.generation();
        let bound = self
            .store
            .session_owner(upstream, hash, now, expiry)
            .await
            .map_err(|_| ProxyError::Unavailable)?;
        match bound {
            Some(bound) => {
                let mine = bound == owner;
                self.sessions_seen
                    .put_unless_removed_since(generation, key, bound, now);
                Ok(mine)
            }
            None => Ok(false),
        }
    }

    /// Phases rewrite and send: the client's headers cleaned, the credential added, and a
    /// bound on the wait for the response headers.
    ///
    /// Then the response phase: the upstream's status is seen before anything is relayed,
    /// and a `401` lets the credential source renew its credential for one more try.
    async fn send(
        &self,
        upstream: &Upstream,
        principal: &Principal,
        method: Method,
        uri: Uri,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<(http::response::Parts, hyper::body::Incoming), ProxyError> {
        let (mut parts, incoming, sent) = self
            .send_once(
                upstream,
                principal,
                method.clone(),
                uri.clone(),
                headers,
                body.clone(),
            )
            .await?;
        if parts.status == StatusCode::UNAUTHORIZED {
            let scope = bearer_challenge(&parts.headers, None).and_then(|c| c);
            match upstream
                .credential
                .unauthorized(principal, &sent, scope.as_deref())
                .await
            {
                AfterUnauthorized::Retry => {
                    drop(incoming);
                    let (parts, incoming, _) = self
                        .send_once(upstream, principal, method, uri, headers, body)
                        .await?;
                    if parts.status == StatusCode::UNAUTHORIZED
                        && let Some(e) = upstream.credential.still_unauthorized(principal).await
                    {
                        return Err(ProxyError::Credential(e));
                    }
                    return Ok((parts, incoming));
                }
                AfterUnauthorized::Fail(e) => return Err(ProxyError::Credential(e)),
                AfterUnauthorized::GiveUp => {}
            }
        }
        if parts.status == StatusCode::FORBIDDEN
            && let Some(scope) = bearer_challenge(&parts.headers, Some("insufficient_scope"))
            && let Some(e) = upstream
                .credential
                .insufficient_scope(principal, scope.as_deref())
                .await
        {
            return Err(ProxyError::Credential(e));
        }
        // The upstream's own challenge names its own authorization server: relayed, it would
        // send the MCP client off to a sign-in that is the gateway's business.
        if matches!(
            parts.status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ) && upstream.credential.hides_challenge()
        {
            parts.headers.remove(header::WWW_AUTHENTICATE);
        }
        Ok((parts, incoming))
    }

    async fn send_once(
        &self,
        upstream: &Upstream,
        principal: &Principal,
        method: Method,
        uri: Uri,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<(http::response::Parts, hyper::body::Incoming, HeaderMap), ProxyError> {
        let authority = uri.authority().cloned();
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(h) = builder.headers_mut() {
            *h = forwardable_headers(headers, upstream.credential.header());
            upstream
                .credential
                .apply(principal, h)
                .await
                .map_err(ProxyError::Credential)?;
            if let Some(a) = authority
                && let Ok(v) = HeaderValue::from_str(a.as_str())
            {
                h.insert(header::HOST, v);
            }
            // Relayed byte for byte, so that keep-alives can be added to SSE streams.
            h.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        let upstream_req = builder
            .body(Body::from(body))
            .map_err(|_| ProxyError::BadBody)?;
        // The credential as it went, for the response phase (a reference-counted copy).
        let mut sent = HeaderMap::new();
        if let Some(v) = upstream_req.headers().get(header::AUTHORIZATION) {
            sent.insert(header::AUTHORIZATION, v.clone());
        }
        let wait = Duration::from_secs(self.settings.header_timeout_secs);
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(wait, self.client.request(upstream_req)).await;
        let took = started.elapsed();
        let class = |i: usize| {
            if let Some(m) = &upstream.meters {
                m.responses[i].inc();
            }
        };
        match answer {
            Err(_) => {
                let e = ProxyError::Timeout(upstream.name.clone());
                upstream.health.failed(self.clock.now(), &e.to_string());
                class(5);
                Err(e)
            }
            Ok(Err(e)) => {
                tracing::warn!(upstream = %upstream.name, error = %e, "upstream request failed");
                let e = ProxyError::Unreachable(upstream.name.clone());
                upstream.health.failed(self.clock.now(), &e.to_string());
                class(5);
                Err(e)
            }
            Ok(Ok(r)) => {
                let (parts, body) = r.into_parts();
                upstream.health.answered(
                    self.clock.now(),
                    parts.status.as_u16(),
                    took.as_millis() as u64,
                );
                if let Some(m) = &upstream.meters {
                    m.duration.observe(took.as_secs_f64());
                }
                class(match parts.status.as_u16() {
                    100..=199 => 0,
                    200..=299 => 1,
                    300..=399 => 2,
                    400..=499 => 3,
                    _ => 4,
                });
                Ok((parts, body, sent))
            }
        }
    }

    /// Phase stream back: unbuffered, with an idle bound and SSE keep-alives.
    fn stream_back(
        &self,
        upstream: &Upstream,
        mut rparts: http::response::Parts,
        rbody: hyper::body::Incoming,
        mut in_flight: InFlight,
        endpoint: Option<relay::EndpointRewrite>,
    ) -> Response<Body> {
        let is_sse = rparts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if is_sse {
            if let Some(m) = &upstream.meters {
                in_flight.track(m.sse.clone());
            }
            rparts.headers.insert(
                HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            );
        }
        let body = relay::relay(
            rbody,
            is_sse,
            Duration::from_secs(self.settings.idle_timeout_secs),
            Duration::from_secs(self.settings.sse_keepalive_secs),
            in_flight,
            endpoint.filter(|_| is_sse),
        );
        Response::from_parts(rparts, body)
    }

    /// The legacy HTTP+SSE transport (2024-11-05): a GET event stream whose first event names
    /// the endpoint to POST messages to. The gateway rewrites that endpoint to its own
    /// `<path>/messages`, binds the upstream's sessionId to the user, and forwards each POST
    /// to the upstream's real endpoint.
    async fn forward_legacy(
        &self,
        upstream: &Upstream,
        target: &Uri,
        principal: &Principal,
        parts: http::request::Parts,
        body: Bytes,
        in_flight: InFlight,
    ) -> Result<Response<Body>, ProxyError> {
        let owner = owner_of(principal);
        let now = self.clock.now();
        let expiry = now + self.settings.session_ttl_secs;
        let path = parts.uri.path().to_string();
        if path.ends_with("/messages") {
            if parts.method != Method::POST {
                return Err(ProxyError::MethodNotAllowed("POST"));
            }
            let (key, sid) = legacy_session_param(parts.uri.query())?;
            let hash = crypto::hash_secret(&format!("sse:{sid}"));
            if !self
                .session_belongs_to(&upstream.name, &hash, &owner, now, expiry)
                .await?
            {
                return Err(ProxyError::UnknownSession);
            }
            let upstream_path = upstream
                .sse_endpoint
                .lock()
                .ok()
                .and_then(|p| p.clone())
                .ok_or(ProxyError::UnknownSession)?;
            let base = format!(
                "{}://{}",
                target.scheme_str().unwrap_or("http"),
                target.authority().map(|a| a.as_str()).unwrap_or("")
            );
            // Only the parameter that was checked goes upstream, under the upstream's name.
            let query: String = form_urlencoded::Serializer::new(String::new())
                .append_pair(key, &sid)
                .finish();
            let uri: Uri = format!("{base}{upstream_path}?{query}")
                .parse()
                .map_err(|_| ProxyError::BadBody)?;
            let (mut rparts, rbody) = self
                .send(upstream, principal, parts.method, uri, &parts.headers, body)
                .await?;
            rparts.headers = response_headers(&rparts.headers);
            return Ok(self.stream_back(upstream, rparts, rbody, in_flight, None));
        }
        if parts.method != Method::GET {
            return Err(ProxyError::MethodNotAllowed("GET"));
        }
        let (mut rparts, rbody) = self
            .send(
                upstream,
                principal,
                Method::GET,
                target.clone(),
                &parts.headers,
                body,
            )
            .await?;
        rparts.headers = response_headers(&rparts.headers);
        // The first `endpoint` event: learn the upstream's message path, bind its sessionId to
        // this user, and point the client at the gateway instead.
        let store = self.store.clone();
        let name = upstream.name.clone();
        let learned = upstream.sse_endpoint.clone();
        let target = target.clone();
        let ours = format!("{path}/messages");
        let rewrite: relay::EndpointRewrite = Box::new(move |data: String| {
            Box::pin(async move {
                let base = url::Url::parse(&target.to_string()).ok()?;
                let endpoint = base.join(data.trim()).ok()?;
                let sid = endpoint
                    .query_pairs()
                    .find(|(k, _)| LEGACY_SESSION_PARAMS.contains(&k.as_ref()))
                    .map(|(_, v)| v.into_owned())?;
                store
                    .bind_session(
                        &name,
                        &crypto::hash_secret(&format!("sse:{sid}")),
                        &owner,
                        now,
                        expiry,
                    )
                    .await
                    .ok()?;
                if let Ok(mut l) = learned.lock() {
                    *l = Some(endpoint.path().to_string());
                }
                Some(match endpoint.query() {
                    Some(q) => format!("{ours}?{q}"),
                    None => ours,
                })
            })
        });
        Ok(self.stream_back(upstream, rparts, rbody, in_flight, Some(rewrite)))
    }

    fn target_uri(&self, target: &Uri, incoming: &Uri) -> Uri {
        match incoming.query() {
            None => target.clone(),
            Some(q) => {
                let base = target.to_string();
                let sep = if base.contains('?') { '&' } else { '?' };
                format!("{base}{sep}{q}")
                    .parse()
                    .unwrap_or_else(|_| target.clone())
            }
        }
    }

    pub fn stdio_server(&self, name: &str) -> Option<std::sync::Arc<StdioServer>> {
        self.upstreams
            .iter()
            .find(|u| u.name == name)
            .and_then(|u| match &u.backend {
                Backend::Stdio(s) => Some(s.clone()),
                _ => None,
            })
    }

    /// Stops idle stdio servers; run periodically.
    pub async fn reap_idle(&self) {
        for u in &self.upstreams {
            if let Backend::Stdio(s) = &u.backend {
                s.reap_idle().await;
            }
        }
    }
}

/// The legacy transport's session parameter: `sessionId` (TypeScript SDK) or `session_id`
/// (Python SDK).
const LEGACY_SESSION_PARAMS: &[&str] = &["sessionId", "session_id"];

/// The one session parameter of a legacy message POST, and its name. A repeated parameter
/// (or both spellings) is refused: the gateway must check the very value that goes upstream.
fn legacy_session_param(query: Option<&str>) -> Result<(&'static str, String), ProxyError> {
    let mut found: Option<(&'static str, String)> = None;
    let mut names = std::collections::HashSet::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if !names.insert(k.clone()) {
            return Err(ProxyError::BadRequest(
                "a query parameter is repeated".into(),
            ));
        }
        if let Some(name) = LEGACY_SESSION_PARAMS.iter().find(|n| **n == k) {
            if found.is_some() {
                return Err(ProxyError::BadRequest(
                    "the session is named twice in the query".into(),
                ));
            }
            found = Some((name, v.into_owned()));
        }
    }
    found.ok_or(ProxyError::UnknownSession)
}

async fn read_bounded(body: Body, max: usize, wait: Duration) -> Result<Bytes, ProxyError> {
    // A body sent a byte at a time must not hold the connection and the user's in-flight
    // slot for ever.
    let Ok(read) = tokio::time::timeout(wait, axum::body::to_bytes(body, max)).await else {
        return Err(ProxyError::SlowBody);
    };
    match read {
        Ok(b) => Ok(b),
        Err(e) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            Err(if too_large {
                ProxyError::TooLarge(max)
            } else {
                ProxyError::BadBody
            })
        }
    }
}

fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect()
}

/// Whether a client's header name is one the gateway sets, reserves or drops (names are
/// already lower case). Every name with an `_` is dropped, as nginx does by default: CGI,
/// WSGI and other servers turn `_` and `-` into the same variable, so `X_Forwarded_User` or
/// `Mcp_Session_Id` would reach an upstream as the header the gateway set or checked.
fn reserved_header(name: &str, credential: Option<&str>) -> bool {
    name.contains('_')
        || HOP_BY_HOP.contains(&name)
        || IDENTITY_HEADERS.contains(&name)
        || CLIENT_ADDRESS_HEADERS.contains(&name)
        || REWRITE_HEADERS.contains(&name)
        || name.starts_with("x-forwarded-")
        || matches!(name, "authorization" | "cookie" | "host" | "content-length")
        || credential.is_some_and(|c| c.eq_ignore_ascii_case(name))
}

/// The client's headers that may travel upstream. `credential` is the header name the
/// upstream's configured credential uses, if not `Authorization`.
fn forwardable_headers(incoming: &HeaderMap, credential: Option<&str>) -> HeaderMap {
    let listed = connection_listed(incoming);
    // Room for the credential and Host added next, so the map is not regrown per request.
    let mut out = HeaderMap::with_capacity(incoming.len() + 4);
    for (name, value) in incoming {
        let n = name.as_str();
        let dropped = reserved_header(n, credential) || listed.iter().any(|l| l == n);
        if !dropped {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The upstream's headers that may travel back to the client.
fn response_headers(incoming: &HeaderMap) -> HeaderMap {
    let listed = connection_listed(incoming);
    // Room for the CORS headers added on the way out.
    let mut out = HeaderMap::with_capacity(incoming.len() + 4);
    for (name, value) in incoming {
        let n = name.as_str();
        // An upstream must not set cookies on the gateway's origin (its session cookies).
        let dropped = HOP_BY_HOP.contains(&n) || listed.iter().any(|l| l == n) || n == "set-cookie";
        if !dropped {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Whether an `initialize` body declares URL-mode elicitation
/// (`params.capabilities.elicitation.url`).
fn declares_url_elicitation(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body).is_ok_and(|v| {
        v.pointer("/params/capabilities/elicitation/url")
            .is_some_and(Value::is_object)
    })
}

/// The `requestState` the gateway gives a 2026-07-28 client that must connect first (an
/// `InputRequiredResult`): the client sends it back on its retry, with its `inputResponses`.
pub const GATEWAY_REQUEST_STATE: &str = "mcp-oauth-gateway/connect:";

/// A retried request carrying the gateway's own `requestState` goes upstream without it and
/// without the `inputResponses` that answered the gateway: the upstream never issued them.
/// Every other value is kept byte for byte (numbers are not re-read).
fn without_gateway_state(body: Bytes, message: Option<&message::Body>) -> Bytes {
    type Object = std::collections::BTreeMap<String, Box<serde_json::value::RawValue>>;
    let request = message
        .and_then(message::Body::single)
        .is_some_and(|m| m.method.is_some() && !m.is_response);
    let marker = GATEWAY_REQUEST_STATE.as_bytes();
    if !request || !body.windows(marker.len()).any(|w| w == marker) {
        return body;
    }
    let Ok(mut top) = serde_json::from_slice::<Object>(&body) else {
        return body;
    };
    let Some(Ok(mut params)) = top
        .get("params")
        .map(|p| serde_json::from_str::<Object>(p.get()))
    else {
        return body;
    };
    let ours = params
        .get("requestState")
        .and_then(|s| serde_json::from_str::<String>(s.get()).ok())
        .is_some_and(|s| s.starts_with(GATEWAY_REQUEST_STATE));
    if !ours {
        return body;
    }
    params.remove("requestState");
    params.remove("inputResponses");
    let rebuilt = serde_json::value::to_raw_value(&params)
        .map(|p| {
            top.insert("params".into(), p);
            top
        })
        .and_then(|t| serde_json::to_vec(&t));
    rebuilt.map(Bytes::from).unwrap_or(body)
}

/// The scope of an upstream's Bearer challenge (RFC 6750 §3), when there is one with the
/// error `error` (any, when `None`): `Some(None)` for a challenge without a scope.
fn bearer_challenge(headers: &HeaderMap, error: Option<&str>) -> Option<Option<String>> {
    headers
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| crate::web::challenge::parse(v).ok())
        .flatten()
        .find(|c| {
            c.scheme.eq_ignore_ascii_case("bearer")
                && error.is_none_or(|e| c.param("error") == Some(e))
        })
        .map(|c| c.param("scope").map(str::to_string))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_gateways_request_state_is_taken_off_a_retried_call_and_nothing_else() {
        let read = |b: &[u8]| crate::mcp::message::read(b).unwrap();
        let retried = br#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"t","arguments":{"n":123456789012345678901234567890,"f":0.1},"requestState":"mcp-oauth-gateway/connect:up","inputResponses":{"connect":{"action":"accept"}}}}"#;
        let out =
            super::without_gateway_state(bytes::Bytes::from_static(retried), Some(&read(retried)));
        let text = std::str::from_utf8(&out).unwrap();
        assert!(
            !text.contains("requestState") && !text.contains("inputResponses"),
            "{text}"
        );
        assert!(
            text.contains(r#""n":123456789012345678901234567890"#),
            "{text}"
        );
        assert!(text.contains(r#""f":0.1"#), "{text}");
        // Another server's state, or none: the bytes are untouched.
        for keep in [
            &br#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"t","requestState":"theirs"}}"#[..],
            &br#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"mcp-oauth-gateway/connect:x"}}"#[..],
        ] {
            let out = super::without_gateway_state(bytes::Bytes::copy_from_slice(keep), Some(&read(keep)));
            assert_eq!(&out[..], keep);
        }
    }

    use super::*;

    #[test]
    fn client_credentials_and_hop_headers_never_go_upstream() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer mog_at_secret"),
            ("cookie", "mog_session=x"),
            ("x-forwarded-user", "admin"),
            ("x-forwarded-email", "admin@example.com"),
            ("x_forwarded_user", "root"),
            ("x-forwarded_groups", "admins"),
            ("x_real_ip", "10.0.0.1"),
            ("true-client-ip", "10.0.0.1"),
            ("forwarded", "for=10.0.0.1"),
            ("x_api_key", "client-chosen"),
            ("mcp_session_id", "other"),
            ("mcp_method", "tools/list"),
            ("x-original-url", "/admin"),
            ("cf-connecting-ip", "10.0.0.1"),
            ("connection", "keep-alive, x-custom"),
            ("x-custom", "1"),
            ("te", "trailers"),
            ("mcp-session-id", "abc"),
            ("mcp-protocol-version", "2025-06-18"),
            ("last-event-id", "7"),
            ("accept", "application/json, text/event-stream"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let out = forwardable_headers(&h, Some("x-api-key"));
        for gone in [
            "authorization",
            "cookie",
            "x-forwarded-user",
            "x-forwarded-email",
            "x_forwarded_user",
            "x-forwarded_groups",
            "x_real_ip",
            "true-client-ip",
            "forwarded",
            "x_api_key",
            "mcp_session_id",
            "mcp_method",
            "x-original-url",
            "cf-connecting-ip",
            "connection",
            "x-custom",
            "te",
        ] {
            assert!(!out.contains_key(gone), "{gone}");
        }
        for kept in [
            "mcp-session-id",
            "mcp-protocol-version",
            "last-event-id",
            "accept",
        ] {
            assert!(out.contains_key(kept), "{kept}");
        }
    }
}
