use serde_json::Value;

use crate::support::*;

async fn code_for(gw: &TestGateway, client_id: &str, redirect: &str, pkce: &Pkce) -> String {
    let resource = gw.resource();
    let url = url::Url::parse_with_params(
        &gw.url("/authorize"),
        &authorize_params(client_id, redirect, pkce, &resource),
    )
    .unwrap();
    let loc = approve(&TestGateway::browser(), gw, url.as_str(), "alice").await;
    query_of(&loc)["code"].clone()
}

async fn refresh(gw: &TestGateway, client_id: &str, rt: &str) -> (u16, Value) {
    gw.post_form(
        "/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt),
            ("client_id", client_id),
        ],
    )
    .await
}

#[tokio::test]
async fn code_exchange_rules_and_replay_revokes() {
    let gw = TestGateway::start().await;
    let redirect = "http://127.0.0.1:7777/cb";
    let client_id = gw.register_public(redirect).await;
    let other_client = gw.register_public(redirect).await;
    let pkce = Pkce::new();
    let code = code_for(&gw, &client_id, redirect, &pkce).await;
    let resource = gw.resource();
    let exchange = |extra: Vec<(&'static str, String)>| {
        let mut form: Vec<(String, String)> = vec![
            ("grant_type".into(), "authorization_code".into()),
            ("code".into(), code.clone()),
            ("redirect_uri".into(), redirect.into()),
            ("client_id".into(), client_id.clone()),
            ("code_verifier".into(), pkce.verifier.clone()),
        ];
        for (k, v) in extra {
            form.retain(|(fk, _)| fk != k);
            if !v.is_empty() {
                form.push((k.into(), v));
            }
        }
        let gw = &gw;
        async move {
            let f: Vec<(&str, &str)> = form.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
            gw.post_form("/token", &f).await
        }
    };
    let (s, v) = exchange(vec![("code_verifier", "".into())]).await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_request")));
    let (s, v) = exchange(vec![("code_verifier", "a".repeat(43))]).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("invalid_grant")),
        "wrong verifier"
    );
    let (s, v) = exchange(vec![("redirect_uri", "http://127.0.0.1:7777/other".into())]).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("invalid_grant")),
        "redirect mismatch"
    );
    let (s, v) = exchange(vec![("client_id", other_client.clone())]).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("invalid_grant")),
        "another client"
    );
    let (s, v) = exchange(vec![("resource", "http://127.0.0.1:1/other".into())]).await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_target")));
    // The failures above did not burn the code.
    let (s, tokens) = exchange(vec![("resource", resource.clone())]).await;
    assert_eq!(s, 200, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["scope"], "mcp");
    let at = tokens["access_token"].as_str().unwrap().to_string();
    assert!(at.starts_with("mog_at_"));
    assert_eq!(call_whoami(&gw, &at).await.0, 200);
    // Replay: refused, and what the code issued is revoked.
    let (s, v) = exchange(vec![]).await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_grant")));
    assert_eq!(call_whoami(&gw, &at).await.0, 401);
    let (s, _) = refresh(&gw, &client_id, tokens["refresh_token"].as_str().unwrap()).await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn codes_expire_after_sixty_seconds() {
    let gw = TestGateway::start().await;
    let redirect = "http://127.0.0.1:7777/cb";
    let client_id = gw.register_public(redirect).await;
    let pkce = Pkce::new();
    let code = code_for(&gw, &client_id, redirect, &pkce).await;
    gw.clock.advance(61);
    let (s, v) = gw
        .post_form(
            "/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", redirect),
                ("client_id", &client_id),
                ("code_verifier", &pkce.verifier),
            ],
        )
        .await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_grant")));
}

