//! Signing in at a real OpenID Connect provider (npm `oidc-provider`) through `[[login.oidc]]`:
//! the gateway's consent page first, then the provider's own pages, back through the
//! callback, a code for the MCP client, tokens, and a tool call that shows who signed in.
//! And everything that must stop a sign-in: an allow-list, each thing wrong in an ID token,
//! a provider down or hanging, a refresh the provider refuses.

use rmcp::transport::auth::{
    AuthorizationManager, AuthorizationRequest, InMemoryCredentialStore, OAuthState,
};
use serde_json::{Value, json};

use crate::oidc_provider::{OidcProvider, free_port, walk_through};
use crate::support::*;
use mcp_oauth_gateway::config::Config;
use mcp_oauth_gateway::login::oidc::ProviderTokens;
use mcp_oauth_gateway::login::oidc::config::OidcConfig;
use mcp_oauth_gateway::store::{EndReason, GrantFilter};

const REDIRECT: &str = "http://127.0.0.1:9999/callback";
const SECRET: &str = "the gateway's secret at the provider";

struct Setup {
    gw: TestGateway,
    op: OidcProvider,
}

/// A gateway whose `[[login.oidc]]` named `corp` is the provider (with `extra` TOML lines
/// added to its entry), and the provider, registered with the gateway's callback.
async fn setup(extra: &str, configure: impl Fn(&mut Config)) -> Option<Setup> {
    crate::js::node()?;
    // The provider's port is chosen before the gateway starts (its issuer is in the
    // gateway's configuration); another test may take it meanwhile: then all again.
    for _ in 0..3 {
        let port = free_port();
        let issuer = format!("http://127.0.0.1:{port}");
        let entry: OidcConfig = toml::from_str(&format!(
            "name = \"corp\"\nissuer = \"{issuer}\"\nclient_id = \"gateway\"\nclient_secret = \"{SECRET}\"\nscopes = [\"openid\", \"email\", \"profile\", \"groups\"]\n{extra}"
        ))
        .expect("the entry parses");
        let gw = TestGateway::start_with(|c| {
            c.login.oidc = vec![entry];
            if !c.store.url.starts_with("sqlite:") {
                let key = mcp_oauth_gateway::crypto::EncryptionKeys::generate_entry("t1").unwrap();
                c.keys.encryption = vec![key.into()];
            }
            configure(c);
        })
        .await;
        let callback = format!("{}/login/corp/callback", gw.base);
        match OidcProvider::start_on(port, "gateway", SECRET, &callback).await? {
            Ok(op) => return Some(Setup { gw, op }),
            Err(why) => eprintln!("oidc-provider did not start ({why}); again"),
        }
    }
    panic!("oidc-provider did not start on three ports");
}

