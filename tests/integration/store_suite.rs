//! The storage interface's promises, run against every engine with the same assertions:
//! SQLite always, PostgreSQL when MCP_GATEWAY_TEST_POSTGRES_URL names one (CI sets it; there
//! a missing database is a failure, not a skip). Each PostgreSQL run gets its own schema.

use std::str::FromStr;
use std::sync::Arc;

use mcp_oauth_gateway::store::*;

pub const POSTGRES_ENV: &str = "MCP_GATEWAY_TEST_POSTGRES_URL";

pub struct Engine {
    pub name: &'static str,
    pub store: SharedStore,
    cleanup: Option<(sqlx::PgPool, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl Engine {
    /// A signing key's stored private half, read behind the store's back (retired or not).
    async fn stored_key_material(&self, kid: &str) -> Vec<u8> {
        let sql = "SELECT pkcs8 FROM signing_keys WHERE kid = ";
        match (&self.cleanup, &self._dir) {
            (Some((pool, schema)), _) => sqlx::query_scalar(&format!(
                "SELECT pkcs8 FROM {schema}.signing_keys WHERE kid = $1"
            ))
            .bind(kid)
            .fetch_one(pool)
            .await
            .unwrap(),
            (None, Some(dir)) => {
                let pool = sqlx::SqlitePool::connect(&format!(
                    "sqlite://{}",
                    dir.path().join("s.db").display()
                ))
                .await
                .unwrap();
                sqlx::query_scalar(&format!("{sql}?"))
                    .bind(kid)
                    .fetch_one(&pool)
                    .await
                    .unwrap()
            }
            _ => unreachable!(),
        }
    }

    pub async fn finish(self) {
        if let Some((pool, schema)) = self.cleanup {
            let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(&pool)
                .await;
        }
    }
}

pub fn postgres_url() -> Option<String> {
    match std::env::var(POSTGRES_ENV) {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{POSTGRES_ENV} must be set in CI"
            );
            eprintln!("SKIPPED (PostgreSQL half): set {POSTGRES_ENV} to run it");
            None
        }
    }
}

/// A fresh, empty PostgreSQL store in a schema of its own.
pub async fn fresh_postgres(url: &str) -> (SharedStore, sqlx::PgPool, String) {
    let admin = sqlx::PgPool::connect(url)
        .await
        .expect("PostgreSQL reachable");
    let schema = format!(
        "mog_test_{}",
        mcp_oauth_gateway::crypto::new_id()
            .to_ascii_lowercase()
            .replace(['-', '_'], "")
    );
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    let opts = sqlx::postgres::PgConnectOptions::from_str(url)
        .unwrap()
        .options([("search_path", schema.as_str())]);
    let store: SharedStore = Arc::new(PostgresStore::connect(opts).await.expect("store"));
    (store, admin, schema)
}

pub async fn engines() -> Vec<Engine> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite: SharedStore = open(&format!("sqlite://{}", dir.path().join("s.db").display()))
        .await
        .unwrap();
    let mut out = vec![Engine {
        name: "sqlite",
        store: sqlite,
        cleanup: None,
        _dir: Some(dir),
    }];
    if let Some(url) = postgres_url() {
        let (store, admin, schema) = fresh_postgres(&url).await;
        out.push(Engine {
            name: "postgres",
            store,
            cleanup: Some((admin, schema)),
            _dir: None,
        });
    }
    out
}

pub(crate) const NOW: i64 = 1_900_000_000;

pub(crate) fn grant(id: &str) -> GrantRecord {
    GrantRecord {
        id: id.into(),
        user_id: Some("u1".into()),
        client_id: "c1".into(),
        resource: "https://gw/mcp".into(),
        scopes: vec!["mcp".into()],
        created_at: NOW,
        revoked_at: None,
        ended_reason: None,
        login_source: "local".into(),
    }
}

pub(crate) fn access(hash: &str, grant: &str) -> AccessTokenRecord {
    AccessTokenRecord {
        token_hash: hash.into(),
        grant_id: Some(grant.into()),
        client_id: "c1".into(),
        user_id: Some("u1".into()),
        resource: "https://gw/mcp".into(),
        scopes: vec!["mcp".into()],
        created_at: NOW,
        expires_at: NOW + 3600,
    }
}

pub(crate) fn refresh(hash: &str, grant: &str) -> RefreshTokenRecord {
    RefreshTokenRecord {
        token_hash: hash.into(),
        grant_id: grant.into(),
        client_id: "c1".into(),
        created_at: NOW,
        expires_at: NOW + 86_400,
        used_at: None,
        successor_hash: None,
        retry_sealed: None,
        retry_until: None,
    }
}

pub(crate) fn code(hash: &str) -> AuthCodeRecord {
    AuthCodeRecord {
        code_hash: hash.into(),
        client_id: "c1".into(),
        user_id: "u1".into(),
        redirect_uri: "http://127.0.0.1/cb".into(),
        redirect_given: true,
        resource: "https://gw/mcp".into(),
        scopes: vec!["mcp".into()],
        code_challenge: "x".repeat(43),
        created_at: NOW,
        expires_at: NOW + 60,
        consumed_at: None,
        grant_id: None,
        login_source: None,
        login_context: None,
    }
}

fn client(id: &str) -> ClientRecord {
    ClientRecord {
        client_id: id.into(),
        secret_hash: None,
        client_name: Some("c".into()),
        redirect_uris: vec!["http://127.0.0.1/cb".into()],
        token_endpoint_auth_method: "none".into(),
        grant_types: vec!["authorization_code".into()],
        scope: None,
        metadata: serde_json::json!({"client_id": id}),
        registered_ip: None,
        created_at: NOW,
        last_used_at: None,
    }
}

