//! The command line: parse, load configuration, run one command.

use crate::text::printable;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use crate::admin::{Admin, AdminError, ClientDetails, ClientSource, GrantSelection, KeyState};
use crate::clock::{SharedClock, SystemClock};
use crate::config::Config;
use crate::crypto;
use crate::store::{self, SharedStore};
use crate::web::Gateway;

#[derive(Debug, Parser)]
#[command(
    name = "mcp-oauth-gateway",
    version,
    about = "OAuth 2.1 in front of any MCP server"
)]
pub struct Cli {
    /// Configuration file (TOML). Without one, defaults apply; every key can also be set with
    /// MCP_OAUTH_GATEWAY_<SECTION>__<KEY> environment variables.
    #[arg(long, short, global = true, env = "MCP_OAUTH_GATEWAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// How log lines are written to standard error: `text` for people, `json` (one object
    /// a line, with the request id of the request being served) for log pipelines.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "MCP_OAUTH_GATEWAY_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Local accounts.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Registered clients.
    #[command(subcommand)]
    Clients(ClientsCommand),
    /// Grants (a user's authorization of a client, with its tokens).
    #[command(subcommand)]
    Grants(GrantsCommand),
    /// Who may register and which metadata documents are accepted, changed while the
    /// gateway runs (every instance follows within seconds).
    #[command(subcommand)]
    Registration(RegistrationCommand),
    /// Check the configuration: every problem found, advice, and the effective settings.
    CheckConfig,
    /// Ask the running gateway's `/readyz` (for container health checks and systemd): exit 0
    /// when ready.
    Healthcheck {
        /// Keep asking for up to this many seconds before giving up.
        #[arg(long, default_value_t = 0)]
        wait: u64,
        /// The gateway's address (default: `server.listen`, on loopback).
        #[arg(long)]
        url: Option<String>,
    },
    /// Keys that sign identity assertions, and the encryption keys that protect them.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Create or upgrade the store's schema, then exit (serve does it too; with several
    /// instances on PostgreSQL a lock makes it happen once).
    Migrate,
    /// Whole-store operations.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Upstream MCP servers.
    #[command(subcommand)]
    Upstreams(UpstreamsCommand),
    /// People's connections to upstreams that demand OAuth (the vault).
    #[command(subcommand)]
    Connections(ConnectionsCommand),
}

