//! Signing in at an identity provider (`[[login.oidc]]`): OpenID Connect providers by
//! discovery, and GitHub's OAuth 2.0 with its REST API. The gateway is the provider's
//! confidential client: authorization code with PKCE (S256), `state` (the authorization
//! server's, bound to the browser and the request) and `nonce`; the ID token's signature is
//! checked with the provider's published keys (fetched again once for an unknown `kid`), and
//! its `iss`, `aud`, `azp`, dates and `nonce` with [`crate::jwt::check_claims`].

pub mod claims;
pub mod config;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::RwLock;
use url::Url;

use self::config::{Profile, Settings};
use super::source::{Attempt, Authenticated, Departure, LoginSource, Renewal, SourceKind};
use crate::clock::SharedClock;
use crate::crypto;
use crate::jwt::{self, Alg};
use crate::keyset::{KeyError, RemoteKeySet};
use crate::outbound::{ClientAuth, Outbound};
use crate::store::StoreError;

/// How long a discovery document is used before it is fetched again.
const DISCOVERY_TTL_SECS: i64 = 3600;
/// An ID token must have been issued within this long (plus the skew).
const ID_TOKEN_MAX_AGE_SECS: i64 = 600;
/// The provider's session is renewed once its access token has less than this left.
const RENEW_BEFORE_SECS: i64 = 300;
/// Signature algorithms accepted on ID tokens (further narrowed by the provider's list).
const ID_TOKEN_ALGS: [Alg; 3] = [Alg::RS256, Alg::ES256, Alg::EdDSA];

/// What the provider's discovery document says, with every URL checked.
#[derive(Debug, Clone)]
struct Provider {
    issuer: String,
    authorize: Url,
    token: Url,
    userinfo: Option<Url>,
    /// OpenID providers' signing keys; none for GitHub.
    keys: Option<Arc<RemoteKeySet>>,
    /// GitHub's REST API.
    api: Option<Url>,
    algs: Vec<Alg>,
    post_auth: bool,
    iss_in_response: bool,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    #[serde(default)]
    userinfo_endpoint: Option<String>,
    jwks_uri: String,
    #[serde(default)]
    id_token_signing_alg_values_supported: Vec<String>,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    authorization_response_iss_parameter_supported: bool,
}

/// What the source needs back when the browser returns (sealed to the request).
#[derive(Serialize, Deserialize)]
struct Leg {
    verifier: String,
    nonce: String,
}

/// What it keeps for a grant when `keep_provider_tokens` is on (sealed to the grant).
#[derive(Serialize, Deserialize)]
pub struct ProviderTokens {
    #[serde(default)]
    pub refresh_token: Option<String>,
    pub access_token: String,
    /// When the access token expires, if the provider said.
    #[serde(default)]
    pub expires_at: Option<i64>,
}

pub struct OidcSource {
    s: Settings,
    http: Outbound,
    clock: SharedClock,
    provider: RwLock<Option<(Provider, i64)>>,
}

/// A failure to talk to the provider, for the log (the person sees a general page).
type Trouble = String;

fn one<'a>(params: &'a [(String, String)], name: &str) -> Result<Option<&'a str>, ()> {
    let mut found = params.iter().filter(|(k, _)| k == name);
    match (found.next(), found.next()) {
        (None, _) => Ok(None),
        (Some((_, v)), None) => Ok(Some(v.as_str())),
        _ => Err(()),
    }
}

/// A provider's text, made safe for the log.
fn shown(s: &str) -> String {
    crate::text::printable(&s.chars().take(100).collect::<String>()).into_owned()
}

