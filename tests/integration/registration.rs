use serde_json::{Value, json};

use crate::support::*;
use mcp_oauth_gateway::config::DcrMode;

async fn register(gw: &TestGateway, body: Value) -> (u16, Value, reqwest::header::HeaderMap) {
    let r = TestGateway::http()
        .post(gw.url("/register"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    let h = r.headers().clone();
    (s, r.json().await.unwrap_or(Value::Null), h)
}

#[tokio::test]
async fn dcr_echoes_the_auth_method_and_issues_secrets_only_to_confidential_clients() {
    let gw = TestGateway::start().await;
    let (s, v, h) = register(&gw, json!({"redirect_uris": ["http://127.0.0.1/cb"], "token_endpoint_auth_method": "none", "client_name": "Public"})).await;
    assert_eq!(s, 201);
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(v["token_endpoint_auth_method"], "none");
    assert!(v.get("client_secret").is_none());
    assert_eq!(
        v["grant_types"],
        json!(["authorization_code", "refresh_token"])
    );

    let (s, v, _) = register(&gw, json!({"redirect_uris": ["https://app.example/cb"], "token_endpoint_auth_method": "client_secret_post"})).await;
    assert_eq!(s, 201);
    assert_eq!(v["token_endpoint_auth_method"], "client_secret_post");
    let secret = v["client_secret"].as_str().unwrap();
    assert!(secret.starts_with("mog_cs_"));
    // The secret works at the token endpoint (as client authentication).
    let (s, e) = gw
        .post_form(
            "/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", "x"),
                ("client_id", v["client_id"].as_str().unwrap()),
                ("client_secret", secret),
            ],
        )
        .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (400, Some("invalid_grant")),
        "authenticated, then the grant is bad"
    );

    // RFC 7591's default method is client_secret_basic.
    let (s, v, _) = register(&gw, json!({"redirect_uris": ["https://app.example/cb"]})).await;
    assert_eq!(s, 201);
    assert_eq!(v["token_endpoint_auth_method"], "client_secret_basic");
    assert!(v["client_secret"].is_string());
}

