//! The token endpoint (authorization_code, refresh_token, client_credentials), revocation
//! (RFC 7009), introspection (RFC 7662), and the bearer check used by protected resources.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::AuthorizationServer;
use super::clients::Client;
use super::error::{ErrorCode, OAuthError};
use super::params::Params;
use crate::crypto;
use crate::login::context::Renewed;
use crate::store::{
    AccessTokenRecord, EndReason, GrantFilter, GrantRecord, RedeemOutcome, RefreshTokenRecord,
    RotateOutcome, StoreEvent, TokenInfo,
};

#[derive(Clone, Serialize, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    pub scope: String,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &"<redacted>")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish()
    }
}

/// Who is calling a protected resource, as established from a valid bearer token.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The grant the token belongs to; none for client credentials.
    pub grant_id: Option<String>,
    /// The login source the person signed in through; none for client credentials.
    pub login_source: Option<String>,
    pub user_id: Option<String>,
    pub username: Option<String>,
    pub email: Option<String>,
    pub groups: Vec<String>,
    pub client_id: String,
    pub scopes: Vec<String>,
    pub resource: String,
    pub expires_at: i64,
}

/// Valid access tokens recently seen, so that the MCP path does not read the store on every
/// request. An entry is trusted for `TOKEN_CACHE_SECS` at most; it goes at once when its
/// grant ends or it is revoked, by this instance or (as soon as the store's events arrive)
/// another one or the CLI.
pub struct TokenCache {
    entries: crate::cache::TtlCache<TokenInfo>,
}

pub const TOKEN_CACHE_SECS: i64 = 5;
const TOKEN_CACHE_MAX: usize = 50_000;

impl Default for TokenCache {
    fn default() -> Self {
        Self {
            entries: crate::cache::TtlCache::new(TOKEN_CACHE_SECS, TOKEN_CACHE_MAX),
        }
    }
}

impl TokenCache {
    fn get(&self, hash: &str, now: i64) -> Option<TokenInfo> {
        self.entries
            .get(hash, now)
            .filter(|info| now < info.token.expires_at)
    }

    fn generation(&self) -> u64 {
        self.entries.generation()
    }

    fn put(&self, generation: u64, hash: String, info: TokenInfo, now: i64) {
        self.entries
            .put_unless_removed_since(generation, hash, info, now);
    }

    pub fn clear(&self) {
        self.entries.clear();
    }

    pub fn stats(&self) -> std::sync::Arc<crate::observe::metrics::CacheStats> {
        self.entries.stats()
    }

    /// Drops what an event ended.
    pub fn forget(&self, event: &StoreEvent) {
        match event {
            StoreEvent::GrantEnded(g) => self
                .entries
                .remove_where(|info| info.token.grant_id.as_deref() == Some(g.grant.as_str())),
            StoreEvent::AccessTokenRevoked { token_hash } => self.entries.remove(token_hash),
            StoreEvent::UserRemoved { user } => self
                .entries
                .remove_where(|info| info.token.user_id.as_deref() == Some(user.as_str())),
            StoreEvent::ClientRemoved { client } => self
                .entries
                .remove_where(|info| info.token.client_id == *client),
            StoreEvent::Resync => self.entries.clear(),
        }
    }
}

