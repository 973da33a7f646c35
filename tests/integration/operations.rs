//! What operators see: `/metrics`, the audit log, request ids, `/healthz` and `/readyz`,
//! JSON logs, and the Grafana dashboard built on the exported series.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use crate::support::{self, PASSWORD, TestGateway};

/// The audit file's records, once at least `n` have been written (the writer is a thread).
async fn audit_records(path: &std::path::Path, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {n} records: {text}",
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn scrape(gw: &TestGateway) -> String {
    let r = TestGateway::http()
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    r.text().await.unwrap()
}

/// The value of the sample `series` (name and labels exactly as exposed), 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

async fn refresh(gw: &TestGateway, client_id: &str, rt: &str) -> (u16, Value) {
    gw.post_form(
        "/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt),
            ("client_id", client_id),
        ],
    )
    .await
}

#[tokio::test]
async fn one_flow_is_one_audit_trail_and_its_events_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let audit_path = audit.display().to_string();
    let gw = TestGateway::start_with(move |c| {
        c.audit.path = Some(audit_path);
    })
    .await;
    let a = support::authorize_user(&gw, "alice").await;
    let (status, second) = refresh(&gw, &a.client_id, &a.refresh_token).await;
    assert_eq!(status, 200, "{second}");
    let rt2 = second["refresh_token"].as_str().unwrap().to_string();
    let (status, _) = refresh(&gw, &a.client_id, &rt2).await;
    assert_eq!(status, 200);
    // The first refresh token again, after its successor was used: stolen, the grant ends.
    let (status, reused) = refresh(&gw, &a.client_id, &a.refresh_token).await;
    assert_eq!(status, 400, "{reused}");
    // A token request naming a client that does not exist.
    let (status, _) = gw
        .post_form(
            "/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", "nothing"),
                ("client_id", "no-such-client"),
            ],
        )
        .await;
    assert_eq!(status, 401);
    // A wrong password on the gateway's own sign-in page.
    let browser = TestGateway::browser();
    let page = browser
        .get(gw.url("/authorize/signin"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = support::hidden(&page, "csrf").unwrap_or_default();
    let r = browser
        .post(gw.url("/authorize/signin"))
        .form(&[
            ("username", "alice"),
            ("password", "not the password"),
            ("csrf", csrf.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "{}", r.text().await.unwrap());
    // A call with a token that is not one.
    let (status, _) = support::call_whoami(&gw, "mog_at_forged").await;
    assert_eq!(status, 401);

    let records = audit_records(&audit, 10).await;
    let text = std::fs::read_to_string(&audit).unwrap();
    for secret in [
        a.access_token.as_str(),
        a.refresh_token.as_str(),
        rt2.as_str(),
        PASSWORD,
        "not the password",
    ] {
        assert!(!text.contains(secret), "a secret in the audit log");
    }
    let of = |action: &str| -> Vec<&Value> {
        records.iter().filter(|r| r["action"] == action).collect()
    };
    // One flow from the authorization request to the reuse that ended it.
    let requested = of("authorization_requested");
    assert_eq!(requested.len(), 1, "{records:#?}");
    let flow = requested[0]["flow"].as_str().unwrap();
    assert_eq!(requested[0]["client"], a.client_id.as_str());
    assert_eq!(requested[0]["outcome"], "accepted");
    let in_flow: Vec<&str> = records
        .iter()
        .filter(|r| r["flow"] == flow)
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        in_flow,
        [
            "authorization_requested",
            "sign_in",
            "consent_given",
            "token_issued",
            "token_issued",
            "token_issued",
            "refresh_reuse_detected",
        ],
        "{records:#?}"
    );
    let issued = of("token_issued");
    assert_eq!(issued[0]["grant_type"], "authorization_code");
    assert_eq!(issued[1]["grant_type"], "refresh_token");
    assert_eq!(issued[0]["resource"], gw.resource().as_str());
    let sign_ins = of("sign_in");
    assert_eq!(sign_ins[0]["outcome"], "success");
    let alice = gw.store.user_by_name("alice").await.unwrap().unwrap();
    assert_eq!(sign_ins[0]["user_id"], alice.id.as_str());
    assert_eq!(issued[0]["user_id"], alice.id.as_str());
    assert_eq!(sign_ins[0]["source"], "local");
    assert!(
        sign_ins.iter().any(|r| r["outcome"] == "refused"
            && r["reason"] == "invalid_credentials"
            && r.get("user_id").is_none()),
        "{sign_ins:#?}"
    );
    assert_eq!(of("client_registered")[0]["client"], a.client_id.as_str());
    let refused = of("token_refused");
    assert!(
        refused
            .iter()
            .any(|r| r["client"] == "no-such-client" && r["error"] == "invalid_client"),
        "{refused:#?}"
    );
    assert!(
        refused
            .iter()
            .any(|r| r["client"] == a.client_id.as_str() && r["error"] == "invalid_grant")
    );
    // Every record has its time, and the request it happened in.
    for r in &records {
        assert!(r["ts"].as_str().unwrap().ends_with('Z'), "{r}");
        assert!(
            r["request_id"].as_str().is_some_and(|s| !s.is_empty()),
            "{r}"
        );
        assert_eq!(r["ip"], "127.0.0.1");
    }

    // The same events, counted.
    let m = scrape(&gw).await;
    let p = "mcp_gateway_";
    assert_eq!(
        sample(
            &m,
            &format!("{p}tokens_issued_total{{grant_type=\"authorization_code\"}}")
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            &format!("{p}tokens_issued_total{{grant_type=\"refresh_token\"}}")
        ),
        2.0
    );
    assert_eq!(
        sample(&m, &format!("{p}refresh_token_reuse_detected_total")),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            &format!("{p}logins_total{{source=\"local\",outcome=\"success\"}}")
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            &format!("{p}logins_total{{source=\"local\",outcome=\"refused\"}}")
        ),
        1.0
    );
    assert!(
        sample(
            &m,
            &format!("{p}token_errors_total{{reason=\"invalid_client\"}}")
        ) >= 1.0
    );
    assert_eq!(
        sample(&m, &format!("{p}denials_total{{reason=\"invalid_token\"}}")),
        1.0
    );
    assert!(
        sample(
            &m,
            &format!("{p}http_requests_total{{route=\"token\",status=\"200\"}}")
        ) >= 3.0
    );
    assert!(
        sample(
            &m,
            &format!("{p}security_events_total{{action=\"consent_given\"}}")
        ) >= 1.0
    );
    for action in [
        "authorization_requested",
        "sign_in",
        "token_issued",
        "token_refused",
        "client_registered",
        "refresh_reuse_detected",
    ] {
        let n = records.iter().filter(|r| r["action"] == action).count() as f64;
        assert_eq!(
            sample(
                &m,
                &format!("{p}security_events_total{{action=\"{action}\"}}")
            ),
            n,
            "{action}"
        );
    }
    // Labels are bounded: neither the client id nor the user appears in any series.
    assert!(!m.contains(&a.client_id) && !m.contains("alice") && !m.contains("no-such-client"));
}

#[tokio::test]
async fn revocation_consent_denial_and_calls_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let audit_path = audit.display().to_string();
    let gw = TestGateway::start_with(move |c| {
        c.audit.path = Some(audit_path);
    })
    .await;
    let a = support::authorize_user(&gw, "bob").await;
    let (status, _) = support::call_whoami(&gw, &a.access_token).await;
    assert_eq!(status, 200);
    let (status, _) = gw
        .post_form(
            "/revoke",
            &[("token", &a.refresh_token), ("client_id", &a.client_id)],
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = support::call_whoami(&gw, &a.access_token).await;
    assert_eq!(status, 401);
    let records = audit_records(&audit, 6).await;
    let flow = records
        .iter()
        .find(|r| r["action"] == "token_issued")
        .unwrap()["flow"]
        .clone();
    let revoked = records
        .iter()
        .find(|r| r["action"] == "token_revoked")
        .expect("token_revoked");
    assert_eq!(revoked["flow"], flow);
    assert_eq!(revoked["token_type"], "refresh_token");
    assert_eq!(revoked["client"], a.client_id.as_str());
    let m = scrape(&gw).await;
    assert!(
        sample(
            &m,
            "mcp_gateway_http_requests_total{route=\"mcp\",status=\"200\"}"
        ) >= 1.0
    );
    assert!(sample(&m, "mcp_gateway_denials_total{reason=\"invalid_token\"}") >= 1.0);
    assert!(
        sample(
            &m,
            "mcp_gateway_cache_requests_total{cache=\"access_tokens\",result=\"miss\"}"
        ) >= 1.0
    );
    assert_eq!(
        sample(
            &m,
            "mcp_gateway_proxy_in_flight_requests{upstream=\"whoami\"}"
        ),
        0.0,
        "the in-flight gauge comes back down"
    );
}

#[tokio::test]
async fn request_ids_are_kept_when_plain_and_replaced_otherwise() {
    let gw = TestGateway::start().await;
    let http = TestGateway::http();
    let r = http
        .get(gw.url("/healthz"))
        .header("x-request-id", "trace-abc.123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-abc.123");
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "ok");
    for bad in ["a b", "x".repeat(65).as_str(), "inject\"quote"] {
        let r = http
            .get(gw.url("/healthz"))
            .header("x-request-id", bad)
            .send()
            .await
            .unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap();
        assert_ne!(id, bad);
        assert!(!id.is_empty() && id.len() <= 64);
    }
    let r = http.get(gw.url("/healthz")).send().await.unwrap();
    let a = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let r = http.get(gw.url("/healthz")).send().await.unwrap();
    assert_ne!(r.headers()["x-request-id"].to_str().unwrap(), a);
}

