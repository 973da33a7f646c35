//! What a signed-in person sees and ends of their own, for the console: their grants (with
//! the client, resource, scopes, since when and when a token was last issued) and their
//! browser sessions. Every change is limited to the person's own rows in the store query
//! itself, whatever identifiers a form sends.

use super::AuthorizationServer;
use super::error::OAuthError;
use crate::clock::Timestamp;
use crate::store::{EndReason, GrantFilter, SessionSummary};

/// One of a person's live grants, as the console shows it.
#[derive(Debug, Clone)]
pub struct OwnGrant {
    pub id: String,
    pub client_id: String,
    pub client_name: Option<String>,
    /// The client's identity is vouched for (configured, or CIMD on a trusted domain).
    pub verified: bool,
    pub resource: String,
    pub scopes: Vec<String>,
    pub created_at: Timestamp,
    /// When an access token was last issued under it (first or by refresh), while the
    /// gateway keeps that token.
    pub last_token_at: Option<Timestamp>,
}

impl AuthorizationServer {
    pub async fn own_grants(&self, user_id: &str) -> Result<Vec<OwnGrant>, OAuthError> {
        let filter = GrantFilter {
            user_id: Some(user_id.to_string()),
            ..Default::default()
        };
        let grants = self.store.list_grants(&filter, false).await?;
        let last: std::collections::HashMap<String, Timestamp> =
            self.store.last_tokens(user_id).await?.into_iter().collect();
        let mut out = Vec::with_capacity(grants.len());
        for g in grants {
            // A client that can no longer be found (a CIMD document gone) still shows, by id.
            let client = self.find_client(&g.client_id).await.ok().flatten();
            out.push(OwnGrant {
                client_name: client.as_ref().and_then(|c| c.name.clone()),
                verified: client.as_ref().is_some_and(|c| self.client_is_verified(c)),
                last_token_at: last.get(&g.id).copied(),
                id: g.id,
                client_id: g.client_id,
                resource: g.resource,
                scopes: g.scopes,
                created_at: g.created_at,
            });
        }
        out.sort_by_key(|g| std::cmp::Reverse(g.created_at));
        Ok(out)
    }

    /// Ends one of `user_id`'s grants (its tokens at once, on every instance); `false` when
    /// it is not theirs or not live.
    pub async fn revoke_own_grant(
        &self,
        user_id: &str,
        grant_id: &str,
    ) -> Result<bool, OAuthError> {
        let filter = GrantFilter {
            grant_id: Some(grant_id.to_string()),
            user_id: Some(user_id.to_string()),
            client_id: None,
        };
        let Some(g) = self
            .store
            .list_grants(&filter, false)
            .await?
            .into_iter()
            .next()
        else {
            return Ok(false);
        };
        let n = self
            .store
            .revoke_grants(&filter, EndReason::Revoked, self.clock.now())
            .await?;
        if n > 0 {
            self.observer.record(
                crate::observe::Event::ConsentRevoked {
                    client: g.client_id,
                    user: user_id.to_string(),
                },
                Some(grant_id),
            );
        }
        Ok(n > 0)
    }

    pub async fn own_sessions(&self, user_id: &str) -> Result<Vec<SessionSummary>, OAuthError> {
        Ok(self.store.sessions_of(user_id, self.clock.now()).await?)
    }

    /// Ends one of `user_id`'s browser sessions; `false` when it is not theirs.
    pub async fn end_own_session(&self, user_id: &str, id_hash: &str) -> Result<bool, OAuthError> {
        let ended = self.store.delete_session_of(user_id, id_hash).await?;
        if ended {
            self.observer.record(
                crate::observe::Event::SessionEnded {
                    user: user_id.to_string(),
                },
                None,
            );
        }
        Ok(ended)
    }
}