#[derive(Debug, Subcommand)]
pub enum ConnectionsCommand {
    /// Stored connections: whose, to which upstream, in which state (never a token).
    List {
        /// Only this person's.
        #[arg(long)]
        user: Option<String>,
    },
    /// Ends a person's connection to an upstream: revoked at the upstream when it offers
    /// revocation, then forgotten. They connect again from the connections page.
    Revoke {
        #[arg(long)]
        user: String,
        /// The upstream's name in the configuration.
        upstream: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum UpstreamsCommand {
    /// Walks an upstream's OAuth discovery as the gateway would, printing each step and
    /// where it stopped: an OAuth debugger for operators.
    Probe {
        /// The upstream's name in the configuration.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy every user, client, grant, token, consent and key from one store into another,
    /// empty one (e.g. a SQLite file into PostgreSQL). Stop the gateways on `--from` first.
    Copy {
        /// The store to read, e.g. sqlite://mcp-oauth-gateway.db
        #[arg(long)]
        from: String,
        /// The empty store to fill, e.g. postgres://gw@db.internal/gateway
        #[arg(long)]
        to: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Add a user. Without --password-stdin a password is generated and printed once.
    Add {
        name: String,
        #[arg(long)]
        password_stdin: bool,
        /// Email address, passed to upstreams as X-Forwarded-Email / the assertion's `email`.
        #[arg(long)]
        email: Option<String>,
        /// A group (repeatable), for tool rules and X-Forwarded-Groups.
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    /// Set a user's email and groups (the groups given replace the old ones).
    Update {
        name: String,
        #[arg(long)]
        email: Option<String>,
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    List,
    /// Remove a user, revoking everything issued to them.
    Remove {
        name: String,
    },
    /// Set a user's password (read from standard input). Their browser sessions end, and
    /// their grants are revoked unless --keep-grants.
    Passwd {
        name: String,
        #[arg(long)]
        password_stdin: bool,
        /// Keep the user's grants (their MCP clients stay connected).
        #[arg(long)]
        keep_grants: bool,
    },
    /// Stop a user from signing in: their browser sessions end, and their grants are
    /// revoked unless --keep-grants.
    Disable {
        name: String,
        #[arg(long)]
        keep_grants: bool,
    },
    /// Let a disabled user sign in again.
    Enable {
        name: String,
    },
    /// A user's browser sessions.
    #[command(subcommand)]
    Sessions(SessionsCommand),
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// Sign the user out of every browser (grants stay; see `grants revoke`).
    Revoke { name: String },
}

#[derive(Debug, Subcommand)]
pub enum RegistrationCommand {
    /// The policy in force, and whether it is the configuration file's.
    Show,
    /// Changes what is given; the rest stays as it is.
    Set {
        /// Dynamic client registration: open, token or off.
        #[arg(long, value_parser = ["open", "token", "off"])]
        dcr: Option<String>,
        /// Accept Client ID Metadata Documents: true or false.
        #[arg(long)]
        cimd: Option<bool>,
        /// Accept metadata documents only from these domains (`example.com`,
        /// `*.example.com`); repeat it, or give none with --any-domain.
        #[arg(long = "allow-domain")]
        allow: Vec<String>,
        /// Accept metadata documents from any domain not blocked (empties the allowed list).
        #[arg(long, conflicts_with = "allow")]
        any_domain: bool,
        /// Refuse metadata documents from these domains; replaces the blocked list.
        #[arg(long = "block-domain")]
        block: Vec<String>,
        /// Empty the blocked list.
        #[arg(long, conflicts_with = "block")]
        no_blocked_domains: bool,
        /// New registered and metadata document clients wait for approval: true or false.
        #[arg(long)]
        approve_new_clients: Option<bool>,
    },
    /// Back to the configuration file's `[registration]`.
    Reset,
}

#[derive(Debug, Subcommand)]
pub enum ClientsCommand {
    List,
    Show {
        #[arg(allow_hyphen_values = true)]
        client_id: String,
    },
    /// Remove a registered client, revoking its grants and tokens.
    Remove {
        #[arg(allow_hyphen_values = true)]
        client_id: String,
    },
    /// Block a client (registered, CIMD URL or configured): refused from now on, its grants
    /// and tokens revoked on every instance.
    Block {
        #[arg(allow_hyphen_values = true)]
        client_id: String,
        /// Why (kept with the block and in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Let a client be authorized when `approve_new_clients` is on (one waiting, or one not
    /// seen yet).
    Approve {
        #[arg(allow_hyphen_values = true)]
        client_id: String,
    },
    /// Clients waiting for approval, and approved ones.
    Approvals,
    /// Take a client off the waiting list (listed again if it comes back).
    Dismiss {
        #[arg(allow_hyphen_values = true)]
        client_id: String,
    },
    /// Let a blocked client in again (it must be authorized anew).
    Unblock {
        #[arg(allow_hyphen_values = true)]
        client_id: String,
    },
    /// The blocked clients.
    Blocked,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// The live keys, the active (newest) first.
    List,
    /// Add a new key: published at once, signing two minutes later (running instances re-read
    /// keys every 30 s); the old ones stay published, so what they signed still verifies.
    Rotate,
    /// Stop publishing a key (not the one that signs) and erase its private half.
    Retire {
        #[arg(allow_hyphen_values = true)]
        kid: String,
    },
    /// Print a new encryption key entry (`id:base64`) to add to `keys.encryption`; touches
    /// nothing.
    NewEncryptionKey {
        /// Its id (default: today's date and six random hex digits, e.g. `20261201-3fa2c1`).
        id: Option<String>,
    },
    /// Re-encrypt every live signing key under the active encryption key (`serve` does it at
    /// start too), so older encryption keys can then be removed from the configuration.
    Reseal,
}

#[derive(Debug, Args)]
pub struct GrantSelector {
    /// Only grants of this user (username).
    #[arg(long)]
    pub user: Option<String>,
    /// Only grants to this client.
    #[arg(long, allow_hyphen_values = true)]
    pub client: Option<String>,
    /// Only this grant.
    #[arg(long, allow_hyphen_values = true)]
    pub grant: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum GrantsCommand {
    List {
        #[command(flatten)]
        select: GrantSelector,
        /// Include revoked grants.
        #[arg(long)]
        all: bool,
    },
    /// Revoke grants and every token they issued.
    Revoke {
        #[command(flatten)]
        select: GrantSelector,
    },
}

/// With the `otel` feature: the running trace exporter, kept until the command ends
/// (dropping it sends the spans still buffered).
#[cfg(feature = "otel")]
type TracesGuard = Option<crate::observe::traces::Exporter>;
#[cfg(not(feature = "otel"))]
type TracesGuard = Option<()>;

/// The log subscriber, and with `traces` (the `otel` build serving) the trace exporter.
#[cfg(feature = "otel")]
fn init_tracing(
    format: LogFormat,
    traces: Option<&crate::config::TracesConfig>,
) -> Result<TracesGuard, String> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("MCP_OAUTH_GATEWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let (otel, exporter) = match traces.map(crate::observe::traces::layer).transpose()? {
        Some(Some((layer, exporter))) => (Some(layer), Some(exporter)),
        _ => (None, None),
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .flatten_event(true)
            .boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(otel)
        .with(filter)
        .with(fmt)
        .try_init();
    Ok(exporter)
}

#[cfg(not(feature = "otel"))]
fn init_tracing(
    format: LogFormat,
    _traces: Option<&crate::config::TracesConfig>,
) -> Result<TracesGuard, String> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MCP_OAUTH_GATEWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Either way the request's span (`request{id=…}`) is on every line made while serving it.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .flatten_event(true)
            .try_init(),
    };
    Ok(None)
}

fn read_password_stdin() -> Result<String, String> {
    let mut s = String::new();
    std::io::stdin()
        .take(4096)
        .read_to_string(&mut s)
        .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
    let pw = s.strip_suffix('\n').unwrap_or(&s);
    let pw = pw.strip_suffix('\r').unwrap_or(pw);
    Ok(pw.to_string())
}

/// Runs the parsed command line; the error is printed by `main`.
pub async fn run(cli: Cli) -> Result<(), String> {
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::CheckConfig = command {
        init_tracing(cli.log_format, None)?;
        return check_config(cli.config.as_deref());
    }
    // Read before the subscriber is made: it decides where traces go. What reading it finds
    // worth saying is logged by `serve` (its advice); errors are printed by `main`.
    let config =
        Config::load(cli.config.as_deref(), std::env::vars()).map_err(|e| e.to_string())?;
    let serving = matches!(command, Command::Serve);
    // Kept until the command ends: dropping it sends the spans still buffered.
    let _traces = init_tracing(cli.log_format, serving.then_some(&config.traces))?;
    if let Command::Healthcheck { wait, url } = &command {
        return healthcheck(&config, url.as_deref(), *wait).await;
    }
    if let Command::Keys(KeysCommand::NewEncryptionKey { id }) = command {
        // Default id: the date and a few random characters, so two made on one day differ.
        let id = id.unwrap_or_else(|| {
            format!(
                "{}-{}",
                crate::clock::utc_date_compact(crate::clock::Clock::now(&SystemClock)),
                &crypto::new_id()[..6]
            )
        });
        println!("{}", crypto::EncryptionKeys::generate_entry(&id)?);
        return Ok(());
    }
    if let Command::Store(StoreCommand::Copy { from, to }) = command {
        return store_copy(&from, &to).await;
    }
    let clock: SharedClock = Arc::new(SystemClock);
    let store = store::open_with(&config.store.url, &config.store.pool())
        .await
        .map_err(|e| format!("store `{}`: {e}", redact_url(&config.store.url)))?;
    match command {
        Command::Migrate => {
            println!("store `{}` is migrated", redact_url(&config.store.url));
            Ok(())
        }
        Command::Serve | Command::CheckConfig | Command::Healthcheck { .. } => {
            serve(config, store, clock).await
        }
        Command::Users(c) => users(c, &cli_admin(&config, store, clock)?).await,
        Command::Clients(c) => clients(c, &cli_admin(&config, store, clock)?).await,
        Command::Grants(c) => grants(c, &cli_admin(&config, store, clock)?).await,
        Command::Registration(c) => registration(c, &cli_admin(&config, store, clock)?).await,
        Command::Keys(c) => keys(c, &cli_admin(&config, store, clock)?).await,
        Command::Upstreams(UpstreamsCommand::Probe { name }) => {
            let mut out = std::io::stdout();
            crate::broker::probe(
                &config,
                &name,
                &store,
                crate::clock::Clock::now(&*clock),
                &mut out,
            )
            .await
        }
        Command::Connections(c) => connections(c, &config, store, clock).await,
        Command::Store(_) => Ok(()),
    }
}

/// `check-config`: every problem (each with its key and where it came from), then advice and
/// the effective settings (no secret, URLs without user, password or query).
fn check_config(file: Option<&std::path::Path>) -> Result<(), String> {
    let config = Config::load_unchecked(file, std::env::vars()).map_err(|e| e.to_string())?;
    let problems = config.problems();
    for a in config.advice() {
        println!("advice: {a}");
    }
    println!("\neffective configuration ({}):", config.origin);
    for line in config.summary() {
        println!("  {line}");
    }
    if problems.is_empty() {
        println!("\nconfiguration OK ({})", config.origin);
        Ok(())
    } else {
        // Every problem, each naming its key and where it came from.
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        Err(format!(
            "{}\n{} problem(s) in the configuration ({})",
            list.join("\n"),
            problems.len(),
            config.origin
        ))
    }
}

/// `healthcheck`: `GET /readyz` on the gateway's own listener.
async fn healthcheck(config: &Config, url: Option<&str>, wait: u64) -> Result<(), String> {
    let base = match url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => {
            let listen = config.server.listen;
            let ip = match listen.ip() {
                std::net::IpAddr::V4(v) if v.is_unspecified() => "127.0.0.1".to_string(),
                std::net::IpAddr::V6(v) if v.is_unspecified() => "[::1]".to_string(),
                std::net::IpAddr::V6(v) => format!("[{v}]"),
                std::net::IpAddr::V4(v) => v.to_string(),
            };
            let scheme = if config.server.tls_cert.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{ip}:{}", listen.port())
        }
    };
    // Its own listener, by address: the certificate names the public host, not this one.
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(3))
        .danger_accept_invalid_certs(url.is_none())
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait);
    loop {
        let why = match client.get(format!("{base}/readyz")).send().await {
            Ok(r) if r.status().is_success() => {
                println!("ready ({base})");
                return Ok(());
            }
            Ok(r) => format!(
                "not ready: {} {}",
                r.status().as_u16(),
                r.text().await.unwrap_or_default()
            ),
            Err(e) => format!("no answer from {base}: {e}"),
        };
        if std::time::Instant::now() >= deadline {
            return Err(why);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

async fn connections(
    c: ConnectionsCommand,
    config: &Config,
    store: store::SharedStore,
    clock: SharedClock,
) -> Result<(), String> {
    let user_id = |name: &str| {
        let store = store.clone();
        let name = name.to_string();
        async move {
            store
                .user_by_name(&name)
                .await
                .map_err(|e| e.to_string())?
                .map(|u| u.id)
                .ok_or_else(|| format!("no user `{name}`"))
        }
    };
    match c {
        ConnectionsCommand::List { user } => {
            let id = match &user {
                Some(name) => Some(user_id(name).await?),
                None => None,
            };
            let rows = store
                .upstream_tokens(id.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            if rows.is_empty() {
                println!("no connections");
            }
            for r in rows {
                let name = match store.user_by_id(&r.user_id).await {
                    Ok(Some(u)) => u.username,
                    _ => r.user_id.clone(),
                };
                let expires = r
                    .expires_at
                    .map(crate::clock::utc_date_compact)
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{:<20} {:<16} {:<10} expires {:<10} {}",
                    crate::text::printable(&name),
                    r.upstream,
                    r.status,
                    expires,
                    crate::text::printable(&r.issuer)
                );
            }
            Ok(())
        }
        ConnectionsCommand::Revoke { user, upstream } => {
            let id = user_id(&user).await?;
            let keys = crate::login::context::resolve_keys(
                config.keys.encryption_keys()?,
                &config.store.url,
                Some("the vault of OAuth upstreams"),
            )?;
            let contexts = crate::login::LoginContexts::new(keys.map(Arc::new));
            let observer = crate::observe::Observer::for_command(config, clock.clone())?;
            let broker = crate::broker::Broker::from_config(
                config,
                store,
                contexts,
                clock,
                None,
                &std::collections::HashMap::new(),
                observer,
            )?
            .ok_or("no upstream uses OAuth in this configuration")?;
            if !broker.has(&upstream) {
                return Err(format!("no OAuth upstream `{upstream}`"));
            }
            match broker.disconnect(&upstream, &id).await {
                Ok(true) => {
                    println!("revoked {user}'s connection to {upstream}");
                    Ok(())
                }
                Ok(false) => Err(format!("{user} has no connection to {upstream}")),
                Err(e) => Err(e.to_string()),
            }
        }
    }
}

async fn store_copy(from: &str, to: &str) -> Result<(), String> {
    if from == to {
        return Err("--from and --to name the same store".into());
    }
    let source = store::open(from)
        .await
        .map_err(|e| format!("store `{}`: {e}", redact_url(from)))?;
    let destination = store::open(to)
        .await
        .map_err(|e| format!("store `{}`: {e}", redact_url(to)))?;
    let report = store::copy::copy(&source, &destination)
        .await
        .map_err(|e| format!("copy to `{}` failed: {e}", redact_url(to)))?;
    for (table, n) in report.tables {
        println!("{table:>24}  {n}");
    }
    println!("copied `{}` to `{}`", redact_url(from), redact_url(to));
    Ok(())
}

fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            // PostgreSQL also takes the password as a query parameter.
            if u.query_pairs().any(|(k, _)| k == "password") {
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if k == "password" {
                            "***".into()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        _ => url.to_string(),
    }
}

async fn serve(config: Config, store: SharedStore, clock: SharedClock) -> Result<(), String> {
    for w in config.warnings() {
        tracing::warn!("{w}");
    }
    if store.count_users().await.map_err(|e| e.to_string())? == 0 {
        let admin = Admin::new(store.clone(), clock.clone(), &config, FIRST_START_ACTOR)
            .map_err(cli_error)?
            .observed_by(crate::observe::Observer::for_command(
                &config,
                clock.clone(),
            )?);
        let password = crypto::new_secret("");
        admin
            .create_user("admin", &password, None, &[])
            .await
            .map_err(cli_error)?;
        // Printed once, to the terminal that started the gateway; never logged.
        eprintln!(
            "\nCreated the first local account.\n  username: admin\n  password: {password}\nIt is shown only this once; change it with `mcp-oauth-gateway users passwd admin --password-stdin`.\n"
        );
    }
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| {
            format!(
                "cannot listen on {} (server.listen): {e}",
                config.server.listen
            )
        })?;
    let gateway = Gateway::new(config, store, clock).await?;
    let public = gateway.config.public_url();
    tracing::info!(listen = %gateway.config.server.listen, issuer = %public, "mcp-oauth-gateway started");
    for r in &gateway.app.auth.resources {
        eprintln!("MCP endpoint `{}`: {}", r.name, r.url);
    }
    gateway
        .serve(listener, shutdown_signal())
        .await
        .map_err(|e| format!("server error: {e}"))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

/// Who acts, in the audit log, for what the command line changes.
const CLI_ACTOR: &str = "cli";
/// Who acts, in the audit log, when `serve` creates the first account of an empty store.
const FIRST_START_ACTOR: &str = "first_start";

/// The service's errors in the command line's words: where one says what to do next, it
/// names the option or command that does it.
fn cli_error(e: AdminError) -> String {
    match e {
        AdminError::NoGrantSelected => "say which grants: --user, --client or --grant".into(),
        AdminError::OnlyLiveKey { kid } => format!(
            "`{kid}` is the only live key; run `keys rotate` first and retire it once the new one signs"
        ),
        AdminError::NoEncryptionKey => {
            "`keys.encryption` is empty: add a key (see `keys new-encryption-key`) first".into()
        }
        e => e.to_string(),
    }
}

fn cli_admin(config: &Config, store: SharedStore, clock: SharedClock) -> Result<Admin, String> {
    let observer = crate::observe::Observer::for_command(config, clock.clone())?;
    Ok(Admin::new(store, clock, config, CLI_ACTOR)
        .map_err(cli_error)?
        .observed_by(observer))
}

async fn users(c: UsersCommand, admin: &Admin) -> Result<(), String> {
    match c {
        UsersCommand::Add {
            name,
            password_stdin,
            email,
            groups,
        } => {
            // Checked (again by the service) before a password is read or made for nothing.
            crate::login::validate_profile(email.as_deref(), &groups)?;
            let (password, generated) = if password_stdin {
                (read_password_stdin()?, false)
            } else {
                (crypto::new_secret(""), true)
            };
            admin
                .create_user(&name, &password, email.as_deref(), &groups)
                .await
                .map_err(cli_error)?;
            if generated {
                println!("added user `{name}` with password: {password}");
            } else {
                println!("added user `{name}`");
            }
        }
        UsersCommand::Update {
            name,
            email,
            groups,
        } => {
            admin
                .update_user(&name, email.as_deref(), &groups)
                .await
                .map_err(cli_error)?;
            println!("updated `{name}`");
        }
        UsersCommand::List => {
            for u in admin.list_users().await.map_err(cli_error)? {
                let groups = if u.groups.is_empty() {
                    "-".to_string()
                } else {
                    u.groups.join(",")
                };
                println!(
                    "{}\t{}\t{}\t{}\tcreated {}{}",
                    u.username,
                    u.id,
                    u.email.as_deref().unwrap_or("-"),
                    groups,
                    u.created_at,
                    if u.disabled_at.is_some() {
                        "\tdisabled"
                    } else {
                        ""
                    }
                );
            }
        }
        UsersCommand::Remove { name } => {
            admin.remove_user(&name).await.map_err(cli_error)?;
            println!("removed user `{name}` and revoked their grants");
        }
        UsersCommand::Passwd {
            name,
            password_stdin,
            keep_grants,
        } => {
            if !password_stdin {
                return Err("pass the new password on standard input with --password-stdin".into());
            }
            let pw = read_password_stdin()?;
            let n = admin
                .set_password(&name, &pw, keep_grants)
                .await
                .map_err(cli_error)?;
            println!("password of `{name}` changed; browser sessions ended, {n} grant(s) revoked");
        }
        UsersCommand::Disable { name, keep_grants } => {
            let n = admin
                .disable_user(&name, keep_grants)
                .await
                .map_err(cli_error)?;
            println!("disabled `{name}`; browser sessions ended, {n} grant(s) revoked");
        }
        UsersCommand::Enable { name } => {
            admin.enable_user(&name).await.map_err(cli_error)?;
            println!("enabled `{name}`");
        }
        UsersCommand::Sessions(SessionsCommand::Revoke { name }) => {
            admin.end_sessions(&name).await.map_err(cli_error)?;
            println!("signed `{name}` out of every browser");
        }
    }
    Ok(())
}

async fn clients(c: ClientsCommand, admin: &Admin) -> Result<(), String> {
    match c {
        ClientsCommand::List => {
            // What strangers registered is printed with anything invisible escaped, so it
            // cannot forge lines or send escape sequences to the operator's terminal.
            for client in admin.list_clients().await.map_err(cli_error)? {
                let id = printable(&client.client_id);
                let name = printable(client.name.as_deref().unwrap_or("-"));
                match client.source {
                    ClientSource::Configured => println!("{id}\tconfigured\t{name}"),
                    ClientSource::Registered => println!(
                        "{id}\tregistered\t{name}\t{}",
                        printable(&client.redirect_uris.join(" "))
                    ),
                }
            }
        }
        ClientsCommand::Show { client_id } => {
            let r = match admin.client(&client_id).await.map_err(cli_error)? {
                ClientDetails::Configured(s) => {
                    println!("{s:#?}");
                    return Ok(());
                }
                ClientDetails::Registered(r) => r,
            };
            let shown = serde_json::to_string_pretty(&r.metadata).unwrap_or_default();
            for line in shown.lines() {
                println!("{}", printable(line));
            }
            println!(
                "registered from: {}",
                r.registered_ip.as_deref().unwrap_or("-")
            );
            println!(
                "last used: {}",
                r.last_used_at
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "never".into())
            );
        }
        ClientsCommand::Remove { client_id } => {
            admin.remove_client(&client_id).await.map_err(cli_error)?;
            println!("removed client `{client_id}` and revoked its grants");
        }
        ClientsCommand::Block { client_id, reason } => {
            admin
                .block_client(&client_id, &reason)
                .await
                .map_err(cli_error)?;
            println!(
                "blocked client `{}` and revoked its grants",
                printable(&client_id)
            );
        }
        ClientsCommand::Approve { client_id } => {
            admin.approve_client(&client_id).await.map_err(cli_error)?;
            println!("approved client `{}`", printable(&client_id));
        }
        ClientsCommand::Dismiss { client_id } => {
            admin.dismiss_client(&client_id).await.map_err(cli_error)?;
            println!("dismissed client `{}`", printable(&client_id));
        }
        ClientsCommand::Approvals => {
            for a in admin.client_approvals().await.map_err(cli_error)? {
                println!(
                    "{}\t{}\t{}",
                    printable(&a.client_id),
                    match a.approved_at {
                        Some(at) => format!("approved {}", crate::clock::utc_date_compact(at)),
                        None => format!(
                            "waiting since {}",
                            crate::clock::utc_date_compact(a.seen_at)
                        ),
                    },
                    printable(a.client_name.as_deref().unwrap_or(""))
                );
            }
        }
        ClientsCommand::Unblock { client_id } => {
            admin.unblock_client(&client_id).await.map_err(cli_error)?;
            println!("unblocked client `{}`", printable(&client_id));
        }
        ClientsCommand::Blocked => {
            for (id, at, reason) in admin.blocked_clients().await.map_err(cli_error)? {
                println!(
                    "{}\tsince {}\t{}",
                    printable(&id),
                    crate::clock::utc_date_compact(at),
                    printable(&reason)
                );
            }
        }
    }
    Ok(())
}

fn print_policy(p: &crate::authorization::policy::RegistrationPolicy, configured: bool) {
    let list = |l: &[String]| {
        if l.is_empty() {
            "-".to_string()
        } else {
            l.join(" ")
        }
    };
    println!(
        "dcr\t{}\ncimd\t{}\ncimd_allowed_domains\t{}\ncimd_blocked_domains\t{}\napprove_new_clients\t{}\nfrom\t{}",
        p.dcr.as_str(),
        p.cimd,
        list(&p.cimd_allowed_domains),
        list(&p.cimd_blocked_domains),
        p.approve_new_clients,
        if configured {
            "the configuration file"
        } else {
            "set at run time (registration reset goes back to the file's)"
        }
    );
}

async fn registration(c: RegistrationCommand, admin: &Admin) -> Result<(), String> {
    use crate::config::DcrMode;
    match c {
        RegistrationCommand::Show => {
            let (p, configured) = admin.registration_policy().await.map_err(cli_error)?;
            print_policy(&p, configured);
        }
        RegistrationCommand::Set {
            dcr,
            cimd,
            allow,
            any_domain,
            block,
            no_blocked_domains,
            approve_new_clients,
        } => {
            let (mut p, _) = admin.registration_policy().await.map_err(cli_error)?;
            if let Some(a) = approve_new_clients {
                p.approve_new_clients = a;
            }
            // clap accepted only these words.
            if let Some(mode) = dcr.as_deref().and_then(DcrMode::parse) {
                p.dcr = mode;
            }
            if let Some(c) = cimd {
                p.cimd = c;
            }
            if any_domain {
                p.cimd_allowed_domains.clear();
            } else if !allow.is_empty() {
                p.cimd_allowed_domains = allow;
            }
            if no_blocked_domains {
                p.cimd_blocked_domains.clear();
            } else if !block.is_empty() {
                p.cimd_blocked_domains = block;
            }
            let p = admin
                .set_registration_policy(Some(p))
                .await
                .map_err(cli_error)?;
            print_policy(&p, false);
        }
        RegistrationCommand::Reset => {
            let p = admin
                .set_registration_policy(None)
                .await
                .map_err(cli_error)?;
            print_policy(&p, true);
        }
    }
    Ok(())
}

async fn keys(c: KeysCommand, admin: &Admin) -> Result<(), String> {
    match c {
        KeysCommand::List => {
            for k in admin.list_signing_keys().await.map_err(cli_error)? {
                let state = match k.state {
                    KeyState::Signing => "signing",
                    KeyState::SignsSoon => "published, signs soon",
                    KeyState::Verifies => "published, verifies",
                };
                let at_rest = match &k.sealed_with {
                    Some(by) => format!("encrypted with `{by}`"),
                    None => "unencrypted".into(),
                };
                println!("{}\tcreated {}\t{state}\t{at_rest}", k.kid, k.created_at);
            }
        }
        KeysCommand::NewEncryptionKey { .. } => {}
        KeysCommand::Reseal => {
            let done = admin.reseal_signing_keys().await.map_err(cli_error)?;
            println!(
                "{} signing key(s) re-encrypted; every live key is now encrypted with `{}`",
                done.count, done.encryption_key
            );
        }
        KeysCommand::Rotate => {
            let kid = admin.rotate_signing_key().await.map_err(cli_error)?;
            println!(
                "added key {kid}: running instances publish it within {} s and sign with it after {} s",
                crate::proxy::KEY_RELOAD_SECS,
                crate::proxy::KEY_ACTIVATION_DELAY_SECS
            );
        }
        KeysCommand::Retire { kid } => {
            admin.retire_signing_key(&kid).await.map_err(cli_error)?;
            println!(
                "retired key {kid}: running instances stop publishing it within {} s",
                crate::proxy::KEY_RELOAD_SECS
            );
        }
    }
    Ok(())
}

fn selection(select: GrantSelector) -> GrantSelection {
    GrantSelection {
        user: select.user,
        client: select.client,
        grant: select.grant,
    }
}

async fn grants(c: GrantsCommand, admin: &Admin) -> Result<(), String> {
    match c {
        GrantsCommand::List { select, all } => {
            let grants = admin
                .list_grants(&selection(select), all)
                .await
                .map_err(cli_error)?;
            for g in grants {
                // The user's name while they exist, their id otherwise.
                let user = g
                    .username
                    .as_deref()
                    .or(g.user_id.as_deref())
                    .unwrap_or("-");
                println!(
                    "{}\t{}\t{}\t{}\t{}{}",
                    g.id,
                    user,
                    printable(&g.client_id),
                    g.resource,
                    g.scopes.join(" "),
                    match (g.ended_at, g.ended_reason) {
                        (Some(_), Some(reason)) => format!("\tended ({reason})"),
                        (Some(_), None) => "\tended".to_string(),
                        (None, _) => String::new(),
                    }
                );
            }
        }
        GrantsCommand::Revoke { select } => {
            let n = admin
                .revoke_grants(&selection(select))
                .await
                .map_err(cli_error)?;
            println!("revoked {n} grant(s) and their tokens");
        }
    }
    Ok(())
}
