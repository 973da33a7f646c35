//! Handlers of the authorization server's endpoints: parse, call, answer. Nothing decides
//! anything here.

use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, OriginalUri, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::Value;

use super::errors::{html, no_store};
use super::{App, pages};
use crate::authorization::authorize::{AuthorizeStep, PageError};
use crate::authorization::params::Params;
use crate::authorization::{ErrorCode, OAuthError};

fn json_public(v: Value) -> Response {
    let mut resp = axum::Json(v).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    resp
}

pub async fn server_metadata(State(app): State<App>) -> Response {
    app.auth.policy.get().await;
    json_public(app.auth.server_metadata())
}

pub async fn jwks(State(app): State<App>) -> Response {
    json_public(app.proxy.signer.jwks())
}

pub async fn resource_metadata(State(app): State<App>, OriginalUri(uri): OriginalUri) -> Response {
    let suffix = uri
        .path()
        .strip_prefix("/.well-known/oauth-protected-resource")
        .unwrap_or("");
    let resources = &app.auth.resources;
    let found = if suffix.is_empty() {
        resources.first()
    } else {
        resources.iter().find(|r| r.path == suffix)
    };
    match found {
        Some(r) => json_public(app.auth.resource_metadata(r)),
        None => not_found().await,
    }
}

pub async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(
            serde_json::json!({"error": "not_found", "error_description": "no such endpoint"}),
        ),
    )
        .into_response()
}

/// Reads a body up to the configured limit.
async fn read_body(app: &App, body: Body) -> Result<Bytes, OAuthError> {
    let read = tokio::time::timeout(app.body_timeout, axum::body::to_bytes(body, app.max_body))
        .await
        .map_err(|_| OAuthError::invalid_request("the request body did not arrive in time"))?;
    read.map_err(|_| {
        OAuthError::invalid_request(format!(
            "the request body is larger than {} bytes",
            app.max_body
        ))
    })
}

fn content_type_is(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case(expected)
        })
        .unwrap_or(false)
}

/// A form POST: the right content type, a bounded body, strict parameters.
async fn read_form(app: &App, headers: &HeaderMap, body: Body) -> Result<Params, OAuthError> {
    if !content_type_is(headers, "application/x-www-form-urlencoded") {
        return Err(OAuthError::invalid_request(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let bytes = read_body(app, body).await?;
    Params::parse(&bytes)
}

/// The common front of the client-authenticated form endpoints (token, revoke, introspect):
/// Basic credentials if any, then the form. Errors are logged (without secrets) and mapped.
pub(super) async fn client_form(
    app: &App,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Params, Option<(String, String)>), OAuthError> {
    let basic = super::headers::basic_credentials(headers)?;
    let params = read_form(app, headers, body).await?;
    Ok((params, basic))
}

pub(super) fn refused(endpoint: &'static str, e: OAuthError) -> Response {
    tracing::info!(endpoint, error = e.code.as_str(), description = ?e.description, "request refused");
    e.into_response()
}

pub async fn token(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        let (params, basic) = client_form(&app, &headers, body).await?;
        app.auth.token(&params, basic).await
    };
    match result.await {
        Ok(t) => no_store(axum::Json(t).into_response()),
        Err(e) => refused("token", e),
    }
}

pub async fn revoke(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        let (params, basic) = client_form(&app, &headers, body).await?;
        app.auth.revoke(&params, basic).await
    };
    match result.await {
        Ok(()) => no_store(StatusCode::OK.into_response()),
        Err(e) => refused("revoke", e),
    }
}

pub async fn introspect(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        let (params, basic) = client_form(&app, &headers, body).await?;
        app.auth.introspect(&params, basic).await
    };
    match result.await {
        Ok(v) => no_store(axum::Json(v).into_response()),
        Err(e) => refused("introspect", e),
    }
}

