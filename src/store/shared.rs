//! The store's SQL, written once for both engines. sqlx rows and executors of different
//! databases share no trait that carries their column types, so the shared part is one body
//! that each engine expands with its own types ([`shared_store!`]); placeholders are `$N`,
//! which SQLite reads too. Each engine supplies what really differs, under the same names:
//! `reader()` and `writer()` (its pools for reads and for single-statement writes),
//! `write_tx()`, `bus()`, `follow_other_instances()`, `rotate_won()` (SQLite's grouped
//! commits, PostgreSQL's single statement), and the free functions `backend` (its error
//! classes), `lock_in` (PostgreSQL's advisory locks; SQLite's writer is one already) and
//! `announce_in` (PostgreSQL's `NOTIFY`).

use super::GrantFilter;

/// The WHERE clause and its values for a grant filter, placeholders numbered from `first`;
/// values are bound, never spliced.
pub(crate) fn grant_where(f: &GrantFilter, first: usize) -> (String, Vec<String>) {
    let mut clauses = vec!["TRUE".to_string()];
    let mut binds = Vec::new();
    for (column, value) in [
        ("id", &f.grant_id),
        ("user_id", &f.user_id),
        ("client_id", &f.client_id),
    ] {
        if let Some(v) = value {
            clauses.push(format!("{column} = ${}", first + binds.len()));
            binds.push(v.clone());
        }
    }
    (clauses.join(" AND "), binds)
}

/// The consents a grant filter without a grant id covers (by user and client).
pub(crate) fn consent_where(f: &GrantFilter) -> (String, Vec<String>) {
    let only_people = GrantFilter {
        grant_id: None,
        ..f.clone()
    };
    grant_where(&only_people, 1)
}

