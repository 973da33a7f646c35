//! The broker end to end: a real OAuth-protected MCP server built from the TypeScript SDK's
//! own authorization-server router and bearer middleware (`tests/js/oauth-upstream.mjs`),
//! people connecting their own accounts through the gateway's pages, calls going out with
//! each person's own upstream token, refresh once under concurrency (one instance and two on
//! one store), reconnect when the upstream stops accepting, disconnect with revocation, and
//! the refusals: another browser's callback, a replayed or forged way back, a wrong `iss`,
//! form posts without their token.

use serde_json::{Value, json};

use crate::support::{PASSWORD, TestGateway, authorize_for, hidden};

/// One key for every instance on a shared store (32 zero bytes, base64): a test's.
const SHARED_KEY: &str = "brk1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

pub struct Upstream {
    _child: tokio::process::Child,
    pub url: String,
    auth: String,
}

impl Upstream {
    pub async fn start(env: &[(&str, &str)]) -> Option<Self> {
        let node = crate::js::node()?;
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (mcp_port, auth_port) = (free(), free());
        let mut cmd = tokio::process::Command::new(node);
        cmd.arg(crate::js::js_dir().join("oauth-upstream.mjs"))
            .current_dir(crate::js::js_dir())
            .env("MCP_PORT", mcp_port.to_string())
            .env("AUTH_PORT", auth_port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        for _ in 0..150 {
            if tokio::net::TcpStream::connect(("127.0.0.1", mcp_port))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Some(Self {
            _child: child,
            url: format!("http://127.0.0.1:{mcp_port}/mcp"),
            auth: format!("http://127.0.0.1:{auth_port}"),
        })
    }

    pub async fn stats(&self) -> Value {
        reqwest::get(format!("{}/test/stats", self.auth))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The authorization server's issuer.
    pub fn issuer(&self) -> String {
        format!("{}/", self.auth)
    }

    /// Tells the authorization server whom to trust for token-exchange subjects.
    pub async fn trust(&self, body: Value) {
        let r = reqwest::Client::new()
            .post(format!("{}/test/trust", self.auth))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    pub async fn steer(&self, what: &str) {
        let r = reqwest::Client::new()
            .post(format!("{}/test/{what}", self.auth))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

pub fn with_oauth_upstream(
    url: &str,
    store_url: Option<String>,
) -> impl FnOnce(&mut mcp_oauth_gateway::config::Config) + use<> {
    let url = url.to_string();
    move |c| {
        if let Some(s) = store_url {
            c.store.url = s;
        }
        c.keys.encryption = vec![SHARED_KEY.into()];
        c.broker.allow_http_loopback = true;
        c.upstreams.push(
            serde_json::from_value(json!({
                "name": "linear",
                "url": url,
                "credentials": {"type": "oauth"},
            }))
            .unwrap(),
        );
    }
}

fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get("location")
        .unwrap_or_else(|| panic!("a redirect, got {}", r.status()))
        .to_str()
        .unwrap()
        .to_string()
}

/// A browser at the gateway: follows the way to the connect page's button, signing in on
/// the way; returns the upstream authorization URL it is sent to.
pub async fn start_connect(gw: &TestGateway, browser: &reqwest::Client, user: &str) -> String {
    let origin = gw.url("");
    let abs = |l: &str| {
        if l.starts_with("http") {
            l.to_string()
        } else {
            format!("{origin}{l}")
        }
    };
    let r = browser
        .get(gw.url("/authorize/connect/linear"))
        .send()
        .await
        .unwrap();
    let mut page_url = gw.url("/authorize/connect/linear");
    if r.status() == 303 {
        let signin = abs(&location(&r));
        assert!(
            signin.contains("/authorize/signin?upstream=linear"),
            "{signin}"
        );
        let page = browser
            .get(&signin)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let csrf = hidden(&page, "csrf").expect("a form token");
        let r = browser
            .post(&signin)
            .form(&[
                ("csrf", csrf.as_str()),
                ("source", "local"),
                ("username", user),
                ("password", PASSWORD),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
        page_url = abs(&location(&r));
        assert!(
            page_url.ends_with("/authorize/connect/linear"),
            "{page_url}"
        );
    } else {
        assert_eq!(r.status(), 200);
    }
    let r = browser.get(&page_url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    assert!(page.contains("Connect your account at linear"), "{page}");
    assert!(page.contains("mcp:tools"), "{page}");
    let csrf = hidden(&page, "csrf").expect("a form token");
    let r = browser
        .post(&page_url)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
    location(&r)
}

/// The rest of the way: the upstream's server approves, the browser comes back.
pub async fn finish_connect(
    gw: &TestGateway,
    browser: &reqwest::Client,
    authorize: &str,
) -> (u16, String) {
    let r = browser.get(authorize).send().await.unwrap();
    assert_eq!(r.status(), 302, "{}", r.text().await.unwrap());
    let callback = location(&r);
    assert!(
        callback.starts_with(&format!("{}/connect/callback/linear?", gw.base)),
        "{callback}"
    );
    come_back(gw, browser, &callback).await
}

async fn come_back(gw: &TestGateway, browser: &reqwest::Client, callback: &str) -> (u16, String) {
    let r = browser.get(callback).send().await.unwrap();
    assert_eq!(r.status(), 303);
    let back = location(&r);
    let back = if back.starts_with('/') {
        gw.url(&back)
    } else {
        back
    };
    let r = browser.get(back).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

pub async fn connect(gw: &TestGateway, browser: &reqwest::Client, user: &str) {
    let authorize = start_connect(gw, browser, user).await;
    let (s, page) = finish_connect(gw, browser, &authorize).await;
    assert_eq!(s, 200, "{page}");
    assert!(page.contains("is connected"), "{page}");
}

pub async fn tool(gw: &TestGateway, token: &str, revision: &str, name: &str) -> Value {
    let r = TestGateway::http()
        .post(gw.url("/mcp/linear"))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", revision)
        .header("mcp-method", "tools/call")
        .header("mcp-name", name)
        .json(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": name, "arguments": {}}}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let www = format!("{:?}", r.headers().get("www-authenticate"));
    let body = r.text().await.unwrap();
    assert_eq!(status, 200, "{www} {body}");
    serde_json::from_str(&body).unwrap()
}

pub fn hint_of(answer: &Value) -> String {
    answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("a tool result: {answer}"))
        .to_string()
}

fn hint(token: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(token.as_bytes());
    h.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

async fn api(gw: &TestGateway, token: &str, method: reqwest::Method, path: &str) -> (u16, Value) {
    let r = TestGateway::http()
        .request(method, gw.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn people_connect_their_own_accounts_and_calls_carry_their_own_tokens() {
    let Some(up) = Upstream::start(&[]).await else {
        return;
    };
    let gw = TestGateway::start_with(with_oauth_upstream(&up.url, None)).await;
    let resource = format!("{}/mcp/linear", gw.base);
    let alice = authorize_for(&gw, "alice", &resource).await;
    let bob = authorize_for(&gw, "bob", &resource).await;

    // Not connected: each revision's form of "connect first", naming the gateway's page.
    let connect_url = format!("{}/authorize/connect/linear", gw.base);
    let a = tool(&gw, &alice.access_token, "2025-11-25", "token_hint").await;
    assert_eq!(a["error"]["code"], -32042, "{a}");
    assert_eq!(
        a["error"]["data"]["elicitations"][0]["url"],
        connect_url.as_str()
    );
    assert!(
        a["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&connect_url)
    );
    let a = tool(&gw, &alice.access_token, "2026-07-28", "token_hint").await;
    assert_eq!(a["result"]["resultType"], "input_required", "{a}");
    assert_eq!(
        a["result"]["inputRequests"]["connect"]["params"]["url"],
        connect_url.as_str()
    );
    let a = tool(&gw, &alice.access_token, "2025-06-18", "token_hint").await;
    assert!(
        a["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&connect_url),
        "{a}"
    );
    assert_eq!(
        up.stats().await["seen"],
        json!([]),
        "nothing reached the upstream"
    );

    // Each connects in a browser of their own.
    let (alice_browser, bob_browser) = (TestGateway::browser(), TestGateway::browser());
    connect(&gw, &alice_browser, "alice").await;
    connect(&gw, &bob_browser, "bob").await;
    let ha = hint_of(&tool(&gw, &alice.access_token, "2025-11-25", "token_hint").await);
    let hb = hint_of(&tool(&gw, &bob.access_token, "2025-11-25", "token_hint").await);
    assert_ne!(ha, hb, "two people, two upstream tokens");
    assert_eq!(
        hint_of(&tool(&gw, &alice.access_token, "2025-11-25", "token_hint").await),
        ha
    );
    let stats = up.stats().await;
    let seen: Vec<String> = serde_json::from_value(stats["seen"].clone()).unwrap();
    assert!(seen.iter().all(|s| *s == ha || *s == hb), "{seen:?}");
    assert!(
        !seen.contains(&hint(&alice.access_token)) && !seen.contains(&hint(&bob.access_token)),
        "the gateway's own tokens never reach the upstream"
    );
    assert_eq!(
        stats["registrations"], 1,
        "one registration, reused for both"
    );

    // The JSON API, with the person's gateway token.
    let (s, list) = api(
        &gw,
        &alice.access_token,
        reqwest::Method::GET,
        "/connections",
    )
    .await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list["connections"][0]["upstream"], "linear");
    assert_eq!(list["connections"][0]["state"], "connected");
    let (s, started) = api(
        &gw,
        &alice.access_token,
        reqwest::Method::POST,
        "/connections/linear",
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(started["connect_url"], connect_url.as_str());
    let (s, _) = api(&gw, "mog_at_forged", reqwest::Method::GET, "/connections").await;
    assert_eq!(s, 401);
    // A token for another resource (whoami) speaks for nobody about this connection.
    let whoami = crate::support::authorize_user(&gw, "alice").await;
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let path = if method == reqwest::Method::GET {
            "/connections"
        } else {
            "/connections/linear"
        };
        let (s, _) = api(&gw, &whoami.access_token, method, path).await;
        assert_eq!(s, 401);
    }
    let (s, _) = api(
        &gw,
        &alice.access_token,
        reqwest::Method::POST,
        "/connections/nope",
    )
    .await;
    assert_eq!(s, 404);

    // The connections page lists it; disconnecting revokes at the upstream and forgets it;
    // Bob stays connected.
    let page = alice_browser
        .get(gw.url("/authorize/connections"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Connected"), "{page}");
    let csrf = hidden(&page, "csrf").unwrap();
    let r = alice_browser
        .post(gw.url("/authorize/connections/linear/disconnect"))
        .form(&[("csrf", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a form token is required");
    let r = alice_browser
        .post(gw.url("/authorize/connections/linear/disconnect"))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(up.stats().await["revocations"], 1);
    let a = tool(&gw, &alice.access_token, "2025-11-25", "token_hint").await;
    assert_eq!(a["error"]["code"], -32042, "{a}");
    assert_eq!(
        hint_of(&tool(&gw, &bob.access_token, "2025-11-25", "token_hint").await),
        hb
    );

    // Her gateway grant ending leaves her upstream connection; removing her erases it.
    connect(&gw, &alice_browser, "alice").await;
    let (s, _) = gw
        .post_form(
            "/revoke",
            &[
                ("token", &alice.refresh_token),
                ("client_id", &alice.client_id),
            ],
        )
        .await;
    assert_eq!(s, 200);
    let alice_id = gw.store.user_by_name("alice").await.unwrap().unwrap().id;
    assert!(
        gw.store
            .upstream_token(&alice_id, "linear")
            .await
            .unwrap()
            .is_some()
    );
    assert!(gw.store.delete_user(&alice_id, gw.now()).await.unwrap());
    assert!(
        gw.store
            .upstream_token(&alice_id, "linear")
            .await
            .unwrap()
            .is_none()
    );

    // The operator's view and hand: `connections list` and `connections revoke`.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gw.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\npublic_url = \"{}\"\n[store]\nurl = \"{}\"\n[keys]\nencryption = [\"{SHARED_KEY}\"]\n\
             [broker]\nallow_http_loopback = true\n\
             [[upstreams]]\nname = \"linear\"\nurl = \"{}\"\ncredentials = {{ type = \"oauth\" }}\n",
            gw.base, gw.store_url, up.url
        ),
    )
    .unwrap();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mcp-oauth-gateway"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, out) = cli(&["connections", "list"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("bob") && out.contains("linear") && out.contains("connected"),
        "{out}"
    );
    assert!(!out.contains("alice"), "{out}");
    let (ok, out) = cli(&["connections", "revoke", "--user", "bob", "linear"]);
    assert!(ok, "{out}");
    let (ok, out) = cli(&["connections", "revoke", "--user", "bob", "linear"]);
    assert!(!ok && out.contains("no connection"), "{out}");
    // Another process revoked it: this instance trusts what it read for 5 s at most.
    gw.clock.advance(6);
    let b = tool(&gw, &bob.access_token, "2025-11-25", "token_hint").await;
    assert_eq!(b["error"]["code"], -32042, "{b}");
    assert_eq!(up.stats().await["revocations"], 2);
}

#[tokio::test]
async fn a_way_back_in_another_browser_replayed_forged_or_denied_stores_nothing() {
    let Some(up) = Upstream::start(&[]).await else {
        return;
    };
    let configure = with_oauth_upstream(&up.url, None);
    let other = up.url.clone();
    let gw = TestGateway::start_with(move |c| {
        configure(c);
        c.upstreams.push(
            serde_json::from_value(json!({
                "name": "other",
                "url": other,
                "credentials": {"type": "oauth"},
            }))
            .unwrap(),
        );
    })
    .await;
    let (alice_browser, mallory_browser) = (TestGateway::browser(), TestGateway::browser());
    let alice_id = |gw: &TestGateway| {
        let store = gw.store.clone();
        async move { store.user_by_name("alice").await.unwrap().unwrap().id }
    };

    // Mallory starts a flow for herself (as bob) and sends the link to Alice: Alice's browser
    // is not the session that started it, so nothing is stored for anyone.
    let authorize = start_connect(&gw, &mallory_browser, "bob").await;
    let _ = start_connect(&gw, &alice_browser, "alice").await;
    let r = alice_browser.get(&authorize).send().await.unwrap();
    let callback = location(&r);
    let (s, page) = come_back(&gw, &alice_browser, &callback).await;
    assert_eq!(s, 400, "{page}");
    assert!(page.contains("another browser session"), "{page}");
    // The state was used up: the right browser cannot use it afterwards either.
    let (s, page) = come_back(&gw, &mallory_browser, &callback).await;
    assert_eq!(s, 400, "{page}");
    assert!(page.contains("expired or was already used"), "{page}");
    assert!(gw.store.upstream_tokens(None).await.unwrap().is_empty());

    // A way back without a session at all.
    let authorize = start_connect(&gw, &alice_browser, "alice").await;
    let r = alice_browser.get(&authorize).send().await.unwrap();
    let callback = location(&r);
    let (s, _) = come_back(&gw, &TestGateway::browser(), &callback).await;
    assert_eq!(s, 403);
    // ... and that used the flow up: pasted into the browser that started it, it is void.
    let (s, page) = come_back(&gw, &alice_browser, &callback).await;
    assert_eq!(s, 400, "{page}");
    assert!(page.contains("expired or was already used"), "{page}");

    // An answer arriving at another upstream's address (a mix-up): refused, used up.
    let authorize = start_connect(&gw, &alice_browser, "alice").await;
    let r = alice_browser.get(&authorize).send().await.unwrap();
    let mixed = location(&r).replace("/connect/callback/linear?", "/connect/callback/other?");
    let (s, page) = come_back(&gw, &alice_browser, &mixed).await;
    assert_eq!(s, 400, "{page}");
    assert!(page.contains("another upstream"), "{page}");
    let (s, _) = come_back(&gw, &alice_browser, &location(&r)).await;
    assert_eq!(s, 400, "the flow is void afterwards");

    // Denied at the upstream, with markup in the description: shown inert, nothing stored.
    let authorize = start_connect(&gw, &alice_browser, "alice").await;
    let state = url::Url::parse(&authorize)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .to_string();
    let forged = format!(
        "{}/connect/callback/linear?{}",
        gw.base,
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("state", state.as_str()),
                ("error", "access_denied"),
                ("error_description", "<script>alert(1)</script>"),
            ])
            .finish()
    );
    let (s, page) = come_back(&gw, &alice_browser, &forged).await;
    assert_eq!(s, 400);
    assert!(!page.contains("<script>"), "{page}");
    assert!(page.contains("&lt;script&gt;"), "{page}");

    // A way back naming another issuer (RFC 9207): refused, nothing stored.
    let authorize = start_connect(&gw, &alice_browser, "alice").await;
    let r = alice_browser.get(&authorize).send().await.unwrap();
    let callback = format!("{}&iss=https%3A%2F%2Fevil.example", location(&r));
    let (s, page) = come_back(&gw, &alice_browser, &callback).await;
    assert_eq!(s, 400, "{page}");
    assert!(page.contains("evil.example"), "{page}");
    assert!(gw.store.upstream_tokens(None).await.unwrap().is_empty());
    assert!(
        gw.store
            .upstream_token(&alice_id(&gw).await, "linear")
            .await
            .unwrap()
            .is_none()
    );

    // Forms without their token: the connect button and the sign-in.
    let r = alice_browser
        .post(gw.url("/authorize/connect/linear"))
        .form(&[("csrf", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let fresh = TestGateway::browser();
    let r = fresh
        .post(gw.url("/authorize/signin"))
        .form(&[
            ("csrf", "x"),
            ("source", "local"),
            ("username", "alice"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "no signing in from another site's form");
    // After signing in, the page goes only where the gateway names: an unknown upstream
    // in the query leads to the connections page, never elsewhere.
    let page = fresh
        .get(gw.url("/authorize/signin?upstream=https://evil.example"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = hidden(&page, "csrf").unwrap();
    let r = fresh
        .post(gw.url("/authorize/signin?upstream=https://evil.example"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("source", "local"),
            ("username", "alice"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(
        location(&r).ends_with("/authorize/connections"),
        "{}",
        location(&r)
    );

    // And the whole flow still works afterwards.
    connect(&gw, &alice_browser, "alice").await;
    assert_eq!(gw.store.upstream_tokens(None).await.unwrap().len(), 1);
}

#[tokio::test]
async fn fifty_calls_with_an_expired_token_refresh_once_then_a_refused_one_asks_to_reconnect() {
    let Some(up) = Upstream::start(&[("ROTATE", "1")]).await else {
        return;
    };
    let gw = TestGateway::start_with(with_oauth_upstream(&up.url, None)).await;
    let resource = format!("{}/mcp/linear", gw.base);
    let alice = authorize_for(&gw, "alice", &resource).await;
    connect(&gw, &TestGateway::browser(), "alice").await;
    let first = hint_of(&tool(&gw, &alice.access_token, "2025-11-25", "token_hint").await);

    // The upstream token has expired by the gateway's clock: fifty calls at once, one refresh.
    // (Within the gateway token's own hour.)
    gw.clock.advance(3550);
    let calls = (0..50).map(|_| tool(&gw, &alice.access_token, "2025-11-25", "token_hint"));
    let hints: Vec<String> = futures_util::future::join_all(calls)
        .await
        .iter()
        .map(hint_of)
        .collect();
    assert_eq!(up.stats().await["refreshes"], 1);
    assert!(
        hints.iter().all(|h| *h == hints[0] && *h != first),
        "{hints:?}"
    );

    // The upstream stops accepting the access token: one refresh and one retry, unseen.
    up.steer("expire-access").await;
    let again = hint_of(&tool(&gw, &alice.access_token, "2025-11-25", "token_hint").await);
    assert_ne!(again, hints[0]);
    assert_eq!(up.stats().await["refreshes"], 2);

    // It stops accepting the refresh token too: the connection is broken, the person asked
    // to reconnect (never the upstream's 401, which the client would take for the gateway's).
    up.steer("break").await;
    let a = tool(&gw, &alice.access_token, "2025-11-25", "token_hint").await;
    assert_eq!(a["error"]["code"], -32042, "{a}");
    assert!(
        a["error"]["message"]
            .as_str()
            .unwrap()
            .contains("reconnect"),
        "{a}"
    );
    let (_, list) = api(
        &gw,
        &alice.access_token,
        reqwest::Method::GET,
        "/connections",
    )
    .await;
    assert_eq!(list["connections"][0]["state"], "broken");
    // Reconnecting mends it.
    connect(&gw, &TestGateway::browser(), "alice").await;
    hint_of(&tool(&gw, &alice.access_token, "2025-11-25", "token_hint").await);
}

#[tokio::test]
async fn two_instances_on_one_store_refresh_once_between_them() {
    let Some(up) = Upstream::start(&[]).await else {
        return;
    };
    let a = TestGateway::start_with(with_oauth_upstream(&up.url, None)).await;
    let public = a.base.clone();
    let configure = with_oauth_upstream(&up.url, Some(a.store_url.clone()));
    let b = TestGateway::start_with(move |c| {
        configure(c);
        c.server.public_url = Some(public);
    })
    .await;
    let resource = format!("{}/mcp/linear", a.base);
    let alice = authorize_for(&a, "alice", &resource).await;
    connect(&a, &TestGateway::browser(), "alice").await;
    let first = hint_of(&tool(&b, &alice.access_token, "2025-11-25", "token_hint").await);
    assert_eq!(
        first,
        hint_of(&tool(&a, &alice.access_token, "2025-11-25", "token_hint").await),
        "the same vault row, read on either instance"
    );
    // Non-rotating server: the refresh token is kept and works again.
    a.clock.advance(3550);
    b.clock.advance(3550);
    let calls = (0..50).map(|i| {
        let gw = if i % 2 == 0 { &a } else { &b };
        tool(gw, &alice.access_token, "2025-11-25", "token_hint")
    });
    let hints: Vec<String> = futures_util::future::join_all(calls)
        .await
        .iter()
        .map(hint_of)
        .collect();
    assert_eq!(
        up.stats().await["refreshes"],
        1,
        "one refresh across both instances"
    );
    assert!(
        hints.iter().all(|h| *h == hints[0] && *h != first),
        "{hints:?}"
    );
    a.clock.advance(3550);
    let alice = authorize_for(&a, "alice", &resource).await;
    hint_of(&tool(&a, &alice.access_token, "2025-11-25", "token_hint").await);
    assert_eq!(
        up.stats().await["refreshes"],
        2,
        "the kept refresh token still works"
    );
}

#[tokio::test]
async fn a_server_that_takes_client_metadata_documents_reads_the_gateways_own() {
    let Some(up) = Upstream::start(&[("CIMD", "1")]).await else {
        return;
    };
    let gw = TestGateway::start_with(with_oauth_upstream(&up.url, None)).await;
    let doc: Value = reqwest::get(gw.url("/connect/clients/linear"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = format!("{}/connect/clients/linear", gw.base);
    assert_eq!(doc["client_id"], id.as_str());
    assert_eq!(
        doc["redirect_uris"],
        json!([format!("{}/connect/callback/linear", gw.base)])
    );
    assert_eq!(doc["token_endpoint_auth_method"], "none");
    let alice = authorize_for(&gw, "alice", &format!("{}/mcp/linear", gw.base)).await;
    let browser = TestGateway::browser();
    let authorize = start_connect(&gw, &browser, "alice").await;
    let client_id = url::Url::parse(&authorize)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "client_id")
        .unwrap()
        .1
        .to_string();
    assert_eq!(client_id, id, "the document's address is the client id");
    let (s, page) = finish_connect(&gw, &browser, &authorize).await;
    assert_eq!(s, 200, "{page}");
    hint_of(&tool(&gw, &alice.access_token, "2025-11-25", "token_hint").await);
    let stats = up.stats().await;
    assert_eq!(stats["registrations"], 0, "no dynamic registration");
    assert!(stats["documents"].as_u64().unwrap() >= 1, "{stats}");
}

#[tokio::test]
async fn an_upstream_reached_with_the_gateways_service_identity_needs_no_connecting() {
    let Some(up) = Upstream::start(&[("SERVICE", "gw-service:s3cret")]).await else {
        return;
    };
    let url = up.url.clone();
    let issuer = up.issuer();
    let gw = TestGateway::start_with(move |c| {
        c.keys.encryption = vec![SHARED_KEY.into()];
        c.broker.allow_http_loopback = true;
        c.upstreams.push(
            serde_json::from_value(json!({
                "name": "linear",
                "url": url,
                "credentials": {
                    "type": "oauth",
                    "grant": "client_credentials",
                    "client_id": "gw-service",
                    "client_secret": "s3cret",
                    "authorization_server": issuer,
                },
            }))
            .unwrap(),
        );
    })
    .await;
    let resource = format!("{}/mcp/linear", gw.base);
    let alice = authorize_for(&gw, "alice", &resource).await;
    let bob = authorize_for(&gw, "bob", &resource).await;
    let ha = hint_of(&tool(&gw, &alice.access_token, "2025-11-25", "token_hint").await);
    let hb = hint_of(&tool(&gw, &bob.access_token, "2025-11-25", "token_hint").await);
    assert_eq!(ha, hb, "one shared service token");
    assert_eq!(up.stats().await["services"], 1, "fetched once, then kept");
    // Sealed in the shared slot, like any other vault row.
    assert!(
        gw.store
            .upstream_token("*", "linear")
            .await
            .unwrap()
            .is_some()
    );
    // Refused upstream: fetched again, the call retried.
    up.steer("expire-access").await;
    let again = hint_of(&tool(&gw, &alice.access_token, "2025-11-25", "token_hint").await);
    assert_ne!(again, ha);
    assert_eq!(up.stats().await["services"], 2);
    // Expiring by the gateway's clock: renewed before use.
    gw.clock.advance(3550);
    let later = hint_of(&tool(&gw, &alice.access_token, "2025-11-25", "token_hint").await);
    assert_ne!(later, again);
    assert_eq!(up.stats().await["services"], 3);
    // Nothing to connect, and the connections list says so.
    let (s, list) = api(
        &gw,
        &alice.access_token,
        reqwest::Method::GET,
        "/connections",
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(list["connections"][0]["state"], "shared");
    let browser = TestGateway::browser();
    let r = browser
        .get(gw.url("/authorize/connect/linear"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "sign-in first");

    // Pinned to another server: the service secret never goes to the one the upstream names.
    let url = up.url.clone();
    let elsewhere = TestGateway::start_with(move |c| {
        c.keys.encryption = vec![SHARED_KEY.into()];
        c.broker.allow_http_loopback = true;
        c.upstreams.push(
            serde_json::from_value(json!({
                "name": "linear",
                "url": url,
                "credentials": {
                    "type": "oauth",
                    "grant": "client_credentials",
                    "client_id": "gw-service",
                    "client_secret": "s3cret",
                    "authorization_server": "https://as.example.com",
                },
            }))
            .unwrap(),
        );
    })
    .await;
    let before = up.stats().await["services"].clone();
    let carol = authorize_for(
        &elsewhere,
        "alice",
        &format!("{}/mcp/linear", elsewhere.base),
    )
    .await;
    let r = TestGateway::http()
        .post(elsewhere.url("/mcp/linear"))
        .bearer_auth(&carol.access_token)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "token_hint", "arguments": {}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not the configured"),
        "{v}"
    );
    assert_eq!(
        up.stats().await["services"],
        before,
        "no token request went there"
    );
}

#[tokio::test]
async fn token_exchange_gets_each_person_their_own_upstream_token_without_connecting() {
    let Some(up) = Upstream::start(&[("EXCHANGE", "gw-exchange")]).await else {
        return;
    };
    let url = up.url.clone();
    let issuer = up.issuer();
    let gw = TestGateway::start_with(move |c| {
        c.keys.encryption = vec![SHARED_KEY.into()];
        c.broker.allow_http_loopback = true;
        c.upstreams.push(
            serde_json::from_value(json!({
                "name": "linear",
                "url": url,
                "credentials": {
                    "type": "oauth",
                    "grant": "token_exchange",
                    "client_id": "gw-exchange",
                    "authorization_server": issuer,
                },
            }))
            .unwrap(),
        );
    })
    .await;
    let resource = format!("{}/mcp/linear", gw.base);
    let alice = authorize_for(&gw, "alice", &resource).await;
    let bob = authorize_for(&gw, "bob", &resource).await;
    // The upstream's server does not trust the gateway yet: the exchange is refused, and the
    // call says so (nothing the person could connect would help).
    let r = TestGateway::http()
        .post(gw.url("/mcp/linear"))
        .bearer_auth(&alice.access_token)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "token_hint", "arguments": {}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let a: Value = r.json().await.unwrap();
    assert!(
        a["error"]["message"]
            .as_str()
            .unwrap()
            .contains("token endpoint refused: HTTP 400: invalid_grant no trusted issuer"),
        "{a}"
    );
    let r = reqwest::Client::new()
        .post(format!("{}/test/trust", up.auth))
        .json(&json!({"issuer": gw.base}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ha = hint_of(&tool(&gw, &alice.access_token, "2025-11-25", "token_hint").await);
    let hb = hint_of(&tool(&gw, &bob.access_token, "2025-11-25", "token_hint").await);
    assert_ne!(ha, hb, "each person their own token");
    assert_eq!(
        hint_of(&tool(&gw, &alice.access_token, "2025-11-25", "token_hint").await),
        ha,
        "kept, not exchanged on every call"
    );
    let stats = up.stats().await;
    assert_eq!(stats["exchanges"], 2);
    let alice_id = gw.store.user_by_name("alice").await.unwrap().unwrap().id;
    assert_eq!(
        stats["subjects"][0],
        alice_id.as_str(),
        "the subject is the person"
    );
    // Refused upstream: exchanged afresh for the retry.
    up.steer("expire-access").await;
    let again = hint_of(&tool(&gw, &alice.access_token, "2025-11-25", "token_hint").await);
    assert_ne!(again, ha);
    assert_eq!(up.stats().await["exchanges"], 3);
    let (_, list) = api(
        &gw,
        &alice.access_token,
        reqwest::Method::GET,
        "/connections",
    )
    .await;
    assert_eq!(list["connections"][0]["state"], "exchanged");
}

#[tokio::test]
async fn a_real_client_is_told_to_connect_in_its_own_protocol_and_then_just_works() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let Some(up) = Upstream::start(&[("ANON_INIT", "1")]).await else {
        return;
    };
    let Some(node) = crate::js::node() else {
        return;
    };
    let gw = TestGateway::start_with(with_oauth_upstream(&up.url, None)).await;
    let resource = format!("{}/mcp/linear", gw.base);
    let alice = authorize_for(&gw, "alice", &resource).await;
    let mut child = tokio::process::Command::new(node)
        .arg(crate::js::js_dir().join("connect-required.mjs"))
        .current_dir(crate::js::js_dir())
        .env("MCP_URL", &resource)
        .env("MCP_TOKEN", &alice.access_token)
        .env("MCP_TOOL", "token_hint")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    // The SDK initialized (the upstream lets anyone), then its tool call was answered with
    // MCP's URL-elicitation-required error, which the SDK surfaces as such.
    assert_eq!(first["code"], -32042, "{first}");
    assert_eq!(first["name"], "UrlElicitationRequiredError", "{first}");
    let url = first["elicitations"][0]["url"].as_str().unwrap();
    assert_eq!(url, format!("{}/authorize/connect/linear", gw.base));
    // The person opens it and connects; the same client session then just works.
    connect(&gw, &TestGateway::browser(), "alice").await;
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"go\n")
        .await
        .unwrap();
    let second: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    let text = second["text"].as_str().unwrap();
    assert_eq!(text.len(), 16, "a token's hint, not anonymous: {second}");
}

#[tokio::test]
async fn a_token_endpoint_that_redirects_is_not_followed() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    // A listener that only counts who connects: where the redirect points.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let _task = tokio::spawn(async move {
        while let Ok((_c, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let target = format!("http://127.0.0.1:{port}/steal");
    let Some(up) = Upstream::start(&[("TOKEN_REDIRECT", target.as_str())]).await else {
        return;
    };
    let gw = TestGateway::start_with(with_oauth_upstream(&up.url, None)).await;
    let browser = TestGateway::browser();
    let authorize = start_connect(&gw, &browser, "alice").await;
    let (s, page) = finish_connect(&gw, &browser, &authorize).await;
    assert_eq!(s, 502, "{page}");
    assert!(page.contains("HTTP 302"), "{page}");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "the redirect was not followed"
    );
    assert!(gw.store.upstream_tokens(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn an_upstream_marked_so_is_connected_right_after_consent_before_the_client_gets_its_code() {
    use crate::support::{Pkce, authorize_params, query_of};
    let Some(up) = Upstream::start(&[]).await else {
        return;
    };
    let configure = with_oauth_upstream(&up.url, None);
    let gw = TestGateway::start_with(move |c| {
        configure(c);
        if let Some(mcp_oauth_gateway::config::UpstreamCredentials::Oauth {
            connect_on_consent,
            ..
        }) = c.upstreams.last_mut().map(|u| &mut u.credentials)
        {
            *connect_on_consent = true;
        }
    })
    .await;
    let resource = format!("{}/mcp/linear", gw.base);
    let redirect = "http://127.0.0.1:9999/callback";
    let client_id = gw.register_public(redirect).await;
    // Up to the consent page, then "allow".
    let consent = |user: &'static str| {
        let (gw, client_id, resource) = (&gw, client_id.clone(), resource.clone());
        async move {
            let browser = TestGateway::browser();
            let pkce = Pkce::new();
            let params = authorize_params(&client_id, redirect, &pkce, &resource);
            let url = url::Url::parse_with_params(&gw.url("/authorize"), &params).unwrap();
            let page = browser.get(url).send().await.unwrap().text().await.unwrap();
            let (request, csrf) = (
                hidden(&page, "request").unwrap(),
                hidden(&page, "csrf").unwrap(),
            );
            let r = browser
                .post(gw.url("/authorize/login"))
                .form(&[
                    ("request", request.as_str()),
                    ("csrf", csrf.as_str()),
                    ("username", user),
                    ("password", PASSWORD),
                ])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let r = browser
                .post(gw.url("/authorize/consent"))
                .form(&[
                    ("request", request.as_str()),
                    ("csrf", csrf.as_str()),
                    ("decision", "allow"),
                ])
                .send()
                .await
                .unwrap();
            // Not back to the client yet: the connect page, its code waiting.
            assert_eq!(r.status(), 200);
            let page = r.text().await.unwrap();
            assert!(page.contains("Connect your account at linear"), "{page}");
            assert!(page.contains("Not now"), "{page}");
            (browser, page, pkce)
        }
    };
    let token_for = |location: String, pkce: Pkce| {
        let (gw, client_id, resource) = (&gw, client_id.clone(), resource.clone());
        async move {
            let q = query_of(&location);
            let (s, t) = gw
                .post_form(
                    "/token",
                    &[
                        ("grant_type", "authorization_code"),
                        ("code", q.get("code").expect("a code")),
                        ("redirect_uri", redirect),
                        ("client_id", &client_id),
                        ("code_verifier", &pkce.verifier),
                        ("resource", &resource),
                    ],
                )
                .await;
            assert_eq!(s, 200, "{t}");
            t["access_token"].as_str().unwrap().to_string()
        }
    };

    // Alice connects there and then; her client gets its code afterwards, and its first call
    // goes out with her upstream token.
    let (browser, page, pkce) = consent("alice").await;
    let r = browser
        .post(gw.url("/authorize/connect/linear"))
        .form(&[
            ("csrf", hidden(&page, "csrf").unwrap().as_str()),
            (
                "then_request",
                hidden(&page, "then_request").unwrap().as_str(),
            ),
            ("then_csrf", hidden(&page, "then_csrf").unwrap().as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let r = browser.get(location(&r)).send().await.unwrap();
    let r = browser.get(location(&r)).send().await.unwrap();
    let back = gw.url(&location(&r));
    let r = browser.get(back).send().await.unwrap();
    let to_client = location(&r);
    assert!(to_client.starts_with(redirect), "{to_client}");
    let token = token_for(to_client, pkce).await;
    hint_of(&tool(&gw, &token, "2025-11-25", "token_hint").await);

    // Bob goes on without connecting: his client gets its code at once; he connects later.
    let (browser, page, pkce) = consent("bob").await;
    let r = browser
        .post(gw.url("/authorize/consent"))
        .form(&[
            ("request", hidden(&page, "then_request").unwrap().as_str()),
            ("csrf", hidden(&page, "then_csrf").unwrap().as_str()),
            ("connect", "later"),
            ("decision", "allow"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let token = token_for(location(&r), pkce).await;
    let b = tool(&gw, &token, "2025-11-25", "token_hint").await;
    assert_eq!(b["error"]["code"], -32042, "{b}");
}

#[tokio::test]
async fn a_client_that_did_not_declare_url_elicitation_gets_the_plain_error() {
    let Some(up) = Upstream::start(&[("ANON_INIT", "1"), ("SESSIONS", "1")]).await else {
        return;
    };
    let gw = TestGateway::start_with(with_oauth_upstream(&up.url, None)).await;
    let resource = format!("{}/mcp/linear", gw.base);
    let alice = authorize_for(&gw, "alice", &resource).await;
    let post = |body: Value, session: Option<String>| {
        let mut r = TestGateway::http()
            .post(gw.url("/mcp/linear"))
            .bearer_auth(&alice.access_token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .json(&body);
        if let Some(s) = session {
            r = r.header("mcp-session-id", s);
        }
        r.send()
    };
    for (capabilities, code) in [
        (json!({}), -32000),
        (json!({"elicitation": {"url": {}}}), -32042),
    ] {
        let r = post(
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": capabilities,
                "clientInfo": {"name": "t", "version": "1"}}}),
            None,
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 200);
        let sid = r.headers()["mcp-session-id"].to_str().unwrap().to_string();
        let r = post(
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "token_hint", "arguments": {}}}),
            Some(sid),
        )
        .await
        .unwrap();
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], code, "{capabilities}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("/authorize/connect/linear"),
            "{v}"
        );
    }
}

/// The TypeScript SDK's own example server with its demo authorization server
/// (`simpleStreamableHttp.js --oauth`), which logs each call's token: two people connect
/// through the gateway, and each call it logs carries that person's upstream token (as kept,
/// sealed, in the person's vault row); one person's disconnect leaves the other connected.
#[tokio::test]
async fn the_sdk_example_server_sees_each_persons_own_token() {
    use tokio::io::AsyncBufReadExt;
    let Some(node) = crate::js::node() else {
        return;
    };
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (mcp_port, auth_port) = (free(), free());
    let mut server = tokio::process::Command::new(node)
        .arg(crate::js::js_dir().join(
            "node_modules/@modelcontextprotocol/sdk/dist/esm/examples/server/simpleStreamableHttp.js",
        ))
        .arg("--oauth")
        .env("MCP_PORT", mcp_port.to_string())
        .env("MCP_AUTH_PORT", auth_port.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Everything the server prints, kept for the assertions.
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut lines = tokio::io::BufReader::new(server.stdout.take().unwrap()).lines();
    let sink = log.clone();
    let _reader = tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            let mut s = sink.lock().unwrap();
            s.push_str(&l);
            s.push('\n');
        }
    });
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", auth_port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let upstream = format!("http://localhost:{mcp_port}/mcp");
    let gw = TestGateway::start_with(with_oauth_upstream(&upstream, None)).await;
    let resource = format!("{}/mcp/linear", gw.base);
    let vault_token = |user: String| {
        let gw = &gw;
        async move {
            let row = gw
                .store
                .upstream_token(&user, "linear")
                .await
                .unwrap()
                .expect("a vault row");
            let plain = gw
                .auth
                .contexts
                .open_as(
                    &format!("upstream-token\n{}\nlinear\n{}", row.user_id, row.issuer),
                    &row.sealed,
                )
                .expect("the row opens under its own identity");
            let set: Value = serde_json::from_slice(&plain).unwrap();
            set["access_token"].as_str().unwrap().to_string()
        }
    };
    let greet = |token: String| {
        let gw = &gw;
        async move {
            let post = |body: Value, session: Option<String>| {
                let mut r = TestGateway::http()
                    .post(gw.url("/mcp/linear"))
                    .bearer_auth(&token)
                    .header("accept", "application/json, text/event-stream")
                    .json(&body);
                if let Some(s) = session {
                    r = r
                        .header("mcp-session-id", s)
                        .header("mcp-protocol-version", "2025-11-25");
                }
                r.send()
            };
            let r = post(
                json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                    "protocolVersion": "2025-11-25", "capabilities": {},
                    "clientInfo": {"name": "t", "version": "1"}}}),
                None,
            )
            .await
            .unwrap();
            let sid = r
                .headers()
                .get("mcp-session-id")
                .map(|v| v.to_str().unwrap().to_string());
            let text = r.text().await.unwrap();
            let Some(sid) = sid else { return text };
            let r = post(
                json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "greet", "arguments": {"name": "you"}}}),
                Some(sid),
            )
            .await
            .unwrap();
            r.text().await.unwrap()
        }
    };
    let alice = authorize_for(&gw, "alice", &resource).await;
    let bob = authorize_for(&gw, "bob", &resource).await;
    // Not connected: the demo server wants a token for everything, initialize included.
    assert!(
        greet(alice.access_token.clone())
            .await
            .contains("/authorize/connect/linear")
    );
    connect(&gw, &TestGateway::browser(), "alice").await;
    connect(&gw, &TestGateway::browser(), "bob").await;
    assert!(
        greet(alice.access_token.clone())
            .await
            .contains("Hello, you!")
    );
    assert!(
        greet(bob.access_token.clone())
            .await
            .contains("Hello, you!")
    );
    let id = |name: &'static str| {
        let store = gw.store.clone();
        async move { store.user_by_name(name).await.unwrap().unwrap().id }
    };
    let (ta, tb) = (
        vault_token(id("alice").await).await,
        vault_token(id("bob").await).await,
    );
    assert_ne!(ta, tb);
    let logged = log.lock().unwrap().clone();
    assert!(logged.contains(&ta) && logged.contains(&tb), "{logged}");
    assert!(
        !logged.contains(&alice.access_token),
        "the gateway's token never goes upstream"
    );
    // Alice disconnects; Bob is still connected.
    let (s, _) = api(
        &gw,
        &alice.access_token,
        reqwest::Method::DELETE,
        "/connections/linear",
    )
    .await;
    assert_eq!(s, 200);
    assert!(
        greet(alice.access_token.clone())
            .await
            .contains("/authorize/connect/linear")
    );
    assert!(
        greet(bob.access_token.clone())
            .await
            .contains("Hello, you!")
    );
}
