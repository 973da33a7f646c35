//! One lifecycle for grants: every way a grant ends is heard once, with its reason, by this
//! process at once and by every other instance (PostgreSQL's NOTIFY, SQLite's events table)
//! within a second; caches follow it.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use mcp_oauth_gateway::store::{
    self, AccessTokenRecord, EndReason, GrantEnded, GrantFilter, GrantRecord, PostgresStore,
    RefreshTokenRecord, SharedStore, StoreEvent,
};
use tokio::sync::broadcast::Receiver;

use crate::support::*;

/// Every event published so far (publishing happens before the ending call returns), but
/// `Resync`, which says only that a listening connection to PostgreSQL was (re)made.
fn drain(rx: &mut Receiver<StoreEvent>) -> Vec<StoreEvent> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        if e != StoreEvent::Resync {
            out.push(e);
        }
    }
    out
}

/// The grant ends of `events`, which must be nothing else but `also`.
fn ends(events: Vec<StoreEvent>) -> Vec<GrantEnded> {
    events
        .into_iter()
        .filter_map(|e| match e {
            StoreEvent::GrantEnded(g) => Some(g),
            _ => None,
        })
        .collect()
}

async fn grant_of(gw: &TestGateway, client_id: &str) -> GrantRecord {
    let grants = gw
        .store
        .list_grants(
            &GrantFilter {
                client_id: Some(client_id.into()),
                ..Default::default()
            },
            true,
        )
        .await
        .unwrap();
    assert_eq!(grants.len(), 1);
    grants.into_iter().next().unwrap()
}

/// Exactly one end, of that client's grant, for `reason`; and the grant says so.
async fn assert_one_end(
    gw: &TestGateway,
    rx: &mut Receiver<StoreEvent>,
    a: &Authorized,
    reason: EndReason,
) {
    let ended = ends(drain(rx));
    let grant = grant_of(gw, &a.client_id).await;
    assert_eq!(
        ended,
        vec![GrantEnded {
            grant: grant.id.clone(),
            user: grant.user_id.clone(),
            client: a.client_id.clone(),
            reason,
        }],
        "{reason}"
    );
    assert_eq!(grant.ended_reason, Some(reason));
    assert!(grant.revoked_at.is_some());
    // The token cache heard it: refused at once, with no clock advance.
    assert_eq!(call_whoami(gw, &a.access_token).await.0, 401, "{reason}");
}

async fn refresh(gw: &TestGateway, a: &Authorized, token: &str) -> (u16, serde_json::Value) {
    gw.post_form(
        "/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
            ("client_id", &a.client_id),
        ],
    )
    .await
}