impl OidcSource {
    pub fn new(s: Settings, clock: SharedClock) -> Result<Self, String> {
        let http = Outbound::new(s.timeout)?;
        Ok(Self {
            s,
            http,
            clock,
            provider: RwLock::new(None),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.s
    }

    fn endpoint(&self, what: &str, raw: &str) -> Result<Url, Trouble> {
        let u = Url::parse(raw).map_err(|_| format!("its {what} is not a URL"))?;
        let secure = u.scheme() == "https"
            || (u.scheme() == "http"
                && self.s.allow_http_loopback
                && crate::authorization::redirect::is_loopback(&u));
        if !secure || u.fragment().is_some() {
            return Err(format!("its {what} is not an https URL without fragment"));
        }
        Ok(u)
    }

    /// The provider's endpoints: discovered (and cached), or GitHub's own.
    async fn provider(&self) -> Result<Provider, Trouble> {
        let now = self.clock.now();
        if let Some((p, at)) = self.provider.read().await.as_ref()
            && now - at < DISCOVERY_TTL_SECS
        {
            return Ok(p.clone());
        }
        let fresh = self.discover().await;
        let mut cached = self.provider.write().await;
        match fresh {
            Ok(p) => {
                *cached = Some((p.clone(), now));
                Ok(p)
            }
            // A provider briefly down: what was discovered before still holds.
            Err(e) => match cached.as_ref() {
                Some((p, _)) => {
                    tracing::warn!(source = %self.s.name, reason = %e, "discovery failed; using the earlier document");
                    Ok(p.clone())
                }
                None => Err(e),
            },
        }
    }

    async fn discover(&self) -> Result<Provider, Trouble> {
        if let Some(gh) = &self.s.github {
            return Ok(Provider {
                issuer: self.s.issuer.clone(),
                authorize: gh.authorize.clone(),
                token: gh.token.clone(),
                userinfo: None,
                keys: None,
                api: Some(gh.api.clone()),
                algs: Vec::new(),
                post_auth: true,
                iss_in_response: false,
            });
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.s.issuer.trim_end_matches('/')
        );
        let url = Url::parse(&url).map_err(|_| "the issuer makes no discovery URL".to_string())?;
        let answer = self
            .http
            .get_json(&url, None)
            .await
            .map_err(|e| format!("its discovery document: {e}"))?;
        if !answer.ok() {
            return Err(format!("its discovery document: HTTP {}", answer.status));
        }
        let d: Discovery = serde_json::from_value(Value::Object(answer.body))
            .map_err(|e| format!("its discovery document: {}", shown(&e.to_string())))?;
        // OpenID Connect Discovery §4.3: the document is the issuer's own. Entra's
        // multi-tenant documents name `{tenantid}` instead, checked per token.
        if !self.s.tenant_in_issuer && d.issuer != self.s.issuer {
            return Err(format!(
                "its discovery document names the issuer {:?}, not the configured {:?}",
                shown(&d.issuer),
                self.s.issuer
            ));
        }
        let algs: Vec<Alg> = if d.id_token_signing_alg_values_supported.is_empty() {
            vec![Alg::RS256]
        } else {
            ID_TOKEN_ALGS
                .into_iter()
                .filter(|a| {
                    d.id_token_signing_alg_values_supported
                        .iter()
                        .any(|s| Alg::parse(s) == Some(*a))
                })
                .collect()
        };
        if algs.is_empty() {
            return Err(
                "it signs ID tokens with no algorithm the gateway verifies (RS256, ES256, EdDSA)"
                    .into(),
            );
        }
        let post_auth = d
            .token_endpoint_auth_methods_supported
            .as_ref()
            .is_some_and(|m| {
                !m.iter().any(|x| x == "client_secret_basic")
                    && m.iter().any(|x| x == "client_secret_post")
            });
        Ok(Provider {
            issuer: d.issuer,
            authorize: self.endpoint("authorization_endpoint", &d.authorization_endpoint)?,
            token: self.endpoint("token_endpoint", &d.token_endpoint)?,
            userinfo: d
                .userinfo_endpoint
                .as_deref()
                .map(|u| self.endpoint("userinfo_endpoint", u))
                .transpose()?,
            keys: Some(Arc::new(RemoteKeySet::new(
                self.endpoint("jwks_uri", &d.jwks_uri)?,
                self.http.clone(),
                self.clock.clone(),
            ))),
            api: None,
            algs,
            post_auth,
            iss_in_response: d.authorization_response_iss_parameter_supported,
        })
    }

    fn client_auth(&self, p: &Provider) -> ClientAuth<'_> {
        let (id, secret) = (self.s.client_id.as_str(), self.s.client_secret.expose());
        if p.post_auth {
            ClientAuth::Post { id, secret }
        } else {
            ClientAuth::Basic { id, secret }
        }
    }

    fn refused(&self, message: &str) -> Attempt {
        Attempt::Refused(message.to_string())
    }

    /// The provider's error on the way back, as the person should hear it.
    fn provider_error(&self, error: &str) -> Attempt {
        match error {
            "access_denied" => self.refused(&format!(
                "Signing in with {} was cancelled or refused there. Try again, or sign in with another account.",
                self.s.label.trim_start_matches("Sign in with ")
            )),
            "login_required" | "consent_required" | "interaction_required"
            | "account_selection_required" => self.refused(
                "The identity provider needs you to sign in there again. Try again.",
            ),
            other => Attempt::Unavailable(format!("the provider answered error={}", shown(other))),
        }
    }

    /// Checks the ID token and returns its claims; `Err` with a reason for the log.
    async fn verify_id_token(
        &self,
        p: &Provider,
        token: &str,
        nonce: &str,
    ) -> Result<Map<String, Value>, Result<Trouble, Trouble>> {
        let keys = p
            .keys
            .as_ref()
            .ok_or_else(|| Err("the provider publishes no keys".to_string()))?;
        let d = keys.verify(token, &p.algs).await.map_err(|e| match e {
            KeyError::Unavailable(why) => Err(format!("its key set: {why}")),
            KeyError::Token(e) => Ok(format!("the ID token: {e}")),
        })?;
        let issuer = if self.s.tenant_in_issuer {
            let tid = d
                .claims
                .get("tid")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
                .ok_or_else(|| Ok("the ID token: `tid` is missing or wrong".to_string()))?;
            p.issuer.replace("{tenantid}", tid)
        } else {
            p.issuer.clone()
        };
        jwt::check_claims(
            &d,
            &jwt::Expect {
                issuer: &issuer,
                audience: &self.s.client_id,
                authorized_party: Some(&self.s.client_id),
                nonce: Some(nonce),
                typ: None,
                now: self.clock.now(),
                skew: self.s.skew,
                max_age: Some(ID_TOKEN_MAX_AGE_SECS),
            },
        )
        .map_err(|e| Ok(format!("the ID token: {e}")))?;
        Ok(d.claims)
    }

    /// The rest of an OpenID sign-in, once the code is exchanged.
    async fn finish_oidc(
        &self,
        p: &Provider,
        tokens: &Map<String, Value>,
        leg: &Leg,
    ) -> Result<(Map<String, Value>, Vec<String>), Attempt> {
        let Some(id_token) = tokens.get("id_token").and_then(Value::as_str) else {
            return Err(Attempt::Unavailable(
                "its token answer has no id_token (is `openid` among the scopes?)".into(),
            ));
        };
        let mut claims = match self.verify_id_token(p, id_token, &leg.nonce).await {
            Ok(c) => c,
            Err(Err(unavailable)) => return Err(Attempt::Unavailable(unavailable)),
            Err(Ok(bad)) => {
                tracing::warn!(source = %self.s.name, reason = %bad, "ID token refused");
                return Err(self.refused(
                    "The identity provider's answer could not be verified, so you were not signed in. Try again; if it goes on, tell the administrator of this server.",
                ));
            }
        };
        // Entra's overage first: the groups are at Graph, and nowhere else.
        if let (Some(graph), Some(at)) = (
            &self.s.graph,
            tokens.get("access_token").and_then(Value::as_str),
        ) && claims
            .get("_claim_names")
            .and_then(|n| n.get("groups"))
            .is_some()
            && !claims.contains_key("groups")
            && let Some(groups) = self.entra_groups(graph, at).await
        {
            claims.insert("groups".into(), groups);
        }
        // Userinfo when the ID token leaves out what is needed (OpenID Connect Core §5.3:
        // its `sub` must be the ID token's).
        let lacks_groups = self
            .s
            .groups_claim
            .as_ref()
            .is_some_and(|g| !claims.contains_key(g));
        if let (Some(url), Some(at)) = (
            &p.userinfo,
            tokens.get("access_token").and_then(Value::as_str),
        ) && (!claims.contains_key("email") || lacks_groups)
        {
            match self.http.get_json(url, Some(at)).await {
                Ok(a) if a.ok() => {
                    if a.body.get("sub") != claims.get("sub") {
                        tracing::warn!(source = %self.s.name, "userinfo names another subject; ignored");
                    } else {
                        // An address and whether it is verified come from one document.
                        if !claims.contains_key("email") {
                            claims.remove("email_verified");
                        }
                        for (k, v) in a.body {
                            claims.entry(k).or_insert(v);
                        }
                    }
                }
                Ok(a) => {
                    tracing::warn!(source = %self.s.name, status = a.status, "userinfo refused")
                }
                Err(e) => {
                    tracing::warn!(source = %self.s.name, reason = %e, "userinfo unreachable")
                }
            }
        }
        Ok((claims, Vec::new()))
    }

    /// Entra ID's groups "overage": with more groups than a token holds, the ID token says
    /// where to ask instead (`_claim_names`), and Microsoft Graph lists them (the ids, as
    /// the `groups` claim would have). `None` (no groups) when Graph cannot be asked.
    async fn entra_groups(&self, graph: &Url, access_token: &str) -> Option<Value> {
        let url = graph.join("v1.0/me/getMemberObjects").ok()?;
        let body = serde_json::json!({"securityEnabledOnly": false});
        match self.http.post_json(&url, access_token, &body).await {
            Ok(a) if a.ok() => match a.body.get("value") {
                Some(Value::Array(ids)) => Some(Value::Array(ids.clone())),
                _ => {
                    tracing::warn!(source = %self.s.name, "Microsoft Graph answered without `value`");
                    None
                }
            },
            Ok(a) => {
                tracing::warn!(source = %self.s.name, status = a.status, "Microsoft Graph refused the groups (does the app have GroupMember.Read.All?)");
                None
            }
            Err(e) => {
                tracing::warn!(source = %self.s.name, reason = %e, "Microsoft Graph unreachable");
                None
            }
        }
    }

    /// GitHub: the user, a verified primary address, and (for an allow-list of orgs)
    /// organisation and team memberships, from the REST API.
    async fn finish_github(
        &self,
        p: &Provider,
        tokens: &Map<String, Value>,
    ) -> Result<(Map<String, Value>, Vec<String>), Attempt> {
        let Some(token) = tokens.get("access_token").and_then(Value::as_str) else {
            return Err(Attempt::Unavailable(
                "its token answer has no access_token".into(),
            ));
        };
        let Some(api) = p.api.clone() else {
            return Err(Attempt::Unavailable("no API URL".into()));
        };
        let user = self.github_get(&api, "user", token).await?;
        let id = match user.get("id") {
            Some(Value::Number(n)) if n.is_u64() => n.to_string(),
            _ => return Err(Attempt::Unavailable("its user has no numeric id".into())),
        };
        let mut claims = Map::new();
        claims.insert("sub".into(), Value::String(id));
        if let Some(login) = user.get("login") {
            claims.insert("login".into(), login.clone());
        }
        // Without the e-mail permission (a GitHub App), no address rather than no sign-in.
        let emails = self
            .github_get(&api, "user/emails", token)
            .await
            .unwrap_or(Value::Null);
        if let Some(primary) = emails.as_array().and_then(|list| {
            list.iter().find(|e| {
                e.get("primary") == Some(&Value::Bool(true))
                    && e.get("verified") == Some(&Value::Bool(true))
            })
        }) && let Some(addr) = primary.get("email")
        {
            claims.insert("email".into(), addr.clone());
            claims.insert("email_verified".into(), Value::Bool(true));
        }
        let mut orgs = Vec::new();
        if !self.s.allow.orgs.is_empty() {
            for org in self
                .github_get(&api, "user/orgs?per_page=100", token)
                .await?
                .as_array()
                .into_iter()
                .flatten()
            {
                if let Some(l) = org.get("login").and_then(Value::as_str) {
                    orgs.push(l.to_ascii_lowercase());
                }
            }
            for team in self
                .github_get(&api, "user/teams?per_page=100", token)
                .await?
                .as_array()
                .into_iter()
                .flatten()
            {
                if let (Some(slug), Some(org)) = (
                    team.get("slug").and_then(Value::as_str),
                    team.pointer("/organization/login").and_then(Value::as_str),
                ) {
                    orgs.push(format!(
                        "{}/{}",
                        org.to_ascii_lowercase(),
                        slug.to_ascii_lowercase()
                    ));
                }
            }
        }
        Ok((claims, orgs))
    }

    async fn github_get(&self, api: &Url, path: &str, token: &str) -> Result<Value, Attempt> {
        let url = api
            .join(path)
            .map_err(|_| Attempt::Unavailable("the API URL".into()))?;
        match self.http.get_json_list(&url, Some(token)).await {
            Ok((status, v)) if (200..300).contains(&status) => Ok(v),
            Ok((status, _)) => Err(Attempt::Unavailable(format!(
                "its API answered HTTP {status} for {path}"
            ))),
            Err(e) => Err(Attempt::Unavailable(format!("its API: {e}"))),
        }
    }

    fn kept(&self, tokens: &Map<String, Value>) -> Option<Vec<u8>> {
        if !self.s.keep_tokens {
            return None;
        }
        let access_token = tokens.get("access_token").and_then(Value::as_str)?;
        serde_json::to_vec(&ProviderTokens {
            refresh_token: tokens
                .get("refresh_token")
                .and_then(Value::as_str)
                .map(str::to_string),
            access_token: access_token.to_string(),
            expires_at: tokens
                .get("expires_in")
                .and_then(Value::as_i64)
                .map(|s| self.clock.now().saturating_add(s)),
        })
        .ok()
    }
}

#[async_trait]
impl LoginSource for OidcSource {
    fn name(&self) -> &str {
        &self.s.name
    }