pub async fn register(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        if !content_type_is(&headers, "application/json") {
            return Err(OAuthError::new(
                ErrorCode::InvalidClientMetadata,
                "the registration request must be application/json",
            ));
        }
        let bytes = read_body(&app, body).await?;
        let json: Value = serde_json::from_slice(&bytes).map_err(|e| {
            OAuthError::new(
                ErrorCode::InvalidClientMetadata,
                format!("the body is not valid JSON: {e}"),
            )
        })?;
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(s, _)| s.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim().to_string());
        let ip = app.client_ip(peer, &headers).to_string();
        app.auth
            .register_client(&json, bearer.as_deref(), &ip)
            .await
    }
    .await;
    match result {
        Ok(v) => no_store((StatusCode::CREATED, axum::Json(v)).into_response()),
        Err(e) if e.code == ErrorCode::InvalidToken => {
            let mut resp = refused("register", e);
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
            resp
        }
        Err(e) => refused("register", e),
    }
}

fn cookie_name(app: &App, base: &'static str) -> String {
    let s = &app.auth.settings;
    match (s.secure_cookies, s.issuer_is_loopback) {
        // `__Host-` pins the cookie to this origin, path `/`, https only.
        (true, false) => format!("__Host-{base}"),
        // On loopback even https needs the narrow path (below); `__Secure-` allows one.
        (true, true) => format!("__Secure-{base}"),
        (false, _) => base.to_string(),
    }
}

const SESSION_COOKIE: &str = "mog_session";
/// Binds an authorization request to the browser that started it: its forms are accepted
/// only with this cookie, which a cross-site form post does not carry (SameSite=Lax).
const BINDING_COOKIE: &str = "mog_bind";

fn cookie(app: &App, headers: &HeaderMap, base: &'static str) -> Option<String> {
    super::headers::cookie_value(headers, &cookie_name(app, base))
}

/// Where the browser sends the cookies: only the sign-in pages. A native client's loopback
/// callback shares the gateway's host when the gateway is on loopback (cookies ignore
/// ports), and browsers send even `Secure` cookies to `http://127.0.0.1` (a secure context),
/// so there the path is what keeps them away. On https elsewhere `__Host-` requires `/`,
/// and `Secure` keeps them from http callbacks.
fn cookie_path(app: &App) -> String {
    let s = &app.auth.settings;
    if s.secure_cookies && !s.issuer_is_loopback {
        "/".into()
    } else {
        app.auth.browser_path()
    }
}