#[tokio::test]
async fn a_code_is_redeemed_once_among_concurrent_attempts() {
    for e in engines().await {
        e.store.insert_code(&code("code1")).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..8 {
            let s = e.store.clone();
            tasks.push(tokio::spawn(async move {
                let g = grant(&format!("g{i}"));
                s.redeem_code(
                    "code1",
                    NOW + 1,
                    &g,
                    &access(&format!("at{i}"), &g.id),
                    Some(&refresh(&format!("rt{i}"), &g.id)),
                )
                .await
                .unwrap()
            }));
        }
        let mut issued = 0;
        for t in tasks {
            match t.await.unwrap() {
                RedeemOutcome::Issued => issued += 1,
                RedeemOutcome::Replayed { grant_id } => assert!(grant_id.is_some(), "{}", e.name),
                RedeemOutcome::Invalid => panic!("{}: invalid", e.name),
            }
        }
        assert_eq!(issued, 1, "{}", e.name);
        assert_eq!(
            e.store
                .list_grants(&GrantFilter::default(), true)
                .await
                .unwrap()
                .len(),
            1,
            "{}: no half-issued grants",
            e.name
        );
        // Expired codes are not redeemable.
        let mut late = code("code2");
        late.expires_at = NOW;
        e.store.insert_code(&late).await.unwrap();
        let g = grant("g-late");
        assert!(matches!(
            e.store
                .redeem_code("code2", NOW + 1, &g, &access("atl", "g-late"), None)
                .await
                .unwrap(),
            RedeemOutcome::Invalid
        ));
        e.finish().await;
    }
}

#[tokio::test]
async fn a_refresh_token_rotates_once_among_concurrent_attempts() {
    for e in engines().await {
        let g = grant("g1");
        e.store.insert_code(&code("c")).await.unwrap();
        e.store
            .redeem_code(
                "c",
                NOW,
                &g,
                &access("at0", "g1"),
                Some(&refresh("rt0", "g1")),
            )
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for i in 0..8 {
            let s = e.store.clone();
            tasks.push(tokio::spawn(async move {
                s.rotate_refresh(
                    "rt0",
                    NOW + 1,
                    &access(&format!("at{}", i + 1), "g1"),
                    &refresh(&format!("rt{}", i + 1), "g1"),
                    b"sealed",
                    NOW + 11,
                )
                .await
                .unwrap()
            }));
        }
        let mut rotated = 0;
        for t in tasks {
            match t.await.unwrap() {
                RotateOutcome::Rotated => rotated += 1,
                RotateOutcome::AlreadyUsed {
                    record,
                    successor_used,
                } => {
                    assert!(!successor_used, "{}", e.name);
                    assert_eq!(
                        record.retry_sealed.as_deref(),
                        Some(&b"sealed"[..]),
                        "{}",
                        e.name
                    );
                }
                RotateOutcome::Invalid => panic!("{}: invalid", e.name),
            }
        }
        assert_eq!(rotated, 1, "{}", e.name);
        // A revoked grant's refresh tokens rotate no more, and its access tokens are gone.
        let n = e
            .store
            .revoke_grants(
                &GrantFilter {
                    grant_id: Some("g1".into()),
                    ..Default::default()
                },
                EndReason::AdminRevoked,
                NOW + 2,
            )
            .await
            .unwrap();
        assert_eq!(n, 1, "{}", e.name);
        assert!(
            e.store
                .access_token("at0", NOW + 2)
                .await
                .unwrap()
                .is_none(),
            "{}",
            e.name
        );
        e.finish().await;
    }
}

/// Many rotations at once (SQLite commits them in groups): each wins or loses on its own,
/// a loser writes nothing, and one bad rotation in a group does not fail the others.
#[tokio::test]
async fn rotations_of_many_grants_at_once_each_win_or_lose_on_their_own() {
    for e in engines().await {
        const GRANTS: usize = 12;
        for g in 0..GRANTS {
            let id = format!("mg{g}");
            e.store.insert_code(&code(&format!("mc{g}"))).await.unwrap();
            e.store
                .redeem_code(
                    &format!("mc{g}"),
                    NOW,
                    &grant(&id),
                    &access(&format!("mat{g}"), &id),
                    Some(&refresh(&format!("mrt{g}"), &id)),
                )
                .await
                .unwrap();
        }
        let mut tasks = Vec::new();
        for g in 0..GRANTS {
            for attempt in 0..3 {
                let s = e.store.clone();
                tasks.push(tokio::spawn(async move {
                    let id = format!("mg{g}");
                    let outcome = s
                        .rotate_refresh(
                            &format!("mrt{g}"),
                            NOW + 1,
                            &access(&format!("mat{g}-{attempt}"), &id),
                            &refresh(&format!("mrt{g}-{attempt}"), &id),
                            b"sealed",
                            NOW + 11,
                        )
                        .await;
                    (g, attempt, outcome)
                }));
            }
        }
        // Unknown tokens in the same burst.
        for i in 0..3 {
            let s = e.store.clone();
            tasks.push(tokio::spawn(async move {
                let outcome = s
                    .rotate_refresh(
                        &format!("nope{i}"),
                        NOW + 1,
                        &access(&format!("nat{i}"), "mg0"),
                        &refresh(&format!("nrt{i}"), "mg0"),
                        b"sealed",
                        NOW + 11,
                    )
                    .await;
                (usize::MAX, i, outcome)
            }));
        }
        let mut winners = vec![Vec::new(); GRANTS];
        for t in tasks {
            let (g, attempt, outcome) = t.await.unwrap();
            match outcome.unwrap() {
                RotateOutcome::Rotated => winners[g].push(attempt),
                RotateOutcome::AlreadyUsed { .. } => assert!(g < GRANTS, "{}", e.name),
                RotateOutcome::Invalid => assert_eq!(g, usize::MAX, "{}", e.name),
            }
        }
        for (g, won) in winners.iter().enumerate() {
            assert_eq!(won.len(), 1, "{}: grant {g} won {won:?}", e.name);
            for attempt in 0..3 {
                let successor = e
                    .store
                    .refresh_token_and_grant(&format!("mrt{g}-{attempt}"), NOW + 2)
                    .await
                    .unwrap();
                let issued = e
                    .store
                    .access_token(&format!("mat{g}-{attempt}"), NOW + 2)
                    .await
                    .unwrap();
                if attempt == won[0] {
                    let (r, grant) = successor.expect("the winner's successor exists");
                    assert!(r.used_at.is_none(), "{}", e.name);
                    assert_eq!(grant.unwrap().id, format!("mg{g}"), "{}", e.name);
                    assert!(issued.is_some(), "{}", e.name);
                } else {
                    assert!(successor.is_none(), "{}: a loser wrote a token", e.name);
                    assert!(issued.is_none(), "{}: a loser wrote a token", e.name);
                }
            }
        }
        // A rotation whose successor cannot be written fails alone and changes nothing.
        let taken = format!("mrt1-{}", winners[1][0]);
        let s2 = e.store.clone();
        let current2 = format!("mrt2-{}", winners[2][0]);
        let good = tokio::spawn(async move {
            s2.rotate_refresh(
                &current2,
                NOW + 3,
                &access("mat2-next", "mg2"),
                &refresh("mrt2-next", "mg2"),
                b"sealed",
                NOW + 13,
            )
            .await
        });
        let bad = e
            .store
            .rotate_refresh(
                &format!("mrt3-{}", winners[3][0]),
                NOW + 3,
                &access("mat3-next", "mg3"),
                &refresh(&taken, "mg3"),
                b"sealed",
                NOW + 13,
            )
            .await;
        assert!(
            bad.is_err(),
            "{}: a duplicate successor was accepted",
            e.name
        );
        assert!(
            matches!(good.await.unwrap().unwrap(), RotateOutcome::Rotated),
            "{}",
            e.name
        );
        let (r3, _) = e
            .store
            .refresh_token_and_grant(&format!("mrt3-{}", winners[3][0]), NOW + 4)
            .await
            .unwrap()
            .unwrap();
        assert!(
            r3.used_at.is_none(),
            "{}: the failed rotation left its mark",
            e.name
        );
        assert!(
            e.store
                .access_token("mat3-next", NOW + 4)
                .await
                .unwrap()
                .is_none()
        );
        e.finish().await;
    }
}

