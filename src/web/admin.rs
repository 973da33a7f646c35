//! The administrators' console: users, clients, everyone's grants, upstreams and their
//! health, signing keys and the audit log, under `…/authorize/console/admin`. Every change
//! goes through [`crate::admin::Admin`], the service the command line uses, acting as
//! `console:<username>` in the audit log. Who administers is decided on every request from
//! the user's current record (`[console] admins`, `admin_groups`): a person removed from the
//! list or disabled loses the pages at once. Forms carry a token derived from the session
//! cookie for the purpose `admin`, so a token of the person's own console does not open
//! them.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};

use super::admin_pages::{self as view, Section};
use super::connect::{expired_form, form_token, page, query, signed_in, token_ok};
use super::errors::no_store;
use super::{App, oauth};
use crate::admin::audit_log::AuditFilter;
use crate::admin::{Admin, AdminError, GrantSelection};
use crate::authorization::authorize::PageError;
use crate::store::UserRecord;

/// A signed-in administrator of this browser.
struct Operator {
    secret: String,
    user: UserRecord,
    admin: Admin,
}

/// The administrator of this browser; a redirect to sign in when nobody is signed in; 403
/// for anyone else.
async fn operator(app: &App, headers: &HeaderMap) -> Result<Result<Operator, Response>, PageError> {
    let Some((secret, user_id)) = signed_in(app, headers).await? else {
        let to = format!("{}/signin?console=1", app.auth.browser_path());
        return Ok(Err(no_store(Redirect::to(&to).into_response())));
    };
    let user = app
        .auth
        .store
        .user_by_id(&user_id)
        .await
        .map_err(crate::authorization::OAuthError::from)?;
    let Some(user) = user.filter(|u| u.disabled_at.is_none()) else {
        return Err(not_administrator());
    };
    match user {
        user if administers(app, &user).await? => Ok(Ok(Operator {
            admin: app.admin.acting_as(&format!("console:{}", user.username)),
            secret,
            user,
        })),
        user => {
            // Worth knowing (someone probing, or a list that is wrong), but any signed-in
            // person can ask: at most one line every ten seconds.
            static LAST: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(i64::MIN);
            let now = app.auth.clock.now();
            let last = LAST.load(std::sync::atomic::Ordering::Relaxed);
            if now.saturating_sub(last) >= 10
                && LAST
                    .compare_exchange(
                        last,
                        now,
                        std::sync::atomic::Ordering::Relaxed,
                        std::sync::atomic::Ordering::Relaxed,
                    )
                    .is_ok()
            {
                tracing::warn!(target: "audit", action = "console_refused", user = %user.username, "administration refused to a person who does not administer (at most one such line every 10 s)");
            }
            Err(not_administrator())
        }
    }
}

/// Whether this (live) user administers: `[console]` asked with their current name, groups
/// and links to login sources.
pub(super) async fn administers(app: &App, user: &UserRecord) -> Result<bool, PageError> {
    let identities = app
        .auth
        .store
        .identities_of(&user.id)
        .await
        .map_err(crate::authorization::OAuthError::from)?;
    Ok(app
        .console
        .administers(&user.username, &user.groups, &identities))
}

fn not_administrator() -> PageError {
    PageError {
        status: 403,
        message: "This page is for the gateway's administrators.".into(),
    }
}

