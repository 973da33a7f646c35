//! The resource-server-only mode (`authorization.mode = "external"`): another authorization
//! server issues the tokens, and the gateway checks them — JWT access tokens with the issuer's
//! published keys (RFC 9068's claims: `iss`, `aud` equal to the resource, `exp` with a bounded
//! skew, the scopes), opaque ones by RFC 7662 introspection — through [`TokenValidator`], the
//! interface another token format plugs into without touching the proxy.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value};

use super::token::{BearerError, Principal};
use crate::cache::TtlCache;
use crate::clock::SharedClock;
use crate::config::ExternalIssuerConfig;
use crate::crypto;
use crate::jwt::{self, Alg};
use crate::keyset::{KeyError, RemoteKeySet};
use crate::outbound::{ClientAuth, Outbound};
use crate::secret::Secret;

/// Who a bearer token stands for at a resource. Scopes are compared by the caller.
#[async_trait]
pub trait TokenValidator: Send + Sync {
    async fn validate(&self, token: &str, resource: &str) -> Result<Principal, BearerError>;
}

const SKEW_SECS: i64 = 60;
/// A verified JWT is reused this long at most (it cannot be revoked anyway; this saves a
/// signature check per request).
const JWT_CACHE_SECS: i64 = 300;
const CACHE_ENTRIES: usize = 10_000;

struct Introspection {
    endpoint: url::Url,
    client_id: String,
    client_secret: Secret,
    cache_secs: i64,
}

struct Issuer {
    issuer: String,
    keys: Option<RemoteKeySet>,
    algs: Vec<Alg>,
    introspection: Option<Introspection>,
}

/// Validates the access tokens of the configured external authorization servers.
pub struct ExternalValidator {
    issuers: Vec<Issuer>,
    http: Outbound,
    clock: SharedClock,
    /// (token hash, resource) → principal, with when the entry must be checked again.
    seen: TtlCache<(Principal, i64)>,
}

impl ExternalValidator {
    pub fn new(configs: &[ExternalIssuerConfig], clock: SharedClock) -> Result<Arc<Self>, String> {
        let http = Outbound::new(std::time::Duration::from_secs(10))?;
        let url = |s: &str| url::Url::parse(s).map_err(|e| format!("authorization.external: {e}"));
        let mut issuers = Vec::new();
        for c in configs {
            issuers.push(Issuer {
                issuer: c.issuer.clone(),
                keys: c
                    .jwks_uri
                    .as_deref()
                    .map(|u| {
                        Ok::<_, String>(RemoteKeySet::new(url(u)?, http.clone(), clock.clone()))
                    })
                    .transpose()?,
                algs: c.algorithms.iter().filter_map(|a| Alg::parse(a)).collect(),
                introspection: match (&c.introspection_endpoint, &c.client_id, &c.client_secret) {
                    (Some(e), Some(id), Some(secret)) => Some(Introspection {
                        endpoint: url(e)?,
                        client_id: id.clone(),
                        client_secret: secret.clone(),
                        cache_secs: c.introspection_cache_secs,
                    }),
                    _ => None,
                },
            });
        }
        Ok(Arc::new(Self {
            issuers,
            http,
            clock,
            seen: TtlCache::new(JWT_CACHE_SECS, CACHE_ENTRIES),
        }))
    }

    /// The issuers, for the protected resource metadata.
    pub fn issuers(&self) -> Vec<String> {
        self.issuers.iter().map(|i| i.issuer.clone()).collect()
    }

