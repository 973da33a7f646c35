//! The broker's pages and API: the gateway's own sign-in, the connections page, the
//! confirmation that starts a connect flow, the way back from the upstream's authorization
//! server, and the JSON API for agent platforms. Everything a browser sees lives under the
//! browser path, where the session cookie goes; the redirect URI registered upstream
//! bounces there.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::errors::{html, no_store};
use super::{App, oauth, pages};
use crate::authorization::authorize::PageError;
use crate::broker::{Broker, BrokerError};

fn broker(app: &App) -> Result<&std::sync::Arc<Broker>, PageError> {
    app.broker.as_ref().ok_or(PageError {
        status: 404,
        message: "No upstream here needs a connected account.".into(),
    })
}

/// A form token derived from a secret only this browser holds (its session or binding
/// cookie): a page of another site cannot know it.
pub(super) fn form_token(purpose: &str, secret: &str) -> String {
    let mut h = Sha256::new();
    h.update(purpose.as_bytes());
    h.update([0]);
    h.update(secret.as_bytes());
    crate::crypto::hex(&h.finalize()[..16])
}

pub(super) fn token_ok(purpose: &str, secret: &str, sent: Option<&str>) -> bool {
    sent.is_some_and(|s| {
        crate::crypto::constant_time_eq(s.as_bytes(), form_token(purpose, secret).as_bytes())
    })
}

/// The signed-in person of this browser: (session cookie secret, user id).
pub(super) async fn signed_in(
    app: &App,
    headers: &HeaderMap,
) -> Result<Option<(String, String)>, PageError> {
    let Some(secret) = oauth::session_cookie(app, headers) else {
        return Ok(None);
    };
    let Some(session) = app.auth.session(&secret).await? else {
        return Ok(None);
    };
    // A person removed or disabled since (their sessions end then; this closes the race).
    let live = app
        .auth
        .store
        .user_by_id(&session.user_id)
        .await
        .map_err(crate::authorization::OAuthError::from)?
        .is_some_and(|u| u.disabled_at.is_none());
    Ok(live.then_some((secret, session.user_id)))
}

/// A form posted without the token this browser was given for it.
pub(super) fn expired_form(where_: &str) -> PageError {
    PageError {
        status: 403,
        message: format!("This form has expired. Open {where_} again."),
    }
}

pub(super) fn page(status: StatusCode, body: String) -> Response {
    no_store(html(status, body))
}

fn broker_page_error(e: BrokerError) -> PageError {
    let status = match e {
        BrokerError::UnknownUpstream(_) => 404,
        BrokerError::Store(_) | BrokerError::Sealing(_) => 500,
        BrokerError::Discovery(_) | BrokerError::TokenFailed(_) | BrokerError::Registration(_) => {
            502
        }
        _ => 400,
    };
    if status >= 500 {
        tracing::warn!(error = %e, "connect flow failed");
    }
    PageError {
        status,
        // Remote text inside is printed inert by the broker and escaped by the page.
        message: e.to_string(),
    }
}

pub(super) fn query(uri: &Uri) -> HashMap<String, String> {
    form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .take(32)
        .collect()
}

/// Where the sign-in page sends the person afterwards: the device page, a connect page or
/// the list, by name (never a URL given by the request).
fn after_sign_in(
    app: &App,
    upstream: Option<&str>,
    scope: Option<&str>,
    device: Option<&str>,
    console: bool,
) -> String {
    let base = app.auth.browser_path();
    if let Some(typed) = device {
        return super::device::page_url(app, typed);
    }
    if console {
        return format!("{base}/console");
    }
    match upstream.filter(|u| app.broker.as_ref().is_some_and(|b| b.has(u))) {
        Some(u) => {
            let mut to = format!("{base}/connect/{u}");
            if let Some(s) = scope {
                to.push_str("?scope=");
                to.extend(form_urlencoded::byte_serialize(s.as_bytes()));
            }
            to
        }
        None => format!("{base}/connections"),
    }
}

fn to_sign_in(app: &App, upstream: Option<&str>, scope: Option<&str>) -> Response {
    let mut to = format!("{}/signin", app.auth.browser_path());
    let mut q = form_urlencoded::Serializer::new(String::new());
    if let Some(u) = upstream {
        q.append_pair("upstream", u);
    }
    if let Some(s) = scope {
        q.append_pair("scope", s);
    }
    let q = q.finish();
    if !q.is_empty() {
        to.push('?');
        to.push_str(&q);
    }
    no_store(Redirect::to(&to).into_response())
}

