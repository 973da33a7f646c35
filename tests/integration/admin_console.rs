//! The administrators' console: only the people `[console]` names open it; every form needs
//! the token made for it (the person's own console token does not do); each action goes
//! through the administration service, changes what the gateway does at once, and is in
//! the audit log as `console:<name>`.

use std::time::Duration;

use reqwest::Client;
use serde_json::{Value, json};

use crate::console::signed_in;
use crate::support::{self, TestGateway};

async fn get(gw: &TestGateway, browser: &Client, path: &str) -> (u16, String) {
    let r = browser.get(gw.url(path)).send().await.unwrap();
    let status = r.status().as_u16();
    if status == 200 {
        assert_eq!(r.headers()["cache-control"], "no-store");
        assert_eq!(r.headers()["x-frame-options"], "DENY");
    }
    (status, r.text().await.unwrap())
}

/// Posts an action with `csrf`; (status, Location or page).
async fn act(
    gw: &TestGateway,
    browser: &Client,
    csrf: &str,
    fields: &[(&str, &str)],
) -> (u16, String) {
    let mut form: Vec<(&str, &str)> = fields.to_vec();
    form.push(("csrf", csrf));
    let r = browser
        .post(gw.url("/authorize/console/admin/do"))
        .form(&form)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    if status == 303 {
        return (
            status,
            r.headers()["location"].to_str().unwrap().to_string(),
        );
    }
    (status, r.text().await.unwrap())
}