#[tokio::test]
async fn each_way_a_grant_ends_is_published_once_with_its_reason() {
    let gw = TestGateway::start_with(|c| {
        c.authorization.grant_max_lifetime_secs = 7 * 24 * 3600;
    })
    .await;
    let mut rx = gw.store.subscribe();

    // The client revokes its refresh token.
    let a = authorize_user(&gw, "alice").await;
    assert_eq!(call_whoami(&gw, &a.access_token).await.0, 200);
    let (s, _) = gw
        .post_form(
            "/revoke",
            &[("token", &a.refresh_token), ("client_id", &a.client_id)],
        )
        .await;
    assert_eq!(s, 200);
    assert_one_end(&gw, &mut rx, &a, EndReason::Revoked).await;
    // Revoking it again ends nothing more.
    gw.post_form(
        "/revoke",
        &[("token", &a.refresh_token), ("client_id", &a.client_id)],
    )
    .await;
    assert!(drain(&mut rx).is_empty());

    // A rotated refresh token presented again after the retry window.
    let a = authorize_user(&gw, "alice").await;
    assert_eq!(call_whoami(&gw, &a.access_token).await.0, 200);
    let (s, _) = refresh(&gw, &a, &a.refresh_token).await;
    assert_eq!(s, 200);
    gw.clock.advance(11);
    let (s, body) = refresh(&gw, &a, &a.refresh_token).await;
    assert_eq!((s, body["error"].as_str()), (400, Some("invalid_grant")));
    assert_one_end(&gw, &mut rx, &a, EndReason::RefreshReplayed).await;

    // An administrator revokes by user.
    let a = authorize_user(&gw, "alice").await;
    assert_eq!(call_whoami(&gw, &a.access_token).await.0, 200);
    let alice = gw.store.user_by_name("alice").await.unwrap().unwrap();
    let n = gw
        .store
        .revoke_grants(
            &GrantFilter {
                user_id: Some(alice.id.clone()),
                ..Default::default()
            },
            EndReason::AdminRevoked,
            gw.now(),
        )
        .await
        .unwrap();
    assert_eq!(
        n, 1,
        "only the live grant ends; ended ones are not ended again"
    );
    assert_one_end(&gw, &mut rx, &a, EndReason::AdminRevoked).await;

    // A password change.
    let a = authorize_user(&gw, "alice").await;
    assert_eq!(call_whoami(&gw, &a.access_token).await.0, 200);
    gw.accounts
        .set_password("alice", PASSWORD, false)
        .await
        .unwrap();
    assert_one_end(&gw, &mut rx, &a, EndReason::PasswordChanged).await;

    // The user is disabled (and enabled again for what follows).
    let a = authorize_user(&gw, "alice").await;
    assert_eq!(call_whoami(&gw, &a.access_token).await.0, 200);
    gw.accounts
        .set_disabled("alice", true, false)
        .await
        .unwrap();
    assert_one_end(&gw, &mut rx, &a, EndReason::UserDisabled).await;
    gw.accounts
        .set_disabled("alice", false, false)
        .await
        .unwrap();
    assert!(drain(&mut rx).is_empty(), "enabling ends nothing");

    // The client is removed.
    let a = authorize_user(&gw, "alice").await;
    assert_eq!(call_whoami(&gw, &a.access_token).await.0, 200);
    assert!(
        gw.store
            .delete_client(&a.client_id, gw.now())
            .await
            .unwrap()
    );
    let events = drain(&mut rx);
    assert!(events.contains(&StoreEvent::ClientRemoved {
        client: a.client_id.clone()
    }));
    let ended = ends(events);
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].reason, EndReason::ClientRemoved);
    assert_eq!(call_whoami(&gw, &a.access_token).await.0, 401);

    // The user is removed.
    gw.accounts.create("carol", PASSWORD).await.unwrap();
    let a = authorize_user(&gw, "carol").await;
    assert_eq!(call_whoami(&gw, &a.access_token).await.0, 200);
    let carol = gw.store.user_by_name("carol").await.unwrap().unwrap();
    assert!(gw.store.delete_user(&carol.id, gw.now()).await.unwrap());
    let events = drain(&mut rx);
    assert!(events.contains(&StoreEvent::UserRemoved {
        user: carol.id.clone()
    }));
    assert_eq!(
        ends(events)
            .iter()
            .map(|g| (g.user.clone(), g.reason))
            .collect::<Vec<_>>(),
        vec![(Some(carol.id.clone()), EndReason::UserRemoved)]
    );
    assert_eq!(call_whoami(&gw, &a.access_token).await.0, 401);

    // Its lifetime is reached: its refresh token, cut to the grant's end, is refused, and
    // the sweep ends the grant.
    let a = authorize_user(&gw, "alice").await;
    gw.clock.advance(7 * 24 * 3600);
    let (s, body) = refresh(&gw, &a, &a.refresh_token).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    let now = gw.now();
    let swept = gw
        .store
        .sweep(now, now - 24 * 3600, Some(now - 7 * 24 * 3600))
        .await
        .unwrap();
    assert_eq!(swept.grants_ended, 1);
    assert_one_end(&gw, &mut rx, &a, EndReason::MaxLifetime).await;
}

