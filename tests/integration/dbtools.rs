//! Signing in with one's own database account, and the built-in database tools that run as
//! that person: against a real PostgreSQL that checks passwords (a server of the test's own,
//! since the machine's allows everyone in) and the machine's real MariaDB.

use std::time::Duration;

use serde_json::{Value, json};

use crate::cluster::PrivatePostgres;
use crate::support::*;

const REDIRECT: &str = "http://127.0.0.1:9999/callback";
const SUPERUSER_PASSWORD: &str = "superuser-secret-1";
pub const MYSQL_ENV: &str = "MCP_GATEWAY_TEST_MYSQL_URL";

/// The machine's MariaDB (root, no password), when the environment names it.
pub fn mysql_url() -> Option<String> {
    match std::env::var(MYSQL_ENV) {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{MYSQL_ENV} must be set in CI"
            );
            eprintln!("SKIPPED (MariaDB): set {MYSQL_ENV} to run it");
            None
        }
    }
}

/// The whole browser flow through the database source `source`: (status of the sign-in
/// answer, its page; and on success the token response).
pub async fn sign_in(
    gw: &TestGateway,
    source: &str,
    user: &str,
    password: &str,
    resource: &str,
) -> (u16, String, Option<Value>) {
    let browser = TestGateway::browser();
    let client_id = gw.register_public(REDIRECT).await;
    let pkce = Pkce::new();
    let params = authorize_params(&client_id, REDIRECT, &pkce, resource);
    let url = url::Url::parse_with_params(&gw.url("/authorize"), &params).unwrap();
    let page = browser.get(url).send().await.unwrap().text().await.unwrap();
    let request = hidden(&page, "request").expect("request field");
    let csrf = hidden(&page, "csrf").expect("csrf field");
    let r = browser
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
        .unwrap();
    let status = r.status().as_u16();
    let page = r.text().await.unwrap();
    if status != 200 || !page.contains("Allow access?") {
        return (status, page, None);
    }
    let r = browser
        .post(gw.url("/authorize/consent"))
        .form(&[
            ("request", hidden(&page, "request").unwrap().as_str()),
            ("csrf", hidden(&page, "csrf").unwrap().as_str()),
            ("decision", "allow"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
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
                ("resource", resource),
            ],
        )
        .await;
    assert_eq!(s, 200, "{tokens}");
    let mut tokens = tokens;
    tokens["client_id"] = json!(client_id);
    (status, page, Some(tokens))
}

/// `tools/call` on the upstream at `path`: (HTTP status, the JSON-RPC result or error).
pub async fn call(
    gw: &TestGateway,
    path: &str,
    token: &str,
    tool: &str,
    args: Value,
) -> (u16, Value) {
    let r = TestGateway::http()
        .post(gw.url(path))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": args}}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    // A JSON answer, or an event stream whose message is the answer.
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| {
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .find(|m| m.get("id").is_some())
            .unwrap_or(Value::Null)
    });
    (status, body.get("result").cloned().unwrap_or(body))
}

/// A successful tool result's structured content.
async fn ok(gw: &TestGateway, token: &str, tool: &str, args: Value) -> Value {
    let (s, r) = call(gw, "/mcp/db", token, tool, args.clone()).await;
    assert_eq!(s, 200, "{tool} {args}: {r}");
    assert_eq!(r["isError"], false, "{tool} {args}: {r}");
    r["structuredContent"].clone()
}

