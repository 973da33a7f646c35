//! Opt-in per upstream: the person's own database username and password, from the grant's
//! sealed login context, in two headers to an HTTP upstream — for operators who run their own
//! database MCP server per user. Nothing is sent for anyone who did not sign in through the
//! source: the call is refused instead.

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

pub struct DatabaseLoginHeaders {
    source: Arc<DatabaseSource>,
    contexts: LoginContexts,
    store: SharedStore,
    username: HeaderName,
    password: HeaderName,
}

impl DatabaseLoginHeaders {
    pub fn new(
        source: Arc<DatabaseSource>,
        contexts: LoginContexts,
        store: SharedStore,
        username_header: &str,
        password_header: &str,
    ) -> Result<Self, String> {
        let name = |h: &str| {
            HeaderName::from_bytes(h.as_bytes()).map_err(|_| format!("`{h}` is not a header name"))
        };
        Ok(Self {
            source,
            contexts,
            store,
            username: name(username_header)?,
            password: name(password_header)?,
        })
    }
}

#[async_trait]
impl CredentialSource for DatabaseLoginHeaders {
    async fn apply(
        &self,
        principal: &Principal,
        headers: &mut HeaderMap,
    ) -> Result<(), CredentialError> {
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
        let who: Credential = serde_json::from_slice(&kept)
            .map_err(|_| unavailable("the database credential cannot be read"))?;
        let mut user = HeaderValue::from_str(&who.username)
            .map_err(|_| unavailable("the database username cannot travel in a header"))?;
        let mut password = HeaderValue::from_str(&who.password)
            .map_err(|_| unavailable("the database password cannot travel in a header"))?;
        user.set_sensitive(true);
        password.set_sensitive(true);
        headers.insert(self.username.clone(), user);
        headers.insert(self.password.clone(), password);
        Ok(())
    }
}
