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

    async fn jwt(
        &self,
        token: &str,
        resource: &str,
    ) -> Result<Option<(Principal, i64)>, BearerError> {
        let invalid = BearerError::Invalid("the access token is not valid");
        let Ok(peek) = jwt::decode(token, &[Alg::RS256, Alg::ES256, Alg::EdDSA]) else {
            return Ok(None);
        };
        let iss = peek.claims.get("iss").and_then(Value::as_str).unwrap_or("");
        let Some(issuer) = self.issuers.iter().find(|i| i.issuer == iss) else {
            return Err(BearerError::Invalid(
                "the access token is from an unknown issuer",
            ));
        };
        let Some(keys) = &issuer.keys else {
            return Ok(None);
        };
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
        Ok(Some((p, until)))
    }

    async fn introspect(
        &self,
        token: &str,
        resource: &str,
    ) -> Result<(Principal, i64), BearerError> {
        let invalid = BearerError::Invalid("the access token is not valid or has expired");
        let mut last = invalid;
        for issuer in &self.issuers {
            let Some(i) = &issuer.introspection else {
                continue;
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
                    last = BearerError::Unavailable;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(issuer = %issuer.issuer, reason = %e, "introspection unreachable");
                    last = BearerError::Unavailable;
                    continue;
                }
            };
            let c = &answer.body;
            if c.get("active") != Some(&Value::Bool(true)) {
                continue;
            }
            // An answer that names another issuer is not this one's token.
            if c.get("iss")
                .is_some_and(|v| v.as_str() != Some(issuer.issuer.as_str()))
            {
                continue;
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
            return Ok((
                p.clone(),
                now.saturating_add(i.cache_secs).min(p.expires_at),
            ));
        }
        Err(last)
    }
}

/// The principal a token's claims (or an introspection answer) describe; `None` without a
/// subject or an expiry.
fn principal(issuer: &str, c: &Map<String, Value>, resource: &str) -> Option<Principal> {
    let text = |n: &str| c.get(n).and_then(Value::as_str).filter(|s| !s.is_empty());
    let sub = text("sub").filter(|s| s.len() <= 255 && !s.chars().any(char::is_control))?;
    let expires_at = c.get("exp").and_then(Value::as_f64).map(|e| e as i64)?;
    let scopes = match (c.get("scope"), c.get("scp")) {
        (Some(Value::String(s)), _) => crate::store::split_scopes(s),
        (_, Some(Value::Array(a))) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    };
    Some(Principal {
        grant_id: None,
        login_source: None,
        // One user per (issuer, subject): sessions and rate limits are bound to it.
        user_id: Some(format!("{issuer}#{sub}")),
        username: text("preferred_username")
            .or_else(|| text("username"))
            .or(Some(sub))
            .map(str::to_string),
        email: text("email").map(str::to_string),
        groups: crate::login::oidc::claims::groups_of(c.get("groups")),
        client_id: text("client_id")
            .or_else(|| text("azp"))
            .unwrap_or("")
            .to_string(),
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
            Some(found) => found,
            None => self.introspect(token, resource).await?,
        };
        self.seen.put(key, (p.clone(), until), now);
        Ok(p)
    }
}
