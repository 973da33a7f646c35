//! The protected proxy in front of real upstream MCP servers (rmcp fixtures).

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

use crate::support::*;
use crate::upstream_fixture::{Upstream, steps_done};
use mcp_oauth_gateway::config::{UpstreamConfig, UpstreamCredentials};

fn upstream(name: &str, url: &str, credentials: UpstreamCredentials) -> UpstreamConfig {
    let mut u: UpstreamConfig =
        toml::from_str(&format!("name = \"{name}\"\nurl = \"{url}\"")).unwrap();
    u.credentials = credentials;
    u
}

struct Setup {
    gw: TestGateway,
    _a: Upstream,
    _b: Upstream,
}

/// `a`: with sessions, a static bearer upstream; `b`: stateless, the user's identity upstream.
async fn setup() -> Setup {
    let a = Upstream::start(true).await;
    let b = Upstream::start(false).await;
    let (ua, ub) = (a.url.clone(), b.url.clone());
    let gw = TestGateway::start_with(move |c| {
        c.upstreams.push(upstream(
            "a",
            &ua,
            UpstreamCredentials::Bearer {
                token: "upstream-secret".into(),
            },
        ));
        c.upstreams
            .push(upstream("b", &ub, UpstreamCredentials::Identity));
        c.proxy.header_timeout_secs = 2;
    })
    .await;
    Setup { gw, _a: a, _b: b }
}

