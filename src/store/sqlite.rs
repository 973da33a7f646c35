//! The embedded SQLite engine: one file, WAL, created and migrated on first start.
//!
//! Write transactions start with `BEGIN IMMEDIATE` so that two writers never both read first
//! and then fight to upgrade their locks; the loser simply waits for the winner's commit.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};

use super::*;

pub struct SqliteStore {
    /// Readers: WAL lets them run beside the writer.
    pool: SqlitePool,
    /// The one writer connection. SQLite takes one writer at a time anyway; queueing writes
    /// here (a fair async queue) instead of on SQLite's lock avoids its busy handler, which
    /// sleeps in steps of up to 100 ms and made the tail latency of writes under load.
    writer: SqlitePool,
    /// Refresh rotations, committed in groups on the writer.
    rotator: rotations::Rotator,
    bus: EventBus,
    following: std::sync::Once,
    /// The newest event when the store was opened: what comes after it is heard.
    events_from: i64,
}

mod rotations;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

fn backend(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict,
        // SQLITE_BUSY and SQLITE_LOCKED (with their extended codes): another process holds
        // the file for longer than the busy timeout. Overload, not a defect.
        sqlx::Error::Database(d)
            if d.code()
                .is_some_and(|c| c.parse::<i32>().is_ok_and(|n| matches!(n & 0xff, 5 | 6))) =>
        {
            StoreError::Unavailable(e.to_string())
        }
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Backend(e.to_string()),
    }
}

impl SqliteStore {
    pub async fn open(url: &str, settings: &PoolSettings) -> StoreResult<Self> {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Backend(format!("bad SQLite URL: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let timeout = Duration::from_millis(settings.acquire_timeout_ms.max(10_000));
        let pool = SqlitePoolOptions::new()
            // An in-memory database exists once per connection.
            .max_connections(if in_memory {
                1
            } else {
                settings.max_connections.unwrap_or(8)
            })
            .acquire_timeout(timeout)
            .connect_with(opts.clone())
            .await
            .map_err(backend)?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Backend(format!("migration failed: {e}")))?;
        let writer = if in_memory {
            pool.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(timeout)
                .connect_with(opts)
                .await
                .map_err(backend)?
        };
        let events_from: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM store_events")
            .fetch_one(&pool)
            .await
            .map_err(backend)?;
        let rotator = rotations::Rotator::start(writer.clone());
        Ok(Self {
            pool,
            writer,
            rotator,
            bus: EventBus::new(),
            following: std::sync::Once::new(),
            events_from,
        })
    }

    fn reader(&self) -> &SqlitePool {
        &self.pool
    }

    fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    fn bus(&self) -> &EventBus {
        &self.bus
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
        self.rotator
            .rotate(rotations::Rotation {
                old_hash: old_hash.to_string(),
                now,
                access: access.clone(),
                refresh: refresh.clone(),
                retry_sealed: retry_sealed.to_vec(),
                retry_until,
            })
            .await
    }

    /// Starts (once) reading what other processes on this file (the CLI) wrote to the
    /// events table: a cheap indexed read every quarter second.
    fn follow_other_instances(&self) {
        self.following.call_once(|| {
            tokio::spawn(poll_events(
                self.pool.clone(),
                self.bus.clone(),
                self.events_from,
            ));
        });
    }

    async fn write_tx(&self) -> StoreResult<sqlx::Transaction<'static, sqlx::Sqlite>> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(backend)
    }
}

const EVENT_POLL: Duration = Duration::from_millis(250);

async fn poll_events(pool: SqlitePool, bus: EventBus, from: i64) {
    let mut last = from;
    let mut tick = tokio::time::interval(EVENT_POLL);
    loop {
        tick.tick().await;
        let after = last;
        let rows = sqlx::query(
            "SELECT id, origin, payload FROM store_events WHERE id > $1 ORDER BY id LIMIT 1000",
        )
        .bind(after)
        .fetch_all(&pool)
        .await;
        match rows {
            Ok(rows) => {
                for r in rows {
                    let (id, origin, payload): (i64, String, String) =
                        match (r.try_get("id"), r.try_get("origin"), r.try_get("payload")) {
                            (Ok(a), Ok(b), Ok(c)) => (a, b, c),
                            _ => continue,
                        };
                    last = id;
                    match serde_json::from_str::<events::Envelope>(&payload) {
                        Ok(e) => bus.publish_remote(&origin, e.event),
                        Err(_) => bus.publish(StoreEvent::Resync),
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the store's events; resyncing");
                bus.publish(StoreEvent::Resync);
            }
        }
    }
}

/// SQLite has one writer, so its write transactions are serialized already.
async fn lock_in(
    _tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    _name: &str,
) -> StoreResult<()> {
    Ok(())
}

/// The events table is all other processes on the file read.
async fn announce_in(
    _tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    _channel: &str,
    _payload: &str,
) -> Result<(), sqlx::Error> {
    Ok(())
}

super::shared::shared_store!(
    SqliteStore,
    sqlx::Sqlite,
    SqliteRow,
    SqlitePool,
    "SELECT m.name, p.name FROM sqlite_master m JOIN pragma_table_info(m.name) p \
     WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name <> '_sqlx_migrations' \
     ORDER BY m.name, p.cid"
);
