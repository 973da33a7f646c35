//! The command line: parse, load configuration, run one command.

use crate::text::printable;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use crate::clock::{SharedClock, SystemClock};
use crate::config::Config;
use crate::crypto;
use crate::login::LocalAccounts;
use crate::store::{self, GrantFilter, SharedStore};
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
    #[command(subcommand)]
    pub command: Option<Command>,
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
    /// Check the configuration and exit.
    CheckConfig,
    /// Keys that sign identity assertions, and the encryption keys that protect them.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Create or upgrade the store's schema, then exit (serve does it too; with several
    /// instances on PostgreSQL a lock makes it happen once).
    Migrate,
    /// Whole-store operations.
    #[command(subcommand)]
    Store(StoreCommand),
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

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MCP_OAUTH_GATEWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
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
    init_tracing();
    let config =
        Config::load(cli.config.as_deref(), std::env::vars()).map_err(|e| e.to_string())?;
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::CheckConfig = command {
        println!("configuration OK ({})", config.origin);
        return Ok(());
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
        Command::Serve | Command::CheckConfig => serve(config, store, clock).await,
        Command::Users(c) => users(c, &config, store, clock).await,
        Command::Clients(c) => clients(c, &config, store, clock).await,
        Command::Grants(c) => grants(c, store, clock).await,
        Command::Keys(c) => keys(c, &config, store, clock).await,
        Command::Store(_) => Ok(()),
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
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

async fn serve(config: Config, store: SharedStore, clock: SharedClock) -> Result<(), String> {
    if store.count_users().await.map_err(|e| e.to_string())? == 0 {
        let accounts = LocalAccounts::new(store.clone(), clock.clone(), &config.login);
        let password = crypto::new_secret("");
        accounts.create("admin", &password).await?;
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

async fn users(
    c: UsersCommand,
    config: &Config,
    store: SharedStore,
    clock: SharedClock,
) -> Result<(), String> {
    let accounts = LocalAccounts::new(store.clone(), clock.clone(), &config.login);
    match c {
        UsersCommand::Add {
            name,
            password_stdin,
            email,
            groups,
        } => {
            crate::login::validate_profile(email.as_deref(), &groups)?;
            let (password, generated) = if password_stdin {
                (read_password_stdin()?, false)
            } else {
                (crypto::new_secret(""), true)
            };
            let user = accounts.create(&name, &password).await?;
            if email.is_some() || !groups.is_empty() {
                store
                    .set_profile(&user.id, email.as_deref(), &groups)
                    .await
                    .map_err(|e| e.to_string())?;
            }
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
            crate::login::validate_profile(email.as_deref(), &groups)?;
            let user = store
                .user_by_name(&name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no user named `{name}`"))?;
            store
                .set_profile(&user.id, email.as_deref(), &groups)
                .await
                .map_err(|e| e.to_string())?;
            println!("updated `{name}`");
        }
        UsersCommand::List => {
            for u in store.list_users().await.map_err(|e| e.to_string())? {
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
            let user = store
                .user_by_name(&name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no user named `{name}`"))?;
            store
                .delete_user(&user.id, clock.now())
                .await
                .map_err(|e| e.to_string())?;
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
            let n = accounts.set_password(&name, &pw, keep_grants).await?;
            println!("password of `{name}` changed; browser sessions ended, {n} grant(s) revoked");
        }
        UsersCommand::Disable { name, keep_grants } => {
            let n = accounts.set_disabled(&name, true, keep_grants).await?;
            println!("disabled `{name}`; browser sessions ended, {n} grant(s) revoked");
        }
        UsersCommand::Enable { name } => {
            accounts.set_disabled(&name, false, true).await?;
            println!("enabled `{name}`");
        }
        UsersCommand::Sessions(SessionsCommand::Revoke { name }) => {
            accounts.end_sessions(&name).await?;
            println!("signed `{name}` out of every browser");
        }
    }
    Ok(())
}

async fn clients(
    c: ClientsCommand,
    config: &Config,
    store: SharedStore,
    clock: SharedClock,
) -> Result<(), String> {
    match c {
        ClientsCommand::List => {
            // What strangers registered is printed with anything invisible escaped, so it
            // cannot forge lines or send escape sequences to the operator's terminal.
            for s in &config.clients {
                println!(
                    "{}\tconfigured\t{}",
                    printable(&s.client_id),
                    printable(s.client_name.as_deref().unwrap_or("-"))
                );
            }
            for r in store.list_clients().await.map_err(|e| e.to_string())? {
                println!(
                    "{}\tregistered\t{}\t{}",
                    printable(&r.client_id),
                    printable(r.client_name.as_deref().unwrap_or("-")),
                    printable(&r.redirect_uris.join(" "))
                );
            }
        }
        ClientsCommand::Show { client_id } => {
            if let Some(s) = config.clients.iter().find(|s| s.client_id == client_id) {
                println!("{s:#?}");
                return Ok(());
            }
            let r = store
                .client(&client_id)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no client `{client_id}`"))?;
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
            if config.clients.iter().any(|s| s.client_id == client_id) {
                return Err(format!(
                    "`{client_id}` is configured in the file; remove it there"
                ));
            }
            if !store
                .delete_client(&client_id, clock.now())
                .await
                .map_err(|e| e.to_string())?
            {
                return Err(format!("no client `{client_id}`"));
            }
            println!("removed client `{client_id}` and revoked its grants");
        }
    }
    Ok(())
}

async fn keys(
    c: KeysCommand,
    config: &Config,
    store: SharedStore,
    clock: SharedClock,
) -> Result<(), String> {
    let encryption = config.keys.encryption_keys()?;
    match c {
        KeysCommand::List => {
            let keys = store.signing_keys().await.map_err(|e| e.to_string())?;
            let created: Vec<i64> = keys.iter().map(|(_, _, c)| *c).collect();
            let signing = crate::proxy::signing_index(&created, clock.now());
            for (i, (kid, stored, created)) in keys.iter().enumerate() {
                let state = if i == signing {
                    "signing"
                } else if i < signing {
                    "published, signs soon"
                } else {
                    "published, verifies"
                };
                let at_rest = match crypto::sealed_with(stored) {
                    Some(by) => format!("encrypted with `{by}`"),
                    None => "unencrypted".into(),
                };
                println!("{kid}\tcreated {created}\t{state}\t{at_rest}");
            }
        }
        KeysCommand::NewEncryptionKey { .. } => {}
        KeysCommand::Reseal => {
            let keys = encryption.ok_or(
                "`keys.encryption` is empty: add a key (see `keys new-encryption-key`) first",
            )?;
            let n = crate::proxy::reseal_signing_keys(&store, &keys).await?;
            println!(
                "{n} signing key(s) re-encrypted; every live key is now encrypted with `{}`",
                keys.active_id()
            );
        }
        KeysCommand::Rotate => {
            let kid = crypto::new_id();
            let pkcs8 = crate::proxy::stored_form(
                encryption.as_ref(),
                &kid,
                &crate::proxy::generate_key()?,
            )?;
            // Keys are ordered by creation second: a second rotation within the same second
            // must still come out newest.
            let newest = store
                .signing_keys()
                .await
                .map_err(|e| e.to_string())?
                .first()
                .map(|(_, _, c)| *c);
            let created = newest.map_or(clock.now(), |n| clock.now().max(n + 1));
            store
                .add_signing_key(&kid, &pkcs8, created)
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "added key {kid}: running instances publish it within {} s and sign with it after {} s",
                crate::proxy::KEY_RELOAD_SECS,
                crate::proxy::KEY_ACTIVATION_DELAY_SECS
            );
        }
        KeysCommand::Retire { kid } => {
            let keys = store.signing_keys().await.map_err(|e| e.to_string())?;
            if !keys.iter().any(|(k, _, _)| *k == kid) {
                return Err(format!("no live key `{kid}`"));
            }
            if keys.len() == 1 {
                return Err(format!(
                    "`{kid}` is the only live key; run `keys rotate` first and retire it once the new one signs"
                ));
            }
            let created: Vec<i64> = keys.iter().map(|(_, _, c)| *c).collect();
            if keys[crate::proxy::signing_index(&created, clock.now())].0 == kid {
                return Err(format!(
                    "`{kid}` still signs; retire it after the newer key has taken over ({} s after it was made)",
                    crate::proxy::KEY_ACTIVATION_DELAY_SECS
                ));
            }
            if !store
                .retire_signing_key(&kid, clock.now())
                .await
                .map_err(|e| e.to_string())?
            {
                return Err(format!("no live key `{kid}`"));
            }
            println!(
                "retired key {kid}: running instances stop publishing it within {} s",
                crate::proxy::KEY_RELOAD_SECS
            );
        }
    }
    Ok(())
}

async fn grant_filter(select: GrantSelector, store: &SharedStore) -> Result<GrantFilter, String> {
    let user_id = match select.user {
        Some(name) => Some(
            store
                .user_by_name(&name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no user named `{name}`"))?
                .id,
        ),
        None => None,
    };
    Ok(GrantFilter {
        grant_id: select.grant,
        user_id,
        client_id: select.client,
    })
}

async fn grants(c: GrantsCommand, store: SharedStore, clock: SharedClock) -> Result<(), String> {
    match c {
        GrantsCommand::List { select, all } => {
            let filter = grant_filter(select, &store).await?;
            for g in store
                .list_grants(&filter, all)
                .await
                .map_err(|e| e.to_string())?
            {
                let user = match &g.user_id {
                    Some(id) => store
                        .user_by_id(id)
                        .await
                        .map_err(|e| e.to_string())?
                        .map(|u| u.username)
                        .unwrap_or_else(|| id.clone()),
                    None => "-".into(),
                };
                println!(
                    "{}\t{}\t{}\t{}\t{}{}",
                    g.id,
                    user,
                    printable(&g.client_id),
                    g.resource,
                    g.scopes.join(" "),
                    if g.revoked_at.is_some() {
                        "\trevoked"
                    } else {
                        ""
                    }
                );
            }
        }
        GrantsCommand::Revoke { select } => {
            let filter = grant_filter(select, &store).await?;
            if filter.is_empty() {
                return Err("say which grants: --user, --client or --grant".into());
            }
            let n = store
                .revoke_grants(&filter, crate::store::EndReason::AdminRevoked, clock.now())
                .await
                .map_err(|e| e.to_string())?;
            println!("revoked {n} grant(s) and their tokens");
        }
    }
    Ok(())
}
