//! A local stand-in for GitHub (no real GitHub is reachable here): its OAuth endpoints
//! (`/login/oauth/authorize`, `/login/oauth/access_token`, with GitHub's habit of answering
//! a failed exchange with `200` and an `error`) and the REST API shapes the gateway reads
//! (`/api/v3/user`, `/user/emails`, `/user/orgs`, `/user/teams`), as GitHub Enterprise
//! Server lays them out. The person who "approves" is whoever the test names.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

#[derive(Clone)]
pub struct GitHubUser {
    pub id: u64,
    pub login: &'static str,
    /// (address, primary, verified)
    pub emails: Vec<(&'static str, bool, bool)>,
    pub orgs: Vec<&'static str>,
    /// (org, team slug)
    pub teams: Vec<(&'static str, &'static str)>,
}

#[derive(Default)]
struct Inner {
    /// Who approves the next authorization.
    next: Option<GitHubUser>,
    /// code → (user, code_challenge, redirect_uri)
    codes: HashMap<String, (GitHubUser, String, String)>,
    tokens: HashMap<String, GitHubUser>,
    counter: u64,
}

#[derive(Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    client_id: String,
    secret: String,
}

pub struct GitHubFixture {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GitHubFixture {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GitHubFixture {
    pub async fn start(client_id: &str, secret: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let inner = Arc::new(Mutex::new(Inner::default()));
        let shared = Shared {
            inner: inner.clone(),
            client_id: client_id.into(),
            secret: secret.into(),
        };
        let app = Router::new()
            .route("/login/oauth/authorize", get(authorize))
            .route("/login/oauth/access_token", post(access_token))
            .route("/api/v3/user", get(user))
            .route("/api/v3/user/emails", get(emails))
            .route("/api/v3/user/orgs", get(orgs))
            .route("/api/v3/user/teams", get(teams))
            .with_state(shared);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, inner, task }
    }

    /// The person who approves the next authorization.
    pub fn next_user(&self, user: GitHubUser) {
        self.inner.lock().unwrap().next = Some(user);
    }
}

async fn authorize(State(s): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    if q.get("client_id") != Some(&s.client_id)
        || q.get("code_challenge_method").map(String::as_str) != Some("S256")
    {
        return (StatusCode::BAD_REQUEST, "bad request").into_response();
    }
    let mut inner = s.inner.lock().unwrap();
    let Some(user) = inner.next.clone() else {
        return (StatusCode::BAD_REQUEST, "nobody to approve").into_response();
    };
    inner.counter += 1;
    let code = format!("gh-code-{}", inner.counter);
    let redirect = q.get("redirect_uri").cloned().unwrap_or_default();
    inner.codes.insert(
        code.clone(),
        (
            user,
            q.get("code_challenge").cloned().unwrap_or_default(),
            redirect.clone(),
        ),
    );
    let mut to = url::Url::parse(&redirect).unwrap();
    to.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", q.get("state").map(String::as_str).unwrap_or(""));
    Redirect::to(to.as_str()).into_response()
}

async fn access_token(State(s): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let f: HashMap<String, String> = form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    // GitHub answers JSON only when asked to.
    assert!(
        headers
            .get("accept")
            .is_some_and(|a| a.to_str().unwrap().contains("application/json"))
    );
    if f.get("client_id") != Some(&s.client_id) || f.get("client_secret") != Some(&s.secret) {
        return Json(json!({"error": "incorrect_client_credentials"})).into_response();
    }
    let mut inner = s.inner.lock().unwrap();
    let found = f.get("code").and_then(|c| inner.codes.remove(c));
    let Some((user, challenge, redirect)) = found else {
        return Json(json!({"error": "bad_verification_code"})).into_response();
    };
    let verifier = f.get("code_verifier").cloned().unwrap_or_default();
    if !mcp_oauth_gateway::crypto::pkce_s256_matches(&verifier, &challenge)
        || f.get("redirect_uri") != Some(&redirect)
    {
        return Json(json!({"error": "bad_verification_code"})).into_response();
    }
    inner.counter += 1;
    let token = format!("gho_{}", inner.counter);
    inner.tokens.insert(token.clone(), user);
    Json(json!({"access_token": token, "token_type": "bearer", "scope": "read:user,user:email,read:org"}))
        .into_response()
}

fn who(s: &Shared, headers: &HeaderMap) -> Option<GitHubUser> {
    let token = headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    s.inner.lock().unwrap().tokens.get(token).cloned()
}

fn answer(s: &Shared, headers: &HeaderMap, f: impl Fn(&GitHubUser) -> Value) -> Response {
    match who(s, headers) {
        Some(u) => Json(f(&u)).into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "Bad credentials"})),
        )
            .into_response(),
    }
}

async fn user(State(s): State<Shared>, headers: HeaderMap) -> Response {
    answer(
        &s,
        &headers,
        |u| json!({"id": u.id, "login": u.login, "name": "Test Person", "email": null}),
    )
}

async fn emails(State(s): State<Shared>, headers: HeaderMap) -> Response {
    answer(&s, &headers, |u| {
        Value::Array(
            u.emails
                .iter()
                .map(|(e, primary, verified)| {
                    json!({"email": e, "primary": primary, "verified": verified, "visibility": null})
                })
                .collect(),
        )
    })
}

async fn orgs(State(s): State<Shared>, headers: HeaderMap) -> Response {
    answer(&s, &headers, |u| {
        Value::Array(
            u.orgs
                .iter()
                .map(|o| json!({"login": o, "id": 1}))
                .collect(),
        )
    })
}

async fn teams(State(s): State<Shared>, headers: HeaderMap) -> Response {
    answer(&s, &headers, |u| {
        Value::Array(
            u.teams
                .iter()
                .map(|(o, t)| json!({"slug": t, "name": t, "organization": {"login": o}}))
                .collect(),
        )
    })
}
