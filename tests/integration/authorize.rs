use crate::support::*;

fn authorize_url(gw: &TestGateway, params: &[(&str, &str)]) -> String {
    url::Url::parse_with_params(&gw.url("/authorize"), params)
        .unwrap()
        .to_string()
}

async fn get(url: &str) -> reqwest::Response {
    TestGateway::http().get(url).send().await.unwrap()
}

#[tokio::test]
async fn unknown_client_and_unregistered_redirect_stop_at_an_html_page() {
    let gw = TestGateway::start().await;
    let redirect = "https://app.example/cb";
    let client_id = gw.register_public(redirect).await;
    let pkce = Pkce::new();
    let resource = gw.resource();

    let mut p = authorize_params("mog_ci_nobody", redirect, &pkce, &resource);
    let r = get(&authorize_url(&gw, &p)).await;
    assert_eq!(r.status(), 400);
    assert!(r.headers().get("location").is_none());
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );

    for evil in [
        "https://evil.example/cb",
        "https://app.example/cb/../x",
        "https://app.example/cb?x=1",
        "https://app.example/cb2",
    ] {
        p = authorize_params(&client_id, evil, &pkce, &resource);
        let r = get(&authorize_url(&gw, &p)).await;
        assert_eq!(r.status(), 400, "{evil}");
        assert!(
            r.headers().get("location").is_none(),
            "never redirect to {evil}"
        );
    }
    // Duplicated client_id is refused before anything else.
    let url = format!(
        "{}&client_id=other",
        authorize_url(
            &gw,
            &authorize_params(&client_id, redirect, &pkce, &resource)
        )
    );
    let r = get(&url).await;
    assert_eq!(r.status(), 400);
    assert!(r.headers().get("location").is_none());
}

#[tokio::test]
async fn request_errors_go_back_to_the_client_with_state_and_iss() {
    // A configured client: its identity is vouched for, so errors found before sign-in go
    // back to it by redirect (an openly registered one gets a page; see hardening_auth).
    let gw = TestGateway::start_with(|c| {
        c.clients.push(
            toml::from_str(
                r#"client_id = "native-app"
                   token_endpoint_auth_method = "none"
                   redirect_uris = ["http://127.0.0.1:7777/cb"]"#,
            )
            .unwrap(),
        );
    })
    .await;
    let redirect = "http://127.0.0.1:7777/cb";
    let client_id = "native-app".to_string();
    let pkce = Pkce::new();
    let resource = gw.resource();
    let base = authorize_params(&client_id, redirect, &pkce, &resource);
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            base.iter()
                .filter(|(k, _)| *k != "code_challenge")
                .cloned()
                .collect(),
            "invalid_request",
        ),
        (
            base.iter()
                .filter(|(k, _)| *k != "code_challenge_method")
                .cloned()
                .collect(),
            "invalid_request",
        ),
        (
            base.iter()
                .map(|(k, v)| {
                    if *k == "code_challenge_method" {
                        (*k, "plain")
                    } else {
                        (*k, *v)
                    }
                })
                .collect(),
            "invalid_request",
        ),
        (
            base.iter()
                .map(|(k, v)| {
                    if *k == "response_type" {
                        (*k, "token")
                    } else {
                        (*k, *v)
                    }
                })
                .collect(),
            "unsupported_response_type",
        ),
        (
            base.iter()
                .map(|(k, v)| {
                    if *k == "resource" {
                        (*k, "https://elsewhere.example/mcp")
                    } else {
                        (*k, *v)
                    }
                })
                .collect(),
            "invalid_target",
        ),
        (
            base.iter()
                .map(|(k, v)| {
                    if *k == "scope" {
                        (*k, "mcp admin")
                    } else {
                        (*k, *v)
                    }
                })
                .collect(),
            "invalid_scope",
        ),
        (
            base.iter().cloned().chain([("scope", "mcp")]).collect(),
            "invalid_request",
        ),
        (
            base.iter()
                .cloned()
                .chain([("resource", "http://127.0.0.1:1/mcp")])
                .collect(),
            "invalid_target",
        ),
    ];
    for (params, expected) in cases {
        let r = get(&authorize_url(&gw, &params)).await;
        assert_eq!(r.status(), 302, "{params:?}");
        let loc = r.headers()["location"].to_str().unwrap().to_string();
        assert!(loc.starts_with(redirect), "{loc}");
        let q = query_of(&loc);
        assert_eq!(q["error"], expected, "{params:?}");
        assert_eq!(q["state"], "st-123");
        assert_eq!(q["iss"], gw.base);
    }
}

