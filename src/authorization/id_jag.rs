//! Enterprise-managed authorization: the token endpoint takes an Identity Assertion JWT
//! Authorization Grant (ID-JAG) from an enterprise identity provider the operator trusts
//! (`[[trust.id_jag]]`), as an RFC 7523 JWT-bearer grant. The provider decided the person may
//! use this client at this resource; the gateway verifies that it said so — its signature
//! (an explicit algorithm list, never `none`), `typ`, `iss`, `aud` (the gateway), the client,
//! the resource, the dates — uses each assertion once (its `jti`, in the store, so every
//! instance sees it), and issues an access token for that one resource, with the scopes both
//! asked for and asserted.

use std::sync::Arc;

use serde_json::Value;

use super::AuthorizationServer;
use super::clients::Client;
use super::error::{ErrorCode, OAuthError};
use super::params::Params;
use super::token::TokenResponse;
use crate::clock::SharedClock;
use crate::config::IdJagIssuerConfig;
use crate::crypto;
use crate::jwt::{self, Alg, JwtError};
use crate::keyset::{KeyError, RemoteKeySet};
use crate::login::Authenticated;
use crate::login::source::ResolveError;
use crate::outbound::Outbound;
use crate::store::GrantRecord;

/// The grant type of RFC 7523 §2.1.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The assertion profile advertised in the metadata.
pub const ID_JAG_PROFILE: &str = "urn:ietf:params:oauth:grant-profile:id-jag";
/// The header `typ` of an ID-JAG.
const ID_JAG_TYP: &str = "oauth-id-jag+jwt";
/// An assertion must have been issued within this long (plus the skew).
const MAX_AGE_SECS: i64 = 600;
const SKEW_SECS: i64 = 60;

/// One enterprise identity provider whose assertions are taken.
pub struct TrustedIssuer {
    /// Its users' identities are linked under this name.
    pub name: String,
    pub issuer: String,
    keys: RemoteKeySet,
    algs: Vec<Alg>,
}

impl TrustedIssuer {
    pub fn from_config(c: &IdJagIssuerConfig, clock: SharedClock) -> Result<Arc<Self>, String> {
        let at = |k: &str| format!("trust.id_jag `{}`: {k}", c.name);
        let jwks = url::Url::parse(&c.jwks_uri).map_err(|e| format!("{}: {e}", at("jwks_uri")))?;
        let algs = c
            .algorithms
            .iter()
            .map(|a| Alg::parse(a).ok_or_else(|| at("algorithms")))
            .collect::<Result<Vec<_>, _>>()?;
        let http = Outbound::new(std::time::Duration::from_secs(10))?;
        Ok(Arc::new(Self {
            name: c.name.clone(),
            issuer: c.issuer.clone(),
            keys: RemoteKeySet::new(jwks, http, clock),
            algs,
        }))
    }
}

fn refused(why: &str) -> OAuthError {
    OAuthError::invalid_grant(format!("the assertion was refused: {why}"))
}

fn text<'a>(claims: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a str> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 255 && !s.chars().any(char::is_control))
}

