//! Connections as one person: the source's address and TLS settings with that person's
//! username and password, checked once at sign-in and pooled afterwards.

use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlSslMode};
use sqlx::postgres::{PgConnectOptions, PgPool, PgSslMode};
use sqlx::{ConnectOptions, Connection};

use super::config::{DatabaseKind, DatabaseLoginConfig, Engine, TlsMode};

/// A person's database username and password: what the login context keeps.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Credential {
    pub username: String,
    pub password: String,
}

// The password must never be printed.
impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Why a connection was not made.
#[derive(Debug)]
pub enum ConnectError {
    /// The database refused this username and password (wrong password, unknown or locked
    /// account, no right to the database): the person's fault, or their account's.
    Refused(String),
    /// The database could not be reached or is overloaded: nobody's fault.
    Unavailable(String),
    /// No answer in time. For a sign-in this counts as a failure: a database that answers
    /// wrong passwords slowly (`auth_delay`, a slow directory behind it) must not give
    /// uncounted guesses.
    TimedOut(String),
    /// A made-up password was let in as well: the database does not check passwords for
    /// this account, so a sign-in through it proves nothing.
    AcceptsAnyPassword,
}

/// A person's pool, on either protocol.
#[derive(Clone)]
pub enum Pool {
    Postgres(PgPool),
    Mysql(MySqlPool),
}

impl Pool {
    pub async fn close(&self) {
        match self {
            Self::Postgres(p) => p.close().await,
            Self::Mysql(p) => p.close().await,
        }
    }

    pub fn is_closed(&self) -> bool {
        match self {
            Self::Postgres(p) => p.is_closed(),
            Self::Mysql(p) => p.is_closed(),
        }
    }

    /// Connections open now.
    pub fn size(&self) -> u32 {
        match self {
            Self::Postgres(p) => p.size(),
            Self::Mysql(p) => p.size(),
        }
    }
}

/// How to reach one source's database.
pub struct Connector {
    pub engine: Engine,
    options: Options,
    connect_timeout: Duration,
    idle: Duration,
}

enum Options {
    Postgres(PgConnectOptions),
    Mysql(MySqlConnectOptions),
}

/// Prepared statements a pooled connection keeps (each takes memory on both sides).
const STATEMENT_CACHE: usize = 32;

impl Connector {
    pub fn new(cfg: &DatabaseLoginConfig) -> Result<Self, String> {
        let options = match cfg.kind {
            DatabaseKind::Postgres => {
                let mode = match cfg.tls_mode() {
                    TlsMode::Disable => PgSslMode::Disable,
                    TlsMode::Prefer => PgSslMode::Prefer,
                    TlsMode::Require => PgSslMode::Require,
                    TlsMode::VerifyCa => PgSslMode::VerifyCa,
                    TlsMode::VerifyFull => PgSslMode::VerifyFull,
                };
                // The driver reads these from the environment for every connection: a client
                // certificate or session options of the gateway's own would go out with
                // every person's connection.
                if let Some(var) = ["PGSSLCERT", "PGSSLKEY", "PGOPTIONS", "PGSERVICE"]
                    .into_iter()
                    .find(|v| std::env::var_os(v).is_some())
                {
                    return Err(format!(
                        "the environment sets {var}, which would go out with every person's connection; unset it"
                    ));
                }
                let mut o = PgConnectOptions::from_str(&cfg.url)
                    .map_err(|e| format!("url: {e}"))?
                    .ssl_mode(mode)
                    .application_name("mcp-oauth-gateway dbtools")
                    .statement_cache_capacity(STATEMENT_CACHE)
                    .disable_statement_logging();
                if let Some(ca) = &cfg.ca_file {
                    o = o.ssl_root_cert(ca);
                }
                Options::Postgres(o)
            }
            DatabaseKind::Mysql => {
                let mode = match cfg.tls_mode() {
                    TlsMode::Disable => MySqlSslMode::Disabled,
                    TlsMode::Prefer => MySqlSslMode::Preferred,
                    TlsMode::Require => MySqlSslMode::Required,
                    TlsMode::VerifyCa => MySqlSslMode::VerifyCa,
                    TlsMode::VerifyFull => MySqlSslMode::VerifyIdentity,
                };
                let url = match cfg.url.strip_prefix("mariadb://") {
                    Some(rest) => format!("mysql://{rest}"),
                    None => cfg.url.clone(),
                };
                let mut o = MySqlConnectOptions::from_str(&url)
                    .map_err(|e| format!("url: {e}"))?
                    .ssl_mode(mode)
                    // The driver's session set-up (`SET sql_mode = CONCAT(...)`, a time zone)
                    // is refused by Doris and StarRocks, and changes what `||` means for
                    // everyone: the server's own settings stand.
                    .pipes_as_concat(false)
                    .no_engine_substitution(false)
                    .timezone(None)
                    .statement_cache_capacity(STATEMENT_CACHE)
                    .disable_statement_logging();
                if let Some(ca) = &cfg.ca_file {
                    o = o.ssl_ca(ca);
                }
                Options::Mysql(o)
            }
        };
        Ok(Self {
            engine: cfg.engine(),
            options,
            connect_timeout: Duration::from_secs(cfg.connect_timeout_secs),
            idle: Duration::from_secs(cfg.pool_idle_secs),
        })
    }

