//! The official MCP conformance suite's authorization-server scenarios, run against the
//! gateway; its interactive step (a person approving in a browser) is played by the test.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::js::{js_dir, node};
use crate::support::*;

#[tokio::test]
async fn conformance_authorization_server_scenarios_pass_without_warnings() {
    let Some(node) = node() else { return };
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let callback = format!("http://127.0.0.1:{port}/callback");
    let gw = TestGateway::start_with(|c| {
        c.clients.push(
            toml::from_str(&format!(
                r#"client_id = "conformance"
                   token_endpoint_auth_method = "none"
                   redirect_uris = ["{callback}"]"#
            ))
            .unwrap(),
        );
    })
    .await;
    let out_dir = tempfile::tempdir().unwrap();
    let bin_dir = js_dir().join("node_modules/.bin");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = Command::new(&node)
        .arg(bin_dir.join("conformance"))
        .args([
            "authorization",
            "--url",
            &gw.base,
            "--client-id",
            "conformance",
            "--resource",
            &gw.resource(),
        ])
        .args(["--port", &port.to_string(), "-o"])
        .arg(out_dir.path())
        .env("PATH", path)
        .env("NO_COLOR", "1")
        .current_dir(js_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut output = Vec::new();
    let authorize_prefix = format!("{}/authorize?", gw.base);
    let run = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with(&authorize_prefix) {
                // The person at the browser: sign in, allow, and land on the suite's callback.
                let location = approve(&TestGateway::browser(), &gw, &line, "alice").await;
                assert!(location.starts_with(&callback), "{location}");
                let r = TestGateway::http().get(&location).send().await.unwrap();
                assert!(r.status().is_success(), "the suite took the callback");
            }
            output.push(line);
        }
    };
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the suite finished in time");
    let status = child.wait().await.unwrap();
    let text = output.join("\n");
    assert!(status.success(), "conformance failed:\n{text}");
    let total = output
        .iter()
        .rev()
        .find(|l| l.starts_with("Total:"))
        .unwrap_or_else(|| panic!("no summary:\n{text}"));
    assert!(total.ends_with(" 0 failed"), "{text}");
    // Every recorded check, per scenario: all SUCCESS (no failure, no warning, nothing skipped).
    let mut statuses = Vec::new();
    collect_statuses(out_dir.path(), &mut statuses);
    assert!(statuses.len() >= 3, "{statuses:?}\n{text}");
    assert!(statuses.iter().all(|(_, s)| s == "SUCCESS"), "{statuses:?}");
    assert!(
        statuses
            .iter()
            .any(|(id, _)| id == "authorization-code-grant"),
        "{statuses:?}"
    );
}

fn collect_statuses(dir: &std::path::Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_statuses(&path, out);
        } else if path.extension().is_some_and(|e| e == "json") {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap_or_default();
            if let Some(checks) = v.as_array() {
                for c in checks {
                    if let (Some(id), Some(status)) = (c["id"].as_str(), c["status"].as_str()) {
                        out.push((id.to_string(), status.to_string()));
                    }
                }
            }
        }
    }
}

async fn run_server_suite(
    node: &std::path::Path,
    url: &str,
) -> std::collections::BTreeMap<(String, String), String> {
    let out_dir = tempfile::tempdir().unwrap();
    let bin_dir = js_dir().join("node_modules/.bin");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        Command::new(node)
            .arg(bin_dir.join("conformance"))
            .args(["server", "--url", url, "-o"])
            .arg(out_dir.path())
            .env("PATH", path)
            .env("NO_COLOR", "1")
            .current_dir(js_dir())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the server suite finished in time")
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // Results: one folder per scenario, named server-<scenario>-<time>.
    let mut results = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(out_dir.path()).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let name = name.trim_start_matches("server-");
        // Cut the timestamp: the first "-YYYY-MM-DDT".
        let b = name.as_bytes();
        let cut = (0..b.len().saturating_sub(11))
            .find(|&i| {
                b[i] == b'-'
                    && b[i + 1..i + 5].iter().all(u8::is_ascii_digit)
                    && b[i + 5] == b'-'
                    && b[i + 11] == b'T'
            })
            .unwrap_or(name.len());
        let scenario = name[..cut].to_string();
        let mut statuses = Vec::new();
        collect_statuses(&dir, &mut statuses);
        for (i, (id, status)) in statuses.into_iter().enumerate() {
            results.insert((scenario.clone(), format!("{i}:{id}")), status);
        }
    }
    assert!(results.len() > 20, "the suite ran: {text}");
    results
}

#[tokio::test]
async fn conformance_server_scenarios_pass_through_the_gateway_as_they_pass_directly() {
    let Some(node) = node() else { return };
    let server = crate::js::NodeServer::start(
        &node,
        "node_modules/@modelcontextprotocol/server-everything/dist/index.js",
        &["streamableHttp"],
    )
    .await;
    let upstream = format!("http://127.0.0.1:{}/mcp", server.port);
    let up = upstream.clone();
    let gw = TestGateway::start_with(move |c| {
        c.upstreams
            .push(toml::from_str(&format!("name = \"everything\"\nurl = \"{up}\"")).unwrap());
    })
    .await;
    let t = authorize_for(&gw, "alice", &format!("{}/mcp/everything", gw.base)).await;
    let forwarder = Forwarder::bearer(gw.direct.clone(), t.access_token.clone()).await;
    let direct = run_server_suite(&node, &upstream).await;
    let through = run_server_suite(&node, &format!("{}/mcp/everything", forwarder.url)).await;
    drop(forwarder);
    let mut lost = Vec::new();
    let mut gained = Vec::new();
    for (key, status) in &direct {
        let via = through.get(key).map(String::as_str).unwrap_or("MISSING");
        if status == "SUCCESS" && via != "SUCCESS" {
            lost.push(format!("{key:?}: {via}"));
        }
        if status != "SUCCESS" && via == "SUCCESS" {
            gained.push(format!("{key:?}"));
        }
    }
    assert!(
        lost.is_empty(),
        "checks that pass directly but not through the gateway: {lost:#?}"
    );
    // What the gateway may add of its own: DNS-rebinding protection, and a terminated
    // session answering 404 (it forgets the session's binding on DELETE).
    assert!(
        gained
            .iter()
            .all(|g| g.contains("dns-rebinding") || g.contains("session-terminated-returns-404")),
        "{gained:?}"
    );
    eprintln!(
        "conformance server suite: {} checks pass directly, the same {} pass through the gateway (plus {:?})",
        direct.values().filter(|s| *s == "SUCCESS").count(),
        direct.values().filter(|s| *s == "SUCCESS").count(),
        gained
    );
}
