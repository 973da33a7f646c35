//! Starts the real gateway in-process on port 0 with its own SQLite file and a clock the test
//! moves, and drives the browser part of the flow the way a headless client would.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use mcp_oauth_gateway::Gateway;
use mcp_oauth_gateway::clock::ManualClock;
use mcp_oauth_gateway::config::Config;
use mcp_oauth_gateway::login::LocalAccounts;
use mcp_oauth_gateway::store::{self, SharedStore};
use serde_json::{Value, json};
use sha2::Digest;
use tokio::sync::oneshot;

pub const PASSWORD: &str = "correct horse battery";

pub struct TestGateway {
    pub proxy: std::sync::Arc<mcp_oauth_gateway::proxy::Proxy>,
    pub auth: std::sync::Arc<mcp_oauth_gateway::authorization::AuthorizationServer>,
    /// The issuer (public URL).
    pub base: String,
    /// Where the listener is reached, with the issuer's path.
    pub direct: String,
    pub clock: Arc<ManualClock>,
    pub store: SharedStore,
    /// The store's URL, for a second process (the CLI) on the same store.
    pub store_url: String,
    #[allow(dead_code)]
    pub accounts: LocalAccounts,
    _dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    pg_schema: Option<(String, String)>,
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some((url, schema)) = self.pg_schema.take() {
            // Detached, on a thread of its own: the test's runtime (which may still hold a
            // transaction open in that schema) must be free to finish first. What is left
            // when the process exits, scripts/test removes.
            std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    rt.block_on(async {
                        if let Ok(pool) = sqlx::PgPool::connect(&url).await {
                            let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                                .execute(&pool)
                                .await;
                        }
                    });
                }
            });
        }
    }
}

impl TestGateway {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> Self {
        Self::start_with_sources(configure, Vec::new()).await
    }

    /// A gateway with login sources beside local accounts.
    pub async fn start_with_sources(
        configure: impl FnOnce(&mut Config),
        sources: Vec<Arc<dyn mcp_oauth_gateway::login::LoginSource>>,
    ) -> Self {
        let extensions = mcp_oauth_gateway::web::Extensions {
            login_sources: sources,
            ..Default::default()
        };
        Self::start_with_extensions(configure, extensions).await
    }

    /// A gateway with what the tests plug in beside the configuration.
    pub async fn start_with_extensions(
        configure: impl FnOnce(&mut Config),
        extensions: mcp_oauth_gateway::web::Extensions,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut config = Config::default();
        config.server.listen = addr;
        config.server.public_url = Some(format!("http://{addr}"));
        config.store.url = format!("sqlite://{}", dir.path().join("gw.db").display());
        // The whole suite again on PostgreSQL: each gateway in a schema of its own.
        let mut pg_schema = None;
        if std::env::var("MCP_GATEWAY_TEST_GATEWAY_STORE").as_deref() == Ok("postgres")
            && let Some(pg) = crate::store_suite::postgres_url()
        {
            let schema = format!(
                "mog_gw_{}",
                mcp_oauth_gateway::crypto::new_id()
                    .to_ascii_lowercase()
                    .replace(['-', '_'], "")
            );
            let admin = sqlx::PgPool::connect(&pg)
                .await
                .expect("PostgreSQL reachable");
            sqlx::query(&format!("CREATE SCHEMA {schema}"))
                .execute(&admin)
                .await
                .unwrap();
            let sep = if pg.contains('?') { '&' } else { '?' };
            config.store.url = format!("{pg}{sep}options=-c%20search_path%3D{schema}");
            pg_schema = Some((pg, schema));
        }
        configure(&mut config);
        config.validate().expect("test config is valid");
        let store = store::open_with(&config.store.url, &config.store.pool())
            .await
            .expect("store");
        let clock = Arc::new(ManualClock::starting_now());
        let accounts = LocalAccounts::new(store.clone(), clock.clone(), &config.login);
        // A second instance on a shared store finds them there already.
        for user in ["alice", "bob"] {
            if let Err(e) = accounts.create(user, PASSWORD).await {
                assert!(e.contains("exists already"), "{e}");
            }
        }
        let base = config.public_url();
        let store_url = config.store.url.clone();
        let path = url::Url::parse(&base)
            .unwrap()
            .path()
            .trim_end_matches('/')
            .to_string();
        let direct = format!("http://{addr}{path}");
        let gateway = Gateway::with_extensions(config, store.clone(), clock.clone(), extensions)
            .await
            .expect("gateway");
        let proxy = gateway.app.proxy.clone();
        let auth = gateway.app.auth.clone();
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = gateway
                .serve(listener, async {
                    let _ = rx.await;
                })
                .await;
        });
        Self {
            proxy,
            auth,
            base,
            direct,
            clock,
            store,
            store_url,
            accounts,
            _dir: dir,
            shutdown: Some(tx),
            pg_schema,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.direct, path)
    }

    /// The stdio server behind the upstream `name`.
    pub fn proxy_stdio(&self, name: &str) -> std::sync::Arc<mcp_oauth_gateway::proxy::StdioServer> {
        self.proxy.stdio_server(name).expect("a stdio upstream")
    }

    pub fn now(&self) -> i64 {
        use mcp_oauth_gateway::clock::Clock;
        self.clock.now()
    }

    /// The resource identifier of the whoami endpoint.
    pub fn resource(&self) -> String {
        format!("{}/mcp", self.base)
    }

    /// A browser: keeps cookies, never follows redirects (the test reads them).
    pub fn browser() -> reqwest::Client {
        reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client")
    }

    pub fn http() -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client")
    }

    /// Registers a public client by DCR.
    pub async fn register_public(&self, redirect: &str) -> String {
        let r = Self::http()
            .post(self.url("/register"))
            .json(&json!({
                "client_name": "Test Client",
                "redirect_uris": [redirect],
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"],
            }))
            .send()
            .await
            .expect("register");
        assert_eq!(r.status(), 201);
        let v: Value = r.json().await.expect("json");
        v["client_id"].as_str().expect("client_id").to_string()
    }

    pub async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let r = Self::http()
            .post(self.url(path))
            .form(form)
            .send()
            .await
            .expect("post");
        let status = r.status().as_u16();
        let v = r.json().await.unwrap_or(Value::Null);
        (status, v)
    }
}

pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

impl Pkce {
    pub fn new() -> Self {
        let verifier = format!("v{}", "x".repeat(20)) + &uuid_like();
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(verifier.as_bytes()));
        Self {
            verifier,
            challenge,
        }
    }
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    format!(
        "{:032x}{n:08}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    )
}

/// The value of a hidden form field in a page.
pub fn hidden(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(html[start..end].to_string())
}

pub fn query_of(location: &str) -> HashMap<String, String> {
    let url = url::Url::parse(location).expect("location is a URL");
    url.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Authorization request parameters for a client.
pub fn authorize_params<'a>(
    client_id: &'a str,
    redirect: &'a str,
    pkce: &'a Pkce,
    resource: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", redirect),
        ("code_challenge", pkce.challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("state", "st-123"),
        ("resource", resource),
        ("scope", "mcp"),
    ]
}

/// Follows an authorization URL as a person would: logs in as `user`, allows, and returns
/// the final redirect (to the client).
pub async fn approve(
    browser: &reqwest::Client,
    gw: &TestGateway,
    authorize_url: &str,
    user: &str,
) -> String {
    approve_at(browser, &gw.direct, authorize_url, user).await
}

/// [`approve`] at a gateway reached at `base` (its listener, with the issuer's path).
pub async fn approve_at(
    browser: &reqwest::Client,
    base: &str,
    authorize_url: &str,
    user: &str,
) -> String {
    let r = browser.get(authorize_url).send().await.expect("authorize");
    if r.status() == 302 {
        return r.headers()["location"].to_str().expect("loc").to_string();
    }
    assert_eq!(r.status(), 200, "authorize should show a page");
    let page = r.text().await.expect("page");
    let request = hidden(&page, "request").expect("request field");
    let csrf = hidden(&page, "csrf").expect("csrf field");
    let page = if page.contains("name=\"password\"") {
        let r = browser
            .post(format!("{base}/authorize/login"))
            .form(&[
                ("request", request.as_str()),
                ("csrf", csrf.as_str()),
                ("username", user),
                ("password", PASSWORD),
            ])
            .send()
            .await
            .expect("login");
        if r.status() == 303 {
            return r.headers()["location"].to_str().expect("loc").to_string();
        }
        assert_eq!(r.status(), 200, "login should succeed");
        r.text().await.expect("consent page")
    } else {
        page
    };
    assert!(
        page.contains("Allow access?"),
        "expected the consent page: {page}"
    );
    let r = browser
        .post(format!("{base}/authorize/consent"))
        .form(&[
            ("request", request.as_str()),
            ("csrf", csrf.as_str()),
            ("decision", "allow"),
        ])
        .send()
        .await
        .expect("consent");
    assert_eq!(r.status(), 303);
    r.headers()["location"].to_str().expect("loc").to_string()
}

/// A registered public client that went through the whole flow, with its tokens.
pub struct Authorized {
    pub client_id: String,
    #[allow(dead_code)]
    pub redirect: String,
    pub access_token: String,
    pub refresh_token: String,
}

pub async fn authorize_user(gw: &TestGateway, user: &str) -> Authorized {
    authorize_for(gw, user, &gw.resource()).await
}