/// Expands the shared implementation of every concern trait for `$store`, an engine whose
/// database is `$db` with rows `$row` and pools `$pool`; `$schema_sql` lists the tables and
/// columns for `store copy`.
macro_rules! shared_store {
    ($store:ident, $db:ty, $row:ty, $pool:ty, $schema_sql:expr) => {
super::rows::table_copy!($db, $pool, $schema_sql);
super::rows::row_mappers!($row);

async fn insert_access<'e, E>(ex: E, t: &AccessTokenRecord) -> Result<(), sqlx::Error>
where
    E: sqlx::Executor<'e, Database = $db>,
{
    sqlx::query(
        "INSERT INTO access_tokens (token_hash, grant_id, client_id, user_id, resource, scopes, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
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
    E: sqlx::Executor<'e, Database = $db>,
{
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, grant_id, client_id, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5)",
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

/// One row found by a text key (and, with `live_at`, unexpired then: the query's `$2`),
/// mapped to its record.
async fn one_by<T>(
    pool: &$pool,
    sql: &str,
    key: &str,
    live_at: Option<Timestamp>,
    map: fn(&$row) -> Result<T, sqlx::Error>,
) -> StoreResult<Option<T>> {
    let mut q = sqlx::query(sql).bind(key);
    if let Some(now) = live_at {
        q = q.bind(now);
    }
    let row = q.fetch_optional(pool).await.map_err(backend)?;
    row.as_ref().map(map).transpose().map_err(backend)
}

/// Every row of a query without parameters, mapped to records.
async fn all_of<T>(
    pool: &$pool,
    sql: &str,
    map: fn(&$row) -> Result<T, sqlx::Error>,
) -> StoreResult<Vec<T>> {
    let rows = sqlx::query(sql).fetch_all(pool).await.map_err(backend)?;
    rows.iter()
        .map(map)
        .collect::<Result<_, _>>()
        .map_err(backend)
}

const TOKEN_COLUMNS: &str = "user_id, upstream, issuer, sealed, status, scope, expires_at, settings, connected_at, updated_at";

fn token_row(r: &$row) -> StoreResult<UpstreamTokenRecord> {
    let get = || -> Result<UpstreamTokenRecord, sqlx::Error> {
        Ok(UpstreamTokenRecord {
            user_id: r.try_get("user_id")?,
            upstream: r.try_get("upstream")?,
            issuer: r.try_get("issuer")?,
            sealed: r.try_get("sealed")?,
            status: r.try_get("status")?,
            scope: r.try_get("scope")?,
            expires_at: r.try_get("expires_at")?,
            settings: r.try_get("settings")?,
            connected_at: r.try_get("connected_at")?,
            updated_at: r.try_get("updated_at")?,
        })
    };
    get().map_err(backend)
}

async fn insert_user<'e, E>(ex: E, u: &UserRecord) -> Result<(), sqlx::Error>
where
    E: sqlx::Executor<'e, Database = $db>,
{
    sqlx::query(
        "INSERT INTO users (id, username, password_hash, created_at, email, groups)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&u.id)
    .bind(&u.username)
    .bind(&u.password_hash)
    .bind(u.created_at)
    .bind(&u.email)
    .bind(u.groups.join(" "))
    .execute(ex)
    .await
    .map(|_| ())
}

/// Ends what a user's sign-ins hold, inside `tx`: browser sessions, unfinished requests and
/// codes (only unused ones when `unused_codes_only`, so replays of used ones stay detectable),
/// and with `reason` their grants. Returns the grants that ended.
async fn end_user_access_in(
    tx: &mut sqlx::Transaction<'static, $db>,
    bus: &EventBus,
    user_id: &str,
    reason: Option<EndReason>,
    unused_codes_only: bool,
    now: Timestamp,
) -> Result<Vec<StoreEvent>, sqlx::Error> {
    // Codes before grants: a code redeemed concurrently either loses its row here (and
    // redeems nothing), or has committed its grant before the grants are ended below, where
    // (each statement seeing what committed before it) that grant is ended too.
    let codes = if unused_codes_only {
        "DELETE FROM auth_codes WHERE user_id = $1 AND consumed_at IS NULL"
    } else {
        "DELETE FROM auth_codes WHERE user_id = $1"
    };
    for sql in [
        "DELETE FROM browser_sessions WHERE user_id = $1",
        codes,
        "DELETE FROM pending_authorizations WHERE user_id = $1",
        "DELETE FROM device_authorizations WHERE user_id = $1",
    ] {
        sqlx::query(sql).bind(user_id).execute(&mut **tx).await?;
    }
    let mut ended = Vec::new();
    if let Some(reason) = reason {
        let filter = GrantFilter {
            user_id: Some(user_id.to_string()),
            ..Default::default()
        };
        ended = end_grants_in(tx, bus, &filter, reason, now).await?;
    }
    Ok(ended)
}

/// The one place where grants end: marks the matching live grants ended for `reason`,
/// deletes every token they issued (also of matches ended earlier) and, unless they merely
/// ran out, the remembered consent that would silently create them again; records one event
/// per grant (and per client-credentials token deleted on the way) for the other instances.
/// The caller commits, then publishes what this returns ([`commit_and_publish`]).
async fn end_grants_in(
    tx: &mut sqlx::Transaction<'static, $db>,
    bus: &EventBus,
    f: &GrantFilter,
    reason: EndReason,
    now: Timestamp,
) -> Result<Vec<StoreEvent>, sqlx::Error> {
    let (w, binds) = super::shared::grant_where(f, 3);
    let sql = format!(
        "UPDATE grants SET revoked_at = $1, ended_reason = $2, login_context = NULL
         WHERE revoked_at IS NULL AND {w}
         RETURNING id, user_id, client_id"
    );
    let mut q = sqlx::query(&sql).bind(now).bind(reason.as_str());
    for b in &binds {
        q = q.bind(b);
    }
    let mut ended = Vec::new();
    for r in q.fetch_all(&mut **tx).await? {
        ended.push(GrantEnded {
            grant: r.try_get("id")?,
            user: r.try_get("user_id")?,
            client: r.try_get("client_id")?,
            reason,
        });
    }
    let (w, _) = super::shared::grant_where(f, 1);
    let sql = format!("SELECT id FROM grants WHERE {w}");
    let mut q = sqlx::query(&sql);
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
        for sql in [
            "DELETE FROM access_tokens WHERE grant_id = $1",
            "DELETE FROM refresh_tokens WHERE grant_id = $1",
            // What a code would carry into a grant goes with the grant.
            "UPDATE auth_codes SET login_context = NULL WHERE grant_id = $1",
        ] {
            sqlx::query(sql).bind(id).execute(&mut **tx).await?;
        }
    }
    let mut events: Vec<StoreEvent> = ended.into_iter().map(StoreEvent::GrantEnded).collect();
    let ran_out = matches!(reason, EndReason::Expired | EndReason::MaxLifetime);
    if f.grant_id.is_none() {
        // Client-credentials tokens belong to no grant; revoking by client covers them.
        if let (Some(c), None) = (&f.client_id, &f.user_id) {
            let hashes: Vec<String> = sqlx::query_scalar(
                "DELETE FROM access_tokens WHERE client_id = $1 AND grant_id IS NULL
                 RETURNING token_hash",
            )
            .bind(c)
            .fetch_all(&mut **tx)
            .await?;
            events.extend(
                hashes
                    .into_iter()
                    .map(|token_hash| StoreEvent::AccessTokenRevoked { token_hash }),
            );
        }
        let (w, binds) = super::shared::consent_where(f);
        let sql = format!("DELETE FROM consents WHERE {w}");
        let mut q = sqlx::query(&sql);
        for b in &binds {
            q = q.bind(b);
        }
        q.execute(&mut **tx).await?;
    } else if !ran_out {
        // Revoking one grant forgets the consent that would silently re-create it.
        for id in &all {
            sqlx::query(
                "DELETE FROM consents WHERE EXISTS (SELECT 1 FROM grants g WHERE g.id = $1
                   AND g.user_id = consents.user_id AND g.client_id = consents.client_id
                   AND g.resource = consents.resource)",
            )
            .bind(id)
            .execute(&mut **tx)
            .await?;
        }
    }
    for e in &events {
        record_event_in(tx, bus, e, now).await?;
    }
    Ok(events)
}

/// Writes an event for the other instances, delivered when `tx` commits: a row of
/// `store_events` (which a SQLite gateway polls), and on PostgreSQL a `NOTIFY` too.
async fn record_event_in(
    tx: &mut sqlx::Transaction<'static, $db>,
    bus: &EventBus,
    event: &StoreEvent,
    now: Timestamp,
) -> Result<(), sqlx::Error> {
    let payload = serde_json::to_string(&super::events::Envelope {
        origin: bus.origin().to_string(),
        event: event.clone(),
    })
    .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query("INSERT INTO store_events (origin, payload, created_at) VALUES ($1, $2, $3)")
        .bind(bus.origin())
        .bind(&payload)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    announce_in(tx, bus.channel(), &payload).await
}

/// Commits, then tells this process's subscribers what the transaction ended.
/// What goes with a client that is removed or blocked, in its transaction: its codes,
/// pending requests and device authorizations (before its grants: see `end_user_access_in`),
/// its grants (ending for `reason`), and every instance's memory of it (cached client,
/// tokens, sessions: the client-removed event). Returns the events to publish on commit.
async fn end_client_in(
    tx: &mut sqlx::Transaction<'static, $db>,
    bus: &EventBus,
    client_id: &str,
    reason: EndReason,
    now: Timestamp,
) -> Result<Vec<StoreEvent>, sqlx::Error> {
    for sql in [
        "DELETE FROM auth_codes WHERE client_id = $1",
        "DELETE FROM pending_authorizations WHERE client_id = $1",
        "DELETE FROM device_authorizations WHERE client_id = $1",
    ] {
        sqlx::query(sql).bind(client_id).execute(&mut **tx).await?;
    }
    let filter = GrantFilter {
        client_id: Some(client_id.to_string()),
        ..Default::default()
    };
    let mut events = end_grants_in(tx, bus, &filter, reason, now).await?;
    let removed = StoreEvent::ClientRemoved {
        client: client_id.to_string(),
    };
    record_event_in(tx, bus, &removed, now).await?;
    events.push(removed);
    Ok(events)
}

async fn commit_and_publish(
    tx: sqlx::Transaction<'static, $db>,
    bus: &EventBus,
    events: impl IntoIterator<Item = StoreEvent>,
) -> StoreResult<()> {
    tx.commit().await.map_err(backend)?;
    bus.publish_all(events.into_iter().collect());
    Ok(())
}

/// How many grants the events end.
fn grants_in(events: &[StoreEvent]) -> u64 {
    events
        .iter()
        .filter(|e| matches!(e, StoreEvent::GrantEnded(_)))
        .count() as u64
}

#[async_trait]
impl UserStore for $store {
    async fn create_user(&self, u: &UserRecord) -> StoreResult<()> {
        insert_user(self.writer(), u).await.map_err(backend)
    }

    async fn identities_of(&self, user_id: &str) -> StoreResult<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT source, subject FROM identities WHERE user_id = $1 ORDER BY source, subject",
        )
        .bind(user_id)
        .fetch_all(self.reader())
        .await
        .map_err(backend)?;
        rows.iter()
            .map(|r| Ok((r.try_get("source")?, r.try_get("subject")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(backend)
    }

    async fn all_identities(&self) -> StoreResult<Vec<(String, String, String)>> {
        let rows = sqlx::query(
            "SELECT user_id, source, subject FROM identities ORDER BY user_id, source, subject",
        )
        .fetch_all(self.reader())
        .await
        .map_err(backend)?;
        rows.iter()
            .map(|r| Ok((r.try_get("user_id")?, r.try_get("source")?, r.try_get("subject")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(backend)
    }

    async fn user_by_identity(
        &self,
        source: &str,
        subject: &str,
    ) -> StoreResult<Option<UserRecord>> {
        let row = sqlx::query(
            "SELECT u.* FROM identities i JOIN users u ON u.id = i.user_id
             WHERE i.source = $1 AND i.subject = $2",
        )
        .bind(source)
        .bind(subject)
        .fetch_optional(self.reader())
        .await
        .map_err(backend)?;
        row.as_ref().map(user_from).transpose().map_err(backend)
    }

    async fn create_user_with_identity(
        &self,
        u: &UserRecord,
        source: &str,
        subject: &str,
    ) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        insert_user(&mut *tx, u).await.map_err(backend)?;
        sqlx::query(
            "INSERT INTO identities (source, subject, user_id, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(source)
        .bind(subject)
        .bind(&u.id)
        .bind(u.created_at)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn user_by_name(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        one_by(self.reader(), "SELECT * FROM users WHERE username = $1", username, None, user_from).await
    }

    async fn user_by_id(&self, id: &str) -> StoreResult<Option<UserRecord>> {
        one_by(self.reader(), "SELECT * FROM users WHERE id = $1", id, None, user_from).await
    }

    async fn list_users(&self) -> StoreResult<Vec<UserRecord>> {
        all_of(self.reader(), "SELECT * FROM users ORDER BY username", user_from).await
    }

    async fn set_password(&self, user_id: &str, password_hash: &str) -> StoreResult<bool> {
        let r = sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
            .bind(password_hash)
            .bind(user_id)
            .execute(self.writer())
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
        let r = sqlx::query("UPDATE users SET email = $1, groups = $2 WHERE id = $3")
            .bind(email)
            .bind(groups.join(" "))
            .bind(user_id)
            .execute(self.writer())
            .await
            .map_err(backend)?;
        Ok(r.rows_affected() == 1)
    }

    async fn delete_user(&self, user_id: &str, now: Timestamp) -> StoreResult<bool> {
        let mut tx = self.write_tx().await?;
        let r = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        // Upstream connections belong to the person: they go with them.
        for sql in [
            "DELETE FROM upstream_tokens WHERE user_id = $1",
            "DELETE FROM upstream_connects WHERE user_id = $1",
        ] {
            sqlx::query(sql)
                .bind(user_id)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        let ended = end_user_access_in(
            &mut tx,
            self.bus(),
            user_id,
            Some(EndReason::UserRemoved),
            false,
            now,
        )
        .await
        .map_err(backend)?;
        let removed = StoreEvent::UserRemoved {
            user: user_id.to_string(),
        };
        record_event_in(&mut tx, self.bus(), &removed, now)
            .await
            .map_err(backend)?;
        commit_and_publish(tx, self.bus(), ended.into_iter().chain([removed])).await?;
        Ok(r.rows_affected() == 1)
    }

    async fn end_user_access(
        &self,
        user_id: &str,
        revoke_grants: bool,
        reason: EndReason,
        now: Timestamp,
    ) -> StoreResult<u64> {
        let mut tx = self.write_tx().await?;
        let reason = revoke_grants.then_some(reason);
        let ended = end_user_access_in(&mut tx, self.bus(), user_id, reason, true, now)
            .await
            .map_err(backend)?;
        let n = grants_in(&ended);
        commit_and_publish(tx, self.bus(), ended).await?;
        Ok(n)
    }

    async fn set_user_disabled(
        &self,
        user_id: &str,
        disabled_at: Option<Timestamp>,
    ) -> StoreResult<bool> {
        let r = sqlx::query("UPDATE users SET disabled_at = $1 WHERE id = $2")
            .bind(disabled_at)
            .bind(user_id)
            .execute(self.writer())
            .await
            .map_err(backend)?;
        Ok(r.rows_affected() == 1)
    }

    async fn count_users(&self) -> StoreResult<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(self.reader())
            .await
            .map_err(backend)
    }
}

#[async_trait]
impl ClientStore for $store {
    async fn register_client(&self, c: &ClientRecord, max_clients: i64) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        lock_in(&mut tx, "mog:clients").await?;
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
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
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
        one_by(self.reader(), "SELECT * FROM clients WHERE client_id = $1", client_id, None, client_from).await
    }

    async fn list_clients(&self) -> StoreResult<Vec<ClientRecord>> {
        all_of(self.reader(), "SELECT * FROM clients ORDER BY created_at", client_from).await
    }

    async fn delete_client(&self, client_id: &str, now: Timestamp) -> StoreResult<bool> {
        let mut tx = self.write_tx().await?;
        let r = sqlx::query("DELETE FROM clients WHERE client_id = $1")
            .bind(client_id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let events = end_client_in(&mut tx, self.bus(), client_id, EndReason::ClientRemoved, now)
            .await
            .map_err(backend)?;
        commit_and_publish(tx, self.bus(), events).await?;
        Ok(r.rows_affected() == 1)
    }

    async fn block_client(&self, client_id: &str, reason: &str, now: Timestamp) -> StoreResult<bool> {
        let mut tx = self.write_tx().await?;
        let fresh = sqlx::query(
            "INSERT INTO client_blocks (client_id, blocked_at, reason) VALUES ($1, $2, $3)
             ON CONFLICT (client_id) DO NOTHING",
        )
        .bind(client_id)
        .bind(now)
        .bind(reason)
        .execute(&mut *tx)
        .await
        .map_err(backend)?
        .rows_affected()
            == 1;
        if !fresh {
            tx.rollback().await.map_err(backend)?;
            return Ok(false);
        }
        // Beyond what goes with a removed client: the tokens it holds for itself (client
        // credentials, no grant), and its place on the approval list.
        for sql in [
            "DELETE FROM access_tokens WHERE client_id = $1 AND grant_id IS NULL",
            "DELETE FROM client_approvals WHERE client_id = $1 AND approved_at IS NULL",
        ] {
            sqlx::query(sql)
                .bind(client_id)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        // Every instance forgets a blocked client as it forgets a removed one.
        let events = end_client_in(&mut tx, self.bus(), client_id, EndReason::ClientBlocked, now)
            .await
            .map_err(backend)?;
        commit_and_publish(tx, self.bus(), events).await?;
        Ok(true)
    }

    async fn unblock_client(&self, client_id: &str) -> StoreResult<bool> {
        let r = sqlx::query("DELETE FROM client_blocks WHERE client_id = $1")
            .bind(client_id)
            .execute(self.writer())
            .await
            .map_err(backend)?;
        Ok(r.rows_affected() == 1)
    }

    async fn client_block(&self, client_id: &str) -> StoreResult<Option<(Timestamp, String)>> {
        let row = sqlx::query("SELECT blocked_at, reason FROM client_blocks WHERE client_id = $1")
            .bind(client_id)
            .fetch_optional(self.reader())
            .await
            .map_err(backend)?;
        row.map(|r| Ok((r.try_get("blocked_at")?, r.try_get("reason")?)))
            .transpose()
            .map_err(backend)
    }

    async fn client_blocks(&self) -> StoreResult<Vec<(String, Timestamp, String)>> {
        let rows = sqlx::query("SELECT client_id, blocked_at, reason FROM client_blocks ORDER BY client_id")
            .fetch_all(self.reader())
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|r| Ok((r.try_get("client_id")?, r.try_get("blocked_at")?, r.try_get("reason")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(backend)
    }

    async fn client_approval(
        &self,
        client_id: &str,
        client_name: Option<&str>,
        now: Timestamp,
    ) -> StoreResult<Option<Timestamp>> {
        let row = sqlx::query("SELECT approved_at FROM client_approvals WHERE client_id = $1")
            .bind(client_id)
            .fetch_optional(self.reader())
            .await
            .map_err(backend)?;
        if let Some(r) = row {
            return r.try_get("approved_at").map_err(backend);
        }
        // Who waited a week without an answer is forgotten, so the list makes room.
        sqlx::query("DELETE FROM client_approvals WHERE approved_at IS NULL AND seen_at < $1")
            .bind(now - crate::store::WAITING_CLIENT_TTL_SECS)
            .execute(self.writer())
            .await
            .map_err(backend)?;
        // The cap is checked in the same statement: concurrent strangers cannot pass it
        // together by much (each insert sees the others' committed rows).
        sqlx::query(
            "INSERT INTO client_approvals (client_id, client_name, seen_at, approved_at)
             SELECT $1, $2, $3, NULL
             WHERE (SELECT COUNT(*) FROM client_approvals WHERE approved_at IS NULL) < $4
             ON CONFLICT (client_id) DO NOTHING",
        )
        .bind(client_id)
        .bind(client_name)
        .bind(now)
        .bind(crate::store::MAX_WAITING_CLIENTS)
        .execute(self.writer())
        .await
        .map_err(backend)?;
        Ok(None)
    }

    async fn dismiss_waiting_client(&self, client_id: &str) -> StoreResult<bool> {
        let r = sqlx::query(
            "DELETE FROM client_approvals WHERE client_id = $1 AND approved_at IS NULL",
        )
        .bind(client_id)
        .execute(self.writer())
        .await
        .map_err(backend)?;
        Ok(r.rows_affected() == 1)
    }

    async fn approve_client(&self, client_id: &str, now: Timestamp) -> StoreResult<bool> {
        let r = sqlx::query(
            "INSERT INTO client_approvals (client_id, client_name, seen_at, approved_at)
             VALUES ($1, NULL, $2, $3)
             ON CONFLICT (client_id) DO UPDATE SET approved_at = excluded.approved_at
             WHERE client_approvals.approved_at IS NULL",
        )
        .bind(client_id)
        .bind(now)
        .bind(now)
        .execute(self.writer())
        .await
        .map_err(backend)?;
        Ok(r.rows_affected() == 1)
    }

    async fn client_approvals(&self) -> StoreResult<Vec<crate::store::ClientApproval>> {
        let rows = sqlx::query(
            "SELECT client_id, client_name, seen_at, approved_at FROM client_approvals
             ORDER BY approved_at IS NOT NULL, seen_at DESC, client_id",
        )
        .fetch_all(self.reader())
        .await
        .map_err(backend)?;
        rows.iter()
            .map(|r| {
                Ok(crate::store::ClientApproval {
                    client_id: r.try_get("client_id")?,
                    client_name: r.try_get("client_name")?,
                    seen_at: r.try_get("seen_at")?,
                    approved_at: r.try_get("approved_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(backend)
    }

    async fn setting(&self, name: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT value FROM settings WHERE name = $1")
            .bind(name)
            .fetch_optional(self.reader())
            .await
            .map_err(backend)?;
        row.map(|r| r.try_get("value")).transpose().map_err(backend)
    }

    async fn put_setting(&self, name: &str, value: Option<&str>, now: Timestamp) -> StoreResult<()> {
        let q = match value {
            Some(v) => sqlx::query(
                "INSERT INTO settings (name, value, updated_at) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            )
            .bind(name)
            .bind(v)
            .bind(now),
            None => sqlx::query("DELETE FROM settings WHERE name = $1").bind(name),
        };
        q.execute(self.writer()).await.map_err(backend)?;
        Ok(())
    }

    async fn touch_client(&self, client_id: &str, now: Timestamp) -> StoreResult<()> {
        sqlx::query("UPDATE clients SET last_used_at = $1 WHERE client_id = $2 AND (last_used_at IS NULL OR last_used_at < $3)")
            .bind(now)
            .bind(client_id)
            .bind(now - 60)
            .execute(self.writer())
            .await
            .map_err(backend)?;
        Ok(())
    }
}

#[async_trait]
impl AuthorizationStore for $store {
    async fn put_pending(&self, p: &PendingAuthorization) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO pending_authorizations (id, client_id, redirect_uri, redirect_given, scopes, resource, state,
                code_challenge, csrf_token, binding_hash, user_id, created_at, expires_at, grant_id,
                login_source, login_context)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
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
        .bind(&p.grant_id)
        .bind(&p.login_source)
        .bind(&p.login_context)
        .execute(self.writer())
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn pending(&self, id: &str, now: Timestamp) -> StoreResult<Option<PendingAuthorization>> {
        one_by(self.reader(), "SELECT * FROM pending_authorizations WHERE id = $1 AND expires_at > $2", id, Some(now), pending_from).await
    }

    async fn set_pending_login(
        &self,
        id: &str,
        user_id: &str,
        login_source: &str,
        login_context: Option<&[u8]>,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE pending_authorizations SET user_id = $1, login_source = $2, login_context = $3
             WHERE id = $4",
        )
        .bind(user_id)
        .bind(login_source)
        .bind(login_context)
        .bind(id)
        .execute(self.writer())
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn set_pending_login_state(
        &self,
        id: &str,
        state_hash: &str,
        leg: Option<&[u8]>,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE pending_authorizations SET login_state = $1, login_leg = $2, consented = TRUE
             WHERE id = $3",
        )
            .bind(state_hash)
            .bind(leg)
            .bind(id)
            .execute(self.writer())
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn pending_by_login_state(
        &self,
        state_hash: &str,
        now: Timestamp,
    ) -> StoreResult<Option<PendingAuthorization>> {
        one_by(self.reader(), "SELECT * FROM pending_authorizations WHERE login_state = $1 AND expires_at > $2", state_hash, Some(now), pending_from).await
    }

    async fn rekey_pending(&self, id: &str, state_hash: &str, new_id: &str) -> StoreResult<bool> {
        let r = sqlx::query(
            "UPDATE pending_authorizations SET id = $1, login_state = NULL, login_leg = NULL
             WHERE id = $2 AND login_state = $3",
        )
        .bind(new_id)
        .bind(id)
        .bind(state_hash)
        .execute(self.writer())
        .await
        .map_err(backend)?;
        Ok(r.rows_affected() == 1)
    }

    async fn delete_pending(&self, id: &str) -> StoreResult<bool> {
        let r = sqlx::query("DELETE FROM pending_authorizations WHERE id = $1")
            .bind(id)
            .execute(self.writer())
            .await
            .map_err(backend)?;
        Ok(r.rows_affected() == 1)
    }

    async fn insert_code(&self, c: &AuthCodeRecord) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO auth_codes (code_hash, client_id, user_id, redirect_uri, redirect_given, resource, scopes,
                code_challenge, created_at, expires_at, grant_id, login_source, login_context)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
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
        .bind(&c.grant_id)
        .bind(&c.login_source)
        .bind(&c.login_context)
        .execute(self.writer())
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn code(&self, code_hash: &str) -> StoreResult<Option<AuthCodeRecord>> {
        one_by(self.reader(), "SELECT * FROM auth_codes WHERE code_hash = $1", code_hash, None, code_from).await
    }
}

#[async_trait]
impl GrantStore for $store {
    async fn grant_from_assertion(
        &self,
        assertion_id: &str,
        assertion_expires_at: Timestamp,
        grant: &GrantRecord,
        access: &AccessTokenRecord,
    ) -> StoreResult<bool> {
        let mut tx = self.write_tx().await?;
        let fresh = sqlx::query(
            "INSERT INTO used_assertions (id, expires_at) VALUES ($1, $2)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(assertion_id)
        .bind(assertion_expires_at)
        .execute(&mut *tx)
        .await
        .map_err(backend)?
        .rows_affected()
            == 1;
        if !fresh {
            tx.rollback().await.map_err(backend)?;
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO grants (id, user_id, client_id, resource, scopes, created_at, login_source)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&grant.id)
        .bind(&grant.user_id)
        .bind(&grant.client_id)
        .bind(&grant.resource)
        .bind(join_scopes(&grant.scopes))
        .bind(grant.created_at)
        .bind(&grant.login_source)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        insert_access(&mut *tx, access).await.map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(true)
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
            "UPDATE auth_codes SET consumed_at = $1, grant_id = $2
             WHERE code_hash = $3 AND consumed_at IS NULL AND expires_at > $4",
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
                sqlx::query("SELECT consumed_at, grant_id FROM auth_codes WHERE code_hash = $1")
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
            "INSERT INTO grants (id, user_id, client_id, resource, scopes, created_at, login_source,
                login_context)
             SELECT $1, $2, $3, $4, $5, $6, $7, c.login_context FROM auth_codes c
             WHERE c.code_hash = $8",
        )
        .bind(&grant.id)
        .bind(&grant.user_id)
        .bind(&grant.client_id)
        .bind(&grant.resource)
        .bind(join_scopes(&grant.scopes))
        .bind(grant.created_at)
        .bind(&grant.login_source)
        .bind(code_hash)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        // The context now lives with the grant (and ends with it), not with the used code.
        sqlx::query("UPDATE auth_codes SET login_context = NULL WHERE code_hash = $1")
            .bind(code_hash)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        insert_access(&mut *tx, access).await.map_err(backend)?;
        if let Some(r) = refresh {
            insert_refresh(&mut *tx, r).await.map_err(backend)?;
        }
        sqlx::query("UPDATE clients SET last_used_at = $1 WHERE client_id = $2")
            .bind(now)
            .bind(&grant.client_id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(RedeemOutcome::Issued)
    }

    async fn insert_access_token(&self, t: &AccessTokenRecord) -> StoreResult<()> {
        insert_access(self.writer(), t).await.map_err(backend)
    }

    async fn access_token(
        &self,
        token_hash: &str,
        now: Timestamp,
    ) -> StoreResult<Option<TokenInfo>> {
        let row = sqlx::query(
            "SELECT t.*, u.username AS username, u.email AS email, u.groups AS user_groups,
                g.login_source AS login_source
             FROM access_tokens t
             LEFT JOIN users u ON u.id = t.user_id
             LEFT JOIN grants g ON g.id = t.grant_id
             WHERE t.token_hash = $1 AND t.expires_at > $2
               AND (t.grant_id IS NULL OR g.revoked_at IS NULL)",
        )
        .bind(token_hash)
        .bind(now)
        .fetch_optional(self.reader())
        .await
        .map_err(backend)?;
        match row {
            None => Ok(None),
            Some(r) => Ok(Some(TokenInfo {
                token: access_from(&r).map_err(backend)?,
                login_source: r.try_get("login_source").map_err(backend)?,
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
        one_by(self.reader(), "SELECT * FROM refresh_tokens WHERE token_hash = $1 AND expires_at > $2", token_hash, Some(now), refresh_from).await
    }

    async fn refresh_token_and_grant(
        &self,
        token_hash: &str,
        now: Timestamp,
    ) -> StoreResult<Option<(RefreshTokenRecord, Option<GrantRecord>)>> {
        let sql = format!(
            "SELECT {} FROM refresh_tokens r LEFT JOIN grants g ON g.id = r.grant_id
             WHERE r.token_hash = $1 AND r.expires_at > $2",
            super::rows::REFRESH_AND_GRANT_COLUMNS
        );
        let row = sqlx::query(&sql)
            .bind(token_hash)
            .bind(now)
            .fetch_optional(self.reader())
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
            .rotate_won(old_hash, now, access, refresh, retry_sealed, retry_until)
            .await?;
        if won {
            return Ok(RotateOutcome::Rotated);
        }
        // Lost: read what the winner wrote from one snapshot.
        let mut tx = self.reader().begin().await.map_err(backend)?;
        let row = sqlx::query(
            "SELECT * FROM refresh_tokens WHERE token_hash = $1 AND used_at IS NOT NULL",
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
                        "SELECT COUNT(*) FROM refresh_tokens WHERE token_hash = $1 AND used_at IS NULL",
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

    async fn revoke_access_token(&self, token_hash: &str, now: Timestamp) -> StoreResult<bool> {
        let mut tx = self.write_tx().await?;
        let r = sqlx::query("DELETE FROM access_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let event = StoreEvent::AccessTokenRevoked {
            token_hash: token_hash.to_string(),
        };
        record_event_in(&mut tx, self.bus(), &event, now)
            .await
            .map_err(backend)?;
        commit_and_publish(tx, self.bus(), [event]).await?;
        Ok(r.rows_affected() == 1)
    }

    async fn set_login_context(
        &self,
        grant_id: &str,
        sealed: &[u8],
        was: &[u8],
    ) -> StoreResult<bool> {
        let r = sqlx::query(
            "UPDATE grants SET login_context = $1
             WHERE id = $2 AND revoked_at IS NULL AND login_context = $3",
        )
        .bind(sealed)
        .bind(grant_id)
        .bind(was)
        .execute(self.writer())
        .await
        .map_err(backend)?;
        Ok(r.rows_affected() == 1)
    }

    async fn login_context(&self, grant_id: &str) -> StoreResult<Option<(String, Vec<u8>)>> {
        let row = sqlx::query(
            "SELECT login_source, login_context FROM grants
             WHERE id = $1 AND revoked_at IS NULL AND login_context IS NOT NULL",
        )
        .bind(grant_id)
        .fetch_optional(self.reader())
        .await
        .map_err(backend)?;
        row.map(|r| Ok((r.try_get("login_source")?, r.try_get("login_context")?)))
            .transpose()
            .map_err(backend)
    }

    async fn grant(&self, grant_id: &str) -> StoreResult<Option<GrantRecord>> {
        one_by(self.reader(), "SELECT * FROM grants WHERE id = $1", grant_id, None, grant_from).await
    }

    async fn last_tokens(&self, user_id: &str) -> StoreResult<Vec<(String, Timestamp)>> {
        let rows = sqlx::query(
            // Through the person's grants (indexed by user), then their tokens (indexed by
            // grant): never a scan of every access token.
            "SELECT a.grant_id AS grant_id, MAX(a.created_at) AS last
             FROM grants g JOIN access_tokens a ON a.grant_id = g.id
             WHERE g.user_id = $1 AND g.revoked_at IS NULL GROUP BY a.grant_id",
        )
        .bind(user_id)
        .fetch_all(self.reader())
        .await
        .map_err(backend)?;
        rows.iter()
            .map(|r| Ok((r.try_get("grant_id")?, r.try_get("last")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(backend)
    }

    async fn list_grants(
        &self,
        filter: &GrantFilter,
        include_revoked: bool,
    ) -> StoreResult<Vec<GrantRecord>> {
        let (w, binds) = super::shared::grant_where(filter, 1);
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
        let rows = q.fetch_all(self.reader()).await.map_err(backend)?;
        rows.iter()
            .map(grant_from)
            .collect::<Result<_, _>>()
            .map_err(backend)
    }

    async fn revoke_grants(
        &self,
        filter: &GrantFilter,
        reason: EndReason,
        now: Timestamp,
    ) -> StoreResult<u64> {
        let mut tx = self.write_tx().await?;
        let ended = end_grants_in(&mut tx, self.bus(), filter, reason, now)
            .await
            .map_err(backend)?;
        let n = grants_in(&ended);
        commit_and_publish(tx, self.bus(), ended).await?;
        Ok(n)
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<StoreEvent> {
        self.bus().subscribe()
    }

    fn on_event(&self, listener: super::events::Listener) {
        self.bus().listen(listener);
    }

    fn hear_other_instances(&self) {
        self.follow_other_instances();
    }
}

#[async_trait]
impl ConsentStore for $store {
    async fn has_consent(
        &self,
        user_id: &str,
        client_id: &str,
        redirect_uri: &str,
        resource: &str,
        scopes: &[String],
    ) -> StoreResult<bool> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM consents WHERE user_id = $1 AND client_id = $2 AND redirect_uri = $3 AND resource = $4 AND scopes = $5",
        )
        .bind(user_id)
        .bind(client_id)
        .bind(redirect_uri)
        .bind(resource)
        .bind(canonical_scopes(scopes))
        .fetch_one(self.reader())
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
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(user_id)
        .bind(client_id)
        .bind(redirect_uri)
        .bind(resource)
        .bind(canonical_scopes(scopes))
        .bind(now)
        .execute(self.writer())
        .await
        .map_err(backend)?;
        Ok(())
    }
}

#[async_trait]
impl BrowserSessionStore for $store {
    async fn sessions_of(&self, user_id: &str, now: Timestamp) -> StoreResult<Vec<SessionSummary>> {
        let rows = sqlx::query(
            "SELECT id_hash, login_source, created_at, expires_at FROM browser_sessions
             WHERE user_id = $1 AND expires_at > $2 ORDER BY created_at DESC",
        )
        .bind(user_id)
        .bind(now)
        .fetch_all(self.reader())
        .await
        .map_err(backend)?;
        rows.iter()
            .map(|r| {
                Ok(SessionSummary {
                    id_hash: r.try_get("id_hash")?,
                    login_source: r.try_get("login_source")?,
                    created_at: r.try_get("created_at")?,
                    expires_at: r.try_get("expires_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(backend)
    }

    async fn delete_session_of(&self, user_id: &str, id_hash: &str) -> StoreResult<bool> {
        let r = sqlx::query("DELETE FROM browser_sessions WHERE id_hash = $1 AND user_id = $2")
            .bind(id_hash)
            .bind(user_id)
            .execute(self.writer())
            .await
            .map_err(backend)?;
        Ok(r.rows_affected() == 1)
    }

    async fn put_session(
        &self,
        id_hash: &str,
        session: &BrowserSession,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO browser_sessions (id_hash, user_id, login_source, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id_hash)
        .bind(&session.user_id)
        .bind(&session.login_source)
        .bind(now)
        .bind(expires_at)
        .execute(self.writer())
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn session(&self, id_hash: &str, now: Timestamp) -> StoreResult<Option<BrowserSession>> {
        let row = sqlx::query(
            "SELECT user_id, login_source FROM browser_sessions WHERE id_hash = $1 AND expires_at > $2",
        )
        .bind(id_hash)
        .bind(now)
        .fetch_optional(self.reader())
        .await
        .map_err(backend)?;
        row.map(|r| {
            Ok(BrowserSession {
                user_id: r.try_get("user_id")?,
                login_source: r.try_get("login_source")?,
            })
        })
        .transpose()
        .map_err(backend)
    }

    async fn delete_session(&self, id_hash: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM browser_sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(self.writer())
            .await
            .map_err(backend)?;
        Ok(())
    }
}

#[async_trait]
impl McpSessionStore for $store {
    async fn bind_session(
        &self,
        upstream: &str,
        session_hash: &str,
        owner: &str,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO mcp_sessions (upstream, session_hash, owner, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (upstream, session_hash) DO NOTHING",
        )
        .bind(upstream)
        .bind(session_hash)
        .bind(owner)
        .bind(now)
        .bind(expires_at)
        .execute(self.writer())
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
        let row = sqlx::query("SELECT owner, expires_at FROM mcp_sessions WHERE upstream = $1 AND session_hash = $2 AND expires_at > $3")
            .bind(upstream)
            .bind(session_hash)
            .bind(now)
            .fetch_optional(self.reader())
            .await
            .map_err(backend)?;
        let Some(row) = row else { return Ok(None) };
        let owner: String = row.try_get("owner").map_err(backend)?;
        let current: i64 = row.try_get("expires_at").map_err(backend)?;
        // Extend only once half the lifetime is used, so a busy session is not a write per call.
        if current - now < (expires_at - now) / 2 {
            sqlx::query(
                "UPDATE mcp_sessions SET expires_at = $1 WHERE upstream = $2 AND session_hash = $3",
            )
            .bind(expires_at)
            .bind(upstream)
            .bind(session_hash)
            .execute(self.writer())
            .await
            .map_err(backend)?;
        }
        Ok(Some(owner))
    }

    async fn unbind_session(&self, upstream: &str, session_hash: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM mcp_sessions WHERE upstream = $1 AND session_hash = $2")
            .bind(upstream)
            .bind(session_hash)
            .execute(self.writer())
            .await
            .map_err(backend)?;
        Ok(())
    }
}

#[async_trait]
impl KeyStore for $store {
    async fn signing_keys(&self) -> StoreResult<Vec<(String, Vec<u8>, Timestamp)>> {
        let rows = sqlx::query("SELECT kid, pkcs8, created_at FROM signing_keys WHERE retired_at IS NULL ORDER BY created_at DESC, kid")
            .fetch_all(self.reader())
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
        sqlx::query("INSERT INTO signing_keys (kid, pkcs8, created_at) VALUES ($1, $2, $3)")
            .bind(kid)
            .bind(pkcs8)
            .bind(now)
            .execute(self.writer())
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn retire_signing_key(&self, kid: &str, now: Timestamp) -> StoreResult<bool> {
        let r = sqlx::query(
            "UPDATE signing_keys SET retired_at = $1, pkcs8 = $2 WHERE kid = $3 AND retired_at IS NULL",
        )
        .bind(now)
        .bind(&[] as &[u8])
        .bind(kid)
        .execute(self.writer())
        .await
        .map_err(backend)?;
        Ok(r.rows_affected() == 1)
    }

    async fn reseal_signing_key(&self, kid: &str, current: &[u8], new: &[u8]) -> StoreResult<bool> {
        let r = sqlx::query(
            "UPDATE signing_keys SET pkcs8 = $1 WHERE kid = $2 AND pkcs8 = $3 AND retired_at IS NULL",
        )
        .bind(new)
        .bind(kid)
        .bind(current)
        .execute(self.writer())
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
        let mut tx = self.write_tx().await?;
        lock_in(&mut tx, "mog:signing_keys").await?;
        sqlx::query(
            "INSERT INTO signing_keys (kid, pkcs8, created_at)
             SELECT $1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM signing_keys WHERE retired_at IS NULL)",
        )
        .bind(kid)
        .bind(pkcs8)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }
}

#[async_trait]
impl BrokerStore for $store {
    async fn upstream_client(
        &self,
        upstream: &str,
        issuer: &str,
    ) -> StoreResult<Option<UpstreamClientRecord>> {
        let row = sqlx::query(
            "SELECT client_id, client_secret, method, settings, registered_at
             FROM upstream_clients WHERE upstream = $1 AND issuer = $2",
        )
        .bind(upstream)
        .bind(issuer)
        .fetch_optional(self.reader())
        .await
        .map_err(backend)?;
        Ok(match row {
            None => None,
            Some(r) => Some(UpstreamClientRecord {
                upstream: upstream.to_string(),
                issuer: issuer.to_string(),
                client_id: r.try_get("client_id").map_err(backend)?,
                client_secret: r.try_get("client_secret").map_err(backend)?,
                method: r.try_get("method").map_err(backend)?,
                settings: r.try_get("settings").map_err(backend)?,
                registered_at: r.try_get("registered_at").map_err(backend)?,
            }),
        })
    }

    async fn put_upstream_client(&self, c: &UpstreamClientRecord) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO upstream_clients (upstream, issuer, client_id, client_secret, method, settings, registered_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (upstream, issuer) DO UPDATE SET client_id = excluded.client_id,
               client_secret = excluded.client_secret, method = excluded.method,
               settings = excluded.settings, registered_at = excluded.registered_at",
        )
        .bind(&c.upstream)
        .bind(&c.issuer)
        .bind(&c.client_id)
        .bind(&c.client_secret)
        .bind(&c.method)
        .bind(&c.settings)
        .bind(c.registered_at)
        .execute(self.writer())
        .await
        .map_err(backend)
        .map(|_| ())
    }

    async fn purge_upstream_clients(&self, upstream: &str, settings: &str) -> StoreResult<u64> {
        sqlx::query("DELETE FROM upstream_clients WHERE upstream = $1 AND settings <> $2")
            .bind(upstream)
            .bind(settings)
            .execute(self.writer())
            .await
            .map_err(backend)
            .map(|r| r.rows_affected())
    }

    async fn upstream_token(
        &self,
        user_id: &str,
        upstream: &str,
    ) -> StoreResult<Option<UpstreamTokenRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM upstream_tokens WHERE user_id = $1 AND upstream = $2"
        ))
        .bind(user_id)
        .bind(upstream)
        .fetch_optional(self.reader())
        .await
        .map_err(backend)?;
        row.map(|r| token_row(&r)).transpose()
    }

    async fn put_upstream_token(&self, t: &UpstreamTokenRecord) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO upstream_tokens (user_id, upstream, issuer, sealed, status, scope, expires_at,
               settings, connected_at, updated_at, lease_until)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0)
             ON CONFLICT (user_id, upstream) DO UPDATE SET issuer = excluded.issuer,
               sealed = excluded.sealed, status = excluded.status, scope = excluded.scope,
               expires_at = excluded.expires_at, settings = excluded.settings,
               connected_at = excluded.connected_at, updated_at = excluded.updated_at,
               lease_until = 0",
        )
        .bind(&t.user_id)
        .bind(&t.upstream)
        .bind(&t.issuer)
        .bind(&t.sealed)
        .bind(&t.status)
        .bind(&t.scope)
        .bind(t.expires_at)
        .bind(&t.settings)
        .bind(t.connected_at)
        .bind(t.updated_at)
        .execute(self.writer())
        .await
        .map_err(backend)
        .map(|_| ())
    }

    async fn update_upstream_token(&self, t: &UpstreamTokenRecord) -> StoreResult<bool> {
        sqlx::query(
            "UPDATE upstream_tokens SET issuer = $3, sealed = $4, status = $5, scope = $6,
               expires_at = $7, settings = $8, updated_at = $9, lease_until = 0
             WHERE user_id = $1 AND upstream = $2",
        )
        .bind(&t.user_id)
        .bind(&t.upstream)
        .bind(&t.issuer)
        .bind(&t.sealed)
        .bind(&t.status)
        .bind(&t.scope)
        .bind(t.expires_at)
        .bind(&t.settings)
        .bind(t.updated_at)
        .execute(self.writer())
        .await
        .map_err(backend)
        .map(|r| r.rows_affected() == 1)
    }

    async fn set_upstream_token_status(
        &self,
        user_id: &str,
        upstream: &str,
        status: &str,
        now: Timestamp,
    ) -> StoreResult<bool> {
        sqlx::query(
            "UPDATE upstream_tokens SET status = $3, updated_at = $4, lease_until = 0
             WHERE user_id = $1 AND upstream = $2",
        )
        .bind(user_id)
        .bind(upstream)
        .bind(status)
        .bind(now)
        .execute(self.writer())
        .await
        .map_err(backend)
        .map(|r| r.rows_affected() == 1)
    }

    async fn delete_upstream_token(&self, user_id: &str, upstream: &str) -> StoreResult<bool> {
        sqlx::query("DELETE FROM upstream_tokens WHERE user_id = $1 AND upstream = $2")
            .bind(user_id)
            .bind(upstream)
            .execute(self.writer())
            .await
            .map_err(backend)
            .map(|r| r.rows_affected() == 1)
    }

    async fn upstream_tokens(&self, user_id: Option<&str>) -> StoreResult<Vec<UpstreamTokenRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM upstream_tokens
             WHERE ($1 IS NULL OR user_id = $1) ORDER BY user_id, upstream"
        ))
        .bind(user_id)
        .fetch_all(self.reader())
        .await
        .map_err(backend)?;
        rows.iter().map(token_row).collect()
    }

    async fn purge_upstream_tokens(&self, upstream: &str, settings: &str) -> StoreResult<u64> {
        let mut tx = self.write_tx().await?;
        let n = sqlx::query("DELETE FROM upstream_tokens WHERE upstream = $1 AND settings <> $2")
            .bind(upstream)
            .bind(settings)
            .execute(&mut *tx)
            .await
            .map_err(backend)?
            .rows_affected();
        // A flow begun under the old settings would store a token under the new ones; flows
        // under the current ones (a rolling restart) go on.
        sqlx::query("DELETE FROM upstream_connects WHERE upstream = $1 AND settings <> $2")
            .bind(upstream)
            .bind(settings)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(n)
    }

    async fn lease_upstream_token(
        &self,
        user_id: &str,
        upstream: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> StoreResult<bool> {
        sqlx::query(
            "UPDATE upstream_tokens SET lease_until = $4
             WHERE user_id = $1 AND upstream = $2 AND lease_until <= $3",
        )
        .bind(user_id)
        .bind(upstream)
        .bind(now)
        .bind(until)
        .execute(self.writer())
        .await
        .map_err(backend)
        .map(|r| r.rows_affected() == 1)
    }

    async fn release_upstream_token(&self, user_id: &str, upstream: &str) -> StoreResult<()> {
        sqlx::query("UPDATE upstream_tokens SET lease_until = 0 WHERE user_id = $1 AND upstream = $2")
            .bind(user_id)
            .bind(upstream)
            .execute(self.writer())
            .await
            .map_err(backend)
            .map(|_| ())
    }

    async fn put_upstream_connect(&self, c: &UpstreamConnectRecord) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "DELETE FROM upstream_connects WHERE user_id = $1 AND upstream = $2
               AND state_hash NOT IN (SELECT state_hash FROM upstream_connects
                 WHERE user_id = $1 AND upstream = $2 ORDER BY expires_at DESC LIMIT 4)",
        )
        .bind(&c.user_id)
        .bind(&c.upstream)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        sqlx::query(
            "INSERT INTO upstream_connects (state_hash, user_id, session_hash, upstream, issuer, sealed, settings, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&c.state_hash)
        .bind(&c.user_id)
        .bind(&c.session_hash)
        .bind(&c.upstream)
        .bind(&c.issuer)
        .bind(&c.sealed)
        .bind(&c.settings)
        .bind(c.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn take_upstream_connect(
        &self,
        state_hash: &str,
        now: Timestamp,
    ) -> StoreResult<Option<UpstreamConnectRecord>> {
        let row = sqlx::query(
            "DELETE FROM upstream_connects WHERE state_hash = $1
             RETURNING user_id, session_hash, upstream, issuer, sealed, settings, expires_at",
        )
        .bind(state_hash)
        .fetch_optional(self.writer())
        .await
        .map_err(backend)?;
        let Some(r) = row else { return Ok(None) };
        let expires_at: Timestamp = r.try_get("expires_at").map_err(backend)?;
        if expires_at <= now {
            return Ok(None);
        }
        Ok(Some(UpstreamConnectRecord {
            state_hash: state_hash.to_string(),
            user_id: r.try_get("user_id").map_err(backend)?,
            session_hash: r.try_get("session_hash").map_err(backend)?,
            upstream: r.try_get("upstream").map_err(backend)?,
            issuer: r.try_get("issuer").map_err(backend)?,
            sealed: r.try_get("sealed").map_err(backend)?,
            settings: r.try_get("settings").map_err(backend)?,
            expires_at,
        }))
    }
}

#[async_trait]
impl DeviceStore for $store {
    async fn insert_device(&self, d: &DeviceAuthorization) -> StoreResult<bool> {
        let mut tx = self.write_tx().await?;
        // An expired one may still hold the user code until the sweep: it gives way.
        // (An approved one stays: its code is redeemed on its own clock.)
        sqlx::query(
            "DELETE FROM device_authorizations
             WHERE user_code = $1 AND expires_at <= $2 AND status <> 'approved'",
        )
            .bind(&d.user_code)
            .bind(d.created_at)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let inserted = sqlx::query(
            "INSERT INTO device_authorizations (device_code_hash, user_code, client_id, scopes,
                resource, created_at, expires_at, interval_secs, polled_at, status, user_id, code_hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9, NULL, NULL)
             ON CONFLICT DO NOTHING",
        )
        .bind(&d.device_code_hash)
        .bind(&d.user_code)
        .bind(&d.client_id)
        .bind(join_scopes(&d.scopes))
        .bind(&d.resource)
        .bind(d.created_at)
        .bind(d.expires_at)
        .bind(d.interval)
        .bind(d.status.as_str())
        .execute(&mut *tx)
        .await
        .map_err(backend)?
        .rows_affected()
            == 1;
        tx.commit().await.map_err(backend)?;
        Ok(inserted)
    }

    async fn device(&self, device_code_hash: &str) -> StoreResult<Option<DeviceAuthorization>> {
        one_by(
            self.reader(),
            "SELECT * FROM device_authorizations WHERE device_code_hash = $1",
            device_code_hash,
            None,
            device_from,
        )
        .await
    }

    async fn pending_device(
        &self,
        user_code: &str,
        now: Timestamp,
    ) -> StoreResult<Option<DeviceAuthorization>> {
        one_by(
            self.reader(),
            "SELECT * FROM device_authorizations
             WHERE user_code = $1 AND expires_at > $2 AND status = 'pending'",
            user_code,
            Some(now),
            device_from,
        )
        .await
    }

    async fn approve_device(
        &self,
        user_code: &str,
        now: Timestamp,
        code: &AuthCodeRecord,
    ) -> StoreResult<bool> {
        let mut tx = self.write_tx().await?;
        let won = sqlx::query(
            "UPDATE device_authorizations SET status = 'approved', user_id = $1, code_hash = $2
             WHERE user_code = $3 AND status = 'pending' AND expires_at > $4",
        )
        .bind(&code.user_id)
        .bind(&code.code_hash)
        .bind(user_code)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(backend)?
        .rows_affected()
            == 1;
        if !won {
            tx.rollback().await.map_err(backend)?;
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO auth_codes (code_hash, client_id, user_id, redirect_uri, redirect_given, resource, scopes,
                code_challenge, created_at, expires_at, grant_id, login_source, login_context)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(&code.code_hash)
        .bind(&code.client_id)
        .bind(&code.user_id)
        .bind(&code.redirect_uri)
        .bind(code.redirect_given)
        .bind(&code.resource)
        .bind(join_scopes(&code.scopes))
        .bind(&code.code_challenge)
        .bind(code.created_at)
        .bind(code.expires_at)
        .bind(&code.grant_id)
        .bind(&code.login_source)
        .bind(&code.login_context)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(true)
    }

    async fn deny_device(&self, user_code: &str, now: Timestamp, user_id: &str) -> StoreResult<bool> {
        let r = sqlx::query(
            "UPDATE device_authorizations SET status = 'denied', user_id = $1
             WHERE user_code = $2 AND status = 'pending' AND expires_at > $3",
        )
        .bind(user_id)
        .bind(user_code)
        .bind(now)
        .execute(self.writer())
        .await
        .map_err(backend)?;
        Ok(r.rows_affected() == 1)
    }

    async fn device_polled(
        &self,
        device_code_hash: &str,
        now: Timestamp,
        interval: i64,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE device_authorizations SET polled_at = $1, interval_secs = $2
             WHERE device_code_hash = $3",
        )
        .bind(now)
        .bind(interval)
        .bind(device_code_hash)
        .execute(self.writer())
        .await
        .map_err(backend)?;
        Ok(())
    }
}

#[async_trait]
impl ThrottleStore for $store {
    async fn hit(&self, key: &str, window_start: Timestamp) -> StoreResult<i64> {
        sqlx::query_scalar(
            "INSERT INTO counters (key, window_start, count) VALUES ($1, $2, 1)
             ON CONFLICT (key, window_start) DO UPDATE SET count = counters.count + 1
             RETURNING count",
        )
        .bind(key)
        .bind(window_start)
        .fetch_one(self.writer())
        .await
        .map_err(backend)
    }

    async fn hits(&self, key: &str, window_start: Timestamp) -> StoreResult<i64> {
        let n: Option<i64> =
            sqlx::query_scalar("SELECT count FROM counters WHERE key = $1 AND window_start = $2")
                .bind(key)
                .bind(window_start)
                .fetch_optional(self.reader())
                .await
                .map_err(backend)?;
        Ok(n.unwrap_or(0))
    }

    async fn unhit(&self, key: &str, window_start: Timestamp) -> StoreResult<()> {
        sqlx::query(
            "UPDATE counters SET count = count - 1 WHERE key = $1 AND window_start = $2 AND count > 0",
        )
        .bind(key)
        .bind(window_start)
        .execute(self.writer())
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn clear_hits(&self, key: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM counters WHERE key = $1")
            .bind(key)
            .execute(self.writer())
            .await
            .map_err(backend)?;
        Ok(())
    }
}

#[async_trait]
impl MaintenanceStore for $store {
    async fn schema(&self) -> StoreResult<Vec<(String, Vec<String>)>> {
        schema_of(self.reader()).await.map_err(backend)
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(self.reader())
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn count_rows(&self, table: &copy::Table) -> StoreResult<i64> {
        count_rows_of(self.reader(), table).await.map_err(backend)
    }

    async fn export_rows(&self, table: &copy::Table) -> StoreResult<Vec<copy::Row>> {
        export_rows_of(self.reader(), table).await.map_err(backend)
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
        grants_born_before: Option<Timestamp>,
    ) -> StoreResult<SweepCounts> {
        let mut tx = self.write_tx().await?;
        // Grants first, while their expired tokens still show when they ran out. A bounded
        // number per sweep keeps the transaction short; the next sweep takes the rest.
        let mut ended = Vec::new();
        let mut to_end: Vec<(String, EndReason)> = Vec::new();
        if let Some(born_before) = grants_born_before {
            let ids: Vec<String> = sqlx::query_scalar(
                "SELECT id FROM grants WHERE revoked_at IS NULL AND created_at <= $1 LIMIT 500",
            )
            .bind(born_before)
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
            to_end.extend(ids.into_iter().map(|id| (id, EndReason::MaxLifetime)));
        }
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM grants g WHERE revoked_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM refresh_tokens r WHERE r.grant_id = g.id AND r.expires_at > $1)
               AND NOT EXISTS (SELECT 1 FROM access_tokens a WHERE a.grant_id = g.id AND a.expires_at > $1)
             LIMIT 500",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
        to_end.extend(ids.into_iter().map(|id| (id, EndReason::Expired)));
        for (id, reason) in to_end {
            let filter = GrantFilter {
                grant_id: Some(id),
                ..Default::default()
            };
            ended.extend(
                end_grants_in(&mut tx, self.bus(), &filter, reason, now)
                    .await
                    .map_err(backend)?,
            );
        }
        let grants_ended = grants_in(&ended);
        let mut run = async |sql: &str, bind: i64| -> StoreResult<u64> {
            Ok(sqlx::query(sql)
                .bind(bind)
                .execute(&mut *tx)
                .await
                .map_err(backend)?
                .rows_affected())
        };
        // Codes stay a while after use so a replay is still recognised (and revokes).
        let codes = run("DELETE FROM auth_codes WHERE expires_at < $1", now - 3600).await?;
        let access_tokens = run("DELETE FROM access_tokens WHERE expires_at <= $1", now).await?;
        let refresh_tokens = run("DELETE FROM refresh_tokens WHERE expires_at <= $1", now).await?;
        let pending = run(
            "DELETE FROM pending_authorizations WHERE expires_at <= $1",
            now,
        )
        .await?;
        let sessions = run("DELETE FROM browser_sessions WHERE expires_at <= $1", now).await?;
        // Counter windows are at most a day long.
        let counters = run("DELETE FROM counters WHERE window_start < $1", now - 86_400).await?;
        let mcp_sessions = run("DELETE FROM mcp_sessions WHERE expires_at <= $1", now).await?;
        // An expired assertion is refused for its expiry: its `jti` need not be kept.
        run("DELETE FROM used_assertions WHERE expires_at <= $1", now).await?;
        run("DELETE FROM upstream_connects WHERE expires_at <= $1", now).await?;
        // Kept as long as their codes, so a device code polled again after its tokens were
        // issued is still recognised (and revokes them).
        run(
            "DELETE FROM device_authorizations WHERE expires_at < $1",
            now - 3600,
        )
        .await?;
        let clients = run(
            "DELETE FROM clients WHERE last_used_at IS NULL AND created_at < $1
               AND NOT EXISTS (SELECT 1 FROM grants g WHERE g.client_id = clients.client_id)",
            unused_client_cutoff,
        )
        .await?;
        // Other instances poll or are notified within seconds; an hour is ample.
        let events = run("DELETE FROM store_events WHERE created_at < $1", now - 3600).await?;
        commit_and_publish(tx, self.bus(), ended).await?;
        Ok(SweepCounts {
            events,
            grants_ended,
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

    };
}

pub(crate) use shared_store;
