//! `whoami`: a built-in MCP server with one tool that returns who the caller is (user, client,
//! scopes). The "httpbin" of MCP auth: the way to check a client's OAuth works before a real
//! upstream is configured. Stateless Streamable HTTP: every POST is answered with JSON.
//!
//! It serves two protocol eras on one endpoint. Revisions 2024-11-05 through 2025-11-25
//! negotiate a version with `initialize`; revision 2026-07-28 has no handshake at all: every
//! request carries its version and the client's capabilities in `params._meta`, repeats its
//! method (and tool) in the `Mcp-Method` and `Mcp-Name` headers, and `server/discover` says
//! what the server speaks. Which era a POST belongs to is [`message::is_stateless`]'s call.

use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value, json};

use crate::authorization::token::Principal;
use crate::mcp::message::{self, Body, META_PROTOCOL_VERSION, STATELESS_VERSIONS};
pub use crate::mcp::server::Answer;
use crate::mcp::server::McpServer;

/// Protocol revisions `initialize` negotiates, newest last. The stateless revisions are not
/// among them: they have no `initialize`, so agreeing to one there would strand the client.
pub const SUPPORTED_VERSIONS: &[&str] = &["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
pub const LATEST_VERSION: &str = "2025-11-25";

const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
/// MCP 2026-07-28 `UnsupportedProtocolVersion`.
const UNSUPPORTED_VERSION: i64 = -32022;

const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";

/// How long a client may reuse a `server/discover` or list answer. They change only when the
/// gateway is upgraded; a few minutes lets an upgrade show soon.
const TTL_MS: u64 = 300_000;
/// The lists are the same for every caller, but they are only ever served behind the bearer
/// check: a cache shared across access tokens would hand them to callers who never passed it.
const CACHE_SCOPE: &str = "private";

const INSTRUCTIONS: &str =
    "Call the whoami tool to see which user, client and scopes this connection is authorized as.";

pub fn error_response(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// Every revision served, in either era: what `server/discover` lists, and what a client
/// asking for another one is told to choose from.
pub fn all_versions() -> Vec<&'static str> {
    SUPPORTED_VERSIONS
        .iter()
        .chain(STATELESS_VERSIONS)
        .copied()
        .collect()
}

/// `whoami` as a built-in server of the proxy.
pub struct Whoami;

#[async_trait::async_trait]
impl McpServer for Whoami {
    async fn answer(&self, principal: &Principal, headers: &HeaderMap, body: &[u8]) -> Answer {
        answer(principal, headers, body)
    }
}

/// Answers one POST body (already bounded and known to be `application/json`), in whichever
/// era it speaks. The body is read strictly first, as the proxy reads what it forwards, so
/// that the `Mcp-Method`/`Mcp-Name` headers are checked against exactly what runs.
pub fn answer(principal: &Principal, headers: &HeaderMap, bytes: &[u8]) -> Answer {
    let body = match message::read(bytes) {
        Ok(b) => b,
        Err(e) => {
            return Answer::error(
                StatusCode::BAD_REQUEST,
                readable_id(bytes),
                e.jsonrpc_code(),
                &e.to_string(),
            );
        }
    };
    if let Err(e) = message::check_headers(headers, Some(&body)) {
        return Answer::error(
            StatusCode::BAD_REQUEST,
            body.reply_id(),
            message::HEADER_MISMATCH,
            &e.to_string(),
        );
    }
    // A second, plain reading for the parameters: the strict one refused every ambiguity
    // (repeated keys, case variants), so both see the same message.
    let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
        return Answer::error(
            StatusCode::BAD_REQUEST,
            body.reply_id(),
            PARSE_ERROR,
            "the body is not valid JSON",
        );
    };
    if message::is_stateless(headers, Some(&body)) {
        stateless(principal, headers, &body, &value)
    } else {
        legacy(principal, headers, &body, &value)
    }
}

/// The id of a body the strict reading refused, when a plain reading finds one of a valid
/// type: an error carries the request's id wherever it can be read.
fn readable_id(bytes: &[u8]) -> Value {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| v.get("id").cloned())
        .filter(|id| id.is_string() || id.is_i64() || id.is_u64())
        .unwrap_or(Value::Null)
}

/// Revisions up to 2025-11-25: batches allowed, JSON-RPC errors inside `200` answers.
fn legacy(principal: &Principal, headers: &HeaderMap, body: &Body, value: &Value) -> Answer {
    if let Some(v) = headers
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok())
        && !SUPPORTED_VERSIONS.contains(&v)
    {
        return Answer::error(
            StatusCode::BAD_REQUEST,
            body.reply_id(),
            INVALID_REQUEST,
            &format!("unsupported MCP-Protocol-Version `{v}`"),
        );
    }
    match handle_body(principal, value) {
        Some(answer) => Answer::json(StatusCode::OK, answer),
        None => Answer::accepted(),
    }
}