#[tokio::test]
async fn readiness_reports_the_store_keys_and_upstreams() {
    // An upstream nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}/mcp", closed.local_addr().unwrap());
    drop(closed);
    let gw = TestGateway::start_with(move |c| {
        c.upstreams
            .push(toml::from_str(&format!("name = \"dead\"\nurl = \"{dead}\"\n")).unwrap());
    })
    .await;
    let http = TestGateway::http();
    let r = http.get(gw.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "ready");
    assert_eq!(v["store"]["ok"], true);
    assert_eq!(v["keys"]["ok"], true);
    assert_eq!(v["upstreams"]["dead"]["state"], "unknown");
    assert_eq!(v["upstreams"]["whoami"]["state"], "built_in");
    let a = support::authorize_for(&gw, "alice", &format!("{}/mcp/dead", gw.base)).await;
    let r = http
        .post(gw.url("/mcp/dead"))
        .bearer_auth(&a.access_token)
        .header("accept", "application/json, text/event-stream")
        .json(&serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let v: Value = http
        .get(gw.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // One upstream down does not make the gateway unready: it still serves the others.
    assert_eq!(v["status"], "ready");
    assert_eq!(v["upstreams"]["dead"]["state"], "down");
    assert!(
        v["upstreams"]["dead"]["last_error"]
            .as_str()
            .unwrap()
            .contains("could not be reached"),
        "{v}"
    );
    let m = scrape(&gw).await;
    assert_eq!(
        sample(
            &m,
            "mcp_gateway_proxy_upstream_responses_total{upstream=\"dead\",status=\"error\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn metrics_answer_loopback_or_the_token_and_nobody_else() {
    let gw = TestGateway::start_with(|c| {
        // The test's requests come from loopback; as a trusted proxy, loopback forwards
        // the address a stranger would have.
        c.server.trusted_proxies = vec!["127.0.0.1/32".into()];
        c.metrics.bearer_token = Some(serde_json::from_str("\"metrics-secret\"").unwrap());
    })
    .await;
    let http = TestGateway::http();
    let get = |xff: Option<&'static str>, token: Option<&'static str>| {
        let mut r = http.get(gw.url("/metrics"));
        if let Some(x) = xff {
            r = r.header("x-forwarded-for", x);
        }
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    // From a trusted proxy (loopback here), even without a forwarded address or with a
    // forged loopback one: the proxy's clients are not this host.
    assert_eq!(get(None, None).await.unwrap().status(), 404);
    assert_eq!(get(Some("127.0.0.1"), None).await.unwrap().status(), 404);
    assert_eq!(get(Some("203.0.113.9"), None).await.unwrap().status(), 404);
    assert_eq!(
        get(Some("203.0.113.9"), Some("wrong"))
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        get(Some("203.0.113.9"), Some("metrics-secret"))
            .await
            .unwrap()
            .status(),
        200
    );
    // A local process that is not a proxy: served.
    let plain = TestGateway::start().await;
    let r = http.get(plain.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Off: not served, nothing counted.
    let off = TestGateway::start_with(|c| c.metrics.enabled = false).await;
    let r = http.get(off.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn metrics_on_their_own_address() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = TestGateway::start_with(move |c| {
        c.metrics.listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
    })
    .await;
    let http = TestGateway::http();
    // Not on the main listener any more.
    assert_eq!(
        http.get(gw.url("/metrics")).send().await.unwrap().status(),
        404
    );
    let mut text = String::new();
    for _ in 0..50 {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
        {
            text = r.text().await.unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        text.contains("# TYPE mcp_gateway_http_requests counter"),
        "{text}"
    );
}

/// Every series a panel of the dashboard queries is one `/metrics` exports.
#[tokio::test]
async fn the_dashboard_queries_only_exported_series() {
    let gw = TestGateway::start().await;
    let m = scrape(&gw).await;
    // The families the gateway declares (each shows in the exposition once it has a sample)…
    let declared: BTreeSet<String> = gw
        .auth
        .observer
        .metrics()
        .unwrap()
        .series_names()
        .into_iter()
        .collect();
    // …and those exposed now (`# TYPE name kind`), with the sample names each kind yields.
    let mut exported = BTreeSet::new();
    for l in m.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (name, kind) = (it.next().unwrap(), it.next().unwrap());
            match kind {
                "counter" => {
                    exported.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for s in ["_bucket", "_sum", "_count"] {
                        exported.insert(format!("{name}{s}"));
                    }
                }
                _ => {
                    exported.insert(name.to_string());
                }
            }
        }
    }
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/grafana/mcp-oauth-gateway.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");
    let mut queried = BTreeSet::new();
    for e in &exprs {
        for name in series_names(e) {
            queried.insert(name);
        }
    }
    let undeclared: Vec<&String> = exported.iter().filter(|e| !declared.contains(*e)).collect();
    assert!(
        undeclared.is_empty(),
        "exposed but not declared: {undeclared:?}"
    );
    let missing: Vec<&String> = queried.iter().filter(|q| !declared.contains(*q)).collect();
    assert!(missing.is_empty(), "queried but not exported: {missing:?}");
    assert!(queried.len() >= 10, "{queried:?}");
}

fn collect_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                if k == "expr"
                    && let Some(s) = v.as_str()
                {
                    out.push(s.to_string());
                } else {
                    collect_exprs(v, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The metric names in a PromQL expression: identifiers starting `mcp_gateway_`.
fn series_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("mcp_gateway_") {
        let start = i + at;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        names.push(expr[start..end].to_string());
        i = end;
    }
    names
}

#[tokio::test]
async fn json_logs_carry_the_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let audit = dir.path().join("audit.jsonl");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-oauth-gateway"))
        .args(["--log-format", "json"])
        .current_dir(dir.path())
        .env(
            "MCP_OAUTH_GATEWAY_SERVER__LISTEN",
            format!("127.0.0.1:{port}"),
        )
        .env("MCP_OAUTH_GATEWAY_AUDIT__PATH", &audit)
        .env_remove("MCP_OAUTH_GATEWAY_CONFIG")
        .env_remove("MCP_OAUTH_GATEWAY_LOG")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if l.contains("MCP endpoint") {
                break;
            }
        }
    })
    .await
    .unwrap();
    // A refused token request is logged (at info) while the request is served.
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/token"))
        .header("x-request-id", "json-log-test-1")
        .form(&[("grant_type", "password")])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());
    let line = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if l.contains("json-log-test-1") {
                return l;
            }
        }
        panic!("no log line with the request id");
    })
    .await
    .unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["span"]["id"], "json-log-test-1", "{v}");
    assert!(v["level"].is_string() && v["timestamp"].is_string());
    // The first start's account is in the audit log too (made by `first_start`).
    let records = audit_records(&audit, 1).await;
    assert_eq!(records[0]["action"], "user_created");
    assert_eq!(records[0]["actor"], "first_start");
    assert_eq!(records[0]["user"], "admin");
    let refused = audit_records(&audit, 2).await;
    assert!(
        refused.iter().any(|r| r["action"] == "token_refused"
            && r["request_id"] == "json-log-test-1"
            && r["grant_type"] == "password"),
        "{refused:#?}"
    );
    child.kill().await.unwrap();
}
