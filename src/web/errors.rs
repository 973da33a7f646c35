//! The one place where errors become what a client sees: OAuth error JSON (RFC 6749 §5.2)
//! on OAuth endpoints, `WWW-Authenticate` challenges and JSON-RPC errors on protected
//! resources, HTML pages in the browser flow.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::pages;
use crate::authorization::authorize::PageError;
use crate::authorization::{ErrorCode, OAuthError};
use crate::mcp::server::error_response;
use crate::proxy::{CredentialError, ProxyError};

pub fn no_store(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

pub fn oauth_status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidClient | ErrorCode::InvalidToken => StatusCode::UNAUTHORIZED,
        ErrorCode::AccessDenied => StatusCode::FORBIDDEN,
        ErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let status = oauth_status(self.code);
        let body = json!({"error": self.code.as_str(), "error_description": self.description});
        let mut resp = no_store((status, axum::Json(body)).into_response());
        if status == StatusCode::UNAUTHORIZED {
            let challenge = if self.basic_challenge || self.code == ErrorCode::InvalidClient {
                "Basic realm=\"mcp-oauth-gateway\""
            } else {
                "Bearer realm=\"mcp-oauth-gateway\""
            };
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Security headers for every HTML page of the browser flow.
pub fn html(status: StatusCode, body: String) -> Response {
    let mut resp = (status, axum::response::Html(body)).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    no_store(resp)
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        html(status, pages::error(&self.message))
    }
}

/// A bearer challenge of a protected resource (RFC 6750 §3, RFC 9728 §5.1), with the same
/// error in a JSON body.
pub fn bearer_challenge(
    metadata_url: &str,
    scopes: &[String],
    status: StatusCode,
    error: Option<(&str, &str)>,
) -> Response {
    let scope = scopes.join(" ");
    let mut params = vec![
        ("resource_metadata", metadata_url),
        ("scope", scope.as_str()),
    ];
    let mut body =
        json!({"error": "unauthorized", "error_description": "a bearer token is required"});
    if let Some((code, description)) = error {
        params.extend([("error", code), ("error_description", description)]);
        body = json!({"error": code, "error_description": description});
    }
    let mut resp = (status, axum::Json(body)).into_response();
    // Always a valid header value: the writer quotes and replaces what a header cannot hold.
    if let Ok(v) = HeaderValue::from_str(&super::challenge::bearer(&params)) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// A JSON-RPC error that answers no particular request (`id` null).
pub fn jsonrpc(status: StatusCode, code: i64, message: &str) -> Response {
    (
        status,
        axum::Json(error_response(Value::Null, code, message)),
    )
        .into_response()
}

/// MCP's URL-elicitation-required error (2025-11-25): the call needs the user to visit a URL
/// first (to connect an upstream account), then to try again.
pub const URL_ELICITATION_REQUIRED: i64 = -32042;

/// "Connect your account first", in the form the client's protocol revision understands:
/// from 2026-07-28 an `InputRequiredResult` asking for a URL elicitation (with the gateway's
/// `requestState`, so that the retried call is recognised); in 2025-11-25 the
/// URL-elicitation-required error (`-32042`) when the client declared URL-mode elicitation
/// (or this instance did not see its `initialize`); otherwise a plain error. The message carries the
/// URL in every form, for clients that show only the message.
pub fn connect_first(
    revision: Option<&str>,
    declared: Option<bool>,
    upstream: &str,
    url: &str,
    message: &str,
    id: Value,
) -> Response {
    let elicitation = json!({
        "mode": "url",
        "elicitationId": crate::crypto::new_id(),
        "url": url,
        "message": message,
    });
    // Revisions are dates, compared as text; an answer needs a request to answer.
    let body = match revision {
        Some(r) if r >= "2026-07-28" && !id.is_null() => json!({
            "jsonrpc": "2.0",
            "id": id,
            "result": {
                "resultType": "input_required",
                "inputRequests": {
                    "connect": {"method": "elicitation/create", "params": elicitation},
                },
                "requestState": format!("{}{upstream}", crate::proxy::GATEWAY_REQUEST_STATE),
            },
        }),
        // A client known not to open URLs gets the plain error (one whose `initialize` this
        // instance did not see is given the benefit of the doubt).
        Some(r) if r >= "2025-11-25" && declared != Some(false) => {
            let mut body = error_response(id, URL_ELICITATION_REQUIRED, message);
            if let Some(error) = body.get_mut("error") {
                error["data"] = json!({"elicitations": [elicitation]});
            }
            body
        }
        _ => error_response(id, -32000, message),
    };
    no_store((StatusCode::OK, axum::Json(body)).into_response())
}

/// A proxy failure, as a JSON-RPC error answering request `id`, with the HTTP status the
/// failure calls for.
pub fn proxy(e: ProxyError, id: Value) -> Response {
    let status = e.status();
    let retry_after = match &e {
        ProxyError::Restarting(_, secs) => Some((*secs).max(1)),
        _ if status == StatusCode::SERVICE_UNAVAILABLE => Some(2),
        _ => None,
    };
    if status.is_server_error() {
        tracing::warn!(error = %e, "proxied request failed");
    }
    let code = match &e {
        ProxyError::UnknownSession => -32001,
        ProxyError::ToolDenied(_) => -32003,
        ProxyError::TooLarge(_)
        | ProxyError::BadBody
        | ProxyError::BadRequest(_)
        | ProxyError::UnsupportedMedia(_)
        | ProxyError::SlowBody => -32600,
        ProxyError::Message(m) => m.jsonrpc_code(),
        ProxyError::HeaderMismatch(_) => crate::mcp::message::HEADER_MISMATCH,
        ProxyError::Credential(CredentialError::ConnectFirst { .. }) => URL_ELICITATION_REQUIRED,
        _ => -32603,
    };
    let mut body = error_response(id, code, &e.to_string());
    if let ProxyError::Credential(CredentialError::ConnectFirst { url, message }) = &e
        && let Some(error) = body.get_mut("error")
    {
        error["data"] = json!({"elicitations": [{
            "mode": "url",
            "elicitationId": crate::crypto::new_id(),
            "url": url,
            "message": message,
        }]});
    }
    let mut resp = (status, axum::Json(body)).into_response();
    if let ProxyError::MethodNotAllowed(m) = &e {
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(m));
    }
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}
