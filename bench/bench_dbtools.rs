//! `scripts/bench dbtools`'s client. Signs N database users in through the gateway's forms
//! (one registered client, a grant each), then measures on loopback:
//! - `tools/call query` of `SELECT 1` through the gateway against the same statement through
//!   the driver directly, as the same user, pools warm, interleaved in rounds;
//! - the first call of each user (pool opened from the sealed credential), one after another,
//!   and the gateway's RSS per idle pool while the pools fit the budget;
//! - every user again, 16 at a time, with more users than the connection budget holds,
//!   sampling the connections the database sees.
//!
//! Usage: bench_dbtools BASE_URL DIRECT_DB_URL ADMIN_DB_URL USER_PREFIX PASSWORD USERS ITERATIONS GATEWAY_PID BUDGET
//! Prints one JSON object.

use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use sha2::Digest;

type Error = Box<dyn std::error::Error + Send + Sync>;

const REDIRECT: &str = "http://127.0.0.1:9/cb";

fn hidden(html: &str, name: &str) -> Result<String, Error> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).ok_or(format!("no {name} field"))? + marker.len();
    let end = html[start..].find('"').ok_or("unterminated field")? + start;
    Ok(html[start..end].to_string())
}

fn code_of(r: &reqwest::Response) -> Result<String, Error> {
    let location = r
        .headers()
        .get("location")
        .ok_or_else(|| format!("no Location ({})", r.status()))?
        .to_str()?;
    let url = url::Url::parse(location)?;
    url.query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| format!("no code in {location}").into())
}

/// The whole flow for one database user: an access token for the dbtools resource.
async fn sign_in(base: &str, client_id: &str, user: &str, password: &str) -> Result<String, Error> {
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .build()?;
    let verifier = format!("bench-verifier-{user}-{}", "x".repeat(40));
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    let resource = format!("{base}/mcp/db");
    let url = url::Url::parse_with_params(
        &format!("{base}/authorize"),
        &[
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", REDIRECT),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("resource", &resource),
            ("state", "bench"),
        ],
    )?;
    let page = browser.get(url).send().await?.text().await?;
    let r = browser
        .post(format!("{base}/authorize/login"))
        .form(&[
            ("request", hidden(&page, "request")?.as_str()),
            ("csrf", hidden(&page, "csrf")?.as_str()),
            ("source", "bench"),
            ("username", user),
            ("password", password),
        ])
        .send()
        .await?;
    if r.status() != 200 {
        return Err(format!("sign-in of {user} answered {}", r.status()).into());
    }
    let page = r.text().await?;
    let r = browser
        .post(format!("{base}/authorize/consent"))
        .form(&[
            ("request", hidden(&page, "request")?.as_str()),
            ("csrf", hidden(&page, "csrf")?.as_str()),
            ("decision", "allow"),
        ])
        .send()
        .await?;
    let code = code_of(&r)?;
    let r = browser
        .post(format!("{base}/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("client_id", client_id),
            ("code_verifier", &verifier),
            ("resource", &resource),
        ])
        .send()
        .await?;
    let v: Value = r.json().await?;
    Ok(v["access_token"]
        .as_str()
        .ok_or(format!("no token: {v}"))?
        .to_string())
}

/// One `tools/call query`; its latency.
async fn query(http: &reqwest::Client, base: &str, token: &str) -> Result<Duration, Error> {
    let started = Instant::now();
    let r = http
        .post(format!("{base}/mcp/db"))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "query", "arguments": {"sql": "SELECT 1"}}}))
        .send()
        .await?;
    let v: Value = r.json().await?;
    let took = started.elapsed();
    if v["result"]["isError"] != false {
        return Err(format!("query failed: {v}").into());
    }
    Ok(took)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn percentiles(mut v: Vec<Duration>) -> Value {
    v.sort();
    let at = |q: f64| {
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .map(ms)
    };
    json!({"n": v.len(), "p50_ms": at(0.5), "p90_ms": at(0.9), "p99_ms": at(0.99), "max_ms": v.last().copied().map(ms)})
}

fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