/// A tool's failure: its text.
async fn tool_error(gw: &TestGateway, token: &str, tool: &str, args: Value) -> String {
    let (s, r) = call(gw, "/mcp/db", token, tool, args.clone()).await;
    assert_eq!(s, 200, "{tool} {args}: {r}");
    assert_eq!(r["isError"], true, "{tool} {args} should fail: {r}");
    r["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn table_names(listing: &Value) -> Vec<String> {
    listing["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

/// Connections a role holds now (the gateway's pools name themselves).
async fn pg_connections(admin: &sqlx::PgPool, role: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND application_name = 'mcp-oauth-gateway dbtools'",
    )
    .bind(role)
    .fetch_one(admin)
    .await
    .unwrap()
}

/// Waits up to `secs` for `check` to hold.
async fn within<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A PostgreSQL that checks passwords, with a database `shop`, two people with different
/// rights (alice_db, bob_db) and an `orders` table under row-level security.
async fn postgres_with_people() -> Option<(PrivatePostgres, sqlx::PgPool)> {
    crate::store_suite::postgres_url()?;
    let pg = PrivatePostgres::start_with_password(SUPERUSER_PASSWORD)?;
    let root = format!(
        "postgres://postgres:{SUPERUSER_PASSWORD}@127.0.0.1:{}/postgres",
        pg.port
    );
    let server = sqlx::PgPool::connect(&root).await.unwrap();
    sqlx::query("CREATE DATABASE shop")
        .execute(&server)
        .await
        .unwrap();
    server.close().await;
    let admin = sqlx::PgPool::connect(&format!(
        "postgres://postgres:{SUPERUSER_PASSWORD}@127.0.0.1:{}/shop",
        pg.port
    ))
    .await
    .unwrap();
    for stmt in [
        "CREATE ROLE alice_db LOGIN PASSWORD 'alice-pass-1'",
        "CREATE ROLE bob_db LOGIN PASSWORD 'bob-pass-1'",
        "CREATE ROLE carol_db LOGIN PASSWORD 'carol-pass-1'",
        "CREATE TABLE alice_notes (note text)",
        "CREATE TABLE bob_notes (note text)",
        "INSERT INTO alice_notes VALUES ('for alice')",
        "INSERT INTO bob_notes VALUES ('for bob')",
        "GRANT SELECT, INSERT ON alice_notes TO alice_db",
        "GRANT SELECT ON bob_notes TO bob_db",
        "CREATE TABLE orders (owner name NOT NULL, item text, price numeric, paid boolean, meta jsonb)",
        "INSERT INTO orders VALUES ('alice_db', 'apple', 1.50, true, '{\"n\": 1}'), ('alice_db', 'avocado', 2, false, null), ('bob_db', 'banana', 0.25, true, null)",
        "ALTER TABLE orders ENABLE ROW LEVEL SECURITY",
        "CREATE POLICY own_orders ON orders USING (owner = current_user)",
        "GRANT SELECT ON orders TO alice_db, bob_db, carol_db",
    ] {
        sqlx::query(stmt).execute(&admin).await.unwrap();
    }
    Some((pg, admin))
}

/// A store other than SQLite (the suite's PostgreSQL run) gets sealing keys from the
/// configuration; SQLite makes a key file of its own.
fn needs_keys(c: &mut mcp_oauth_gateway::config::Config) {
    if !c.store.url.starts_with("sqlite:") {
        c.keys.encryption = vec![SHARED_KEY.into()];
    }
}

/// One key for every instance on a shared store (32 zero bytes, base64): a test's.
const SHARED_KEY: &str = "dbt1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

fn pg_source(port: u16) -> mcp_oauth_gateway::dbtools::DatabaseLoginConfig {
    serde_json::from_value(json!({
        "name": "pg",
        "kind": "postgres",
        "url": format!("postgres://127.0.0.1:{port}/shop"),
        "tls": "disable",
        "label": "Shop database"
    }))
    .unwrap()
}

fn dbtools_upstream(source: &str) -> mcp_oauth_gateway::config::UpstreamConfig {
    serde_json::from_value(json!({"name": "db", "dbtools": source})).unwrap()
}

#[tokio::test]
async fn postgres_people_sign_in_with_their_own_accounts_and_see_only_their_own() {
    let Some((pg, admin)) = postgres_with_people().await else {
        return;
    };
    let port = pg.port;
    let gw = TestGateway::start_with(move |c| {
        needs_keys(c);
        c.login.max_failures_per_account = 3;
        c.login.database.push(pg_source(port));
        let mut trusting = pg_source(5432);
        trusting.name = "trusting".into();
        trusting.url = "postgres://127.0.0.1:5432/test".into();
        c.login.database.push(trusting);
        let mut down = pg_source(1);
        down.name = "down".into();
        down.url = "postgres://127.0.0.1:1/shop".into();
        c.login.database.push(down);
        let mut u = dbtools_upstream("pg");
        u.row_limit = Some(5);
        u.statement_timeout_secs = Some(1);
        u.max_result_bytes = Some(2048);
        c.upstreams.push(u);
    })
    .await;
    let resource = format!("{}/mcp/db", gw.base);

    // The sign-in page offers the database beside local accounts.
    let (_, alice_page, alice) = sign_in(&gw, "pg", "alice_db", "alice-pass-1", &resource).await;
    let alice = alice.unwrap_or_else(|| panic!("alice signs in: {alice_page}"));
    let alice_token = alice["access_token"].as_str().unwrap().to_string();
    let (_, _, bob) = sign_in(&gw, "pg", "bob_db", "bob-pass-1", &resource).await;
    let bob = bob.expect("bob signs in");
    let bob_token = bob["access_token"].as_str().unwrap().to_string();

    // Wrong password and unknown user: the same failed login, counted by the throttle.
    for (user, password) in [("alice_db", "wrong"), ("nobody", "whatever")] {
        let (s, page, tokens) = sign_in(&gw, "pg", user, password, &resource).await;
        assert_eq!(s, 401, "{page}");
        assert!(page.contains("Wrong username or password"), "{page}");
        assert!(tokens.is_none());
    }
    // An empty password is never tried, even for an account without one.
    let (s, _, _) = sign_in(&gw, "pg", "bob_db", "", &resource).await;
    assert_eq!(s, 401);
    for _ in 0..2 {
        sign_in(&gw, "pg", "alice_db", "wrong", &resource).await;
    }
    let (s, page, _) = sign_in(&gw, "pg", "alice_db", "alice-pass-1", &resource).await;
    assert_eq!(s, 429, "the account is throttled after 3 failures: {page}");
    // A database that lets anyone in (the machine's own server trusts loopback): refused,
    // whatever the password.
    let (s, page, tokens) = sign_in(&gw, "trusting", "postgres", "any-password", &resource).await;
    assert_eq!(s, 403, "{page}");
    assert!(page.contains("does not check passwords"), "{page}");
    assert!(tokens.is_none());
    // A database that cannot be reached: its own page, and no count against anyone.
    for _ in 0..5 {
        let (s, page, _) = sign_in(&gw, "down", "bob_db", "bob-pass-1", &resource).await;
        assert_eq!(s, 503, "{page}");
        assert!(page.contains("cannot be reached right now"), "{page}");
    }

    // Each sees the tables their grants allow, and no more (and the lists are not shared).
    let tables = table_names(&ok(&gw, &alice_token, "list_tables", json!({})).await);
    assert!(
        tables.contains(&"alice_notes".into()) && tables.contains(&"orders".into()),
        "{tables:?}"
    );
    assert!(!tables.contains(&"bob_notes".into()), "{tables:?}");
    let tables = table_names(&ok(&gw, &bob_token, "list_tables", json!({})).await);
    assert!(tables.contains(&"bob_notes".into()), "{tables:?}");
    assert!(
        !tables.contains(&"alice_notes".into()),
        "bob was served alice's list: {tables:?}"
    );
    let schemas = ok(&gw, &alice_token, "list_databases", json!({})).await;
    assert!(
        schemas["databases"]
            .as_array()
            .unwrap()
            .contains(&json!("public")),
        "{schemas}"
    );
    let described = ok(
        &gw,
        &alice_token,
        "describe_table",
        json!({"table": "orders"}),
    )
    .await;
    assert_eq!(described["columns"][0]["name"], "owner");
    assert_eq!(described["columns"][2]["type"], "numeric");
    let e = tool_error(
        &gw,
        &bob_token,
        "describe_table",
        json!({"table": "alice_notes"}),
    )
    .await;
    assert!(e.contains("No table or view `alice_notes`"), "{e}");

    // The same statement, each their own rows (row-level security), with typed values.
    let q = json!({"sql": "SELECT item, price, paid, meta FROM orders ORDER BY item"});
    let a = ok(&gw, &alice_token, "query", q.clone()).await;
    assert_eq!(
        a["rows"],
        json!([["apple", "1.50", true, {"n": 1}], ["avocado", "2", false, null]])
    );
    assert_eq!(a["columns"][2], json!({"name": "paid", "type": "BOOL"}));
    let b = ok(&gw, &bob_token, "query", q).await;
    assert_eq!(b["rows"], json!([["banana", "0.25", true, null]]));
    let (_, full) = call(
        &gw,
        "/mcp/db",
        &bob_token,
        "query",
        json!({"sql": "SELECT 1 AS one"}),
    )
    .await;
    assert!(
        full["content"][0]["text"].as_str().unwrap().contains("one"),
        "{full}"
    );
    // Another's table: the database's own refusal, as the tool's error.
    let e = tool_error(
        &gw,
        &bob_token,
        "query",
        json!({"sql": "SELECT * FROM alice_notes"}),
    )
    .await;
    assert!(e.contains("permission denied"), "{e}");
    let e = tool_error(
        &gw,
        &alice_token,
        "query",
        json!({"sql": "SELECT * FROM nope"}),
    )
    .await;
    assert!(e.contains("\"nope\" does not exist"), "{e}");

    // Read-only: a write, DDL, a smuggled second statement, a plan that would run a write.
    for sql in [
        "INSERT INTO alice_notes VALUES ('written')",
        "DROP TABLE alice_notes",
        "SELECT 1; INSERT INTO alice_notes VALUES ('smuggled')",
        "COMMIT; INSERT INTO alice_notes VALUES ('smuggled')",
    ] {
        let e = tool_error(&gw, &alice_token, "query", json!({"sql": sql})).await;
        assert!(
            e.contains("read-only transaction") || e.contains("multiple commands"),
            "{sql}: {e}"
        );
    }
    let e = tool_error(
        &gw,
        &alice_token,
        "explain",
        json!({"sql": "ANALYZE INSERT INTO alice_notes VALUES ('x')"}),
    )
    .await;
    assert!(e.contains("read-only transaction"), "{e}");
    let plan = ok(
        &gw,
        &alice_token,
        "explain",
        json!({"sql": "SELECT * FROM orders"}),
    )
    .await;
    assert!(
        plan["rows"][0][0].as_str().unwrap().contains("Scan"),
        "{plan}"
    );
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM alice_notes")
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(n, 1, "nothing was written");

    // Limits: rows, size, time; each says what happened.
    let r = ok(
        &gw,
        &alice_token,
        "query",
        json!({"sql": "SELECT generate_series(1, 100) AS n"}),
    )
    .await;
    assert_eq!(
        (r["row_count"].as_u64(), r["truncated_by"].as_str()),
        (Some(5), Some("row_limit"))
    );
    let (_, full) = call(
        &gw,
        "/mcp/db",
        &alice_token,
        "query",
        json!({"sql": "SELECT generate_series(1, 100) AS n"}),
    )
    .await;
    assert!(
        full["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("Truncated"),
        "{full}"
    );
    let r = ok(
        &gw,
        &alice_token,
        "query",
        json!({"sql": "SELECT generate_series(1, 3) AS n", "max_rows": 2}),
    )
    .await;
    assert_eq!(r["rows"], json!([[1], [2]]));
    let r = ok(
        &gw,
        &alice_token,
        "query",
        json!({"sql": "SELECT repeat('x', 1000) FROM generate_series(1, 5)"}),
    )
    .await;
    assert_eq!(r["truncated_by"], "max_result_bytes");
    assert!(r["row_count"].as_u64().unwrap() < 3, "{r}");
    let started = std::time::Instant::now();
    let e = tool_error(
        &gw,
        &alice_token,
        "query",
        json!({"sql": "SELECT pg_sleep(5)"}),
    )
    .await;
    assert!(e.contains("statement timeout"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(4));
    // The connection is fine afterwards.
    ok(&gw, &alice_token, "query", json!({"sql": "SELECT 1"})).await;
    // Mistakes in the arguments, before any database work.
    let e = tool_error(
        &gw,
        &alice_token,
        "query",
        json!({"sql": "SELECT 1", "limit": 3}),
    )
    .await;
    assert!(e.contains("unknown argument `limit`"), "{e}");
    let e = tool_error(&gw, &alice_token, "query", json!({})).await;
    assert!(e.contains("`sql` is required"), "{e}");
    let (s, r) = call(&gw, "/mcp/db", &alice_token, "drop_everything", json!({})).await;
    assert_eq!((s, r["error"]["code"].as_i64()), (200, Some(-32602)), "{r}");

    // A person signed in another way has no database credential: nothing runs, and there
    // is no fallback to anyone else's account.
    let local = authorize_for(&gw, "alice", &resource).await;
    let e = tool_error(
        &gw,
        &local.access_token,
        "query",
        json!({"sql": "SELECT 1"}),
    )
    .await;
    assert!(e.contains("your own account"), "{e}");

    // One account with many grants (one per MCP client) holds at most four pools here.
    for _ in 0..6 {
        let (_, page, t) = sign_in(&gw, "pg", "carol_db", "carol-pass-1", &resource).await;
        let t = t.unwrap_or_else(|| panic!("{page}"));
        ok(
            &gw,
            t["access_token"].as_str().unwrap(),
            "query",
            json!({"sql": "SELECT 1"}),
        )
        .await;
    }
    within(2, "carol's surplus pools closed", || async {
        pg_connections(&admin, "carol_db").await
            <= mcp_oauth_gateway::dbtools::pools::POOLS_PER_ACCOUNT as i64
    })
    .await;

    // The pools are the people's own: visible in pg_stat_activity under their roles.
    assert!(pg_connections(&admin, "alice_db").await >= 1);
    assert!(pg_connections(&admin, "bob_db").await >= 1);
    // Revoking alice's grant closes her pool at once.
    let (s, _) = gw
        .post_form(
            "/revoke",
            &[
                ("token", alice["refresh_token"].as_str().unwrap()),
                ("client_id", alice["client_id"].as_str().unwrap()),
            ],
        )
        .await;
    assert_eq!(s, 200);
    within(1, "alice's connections closed after revocation", || async {
        pg_connections(&admin, "alice_db").await == 0
    })
    .await;
    let (s, _) = call(
        &gw,
        "/mcp/db",
        &alice_token,
        "query",
        json!({"sql": "SELECT 1"}),
    )
    .await;
    assert_eq!(s, 401, "the revoked grant's token is refused");
    assert!(
        pg_connections(&admin, "bob_db").await >= 1,
        "bob's pool stays"
    );

    // An idle pool closes (the clock moved past pool_idle_secs).
    gw.clock.advance(301);
    within(3, "bob's idle pool closed", || async {
        pg_connections(&admin, "bob_db").await == 0
    })
    .await;
    // And opens again on the next call.
    ok(&gw, &bob_token, "query", json!({"sql": "SELECT 1"})).await;
    assert!(pg_connections(&admin, "bob_db").await >= 1);

    // The database stops accepting bob's password: the next time a pool must be opened,
    // his grant ends, and the client is told to sign in again.
    sqlx::query("ALTER ROLE bob_db PASSWORD 'changed-elsewhere'")
        .execute(&admin)
        .await
        .unwrap();
    gw.clock.advance(301);
    within(3, "bob's idle pool closed", || async {
        pg_connections(&admin, "bob_db").await == 0
    })
    .await;
    let e = tool_error(&gw, &bob_token, "query", json!({"sql": "SELECT 1"})).await;
    assert!(e.contains("Sign in again"), "{e}");
    let (s, _) = call(
        &gw,
        "/mcp/db",
        &bob_token,
        "query",
        json!({"sql": "SELECT 1"}),
    )
    .await;
    assert_eq!(s, 401, "the grant ended");
    let reasons: Vec<_> = gw
        .store
        .list_grants(&Default::default(), true)
        .await
        .unwrap()
        .into_iter()
        .filter(|g| g.login_source == "pg")
        .filter_map(|g| g.ended_reason)
        .collect();
    assert!(
        reasons.contains(&mcp_oauth_gateway::store::EndReason::CredentialRefused),
        "{reasons:?}"
    );
    drop(gw);
    admin.close().await;
    drop(pg);
}

#[tokio::test]
async fn a_second_instance_rebuilds_the_pool_and_the_budget_holds() {
    let Some(store_pg) = crate::store_suite::postgres_url() else {
        return;
    };
    let Some((pg, admin)) = postgres_with_people().await else {
        return;
    };
    let port = pg.port;
    let (_store, _store_admin, schema) = crate::store_suite::fresh_postgres(&store_pg).await;
    let store_url = crate::cluster::schema_url(&store_pg, &schema);
    let configure = move |store_url: String, public: Option<String>| {
        move |c: &mut mcp_oauth_gateway::config::Config| {
            c.store.url = store_url;
            if let Some(p) = public {
                c.server.public_url = Some(p);
            }
            c.keys.encryption = vec![SHARED_KEY.into()];
            let mut source = pg_source(port);
            // Room for two people's pools of one connection each.
            source.pool_size = 1;
            source.max_connections = 2;
            c.login.database.push(source);
            c.upstreams.push(dbtools_upstream("pg"));
        }
    };
    let a = TestGateway::start_with(configure(store_url.clone(), None)).await;
    let b = TestGateway::start_with(configure(store_url.clone(), Some(a.base.clone()))).await;
    let resource = format!("{}/mcp/db", a.base);
    let (_, _, alice) = sign_in(&a, "pg", "alice_db", "alice-pass-1", &resource).await;
    let alice = alice.expect("alice signs in at A");
    let token = alice["access_token"].as_str().unwrap().to_string();
    let q = json!({"sql": "SELECT item FROM orders ORDER BY item"});
    let rows = json!([["apple"], ["avocado"]]);
    assert_eq!(ok(&a, &token, "query", q.clone()).await["rows"], rows);
    // Instance B has never seen her: it opens her pool from the sealed credential.
    assert_eq!(ok(&b, &token, "query", q.clone()).await["rows"], rows);
    assert_eq!(
        pg_connections(&admin, "alice_db").await,
        2,
        "one pool on each instance"
    );
    // Revoked at A: both instances close her pools within a second.
    let (s, _) = a
        .post_form(
            "/revoke",
            &[
                ("token", alice["refresh_token"].as_str().unwrap()),
                ("client_id", alice["client_id"].as_str().unwrap()),
            ],
        )
        .await;
    assert_eq!(s, 200);
    within(1, "alice's pools closed on both instances", || async {
        pg_connections(&admin, "alice_db").await == 0
    })
    .await;

    // Three people, a budget of two connections per instance: the least recently used
    // pool makes room, every call is answered, and the budget is never exceeded.
    let mut tokens = Vec::new();
    for (user, pw) in [
        ("alice_db", "alice-pass-1"),
        ("bob_db", "bob-pass-1"),
        ("carol_db", "carol-pass-1"),
    ] {
        let (_, page, t) = sign_in(&a, "pg", user, pw, &resource).await;
        let t = t.unwrap_or_else(|| panic!("{user}: {page}"));
        tokens.push((user, t["access_token"].as_str().unwrap().to_string()));
    }
    let total = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'mcp-oauth-gateway dbtools'",
        )
        .fetch_one(&admin)
        .await
        .unwrap()
    };
    for round in 0..3 {
        for (user, token) in &tokens {
            let r = ok(
                &a,
                token,
                "query",
                json!({"sql": "SELECT current_user AS me"}),
            )
            .await;
            assert_eq!(r["rows"][0][0], *user, "round {round}");
            let open = total().await;
            assert!(open <= 2, "{open} connections open with a budget of 2");
        }
    }
    drop((a, b));
    admin.close().await;
    drop(pg);
}

#[tokio::test]
async fn a_real_mcp_client_signs_in_with_a_database_account_and_queries() {
    let Some((pg, _admin)) = postgres_with_people().await else {
        return;
    };
    let port = pg.port;
    let gw = TestGateway::start_with(move |c| {
        needs_keys(c);
        c.login.database.push(pg_source(port));
        c.upstreams.push(dbtools_upstream("pg"));
    })
    .await;
    let resource = format!("{}/mcp/db", gw.base);
    let (_, _, tokens) = sign_in(&gw, "pg", "bob_db", "bob-pass-1", &resource).await;
    let token = tokens.expect("bob signs in")["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    use rmcp::ServiceExt;
    use rmcp::model::CallToolRequestParams;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(resource.clone()).auth_header(token),
    );
    let client = ().serve(transport).await.expect("rmcp client connects");
    let tools = client.list_all_tools().await.expect("tools/list");
    let names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
    assert_eq!(
        names,
        [
            "list_databases",
            "list_tables",
            "describe_table",
            "query",
            "explain"
        ]
    );
    let args = json!({"sql": "SELECT item, paid FROM orders"});
    let result = client
        .call_tool(
            CallToolRequestParams::new("query").with_arguments(args.as_object().unwrap().clone()),
        )
        .await
        .expect("tools/call");
    assert_eq!(result.is_error, Some(false));
    assert_eq!(
        result.structured_content.unwrap()["rows"],
        json!([["banana", true]])
    );
    client.cancel().await.ok();
    drop(gw);
    drop(pg);
}

/// The machine's MariaDB: (root pool, a database of the test's own, two users in it).
async fn mariadb_with_people() -> Option<(sqlx::MySqlPool, String, String)> {
    let url = mysql_url()?;
    let root = sqlx::MySqlPool::connect(&url)
        .await
        .expect("MariaDB reachable");
    let tag = mcp_oauth_gateway::crypto::new_id()
        .to_ascii_lowercase()
        .replace(['-', '_'], "")[..10]
        .to_string();
    let db = format!("mog_dbt_{tag}");
    let alice = format!("mog_a_{tag}");
    let bob = format!("mog_b_{tag}");
    for stmt in [
        format!("CREATE DATABASE {db}"),
        format!("CREATE TABLE {db}.alice_notes (note TEXT)"),
        format!("CREATE TABLE {db}.bob_notes (note TEXT)"),
        format!(
            "CREATE TABLE {db}.items (id INT UNSIGNED, name VARCHAR(20), price DECIMAL(6,2), data JSON, raw VARBINARY(4))"
        ),
        format!("INSERT INTO {db}.alice_notes VALUES ('for alice')"),
        format!("INSERT INTO {db}.bob_notes VALUES ('for bob')"),
        format!("INSERT INTO {db}.items VALUES (1, 'apple', 1.50, '{{\"n\": 1}}', 0xff00)"),
        format!("CREATE USER '{alice}'@'%' IDENTIFIED BY 'alice-pass-1'"),
        format!("CREATE USER '{bob}'@'%' IDENTIFIED BY 'bob-pass-1'"),
        format!("GRANT SELECT, INSERT, DROP ON {db}.alice_notes TO '{alice}'@'%'"),
        format!("GRANT SELECT ON {db}.items TO '{alice}'@'%'"),
        format!("GRANT SELECT ON {db}.bob_notes TO '{bob}'@'%'"),
        format!("GRANT SELECT ON {db}.items TO '{bob}'@'%'"),
    ] {
        sqlx::raw_sql(&stmt)
            .execute(&root)
            .await
            .unwrap_or_else(|e| panic!("{stmt}: {e}"));
    }
    Some((root, db, tag))
}

async fn mariadb_cleanup(root: &sqlx::MySqlPool, db: &str, tag: &str) {
    for stmt in [
        format!("DROP DATABASE IF EXISTS {db}"),
        format!("DROP USER IF EXISTS 'mog_a_{tag}'@'%'"),
        format!("DROP USER IF EXISTS 'mog_b_{tag}'@'%'"),
    ] {
        let _ = sqlx::raw_sql(&stmt).execute(root).await;
    }
}

async fn mysql_connections(root: &sqlx::MySqlPool, user: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = ?")
        .bind(user)
        .fetch_one(root)
        .await
        .unwrap()
}

#[tokio::test]
async fn mariadb_people_sign_in_and_read_only_holds_with_and_without_read_only_transactions() {
    let Some((root, db, tag)) = mariadb_with_people().await else {
        return;
    };
    let (alice, bob) = (format!("mog_a_{tag}"), format!("mog_b_{tag}"));
    let db2 = db.clone();
    let gw = TestGateway::start_with(move |c| {
        needs_keys(c);
        for (name, engine) in [("maria", "mariadb"), ("rocks", "starrocks")] {
            c.login.database.push(
                serde_json::from_value(json!({
                    "name": name, "kind": "mysql", "engine": engine,
                    "url": format!("mysql://127.0.0.1:3306/{db2}"), "tls": "disable"
                }))
                .unwrap(),
            );
        }
        let mut u = dbtools_upstream("maria");
        u.statement_timeout_secs = Some(1);
        c.upstreams.push(u);
        c.upstreams
            .push(serde_json::from_value(json!({"name": "rocks", "dbtools": "rocks"})).unwrap());
        c.upstreams.push(
            serde_json::from_value(json!({"name": "dbw", "dbtools": "maria", "writable": true}))
                .unwrap(),
        );
    })
    .await;
    let resource = format!("{}/mcp/db", gw.base);
    let (s, page, _) = sign_in(&gw, "maria", &alice, "wrong", &resource).await;
    assert_eq!(s, 401, "{page}");
    let (_, page, a) = sign_in(&gw, "maria", &alice, "alice-pass-1", &resource).await;
    let a = a.unwrap_or_else(|| panic!("{page}"));
    let at = a["access_token"].as_str().unwrap().to_string();
    let (_, _, b) = sign_in(&gw, "maria", &bob, "bob-pass-1", &resource).await;
    let bt = b.expect("bob signs in")["access_token"]
        .as_str()
        .unwrap()
        .to_string();

    let tables = table_names(&ok(&gw, &at, "list_tables", json!({"database": db})).await);
    assert_eq!(tables, ["alice_notes", "items"]);
    let tables = table_names(&ok(&gw, &bt, "list_tables", json!({"database": db})).await);
    assert_eq!(tables, ["bob_notes", "items"]);
    let d = ok(&gw, &at, "describe_table", json!({"table": "items"})).await;
    assert_eq!(
        d["columns"][0],
        json!({"name": "id", "type": "int(10) unsigned", "nullable": true, "default": null})
    );
    let r = ok(
        &gw,
        &at,
        "query",
        json!({"sql": "SELECT id, name, price, data, raw FROM items"}),
    )
    .await;
    // MariaDB's JSON is text on the wire (an alias of LONGTEXT): it stays a string.
    assert_eq!(
        r["rows"],
        json!([[1, "apple", "1.50", "{\"n\": 1}", "0xff00"]])
    );
    let e = tool_error(
        &gw,
        &bt,
        "query",
        json!({"sql": "SELECT * FROM alice_notes"}),
    )
    .await;
    assert!(e.contains("denied"), "{e}");

    // Read-only by transaction and session: a write, DDL (which would commit a read-only
    // transaction before running), a smuggled second statement.
    for sql in [
        "INSERT INTO alice_notes VALUES ('written')".to_string(),
        "DROP TABLE alice_notes".to_string(),
        "SELECT 1; DROP TABLE alice_notes".to_string(),
        "COMMIT".to_string(),
    ] {
        let (s, r) = call(&gw, "/mcp/db", &at, "query", json!({"sql": sql})).await;
        assert_eq!(s, 200);
        if sql == "COMMIT" {
            continue;
        }
        assert_eq!(r["isError"], true, "{sql}: {r}");
    }
    let e = tool_error(&gw, &at, "query", json!({"sql": "DROP TABLE alice_notes"})).await;
    assert!(e.contains("READ ONLY"), "{e}");
    let e = tool_error(&gw, &at, "query", json!({"sql": "SELECT SLEEP(3)"})).await;
    assert!(e.contains("max_statement_time"), "{e}");
    // A statement that lifts the server's limit for itself: the gateway stops waiting, and
    // the server stops running it.
    let started = std::time::Instant::now();
    let e = tool_error(
        &gw,
        &at,
        "query",
        json!({"sql": "SET STATEMENT max_statement_time=0 FOR SELECT SLEEP(20)"}),
    )
    .await;
    assert!(e.contains("did not finish"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(6));
    let sleeping = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = ? AND INFO LIKE '%SLEEP(20)%'",
        )
        .bind(&alice)
        .fetch_one(&root)
        .await
        .unwrap()
    };
    within(3, "the timed-out statement killed", || async {
        sleeping().await == 0
    })
    .await;
    let notes: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {db}.alice_notes"))
        .fetch_one(&root)
        .await
        .expect("alice_notes still exists");
    assert_eq!(notes, 1, "nothing written");

    // A writable upstream on the same source commits.
    let w = format!("{}/mcp/dbw", gw.base);
    let (_, _, aw) = sign_in(&gw, "maria", &alice, "alice-pass-1", &w).await;
    let awt = aw.unwrap()["access_token"].as_str().unwrap().to_string();
    let (_, r) = call(
        &gw,
        "/mcp/dbw",
        &awt,
        "query",
        json!({"sql": "INSERT INTO alice_notes VALUES ('written')"}),
    )
    .await;
    assert_eq!(r["structuredContent"]["rows_affected"], 1, "{r}");
    let notes: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {db}.alice_notes"))
        .fetch_one(&root)
        .await
        .unwrap();
    assert_eq!(notes, 2);

    // An engine without read-only transactions: only what the parser reads as one read is
    // run, as the parser renders it.
    let rocks = format!("{}/mcp/rocks", gw.base);
    let (_, _, ar) = sign_in(&gw, "rocks", &alice, "alice-pass-1", &rocks).await;
    let rt = ar.unwrap()["access_token"].as_str().unwrap().to_string();
    let rcall = |sql: &str| {
        let (gw, rt) = (&gw, rt.clone());
        let sql = sql.to_string();
        async move {
            call(gw, "/mcp/rocks", &rt, "query", json!({"sql": sql}))
                .await
                .1
        }
    };
    let r = rcall("select note from alice_notes order by note").await;
    assert_eq!(
        r["structuredContent"]["rows"],
        json!([["for alice"], ["written"]]),
        "{r}"
    );
    for (sql, why) in [
        (
            "SELECT 1; DROP TABLE alice_notes",
            "one statement at a time",
        ),
        ("DROP TABLE alice_notes", "read-only"),
        ("INSERT INTO alice_notes VALUES ('x')", "read-only"),
        ("SELECT note INTO @v FROM alice_notes", "INTO"),
        ("SELECT * FROM alice_notes FOR UPDATE", "row locks"),
    ] {
        let r = rcall(sql).await;
        assert_eq!(r["isError"], true, "{sql}: {r}");
        assert!(
            r["content"][0]["text"].as_str().unwrap().contains(why),
            "{sql}: {r}"
        );
    }
    // A backslash the parser reads as an escape but would render bare (the server would
    // then see a second statement), and hints that lift the server's limits: refused.
    for (sql, why) in [
        (
            r"SELECT '\\', '; DROP TABLE alice_notes; -- '",
            "backslashes",
        ),
        (
            "SELECT /*+ SET_VAR(query_timeout=86400) */ note FROM alice_notes",
            "hints",
        ),
    ] {
        let r = rcall(sql).await;
        assert_eq!(r["isError"], true, "{sql}: {r}");
        assert!(
            r["content"][0]["text"].as_str().unwrap().contains(why),
            "{sql}: {r}"
        );
    }
    // Text two parsers may read differently runs as the one reading that was checked.
    let r = rcall("SELECT 1 --x; DROP TABLE alice_notes").await;
    let _ = r;
    let notes: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {db}.alice_notes"))
        .fetch_one(&root)
        .await
        .expect("alice_notes still exists");
    assert_eq!(notes, 2, "nothing written or dropped");

    // Her connections are hers, and go when her grant ends.
    let before = mysql_connections(&root, &alice).await;
    assert!(before >= 1);
    let (s, _) = gw
        .post_form(
            "/revoke",
            &[
                ("token", a["refresh_token"].as_str().unwrap()),
                ("client_id", a["client_id"].as_str().unwrap()),
            ],
        )
        .await;
    assert_eq!(s, 200);
    within(1, "the revoked grant's connections closed", || async {
        mysql_connections(&root, &alice).await < before
    })
    .await;
    drop(gw);
    mariadb_cleanup(&root, &db, &tag).await;
}

#[tokio::test]
async fn an_operators_own_servers_get_the_database_credential_only_when_opted_in() {
    let Some(node) = crate::js::node() else {
        return;
    };
    let Some((root, db, tag)) = mariadb_with_people().await else {
        return;
    };
    let alice = format!("mog_a_{tag}");
    let upstream = crate::upstream_fixture::Upstream::start(false).await;
    let (db2, url) = (db.clone(), upstream.url.clone());
    let everything = crate::js::js_dir()
        .join("node_modules/@modelcontextprotocol/server-everything/dist/index.js")
        .display()
        .to_string();
    let gw = TestGateway::start_with(move |c| {
        needs_keys(c);
        c.login.database.push(
            serde_json::from_value(json!({
                "name": "maria", "kind": "mysql", "engine": "mariadb",
                "url": format!("mysql://127.0.0.1:3306/{db2}"), "tls": "disable"
            }))
            .unwrap(),
        );
        c.upstreams.push(
            serde_json::from_value(json!({
                "name": "own", "url": url,
                "credentials": {"type": "database_login", "source": "maria",
                    "username_header": "X-Db-User", "password_header": "X-Db-Password"}
            }))
            .unwrap(),
        );
        c.upstreams.push(
            serde_json::from_value(json!({
                "name": "proc", "command": [node.display().to_string(), everything, "stdio"],
                "per_user": true,
                "credentials": {"type": "database_login", "source": "maria",
                    "username_env": "DB_USER", "password_env": "DB_PASSWORD"}
            }))
            .unwrap(),
        );
    })
    .await;
    // Over HTTP: the two headers, and never the client's token.
    let own = format!("{}/mcp/own", gw.base);
    let (_, page, t) = sign_in(&gw, "maria", &alice, "alice-pass-1", &own).await;
    let token = t.unwrap_or_else(|| panic!("{page}"))["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, r) = call(&gw, "/mcp/own", &token, "headers", json!({})).await;
    assert_eq!(s, 200, "{r}");
    let seen: Value = serde_json::from_str(r["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(seen["x-db-user"], alice.as_str(), "{seen}");
    assert_eq!(seen["x-db-password"], "alice-pass-1", "{seen}");
    assert_eq!(
        seen["authorization"],
        Value::Null,
        "the client's token went upstream"
    );
    // Someone signed in another way: refused, with nothing sent.
    let local = authorize_for(&gw, "alice", &own).await;
    let (s, _) = call(&gw, "/mcp/own", &local.access_token, "headers", json!({})).await;
    assert_eq!(s, 503);
    // Over stdio: two environment values of a process of her own.
    let proc_resource = format!("{}/mcp/proc", gw.base);
    let (_, _, t) = sign_in(&gw, "maria", &alice, "alice-pass-1", &proc_resource).await;
    let token = t.unwrap()["access_token"].as_str().unwrap().to_string();
    let (s, r) = call(&gw, "/mcp/proc", &token, "get-env", json!({})).await;
    assert_eq!(s, 200, "{r}");
    let env: Value = serde_json::from_str(r["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(
        (env["DB_USER"].as_str(), env["DB_PASSWORD"].as_str()),
        (Some(alice.as_str()), Some("alice-pass-1"))
    );
    drop(gw);
    mariadb_cleanup(&root, &db, &tag).await;
}