impl AuthorizationServer {
    /// `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` with an ID-JAG.
    pub(super) async fn jwt_bearer(
        &self,
        params: &Params,
        client: &Client,
    ) -> Result<TokenResponse, OAuthError> {
        let assertion = params.require("assertion")?;
        // Which issuer: read from the unverified token only to choose the keys, and checked
        // again among the verified claims.
        let peek = jwt::decode(assertion, &[Alg::RS256, Alg::ES256, Alg::EdDSA]).map_err(|e| {
            refused(match e {
                JwtError::Algorithm(_) => "its algorithm is not accepted",
                _ => "it is not a signed JWT",
            })
        })?;
        let iss = peek.claims.get("iss").and_then(Value::as_str).unwrap_or("");
        let Some(trusted) = self.id_jag.iter().find(|t| t.issuer == iss) else {
            return Err(refused("its issuer is not trusted here"));
        };
        let d = trusted
            .keys
            .verify(assertion, &trusted.algs)
            .await
            .map_err(|e| match e {
                KeyError::Unavailable(why) => {
                    tracing::warn!(issuer = %trusted.issuer, reason = %why, "the ID-JAG issuer's keys cannot be fetched");
                    OAuthError::new(
                        ErrorCode::TemporarilyUnavailable,
                        "the assertion's issuer cannot be reached; try again shortly",
                    )
                }
                KeyError::Token(JwtError::Algorithm(_)) => refused("its algorithm is not accepted from this issuer"),
                KeyError::Token(_) => refused("its signature does not verify"),
            })?;
        let now = self.clock.now();
        jwt::check_claims(
            &d,
            &jwt::Expect {
                issuer: &trusted.issuer,
                audience: &self.settings.issuer,
                authorized_party: None,
                nonce: None,
                typ: Some(ID_JAG_TYP),
                now,
                skew: SKEW_SECS,
                max_age: Some(MAX_AGE_SECS),
            },
        )
        .map_err(|e| {
            refused(match e {
                JwtError::Expired => "it has expired",
                JwtError::NotYetValid => "it is not valid yet",
                JwtError::Claim("typ") => "it is not an ID-JAG (typ)",
                JwtError::Claim("aud") => "it is not for this server (aud)",
                JwtError::Claim("iss") => "its issuer is not trusted here",
                _ => "a claim is missing or wrong",
            })
        })?;
        let c = &d.claims;
        // The audience is this server alone.
        if matches!(c.get("aud"), Some(Value::Array(a)) if a.len() != 1) {
            return Err(refused("it is not for this server alone (aud)"));
        }
        if text(c, "client_id") != Some(client.client_id.as_str()) {
            return Err(refused("it was issued for another client (client_id)"));
        }
        let subject = text(c, "sub").ok_or_else(|| refused("it names nobody (sub)"))?;
        let jti = text(c, "jti").ok_or_else(|| refused("it has no jti"))?;
        let expires_at = c
            .get("exp")
            .and_then(Value::as_f64)
            .map(|e| e as i64)
            .ok_or_else(|| refused("it has no exp"))?;
        // The resource it asserts; a `resource` parameter, if any, must agree.
        let asserted = text(c, "resource").ok_or_else(|| refused("it names no resource"))?;
        let resource = self.resolve_resource(&[asserted.to_string()])?;
        let requested = params.all("resource");
        if !requested.is_empty() && self.resolve_resource(requested)?.url != resource.url {
            return Err(OAuthError::new(
                ErrorCode::InvalidTarget,
                "the resource differs from the one the assertion names",
            ));
        }
        // Scopes: those asked for (or the client's defaults) that the assertion grants too.
        let asked = self.check_scopes(params.get("scope")?, client)?;
        let scopes: Vec<String> = match c.get("scope") {
            None => asked,
            Some(Value::String(s)) => {
                let granted = crate::store::split_scopes(s);
                asked.into_iter().filter(|a| granted.contains(a)).collect()
            }
            Some(_) => return Err(refused("its scope is not a string")),
        };
        if scopes.is_empty() {
            return Err(OAuthError::new(
                ErrorCode::InvalidScope,
                "none of the requested scopes is granted by the assertion",
            ));
        }
        let who = Authenticated {
            subject: subject.to_string(),
            username: text(c, "preferred_username")
                .or_else(|| text(c, "email"))
                .unwrap_or(subject)
                .to_string(),
            email: text(c, "email")
                .filter(|_| c.get("email_verified") == Some(&Value::Bool(true)))
                .map(str::to_ascii_lowercase),
            groups: Vec::new(),
            keep: None,
        };
        let user = match self.login.resolve(&trusted.name, &who).await {
            Ok(u) => u,
            Err(ResolveError::Store(e)) => return Err(e.into()),
            Err(e) => return Err(refused(&e.to_string())),
        };
        let grant = GrantRecord {
            id: crypto::new_id(),
            user_id: Some(user.id.clone()),
            client_id: client.client_id.clone(),
            resource: resource.url.clone(),
            scopes: scopes.clone(),
            created_at: now,
            revoked_at: None,
            ended_reason: None,
            login_source: trusted.name.clone(),
        };
        let grant_ends = now.saturating_add(self.settings.grant_max_lifetime);
        let (access, record) = self.mint_access(
            Some(grant_ends),
            Some(&grant.id),
            &client.client_id,
            Some(&user.id),
            &resource.url,
            &scopes,
        );
        let assertion_id = crypto::hash_secret(&format!("id-jag\n{}\n{jti}", trusted.issuer));
        // Kept past the last second it could be accepted (and past other instances' clocks).
        let keep_until = expires_at.saturating_add(2 * SKEW_SECS + 60);
        if !self
            .store
            .grant_from_assertion(&assertion_id, keep_until, &grant, &record)
            .await?
        {
            tracing::warn!(issuer = %trusted.issuer, client_id = ?client.client_id, "an ID-JAG was presented again");
            return Err(refused("it was used already (jti)"));
        }
        tracing::info!(issuer = %trusted.issuer, user = ?user.username, client_id = ?client.client_id, resource = %resource.url, "ID-JAG exchanged");
        self.issued("jwt_bearer", &record);
        Ok(TokenResponse {
            access_token: access,
            token_type: "Bearer".into(),
            expires_in: record.expires_at - now,
            refresh_token: None,
            scope: scopes.join(" "),
        })
    }
}
