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
}

mod rotations;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

fn backend(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict,
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
        let rotator = rotations::Rotator::start(writer.clone());
        Ok(Self {
            pool,
            writer,
            rotator,
        })
    }

    async fn write_tx(&self) -> StoreResult<sqlx::Transaction<'static, sqlx::Sqlite>> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(backend)
    }
}

super::rows::row_mappers!(SqliteRow);
super::rows::table_copy!(
    sqlx::Sqlite,
    SqlitePool,
    false,
    "SELECT m.name, p.name FROM sqlite_master m JOIN pragma_table_info(m.name) p \
     WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name <> '_sqlx_migrations' \
     ORDER BY m.name, p.cid"
);

async fn insert_access<'e, E>(ex: E, t: &AccessTokenRecord) -> Result<(), sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    sqlx::query(
        "INSERT INTO access_tokens (token_hash, grant_id, client_id, user_id, resource, scopes, created_at, expires_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&t.token_hash)
    .bind(&t.grant_id)
    .bind(&t.client_id)
    .bind(&t.user_id)
    .bind(&t.resource)
    .bind(join_scopes(&t.scopes))
    .bind(t.created_at)
    .bind(t.expires_at)
    .execute(ex)
    .await
    .map(|_| ())
}

async fn insert_refresh<'e, E>(ex: E, t: &RefreshTokenRecord) -> Result<(), sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, grant_id, client_id, created_at, expires_at)
         VALUES (?, ?, ?, ?, ?)",
    )
    .bind(&t.token_hash)
    .bind(&t.grant_id)
    .bind(&t.client_id)
    .bind(t.created_at)
    .bind(t.expires_at)
    .execute(ex)
    .await
    .map(|_| ())
}

/// The WHERE clause and its values for a grant filter; values are bound, never spliced.
fn grant_where(f: &GrantFilter) -> (String, Vec<String>) {
    let mut clauses = vec!["1=1".to_string()];
    let mut binds = Vec::new();
    if let Some(v) = &f.grant_id {
        clauses.push("id = ?".into());
        binds.push(v.clone());
    }
    if let Some(v) = &f.user_id {
        clauses.push("user_id = ?".into());
        binds.push(v.clone());
    }
    if let Some(v) = &f.client_id {
        clauses.push("client_id = ?".into());
        binds.push(v.clone());
    }
    (clauses.join(" AND "), binds)
}

/// Ends what a user's sign-ins hold, inside `tx`: browser sessions, unfinished requests and
/// codes (only unused ones when `unused_codes_only`, so replays of used ones stay detectable),
/// and with `revoke_grants` the grants. Returns how many grants were revoked.
async fn end_user_access_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    user_id: &str,
    revoke_grants: bool,
    unused_codes_only: bool,
    now: Timestamp,
) -> Result<u64, sqlx::Error> {
    let mut revoked = 0;
    if revoke_grants {
        let filter = GrantFilter {
            user_id: Some(user_id.to_string()),
            ..Default::default()
        };
        revoked = revoke_grants_in(tx, &filter, now).await?;
    }
    let codes = if unused_codes_only {
        "DELETE FROM auth_codes WHERE user_id = ? AND consumed_at IS NULL"
    } else {
        "DELETE FROM auth_codes WHERE user_id = ?"
    };
    for sql in [
        "DELETE FROM browser_sessions WHERE user_id = ?",
        codes,
        "DELETE FROM pending_authorizations WHERE user_id = ?",
    ] {
        sqlx::query(sql).bind(user_id).execute(&mut **tx).await?;
    }
    Ok(revoked)
}

