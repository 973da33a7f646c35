//! The authorization endpoint as a sequence of steps: validate the request (client and
//! redirect URI first, and never redirect anywhere unvalidated), log in, consent, and finally
//! redirect back with a one-time code, `state` and `iss` (RFC 9207).

use std::sync::Arc;

use url::Url;

use super::AuthorizationServer;
use super::clients::{Client, ClientKind};
use super::error::{ErrorCode, OAuthError};
use super::params::Params;
use super::redirect::redirect_matches;
use crate::crypto;
use crate::login::{Attempt, LOCAL, LoginSource, SourceKind};
use crate::store::{AuthCodeRecord, BrowserSession, PendingAuthorization};

/// A login source as the sign-in page offers it.
#[derive(Debug, Clone)]
pub struct SourceChoice {
    pub name: String,
    pub label: String,
    pub kind: SourceKind,
}

/// What the login and consent pages show, and the handles their forms post back.
#[derive(Debug, Clone)]
pub struct PageContext {
    pub handle: String,
    pub csrf: String,
    pub client_id: String,
    pub client_name: Option<String>,
    /// For CIMD clients: the host that vouches for the client's identity.
    pub verified_domain: Option<String>,
    pub redirect_host: String,
    pub scopes: Vec<String>,
    pub resource: String,
    pub username: Option<String>,
    /// The client's name mixes alphabets with look-alike letters: say so on the page.
    pub name_mixes_scripts: bool,
    /// The login sources to choose from (a chooser when there is more than one).
    pub sources: Vec<SourceChoice>,
    /// On a consent page shown before the person leaves for a redirecting source: that
    /// source (the page says where they will sign in, and its form posts to the source).
    pub via: Option<SourceChoice>,
}

#[derive(Debug)]
pub enum AuthorizeStep {
    Login {
        ctx: PageContext,
        error: Option<String>,
        status: u16,
    },
    Consent {
        ctx: PageContext,
    },
    /// Back to the client (with a code or an error).
    Redirect(String),
    /// An error found before the person signed in and approved, for a client whose identity
    /// nobody vouches for: shown here, naming where the link back goes, never redirected
    /// automatically (RFC 9700 §4.11.2: no open redirector).
    Stopped {
        message: String,
        redirect_host: String,
        back: String,
    },
}

/// An error that cannot be sent to the client's redirect URI: shown to the person.
#[derive(Debug)]
pub struct PageError {
    pub status: u16,
    pub message: String,
}

impl PageError {
    fn bad(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
        }
    }
}

impl From<OAuthError> for PageError {
    fn from(e: OAuthError) -> Self {
        let status = match e.code {
            ErrorCode::ServerError => 500,
            ErrorCode::TemporarilyUnavailable => 503,
            _ => 400,
        };
        Self {
            status,
            message: e.description,
        }
    }
}

impl From<crate::store::StoreError> for PageError {
    fn from(e: crate::store::StoreError) -> Self {
        OAuthError::from(e).into()
    }
}

fn login_state_hash(source: &str, state: &str) -> String {
    crypto::hash_secret(&format!("{source}\n{state}"))
}

/// Whether the browser's binding cookie is the one the request was started with.
fn same_browser(p: &PendingAuthorization, binding: Option<&str>) -> bool {
    binding.is_some_and(|b| {
        b.len() <= 100
            && crypto::constant_time_eq(
                p.binding_hash.as_bytes(),
                crypto::hash_secret(b).as_bytes(),
            )
    })
}

fn not_this_browser() -> PageError {
    PageError::bad(
        "This form was not opened in this browser (or its cookies are blocked). Start again from your application.",
    )
}

fn finished_already() -> PageError {
    PageError::bad("This sign-in request was completed already. Go back to your application.")
}

/// A browser session created by a successful login; `web` sets it as a cookie.
#[derive(Debug)]
pub struct NewSession {
    pub secret: String,
    pub max_age: i64,
}

/// Where a redirect URI sends the person, as the pages name it: host and port (a loopback
/// port changes from run to run, so it is left out), or the scheme of a native app.
fn redirect_host_of(redirect_uri: &str) -> String {
    Url::parse(redirect_uri)
        .ok()
        .map(|u| match u.host_str() {
            Some(h) => match u.port() {
                Some(port) if !super::redirect::is_loopback(&u) => format!("{h}:{port}"),
                _ => h.to_string(),
            },
            None => format!("{}:", u.scheme()),
        })
        .unwrap_or_default()
}

