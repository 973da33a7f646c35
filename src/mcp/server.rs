//! Built-in MCP servers: served inside the gateway, protected and routed like any upstream.
//! `whoami` and the database tools are two. Each is a set of tools ([`Tools`]); the
//! protocol around them — both eras, batches, version negotiation, header checks — is
//! [`ToolServer`]'s, written once.
//!
//! It serves two protocol eras on one endpoint. Revisions 2024-11-05 through 2025-11-25
//! negotiate a version with `initialize`; revision 2026-07-28 has no handshake at all: every
//! request carries its version and the client's capabilities in `params._meta`, repeats its
//! method (and tool) in the `Mcp-Method` and `Mcp-Name` headers, and `server/discover` says
//! what the server speaks. Which era a POST belongs to is [`message::is_stateless`]'s call.

use async_trait::async_trait;
use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value, json};

use crate::authorization::token::Principal;
use crate::mcp::message::{self, Body, META_PROTOCOL_VERSION, STATELESS_VERSIONS};

/// Protocol revisions `initialize` negotiates, newest last. The stateless revisions are not
/// among them: they have no `initialize`, so agreeing to one there would strand the client.
pub const SUPPORTED_VERSIONS: &[&str] = &["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
pub const LATEST_VERSION: &str = "2025-11-25";

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
/// MCP 2026-07-28 `UnsupportedProtocolVersion`.
pub const UNSUPPORTED_VERSION: i64 = -32022;

const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
pub const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";

/// How long a client may reuse a `server/discover` or list answer. They change only when the
/// gateway is upgraded; a few minutes lets an upgrade show soon.
pub const TTL_MS: u64 = 300_000;
/// The lists are only ever served behind the bearer check: a cache shared across access
/// tokens would hand them to callers who never passed it.
const CACHE_SCOPE: &str = "private";
/// Messages one batch may hold (revisions before 2026-07-28).
const MAX_BATCH: usize = 32;

/// How a POST is answered: an HTTP status and a JSON-RPC message, or no body at all (`202`
/// for notifications and responses).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Option<Value>,
}

impl Answer {
    pub fn json(status: StatusCode, body: Value) -> Self {
        Self {
            status,
            body: Some(body),
        }
    }

    pub fn error(status: StatusCode, id: Value, code: i64, message: &str) -> Self {
        Self::json(status, error_response(id, code, message))
    }

    pub fn accepted() -> Self {
        Self {
            status: StatusCode::ACCEPTED,
            body: None,
        }
    }
}

#[async_trait]
pub trait McpServer: Send + Sync {
    /// Answers one POSTed body, already bounded, read as JSON-RPC and checked against the
    /// MCP headers by the proxy's read phase (it is read again here, in whichever protocol
    /// era it speaks). Only POST reaches a built-in server: it keeps no session and has no
    /// event stream.
    async fn answer(&self, principal: &Principal, headers: &HeaderMap, body: &[u8]) -> Answer;
}

/// A call the server cannot take as a call of one of its tools: a protocol error
/// (`-32602`), not a tool's failure. A tool that ran and failed answers `Ok` with
/// `isError: true`, so that a model can read why and correct itself.
#[derive(Debug)]
pub struct UnknownTool(pub String);

/// What a built-in server offers: its tools, and how each is called.
#[async_trait]
pub trait Tools: Send + Sync {
    /// `name`, `title` and `version` for `serverInfo`.
    fn server_info(&self) -> Value;
    fn instructions(&self) -> &str;
    /// The tool definitions `tools/list` answers with.
    fn list(&self) -> Vec<Value>;
    /// Runs tool `name` with `arguments` (an object, empty when none were given) as
    /// `principal`; the `CallToolResult`.
    async fn call(
        &self,
        principal: &Principal,
        name: &str,
        arguments: &Map<String, Value>,
    ) -> Result<Value, UnknownTool>;
}

/// A tool's failure, as its result: the text says what went wrong.
pub fn tool_error(text: &str) -> Value {
    json!({"content": [{"type": "text", "text": text}], "isError": true})
}

/// The MCP protocol around a set of tools.
pub struct ToolServer<T> {
    tools: T,
}

impl<T: Tools> ToolServer<T> {
    pub fn new(tools: T) -> Self {
        Self { tools }
    }
}

#[async_trait]
impl<T: Tools> McpServer for ToolServer<T> {
    async fn answer(&self, principal: &Principal, headers: &HeaderMap, body: &[u8]) -> Answer {
        self.answer_post(principal, headers, body).await
    }
}

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

/// The id of a body the strict reading refused, when a plain reading finds one of a valid
/// type: an error carries the request's id wherever it can be read.
fn readable_id(bytes: &[u8]) -> Value {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| v.get("id").cloned())
        .filter(|id| id.is_string() || id.is_i64() || id.is_u64())
        .unwrap_or(Value::Null)
}

fn is_request_id(id: &Value) -> bool {
    id.is_string() || id.is_i64() || id.is_u64()
}

/// With the caching hints revision 2026-07-28 requires on discover and list results.
fn cacheable(mut result: Value) -> Value {
    if let Some(r) = result.as_object_mut() {
        r.insert("ttlMs".into(), TTL_MS.into());
        r.insert("cacheScope".into(), CACHE_SCOPE.into());
    }
    result
}

