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
use crate::login::context::Renewed;
use crate::login::oidc::ProviderTokens;
use crate::login::{LoginContexts, LoginSource};
use crate::store::SharedStore;

pub struct ProviderToken {
    source: Arc<dyn LoginSource>,
    contexts: LoginContexts,
    store: SharedStore,
    clock: SharedClock,
}

// What it keeps is nobody's business in a log: only whose tokens.
impl std::fmt::Debug for ProviderToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderToken")
            .field("source", &self.source.name())
            .finish_non_exhaustive()
    }
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
        }
    }

    fn unavailable(&self, why: &str) -> CredentialError {
        CredentialError::Unavailable(why.to_string())
    }

    /// The login source whose tokens these are.
    pub fn source_name(&self) -> &str {
        self.source.name()
    }

    /// The grant's provider tokens, renewed first when due (or `force`d).
    pub async fn token_for(
        &self,
        grant: &str,
        force: bool,
    ) -> Result<ProviderTokens, CredentialError> {
        let name = self.source.name();
        let kept = match self
            .contexts
            .renew(&self.store, self.source.as_ref(), grant, force)
            .await
        {
            Renewed::Kept(kept) => kept,
            Renewed::Nothing => {
                return Err(self.unavailable("this sign-in kept no identity provider token"));
            }
            Renewed::Refused(why) => {
                tracing::warn!(source = name, reason = %why, "the identity provider refused to renew a token for an upstream");
                return Err(self.unavailable(
                    "the identity provider no longer accepts this sign-in; sign in again",
                ));
            }
            Renewed::Unavailable(why) => {
                tracing::warn!(source = name, reason = %why, "the identity provider's token could not be renewed");
                return Err(self.unavailable("the identity provider cannot be reached"));
            }
        };
        let tokens: ProviderTokens = serde_json::from_slice(&kept)
            .map_err(|_| self.unavailable("the identity provider's token cannot be read"))?;
        if tokens.expires_at.is_some_and(|e| e <= self.clock.now()) {
            return Err(self.unavailable(
                "the identity provider's token expired and cannot be renewed; sign in again",
            ));
        }
        Ok(tokens)
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
    async fn unauthorized(
        &self,
        principal: &Principal,
        _sent: &HeaderMap,
        _scope: Option<&str>,
    ) -> AfterUnauthorized {
        match &principal.grant_id {
            Some(grant) if self.token_for(grant, true).await.is_ok() => AfterUnauthorized::Retry,
            _ => AfterUnauthorized::GiveUp,
        }
    }
}
