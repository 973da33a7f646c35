//! The resource-server-only mode: a real authorization server (npm `oidc-provider`, with
//! resource indicators) issues the access tokens; the gateway publishes protected resource
//! metadata naming it, checks its JWT access tokens with its keys (or opaque ones by
//! introspection), and has no authorization endpoints of its own.

use serde_json::Value;

use crate::oidc_provider::OidcProvider;
use crate::support::*;
use crate::upstream_fixture::Upstream;
use mcp_oauth_gateway::config::{AuthorizationMode, ExternalIssuerConfig, UpstreamConfig};

const REDIRECT: &str = "http://127.0.0.1:9/callback";
const CLIENT: (&str, &str) = ("agent", "agent secret at the provider");

async fn setup() -> Option<(TestGateway, OidcProvider, Upstream)> {
    crate::js::node()?;
    let op = OidcProvider::start(CLIENT.0, CLIENT.1, REDIRECT).await?;
    let up = Upstream::start(false).await;
    let (issuer, url) = (op.issuer.clone(), up.url.clone());
    let gw = TestGateway::start_with(move |c| {
        c.authorization.mode = AuthorizationMode::External;
        c.authorization.external = vec![ExternalIssuerConfig {
            issuer: issuer.clone(),
            jwks_uri: Some(format!("{issuer}/jwks")),
            algorithms: vec!["RS256".into()],
            introspection_endpoint: Some(format!("{issuer}/token/introspection")),
            client_id: Some(CLIENT.0.into()),
            client_secret: Some(CLIENT.1.into()),
            introspection_cache_secs: 30,
        }];
        // A second resource, whose tokens the provider makes opaque.
        let u: UpstreamConfig =
            toml::from_str(&format!("name = \"opaque\"\nurl = \"{url}\"")).unwrap();
        c.upstreams.push(u);
    })
    .await;
    Some((gw, op, up))
}