type StatelessError = (StatusCode, i64, String);

impl<T: Tools> ToolServer<T> {
    /// Answers one POST body (already bounded and known to be `application/json`), in
    /// whichever era it speaks. The body is read strictly first, as the proxy reads what it
    /// forwards, so that the `Mcp-Method`/`Mcp-Name` headers are checked against exactly
    /// what runs.
    pub async fn answer_post(
        &self,
        principal: &Principal,
        headers: &HeaderMap,
        bytes: &[u8],
    ) -> Answer {
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
        // A second, plain reading for the parameters: the strict one refused every
        // ambiguity (repeated keys, case variants), so both see the same message.
        let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
            return Answer::error(
                StatusCode::BAD_REQUEST,
                body.reply_id(),
                PARSE_ERROR,
                "the body is not valid JSON",
            );
        };
        if message::is_stateless(headers, Some(&body)) {
            self.stateless(principal, headers, &body, &value).await
        } else {
            self.legacy(principal, headers, &body, &value).await
        }
    }

    /// Revisions up to 2025-11-25: batches allowed, JSON-RPC errors inside `200` answers.
    async fn legacy(
        &self,
        principal: &Principal,
        headers: &HeaderMap,
        body: &Body,
        value: &Value,
    ) -> Answer {
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
        match self.handle_body(principal, value).await {
            Some(answer) => Answer::json(StatusCode::OK, answer),
            None => Answer::accepted(),
        }
    }

    /// Answers one POST body of the older revisions. `None` when it held only
    /// notifications or responses (HTTP 202). A batch's requests run one after another.
    pub async fn handle_body(&self, principal: &Principal, body: &Value) -> Option<Value> {
        match body {
            // Each answer is held until the batch is done: their number is bounded.
            Value::Array(items) if items.len() > MAX_BATCH => Some(error_response(
                Value::Null,
                INVALID_REQUEST,
                &format!("a batch holds at most {MAX_BATCH} messages here"),
            )),
            Value::Array(items) if !items.is_empty() => {
                let mut answers = Vec::new();
                for m in items {
                    if let Some(a) = self.handle_message(principal, m).await {
                        answers.push(a);
                    }
                }
                (!answers.is_empty()).then_some(Value::Array(answers))
            }
            Value::Array(_) => Some(error_response(Value::Null, INVALID_REQUEST, "empty batch")),
            m => self.handle_message(principal, m).await,
        }
    }

    async fn handle_message(&self, principal: &Principal, msg: &Value) -> Option<Value> {
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
                Some(match self.call(principal, method, &params).await {
                    Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
                    Err((code, message)) => error_response(id, code, &message),
                })
            }
        }
    }

    async fn call(
        &self,
        principal: &Principal,
        method: &str,
        params: &Value,
    ) -> Result<Value, (i64, String)> {
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
                    "serverInfo": self.tools.server_info(),
                    "instructions": self.tools.instructions()
                }))
            }
            "ping" => Ok(json!({})),
            "tools/list" => Ok(json!({"tools": self.tools.list()})),
            "tools/call" => {
                let name = params.get("name").and_then(Value::as_str).unwrap_or("");
                let arguments = match params.get("arguments") {
                    None | Some(Value::Null) => Map::new(),
                    Some(Value::Object(a)) => a.clone(),
                    Some(_) => {
                        return Err((INVALID_PARAMS, "arguments must be an object".into()));
                    }
                };
                self.tools
                    .call(principal, name, &arguments)
                    .await
                    .map_err(|UnknownTool(name)| (INVALID_PARAMS, format!("unknown tool `{name}`")))
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
    async fn stateless(
        &self,
        principal: &Principal,
        headers: &HeaderMap,
        body: &Body,
        value: &Value,
    ) -> Answer {
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
        match self.stateless_call(principal, method, params).await {
            Ok(result) => Answer::json(
                StatusCode::OK,
                json!({"jsonrpc": "2.0", "id": id, "result": self.complete(result)}),
            ),
            Err((status, code, message)) => Answer::error(status, id, code, &message),
        }
    }

    async fn stateless_call(
        &self,
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
                "instructions": self.tools.instructions()
            }))),
            "tools/list" => one_page(json!({"tools": self.tools.list()})),
            "prompts/list" => one_page(json!({"prompts": []})),
            "resources/list" => one_page(json!({"resources": []})),
            "resources/templates/list" => one_page(json!({"resourceTemplates": []})),
            "tools/call" => {
                let name = param("name").and_then(Value::as_str).unwrap_or_default();
                // A wrong input is the tool's error (so that a model can correct itself),
                // not a protocol error.
                let arguments = match param("arguments") {
                    None => Map::new(),
                    Some(Value::Object(a)) => a.clone(),
                    Some(_) => return Ok(tool_error("arguments must be an object")),
                };
                match self.tools.call(principal, name, &arguments).await {
                    Ok(result) => Ok(result),
                    Err(UnknownTool(name)) => invalid(format!("Unknown tool: {name}")),
                }
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
    fn complete(&self, mut result: Value) -> Value {
        if let Some(r) = result.as_object_mut() {
            r.insert("resultType".into(), "complete".into());
            let mut meta = Map::new();
            meta.insert(META_SERVER_INFO.into(), self.tools.server_info());
            r.insert("_meta".into(), Value::Object(meta));
        }
        result
    }
}