#[tokio::test]
async fn the_sweep_ends_grants_that_ran_out_or_reached_their_lifetime() {
    let gw = TestGateway::start_with(|c| {
        c.authorization.grant_max_lifetime_secs = 40 * 24 * 3600;
        c.authorization.refresh_token_ttl_secs = 30 * 24 * 3600;
    })
    .await;
    let mut rx = gw.store.subscribe();
    let old = authorize_user(&gw, "alice").await;
    // Refreshed on day 20: its new refresh token would outlive the grant, so it is cut to
    // the grant's end (day 40), and the access token's lifetime is unchanged.
    gw.clock.advance(20 * 24 * 3600);
    let (s, body) = refresh(&gw, &old, &old.refresh_token).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["expires_in"], 3600);
    // Another grant, left alone until its refresh token ran out on day 50.
    let idle = authorize_user(&gw, "bob").await;
    assert!(drain(&mut rx).is_empty());

    gw.clock.advance(20 * 24 * 3600 + 1);
    let now = gw.now();
    let swept = gw
        .store
        .sweep(now, now - 24 * 3600, Some(now - 40 * 24 * 3600))
        .await
        .unwrap();
    assert_eq!(swept.grants_ended, 1);
    let ended = ends(drain(&mut rx));
    assert_eq!(ended.len(), 1);
    assert_eq!(
        (ended[0].client.as_str(), ended[0].reason),
        (old.client_id.as_str(), EndReason::MaxLifetime)
    );

    gw.clock.advance(10 * 24 * 3600);
    let now = gw.now();
    let swept = gw
        .store
        .sweep(now, now - 24 * 3600, Some(now - 40 * 24 * 3600))
        .await
        .unwrap();
    assert_eq!(swept.grants_ended, 1);
    let ended = ends(drain(&mut rx));
    assert_eq!(
        ended
            .iter()
            .map(|g| (g.client.as_str(), g.reason))
            .collect::<Vec<_>>(),
        vec![(idle.client_id.as_str(), EndReason::Expired)]
    );
    // Nothing is ended twice.
    let swept = gw.store.sweep(now, now, Some(now)).await.unwrap();
    assert_eq!(swept.grants_ended, 0);
    assert!(drain(&mut rx).is_empty());
}

#[tokio::test]
async fn a_replayed_code_ends_its_grant_once() {
    let gw = TestGateway::start().await;
    let mut rx = gw.store.subscribe();
    let redirect = "http://127.0.0.1:9999/callback";
    let client_id = gw.register_public(redirect).await;
    let pkce = Pkce::new();
    let resource = gw.resource();
    let params = authorize_params(&client_id, redirect, &pkce, &resource);
    let url = url::Url::parse_with_params(&gw.url("/authorize"), &params).unwrap();
    let location = approve(&TestGateway::browser(), &gw, url.as_str(), "alice").await;
    let code = query_of(&location)["code"].clone();
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", redirect),
        ("client_id", client_id.as_str()),
        ("code_verifier", pkce.verifier.as_str()),
    ];
    let (s, tokens) = gw.post_form("/token", &form).await;
    assert_eq!(s, 200);
    let access = tokens["access_token"].as_str().unwrap().to_string();
    assert_eq!(call_whoami(&gw, &access).await.0, 200);
    for _ in 0..2 {
        let (s, _) = gw.post_form("/token", &form).await;
        assert_eq!(s, 400);
    }
    let ended = ends(drain(&mut rx));
    assert_eq!(ended.len(), 1, "the second replay ends nothing more");
    assert_eq!(ended[0].reason, EndReason::CodeReplayed);
    assert_eq!(call_whoami(&gw, &access).await.0, 401);
}