#[tokio::test]
async fn the_client_cap_holds_under_concurrent_registrations() {
    for e in engines().await {
        let mut tasks = Vec::new();
        for i in 0..12 {
            let s = e.store.clone();
            tasks.push(tokio::spawn(async move {
                s.register_client(&client(&format!("cl{i}")), 5).await
            }));
        }
        let mut winners = Vec::new();
        for (i, t) in tasks.into_iter().enumerate() {
            match t.await.unwrap() {
                Ok(()) => winners.push(format!("cl{i}")),
                Err(StoreError::ClientLimit) => {}
                Err(other) => panic!("{}: {other}", e.name),
            }
        }
        assert_eq!(winners.len(), 5, "{}", e.name);
        assert_eq!(e.store.list_clients().await.unwrap().len(), 5, "{}", e.name);
        // Which five win is up to the scheduler; re-registering a winner's id
        // must conflict whatever the cap.
        assert!(
            matches!(
                e.store.register_client(&client(&winners[0]), 100).await,
                Err(StoreError::Conflict)
            ),
            "{}",
            e.name
        );
        e.finish().await;
    }
}

#[tokio::test]
async fn counters_sessions_consents_keys_and_users() {
    for e in engines().await {
        let s = &e.store;
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move { s.hit("k", NOW).await.unwrap() }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(s.hits("k", NOW).await.unwrap(), 20, "{}", e.name);
        s.clear_hits("k").await.unwrap();
        assert_eq!(s.hits("k", NOW).await.unwrap(), 0, "{}", e.name);

        s.bind_session("up", "h1", "user:a", NOW, NOW + 100)
            .await
            .unwrap();
        s.bind_session("up", "h1", "user:b", NOW, NOW + 100)
            .await
            .unwrap();
        assert_eq!(
            s.session_owner("up", "h1", NOW + 1, NOW + 101)
                .await
                .unwrap()
                .as_deref(),
            Some("user:a"),
            "{}: owner never changes",
            e.name
        );
        assert_eq!(
            s.session_owner("up", "h1", NOW + 100, NOW + 200)
                .await
                .unwrap(),
            None,
            "{}: expired",
            e.name
        );
        s.unbind_session("up", "h1").await.unwrap();

        let scopes = vec!["b".to_string(), "a".to_string()];
        s.put_consent("u1", "c1", "r", "res", &scopes, NOW)
            .await
            .unwrap();
        s.put_consent("u1", "c1", "r", "res", &scopes, NOW)
            .await
            .unwrap();
        assert!(
            s.has_consent("u1", "c1", "r", "res", &["a".into(), "b".into()])
                .await
                .unwrap(),
            "{}",
            e.name
        );
        assert!(
            !s.has_consent("u1", "c1", "r", "res", &["a".into()])
                .await
                .unwrap(),
            "{}",
            e.name
        );

        let mut tasks = Vec::new();
        for i in 0..4 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.add_signing_key_if_none(&format!("k{i}"), b"pkcs8", NOW)
                    .await
                    .unwrap()
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            s.signing_keys().await.unwrap().len(),
            1,
            "{}: one key for instances starting together",
            e.name
        );

        let user = UserRecord {
            disabled_at: None,
            id: "u1".into(),
            username: "alice".into(),
            password_hash: "h".into(),
            created_at: NOW,
            email: None,
            groups: vec![],
        };
        s.create_user(&user).await.unwrap();
        assert!(
            matches!(s.create_user(&user).await, Err(StoreError::Conflict)),
            "{}",
            e.name
        );
        assert!(
            s.identities_of("u1").await.unwrap().is_empty(),
            "a local account"
        );
        let linked = UserRecord {
            id: "u-linked".into(),
            username: "ann.corp".into(),
            password_hash: String::new(),
            ..user.clone()
        };
        s.create_user_with_identity(&linked, "corp", "sub-9")
            .await
            .unwrap();
        assert_eq!(
            s.identities_of("u-linked").await.unwrap(),
            vec![("corp".to_string(), "sub-9".to_string())],
            "{}",
            e.name
        );
        assert!(s.delete_user("u-linked", NOW).await.unwrap());
        assert!(s.identities_of("u-linked").await.unwrap().is_empty());
        s.set_profile("u1", Some("a@example.com"), &["g1".into(), "g2".into()])
            .await
            .unwrap();
        let u = s.user_by_name("alice").await.unwrap().unwrap();
        assert_eq!(
            (u.email.as_deref(), u.groups.len()),
            (Some("a@example.com"), 2),
            "{}",
            e.name
        );
        let session = BrowserSession {
            user_id: "u1".into(),
            login_source: "local".into(),
        };
        s.put_session("sess", &session, NOW, NOW + 10)
            .await
            .unwrap();
        assert_eq!(
            s.session("sess", NOW + 1).await.unwrap(),
            Some(session),
            "{}",
            e.name
        );
        assert!(s.delete_user("u1", NOW).await.unwrap(), "{}", e.name);
        assert!(
            s.session("sess", NOW + 1).await.unwrap().is_none(),
            "{}: sessions go with the user",
            e.name
        );
        assert_eq!(s.count_users().await.unwrap(), 0, "{}", e.name);

        // Sweeping removes what expired and keeps the rest.
        s.insert_access_token(&access("old", "gx")).await.unwrap();
        let swept = s.sweep(NOW + 3601, NOW, None).await.unwrap();
        assert!(swept.access_tokens >= 1, "{}", e.name);

        // Settings changed at run time: set, replaced, removed.
        assert_eq!(s.setting("p").await.unwrap(), None, "{}", e.name);
        s.put_setting("p", Some("{\"a\":1}"), NOW).await.unwrap();
        s.put_setting("p", Some("{\"a\":2}"), NOW + 1)
            .await
            .unwrap();
        assert_eq!(
            s.setting("p").await.unwrap().as_deref(),
            Some("{\"a\":2}"),
            "{}",
            e.name
        );
        s.put_setting("p", None, NOW + 2).await.unwrap();
        assert_eq!(s.setting("p").await.unwrap(), None, "{}", e.name);

        // Clients waiting for approval, approved once.
        assert_eq!(
            s.client_approval("c1", Some("One"), NOW).await.unwrap(),
            None
        );
        assert_eq!(s.client_approval("c1", None, NOW + 5).await.unwrap(), None);
        assert!(
            s.approve_client("c2", NOW).await.unwrap(),
            "ahead of its first visit"
        );
        assert!(s.approve_client("c1", NOW + 9).await.unwrap());
        assert!(
            !s.approve_client("c1", NOW + 10).await.unwrap(),
            "{}",
            e.name
        );
        assert_eq!(
            s.client_approval("c1", None, NOW + 11).await.unwrap(),
            Some(NOW + 9)
        );
        let all = s.client_approvals().await.unwrap();
        assert_eq!(all.len(), 2, "{}", e.name);
        assert!(
            !s.dismiss_waiting_client("c1").await.unwrap(),
            "approved: not waiting"
        );
        assert_eq!(s.client_approval("c3", None, NOW).await.unwrap(), None);
        assert!(s.dismiss_waiting_client("c3").await.unwrap(), "{}", e.name);
        // A week without an answer: forgotten when the next stranger comes.
        assert_eq!(s.client_approval("c4", None, NOW).await.unwrap(), None);
        let week = mcp_oauth_gateway::store::WAITING_CLIENT_TTL_SECS;
        assert_eq!(
            s.client_approval("c5", None, NOW + week + 1).await.unwrap(),
            None
        );
        let ids: Vec<String> = s
            .client_approvals()
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.client_id)
            .collect();
        assert!(
            !ids.contains(&"c4".to_string()) && ids.contains(&"c5".to_string()),
            "{ids:?}"
        );
        assert_eq!(
            all.iter()
                .find(|a| a.client_id == "c1")
                .unwrap()
                .client_name
                .as_deref(),
            Some("One")
        );
        e.finish().await;
    }
}