    fn label(&self) -> &str {
        &self.s.label
    }

    fn kind(&self) -> SourceKind {
        SourceKind::Redirect
    }

    fn keeps_context(&self) -> bool {
        self.s.keep_tokens
    }

    async fn start(&self, state: &str, callback: &str) -> Result<Departure, String> {
        let p = self.provider().await?;
        let leg = Leg {
            verifier: crypto::new_secret(""),
            nonce: crypto::new_secret(""),
        };
        let challenge = crypto::pkce_s256_challenge(&leg.verifier);
        let mut url = p.authorize.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &self.s.client_id)
                .append_pair("redirect_uri", callback)
                .append_pair("scope", &self.s.scopes.join(" "))
                .append_pair("state", state)
                .append_pair("code_challenge", &challenge)
                .append_pair("code_challenge_method", "S256");
            if self.s.profile != Profile::Github {
                q.append_pair("nonce", &leg.nonce);
            }
            for (k, v) in &self.s.extra_params {
                q.append_pair(k, v);
            }
        }
        let leg = serde_json::to_vec(&leg).map_err(|e| e.to_string())?;
        Ok(Departure {
            url: url.to_string(),
            leg,
        })
    }

    async fn finish(
        &self,
        params: &[(String, String)],
        callback: &str,
        leg: &[u8],
    ) -> Result<Attempt, StoreError> {
        let Ok(leg) = serde_json::from_slice::<Leg>(leg) else {
            return Ok(Attempt::Unavailable(
                "the sealed sign-in leg is unreadable".into(),
            ));
        };
        let (Ok(error), Ok(code), Ok(iss)) = (
            one(params, "error"),
            one(params, "code"),
            one(params, "iss"),
        ) else {
            return Ok(self.refused("The identity provider's answer was malformed. Try again."));
        };
        let p = match self.provider().await {
            Ok(p) => p,
            Err(e) => return Ok(Attempt::Unavailable(e)),
        };
        // RFC 9207: the answer says who sent it; a provider that promises to must.
        if iss.is_some_and(|i| i != p.issuer) || (p.iss_in_response && iss.is_none()) {
            tracing::warn!(source = %self.s.name, "the answer's `iss` is not the provider's");
            return Ok(self.refused(
                "The answer did not come from the expected identity provider, so you were not signed in. Start again from your application.",
            ));
        }
        if let Some(error) = error {
            return Ok(self.provider_error(error));
        }
        let Some(code) = code.filter(|c| !c.is_empty() && c.len() <= 4096) else {
            return Ok(self.refused("The identity provider's answer had no code. Try again."));
        };
        let answer = match self
            .http
            .post_form(
                &p.token,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("redirect_uri", callback),
                    ("code_verifier", &leg.verifier),
                ],
                self.client_auth(&p),
            )
            .await
        {
            Ok(a) => a,
            Err(e) => return Ok(Attempt::Unavailable(format!("its token endpoint: {e}"))),
        };
        if !answer.ok() {
            return Ok(match answer.oauth_error() {
                Some("invalid_grant") => self.refused(
                    "The sign-in at the identity provider expired or was used already. Try again.",
                ),
                other => Attempt::Unavailable(format!(
                    "its token endpoint answered HTTP {} ({})",
                    answer.status,
                    shown(other.unwrap_or("no error code"))
                )),
            });
        }
        // GitHub answers a failed exchange with 200 and an error.
        if let Some(e) = answer.oauth_error() {
            return Ok(match e {
                "bad_verification_code" | "invalid_grant" => self.refused(
                    "The sign-in at the identity provider expired or was used already. Try again.",
                ),
                other => {
                    Attempt::Unavailable(format!("its token endpoint answered {}", shown(other)))
                }
            });
        }
        let found = if self.s.github.is_some() {
            self.finish_github(&p, &answer.body).await
        } else {
            self.finish_oidc(&p, &answer.body, &leg).await
        };
        let (claims, orgs) = match found {
            Ok(found) => found,
            Err(attempt) => return Ok(attempt),
        };
        let person = match claims::person(&self.s, &claims) {
            Ok(person) => person,
            Err(refusal) => {
                tracing::info!(source = %self.s.name, reason = %refusal, "sign-in refused");
                return Ok(self.refused(&format!(
                    "You were signed in at the identity provider, but {refusal}. Ask the administrator of this server, or sign in with another account."
                )));
            }
        };
        if let Err(refusal) = claims::allowed(&self.s, &person, &orgs) {
            tracing::info!(source = %self.s.name, subject = ?person.subject, email = ?person.email, reason = %refusal, "sign-in refused");
            let who = person
                .email
                .clone()
                .unwrap_or_else(|| person.username.clone());
            return Ok(self.refused(&format!(
                "Your account {who:?} is not on this server's list of who may sign in. Ask the administrator of this server to add it, or sign in with another account."
            )));
        }
        if self.s.keep_tokens && answer.body.get("refresh_token").is_none() {
            tracing::error!(source = %self.s.name, "keep_provider_tokens is on, but the provider gave no refresh token: the session cannot be renewed (is offline access allowed for this client?)");
        }
        // The provider's groups are its own to name: kept apart from the gateway's (a
        // group someone could create at the provider must not be taken for `admins`).
        let groups = person
            .groups
            .iter()
            .map(|g| {
                format!(
                    "{}@{}",
                    g.trim_start_matches('/').replace('/', "."),
                    self.s.name
                )
            })
            .collect();
        let username = if person.username.is_empty() {
            format!("user-{}", &crypto::hash_secret(&person.subject)[..8])
        } else {
            person.username
        };
        Ok(Attempt::Success(Authenticated {
            subject: person.subject,
            username,
            email: person.email,
            groups,
            keep: self.kept(&answer.body),
        }))
    }

    async fn renew(&self, kept: &[u8], force: bool) -> Renewal {
        let Ok(tokens) = serde_json::from_slice::<ProviderTokens>(kept) else {
            return Renewal::Unavailable("the kept provider tokens are unreadable".into());
        };
        let Some(refresh_token) = &tokens.refresh_token else {
            return Renewal::Unchanged;
        };
        // The provider is asked when its access token is about to expire (or never said
        // when): a session revoked there ends here within that token's lifetime, without a
        // call to the provider on every refresh of the gateway's tokens.
        if !force
            && tokens
                .expires_at
                .is_some_and(|e| e - self.clock.now() > RENEW_BEFORE_SECS)
        {
            return Renewal::Unchanged;
        }
        let p = match self.provider().await {
            Ok(p) => p,
            Err(e) => return Renewal::Unavailable(e),
        };
        let answer = match self
            .http
            .post_form(
                &p.token,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh_token),
                ],
                self.client_auth(&p),
            )
            .await
        {
            Ok(a) => a,
            Err(e) => return Renewal::Unavailable(format!("its token endpoint: {e}")),
        };
        match (answer.ok(), answer.oauth_error()) {
            (_, Some("invalid_grant" | "bad_refresh_token")) => {
                Renewal::Refused("the provider refused the refresh token (invalid_grant)".into())
            }
            (true, None) => {
                let Some(access_token) = answer.body.get("access_token").and_then(Value::as_str)
                else {
                    return Renewal::Unavailable("its refresh answer has no access_token".into());
                };
                let renewed = ProviderTokens {
                    // A provider that does not rotate keeps the old one valid.
                    refresh_token: answer
                        .body
                        .get("refresh_token")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .or(tokens.refresh_token.clone()),
                    access_token: access_token.to_string(),
                    expires_at: answer
                        .body
                        .get("expires_in")
                        .and_then(Value::as_i64)
                        .map(|s| self.clock.now().saturating_add(s)),
                };
                match serde_json::to_vec(&renewed) {
                    Ok(v) => Renewal::Renewed(v),
                    Err(e) => Renewal::Unavailable(e.to_string()),
                }
            }
            (_, other) => Renewal::Unavailable(format!(
                "its token endpoint answered HTTP {} ({})",
                answer.status,
                shown(other.unwrap_or("no error code"))
            )),
        }
    }
}