/// The whole flow for `user`, for the resource at `resource`.
pub async fn authorize_for(gw: &TestGateway, user: &str, resource: &str) -> Authorized {
    let redirect = "http://127.0.0.1:9999/callback".to_string();
    let client_id = gw.register_public(&redirect).await;
    let pkce = Pkce::new();
    let resource = resource.to_string();
    let params = authorize_params(&client_id, &redirect, &pkce, &resource);
    let url = url::Url::parse_with_params(&gw.url("/authorize"), &params).expect("url");
    let location = approve(&TestGateway::browser(), gw, url.as_str(), user).await;
    let q = query_of(&location);
    let code = q.get("code").expect("code").clone();
    let (status, tokens) = gw
        .post_form(
            "/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", &redirect),
                ("client_id", &client_id),
                ("code_verifier", &pkce.verifier),
                ("resource", &resource),
            ],
        )
        .await;
    assert_eq!(status, 200, "{tokens}");
    Authorized {
        client_id,
        redirect,
        access_token: tokens["access_token"].as_str().expect("at").into(),
        refresh_token: tokens["refresh_token"].as_str().expect("rt").into(),
    }
}

pub async fn call_whoami(gw: &TestGateway, token: &str) -> (u16, Value) {
    let r = TestGateway::http()
        .post(gw.url("/mcp"))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}))
        .send()
        .await
        .expect("mcp");
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// Which backend a forwarded request goes to: (request number, method, path) → index.
pub type Route = Arc<dyn Fn(usize, &http::Method, &str) -> usize + Send + Sync>;

/// A small HTTP forwarder in front of one or more gateways: a load balancer (round-robin or
/// by path) or a client-side helper (adding a bearer token). It streams both ways and logs
/// which backend served each request.
pub struct Forwarder {
    pub url: String,
    pub log: Arc<std::sync::Mutex<Vec<(String, String, usize)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Forwarder {
    /// `keep_host`: pass the client's `Host` on (a load balancer); otherwise a `Host` naming
    /// the forwarder itself is replaced by the backend's, and any other passes on unchanged.
    pub async fn start(
        backends: Vec<String>,
        route: Route,
        bearer: Option<String>,
        keep_host: bool,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, backends, route, bearer, keep_host)
    }

    /// [`Forwarder::start`] on a listener bound beforehand (so that the backends can be told
    /// its URL before they start).
    pub fn start_on(
        listener: tokio::net::TcpListener,
        backends: Vec<String>,
        route: Route,
        bearer: Option<String>,
        keep_host: bool,
    ) -> Self {
        use axum::extract::Request;
        use axum::response::IntoResponse;
        let own = listener.local_addr().unwrap().to_string();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (own2, log2) = (own.clone(), log.clone());
        let app = axum::Router::new().fallback(move |req: Request| {
            let (client, backends, route, bearer, own, log, counter) = (
                client.clone(),
                backends.clone(),
                route.clone(),
                bearer.clone(),
                own2.clone(),
                log2.clone(),
                counter.clone(),
            );
            async move {
                let (parts, body) = req.into_parts();
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let path = parts.uri.path().to_string();
                let which = route(n, &parts.method, &path) % backends.len();
                log.lock()
                    .unwrap()
                    .push((parts.method.to_string(), path, which));
                let pq = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                let mut rb = client.request(parts.method, format!("{}{pq}", backends[which]));
                for (k, v) in &parts.headers {
                    let pass_host =
                        k == "host" && (keep_host || v.to_str().is_ok_and(|h| h != own));
                    if (k != "host" && k != "content-length") || pass_host {
                        rb = rb.header(k, v);
                    }
                }
                if let Some(token) = bearer {
                    rb = rb.bearer_auth(token);
                }
                let rb = rb.body(reqwest::Body::wrap_stream(body.into_data_stream()));
                match rb.send().await {
                    Ok(resp) => {
                        let mut out = axum::http::Response::builder().status(resp.status());
                        for (k, v) in resp.headers() {
                            if k != "content-length" && k != "transfer-encoding" {
                                out = out.header(k, v);
                            }
                        }
                        out.body(axum::body::Body::from_stream(resp.bytes_stream()))
                            .unwrap()
                            .into_response()
                    }
                    Err(_) => axum::http::StatusCode::BAD_GATEWAY.into_response(),
                }
            }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{own}"),
            log,
            task,
        }
    }

    /// Every request to one backend: adds a bearer token the client cannot get itself.
    pub async fn bearer(target: String, token: String) -> Self {
        Self::start(vec![target], Arc::new(|_, _, _| 0), Some(token), false).await
    }

    /// The backends that served requests whose path starts with `prefix`.
    pub fn served(&self, prefix: &str) -> Vec<usize> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, p, _)| p.starts_with(prefix))
            .map(|(_, _, b)| *b)
            .collect()
    }
}
