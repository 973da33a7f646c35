//! stdio MCP servers behind the gateway: `server-everything stdio` (npm), shared and per
//! user, progress streamed, idle processes reaped, crashes answered rather than hung.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::js::{js_dir, node};
use crate::support::*;
use mcp_oauth_gateway::config::UpstreamConfig;

const SCRIPT: &str = "node_modules/@modelcontextprotocol/server-everything/dist/index.js";

fn stdio_upstream(name: &str, command: Vec<String>, extra: &str) -> UpstreamConfig {
    let cmd = command
        .iter()
        .map(|c| format!("{c:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    toml::from_str(&format!("name = \"{name}\"\ncommand = [{cmd}]\n{extra}")).unwrap()
}

fn everything(node: &std::path::Path) -> Vec<String> {
    vec![
        node.display().to_string(),
        js_dir().join(SCRIPT).display().to_string(),
        "stdio".into(),
    ]
}

async fn post(
    gw: &TestGateway,
    path: &str,
    token: &str,
    body: Value,
    sse: bool,
) -> reqwest::Response {
    TestGateway::http()
        .post(gw.url(path))
        .bearer_auth(token)
        .header(
            "accept",
            if sse {
                "application/json, text/event-stream"
            } else {
                "application/json"
            },
        )
        .header("mcp-protocol-version", "2025-06-18")
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn tool(id: i64, name: &str, args: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": args}})
}

#[tokio::test]
async fn a_shared_stdio_server_serves_many_clients_and_streams_progress() {
    let Some(node) = node() else { return };
    let cmd = everything(&node);
    let gw =
        TestGateway::start_with(move |c| c.upstreams.push(stdio_upstream("ev", cmd, ""))).await;
    let resource = format!("{}/mcp/ev", gw.base);
    let alice = authorize_for(&gw, "alice", &resource).await;
    let bob = authorize_for(&gw, "bob", &resource).await;
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}});
    let v: Value = post(&gw, "/mcp/ev", &alice.access_token, init, false)
        .await
        .json()
        .await
        .unwrap();
    assert!(v["result"]["serverInfo"]["name"].is_string(), "{v}");
    // The same JSON-RPC id from two clients at once: each gets its own answer.
    let (a, b) = tokio::join!(
        post(
            &gw,
            "/mcp/ev",
            &alice.access_token,
            tool(7, "echo", json!({"message": "from alice"})),
            false
        ),
        post(
            &gw,
            "/mcp/ev",
            &bob.access_token,
            tool(7, "echo", json!({"message": "from bob"})),
            false
        ),
    );
    let (a, b): (Value, Value) = (a.json().await.unwrap(), b.json().await.unwrap());
    assert_eq!(
        (a["id"].as_i64(), a["result"]["content"][0]["text"].as_str()),
        (Some(7), Some("Echo: from alice"))
    );
    assert_eq!(
        (b["id"].as_i64(), b["result"]["content"][0]["text"].as_str()),
        (Some(7), Some("Echo: from bob"))
    );
    // Progress, with the client's own token, as it happens.
    let started = Instant::now();
    let mut call = tool(
        8,
        "trigger-long-running-operation",
        json!({"duration": 2, "steps": 4}),
    );
    call["params"]["_meta"] = json!({"progressToken": "mine"});
    let r = post(&gw, "/mcp/ev", &alice.access_token, call, true).await;
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut stream = r.bytes_stream();
    let (mut seen, mut first) = (String::new(), None);
    while let Some(chunk) = stream.next().await {
        seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        if first.is_none() && seen.contains("\"progressToken\":\"mine\"") {
            first = Some(started.elapsed());
        }
        if seen.contains("\"id\":8") {
            break;
        }
    }
    let first = first.expect("progress with the client's token");
    assert!(
        started.elapsed() - first >= Duration::from_millis(900),
        "streamed, not buffered: {seen}"
    );
    assert!(seen.contains("Long running operation completed"));
    // GET has no stream to offer on this bridge.
    let r = TestGateway::http()
        .get(gw.url("/mcp/ev"))
        .bearer_auth(&alice.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test]
async fn per_user_processes_get_their_own_environment_and_idle_ones_are_reaped() {
    let Some(node) = node() else { return };
    let cmd = everything(&node);
    let gw = TestGateway::start_with(move |c| {
        c.upstreams.push(stdio_upstream(
            "mine",
            cmd,
            "per_user = true\nidle_secs = 60\n[per_user_env]\nGW_USER = \"{user}\"\n[env]\nSHARED_SETTING = \"on\"\n",
        ))
    })
    .await;
    let resource = format!("{}/mcp/mine", gw.base);
    for user in ["alice", "bob"] {
        let t = authorize_for(&gw, user, &resource).await;
        let v: Value = post(
            &gw,
            "/mcp/mine",
            &t.access_token,
            tool(1, "get-env", json!({})),
            false,
        )
        .await
        .json()
        .await
        .unwrap();
        let env: Value =
            serde_json::from_str(v["result"]["content"][0]["text"].as_str().unwrap()).unwrap();
        assert_eq!(env["GW_USER"], user);
        assert_eq!(env["SHARED_SETTING"], "on");
        assert!(
            env.get("MCP_OAUTH_GATEWAY_CONFIG").is_none(),
            "the gateway's own environment is not passed on"
        );
    }
    let stdio = gw.proxy_stdio("mine");
    assert_eq!(stdio.running().await, 2);
    gw.clock.advance(61);
    stdio.reap_idle().await;
    assert_eq!(stdio.running().await, 0);
    let t = authorize_for(&gw, "alice", &resource).await;
    let r = post(
        &gw,
        "/mcp/mine",
        &t.access_token,
        tool(2, "echo", json!({"message": "again"})),
        false,
    )
    .await;
    assert_eq!(r.status(), 200, "started again on demand");
}

#[tokio::test]
async fn a_server_that_dies_gets_an_answer_not_a_hang() {
    let gw = TestGateway::start_with(|c| {
        c.upstreams.push(stdio_upstream(
            "broken",
            vec!["sh".into(), "-c".into(), "exit 3".into()],
            "",
        ));
    })
    .await;
    let t = authorize_for(&gw, "alice", &format!("{}/mcp/broken", gw.base)).await;
    let started = Instant::now();
    let r = post(
        &gw,
        "/mcp/broken",
        &t.access_token,
        tool(4, "echo", json!({})),
        false,
    )
    .await;
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["id"], 4);
    assert!(v["error"]["message"].as_str().unwrap().contains("broken"));
    // Right after a failure it backs off, and says when to retry.
    let r = post(
        &gw,
        "/mcp/broken",
        &t.access_token,
        tool(5, "echo", json!({})),
        false,
    )
    .await;
    assert_eq!(r.status(), 503);
    assert!(
        r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}
