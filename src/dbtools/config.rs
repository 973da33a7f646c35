//! `[[login.database]]`: a database whose own accounts people sign in with.

use std::path::PathBuf;

use serde::Deserialize;

/// The wire protocol the gateway speaks to the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatabaseKind {
    /// PostgreSQL and servers that speak its protocol.
    Postgres,
    /// The MySQL protocol: MySQL, MariaDB, TiDB, Apache Doris, StarRocks.
    Mysql,
}

/// Which server is behind the protocol: it decides how `query` is kept read-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    Postgres,
    Mysql,
    Mariadb,
    Tidb,
    Doris,
    Starrocks,
}

/// How a read-only `query` is made read-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOnly {
    /// By the database: a read-only transaction (and, on the MySQL protocol, a read-only
    /// session too, since its DDL commits the transaction it is in before running).
    Transaction,
    /// By the gateway: the statement is parsed, refused unless it is one read, and what
    /// runs is the parser's own rendering of it — for engines whose read-only transactions
    /// are missing or do nothing (TiDB without `tidb_enable_noop_functions` refuses them,
    /// with it ignores them; Doris and StarRocks have none).
    Parsed,
}

impl Engine {
    pub fn read_only(self) -> ReadOnly {
        match self {
            Self::Postgres | Self::Mysql | Self::Mariadb => ReadOnly::Transaction,
            Self::Tidb | Self::Doris | Self::Starrocks => ReadOnly::Parsed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Mysql => "mysql",
            Self::Mariadb => "mariadb",
            Self::Tidb => "tidb",
            Self::Doris => "doris",
            Self::Starrocks => "starrocks",
        }
    }
}

/// TLS toward the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    Disable,
    /// TLS when the server offers it (the drivers' default).
    Prefer,
    /// TLS always, without checking the certificate.
    Require,
    /// TLS with a certificate signed by `ca_file` (or the system's roots).
    VerifyCa,
    /// As `verify_ca`, and the certificate names the host.
    VerifyFull,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseLoginConfig {
    /// The source's name: in the callback-free form's `source`, in usernames
    /// (`<db user>.<name>`), in `dbtools = "<name>"`.
    pub name: String,
    pub kind: DatabaseKind,
    /// The server behind `kind`: `mysql` (default for `kind = "mysql"`), `mariadb`, `tidb`,
    /// `doris`, `starrocks`; `postgres` for `kind = "postgres"`.
    #[serde(default)]
    pub engine: Option<Engine>,
    /// `postgres://host:port/database` or `mysql://host:port/database`, without
    /// credentials: each person's own are used.
    pub url: String,
    /// What the sign-in page calls it.
    #[serde(default)]
    pub label: Option<String>,
    /// `prefer` for a loopback host, `verify_full` for any other, unless given.
    #[serde(default)]
    pub tls: Option<TlsMode>,
    /// A PEM file of the certificate authorities to trust for `verify_ca`/`verify_full`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How long checking a password (one connection) may take.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Connections one person's pool may hold.
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    /// A person's pool unused this long is closed (and opened again on their next call).
    #[serde(default = "default_pool_idle")]
    pub pool_idle_secs: u64,
    /// Connections all pools of this source may hold together, on one gateway instance;
    /// the least recently used pools are closed to make room.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// How long one person's database, table and column lists are reused.
    #[serde(default = "default_metadata_cache")]
    pub metadata_cache_secs: u64,
}

fn default_connect_timeout() -> u64 {
    5
}
fn default_pool_size() -> u32 {
    2
}
fn default_pool_idle() -> u64 {
    300
}
fn default_max_connections() -> u32 {
    50
}
fn default_metadata_cache() -> u64 {
    30
}

impl DatabaseLoginConfig {
    pub fn engine(&self) -> Engine {
        match (self.kind, self.engine) {
            (_, Some(e)) => e,
            (DatabaseKind::Postgres, None) => Engine::Postgres,
            (DatabaseKind::Mysql, None) => Engine::Mysql,
        }
    }