    /// A JWT of a known issuer with keys is checked here (`Ok(Ok(…))`); otherwise the answer
    /// says where to introspect it: the issuer it names, or for an opaque token the one
    /// server that introspects (`Ok(Err(…))`).
    async fn jwt(
        &self,
        token: &str,
        resource: &str,
    ) -> Result<Result<(Principal, i64), Option<usize>>, BearerError> {
        let invalid = BearerError::Invalid("the access token is not valid");
        let Ok(peek) = jwt::decode(token, &[Alg::RS256, Alg::ES256, Alg::EdDSA]) else {
            return Ok(Err(None));
        };
        let iss = peek.claims.get("iss").and_then(Value::as_str).unwrap_or("");
        let Some(at) = self.issuers.iter().position(|i| i.issuer == iss) else {
            return Err(BearerError::Invalid(
                "the access token is from an unknown issuer",
            ));
        };
        let issuer = &self.issuers[at];
        let Some(keys) = &issuer.keys else {
            return Ok(Err(Some(at)));
        };
        // RFC 9068's `at+jwt`, or a plain JWT (as many servers send); never another kind of
        // token (an ID token, an ID-JAG, a logout token).
        if peek.typ.as_deref().is_some_and(|t| {
            !matches!(
                t.to_ascii_lowercase().as_str(),
                "at+jwt" | "application/at+jwt" | "jwt"
            )
        }) {
            return Err(BearerError::Invalid("the token is not an access token"));
        }
        let d = keys.verify(token, &issuer.algs).await.map_err(|e| match e {
            KeyError::Unavailable(why) => {
                tracing::warn!(issuer = %issuer.issuer, reason = %why, "the issuer's keys cannot be fetched");
                BearerError::Unavailable
            }
            KeyError::Token(_) => invalid,
        })?;
        let now = self.clock.now();
        jwt::check_claims(
            &d,
            &jwt::Expect {
                issuer: &issuer.issuer,
                audience: resource,
                authorized_party: None,
                nonce: None,
                typ: None,
                now,
                skew: SKEW_SECS,
                max_age: None,
            },
        )
        .map_err(|e| match e {
            jwt::JwtError::Claim("aud") => {
                BearerError::Invalid("the access token is for another resource")
            }
            jwt::JwtError::Expired => BearerError::Invalid("the access token has expired"),
            _ => BearerError::Invalid("the access token is not valid"),
        })?;
        let p = principal(&issuer.issuer, &d.claims, resource)
            .ok_or(BearerError::Invalid("the access token is not valid"))?;
        let until = now
            .saturating_add(JWT_CACHE_SECS)
            .min(p.expires_at.saturating_add(SKEW_SECS));
        Ok(Ok((p, until)))
    }

