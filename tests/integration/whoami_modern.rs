//! The built-in whoami server on the stateless MCP wire (revision 2026-07-28: `_meta` on
//! every request, the `Mcp-Method`/`Mcp-Name` headers, `server/discover`), through the
//! gateway's bearer check, beside the older wire it still speaks.

use serde_json::{Value, json};

use crate::support::*;

const MODERN: &str = "2026-07-28";

fn meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientInfo": {"name": "whoami-test", "version": "1.0.0"},
        "io.modelcontextprotocol/clientCapabilities": {}
    })
}

/// A POST to whoami with `headers` besides the bearer and the media types: status and body.
async fn post(
    gw: &TestGateway,
    token: &str,
    headers: &[(&str, &str)],
    body: Value,
) -> (u16, Value) {
    let mut req = TestGateway::http()
        .post(gw.url("/mcp"))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A request of the stateless wire, with the headers a conforming client sends.
async fn modern(
    gw: &TestGateway,
    token: &str,
    id: Value,
    method: &str,
    name: Option<&str>,
    params: Value,
) -> (u16, Value) {
    let mut headers = vec![("mcp-protocol-version", MODERN), ("mcp-method", method)];
    if let Some(n) = name {
        headers.push(("mcp-name", n));
    }
    post(
        gw,
        token,
        &headers,
        json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
    )
    .await
}

#[tokio::test]
async fn whoami_describes_itself_by_server_discover() {
    let gw = TestGateway::start().await;
    let a = authorize_user(&gw, "bob").await;
    let t = &a.access_token;
    // A large integer id, as clients that number by the clock send, comes back as sent.
    let id = json!(1_796_195_665_165_u64);
    let (s, v) = modern(
        &gw,
        t,
        id.clone(),
        "server/discover",
        None,
        json!({"_meta": meta()}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["id"], id);
    assert!(v.get("error").is_none(), "{v}");
    let r = &v["result"];
    assert_eq!(r["resultType"], "complete");
    let versions: Vec<&str> = r["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        versions.contains(&MODERN) && versions.contains(&"2025-11-25"),
        "{versions:?}"
    );
    assert!(r["capabilities"]["tools"].is_object(), "{r}");
    assert!(r["ttlMs"].as_u64().is_some(), "{r}");
    assert_eq!(r["cacheScope"], "private");
    assert_eq!(
        r["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
        "whoami"
    );
    // clientInfo is optional.
    let mut bare = meta();
    bare.as_object_mut()
        .unwrap()
        .remove("io.modelcontextprotocol/clientInfo");
    let (s, v) = modern(
        &gw,
        t,
        json!(2),
        "server/discover",
        None,
        json!({"_meta": bare}),
    )
    .await;
    assert_eq!(
        (s, v["result"]["resultType"].as_str()),
        (200, Some("complete"))
    );
    // Every list is served, with caching hints; the tool list names whoami.
    for (method, key) in [
        ("tools/list", "tools"),
        ("prompts/list", "prompts"),
        ("resources/list", "resources"),
        ("resources/templates/list", "resourceTemplates"),
    ] {
        let (s, v) = modern(&gw, t, json!(3), method, None, json!({"_meta": meta()})).await;
        assert_eq!(s, 200, "{method}: {v}");
        let r = &v["result"];
        assert!(r[key].is_array(), "{method}: {v}");
        assert_eq!(r["resultType"], "complete", "{method}");
        assert!(r["ttlMs"].as_u64().is_some(), "{method}: {v}");
        assert_eq!(r["cacheScope"], "private", "{method}");
    }
    let (_, v) = modern(
        &gw,
        t,
        json!(4),
        "tools/list",
        None,
        json!({"_meta": meta()}),
    )
    .await;
    assert_eq!(v["result"]["tools"][0]["name"], "whoami");
}

#[tokio::test]
async fn whoami_runs_its_tool_on_the_stateless_wire_when_the_headers_agree() {
    let gw = TestGateway::start().await;
    let a = authorize_user(&gw, "bob").await;
    let t = &a.access_token;
    let call = |name: &str| json!({"name": name, "arguments": {}, "_meta": meta()});
    let (s, v) = modern(
        &gw,
        t,
        json!("c-1"),
        "tools/call",
        Some("whoami"),
        call("whoami"),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["id"], "c-1");
    let r = &v["result"];
    assert_eq!(r["resultType"], "complete");
    assert_eq!(r["isError"], false);
    assert_eq!(r["structuredContent"]["user"], "bob");
    assert_eq!(r["structuredContent"]["client_id"], a.client_id);
    assert_eq!(r["structuredContent"]["resource"], gw.resource());
    // Who someone is is not cacheable.
    assert!(r.get("ttlMs").is_none(), "{r}");
    // The header names another tool than the body: refused, with the request's id.
    let (s, v) = modern(
        &gw,
        t,
        json!("c-2"),
        "tools/call",
        Some("other"),
        call("whoami"),
    )
    .await;
    assert_eq!((s, v["error"]["code"].as_i64()), (400, Some(-32020)), "{v}");
    assert_eq!(v["id"], "c-2");
    assert!(v.get("result").is_none());
    // So are a missing Mcp-Name, a missing Mcp-Method and a method header in other case.
    let body = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": call("whoami")});
    for headers in [
        vec![
            ("mcp-protocol-version", MODERN),
            ("mcp-method", "tools/call"),
        ],
        vec![("mcp-protocol-version", MODERN), ("mcp-name", "whoami")],
        vec![
            ("mcp-protocol-version", MODERN),
            ("mcp-method", "TOOLS/CALL"),
            ("mcp-name", "whoami"),
        ],
    ] {
        let (s, v) = post(&gw, t, &headers, body.clone()).await;
        assert_eq!(
            (s, v["error"]["code"].as_i64()),
            (400, Some(-32020)),
            "{headers:?}: {v}"
        );
        assert_eq!(v["id"], 5);
    }
    // An unknown tool is a protocol error, not a result.
    let (_, v) = modern(&gw, t, json!(6), "tools/call", Some("nope"), call("nope")).await;
    assert_eq!(v["error"]["code"], -32602, "{v}");
    assert_eq!(v["id"], 6);
}

#[tokio::test]
async fn whoami_refuses_stateless_requests_it_cannot_serve() {
    let gw = TestGateway::start().await;
    let a = authorize_user(&gw, "bob").await;
    let t = &a.access_token;
    // No protocol version in _meta (the header alone does not make a request).
    let (s, v) = modern(
        &gw,
        t,
        json!(10),
        "server/discover",
        None,
        json!({"_meta": {"io.modelcontextprotocol/clientCapabilities": {}}}),
    )
    .await;
    assert_eq!((s, v["error"]["code"].as_i64()), (400, Some(-32602)), "{v}");
    assert_eq!(v["id"], 10);
    // No _meta at all, and no client capabilities.
    let (s, v) = modern(&gw, t, json!(11), "server/discover", None, json!({})).await;
    assert_eq!(
        (s, v["error"]["code"].as_i64(), v["id"].as_i64()),
        (400, Some(-32602), Some(11))
    );
    let (s, v) = modern(
        &gw,
        t,
        json!(12),
        "server/discover",
        None,
        json!({"_meta": {"io.modelcontextprotocol/protocolVersion": MODERN}}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_i64(), v["id"].as_i64()),
        (400, Some(-32602), Some(12))
    );
    // A version this server does not speak: the versions it does, and the one asked for.
    let (_, discover) = modern(
        &gw,
        t,
        json!(1),
        "server/discover",
        None,
        json!({"_meta": meta()}),
    )
    .await;
    let mut unknown = meta();
    unknown["io.modelcontextprotocol/protocolVersion"] = json!("v999.0.0");
    let (s, v) = post(
        &gw,
        t,
        &[("mcp-protocol-version", "v999.0.0"), ("mcp-method", "server/discover")],
        json!({"jsonrpc": "2.0", "id": 13, "method": "server/discover", "params": {"_meta": unknown.clone()}}),
    )
    .await;
    assert_eq!((s, v["error"]["code"].as_i64()), (400, Some(-32022)), "{v}");
    assert_eq!(v["id"], 13);
    assert_eq!(v["error"]["data"]["requested"], "v999.0.0");
    assert_eq!(
        v["error"]["data"]["supported"],
        discover["result"]["supportedVersions"]
    );
    // The header and _meta disagree: a mismatch, whatever either says.
    let (s, v) = post(
        &gw,
        t,
        &[("mcp-protocol-version", MODERN), ("mcp-method", "server/discover")],
        json!({"jsonrpc": "2.0", "id": 14, "method": "server/discover", "params": {"_meta": unknown}}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_i64(), v["id"].as_i64()),
        (400, Some(-32020), Some(14))
    );
    // What this revision removed is not found, like any unknown method.
    for method in [
        "initialize",
        "ping",
        "logging/setLevel",
        "resources/subscribe",
        "unknown/method",
    ] {
        let mut params = json!({"_meta": meta()});
        if method == "initialize" {
            params["protocolVersion"] = json!(MODERN);
            params["capabilities"] = json!({});
            params["clientInfo"] = json!({"name": "t", "version": "1"});
        }
        if method == "resources/subscribe" {
            params["uri"] = json!("file:///x");
        }
        let name = (method == "resources/subscribe").then_some("file:///x");
        let (s, v) = modern(&gw, t, json!(15), method, name, params).await;
        assert_eq!(
            (s, v["error"]["code"].as_i64()),
            (404, Some(-32601)),
            "{method}: {v}"
        );
        assert_eq!(v["id"], 15, "{method}");
        assert!(v.get("result").is_none(), "{method}");
    }
    // One message per POST; a notification is accepted without an answer.
    let (s, _) = post(
        &gw,
        t,
        &[("mcp-protocol-version", MODERN), ("mcp-method", "server/discover")],
        json!([{"jsonrpc": "2.0", "id": 16, "method": "server/discover", "params": {"_meta": meta()}}]),
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = post(
        &gw,
        t,
        &[
            ("mcp-protocol-version", MODERN),
            ("mcp-method", "notifications/cancelled"),
        ],
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1, "_meta": meta()}}),
    )
    .await;
    assert_eq!(s, 202);
}

#[tokio::test]
async fn whoami_still_negotiates_older_revisions_and_never_the_stateless_one() {
    let gw = TestGateway::start().await;
    let a = authorize_user(&gw, "bob").await;
    let t = &a.access_token;
    let initialize = |version: &str| {
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": version,
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"}
        }})
    };
    let (s, v) = post(&gw, t, &[], initialize("2025-11-25")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["result"]["protocolVersion"], "2025-11-25");
    assert_eq!(v["result"]["serverInfo"]["name"], "whoami");
    // Asked by an older client for the stateless revision, initialize offers the newest one
    // it can negotiate: the stateless revision has no initialize to continue with.
    let (s, v) = post(&gw, t, &[], initialize(MODERN)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["result"]["protocolVersion"], "2025-11-25");
    // The older wire keeps its shapes (no resultType, no caching hints) and its methods.
    let (s, v) = post(
        &gw,
        t,
        &[("mcp-protocol-version", "2025-11-25")],
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["result"]["tools"][0]["name"], "whoami");
    assert!(v["result"].get("resultType").is_none(), "{v}");
    assert!(v["result"].get("ttlMs").is_none(), "{v}");
    let (s, v) = post(
        &gw,
        t,
        &[("mcp-protocol-version", "2025-11-25")],
        json!({"jsonrpc": "2.0", "id": 3, "method": "ping"}),
    )
    .await;
    assert_eq!((s, &v["result"]), (200, &json!({})));
    // Mcp-Method is optional there, but checked when sent.
    let (s, v) = post(
        &gw,
        t,
        &[
            ("mcp-protocol-version", "2025-11-25"),
            ("mcp-method", "tools/list"),
        ],
        json!({"jsonrpc": "2.0", "id": 4, "method": "ping"}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_i64(), v["id"].as_i64()),
        (400, Some(-32020), Some(4))
    );
    // A version header naming no revision at all.
    let (s, v) = post(
        &gw,
        t,
        &[("mcp-protocol-version", "1999-01-01")],
        json!({"jsonrpc": "2.0", "id": 5, "method": "ping"}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_i64(), v["id"].as_i64()),
        (400, Some(-32600), Some(5))
    );
}
