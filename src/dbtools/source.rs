//! The `database` login source: the sign-in form's username and password are checked by
//! opening one connection to the database as that person. A wrong password counts toward the
//! same throttle as local accounts; a database that cannot answer does not.

use std::sync::Arc;

use async_trait::async_trait;

use super::config::DatabaseLoginConfig;
use super::connect::{ConnectError, Connector, Credential};
use super::pools::{PoolSettings, UserPools};
use crate::clock::SharedClock;
use crate::config::LoginConfig;
use crate::login::{Attempt, Authenticated, LoginSource, SourceKind};
use crate::store::{SharedStore, StoreError};

pub struct DatabaseSource {
    name: String,
    label: String,
    connector: Arc<Connector>,
    /// The pools of the people signed in through this source, on this instance.
    pub pools: Arc<UserPools>,
    store: SharedStore,
    clock: SharedClock,
    max_per_account: i64,
    max_per_ip: i64,
    window: i64,
}

impl DatabaseSource {
    pub fn new(
        cfg: &DatabaseLoginConfig,
        login: &LoginConfig,
        store: SharedStore,
        clock: SharedClock,
    ) -> Result<Arc<Self>, String> {
        let connector = Arc::new(
            Connector::new(cfg).map_err(|e| format!("login.database `{}`: {e}", cfg.name))?,
        );
        let pools = UserPools::new(
            connector.clone(),
            PoolSettings {
                size: cfg.pool_size,
                idle_secs: cfg.pool_idle_secs as i64,
                budget: cfg.max_connections,
                metadata_secs: cfg.metadata_cache_secs as i64,
                wait: std::time::Duration::from_secs(cfg.connect_timeout_secs),
            },
            clock.clone(),
        );
        pools.watch(&store);
        Ok(Arc::new(Self {
            name: cfg.name.clone(),
            label: cfg.label(),
            connector,
            pools,
            store,
            clock,
            max_per_account: login.max_failures_per_account,
            max_per_ip: login.max_failures_per_ip,
            window: login.throttle_window_secs,
        }))
    }

    pub fn engine(&self) -> super::config::Engine {
        self.connector.engine
    }
}

/// What the form may carry: the drivers take any text, but a name with control characters
/// or a password of megabytes is nobody's.
fn plausible(username: &str, password: &str) -> bool {
    !username.is_empty()
        && username.len() <= 128
        && !username.chars().any(char::is_control)
        // An empty password is never accepted, even by a database account that has none:
        // that account is not for people signing in from elsewhere.
        && !password.is_empty()
        && password.len() <= 1024
        && !password.contains('\0')
}

#[async_trait]
impl LoginSource for DatabaseSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn label(&self) -> &str {
        &self.label
    }

    fn kind(&self) -> SourceKind {
        SourceKind::Password
    }

    fn keeps_context(&self) -> bool {
        true
    }

    fn unavailable_text(&self) -> String {
        format!(
            "The database behind “{}” cannot be reached right now, so your password could not be checked. Try again shortly.",
            self.label
        )
    }

    async fn check_password(
        &self,
        username: &str,
        password: &str,
        ip: &str,
    ) -> Result<Attempt, StoreError> {
        let now = self.clock.now();
        let window_start = now - now.rem_euclid(self.window);
        let retry_after = (window_start + self.window - now).max(1) as u64;
        let account_key = format!("login:db:{}:{}", self.name, username.to_lowercase());
        // The address's count is the one local accounts use: changing source buys no
        // guesses.
        let ip_key = format!("login:ip:{ip}");
        // Reserved before the database is asked, as for local accounts: concurrent
        // attempts cannot all pass the limit together.
        if self.store.hit(&ip_key, window_start).await? > self.max_per_ip {
            return Ok(Attempt::Throttled { retry_after });
        }
        if self.store.hit(&account_key, window_start).await? > self.max_per_account {
            return Ok(Attempt::Throttled { retry_after });
        }
        if !plausible(username, password) {
            return Ok(Attempt::Invalid);
        }
        let who = Credential {
            username: username.to_string(),
            password: password.to_string(),
        };
        match self.connector.check(&who).await {
            Ok(()) => {
                self.store.unhit(&account_key, window_start).await?;
                self.store.unhit(&ip_key, window_start).await?;
                let keep =
                    serde_json::to_vec(&who).map_err(|e| StoreError::Backend(e.to_string()))?;
                Ok(Attempt::Success(Authenticated {
                    subject: who.username.clone(),
                    username: who.username,
                    email: None,
                    groups: Vec::new(),
                    keep: Some(keep),
                }))
            }
            Err(ConnectError::Refused(why)) => {
                tracing::info!(source = %self.name, reason = %why, "database refused a sign-in");
                Ok(Attempt::Invalid)
            }
            // No answer in time: the attempt stays counted (a database may answer wrong
            // passwords slowly on purpose).
            Err(ConnectError::TimedOut(why)) => Ok(Attempt::Unavailable(why)),
            Err(ConnectError::AcceptsAnyPassword) => {
                tracing::error!(source = %self.name, "the database let a made-up password in: it does not check passwords for this account (trust, peer or cert authentication?); sign-ins through it are refused");
                self.store.unhit(&account_key, window_start).await?;
                self.store.unhit(&ip_key, window_start).await?;
                Ok(Attempt::Refused(
                    "This database does not check passwords, so signing in with it proves nothing and is refused. Tell the administrator.".into(),
                ))
            }
            // Not the person's fault: their attempt is not counted.
            Err(ConnectError::Unavailable(why)) => {
                self.store.unhit(&account_key, window_start).await?;
                self.store.unhit(&ip_key, window_start).await?;
                Ok(Attempt::Unavailable(why))
            }
        }
    }
}
