//! The PostgreSQL engine, for several gateway instances sharing one database. The same
//! tables and the same atomic transitions as the SQLite engine: single-statement
//! compare-and-set updates (a concurrent loser re-checks the row after the winner commits),
//! and transaction-scoped advisory locks where a count must not race (the client cap, the
//! first signing key). Migrations take sqlx's advisory lock, so instances starting together
//! run them once.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Row};

use super::*;

pub struct PostgresStore {
    pool: PgPool,
    /// Announced on the `NOTIFY` channel of this database and schema: channels are
    /// database-wide, and two installations in two schemas of one database must not hear
    /// each other.
    bus: EventBus,
    following: std::sync::Once,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

fn backend(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict,
        // The server going away mid-query (shutdown, restart, failover) or refusing new
        // connections for now: temporary, answered with 503 and Retry-After.
        sqlx::Error::Database(d) if d.code().is_some_and(|c| is_transient_sqlstate(&c)) => {
            StoreError::Unavailable(e.to_string())
        }
        sqlx::Error::PoolTimedOut
        | sqlx::Error::Io(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Backend(e.to_string()),
    }
}

/// SQLSTATE classes 08 (connection exception) and 57P (operator intervention: admin or crash
/// shutdown, cannot connect now), 53300 (too many connections) and 40001/40P01 (serialization
/// failure, deadlock: retrying succeeds).
fn is_transient_sqlstate(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("57P") || matches!(code, "53300" | "40001" | "40P01")
}

impl PostgresStore {
    pub async fn open(url: &str, pool: &PoolSettings) -> StoreResult<Self> {
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Backend(format!("bad PostgreSQL URL: {e}")))?;
        Self::connect_with(opts, pool).await
    }

    pub async fn connect(opts: PgConnectOptions) -> StoreResult<Self> {
        Self::connect_with(opts, &PoolSettings::default()).await
    }

    pub async fn connect_with(
        opts: PgConnectOptions,
        settings: &PoolSettings,
    ) -> StoreResult<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections.unwrap_or(16))
            .acquire_timeout(Duration::from_millis(settings.acquire_timeout_ms))
            .connect_with(opts)
            .await
            .map_err(backend)?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Backend(format!("migration failed: {e}")))?;
        let (database, schema): (String, String) =
            sqlx::query_as("SELECT current_database()::text, current_schema()::text")
                .fetch_one(&pool)
                .await
                .map_err(backend)?;
        let channel = format!(
            "mog_events_{}",
            &crate::crypto::hash_secret(&format!("{database}\n{schema}"))[..16]
        );
        Ok(Self {
            pool,
            bus: EventBus::announced_on(channel),
            following: std::sync::Once::new(),
        })
    }

    fn reader(&self) -> &PgPool {
        &self.pool
    }

    fn writer(&self) -> &PgPool {
        &self.pool
    }

    fn bus(&self) -> &EventBus {
        &self.bus
    }

    async fn write_tx(&self) -> StoreResult<sqlx::Transaction<'static, sqlx::Postgres>> {
        self.pool.begin().await.map_err(backend)
    }

    async fn rotate_won(
        &self,
        old_hash: &str,
        now: Timestamp,
        access: &AccessTokenRecord,
        refresh: &RefreshTokenRecord,
        retry_sealed: &[u8],
        retry_until: Timestamp,
    ) -> StoreResult<bool> {
        // One statement, so one round trip: the successors are inserted only if the update
        // won the old token (under READ COMMITTED a concurrent loser re-checks the row after
        // the winner commits and finds it used).
        let won: i64 = sqlx::query_scalar(
            "WITH won AS (
                UPDATE refresh_tokens SET used_at = $1, successor_hash = $2, retry_sealed = $3, retry_until = $4
                WHERE token_hash = $5 AND used_at IS NULL AND expires_at > $1
                  AND EXISTS (SELECT 1 FROM grants g WHERE g.id = refresh_tokens.grant_id AND g.revoked_at IS NULL)
                RETURNING 1
             ), access AS (
                INSERT INTO access_tokens (token_hash, grant_id, client_id, user_id, resource, scopes, created_at, expires_at)
                SELECT $6::text, $7::text, $8::text, $9::text, $10::text, $11::text, $12::bigint, $13::bigint FROM won
             ), fresh AS (
                INSERT INTO refresh_tokens (token_hash, grant_id, client_id, created_at, expires_at)
                SELECT $2::text, $14::text, $15::text, $16::bigint, $17::bigint FROM won
             )
             SELECT COUNT(*) FROM won",
        )
        .bind(now)
        .bind(&refresh.token_hash)
        .bind(retry_sealed)
        .bind(retry_until)
        .bind(old_hash)
        .bind(&access.token_hash)
        .bind(&access.grant_id)
        .bind(&access.client_id)
        .bind(&access.user_id)
        .bind(&access.resource)
        .bind(join_scopes(&access.scopes))
        .bind(access.created_at)
        .bind(access.expires_at)
        .bind(&refresh.grant_id)
        .bind(&refresh.client_id)
        .bind(refresh.created_at)
        .bind(refresh.expires_at)
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok(won == 1)
    }

    /// Starts (once) listening for what other instances publish: each notification is heard
    /// by this process's subscribers; after a lost connection, a `Resync`, since anything may
    /// have been missed meanwhile.
    fn follow_other_instances(&self) {
        self.following.call_once(|| {
            tokio::spawn(listen(
                self.pool.clone(),
                self.bus.clone(),
                self.bus.channel().to_string(),
            ));
        });
    }
}

async fn listen(pool: PgPool, bus: EventBus, channel: String) {
    loop {
        let listener = async {
            let mut l = sqlx::postgres::PgListener::connect_with(&pool).await?;
            l.listen(&channel).await?;
            Ok::<_, sqlx::Error>(l)
        };
        match listener.await {
            Ok(mut l) => {
                bus.publish(StoreEvent::Resync);
                loop {
                    // try_recv (not recv, which reconnects silently) so that a lost
                    // connection is seen: until the reconnection, caches fall back to their
                    // short TTL, and once it is made they are dropped (above).
                    match l.try_recv().await {
                        Ok(Some(n)) => {
                            match serde_json::from_str::<events::Envelope>(n.payload()) {
                                Ok(e) => bus.publish_remote(&e.origin, e.event),
                                Err(e) => {
                                    tracing::warn!(error = %e, "unreadable store event; resyncing");
                                    bus.publish(StoreEvent::Resync);
                                }
                            }
                        }
                        Ok(None) => {
                            tracing::warn!("store event channel lost; reconnecting");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "store event channel lost; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for store events; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Serializes one kind of write across every instance, until the transaction ends.
async fn lock_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    name: &str,
) -> StoreResult<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(name)
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    Ok(())
}

/// Tells the other instances, when the transaction commits.
async fn announce_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    channel: &str,
    payload: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(&mut **tx)
        .await
        .map(|_| ())
}

super::shared::shared_store!(
    PostgresStore,
    sqlx::Postgres,
    PgRow,
    PgPool,
    "SELECT table_name::text, column_name::text FROM information_schema.columns \
     WHERE table_schema = current_schema() AND table_name <> '_sqlx_migrations' \
     ORDER BY table_name, ordinal_position"
);