/// A browser that kept a cookie of an earlier version (path `/`) sends it beside the current
/// one, and a name sent twice counts as absent: tell such a browser to drop the old one.
/// Only then, so that a simple client's cookie jar never sees a cookie to delete.
fn forget_stale_cookies(app: &App, headers: &HeaderMap, mut resp: Response) -> Response {
    if cookie_path(app) == "/" {
        return resp;
    }
    for base in [SESSION_COOKIE, BINDING_COOKIE] {
        let name = cookie_name(app, base);
        let sent = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter(|c| c.trim().split_once('=').is_some_and(|(k, _)| k == name))
            .count();
        if sent > 1
            && let Ok(v) = HeaderValue::from_str(&format!("{name}=; Path=/; Max-Age=0"))
        {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}

fn set_cookie(
    app: &App,
    resp: &mut Response,
    base: &'static str,
    value: &str,
    max_age: Option<i64>,
) {
    let secure = if app.auth.settings.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let max_age = max_age
        .map(|s| format!("; Max-Age={s}"))
        .unwrap_or_default();
    let name = cookie_name(app, base);
    let path = cookie_path(app);
    let cookie = format!("{name}={value}; Path={path}; HttpOnly; SameSite=Lax{max_age}{secure}");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// The session cookie's secret, if the browser sent one.
pub(super) fn session_cookie(app: &App, headers: &HeaderMap) -> Option<String> {
    cookie(app, headers, SESSION_COOKIE)
}

/// Expires the session cookie in the browser (the session itself is ended by the caller).
pub(super) fn clear_session_cookie(app: &App, resp: &mut Response) {
    set_cookie(app, resp, SESSION_COOKIE, "", Some(0));
}

pub(super) fn set_session_cookie(app: &App, resp: &mut Response, secret: &str, max_age: i64) {
    set_cookie(app, resp, SESSION_COOKIE, secret, Some(max_age));
}

/// The browser's binding cookie when it has a usable one.
pub(super) fn existing_binding(app: &App, headers: &HeaderMap) -> Option<String> {
    cookie(app, headers, BINDING_COOKIE).filter(|b| (32..=100).contains(&b.len()))
}

/// The browser's binding cookie, or a new one (`true`: set it on the answer).
pub(super) fn binding_cookie(app: &App, headers: &HeaderMap) -> (String, bool) {
    match existing_binding(app, headers) {
        Some(b) => (b, false),
        None => (crate::crypto::new_secret(""), true),
    }
}

pub(super) fn set_binding_cookie(app: &App, resp: &mut Response, value: &str) {
    set_cookie(app, resp, BINDING_COOKIE, value, None);
}

/// A page's form (the gateway's own pages): the fields they use, each at most once.
pub(super) async fn read_page_form(
    app: &App,
    headers: &HeaderMap,
    body: Body,
) -> Result<std::collections::HashMap<String, String>, PageError> {
    let p = read_form(app, headers, body).await.map_err(page_error)?;
    let mut out = std::collections::HashMap::new();
    for k in [
        "csrf",
        "source",
        "username",
        "password",
        "scope",
        "then_request",
        "then_csrf",
        "user_code",
        "decision",
        "grant",
        "session",
        // The administrators' console.
        "action",
        "user",
        "client",
        "reason",
        "email",
        "groups",
        "kid",
        "dcr",
        "cimd",
        "cimd_allowed_domains",
        "cimd_blocked_domains",
        "approve_new_clients",
        "once",
    ] {
        if let Some(v) = p.get(k).map_err(page_error)? {
            out.insert(k.to_string(), v.to_string());
        }
    }
    Ok(out)
}

async fn session_user(
    app: &App,
    headers: &HeaderMap,
) -> Result<Option<crate::store::BrowserSession>, PageError> {
    match cookie(app, headers, SESSION_COOKIE) {
        Some(c) => Ok(app.auth.session(&c).await?),
        None => Ok(None),
    }
}

fn render_step(app: &App, step: AuthorizeStep, after_post: bool) -> Response {
    let base = &app.auth.settings.base_path;
    match step {
        AuthorizeStep::Login { ctx, error, status } => html(
            StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
            pages::login(&ctx, &format!("{base}/authorize/login"), error.as_deref()),
        ),
        AuthorizeStep::Consent { ctx } => {
            // Before a redirecting source's leg, the decision goes to that source's button.
            let action = match &ctx.via {
                Some(source) => format!("{base}/authorize/login/{}", source.name),
                None => format!("{base}/authorize/consent"),
            };
            html(StatusCode::OK, pages::consent(&ctx, &action))
        }
        AuthorizeStep::Stopped {
            message,
            redirect_host,
            back,
        } => html(
            StatusCode::BAD_REQUEST,
            pages::stopped(&message, &redirect_host, &back),
        ),
        AuthorizeStep::Redirect(url) => {
            let resp = if after_post {
                Redirect::to(&url).into_response()
            } else {
                (StatusCode::FOUND, [(header::LOCATION, url)]).into_response()
            };
            no_store(resp)
        }
    }
}

/// The answer to a finished sign-in attempt (a form, or the way back from a redirecting
/// source): the next step, with the new browser session's cookie when it succeeded.
fn signed_in_answer(
    app: &App,
    headers: &HeaderMap,
    result: Result<
        (
            AuthorizeStep,
            Option<crate::authorization::authorize::NewSession>,
        ),
        PageError,
    >,
    after_post: bool,
) -> Response {
    let resp = match result {
        Ok((step, session)) => {
            let mut resp = render_step(app, step, after_post);
            if let Some(s) = session {
                set_cookie(app, &mut resp, SESSION_COOKIE, &s.secret, Some(s.max_age));
            }
            resp
        }
        Err(e) => e.into_response(),
    };
    forget_stale_cookies(app, headers, resp)
}

fn page_error(e: OAuthError) -> PageError {
    PageError {
        status: 400,
        message: e.description,
    }
}

async fn authorize_with(
    app: App,
    headers: HeaderMap,
    params: Result<Params, OAuthError>,
    after_post: bool,
) -> Response {
    // Keep the browser's binding cookie when it has one; create one otherwise.
    let existing = cookie(&app, &headers, BINDING_COOKIE).filter(|b| (32..=100).contains(&b.len()));
    let binding = existing
        .clone()
        .unwrap_or_else(|| crate::crypto::new_secret(""));
    let result = async {
        let params = params.map_err(page_error)?;
        let user = session_user(&app, &headers).await?;
        app.auth.begin_authorization(&params, user, &binding).await
    }
    .await;
    let resp = match result {
        Ok(step) => {
            let mut resp = render_step(&app, step, after_post);
            if existing.is_none() {
                set_cookie(&app, &mut resp, BINDING_COOKIE, &binding, None);
            }
            resp
        }
        Err(e) => e.into_response(),
    };
    forget_stale_cookies(&app, &headers, resp)
}

pub async fn authorize(
    State(app): State<App>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let params = Params::parse(uri.query().unwrap_or("").as_bytes());
    authorize_with(app, headers, params, false).await
}

pub async fn authorize_post(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    let params = read_form(&app, &headers, body).await;
    authorize_with(app, headers, params, true).await
}

fn form_field<'a>(p: &'a Params, name: &str) -> Result<&'a str, PageError> {
    p.get(name).map_err(page_error)?.ok_or_else(|| PageError {
        status: 400,
        message: format!("The form is missing `{name}`."),
    })
}

pub async fn login(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let ip = app.client_ip(peer, &headers).to_string();
    let result = async {
        let p = read_form(&app, &headers, body).await.map_err(page_error)?;
        let (request, csrf) = (form_field(&p, "request")?, form_field(&p, "csrf")?);
        let source = p.get("source").map_err(page_error)?;
        let username = p.get("username").ok().flatten().unwrap_or("");
        let password = p.get("password").ok().flatten().unwrap_or("");
        let binding = cookie(&app, &headers, BINDING_COOKIE);
        app.auth
            .submit_login(
                request,
                csrf,
                source,
                username,
                password,
                &ip,
                binding.as_deref(),
            )
            .await
    }
    .await;
    signed_in_answer(&app, &headers, result, true)
}

/// POST of a redirecting source's button on the sign-in page (the consent page follows),
/// and of that consent page (off to the source, or back to the client when denied).
pub async fn login_redirect_start(
    State(app): State<App>,
    axum::extract::Path(source): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let p = read_form(&app, &headers, body).await.map_err(page_error)?;
        let (request, csrf) = (form_field(&p, "request")?, form_field(&p, "csrf")?);
        let decision = match p.get("decision").map_err(page_error)? {
            None => None,
            Some("allow") => Some(true),
            Some("deny") => Some(false),
            Some(_) => {
                return Err(PageError {
                    status: 400,
                    message: "The decision must be allow or deny.".into(),
                });
            }
        };
        let binding = cookie(&app, &headers, BINDING_COOKIE);
        app.auth
            .start_redirect_login(request, csrf, &source, decision, binding.as_deref())
            .await
    }
    .await;
    let resp = match result {
        Ok(step) => render_step(&app, step, true),
        Err(e) => e.into_response(),
    };
    forget_stale_cookies(&app, &headers, resp)
}