/// Two instances race to rotate the same refresh tokens: exactly one rotation of each
/// token wins in the database, and only the winner's successor is stored.
#[tokio::test]
async fn upstream_registrations_are_per_issuer_and_purged_with_other_settings() {
    use mcp_oauth_gateway::store::UpstreamClientRecord;
    for e in engines().await {
        let s = &e.store;
        let rec = |issuer: &str, client: &str, settings: &str| UpstreamClientRecord {
            upstream: "linear".into(),
            issuer: issuer.into(),
            client_id: client.into(),
            client_secret: None,
            method: "dcr".into(),
            settings: settings.into(),
            registered_at: NOW,
        };
        s.put_upstream_client(&rec("https://a.example", "c1", "s1"))
            .await
            .unwrap();
        s.put_upstream_client(&rec("https://b.example", "c2", "s1"))
            .await
            .unwrap();
        // Another issuer's registration is never this one's.
        assert_eq!(
            s.upstream_client("linear", "https://a.example")
                .await
                .unwrap()
                .unwrap()
                .client_id,
            "c1",
            "{}",
            e.name
        );
        assert!(
            s.upstream_client("linear", "https://c.example")
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            s.upstream_client("other", "https://a.example")
                .await
                .unwrap()
                .is_none()
        );
        // Registering again replaces.
        s.put_upstream_client(&rec("https://a.example", "c3", "s1"))
            .await
            .unwrap();
        assert_eq!(
            s.upstream_client("linear", "https://a.example")
                .await
                .unwrap()
                .unwrap()
                .client_id,
            "c3"
        );
        // Changed settings: what was made under the old ones goes.
        assert_eq!(s.purge_upstream_clients("linear", "s1").await.unwrap(), 0);
        assert_eq!(
            s.purge_upstream_clients("linear", "s2").await.unwrap(),
            2,
            "{}",
            e.name
        );
        assert!(
            s.upstream_client("linear", "https://a.example")
                .await
                .unwrap()
                .is_none()
        );
    }
}