    /// The TLS mode in force: everyone's password crosses this connection, so anything
    /// beyond this host is verified unless the operator says otherwise.
    pub fn tls_mode(&self) -> TlsMode {
        self.tls.unwrap_or_else(|| {
            let loopback = url::Url::parse(&self.url)
                .ok()
                .is_some_and(|u| match u.host() {
                    Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                    Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                    Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                    None => false,
                });
            if loopback {
                TlsMode::Prefer
            } else {
                TlsMode::VerifyFull
            }
        })
    }

    pub fn label(&self) -> String {
        self.label
            .clone()
            .unwrap_or_else(|| format!("Database account ({})", self.name))
    }

    /// Checks what can be checked alone; errors name the key under `login.database[i]`.
    pub fn validate(&self, i: usize) -> Result<(), (String, String)> {
        let key = |k: &str| format!("login.database[{i}].{k}");
        let bad = |k: &str, m: &str| Err((key(k), m.to_string()));
        if self.name == crate::login::LOCAL {
            return bad("name", "`local` is the gateway's own accounts");
        }
        match (self.kind, self.engine) {
            (DatabaseKind::Postgres, None | Some(Engine::Postgres)) => {}
            (DatabaseKind::Postgres, Some(_)) => {
                return bad("engine", "only `postgres` speaks kind = \"postgres\"");
            }
            (DatabaseKind::Mysql, Some(Engine::Postgres)) => {
                return bad("engine", "`postgres` does not speak kind = \"mysql\"");
            }
            (DatabaseKind::Mysql, _) => {}
        }
        let url =
            url::Url::parse(&self.url).map_err(|e| (key("url"), format!("not a URL: {e}")))?;
        let schemes: &[&str] = match self.kind {
            DatabaseKind::Postgres => &["postgres", "postgresql"],
            DatabaseKind::Mysql => &["mysql", "mariadb"],
        };
        if !schemes.contains(&url.scheme()) {
            return Err((
                key("url"),
                format!("must start with {}://", schemes.join(":// or ")),
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return bad(
                "url",
                "must not hold credentials: each person's own are used, and there is no shared account",
            );
        }
        match url.host_str() {
            None | Some("") => return bad("url", "has no host"),
            // A percent-encoded path is a Unix socket to the driver, where the database
            // usually trusts the operating-system user instead of checking passwords.
            Some(h) if h.contains('%') || h.contains('/') => {
                return bad("url", "must name a network host (no socket paths)");
            }
            Some(_) => {}
        }
        if url.query().is_some() {
            return bad(
                "url",
                "must not have query parameters: use tls and ca_file for TLS",
            );
        }
        if self.ca_file.is_some()
            && !matches!(self.tls_mode(), TlsMode::VerifyCa | TlsMode::VerifyFull)
        {
            return bad("ca_file", "is for tls = \"verify_ca\" or \"verify_full\"");
        }
        if !(1..=60).contains(&self.connect_timeout_secs) {
            return bad("connect_timeout_secs", "must be 1 to 60");
        }
        if !(1..=32).contains(&self.pool_size) {
            return bad("pool_size", "must be 1 to 32");
        }
        if self.pool_idle_secs < 1 {
            return bad("pool_idle_secs", "must be at least 1");
        }
        if self.max_connections < self.pool_size {
            return bad("max_connections", "must be at least pool_size");
        }
        if self.metadata_cache_secs > 3600 {
            return bad("metadata_cache_secs", "must be at most 3600");
        }
        Ok(())
    }
}

/// What a `dbtools` upstream allows, from its `[[upstreams]]` entry.
#[derive(Debug, Clone)]
pub struct ToolLimits {
    pub writable: bool,
    pub row_limit: usize,
    pub statement_timeout: std::time::Duration,
    pub max_result_bytes: usize,
}