/// Why a bearer token was not accepted at a protected resource.
#[derive(Debug, PartialEq, Eq)]
pub enum BearerError {
    Missing,
    Invalid(&'static str),
    InsufficientScope,
    Unavailable,
}

impl AuthorizationServer {
    /// POST /token. Every refusal is recorded (`token_refused`) with the client it named
    /// and the OAuth error code (not a device's `authorization_pending` or `slow_down`);
    /// each issuance where it happens (`token_issued`).
    pub async fn token(
        &self,
        params: &Params,
        basic: Option<(String, String)>,
    ) -> Result<TokenResponse, OAuthError> {
        let named = basic
            .as_ref()
            .map(|(id, _)| id.clone())
            .or_else(|| params.get("client_id").ok().flatten().map(str::to_string));
        let result = self.token_inner(params, basic).await;
        // A device's polling answers are the protocol working, not refusals.
        if let Err(e) = &result
            && !matches!(
                e.code,
                ErrorCode::AuthorizationPending | ErrorCode::SlowDown
            )
        {
            self.observer.record(
                crate::observe::Event::TokenRefused {
                    grant_type: params
                        .get("grant_type")
                        .ok()
                        .flatten()
                        .map(crate::observe::audit::bounded),
                    client: named.as_deref().map(crate::observe::audit::bounded),
                    error: e.code.as_str(),
                },
                None,
            );
        }
        result
    }

    /// Records an access token issued by the `grant_type` grant.
    pub(super) fn issued(&self, grant_type: &'static str, record: &AccessTokenRecord) {
        self.observer.record(
            crate::observe::Event::TokenIssued {
                grant_type,
                client: record.client_id.clone(),
                user: record.user_id.clone(),
                resource: record.resource.clone(),
                scopes: record.scopes.clone(),
            },
            record.grant_id.as_deref(),
        );
    }

    async fn token_inner(
        &self,
        params: &Params,
        basic: Option<(String, String)>,
    ) -> Result<TokenResponse, OAuthError> {
        params.check_not_repeated(&["resource"])?;
        let grant_type = params.require("grant_type")?;
        // A refresh needs the grant to be live in the store, which a client's removal is
        // not, so only a refresh may take the client from the cache.
        let lookup = if grant_type == "refresh_token" {
            super::clients::ClientLookup::Cached
        } else {
            super::clients::ClientLookup::Fresh
        };
        let client = self.authenticate_client(params, basic, lookup).await?;
        match grant_type {
            "authorization_code"
            | "refresh_token"
            | "client_credentials"
            | super::device::DEVICE_CODE
            | super::id_jag::JWT_BEARER
                if !client.allows_grant(grant_type) =>
            {
                Err(OAuthError::new(
                    ErrorCode::UnauthorizedClient,
                    format!("this client is not allowed the {grant_type} grant"),
                ))
            }
            "authorization_code" => self.exchange_code(params, &client).await,
            "refresh_token" => self.refresh(params, &client).await,
            // Grants that begin here rather than at an authorization: an unapproved client
            // gets none (a code or a refresh continues what an approval let begin).
            "client_credentials" => {
                self.check_approved(&client).await?;
                self.client_credentials(params, &client).await
            }
            super::device::DEVICE_CODE => self.device_token(params, &client).await,
            super::id_jag::JWT_BEARER if !self.id_jag.is_empty() => {
                self.check_approved(&client).await?;
                self.jwt_bearer(params, &client).await
            }
            _ => Err(OAuthError::new(
                ErrorCode::UnsupportedGrantType,
                "this grant_type is not supported",
            )),
        }
    }

    /// An access token, expiring after its lifetime or when its grant must end, whichever
    /// comes first.
    pub(super) fn mint_access(
        &self,
        grant_ends: Option<i64>,
        grant_id: Option<&str>,
        client_id: &str,
        user_id: Option<&str>,
        resource: &str,
        scopes: &[String],
    ) -> (String, AccessTokenRecord) {
        let now = self.clock.now();
        let token = crypto::new_secret(crypto::ACCESS_TOKEN_PREFIX);
        let record = AccessTokenRecord {
            token_hash: crypto::hash_secret(&token),
            grant_id: grant_id.map(str::to_string),
            client_id: client_id.to_string(),
            user_id: user_id.map(str::to_string),
            resource: resource.to_string(),
            scopes: scopes.to_vec(),
            created_at: now,
            expires_at: (now + self.settings.access_token_ttl).min(grant_ends.unwrap_or(i64::MAX)),
        };
        (token, record)
    }

