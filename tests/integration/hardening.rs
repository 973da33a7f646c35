//! What an attacker tried against a running gateway, and what must not get through: parser
//! differentials in front of a lenient upstream, repeated session headers and parameters,
//! spoofed identity headers. The upstream here records everything that reaches it.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::{Value, json};

use crate::support::*;
use mcp_oauth_gateway::config::{UpstreamConfig, UpstreamCredentials};

/// What reached the upstream: headers, query and body of every request.
type Request = (HeaderMap, Option<String>, Bytes);

#[derive(Default, Clone)]
pub struct Seen(Arc<Mutex<Vec<Request>>>);

impl Seen {
    pub fn bodies(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, _, b)| String::from_utf8_lossy(b).into_owned())
            .collect()
    }
    pub fn last(&self) -> Request {
        self.0.lock().unwrap().last().cloned().expect("a request")
    }
    pub fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// How a Go `encoding/json` upstream would read a message: keys matched without regard to
/// case (Unicode simple folding), the last match winning. What it would execute.
fn go_style_method_and_tool(body: &str) -> (Option<String>, Option<String>) {
    fn fold(s: &str) -> String {
        s.chars()
            .map(|c| match c {
                '\u{017F}' => 's',
                '\u{212A}' => 'k',
                c => c.to_ascii_lowercase(),
            })
            .collect()
    }
    fn pick<'a>(obj: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
        // serde_json keeps the last of repeated keys, as Go does.
        obj.iter()
            .filter(|(k, _)| fold(k) == key)
            .map(|(_, v)| v)
            .next_back()
    }
    let Ok(Value::Object(m)) = serde_json::from_str::<Value>(body) else {
        return (None, None);
    };
    let method = pick(&m, "method").and_then(Value::as_str).map(String::from);
    let tool = pick(&m, "params")
        .and_then(Value::as_object)
        .and_then(|p| pick(p, "name"))
        .and_then(Value::as_str)
        .map(String::from);
    (method, tool)
}

/// An upstream that answers every JSON-RPC request with an empty result, and speaks the
/// legacy HTTP+SSE transport with the Python SDK's `session_id` spelling.
pub struct Recorder {
    pub url: String,
    pub seen: Seen,
}

impl Recorder {
    pub async fn start() -> Self {
        let seen = Seen::default();
        async fn mcp(
            State(seen): State<Seen>,
            headers: HeaderMap,
            RawQuery(q): RawQuery,
            body: Bytes,
        ) -> axum::response::Response {
            seen.0.lock().unwrap().push((headers, q, body.clone()));
            let id = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("id").cloned())
                .unwrap_or(Value::Null);
            axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": {}})).into_response()
        }
        async fn sse() -> axum::response::Response {
            let events = futures_util::stream::iter(vec![Ok::<_, std::convert::Infallible>(
                Bytes::from("event: endpoint\ndata: /messages/?session_id=S1\n\n"),
            )])
            .chain(futures_util::stream::pending());
            (
                [("content-type", "text/event-stream")],
                axum::body::Body::from_stream(events),
            )
                .into_response()
        }
        async fn messages(
            State(seen): State<Seen>,
            headers: HeaderMap,
            RawQuery(q): RawQuery,
            body: Bytes,
        ) -> StatusCode {
            seen.0.lock().unwrap().push((headers, q, body));
            StatusCode::ACCEPTED
        }
        use futures_util::StreamExt;
        let app = axum::Router::new()
            .route("/mcp", axum::routing::post(mcp))
            .route("/sse", axum::routing::get(sse))
            .route("/messages/", axum::routing::post(messages))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}"),
            seen,
        }
    }
}

fn upstream(toml_text: &str) -> UpstreamConfig {
    toml::from_str(toml_text).unwrap()
}

async fn post(gw: &TestGateway, path: &str, token: &str, body: &str) -> (u16, Value) {
    post_with(gw, path, token, body, &[]).await
}