/// The callback registered at a redirecting source. The gateway's cookies are scoped to its
/// browser path, which this is not: the browser is sent on under it, with the same query.
pub async fn login_callback(
    State(app): State<App>,
    axum::extract::Path(source): axum::extract::Path<String>,
    uri: axum::http::Uri,
) -> Response {
    let Some(name) = app
        .auth
        .login
        .get(&source)
        .filter(|s| s.kind() == crate::login::SourceKind::Redirect)
        .map(|s| s.name().to_string())
    else {
        return not_found_page();
    };
    let mut to = format!("{}/login/{name}/return", app.auth.browser_path());
    if let Some(q) = uri.query() {
        to.push('?');
        to.push_str(q);
    }
    no_store(Redirect::to(&to).into_response())
}

/// Back from a redirecting source, under the browser path: the sign-in is finished.
pub async fn login_redirect_return(
    State(app): State<App>,
    axum::extract::Path(source): axum::extract::Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let ip = app.client_ip(peer, &headers).to_string();
    let params: Vec<(String, String)> =
        form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .take(64)
            .collect();
    let binding = cookie(&app, &headers, BINDING_COOKIE);
    let result = app
        .auth
        .finish_redirect_login(&source, &params, binding.as_deref(), &ip)
        .await;
    signed_in_answer(&app, &headers, result, false)
}

fn not_found_page() -> Response {
    PageError {
        status: 404,
        message: "There is no such way of signing in here.".into(),
    }
    .into_response()
}

