use serde_json::{Value, json};

use crate::support::*;
use mcp_oauth_gateway::store::AccessTokenRecord;

#[tokio::test]
async fn challenges_name_the_resource_metadata_and_scopes() {
    let gw = TestGateway::start().await;
    let http = TestGateway::http();
    let r = http
        .post(gw.url("/mcp"))
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let c = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        c,
        format!(
            "Bearer resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\", scope=\"mcp\"",
            gw.base
        )
    );
    let r = http
        .post(gw.url("/mcp"))
        .bearer_auth("mog_at_forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let c = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        c.contains("error=\"invalid_token\"") && c.contains("resource_metadata="),
        "{c}"
    );
    let r = http
        .post(format!("{}?access_token=mog_at_x", gw.url("/mcp")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_request")
    );
    let r = http
        .post(gw.url("/mcp"))
        .header("authorization", "Basic YTpi")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn tokens_for_another_resource_or_lacking_scope_are_refused() {
    let gw = TestGateway::start_with(|c| {
        c.authorization.scopes = vec!["mcp".into(), "admin".into()];
        c.whoami.scopes = vec!["mcp".into(), "admin".into()];
    })
    .await;
    let now = gw.now();
    let foreign = "mog_at_foreign_resource_token_0000000000000";
    let user = gw.store.user_by_name("alice").await.unwrap().unwrap();
    let record = |token: &str, resource: String, scopes: Vec<String>| AccessTokenRecord {
        token_hash: mcp_oauth_gateway::crypto::hash_secret(token),
        grant_id: None,
        client_id: "c".into(),
        user_id: Some(user.id.clone()),
        resource,
        scopes,
        created_at: now,
        expires_at: now + 600,
    };
    gw.store
        .insert_access_token(&record(
            foreign,
            "http://127.0.0.1:1/mcp".into(),
            vec!["mcp".into(), "admin".into()],
        ))
        .await
        .unwrap();
    let (s, _) = call_whoami(&gw, foreign).await;
    assert_eq!(s, 401, "audience is checked");
    let narrow = "mog_at_narrow_scope_token_000000000000000000";
    gw.store
        .insert_access_token(&record(narrow, gw.resource(), vec!["mcp".into()]))
        .await
        .unwrap();
    let r = TestGateway::http()
        .post(gw.url("/mcp"))
        .bearer_auth(narrow)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
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
    let full = "mog_at_full_scope_token_00000000000000000000";
    gw.store
        .insert_access_token(&record(
            full,
            gw.resource(),
            vec!["mcp".into(), "admin".into()],
        ))
        .await
        .unwrap();
    assert_eq!(call_whoami(&gw, full).await.0, 200);
}

#[tokio::test]
async fn whoami_speaks_mcp_and_rejects_malformed_messages() {
    let gw = TestGateway::start().await;
    let a = authorize_user(&gw, "bob").await;
    let http = TestGateway::http();
    let post = |body: String, ct: &'static str| {
        let (http, url, t) = (http.clone(), gw.url("/mcp"), a.access_token.clone());
        async move {
            let r = http
                .post(url)
                .bearer_auth(t)
                .header("content-type", ct)
                .body(body)
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (s, v) = post(
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}).to_string(),
        "application/json",
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["result"]["protocolVersion"], "2025-06-18");
    assert_eq!(
        post(
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string(),
            "application/json"
        )
        .await
        .0,
        202
    );
    let (_, v) = post(
        json!({"jsonrpc": "2.0", "id": "x", "method": "tools/list"}).to_string(),
        "application/json",
    )
    .await;
    assert_eq!(v["result"]["tools"][0]["name"], "whoami");
    let (_, v) = post(
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "whoami"}})
            .to_string(),
        "application/json",
    )
    .await;
    let who = &v["result"]["structuredContent"];
    assert_eq!(who["user"], "bob");
    assert_eq!(who["client_id"], a.client_id);
    assert_eq!(who["scopes"], json!(["mcp"]));
    let (_, v) = post(
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "nope"}})
            .to_string(),
        "application/json",
    )
    .await;
    assert_eq!(v["error"]["code"], -32602);
    let (_, v) = post(
        json!({"jsonrpc": "2.0", "id": 4, "method": "nope"}).to_string(),
        "application/json",
    )
    .await;
    assert_eq!(v["error"]["code"], -32601);
    let (s, v) = post("{not json".into(), "application/json").await;
    assert_eq!((s, v["error"]["code"].as_i64()), (400, Some(-32700)));
    let (s, _) = post("{}".into(), "text/plain").await;
    assert_eq!(s, 415);
    let r = http
        .get(gw.url("/mcp"))
        .bearer_auth(&a.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test]
async fn revocation_elsewhere_reaches_the_token_cache_within_its_lifetime() {
    let gw = TestGateway::start().await;
    let a = authorize_user(&gw, "alice").await;
    assert_eq!(call_whoami(&gw, &a.access_token).await.0, 200);
    // Revoked behind this instance's back (as the CLI or another instance would).
    let alice = gw.store.user_by_name("alice").await.unwrap().unwrap();
    gw.store
        .revoke_grants(
            &mcp_oauth_gateway::store::GrantFilter {
                user_id: Some(alice.id),
                ..Default::default()
            },
            mcp_oauth_gateway::store::EndReason::AdminRevoked,
            gw.now(),
        )
        .await
        .unwrap();
    gw.clock
        .advance(mcp_oauth_gateway::authorization::token::TOKEN_CACHE_SECS);
    assert_eq!(
        call_whoami(&gw, &a.access_token).await.0,
        401,
        "refused once the cache entry is stale"
    );
}

/// A browser-based client (the Inspector, a web app on the TypeScript SDK) must pass the
/// preflight with the MCP headers and read the challenge and the session from any answer.
#[tokio::test]
async fn browser_clients_pass_cors_on_the_mcp_endpoint() {
    let gw = TestGateway::start().await;
    let http = TestGateway::http();
    let preflight = |headers: Option<&'static str>| {
        let mut req = http
            .request(reqwest::Method::OPTIONS, gw.url("/mcp"))
            .header("origin", "http://localhost:6274")
            .header("access-control-request-method", "POST");
        if let Some(h) = headers {
            req = req.header("access-control-request-headers", h);
        }
        req.send()
    };
    let r = preflight(Some("authorization, mcp-session-id, mcp-method, x-custom"))
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "*");
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("DELETE")
    );
    assert_eq!(
        h["access-control-allow-headers"],
        "authorization, mcp-session-id, mcp-method, x-custom"
    );
    let r = preflight(None).await.unwrap();
    let allowed = r.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap();
    for name in [
        "authorization",
        "mcp-protocol-version",
        "mcp-session-id",
        "last-event-id",
    ] {
        assert!(allowed.contains(name), "{allowed}");
    }
    // The challenge is readable by the page.
    let r = http
        .post(gw.url("/mcp"))
        .header("origin", "http://localhost:6274")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let exposed = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(
        exposed.contains("www-authenticate") && exposed.contains("mcp-session-id"),
        "{exposed}"
    );
    // And so is an authorized answer.
    let t = authorize_user(&gw, "alice").await;
    let r = http
        .post(gw.url("/mcp"))
        .header("origin", "http://localhost:6274")
        .bearer_auth(&t.access_token)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    // An origin outside the allow-list still gets nothing but a refusal.
    let r = http
        .post(gw.url("/mcp"))
        .header("origin", "https://evil.example")
        .bearer_auth(&t.access_token)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}
