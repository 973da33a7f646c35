//! Built-in MCP servers: served inside the gateway, protected and routed like any upstream.
//! `whoami` is one; the database tools will be the next. A new one implements [`McpServer`]
//! and is added to the proxy's backends the way `whoami` is.

use async_trait::async_trait;
use http::{HeaderMap, StatusCode};
use serde_json::Value;

use crate::authorization::token::Principal;

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
        Self::json(status, super::whoami::error_response(id, code, message))
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