/// Answers one POST body of the older revisions. `None` when it held only notifications or
/// responses (HTTP 202).
pub fn handle_body(principal: &Principal, body: &Value) -> Option<Value> {
    match body {
        Value::Array(items) if !items.is_empty() => {
            let answers: Vec<Value> = items
                .iter()
                .filter_map(|m| handle_message(principal, m))
                .collect();
            (!answers.is_empty()).then_some(Value::Array(answers))
        }
        Value::Array(_) => Some(error_response(Value::Null, INVALID_REQUEST, "empty batch")),
        m => handle_message(principal, m),
    }
}

fn handle_message(principal: &Principal, msg: &Value) -> Option<Value> {
    let Some(obj) = msg.as_object() else {
        return Some(error_response(
            Value::Null,
            INVALID_REQUEST,
            "a JSON-RPC message is an object",
        ));
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Some(error_response(
            obj.get("id").cloned().unwrap_or(Value::Null),
            INVALID_REQUEST,
            "jsonrpc must be \"2.0\"",
        ));
    }
    let method = obj.get("method").and_then(Value::as_str);
    let id = obj.get("id").cloned();
    match (method, id) {
        // A notification (no id), or a response to us: nothing to answer.
        (Some(_), None) | (None, Some(_)) => None,
        (None, None) => Some(error_response(
            Value::Null,
            INVALID_REQUEST,
            "not a JSON-RPC message",
        )),
        (Some(method), Some(id)) => {
            if !is_request_id(&id) {
                return Some(error_response(
                    Value::Null,
                    INVALID_REQUEST,
                    "id must be a string or an integer",
                ));
            }
            let params = obj.get("params").cloned().unwrap_or(Value::Null);
            Some(match call(principal, method, &params) {
                Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
                Err((code, message)) => error_response(id, code, &message),
            })
        }
    }
}

fn is_request_id(id: &Value) -> bool {
    id.is_string() || id.is_i64() || id.is_u64()
}