async fn connections(admin: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'mcp-oauth-gateway dbtools'")
        .fetch_one(admin)
        .await
        .unwrap_or(-1)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 10 {
        return Err("usage: bench_dbtools BASE_URL DIRECT_DB_URL ADMIN_DB_URL USER_PREFIX PASSWORD USERS ITERATIONS GATEWAY_PID BUDGET".into());
    }
    let (base, direct_url, admin_url, prefix, password) = (&a[1], &a[2], &a[3], &a[4], &a[5]);
    let users: usize = a[6].parse()?;
    let iterations: usize = a[7].parse()?;
    let pid = &a[8];
    let budget: i64 = a[9].parse()?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(32)
        .build()?;
    let admin = sqlx::PgPool::connect(admin_url).await?;

    let r: Value = http
        .post(format!("{base}/register"))
        .json(&json!({"client_name": "bench", "redirect_uris": [REDIRECT],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"]}))
        .send()
        .await?
        .json()
        .await?;
    let client_id = r["client_id"]
        .as_str()
        .ok_or(format!("no client: {r}"))?
        .to_string();
    let started = Instant::now();
    let mut tokens = Vec::with_capacity(users);
    for chunk in (0..users).collect::<Vec<_>>().chunks(8) {
        let batch = chunk.iter().map(|i| {
            let (base, client_id, password) = (base.clone(), client_id.clone(), password.clone());
            let user = format!("{prefix}{i}");
            tokio::spawn(async move { sign_in(&base, &client_id, &user, &password).await })
        });
        for t in batch.collect::<Vec<_>>() {
            tokens.push(t.await??);
        }
    }
    let sign_ins_secs = started.elapsed().as_secs_f64();
    let rss_no_pool = rss_kib(pid);

    // Warm: the same user, the same statement, through the gateway and directly.
    let direct = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(direct_url)
        .await?;
    for _ in 0..50 {
        query(&http, base, &tokens[0]).await?;
        sqlx::raw_sql("SELECT 1").fetch_all(&direct).await?;
    }
    let (mut through, mut bare) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        for _ in 0..iterations / 10 {
            through.push(query(&http, base, &tokens[0]).await?);
        }
        for _ in 0..iterations / 10 {
            let t = Instant::now();
            sqlx::raw_sql("SELECT 1").fetch_all(&direct).await?;
            bare.push(t.elapsed());
        }
    }
    let p50 = |v: &Vec<Duration>| {
        let mut v = v.clone();
        v.sort();
        v[v.len() / 2]
    };
    let added_p50 = ms(p50(&through).saturating_sub(p50(&bare)));

    // First calls, one user after another: each opens a pool from the sealed credential.
    let rss_one_pool = rss_kib(pid);
    let mut first = Vec::new();
    let mut rss_full = None;
    let mut peak = 0;
    for (i, token) in tokens.iter().enumerate().skip(1) {
        first.push(query(&http, base, token).await?);
        if i as i64 + 1 == budget {
            tokio::time::sleep(Duration::from_millis(200)).await;
            rss_full = Some((rss_kib(pid), connections(&admin).await));
        }
        if i % 25 == 0 {
            peak = peak.max(connections(&admin).await);
        }
    }
    let per_pool_kib = rss_full.map(|(rss, open)| {
        ((rss as f64 - rss_one_pool as f64) / ((open - 1).max(1)) as f64).round()
    });

    // Everyone again, 16 at a time: more people than the budget holds.
    let sampler = {
        let admin = admin.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            for _ in 0..600 {
                peak = peak.max(connections(&admin).await);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        })
    };
    let started = Instant::now();
    let mut again = Vec::new();
    for chunk in tokens.chunks(16) {
        let calls = chunk.iter().map(|t| {
            let (http, base, t) = (http.clone(), base.clone(), t.clone());
            tokio::spawn(async move { query(&http, &base, &t).await })
        });
        for c in calls.collect::<Vec<_>>() {
            again.push(c.await??);
        }
    }
    let again_secs = started.elapsed().as_secs_f64();
    sampler.abort();
    peak = peak.max(connections(&admin).await);
    let n_again = again.len();

    println!(
        "{}",
        json!({
            "users": users,
            "budget": budget,
            "sign_ins_secs": (sign_ins_secs * 100.0).round() / 100.0,
            "warm": {
                "gateway": percentiles(through),
                "direct": percentiles(bare),
                "added_p50_ms": added_p50,
            },
            "first_call": percentiles(first),
            "rss_kib": {"no_pool": rss_no_pool, "one_pool": rss_one_pool, "budget_full": rss_full.map(|r| r.0)},
            "per_idle_pool_kib": per_pool_kib,
            "all_users_again": {
                "latency": percentiles(again),
                "calls_per_sec": (n_again as f64 / again_secs).round(),
                "peak_connections": peak,
            },
        })
    );
    Ok(())
}
