//! Several gateway instances on one database: behind a load balancer, killed mid-burst, and
//! with PostgreSQL itself restarted under load.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mcp_oauth_gateway::store::{SharedStore, copy};
use serde_json::Value;

use crate::js::{SdkRun, node};
use crate::store_suite::{fresh_postgres, postgres_url};
use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_mcp-oauth-gateway");

/// The URL of a schema of the test database.
pub(crate) fn schema_url(pg: &str, schema: &str) -> String {
    let sep = if pg.contains('?') { '&' } else { '?' };
    format!("{pg}{sep}options=-c%20search_path%3D{schema}")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn refresh(base: &str, client_id: &str, refresh_token: &str) -> (u16, Value) {
    let r = TestGateway::http()
        .post(format!("{base}/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", client_id),
        ])
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Polls `gw` until `token` is refused, for at most a second; returns how long it took.
async fn refused_within_a_second(gw: &TestGateway, token: &str) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(1) {
        if call_whoami(gw, token).await.0 == 401 {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    None
}

#[tokio::test]
async fn two_instances_behind_a_load_balancer_act_as_one() {
    let Some(pg) = postgres_url() else { return };
    let Some(node) = node() else { return };
    let (_store, admin, schema) = fresh_postgres(&pg).await;
    let url = schema_url(&pg, &schema);
    let lb_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let public = format!("http://{}", lb_listener.local_addr().unwrap());
    let start = |url: String, public: String| {
        TestGateway::start_with(move |c| {
            c.store.url = url;
            c.server.public_url = Some(public);
        })
    };
    let a = start(url.clone(), public.clone()).await;
    let b = start(url.clone(), public.clone()).await;
    // Registration on A, the browser's steps on B, everything else alternately.
    let route: Route = Arc::new(|n, _, path| {
        if path == "/register" {
            0
        } else if path.starts_with("/authorize") {
            1
        } else {
            n % 2
        }
    });
    let lb = Forwarder::start_on(
        lb_listener,
        vec![a.direct.clone(), b.direct.clone()],
        route,
        None,
        true,
    );

    // The TypeScript SDK client, knowing only the load balancer's URL.
    let mut run = SdkRun::start_at(
        format!("{public}/mcp"),
        &node,
        None,
        false,
        &[("MCP_REPEAT", "4")],
    );
    let first = run.next().await;
    assert_eq!(first["who"]["user"], "alice");
    assert_eq!(first["who"]["resource"], format!("{public}/mcp"));
    for _ in 0..4 {
        assert_eq!(run.next().await["who"]["user"], "alice");
    }
    run.finish().await;
    assert_eq!(lb.served("/register"), vec![0], "registered on A");
    let browser = lb.served("/authorize");
    assert!(
        !browser.is_empty() && browser.iter().all(|b| *b == 1),
        "authorized on B"
    );
    assert!(!lb.served("/token").is_empty());
    let mcp = lb.served("/mcp");
    assert!(
        mcp.contains(&0) && mcp.contains(&1),
        "MCP calls went through both: {mcp:?}"
    );

    // The SDK's token, revoked on A, is refused at B within a second (B had it cached).
    let sdk_token = first["access_token"].as_str().unwrap().to_string();
    let sdk_client = first["client_id"].as_str().unwrap().to_string();
    assert_eq!(call_whoami(&b, &sdk_token).await.0, 200);
    let (s, _) = a
        .post_form(
            "/revoke",
            &[("token", &sdk_token), ("client_id", &sdk_client)],
        )
        .await;
    assert_eq!(s, 200);
    let took = refused_within_a_second(&b, &sdk_token).await;
    assert!(took.is_some(), "B still accepted the token revoked on A");
    eprintln!("revoked on A, refused on B after {took:?}");

    // A refresh on A, its successor used on B, then the old refresh token replayed on B:
    // the grant is revoked everywhere.
    let t = authorize_user(&a, "bob").await;
    let (s, s1) = refresh(&a.direct, &t.client_id, &t.refresh_token).await;
    assert_eq!(s, 200, "{s1}");
    let (s, s2) = refresh(
        &b.direct,
        &t.client_id,
        s1["refresh_token"].as_str().unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{s2}");
    let live = s2["access_token"].as_str().unwrap().to_string();
    assert_eq!(call_whoami(&a, &live).await.0, 200);
    assert_eq!(call_whoami(&b, &live).await.0, 200);
    let (s, replay) = refresh(&b.direct, &t.client_id, &t.refresh_token).await;
    assert_eq!(s, 400, "{replay}");
    assert_eq!(replay["error"], "invalid_grant");
    assert!(
        refused_within_a_second(&a, &live).await.is_some(),
        "A still accepted a token of the grant revoked on B"
    );
    assert_eq!(call_whoami(&b, &live).await.0, 401);
    let (s, _) = refresh(
        &a.direct,
        &t.client_id,
        s2["refresh_token"].as_str().unwrap(),
    )
    .await;
    assert_eq!(s, 400, "the newest refresh token died with its grant");

    drop((a, b, lb));
    let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await;
}

/// The gateway binary, serving on `port` with the store `url`.
struct Process {
    child: tokio::process::Child,
    base: String,
}

impl Process {
    async fn start(url: &str, port: u16) -> Self {
        let base = format!("http://127.0.0.1:{port}");
        let child = tokio::process::Command::new(BIN)
            .arg("serve")
            .env("MCP_OAUTH_GATEWAY_STORE__URL", url)
            .env(
                "MCP_OAUTH_GATEWAY_SERVER__LISTEN",
                format!("127.0.0.1:{port}"),
            )
            .env("MCP_OAUTH_GATEWAY_REGISTRATION__PER_IP_PER_HOUR", "100000")
            .env("MCP_OAUTH_GATEWAY_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let http = TestGateway::http();
        let started = Instant::now();
        loop {
            let up = http
                .get(format!("{base}/.well-known/oauth-authorization-server"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if up {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the gateway did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { child, base }
    }
}

fn add_user(url: &str, name: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new(BIN)
        .args(["users", "add", name, "--password-stdin"])
        .env("MCP_OAUTH_GATEWAY_STORE__URL", url)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(PASSWORD.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Issued {
    code: String,
    verifier: String,
}

/// `n` authorization codes for one client (the first through the forms, the rest by the
/// remembered session and consent).
async fn codes(base: &str, client_id: &str, redirect: &str, n: usize) -> Vec<Issued> {
    let browser = TestGateway::browser();
    let resource = format!("{base}/mcp");
    let mut out = Vec::new();
    for _ in 0..n {
        let pkce = Pkce::new();
        let params = authorize_params(client_id, redirect, &pkce, &resource);
        let url = url::Url::parse_with_params(&format!("{base}/authorize"), &params).unwrap();
        let location = approve_at(&browser, base, url.as_str(), "alice").await;
        out.push(Issued {
            code: query_of(&location)["code"].clone(),
            verifier: pkce.verifier,
        });
    }
    out
}

async fn exchange(base: &str, client_id: &str, redirect: &str, i: &Issued) -> Option<(u16, Value)> {
    let r = TestGateway::http()
        .post(format!("{base}/token"))
        .timeout(Duration::from_secs(20))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &i.code),
            ("redirect_uri", redirect),
            ("client_id", client_id),
            ("code_verifier", &i.verifier),
        ])
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.json().await.ok()?))
}

/// Column `name` of `table` in `row`, as text (NULL → None).
fn text(table: &copy::Table, row: &copy::Row, name: &str) -> Option<String> {
    let i = table.columns.iter().position(|(c, _)| *c == name).unwrap();
    match &row[i] {
        copy::Cell::Text(v) => v.clone(),
        copy::Cell::Int(v) => v.map(|n| n.to_string()),
        _ => panic!("{name} is neither text nor a number"),
    }
}

/// What the store holds after the crash: every redeemed code points at a whole grant, every
/// live grant has exactly one unused refresh token, every used one names an existing
/// successor, and no token belongs to a grant that does not exist.
async fn assert_consistent(store: &SharedStore) {
    let table = |name: &str| copy::TABLES.iter().find(|t| t.name == name).unwrap();
    let (codes_t, grants_t, access_t, refresh_t) = (
        table("auth_codes"),
        table("grants"),
        table("access_tokens"),
        table("refresh_tokens"),
    );
    let codes = store.export_rows(codes_t).await.unwrap();
    let grants = store.export_rows(grants_t).await.unwrap();
    let access = store.export_rows(access_t).await.unwrap();
    let refresh = store.export_rows(refresh_t).await.unwrap();
    let grant_ids: Vec<String> = grants
        .iter()
        .map(|g| text(grants_t, g, "id").unwrap())
        .collect();
    for c in &codes {
        if text(codes_t, c, "consumed_at").is_some() {
            let g = text(codes_t, c, "grant_id").expect("a redeemed code names its grant");
            assert!(grant_ids.contains(&g), "a redeemed code's grant is missing");
        }
    }
    for a in &access {
        if let Some(g) = text(access_t, a, "grant_id") {
            assert!(grant_ids.contains(&g), "an access token without its grant");
        }
    }
    let hashes: Vec<String> = refresh
        .iter()
        .map(|r| text(refresh_t, r, "token_hash").unwrap())
        .collect();
    for r in &refresh {
        let g = text(refresh_t, r, "grant_id").unwrap();
        assert!(grant_ids.contains(&g), "a refresh token without its grant");
        if text(refresh_t, r, "used_at").is_some() {
            let s = text(refresh_t, r, "successor_hash").expect("a used token names its successor");
            assert!(
                hashes.contains(&s),
                "a used refresh token's successor is missing"
            );
        }
    }
    for g in &grants {
        if text(grants_t, g, "revoked_at").is_some() {
            continue;
        }
        let id = text(grants_t, g, "id").unwrap();
        let unused = refresh
            .iter()
            .filter(|r| {
                text(refresh_t, r, "grant_id").as_deref() == Some(id.as_str())
                    && text(refresh_t, r, "used_at").is_none()
            })
            .count();
        assert_eq!(unused, 1, "a live grant has one current refresh token");
        assert!(
            access
                .iter()
                .any(|a| text(access_t, a, "grant_id").as_deref() == Some(id.as_str())),
            "a live grant has its access token"
        );
    }
}

async fn killed_mid_burst(url: &str, store: SharedStore) {
    const N: usize = 40;
    add_user(url, "alice");
    let port = free_port();
    let mut first = Process::start(url, port).await;
    let base = first.base.clone();
    let redirect = "http://127.0.0.1:9999/callback";
    let r = TestGateway::http()
        .post(format!("{base}/register"))
        .json(
            &serde_json::json!({"redirect_uris": [redirect], "token_endpoint_auth_method": "none"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let client_id = r.json::<Value>().await.unwrap()["client_id"]
        .as_str()
        .unwrap()
        .to_string();
    let client_id = client_id.as_str();
    let burst_codes = codes(&base, client_id, redirect, N).await;
    let mut refresh_tokens = Vec::new();
    for i in codes(&base, client_id, redirect, N).await {
        let (s, v) = exchange(&base, client_id, redirect, &i).await.unwrap();
        assert_eq!(s, 200);
        refresh_tokens.push(v["refresh_token"].as_str().unwrap().to_string());
    }

    // The burst: every code exchanged and every refresh token rotated at once; the process is
    // killed (SIGKILL) as soon as a few answers are back.
    let answered = Arc::new(tokio::sync::Semaphore::new(0));
    let mut code_tasks = Vec::new();
    for i in burst_codes.iter() {
        let (base, client_id, code, verifier, answered) = (
            base.clone(),
            client_id.to_string(),
            i.code.clone(),
            i.verifier.clone(),
            answered.clone(),
        );
        code_tasks.push(tokio::spawn(async move {
            let issued = Issued { code, verifier };
            let out = exchange(&base, &client_id, redirect, &issued).await;
            answered.add_permits(1);
            out
        }));
    }
    let mut refresh_tasks = Vec::new();
    for rt in refresh_tokens.iter() {
        let (base, client_id, rt, answered) = (
            base.clone(),
            client_id.to_string(),
            rt.clone(),
            answered.clone(),
        );
        refresh_tasks.push(tokio::spawn(async move {
            let out = TestGateway::http()
                .post(format!("{base}/token"))
                .timeout(Duration::from_secs(20))
                .form(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", rt.as_str()),
                    ("client_id", client_id.as_str()),
                ])
                .send()
                .await
                .ok();
            let out = match out {
                Some(r) => {
                    let s = r.status().as_u16();
                    r.json::<Value>().await.ok().map(|v| (s, v))
                }
                None => None,
            };
            answered.add_permits(1);
            out
        }));
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), answered.acquire_many(5)).await;
    first.child.start_kill().unwrap();
    let _ = first.child.wait().await;
    let mut code_results = Vec::new();
    for t in code_tasks {
        code_results.push(t.await.unwrap());
    }
    let mut refresh_results = Vec::new();
    for t in refresh_tasks {
        refresh_results.push(t.await.unwrap());
    }
    let lost = code_results.iter().filter(|r| r.is_none()).count()
        + refresh_results.iter().filter(|r| r.is_none()).count();
    eprintln!("killed with {lost} of {} answers outstanding", 2 * N);

    // What the dead instance committed is whole.
    assert_consistent(&store).await;

    // A fresh instance on the same store: no code is usable twice.
    let second = Process::start(url, port).await;
    let mut redeemed_twice = 0;
    for (i, first_answer) in burst_codes.iter().zip(&code_results) {
        let again = exchange(&second.base, client_id, redirect, i)
            .await
            .unwrap();
        let first_ok = matches!(first_answer, Some((200, _)));
        if first_ok && again.0 == 200 {
            redeemed_twice += 1;
        }
        assert!(
            again.0 == 200 || (again.0 == 400 && again.1["error"] == "invalid_grant"),
            "{again:?}"
        );
        if !first_ok && first_answer.is_some() {
            panic!("a code exchange failed before the kill: {first_answer:?}");
        }
    }
    assert_eq!(redeemed_twice, 0, "a code was redeemed twice");
    // A refresh token the dead instance rotated yields at most its one successor.
    for (rt, first_answer) in refresh_tokens.iter().zip(&refresh_results) {
        let (s, v) = refresh(&second.base, client_id, rt).await;
        match first_answer {
            Some((200, before)) => assert!(
                s == 400 || v["refresh_token"] == before["refresh_token"],
                "a second, different successor: {v}"
            ),
            Some(other) => panic!("a refresh failed before the kill: {other:?}"),
            None => assert!(s == 200 || s == 400, "{s} {v}"),
        }
    }
    assert_consistent(&store).await;
}

#[tokio::test]
async fn an_instance_killed_mid_burst_leaves_nothing_half_issued() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("gw.db").display());
    let store = mcp_oauth_gateway::store::open(&url).await.unwrap();
    killed_mid_burst(&url, store).await;
    if let Some(pg) = postgres_url() {
        let (store, admin, schema) = fresh_postgres(&pg).await;
        killed_mid_burst(&schema_url(&pg, &schema), store).await;
        let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(&admin)
            .await;
    }
}

/// A PostgreSQL server of the test's own (initdb in a temporary directory), so that it can be
/// stopped and started without disturbing the tests that share the machine's server.
pub(crate) struct PrivatePostgres {
    bin: std::path::PathBuf,
    dir: tempfile::TempDir,
    pub(crate) port: u16,
}

impl PrivatePostgres {
    fn bin_dir() -> Option<std::path::PathBuf> {
        let mut found: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .collect();
        found.sort();
        found.pop()
    }

    /// Runs a PostgreSQL program as the `postgres` user when we are root (it refuses root).
    fn run(&self, program: &str, args: &[&str]) -> std::process::Output {
        let exe = self.bin.join(program);
        let mut cmd = if is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            std::process::Command::new(exe)
        };
        cmd.args(args).stdin(Stdio::null()).output().unwrap()
    }

    pub(crate) fn start() -> Option<Self> {
        Self::start_with(None)
    }

    /// A server that checks passwords on TCP (SCRAM), as a real deployment does; the
    /// superuser `postgres` has `superuser_password`.
    pub(crate) fn start_with_password(superuser_password: &str) -> Option<Self> {
        Self::start_with(Some(superuser_password))
    }

    fn start_with(superuser_password: Option<&str>) -> Option<Self> {
        let Some(bin) = Self::bin_dir() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "PostgreSQL's programs (initdb) are missing"
            );
            eprintln!("SKIPPED: no PostgreSQL programs under /usr/lib/postgresql");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        if is_root() {
            let ok = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown to postgres");
        }
        let pg = Self {
            bin,
            dir,
            port: free_port(),
        };
        let data = pg.data();
        let pwfile = pg.dir.path().join("pw").display().to_string();
        let mut args = vec!["-D", data.as_str(), "-U", "postgres", "-E", "UTF8"];
        match superuser_password {
            None => args.push("--auth=trust"),
            Some(pw) => {
                std::fs::write(&pwfile, pw).unwrap();
                if is_root() {
                    let _ = std::process::Command::new("chown")
                        .args(["postgres:postgres", &pwfile])
                        .status();
                }
                args.extend([
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--pwfile",
                    pwfile.as_str(),
                ]);
            }
        }
        let out = pg.run("initdb", &args);
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.ctl("start");
        Some(pg)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn ctl(&self, action: &str) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        let data = self.data();
        let mut args = vec![action, "-D", &data, "-w", "-t", "30", "-m", "fast"];
        if action == "start" {
            args.extend(["-o", &opts, "-l", &log]);
        }
        let out = self.run("pg_ctl", &args);
        assert!(
            out.status.success(),
            "pg_ctl {action}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self.run("pg_ctl", &["stop", "-D", &data, "-m", "immediate"]);
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[tokio::test]
async fn postgres_restarted_under_load_gives_503_then_recovers() {
    if postgres_url().is_none() {
        return;
    }
    let Some(pg) = PrivatePostgres::start() else {
        return;
    };

    let url = pg.url();
    let (u, u2) = (url.clone(), url.clone());
    let a = TestGateway::start_with(move |c| {
        c.store.url = u;
        c.store.acquire_timeout_ms = 1000;
        c.registration.per_ip_per_hour = 1_000_000;
    })
    .await;
    let issuer = a.base.clone();
    let b = TestGateway::start_with(move |c| {
        c.store.url = u2;
        c.server.public_url = Some(issuer);
    })
    .await;
    let t = authorize_user(&a, "alice").await;

    // Load: registrations and code exchanges (both need the database), one after another on
    // four workers, recording each answer and how long it took.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (base, stop) = (a.direct.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let http = TestGateway::http();
            let mut seen = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                let started = Instant::now();
                let r = if (w + n) % 2 == 0 {
                    http.post(format!("{base}/register"))
                        .json(&serde_json::json!({"redirect_uris": ["http://127.0.0.1:9/cb"], "token_endpoint_auth_method": "none"}))
                        .timeout(Duration::from_secs(15))
                        .send()
                        .await
                } else {
                    http.post(format!("{base}/token"))
                        .form(&[
                            ("grant_type", "authorization_code"),
                            ("code", "mog_ac_not_a_code"),
                            ("redirect_uri", "http://127.0.0.1:9/cb"),
                            ("client_id", "nobody"),
                            ("code_verifier", &"v".repeat(43)),
                        ])
                        .timeout(Duration::from_secs(15))
                        .send()
                        .await
                };
                let took = started.elapsed();
                match r {
                    Ok(r) => {
                        let retry_after = r.headers().contains_key("retry-after");
                        seen.push((r.status().as_u16(), retry_after, took));
                    }
                    Err(e) => panic!("no answer (after {took:?}): {e}"),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(call_whoami(&a, &t.access_token).await.0, 200);
    let stopped_at = Instant::now();
    pg.ctl("stop");
    // A token validated a moment ago is served from the cache: the MCP path does not need
    // the database for it.
    assert_eq!(call_whoami(&a, &t.access_token).await.0, 200);
    // Longer than the bound on an answer below, so a request that waited for PostgreSQL to
    // come back would be caught.
    tokio::time::sleep(Duration::from_secs(4)).await;
    pg.ctl("start");
    let restarted_after = stopped_at.elapsed();
    // Back without restarting the gateway.
    let recovered = {
        let started = Instant::now();
        loop {
            let r = TestGateway::http()
                .post(a.url("/register"))
                .json(&serde_json::json!({"redirect_uris": ["http://127.0.0.1:9/cb"], "token_endpoint_auth_method": "none"}))
                .send()
                .await
                .unwrap();
            if r.status() == 201 {
                break started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "the gateway did not recover: {}",
                r.status()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut seen = Vec::new();
    for w in workers {
        seen.extend(w.await.unwrap());
    }
    let unavailable: Vec<_> = seen.iter().filter(|(s, _, _)| *s == 503).collect();
    eprintln!(
        "{} requests, {} answered 503; PostgreSQL back after {restarted_after:?}, gateway after {recovered:?} more; slowest answer {:?}",
        seen.len(),
        unavailable.len(),
        seen.iter().map(|(_, _, t)| *t).max()
    );
    for (status, retry_after, took) in &seen {
        assert!(
            matches!(status, 201 | 400 | 401 | 503),
            "a client saw {status} while PostgreSQL restarted"
        );
        if *status == 503 {
            assert!(retry_after, "503 without Retry-After");
        }
        assert!(
            *took < Duration::from_secs(3),
            "an answer took {took:?} (acquire timeout is 1 s)"
        );
    }
    assert!(!unavailable.is_empty(), "no request noticed the outage");

    // The old tokens still work, and revocation still crosses instances after the restart.
    assert_eq!(call_whoami(&a, &t.access_token).await.0, 200);
    assert_eq!(call_whoami(&b, &t.access_token).await.0, 200);
    let (s, _) = a
        .post_form(
            "/revoke",
            &[("token", &t.refresh_token), ("client_id", &t.client_id)],
        )
        .await;
    assert_eq!(s, 200);
    assert!(
        refused_within_a_second(&b, &t.access_token).await.is_some(),
        "revocations stopped crossing instances after the restart"
    );
}
