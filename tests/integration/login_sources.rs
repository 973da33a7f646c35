//! Login sources behind one interface: a chooser when there are several, users linked to a
//! source's subject (created on first sign-in, without a password), and the sealed login
//! context a source keeps per grant.
//!
//! The second source here is a directory of the tests' own: the interface is what is under
//! test; the identity providers and databases that implement it come with their issues.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use mcp_oauth_gateway::login::{
    Attempt, Authenticated, Departure, LoginSource, SourceKind, context::ContextError,
};
use mcp_oauth_gateway::store::{EndReason, GrantFilter, StoreError};

use crate::support::*;

/// A password source beside local accounts that keeps the password it checked.
#[derive(Default)]
struct Directory {
    down: AtomicBool,
}

const DANA_PASSWORD: &str = "dana's directory password";

#[async_trait]
impl LoginSource for Directory {
    fn name(&self) -> &str {
        "directory"
    }
    fn label(&self) -> &str {
        "Company directory"
    }
    fn kind(&self) -> SourceKind {
        SourceKind::Password
    }
    fn keeps_context(&self) -> bool {
        true
    }
    async fn check_password(
        &self,
        username: &str,
        password: &str,
        _ip: &str,
    ) -> Result<Attempt, StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Ok(Attempt::Unavailable("the directory is down".into()));
        }
        Ok(if username == "dana" && password == DANA_PASSWORD {
            Attempt::Success(Authenticated {
                subject: "dn-1".into(),
                username: "dana".into(),
                email: Some("dana@example.com".into()),
                // A group name no administrator could type: dropped, not read as two.
                groups: vec!["staff".into(), "staff admin".into()],
                keep: Some(password.as_bytes().to_vec()),
            })
        } else {
            Attempt::Invalid
        })
    }
}

async fn with_directory() -> (TestGateway, Arc<Directory>) {
    with_directory_and(|_| {}).await
}

async fn with_directory_and(
    configure: impl FnOnce(&mut mcp_oauth_gateway::config::Config),
) -> (TestGateway, Arc<Directory>) {
    let directory = Arc::new(Directory::default());
    // On SQLite the key file beside the database serves; any other store needs keys.
    let gw = TestGateway::start_with_sources(
        |c| {
            configure(c);
            if !c.store.url.starts_with("sqlite:") {
                let entry =
                    mcp_oauth_gateway::crypto::EncryptionKeys::generate_entry("t1").unwrap();
                c.keys.encryption = vec![entry.into()];
            }
        },
        vec![directory.clone()],
    )
    .await;
    (gw, directory)
}

/// Starts an authorization in `browser`: (the sign-in page, its request and csrf fields).
async fn sign_in_page(
    gw: &TestGateway,
    browser: &reqwest::Client,
    client_id: &str,
    pkce: &Pkce,
) -> (u16, String) {
    let resource = gw.resource();
    let params = authorize_params(client_id, REDIRECT, pkce, &resource);
    let url = url::Url::parse_with_params(&gw.url("/authorize"), &params).unwrap();
    let r = browser.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

const REDIRECT: &str = "http://127.0.0.1:9999/callback";

async fn post_login(
    gw: &TestGateway,
    browser: &reqwest::Client,
    page: &str,
    source: &str,
    user: &str,
    password: &str,
) -> reqwest::Response {
    let request = hidden(page, "request").unwrap();
    let csrf = hidden(page, "csrf").unwrap();
    browser
        .post(gw.url("/authorize/login"))
        .form(&[
            ("request", request.as_str()),
            ("csrf", csrf.as_str()),
            ("source", source),
            ("username", user),
            ("password", password),
        ])
        .send()
        .await
        .unwrap()
}

/// Redeems a code for `client_id`: the token response.
async fn redeem(gw: &TestGateway, client_id: &str, code: &str, pkce: &Pkce) -> serde_json::Value {
    let (s, tokens) = gw
        .post_form(
            "/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", REDIRECT),
                ("client_id", client_id),
                ("code_verifier", &pkce.verifier),
            ],
        )
        .await;
    assert_eq!(s, 200, "{tokens}");
    tokens
}