/// The vault's rows: one per person and upstream, a refresh lease only one holder gets
/// (until it is released, replaced or lapses), connect flows taken once and only in time,
/// and what goes with changed settings or a removed person.
#[tokio::test]
async fn the_vault_leases_refreshes_and_takes_connect_flows_once() {
    use mcp_oauth_gateway::store::{UpstreamConnectRecord, UpstreamTokenRecord};
    for e in engines().await {
        let s = &e.store;
        let user = "vault-user-id".to_string();
        let row = |user: &str, settings: &str| UpstreamTokenRecord {
            user_id: user.into(),
            upstream: "linear".into(),
            issuer: "https://a.example".into(),
            sealed: vec![1, 2, 3],
            status: "connected".into(),
            scope: "read".into(),
            expires_at: Some(NOW + 3600),
            settings: settings.into(),
            connected_at: NOW,
            updated_at: NOW,
        };
        s.put_upstream_token(&row(&user, "s1")).await.unwrap();
        s.put_upstream_token(&row("someone-else", "s1"))
            .await
            .unwrap();
        assert_eq!(
            s.upstream_tokens(None).await.unwrap().len(),
            2,
            "{}",
            e.name
        );
        assert_eq!(s.upstream_tokens(Some(&user)).await.unwrap().len(), 1);
        // One lease at a time; a second asker waits until it is released or lapses.
        assert!(
            s.lease_upstream_token(&user, "linear", NOW, NOW + 30)
                .await
                .unwrap()
        );
        assert!(
            !s.lease_upstream_token(&user, "linear", NOW + 1, NOW + 31)
                .await
                .unwrap()
        );
        assert!(
            s.lease_upstream_token(&user, "linear", NOW + 30, NOW + 60)
                .await
                .unwrap(),
            "lapsed"
        );
        s.release_upstream_token(&user, "linear").await.unwrap();
        assert!(
            s.lease_upstream_token(&user, "linear", NOW + 31, NOW + 61)
                .await
                .unwrap()
        );
        // Storing the refreshed tokens frees it too.
        s.put_upstream_token(&row(&user, "s1")).await.unwrap();
        assert!(
            s.lease_upstream_token(&user, "linear", NOW + 32, NOW + 62)
                .await
                .unwrap()
        );
        assert!(
            !s.lease_upstream_token("nobody", "linear", NOW, NOW + 30)
                .await
                .unwrap()
        );
        assert!(
            s.set_upstream_token_status(&user, "linear", "broken", NOW)
                .await
                .unwrap()
        );
        assert_eq!(
            s.upstream_token(&user, "linear")
                .await
                .unwrap()
                .unwrap()
                .status,
            "broken"
        );
        // A connect flow is taken once, and never after it expired.
        let flow = |hash: &str, expires_at| UpstreamConnectRecord {
            state_hash: hash.into(),
            user_id: user.clone(),
            session_hash: "sess".into(),
            upstream: "linear".into(),
            issuer: "https://a.example".into(),
            sealed: vec![4],
            settings: "s1".into(),
            expires_at,
        };
        s.put_upstream_connect(&flow("h1", NOW + 600))
            .await
            .unwrap();
        s.put_upstream_connect(&flow("h2", NOW + 10)).await.unwrap();
        let taken = s.take_upstream_connect("h1", NOW).await.unwrap().unwrap();
        assert_eq!(
            (taken.user_id.as_str(), taken.session_hash.as_str()),
            (user.as_str(), "sess")
        );
        assert!(
            s.take_upstream_connect("h1", NOW).await.unwrap().is_none(),
            "once"
        );
        assert!(
            s.take_upstream_connect("h2", NOW + 10)
                .await
                .unwrap()
                .is_none(),
            "expired"
        );
        assert!(
            s.take_upstream_connect("h2", NOW).await.unwrap().is_none(),
            "and gone"
        );
        // At most five flows per person and upstream: the oldest go.
        for i in 0..7 {
            s.put_upstream_connect(&flow(&format!("m{i}"), NOW + 600 + i))
                .await
                .unwrap();
        }
        assert!(s.take_upstream_connect("m0", NOW).await.unwrap().is_none());
        assert!(s.take_upstream_connect("m1", NOW).await.unwrap().is_none());
        for i in 2..7 {
            let taken = s
                .take_upstream_connect(&format!("m{i}"), NOW)
                .await
                .unwrap();
            assert!(taken.is_some(), "{} m{i}", e.name);
        }
        // Unchanged settings (a restart) keep flows under way; changed ones forget them.
        s.put_upstream_connect(&flow("h3", NOW + 600))
            .await
            .unwrap();
        assert_eq!(s.purge_upstream_tokens("linear", "s1").await.unwrap(), 0);
        assert!(s.take_upstream_connect("h3", NOW).await.unwrap().is_some());
        s.put_upstream_connect(&flow("h4", NOW + 600))
            .await
            .unwrap();
        assert_eq!(
            s.purge_upstream_tokens("linear", "s2").await.unwrap(),
            2,
            "{}",
            e.name
        );
        assert!(s.take_upstream_connect("h4", NOW).await.unwrap().is_none());
        assert!(s.upstream_tokens(None).await.unwrap().is_empty());
        // Disconnecting deletes one row.
        s.put_upstream_token(&row(&user, "s2")).await.unwrap();
        assert!(s.delete_upstream_token(&user, "linear").await.unwrap());
        assert!(!s.delete_upstream_token(&user, "linear").await.unwrap());
    }
}

