//! `whoami`: a built-in MCP server with one tool that returns who the caller is (user, client,
//! scopes). The "httpbin" of MCP auth: the way to check a client's OAuth works before a real
//! upstream is configured. Stateless Streamable HTTP: every POST is answered with JSON.

use serde_json::{Value, json};

use crate::authorization::token::Principal;

/// Protocol revisions this server speaks, newest last.
pub const SUPPORTED_VERSIONS: &[&str] = &["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
pub const LATEST_VERSION: &str = "2025-11-25";

const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;

pub fn error_response(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

pub fn parse_error(message: &str) -> Value {
    error_response(Value::Null, PARSE_ERROR, message)
}

/// Answers one POST body. `None` when it held only notifications or responses (HTTP 202).
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
            if !(id.is_string() || id.is_i64() || id.is_u64()) {
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
                "serverInfo": {"name": "whoami", "title": "mcp-oauth-gateway whoami", "version": env!("CARGO_PKG_VERSION")},
                "instructions": "Call the whoami tool to see which user, client and scopes this connection is authorized as."
            }))
        }
        "ping" => Ok(json!({})),
        "tools/list" => Ok(json!({"tools": [tool()]})),
        "tools/call" => {
            let name = params.get("name").and_then(Value::as_str).unwrap_or("");
            if name != "whoami" {
                return Err((INVALID_PARAMS, format!("unknown tool `{name}`")));
            }
            let who = identity(principal);
            Ok(json!({
                "content": [{"type": "text", "text": who.to_string()}],
                "structuredContent": who,
                "isError": false
            }))
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