    fn mint_refresh(
        &self,
        grant_ends: i64,
        grant_id: &str,
        client_id: &str,
    ) -> (String, RefreshTokenRecord) {
        let now = self.clock.now();
        let token = crypto::new_secret(crypto::REFRESH_TOKEN_PREFIX);
        let record = RefreshTokenRecord {
            token_hash: crypto::hash_secret(&token),
            grant_id: grant_id.to_string(),
            client_id: client_id.to_string(),
            created_at: now,
            expires_at: (now + self.settings.refresh_token_ttl).min(grant_ends),
            used_at: None,
            successor_hash: None,
            retry_sealed: None,
            retry_until: None,
        };
        (token, record)
    }

    /// A `resource` on the token request must name the one bound at authorization.
    fn check_bound_resource(&self, params: &Params, bound: &str) -> Result<(), OAuthError> {
        match params.all("resource") {
            [] => Ok(()),
            [one] if self.find_resource(one).is_some_and(|r| r.url == bound) => Ok(()),
            [_] => Err(OAuthError::new(
                ErrorCode::InvalidTarget,
                "the resource differs from the one this grant was authorized for",
            )),
            _ => Err(OAuthError::new(
                ErrorCode::InvalidTarget,
                "send one `resource` parameter",
            )),
        }
    }

    async fn exchange_code(
        &self,
        params: &Params,
        client: &Client,
    ) -> Result<TokenResponse, OAuthError> {
        let code = params.require("code")?;
        let verifier = params.get("code_verifier")?.ok_or_else(|| {
            OAuthError::invalid_request("code_verifier is missing (PKCE is required)")
        })?;
        let code_hash = crypto::hash_secret(code);
        let now = self.clock.now();
        let Some(record) = self.store.code(&code_hash).await? else {
            return Err(OAuthError::invalid_grant(
                "the authorization code is not valid",
            ));
        };
        if record.client_id != client.client_id {
            return Err(OAuthError::invalid_grant(
                "the authorization code was issued to another client",
            ));
        }
        if let Some(grant_id) = &record.grant_id
            && record.consumed_at.is_some()
        {
            // RFC 6749 §4.1.2 / RFC 9700 §4.5: a replayed code revokes what it issued.
            self.revoke_grant_after_replay(grant_id, EndReason::CodeReplayed)
                .await?;
            return Err(OAuthError::invalid_grant(
                "the authorization code was used already",
            ));
        }
        if record.expires_at <= now {
            return Err(OAuthError::invalid_grant(
                "the authorization code has expired",
            ));
        }
        match params.get("redirect_uri")? {
            Some(r) if r != record.redirect_uri => {
                return Err(OAuthError::invalid_grant(
                    "redirect_uri does not match the authorization request",
                ));
            }
            None if record.redirect_given => {
                return Err(OAuthError::invalid_grant(
                    "redirect_uri is required because the authorization request had one",
                ));
            }
            _ => {}
        }
        if !crypto::is_valid_pkce_verifier(verifier) {
            return Err(OAuthError::invalid_grant(
                "code_verifier is malformed (RFC 7636: 43 to 128 characters)",
            ));
        }
        if !crypto::pkce_s256_matches(verifier, &record.code_challenge) {
            return Err(OAuthError::invalid_grant(
                "code_verifier does not match the code_challenge",
            ));
        }
        self.redeem(params, client, record, "authorization_code")
            .await
    }

