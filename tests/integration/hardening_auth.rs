//! The authorization server against a stranger: throttle races, open redirects, sessions
//! that outlive a password, cookies on loopback callbacks, text that lies to people and
//! terminals, spelling of the public URL, introspection across resources, slow clients,
//! and the outbound fetcher behind a proxy.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

fn authorize_url(gw: &TestGateway, params: &[(&str, &str)]) -> String {
    url::Url::parse_with_params(&gw.url("/authorize"), params)
        .unwrap()
        .to_string()
}

async fn register(gw: &TestGateway, body: Value) -> (u16, Value) {
    let r = TestGateway::http()
        .post(gw.url("/register"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// A login page's request handle and CSRF token, in `browser`.
async fn login_form(
    gw: &TestGateway,
    browser: &reqwest::Client,
    client_id: &str,
    redirect: &str,
) -> (String, String) {
    let pkce = Pkce::new();
    let resource = gw.resource();
    let html = browser
        .get(authorize_url(
            gw,
            &authorize_params(client_id, redirect, &pkce, &resource),
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    (
        hidden(&html, "request").unwrap(),
        hidden(&html, "csrf").unwrap(),
    )
}

/// One sign-in attempt on a login form, from `from` (a forwarded address) if given.
async fn sign_in(
    gw: &TestGateway,
    browser: &reqwest::Client,
    (request, csrf): &(String, String),
    user: &str,
    password: &str,
    from: Option<&str>,
) -> u16 {
    let mut req = browser.post(gw.url("/authorize/login"));
    if let Some(ip) = from {
        req = req.header("x-forwarded-for", ip);
    }
    req.form(&[
        ("request", request.as_str()),
        ("csrf", csrf.as_str()),
        ("username", user),
        ("password", password),
    ])
    .send()
    .await
    .unwrap()
    .status()
    .as_u16()
}

#[tokio::test]
async fn concurrent_sign_ins_get_no_more_password_checks_than_the_limit() {
    let gw = TestGateway::start().await;
    let redirect = "http://127.0.0.1:7777/cb";
    let client_id = gw.register_public(redirect).await;
    let browser = TestGateway::browser();
    let form = login_form(&gw, &browser, &client_id, redirect).await;
    let attempt = |pw| sign_in(&gw, &browser, &form, "alice", pw, None);
    let all = futures_util::future::join_all((0..10).map(|_| attempt("wrong password!"))).await;
    let checked = all.iter().filter(|s| **s == 401).count();
    let throttled = all.iter().filter(|s| **s == 429).count();
    assert_eq!((checked, throttled), (5, 5), "{all:?}");

    // A success running beside failures does not wipe them.
    gw.clock.advance(901);
    let form = login_form(&gw, &browser, &client_id, redirect).await;
    let attempt = |pw| sign_in(&gw, &browser, &form, "alice", pw, None);
    let mixed = futures_util::future::join_all(
        ["wrong password!"; 4]
            .into_iter()
            .chain([PASSWORD])
            .map(attempt),
    )
    .await;
    assert_eq!(mixed.iter().filter(|s| **s == 401).count(), 4, "{mixed:?}");
    assert_eq!(attempt("wrong password!").await, 401, "the fifth failure");
    assert_eq!(attempt(PASSWORD).await, 429, "five failures stand");
}

#[tokio::test]
async fn unvouched_clients_are_never_redirected_before_sign_in() {
    let gw = TestGateway::start_with(|c| {
        c.clients.push(
            toml::from_str(
                r#"client_id = "configured-app"
                   token_endpoint_auth_method = "none"
                   redirect_uris = ["https://app.example/cb"]"#,
            )
            .unwrap(),
        );
    })
    .await;
    let landing = "https://attacker.example/landing";
    let client_id = gw.register_public(landing).await;
    let pkce = Pkce::new();
    let resource = gw.resource();
    let mut bad = authorize_params(&client_id, landing, &pkce, &resource);
    bad.retain(|(k, _)| *k != "response_type");
    bad.push(("response_type", "x"));
    let mut prompt_none = authorize_params(&client_id, landing, &pkce, &resource);
    prompt_none.push(("prompt", "none"));
    for params in [bad, prompt_none] {
        let r = TestGateway::http()
            .get(authorize_url(&gw, &params))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{params:?}");
        assert!(
            r.headers().get("location").is_none(),
            "no automatic redirect"
        );
        let page = r.text().await.unwrap();
        assert!(page.contains("attacker.example"), "the page names the host");
        // The link back carries the error, the state and the issuer, for a person to follow.
        let href = page
            .split("href=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap()
            .replace("&amp;", "&");
        let q = query_of(&href);
        assert!(href.starts_with(landing), "{href}");
        assert!(q.contains_key("error") && q["state"] == "st-123" && q["iss"] == gw.base);
    }
    // A configured client keeps RFC 6749's error redirect, with iss.
    let mut p = authorize_params("configured-app", "https://app.example/cb", &pkce, &resource);
    p.retain(|(k, _)| *k != "response_type");
    p.push(("response_type", "x"));
    let r = TestGateway::http()
        .get(authorize_url(&gw, &p))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let q = query_of(r.headers()["location"].to_str().unwrap());
    assert_eq!(q["error"], "unsupported_response_type");
    assert_eq!(q["iss"], gw.base);
}

#[tokio::test]
async fn a_trusted_cimd_domain_keeps_error_redirects() {
    let fixture = crate::cimd_fixture::CimdFixture::standard("http://127.0.0.1:7777/cb").await;
    let gw = TestGateway::start_with(|c| {
        c.registration.cimd_allow_http_loopback = true;
        c.registration.cimd_trusted_domains = vec!["127.0.0.1".into()];
    })
    .await;
    let pkce = Pkce::new();
    let resource = gw.resource();
    let mut p = authorize_params(
        &fixture.client_id,
        "http://127.0.0.1:7777/cb",
        &pkce,
        &resource,
    );
    p.retain(|(k, _)| *k != "code_challenge");
    let r = TestGateway::http()
        .get(authorize_url(&gw, &p))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(
        query_of(r.headers()["location"].to_str().unwrap())["error"],
        "invalid_request"
    );
}

#[tokio::test]
async fn a_new_password_or_a_disabled_account_ends_what_the_old_one_opened() {
    let gw = TestGateway::start().await;
    let a = authorize_user(&gw, "alice").await;
    assert_eq!(call_whoami(&gw, &a.access_token).await.0, 200);
    // A browser signed in as alice.
    let redirect = "http://127.0.0.1:7777/cb";
    let client_id = gw.register_public(redirect).await;
    let browser = TestGateway::browser();
    let pkce = Pkce::new();
    let resource = gw.resource();
    let url = authorize_url(
        &gw,
        &authorize_params(&client_id, redirect, &pkce, &resource),
    );
    approve(&browser, &gw, &url, "alice").await;
    let shows_login = |b: reqwest::Client, url: String| async move {
        b.get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .contains("name=\"password\"")
    };
    assert!(
        !shows_login(browser.clone(), url.clone()).await,
        "signed in"
    );

    gw.accounts
        .set_password("alice", "a brand new password", false)
        .await
        .unwrap();
    // Tokens checked in the last few seconds may be cached for five.
    gw.clock.advance(6);
    assert_eq!(call_whoami(&gw, &a.access_token).await.0, 401);
    let (status, v) = gw
        .post_form(
            "/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &a.refresh_token),
                ("client_id", &a.client_id),
            ],
        )
        .await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")));
    assert!(
        shows_login(browser.clone(), url.clone()).await,
        "the session ended"
    );

    // With --keep-grants the clients stay connected; the browser session still ends.
    let b = authorize_user(&gw, "bob").await;
    let bob_browser = TestGateway::browser();
    approve(&bob_browser, &gw, &url, "bob").await;
    gw.accounts
        .set_password("bob", "another new password", true)
        .await
        .unwrap();
    gw.clock.advance(6);
    assert_eq!(call_whoami(&gw, &b.access_token).await.0, 200);
    assert!(shows_login(bob_browser.clone(), url.clone()).await);

    // Disabled: the right password no longer signs in, and the grants are gone.
    gw.accounts.set_disabled("bob", true, false).await.unwrap();
    gw.clock.advance(6);
    assert_eq!(call_whoami(&gw, &b.access_token).await.0, 401);
    let form = login_form(&gw, &bob_browser, &client_id, redirect).await;
    let new_password = "another new password";
    let disabled = sign_in(&gw, &bob_browser, &form, "bob", new_password, None).await;
    assert_eq!(disabled, 401);
    gw.accounts.set_disabled("bob", false, false).await.unwrap();
    let enabled = sign_in(&gw, &bob_browser, &form, "bob", new_password, None).await;
    assert_eq!(enabled, 200, "enabled again");
}

#[tokio::test]
async fn logout_ends_the_browser_session_and_only_from_this_origin() {
    let gw = TestGateway::start().await;
    let redirect = "http://127.0.0.1:7777/cb";
    let client_id = gw.register_public(redirect).await;
    let browser = TestGateway::browser();
    let pkce = Pkce::new();
    let resource = gw.resource();
    let url = authorize_url(
        &gw,
        &authorize_params(&client_id, redirect, &pkce, &resource),
    );
    approve(&browser, &gw, &url, "alice").await;
    let r = browser.get(gw.url("/logout")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    let page_path = r.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(page_path, "/authorize/logout");
    let page = browser
        .get(gw.url("/authorize/logout"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("<form method=\"post\""), "{page}");
    // A form on another site cannot sign anyone out.
    let r = browser
        .post(gw.url("/authorize/logout"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let asks_for_password = || async {
        let page = browser
            .get(&url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        page.contains("name=\"password\"")
    };
    assert!(!asks_for_password().await, "still signed in");
    let r = browser
        .post(gw.url("/authorize/logout"))
        .header("origin", gw.base.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(asks_for_password().await, "signed out");
}

#[tokio::test]
async fn the_gateways_cookies_never_reach_a_loopback_callback() {
    let gw = TestGateway::start().await;
    // A native client's callback server on the gateway's host, another port.
    let callback = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = callback.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = callback.accept().await {
            let mut buf = vec![0u8; 8192];
            let n = s.read(&mut buf).await.unwrap_or(0);
            record
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .await;
        }
    });
    let redirect = format!("http://127.0.0.1:{port}/callback");
    let client_id = gw.register_public(&redirect).await;
    let browser = TestGateway::browser();
    let pkce = Pkce::new();
    let resource = gw.resource();
    let url = authorize_url(
        &gw,
        &authorize_params(&client_id, &redirect, &pkce, &resource),
    );
    let r = browser.get(&url).send().await.unwrap();
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(set.contains("Path=/authorize;"), "{set}");
    let location = approve(&browser, &gw, &url, "alice").await;
    // The browser follows the redirect to the callback, carrying what cookies it would.
    browser.get(&location).send().await.unwrap();
    let requests = seen.lock().unwrap().clone();
    assert_eq!(requests.len(), 1);
    assert!(
        !requests[0].to_ascii_lowercase().contains("cookie:"),
        "{}",
        requests[0]
    );
    // A loopback callback under the gateway's own sign-in paths would get them: refused,
    // however the path is spelled.
    for path in [
        "/authorize/cb",
        "/authoriz%65/cb",
        "/Authorize/cb",
        "/authorize",
    ] {
        let under = format!("http://127.0.0.1:{port}{path}");
        let client_id = gw.register_public(&under).await;
        let r = TestGateway::http()
            .get(authorize_url(
                &gw,
                &authorize_params(&client_id, &under, &pkce, &resource),
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path}");
        assert!(r.headers().get("location").is_none());
    }
    // A browser still holding a cookie of an earlier version (path `/`) sends the name twice:
    // that counts as no cookie, and the answer tells the browser to drop the old one.
    let r = TestGateway::http()
        .get(&url)
        .header(
            "cookie",
            format!("mog_bind={}; mog_bind={}", "a".repeat(40), "b".repeat(40)),
        )
        .send()
        .await
        .unwrap();
    let set: Vec<String> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert!(
        set.iter().any(|c| c == "mog_bind=; Path=/; Max-Age=0"),
        "{set:?}"
    );
    assert!(
        set.iter()
            .any(|c| c.starts_with("mog_bind=") && c.contains("Path=/authorize;"))
    );
}

#[tokio::test]
async fn an_https_gateway_on_loopback_still_keeps_its_cookies_on_the_sign_in_paths() {
    // Browsers treat http://127.0.0.1 as a secure context and send it Secure cookies too.
    let gw = TestGateway::start_with(|c| {
        c.server.public_url = Some(format!("https://localhost:{}", c.server.listen.port()));
    })
    .await;
    let redirect = "http://127.0.0.1:7777/cb";
    let client_id = gw.register_public(redirect).await;
    let pkce = Pkce::new();
    let resource = gw.resource();
    let r = TestGateway::http()
        .get(authorize_url(
            &gw,
            &authorize_params(&client_id, redirect, &pkce, &resource),
        ))
        .send()
        .await
        .unwrap();
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set.starts_with("__Secure-mog_bind=")
            && set.contains("Path=/authorize;")
            && set.contains("Secure"),
        "{set}"
    );
    let under = "http://127.0.0.1:7777/authorize/cb";
    let client_id = gw.register_public(under).await;
    let r = TestGateway::http()
        .get(authorize_url(
            &gw,
            &authorize_params(&client_id, under, &pkce, &resource),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn an_address_over_its_limit_does_not_lock_the_accounts_it_names() {
    let gw = TestGateway::start_with(|c| {
        c.login.max_failures_per_ip = 3;
        c.login.max_failures_per_account = 5;
        c.server.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    let redirect = "http://127.0.0.1:7777/cb";
    let client_id = gw.register_public(redirect).await;
    let browser = TestGateway::browser();
    let form = login_form(&gw, &browser, &client_id, redirect).await;
    let mut seen = Vec::new();
    for _ in 0..10 {
        seen.push(
            sign_in(
                &gw,
                &browser,
                &form,
                "alice",
                "wrong password!",
                Some("198.51.100.7"),
            )
            .await,
        );
    }
    assert_eq!(seen, [401, 401, 401, 429, 429, 429, 429, 429, 429, 429]);
    // Only the three checked attempts counted against alice: from elsewhere she signs in.
    let from_elsewhere = sign_in(&gw, &browser, &form, "alice", PASSWORD, Some("203.0.113.9"));
    assert_eq!(from_elsewhere.await, 200);
}

#[tokio::test]
async fn strangers_text_cannot_forge_lines_or_names() {
    let gw = TestGateway::start().await;
    for (body, expected) in [
        (
            json!({"redirect_uris": ["http://127.0.0.1:1/cb\n2026-12-02 INFO forged"], "token_endpoint_auth_method": "none"}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": ["http://127.0.0.1:1/cb\u{1b}[2J"], "token_endpoint_auth_method": "none"}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": ["http://127.0.0.1:1/c b"], "token_endpoint_auth_method": "none"}),
            "invalid_redirect_uri",
        ),
        (
            json!({"client_name": "Claude \u{202e}edoC\u{200b}", "redirect_uris": ["http://127.0.0.1:1/cb"], "token_endpoint_auth_method": "none"}),
            "invalid_client_metadata",
        ),
        (
            json!({"client_name": "ok\u{1b}]0;title\u{7}", "redirect_uris": ["http://127.0.0.1:1/cb"], "token_endpoint_auth_method": "none"}),
            "invalid_client_metadata",
        ),
    ] {
        let (status, v) = register(&gw, body.clone()).await;
        assert_eq!(
            (status, v["error"].as_str()),
            (400, Some(expected)),
            "{body}"
        );
        let d = v["error_description"].as_str().unwrap();
        assert!(
            d.chars()
                .all(|c| (' '..='~').contains(&c) && c != '"' && c != '\\'),
            "{d:?}"
        );
    }
    // What is stored is the canonical form.
    let (status, v) = register(
        &gw,
        json!({"redirect_uris": ["HTTP://LOCALHOST:3000/cb"], "token_endpoint_auth_method": "none"}),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(v["redirect_uris"], json!(["http://localhost:3000/cb"]));
    // A name that mixes alphabets is accepted but shown with a warning.
    let (status, v) = register(
        &gw,
        json!({"client_name": "\u{0421}laude", "redirect_uris": ["http://127.0.0.1:7777/cb"], "token_endpoint_auth_method": "none"}),
    )
    .await;
    assert_eq!(status, 201);
    let client_id = v["client_id"].as_str().unwrap().to_string();
    let pkce = Pkce::new();
    let resource = gw.resource();
    let page = TestGateway::browser()
        .get(authorize_url(
            &gw,
            &authorize_params(&client_id, "http://127.0.0.1:7777/cb", &pkce, &resource),
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("mixes letters of different alphabets"),
        "{page}"
    );
    // A request value never comes back in a description.
    let (status, v) = gw
        .post_form(
            "/token",
            &[
                ("grant_type", "x\n2026-12-02 forged\u{1b}[2J"),
                ("client_id", &client_id),
            ],
        )
        .await;
    assert_eq!(status, 400);
    let d = v["error_description"].as_str().unwrap();
    assert!(!d.contains("forged") && !d.contains('\n'), "{d}");
}

#[tokio::test]
async fn error_descriptions_in_redirects_never_quote_the_request() {
    let gw = TestGateway::start_with(|c| {
        c.clients.push(
            toml::from_str(
                r#"client_id = "app"
                   token_endpoint_auth_method = "none"
                   redirect_uris = ["https://app.example/cb"]"#,
            )
            .unwrap(),
        );
    })
    .await;
    let pkce = Pkce::new();
    for (key, value) in [
        ("resource", "https://evil.example/\"><script>x</script>"),
        ("scope", "mcp PLEASE-CALL-+1-555-EVIL"),
        ("code_challenge_method", "Visit evil.example"),
    ] {
        let resource = gw.resource();
        let mut p = authorize_params("app", "https://app.example/cb", &pkce, &resource);
        p.retain(|(k, _)| *k != key);
        p.push((key, value));
        let r = TestGateway::http()
            .get(authorize_url(&gw, &p))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 302, "{key}");
        let q = query_of(r.headers()["location"].to_str().unwrap());
        let d = &q["error_description"];
        assert!(
            !d.contains("evil") && !d.contains("EVIL") && !d.contains('<'),
            "{key}: {d}"
        );
        assert!(
            d.chars()
                .all(|c| (' '..='~').contains(&c) && c != '"' && c != '\\')
        );
    }
}

#[tokio::test]
async fn the_public_url_is_canonical_so_clients_can_sign_in() {
    let gw = TestGateway::start_with(|c| {
        c.server.public_url = Some(format!("http://LocalHost:{}/", c.server.listen.port()));
    })
    .await;
    assert_eq!(
        gw.base,
        format!("http://localhost:{}", gw.base.rsplit(':').next().unwrap())
    );
    let meta: Value = TestGateway::http()
        .get(gw.url("/.well-known/oauth-protected-resource"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let resource = meta["resource"].as_str().unwrap().to_string();
    assert_eq!(resource, format!("{}/mcp", gw.base));
    let t = authorize_for(&gw, "alice", &resource).await;
    assert_eq!(call_whoami(&gw, &t.access_token).await.0, 200);
    // Another spelling of the same resource is the same resource.
    let other = resource.replace("localhost", "LOCALHOST") + "/";
    let t = authorize_for(&gw, "bob", &other).await;
    assert_eq!(call_whoami(&gw, &t.access_token).await.0, 200);
}

#[tokio::test]
async fn introspection_sees_only_the_resource_servers_own_tokens() {
    let rec = crate::hardening::Recorder::start().await;
    let url = format!("{}/mcp", rec.url);
    let gw = TestGateway::start_with(move |c| {
        c.upstreams
            .push(toml::from_str(&format!("name = \"other\"\nurl = \"{url}\"")).unwrap());
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
    let mine = authorize_user(&gw, "alice").await;
    let theirs = authorize_for(&gw, "alice", &format!("{}/mcp/other", gw.base)).await;
    let introspect = |token: String| {
        let url = gw.url("/introspect");
        async move {
            TestGateway::http()
                .post(url)
                .basic_auth("rs", Some("resource-server-secret"))
                .form(&[("token", token.as_str())])
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    assert_eq!(introspect(mine.access_token.clone()).await["active"], true);
    assert_eq!(
        introspect(theirs.access_token.clone()).await["active"],
        false
    );
    assert_eq!(
        introspect(mine.refresh_token.clone()).await["active"],
        false,
        "another client's refresh token"
    );
}

#[tokio::test]
async fn slow_or_idle_connections_are_dropped_and_capped() {
    let gw = TestGateway::start_with(|c| {
        c.server.header_read_timeout_secs = 1;
        c.server.max_connections = 1;
    })
    .await;
    let addr = gw.direct.trim_start_matches("http://").to_string();
    // Headers that never finish.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // While it holds the only slot, another client waits ...
    let mut waiting = tokio::net::TcpStream::connect(&addr).await.unwrap();
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nconnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let early = tokio::time::timeout(Duration::from_millis(500), waiting.read(&mut buf)).await;
    assert!(early.is_err(), "served past the connection cap");
    // ... until the slow one is dropped.
    let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf))
        .await
        .expect("the unfinished request is dropped")
        .unwrap_or(0);
    assert!(
        n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    let n = tokio::time::timeout(Duration::from_secs(5), waiting.read(&mut buf))
        .await
        .expect("served once a slot is free")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Kept alive but idle: closed after the same bound.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match waiting.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "an idle kept-alive connection is closed");
}

#[tokio::test]
async fn a_body_sent_a_byte_at_a_time_is_cut_off() {
    let rec = crate::hardening::Recorder::start().await;
    let url = format!("{}/mcp", rec.url);
    let gw = TestGateway::start_with(move |c| {
        c.server.body_read_timeout_secs = 1;
        c.upstreams
            .push(toml::from_str(&format!("name = \"r\"\nurl = \"{url}\"")).unwrap());
    })
    .await;
    let t = authorize_for(&gw, "alice", &format!("{}/mcp/r", gw.base)).await;
    let addr = gw.direct.trim_start_matches("http://").to_string();
    for (path, auth, expected) in [
        ("/token", String::new(), "HTTP/1.1 400"),
        (
            "/mcp/r",
            format!("authorization: Bearer {}\r\n", t.access_token),
            "HTTP/1.1 408",
        ),
    ] {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}content-type: application/x-www-form-urlencoded\r\ncontent-length: 1000\r\n\r\ngrant_type="
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("answered without the rest of the body")
            .unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with(expected), "{path}: {answer}");
    }
    assert_eq!(rec.seen.count(), 0);
}

const BIN: &str = env!("CARGO_BIN_EXE_mcp-oauth-gateway");

#[tokio::test]
async fn client_metadata_fetches_ignore_proxy_variables_and_name_their_failure() {
    // A "proxy" that would resolve names inside the network: it must never be asked.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = asked.clone();
    tokio::spawn(async move {
        while let Ok((_s, _)) = proxy.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(BIN)
        .current_dir(dir.path())
        .env(
            "MCP_OAUTH_GATEWAY_SERVER__LISTEN",
            format!("127.0.0.1:{port}"),
        )
        .env("MCP_OAUTH_GATEWAY_STORE__URL", "sqlite://state.db")
        .env_remove("MCP_OAUTH_GATEWAY_CONFIG")
        .env("HTTPS_PROXY", &proxy_url)
        .env("https_proxy", &proxy_url)
        .env("ALL_PROXY", &proxy_url)
        .env("all_proxy", &proxy_url)
        .env("NO_PROXY", "")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = TestGateway::http();
    let up = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if http.get(format!("{base}/healthz")).send().await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(up.is_ok(), "the gateway started");
    let pkce = Pkce::new();
    for (client_id, cause) in [
        ("https://localhost/client.json", "no public address"),
        ("https://nowhere.invalid/client.json", "did not resolve"),
    ] {
        let url = url::Url::parse_with_params(
            &format!("{base}/authorize"),
            &[
                ("response_type", "code"),
                ("client_id", client_id),
                ("redirect_uri", "http://127.0.0.1:1/cb"),
                ("code_challenge", pkce.challenge.as_str()),
                ("code_challenge_method", "S256"),
            ],
        )
        .unwrap();
        let r = http.get(url).send().await.unwrap();
        assert_eq!(r.status(), 400);
        let page = r.text().await.unwrap();
        assert!(page.contains(cause), "{client_id}: {page}");
    }
    assert_eq!(
        asked.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the proxy from the environment was used"
    );
    child.kill().await.unwrap();
}