/// Allows on the consent page and redeems the code: the token response.
async fn allow_and_redeem(
    gw: &TestGateway,
    browser: &reqwest::Client,
    consent: &str,
    client_id: &str,
    pkce: &Pkce,
) -> serde_json::Value {
    let r = browser
        .post(gw.url("/authorize/consent"))
        .form(&[
            ("request", hidden(consent, "request").unwrap().as_str()),
            ("csrf", hidden(consent, "csrf").unwrap().as_str()),
            ("decision", "allow"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let code = query_of(r.headers()["location"].to_str().unwrap())["code"].clone();
    redeem(gw, client_id, &code, pkce).await
}

/// Signs dana in through the directory, consents, and redeems the code.
async fn dana_authorizes(gw: &TestGateway, browser: &reqwest::Client) -> (String, String) {
    let client_id = gw.register_public(REDIRECT).await;
    let pkce = Pkce::new();
    let (_, page) = sign_in_page(gw, browser, &client_id, &pkce).await;
    let r = post_login(gw, browser, &page, "directory", "dana", DANA_PASSWORD).await;
    assert_eq!(r.status(), 200);
    let consent = r.text().await.unwrap();
    assert!(consent.contains("Allow access?"), "{consent}");
    let tokens = allow_and_redeem(gw, browser, &consent, &client_id, &pkce).await;
    (
        client_id,
        tokens["access_token"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn several_sources_get_a_chooser_and_each_form_names_its_source() {
    let (gw, _) = with_directory().await;
    let client_id = gw.register_public(REDIRECT).await;
    let (status, page) = sign_in_page(&gw, &TestGateway::browser(), &client_id, &Pkce::new()).await;
    assert_eq!(status, 200);
    assert!(page.contains("Choose how to sign in"), "{page}");
    assert!(page.contains("<h2>Account on this server</h2>"));
    assert!(page.contains("<h2>Company directory</h2>"));
    assert!(page.contains(r#"name="source" value="local""#));
    assert!(page.contains(r#"name="source" value="directory""#));
    // Field ids stay unique on the page.
    assert_eq!(page.matches(r#"id="username""#).count(), 1);

    // With local accounts alone, no chooser.
    let plain = TestGateway::start().await;
    let client_id = plain.register_public(REDIRECT).await;
    let (_, page) = sign_in_page(&plain, &TestGateway::browser(), &client_id, &Pkce::new()).await;
    assert!(!page.contains("Choose how to sign in"));
    assert!(!page.contains("<h2>"));
}

#[tokio::test]
async fn a_first_sign_in_creates_a_user_without_a_password_linked_to_the_source() {
    let (gw, directory) = with_directory().await;
    let browser = TestGateway::browser();
    let client_id = gw.register_public(REDIRECT).await;
    let pkce = Pkce::new();

    // A wrong password, and a source that is down, are told apart.
    let (_, page) = sign_in_page(&gw, &browser, &client_id, &pkce).await;
    let r = post_login(&gw, &browser, &page, "directory", "dana", "wrong").await;
    assert_eq!(r.status(), 401);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("Wrong username or password.")
    );
    directory.down.store(true, Ordering::SeqCst);
    let r = post_login(&gw, &browser, &page, "directory", "dana", DANA_PASSWORD).await;
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("unavailable right now"));
    directory.down.store(false, Ordering::SeqCst);
    // A source that does not exist, or a local password for the directory's user.
    let r = post_login(&gw, &browser, &page, "elsewhere", "dana", DANA_PASSWORD).await;
    assert_eq!(r.status(), 400);
    assert!(gw.store.list_users().await.unwrap().len() == 2);

    let (_, access) = dana_authorizes(&gw, &browser).await;
    // Named under the source, never as a local user would be.
    let dana = gw
        .store
        .user_by_name("dana.directory")
        .await
        .unwrap()
        .unwrap();
    assert!(dana.password_hash.is_empty(), "no password at the gateway");
    assert_eq!(dana.email.as_deref(), Some("dana@example.com"));
    assert_eq!(dana.groups, vec!["staff".to_string()]);
    assert_eq!(
        gw.store
            .user_by_identity("directory", "dn-1")
            .await
            .unwrap()
            .map(|u| u.id),
        Some(dana.id.clone())
    );
    let (s, who) = call_whoami(&gw, &access).await;
    assert_eq!(s, 200, "{who}");
    assert!(who.to_string().contains("dana"), "{who}");

    // The same subject signs in again as the same user.
    dana_authorizes(&gw, &TestGateway::browser()).await;
    assert_eq!(gw.store.list_users().await.unwrap().len(), 3);

    // A user without a password cannot sign in as a local account, whatever is typed,
    // including the text of the hash that unknown users are checked against.
    let fresh = TestGateway::browser();
    let (_, page) = sign_in_page(&gw, &fresh, &client_id, &Pkce::new()).await;
    for pw in ["", "not a password of anyone", DANA_PASSWORD] {
        let r = post_login(&gw, &fresh, &page, "local", "dana.directory", pw).await;
        assert_eq!(r.status(), 401, "{pw:?}");
    }
}

#[tokio::test]
async fn the_login_context_is_sealed_to_its_grant_and_source_and_ends_with_it() {
    let (gw, _) = with_directory().await;
    let browser = TestGateway::browser();
    let (client_id, access) = dana_authorizes(&gw, &browser).await;
    let grants = gw
        .store
        .list_grants(
            &GrantFilter {
                client_id: Some(client_id.clone()),
                ..Default::default()
            },
            false,
        )
        .await
        .unwrap();
    let grant = &grants[0];
    assert_eq!(grant.login_source, "directory");

    // Stored sealed: the password is nowhere in the row.
    let (owner, sealed) = gw.store.login_context(&grant.id).await.unwrap().unwrap();
    assert_eq!(owner, "directory");
    assert!(
        !sealed
            .windows(DANA_PASSWORD.len())
            .any(|w| w == DANA_PASSWORD.as_bytes())
    );
    // Its source reads it back; no other source, and not under another grant's id.
    let contexts = &gw.auth.contexts;
    assert_eq!(
        contexts
            .read(&gw.store, "directory", &grant.id)
            .await
            .unwrap()
            .as_deref(),
        Some(DANA_PASSWORD.as_bytes())
    );
    assert!(matches!(
        contexts.read(&gw.store, "local", &grant.id).await,
        Err(ContextError::NotOwner)
    ));
    assert!(
        contexts
            .open("directory", "another-grant", &sealed)
            .is_err()
    );
    let (other_client, _) = dana_authorizes(&gw, &TestGateway::browser()).await;
    let other = gw
        .store
        .list_grants(
            &GrantFilter {
                client_id: Some(other_client),
                ..Default::default()
            },
            false,
        )
        .await
        .unwrap();
    let (_, other_sealed) = gw.store.login_context(&other[0].id).await.unwrap().unwrap();
    assert!(
        contexts
            .open("directory", &grant.id, &other_sealed)
            .is_err(),
        "another grant's context does not open under this grant's id"
    );

    // The principal of a token names its grant and source (whoami shows the user).
    assert_eq!(call_whoami(&gw, &access).await.0, 200);

    // Gone with the grant.
    gw.store
        .revoke_grants(
            &GrantFilter {
                grant_id: Some(grant.id.clone()),
                ..Default::default()
            },
            EndReason::AdminRevoked,
            gw.now(),
        )
        .await
        .unwrap();
    assert!(gw.store.login_context(&grant.id).await.unwrap().is_none());
    assert_eq!(
        contexts
            .read(&gw.store, "directory", &grant.id)
            .await
            .unwrap(),
        None
    );
    let exported = gw
        .store
        .export_rows(
            mcp_oauth_gateway::store::copy::TABLES
                .iter()
                .find(|t| t.name == "grants")
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(exported.len(), 2);
}

#[tokio::test]
async fn a_browser_session_from_a_source_that_keeps_a_context_does_not_skip_sign_in() {
    let (gw, _) = with_directory().await;
    let browser = TestGateway::browser();
    dana_authorizes(&gw, &browser).await;
    // Same browser, new request: signed in, but the directory must be asked again for what
    // this new grant keeps.
    let client_id = gw.register_public(REDIRECT).await;
    let (status, page) = sign_in_page(&gw, &browser, &client_id, &Pkce::new()).await;
    assert_eq!(status, 200);
    assert!(page.contains("Choose how to sign in"), "{page}");
    // A local sign-in's session does skip it.
    let local = TestGateway::browser();
    let a = authorize_user(&gw, "alice").await;
    drop(a);
    let client_id = gw.register_public(REDIRECT).await;
    let (pkce, resource) = (Pkce::new(), gw.resource());
    let params = authorize_params(&client_id, REDIRECT, &pkce, &resource);
    let url = url::Url::parse_with_params(&gw.url("/authorize"), &params).unwrap();
    let location = approve(&local, &gw, url.as_str(), "alice").await;
    assert!(location.contains("code="));
    let (status, page) = sign_in_page(&gw, &local, &client_id, &Pkce::new()).await;
    assert!(
        status == 302 || page.contains("Allow access?"),
        "a local session goes straight on: {status} {page}"
    );
}

#[tokio::test]
async fn keys_for_sealing_come_from_a_file_beside_sqlite_or_must_be_configured() {
    // SQLite, nothing configured: a private key file appears beside the database.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("gw.db");
    let mut config = mcp_oauth_gateway::config::Config::default();
    config.store.url = format!("sqlite://{}", db.display());
    let store = mcp_oauth_gateway::store::open(&config.store.url)
        .await
        .unwrap();
    let clock: mcp_oauth_gateway::clock::SharedClock =
        Arc::new(mcp_oauth_gateway::clock::ManualClock::starting_now());
    let sources = || -> Vec<Arc<dyn LoginSource>> { vec![Arc::new(Directory::default())] };
    let auth = mcp_oauth_gateway::authorization::AuthorizationServer::with_login_sources(
        &config,
        store.clone(),
        clock.clone(),
        sources(),
    )
    .unwrap();
    let key_file = dir.path().join("gw.db.keys");
    assert!(key_file.exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let sealed = auth.contexts.seal("directory", "g1", b"kept").unwrap();
    // A restart reads the same key.
    let again = mcp_oauth_gateway::authorization::AuthorizationServer::with_login_sources(
        &config,
        store.clone(),
        clock.clone(),
        sources(),
    )
    .unwrap();
    assert_eq!(
        again.contexts.open("directory", "g1", &sealed).unwrap(),
        b"kept"
    );
    // Without a source that keeps anything, no file.
    let plain_dir = tempfile::tempdir().unwrap();
    let mut plain = config.clone();
    plain.store.url = format!("sqlite://{}", plain_dir.path().join("p.db").display());
    mcp_oauth_gateway::authorization::AuthorizationServer::new(
        &plain,
        store.clone(),
        clock.clone(),
    )
    .unwrap();
    assert!(!plain_dir.path().join("p.db.keys").exists());

    // Any other store: the start stops, naming the setting.
    let mut pg = config.clone();
    pg.store.url = "postgres://127.0.0.1:5432/test".into();
    let err = mcp_oauth_gateway::authorization::AuthorizationServer::with_login_sources(
        &pg,
        store.clone(),
        clock.clone(),
        sources(),
    )
    .err()
    .unwrap();
    assert!(err.starts_with("keys.encryption:"), "{err}");
}

#[tokio::test]
async fn with_first_sign_in_refused_only_linked_identities_get_in() {
    let (gw, _) = with_directory_and(|c| {
        c.login.first_sign_in = mcp_oauth_gateway::login::FirstSignIn::Refuse;
    })
    .await;
    let browser = TestGateway::browser();
    let client_id = gw.register_public(REDIRECT).await;
    let (_, page) = sign_in_page(&gw, &browser, &client_id, &Pkce::new()).await;
    let r = post_login(&gw, &browser, &page, "directory", "dana", DANA_PASSWORD).await;
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("may not sign in here"));
    assert!(
        gw.store
            .user_by_name("dana.directory")
            .await
            .unwrap()
            .is_none()
    );
    // Once an administrator linked the identity, the same sign-in goes through.
    let dana = mcp_oauth_gateway::store::UserRecord {
        id: "u-dana".into(),
        username: "dana".into(),
        password_hash: String::new(),
        created_at: gw.now(),
        email: None,
        groups: vec![],
        disabled_at: None,
    };
    gw.store
        .create_user_with_identity(&dana, "directory", "dn-1")
        .await
        .unwrap();
    dana_authorizes(&gw, &TestGateway::browser()).await;
}

/// A consent form sent twice issues one code: the request and the grant id named in it are
/// used once.
#[tokio::test]
async fn a_consent_sent_twice_issues_one_code() {
    let gw = TestGateway::start().await;
    let browser = TestGateway::browser();
    let client_id = gw.register_public(REDIRECT).await;
    let (_, page) = sign_in_page(&gw, &browser, &client_id, &Pkce::new()).await;
    let r = post_login(&gw, &browser, &page, "local", "alice", PASSWORD).await;
    let consent = r.text().await.unwrap();
    let form = [
        ("request", hidden(&consent, "request").unwrap()),
        ("csrf", hidden(&consent, "csrf").unwrap()),
        ("decision", "allow".to_string()),
    ];
    let first = browser
        .post(gw.url("/authorize/consent"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 303);
    let again = browser
        .post(gw.url("/authorize/consent"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 400);
    assert!(again.headers().get("location").is_none());
}

/// A source that sends the browser elsewhere and takes it back at its callback, keeping a
/// token for later (as an identity provider keeps its refresh token). The "provider" here is
/// the test itself: it reads the `state` the gateway sent and comes back with it.
struct Portal(&'static str);

#[async_trait]
impl LoginSource for Portal {
    fn name(&self) -> &str {
        self.0
    }
    fn label(&self) -> &str {
        if self.0 == "portal" {
            "Company portal"
        } else {
            "Partner portal"
        }
    }
    fn kind(&self) -> SourceKind {
        SourceKind::Redirect
    }
    fn keeps_context(&self) -> bool {
        true
    }
    async fn start(&self, state: &str, callback: &str) -> Result<Departure, String> {
        let mut u = url::Url::parse("https://portal.example/authorize").unwrap();
        u.query_pairs_mut()
            .append_pair("state", state)
            .append_pair("redirect_uri", callback);
        Ok(Departure {
            url: u.to_string(),
            leg: format!("verifier for {state}").into_bytes(),
        })
    }
    async fn finish(
        &self,
        params: &[(String, String)],
        _callback: &str,
        leg: &[u8],
    ) -> Result<Attempt, StoreError> {
        let code = params
            .iter()
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.as_str());
        let state = params
            .iter()
            .find(|(k, _)| k == "state")
            .map(|(_, v)| v.as_str())
            .unwrap_or_default();
        // What `start` gave for this request comes back, and only for it.
        assert_eq!(leg, format!("verifier for {state}").as_bytes());
        Ok(if code == Some("good") {
            Attempt::Success(Authenticated {
                subject: "p-7".into(),
                username: "pat".into(),
                email: None,
                groups: vec![],
                keep: Some(b"portal refresh token".to_vec()),
            })
        } else {
            Attempt::Invalid
        })
    }
}

/// Presses the portal's button on a fresh sign-in page, and allows on the consent page that
/// follows (naming the client and the portal): (the provider URL, its state).
async fn off_to_portal(
    gw: &TestGateway,
    browser: &reqwest::Client,
    client_id: &str,
    pkce: &Pkce,
) -> (url::Url, String) {
    let (_, page) = sign_in_page(gw, browser, client_id, pkce).await;
    assert!(page.contains("Continue with Company portal"), "{page}");
    let fields = [
        ("request", hidden(&page, "request").unwrap()),
        ("csrf", hidden(&page, "csrf").unwrap()),
    ];
    let r = browser
        .post(gw.url("/authorize/login/portal"))
        .form(&fields)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let consent = r.text().await.unwrap();
    assert!(consent.contains("Allow access?"), "{consent}");
    assert!(
        consent.contains("sign in with <strong>Company portal</strong> next"),
        "{consent}"
    );
    assert!(
        consent.contains(r#"action="/authorize/login/portal""#),
        "{consent}"
    );
    let r = browser
        .post(gw.url("/authorize/login/portal"))
        .form(&[
            ("request", hidden(&consent, "request").unwrap().as_str()),
            ("csrf", hidden(&consent, "csrf").unwrap().as_str()),
            ("decision", "allow"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let to = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    let state = to
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    (to, state)
}

/// Comes back at the callback (as the provider would send the browser), follows the bounce
/// under the browser path, and returns the final answer.
async fn back_from_portal(
    gw: &TestGateway,
    browser: &reqwest::Client,
    query: &str,
) -> reqwest::Response {
    let r = browser
        .get(format!("{}?{query}", gw.url("/login/portal/callback")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let next = r.headers()["location"].to_str().unwrap().to_string();
    assert!(next.contains("/authorize/login/portal/return?"), "{next}");
    browser.get(gw.url(&next)).send().await.unwrap()
}

#[tokio::test]
async fn a_source_that_redirects_signs_in_through_its_callback_once_in_the_same_browser() {
    let portal = Arc::new(Portal("portal"));
    let partner = Arc::new(Portal("partner"));
    let gw = TestGateway::start_with_sources(
        |c| {
            if !c.store.url.starts_with("sqlite:") {
                let entry =
                    mcp_oauth_gateway::crypto::EncryptionKeys::generate_entry("t1").unwrap();
                c.keys.encryption = vec![entry.into()];
            }
        },
        vec![portal, partner],
    )
    .await;
    let browser = TestGateway::browser();
    let client_id = gw.register_public(REDIRECT).await;
    let pkce = Pkce::new();
    let (to, state) = off_to_portal(&gw, &browser, &client_id, &pkce).await;
    assert_eq!(to.host_str(), Some("portal.example"));
    let callback = to
        .query_pairs()
        .find(|(k, _)| k == "redirect_uri")
        .unwrap()
        .1
        .into_owned();
    assert_eq!(callback, format!("{}/login/portal/callback", gw.base));

    // The state in another browser: refused, and not used up.
    let stranger = TestGateway::browser();
    let r = back_from_portal(&gw, &stranger, &format!("code=good&state={state}")).await;
    assert_eq!(r.status(), 400);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("not opened in this browser")
    );
    // The state at another source's callback finds nothing (and is not used up either).
    let r = browser
        .get(gw.url(&format!("/login/partner/callback?code=good&state={state}")))
        .send()
        .await
        .unwrap();
    let next = r.headers()["location"].to_str().unwrap().to_string();
    let r = browser.get(gw.url(&next)).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("unknown, was used already")
    );
    // A state the gateway never gave, and a callback of a source that does not exist.
    let r = back_from_portal(&gw, &browser, "code=good&state=made-up").await;
    assert_eq!(r.status(), 400);
    let r = browser
        .get(gw.url("/login/nowhere/callback?state=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Back in the right browser: signed in, and since the consent came first, straight
    // back to the client with a code.
    let query = format!("code=good&state={state}");
    let r = back_from_portal(&gw, &browser, &query).await;
    assert_eq!(r.status(), 302);
    let code = query_of(r.headers()["location"].to_str().unwrap())["code"].clone();
    // The same state again: used once.
    let r = back_from_portal(&gw, &browser, &query).await;
    assert_eq!(r.status(), 400);
    redeem(&gw, &client_id, &code, &pkce).await;
    let grants = gw
        .store
        .list_grants(
            &GrantFilter {
                client_id: Some(client_id.clone()),
                ..Default::default()
            },
            false,
        )
        .await
        .unwrap();
    assert_eq!(grants[0].login_source, "portal");
    assert_eq!(
        gw.auth
            .contexts
            .read(&gw.store, "portal", &grants[0].id)
            .await
            .unwrap()
            .as_deref(),
        Some(&b"portal refresh token"[..])
    );
    assert!(gw.store.user_by_name("pat.portal").await.unwrap().is_some());

    // The source refusing what came back: the sign-in page again, saying so.
    let (_, state) = off_to_portal(&gw, &TestGateway::browser(), &client_id, &Pkce::new()).await;
    let b2 = TestGateway::browser();
    let (_, state2) = off_to_portal(&gw, &b2, &client_id, &Pkce::new()).await;
    assert_ne!(state, state2);
    let r = back_from_portal(&gw, &b2, &format!("code=bad&state={state2}")).await;
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("not accepted"));
}