/// A path with its percent-escapes decoded (invalid UTF-8 replaced).
fn percent_decoded(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// RFC 6265 §5.1.4 path-match: would a cookie with `cookie_path` be sent to `path`?
fn path_matches(path: &str, cookie_path: &str) -> bool {
    path == cookie_path
        || path
            .strip_prefix(cookie_path)
            .is_some_and(|rest| cookie_path.ends_with('/') || rest.starts_with('/'))
}

impl AuthorizationServer {
    /// Where every page a person sees lives, and the only path the browser cookies are sent
    /// to (on https the cookies are `__Host-` with path `/`, and never reach http callbacks).
    pub fn browser_path(&self) -> String {
        format!("{}/authorize", self.settings.base_path)
    }

    /// Signs a browser out: its session ends here and now.
    pub async fn end_session(&self, cookie_secret: &str) -> Result<(), OAuthError> {
        if cookie_secret.is_empty() || cookie_secret.len() > 100 {
            return Ok(());
        }
        Ok(self
            .store
            .delete_session(&crypto::hash_secret(cookie_secret))
            .await?)
    }

    fn error_redirect(&self, redirect_uri: &str, state: Option<&str>, e: &OAuthError) -> String {
        self.redirect_with(
            redirect_uri,
            &[
                ("error", e.code.as_str()),
                ("error_description", &e.description),
            ],
            state,
        )
    }

    fn redirect_with(
        &self,
        redirect_uri: &str,
        pairs: &[(&str, &str)],
        state: Option<&str>,
    ) -> String {
        match Url::parse(redirect_uri) {
            Ok(mut u) => {
                {
                    let mut q = u.query_pairs_mut();
                    for (k, v) in pairs {
                        q.append_pair(k, v);
                    }
                    if let Some(s) = state {
                        q.append_pair("state", s);
                    }
                    q.append_pair("iss", &self.settings.issuer);
                }
                u.to_string()
            }
            // Registered URIs were parsed at registration; this cannot happen for them.
            Err(_) => redirect_uri.to_string(),
        }
    }

    /// GET /authorize.
    /// `binding` is the browser-binding cookie's value (the caller creates one when the
    /// browser has none): the forms of this request are accepted only with it.
    pub async fn begin_authorization(
        &self,
        params: &Params,
        session: Option<BrowserSession>,
        binding: &str,
    ) -> Result<AuthorizeStep, PageError> {
        let result = self.begin_inner(params, session, binding).await;
        // Stopped before there was a client and redirect to answer: recorded here; later
        // refusals and acceptances where they are decided.
        if result.is_err() {
            self.observer.record(
                crate::observe::Event::AuthorizationRequested {
                    client: params
                        .get("client_id")
                        .ok()
                        .flatten()
                        .map(crate::observe::audit::bounded)
                        .unwrap_or_default(),
                    resource: None,
                    error: Some("invalid_request"),
                },
                None,
            );
        }
        result
    }

    async fn begin_inner(
        &self,
        params: &Params,
        session: Option<BrowserSession>,
        binding: &str,
    ) -> Result<AuthorizeStep, PageError> {
        let client_id = params
            .get("client_id")
            .map_err(|e| PageError::bad(e.description))?
            .ok_or_else(|| PageError::bad("The request names no client (client_id is missing)."))?;
        let unverified = |e: OAuthError| {
            if e.code == ErrorCode::InvalidClient {
                PageError::bad(format!(
                    "The client could not be verified: {}",
                    e.description
                ))
            } else {
                PageError::from(e)
            }
        };
        let client = self
            .find_client(client_id)
            .await
            .map_err(unverified)?
            .ok_or_else(|| PageError::bad("The client is not known to this server."))?;
        self.check_approved(&client).await.map_err(unverified)?;
        let presented = params
            .get("redirect_uri")
            .map_err(|e| PageError::bad(e.description))?;
        let redirect_uri = match presented {
            Some(p) => {
                if !client.redirect_uris.iter().any(|r| redirect_matches(r, p)) {
                    return Err(PageError::bad(
                        "The redirect_uri is not one this client registered, so the request was stopped here.",
                    ));
                }
                p.to_string()
            }
            None => match client.redirect_uris.as_slice() {
                [only] => only.clone(),
                _ => {
                    return Err(PageError::bad(
                        "The request has no redirect_uri, and the client has several.",
                    ));
                }
            },
        };
        // The gateway's cookies are scoped to its browser paths, but cookies ignore ports: a
        // native client's loopback callback on the gateway's own host under those paths
        // would receive them (RFC 6265 §8.5). Compared decoded and without case, as browsers
        // may normalise `%65` to `e` before they match cookie paths.
        if Url::parse(&redirect_uri).is_ok_and(|u| {
            super::redirect::is_loopback(&u)
                && path_matches(
                    &percent_decoded(u.path()).to_ascii_lowercase(),
                    &self.browser_path().to_ascii_lowercase(),
                )
        }) {
            return Err(PageError::bad(
                "The redirect_uri is a loopback address under this server's own sign-in paths, where it would receive this server's cookies.",
            ));
        }
        // From here on, errors go back to the client: by redirect for a client whose
        // identity is vouched for, by a link on the gateway's page for any other.
        let state = params.get("state").ok().flatten();
        let verified = self.client_is_verified(&client);
        let fail = |e: OAuthError| {
            self.observer.record(
                crate::observe::Event::AuthorizationRequested {
                    client: client.client_id.clone(),
                    resource: None,
                    error: Some(e.code.as_str()),
                },
                None,
            );
            let back = self.error_redirect(&redirect_uri, state, &e);
            Ok(if verified {
                AuthorizeStep::Redirect(back)
            } else {
                tracing::info!(client_id = ?client.client_id, error = e.code.as_str(), "authorization request stopped before sign-in");
                AuthorizeStep::Stopped {
                    message: e.description.clone(),
                    redirect_host: redirect_host_of(&redirect_uri),
                    back,
                }
            })
        };
        match self.check_authorization_request(params, &client) {
            Err(e) => fail(e),
            Ok((scopes, resource, code_challenge)) => {
                let prompt_none = params.get("prompt").ok().flatten() == Some("none");
                let now = self.clock.now();
                let handle = crypto::new_secret("");
                let mut pending = PendingAuthorization {
                    id: crypto::hash_secret(&handle),
                    client_id: client.client_id.clone(),
                    redirect_uri: redirect_uri.clone(),
                    redirect_given: presented.is_some(),
                    scopes,
                    resource,
                    state: state.map(str::to_string),
                    code_challenge,
                    csrf_token: crypto::new_secret(""),
                    binding_hash: crypto::hash_secret(binding),
                    user_id: None,
                    created_at: now,
                    expires_at: now + self.settings.request_ttl,
                    grant_id: Some(crypto::new_id()),
                    login_source: None,
                    login_context: None,
                    login_state: None,
                    login_leg: None,
                    consented: false,
                };
                self.observer.record(
                    crate::observe::Event::AuthorizationRequested {
                        client: client.client_id.clone(),
                        resource: Some(pending.resource.clone()),
                        error: None,
                    },
                    pending.grant_id.as_deref(),
                );
                // A browser session stands in for signing in again, unless its source keeps
                // something per grant (which only a new sign-in can give) or is gone.
                let session = session.filter(|s| {
                    self.login
                        .get(&s.login_source)
                        .is_some_and(|source| !source.keeps_context())
                });
                let user = match &session {
                    Some(s) => self
                        .store
                        .user_by_id(&s.user_id)
                        .await?
                        .filter(|u| u.disabled_at.is_none()),
                    None => None,
                };
                pending.login_source = session.map(|s| s.login_source);
                if prompt_none {
                    let Some(user) = user else {
                        return fail(OAuthError::new(
                            ErrorCode::LoginRequired,
                            "prompt=none, and nobody is signed in",
                        ));
                    };
                    if !self.consent_remembered(&user.id, &pending).await? {
                        return fail(OAuthError::new(
                            ErrorCode::ConsentRequired,
                            "prompt=none, and this request needs the user's consent",
                        ));
                    }
                    pending.user_id = Some(user.id);
                    return Ok(AuthorizeStep::Redirect(
                        self.issue_code(&pending, true).await?,
                    ));
                }
                pending.user_id = user.as_ref().map(|u| u.id.clone());
                self.store.put_pending(&pending).await?;
                match user {
                    // The only way to sign in is elsewhere: the consent page first (it names
                    // the client and where the person will sign in), then off to the source.
                    None if self.login.all().len() == 1
                        && self.login.all()[0].kind() == SourceKind::Redirect =>
                    {
                        let mut ctx = self.page_context(&pending, &handle, &client, None);
                        ctx.via = ctx.sources.first().cloned();
                        Ok(AuthorizeStep::Consent { ctx })
                    }
                    None => Ok(AuthorizeStep::Login {
                        ctx: self.page_context(&pending, &handle, &client, None),
                        error: None,
                        status: 200,
                    }),
                    Some(user) => {
                        self.after_login(
                            &pending,
                            &handle,
                            &client,
                            &user.id,
                            &user.username,
                            false,
                        )
                        .await
                    }
                }
            }
        }
    }

    fn check_authorization_request(
        &self,
        params: &Params,
        client: &Client,
    ) -> Result<(Vec<String>, String, String), OAuthError> {
        params.check_not_repeated(&["resource"])?;
        if params.get("request")?.is_some() || params.get("request_uri")?.is_some() {
            return Err(OAuthError::invalid_request(
                "request objects are not supported",
            ));
        }
        match params.get("response_type")? {
            Some("code") => {}
            Some(_) => {
                return Err(OAuthError::new(
                    ErrorCode::UnsupportedResponseType,
                    "this response_type is not supported; use `code`",
                ));
            }
            None => return Err(OAuthError::invalid_request("response_type is missing")),
        }
        if let Some(mode) = params.get("response_mode")?
            && mode != "query"
        {
            return Err(OAuthError::invalid_request(
                "only response_mode=query is supported",
            ));
        }
        if !client.allows_grant("authorization_code") {
            return Err(OAuthError::new(
                ErrorCode::UnauthorizedClient,
                "this client may not use the authorization code grant",
            ));
        }
        let challenge = params.get("code_challenge")?.ok_or_else(|| {
            OAuthError::invalid_request("PKCE is required: code_challenge is missing")
        })?;
        match params.get("code_challenge_method")? {
            Some("S256") => {}
            Some(_) => {
                return Err(OAuthError::invalid_request(
                    "this code_challenge_method is not supported; use S256",
                ));
            }
            None => {
                return Err(OAuthError::invalid_request(
                    "code_challenge_method is missing (its default, plain, is not supported); use S256",
                ));
            }
        }
        if !crypto::is_valid_s256_challenge(challenge) {
            return Err(OAuthError::invalid_request(
                "code_challenge must be the base64url SHA-256 of the verifier (43 characters)",
            ));
        }
        let resource = self.resolve_resource(params.all("resource"))?;
        let scopes = self.check_scopes(params.get("scope")?, client)?;
        Ok((scopes, resource.url.clone(), challenge.to_string()))
    }

    fn page_context(
        &self,
        p: &PendingAuthorization,
        handle: &str,
        client: &Client,
        username: Option<&str>,
    ) -> PageContext {
        let redirect_host = redirect_host_of(&p.redirect_uri);
        let verified_domain = (client.kind == ClientKind::Metadata)
            .then(|| {
                Url::parse(&client.client_id)
                    .ok()
                    .and_then(|u| u.host_str().map(str::to_string))
            })
            .flatten();
        PageContext {
            handle: handle.to_string(),
            csrf: p.csrf_token.clone(),
            client_id: client.client_id.clone(),
            client_name: client.name.clone(),
            verified_domain,
            redirect_host,
            scopes: p.scopes.clone(),
            resource: p.resource.clone(),
            username: username.map(str::to_string),
            name_mixes_scripts: client
                .name
                .as_deref()
                .is_some_and(crate::text::mixes_scripts),
            sources: self
                .login
                .all()
                .iter()
                .map(|s| SourceChoice {
                    name: s.name().to_string(),
                    label: s.label().to_string(),
                    kind: s.kind(),
                })
                .collect(),
            via: None,
        }
    }

    async fn consent_remembered(
        &self,
        user_id: &str,
        p: &PendingAuthorization,
    ) -> Result<bool, OAuthError> {
        Ok(self.settings.remember_consent
            && self
                .store
                .has_consent(
                    user_id,
                    &p.client_id,
                    &p.redirect_uri,
                    &p.resource,
                    &p.scopes,
                )
                .await?)
    }

    /// The person is signed in: on to the consent page, unless they approved this request
    /// already (`consented`: before leaving for a redirecting source) or earlier requests
    /// like it (remembered consent).
    async fn after_login(
        &self,
        p: &PendingAuthorization,
        handle: &str,
        client: &Client,
        user_id: &str,
        username: &str,
        consented: bool,
    ) -> Result<AuthorizeStep, PageError> {
        if consented || self.consent_remembered(user_id, p).await? {
            let mut p = p.clone();
            p.user_id = Some(user_id.to_string());
            if !self.store.delete_pending(&p.id).await? {
                return Err(finished_already());
            }
            if consented {
                return self.approved(&p, user_id).await;
            }
            return Ok(AuthorizeStep::Redirect(self.issue_code(&p, true).await?));
        }
        Ok(AuthorizeStep::Consent {
            ctx: self.page_context(p, handle, client, Some(username)),
        })
    }

    async fn pending_for_form(
        &self,
        handle: &str,
        csrf: &str,
        binding: Option<&str>,
    ) -> Result<(PendingAuthorization, Client), PageError> {
        let expired = || {
            PageError::bad(
                "This sign-in request is unknown or has expired. Start again from your application.",
            )
        };
        if handle.is_empty() || handle.len() > 100 {
            return Err(expired());
        }
        let p = self
            .store
            .pending(&crypto::hash_secret(handle), self.clock.now())
            .await?
            .ok_or_else(expired)?;
        if !crypto::constant_time_eq(p.csrf_token.as_bytes(), csrf.as_bytes()) {
            return Err(PageError::bad(
                "The form was not valid (its security token did not match). Start again from your application.",
            ));
        }
        if !same_browser(&p, binding) {
            return Err(not_this_browser());
        }
        let client = self
            .find_client(&p.client_id)
            .await?
            .ok_or_else(|| PageError::bad("The client is no longer known to this server."))?;
        Ok((p, client))
    }

    /// POST of a login form: the username and password for the password source `source`
    /// (local accounts when the form names none).
    #[allow(clippy::too_many_arguments)]
    pub async fn submit_login(
        &self,
        handle: &str,
        csrf: &str,
        source: Option<&str>,
        username: &str,
        password: &str,
        ip: &str,
        binding: Option<&str>,
    ) -> Result<(AuthorizeStep, Option<NewSession>), PageError> {
        let (p, client) = self.pending_for_form(handle, csrf, binding).await?;
        let login_again = |error: &str, status: u16| AuthorizeStep::Login {
            ctx: self.page_context(&p, handle, &client, None),
            error: Some(error.to_string()),
            status,
        };
        let name = source.unwrap_or(LOCAL);
        let Some(source) = self
            .login
            .get(name)
            .filter(|s| s.kind() == SourceKind::Password)
        else {
            return Ok((
                login_again("That way of signing in is not offered here.", 400),
                None,
            ));
        };
        let attempt = source.check_password(username, password, ip).await?;
        self.after_attempt(&p, handle, &client, name, attempt, ip)
            .await
    }

    /// What a login source answered, for the pending request `p` (whose forms carry
    /// `handle`): the sign-in page again with why, or the person signed in and on to consent.
    async fn after_attempt(
        &self,
        p: &PendingAuthorization,
        handle: &str,
        client: &Client,
        name: &str,
        attempt: Attempt,
        ip: &str,
    ) -> Result<(AuthorizeStep, Option<NewSession>), PageError> {
        let login_again = |error: &str, status: u16| AuthorizeStep::Login {
            ctx: self.page_context(p, handle, client, None),
            error: Some(error.to_string()),
            status,
        };
        self.record_sign_in(
            name,
            &attempt,
            Some(&client.client_id),
            p.grant_id.as_deref(),
        );
        match attempt {
            Attempt::Invalid => {
                let redirected = self
                    .login
                    .get(name)
                    .is_some_and(|s| s.kind() == SourceKind::Redirect);
                let why = if redirected {
                    "That sign-in was not accepted. Try again."
                } else {
                    "Wrong username or password."
                };
                Ok((login_again(why, 401), None))
            }
            Attempt::Refused(message) => {
                tracing::info!(source = name, reason = %message, "sign-in refused by the source");
                Ok((login_again(&message, 403), None))
            }
            Attempt::Unavailable(why) => {
                tracing::warn!(source = name, reason = %why, "login source unavailable");
                let text = self
                    .login
                    .get(name)
                    .map(|s| s.unavailable_text())
                    .unwrap_or_default();
                Ok((login_again(&text, 503), None))
            }
            Attempt::Throttled { retry_after } => {
                tracing::warn!(ip, "login throttled");
                Ok((
                    login_again(
                        &format!(
                            "Too many failed sign-ins. Try again in {} minutes.",
                            retry_after.div_ceil(60)
                        ),
                        429,
                    ),
                    None,
                ))
            }
            Attempt::Success(who) => {
                let user = match self.login.resolve(name, &who).await {
                    Ok(u) => u,
                    Err(crate::login::source::ResolveError::Store(e)) => return Err(e.into()),
                    Err(e) => {
                        tracing::info!(source = name, reason = %e, "sign-in refused");
                        self.sign_in_refused_after_resolve(
                            name,
                            Some(&client.client_id),
                            p.grant_id.as_deref(),
                        );
                        return Ok((login_again("This account may not sign in here.", 403), None));
                    }
                };
                let sealed = match (&who.keep, &p.grant_id) {
                    (Some(keep), Some(grant_id)) => {
                        Some(self.contexts.seal(name, grant_id, keep).map_err(|e| {
                            tracing::error!(error = %e, "cannot seal a login context");
                            PageError::from(OAuthError::server_error())
                        })?)
                    }
                    // A request stored by an older version names no grant: nothing to bind
                    // a context to, so it must start again.
                    (Some(_), None) => {
                        return Err(PageError::bad(
                            "This sign-in request has expired. Start again from your application.",
                        ));
                    }
                    (None, _) => None,
                };
                let now = self.clock.now();
                let secret = crypto::new_secret("");
                let max_age = self.accounts_session_ttl();
                let session = BrowserSession {
                    user_id: user.id.clone(),
                    login_source: name.to_string(),
                };
                self.store
                    .put_session(&crypto::hash_secret(&secret), &session, now, now + max_age)
                    .await?;
                self.store
                    .set_pending_login(&p.id, &user.id, name, sealed.as_deref())
                    .await?;
                let mut p = p.clone();
                p.user_id = Some(user.id.clone());
                p.login_source = Some(name.to_string());
                p.login_context = sealed;
                tracing::info!(user = ?user.username, source = name, client_id = ?client.client_id, "login");
                self.record_signed_in(
                    name,
                    &user.id,
                    Some(&client.client_id),
                    p.grant_id.as_deref(),
                );
                // A redirecting source's leg began with the consent page (and only then).
                let consented = p.consented
                    && self
                        .login
                        .get(name)
                        .is_some_and(|s| s.kind() == SourceKind::Redirect);
                let step = self
                    .after_login(&p, handle, client, &user.id, &user.username, consented)
                    .await?;
                Ok((step, Some(NewSession { secret, max_age })))
            }
        }
    }

    fn redirect_source(&self, name: &str) -> Result<&Arc<dyn LoginSource>, PageError> {
        self.login
            .get(name)
            .filter(|s| s.kind() == SourceKind::Redirect)
            .ok_or_else(|| PageError::bad("That way of signing in is not offered here."))
    }

    /// Where a redirecting login source sends the browser back: registered at the source.
    pub fn login_callback_url(&self, source: &str) -> String {
        format!("{}/login/{source}/callback", self.settings.issuer)
    }

    /// POST of a redirecting source's button, and of the consent page that follows it.
    /// Without a `decision`, the consent page: it names the client and the source, so that
    /// a provider which remembers the gateway cannot approve a new client unseen (the MCP
    /// confused-deputy rule). Denied: back to the client. Allowed: the request is marked
    /// consented with a fresh `state` and the source's sealed leg, and the browser goes to
    /// the source.
    pub async fn start_redirect_login(
        &self,
        handle: &str,
        csrf: &str,
        name: &str,
        decision: Option<bool>,
        binding: Option<&str>,
    ) -> Result<AuthorizeStep, PageError> {
        let (p, client) = self.pending_for_form(handle, csrf, binding).await?;
        let source = self.redirect_source(name)?;
        let unavailable = |why: &str| {
            tracing::warn!(source = name, reason = %why, "login source unavailable");
            PageError {
                status: 503,
                message: "Signing in this way is unavailable right now (the identity provider \
                          could not be reached or is not set up correctly). Try again shortly; \
                          if it goes on, tell the administrator of this server."
                    .into(),
            }
        };
        match decision {
            None => {
                let mut ctx = self.page_context(&p, handle, &client, None);
                ctx.via = ctx.sources.iter().find(|s| s.name == name).cloned();
                Ok(AuthorizeStep::Consent { ctx })
            }
            Some(false) => {
                if !self.store.delete_pending(&p.id).await? {
                    return Err(finished_already());
                }
                Ok(self.denied(&p))
            }
            Some(true) => {
                let Some(grant_id) = &p.grant_id else {
                    return Err(PageError::bad(
                        "This sign-in request has expired. Start again from your application.",
                    ));
                };
                let state = crypto::new_secret("");
                let departure = source
                    .start(&state, &self.login_callback_url(name))
                    .await
                    .map_err(|why| unavailable(&why))?;
                // It becomes a Location header: a URL that cannot be one is the source's fault.
                if departure.url.is_empty()
                    || !departure
                        .url
                        .bytes()
                        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
                {
                    return Err(unavailable(
                        "the source made a URL that cannot be a Location",
                    ));
                }
                let leg = self
                    .contexts
                    .seal_leg(name, grant_id, &departure.leg)
                    .map_err(|e| {
                        tracing::error!(error = %e, "cannot seal a sign-in leg");
                        PageError::from(OAuthError::server_error())
                    })?;
                self.store
                    .set_pending_login_state(&p.id, &login_state_hash(name, &state), Some(&leg))
                    .await?;
                Ok(AuthorizeStep::Redirect(departure.url))
            }
        }
    }

    /// The browser is back from a redirecting source with `params` (among them `state`),
    /// in the browser that started: the request is found by its state, once, and the
    /// source judges the rest.
    pub async fn finish_redirect_login(
        &self,
        name: &str,
        params: &[(String, String)],
        binding: Option<&str>,
        ip: &str,
    ) -> Result<(AuthorizeStep, Option<NewSession>), PageError> {
        let unknown = || {
            PageError::bad(
                "This sign-in is unknown, was used already or has expired. Start again from your application.",
            )
        };
        let source = self.redirect_source(name)?;
        let mut states = params.iter().filter(|(k, _)| k == "state");
        let (Some((_, state)), None) = (states.next(), states.next()) else {
            return Err(unknown());
        };
        if state.is_empty() || state.len() > 100 {
            return Err(unknown());
        }
        // Bound to the source too: one source's state at another's callback finds nothing.
        let state_hash = login_state_hash(name, state);
        let mut p = self
            .store
            .pending_by_login_state(&state_hash, self.clock.now())
            .await?
            .ok_or_else(unknown)?;
        if !same_browser(&p, binding) {
            return Err(not_this_browser());
        }
        let client = self
            .find_client(&p.client_id)
            .await?
            .ok_or_else(|| PageError::bad("The client is no longer known to this server."))?;
        // The state works once; the forms that follow get a handle the source never saw.
        let handle = crypto::new_secret("");
        let new_id = crypto::hash_secret(&handle);
        if !self
            .store
            .rekey_pending(&p.id, &state_hash, &new_id)
            .await?
        {
            return Err(unknown());
        }
        p.id = new_id;
        p.login_state = None;
        // Consent came before the leg, and the leg's secrets were sealed to this request.
        let leg = match (p.consented, p.login_leg.take(), &p.grant_id) {
            (true, Some(sealed), Some(grant_id)) => {
                self.contexts.open_leg(name, grant_id, &sealed).ok()
            }
            _ => None,
        };
        let Some(leg) = leg else {
            return Err(unknown());
        };
        let attempt = source
            .finish(params, &self.login_callback_url(name), &leg)
            .await?;
        self.after_attempt(&p, &handle, &client, name, attempt, ip)
            .await
    }

    /// A sign-in at the gateway itself, with no authorization request (the connections
    /// page): a password source's check, the same throttles, and a browser session. What a
    /// source would keep is not kept: there is no grant to bind it to.
    /// `Ok(Err((message, status)))` is the form again with why.
    pub async fn sign_in(
        &self,
        source: Option<&str>,
        username: &str,
        password: &str,
        ip: &str,
    ) -> Result<Result<(NewSession, String), (String, u16)>, PageError> {
        let name = source.unwrap_or(LOCAL);
        let Some(source) = self
            .login
            .get(name)
            .filter(|s| s.kind() == SourceKind::Password)
        else {
            return Ok(Err((
                "That way of signing in is not offered here.".into(),
                400,
            )));
        };
        let attempt = source.check_password(username, password, ip).await?;
        self.record_sign_in(name, &attempt, None, None);
        match attempt {
            Attempt::Invalid => Ok(Err(("Wrong username or password.".into(), 401))),
            Attempt::Refused(message) => Ok(Err((message, 403))),
            Attempt::Unavailable(why) => {
                tracing::warn!(source = name, reason = %why, "login source unavailable");
                Ok(Err((source.unavailable_text(), 503)))
            }
            Attempt::Throttled { retry_after } => Ok(Err((
                format!(
                    "Too many failed sign-ins. Try again in {} minutes.",
                    retry_after.div_ceil(60)
                ),
                429,
            ))),
            Attempt::Success(who) => {
                let user = match self.login.resolve(name, &who).await {
                    Ok(u) => u,
                    Err(crate::login::source::ResolveError::Store(e)) => return Err(e.into()),
                    Err(e) => {
                        tracing::info!(source = name, reason = %e, "sign-in refused");
                        self.sign_in_refused_after_resolve(name, None, None);
                        return Ok(Err(("This account may not sign in here.".into(), 403)));
                    }
                };
                let now = self.clock.now();
                let secret = crypto::new_secret("");
                let max_age = self.accounts_session_ttl();
                let session = BrowserSession {
                    user_id: user.id.clone(),
                    login_source: name.to_string(),
                };
                self.store
                    .put_session(&crypto::hash_secret(&secret), &session, now, now + max_age)
                    .await?;
                tracing::info!(user = ?user.username, source = name, "login (gateway pages)");
                self.record_signed_in(name, &user.id, None, None);
                Ok(Ok((NewSession { secret, max_age }, user.id)))
            }
        }
    }

    /// The sources the gateway's own sign-in form offers (password sources).
    pub fn password_sources(&self) -> Vec<(String, String)> {
        self.login
            .all()
            .iter()
            .filter(|s| s.kind() == SourceKind::Password)
            .map(|s| (s.name().to_string(), s.label().to_string()))
            .collect()
    }

    fn accounts_session_ttl(&self) -> i64 {
        self.session_ttl
    }

    /// The resource of a pending request, checked as its forms are (handle, form token, this
    /// browser); `None` for none.
    pub async fn pending_resource(
        &self,
        handle: &str,
        csrf: &str,
        binding: Option<&str>,
        user_id: &str,
    ) -> Result<Option<String>, PageError> {
        let (p, _) = self.pending_for_form(handle, csrf, binding).await?;
        // Only the person the request belongs to (the consent itself checks it again).
        Ok((p.user_id.as_deref() == Some(user_id)).then_some(p.resource))
    }

    /// POST of the consent form.
    pub async fn submit_consent(
        &self,
        handle: &str,
        csrf: &str,
        allow: bool,
        session: Option<BrowserSession>,
        binding: Option<&str>,
    ) -> Result<AuthorizeStep, PageError> {
        let (p, _client) = self.pending_for_form(handle, csrf, binding).await?;
        let (Some(user), Some(owner)) = (session.map(|s| s.user_id), p.user_id.clone()) else {
            return Err(PageError::bad(
                "You are not signed in any more. Start again from your application.",
            ));
        };
        if user != owner {
            return Err(PageError::bad(
                "This request belongs to another sign-in. Start again from your application.",
            ));
        }
        // A form sent twice issues one code: the request, and the grant id named in it, are
        // used once.
        if !self.store.delete_pending(&p.id).await? {
            return Err(finished_already());
        }
        if !allow {
            return Ok(self.denied(&p));
        }
        self.approved(&p, &user).await
    }

    /// The person denied on the consent page: back to the client with `access_denied`.
    fn denied(&self, p: &PendingAuthorization) -> AuthorizeStep {
        self.observer.record(
            crate::observe::Event::ConsentDenied {
                client: p.client_id.clone(),
                user: p.user_id.clone(),
            },
            p.grant_id.as_deref(),
        );
        let e = OAuthError::new(ErrorCode::AccessDenied, "the user denied the request");
        AuthorizeStep::Redirect(self.error_redirect(&p.redirect_uri, p.state.as_deref(), &e))
    }

    /// The person approved (the request is used up already): the consent is remembered
    /// when configured, and the client gets its code.
    async fn approved(
        &self,
        p: &PendingAuthorization,
        user_id: &str,
    ) -> Result<AuthorizeStep, PageError> {
        if self.settings.remember_consent {
            self.store
                .put_consent(
                    user_id,
                    &p.client_id,
                    &p.redirect_uri,
                    &p.resource,
                    &p.scopes,
                    self.clock.now(),
                )
                .await?;
        }
        Ok(AuthorizeStep::Redirect(self.issue_code(p, false).await?))
    }

    /// The client's code, once the person has consented (`remembered`: earlier, so no page
    /// was shown this time).
    async fn issue_code(
        &self,
        p: &PendingAuthorization,
        remembered: bool,
    ) -> Result<String, OAuthError> {
        let Some(user_id) = &p.user_id else {
            return Err(OAuthError::server_error());
        };
        self.observer.record(
            crate::observe::Event::ConsentGiven {
                client: p.client_id.clone(),
                user: user_id.clone(),
                scopes: p.scopes.clone(),
                resource: p.resource.clone(),
                remembered,
            },
            p.grant_id.as_deref(),
        );
        let now = self.clock.now();
        let code = crypto::new_secret(crypto::CODE_PREFIX);
        self.store
            .insert_code(&AuthCodeRecord {
                code_hash: crypto::hash_secret(&code),
                client_id: p.client_id.clone(),
                user_id: user_id.clone(),
                redirect_uri: p.redirect_uri.clone(),
                redirect_given: p.redirect_given,
                resource: p.resource.clone(),
                scopes: p.scopes.clone(),
                code_challenge: p.code_challenge.clone(),
                created_at: now,
                expires_at: now + self.settings.code_ttl,
                consumed_at: None,
                grant_id: Some(p.grant_id.clone().unwrap_or_else(crypto::new_id)),
                login_source: Some(p.login_source.clone().unwrap_or_else(|| LOCAL.into())),
                login_context: p.login_context.clone(),
            })
            .await?;
        Ok(self.redirect_with(&p.redirect_uri, &[("code", &code)], p.state.as_deref()))
    }

    /// Records what a login source answered; a success is recorded once the person is
    /// known here ([`Self::record_signed_in`]).
    fn record_sign_in(
        &self,
        source: &str,
        attempt: &Attempt,
        client: Option<&str>,
        flow: Option<&str>,
    ) {
        use crate::observe::SignInOutcome;
        let (outcome, reason) = match attempt {
            Attempt::Invalid => (SignInOutcome::Refused, Some("invalid_credentials".into())),
            Attempt::Refused(m) => (SignInOutcome::Refused, Some(m.clone())),
            Attempt::Unavailable(_) => (SignInOutcome::Unavailable, None),
            Attempt::Throttled { .. } => (SignInOutcome::Throttled, None),
            Attempt::Success(_) => return,
        };
        self.observer.record(
            crate::observe::Event::SignIn {
                source: source.to_string(),
                user: None,
                client: client.map(str::to_string),
                outcome,
                reason,
            },
            flow,
        );
    }

    fn record_signed_in(
        &self,
        source: &str,
        user_id: &str,
        client: Option<&str>,
        flow: Option<&str>,
    ) {
        self.observer.record(
            crate::observe::Event::SignIn {
                source: source.to_string(),
                user: Some(user_id.to_string()),
                client: client.map(str::to_string),
                outcome: crate::observe::SignInOutcome::Success,
                reason: None,
            },
            flow,
        );
    }

    /// The source accepted the person, but this gateway does not let them in (disabled,
    /// not allowed by the first-sign-in rule).
    fn sign_in_refused_after_resolve(
        &self,
        source: &str,
        client: Option<&str>,
        flow: Option<&str>,
    ) {
        self.observer.record(
            crate::observe::Event::SignIn {
                source: source.to_string(),
                user: None,
                client: client.map(str::to_string),
                outcome: crate::observe::SignInOutcome::Refused,
                reason: Some("account_not_allowed".into()),
            },
            flow,
        );
    }

    /// The browser session behind a cookie, if it is live.
    pub async fn session(&self, cookie_secret: &str) -> Result<Option<BrowserSession>, OAuthError> {
        if cookie_secret.is_empty() || cookie_secret.len() > 100 {
            return Ok(None);
        }
        Ok(self
            .store
            .session(&crypto::hash_secret(cookie_secret), self.clock.now())
            .await?)
    }
}