async fn call(url: &str, token: &str) -> (u16, Value) {
    let r = TestGateway::http()
        .post(url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(
            &serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "whoami", "arguments": {}}}),
        )
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_gateway_checks_another_servers_jwt_access_tokens() {
    let Some((gw, op, _up)) = setup().await else {
        return;
    };
    // The metadata names the external server; the gateway's own endpoints are gone.
    let prm: Value = TestGateway::http()
        .get(gw.url("/.well-known/oauth-protected-resource/mcp"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(prm["authorization_servers"], serde_json::json!([op.issuer]));
    for path in ["/.well-known/oauth-authorization-server", "/authorize"] {
        let r = TestGateway::http().get(gw.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    for path in ["/token", "/register", "/revoke", "/introspect"] {
        let r = TestGateway::http().post(gw.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }

    let resource = gw.resource();
    let tokens = op
        .tokens_for_resource(CLIENT, REDIRECT, "olga", &resource)
        .await;
    let jwt = tokens["access_token"]
        .as_str()
        .expect("an access token")
        .to_string();
    assert_eq!(jwt.matches('.').count(), 2, "a JWT: {tokens}");
    let (s, who) = call(&resource, &jwt).await;
    assert_eq!(s, 200, "{who}");
    assert_eq!(who["result"]["structuredContent"]["user"], "olga");
    assert_eq!(who["result"]["structuredContent"]["client_id"], CLIENT.0);

    // At another resource: refused (its audience is the first one).
    let (s, _) = call(&gw.url("/mcp/opaque"), &jwt).await;
    assert_eq!(s, 401);
    // A forged one: its claims changed, its signature kept.
    let mut parts: Vec<String> = jwt.split('.').map(str::to_string).collect();
    use base64::Engine;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: Value = serde_json::from_slice(&engine.decode(&parts[1]).unwrap()).unwrap();
    claims["sub"] = "admin".into();
    parts[1] = engine.encode(serde_json::to_vec(&claims).unwrap());
    let (s, _) = call(&resource, &parts.join(".")).await;
    assert_eq!(s, 401);
    // Something that is no token at all.
    let (s, _) = call(&resource, "not-a-token").await;
    assert_eq!(s, 401);
    // After its expiry (and the skew), even though it was accepted (and cached). The
    // gateway's clock is moved from where it stands to past the token's `exp`.
    let exp = claims["exp"].as_i64().unwrap();
    gw.clock.advance(exp - gw.now() + 61);
    let (s, _) = call(&resource, &jwt).await;
    assert_eq!(s, 401);
}

#[tokio::test]
async fn opaque_tokens_are_checked_by_introspection() {
    let Some((gw, op, _up)) = setup().await else {
        return;
    };
    let resource = gw.url("/mcp/opaque");
    let tokens = op
        .tokens_for_resource(CLIENT, REDIRECT, "pia", &resource)
        .await;
    let opaque = tokens["access_token"]
        .as_str()
        .expect("an access token")
        .to_string();
    assert_eq!(opaque.matches('.').count(), 0, "opaque: {tokens}");
    let r = TestGateway::http()
        .post(&resource)
        .bearer_auth(&opaque)
        .header("accept", "application/json, text/event-stream")
        .json(
            &serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "t", "version": "1"}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    // At the other resource: refused.
    let (s, _) = call(&gw.resource(), &opaque).await;
    assert_eq!(s, 401);
    // A made-up opaque token: inactive at the provider.
    let (s, _) = call(&resource, "made-up-opaque-token").await;
    assert_eq!(s, 401);
    // After its expiry (600 s after it was issued, well after the gateway started): refused.
    gw.clock.advance(900);
    let (s, _) = call(&resource, &opaque).await;
    assert_eq!(s, 401);
}

/// Tokens a stranger's server could shape: each refused, or its identity held to the rules
/// of the gateway's own users. The external server here is a test key set (no real server
/// issues a DPoP-bound or wrongly typed token on request).
#[tokio::test]
async fn what_an_external_token_says_is_checked_before_it_is_believed() {
    let idp = crate::id_jag::Idp::start().await;
    let iss = idp.issuer.clone();
    let gw = TestGateway::start_with(move |c| {
        c.authorization.mode = AuthorizationMode::External;
        c.authorization.external = vec![ExternalIssuerConfig {
            issuer: iss.clone(),
            jwks_uri: Some(format!("{iss}/jwks")),
            algorithms: vec!["ES256".into()],
            introspection_endpoint: None,
            client_id: None,
            client_secret: None,
            introspection_cache_secs: 30,
        }];
        c.whoami.scopes = vec!["mcp".into()];
    })
    .await;
    let resource = gw.resource();
    let claims = |extra: serde_json::Value| {
        let mut c = serde_json::json!({"iss": idp.issuer, "sub": "s-1", "aud": resource,
            "exp": gw.now() + 600, "iat": gw.now(), "scope": "mcp", "client_id": "ext-client"});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let es = |typ: &str, c: &serde_json::Value| {
        idp.sign(
            serde_json::json!({"alg": "ES256", "kid": "es-1", "typ": typ}),
            c,
        )
    };
    // A good one, whose name, address and groups are checked: an unverified address is
    // dropped, a name that is no username becomes the subject, a group that would split a
    // header is dropped.
    let tricky = claims(serde_json::json!({"preferred_username": "../alice",
        "email": "ceo@corp.example", "groups": ["staff", "x,admins"]}));
    let (s, who) = call(&resource, &es("at+jwt", &tricky)).await;
    assert_eq!(s, 200, "{who}");
    let who = &who["result"]["structuredContent"];
    assert_eq!(who["user"], "s-1");
    assert!(who["email"].is_null(), "{who}");
    assert_eq!(who["groups"], serde_json::json!(["staff"]));
    assert_eq!(who["client_id"], "ext-client");

    for (what, token) in [
        (
            "sender-constrained",
            es("at+jwt", &claims(serde_json::json!({"cnf": {"jkt": "x"}}))),
        ),
        (
            "an ID-JAG, not an access token",
            es("oauth-id-jag+jwt", &claims(serde_json::json!({}))),
        ),
        (
            "alg none",
            idp.sign(
                serde_json::json!({"alg": "none"}),
                &claims(serde_json::json!({})),
            ),
        ),
        (
            "EdDSA off the list",
            idp.sign(
                serde_json::json!({"alg": "EdDSA", "kid": "ed-1"}),
                &claims(serde_json::json!({})),
            ),
        ),
        (
            "another audience",
            es(
                "at+jwt",
                &claims(serde_json::json!({"aud": "https://elsewhere.example/mcp"})),
            ),
        ),
        (
            "expired",
            es(
                "at+jwt",
                &claims(serde_json::json!({"exp": gw.now() - 3600})),
            ),
        ),
        (
            "unknown issuer",
            es(
                "at+jwt",
                &claims(serde_json::json!({"iss": "https://stranger.example"})),
            ),
        ),
    ] {
        let (s, body) = call(&resource, &token).await;
        assert_eq!(s, 401, "{what}: {body}");
    }
    // Too few scopes: 403, so that the client can ask for more.
    let (s, _) = call(
        &resource,
        &es("at+jwt", &claims(serde_json::json!({"scope": "other"}))),
    )
    .await;
    assert_eq!(s, 403);
}