    /// Redeems a checked authorization code (of a browser flow, or stored by a device
    /// approval): the grant, its first tokens, once.
    pub(super) async fn redeem(
        &self,
        params: &Params,
        client: &Client,
        record: crate::store::AuthCodeRecord,
        grant_type: &'static str,
    ) -> Result<TokenResponse, OAuthError> {
        let now = self.clock.now();
        let code_hash = record.code_hash.clone();
        self.check_bound_resource(params, &record.resource)?;
        let grant = GrantRecord {
            // Named when the request began, so that a login context sealed to it opens.
            id: record.grant_id.clone().unwrap_or_else(crypto::new_id),
            user_id: Some(record.user_id.clone()),
            client_id: client.client_id.clone(),
            resource: record.resource.clone(),
            scopes: record.scopes.clone(),
            created_at: now,
            revoked_at: None,
            ended_reason: None,
            login_source: record
                .login_source
                .clone()
                .unwrap_or_else(|| crate::login::LOCAL.into()),
        };
        let grant_ends = now.saturating_add(self.settings.grant_max_lifetime);
        let (access, access_rec) = self.mint_access(
            Some(grant_ends),
            Some(&grant.id),
            &client.client_id,
            Some(&record.user_id),
            &record.resource,
            &record.scopes,
        );
        let refresh = client
            .allows_grant("refresh_token")
            .then(|| self.mint_refresh(grant_ends, &grant.id, &client.client_id));
        match self
            .store
            .redeem_code(
                &code_hash,
                now,
                &grant,
                &access_rec,
                refresh.as_ref().map(|(_, r)| r),
            )
            .await?
        {
            RedeemOutcome::Issued => {
                self.issued(grant_type, &access_rec);
                Ok(TokenResponse {
                    access_token: access,
                    token_type: "Bearer".into(),
                    expires_in: access_rec.expires_at - now,
                    refresh_token: refresh.map(|(t, _)| t),
                    scope: record.scopes.join(" "),
                })
            }
            RedeemOutcome::Replayed { grant_id } => {
                if let Some(g) = grant_id {
                    self.revoke_grant_after_replay(&g, EndReason::CodeReplayed)
                        .await?;
                }
                Err(OAuthError::invalid_grant(
                    "the authorization code was used already",
                ))
            }
            RedeemOutcome::Invalid => Err(OAuthError::invalid_grant(
                "the authorization code is not valid",
            )),
        }
    }

    pub(super) async fn revoke_grant_after_replay(
        &self,
        grant_id: &str,
        reason: EndReason,
    ) -> Result<(), OAuthError> {
        let n = self
            .store
            .revoke_grants(
                &GrantFilter {
                    grant_id: Some(grant_id.to_string()),
                    ..Default::default()
                },
                reason,
                self.clock.now(),
            )
            .await?;
        tracing::warn!(
            grant_id,
            %reason,
            revoked = n,
            "replayed credential; grant revoked"
        );
        Ok(())
    }