pub async fn consent(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        let p = read_form(&app, &headers, body).await.map_err(page_error)?;
        let (request, csrf) = (form_field(&p, "request")?, form_field(&p, "csrf")?);
        let allow = match form_field(&p, "decision")? {
            "allow" => true,
            "deny" => false,
            _ => {
                return Err(PageError {
                    status: 400,
                    message: "The decision must be allow or deny.".into(),
                });
            }
        };
        let user = session_user(&app, &headers).await?;
        let binding = cookie(&app, &headers, BINDING_COOKIE);
        // An upstream that wants its connection made first: the connect page now, the code
        // once it is done (the request waits, unused).
        let later = p.get("connect").map_err(page_error)? == Some("later");
        if allow
            && !later
            && let (Some(session), Some(secret)) = (&user, session_cookie(&app, &headers))
            && let Some(upstream) = app
                .auth
                .pending_resource(request, csrf, binding.as_deref(), &session.user_id)
                .await?
                .and_then(|r| app.auth.resources.iter().find(|x| x.url == r))
                .map(|r| r.name.clone())
            && let Some(b) = &app.broker
            && b.connect_before_code(&upstream, &session.user_id).await
        {
            return Ok(Err(super::connect::connect_first_page(
                &app, b, &upstream, &secret, request, csrf,
            )
            .await));
        }
        app.auth
            .submit_consent(request, csrf, allow, user, binding.as_deref())
            .await
            .map(Ok)
    }
    .await;
    let resp = match result {
        Ok(Ok(step)) => render_step(&app, step, true),
        Ok(Err(page)) => page,
        Err(e) => e.into_response(),
    };
    forget_stale_cookies(&app, &headers, resp)
}

/// After a connect flow that an authorization request waited for: the request is approved
/// now, as its consent form would have, and the client gets its code.
pub(super) async fn approve_waiting(
    app: &App,
    headers: &HeaderMap,
    handle: &str,
    csrf: &str,
) -> Response {
    let result = async {
        let user = session_user(app, headers).await?;
        let binding = cookie(app, headers, BINDING_COOKIE);
        app.auth
            .submit_consent(handle, csrf, true, user, binding.as_deref())
            .await
    }
    .await;
    match result {
        Ok(step) => render_step(app, step, false),
        Err(e) => e.into_response(),
    }
}

/// `GET /logout`: the sign-out page lives under the browser path, where the cookies are.
pub async fn logout_redirect(State(app): State<App>) -> Response {
    no_store(Redirect::to(&format!("{}/logout", app.auth.browser_path())).into_response())
}

/// The sign-out page: a form, so that a link or an image elsewhere cannot sign anyone out.
pub async fn logout_page(State(app): State<App>, headers: HeaderMap) -> Response {
    let signed_in = matches!(session_user(&app, &headers).await, Ok(Some(_)));
    let action = format!("{}/logout", app.auth.browser_path());
    html(StatusCode::OK, pages::logout(&action, signed_in))
}

/// `POST` of the sign-out form: the session ends in the store, and the cookies are cleared.
pub async fn logout(State(app): State<App>, headers: HeaderMap) -> Response {
    // A form posted from another site: SameSite=Lax already keeps the cookie from it; the
    // Origin check refuses it outright.
    // The page posts to itself, so its Origin is the issuer's, or that of the host name the
    // browser used to reach this server (`127.0.0.1` for a `localhost` issuer).
    let same_origin = |origin: &str| {
        let issuer = url::Url::parse(&app.auth.settings.issuer)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default();
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let scheme = if app.auth.settings.secure_cookies {
            "https"
        } else {
            "http"
        };
        origin.eq_ignore_ascii_case(&issuer)
            || (!host.is_empty() && origin.eq_ignore_ascii_case(&format!("{scheme}://{host}")))
    };
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())
        && !same_origin(origin)
    {
        return PageError {
            status: 403,
            message: "Sign-out must come from this server's own page.".into(),
        }
        .into_response();
    }
    if let Some(c) = cookie(&app, &headers, SESSION_COOKIE)
        && let Err(e) = app.auth.end_session(&c).await
    {
        return PageError::from(e).into_response();
    }
    let mut resp = html(StatusCode::OK, pages::logout("", false));
    for base in [SESSION_COOKIE, BINDING_COOKIE] {
        set_cookie(&app, &mut resp, base, "", Some(0));
    }
    resp
}