/// A running gateway (SQLite: it polls the events table; PostgreSQL: LISTEN) hears what the
/// CLI ends, in another process, within a second — with its clock stopped, so the token
/// cache's own lifetime cannot be what refuses the token.
#[tokio::test]
async fn a_running_gateway_hears_a_cli_revocation_within_a_second() {
    let gw = TestGateway::start().await;
    let a = authorize_user(&gw, "alice").await;
    assert_eq!(call_whoami(&gw, &a.access_token).await.0, 200);
    let bin = env!("CARGO_BIN_EXE_mcp-oauth-gateway");
    let out = tokio::process::Command::new(bin)
        .args(["grants", "revoke", "--user", "alice"])
        .env("MCP_OAUTH_GATEWAY_STORE__URL", &gw.store_url)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let revoked = std::time::Instant::now();
    loop {
        let status = call_whoami(&gw, &a.access_token).await.0;
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            revoked.elapsed() < Duration::from_secs(1),
            "the gateway still accepts a token revoked a second ago"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A grant of the store suite's fixtures with its first tokens, `at-<id>` and `rt-<id>`.
fn grant(id: &str) -> (GrantRecord, AccessTokenRecord, RefreshTokenRecord) {
    use crate::store_suite::{access, grant, refresh};
    (
        grant(id),
        access(&format!("at-{id}"), id),
        refresh(&format!("rt-{id}"), id),
    )
}

/// Two instances on one store: what one ends, the other hears exactly once within a second,
/// and neither hears its own end twice.
async fn second_instance_hears(a: SharedStore, b: SharedStore, name: &str) {
    a.hear_other_instances();
    b.hear_other_instances();
    let mut rx_a = a.subscribe();
    let mut rx_b = b.subscribe();
    // Give both time to start listening (PostgreSQL) or to read where the table ends.
    tokio::time::sleep(Duration::from_millis(600)).await;
    drain(&mut rx_a);
    drain(&mut rx_b);
    let now = crate::store_suite::NOW;
    let (g, at, rt) = grant("g-shared");
    let code = crate::store_suite::code("code-shared");
    a.insert_code(&code).await.unwrap();
    a.redeem_code("code-shared", now, &g, &at, Some(&rt))
        .await
        .unwrap();
    let filter = GrantFilter {
        grant_id: Some("g-shared".into()),
        ..Default::default()
    };
    assert_eq!(
        a.revoke_grants(&filter, EndReason::AdminRevoked, now + 1)
            .await
            .unwrap(),
        1
    );
    let expected = StoreEvent::GrantEnded(GrantEnded {
        grant: "g-shared".into(),
        user: Some("u1".into()),
        client: "c1".into(),
        reason: EndReason::AdminRevoked,
    });
    assert_eq!(
        drain(&mut rx_a),
        vec![expected.clone()],
        "{name}: at once, here"
    );
    let heard = tokio::time::timeout(Duration::from_secs(1), rx_b.recv())
        .await
        .unwrap_or_else(|_| panic!("{name}: the other instance heard nothing within a second"))
        .unwrap();
    assert_eq!(heard, expected, "{name}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(drain(&mut rx_b).is_empty(), "{name}: heard once");
    assert!(
        drain(&mut rx_a).is_empty(),
        "{name}: its own end is not heard again"
    );
}

#[tokio::test]
async fn a_second_instance_hears_each_end_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let a = store::open(&url).await.unwrap();
    let b = store::open(&url).await.unwrap();
    second_instance_hears(a, b, "sqlite").await;

    let Some(pg) = crate::store_suite::postgres_url() else {
        return;
    };
    let (a, admin, schema) = crate::store_suite::fresh_postgres(&pg).await;
    let opts = sqlx::postgres::PgConnectOptions::from_str(&pg)
        .unwrap()
        .options([("search_path", schema.as_str())]);
    let b: SharedStore = Arc::new(PostgresStore::connect(opts).await.unwrap());
    // Another installation in another schema of the same database hears none of it.
    let (elsewhere, _, other_schema) = crate::store_suite::fresh_postgres(&pg).await;
    elsewhere.hear_other_instances();
    let mut rx_elsewhere = elsewhere.subscribe();
    second_instance_hears(a, b, "postgres").await;
    assert!(
        drain(&mut rx_elsewhere).is_empty(),
        "another schema's installation heard the ends"
    );
    let _ = sqlx::query(&format!("DROP SCHEMA {other_schema} CASCADE"))
        .execute(&admin)
        .await;
    let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await;
}

/// A token whose row outlived its grant's end (a rotation committing beside the end, on
/// PostgreSQL) is refused all the same: a token is valid only while its grant is.
#[tokio::test]
async fn an_access_token_is_valid_only_while_its_grant_lives() {
    for e in crate::store_suite::engines().await {
        let s = &e.store;
        let now = crate::store_suite::NOW;
        let (g, at, _) = grant("g-late");
        let mut ended = g.clone();
        ended.revoked_at = Some(now);
        let code = crate::store_suite::code("code-late");
        s.insert_code(&code).await.unwrap();
        s.redeem_code("code-late", now, &g, &at, None)
            .await
            .unwrap();
        assert!(
            s.access_token("at-g-late", now).await.unwrap().is_some(),
            "{}",
            e.name
        );
        s.revoke_grants(
            &GrantFilter {
                grant_id: Some("g-late".into()),
                ..Default::default()
            },
            EndReason::AdminRevoked,
            now,
        )
        .await
        .unwrap();
        // The row comes back, as a late commit would leave it.
        let mut late = at.clone();
        late.token_hash = "at-late".into();
        s.insert_access_token(&late).await.unwrap();
        assert!(
            s.access_token("at-late", now).await.unwrap().is_none(),
            "{}",
            e.name
        );
        e.finish().await;
    }
}
