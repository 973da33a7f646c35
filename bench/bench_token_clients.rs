//! `scripts/bench token`'s client: N concurrent OAuth clients, each rotating its own refresh
//! token as fast as the gateway answers, for a fixed time, on loopback.
//!
//! Usage: bench_token_clients BASE_URL USER PASSWORD CLIENTS SECONDS
//! Prints one JSON object: grants per second, latency percentiles, errors.
//!
//! The grants are made the way a real client makes them: one registration, then the
//! authorization flow through the login and consent forms (the browser session and remembered
//! consent make the later ones immediate), then the code exchanges.

use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;
use sha2::Digest;

type Error = Box<dyn std::error::Error + Send + Sync>;

const REDIRECT: &str = "http://127.0.0.1:9/cb";

fn hidden(html: &str, name: &str) -> Result<String, Error> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).ok_or(format!("no {name} field"))? + marker.len();
    let end = html[start..].find('"').ok_or("unterminated field")? + start;
    Ok(html[start..end].to_string())
}

fn location(r: &reqwest::Response) -> Result<String, Error> {
    Ok(r.headers()
        .get("location")
        .ok_or("no Location")?
        .to_str()?
        .to_string())
}

fn code_of(location: &str) -> Result<String, Error> {
    let url = url::Url::parse(location)?;
    url.query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| format!("no code in {location}").into())
}

/// One authorization through the forms; returns (code, verifier).
async fn authorize(
    browser: &reqwest::Client,
    base: &str,
    client_id: &str,
    user: &str,
    password: &str,
    n: usize,
) -> Result<(String, String), Error> {
    let verifier = format!("bench-verifier-{n:08}-{}", "x".repeat(40));
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    let url = url::Url::parse_with_params(
        &format!("{base}/authorize"),
        &[
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", REDIRECT),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("resource", &format!("{base}/mcp")),
            ("state", "bench"),
        ],
    )?;
    let r = browser.get(url).send().await?;
    if r.status().is_redirection() {
        return Ok((code_of(&location(&r)?)?, verifier));
    }
    let page = r.text().await?;
    let (request, csrf) = (hidden(&page, "request")?, hidden(&page, "csrf")?);
    if page.contains("name=\"password\"") {
        let r = browser
            .post(format!("{base}/authorize/login"))
            .form(&[
                ("request", request.as_str()),
                ("csrf", csrf.as_str()),
                ("username", user),
                ("password", password),
            ])
            .send()
            .await?;
        if r.status().is_redirection() {
            return Ok((code_of(&location(&r)?)?, verifier));
        }
        if r.status() != 200 {
            return Err(format!("login answered {}", r.status()).into());
        }
    }
    let r = browser
        .post(format!("{base}/authorize/consent"))
        .form(&[
            ("request", request.as_str()),
            ("csrf", csrf.as_str()),
            ("decision", "allow"),
        ])
        .send()
        .await?;
    Ok((code_of(&location(&r)?)?, verifier))
}

async fn token(http: &reqwest::Client, base: &str, form: &[(&str, &str)]) -> Result<Value, Error> {
    let r = http.post(format!("{base}/token")).form(form).send().await?;
    let status = r.status();
    let v: Value = r.json().await?;
    if status != 200 {
        return Err(format!("/token answered {status}: {v}").into());
    }
    Ok(v)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        return Err("usage: bench_token_clients BASE_URL USER PASSWORD CLIENTS SECONDS".into());
    }
    let (base, user, password) = (args[1].clone(), args[2].clone(), args[3].clone());
    let clients: usize = args[4].parse()?;
    let seconds: u64 = args[5].parse()?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(clients)
        .build()?;
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .build()?;

    let r = http
        .post(format!("{base}/register"))
        .json(&serde_json::json!({
            "client_name": "bench",
            "redirect_uris": [REDIRECT],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
        }))
        .send()
        .await?;
    let reg: Value = r.json().await?;
    let client_id = reg["client_id"]
        .as_str()
        .ok_or(format!("registration failed: {reg}"))?
        .to_string();
    let mut refresh_tokens = Vec::with_capacity(clients);
    for n in 0..clients {
        let (code, verifier) = authorize(&browser, &base, &client_id, &user, &password, n).await?;
        let v = token(
            &http,
            &base,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("client_id", &client_id),
                ("code_verifier", &verifier),
            ],
        )
        .await?;
        refresh_tokens.push(
            v["refresh_token"]
                .as_str()
                .ok_or("no refresh_token")?
                .to_string(),
        );
    }

    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for mut rt in refresh_tokens {
        let (http, base, client_id) = (http.clone(), base.clone(), client_id.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies_us: Vec<u32> = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < until {
                let t = Instant::now();
                let out = token(
                    &http,
                    &base,
                    &[
                        ("grant_type", "refresh_token"),
                        ("refresh_token", &rt),
                        ("client_id", &client_id),
                    ],
                )
                .await;
                let us = u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX);
                match out
                    .ok()
                    .and_then(|v| v["refresh_token"].as_str().map(String::from))
                {
                    Some(next) => {
                        rt = next;
                        latencies_us.push(us);
                    }
                    // A chain that broke cannot go on; count it and stop this client.
                    None => {
                        errors += 1;
                        break;
                    }
                }
            }
            (latencies_us, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        all.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return 0.0;
        }
        let i = ((all.len() as f64 - 1.0) * p).round() as usize;
        f64::from(all[i]) / 1000.0
    };
    let out = serde_json::json!({
        "clients": clients,
        "seconds": elapsed,
        "refresh_grants": all.len(),
        "grants_per_sec": (all.len() as f64 / elapsed).round(),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
        "errors": errors,
    });
    println!("{out}");
    Ok(())
}