async fn post_with(
    gw: &TestGateway,
    path: &str,
    token: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut req = TestGateway::http()
        .post(gw.url(path))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn tool_rules_judge_exactly_what_a_lenient_upstream_would_run() {
    let rec = Recorder::start().await;
    let url = format!("{}/mcp", rec.url);
    let gw = TestGateway::start_with(move |c| {
        let mut u = upstream(&format!("name = \"go\"\nurl = \"{url}\""));
        u.tools = toml::from_str::<toml::Table>("[[r]]\ntools = [\"drop_*\"]\ndeny = true")
            .unwrap()["r"]
            .clone()
            .try_into()
            .unwrap();
        c.upstreams.push(u);
    })
    .await;
    let t = authorize_for(&gw, "alice", &format!("{}/mcp/go", gw.base)).await;
    let attacks = [
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"Name":"drop_table"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"NAME":"drop_table"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","NAME":"drop_table"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","name":"drop_table"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"ping","Method":"tools/call","params":{"name":"drop_table"}}"#,
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"param\u{017F}\":{\"name\":\"drop_table\"},\"params\":{\"name\":\"echo\"}}",
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":["drop_table"]}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["drop_table"]}"#,
        r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"Name":"drop_table"}}]"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"drop_table"}}"#,
    ];
    for body in attacks {
        // The attack works on a lenient reader: it would run drop_table (or refuse itself).
        let (status, v) = post(&gw, "/mcp/go", &t.access_token, body).await;
        assert!(
            status == 400 || v["error"]["code"] == -32003,
            "{body}: {status} {v}"
        );
        if status == 400 {
            assert_eq!(v["error"]["code"], -32600, "{body}: {v}");
            assert!(v["error"]["message"].is_string());
        }
    }
    assert_eq!(
        rec.seen.count(),
        0,
        "nothing ambiguous reached the upstream"
    );
    // What a lenient reader and the gateway agree on passes.
    let ok = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"Name":"drop_table"}}}"#;
    let (status, v) = post(&gw, "/mcp/go", &t.access_token, ok).await;
    assert_eq!((status, &v["id"]), (200, &json!(7)), "{v}");
    for b in rec.seen.bodies() {
        assert_eq!(
            go_style_method_and_tool(&b),
            (Some("tools/call".into()), Some("echo".into())),
            "{b}"
        );
    }
    // Declared in a charset an upstream would decode otherwise (UTF-7 reads as ASCII to the
    // gateway: "+AHQAbwBvAGwAcw-/call" is "tools/call"), or compressed: refused.
    let utf7 = r#"{"jsonrpc":"2.0","id":1,"method":"+AHQAbwBvAGwAcw-/call","params":{"name":"+AGQAcgBvAHAAXwB0AGEAYgBsAGU-"}}"#;
    for (ct, ce) in [
        ("application/json; charset=utf-7", "identity"),
        ("application/json; charset=utf-16", "identity"),
        ("text/plain", "identity"),
        ("application/json", "gzip"),
    ] {
        let r = TestGateway::http()
            .post(gw.url("/mcp/go"))
            .bearer_auth(&t.access_token)
            .header("content-type", ct)
            .header("content-encoding", ce)
            .body(utf7)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 415, "{ct} {ce}");
    }
    assert_eq!(rec.seen.count(), 1);
    // Not JSON at all: a parse error, and nothing forwarded.
    let (status, v) = post(&gw, "/mcp/go", &t.access_token, "{\"jsonrpc\":").await;
    assert_eq!((status, v["error"]["code"].as_i64()), (400, Some(-32700)));
    assert_eq!(rec.seen.count(), 1);
}

