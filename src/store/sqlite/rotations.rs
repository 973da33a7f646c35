//! Group commit for refresh-token rotations on SQLite.
//!
//! SQLite has one writer, and each statement sent through sqlx is a round trip to the
//! connection's own thread; on a busy small machine those hand-offs, not SQLite, bounded
//! how many rotations per second the one writer could commit. So rotations queue here and
//! one task commits whatever has gathered (up to `MAX_BATCH`) as a single script and
//! transaction. Each rotation still wins or loses on its own: its UPDATE claims the old
//! token only if unused, and its inserts run only if the old token now names its successor.
//!
//! The task owns the work once queued, so a request cancelled half-way cannot leave a
//! transaction open; if a batch fails, each of its rotations is retried alone so that one
//! bad row does not fail the others.

use std::collections::HashSet;

use sqlx::sqlite::SqliteArguments;
use sqlx::{Row, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::backend;
use crate::store::{
    AccessTokenRecord, RefreshTokenRecord, StoreError, StoreResult, Timestamp, join_scopes,
};

const MAX_BATCH: usize = 64;

/// One refresh-token rotation: claim `old_hash`, write its successor and the new access token.
pub(super) struct Rotation {
    pub old_hash: String,
    pub now: Timestamp,
    pub access: AccessTokenRecord,
    pub refresh: RefreshTokenRecord,
    pub retry_sealed: Vec<u8>,
    pub retry_until: Timestamp,
}

struct Job {
    rotation: Rotation,
    reply: oneshot::Sender<StoreResult<bool>>,
}

pub(super) struct Rotator {
    jobs: mpsc::Sender<Job>,
}

impl Rotator {
    /// Starts the committing task; it ends when the store (the last sender) is dropped.
    pub fn start(writer: SqlitePool) -> Self {
        let (jobs, queue) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(run(writer, queue));
        Self { jobs }
    }

    /// Whether this rotation won (the old token was unused, unexpired and its grant live).
    pub async fn rotate(&self, rotation: Rotation) -> StoreResult<bool> {
        let stopped = || StoreError::Unavailable("the SQLite writer has stopped".into());
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { rotation, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run(writer: SqlitePool, mut queue: mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        let batch: Vec<Job> = std::mem::take(&mut jobs);
        let rotations: Vec<&Rotation> = batch.iter().map(|j| &j.rotation).collect();
        match commit(&writer, &rotations).await {
            Ok(won) => {
                for (job, won) in batch.into_iter().zip(won) {
                    let _ = job.reply.send(Ok(won));
                }
            }
            Err(e) if batch.len() == 1 => {
                if let Some(job) = batch.into_iter().next() {
                    let _ = job.reply.send(Err(e));
                }
            }
            Err(_) => {
                for job in batch {
                    let alone = commit(&writer, &[&job.rotation])
                        .await
                        .map(|won| won.first().copied().unwrap_or(false));
                    let _ = job.reply.send(alone);
                }
            }
        }
    }
}

const ROTATE: &str = "
UPDATE refresh_tokens SET used_at = ?, successor_hash = ?, retry_sealed = ?, retry_until = ?
 WHERE token_hash = ? AND used_at IS NULL AND expires_at > ?
   AND EXISTS (SELECT 1 FROM grants g WHERE g.id = refresh_tokens.grant_id AND g.revoked_at IS NULL)
 RETURNING successor_hash;
INSERT INTO access_tokens (token_hash, grant_id, client_id, user_id, resource, scopes, created_at, expires_at)
 SELECT ?, ?, ?, ?, ?, ?, ?, ?
 WHERE EXISTS (SELECT 1 FROM refresh_tokens WHERE token_hash = ? AND successor_hash = ?);
INSERT INTO refresh_tokens (token_hash, grant_id, client_id, created_at, expires_at)
 SELECT ?, ?, ?, ?, ?
 WHERE EXISTS (SELECT 1 FROM refresh_tokens WHERE token_hash = ? AND successor_hash = ?);";

/// Commits the rotations in one transaction; for each, whether it won.
async fn commit(writer: &SqlitePool, batch: &[&Rotation]) -> StoreResult<Vec<bool>> {
    let mut script = String::with_capacity(32 + batch.len() * ROTATE.len());
    script.push_str("BEGIN IMMEDIATE;");
    for _ in batch {
        script.push_str(ROTATE);
    }
    script.push_str("COMMIT;");
    // Plain `?` placeholders bind in order across the statements.
    let mut query = sqlx::query_with(&script, SqliteArguments::default());
    for r in batch {
        let (a, n) = (&r.access, &r.refresh);
        query = query
            .bind(r.now)
            .bind(&n.token_hash)
            .bind(&r.retry_sealed)
            .bind(r.retry_until)
            .bind(&r.old_hash)
            .bind(r.now)
            .bind(&a.token_hash)
            .bind(&a.grant_id)
            .bind(&a.client_id)
            .bind(&a.user_id)
            .bind(&a.resource)
            .bind(join_scopes(&a.scopes))
            .bind(a.created_at)
            .bind(a.expires_at)
            .bind(&r.old_hash)
            .bind(&n.token_hash)
            .bind(&n.token_hash)
            .bind(&n.grant_id)
            .bind(&n.client_id)
            .bind(n.created_at)
            .bind(n.expires_at)
            .bind(&r.old_hash)
            .bind(&n.token_hash);
    }
    let mut conn = writer.acquire().await.map_err(backend)?;
    match query.fetch_all(&mut *conn).await {
        Ok(rows) => {
            let won: HashSet<String> = rows
                .iter()
                .filter_map(|row| row.try_get::<String, _>(0).ok())
                .collect();
            Ok(batch
                .iter()
                .map(|r| won.contains(&r.refresh.token_hash))
                .collect())
        }
        Err(e) => {
            // The script stopped at the failing statement; undo what ran of it. If that
            // fails too (the failure came before BEGIN, or the connection is broken), a fresh
            // connection is safer than one that might still be inside a transaction.
            if sqlx::query("ROLLBACK").execute(&mut *conn).await.is_err() {
                let _ = conn.close().await;
            }
            Err(backend(e))
        }
    }
}