/// The person's side of an authorization: the gateway's sign-in page (a chooser), the
/// provider's button, the gateway's consent page (which must name the client and the
/// provider before anything is sent there), the provider's pages as `login`, and back
/// through the callback. Returns the gateway's last answer.
async fn sign_in(
    gw: &TestGateway,
    browser: &reqwest::Client,
    authorize: &str,
    login: &str,
) -> reqwest::Response {
    let r = browser.get(authorize).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    let consent = if page.contains("Allow access?") {
        page
    } else {
        assert!(page.contains("Sign in with corp"), "{page}");
        let r = browser
            .post(gw.url("/authorize/login/corp"))
            .form(&[
                ("request", hidden(&page, "request").unwrap()),
                ("csrf", hidden(&page, "csrf").unwrap()),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    };
    assert!(consent.contains("Allow access?"), "{consent}");
    assert!(
        consent.contains("you will sign in with <strong>Sign in with corp</strong> next"),
        "{consent}"
    );
    let r = decide(gw, browser, "corp", &consent, "allow").await;
    if r.status() != 303 {
        return r;
    }
    let to = r.headers()["location"].to_str().unwrap().to_string();
    let asked: std::collections::HashMap<String, String> = url::Url::parse(&to)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    assert_eq!(asked["code_challenge_method"], "S256");
    assert_eq!(
        asked["redirect_uri"],
        format!("{}/login/corp/callback", gw.base)
    );
    assert!(asked["nonce"].len() >= 43 && asked["state"].len() >= 43);
    let back = walk_through(
        browser,
        &to,
        login,
        &format!("{}/login/corp/callback", gw.base),
    )
    .await;
    let r = browser.get(back.as_str()).send().await.unwrap();
    assert_eq!(r.status(), 303);
    let next = r.headers()["location"].to_str().unwrap().to_string();
    browser.get(gw.url(&next)).send().await.unwrap()
}

/// Posts the consent page's decision for a redirecting source (`allow` or `deny`).
async fn decide(
    gw: &TestGateway,
    browser: &reqwest::Client,
    source: &str,
    consent: &str,
    decision: &str,
) -> reqwest::Response {
    browser
        .post(gw.url(&format!("/authorize/login/{source}")))
        .form(&[
            ("request", hidden(consent, "request").unwrap().as_str()),
            ("csrf", hidden(consent, "csrf").unwrap().as_str()),
            ("decision", decision),
        ])
        .send()
        .await
        .unwrap()
}

fn authorize_url(gw: &TestGateway, client_id: &str, pkce: &Pkce) -> String {
    authorize_url_for(gw, client_id, pkce, &gw.resource())
}

fn authorize_url_for(gw: &TestGateway, client_id: &str, pkce: &Pkce, resource: &str) -> String {
    let params = authorize_params(client_id, REDIRECT, pkce, resource);
    url::Url::parse_with_params(&gw.url("/authorize"), &params)
        .unwrap()
        .to_string()
}

/// A whole authorization of a fresh client as `login`: the token response, or the page the
/// gateway ended on (status, text).
async fn authorize_via_provider(
    gw: &TestGateway,
    login: &str,
) -> Result<(String, Value), (u16, String)> {
    authorize_via_provider_for(gw, login, &gw.resource()).await
}

async fn authorize_via_provider_for(
    gw: &TestGateway,
    login: &str,
    resource: &str,
) -> Result<(String, Value), (u16, String)> {
    let browser = TestGateway::browser();
    let client_id = gw.register_public(REDIRECT).await;
    let pkce = Pkce::new();
    let r = sign_in(
        gw,
        &browser,
        &authorize_url_for(gw, &client_id, &pkce, resource),
        login,
    )
    .await;
    if r.status() != 302 {
        let status = r.status().as_u16();
        return Err((status, r.text().await.unwrap()));
    }
    let code = query_of(r.headers()["location"].to_str().unwrap())["code"].clone();
    let (s, tokens) = gw
        .post_form(
            "/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("client_id", &client_id),
                ("code_verifier", &pkce.verifier),
            ],
        )
        .await;
    assert_eq!(s, 200, "{tokens}");
    Ok((client_id, tokens))
}

#[tokio::test]
async fn an_mcp_client_gets_tokens_for_a_person_who_signed_in_at_the_provider() {
    let Some(Setup { gw, op: _op }) = setup("", |_| {}).await else {
        return;
    };
    // rmcp does discovery, registration and PKCE; the person signs in at the provider.
    let mut manager = AuthorizationManager::new(&gw.resource()).await.unwrap();
    manager.set_credential_store(InMemoryCredentialStore::new());
    let mut state = OAuthState::Unauthorized(manager);
    state
        .start_authorization(AuthorizationRequest::new(REDIRECT).with_client_name("rmcp via corp"))
        .await
        .unwrap();
    let url = state.get_authorization_url().await.unwrap();
    let browser = TestGateway::browser();
    let r = sign_in(&gw, &browser, &url, "carol").await;
    assert_eq!(r.status(), 302, "{}", r.text().await.unwrap_or_default());
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(REDIRECT), "{location}");
    state.handle_callback_url(&location).await.unwrap();
    let manager = state.into_authorization_manager().unwrap();
    let who = crate::rmcp_client::whoami_with(&gw, manager).await;
    assert_eq!(who["user"], "carol.corp");

    // The provider's subject is linked, never its e-mail; the verified address and the
    // groups are the user's.
    let user = gw
        .store
        .user_by_identity("corp", "carol")
        .await
        .unwrap()
        .expect("linked");
    assert_eq!(user.username, "carol.corp");
    // A source may not answer as the gateway's own accounts.
    let bad: Result<OidcConfig, _> = toml::from_str(
        "name = \"local\"\nissuer = \"https://id.example.com\"\nclient_id = \"c\"\nclient_secret = \"s\"",
    );
    assert_eq!(bad.unwrap().resolve(0).unwrap_err().0, "login.oidc[0].name");
    assert_eq!(user.email.as_deref(), Some("carol@example.com"));
    // The provider's groups, kept apart from the gateway's own.
    assert_eq!(user.groups, vec!["staff@corp".to_string()]);
    assert!(user.password_hash.is_empty(), "no local password");
    let grants = gw
        .store
        .list_grants(&GrantFilter::default(), false)
        .await
        .unwrap();
    assert_eq!(grants[0].login_source, "corp");

    // Signing in again is the same user; the gateway's consent is asked again before the
    // provider (which remembers its own) is visited, so a new client is never approved unseen.
    let (_, tokens) = authorize_via_provider(&gw, "carol")
        .await
        .expect("signed in again");
    let (s, who) = call_whoami(&gw, tokens["access_token"].as_str().unwrap()).await;
    assert_eq!(s, 200);
    assert_eq!(who["result"]["structuredContent"]["user"], "carol.corp");
}

