//! The protected MCP endpoints: origin and host checks, the bearer check (with RFC 9728 /
//! RFC 6750 challenges), then the upstream proxy or the built-in `whoami` server.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::App;
use crate::authorization::Resource;
use crate::authorization::token::{BearerError, Principal};
use crate::mcp::whoami;
use crate::proxy::ProxyError;

fn challenge(app: &App, r: &Resource, status: StatusCode, error: Option<(&str, &str)>) -> Response {
    let metadata = app.auth.resource_metadata_url(r);
    let scope = r.scopes.join(" ");
    let mut params = vec![
        ("resource_metadata", metadata.as_str()),
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

fn jsonrpc_error(status: StatusCode, code: i64, message: &str) -> Response {
    (
        status,
        axum::Json(whoami::error_response(Value::Null, code, message)),
    )
        .into_response()
}

/// Everything every protected request passes before its upstream sees it.
async fn gate<'a>(
    app: &'a App,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
) -> Result<(&'a Resource, Principal), Response> {
    let Some(resource) = app
        .auth
        .resources
        .iter()
        .find(|r| r.path == uri.path() || r.messages_path.as_deref() == Some(uri.path()))
    else {
        return Err(StatusCode::NOT_FOUND.into_response());
    };
    // DNS rebinding: a browser page must not reach this through a name of its own.
    if let Err(m) = app.check_origin_and_host(headers) {
        return Err(jsonrpc_error(StatusCode::FORBIDDEN, -32600, m));
    }
    // RFC 6750 §2.3 is not allowed by MCP: tokens never travel in URLs.
    if uri
        .query()
        .is_some_and(|q| form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "access_token"))
    {
        return Err(challenge(
            app,
            resource,
            StatusCode::BAD_REQUEST,
            Some((
                "invalid_request",
                "access tokens are not accepted in the query string",
            )),
        ));
    }
    let token = super::headers::bearer_token(headers).map_err(|m| {
        challenge(
            app,
            resource,
            StatusCode::BAD_REQUEST,
            Some(("invalid_request", m)),
        )
    })?;
    match app
        .auth
        .check_bearer(token, &resource.url, &resource.scopes)
        .await
    {
        Ok(p) => Ok((resource, p)),
        Err(BearerError::Missing) => Err(challenge(app, resource, StatusCode::UNAUTHORIZED, None)),
        Err(BearerError::Invalid(m)) => Err(challenge(
            app,
            resource,
            StatusCode::UNAUTHORIZED,
            Some(("invalid_token", m)),
        )),
        Err(BearerError::InsufficientScope) => Err(challenge(
            app,
            resource,
            StatusCode::FORBIDDEN,
            Some((
                "insufficient_scope",
                "the access token lacks a scope this resource needs",
            )),
        )),
        Err(BearerError::Unavailable) => {
            let mut resp = jsonrpc_error(
                StatusCode::SERVICE_UNAVAILABLE,
                -32603,
                "the token store is unavailable",
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            Err(resp)
        }
    }
}

/// Headers a browser-based MCP client (the Inspector, a web app with the TypeScript SDK)
/// must be able to read from any answer: the challenge and the session.
const EXPOSED: HeaderValue =
    HeaderValue::from_static("www-authenticate, mcp-session-id, mcp-protocol-version");
const METHODS: HeaderValue = HeaderValue::from_static("GET, POST, DELETE, OPTIONS");
const ANY_ORIGIN: HeaderValue = HeaderValue::from_static("*");
const REQUEST_HEADERS: HeaderValue = HeaderValue::from_static(
    "authorization, content-type, accept, mcp-protocol-version, mcp-session-id, last-event-id, mcp-method, mcp-name",
);

/// CORS for the MCP paths, done here with values made once: the tower-http layer cloned and
/// rebuilt its header values on every request, a measurable share of the proxy's work.
/// Any origin may call (bearer tokens, never cookies, authorize a call); the Origin check
/// above still refuses origins outside the allow-list.
fn with_cors(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, ANY_ORIGIN);
    h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSED);
    resp
}