    /// The sign-in check: one connection as `who`, closed at once; then, since a database
    /// that trusts the network (`trust`, `peer`, `cert` authentication) lets anyone in as
    /// anyone, one more with a made-up password, which must be refused.
    pub async fn check(&self, who: &Credential) -> Result<(), ConnectError> {
        self.connect_once(who).await?;
        let made_up = Credential {
            username: who.username.clone(),
            password: format!("not-{}", crate::crypto::new_id()),
        };
        match self.connect_once(&made_up).await {
            Ok(()) => Err(ConnectError::AcceptsAnyPassword),
            Err(ConnectError::Refused(_)) => Ok(()),
            Err(other) => Err(other),
        }
    }

    async fn connect_once(&self, who: &Credential) -> Result<(), ConnectError> {
        let attempt = async {
            match &self.options {
                Options::Postgres(o) => {
                    let o = o.clone().username(&who.username).password(&who.password);
                    let conn = sqlx::PgConnection::connect_with(&o).await?;
                    let _ = conn.close().await;
                }
                Options::Mysql(o) => {
                    let o = o.clone().username(&who.username).password(&who.password);
                    let conn = sqlx::MySqlConnection::connect_with(&o).await?;
                    let _ = conn.close().await;
                }
            }
            Ok::<(), sqlx::Error>(())
        };
        match tokio::time::timeout(self.connect_timeout, attempt).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(classify(e)),
            Err(_) => Err(ConnectError::TimedOut(format!(
                "no answer within {} s",
                self.connect_timeout.as_secs()
            ))),
        }
    }

    /// The same pool settings on either protocol.
    fn pool_options<DB: sqlx::Database>(&self, size: u32) -> sqlx::pool::PoolOptions<DB> {
        sqlx::pool::PoolOptions::new()
            .max_connections(size)
            .min_connections(0)
            .idle_timeout(self.idle)
            .acquire_timeout(self.connect_timeout)
            // The pool is the person's alone and each use is checked by its own statements:
            // a round trip before each would only cost time.
            .test_before_acquire(false)
    }

    /// A pool of at most `size` connections as `who`, with its first connection open (so
    /// that a refused credential is known now, not at the first query).
    pub async fn pool(&self, who: &Credential, size: u32) -> Result<Pool, ConnectError> {
        let made = async {
            Ok::<Pool, sqlx::Error>(match &self.options {
                Options::Postgres(o) => {
                    let o = o.clone().username(&who.username).password(&who.password);
                    Pool::Postgres(self.pool_options(size).connect_with(o).await?)
                }
                Options::Mysql(o) => {
                    let o = o.clone().username(&who.username).password(&who.password);
                    Pool::Mysql(self.pool_options(size).connect_with(o).await?)
                }
            })
        };
        match tokio::time::timeout(self.connect_timeout + Duration::from_secs(1), made).await {
            Ok(Ok(pool)) => Ok(pool),
            Ok(Err(e)) => Err(classify(e)),
            Err(_) => Err(ConnectError::TimedOut(format!(
                "no answer within {} s",
                self.connect_timeout.as_secs()
            ))),
        }
    }
}

/// MySQL and MariaDB error numbers that refuse a login: access denied (1045, to the
/// database 1044, by the authentication plugin 1698), password expired (1820, 1862),
/// account locked (MySQL 3118, MariaDB 4151).
const MYSQL_REFUSALS: &[u16] = &[1044, 1045, 1698, 1820, 1862, 3118, 4151];

/// Sorts a driver error into the person's (refused) and nobody's (unavailable).
pub fn classify(e: sqlx::Error) -> ConnectError {
    if let sqlx::Error::Database(d) = &e {
        let refused = match d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
            Some(m) => MYSQL_REFUSALS.contains(&m.number()),
            // PostgreSQL class 28: invalid authorization specification (28000: no such
            // role, not allowed to log in, no pg_hba entry) and invalid password (28P01).
            None => d.code().is_some_and(|c| c.starts_with("28")),
        };
        if refused {
            return ConnectError::Refused(d.message().to_string());
        }
        return ConnectError::Unavailable(d.message().to_string());
    }
    ConnectError::Unavailable(e.to_string())
}