async fn revoke_grants_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    f: &GrantFilter,
    now: Timestamp,
) -> Result<u64, sqlx::Error> {
    let (w, binds) = grant_where(f);
    let sql =
        format!("UPDATE grants SET revoked_at = ? WHERE revoked_at IS NULL AND {w} RETURNING id");
    let mut q = sqlx::query(&sql).bind(now);
    for b in &binds {
        q = q.bind(b);
    }
    let ids: Vec<String> = q
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>("id"))
        .collect::<Result<_, _>>()?;
    // Tokens of grants revoked earlier are gone already; delete those of every match.
    let sql_tokens = format!("SELECT id FROM grants WHERE {w}");
    let mut q = sqlx::query(&sql_tokens);
    for b in &binds {
        q = q.bind(b);
    }
    let all: Vec<String> = q
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>("id"))
        .collect::<Result<_, _>>()?;
    for id in &all {
        sqlx::query("DELETE FROM access_tokens WHERE grant_id = ?")
            .bind(id)
            .execute(&mut **tx)
            .await?;
        sqlx::query("DELETE FROM refresh_tokens WHERE grant_id = ?")
            .bind(id)
            .execute(&mut **tx)
            .await?;
    }
    if f.grant_id.is_none() {
        // Client-credentials tokens belong to no grant; revoking by client covers them.
        if let (Some(c), None) = (&f.client_id, &f.user_id) {
            sqlx::query("DELETE FROM access_tokens WHERE client_id = ? AND grant_id IS NULL")
                .bind(c)
                .execute(&mut **tx)
                .await?;
        }
        let mut sql = "DELETE FROM consents WHERE 1=1".to_string();
        if f.user_id.is_some() {
            sql.push_str(" AND user_id = ?");
        }
        if f.client_id.is_some() {
            sql.push_str(" AND client_id = ?");
        }
        let mut q = sqlx::query(&sql);
        if let Some(u) = &f.user_id {
            q = q.bind(u);
        }
        if let Some(c) = &f.client_id {
            q = q.bind(c);
        }
        q.execute(&mut **tx).await?;
    } else {
        // Revoking one grant forgets the consent that would silently re-create it.
        for id in &all {
            sqlx::query(
                "DELETE FROM consents WHERE EXISTS (SELECT 1 FROM grants g WHERE g.id = ?
                   AND g.user_id = consents.user_id AND g.client_id = consents.client_id
                   AND g.resource = consents.resource)",
            )
            .bind(id)
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(ids.len() as u64)
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_user(&self, u: &UserRecord) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO users (id, username, password_hash, created_at, email, groups) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&u.id)
        .bind(&u.username)
        .bind(&u.password_hash)
        .bind(u.created_at)
        .bind(&u.email)
        .bind(u.groups.join(" "))
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn user_by_name(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        let row = sqlx::query("SELECT * FROM users WHERE username = ?")
            .bind(username)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(user_from).transpose().map_err(backend)
    }

    async fn user_by_id(&self, id: &str) -> StoreResult<Option<UserRecord>> {
        let row = sqlx::query("SELECT * FROM users WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(user_from).transpose().map_err(backend)
    }

    async fn list_users(&self) -> StoreResult<Vec<UserRecord>> {
        let rows = sqlx::query("SELECT * FROM users ORDER BY username")
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter()
            .map(user_from)
            .collect::<Result<_, _>>()
            .map_err(backend)
    }

    async fn set_password(&self, user_id: &str, password_hash: &str) -> StoreResult<bool> {
        let r = sqlx::query("UPDATE users SET password_hash = ? WHERE id = ?")
            .bind(password_hash)
            .bind(user_id)
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(r.rows_affected() == 1)
    }

    async fn set_profile(
        &self,
        user_id: &str,
        email: Option<&str>,
        groups: &[String],
    ) -> StoreResult<bool> {
        let r = sqlx::query("UPDATE users SET email = ?, groups = ? WHERE id = ?")
            .bind(email)
            .bind(groups.join(" "))
            .bind(user_id)
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(r.rows_affected() == 1)
    }

    async fn delete_user(&self, user_id: &str, now: Timestamp) -> StoreResult<bool> {
        let mut tx = self.write_tx().await?;
        let r = sqlx::query("DELETE FROM users WHERE id = ?")
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        end_user_access_in(&mut tx, user_id, true, false, now)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(r.rows_affected() == 1)
    }

    async fn end_user_access(
        &self,
        user_id: &str,
        revoke_grants: bool,
        now: Timestamp,
    ) -> StoreResult<u64> {
        let mut tx = self.write_tx().await?;
        let revoked = end_user_access_in(&mut tx, user_id, revoke_grants, true, now)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(revoked)
    }

    async fn set_user_disabled(
        &self,
        user_id: &str,
        disabled_at: Option<Timestamp>,
    ) -> StoreResult<bool> {
        let r = sqlx::query("UPDATE users SET disabled_at = ? WHERE id = ?")
            .bind(disabled_at)
            .bind(user_id)
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(r.rows_affected() == 1)
    }

    async fn count_users(&self) -> StoreResult<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)
    }

    async fn register_client(&self, c: &ClientRecord, max_clients: i64) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM clients")
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        if count >= max_clients {
            return Err(StoreError::ClientLimit);
        }
        sqlx::query(
            "INSERT INTO clients (client_id, secret_hash, client_name, redirect_uris, token_endpoint_auth_method,
                grant_types, scope, metadata, registered_ip, created_at, last_used_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&c.client_id)
        .bind(&c.secret_hash)
        .bind(&c.client_name)
        .bind(serde_json::to_string(&c.redirect_uris).unwrap_or_else(|_| "[]".into()))
        .bind(&c.token_endpoint_auth_method)
        .bind(c.grant_types.join(" "))
        .bind(c.scope.as_ref().map(|s| join_scopes(s)))
        .bind(c.metadata.to_string())
        .bind(&c.registered_ip)
        .bind(c.created_at)
        .bind(c.last_used_at)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn client(&self, client_id: &str) -> StoreResult<Option<ClientRecord>> {
        let row = sqlx::query("SELECT * FROM clients WHERE client_id = ?")
            .bind(client_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(client_from).transpose().map_err(backend)
    }

    async fn list_clients(&self) -> StoreResult<Vec<ClientRecord>> {
        let rows = sqlx::query("SELECT * FROM clients ORDER BY created_at")
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter()
            .map(client_from)
            .collect::<Result<_, _>>()
            .map_err(backend)
    }

    async fn delete_client(&self, client_id: &str, now: Timestamp) -> StoreResult<bool> {
        let mut tx = self.write_tx().await?;
        let r = sqlx::query("DELETE FROM clients WHERE client_id = ?")
            .bind(client_id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let filter = GrantFilter {
            client_id: Some(client_id.to_string()),
            ..Default::default()
        };
        revoke_grants_in(&mut tx, &filter, now)
            .await
            .map_err(backend)?;
        sqlx::query("DELETE FROM auth_codes WHERE client_id = ?")
            .bind(client_id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(r.rows_affected() == 1)
    }

    async fn touch_client(&self, client_id: &str, now: Timestamp) -> StoreResult<()> {
        sqlx::query("UPDATE clients SET last_used_at = ? WHERE client_id = ? AND (last_used_at IS NULL OR last_used_at < ?)")
            .bind(now)
            .bind(client_id)
            .bind(now - 60)
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn put_pending(&self, p: &PendingAuthorization) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO pending_authorizations (id, client_id, redirect_uri, redirect_given, scopes, resource, state,
                code_challenge, csrf_token, binding_hash, user_id, created_at, expires_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&p.id)
        .bind(&p.client_id)
        .bind(&p.redirect_uri)
        .bind(p.redirect_given)
        .bind(join_scopes(&p.scopes))
        .bind(&p.resource)
        .bind(&p.state)
        .bind(&p.code_challenge)
        .bind(&p.csrf_token)
        .bind(&p.binding_hash)
        .bind(&p.user_id)
        .bind(p.created_at)
        .bind(p.expires_at)
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn pending(&self, id: &str, now: Timestamp) -> StoreResult<Option<PendingAuthorization>> {
        let row =
            sqlx::query("SELECT * FROM pending_authorizations WHERE id = ? AND expires_at > ?")
                .bind(id)
                .bind(now)
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
        row.as_ref().map(pending_from).transpose().map_err(backend)
    }

    async fn set_pending_user(&self, id: &str, user_id: &str) -> StoreResult<()> {
        sqlx::query("UPDATE pending_authorizations SET user_id = ? WHERE id = ?")
            .bind(user_id)
            .bind(id)
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn delete_pending(&self, id: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM pending_authorizations WHERE id = ?")
            .bind(id)
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn insert_code(&self, c: &AuthCodeRecord) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO auth_codes (code_hash, client_id, user_id, redirect_uri, redirect_given, resource, scopes,
                code_challenge, created_at, expires_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&c.code_hash)
        .bind(&c.client_id)
        .bind(&c.user_id)
        .bind(&c.redirect_uri)
        .bind(c.redirect_given)
        .bind(&c.resource)
        .bind(join_scopes(&c.scopes))
        .bind(&c.code_challenge)
        .bind(c.created_at)
        .bind(c.expires_at)
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn code(&self, code_hash: &str) -> StoreResult<Option<AuthCodeRecord>> {
        let row = sqlx::query("SELECT * FROM auth_codes WHERE code_hash = ?")
            .bind(code_hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(code_from).transpose().map_err(backend)
    }

    async fn redeem_code(
        &self,
        code_hash: &str,
        now: Timestamp,
        grant: &GrantRecord,
        access: &AccessTokenRecord,
        refresh: Option<&RefreshTokenRecord>,
    ) -> StoreResult<RedeemOutcome> {
        let mut tx = self.write_tx().await?;
        let won = sqlx::query(
            "UPDATE auth_codes SET consumed_at = ?, grant_id = ?
             WHERE code_hash = ? AND consumed_at IS NULL AND expires_at > ?",
        )
        .bind(now)
        .bind(&grant.id)
        .bind(code_hash)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(backend)?
        .rows_affected()
            == 1;
        if !won {
            let row =
                sqlx::query("SELECT consumed_at, grant_id FROM auth_codes WHERE code_hash = ?")
                    .bind(code_hash)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(backend)?;
            tx.rollback().await.map_err(backend)?;
            return Ok(match row {
                Some(r)
                    if r.try_get::<Option<i64>, _>("consumed_at")
                        .map_err(backend)?
                        .is_some() =>
                {
                    RedeemOutcome::Replayed {
                        grant_id: r.try_get("grant_id").map_err(backend)?,
                    }
                }
                _ => RedeemOutcome::Invalid,
            });
        }
        sqlx::query(
            "INSERT INTO grants (id, user_id, client_id, resource, scopes, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&grant.id)
        .bind(&grant.user_id)
        .bind(&grant.client_id)
        .bind(&grant.resource)
        .bind(join_scopes(&grant.scopes))
        .bind(grant.created_at)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        insert_access(&mut *tx, access).await.map_err(backend)?;
        if let Some(r) = refresh {
            insert_refresh(&mut *tx, r).await.map_err(backend)?;
        }
        sqlx::query("UPDATE clients SET last_used_at = ? WHERE client_id = ?")
            .bind(now)
            .bind(&grant.client_id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(RedeemOutcome::Issued)
    }

    async fn insert_access_token(&self, t: &AccessTokenRecord) -> StoreResult<()> {
        insert_access(&self.writer, t).await.map_err(backend)
    }

    async fn access_token(
        &self,
        token_hash: &str,
        now: Timestamp,
    ) -> StoreResult<Option<TokenInfo>> {
        let row = sqlx::query(
            "SELECT t.*, u.username AS username, u.email AS email, u.groups AS user_groups FROM access_tokens t
             LEFT JOIN users u ON u.id = t.user_id
             WHERE t.token_hash = ? AND t.expires_at > ?",
        )
        .bind(token_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        match row {
            None => Ok(None),
            Some(r) => Ok(Some(TokenInfo {
                token: access_from(&r).map_err(backend)?,
                username: r.try_get("username").map_err(backend)?,
                email: r.try_get("email").map_err(backend)?,
                groups: r
                    .try_get::<Option<String>, _>("user_groups")
                    .map_err(backend)?
                    .as_deref()
                    .map(split_scopes)
                    .unwrap_or_default(),
            })),
        }
    }

    async fn refresh_token(
        &self,
        token_hash: &str,
        now: Timestamp,
    ) -> StoreResult<Option<RefreshTokenRecord>> {
        let row =
            sqlx::query("SELECT * FROM refresh_tokens WHERE token_hash = ? AND expires_at > ?")
                .bind(token_hash)
                .bind(now)
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
        row.as_ref().map(refresh_from).transpose().map_err(backend)
    }

    async fn refresh_token_and_grant(
        &self,
        token_hash: &str,
        now: Timestamp,
    ) -> StoreResult<Option<(RefreshTokenRecord, Option<GrantRecord>)>> {
        let sql = format!(
            "SELECT {} FROM refresh_tokens r LEFT JOIN grants g ON g.id = r.grant_id
             WHERE r.token_hash = ? AND r.expires_at > ?",
            super::rows::REFRESH_AND_GRANT_COLUMNS
        );
        let row = sqlx::query(&sql)
            .bind(token_hash)
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref()
            .map(refresh_and_grant_from)
            .transpose()
            .map_err(backend)
    }

    async fn rotate_refresh(
        &self,
        old_hash: &str,
        now: Timestamp,
        access: &AccessTokenRecord,
        refresh: &RefreshTokenRecord,
        retry_sealed: &[u8],
        retry_until: Timestamp,
    ) -> StoreResult<RotateOutcome> {
        let won = self
            .rotator
            .rotate(rotations::Rotation {
                old_hash: old_hash.to_string(),
                now,
                access: access.clone(),
                refresh: refresh.clone(),
                retry_sealed: retry_sealed.to_vec(),
                retry_until,
            })
            .await?;
        if won {
            return Ok(RotateOutcome::Rotated);
        }
        // Lost: read what the winner wrote from one snapshot, off the writer.
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let row = sqlx::query(
            "SELECT * FROM refresh_tokens WHERE token_hash = ? AND used_at IS NOT NULL",
        )
        .bind(old_hash)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        let outcome = match row {
            None => RotateOutcome::Invalid,
            Some(r) => {
                let record = refresh_from(&r).map_err(backend)?;
                let successor_used = match &record.successor_hash {
                    Some(s) => sqlx::query_scalar::<_, i64>(
                        "SELECT COUNT(*) FROM refresh_tokens WHERE token_hash = ? AND used_at IS NULL",
                    )
                    .bind(s)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(backend)?
                        == 0,
                    None => true,
                };
                RotateOutcome::AlreadyUsed {
                    record,
                    successor_used,
                }
            }
        };
        tx.rollback().await.map_err(backend)?;
        Ok(outcome)
    }

    async fn revoke_access_token(&self, token_hash: &str) -> StoreResult<bool> {
        let r = sqlx::query("DELETE FROM access_tokens WHERE token_hash = ?")
            .bind(token_hash)
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(r.rows_affected() == 1)
    }

    async fn grant(&self, grant_id: &str) -> StoreResult<Option<GrantRecord>> {
        let row = sqlx::query("SELECT * FROM grants WHERE id = ?")
            .bind(grant_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(grant_from).transpose().map_err(backend)
    }

    async fn list_grants(
        &self,
        filter: &GrantFilter,
        include_revoked: bool,
    ) -> StoreResult<Vec<GrantRecord>> {
        let (w, binds) = grant_where(filter);
        let live = if include_revoked {
            ""
        } else {
            " AND revoked_at IS NULL"
        };
        let sql = format!("SELECT * FROM grants WHERE {w}{live} ORDER BY created_at");
        let mut q = sqlx::query(&sql);
        for b in &binds {
            q = q.bind(b);
        }
        let rows = q.fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter()
            .map(grant_from)
            .collect::<Result<_, _>>()
            .map_err(backend)
    }

    async fn revoke_grants(&self, filter: &GrantFilter, now: Timestamp) -> StoreResult<u64> {
        let mut tx = self.write_tx().await?;
        let n = revoke_grants_in(&mut tx, filter, now)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(n)
    }

    async fn has_consent(
        &self,
        user_id: &str,
        client_id: &str,
        redirect_uri: &str,
        resource: &str,
        scopes: &[String],
    ) -> StoreResult<bool> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM consents WHERE user_id = ? AND client_id = ? AND redirect_uri = ? AND resource = ? AND scopes = ?",
        )
        .bind(user_id)
        .bind(client_id)
        .bind(redirect_uri)
        .bind(resource)
        .bind(canonical_scopes(scopes))
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok(n > 0)
    }

    async fn put_consent(
        &self,
        user_id: &str,
        client_id: &str,
        redirect_uri: &str,
        resource: &str,
        scopes: &[String],
        now: Timestamp,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO consents (user_id, client_id, redirect_uri, resource, scopes, created_at)
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(user_id)
        .bind(client_id)
        .bind(redirect_uri)
        .bind(resource)
        .bind(canonical_scopes(scopes))
        .bind(now)
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn put_session(
        &self,
        id_hash: &str,
        user_id: &str,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> StoreResult<()> {
        sqlx::query("INSERT INTO browser_sessions (id_hash, user_id, created_at, expires_at) VALUES (?, ?, ?, ?)")
            .bind(id_hash)
            .bind(user_id)
            .bind(now)
            .bind(expires_at)
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn session_user(&self, id_hash: &str, now: Timestamp) -> StoreResult<Option<String>> {
        sqlx::query_scalar(
            "SELECT user_id FROM browser_sessions WHERE id_hash = ? AND expires_at > ?",
        )
        .bind(id_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)
    }

    async fn delete_session(&self, id_hash: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM browser_sessions WHERE id_hash = ?")
            .bind(id_hash)
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn bind_session(
        &self,
        upstream: &str,
        session_hash: &str,
        owner: &str,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO mcp_sessions (upstream, session_hash, owner, created_at, expires_at) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (upstream, session_hash) DO NOTHING",
        )
        .bind(upstream)
        .bind(session_hash)
        .bind(owner)
        .bind(now)
        .bind(expires_at)
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn session_owner(
        &self,
        upstream: &str,
        session_hash: &str,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT owner, expires_at FROM mcp_sessions WHERE upstream = ? AND session_hash = ? AND expires_at > ?")
            .bind(upstream)
            .bind(session_hash)
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        let Some(row) = row else { return Ok(None) };
        let owner: String = row.try_get("owner").map_err(backend)?;
        let current: i64 = row.try_get("expires_at").map_err(backend)?;
        // Extend only once half the lifetime is used, so a busy session is not a write per call.
        if current - now < (expires_at - now) / 2 {
            sqlx::query(
                "UPDATE mcp_sessions SET expires_at = ? WHERE upstream = ? AND session_hash = ?",
            )
            .bind(expires_at)
            .bind(upstream)
            .bind(session_hash)
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        }
        Ok(Some(owner))
    }

    async fn unbind_session(&self, upstream: &str, session_hash: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM mcp_sessions WHERE upstream = ? AND session_hash = ?")
            .bind(upstream)
            .bind(session_hash)
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn signing_keys(&self) -> StoreResult<Vec<(String, Vec<u8>, Timestamp)>> {
        let rows = sqlx::query("SELECT kid, pkcs8, created_at FROM signing_keys WHERE retired_at IS NULL ORDER BY created_at DESC, kid")
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("kid")?,
                    r.try_get("pkcs8")?,
                    r.try_get("created_at")?,
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(backend)
    }

    async fn add_signing_key(&self, kid: &str, pkcs8: &[u8], now: Timestamp) -> StoreResult<()> {
        sqlx::query("INSERT INTO signing_keys (kid, pkcs8, created_at) VALUES (?, ?, ?)")
            .bind(kid)
            .bind(pkcs8)
            .bind(now)
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn retire_signing_key(&self, kid: &str, now: Timestamp) -> StoreResult<bool> {
        let r = sqlx::query(
            "UPDATE signing_keys SET retired_at = ?, pkcs8 = ? WHERE kid = ? AND retired_at IS NULL",
        )
        .bind(now)
        .bind(&[] as &[u8])
        .bind(kid)
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(r.rows_affected() == 1)
    }

    async fn reseal_signing_key(&self, kid: &str, current: &[u8], new: &[u8]) -> StoreResult<bool> {
        let r = sqlx::query(
            "UPDATE signing_keys SET pkcs8 = ? WHERE kid = ? AND pkcs8 = ? AND retired_at IS NULL",
        )
        .bind(new)
        .bind(kid)
        .bind(current)
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(r.rows_affected() == 1)
    }

    async fn add_signing_key_if_none(
        &self,
        kid: &str,
        pkcs8: &[u8],
        now: Timestamp,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO signing_keys (kid, pkcs8, created_at)
             SELECT ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM signing_keys WHERE retired_at IS NULL)",
        )
        .bind(kid)
        .bind(pkcs8)
        .bind(now)
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn hit(&self, key: &str, window_start: Timestamp) -> StoreResult<i64> {
        sqlx::query_scalar(
            "INSERT INTO counters (key, window_start, count) VALUES (?, ?, 1)
             ON CONFLICT (key, window_start) DO UPDATE SET count = count + 1
             RETURNING count",
        )
        .bind(key)
        .bind(window_start)
        .fetch_one(&self.writer)
        .await
        .map_err(backend)
    }

    async fn hits(&self, key: &str, window_start: Timestamp) -> StoreResult<i64> {
        let n: Option<i64> =
            sqlx::query_scalar("SELECT count FROM counters WHERE key = ? AND window_start = ?")
                .bind(key)
                .bind(window_start)
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
        Ok(n.unwrap_or(0))
    }

    async fn unhit(&self, key: &str, window_start: Timestamp) -> StoreResult<()> {
        sqlx::query(
            "UPDATE counters SET count = count - 1 WHERE key = ? AND window_start = ? AND count > 0",
        )
        .bind(key)
        .bind(window_start)
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn clear_hits(&self, key: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM counters WHERE key = ?")
            .bind(key)
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn schema(&self) -> StoreResult<Vec<(String, Vec<String>)>> {
        schema_of(&self.pool).await.map_err(backend)
    }

    async fn count_rows(&self, table: &copy::Table) -> StoreResult<i64> {
        count_rows_of(&self.pool, table).await.map_err(backend)
    }

    async fn export_rows(&self, table: &copy::Table) -> StoreResult<Vec<copy::Row>> {
        export_rows_of(&self.pool, table).await.map_err(backend)
    }

    async fn import_rows(&self, data: &[(&copy::Table, Vec<copy::Row>)]) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        import_rows_into(&mut tx, data).await.map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn sweep(
        &self,
        now: Timestamp,
        unused_client_cutoff: Timestamp,
    ) -> StoreResult<SweepCounts> {
        let mut tx = self.write_tx().await?;
        let mut run = async |sql: &str, bind: i64| -> StoreResult<u64> {
            Ok(sqlx::query(sql)
                .bind(bind)
                .execute(&mut *tx)
                .await
                .map_err(backend)?
                .rows_affected())
        };
        // Codes stay a while after use so a replay is still recognised (and revokes).
        let codes = run("DELETE FROM auth_codes WHERE expires_at < ?", now - 3600).await?;
        let access_tokens = run("DELETE FROM access_tokens WHERE expires_at <= ?", now).await?;
        let refresh_tokens = run("DELETE FROM refresh_tokens WHERE expires_at <= ?", now).await?;
        let pending = run(
            "DELETE FROM pending_authorizations WHERE expires_at <= ?",
            now,
        )
        .await?;
        let sessions = run("DELETE FROM browser_sessions WHERE expires_at <= ?", now).await?;
        // Counter windows are at most a day long.
        let counters = run("DELETE FROM counters WHERE window_start < ?", now - 86_400).await?;
        let mcp_sessions = run("DELETE FROM mcp_sessions WHERE expires_at <= ?", now).await?;
        let clients = run(
            "DELETE FROM clients WHERE last_used_at IS NULL AND created_at < ?
               AND NOT EXISTS (SELECT 1 FROM grants g WHERE g.client_id = clients.client_id)",
            unused_client_cutoff,
        )
        .await?;
        tx.commit().await.map_err(backend)?;
        Ok(SweepCounts {
            codes,
            access_tokens,
            refresh_tokens,
            pending,
            sessions,
            clients,
            counters,
            mcp_sessions,
        })
    }
}