pub(crate) async fn rmcp_call(url: String, token: &str, tool: &str, args: Value) -> Value {
    let transport = StreamableHttpClientTransport::with_client(
        reqwest::Client::new(),
        StreamableHttpClientTransportConfig::with_uri(url).auth_header(token.to_string()),
    );
    let client = ().serve(transport).await.unwrap();
    let result = client
        .call_tool(
            CallToolRequestParams::new(tool.to_string())
                .with_arguments(args.as_object().unwrap().clone()),
        )
        .await
        .unwrap();
    let _ = client.cancel().await;
    let text = result.content[0].as_text().unwrap().text.clone();
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

#[tokio::test]
async fn each_upstream_is_its_own_protected_resource() {
    let s = setup().await;
    let gw = &s.gw;
    let http = TestGateway::http();
    for path in ["/mcp/a", "/mcp/b"] {
        let v: Value = http
            .get(gw.url(&format!("/.well-known/oauth-protected-resource{path}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["resource"], format!("{}{path}", gw.base));
        let r = http.post(gw.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401);
        let c = r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            c.contains(&format!("oauth-protected-resource{path}\"")),
            "{c}"
        );
    }
    // Several resources now: the root PRM is gone, and /authorize needs `resource`.
    assert_eq!(
        http.get(gw.url("/.well-known/oauth-protected-resource"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let ta = authorize_for(gw, "alice", &format!("{}/mcp/a", gw.base)).await;
    assert_eq!(
        rmcp_call(
            gw.url("/mcp/a"),
            &ta.access_token,
            "echo",
            json!({"text": "hi"})
        )
        .await,
        "hi"
    );
    // A token for /mcp/a is not a token for /mcp/b, nor for whoami.
    let r = http
        .post(gw.url("/mcp/b"))
        .bearer_auth(&ta.access_token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(call_whoami(gw, &ta.access_token).await.0, 401);
}

#[tokio::test]
async fn the_clients_token_never_goes_upstream_the_configured_credential_does() {
    let s = setup().await;
    let gw = &s.gw;
    let ta = authorize_for(gw, "alice", &format!("{}/mcp/a", gw.base)).await;
    let seen = rmcp_call(gw.url("/mcp/a"), &ta.access_token, "headers", json!({})).await;
    assert_eq!(seen["authorization"], "Bearer upstream-secret");
    assert!(seen["host"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(!seen.to_string().contains(&ta.access_token));
    let bob = gw.store.user_by_name("bob").await.unwrap().unwrap();
    gw.store
        .set_profile(
            &bob.id,
            Some("bob@example.com"),
            &["dev".into(), "ops".into()],
        )
        .await
        .unwrap();
    let tb = authorize_for(gw, "bob", &format!("{}/mcp/b", gw.base)).await;
    // A client that forges identity headers: they are dropped, then the real ones set.
    let transport = StreamableHttpClientTransport::with_client(
        reqwest::Client::new(),
        StreamableHttpClientTransportConfig::with_uri(gw.url("/mcp/b"))
            .auth_header(tb.access_token.clone())
            .custom_headers(
                [
                    (
                        http::HeaderName::from_static("x-forwarded-user"),
                        http::HeaderValue::from_static("admin"),
                    ),
                    (
                        http::HeaderName::from_static("x-forwarded-email"),
                        http::HeaderValue::from_static("admin@example.com"),
                    ),
                    (
                        http::HeaderName::from_static("cookie"),
                        http::HeaderValue::from_static("mog_session=stolen"),
                    ),
                ]
                .into_iter()
                .collect(),
            ),
    );
    let client = ().serve(transport).await.unwrap();
    let result = client
        .call_tool(CallToolRequestParams::new("headers"))
        .await
        .unwrap();
    let seen: Value = serde_json::from_str(&result.content[0].as_text().unwrap().text).unwrap();
    let _ = client.cancel().await;
    assert_eq!(seen["x-forwarded-user"], "bob");
    assert_eq!(seen["x-forwarded-client"], tb.client_id);
    assert_eq!(
        seen["x-forwarded-email"], "bob@example.com",
        "the forged one is gone"
    );
    assert_eq!(seen["x-forwarded-groups"], "dev,ops");
    assert_eq!(seen["authorization"], Value::Null);
    assert_eq!(seen["cookie"], Value::Null);
}

/// A raw Streamable HTTP exchange through the gateway: initialize, then return the session.
async fn initialize(gw: &TestGateway, path: &str, token: &str) -> Option<String> {
    let r = TestGateway::http()
        .post(gw.url(path))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let sid = r
        .headers()
        .get("mcp-session-id")
        .map(|v| v.to_str().unwrap().to_string());
    let _ = r.bytes().await;
    let mut req = TestGateway::http()
        .post(gw.url(path))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    if let Some(s) = &sid {
        req = req.header("mcp-session-id", s);
    }
    assert_eq!(req.send().await.unwrap().status(), 202);
    sid
}

fn call(
    gw: &TestGateway,
    path: &str,
    token: &str,
    sid: Option<&str>,
    body: Value,
) -> reqwest::RequestBuilder {
    let mut req = TestGateway::http()
        .post(gw.url(path))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(&body);
    if let Some(s) = sid {
        req = req.header("mcp-session-id", s);
    }
    req
}

#[tokio::test]
async fn progress_is_streamed_as_it_happens() {
    let s = setup().await;
    let gw = &s.gw;
    let t = authorize_for(gw, "alice", &format!("{}/mcp/a", gw.base)).await;
    let sid = initialize(gw, "/mcp/a", &t.access_token).await;
    let started = Instant::now();
    let r = call(gw, "/mcp/a", &t.access_token, sid.as_deref(), json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
        "params": {"name": "count", "arguments": {"n": 5, "delay_ms": 300, "tag": "stream"}, "_meta": {"progressToken": "p1"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut first_progress = None;
    let mut seen = String::new();
    let mut stream = r.bytes_stream();
    while let Some(chunk) = stream.next().await {
        seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        if first_progress.is_none() && seen.contains("notifications/progress") {
            first_progress = Some(started.elapsed());
        }
        if seen.contains("counted to 5") {
            break;
        }
    }
    let last = started.elapsed();
    let first = first_progress.expect("progress events arrived");
    assert!(
        last - first >= Duration::from_millis(900),
        "first event at {first:?}, result at {last:?}: not buffered"
    );
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_the_upstream_call() {
    // The stateless upstream ties a call to its HTTP request (a session-mode one may keep
    // going after a disconnect, as the MCP spec allows, for resumption).
    let s = setup().await;
    let gw = &s.gw;
    let t = authorize_for(gw, "alice", &format!("{}/mcp/b", gw.base)).await;
    let sid = initialize(gw, "/mcp/b", &t.access_token).await;
    let r = call(gw, "/mcp/b", &t.access_token, sid.as_deref(), json!({"jsonrpc": "2.0", "id": 6, "method": "tools/call",
        "params": {"name": "count", "arguments": {"n": 100, "delay_ms": 50, "tag": "cancel"}, "_meta": {"progressToken": "p2"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let _ = stream.next().await;
    drop(stream);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let at_drop = steps_done("cancel");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let later = steps_done("cancel");
    assert!(
        later < 100 && later <= at_drop + 1,
        "the upstream call went on: {at_drop} then {later}"
    );
}

#[tokio::test]
async fn sessions_belong_to_the_user_who_opened_them() {
    let s = setup().await;
    let gw = &s.gw;
    let resource = format!("{}/mcp/a", gw.base);
    let alice = authorize_for(gw, "alice", &resource).await;
    let bob = authorize_for(gw, "bob", &resource).await;
    let sid = initialize(gw, "/mcp/a", &alice.access_token)
        .await
        .expect("stateful upstream");
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let r = call(gw, "/mcp/a", &bob.access_token, Some(&sid), list.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "another user's session does not exist for bob"
    );
    let r = call(gw, "/mcp/a", &alice.access_token, Some(&sid), list.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("echo"));
    let r = call(
        gw,
        "/mcp/a",
        &alice.access_token,
        Some("made-up"),
        list.clone(),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 404);
    // Bob cannot delete it either; alice can, and then it is gone.
    let del = |token: &str| {
        TestGateway::http()
            .delete(gw.url("/mcp/a"))
            .bearer_auth(token)
            .header("mcp-session-id", &sid)
            .header("mcp-protocol-version", "2025-06-18")
            .send()
    };
    assert_eq!(del(&bob.access_token).await.unwrap().status(), 404);
    assert!(
        del(&alice.access_token)
            .await
            .unwrap()
            .status()
            .is_success()
    );
    let r = call(gw, "/mcp/a", &alice.access_token, Some(&sid), list)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Confirmed bindings are cached for a few seconds: still only for their owner, and a
    // session unbound behind this instance's back (by another instance) is refused here
    // once that time has passed.
    let sid = initialize(gw, "/mcp/a", &alice.access_token)
        .await
        .expect("stateful upstream");
    let status = |token: &str| {
        let list = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"});
        let req = call(gw, "/mcp/a", token, Some(&sid), list).send();
        async move { req.await.unwrap().status() }
    };
    assert_eq!(status(&alice.access_token).await, 200);
    assert_eq!(status(&bob.access_token).await, 404);
    gw.store
        .unbind_session("a", &mcp_oauth_gateway::crypto::hash_secret(&sid))
        .await
        .unwrap();
    assert_eq!(status(&alice.access_token).await, 200);
    gw.clock.advance(6);
    assert_eq!(status(&alice.access_token).await, 404);
}

#[tokio::test]
async fn upstream_down_or_silent_gets_a_clear_answer() {
    // A port nobody listens on, and a listener that accepts and never answers.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = silent.accept().await {
            held.push(sock);
        }
    });
    let gw = TestGateway::start_with(move |c| {
        c.upstreams.push(upstream(
            "down",
            &format!("http://{closed}/mcp"),
            UpstreamCredentials::None,
        ));
        c.upstreams.push(upstream(
            "silent",
            &format!("http://{silent_addr}/mcp"),
            UpstreamCredentials::None,
        ));
        c.proxy.header_timeout_secs = 1;
    })
    .await;
    for (path, status) in [("/mcp/down", 502), ("/mcp/silent", 504)] {
        let t = authorize_for(&gw, "alice", &format!("{}{path}", gw.base)).await;
        let started = Instant::now();
        let r = call(
            &gw,
            path,
            &t.access_token,
            None,
            json!({"jsonrpc": "2.0", "id": 9, "method": "tools/list"}),
        )
        .send()
        .await
        .unwrap();
        assert_eq!(r.status(), status, "{path}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["jsonrpc"], "2.0");
        assert_eq!(v["id"], 9, "the error answers the request");
        assert!(v["error"]["message"].as_str().unwrap().contains(&path[5..]));
    }
    hold.abort();
}

#[tokio::test]
async fn origin_host_and_size_are_checked_before_the_upstream() {
    let s = setup().await;
    let gw = &s.gw;
    let t = authorize_for(gw, "alice", &format!("{}/mcp/a", gw.base)).await;
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    let r = call(gw, "/mcp/a", &t.access_token, None, list.clone())
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let port = gw.direct.rsplit(':').next().unwrap().to_string();
    let r = call(gw, "/mcp/a", &t.access_token, None, list.clone())
        .header("host", format!("rebound.evil.example:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A page on loopback (the MCP Inspector) may call a loopback gateway.
    let sid = initialize(gw, "/mcp/a", &t.access_token).await;
    let r = call(gw, "/mcp/a", &t.access_token, sid.as_deref(), list.clone())
        .header("origin", "http://localhost:6274")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let big = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "x".repeat(5 * 1024 * 1024)}}});
    let r = call(gw, "/mcp/a", &t.access_token, sid.as_deref(), big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
}

#[tokio::test]
async fn tool_rules_deny_or_ask_for_more_scope() {
    let a = Upstream::start(false).await;
    let ua = a.url.clone();
    let gw = TestGateway::start_with(move |c| {
        c.authorization.scopes = vec!["mcp".into(), "admin".into()];
        let mut u = upstream("a", &ua, UpstreamCredentials::None);
        u.tools = toml::from_str::<toml::Table>(
            "[[r]]\ntools = [\"sleep\"]\ndeny = true\n[[r]]\ntools = [\"head*\"]\nscopes = [\"admin\"]\n",
        )
        .unwrap()["r"]
            .clone()
            .try_into()
            .unwrap();
        c.upstreams.push(u);
    })
    .await;
    let t = authorize_for(&gw, "alice", &format!("{}/mcp/a", gw.base)).await;
    let sid = initialize(&gw, "/mcp/a", &t.access_token).await;
    let tool = |name: &str, args: Value| json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": name, "arguments": args}});
    let r = call(
        &gw,
        "/mcp/a",
        &t.access_token,
        sid.as_deref(),
        tool("sleep", json!({"ms": 1})),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["id"].as_i64(), v["error"]["code"].as_i64()),
        (Some(3), Some(-32003))
    );
    let r = call(
        &gw,
        "/mcp/a",
        &t.access_token,
        sid.as_deref(),
        tool("headers", json!({})),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 403);
    let c = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        c.contains("error=\"insufficient_scope\"") && c.contains("scope=\"mcp admin\""),
        "{c}"
    );
    let r = call(
        &gw,
        "/mcp/a",
        &t.access_token,
        sid.as_deref(),
        tool("echo", json!({"text": "ok"})),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("ok"));
    // A body the gateway cannot read is not passed on for the upstream to read differently.
    let r = TestGateway::http()
        .post(gw.url("/mcp/a"))
        .bearer_auth(&t.access_token)
        .header("content-type", "application/json")
        .body("{\"method\": \"tools/call\", ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn per_user_rate_limit_answers_429_with_retry_after() {
    let a = Upstream::start(false).await;
    let ua = a.url.clone();
    let gw = TestGateway::start_with(move |c| {
        c.upstreams
            .push(upstream("a", &ua, UpstreamCredentials::None));
        c.proxy.per_user_per_minute = 3;
    })
    .await;
    let t = authorize_for(&gw, "alice", &format!("{}/mcp/a", gw.base)).await;
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = call(&gw, "/mcp/a", &t.access_token, None, ping.clone())
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            assert!(
                r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
                    >= 1
            );
        }
    }
    assert_eq!(&statuses[3..], &[429]);
    // Another user is not affected.
    let b = authorize_for(&gw, "bob", &format!("{}/mcp/a", gw.base)).await;
    let r = call(&gw, "/mcp/a", &b.access_token, None, ping)
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 429);
}

#[tokio::test]
async fn rmcp_and_typescript_clients_complete_oauth_on_two_upstreams() {
    use rmcp::transport::auth::{
        AuthClient, AuthorizationRequest, CredentialStore, InMemoryCredentialStore,
    };
    let Some(node) = crate::js::node() else {
        return;
    };
    let s = setup().await;
    let gw = &s.gw;
    // rmcp: discovery from /mcp/a's 401, DCR, PKCE, code, token — then a tool call.
    let creds = InMemoryCredentialStore::new();
    let manager = crate::rmcp_client::authorize_at(
        gw,
        &gw.url("/mcp/a"),
        AuthorizationRequest::new("http://127.0.0.1:9999/callback").with_client_name("rmcp on a"),
        creds.clone(),
        "alice",
    )
    .await;
    let transport = StreamableHttpClientTransport::with_client(
        AuthClient::new(reqwest::Client::new(), manager),
        StreamableHttpClientTransportConfig::with_uri(gw.url("/mcp/a")),
    );
    let client = ().serve(transport).await.unwrap();
    let r = client
        .call_tool(
            CallToolRequestParams::new("echo")
                .with_arguments(json!({"text": "from rmcp"}).as_object().unwrap().clone()),
        )
        .await
        .unwrap();
    assert_eq!(r.content[0].as_text().unwrap().text, "from rmcp");
    let _ = client.cancel().await;
    let rmcp_token =
        serde_json::to_value(creds.load().await.unwrap().unwrap().token_response.unwrap()).unwrap()
            ["access_token"]
            .as_str()
            .unwrap()
            .to_string();
    // The TypeScript SDK on /mcp/b, the same way.
    let mut run = crate::js::SdkRun::start_at(
        gw.url("/mcp/b"),
        &node,
        None,
        false,
        &[
            ("MCP_TOOL", "echo"),
            ("MCP_ARGS", r#"{"text": "from the TS SDK"}"#),
        ],
    );
    let v = run.next().await;
    assert_eq!(v["who"], "from the TS SDK");
    let ts_token = v["access_token"].as_str().unwrap().to_string();
    run.finish().await;
    // Each token is refused by the other upstream.
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
    assert_eq!(
        call(gw, "/mcp/b", &rmcp_token, None, ping.clone())
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        call(gw, "/mcp/a", &ts_token, None, ping)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
}

#[tokio::test]
async fn signed_identity_assertions_verify_with_the_published_jwks() {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let a = Upstream::start(false).await;
    let ua = a.url.clone();
    let gw = TestGateway::start_with(move |c| {
        c.upstreams.push(upstream(
            "signed",
            &ua,
            UpstreamCredentials::Assertion {
                header: None,
                audience: None,
                ttl_secs: Some(120),
            },
        ));
    })
    .await;
    let t = authorize_for(&gw, "alice", &format!("{}/mcp/signed", gw.base)).await;
    let seen = rmcp_call(gw.url("/mcp/signed"), &t.access_token, "headers", json!({})).await;
    let jwt = seen["authorization"]
        .as_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_string();
    assert!(!jwt.contains(&t.access_token));
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(header["alg"], "ES256");
    let meta: Value = TestGateway::http()
        .get(gw.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwks: Value = TestGateway::http()
        .get(meta["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .expect("the key is published");
    let mut point = vec![4u8];
    point.extend(URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap());
    point.extend(URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap());
    let key = aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
        point,
    );
    let signed = format!("{}.{}", parts[0], parts[1]);
    key.verify(
        signed.as_bytes(),
        &URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
    )
    .expect("the signature verifies");
    // Tampered claims do not.
    let forged = format!(
        "{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string().replace("alice", "admin"))
    );
    assert!(
        key.verify(
            forged.as_bytes(),
            &URL_SAFE_NO_PAD.decode(parts[2]).unwrap()
        )
        .is_err()
    );
    let alice = gw.store.user_by_name("alice").await.unwrap().unwrap();
    assert_eq!(claims["iss"], gw.base);
    assert_eq!(claims["aud"], a.url);
    assert_eq!(claims["sub"], alice.id);
    assert_eq!(claims["preferred_username"], "alice");
    assert_eq!(claims["client_id"], t.client_id);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        120
    );
    // The key lives in the store: a restart (or another instance) signs with the same one.
    let again = mcp_oauth_gateway::proxy::Signer::load(&gw.store, gw.now(), None)
        .await
        .unwrap();
    assert_eq!(again.jwks(), jwks);
}

#[tokio::test]
async fn a_dropped_stream_resumes_with_last_event_id() {
    let s = setup().await;
    let gw = &s.gw;
    let t = authorize_for(gw, "alice", &format!("{}/mcp/a", gw.base)).await;
    let sid = initialize(gw, "/mcp/a", &t.access_token)
        .await
        .expect("session");
    let r = call(gw, "/mcp/a", &t.access_token, Some(&sid), json!({"jsonrpc": "2.0", "id": 11, "method": "tools/call",
        "params": {"name": "count", "arguments": {"n": 6, "delay_ms": 150, "tag": "resume"}, "_meta": {"progressToken": "r1"}}}))
        .send()
        .await
        .unwrap();
    let mut stream = r.bytes_stream();
    let mut seen = String::new();
    while let Some(chunk) = stream.next().await {
        seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        if seen.contains("notifications/progress") && seen.contains("\n\n") {
            break;
        }
    }
    let last_id = seen
        .lines()
        .filter_map(|l| l.strip_prefix("id:"))
        .map(|s| s.trim().to_string())
        .next_back()
        .expect("event ids");
    drop(stream);
    // Resume through the gateway: the rest of the call's events, ending with its answer.
    let r = TestGateway::http()
        .get(gw.url("/mcp/a"))
        .bearer_auth(&t.access_token)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "2025-06-18")
        .header("last-event-id", &last_id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let mut resumed = String::new();
    let done = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = stream.next().await {
            resumed.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if resumed.contains("counted to 6") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(done, "resumed: {resumed}");
    // Bob cannot resume alice's stream.
    let bob = authorize_for(gw, "bob", &format!("{}/mcp/a", gw.base)).await;
    let r = TestGateway::http()
        .get(gw.url("/mcp/a"))
        .bearer_auth(&bob.access_token)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &sid)
        .header("last-event-id", &last_id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
