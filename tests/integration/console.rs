//! The console of a signed-in person: the applications they allowed, revocable (the
//! client's next call is refused), their browser sessions, each can be ended; forms need
//! the token of this browser's session and touch only the person's own rows.

use serde_json::Value;

use crate::support::{self, PASSWORD, TestGateway};

/// A browser signed in as `user` at the gateway's own sign-in page, sent on to the console.
pub(crate) async fn signed_in(gw: &TestGateway, user: &str) -> reqwest::Client {
    let browser = TestGateway::browser();
    let r = browser.get(gw.url("/console")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    let to = r.headers()["location"].to_str().unwrap().to_string();
    let r = browser.get(gw.url(&to)).send().await.unwrap();
    assert_eq!(r.status(), 303, "not signed in: to the sign-in page");
    let signin = r.headers()["location"].to_str().unwrap().to_string();
    let page = browser
        .get(gw.url(&signin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = support::hidden(&page, "csrf").unwrap();
    let r = browser
        .post(gw.url(&signin))
        .form(&[("username", user), ("password", PASSWORD), ("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .ends_with("/authorize/console")
    );
    browser
}

async fn console(gw: &TestGateway, browser: &reqwest::Client) -> String {
    let r = browser
        .get(gw.url("/authorize/console"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert!(r.headers().contains_key("content-security-policy"));
    r.text().await.unwrap()
}

/// The value of the hidden `name` field in the table row that shows `near`.
fn field_near(html: &str, near: &str, name: &str) -> String {
    let row = html
        .split("<tr>")
        .find(|r| r.contains(near) && r.contains(&format!("name=\"{name}\"")))
        .expect("a row with it");
    support::hidden(row, name).unwrap()
}

#[tokio::test]
async fn a_person_sees_and_revokes_what_they_allowed() {
    let gw = TestGateway::start().await;
    let a = support::authorize_user(&gw, "alice").await;
    let b = support::authorize_user(&gw, "bob").await;
    let (status, _) = support::call_whoami(&gw, &a.access_token).await;
    assert_eq!(status, 200);
    let browser = signed_in(&gw, "alice").await;
    let page = console(&gw, &browser).await;
    assert!(
        page.contains("Signed in as <strong>alice</strong>"),
        "{page}"
    );
    assert!(page.contains(&a.client_id) && page.contains(&gw.resource()));
    assert!(
        !page.contains(&b.client_id),
        "another person's grant is not shown"
    );
    assert!(page.contains("this browser"));
    let grant = field_near(&page, &a.client_id, "grant");
    let csrf = support::hidden(&page, "csrf").unwrap();

    // Bob's grant id with Alice's form: not hers, nothing happens.
    let bobs = gw
        .store
        .list_grants(
            &mcp_oauth_gateway::store::GrantFilter {
                client_id: Some(b.client_id.clone()),
                ..Default::default()
            },
            false,
        )
        .await
        .unwrap()[0]
        .id
        .clone();
    let r = browser
        .post(gw.url("/authorize/console/grants/revoke"))
        .form(&[("grant", bobs.as_str()), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .ends_with("done=missing")
    );
    assert_eq!(support::call_whoami(&gw, &b.access_token).await.0, 200);
    // Without the form token (another site's form): refused.
    let r = browser
        .post(gw.url("/authorize/console/grants/revoke"))
        .form(&[("grant", grant.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Another browser, not signed in, with the whole form: refused.
    let r = TestGateway::browser()
        .post(gw.url("/authorize/console/grants/revoke"))
        .form(&[("grant", grant.as_str()), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(support::call_whoami(&gw, &a.access_token).await.0, 200);

    // Her own: revoked, and the client's next call is refused.
    let r = browser
        .post(gw.url("/authorize/console/grants/revoke"))
        .form(&[("grant", grant.as_str()), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .ends_with("done=revoked")
    );
    assert_eq!(support::call_whoami(&gw, &a.access_token).await.0, 401);
    let (status, v): (u16, Value) = gw
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
    let page = console(&gw, &browser).await;
    assert!(page.contains("No application has access"), "{page}");
    let r = browser
        .get(gw.url("/authorize/console?done=revoked"))
        .send()
        .await
        .unwrap();
    assert!(r.text().await.unwrap().contains("access was revoked"));
    assert!(!page.contains(&a.client_id), "{page}");
    assert_eq!(support::call_whoami(&gw, &b.access_token).await.0, 200);
}

#[tokio::test]
async fn a_person_ends_their_other_sessions_and_this_one() {
    let gw = TestGateway::start().await;
    let laptop = signed_in(&gw, "alice").await;
    let phone = signed_in(&gw, "alice").await;
    let page = console(&gw, &laptop).await;
    assert_eq!(page.matches("/console/sessions/end").count(), 2, "{page}");
    let csrf = support::hidden(&page, "csrf").unwrap();
    // The session that is not this browser's: the phone's.
    let rows: Vec<&str> = page
        .split("<tr>")
        .filter(|r| r.contains("sessions/end"))
        .collect();
    let other = rows.iter().find(|r| !r.contains("this browser")).unwrap();
    let other_id = support::hidden(other, "session").unwrap();
    let r = laptop
        .post(gw.url("/authorize/console/sessions/end"))
        .form(&[("session", other_id.as_str()), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .ends_with("done=ended")
    );
    // The phone is signed out: the console sends it to sign in.
    let r = phone
        .get(gw.url("/authorize/console"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    // Ending this browser's own session signs it out too.
    let page = console(&gw, &laptop).await;
    let mine = field_near(&page, "this browser", "session");
    let csrf = support::hidden(&page, "csrf").unwrap();
    let r = laptop
        .post(gw.url("/authorize/console/sessions/end"))
        .form(&[("session", mine.as_str()), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let r = laptop
        .get(gw.url("/authorize/console"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
}