#[tokio::test]
async fn mcp_headers_must_match_the_body_before_anything_is_forwarded() {
    let rec = Recorder::start().await;
    let url = format!("{}/mcp", rec.url);
    let gw = TestGateway::start_with(move |c| {
        c.upstreams
            .push(upstream(&format!("name = \"m\"\nurl = \"{url}\"")));
    })
    .await;
    let t = authorize_for(&gw, "alice", &format!("{}/mcp/m", gw.base)).await;
    let call = r#"{"jsonrpc":"2.0","id":"c1","method":"tools/call","params":{"name":"echo","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#;
    let modern = ("mcp-protocol-version", "2026-07-28");
    for headers in [
        vec![
            modern,
            ("mcp-method", "tools/call"),
            ("mcp-name", "drop_table"),
        ],
        vec![modern, ("mcp-method", "tools/list"), ("mcp-name", "echo")],
        vec![modern, ("mcp-method", "tools/call")],
        vec![modern, ("mcp-name", "echo")],
        vec![
            ("mcp-protocol-version", "2025-11-25"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
        ],
    ] {
        let (status, v) = post_with(&gw, "/mcp/m", &t.access_token, call, &headers).await;
        assert_eq!(status, 400, "{headers:?}: {v}");
        assert_eq!(v["error"]["code"], -32020, "{v}");
        assert_eq!(v["id"], "c1", "the error answers the request's id");
    }
    assert_eq!(rec.seen.count(), 0);
    let (status, _) = post_with(
        &gw,
        "/mcp/m",
        &t.access_token,
        call,
        &[modern, ("mcp-method", "tools/call"), ("mcp-name", "echo")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(rec.seen.count(), 1);
    // A second session header beside the one that would be checked.
    let ping = r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#;
    let (status, v) = post_with(
        &gw,
        "/mcp/m",
        &t.access_token,
        ping,
        &[
            ("mcp-session-id", "mine"),
            ("mcp-session-id", "someone-elses"),
        ],
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], -32600);
    assert_eq!(rec.seen.count(), 1);
}

#[tokio::test]
async fn identity_headers_cannot_be_spoofed_with_underscores() {
    let rec = Recorder::start().await;
    let url = format!("{}/mcp", rec.url);
    let gw = TestGateway::start_with(move |c| {
        let mut u = upstream(&format!("name = \"id\"\nurl = \"{url}\""));
        u.credentials = UpstreamCredentials::Identity;
        c.upstreams.push(u);
        let mut k = upstream(&format!("name = \"key\"\nurl = \"{url}\""));
        k.credentials = UpstreamCredentials::Header {
            name: "X-Api-Key".into(),
            value: "the-real-key".into(),
        };
        c.upstreams.push(k);
    })
    .await;
    let t = authorize_for(&gw, "alice", &format!("{}/mcp/id", gw.base)).await;
    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let spoofed = [
        ("X_Forwarded_User", "root"),
        ("x-forwarded_email", "root@example.com"),
        ("X_FORWARDED_GROUPS", "admins"),
        ("X-Real-IP", "10.0.0.1"),
        ("X_Real_IP", "10.0.0.1"),
        ("True-Client-IP", "10.0.0.1"),
        ("Forwarded", "for=10.0.0.1"),
        ("X_Forwarded_For", "10.0.0.1"),
    ];
    let (status, _) = post_with(&gw, "/mcp/id", &t.access_token, ping, &spoofed).await;
    assert_eq!(status, 200);
    let (headers, _, _) = rec.seen.last();
    for (name, _) in spoofed {
        let lower = name.to_ascii_lowercase();
        if lower.replace('_', "-") == "x-forwarded-user" {
            continue;
        }
        assert!(
            !headers.contains_key(lower.as_str()),
            "{name} reached the upstream"
        );
    }
    assert_eq!(headers["x-forwarded-user"], "alice");
    assert_eq!(headers.get_all("x-forwarded-user").iter().count(), 1);
    assert!(headers.get("x_forwarded_user").is_none());
    // The configured credential's header cannot be doubled under another spelling either.
    let t = authorize_for(&gw, "alice", &format!("{}/mcp/key", gw.base)).await;
    let (status, _) = post_with(
        &gw,
        "/mcp/key",
        &t.access_token,
        ping,
        &[
            ("X_Api_Key", "client-chosen"),
            ("x-api-key", "client-chosen"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let (headers, _, _) = rec.seen.last();
    assert_eq!(headers["x-api-key"], "the-real-key");
    assert_eq!(headers.get_all("x-api-key").iter().count(), 1);
    assert!(headers.get("x_api_key").is_none());
}

#[tokio::test]
async fn legacy_sse_forwards_only_the_session_parameter_it_checked() {
    let rec = Recorder::start().await;
    let url = format!("{}/sse", rec.url);
    let gw = TestGateway::start_with(move |c| {
        c.upstreams.push(upstream(&format!(
            "name = \"py\"\nurl = \"{url}\"\ntransport = \"sse\""
        )));
    })
    .await;
    let resource = format!("{}/mcp/py", gw.base);
    let alice = authorize_for(&gw, "alice", &resource).await;
    let bob = authorize_for(&gw, "bob", &resource).await;
    let mut stream = TestGateway::http()
        .get(gw.url("/mcp/py"))
        .bearer_auth(&alice.access_token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), stream.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let endpoint = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap()
        .trim()
        .to_string();
    assert!(
        endpoint.ends_with("/mcp/py/messages?session_id=S1"),
        "the Python SDK's spelling is understood and kept: {endpoint}"
    );
    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let messages = "/mcp/py/messages";
    for query in [
        "?session_id=S1&session_id=S2",
        "?session_id=S1&sessionId=S2",
        "?sessionId=S2&session_id=S1",
        "?session_id=S1&x=1&x=2",
    ] {
        let (status, _) = post(
            &gw,
            &format!("{messages}{query}"),
            &alice.access_token,
            ping,
        )
        .await;
        assert_eq!(status, 400, "{query}");
    }
    assert_eq!(rec.seen.count(), 0);
    let (status, _) = post(
        &gw,
        &format!("{messages}?session_id=S1"),
        &bob.access_token,
        ping,
    )
    .await;
    assert_eq!(status, 404, "another user's session is no session");
    let (status, _) = post(
        &gw,
        &format!("{messages}?session_id=S1&extra=1"),
        &alice.access_token,
        ping,
    )
    .await;
    assert_eq!(status, 202);
    let (_, query, _) = rec.seen.last();
    assert_eq!(
        query.as_deref(),
        Some("session_id=S1"),
        "only what was checked"
    );
}