/// The answer to a CORS preflight. Headers the client asks for are allowed as asked (an
/// MCP client may add its own, such as the Inspector's custom headers), falling back to
/// the MCP ones.
fn preflight(headers: &HeaderMap) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, ANY_ORIGIN);
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, METHODS);
    let asked = headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .filter(|v| v.len() <= 1024)
        .cloned();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        asked.unwrap_or(REQUEST_HEADERS),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("3600"),
    );
    resp
}

/// Every protected MCP path.
pub async fn protected(State(app): State<App>, req: Request) -> Response {
    if req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return preflight(req.headers());
    }
    with_cors(protected_inner(app, req).await)
}

async fn protected_inner(app: App, req: Request) -> Response {
    let uri = req
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map(|o| o.0.clone())
        .unwrap_or_else(|| req.uri().clone());
    let (resource, principal) = match gate(&app, &uri, req.headers()).await {
        Ok(ok) => ok,
        Err(resp) => return resp,
    };
    let owner = crate::proxy::owner_of(&principal);
    let in_flight = match app
        .proxy
        .limits
        .admit(&owner, &principal.client_id, app.auth.clock.now())
    {
        Ok(g) => g,
        Err(retry_after) => {
            let mut resp = jsonrpc_error(
                StatusCode::TOO_MANY_REQUESTS,
                -32000,
                "too many requests; slow down",
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            return resp;
        }
    };
    match resource.upstream.and_then(|i| app.proxy.upstream(i)) {
        Some(upstream) => match app
            .proxy
            .forward(upstream, &principal, req, in_flight)
            .await
        {
            Ok(resp) => resp,
            Err((ProxyError::InsufficientScope(extra), _)) => {
                let mut needed = resource.scopes.clone();
                needed.extend(extra.into_iter().filter(|s| !resource.scopes.contains(s)));
                let r = crate::authorization::Resource {
                    scopes: needed,
                    ..resource.clone()
                };
                challenge(
                    &app,
                    &r,
                    StatusCode::FORBIDDEN,
                    Some(("insufficient_scope", "this tool needs more scopes")),
                )
            }
            Err((e, id)) => proxy_error(e, id),
        },
        None => {
            let (parts, body) = req.into_parts();
            whoami(&app, principal, parts.method, parts.headers, body).await
        }
    }
}

fn proxy_error(e: ProxyError, id: Value) -> Response {
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
        _ => -32603,
    };
    let mut resp = (
        status,
        axum::Json(whoami::error_response(id, code, &e.to_string())),
    )
        .into_response();
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

/// The HTTP front of the built-in server: the method, media type and size are judged here;
/// what the body says (in either protocol era) is `whoami::answer`'s.
async fn whoami(
    app: &App,
    principal: Principal,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if method != Method::POST {
        // Stateless server: no standalone SSE stream and no sessions to delete.
        let mut resp = StatusCode::METHOD_NOT_ALLOWED.into_response();
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return resp;
    }
    if let Err(m) = crate::mcp::message::check_body_encoding(&headers) {
        return jsonrpc_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, -32600, &m);
    }
    let read = axum::body::to_bytes(body, app.max_body.max(1024 * 1024));
    let bytes = match tokio::time::timeout(app.body_timeout, read).await {
        Ok(Ok(b)) => b,
        Err(_) => {
            return jsonrpc_error(
                StatusCode::REQUEST_TIMEOUT,
                -32600,
                "the request body did not arrive in time",
            );
        }
        Ok(Err(_)) => {
            return jsonrpc_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                -32600,
                "the request body is too large",
            );
        }
    };
    let answer = whoami::answer(&principal, &headers, &bytes);
    match answer.body {
        // Errors too are sent as application/json: clients of the stateless revision read an
        // error body only under that media type.
        Some(v) => (answer.status, axum::Json(v)).into_response(),
        None => answer.status.into_response(),
    }
}
