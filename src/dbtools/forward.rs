//! Opt-in per upstream: the person's own database username and password, from the grant's
//! sealed login context, for operators who run their own database MCP server per user — in
//! two headers to an HTTP upstream, or in two environment variables of a stdio upstream run
//! per user. Nothing is sent for anyone who did not sign in through the source: the call is
//! refused instead.

use std::sync::Arc;

use async_trait::async_trait;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::connect::Credential;
use super::source::DatabaseSource;
use crate::authorization::token::Principal;
use crate::login::{LoginContexts, LoginSource};
use crate::proxy::CredentialSource;
use crate::proxy::credentials::CredentialError;
use crate::store::SharedStore;

/// Where the credential goes.
pub enum Target {
    Headers {
        username: HeaderName,
        password: HeaderName,
    },
    Environment {
        username: String,
        password: String,
    },
}

pub struct DatabaseLogin {
    source: Arc<DatabaseSource>,
    contexts: LoginContexts,
    store: SharedStore,
    target: Target,
}

impl DatabaseLogin {
    pub fn new(
        source: Arc<DatabaseSource>,
        contexts: LoginContexts,
        store: SharedStore,
        target: Target,
    ) -> Self {
        Self {
            source,
            contexts,
            store,
            target,
        }
    }

    async fn credential(&self, principal: &Principal) -> Result<Credential, CredentialError> {
        let unavailable = |why: &str| CredentialError::Unavailable(why.to_string());
        let name = self.source.name();
        let grant = match (&principal.grant_id, &principal.login_source) {
            (Some(g), Some(s)) if s == name => g,
            _ => {
                return Err(unavailable(
                    "this upstream needs a sign-in with a database account; authorize again and sign in with it",
                ));
            }
        };
        let kept = match self.contexts.read(&self.store, name, grant).await {
            Ok(Some(kept)) => kept,
            Ok(None) => return Err(unavailable("this sign-in has ended; authorize again")),
            Err(e) => {
                tracing::warn!(source = name, error = %e, "a database credential could not be read");
                return Err(unavailable("the database credential cannot be read"));
            }
        };
        serde_json::from_slice(&kept)
            .map_err(|_| unavailable("the database credential cannot be read"))
    }
}

#[async_trait]
impl CredentialSource for DatabaseLogin {
    async fn apply(
        &self,
        principal: &Principal,
        headers: &mut HeaderMap,
    ) -> Result<(), CredentialError> {
        let Target::Headers { username, password } = &self.target else {
            return Ok(());
        };
        let who = self.credential(principal).await?;
        let unavailable = |why: &str| CredentialError::Unavailable(why.to_string());
        let mut user = HeaderValue::from_str(&who.username)
            .map_err(|_| unavailable("the database username cannot travel in a header"))?;
        let mut pass = HeaderValue::from_str(&who.password)
            .map_err(|_| unavailable("the database password cannot travel in a header"))?;
        user.set_sensitive(true);
        pass.set_sensitive(true);
        headers.insert(username.clone(), user);
        headers.insert(password.clone(), pass);
        Ok(())
    }

    async fn environment(
        &self,
        principal: &Principal,
    ) -> Result<Vec<(String, String)>, CredentialError> {
        let Target::Environment { username, password } = &self.target else {
            return Ok(Vec::new());
        };
        let who = self.credential(principal).await?;
        Ok(vec![
            (username.clone(), who.username),
            (password.clone(), who.password),
        ])
    }
}