#[tokio::test]
async fn token_responses_are_not_cached() {
    let gw = TestGateway::start().await;
    let redirect = "http://127.0.0.1:7777/cb";
    let client_id = gw.register_public(redirect).await;
    let pkce = Pkce::new();
    let code = code_for(&gw, &client_id, redirect, &pkce).await;
    let r = TestGateway::http()
        .post(gw.url("/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", redirect),
            ("client_id", client_id.as_str()),
            ("code_verifier", pkce.verifier.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_grant() {
    let gw = TestGateway::start().await;
    let a = authorize_user(&gw, "alice").await;
    let (s, t1) = refresh(&gw, &a.client_id, &a.refresh_token).await;
    assert_eq!(s, 200, "{t1}");
    let rt1 = t1["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rt1, a.refresh_token);
    // A retry within the window, before the successor is used: the same answer.
    let (s, again) = refresh(&gw, &a.client_id, &a.refresh_token).await;
    assert_eq!(s, 200);
    assert_eq!(again["refresh_token"], t1["refresh_token"]);
    assert_eq!(again["access_token"], t1["access_token"]);
    // The successor is used; now the old one is a stolen token: the grant dies.
    let (s, t2) = refresh(&gw, &a.client_id, &rt1).await;
    assert_eq!(s, 200);
    let (s, v) = refresh(&gw, &a.client_id, &a.refresh_token).await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_grant")));
    assert_eq!(
        call_whoami(&gw, t2["access_token"].as_str().unwrap())
            .await
            .0,
        401
    );
    let (s, _) = refresh(&gw, &a.client_id, t2["refresh_token"].as_str().unwrap()).await;
    assert_eq!(s, 400, "the whole family is revoked");
}

#[tokio::test]
async fn reuse_after_the_retry_window_revokes_even_if_the_successor_is_unused() {
    let gw = TestGateway::start().await;
    let a = authorize_user(&gw, "alice").await;
    let (_, t1) = refresh(&gw, &a.client_id, &a.refresh_token).await;
    gw.clock.advance(11);
    let (s, _) = refresh(&gw, &a.client_id, &a.refresh_token).await;
    assert_eq!(s, 400);
    let (s, _) = refresh(&gw, &a.client_id, t1["refresh_token"].as_str().unwrap()).await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn concurrent_refreshes_mint_exactly_one_successor() {
    let gw = TestGateway::start().await;
    let a = authorize_user(&gw, "alice").await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (url, cid, rt) = (
            gw.url("/token"),
            a.client_id.clone(),
            a.refresh_token.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let r = TestGateway::http()
                .post(url)
                .form(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", rt.as_str()),
                    ("client_id", cid.as_str()),
                ])
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }));
    }
    let mut successors = std::collections::HashSet::new();
    for t in tasks {
        let (s, v) = t.await.unwrap();
        assert_eq!(s, 200, "{v}");
        successors.insert(v["refresh_token"].as_str().unwrap().to_string());
    }
    assert_eq!(
        successors.len(),
        1,
        "one successor for all racing refreshes"
    );
}

#[tokio::test]
async fn refresh_keeps_the_resource_and_scopes_narrow_only() {
    let gw =
        TestGateway::start_with(|c| c.authorization.scopes = vec!["mcp".into(), "extra".into()])
            .await;
    let a = authorize_user(&gw, "alice").await;
    let (s, v) = gw
        .post_form(
            "/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &a.refresh_token),
                ("client_id", &a.client_id),
                ("resource", "http://127.0.0.1:1/mcp"),
            ],
        )
        .await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_target")));
    let (s, v) = gw
        .post_form(
            "/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &a.refresh_token),
                ("client_id", &a.client_id),
                ("scope", "mcp extra"),
            ],
        )
        .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("invalid_scope")),
        "cannot widen"
    );
    let (s, v) = gw
        .post_form(
            "/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &a.refresh_token),
                ("client_id", &a.client_id),
                ("resource", &gw.resource()),
            ],
        )
        .await;
    assert_eq!(s, 200, "{v}");
}