    /// Asks the issuer at `at` (the token's own), or for an opaque token the one server
    /// that introspects: a token is never shown to a server other than its issuer.
    async fn introspect(
        &self,
        token: &str,
        resource: &str,
        at: Option<usize>,
    ) -> Result<(Principal, i64), BearerError> {
        let invalid = BearerError::Invalid("the access token is not valid or has expired");
        let issuer = match at {
            Some(i) => self.issuers.get(i),
            None => self.issuers.iter().find(|i| i.introspection.is_some()),
        };
        let Some((issuer, i)) = issuer.and_then(|x| x.introspection.as_ref().map(|i| (x, i)))
        else {
            return Err(invalid);
        };
        let answer = match self
            .http
            .post_form(
                &i.endpoint,
                &[("token", token), ("token_type_hint", "access_token")],
                ClientAuth::Basic {
                    id: &i.client_id,
                    secret: i.client_secret.expose(),
                },
            )
            .await
        {
            Ok(a) if a.ok() => a,
            Ok(a) => {
                tracing::warn!(issuer = %issuer.issuer, status = a.status, "introspection refused");
                return Err(BearerError::Unavailable);
            }
            Err(e) => {
                tracing::warn!(issuer = %issuer.issuer, reason = %e, "introspection unreachable");
                return Err(BearerError::Unavailable);
            }
        };
        let c = &answer.body;
        if c.get("active") != Some(&Value::Bool(true)) {
            return Err(invalid);
        }
        // An answer naming another issuer is not this one's token; a refresh token is no
        // access token.
        if c.get("iss")
            .is_some_and(|v| v.as_str() != Some(issuer.issuer.as_str()))
            || c.get("token_type")
                .and_then(Value::as_str)
                .is_some_and(|t| {
                    !t.eq_ignore_ascii_case("access_token") && !t.eq_ignore_ascii_case("bearer")
                })
        {
            return Err(BearerError::Invalid(
                "the token is not a bearer access token",
            ));
        }
        let audiences: Vec<&str> = match c.get("aud") {
            Some(Value::String(a)) => vec![a.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !audiences.contains(&resource) {
            return Err(BearerError::Invalid(
                "the access token is for another resource",
            ));
        }
        let now = self.clock.now();
        let Some(p) = principal(&issuer.issuer, c, resource) else {
            return Err(BearerError::Invalid("the access token is not valid"));
        };
        if p.expires_at <= now {
            return Err(BearerError::Invalid("the access token has expired"));
        }
        let until = now.saturating_add(i.cache_secs).min(p.expires_at);
        Ok((p, until))
    }
}

/// The principal a token's claims (or an introspection answer) describe; `None` without a
/// subject or an expiry, or for a sender-constrained token.
fn principal(issuer: &str, c: &Map<String, Value>, resource: &str) -> Option<Principal> {
    let text = |n: &str| c.get(n).and_then(Value::as_str).filter(|s| !s.is_empty());
    let sub = text("sub").filter(|s| s.len() <= 255 && !s.chars().any(char::is_control))?;
    let expires_at = c.get("exp").and_then(Value::as_f64).map(|e| e as i64)?;
    // DPoP- or certificate-bound: it needs a proof of possession this gateway does not check.
    if c.contains_key("cnf") {
        return None;
    }
    let scopes = match (c.get("scope"), c.get("scp")) {
        (Some(Value::String(s)), _) | (_, Some(Value::String(s))) => crate::store::split_scopes(s),
        (_, Some(Value::Array(a))) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    };
    // What reaches tool rules, identity headers and assertions is held to the rules of the
    // gateway's own users: a name that would not pass is replaced by the subject, groups
    // that would not pass are dropped, and an address counts only when verified.
    let username = text("preferred_username")
        .or_else(|| text("username"))
        .filter(|u| crate::login::validate_username(u).is_ok())
        .unwrap_or(sub);
    let email = text("email")
        .filter(|_| c.get("email_verified") == Some(&Value::Bool(true)))
        .filter(|e| crate::login::validate_profile(Some(e), &[]).is_ok());
    let groups = crate::login::oidc::claims::groups_of(c.get("groups"))
        .into_iter()
        .filter(|g| crate::login::validate_profile(None, std::slice::from_ref(g)).is_ok())
        .take(100)
        .collect();
    // Okta names the client `cid`, Entra v1 `appid`; without any, the issuer stands in (so
    // that per-client limits never pool every such token under an empty name).
    let client_id = text("client_id")
        .or_else(|| text("azp"))
        .or_else(|| text("cid"))
        .or_else(|| text("appid"))
        .unwrap_or(issuer)
        .to_string();
    Some(Principal {
        grant_id: None,
        login_source: None,
        // One user per (issuer, subject): sessions and rate limits are bound to it.
        user_id: Some(format!("{issuer}#{sub}")),
        username: Some(username.to_string()),
        email: email.map(str::to_string),
        groups,
        client_id,
        scopes,
        resource: resource.to_string(),
        expires_at,
    })
}

#[async_trait]
impl TokenValidator for ExternalValidator {
    async fn validate(&self, token: &str, resource: &str) -> Result<Principal, BearerError> {
        if token.is_empty() || token.len() > 16 * 1024 {
            return Err(BearerError::Invalid("the access token is not valid"));
        }
        let now = self.clock.now();
        let key = crypto::hash_secret(&format!("{resource}\n{token}"));
        if let Some((p, until)) = self.seen.get(&key, now)
            && now < until
        {
            return Ok(p);
        }
        let (p, until) = match self.jwt(token, resource).await? {
            Ok(found) => found,
            Err(at) => self.introspect(token, resource, at).await?,
        };
        self.seen.put(key, (p.clone(), until), now);
        Ok(p)
    }
}