fn call(principal: &Principal, method: &str, params: &Value) -> Result<Value, (i64, String)> {
    match method {
        "initialize" => {
            let asked = params
                .get("protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or(LATEST_VERSION);
            let version = if SUPPORTED_VERSIONS.contains(&asked) {
                asked
            } else {
                LATEST_VERSION
            };
            Ok(json!({
                "protocolVersion": version,
                "capabilities": {"tools": {"listChanged": false}},
                "serverInfo": server_info(),
                "instructions": INSTRUCTIONS
            }))
        }
        "ping" => Ok(json!({})),
        "tools/list" => Ok(json!({"tools": [tool()]})),
        "tools/call" => {
            let name = params.get("name").and_then(Value::as_str).unwrap_or("");
            if name != "whoami" {
                return Err((INVALID_PARAMS, format!("unknown tool `{name}`")));
            }
            Ok(identity_result(principal))
        }
        "resources/list" => Ok(json!({"resources": []})),
        "prompts/list" => Ok(json!({"prompts": []})),
        "logging/setLevel" => Ok(json!({})),
        other => Err((
            METHOD_NOT_FOUND,
            format!("method `{other}` is not supported"),
        )),
    }
}

/// Revision 2026-07-28: one request per POST, nothing remembered between them, and errors
/// with HTTP statuses of their own (400 for a malformed request, 404 for an unknown method).
fn stateless(principal: &Principal, headers: &HeaderMap, body: &Body, value: &Value) -> Answer {
    let bad = |id: Value, code: i64, message: &str| {
        Answer::error(StatusCode::BAD_REQUEST, id, code, message)
    };
    // `check_headers` already refuses a batch in this era; this keeps the invariant local.
    let Some(m) = body.single() else {
        return bad(
            Value::Null,
            INVALID_REQUEST,
            "a POST of this protocol revision holds one JSON-RPC message, not a batch",
        );
    };
    if m.is_response {
        return bad(
            Value::Null,
            INVALID_REQUEST,
            "clients send no JSON-RPC responses in this protocol revision",
        );
    }
    let Some(id) = m.id.clone() else {
        // A notification: nothing here depends on one.
        return Answer::accepted();
    };
    if !is_request_id(&id) {
        return bad(
            Value::Null,
            INVALID_REQUEST,
            "id must be a string or an integer",
        );
    }
    // Required on every POST of this revision; `check_headers` compares it with `_meta` only
    // when it is there.
    if headers.get("mcp-protocol-version").is_none() {
        return bad(
            id,
            message::HEADER_MISMATCH,
            "the MCP-Protocol-Version header is missing",
        );
    }
    let params = value.get("params").and_then(Value::as_object);
    let Some(meta) = params
        .and_then(|p| p.get("_meta"))
        .and_then(Value::as_object)
    else {
        return bad(
            id,
            INVALID_PARAMS,
            "params._meta is missing: every request of this protocol revision declares its protocol version and client capabilities there",
        );
    };
    let Some(version) = meta.get(META_PROTOCOL_VERSION).and_then(Value::as_str) else {
        return bad(
            id,
            INVALID_PARAMS,
            "params._meta has no io.modelcontextprotocol/protocolVersion",
        );
    };
    if !meta
        .get(META_CLIENT_CAPABILITIES)
        .is_some_and(Value::is_object)
    {
        return bad(
            id,
            INVALID_PARAMS,
            "params._meta has no io.modelcontextprotocol/clientCapabilities object",
        );
    }
    // A revision of the older era declared this way is served too (as an SDK serving both
    // eras does): the refusal lists every version served, so nothing it lists is refused.
    let supported = all_versions();
    if !supported.contains(&version) {
        return Answer::json(
            StatusCode::BAD_REQUEST,
            json!({"jsonrpc": "2.0", "id": id, "error": {
                "code": UNSUPPORTED_VERSION,
                "message": "Unsupported protocol version",
                "data": {"supported": supported, "requested": version}
            }}),
        );
    }
    let method = m.method.as_deref().unwrap_or_default();
    match stateless_call(principal, method, params) {
        Ok(result) => Answer::json(
            StatusCode::OK,
            json!({"jsonrpc": "2.0", "id": id, "result": complete(result)}),
        ),
        Err((status, code, message)) => Answer::error(status, id, code, &message),
    }
}

type StatelessError = (StatusCode, i64, String);

fn stateless_call(
    principal: &Principal,
    method: &str,
    params: Option<&Map<String, Value>>,
) -> Result<Value, StatelessError> {
    let param = |key: &str| params.and_then(|p| p.get(key)).filter(|v| !v.is_null());
    // Protocol errors about what a valid request names (a tool, a resource) are not
    // malformed requests: `200`, as on the older wire.
    let invalid = |message: String| Err((StatusCode::OK, INVALID_PARAMS, message));
    // Every list fits one page, so no cursor is one this server handed out.
    let one_page = |list: Value| match param("cursor") {
        Some(_) => invalid("invalid cursor: every list here fits one page".into()),
        None => Ok(cacheable(list)),
    };
    match method {
        "server/discover" => Ok(cacheable(json!({
            "supportedVersions": all_versions(),
            // Empty prompts and resources are declared too: both lists are served (empty),
            // and a client may only call what is declared.
            "capabilities": {"tools": {}, "prompts": {}, "resources": {}},
            "instructions": INSTRUCTIONS
        }))),
        "tools/list" => one_page(json!({"tools": [tool()]})),
        "prompts/list" => one_page(json!({"prompts": []})),
        "resources/list" => one_page(json!({"resources": []})),
        "resources/templates/list" => one_page(json!({"resourceTemplates": []})),
        "tools/call" => {
            let name = param("name").and_then(Value::as_str).unwrap_or_default();
            if name != "whoami" {
                return invalid(format!("Unknown tool: {name}"));
            }
            // The input schema admits no arguments. A wrong input is the tool's error (so
            // that a model can correct itself), not a protocol error.
            match param("arguments") {
                None => {}
                Some(Value::Object(a)) if a.is_empty() => {}
                Some(_) => {
                    return Ok(json!({
                        "content": [{"type": "text", "text": "the whoami tool takes no arguments"}],
                        "isError": true
                    }));
                }
            }
            Ok(identity_result(principal))
        }
        "resources/read" => {
            let uri = param("uri").and_then(Value::as_str).unwrap_or_default();
            invalid(format!("Resource not found: {uri}"))
        }
        "prompts/get" => {
            let name = param("name").and_then(Value::as_str).unwrap_or_default();
            invalid(format!("Unknown prompt: {name}"))
        }
        // Everything else, including what this revision removed (`initialize`, `ping`,
        // `logging/setLevel`, `resources/subscribe`) and the subscriptions this server has
        // nothing to send on.
        other => Err((
            StatusCode::NOT_FOUND,
            METHOD_NOT_FOUND,
            format!("Method not found: {other}"),
        )),
    }
}

/// A result of revision 2026-07-28: marked complete (no input is ever required here), with
/// the server's identity in `_meta`.
fn complete(mut result: Value) -> Value {
    if let Some(r) = result.as_object_mut() {
        r.insert("resultType".into(), "complete".into());
        let mut meta = Map::new();
        meta.insert(META_SERVER_INFO.into(), server_info());
        r.insert("_meta".into(), Value::Object(meta));
    }
    result
}

/// With the caching hints revision 2026-07-28 requires on discover and list results.
fn cacheable(mut result: Value) -> Value {
    if let Some(r) = result.as_object_mut() {
        r.insert("ttlMs".into(), TTL_MS.into());
        r.insert("cacheScope".into(), CACHE_SCOPE.into());
    }
    result
}

fn server_info() -> Value {
    json!({"name": "whoami", "title": "mcp-oauth-gateway whoami", "version": env!("CARGO_PKG_VERSION")})
}

fn identity_result(principal: &Principal) -> Value {
    let who = identity(principal);
    json!({
        "content": [{"type": "text", "text": who.to_string()}],
        "structuredContent": who,
        "isError": false
    })
}

fn tool() -> Value {
    json!({
        "name": "whoami",
        "title": "Who am I?",
        "description": "Returns the authenticated user, the OAuth client and the scopes of this connection.",
        "inputSchema": {"type": "object", "properties": {}, "additionalProperties": false},
        "outputSchema": {
            "type": "object",
            "properties": {
                "user": {"type": ["string", "null"]},
                "user_id": {"type": ["string", "null"]},
                "email": {"type": ["string", "null"]},
                "groups": {"type": "array", "items": {"type": "string"}},
                "client_id": {"type": "string"},
                "scopes": {"type": "array", "items": {"type": "string"}},
                "resource": {"type": "string"},
                "expires_at": {"type": "integer"}
            },
            "required": ["client_id", "scopes", "resource"]
        },
        "annotations": {"readOnlyHint": true, "openWorldHint": false}
    })
}

pub fn identity(p: &Principal) -> Value {
    json!({
        "user": p.username,
        "user_id": p.user_id,
        "email": p.email,
        "groups": p.groups,
        "client_id": p.client_id,
        "scopes": p.scopes,
        "resource": p.resource,
        "expires_at": p.expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal() -> Principal {
        Principal {
            grant_id: Some("g1".into()),
            login_source: Some("local".into()),
            user_id: Some("u1".into()),
            username: Some("alice".into()),
            email: None,
            groups: vec![],
            client_id: "c1".into(),
            scopes: vec!["mcp".into()],
            resource: "https://gw/mcp".into(),
            expires_at: 0,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn post(h: &[(&str, &str)], body: Value) -> Answer {
        answer(&principal(), &headers(h), body.to_string().as_bytes())
    }

    fn meta() -> Value {
        json!({
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}
        })
    }

    fn modern(method: &str, name: Option<&str>, params: Value) -> Answer {
        let mut h = vec![
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", method),
        ];
        if let Some(n) = name {
            h.push(("mcp-name", n));
        }
        post(
            &h,
            json!({"jsonrpc": "2.0", "id": 9, "method": method, "params": params}),
        )
    }

    fn code(a: &Answer) -> (u16, Option<i64>) {
        let body = a.body.clone().unwrap_or_default();
        (a.status.as_u16(), body["error"]["code"].as_i64())
    }

    #[test]
    fn stateless_requests_are_answered_without_a_handshake() {
        let a = modern("server/discover", None, json!({"_meta": meta()}));
        assert_eq!(a.status, StatusCode::OK);
        let body = a.body.unwrap();
        let r = &body["result"];
        assert_eq!(r["resultType"], "complete");
        assert_eq!(r["cacheScope"], "private");
        assert_eq!(r["ttlMs"], TTL_MS);
        assert_eq!(r["_meta"][META_SERVER_INFO]["name"], "whoami");
        let versions = r["supportedVersions"].as_array().unwrap();
        assert!(versions.contains(&json!("2026-07-28")) && versions.contains(&json!("2025-11-25")));
        let a = modern(
            "tools/call",
            Some("whoami"),
            json!({"name": "whoami", "arguments": {}, "_meta": meta()}),
        );
        let body = a.body.unwrap();
        assert_eq!(body["id"], 9);
        assert_eq!(body["result"]["structuredContent"]["user"], "alice");
        assert!(body["result"].get("ttlMs").is_none());
        let a = modern(
            "tools/call",
            Some("whoami"),
            json!({"name": "whoami", "arguments": {"x": 1}, "_meta": meta()}),
        );
        assert_eq!(a.body.unwrap()["result"]["isError"], true);
        let a = modern("tools/list", None, json!({"cursor": "x", "_meta": meta()}));
        assert_eq!(code(&a), (200, Some(INVALID_PARAMS)));
    }

    #[test]
    fn stateless_errors_carry_their_status_code_and_id() {
        assert_eq!(
            code(&modern("server/discover", None, json!({}))),
            (400, Some(INVALID_PARAMS))
        );
        assert_eq!(
            code(&modern(
                "server/discover",
                None,
                json!({"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}})
            )),
            (400, Some(INVALID_PARAMS))
        );
        for removed in [
            "initialize",
            "ping",
            "logging/setLevel",
            "subscriptions/listen",
        ] {
            let a = modern(removed, None, json!({"_meta": meta()}));
            assert_eq!(code(&a), (404, Some(METHOD_NOT_FOUND)), "{removed}");
            assert_eq!(a.body.unwrap()["id"], 9);
        }
        let a = post(
            &[
                ("mcp-protocol-version", "v9"),
                ("mcp-method", "server/discover"),
            ],
            json!({"jsonrpc": "2.0", "id": "s", "method": "server/discover", "params": {"_meta": {
                "io.modelcontextprotocol/protocolVersion": "v9",
                "io.modelcontextprotocol/clientCapabilities": {}
            }}}),
        );
        assert_eq!(code(&a), (400, Some(UNSUPPORTED_VERSION)));
        let body = a.body.unwrap();
        assert_eq!(body["id"], "s");
        assert_eq!(body["error"]["data"]["requested"], "v9");
        assert_eq!(body["error"]["data"]["supported"], json!(all_versions()));
        // Header and body disagree: refused before anything reads the version.
        let a = post(
            &[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "server/discover"),
            ],
            json!({"jsonrpc": "2.0", "id": 3, "method": "server/discover", "params": {"_meta": {
                "io.modelcontextprotocol/protocolVersion": "v9",
                "io.modelcontextprotocol/clientCapabilities": {}
            }}}),
        );
        assert_eq!(code(&a), (400, Some(message::HEADER_MISMATCH)));
        assert_eq!(a.body.unwrap()["id"], 3);
        // The version in `_meta` alone makes it stateless, and the header is then required.
        let a = post(
            &[("mcp-method", "server/discover")],
            json!({"jsonrpc": "2.0", "id": 3, "method": "server/discover", "params": {"_meta": meta()}}),
        );
        assert_eq!(code(&a), (400, Some(message::HEADER_MISMATCH)));
        let a = modern("notifications/cancelled", None, json!({"_meta": meta()}));
        assert_eq!(
            code(&a),
            (404, Some(METHOD_NOT_FOUND)),
            "a request named like a notification is still a request"
        );
        let a = post(
            &[("mcp-protocol-version", "2026-07-28")],
            json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"_meta": meta()}}),
        );
        assert_eq!((a.status, a.body), (StatusCode::ACCEPTED, None));
    }

    #[test]
    fn older_revisions_keep_their_handshake() {
        for asked in ["2025-11-25", "2026-07-28", "1999-01-01"] {
            let a = post(
                &[],
                json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": asked, "capabilities": {}}}),
            );
            assert_eq!(a.status, StatusCode::OK);
            let body = a.body.unwrap();
            let expected = if asked == "2025-11-25" {
                asked
            } else {
                LATEST_VERSION
            };
            assert_eq!(body["result"]["protocolVersion"], expected);
        }
        let a = post(
            &[("mcp-protocol-version", "2025-11-25")],
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
        );
        let body = a.body.unwrap();
        assert!(body["result"].get("resultType").is_none());
        assert_eq!(body["result"]["tools"][0]["name"], "whoami");
        let a = post(
            &[("mcp-protocol-version", "1999-01-01")],
            json!({"jsonrpc": "2.0", "id": 4, "method": "ping"}),
        );
        assert_eq!(code(&a), (400, Some(INVALID_REQUEST)));
        assert_eq!(a.body.unwrap()["id"], 4);
        let a = post(
            &[("mcp-method", "tools/list")],
            json!({"jsonrpc": "2.0", "id": 5, "method": "ping"}),
        );
        assert_eq!(code(&a), (400, Some(message::HEADER_MISMATCH)));
        let a = answer(&principal(), &HeaderMap::new(), b"{not json");
        assert_eq!(code(&a), (400, Some(PARSE_ERROR)));
        let a = answer(
            &principal(),
            &HeaderMap::new(),
            br#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{}}"#,
        );
        assert_eq!(code(&a), (400, Some(INVALID_REQUEST)));
        assert_eq!(a.body.unwrap()["id"], 6);
    }
}