    async fn refresh(&self, params: &Params, client: &Client) -> Result<TokenResponse, OAuthError> {
        let presented = params.require("refresh_token")?;
        let old_hash = crypto::hash_secret(presented);
        let now = self.clock.now();
        let Some((old, grant)) = self.store.refresh_token_and_grant(&old_hash, now).await? else {
            return Err(OAuthError::invalid_grant("the refresh token is not valid"));
        };
        if old.client_id != client.client_id {
            return Err(OAuthError::invalid_grant(
                "the refresh token was issued to another client",
            ));
        }
        let grant = match grant {
            Some(g) if g.revoked_at.is_none() => g,
            _ => return Err(OAuthError::invalid_grant("the grant has been revoked")),
        };
        let grant_ends = grant
            .created_at
            .saturating_add(self.settings.grant_max_lifetime);
        if now >= grant_ends {
            self.store
                .revoke_grants(
                    &GrantFilter {
                        grant_id: Some(grant.id.clone()),
                        ..Default::default()
                    },
                    EndReason::MaxLifetime,
                    now,
                )
                .await?;
            return Err(OAuthError::invalid_grant(
                "the grant reached its maximum lifetime; authorize again",
            ));
        }
        self.check_bound_resource(params, &grant.resource)?;
        // Down-scoping is allowed; widening is not (RFC 6749 §6).
        let scopes = match params.get("scope")? {
            None => grant.scopes.clone(),
            Some(s) => {
                let asked = crate::store::split_scopes(s);
                if asked.iter().any(|a| !grant.scopes.contains(a)) {
                    return Err(OAuthError::new(
                        ErrorCode::InvalidScope,
                        "a requested scope was not granted originally",
                    ));
                }
                asked
            }
        };
        if old.used_at.is_some() {
            return self.refresh_reused(presented, old).await;
        }
        self.renew_login_session(&grant).await?;
        let (access, access_rec) = self.mint_access(
            Some(grant_ends),
            Some(&grant.id),
            &client.client_id,
            grant.user_id.as_deref(),
            &grant.resource,
            &scopes,
        );
        let (refresh, refresh_rec) = self.mint_refresh(grant_ends, &grant.id, &client.client_id);
        let response = TokenResponse {
            access_token: access,
            token_type: "Bearer".into(),
            expires_in: access_rec.expires_at - now,
            refresh_token: Some(refresh),
            scope: scopes.join(" "),
        };
        let plain = serde_json::to_vec(&response).map_err(|_| OAuthError::server_error())?;
        let sealed = crypto::seal_with_secret(presented, &old_hash, &plain)
            .ok_or_else(OAuthError::server_error)?;
        match self
            .store
            .rotate_refresh(
                &old_hash,
                now,
                &access_rec,
                &refresh_rec,
                &sealed,
                now + self.settings.refresh_retry_window,
            )
            .await?
        {
            RotateOutcome::Rotated => {
                self.issued("refresh_token", &access_rec);
                Ok(response)
            }
            RotateOutcome::AlreadyUsed {
                record,
                successor_used,
            } => {
                // Lost a race with another refresh of the same token.
                self.refresh_reused_with(presented, record, successor_used)
                    .await
            }
            RotateOutcome::Invalid => {
                Err(OAuthError::invalid_grant("the refresh token is not valid"))
            }
        }
    }

    /// A grant whose login source keeps a session (an identity provider's refresh token)
    /// has it renewed as its tokens are. A provider that refuses (`invalid_grant`: the
    /// account disabled or the session revoked there) ends this grant; the user's other
    /// grants end as each is refreshed (a provider refuses one refresh token for reasons of
    /// its own too — Google drops the oldest past a hundred — so one refusal is not taken to
    /// speak for all of them). A provider that cannot be reached ends nothing.
    async fn renew_login_session(&self, grant: &GrantRecord) -> Result<(), OAuthError> {
        let Some(source) = self
            .login
            .get(&grant.login_source)
            .filter(|s| s.keeps_context())
            .cloned()
        else {
            return Ok(());
        };
        match self
            .contexts
            .renew(&self.store, source.as_ref(), &grant.id, false)
            .await
        {
            Renewed::Kept(_) | Renewed::Nothing => Ok(()),
            Renewed::Unavailable(why) => {
                tracing::warn!(source = source.name(), grant_id = %grant.id, reason = %why, "provider session not renewed; the grant goes on");
                Ok(())
            }
            Renewed::Refused(why) => {
                self.store
                    .revoke_grants(
                        &GrantFilter {
                            grant_id: Some(grant.id.clone()),
                            ..Default::default()
                        },
                        EndReason::ProviderRefused,
                        self.clock.now(),
                    )
                    .await?;
                tracing::warn!(source = source.name(), grant_id = %grant.id, user_id = ?grant.user_id, reason = %why, "the identity provider refused the session; the grant ended");
                Err(OAuthError::invalid_grant(
                    "the identity provider no longer accepts this sign-in; authorize again",
                ))
            }
        }
    }

    async fn refresh_reused(
        &self,
        presented: &str,
        old: RefreshTokenRecord,
    ) -> Result<TokenResponse, OAuthError> {
        let successor_used = match &old.successor_hash {
            Some(h) => {
                !matches!(self.store.refresh_token(h, self.clock.now()).await?, Some(s) if s.used_at.is_none())
            }
            None => true,
        };
        self.refresh_reused_with(presented, old, successor_used)
            .await
    }

