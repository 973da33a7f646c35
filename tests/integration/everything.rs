//! `@modelcontextprotocol/server-everything` (the reference server, from npm) behind the
//! gateway: tools, progress streamed as it happens (with its event ids), session deletion.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::json;

use crate::js::{NodeServer, node};
use crate::support::*;
use mcp_oauth_gateway::config::UpstreamConfig;

const SCRIPT: &str = "node_modules/@modelcontextprotocol/server-everything/dist/index.js";

async fn gateway_in_front(server: &NodeServer) -> TestGateway {
    let url = format!("http://127.0.0.1:{}/mcp", server.port);
    TestGateway::start_with(move |c| {
        c.upstreams.push(
            toml::from_str::<UpstreamConfig>(&format!("name = \"everything\"\nurl = \"{url}\""))
                .unwrap(),
        );
    })
    .await
}

fn post(
    gw: &TestGateway,
    token: &str,
    sid: Option<&str>,
    body: serde_json::Value,
) -> reqwest::RequestBuilder {
    let mut r = TestGateway::http()
        .post(gw.url("/mcp/everything"))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(&body);
    if let Some(s) = sid {
        r = r.header("mcp-session-id", s);
    }
    r
}

#[tokio::test]
async fn server_everything_streamable_http_through_the_gateway() {
    let Some(node) = node() else { return };
    let server = NodeServer::start(&node, SCRIPT, &["streamableHttp"]).await;
    let gw = gateway_in_front(&server).await;
    let t = authorize_for(&gw, "alice", &format!("{}/mcp/everything", gw.base)).await;

    // The rmcp client, with the gateway's token.
    let transport = StreamableHttpClientTransport::with_client(
        reqwest::Client::new(),
        StreamableHttpClientTransportConfig::with_uri(gw.url("/mcp/everything"))
            .auth_header(t.access_token.clone()),
    );
    let client = ().serve(transport).await.unwrap();
    let tools = client.list_all_tools().await.unwrap();
    assert!(
        tools
            .iter()
            .any(|t| t.name == "trigger-long-running-operation")
    );
    let r = client
        .call_tool(
            CallToolRequestParams::new("echo")
                .with_arguments(json!({"message": "hi"}).as_object().unwrap().clone()),
        )
        .await
        .unwrap();
    assert_eq!(r.content[0].as_text().unwrap().text, "Echo: hi");
    let _ = client.cancel().await;

    // Raw: a session, progress as it happens, resumption, deletion.
    let r = post(&gw, &t.access_token, None, json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}))
    .send()
    .await
    .unwrap();
    let sid = r.headers()["mcp-session-id"].to_str().unwrap().to_string();
    let _ = r.bytes().await;
    post(
        &gw,
        &t.access_token,
        Some(&sid),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .send()
    .await
    .unwrap();
    let started = Instant::now();
    let r = post(&gw, &t.access_token, Some(&sid), json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
        "name": "trigger-long-running-operation", "arguments": {"duration": 2, "steps": 4}, "_meta": {"progressToken": "lr"}}}))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let mut seen = String::new();
    let mut first = None;
    while let Some(chunk) = stream.next().await {
        seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        if first.is_none() && seen.contains("notifications/progress") {
            first = Some(started.elapsed());
        }
        if seen.contains("Long running operation completed") {
            break;
        }
    }
    let first = first.expect("progress events");
    assert!(
        started.elapsed() - first >= Duration::from_millis(900),
        "progress was not buffered"
    );
    assert!(
        seen.lines().any(|l| l.starts_with("id:")),
        "event ids are relayed for resumption"
    );
    drop(stream);
    // Deleting the session ends it.
    let r = TestGateway::http()
        .delete(gw.url("/mcp/everything"))
        .bearer_auth(&t.access_token)
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let r = post(
        &gw,
        &t.access_token,
        Some(&sid),
        json!({"jsonrpc": "2.0", "id": 8, "method": "tools/list"}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn the_legacy_sse_transport_is_proxied_with_the_endpoint_rewritten() {
    use tokio::io::AsyncBufReadExt;
    let Some(node) = node() else { return };
    let server = NodeServer::start(&node, SCRIPT, &["sse"]).await;
    let url = format!("http://127.0.0.1:{}/sse", server.port);
    let gw = TestGateway::start_with(move |c| {
        c.upstreams.push(
            toml::from_str::<UpstreamConfig>(&format!(
                "name = \"old\"\nurl = \"{url}\"\ntransport = \"sse\""
            ))
            .unwrap(),
        );
    })
    .await;
    let resource = format!("{}/mcp/old", gw.base);
    let alice = authorize_for(&gw, "alice", &resource).await;
    let bob = authorize_for(&gw, "bob", &resource).await;
    let r = TestGateway::http()
        .get(gw.url("/mcp/old"))
        .bearer_auth(&alice.access_token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let reader = tokio_util_lines(r);
    let mut lines = reader.lines();
    // The endpoint event points at the gateway, not at the upstream.
    let mut endpoint = None;
    while let Some(line) = lines.next_line().await.unwrap() {
        if let Some(d) = line.strip_prefix("data: ") {
            endpoint = Some(d.to_string());
            break;
        }
    }
    let endpoint = endpoint.unwrap();
    assert!(
        endpoint.starts_with("/mcp/old/messages?sessionId="),
        "{endpoint}"
    );
    let post = |token: &str, body: serde_json::Value| {
        TestGateway::http()
            .post(format!("{}{endpoint}", gw.direct))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let r = post(&alice.access_token, json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "old", "version": "1"}}}))
    .await
    .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    // Bob cannot post into alice's session.
    let r = post(
        &bob.access_token,
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 404);
    post(
        &alice.access_token,
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await
    .unwrap();
    post(&alice.access_token, tool_call()).await.unwrap();
    // Answers arrive on alice's GET stream.
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("Echo: legacy") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(got, "the tool's answer came back on the event stream");
}

fn tool_call() -> serde_json::Value {
    json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "legacy"}}})
}

/// A response body as an async line reader.
fn tokio_util_lines(r: reqwest::Response) -> tokio::io::BufReader<impl tokio::io::AsyncRead> {
    let stream = r.bytes_stream().map(|c| c.map_err(std::io::Error::other));
    tokio::io::BufReader::new(tokio_util::io::StreamReader::new(stream))
}