#[tokio::test]
async fn denying_on_the_consent_page_never_visits_the_provider() {
    let Some(Setup { gw, op: _op }) = setup("", |c| c.login.local_accounts = false).await else {
        return;
    };
    let browser = TestGateway::browser();
    let client_id = gw.register_public(REDIRECT).await;
    // Only the provider: the consent page comes first, straight from /authorize.
    let r = browser
        .get(authorize_url(&gw, &client_id, &Pkce::new()))
        .send()
        .await
        .unwrap();
    let consent = r.text().await.unwrap();
    assert!(consent.contains("Allow access?"), "{consent}");
    assert!(
        !consent.contains(r#"name="password""#),
        "no local form: {consent}"
    );
    let r = decide(&gw, &browser, "corp", &consent, "deny").await;
    assert_eq!(r.status(), 303);
    let location = r.headers()["location"].to_str().unwrap();
    assert!(location.starts_with(REDIRECT), "{location}");
    assert_eq!(query_of(location)["error"], "access_denied");
    // The provider answering access_denied (the person cancelled there): a page saying so.
    // The provider promises RFC 9207's `iss` in its answers, so an answer without it (or
    // with another) is a possible mix-up and refused.
    let op_issuer = _op.issuer.clone();
    for (iss, expect) in [
        (None, "did not come from the expected identity provider"),
        (
            Some("http://127.0.0.1:1"),
            "did not come from the expected identity provider",
        ),
        (Some(op_issuer.as_str()), "cancelled or refused there"),
    ] {
        let r = browser
            .get(authorize_url(&gw, &client_id, &Pkce::new()))
            .send()
            .await
            .unwrap();
        let consent = r.text().await.unwrap();
        let r = decide(&gw, &browser, "corp", &consent, "allow").await;
        let to = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
        let state = to
            .query_pairs()
            .find(|(k, _)| k == "state")
            .unwrap()
            .1
            .into_owned();
        let mut back = url::Url::parse(&gw.url("/login/corp/callback")).unwrap();
        back.query_pairs_mut()
            .append_pair("error", "access_denied")
            .append_pair("state", &state);
        if let Some(iss) = iss {
            back.query_pairs_mut().append_pair("iss", iss);
        }
        let r = browser.get(back).send().await.unwrap();
        let next = r.headers()["location"].to_str().unwrap().to_string();
        let r = browser.get(gw.url(&next)).send().await.unwrap();
        assert_eq!(r.status(), 403);
        let page = r.text().await.unwrap();
        assert!(page.contains(expect), "{iss:?}: {page}");
    }
}

#[tokio::test]
async fn the_allow_list_lets_in_only_whom_it_names() {
    let Some(Setup { gw, op: _op }) = setup("allowed_groups = [\"admins\"]", |_| {}).await else {
        return;
    };
    assert!(authorize_via_provider(&gw, "admin-ann").await.is_ok());
    let (status, page) = authorize_via_provider(&gw, "bob")
        .await
        .expect_err("not on the list");
    assert_eq!(status, 403);
    assert!(
        page.contains("not on this server&#39;s list")
            || page.contains("not on this server's list"),
        "{page}"
    );
    assert!(
        gw.store
            .user_by_identity("corp", "bob")
            .await
            .unwrap()
            .is_none(),
        "no user made"
    );
    // By e-mail domain instead.
    let Some(Setup { gw, op: _op }) = setup("allowed_domains = [\"example.org\"]", |_| {}).await
    else {
        return;
    };
    let (status, _) = authorize_via_provider(&gw, "dave")
        .await
        .expect_err("example.com is not example.org");
    assert_eq!(status, 403);
}

#[tokio::test]
async fn id_tokens_with_anything_wrong_are_refused() {
    let Some(Setup { gw, op }) = setup("", |_| {}).await else {
        return;
    };
    for tamper in ["iss", "aud", "nonce", "expired", "unsigned", "foreign"] {
        op.control(&format!("tamper={tamper}")).await;
        let (status, page) = authorize_via_provider(&gw, "erin").await.expect_err(tamper);
        assert_eq!(status, 403, "{tamper}");
        assert!(page.contains("could not be verified"), "{tamper}: {page}");
    }
    assert!(
        gw.store
            .user_by_identity("corp", "erin")
            .await
            .unwrap()
            .is_none()
    );
    op.control("tamper=").await;
    assert!(authorize_via_provider(&gw, "erin").await.is_ok());
}

#[tokio::test]
async fn a_new_signing_key_at_the_provider_is_fetched_once_it_is_used() {
    let Some(Setup { gw, op }) = setup("", |_| {}).await else {
        return;
    };
    assert!(authorize_via_provider(&gw, "fay").await.is_ok());
    op.control("rotate=1").await;
    // Within 30 s of the last fetch an unknown key is not fetched again (made-up key ids
    // cannot make the gateway hammer the provider)…
    let (status, _) = authorize_via_provider(&gw, "fay")
        .await
        .expect_err("not fetched yet");
    assert_eq!(status, 403);
    // …after that, once.
    gw.clock.advance(31);
    assert!(authorize_via_provider(&gw, "fay").await.is_ok());
}

#[tokio::test]
async fn a_provider_down_or_hanging_is_a_page_not_a_500_or_a_hang() {
    // Nothing listens at the issuer.
    let Some(Setup { gw, op }) = setup("timeout_secs = 2", |_| {}).await else {
        return;
    };
    drop(op);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (status, page) = authorize_via_provider(&gw, "gus").await.expect_err("down");
    assert_eq!(status, 503);
    assert!(page.contains("unavailable right now"), "{page}");

    // Something listens but never answers: bounded by timeout_secs.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", hang.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            open.push(s);
        }
    });
    let entry: OidcConfig = toml::from_str(&format!(
        "name = \"corp\"\nissuer = \"{issuer}\"\nclient_id = \"gateway\"\nclient_secret = \"x\"\ntimeout_secs = 1"
    ))
    .unwrap();
    let gw = TestGateway::start_with(|c| {
        c.login.oidc = vec![entry];
        if !c.store.url.starts_with("sqlite:") {
            let key = mcp_oauth_gateway::crypto::EncryptionKeys::generate_entry("t1").unwrap();
            c.keys.encryption = vec![key.into()];
        }
    })
    .await;
    let started = std::time::Instant::now();
    let (status, _) = authorize_via_provider(&gw, "gus").await.expect_err("hangs");
    assert_eq!(status, 503);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    held.abort();
}