#[tokio::test]
async fn two_instances_rotating_the_same_tokens_have_one_winner_each() {
    let Some(pg) = postgres_url() else { return };
    let (a, admin, schema) = fresh_postgres(&pg).await;
    let sep = if pg.contains('?') { '&' } else { '?' };
    let b =
        mcp_oauth_gateway::store::open(&format!("{pg}{sep}options=-c%20search_path%3D{schema}"))
            .await
            .unwrap();
    const GRANTS: usize = 10;
    for g in 0..GRANTS {
        let id = format!("xg{g}");
        a.insert_code(&code(&format!("xc{g}"))).await.unwrap();
        a.redeem_code(
            &format!("xc{g}"),
            NOW,
            &grant(&id),
            &access(&format!("xat{g}"), &id),
            Some(&refresh(&format!("xrt{g}"), &id)),
        )
        .await
        .unwrap();
    }
    let mut tasks = Vec::new();
    for g in 0..GRANTS {
        for attempt in 0..6 {
            let store = if attempt % 2 == 0 {
                a.clone()
            } else {
                b.clone()
            };
            tasks.push(tokio::spawn(async move {
                let id = format!("xg{g}");
                let outcome = store
                    .rotate_refresh(
                        &format!("xrt{g}"),
                        NOW + 1,
                        &access(&format!("xat{g}-{attempt}"), &id),
                        &refresh(&format!("xrt{g}-{attempt}"), &id),
                        b"sealed",
                        NOW + 11,
                    )
                    .await
                    .unwrap();
                (g, matches!(outcome, RotateOutcome::Rotated))
            }));
        }
    }
    let mut wins = [0; GRANTS];
    for t in tasks {
        let (g, won) = t.await.unwrap();
        wins[g] += usize::from(won);
    }
    assert_eq!(wins, [1; GRANTS]);
    let successors: i64 = sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM {schema}.refresh_tokens WHERE token_hash LIKE 'xrt%-%'"
    ))
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(successors, GRANTS as i64);
    let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await;
}