#[tokio::test]
async fn dcr_refuses_bad_metadata_precisely() {
    let gw = TestGateway::start().await;
    let cases = [
        (
            json!({"redirect_uris": ["http://app.example/cb"], "token_endpoint_auth_method": "none"}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": ["javascript:alert(1)"], "token_endpoint_auth_method": "none"}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": ["https://a.example/cb#frag"], "token_endpoint_auth_method": "none"}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": ["myapp://cb"], "token_endpoint_auth_method": "client_secret_basic"}),
            "invalid_redirect_uri",
        ),
        (
            json!({"token_endpoint_auth_method": "none"}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": "https://a.example/cb"}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["https://a.example/cb"], "logo_uri": "https://a.example/logo.png"}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["https://a.example/cb"], "jwks_uri": "https://a.example/jwks"}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "private_key_jwt"}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["https://a.example/cb"], "grant_types": ["client_credentials"]}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["https://a.example/cb"], "grant_types": ["implicit"]}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["https://a.example/cb"], "scope": "admin"}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["https://a.example/cb"], "client_name": "x".repeat(300)}),
            "invalid_client_metadata",
        ),
        (json!(["not", "an", "object"]), "invalid_client_metadata"),
    ];
    for (body, error) in cases {
        let (s, v, _) = register(&gw, body.clone()).await;
        assert_eq!((s, v["error"].as_str()), (400, Some(error)), "{body}");
    }
    let http = TestGateway::http();
    let r = http
        .post(gw.url("/register"))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .post(gw.url("/register"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "invalid_client_metadata"
    );
    // Nothing was stored by any of the refused registrations.
    assert!(gw.store.list_clients().await.unwrap().is_empty());
}

#[tokio::test]
async fn dcr_with_initial_access_token_and_off() {
    let gw = TestGateway::start_with(|c| {
        c.registration.dcr = DcrMode::Token;
        c.registration.initial_access_tokens = vec!["let-me-register".into()];
    })
    .await;
    let body =
        json!({"redirect_uris": ["http://127.0.0.1/cb"], "token_endpoint_auth_method": "none"});
    let (s, v, h) = register(&gw, body.clone()).await;
    assert_eq!(s, 401, "{v}");
    assert!(
        h["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    let r = TestGateway::http()
        .post(gw.url("/register"))
        .bearer_auth("let-me-register")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let off = TestGateway::start_with(|c| c.registration.dcr = DcrMode::Off).await;
    let (s, _, _) = register(&off, body).await;
    assert_eq!(s, 403);
    let meta: Value = TestGateway::http()
        .get(off.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(meta.get("registration_endpoint").is_none());
}

#[tokio::test]
async fn dcr_is_capped_rate_limited_and_unused_clients_expire() {
    let gw = TestGateway::start_with(|c| {
        c.registration.max_clients = 3;
        c.registration.per_ip_per_hour = 4;
    })
    .await;
    let body =
        json!({"redirect_uris": ["http://127.0.0.1/cb"], "token_endpoint_auth_method": "none"});
    for _ in 0..3 {
        assert_eq!(register(&gw, body.clone()).await.0, 201);
    }
    let (s, v, h) = register(&gw, body.clone()).await;
    assert_eq!(s, 503, "{v}");
    assert!(h.contains_key("retry-after"));
    let (s, _, h) = register(&gw, body.clone()).await;
    assert_eq!(s, 429, "per-IP limit");
    assert!(h["retry-after"].to_str().unwrap().parse::<u64>().unwrap() > 0);
    // A day later the unused registrations are swept, which makes room again.
    gw.clock.advance(24 * 3600 + 1);
    let swept = gw
        .store
        .sweep(gw.now(), gw.now() - 24 * 3600, None)
        .await
        .unwrap();
    assert_eq!(swept.clients, 3);
    let used = authorize_user(&gw, "alice").await;
    gw.clock.advance(24 * 3600 + 1);
    gw.store
        .sweep(gw.now(), gw.now() - 24 * 3600, None)
        .await
        .unwrap();
    let left: Vec<String> = gw
        .store
        .list_clients()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.client_id)
        .collect();
    assert_eq!(left, vec![used.client_id], "a client that was used stays");
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let body =
        json!({"redirect_uris": ["http://127.0.0.1/cb"], "token_endpoint_auth_method": "none"});
    let send = |gw: &TestGateway, xff: String| {
        let (url, body) = (gw.url("/register"), body.clone());
        async move {
            TestGateway::http()
                .post(url)
                .header("x-forwarded-for", xff)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // From an untrusted peer the header is ignored: all three count against 127.0.0.1.
    let gw = TestGateway::start_with(|c| c.registration.per_ip_per_hour = 2).await;
    let got: Vec<u16> = futures_seq((1..=3).map(|i| send(&gw, format!("203.0.113.{i}")))).await;
    assert_eq!(got, vec![201, 201, 429]);
    // Behind a trusted proxy each client address has its own budget.
    let gw = TestGateway::start_with(|c| {
        c.registration.per_ip_per_hour = 2;
        c.server.trusted_proxies = vec!["127.0.0.0/8".into()];
    })
    .await;
    let got: Vec<u16> =
        futures_seq((1..=3).map(|i| send(&gw, format!("198.51.100.7, 203.0.113.{i}")))).await;
    assert_eq!(got, vec![201, 201, 201]);
    let got: Vec<u16> = futures_seq((0..3).map(|_| send(&gw, "203.0.113.9".into()))).await;
    assert_eq!(got, vec![201, 201, 429]);
}

async fn futures_seq<F: std::future::Future<Output = u16>>(
    fs: impl Iterator<Item = F>,
) -> Vec<u16> {
    let mut out = Vec::new();
    for f in fs {
        out.push(f.await);
    }
    out
}

/// Clients are cached briefly per instance; removing one still ends everything it had at
/// once, and the cache forgets it within its few seconds.
#[tokio::test]
async fn a_removed_client_gets_nothing_more_even_while_cached() {
    let gw = TestGateway::start().await;
    let a = authorize_user(&gw, "alice").await;
    let refresh = |rt: String| {
        let (gw, client_id) = (&gw, a.client_id.clone());
        async move {
            gw.post_form(
                "/token",
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &rt),
                    ("client_id", &client_id),
                ],
            )
            .await
        }
    };
    // This refresh reads the client, so it is cached now.
    let (status, tokens) = refresh(a.refresh_token.clone()).await;
    assert_eq!(status, 200, "{tokens}");
    let rt2 = tokens["refresh_token"].as_str().unwrap().to_string();

    assert!(
        gw.store
            .delete_client(&a.client_id, gw.now())
            .await
            .unwrap()
    );
    // Its grant went with it: even where the client is still cached (on SQLite; on
    // PostgreSQL the removal's notification has emptied the cache) it refreshes nothing.
    let (status, body) = refresh(rt2.clone()).await;
    assert!(
        matches!(
            (status, body["error"].as_str()),
            (400, Some("invalid_grant")) | (401, Some("invalid_client"))
        ),
        "{status} {body}"
    );
    // Authorization reads the store, not the cache: no new code for a removed client.
    let pkce = Pkce::new();
    let url = url::Url::parse_with_params(
        &gw.url("/authorize"),
        &authorize_params(&a.client_id, &a.redirect, &pkce, &gw.resource()),
    )
    .unwrap();
    let r = TestGateway::browser().get(url).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers().get("location").is_none());
    // Once the cache's few seconds have passed, the client is unknown everywhere.
    gw.clock
        .advance(mcp_oauth_gateway::authorization::token::TOKEN_CACHE_SECS + 1);
    let (status, body) = refresh(rt2).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "{body}"
    );
    assert_eq!(call_whoami(&gw, &a.access_token).await.0, 401);
}