    /// A rotated refresh token presented again: within the retry window and before its
    /// successor was used, the same answer again; otherwise it is treated as stolen and the
    /// whole grant is revoked (RFC 9700 §4.14.2).
    async fn refresh_reused_with(
        &self,
        presented: &str,
        old: RefreshTokenRecord,
        successor_used: bool,
    ) -> Result<TokenResponse, OAuthError> {
        let now = self.clock.now();
        if !successor_used
            && old.retry_until.is_some_and(|u| now <= u)
            && let Some(sealed) = &old.retry_sealed
            && let Some(plain) = crypto::open_with_secret(presented, &old.token_hash, sealed)
            && let Ok(mut response) = serde_json::from_slice::<TokenResponse>(&plain)
        {
            let issued_at = old.used_at.unwrap_or(now);
            response.expires_in = (response.expires_in - (now - issued_at)).max(1);
            return Ok(response);
        }
        self.observer.record(
            crate::observe::Event::RefreshReuseDetected {
                client: old.client_id.clone(),
            },
            Some(&old.grant_id),
        );
        self.revoke_grant_after_replay(&old.grant_id, EndReason::RefreshReplayed)
            .await?;
        Err(OAuthError::invalid_grant(
            "the refresh token was used already; the grant has been revoked",
        ))
    }

    async fn client_credentials(
        &self,
        params: &Params,
        client: &Client,
    ) -> Result<TokenResponse, OAuthError> {
        if client.is_public() {
            return Err(OAuthError::new(
                ErrorCode::UnauthorizedClient,
                "client_credentials needs a confidential client",
            ));
        }
        let resource = self.resolve_resource(params.all("resource"))?;
        let scopes = self.check_scopes(params.get("scope")?, client)?;
        let (access, record) =
            self.mint_access(None, None, &client.client_id, None, &resource.url, &scopes);
        self.store.insert_access_token(&record).await?;
        self.issued("client_credentials", &record);
        Ok(TokenResponse {
            access_token: access,
            token_type: "Bearer".into(),
            expires_in: self.settings.access_token_ttl,
            refresh_token: None,
            scope: scopes.join(" "),
        })
    }

    /// POST /revoke (RFC 7009). Unknown tokens and tokens of other clients are answered with
    /// success, as the RFC asks, and left alone.
    pub async fn revoke(
        &self,
        params: &Params,
        basic: Option<(String, String)>,
    ) -> Result<(), OAuthError> {
        params.check_not_repeated(&[])?;
        let client = self
            .authenticate_client(params, basic, super::clients::ClientLookup::Fresh)
            .await?;
        let token = params.require("token")?;
        let hash = crypto::hash_secret(token);
        let now = self.clock.now();
        let revoked = |kind: &'static str, grant: Option<&str>| {
            self.observer.record(
                crate::observe::Event::TokenRevoked {
                    client: client.client_id.clone(),
                    kind,
                },
                grant,
            );
        };
        if let Some(r) = self.store.refresh_token(&hash, now).await? {
            if r.client_id == client.client_id {
                self.store
                    .revoke_grants(
                        &GrantFilter {
                            grant_id: Some(r.grant_id.clone()),
                            ..Default::default()
                        },
                        EndReason::Revoked,
                        now,
                    )
                    .await?;
                revoked("refresh_token", Some(&r.grant_id));
            }
            return Ok(());
        }
        if let Some(info) = self.store.access_token(&hash, now).await?
            && info.token.client_id == client.client_id
        {
            self.store.revoke_access_token(&hash, now).await?;
            revoked("access_token", info.token.grant_id.as_deref());
        }
        Ok(())
    }