#[tokio::test]
async fn expired_access_token_is_refused_and_refresh_restores_access() {
    let gw = TestGateway::start().await;
    let a = authorize_user(&gw, "alice").await;
    gw.clock.advance(3601);
    let (s, _) = call_whoami(&gw, &a.access_token).await;
    assert_eq!(s, 401);
    let (s, t) = refresh(&gw, &a.client_id, &a.refresh_token).await;
    assert_eq!(s, 200);
    let (s, v) = call_whoami(&gw, t["access_token"].as_str().unwrap()).await;
    assert_eq!(s, 200);
    assert_eq!(v["result"]["structuredContent"]["user"], "alice");
}

#[tokio::test]
async fn confidential_clients_authenticate_by_basic_or_post_and_failures_are_401() {
    let gw = TestGateway::start_with(|c| {
        c.clients.push(
            toml::from_str(
                r#"client_id = "svc"
               client_secret = "s3cret:with%odd"
               grant_types = ["client_credentials"]
               introspection = true
               introspection_resources = ["whoami"]"#,
            )
            .unwrap(),
        );
    })
    .await;
    let http = TestGateway::http();
    let basic = |id: &str, secret: &str| {
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                enc(id),
                enc(secret)
            ))
        )
    };
    let r = http
        .post(gw.url("/token"))
        .header("authorization", basic("svc", "s3cret:with%odd"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let t: Value = r.json().await.unwrap();
    assert!(t.get("refresh_token").is_none());
    let (s, v) = call_whoami(&gw, t["access_token"].as_str().unwrap()).await;
    assert_eq!(s, 200);
    assert_eq!(v["result"]["structuredContent"]["client_id"], "svc");

    let (s, _) = gw
        .post_form(
            "/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "svc"),
                ("client_secret", "s3cret:with%odd"),
            ],
        )
        .await;
    assert_eq!(s, 200, "client_secret_post");

    for (auth, form) in [
        (
            Some(basic("svc", "wrong")),
            vec![("grant_type", "client_credentials")],
        ),
        (
            Some(basic("nobody", "x")),
            vec![("grant_type", "client_credentials")],
        ),
        (
            None,
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", "svc"),
                ("client_secret", "wrong"),
            ],
        ),
        (
            None,
            vec![("grant_type", "client_credentials"), ("client_id", "svc")],
        ),
        (
            None,
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", "nobody"),
            ],
        ),
        (
            Some("Basic !!!notbase64".to_string()),
            vec![("grant_type", "client_credentials")],
        ),
    ] {
        let mut req = http.post(gw.url("/token")).form(&form);
        if let Some(a) = &auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?} {form:?}");
        assert!(r.headers().contains_key("www-authenticate"));
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "invalid_client");
    }
    // Two methods at once is a malformed request.
    let r = http
        .post(gw.url("/token"))
        .header("authorization", basic("svc", "s3cret:with%odd"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_secret", "s3cret:with%odd"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // A public client cannot use client_credentials.
    let public = gw.register_public("http://127.0.0.1:7777/cb").await;
    let (s, v) = gw
        .post_form(
            "/token",
            &[("grant_type", "client_credentials"), ("client_id", &public)],
        )
        .await;
    assert_eq!((s, v["error"].as_str()), (400, Some("unauthorized_client")));
}

#[tokio::test]
async fn revocation_and_introspection() {
    let gw = TestGateway::start_with(|c| {
        c.clients.push(
            toml::from_str(
                r#"client_id = "rs"
               client_secret = "resource-server-secret"
               grant_types = ["client_credentials"]
               introspection = true
               introspection_resources = ["whoami"]"#,
            )
            .unwrap(),
        );
    })
    .await;
    let a = authorize_user(&gw, "alice").await;
    let introspect = |token: String| {
        let url = gw.url("/introspect");
        async move {
            let r = TestGateway::http()
                .post(url)
                .basic_auth("rs", Some("resource-server-secret"))
                .form(&[("token", token.as_str())])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let v = introspect(a.access_token.clone()).await;
    assert_eq!(v["active"], true);
    assert_eq!(v["username"], "alice");
    assert_eq!(v["aud"], gw.resource());
    assert_eq!(v["client_id"], a.client_id);
    assert_eq!(introspect("mog_at_nonsense".into()).await["active"], false);
    // A public client may not introspect.
    let (s, v) = gw
        .post_form(
            "/introspect",
            &[("token", &a.access_token), ("client_id", &a.client_id)],
        )
        .await;
    assert_eq!((s, v["error"].as_str()), (400, Some("unauthorized_client")));
    // Another client cannot revoke alice's token (answered 200, nothing happens).
    let other = gw.register_public("http://127.0.0.1:7777/cb").await;
    let (s, _) = gw
        .post_form(
            "/revoke",
            &[("token", &a.access_token), ("client_id", &other)],
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(call_whoami(&gw, &a.access_token).await.0, 200);
    // Its own client can.
    let (s, _) = gw
        .post_form(
            "/revoke",
            &[("token", &a.access_token), ("client_id", &a.client_id)],
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(call_whoami(&gw, &a.access_token).await.0, 401);
    assert_eq!(introspect(a.access_token.clone()).await["active"], false);
    // Revoking the refresh token ends the grant.
    let (s, _) = gw
        .post_form(
            "/revoke",
            &[("token", &a.refresh_token), ("client_id", &a.client_id)],
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = refresh(&gw, &a.client_id, &a.refresh_token).await;
    assert_eq!(s, 400);
    // Unknown tokens are fine.
    let (s, _) = gw
        .post_form(
            "/revoke",
            &[("token", "whatever"), ("client_id", &a.client_id)],
        )
        .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn bad_input_gets_precise_errors_never_500() {
    let gw = TestGateway::start().await;
    let client_id = gw.register_public("http://127.0.0.1:7777/cb").await;
    let http = TestGateway::http();
    let send = |body: Vec<u8>, ct: &'static str| {
        let (http, url) = (http.clone(), gw.url("/token"));
        async move {
            let r = http
                .post(url)
                .header("content-type", ct)
                .body(body)
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let form = "application/x-www-form-urlencoded";
    let cid = format!("client_id={client_id}");
    let cases: Vec<(Vec<u8>, &str, u16, &str)> = vec![
        (
            format!("grant_type=refresh_token&{cid}").into_bytes(),
            "application/json",
            400,
            "invalid_request",
        ),
        (
            format!("grant_type=password&{cid}").into_bytes(),
            form,
            400,
            "unsupported_grant_type",
        ),
        (cid.clone().into_bytes(), form, 400, "invalid_request"),
        (
            format!("grant_type=refresh_token&grant_type=refresh_token&{cid}").into_bytes(),
            form,
            400,
            "invalid_request",
        ),
        (
            format!("grant_type=refresh_token&{cid}&refresh_token=%ff%fe").into_bytes(),
            form,
            400,
            "invalid_request",
        ),
        (
            [
                b"grant_type=refresh_token&refresh_token=".as_slice(),
                &[0xc3, 0x28],
            ]
            .concat(),
            form,
            400,
            "invalid_request",
        ),
        (
            format!(
                "grant_type=refresh_token&{cid}&refresh_token={}",
                "a".repeat(5000)
            )
            .into_bytes(),
            form,
            400,
            "invalid_request",
        ),
        (
            format!("grant_type=refresh_token&{cid}&x={}", "a".repeat(70_000)).into_bytes(),
            form,
            400,
            "invalid_request",
        ),
        (
            format!("grant_type=refresh_token&{cid}&refresh_token=unknown").into_bytes(),
            form,
            400,
            "invalid_grant",
        ),
        (
            format!(
                "grant_type=authorization_code&{cid}&code=nope&code_verifier={}",
                "a".repeat(43)
            )
            .into_bytes(),
            form,
            400,
            "invalid_grant",
        ),
    ];
    for (body, ct, status, error) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).to_string();
        let (s, v) = send(body, ct).await;
        assert_eq!((s, v["error"].as_str()), (status, Some(error)), "{shown}");
        assert!(
            v["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty())
        );
    }
    // The MCP endpoint: wrong types and bad JSON are client errors.
    let (s, _) = call_whoami(&gw, "mog_at_x").await;
    assert_eq!(s, 401);
}