#[tokio::test]
async fn loopback_redirects_may_change_port_and_host() {
    let gw = TestGateway::start().await;
    let client_id = gw.register_public("http://localhost/callback").await;
    let pkce = Pkce::new();
    let resource = gw.resource();
    let presented = "http://127.0.0.1:51234/callback";
    let url = authorize_url(
        &gw,
        &authorize_params(&client_id, presented, &pkce, &resource),
    );
    let loc = approve(&TestGateway::browser(), &gw, &url, "alice").await;
    assert!(loc.starts_with(presented), "{loc}");
    let q = query_of(&loc);
    assert!(q["code"].starts_with("mog_ac_"));
    assert_eq!(q["iss"], gw.base);
}

#[tokio::test]
async fn login_is_throttled_and_does_not_tell_users_apart() {
    let gw = TestGateway::start().await;
    let redirect = "http://127.0.0.1:7777/cb";
    let client_id = gw.register_public(redirect).await;
    let pkce = Pkce::new();
    let resource = gw.resource();
    let browser = TestGateway::browser();
    let page = browser
        .get(authorize_url(
            &gw,
            &authorize_params(&client_id, redirect, &pkce, &resource),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("frame-ancestors 'none'"));
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    let html = page.text().await.unwrap();
    let request = hidden(&html, "request").unwrap();
    let csrf = hidden(&html, "csrf").unwrap();
    let login = |user: &'static str, pw: &'static str| {
        let (b, request, csrf, url) = (
            browser.clone(),
            request.clone(),
            csrf.clone(),
            gw.url("/authorize/login"),
        );
        async move {
            let r = b
                .post(url)
                .form(&[
                    ("request", request.as_str()),
                    ("csrf", csrf.as_str()),
                    ("username", user),
                    ("password", pw),
                ])
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (s1, wrong_password) = login("alice", "wrong password!").await;
    let (s2, unknown_user) = login("mallory", "wrong password!").await;
    assert_eq!((s1, s2), (401, 401));
    let msg = |h: &str| {
        h[h.find("role=\"alert\"").unwrap()..]
            .split('<')
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(msg(&wrong_password), msg(&unknown_user));
    // A bad CSRF token is refused outright.
    let r = browser
        .post(gw.url("/authorize/login"))
        .form(&[
            ("request", request.as_str()),
            ("csrf", "forged"),
            ("username", "alice"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    for _ in 0..4 {
        login("alice", "wrong password!").await;
    }
    // Five failures for alice: even the right password is refused now, for a while.
    let (s, body) = login("alice", PASSWORD).await;
    assert_eq!(s, 429, "{body}");
    // After the window, a fresh request signs in.
    gw.clock.advance(901);
    let url = authorize_url(
        &gw,
        &authorize_params(&client_id, redirect, &pkce, &resource),
    );
    let loc = approve(&browser, &gw, &url, "alice").await;
    assert!(query_of(&loc).contains_key("code"));
}

#[tokio::test]
async fn consent_names_the_client_denial_returns_access_denied_and_is_bound_to_the_session() {
    let gw = TestGateway::start().await;
    let redirect = "http://127.0.0.1:7777/cb";
    let client_id = gw.register_public(redirect).await;
    let pkce = Pkce::new();
    let resource = gw.resource();
    let url = authorize_url(
        &gw,
        &authorize_params(&client_id, redirect, &pkce, &resource),
    );
    let browser = TestGateway::browser();
    let html = browser
        .get(&url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (request, csrf) = (
        hidden(&html, "request").unwrap(),
        hidden(&html, "csrf").unwrap(),
    );
    // Login CSRF: another browser posting this request's form (with the right hidden fields)
    // lacks the binding cookie and is refused.
    let r = TestGateway::browser()
        .post(gw.url("/authorize/login"))
        .form(&[
            ("request", request.as_str()),
            ("csrf", csrf.as_str()),
            ("username", "bob"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers().get("set-cookie").is_none());
    let r = browser
        .post(gw.url("/authorize/login"))
        .form(&[
            ("request", request.as_str()),
            ("csrf", csrf.as_str()),
            ("username", "alice"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let consent = r.text().await.unwrap();
    assert!(consent.contains("Test Client"));
    assert!(consent.contains("127.0.0.1"), "shows the redirect host");
    assert!(consent.contains("<code>mcp</code>"), "lists the scopes");

    // Another browser (no session) cannot approve alice's request.
    let r = TestGateway::browser()
        .post(gw.url("/authorize/consent"))
        .form(&[
            ("request", request.as_str()),
            ("csrf", csrf.as_str()),
            ("decision", "allow"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let r = browser
        .post(gw.url("/authorize/consent"))
        .form(&[
            ("request", request.as_str()),
            ("csrf", csrf.as_str()),
            ("decision", "deny"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let q = query_of(r.headers()["location"].to_str().unwrap());
    assert_eq!(q["error"], "access_denied");
    assert_eq!(q["state"], "st-123");
    assert!(!q.contains_key("code"));
}

#[tokio::test]
async fn consent_is_remembered_per_client_and_scopes_and_revocable() {
    let gw = TestGateway::start().await;
    let redirect = "http://127.0.0.1:7777/cb";
    let client_id = gw.register_public(redirect).await;
    let resource = gw.resource();
    let browser = TestGateway::browser();
    let pkce = Pkce::new();
    let url = authorize_url(
        &gw,
        &authorize_params(&client_id, redirect, &pkce, &resource),
    );
    let first = approve(&browser, &gw, &url, "alice").await;
    assert!(query_of(&first).contains_key("code"));
    // Same browser, same request shape: straight back with a code.
    let pkce2 = Pkce::new();
    let url2 = authorize_url(
        &gw,
        &authorize_params(&client_id, redirect, &pkce2, &resource),
    );
    let r = browser.get(&url2).send().await.unwrap();
    assert_eq!(r.status(), 302);
    assert!(query_of(r.headers()["location"].to_str().unwrap()).contains_key("code"));
    // prompt=none works silently too.
    let mut p = authorize_params(&client_id, redirect, &pkce2, &resource);
    p.push(("prompt", "none"));
    let r = browser.get(authorize_url(&gw, &p)).send().await.unwrap();
    assert_eq!(r.status(), 302);
    assert!(query_of(r.headers()["location"].to_str().unwrap()).contains_key("code"));
    // Revoking alice's grants for this client forgets the consent.
    let alice = gw.store.user_by_name("alice").await.unwrap().unwrap();
    gw.store
        .revoke_grants(
            &mcp_oauth_gateway::store::GrantFilter {
                user_id: Some(alice.id),
                client_id: Some(client_id.clone()),
                grant_id: None,
            },
            mcp_oauth_gateway::store::EndReason::AdminRevoked,
            gw.now(),
        )
        .await
        .unwrap();
    let r = browser.get(&url2).send().await.unwrap();
    assert_eq!(r.status(), 200, "consent asked again");
    // prompt=none without a session says login_required: for an openly registered client
    // on the gateway's own page, with a link back, never by automatic redirect.
    let r = TestGateway::http()
        .get(authorize_url(&gw, &p))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers().get("location").is_none());
    assert!(r.text().await.unwrap().contains("error=login_required"));
}

#[tokio::test]
async fn public_url_https_makes_cookies_host_prefixed_and_secure() {
    let gw =
        TestGateway::start_with(|c| c.server.public_url = Some("https://gw.example".into())).await;
    let redirect = "http://127.0.0.1:7777/cb";
    let client_id = gw.register_public(redirect).await;
    let pkce = Pkce::new();
    let resource = gw.resource();
    // The cookies are Secure, so a client would not send them over this test's plain http:
    // carry the binding cookie by hand.
    let http = TestGateway::http();
    let r = http
        .get(authorize_url(
            &gw,
            &authorize_params(&client_id, redirect, &pkce, &resource),
        ))
        .send()
        .await
        .unwrap();
    let binding = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        binding.starts_with("__Host-mog_bind=") && binding.contains("; Secure"),
        "{binding}"
    );
    let html = r.text().await.unwrap();
    let (request, csrf) = (
        hidden(&html, "request").unwrap(),
        hidden(&html, "csrf").unwrap(),
    );
    let r = http
        .post(gw.url("/authorize/login"))
        .header("cookie", binding.split(';').next().unwrap())
        .form(&[
            ("request", request.as_str()),
            ("csrf", csrf.as_str()),
            ("username", "alice"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.starts_with("__Host-mog_session="), "{cookie}");
    assert!(
        cookie.contains("; Secure") && cookie.contains("Path=/") && !cookie.contains("Domain"),
        "{cookie}"
    );
}
