//! The console for every signed-in person: the applications they allowed (revocable), their
//! upstream connections, their browser sessions (each can be ended), and a way to authorize
//! a device. Server-rendered under the browser path (where the session cookie goes), no
//! script; every form carries a token derived from the session cookie.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};

use super::connect::{expired_form, form_token, page, query, signed_in, token_ok};
use super::errors::no_store;
use super::{App, oauth, pages};
use crate::authorization::authorize::PageError;

fn home(app: &App) -> String {
    format!("{}/console", app.auth.browser_path())
}

/// `GET /console`: where people are told to go; the pages live under the browser path.
pub async fn redirect(State(app): State<App>) -> Response {
    no_store(Redirect::to(&home(&app)).into_response())
}

/// `GET …/authorize/console`.
pub async fn page_for_person(State(app): State<App>, headers: HeaderMap, uri: Uri) -> Response {
    let note = match query(&uri).get("done").map(String::as_str) {
        Some("revoked") => Some("The application's access was revoked."),
        Some("ended") => Some("That browser session was ended."),
        Some("missing") => Some("That was not yours, or it had ended already."),
        _ => None,
    };
    let result: Result<Response, PageError> = async {
        let Some((secret, user_id)) = signed_in(&app, &headers).await? else {
            let to = format!("{}/signin?console=1", app.auth.browser_path());
            return Ok(no_store(Redirect::to(&to).into_response()));
        };
        let user = app
            .auth
            .store
            .user_by_id(&user_id)
            .await
            .map_err(crate::authorization::OAuthError::from)?;
        let grants = app.auth.own_grants(&user_id).await?;
        let sessions = app.auth.own_sessions(&user_id).await?;
        let mine = crate::crypto::hash_secret(&secret);
        let connections = match &app.broker {
            Some(b) => Some(b.statuses(&user_id).await.map_err(|e| {
                tracing::warn!(error = %e, "the console could not list connections");
                PageError {
                    status: 503,
                    message: "Your connections cannot be listed just now. Try again shortly."
                        .into(),
                }
            })?),
            None => None,
        };
        Ok(page(
            StatusCode::OK,
            pages::console(&pages::ConsoleView {
                administers: match &user {
                    Some(u) => super::admin::administers(&app, u).await?,
                    None => false,
                },
                username: user.map(|u| u.username).unwrap_or_default(),
                base: app.auth.browser_path(),
                csrf: form_token("console", &secret),
                grants: &grants,
                sessions: &sessions,
                this_session: &mine,
                connections: connections.as_deref(),
                note,
            }),
        ))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// The person and the form, checked: (session secret, user id, fields).
async fn checked_form(
    app: &App,
    headers: &HeaderMap,
    body: Body,
) -> Result<(String, String, std::collections::HashMap<String, String>), PageError> {
    let p = oauth::read_page_form(app, headers, body).await?;
    let Some((secret, user_id)) = signed_in(app, headers).await? else {
        return Err(expired_form("the console"));
    };
    if !token_ok("console", &secret, p.get("csrf").map(String::as_str)) {
        return Err(expired_form("the console"));
    }
    Ok((secret, user_id, p))
}

/// `POST …/authorize/console/grants/revoke` with `grant`.
pub async fn revoke_grant(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    let result: Result<Response, PageError> = async {
        let (_, user_id, p) = checked_form(&app, &headers, body).await?;
        let grant = p.get("grant").map(String::as_str).unwrap_or("");
        let done = if app.auth.revoke_own_grant(&user_id, grant).await? {
            "revoked"
        } else {
            "missing"
        };
        Ok(no_store(
            Redirect::to(&format!("{}?done={done}", home(&app))).into_response(),
        ))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `POST …/authorize/console/sessions/end` with `session` (the session's hash). Ending this
/// browser's own session signs it out.
pub async fn end_session(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    let result: Result<Response, PageError> = async {
        let (secret, user_id, p) = checked_form(&app, &headers, body).await?;
        let session = p.get("session").map(String::as_str).unwrap_or("");
        let ended = app.auth.end_own_session(&user_id, session).await?;
        if ended && session == crate::crypto::hash_secret(&secret) {
            let mut resp = no_store(Redirect::to(&home(&app)).into_response());
            oauth::clear_session_cookie(&app, &mut resp);
            return Ok(resp);
        }
        let done = if ended { "ended" } else { "missing" };
        Ok(no_store(
            Redirect::to(&format!("{}?done={done}", home(&app))).into_response(),
        ))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}
