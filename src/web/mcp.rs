//! The protected MCP endpoints: origin and host checks, the bearer check (with RFC 9728 /
//! RFC 6750 challenges), then the proxy to the resource's backend (an upstream or a built-in
//! server). Errors become responses in `errors.rs`.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::{App, errors};
use crate::authorization::Resource;
use crate::authorization::token::{BearerError, Principal};
use crate::proxy::ProxyError;

fn challenge(app: &App, r: &Resource, status: StatusCode, error: Option<(&str, &str)>) -> Response {
    errors::bearer_challenge(&app.auth.resource_metadata_url(r), &r.scopes, status, error)
}

/// Counts a refusal at a protected resource.
fn denied(app: &App, reason: &'static str) {
    if let Some(m) = app.observer.metrics() {
        m.denied(reason);
    }
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
        denied(app, "origin_or_host");
        return Err(errors::jsonrpc(StatusCode::FORBIDDEN, -32600, m));
    }
    // RFC 6750 §2.3 is not allowed by MCP: tokens never travel in URLs.
    if uri
        .query()
        .is_some_and(|q| form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "access_token"))
    {
        denied(app, "token_in_query");
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
        denied(app, "malformed_authorization");
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
        Err(BearerError::Missing) => {
            denied(app, "no_token");
            Err(challenge(app, resource, StatusCode::UNAUTHORIZED, None))
        }
        Err(BearerError::Invalid(m)) => {
            denied(app, "invalid_token");
            Err(challenge(
                app,
                resource,
                StatusCode::UNAUTHORIZED,
                Some(("invalid_token", m)),
            ))
        }
        Err(BearerError::InsufficientScope) => {
            denied(app, "insufficient_scope");
            Err(challenge(
                app,
                resource,
                StatusCode::FORBIDDEN,
                Some((
                    "insufficient_scope",
                    "the access token lacks a scope this resource needs",
                )),
            ))
        }
        Err(BearerError::Unavailable) => {
            denied(app, "store_unavailable");
            let mut resp = errors::jsonrpc(
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
            denied(&app, "rate_limited");
            let mut resp = errors::jsonrpc(
                StatusCode::TOO_MANY_REQUESTS,
                -32000,
                "too many requests; slow down",
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            return resp;
        }
    };
    // Which answer a "connect first" gets depends on the client's protocol revision.
    let revision = req
        .headers()
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let Some(upstream) = app.proxy.upstream(resource.backend) else {
        return errors::proxy(ProxyError::Unreachable(resource.name.clone()), Value::Null);
    };
    match app
        .proxy
        .forward(upstream, &principal, req, in_flight)
        .await
    {
        Ok(resp) => resp,
        Err((ProxyError::InsufficientScope(extra), _)) => {
            denied(&app, "tool_scope");
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
        Err((
            ProxyError::ConnectRequired {
                url,
                message,
                declared,
            },
            id,
        )) => errors::connect_first(
            revision.as_deref(),
            declared,
            &upstream.name,
            &url,
            &message,
            id,
        ),
        Err((e, id)) => {
            if matches!(e, ProxyError::ToolDenied(_)) {
                denied(&app, "tool_denied");
            }
            errors::proxy(e, id)
        }
    }
}