/// `GET …/authorize/signin`.
pub async fn sign_in_page(State(app): State<App>, headers: HeaderMap, uri: Uri) -> Response {
    let (binding, fresh) = oauth::binding_cookie(&app, &headers);
    let q = query(&uri);
    let action = sign_in_action(&app, &q);
    let body = pages::sign_in(
        &app.auth.password_sources(),
        &action,
        &form_token("signin", &binding),
        None,
    );
    let mut resp = page(StatusCode::OK, body);
    if fresh {
        oauth::set_binding_cookie(&app, &mut resp, &binding);
    }
    resp
}

fn sign_in_action(app: &App, q: &HashMap<String, String>) -> String {
    let mut action = format!("{}/signin", app.auth.browser_path());
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for k in ["upstream", "scope", "device", "console"] {
        if let Some(v) = q.get(k) {
            ser.append_pair(k, v);
        }
    }
    let s = ser.finish();
    if !s.is_empty() {
        action.push('?');
        action.push_str(&s);
    }
    action
}

/// `POST …/authorize/signin`: a password source's check; a session cookie on success.
pub async fn sign_in(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Response {
    let ip = app.client_ip(peer, &headers).to_string();
    let q = query(&uri);
    type Outcome = Result<(crate::authorization::authorize::NewSession, String), (String, u16)>;
    let result: Result<(Outcome, String), PageError> = async {
        let p = oauth::read_page_form(&app, &headers, body).await?;
        let binding = oauth::existing_binding(&app, &headers);
        // Only a form this browser was given: no signing a person in from another site.
        let Some(binding) = binding else {
            return Err(expired_form("the sign-in page"));
        };
        if !token_ok("signin", &binding, p.get("csrf").map(String::as_str)) {
            return Err(expired_form("the sign-in page"));
        }
        let field = |k: &str| p.get(k).map(String::as_str).unwrap_or("");
        let source = p.get("source").map(String::as_str);
        let outcome = app
            .auth
            .sign_in(source, field("username"), field("password"), &ip)
            .await?;
        Ok((outcome, binding))
    }
    .await;
    match result {
        Err(e) => e.into_response(),
        Ok((Err((message, status)), binding)) => page(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            pages::sign_in(
                &app.auth.password_sources(),
                &sign_in_action(&app, &q),
                &form_token("signin", &binding),
                Some(&message),
            ),
        ),
        Ok((Ok((session, _user)), _)) => {
            let to = after_sign_in(
                &app,
                q.get("upstream").map(String::as_str),
                q.get("scope").map(String::as_str),
                q.get("device").map(String::as_str),
                q.contains_key("console"),
            );
            let mut resp = no_store(Redirect::to(&to).into_response());
            oauth::set_session_cookie(&app, &mut resp, &session.secret, session.max_age);
            resp
        }
    }
}

/// `GET …/authorize/connections`.
pub async fn connections_page(State(app): State<App>, headers: HeaderMap, uri: Uri) -> Response {
    let result: Result<Response, PageError> = async {
        let b = broker(&app)?;
        let Some((secret, user)) = signed_in(&app, &headers).await? else {
            return Ok(to_sign_in(&app, None, None));
        };
        let list = b.statuses(&user).await.map_err(broker_page_error)?;
        let note = query(&uri).get("done").map(|d| match d.as_str() {
            "disconnected" => "Disconnected.",
            _ => "Done.",
        });
        Ok(page(
            StatusCode::OK,
            pages::connections(
                &list,
                &app.auth.browser_path(),
                &form_token("page", &secret),
                note,
            ),
        ))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `GET …/authorize/connect/{upstream}`: what will happen, and a button.
pub async fn connect_page(
    State(app): State<App>,
    Path(upstream): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let q = query(&uri);
    let scope = q.get("scope").map(String::as_str);
    let result: Result<Response, PageError> = async {
        let b = broker(&app)?;
        if !b.has(&upstream) {
            return Err(broker_page_error(BrokerError::UnknownUpstream(
                upstream.clone(),
            )));
        }
        let Some((secret, _)) = signed_in(&app, &headers).await? else {
            return Ok(to_sign_in(&app, Some(&upstream), scope));
        };
        let plan = b.plan(&upstream, scope).await.map_err(broker_page_error)?;
        let action = format!("{}/connect/{}", app.auth.browser_path(), upstream);
        Ok(page(
            StatusCode::OK,
            pages::connect(&plan, &action, &form_token("page", &secret), scope, None),
        ))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// Right after the person consented to a client for `upstream`: the connect page, with the
/// authorization request that waits for it (its code is issued when the flow comes back, or
/// at once if the person goes on without connecting).
pub(super) async fn connect_first_page(
    app: &App,
    b: &Broker,
    upstream: &str,
    secret: &str,
    request: &str,
    csrf: &str,
) -> Response {
    match b.plan(upstream, None).await {
        Ok(plan) => page(
            StatusCode::OK,
            pages::connect(
                &plan,
                &format!("{}/connect/{upstream}", app.auth.browser_path()),
                &form_token("page", secret),
                None,
                Some((
                    request,
                    csrf,
                    &format!("{}/consent", app.auth.browser_path()),
                )),
            ),
        ),
        Err(e) => broker_page_error(e).into_response(),
    }
}

/// `POST …/authorize/connect/{upstream}`: confirmed; off to the upstream's server.
pub async fn connect_start(
    State(app): State<App>,
    Path(upstream): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result: Result<Response, PageError> = async {
        let b = broker(&app)?;
        let p = oauth::read_page_form(&app, &headers, body).await?;
        let Some((secret, user)) = signed_in(&app, &headers).await? else {
            return Ok(to_sign_in(&app, Some(&upstream), None));
        };
        if !token_ok("page", &secret, p.get("csrf").map(String::as_str)) {
            return Err(expired_form("the page"));
        }
        let session_hash = crate::crypto::hash_secret(&secret);
        let then = match (p.get("then_request"), p.get("then_csrf")) {
            (Some(r), Some(c)) if r.len() <= 100 && c.len() <= 100 => Some((r.clone(), c.clone())),
            _ => None,
        };
        let url = b
            .start(
                &upstream,
                &user,
                &session_hash,
                p.get("scope").map(String::as_str),
                then,
            )
            .await
            .map_err(broker_page_error)?;
        Ok(no_store(Redirect::to(&url).into_response()))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `GET /connect/callback/{upstream}` (the redirect URI registered upstream): bounced under
/// the browser path, where the session cookie goes.
pub async fn callback(State(app): State<App>, Path(upstream): Path<String>, uri: Uri) -> Response {
    if !app.broker.as_ref().is_some_and(|b| b.has(&upstream)) {
        return broker_page_error(BrokerError::UnknownUpstream(upstream)).into_response();
    }
    let mut to = format!("{}/connect-return/{upstream}", app.auth.browser_path());
    if let Some(q) = uri.query() {
        to.push('?');
        to.push_str(q);
    }
    no_store(Redirect::to(&to).into_response())
}

/// `GET …/authorize/connect-return`: the code becomes tokens in the vault, for the person
/// of this browser session who started it, or nothing is stored.
pub async fn connect_return(
    State(app): State<App>,
    Path(via): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let result: Result<Response, PageError> = async {
        let b = broker(&app)?;
        let Some((secret, _)) = signed_in(&app, &headers).await? else {
            // Used up here, so that the address cannot be finished in another browser.
            b.abandon(&query(&uri)).await;
            return Err(PageError {
                status: 403,
                message: "This browser is not signed in to the gateway, or not as the person who started this connection.".into(),
            });
        };
        let done = b
            .finish(&via, &query(&uri), &crate::crypto::hash_secret(&secret))
            .await
            .map_err(broker_page_error)?;
        // An application's code was waiting for this connection: on to it.
        if let Some((request, csrf)) = &done.then {
            return Ok(oauth::approve_waiting(&app, &headers, request, csrf).await);
        }
        Ok(page(
            StatusCode::OK,
            pages::connected(
                &done.upstream,
                &format!("{}/connections", app.auth.browser_path()),
            ),
        ))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `POST …/authorize/connections/{upstream}/disconnect`.
pub async fn disconnect(
    State(app): State<App>,
    Path(upstream): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result: Result<Response, PageError> = async {
        let b = broker(&app)?;
        let p = oauth::read_page_form(&app, &headers, body).await?;
        let Some((secret, user)) = signed_in(&app, &headers).await? else {
            return Ok(to_sign_in(&app, None, None));
        };
        if !token_ok("page", &secret, p.get("csrf").map(String::as_str)) {
            return Err(expired_form("the page"));
        }
        b.disconnect(&upstream, &user)
            .await
            .map_err(broker_page_error)?;
        Ok(no_store(
            Redirect::to(&format!(
                "{}/connections?done=disconnected",
                app.auth.browser_path()
            ))
            .into_response(),
        ))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// The JSON API's caller: a gateway access token for an OAuth upstream's resource, which
/// speaks for that person about that upstream only (a token for another resource — one an
/// unrelated client holds — cannot list or end this connection). Returns (person, upstream).
async fn api_user(app: &App, headers: &HeaderMap) -> Result<(String, String), Response> {
    let unauthorized = |m: &str| {
        (
            StatusCode::UNAUTHORIZED,
            [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(json!({"error": "invalid_token", "error_description": m})),
        )
            .into_response()
    };
    let token = super::headers::bearer_token(headers).map_err(unauthorized)?;
    if token.is_none() {
        return Err(unauthorized("a bearer token is required"));
    }
    let oauth = |name: &str| app.broker.as_ref().is_some_and(|b| b.has(name));
    for r in app.auth.resources.iter().filter(|r| oauth(&r.name)) {
        match app.auth.check_bearer(token, &r.url, &r.scopes).await {
            Ok(p) => {
                return p
                    .user_id
                    .map(|u| (u, r.name.clone()))
                    .ok_or_else(|| unauthorized("this token acts for no person"));
            }
            Err(crate::authorization::token::BearerError::Unavailable) => {
                return Err((
                    StatusCode::SERVICE_UNAVAILABLE,
                    axum::Json(json!({"error": "temporarily_unavailable"})),
                )
                    .into_response());
            }
            Err(_) => {}
        }
    }
    Err(unauthorized(
        "the access token is not valid for an upstream that needs a connected account",
    ))
}

fn api_error(e: BrokerError) -> Response {
    let status = match &e {
        BrokerError::UnknownUpstream(_) => StatusCode::NOT_FOUND,
        BrokerError::Store(_) | BrokerError::Sealing(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_GATEWAY,
    };
    if status.is_server_error() {
        tracing::warn!(error = %e, "connections API failed");
    }
    (status, axum::Json(json!({"error": e.to_string()}))).into_response()
}

/// `GET /connections`: this person's connections.
pub async fn api_list(State(app): State<App>, headers: HeaderMap) -> Response {
    let (user, upstream) = match api_user(&app, &headers).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let Some(b) = &app.broker else {
        return no_store(axum::Json(json!({"connections": []})).into_response());
    };
    match b.statuses(&user).await {
        Ok(list) => {
            let list: Vec<_> = list
                .into_iter()
                .filter(|c| c.upstream == upstream)
                .collect();
            no_store(axum::Json(json!({"connections": list})).into_response())
        }
        Err(e) => api_error(e),
    }
}

/// `POST /connections/{upstream}`: where the person connects (the gateway's page, which
/// needs their sign-in in a browser; never a pre-authenticated address).
pub async fn api_start(
    State(app): State<App>,
    Path(upstream): Path<String>,
    headers: HeaderMap,
) -> Response {
    match api_user(&app, &headers).await {
        Err(r) => return r,
        Ok((_, allowed)) if allowed != upstream => {
            return api_error(BrokerError::UnknownUpstream(upstream));
        }
        Ok(_) => {}
    }
    match &app.broker {
        Some(b) if b.has(&upstream) => no_store(
            axum::Json(json!({"connect_url": b.connect_url(&upstream, None)})).into_response(),
        ),
        _ => api_error(BrokerError::UnknownUpstream(upstream)),
    }
}

/// `DELETE /connections/{upstream}`.
pub async fn api_disconnect(
    State(app): State<App>,
    Path(upstream): Path<String>,
    headers: HeaderMap,
) -> Response {
    let user = match api_user(&app, &headers).await {
        Ok((u, allowed)) if allowed == upstream => u,
        Ok(_) => return api_error(BrokerError::UnknownUpstream(upstream)),
        Err(r) => return r,
    };
    let Some(b) = &app.broker else {
        return api_error(BrokerError::UnknownUpstream(upstream));
    };
    match b.disconnect(&upstream, &user).await {
        Ok(was) => axum::Json(json!({"disconnected": was})).into_response(),
        Err(e) => api_error(e),
    }
}

/// `GET /connect/clients/{upstream}`: the gateway's Client ID Metadata Document for one
/// upstream, which its authorization server fetches when this address is the client id.
pub async fn client_metadata(State(app): State<App>, Path(upstream): Path<String>) -> Response {
    document(
        app.broker
            .as_ref()
            .and_then(|b| b.client_metadata(Some(&upstream))),
    )
}

/// `GET /connect/client-metadata.json`: the one document naming every upstream's redirect
/// URI, for an operator who publishes it at `[broker] client_metadata_url`.
pub async fn published_client_metadata(State(app): State<App>) -> Response {
    document(app.broker.as_ref().and_then(|b| b.client_metadata(None)))
}

fn document(doc: Option<serde_json::Value>) -> Response {
    let Some(doc) = doc else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut resp = axum::Json(doc).into_response();
    resp.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("public, max-age=3600"),
    );
    resp
}