fn admin_error(e: &AdminError) -> (StatusCode, String) {
    let status = match e {
        AdminError::NotFound { .. } => StatusCode::NOT_FOUND,
        AdminError::Exists { .. }
        | AdminError::ConfiguredClient { .. }
        | AdminError::OnlyLiveKey { .. }
        | AdminError::KeyStillSigns { .. }
        | AdminError::NoEncryptionKey
        | AdminError::NoAuditFile => StatusCode::CONFLICT,
        AdminError::Invalid(_) | AdminError::Accounts(_) | AdminError::NoGrantSelected => {
            StatusCode::BAD_REQUEST
        }
        AdminError::Keys(_) | AdminError::AuditLog(_) => StatusCode::INTERNAL_SERVER_ERROR,
        AdminError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    if status.is_server_error() {
        tracing::warn!(error = %e, "an administrative operation failed");
    }
    let message = match e {
        // The store's own words may name tables or hosts: not for a page.
        AdminError::Store(_) => "The store cannot be reached just now. Try again shortly.".into(),
        e => e.to_string(),
    };
    (status, message)
}

fn filled(p: &std::collections::HashMap<String, String>, key: &str) -> Option<String> {
    p.get(key)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// `GET …/console/admin[/section]`.
async fn show(app: App, headers: HeaderMap, uri: Uri, section: Section) -> Response {
    let result: Result<Response, PageError> = async {
        let op = match operator(&app, &headers).await? {
            Ok(op) => op,
            Err(to_sign_in) => return Ok(to_sign_in),
        };
        let q = query(&uri);
        let note = q.get("done").and_then(|d| view::done_note(d));
        let body = match section_body(&app, &op, section, &q).await {
            Ok(body) => body,
            Err(e) => {
                let (status, message) = admin_error(&e);
                return Ok(page(
                    status,
                    frame(&app, &op, section, None, Some(&message), ""),
                ));
            }
        };
        Ok(page(
            StatusCode::OK,
            frame(&app, &op, section, note, None, &body),
        ))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

fn frame(
    app: &App,
    op: &Operator,
    section: Section,
    note: Option<&str>,
    error: Option<&str>,
    body: &str,
) -> String {
    view::frame(&view::Frame {
        base: &app.auth.browser_path(),
        operator: &op.user.username,
        section,
        note,
        error,
        body,
    })
}

async fn section_body(
    app: &App,
    op: &Operator,
    section: Section,
    q: &std::collections::HashMap<String, String>,
) -> Result<String, AdminError> {
    let base = app.auth.browser_path();
    let csrf = form_token("admin", &op.secret);
    let forms = view::Forms {
        base: &base,
        csrf: &csrf,
    };
    Ok(match section {
        Section::Users => {
            let users = op.admin.list_users().await?;
            let mut links = op.admin.all_identities().await?;
            let mut rows = Vec::with_capacity(users.len());
            for u in users {
                let identities = links.remove(&u.id).unwrap_or_default();
                rows.push(view::UserRow {
                    administers: app.console.administers(&u.username, &u.groups, &identities),
                    user: u,
                    identities,
                });
            }
            view::users(&forms, &rows, &op.user.username)
        }
        Section::Clients => {
            let clients = op.admin.list_clients().await?;
            let blocked = op.admin.blocked_clients().await?;
            // Clients known only by the grants they hold (CIMD clients are not stored).
            let live = op
                .admin
                .list_grants(&GrantSelection::default(), false)
                .await?;
            let mut seen: Vec<String> = live
                .into_iter()
                .map(|g| g.client_id)
                .filter(|c| !clients.iter().any(|k| &k.client_id == c))
                .collect();
            seen.sort();
            seen.dedup();
            let (policy, configured) = op.admin.registration_policy().await?;
            let approvals = op.admin.client_approvals().await?;
            view::clients(
                &forms,
                &view::ClientsView {
                    clients: &clients,
                    seen: &seen,
                    blocked: &blocked,
                    approvals: &approvals,
                    policy: &policy,
                    configured,
                    registration: &app.registration,
                },
            )
        }
        Section::Grants => {
            let select = GrantSelection {
                user: filled(q, "user"),
                client: filled(q, "client"),
                grant: None,
            };
            let ended = q.get("ended").is_some_and(|v| v == "1");
            let grants = match op.admin.list_grants(&select, ended).await {
                Err(AdminError::NotFound { .. }) => Vec::new(),
                r => r?,
            };
            view::grants(&forms, &grants, &select, ended)
        }
        Section::Upstreams => {
            let rows: Vec<view::UpstreamRow> = app
                .proxy
                .upstreams()
                .iter()
                .map(|u| {
                    let seen = u.health.read();
                    view::UpstreamRow {
                        name: u.name.clone(),
                        state: u.state(&seen),
                        seen,
                    }
                })
                .collect();
            view::upstreams(&rows)
        }
        Section::Keys => {
            let keys = op.admin.list_signing_keys().await?;
            view::keys(&forms, &keys, op.admin.encryption_key_ids())
        }
        Section::Audit => {
            let filter = AuditFilter {
                action: filled(q, "action"),
                user: filled(q, "user"),
                client: filled(q, "client"),
                flow: filled(q, "flow"),
            };
            let limit = q
                .get("limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(100usize);
            let records = op.admin.audit_records(filter.clone(), limit).await?;
            view::audit(&base, &records, &filter, limit)
        }
    })
}

pub async fn users(State(app): State<App>, headers: HeaderMap, uri: Uri) -> Response {
    show(app, headers, uri, Section::Users).await
}
pub async fn clients(State(app): State<App>, headers: HeaderMap, uri: Uri) -> Response {
    show(app, headers, uri, Section::Clients).await
}
pub async fn grants(State(app): State<App>, headers: HeaderMap, uri: Uri) -> Response {
    show(app, headers, uri, Section::Grants).await
}
pub async fn upstreams(State(app): State<App>, headers: HeaderMap, uri: Uri) -> Response {
    show(app, headers, uri, Section::Upstreams).await
}
pub async fn keys(State(app): State<App>, headers: HeaderMap, uri: Uri) -> Response {
    show(app, headers, uri, Section::Keys).await
}
pub async fn audit(State(app): State<App>, headers: HeaderMap, uri: Uri) -> Response {
    show(app, headers, uri, Section::Audit).await
}

/// What an action ends with.
enum Done {
    /// Back to the section, with a note.
    Note(&'static str),
    /// A page of its own: a password shown once.
    Password { user: String, password: String },
}

/// `POST …/console/admin/do` with `action` and its fields.
pub async fn act(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    let result: Result<Response, PageError> = async {
        let p = oauth::read_page_form(&app, &headers, body).await?;
        let op = match operator(&app, &headers).await? {
            Ok(op) => op,
            Err(_) => return Err(expired_form("the console")),
        };
        if !token_ok("admin", &op.secret, p.get("csrf").map(String::as_str)) {
            return Err(expired_form("the console"));
        }
        let action = p.get("action").map(String::as_str).unwrap_or("");
        let Some(section) = Section::of_action(action) else {
            return Err(PageError {
                status: 400,
                message: format!(
                    "`{}` is not an action of the console.",
                    crate::observe::audit::bounded(action)
                ),
            });
        };
        match run(&app, &op, action, &p).await {
            Ok(Done::Note(code)) => Ok(no_store(
                Redirect::to(&format!(
                    "{}?done={code}",
                    section.url(&app.auth.browser_path())
                ))
                .into_response(),
            )),
            Ok(Done::Password { user, password }) => Ok(page(
                StatusCode::OK,
                frame(
                    &app,
                    &op,
                    section,
                    None,
                    None,
                    &view::password_once(&app.auth.browser_path(), &user, &password),
                ),
            )),
            Err(e) => {
                let (status, message) = admin_error(&e);
                Ok(page(
                    status,
                    frame(
                        &app,
                        &op,
                        section,
                        None,
                        Some(&message),
                        &view::back(&app.auth.browser_path(), section),
                    ),
                ))
            }
        }
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// Whether a one-use form's token is used for the first time (kept a day, shared by every
/// instance through the store's counters).
async fn first_use(app: &App, once: &str) -> Result<bool, AdminError> {
    let now = app.auth.clock.now();
    let key = format!("console-once:{}", crate::crypto::hash_secret(once));
    Ok(app
        .auth
        .store
        .hit(&key, now - now.rem_euclid(86_400))
        .await?
        == 1)
}

async fn run(
    app: &App,
    op: &Operator,
    action: &str,
    p: &std::collections::HashMap<String, String>,
) -> Result<Done, AdminError> {
    let need = |key: &str| {
        filled(p, key).ok_or_else(|| AdminError::Invalid(format!("`{key}` is missing")))
    };
    let admin = &op.admin;
    Ok(match action {
        "user_add" => {
            let name = need("username")?;
            let email = filled(p, "email");
            let groups: Vec<String> = p
                .get("groups")
                .map(|g| {
                    g.split([',', ' '])
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            let password = crate::crypto::new_secret("");
            admin
                .create_user(&name, &password, email.as_deref(), &groups)
                .await?;
            Done::Password {
                user: name,
                password,
            }
        }
        "user_password" => {
            let name = need("user")?;
            if !first_use(app, &need("once")?).await? {
                return Err(AdminError::Invalid(
                    "this form was sent already (a reloaded page?): the password was reset then; open the users page to reset it again".into(),
                ));
            }
            // A person of an identity provider or a database signs in there: a local
            // password would let them in past its checks (and its offboarding).
            if admin.user_signs_in_elsewhere(&name).await? {
                return Err(AdminError::Invalid(format!(
                    "`{name}` signs in through a login source and has no password here; the command line sets one if you really mean to"
                )));
            }
            let password = crate::crypto::new_secret("");
            // A reset is what follows a suspicion: what the old password allowed ends.
            admin.set_password(&name, &password, false).await?;
            Done::Password {
                user: name,
                password,
            }
        }
        "user_disable" => {
            let name = need("user")?;
            if name == op.user.username {
                return Err(AdminError::Invalid(
                    "you cannot disable your own account here: another administrator can".into(),
                ));
            }
            admin.disable_user(&name, false).await?;
            Done::Note("disabled")
        }
        "user_enable" => {
            admin.enable_user(&need("user")?).await?;
            Done::Note("enabled")
        }
        "user_sessions_end" => {
            admin.end_sessions(&need("user")?).await?;
            Done::Note("sessions_ended")
        }
        "client_block" => {
            let reason = filled(p, "reason").unwrap_or_else(|| "blocked at the console".into());
            admin.block_client(&need("client")?, &reason).await?;
            Done::Note("blocked")
        }
        "client_approve" => {
            admin.approve_client(&need("client")?).await?;
            Done::Note("approved")
        }
        "client_dismiss" => {
            admin.dismiss_client(&need("client")?).await?;
            Done::Note("dismissed")
        }
        "client_unblock" => {
            admin.unblock_client(&need("client")?).await?;
            Done::Note("unblocked")
        }
        "grant_revoke" => {
            let select = GrantSelection {
                grant: Some(need("grant")?),
                ..Default::default()
            };
            if admin.revoke_grants(&select).await? == 0 {
                Done::Note("nothing")
            } else {
                Done::Note("revoked")
            }
        }
        "registration_set" => {
            use crate::config::DcrMode;
            let words = |key: &str| -> Vec<String> {
                p.get(key)
                    .map(|v| {
                        v.split(|c: char| c.is_whitespace() || c == ',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let policy = crate::authorization::policy::RegistrationPolicy {
                dcr: p
                    .get("dcr")
                    .and_then(|d| DcrMode::parse(d))
                    .ok_or_else(|| AdminError::Invalid("`dcr` is open, token or off".into()))?,
                cimd: p.get("cimd").is_some_and(|v| v == "1"),
                cimd_allowed_domains: words("cimd_allowed_domains"),
                cimd_blocked_domains: words("cimd_blocked_domains"),
                approve_new_clients: p.get("approve_new_clients").is_some_and(|v| v == "1"),
            };
            admin.set_registration_policy(Some(policy)).await?;
            app.auth.policy.forget();
            Done::Note("policy_set")
        }
        "registration_reset" => {
            admin.set_registration_policy(None).await?;
            app.auth.policy.forget();
            Done::Note("policy_reset")
        }
        "key_rotate" => {
            admin.rotate_signing_key().await?;
            Done::Note("rotated")
        }
        "key_retire" => {
            admin.retire_signing_key(&need("kid")?).await?;
            Done::Note("retired")
        }
        "keys_reseal" => {
            admin.reseal_signing_keys().await?;
            Done::Note("resealed")
        }
        _ => return Err(AdminError::Invalid("not an action of the console".into())),
    })
}