#[tokio::test]
async fn a_refresh_the_provider_refuses_ends_the_users_grants() {
    let Some(Setup { gw, op }) = setup(
        "keep_provider_tokens = true\nauthorization_params = { prompt = \"consent\" }",
        |_| {},
    )
    .await
    else {
        return;
    };
    let (client_id, tokens) = authorize_via_provider(&gw, "hal").await.expect("signed in");
    let grants = gw
        .store
        .list_grants(&GrantFilter::default(), false)
        .await
        .unwrap();
    let grant = grants[0].id.clone();
    let first = kept(&gw, &grant).await;
    let provider_refresh = first
        .refresh_token
        .clone()
        .expect("the provider gave a refresh token");

    let refresh = |token: String| {
        let gw = &gw;
        let client_id = client_id.clone();
        async move {
            gw.post_form(
                "/token",
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &token),
                    ("client_id", &client_id),
                ],
            )
            .await
        }
    };
    // The provider's access token is fresh: a refresh here does not call it.
    let (s, tokens) = refresh(tokens["refresh_token"].as_str().unwrap().to_string()).await;
    assert_eq!(s, 200, "{tokens}");
    // Near its expiry, the provider is asked, and accepts: what is kept is renewed.
    gw.clock.advance(3600);
    let (s, tokens) = refresh(tokens["refresh_token"].as_str().unwrap().to_string()).await;
    assert_eq!(s, 200, "{tokens}");
    let renewed = kept(&gw, &grant).await;
    assert_ne!(renewed.access_token, first.access_token);

    // The session is revoked at the provider: the next renewal is refused there, and the
    // user's grants end here.
    let current = renewed.refresh_token.clone().unwrap_or(provider_refresh);
    let r = reqwest::Client::new()
        .post(format!("{}/token/revocation", op.issuer))
        .basic_auth("gateway", Some(SECRET))
        .form(&[
            ("token", current.as_str()),
            ("token_type_hint", "refresh_token"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    gw.clock.advance(3600);
    let access = tokens["access_token"].as_str().unwrap().to_string();
    let (s, body) = refresh(tokens["refresh_token"].as_str().unwrap().to_string()).await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    let ended = gw.store.grant(&grant).await.unwrap().unwrap();
    assert!(ended.revoked_at.is_some());
    assert_eq!(ended.ended_reason, Some(EndReason::ProviderRefused));
    let (s, _) = call_whoami(&gw, &access).await;
    assert_eq!(s, 401);
    assert!(
        gw.auth
            .contexts
            .read(&gw.store, "corp", &grant)
            .await
            .unwrap()
            .is_none()
    );
}

async fn kept(gw: &TestGateway, grant: &str) -> ProviderTokens {
    let raw = gw
        .auth
        .contexts
        .read(&gw.store, "corp", grant)
        .await
        .unwrap()
        .expect("kept");
    serde_json::from_slice::<ProviderTokens>(&raw).unwrap()
}

/// GitHub: OAuth 2.0 without OpenID Connect, against a local fixture of its endpoints.
#[tokio::test]
async fn github_signs_in_by_its_api_with_org_and_team_allow_lists() {
    use crate::github_fixture::{GitHubFixture, GitHubUser};
    let gh = GitHubFixture::start("gh-client", "gh-secret").await;
    let entry: OidcConfig = toml::from_str(&format!(
        "name = \"github\"\nprovider = \"github\"\nweb_url = \"{}\"\nclient_id = \"gh-client\"\nclient_secret = \"gh-secret\"\nallowed_orgs = [\"Acme/Platform\", \"friends\"]",
        gh.url
    ))
    .unwrap();
    let gw = TestGateway::start_with(|c| {
        c.login.oidc = vec![entry];
        c.login.local_accounts = false;
        if !c.store.url.starts_with("sqlite:") {
            let key = mcp_oauth_gateway::crypto::EncryptionKeys::generate_entry("t1").unwrap();
            c.keys.encryption = vec![key.into()];
        }
    })
    .await;
    let through_github = |user: GitHubUser| {
        gh.next_user(user);
        let gw = &gw;
        async move {
            let browser = TestGateway::browser();
            let client_id = gw.register_public(REDIRECT).await;
            let pkce = Pkce::new();
            let r = browser
                .get(authorize_url(gw, &client_id, &pkce))
                .send()
                .await
                .unwrap();
            let consent = r.text().await.unwrap();
            assert!(consent.contains("Sign in with GitHub"), "{consent}");
            let r = decide(gw, &browser, "github", &consent, "allow").await;
            assert_eq!(r.status(), 303);
            let to = r.headers()["location"].to_str().unwrap().to_string();
            assert!(
                to.contains("scope=read%3Auser+user%3Aemail+read%3Aorg"),
                "{to}"
            );
            let r = browser.get(&to).send().await.unwrap();
            let callback = r.headers()["location"].to_str().unwrap().to_string();
            let r = browser.get(&callback).send().await.unwrap();
            let next = r.headers()["location"].to_str().unwrap().to_string();
            let r = browser.get(gw.url(&next)).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let octo = GitHubUser {
        id: 583231,
        login: "octocat",
        emails: vec![
            ("old@example.com", false, true),
            ("octo@example.com", true, true),
        ],
        orgs: vec!["acme"],
        teams: vec![("acme", "platform")],
    };
    let (status, _) = through_github(octo).await;
    assert_eq!(status, 302);
    let user = gw
        .store
        .user_by_identity("github", "583231")
        .await
        .unwrap()
        .expect("linked by GitHub's numeric id, not the login");
    assert_eq!(user.username, "octocat.github");
    assert_eq!(user.email.as_deref(), Some("octo@example.com"));

    // In the org by another team only: refused. In an allowed org (without team): in.
    let (status, page) = through_github(GitHubUser {
        id: 2,
        login: "mona",
        emails: vec![("mona@example.com", true, false)],
        orgs: vec!["acme"],
        teams: vec![("acme", "sales")],
    })
    .await;
    assert_eq!(status, 403, "{page}");
    let (status, _) = through_github(GitHubUser {
        id: 3,
        login: "pal",
        emails: vec![("pal@example.com", true, false)],
        orgs: vec!["friends"],
        teams: vec![],
    })
    .await;
    assert_eq!(status, 302);
    let pal = gw
        .store
        .user_by_identity("github", "3")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pal.email, None, "an unverified address is not taken");
}

/// An upstream that opts in gets the user's identity provider access token — never the MCP
/// client's — renewed before it expires; a user signed in another way gets none.
#[tokio::test]
async fn an_upstream_that_opts_in_gets_the_providers_token_not_the_clients() {
    let up = crate::upstream_fixture::Upstream::start(false).await;
    let url = up.url.clone();
    let Some(Setup { gw, op: _op }) = setup(
        "keep_provider_tokens = true\nauthorization_params = { prompt = \"consent\" }",
        move |c| {
            let mut u: mcp_oauth_gateway::config::UpstreamConfig =
                toml::from_str(&format!("name = \"api\"\nurl = \"{url}\"")).unwrap();
            u.credentials = mcp_oauth_gateway::config::UpstreamCredentials::ProviderToken {
                source: "corp".into(),
            };
            c.upstreams.push(u);
        },
    )
    .await
    else {
        return;
    };
    let resource = format!("{}/mcp/api", gw.base);
    let (_, tokens) = authorize_via_provider_for(&gw, "ivy", &resource)
        .await
        .expect("signed in");
    let access = tokens["access_token"].as_str().unwrap().to_string();
    let grant = gw
        .store
        .list_grants(&GrantFilter::default(), false)
        .await
        .unwrap()[0]
        .id
        .clone();
    let first = kept(&gw, &grant).await;
    let seen =
        crate::proxy::rmcp_call(resource.clone(), &access, "headers", serde_json::json!({})).await;
    assert_eq!(
        seen["authorization"],
        format!("Bearer {}", first.access_token).as_str()
    );
    assert_ne!(seen["authorization"], format!("Bearer {access}").as_str());

    // Near its expiry it is renewed at the provider before it goes upstream.
    gw.clock.advance(first.expires_at.unwrap() - gw.now() - 30);
    let seen =
        crate::proxy::rmcp_call(resource.clone(), &access, "headers", serde_json::json!({})).await;
    let renewed = kept(&gw, &grant).await;
    assert_ne!(renewed.access_token, first.access_token);
    assert_eq!(
        seen["authorization"],
        format!("Bearer {}", renewed.access_token).as_str()
    );

    // Someone signed in with a local account has no provider token: nothing is sent, the
    // call fails with a reason.
    let alice = authorize_for(&gw, "alice", &resource).await;
    let r = TestGateway::http()
        .post(&resource)
        .bearer_auth(&alice.access_token)
        .header("accept", "application/json, text/event-stream")
        .json(&serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
}

/// Entra ID's groups overage: the ID token points elsewhere instead of listing the groups,
/// and the gateway asks Microsoft Graph (here a local stand-in) with the sign-in's access
/// token. A Graph that refuses leaves the person without groups, so a group allow-list
/// refuses them.
#[tokio::test]
async fn entras_groups_overage_is_resolved_through_graph() {
    use std::sync::{Arc, Mutex};
    let refuse = Arc::new(Mutex::new(false));
    let seen_bearer = Arc::new(Mutex::new(None::<String>));
    let (r2, s2) = (refuse.clone(), seen_bearer.clone());
    let graph = axum::Router::new().route(
        "/v1.0/me/getMemberObjects",
        axum::routing::post(move |headers: axum::http::HeaderMap| {
            let (refuse, seen) = (r2.clone(), s2.clone());
            async move {
                *seen.lock().unwrap() = headers
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_string());
                if *refuse.lock().unwrap() {
                    return (
                        axum::http::StatusCode::FORBIDDEN,
                        axum::Json(
                            serde_json::json!({"error": {"code": "Authorization_RequestDenied"}}),
                        ),
                    );
                }
                (
                    axum::http::StatusCode::OK,
                    axum::Json(serde_json::json!({"value": ["g-1", "g-admins"]})),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let graph_url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, graph).await;
    });
    let Some(Setup { gw, op }) = setup(
        &format!(
            "provider = \"entra\"\nlabel = \"Sign in with corp\"\ngraph_url = \"{graph_url}\"\nallowed_groups = [\"g-admins\"]"
        ),
        |_| {},
    )
    .await
    else {
        task.abort();
        return;
    };
    op.control("tamper=overage").await;
    if let Err((status, page)) = authorize_via_provider(&gw, "quinn").await {
        panic!("{status}: {page}");
    }
    let user = gw
        .store
        .user_by_identity("corp", "quinn")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        user.groups,
        vec!["g-1@corp".to_string(), "g-admins@corp".to_string()]
    );
    assert!(
        seen_bearer
            .lock()
            .unwrap()
            .as_deref()
            .is_some_and(|b| b.starts_with("Bearer ")),
        "Graph is asked with the sign-in's access token"
    );
    *refuse.lock().unwrap() = true;
    let (status, _) = authorize_via_provider(&gw, "rhea")
        .await
        .expect_err("no groups");
    assert_eq!(status, 403);
    task.abort();
}

#[tokio::test]
async fn token_exchange_with_the_persons_identity_provider_token_as_the_subject() {
    use crate::broker::{Upstream, hint_of, tool};
    let Some(up) = Upstream::start(&[("EXCHANGE", "gw-exchange")]).await else {
        return;
    };
    let url = up.url.clone();
    let issuer = up.issuer();
    let Some(Setup { gw, op }) = setup("keep_provider_tokens = true", move |c| {
        c.broker.allow_http_loopback = true;
        c.upstreams.push(
            serde_json::from_value(json!({
                "name": "linear",
                "url": url,
                "credentials": {
                    "type": "oauth",
                    "grant": "token_exchange",
                    "client_id": "gw-exchange",
                    "subject_source": "corp",
                    "authorization_server": issuer,
                },
            }))
            .unwrap(),
        );
    })
    .await
    else {
        return;
    };
    // The upstream's server trusts the provider: it checks a subject token at its userinfo.
    up.trust(json!({"userinfo": format!("{}/me", op.issuer)}))
        .await;
    let resource = format!("{}/mcp/linear", gw.base);
    let (_, tokens) = authorize_via_provider_for(&gw, "ivy", &resource)
        .await
        .expect("signed in at the provider");
    let token = tokens["access_token"].as_str().unwrap();
    let first = hint_of(&tool(&gw, token, "2025-11-25", "token_hint").await);
    assert_eq!(
        hint_of(&tool(&gw, token, "2025-11-25", "token_hint").await),
        first
    );
    let stats = up.stats().await;
    assert_eq!(stats["exchanges"], 1, "{stats}");
    // The subject the server saw is the person at the provider.
    assert_eq!(stats["subjects"][0], "ivy", "{stats}");

    // A local account has no provider token: the call says where to sign in.
    let local = crate::support::authorize_for(&gw, "alice", &resource).await;
    let r = TestGateway::http()
        .post(gw.url("/mcp/linear"))
        .bearer_auth(&local.access_token)
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
            .contains("sign in there"),
        "{v}"
    );
}
