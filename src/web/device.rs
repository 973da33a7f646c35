//! The device authorization grant over HTTP: the client's endpoint
//! (`/device_authorization`) and the person's pages under the browser path ("Authorize a
//! device": enter the code, consent, done). The pages need the person signed in in this
//! browser; their forms carry tokens derived from the session cookie (no cross-site
//! approval), and the consent form's token is bound to the code it shows.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};

use super::connect::{expired_form, form_token, page, query, token_ok};
use super::errors::no_store;
use super::{App, oauth, pages};
use crate::authorization::authorize::PageError;
use crate::authorization::device::{DeviceLookup, normalize_user_code};

/// `POST /device_authorization` (RFC 8628 §3.1).
pub async fn device_authorization(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let ip = app.client_ip(peer, &headers).to_string();
    let result = async {
        let (params, basic) = oauth::client_form(&app, &headers, body).await?;
        app.auth.device_authorization(&params, basic, &ip).await
    };
    match result.await {
        Ok(v) => no_store(axum::Json(v).into_response()),
        Err(e) => oauth::refused("device_authorization", e),
    }
}

/// The device page, with a typed code carried along only in its normal form (never
/// anything else from the request).
pub(super) fn page_url(app: &App, typed: &str) -> String {
    let base = format!("{}/device", app.auth.browser_path());
    match normalize_user_code(typed) {
        Some(code) => format!(
            "{base}?user_code={}",
            crate::authorization::device::display_user_code(&code)
        ),
        None => base,
    }
}

fn action(app: &App) -> String {
    format!("{}/device", app.auth.browser_path())
}

fn decide_action(app: &App) -> String {
    format!("{}/device/decide", app.auth.browser_path())
}

/// The consent form's token: this browser's session and the device it shows (its binding,
/// which only the server knows — not the user code, which a person could guess).
fn decide_token(secret: &str, binding: &str) -> String {
    form_token(&format!("device-decide\n{binding}"), secret)
}

/// `GET …/authorize/device[?user_code=…]`.
pub async fn entry_page(State(app): State<App>, headers: HeaderMap, uri: Uri) -> Response {
    let q = query(&uri);
    let typed = q
        .get("user_code")
        .and_then(|c| normalize_user_code(c))
        .map(|c| crate::authorization::device::display_user_code(&c))
        .unwrap_or_default();
    let result: Result<Response, PageError> = async {
        let Some((secret, _)) = super::connect::signed_in(&app, &headers).await? else {
            let mut to = format!("{}/signin?device=", app.auth.browser_path());
            to.push_str(&typed);
            return Ok(no_store(Redirect::to(&to).into_response()));
        };
        Ok(page(
            StatusCode::OK,
            pages::device_entry(&action(&app), &form_token("device", &secret), &typed, None),
        ))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `POST …/authorize/device`: the typed code; the consent page when a device waits on it.
pub async fn enter_code(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let ip = app.client_ip(peer, &headers).to_string();
    let result: Result<Response, PageError> = async {
        let p = oauth::read_page_form(&app, &headers, body).await?;
        let Some((secret, user_id)) = super::connect::signed_in(&app, &headers).await? else {
            return Err(expired_form("the device page"));
        };
        if !token_ok("device", &secret, p.get("csrf").map(String::as_str)) {
            return Err(expired_form("the device page"));
        }
        let typed = p.get("user_code").map(String::as_str).unwrap_or("");
        let again = |status: StatusCode, error: &str| {
            page(
                status,
                pages::device_entry(
                    &action(&app),
                    &form_token("device", &secret),
                    &typed.chars().take(32).collect::<String>(),
                    Some(error),
                ),
            )
        };
        Ok(match app.auth.find_device(typed, &user_id, &ip).await? {
            DeviceLookup::Found(d) => page(
                StatusCode::OK,
                pages::device_consent(&d, &decide_action(&app), &decide_token(&secret, &d.binding)),
            ),
            DeviceLookup::NotFound => again(
                StatusCode::BAD_REQUEST,
                "No device is waiting for that code. Check it, or start again on the device: codes expire after 10 minutes.",
            ),
            DeviceLookup::Throttled { retry_after } => {
                let mut resp = again(
                    StatusCode::TOO_MANY_REQUESTS,
                    &format!(
                        "Too many codes tried. Try again in {} minutes.",
                        retry_after.div_ceil(60)
                    ),
                );
                if let Ok(v) = axum::http::HeaderValue::from_str(&retry_after.to_string()) {
                    resp.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
                }
                resp
            }
        })
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `POST …/authorize/device/decide`: allow or deny.
pub async fn decide(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    let result: Result<Response, PageError> = async {
        let p = oauth::read_page_form(&app, &headers, body).await?;
        let Some(secret) = oauth::session_cookie(&app, &headers) else {
            return Err(expired_form("the device page"));
        };
        let Some(session) = app.auth.session(&secret).await? else {
            return Err(expired_form("the device page"));
        };
        let Some(code) = p.get("user_code").and_then(|c| normalize_user_code(c)) else {
            return Err(expired_form("the device page"));
        };
        let sent = p.get("csrf").cloned();
        let proof = |binding: &str| {
            token_ok(
                &format!("device-decide\n{binding}"),
                &secret,
                sent.as_deref(),
            )
        };
        // Disabled or removed since signing in: the session is no longer good for this.
        if super::connect::signed_in(&app, &headers).await?.is_none() {
            return Err(expired_form("the device page"));
        }
        let allow = p.get("decision").map(String::as_str) == Some("allow");
        let decided = app
            .auth
            .decide_device(
                &code,
                &session.user_id,
                &session.login_source,
                allow,
                &proof,
            )
            .await
            .map_err(|e| {
                if e.code == crate::authorization::ErrorCode::InvalidRequest {
                    PageError {
                        status: 400,
                        message: e.description,
                    }
                } else {
                    PageError::from(e)
                }
            })?;
        // Decided already, expired, or a form that is not this browser's for this device:
        // one answer.
        if !decided {
            return Err(expired_form("the device page"));
        }
        Ok(page(StatusCode::OK, pages::device_done(allow)))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}
