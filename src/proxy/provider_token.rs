//! The one allowed exception to "no token passthrough": an upstream that opts in
//! (`type = "provider_token"`) receives the user's access token **from their identity
//! provider** — never the MCP client's token — for MCP servers that call that provider's own
//! API as the user. The token lives in the grant's sealed login context (the login source's
//! `keep_provider_tokens`), and is renewed by the source before it expires.

use std::sync::Arc;

use async_trait::async_trait;
use http::header::{self, HeaderMap, HeaderValue};

use super::credentials::{AfterUnauthorized, CredentialError, CredentialSource};
use crate::authorization::token::Principal;
use crate::clock::SharedClock;
use crate::login::oidc::ProviderTokens;
use crate::login::{LoginContexts, LoginSource, Renewal};
use crate::store::SharedStore;

/// A token with less than this left is renewed before it goes upstream.
const RENEW_WITHIN_SECS: i64 = 60;

pub struct ProviderToken {
    source: Arc<dyn LoginSource>,
    contexts: LoginContexts,
    store: SharedStore,
    clock: SharedClock,
    /// One renewal per grant at a time on this instance (by stripe of the grant id).
    renewals: Vec<tokio::sync::Mutex<()>>,
}

impl ProviderToken {
    pub fn new(
        source: Arc<dyn LoginSource>,
        contexts: LoginContexts,
        store: SharedStore,
        clock: SharedClock,
    ) -> Self {
        Self {
            source,
            contexts,
            store,
            clock,
            renewals: (0..16).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }

    fn unavailable(&self, why: &str) -> CredentialError {
        CredentialError::Unavailable(why.to_string())
    }

    /// The grant's provider tokens, renewed first when `force` or about to expire.
    async fn token_for(&self, grant: &str, force: bool) -> Result<ProviderTokens, CredentialError> {
        let name = self.source.name();
        let stripe = grant
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
            % self.renewals.len().max(1);
        let _one = match self.renewals.get(stripe) {
            Some(m) => Some(m.lock().await),
            None => None,
        };
        let kept = self
            .contexts
            .read(&self.store, name, grant)
            .await
            .map_err(|e| {
                tracing::warn!(source = name, error = %e, "provider tokens unreadable");
                self.unavailable("the identity provider's token cannot be read")
            })?
            .ok_or_else(|| self.unavailable("this sign-in kept no identity provider token"))?;
        let tokens: ProviderTokens = serde_json::from_slice(&kept)
            .map_err(|_| self.unavailable("the identity provider's token cannot be read"))?;
        let due = tokens
            .expires_at
            .is_some_and(|e| e - self.clock.now() <= RENEW_WITHIN_SECS);
        if !(due || force) {
            return Ok(tokens);
        }
        match self.source.renew(&kept).await {
            Renewal::Renewed(renewed) => {
                let sealed = self.contexts.seal(name, grant, &renewed).map_err(|e| {
                    tracing::error!(error = %e, "cannot seal a login context");
                    self.unavailable("the identity provider's token cannot be kept")
                })?;
                if !self
                    .store
                    .set_login_context(grant, &sealed)
                    .await
                    .unwrap_or(false)
                {
                    return Err(self.unavailable("the grant has ended"));
                }
                serde_json::from_slice(&renewed)
                    .map_err(|_| self.unavailable("the identity provider's token cannot be read"))
            }
            // Nothing to renew with, or not due at the source's own measure.
            Renewal::Unchanged => {
                if tokens.expires_at.is_none_or(|e| e > self.clock.now()) {
                    Ok(tokens)
                } else {
                    Err(self.unavailable(
                        "the identity provider's token expired and cannot be renewed; sign in again",
                    ))
                }
            }
            Renewal::Refused(why) => {
                tracing::warn!(source = name, reason = %why, "the identity provider refused to renew a token for an upstream");
                Err(self.unavailable(
                    "the identity provider no longer accepts this sign-in; sign in again",
                ))
            }
            Renewal::Unavailable(why) => {
                tracing::warn!(source = name, reason = %why, "the identity provider's token could not be renewed");
                Err(self.unavailable("the identity provider cannot be reached"))
            }
        }
    }
}

#[async_trait]
impl CredentialSource for ProviderToken {
    async fn apply(
        &self,
        principal: &Principal,
        headers: &mut HeaderMap,
    ) -> Result<(), CredentialError> {
        let (Some(grant), Some(source)) = (&principal.grant_id, &principal.login_source) else {
            return Err(
                self.unavailable("this upstream needs a person signed in at an identity provider")
            );
        };
        if source != self.source.name() {
            return Err(self.unavailable("this upstream needs a sign-in at its identity provider"));
        }
        let tokens = self.token_for(grant, false).await?;
        let mut value = HeaderValue::from_str(&format!("Bearer {}", tokens.access_token))
            .map_err(|_| self.unavailable("the identity provider's token is not a header value"))?;
        value.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, value);
        Ok(())
    }

    /// The upstream refused the provider's token: renewed once, then retried.
    async fn unauthorized(&self, principal: &Principal) -> AfterUnauthorized {
        match &principal.grant_id {
            Some(grant) if self.token_for(grant, true).await.is_ok() => AfterUnauthorized::Retry,
            _ => AfterUnauthorized::GiveUp,
        }
    }
}