    /// POST /introspect (RFC 7662), for authenticated resource servers only.
    pub async fn introspect(
        &self,
        params: &Params,
        basic: Option<(String, String)>,
    ) -> Result<Value, OAuthError> {
        let client = self
            .authenticate_client(params, basic, super::clients::ClientLookup::Fresh)
            .await?;
        if !client.introspection || client.is_public() {
            return Err(OAuthError::new(
                ErrorCode::UnauthorizedClient,
                "this client may not introspect tokens",
            ));
        }
        let token = params.require("token")?;
        let hash = crypto::hash_secret(token);
        let now = self.clock.now();
        // A resource server sees only tokens meant for its own resources; anything else is
        // as good as unknown to it (RFC 7662 §4).
        if let Some(TokenInfo {
            token: t, username, ..
        }) = self.store.access_token(&hash, now).await?
            && client.introspection_audiences.contains(&t.resource)
        {
            let mut v = json!({
                "active": true,
                "token_type": "Bearer",
                "client_id": t.client_id,
                "scope": t.scopes.join(" "),
                "aud": t.resource,
                "iss": self.settings.issuer,
                "exp": t.expires_at,
                "iat": t.created_at,
            });
            if let Value::Object(o) = &mut v {
                if let Some(u) = t.user_id {
                    o.insert("sub".into(), json!(u));
                }
                if let Some(n) = username {
                    o.insert("username".into(), json!(n));
                }
            }
            return Ok(v);
        }
        // A refresh token is its client's alone.
        if let Some(r) = self.store.refresh_token(&hash, now).await?
            && r.client_id == client.client_id
            && r.used_at.is_none()
            && let Some(g) = self.store.grant(&r.grant_id).await?
            && g.revoked_at.is_none()
        {
            return Ok(json!({
                "active": true,
                "token_type": "refresh_token",
                "client_id": r.client_id,
                "scope": g.scopes.join(" "),
                "aud": g.resource,
                "iss": self.settings.issuer,
                "exp": r.expires_at,
                "iat": r.created_at,
                "sub": g.user_id,
            }));
        }
        Ok(json!({"active": false}))
    }

    /// Checks a bearer token presented at `resource`, which needs `required` scopes.
    pub async fn check_bearer(
        &self,
        token: Option<&str>,
        resource_url: &str,
        required: &[String],
    ) -> Result<Principal, BearerError> {
        let token = token.ok_or(BearerError::Missing)?;
        if let Some((validator, _)) = &self.external {
            let principal = validator.validate(token, resource_url).await?;
            if principal.resource != resource_url {
                return Err(BearerError::Invalid(
                    "the access token is for another resource",
                ));
            }
            if !required.iter().all(|s| principal.scopes.contains(s)) {
                return Err(BearerError::InsufficientScope);
            }
            return Ok(principal);
        }
        if !token.starts_with(crypto::ACCESS_TOKEN_PREFIX) || token.len() > 200 {
            return Err(BearerError::Invalid("the access token is not valid"));
        }
        let hash = crypto::hash_secret(token);
        let now = self.clock.now();
        let info = match self.tokens.get(&hash, now) {
            Some(info) => info,
            None => {
                let generation = self.tokens.generation();
                let started = std::time::Instant::now();
                let read = self.store.access_token(&hash, now).await;
                if let Some(m) = self.observer.metrics() {
                    m.store_timed("access_token_lookup", started.elapsed(), read.is_ok());
                }
                let info =
                    read.map_err(|_| BearerError::Unavailable)?
                        .ok_or(BearerError::Invalid(
                            "the access token is not valid or has expired",
                        ))?;
                self.tokens.put(generation, hash, info.clone(), now);
                info
            }
        };
        if info.token.resource != resource_url {
            return Err(BearerError::Invalid(
                "the access token is for another resource",
            ));
        }
        if !required.iter().all(|s| info.token.scopes.contains(s)) {
            return Err(BearerError::InsufficientScope);
        }
        Ok(Principal {
            grant_id: info.token.grant_id,
            login_source: info.login_source,
            user_id: info.token.user_id,
            username: info.username,
            email: info.email,
            groups: info.groups,
            client_id: info.token.client_id,
            scopes: info.token.scopes,
            resource: info.token.resource,
            expires_at: info.token.expires_at,
        })
    }
}
