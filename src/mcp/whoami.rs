//! `whoami`: a built-in MCP server with one tool that returns who the caller is (user, client,
//! scopes). The "httpbin" of MCP auth: the way to check a client's OAuth works before a real
//! upstream is configured. The protocol around it is [`ToolServer`]'s.

use serde_json::{Map, Value, json};

use crate::authorization::token::Principal;
pub use crate::mcp::server::{Answer, error_response};
use crate::mcp::server::{ToolServer, Tools, UnknownTool, tool_error};

const INSTRUCTIONS: &str =
    "Call the whoami tool to see which user, client and scopes this connection is authorized as.";

/// `whoami`'s one tool.
pub struct Whoami;

impl Whoami {
    /// As a built-in server of the proxy.
    pub fn server() -> ToolServer<Self> {
        ToolServer::new(Self)
    }
}

#[async_trait::async_trait]
impl Tools for Whoami {
    fn server_info(&self) -> Value {
        json!({"name": "whoami", "title": "mcp-oauth-gateway whoami", "version": env!("CARGO_PKG_VERSION")})
    }

    fn instructions(&self) -> &str {
        INSTRUCTIONS
    }

    fn list(&self) -> Vec<Value> {
        vec![tool()]
    }

    async fn call(
        &self,
        principal: &Principal,
        name: &str,
        arguments: &Map<String, Value>,
    ) -> Result<Value, UnknownTool> {
        if name != "whoami" {
            return Err(UnknownTool(name.to_string()));
        }
        // The input schema admits no arguments.
        if !arguments.is_empty() {
            return Ok(tool_error("the whoami tool takes no arguments"));
        }
        Ok(identity_result(principal))
    }
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
    use crate::mcp::message;
    use crate::mcp::server::*;
    use http::{HeaderMap, StatusCode};

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

    fn answer(p: &Principal, h: &HeaderMap, bytes: &[u8]) -> Answer {
        let server = Whoami::server();
        futures_util::FutureExt::now_or_never(server.answer_post(p, h, bytes))
            .expect("whoami answers without waiting")
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