/// The audit records of `action`, once they are written (the writer is a thread).
async fn audit_lines(path: &std::path::Path, action: &str) -> Vec<Value> {
    for _ in 0..100 {
        let found: Vec<Value> = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["action"] == action)
            .collect();
        if !found.is_empty() {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    Vec::new()
}

#[tokio::test]
async fn only_administrators_open_it_and_only_with_its_own_form_token() {
    let gw = TestGateway::start_with(|c| c.console.admins = vec!["alice".into()]).await;
    // Nobody signed in: to the sign-in page.
    let r = TestGateway::browser()
        .get(gw.url("/authorize/console/admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    // Bob is signed in but no administrator: refused, pages and actions alike, even with
    // the token of his own console.
    let bob = signed_in(&gw, "bob").await;
    for section in ["", "/clients", "/grants", "/upstreams", "/keys", "/audit"] {
        let (status, page) = get(&gw, &bob, &format!("/authorize/console/admin{section}")).await;
        assert_eq!(status, 403, "{section}: {page}");
        assert!(!page.contains("alice"), "{page}");
    }
    let (_, own) = get(&gw, &bob, "/authorize/console").await;
    let bobs_csrf = support::hidden(&own, "csrf").unwrap();
    let (status, _) = act(
        &gw,
        &bob,
        &bobs_csrf,
        &[("action", "user_disable"), ("user", "alice")],
    )
    .await;
    assert_eq!(status, 403);
    // Alice administers; her own console's token is not the administrators' one.
    let alice = signed_in(&gw, "alice").await;
    let (_, own) = get(&gw, &alice, "/authorize/console").await;
    assert!(own.contains("/console/admin"), "a link for administrators");
    let personal = support::hidden(&own, "csrf").unwrap();
    let (status, _) = act(
        &gw,
        &alice,
        &personal,
        &[("action", "user_disable"), ("user", "bob")],
    )
    .await;
    assert_eq!(status, 403);
    // Without any token (another site's form), or a token with another browser: refused.
    let (_, page) = get(&gw, &alice, "/authorize/console/admin").await;
    let csrf = support::hidden(&page, "csrf").unwrap();
    let r = alice
        .post(gw.url("/authorize/console/admin/do"))
        .form(&[("action", "user_disable"), ("user", "bob")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let (status, _) = act(
        &gw,
        &TestGateway::browser(),
        &csrf,
        &[("action", "user_disable"), ("user", "bob")],
    )
    .await;
    assert_eq!(status, 403);
    assert!(
        gw.store
            .user_by_name("bob")
            .await
            .unwrap()
            .unwrap()
            .disabled_at
            .is_none()
    );
    // Bob's own console has no link to it.
    let (_, own) = get(&gw, &bob, "/authorize/console").await;
    assert!(!own.contains("/console/admin"), "{own}");
    // An action that does not exist: a precise refusal.
    let (status, page) = act(&gw, &alice, &csrf, &[("action", "drop_everything")]).await;
    assert_eq!(status, 400);
    assert!(page.contains("not an action"), "{page}");
    // Administrators by group: a user in the group opens it, and loses it with the group.
    let gw = TestGateway::start_with(|c| {
        c.console.admins = Vec::new();
        c.console.admin_groups = vec!["ops".into()];
    })
    .await;
    let bob_id = gw.store.user_by_name("bob").await.unwrap().unwrap().id;
    gw.store
        .set_profile(&bob_id, None, &["ops".to_string()])
        .await
        .unwrap();
    let bob = signed_in(&gw, "bob").await;
    assert_eq!(get(&gw, &bob, "/authorize/console/admin").await.0, 200);
    gw.store.set_profile(&bob_id, None, &[]).await.unwrap();
    assert_eq!(get(&gw, &bob, "/authorize/console/admin").await.0, 403);
}

#[tokio::test]
async fn people_of_a_login_source_administer_only_by_source_and_subject() {
    // Eve's name and group come from a provider (which may let people choose both): they
    // do not make her an administrator; Frank's source:subject does.
    let gw = TestGateway::start_with(|c| {
        c.console.admins = vec!["eve.corp".into(), "corp:subject-frank".into()];
        c.console.admin_groups = vec!["ops".into()];
    })
    .await;
    for (name, subject) in [("eve.corp", "subject-eve"), ("frank.corp", "subject-frank")] {
        let user = mcp_oauth_gateway::store::UserRecord {
            id: mcp_oauth_gateway::crypto::new_id(),
            username: name.into(),
            password_hash: String::new(),
            created_at: gw.now(),
            email: None,
            groups: vec!["ops".into()],
            disabled_at: None,
        };
        gw.store
            .create_user_with_identity(&user, "corp", subject)
            .await
            .unwrap();
        // A password only so that this test can sign them in at the gateway's own page.
        gw.accounts
            .set_password(name, support::PASSWORD, true)
            .await
            .unwrap();
    }
    let eve = signed_in(&gw, "eve.corp").await;
    assert_eq!(get(&gw, &eve, "/authorize/console/admin").await.0, 403);
    let frank = signed_in(&gw, "frank.corp").await;
    let (status, page) = get(&gw, &frank, "/authorize/console/admin").await;
    assert_eq!(status, 200, "{page}");
    // The users page says how to name each one.
    assert!(
        page.contains("corp:subject-eve") && page.contains("local account"),
        "{page}"
    );
    // Someone who signs in only at the source gets no password here.
    let gina = mcp_oauth_gateway::store::UserRecord {
        id: mcp_oauth_gateway::crypto::new_id(),
        username: "gina.corp".into(),
        password_hash: String::new(),
        created_at: gw.now(),
        email: None,
        groups: Vec::new(),
        disabled_at: None,
    };
    gw.store
        .create_user_with_identity(&gina, "corp", "subject-gina")
        .await
        .unwrap();
    let csrf = support::hidden(&page, "csrf").unwrap();
    let (status, page) = act(
        &gw,
        &frank,
        &csrf,
        &[
            ("action", "user_password"),
            ("user", "gina.corp"),
            ("once", "a-fresh-one"),
        ],
    )
    .await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("signs in through a login source"), "{page}");
    assert!(
        gw.store
            .user_by_name("gina.corp")
            .await
            .unwrap()
            .unwrap()
            .password_hash
            .is_empty()
    );
}

#[tokio::test]
async fn administrators_manage_users_clients_grants_keys_and_read_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let audit_path = audit.display().to_string();
    let gw = TestGateway::start_with(move |c| {
        c.console.admins = vec!["alice".into()];
        c.audit.path = Some(audit_path);
    })
    .await;
    let b = support::authorize_user(&gw, "bob").await;
    assert_eq!(support::call_whoami(&gw, &b.access_token).await.0, 200);
    let alice = signed_in(&gw, "alice").await;
    let (status, page) = get(&gw, &alice, "/authorize/console/admin").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("<strong>bob</strong>") && page.contains("administrator"));
    let csrf = support::hidden(&page, "csrf").unwrap();

    // Users: add one (its password shown once, and it signs in), reset, disable, enable.
    let (status, page) = act(
        &gw,
        &alice,
        &csrf,
        &[
            ("action", "user_add"),
            ("username", "carol"),
            ("email", "carol@example.com"),
            ("groups", "staff, ops"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let password = page
        .split("<code class=\"usercode\">")
        .nth(1)
        .and_then(|s| s.split("</code>").next())
        .unwrap()
        .to_string();
    assert!(password.len() >= 32);
    assert!(
        gw.accounts
            .verify("carol", &password, "127.0.0.1")
            .await
            .is_ok_and(|o| matches!(o, mcp_oauth_gateway::login::LoginOutcome::Success(_)))
    );
    let carol = gw.store.user_by_name("carol").await.unwrap().unwrap();
    assert_eq!(carol.groups, vec!["staff".to_string(), "ops".to_string()]);
    let (status, page) = act(
        &gw,
        &alice,
        &csrf,
        &[("action", "user_add"), ("username", "carol")],
    )
    .await;
    assert_eq!(status, 409, "{page}");
    assert!(page.contains("exists already"), "{page}");
    let (status, page) = act(
        &gw,
        &alice,
        &csrf,
        &[
            ("action", "user_add"),
            ("username", "dave"),
            ("email", "not an address"),
        ],
    )
    .await;
    assert_eq!(status, 400, "{page}");
    assert!(gw.store.user_by_name("dave").await.unwrap().is_none());
    let (_, users) = get(&gw, &alice, "/authorize/console/admin").await;
    let once = users
        .split("<tr>")
        .find(|r| r.contains("<strong>carol</strong>"))
        .and_then(|r| support::hidden(r, "once"))
        .unwrap();
    let reset = [
        ("action", "user_password"),
        ("user", "carol"),
        ("once", once.as_str()),
    ];
    let (status, page) = act(&gw, &alice, &csrf, &reset).await;
    assert_eq!(status, 200);
    assert!(!page.contains(&password), "a new password");
    // The page reloaded sends the form again: refused, the password stays the one shown.
    let hash = gw
        .store
        .user_by_name("carol")
        .await
        .unwrap()
        .unwrap()
        .password_hash;
    let (status, page) = act(&gw, &alice, &csrf, &reset).await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("sent already"), "{page}");
    assert_eq!(
        gw.store
            .user_by_name("carol")
            .await
            .unwrap()
            .unwrap()
            .password_hash,
        hash
    );

    // Disabling Bob ends his grant: the client's next call is refused.
    let (status, to) = act(
        &gw,
        &alice,
        &csrf,
        &[("action", "user_disable"), ("user", "bob")],
    )
    .await;
    assert_eq!(
        (status, to.ends_with("/console/admin?done=disabled")),
        (303, true),
        "{to}"
    );
    assert_eq!(support::call_whoami(&gw, &b.access_token).await.0, 401);
    let (_, page) = get(&gw, &alice, "/authorize/console/admin?done=disabled").await;
    assert!(
        page.contains("was disabled") && page.contains("Enable"),
        "{page}"
    );
    let (status, _) = act(
        &gw,
        &alice,
        &csrf,
        &[("action", "user_enable"), ("user", "bob")],
    )
    .await;
    assert_eq!(status, 303);
    // Nobody disables themselves here (the last administrator would be locked out).
    let (status, page) = act(
        &gw,
        &alice,
        &csrf,
        &[("action", "user_disable"), ("user", "alice")],
    )
    .await;
    assert_eq!(status, 400);
    assert!(page.contains("your own account"), "{page}");
    let (status, page) = act(
        &gw,
        &alice,
        &csrf,
        &[("action", "user_sessions_end"), ("user", "nobody")],
    )
    .await;
    assert_eq!(status, 404);
    assert!(page.contains("no user named `nobody`"), "{page}");

    // Clients: a name a stranger registered is shown inert.
    let r = TestGateway::http()
        .post(gw.url("/register"))
        .json(&json!({"client_name": "<img src=x onerror=alert(1)>", "redirect_uris": ["http://127.0.0.1:9999/callback"], "token_endpoint_auth_method": "none"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let b = support::authorize_user(&gw, "bob").await;
    let (status, page) = get(&gw, &alice, "/authorize/console/admin/clients").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{page}"
    );
    assert!(!page.contains("<img src=x"), "{page}");
    assert!(page.contains(&b.client_id));
    // Blocking Bob's client ends his grant and refuses its next authorization.
    let (status, to) = act(
        &gw,
        &alice,
        &csrf,
        &[
            ("action", "client_block"),
            ("client", &b.client_id),
            ("reason", "misbehaved"),
        ],
    )
    .await;
    assert_eq!((status, to.ends_with("done=blocked")), (303, true), "{to}");
    assert_eq!(support::call_whoami(&gw, &b.access_token).await.0, 401);
    let pkce = support::Pkce::new();
    let resource = gw.resource();
    let params = support::authorize_params(&b.client_id, &b.redirect, &pkce, &resource);
    let url = url::Url::parse_with_params(&gw.url("/authorize"), &params).unwrap();
    let r = TestGateway::browser()
        .get(url.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("blocked"));
    let (_, page) = get(&gw, &alice, "/authorize/console/admin/clients").await;
    assert!(
        page.contains("misbehaved") && page.contains("Unblock"),
        "{page}"
    );
    let (status, _) = act(
        &gw,
        &alice,
        &csrf,
        &[("action", "client_block"), ("client", &b.client_id)],
    )
    .await;
    assert_eq!(status, 409, "blocked already");
    let (status, _) = act(
        &gw,
        &alice,
        &csrf,
        &[("action", "client_unblock"), ("client", &b.client_id)],
    )
    .await;
    assert_eq!(status, 303);
    let r = TestGateway::browser()
        .get(url.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "authorizing again");

    // Everyone's grants, filtered; one revoked.
    let c = support::authorize_user(&gw, "bob").await;
    let (_, page) = get(&gw, &alice, "/authorize/console/admin/grants?user=bob").await;
    assert!(page.contains(&c.client_id), "{page}");
    let grant = page
        .split("<tr>")
        .find(|r| r.contains(&c.client_id) && r.contains("name=\"grant\""))
        .and_then(|r| support::hidden(r, "grant"))
        .unwrap();
    let (status, to) = act(
        &gw,
        &alice,
        &csrf,
        &[("action", "grant_revoke"), ("grant", &grant)],
    )
    .await;
    assert_eq!((status, to.ends_with("done=revoked")), (303, true), "{to}");
    assert_eq!(support::call_whoami(&gw, &c.access_token).await.0, 401);
    let (_, page) = get(
        &gw,
        &alice,
        "/authorize/console/admin/grants?user=bob&ended=1",
    )
    .await;
    assert!(page.contains("admin_revoked"), "{page}");
    let (_, page) = get(&gw, &alice, "/authorize/console/admin/grants?user=nobody").await;
    assert!(page.contains("No grant matches"), "{page}");

    // Upstreams and their state.
    let (_, page) = get(&gw, &alice, "/authorize/console/admin/upstreams").await;
    assert!(
        page.contains("whoami") && page.contains("built in"),
        "{page}"
    );

    // Keys: a new one; the signing key cannot be retired while it signs.
    let (_, page) = get(&gw, &alice, "/authorize/console/admin/keys").await;
    assert_eq!(page.matches("<tr><td><code>").count(), 1, "{page}");
    assert!(page.contains("Encryption keys"), "{page}");
    let (status, to) = act(&gw, &alice, &csrf, &[("action", "key_rotate")]).await;
    assert_eq!((status, to.ends_with("done=rotated")), (303, true));
    let (_, page) = get(&gw, &alice, "/authorize/console/admin/keys").await;
    assert_eq!(page.matches("<tr><td><code>").count(), 2, "{page}");
    let signing = page
        .split("<tr>")
        .find(|r| r.contains(">signing<"))
        .and_then(|r| r.split("<code>").nth(1))
        .and_then(|r| r.split("</code>").next())
        .unwrap()
        .to_string();
    let (status, page) = act(
        &gw,
        &alice,
        &csrf,
        &[("action", "key_retire"), ("kid", &signing)],
    )
    .await;
    assert_eq!(status, 409, "{page}");
    assert!(page.contains("still signs"), "{page}");

    // The audit log: each action as `console:alice`, found by its filters.
    let blocked = audit_lines(&audit, "client_blocked").await;
    assert_eq!(blocked.len(), 1);
    assert_eq!(blocked[0]["actor"], "console:alice");
    assert_eq!(blocked[0]["client"], b.client_id.as_str());
    for action in ["user_created", "user_disabled", "signing_key_rotated"] {
        assert!(
            !audit_lines(&audit, action).await.is_empty(),
            "{action} recorded"
        );
    }
    let (status, page) = get(
        &gw,
        &alice,
        &format!(
            "/authorize/console/admin/audit?action=client_blocked&client={}",
            urlencoding(&b.client_id)
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        page.contains("console:alice") && page.contains("reason=misbehaved"),
        "{page}"
    );
    assert_eq!(page.matches("<tr><td>").count(), 1, "{page}");
    let (_, page) = get(&gw, &alice, "/authorize/console/admin/audit?user=nobody").await;
    assert!(page.contains("No record matches"), "{page}");
    // No password, token or code in the records the console shows.
    let (_, page) = get(&gw, &alice, "/authorize/console/admin/audit?limit=500").await;
    assert!(!page.contains(&password) && !page.contains(&c.access_token));
}

#[tokio::test]
async fn without_an_audit_file_the_log_page_says_where_to_set_it() {
    let gw = TestGateway::start_with(|c| c.console.admins = vec!["alice".into()]).await;
    let alice = signed_in(&gw, "alice").await;
    let (status, page) = get(&gw, &alice, "/authorize/console/admin/audit").await;
    assert_eq!(status, 409);
    assert!(page.contains("[audit] path"), "{page}");
}

fn urlencoding(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The authorization page's status for a CIMD client (200: the sign-in page).
async fn cimd_authorize(gw: &TestGateway, client_id: &str) -> (u16, String) {
    let pkce = support::Pkce::new();
    let resource = gw.resource();
    let params = support::authorize_params(
        client_id,
        "http://127.0.0.1:9999/callback",
        &pkce,
        &resource,
    );
    let url = url::Url::parse_with_params(&gw.url("/authorize"), &params).unwrap();
    let r = TestGateway::http().get(url.as_str()).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn register(gw: &TestGateway) -> u16 {
    TestGateway::http()
        .post(gw.url("/register"))
        .json(&json!({"redirect_uris": ["http://127.0.0.1:9999/callback"], "token_endpoint_auth_method": "none"}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn administrators_change_the_registration_policy_while_it_runs() {
    let fixture =
        crate::cimd_fixture::CimdFixture::standard("http://127.0.0.1:9999/callback").await;
    let gw = TestGateway::start_with(|c| {
        c.console.admins = vec!["alice".into()];
        c.registration.cimd_allow_http_loopback = true;
    })
    .await;
    assert_eq!(cimd_authorize(&gw, &fixture.client_id).await.0, 200);
    assert_eq!(register(&gw).await, 201);
    let alice = signed_in(&gw, "alice").await;
    let (_, page) = get(&gw, &alice, "/authorize/console/admin/clients").await;
    assert!(page.contains("the configuration file"), "{page}");
    let csrf = support::hidden(&page, "csrf").unwrap();

    // A domain that is not one: refused with the reason, nothing changes.
    let (status, page) = act(
        &gw,
        &alice,
        &csrf,
        &[
            ("action", "registration_set"),
            ("dcr", "open"),
            ("cimd", "1"),
            ("cimd_blocked_domains", "https://127.0.0.1/"),
        ],
    )
    .await;
    assert_eq!(status, 400);
    assert!(page.contains("is not a domain"), "{page}");
    assert_eq!(cimd_authorize(&gw, &fixture.client_id).await.0, 200);
    // Token registration without any configured token would lock everyone out: refused.
    let (status, page) = act(
        &gw,
        &alice,
        &csrf,
        &[
            ("action", "registration_set"),
            ("dcr", "token"),
            ("cimd", "1"),
        ],
    )
    .await;
    assert_eq!(status, 400, "{page}");

    // Block the fixture's host, close registration: both refused at once on this instance,
    // and the metadata stops naming the registration endpoint.
    let (status, to) = act(
        &gw,
        &alice,
        &csrf,
        &[
            ("action", "registration_set"),
            ("dcr", "off"),
            ("cimd", "1"),
            ("cimd_blocked_domains", "example.org 127.0.0.1"),
        ],
    )
    .await;
    assert_eq!(
        (status, to.ends_with("done=policy_set")),
        (303, true),
        "{to}"
    );
    let (status, page) = cimd_authorize(&gw, &fixture.client_id).await;
    assert_eq!(status, 400);
    assert!(page.contains("from this domain are refused"), "{page}");
    assert_eq!(register(&gw).await, 403);
    let meta: Value = TestGateway::http()
        .get(gw.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(meta.get("registration_endpoint").is_none(), "{meta}");
    // An allowed list without the host refuses it too; with it, it is accepted.
    let (status, _) = act(
        &gw,
        &alice,
        &csrf,
        &[
            ("action", "registration_set"),
            ("dcr", "open"),
            ("cimd", "1"),
            ("cimd_allowed_domains", "*.example.com"),
        ],
    )
    .await;
    assert_eq!(status, 303);
    let (status, page) = cimd_authorize(&gw, &fixture.client_id).await;
    assert_eq!(status, 400);
    assert!(page.contains("only from other domains"), "{page}");
    assert_eq!(register(&gw).await, 201);
    let (_, page) = get(&gw, &alice, "/authorize/console/admin/clients").await;
    assert!(page.contains("set by an administrator") && page.contains("*.example.com"));

    // Another instance (here the command line's service) goes back to the file's policy:
    // this instance follows once its few seconds have passed.
    let config = {
        let mut c = mcp_oauth_gateway::config::Config::default();
        c.registration.cimd_allow_http_loopback = true;
        c
    };
    let other =
        mcp_oauth_gateway::admin::Admin::new(gw.store.clone(), gw.clock.clone(), &config, "cli")
            .unwrap();
    let (_, configured) = other.registration_policy().await.unwrap();
    assert!(!configured);
    other.set_registration_policy(None).await.unwrap();
    assert_eq!(
        cimd_authorize(&gw, &fixture.client_id).await.0,
        400,
        "not yet"
    );
    gw.clock
        .advance(mcp_oauth_gateway::authorization::policy::POLICY_TTL_SECS);
    assert_eq!(cimd_authorize(&gw, &fixture.client_id).await.0, 200);
    // Client ids that dress a blocked host up: a trailing dot, upper case.
    other
        .set_registration_policy(Some(
            mcp_oauth_gateway::authorization::policy::RegistrationPolicy {
                dcr: mcp_oauth_gateway::config::DcrMode::Open,
                cimd: true,
                cimd_allowed_domains: Vec::new(),
                cimd_blocked_domains: vec!["127.0.0.1".into()],
                approve_new_clients: false,
            },
        ))
        .await
        .unwrap();
    gw.clock
        .advance(mcp_oauth_gateway::authorization::policy::POLICY_TTL_SECS);
    let dotted = fixture.client_id.replacen("127.0.0.1", "127.0.0.1.", 1);
    let (status, page) = cimd_authorize(&gw, &dotted).await;
    assert_eq!(status, 400);
    assert!(page.contains("from this domain are refused"), "{page}");
}

#[tokio::test]
async fn with_approval_on_new_clients_wait_until_an_administrator_approves_them() {
    let gw = TestGateway::start_with(|c| c.console.admins = vec!["alice".into()]).await;
    // A grant made before approval is asked for keeps working.
    let before = support::authorize_user(&gw, "bob").await;
    let alice = signed_in(&gw, "alice").await;
    let (_, page) = get(&gw, &alice, "/authorize/console/admin/clients").await;
    assert!(!page.contains("Waiting for approval"), "{page}");
    let csrf = support::hidden(&page, "csrf").unwrap();
    let (status, _) = act(
        &gw,
        &alice,
        &csrf,
        &[
            ("action", "registration_set"),
            ("dcr", "open"),
            ("cimd", "1"),
            ("approve_new_clients", "1"),
        ],
    )
    .await;
    assert_eq!(status, 303);
    let (status, v) = gw
        .post_form(
            "/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &before.refresh_token),
                ("client_id", &before.client_id),
            ],
        )
        .await;
    assert_eq!(status, 200, "{v}");

    // A new client: its authorization stops at a page saying why, and it waits.
    let redirect = "http://127.0.0.1:9999/callback";
    let r = TestGateway::http()
        .post(gw.url("/register"))
        .json(&json!({"client_name": "New Tool", "redirect_uris": [redirect], "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token", "urn:ietf:params:oauth:grant-type:device_code"]}))
        .send()
        .await
        .unwrap();
    let client_id = r.json::<Value>().await.unwrap()["client_id"]
        .as_str()
        .unwrap()
        .to_string();
    let pkce = support::Pkce::new();
    let resource = gw.resource();
    let params = support::authorize_params(&client_id, redirect, &pkce, &resource);
    let url = url::Url::parse_with_params(&gw.url("/authorize"), &params).unwrap();
    let r = TestGateway::browser()
        .get(url.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers().get("location").is_none());
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("waits for the gateway administrator")
    );
    // The device flow waits too.
    let (status, v) = gw
        .post_form(
            "/device_authorization",
            &[("client_id", &client_id), ("resource", &resource)],
        )
        .await;
    assert!(status == 400 || status == 401, "{status} {v}");
    assert_eq!(v["error"], "invalid_client");
    let (_, page) = get(&gw, &alice, "/authorize/console/admin/clients").await;
    assert!(
        page.contains("Waiting for approval") && page.contains("New Tool"),
        "{page}"
    );
    // Approved: authorized like any client, and not approved twice.
    let (status, to) = act(
        &gw,
        &alice,
        &csrf,
        &[("action", "client_approve"), ("client", &client_id)],
    )
    .await;
    assert_eq!((status, to.ends_with("done=approved")), (303, true), "{to}");
    let location = support::approve(&TestGateway::browser(), &gw, url.as_str(), "bob").await;
    assert!(
        support::query_of(&location).contains_key("code"),
        "{location}"
    );
    let (status, page) = act(
        &gw,
        &alice,
        &csrf,
        &[("action", "client_approve"), ("client", &client_id)],
    )
    .await;
    assert_eq!(status, 400);
    assert!(page.contains("approved already"), "{page}");
    let (_, page) = get(&gw, &alice, "/authorize/console/admin/clients").await;
    assert!(page.contains("No client is waiting"), "{page}");
    // Dismissed and blocked clients leave the list.
    let r = TestGateway::http()
        .post(gw.url("/register"))
        .json(&json!({"client_name": "Second", "redirect_uris": [redirect], "token_endpoint_auth_method": "none"}))
        .send()
        .await
        .unwrap();
    let second = r.json::<Value>().await.unwrap()["client_id"]
        .as_str()
        .unwrap()
        .to_string();
    let params = support::authorize_params(&second, redirect, &pkce, &resource);
    let url = url::Url::parse_with_params(&gw.url("/authorize"), &params).unwrap();
    assert_eq!(
        TestGateway::browser()
            .get(url.as_str())
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    let (_, page) = get(&gw, &alice, "/authorize/console/admin/clients").await;
    assert!(
        page.contains("(its own name)") && page.contains("Dismiss"),
        "{page}"
    );
    let (status, to) = act(
        &gw,
        &alice,
        &csrf,
        &[("action", "client_dismiss"), ("client", &second)],
    )
    .await;
    assert_eq!(
        (status, to.ends_with("done=dismissed")),
        (303, true),
        "{to}"
    );
    let (status, _) = act(
        &gw,
        &alice,
        &csrf,
        &[("action", "client_dismiss"), ("client", &second)],
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        TestGateway::browser()
            .get(url.as_str())
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    let (status, _) = act(
        &gw,
        &alice,
        &csrf,
        &[("action", "client_block"), ("client", &second)],
    )
    .await;
    assert_eq!(status, 303);
    let waiting = gw.store.client_approvals().await.unwrap();
    assert!(
        waiting.iter().all(|a| a.client_id != second),
        "a blocked client waits for nothing"
    );
}

#[tokio::test]
async fn an_unapproved_client_gets_no_client_credentials_token() {
    let gw = TestGateway::start_with(|c| {
        c.registration.dcr = mcp_oauth_gateway::config::DcrMode::Token;
        c.registration.initial_access_tokens =
            vec![mcp_oauth_gateway::secret::Secret::from("iat-1".to_string())];
        c.registration.approve_new_clients = true;
    })
    .await;
    let r = TestGateway::http()
        .post(gw.url("/register"))
        .bearer_auth("iat-1")
        .json(&json!({"client_name": "Service", "grant_types": ["client_credentials"], "token_endpoint_auth_method": "client_secret_post"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    let (id, secret) = (
        v["client_id"].as_str().unwrap(),
        v["client_secret"].as_str().unwrap(),
    );
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", id),
        ("client_secret", secret),
        ("resource", &gw.resource()),
    ];
    let (status, v) = gw.post_form("/token", &form).await;
    assert_eq!(v["error"], "invalid_client", "{status} {v}");
    let admin = mcp_oauth_gateway::admin::Admin::new(
        gw.store.clone(),
        gw.clock.clone(),
        &mcp_oauth_gateway::config::Config::default(),
        "cli",
    )
    .unwrap();
    admin.approve_client(id).await.unwrap();
    let (status, v) = gw.post_form("/token", &form).await;
    assert_eq!(status, 200, "{v}");
}
