//! The vault as a credential source: what the proxy puts on a request to an upstream that
//! demands OAuth is the calling person's own upstream token.

use std::sync::Arc;

use async_trait::async_trait;
use http::header::{self, HeaderMap, HeaderValue};

use super::service::Broker;
use crate::authorization::token::Principal;
use crate::proxy::{AfterUnauthorized, CredentialError, CredentialSource};

pub struct VaultCredential {
    broker: Arc<Broker>,
    upstream: String,
}

impl VaultCredential {
    pub fn new(broker: Arc<Broker>, upstream: &str) -> Self {
        Self {
            broker,
            upstream: upstream.to_string(),
        }
    }
}

/// Tokens of a client acting for nobody (client credentials) have no person to connect.
fn person(p: &Principal) -> Result<&str, CredentialError> {
    p.user_id.as_deref().ok_or_else(|| {
        CredentialError::Unavailable(
            "this upstream is reached with each person's own account; a client acting for nobody has none"
                .into(),
        )
    })
}

/// The `Authorization` header for `token`, marked sensitive.
fn put(h: &mut HeaderMap, token: &str) -> Result<(), CredentialError> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| CredentialError::Unavailable("unusable upstream token".into()))?;
    value.set_sensitive(true);
    h.insert(header::AUTHORIZATION, value);
    Ok(())
}

fn bearer(sent: &HeaderMap) -> Option<&str> {
    sent.get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

impl VaultCredential {
    /// Whose vault slot a call uses: the person's, or the shared one of a service identity
    /// (which serves everyone, clients acting for nobody included).
    fn slot<'a>(&self, p: &'a Principal) -> Result<&'a str, CredentialError> {
        if self.broker.is_shared(&self.upstream) {
            Ok(super::service::SHARED)
        } else {
            person(p)
        }
    }
}

#[async_trait]
impl CredentialSource for VaultCredential {
    fn hides_challenge(&self) -> bool {
        true
    }

    /// Without a connection the request goes as any client's first one would, with no token:
    /// an upstream that lets it through answers it; one that wants a token says so in its
    /// `401` challenge (with the scope it wants), and the person is asked to connect. A
    /// connection that exists but cannot be used asks to reconnect at once (never a silent
    /// anonymous call).
    async fn apply(&self, p: &Principal, h: &mut HeaderMap) -> Result<(), CredentialError> {
        let token = if self.broker.is_exchanged(&self.upstream) {
            self.broker.exchanged_token(&self.upstream, p).await?
        } else {
            match self
                .broker
                .access_token(&self.upstream, self.slot(p)?)
                .await?
            {
                Some(t) => t,
                // Never connected: as any client's first request, without a token.
                None => return Ok(()),
            }
        };
        tracing::debug!(target: "audit", event = "upstream.token_used", upstream = %self.upstream, user = ?p.user_id, client_id = %p.client_id);
        put(h, &token)
    }

    /// Refused: one refresh (unless another call did it already), then one retry; a refresh
    /// the upstream refuses marks the connection broken and asks the person to reconnect.
    /// An exchanged token is forgotten and exchanged afresh for the retry.
    async fn unauthorized(
        &self,
        p: &Principal,
        sent: &HeaderMap,
        challenge: Option<&str>,
    ) -> AfterUnauthorized {
        let Ok(user) = self.slot(p) else {
            return AfterUnauthorized::GiveUp;
        };
        let Some(used) = bearer(sent) else {
            // It went without a token (not connected): connect, for what the challenge asks.
            return AfterUnauthorized::Fail(
                self.broker
                    .connect_first(&self.upstream, user, challenge)
                    .await,
            );
        };
        if self.broker.is_exchanged(&self.upstream) {
            self.broker
                .forget_exchanged(&self.upstream, user, used)
                .await;
            return AfterUnauthorized::Retry;
        }
        match self.broker.refused(&self.upstream, user, used).await {
            Ok(()) => AfterUnauthorized::Retry,
            Err(e) => AfterUnauthorized::Fail(e),
        }
    }

    /// Refused even with fresh tokens: the connection is broken; the person reconnects.
    async fn still_unauthorized(&self, p: &Principal) -> Option<CredentialError> {
        if self.broker.is_exchanged(&self.upstream) {
            return Some(CredentialError::Unavailable(
                "the upstream refuses the token its authorization server exchanged".into(),
            ));
        }
        let user = self.slot(p).ok()?;
        Some(self.broker.give_up(&self.upstream, user).await)
    }

    /// A step-up: the connect page again, asking for what the person has and what the
    /// upstream now wants.
    async fn insufficient_scope(
        &self,
        p: &Principal,
        scope: Option<&str>,
    ) -> Option<CredentialError> {
        if self.broker.is_shared(&self.upstream) || self.broker.is_exchanged(&self.upstream) {
            return None;
        }
        let user = person(p).ok()?;
        let wanted = scope?;
        let url = self
            .broker
            .step_up_url(&self.upstream, user, wanted)
            .await?;
        Some(CredentialError::ConnectFirst {
            message: format!(
                "The upstream `{}` needs more permissions ({wanted}). Open this address to grant them, then try again: {url}",
                self.upstream
            ),
            url,
        })
    }
}