#[tokio::test]
async fn a_revocation_on_one_instance_is_refused_by_the_other_within_a_second() {
    use crate::support::*;
    let Some(pg) = postgres_url() else { return };
    let (_store, admin, schema) = fresh_postgres(&pg).await;
    let sep = if pg.contains('?') { '&' } else { '?' };
    let url = format!("{pg}{sep}options=-c%20search_path%3D{schema}");
    let u = url.clone();
    let a = TestGateway::start_with(move |c| c.store.url = u).await;
    let (u, issuer) = (url.clone(), a.base.clone());
    // Two instances behind one public URL, sharing the database.
    let b = TestGateway::start_with(move |c| {
        c.store.url = u;
        c.server.public_url = Some(issuer);
    })
    .await;
    let t = authorize_user(&a, "alice").await;
    // B knows the token (and caches it) although A issued it.
    assert_eq!(call_whoami(&b, &t.access_token).await.0, 200);
    assert_eq!(call_whoami(&b, &t.access_token).await.0, 200);
    // Revoked on A: B refuses it within a second, long before its cache entry would age out.
    let (s, _) = a
        .post_form(
            "/revoke",
            &[("token", &t.refresh_token), ("client_id", &t.client_id)],
        )
        .await;
    assert_eq!(s, 200);
    let started = std::time::Instant::now();
    let mut refused = false;
    while started.elapsed() < std::time::Duration::from_secs(1) {
        if call_whoami(&b, &t.access_token).await.0 == 401 {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(refused, "B still accepted the revoked token after a second");
    eprintln!("refused on B after {:?}", started.elapsed());
    drop((a, b));
    let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await;
}

#[tokio::test]
async fn signing_keys_rotate_without_breaking_what_was_signed() {
    use mcp_oauth_gateway::proxy::{KEY_ACTIVATION_DELAY_SECS, Signer, generate_key};
    let kids = |s: &Signer| -> Vec<String> {
        s.jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect()
    };
    for e in engines().await {
        let s = &e.store;
        // An instance that keeps running across the rotation.
        let running = Signer::load(s, NOW, None).await.unwrap();
        let first_kid = running.active_kid();
        assert_eq!(kids(&running), vec![first_kid.clone()], "{}", e.name);
        s.add_signing_key("newer", &generate_key().unwrap(), NOW + 10)
            .await
            .unwrap();
        // Re-read: the new key is published at once but does not sign yet, so a verifier
        // holding any instance's JWKS can check everything signed meanwhile.
        running.reload(s, NOW + 11).await.unwrap();
        assert_eq!(running.active_kid(), first_kid, "{}", e.name);
        assert_eq!(
            kids(&running),
            vec![first_kid.clone(), "newer".to_string()],
            "{}",
            e.name
        );
        // Once published long enough, it signs; the old key still verifies.
        running
            .reload(s, NOW + 10 + KEY_ACTIVATION_DELAY_SECS)
            .await
            .unwrap();
        assert_eq!(running.active_kid(), "newer", "{}", e.name);
        assert_eq!(
            kids(&running),
            vec!["newer".to_string(), first_kid.clone()],
            "{}",
            e.name
        );
        assert!(
            s.retire_signing_key(&first_kid, NOW + 200).await.unwrap(),
            "{}",
            e.name
        );
        assert!(
            !s.retire_signing_key(&first_kid, NOW + 201).await.unwrap(),
            "{}",
            e.name
        );
        running.reload(s, NOW + 202).await.unwrap();
        assert_eq!(kids(&running), vec!["newer".to_string()], "{}", e.name);
        e.finish().await;
    }
}

/// With encryption keys configured, a signing key's private half is stored only sealed;
/// instances with the same keys share it, one without them fails to start with an error that
/// names what is missing, and rotating the encryption key re-seals without a new signing key.
#[tokio::test]
async fn signing_keys_are_stored_encrypted_and_follow_an_encryption_key_rotation() {
    use mcp_oauth_gateway::crypto::{EncryptionKeys, sealed_with};
    use mcp_oauth_gateway::proxy::{Signer, generate_key};
    use std::sync::Arc;
    let a = EncryptionKeys::generate_entry("a").unwrap();
    let b = EncryptionKeys::generate_entry("b").unwrap();
    let ring = |entries: &[&str]| {
        let entries: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
        Some(Arc::new(EncryptionKeys::parse(&entries, None).unwrap()))
    };
    let stored = |s: &SharedStore| {
        let s = s.clone();
        async move { s.signing_keys().await.unwrap() }
    };
    for e in engines().await {
        let s = &e.store;
        // A key kept from before encryption was configured is sealed at the next start.
        let legacy = generate_key().unwrap();
        s.add_signing_key("legacy", &legacy, NOW).await.unwrap();
        let first = Signer::load(s, NOW, ring(&[&a])).await.unwrap();
        let rows = stored(s).await;
        assert_eq!(rows.len(), 1, "{}", e.name);
        assert_eq!(sealed_with(&rows[0].1), Some("a"), "{}", e.name);
        assert!(
            !rows[0]
                .1
                .windows(32)
                .any(|w| legacy.windows(32).any(|l| l == w)),
            "{}: the private key shows through",
            e.name
        );
        // Another instance with the same keys publishes and signs with the same key.
        let other = Signer::load(s, NOW + 1, ring(&[&a])).await.unwrap();
        assert_eq!(other.jwks(), first.jwks(), "{}", e.name);
        // Without the key, or with another one: a start-up error naming it.
        let err = Signer::load(s, NOW + 2, None).await.unwrap_err();
        assert!(
            err.contains("encrypted with encryption key `a`"),
            "{}: {err}",
            e.name
        );
        let err = Signer::load(s, NOW + 2, ring(&[&b])).await.unwrap_err();
        assert!(
            err.contains("`a`, which is not configured"),
            "{}: {err}",
            e.name
        );
        let impostor = EncryptionKeys::generate_entry("a").unwrap();
        let err = Signer::load(s, NOW + 2, ring(&[&impostor]))
            .await
            .unwrap_err();
        assert!(err.contains("does not open"), "{}: {err}", e.name);
        // Rotation: b first (active), a kept to open what it sealed; re-sealed under b.
        let rotated = Signer::load(s, NOW + 3, ring(&[&b, &a])).await.unwrap();
        assert_eq!(rotated.jwks(), first.jwks(), "{}", e.name);
        assert_eq!(sealed_with(&stored(s).await[0].1), Some("b"), "{}", e.name);
        // Now a can go.
        let after = Signer::load(s, NOW + 4, ring(&[&b])).await.unwrap();
        assert_eq!(after.jwks(), first.jwks(), "{}", e.name);
        // A copied envelope does not open on another key's row.
        let sealed = stored(s).await[0].1.clone();
        s.add_signing_key("copied", &sealed, NOW + 5).await.unwrap();
        let err = after.reload(s, NOW + 6).await.unwrap_err();
        assert!(
            err.contains("signing key copied does not open"),
            "{}: {err}",
            e.name
        );
        assert_eq!(after.jwks(), first.jwks(), "{}: kept its keys", e.name);
        // Retiring erases the private half.
        assert!(s.retire_signing_key("copied", NOW + 7).await.unwrap());
        assert!(
            e.stored_key_material("copied").await.is_empty(),
            "{}",
            e.name
        );
        assert!(!s.reseal_signing_key("copied", &[], b"x").await.unwrap());
        e.finish().await;
    }
}

/// `store copy` moves a live SQLite installation to PostgreSQL: every client, grant, token,
/// consent and key arrives, and what was issued before the move keeps working after it.
#[tokio::test]
async fn store_copy_moves_a_sqlite_installation_to_postgres_losing_nothing() {
    use crate::support::*;
    let Some(pg) = postgres_url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sqlite_url = format!("sqlite://{}", dir.path().join("old.db").display());
    let u = sqlite_url.clone();
    let a = TestGateway::start_with(move |c| {
        c.store.url = u;
        c.authorization.refresh_retry_window_secs = 300;
    })
    .await;
    let issuer = a.base.clone();
    let before = authorize_user(&a, "alice").await;
    let rotated = authorize_user(&a, "bob").await;
    let (s, successor) = a
        .post_form(
            "/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &rotated.refresh_token),
                ("client_id", &rotated.client_id),
            ],
        )
        .await;
    assert_eq!(s, 200);
    let source = a.store.clone();
    // A user another login source made, linked to its subject there.
    let linked = UserRecord {
        id: "u-linked".into(),
        username: "dana".into(),
        password_hash: String::new(),
        created_at: a.now(),
        email: None,
        groups: vec![],
        disabled_at: None,
    };
    source
        .create_user_with_identity(&linked, "directory", "dn-1")
        .await
        .unwrap();
    // An exchanged identity assertion (ID-JAG): its id is kept, and used once.
    let alice = source.user_by_name("alice").await.unwrap().unwrap();
    let mut jag_grant = grant("g-jag");
    jag_grant.user_id = Some(alice.id.clone());
    jag_grant.client_id = before.client_id.clone();
    jag_grant.resource = a.resource();
    jag_grant.created_at = a.now();
    let mut jag_access = access("h-jag", "g-jag");
    jag_access.user_id = Some(alice.id.clone());
    jag_access.client_id = before.client_id.clone();
    jag_access.resource = a.resource();
    jag_access.created_at = a.now();
    jag_access.expires_at = a.now() + 3600;
    assert!(
        source
            .grant_from_assertion("jag-1", a.now() + 600, &jag_grant, &jag_access)
            .await
            .unwrap()
    );
    let mut again = jag_grant.clone();
    again.id = "g-jag-2".into();
    assert!(
        !source
            .grant_from_assertion(
                "jag-1",
                a.now() + 600,
                &again,
                &access("h-jag-2", "g-jag-2")
            )
            .await
            .unwrap(),
        "an assertion is used once"
    );
    source
        .put_upstream_token(&mcp_oauth_gateway::store::UpstreamTokenRecord {
            user_id: "u-1".into(),
            upstream: "linear".into(),
            issuer: "https://mcp.linear.app".into(),
            sealed: vec![9, 8, 7],
            status: "connected".into(),
            scope: "read".into(),
            expires_at: None,
            settings: "s1".into(),
            connected_at: a.now(),
            updated_at: a.now(),
        })
        .await
        .unwrap();
    source
        .put_upstream_connect(&mcp_oauth_gateway::store::UpstreamConnectRecord {
            state_hash: "st-1".into(),
            user_id: "u-1".into(),
            session_hash: "sess".into(),
            upstream: "linear".into(),
            issuer: "https://mcp.linear.app".into(),
            sealed: vec![1],
            settings: "s1".into(),
            expires_at: a.now() + 600,
        })
        .await
        .unwrap();
    source
        .put_upstream_client(&mcp_oauth_gateway::store::UpstreamClientRecord {
            upstream: "linear".into(),
            issuer: "https://mcp.linear.app".into(),
            client_id: "gw-at-linear".into(),
            client_secret: Some(vec![1, 2, 3]),
            method: "dcr".into(),
            settings: "s1".into(),
            registered_at: a.now(),
        })
        .await
        .unwrap();
    assert!(
        source
            .insert_device(&mcp_oauth_gateway::store::DeviceAuthorization {
                device_code_hash: "dc-hash".into(),
                user_code: "BCDFGHJK".into(),
                client_id: "c1".into(),
                scopes: vec!["mcp".into()],
                resource: "https://gw/mcp".into(),
                created_at: a.now(),
                expires_at: a.now() + 600,
                interval: 5,
                polled_at: None,
                status: mcp_oauth_gateway::store::DeviceStatus::Pending,
                user_id: None,
                code_hash: None,
            })
            .await
            .unwrap()
    );
    assert!(
        source
            .block_client("blocked-client", "a reason", a.now())
            .await
            .unwrap()
    );
    source
        .put_setting("registration_policy", Some("{}"), a.now())
        .await
        .unwrap();
    source
        .client_approval("waiting-client", Some("Waiting"), a.now())
        .await
        .unwrap();
    let mut counts = Vec::new();
    for t in copy::TABLES {
        counts.push((t.name, source.count_rows(t).await.unwrap()));
    }
    drop(a);

    let (_dest, admin, schema) = fresh_postgres(&pg).await;
    let sep = if pg.contains('?') { '&' } else { '?' };
    let pg_url = format!("{pg}{sep}options=-c%20search_path%3D{schema}");
    let run = |from: &str, to: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_mcp-oauth-gateway"))
            .args(["store", "copy", "--from", from, "--to", to])
            .output()
            .unwrap()
    };
    let out = run(&sqlite_url, &pg_url);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("refresh_tokens"), "{stdout}");

    // Row for row.
    let dest: SharedStore = open(&pg_url).await.unwrap();
    for (t, (name, n)) in copy::TABLES.iter().zip(&counts) {
        assert_eq!(dest.count_rows(t).await.unwrap(), *n, "{name}");
        assert_eq!(
            dest.export_rows(t).await.unwrap(),
            source.export_rows(t).await.unwrap(),
            "{name}"
        );
    }
    assert!(counts.iter().all(|(name, n)| {
        *n > 0
            || [
                "auth_codes",
                "pending_authorizations",
                "browser_sessions",
                "mcp_sessions",
                "counters",
            ]
            .contains(name)
    }));

    // A second copy into the now-filled store is refused and changes nothing.
    let out = run(&sqlite_url, &pg_url);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not empty"), "{err}");
    let users = copy::TABLES.iter().find(|t| t.name == "users").unwrap();
    assert_eq!(dest.count_rows(users).await.unwrap(), counts[0].1);

    // A gateway on PostgreSQL, at the same public URL, honours what the old one issued.
    let u = pg_url.clone();
    let b = TestGateway::start_with(move |c| {
        c.store.url = u;
        c.server.public_url = Some(issuer);
        c.authorization.refresh_retry_window_secs = 300;
    })
    .await;
    let (s, who) = call_whoami(&b, &before.access_token).await;
    assert_eq!(s, 200, "{who}");
    assert!(who.to_string().contains("alice"), "{who}");
    assert_eq!(
        call_whoami(&b, successor["access_token"].as_str().unwrap())
            .await
            .0,
        200
    );
    // The sealed retry answer came along: a retry of the rotated token within the window gets
    // the same successor, not a fresh pair and not a revocation.
    let (s, again) = b
        .post_form(
            "/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &rotated.refresh_token),
                ("client_id", &rotated.client_id),
            ],
        )
        .await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["refresh_token"], successor["refresh_token"]);
    // And an unused refresh token refreshes.
    let (s, fresh) = b
        .post_form(
            "/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &before.refresh_token),
                ("client_id", &before.client_id),
            ],
        )
        .await;
    assert_eq!(s, 200, "{fresh}");
    drop(b);
    let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await;
}

#[tokio::test]
async fn store_copy_refuses_a_schema_it_does_not_know() {
    for e in engines().await {
        let schema = e.store.schema().await.unwrap();
        copy::check_schema(&schema).unwrap();
        let mut extra = schema.clone();
        extra[0].1.push("surprise".into());
        let err = copy::check_schema(&extra).unwrap_err().to_string();
        assert!(err.contains("surprise"), "{}: {err}", e.name);
        let mut missing = schema.clone();
        missing.retain(|(t, _)| t != "grants");
        assert!(copy::check_schema(&missing).is_err(), "{}", e.name);
        e.finish().await;
    }
}
