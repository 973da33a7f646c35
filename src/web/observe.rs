//! What every request passes on its way in and out for the operators: a request id (kept
//! from `X-Request-Id` when plain, else made, and returned), a log span carrying it, the
//! request context the audit log reads, and the HTTP series. Also `/metrics`, `/healthz`
//! and `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tracing::Instrument;

use super::App;
use crate::observe::metrics::{RouteLabels, RouteOnly};
use crate::observe::request::{self, RequestContext};

const REQUEST_ID: &str = "x-request-id";

/// The route a path belongs to, as a metrics label: a fixed set, whatever path a stranger
/// sends.
fn route_of(app: &App, path: &str) -> &'static str {
    let base = app.auth.settings.base_path.as_str();
    if app
        .auth
        .resources
        .iter()
        .any(|r| r.path == path || r.messages_path.as_deref() == Some(path))
    {
        return "mcp";
    }
    let p = path.strip_prefix(base).unwrap_or(path);
    match p {
        "/authorize" => "authorize",
        "/token" => "token",
        "/register" => "register",
        "/revoke" => "revoke",
        "/introspect" => "introspect",
        "/device_authorization" => "device_authorization",
        "/metrics" => "metrics",
        "/healthz" | "/readyz" => "health",
        _ if p.starts_with("/.well-known/") || path.starts_with("/.well-known/") => "metadata",
        _ if p.starts_with("/authorize/") || p.starts_with("/login/") || p == "/logout" => {
            "browser"
        }
        _ if p.starts_with("/console") => "console",
        _ if p.starts_with("/connect") => "connections",
        _ => "other",
    }
}

/// The layer around every route.
pub async fn around(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let id: Arc<str> = match req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| request::accept_id(v.as_bytes()))
    {
        Some(sent) => sent.into(),
        None => request::new_id().into(),
    };
    let ip = app.client_ip(peer, req.headers());
    let route = app
        .observer
        .metrics()
        .map(|_| route_of(&app, req.uri().path()));
    #[cfg(not(feature = "otel"))]
    let span = tracing::info_span!("request", id = %id);
    // With traces, the span carries what a trace viewer shows (OpenTelemetry's HTTP names).
    #[cfg(feature = "otel")]
    let span = {
        let route = route_of(&app, req.uri().path());
        let method = crate::observe::traces::method_name(req.method());
        tracing::info_span!(
            "request",
            id = %id,
            otel.name = %format_args!("{method} {route}"),
            otel.kind = "server",
            http.request.method = method,
            http.route = route,
            http.response.status_code = tracing::field::Empty,
        )
    };
    #[cfg(feature = "otel")]
    crate::observe::traces::adopt_parent(
        &span,
        req.headers(),
        app.trust_any_traceparent || app.is_trusted_proxy(peer.ip()),
    );
    #[cfg(feature = "otel")]
    let recorded = span.clone();
    let context = RequestContext {
        id: id.clone(),
        ip: Some(ip),
    };
    let mut resp = context.scope(next.run(req)).instrument(span).await;
    #[cfg(feature = "otel")]
    recorded.record("http.response.status_code", resp.status().as_u16());
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    if let (Some(m), Some(route)) = (app.observer.metrics(), route) {
        m.http_requests
            .get_or_create(&RouteLabels {
                route,
                status: resp.status().as_u16(),
            })
            .inc();
        m.http_duration
            .get_or_create(&RouteOnly { route })
            .observe(started.elapsed().as_secs_f64());
    }
    resp
}

/// `/metrics` on the main listener: local processes (not through a proxy), or the configured
/// bearer token.
pub async fn metrics(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let Some(m) = app.observer.metrics() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // A process on this host: the TCP peer itself is loopback, and not a reverse proxy
    // (whose clients, local or not, are not this host). `X-Forwarded-For` never decides it.
    let loopback = peer.ip().is_loopback() && !app.is_trusted_proxy(peer.ip());
    let token_ok = app.metrics_token.as_deref().is_some_and(|want| {
        super::headers::bearer_token(&headers)
            .ok()
            .flatten()
            .is_some_and(|got| crate::crypto::constant_time_eq(got.as_bytes(), want.as_bytes()))
    });
    if !(loopback || token_ok) {
        return StatusCode::NOT_FOUND.into_response();
    }
    exposition(m)
}

pub fn exposition(m: &crate::observe::Metrics) -> Response {
    (
        [(header::CONTENT_TYPE, crate::observe::metrics::CONTENT_TYPE)],
        m.encode(),
    )
        .into_response()
}

/// `/healthz`: the process answers.
pub async fn healthz() -> Response {
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({ "status": "ok" })),
    )
        .into_response()
}

use axum::Json;

/// How long `/readyz` waits for the store.
const STORE_CHECK: Duration = Duration::from_secs(2);

/// `/readyz`: the store answers, the signing keys are loaded; and what each upstream last
/// did (reported, not required: one upstream down must not take the gateway out of a load
/// balancer that serves the others).
pub async fn readyz(State(app): State<App>) -> Response {
    let started = Instant::now();
    let store = tokio::time::timeout(STORE_CHECK, app.auth.store.ping()).await;
    let latency_ms = started.elapsed().as_millis() as u64;
    let (store_ok, store_error) = match store {
        Ok(Ok(_)) => (true, None),
        Ok(Err(_)) => (false, Some("the store refused the check")),
        Err(_) => (false, Some("the store did not answer in 2 s")),
    };
    if let Some(m) = app.observer.metrics() {
        m.store_timed("ready_check", started.elapsed(), store_ok);
    }
    let kid = app.proxy.signer.active_kid();
    let keys_ok = !kid.is_empty();
    let upstreams: serde_json::Map<String, Value> = app
        .proxy
        .upstreams()
        .iter()
        .map(|u| {
            let s = u.health.read();
            let mut v = json!({ "state": u.state(&s) });
            if let Value::Object(o) = &mut v
                && let Value::Object(fields) = json!(s)
            {
                o.extend(fields.into_iter().filter(|(_, v)| !v.is_null()));
            }
            (u.name.clone(), v)
        })
        .collect();
    let ready = store_ok && keys_ok;
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "store": { "ok": store_ok, "latency_ms": latency_ms, "error": store_error },
        "keys": { "ok": keys_ok },
        "upstreams": upstreams,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, [(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}
