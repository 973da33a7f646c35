//! Turning rows into records: the same for every engine, written once as a macro each
//! engine instantiates with its own row type (sqlx rows of different databases share no
//! trait that carries the column types).

macro_rules! row_mappers {
    ($row:ty) => {
        fn user_from(r: &$row) -> Result<UserRecord, sqlx::Error> {
            Ok(UserRecord {
                id: r.try_get("id")?,
                username: r.try_get("username")?,
                password_hash: r.try_get("password_hash")?,
                created_at: r.try_get("created_at")?,
                email: r.try_get("email")?,
                groups: split_scopes(&r.try_get::<String, _>("groups")?),
                disabled_at: r.try_get("disabled_at")?,
            })
        }

        fn client_from(r: &$row) -> Result<ClientRecord, sqlx::Error> {
            let redirect: String = r.try_get("redirect_uris")?;
            let metadata: String = r.try_get("metadata")?;
            let scope: Option<String> = r.try_get("scope")?;
            let grant_types: String = r.try_get("grant_types")?;
            Ok(ClientRecord {
                client_id: r.try_get("client_id")?,
                secret_hash: r.try_get("secret_hash")?,
                client_name: r.try_get("client_name")?,
                redirect_uris: serde_json::from_str(&redirect).unwrap_or_default(),
                token_endpoint_auth_method: r.try_get("token_endpoint_auth_method")?,
                grant_types: split_scopes(&grant_types),
                scope: scope.as_deref().map(split_scopes),
                metadata: serde_json::from_str(&metadata).unwrap_or(serde_json::Value::Null),
                registered_ip: r.try_get("registered_ip")?,
                created_at: r.try_get("created_at")?,
                last_used_at: r.try_get("last_used_at")?,
            })
        }

        fn pending_from(r: &$row) -> Result<PendingAuthorization, sqlx::Error> {
            let scopes: String = r.try_get("scopes")?;
            Ok(PendingAuthorization {
                id: r.try_get("id")?,
                client_id: r.try_get("client_id")?,
                redirect_uri: r.try_get("redirect_uri")?,
                redirect_given: r.try_get("redirect_given")?,
                scopes: split_scopes(&scopes),
                resource: r.try_get("resource")?,
                state: r.try_get("state")?,
                code_challenge: r.try_get("code_challenge")?,
                csrf_token: r.try_get("csrf_token")?,
                binding_hash: r.try_get("binding_hash")?,
                user_id: r.try_get("user_id")?,
                created_at: r.try_get("created_at")?,
                expires_at: r.try_get("expires_at")?,
                grant_id: r.try_get("grant_id")?,
                login_source: r.try_get("login_source")?,
                login_context: r.try_get("login_context")?,
                login_state: r.try_get("login_state")?,
                login_leg: r.try_get("login_leg")?,
                consented: r.try_get("consented")?,
            })
        }

        fn code_from(r: &$row) -> Result<AuthCodeRecord, sqlx::Error> {
            let scopes: String = r.try_get("scopes")?;
            Ok(AuthCodeRecord {
                code_hash: r.try_get("code_hash")?,
                client_id: r.try_get("client_id")?,
                user_id: r.try_get("user_id")?,
                redirect_uri: r.try_get("redirect_uri")?,
                redirect_given: r.try_get("redirect_given")?,
                resource: r.try_get("resource")?,
                scopes: split_scopes(&scopes),
                code_challenge: r.try_get("code_challenge")?,
                created_at: r.try_get("created_at")?,
                expires_at: r.try_get("expires_at")?,
                consumed_at: r.try_get("consumed_at")?,
                grant_id: r.try_get("grant_id")?,
                login_source: r.try_get("login_source")?,
                login_context: r.try_get("login_context")?,
            })
        }

        fn device_from(r: &$row) -> Result<DeviceAuthorization, sqlx::Error> {
            let scopes: String = r.try_get("scopes")?;
            let status: String = r.try_get("status")?;
            Ok(DeviceAuthorization {
                device_code_hash: r.try_get("device_code_hash")?,
                user_code: r.try_get("user_code")?,
                client_id: r.try_get("client_id")?,
                scopes: split_scopes(&scopes),
                resource: r.try_get("resource")?,
                created_at: r.try_get("created_at")?,
                expires_at: r.try_get("expires_at")?,
                interval: r.try_get("interval_secs")?,
                polled_at: r.try_get("polled_at")?,
                status: DeviceStatus::parse(&status).ok_or_else(|| {
                    sqlx::Error::Decode(format!("device status `{status}`").into())
                })?,
                user_id: r.try_get("user_id")?,
                code_hash: r.try_get("code_hash")?,
            })
        }

        fn grant_from(r: &$row) -> Result<GrantRecord, sqlx::Error> {
            let scopes: String = r.try_get("scopes")?;
            Ok(GrantRecord {
                id: r.try_get("id")?,
                user_id: r.try_get("user_id")?,
                client_id: r.try_get("client_id")?,
                resource: r.try_get("resource")?,
                scopes: split_scopes(&scopes),
                created_at: r.try_get("created_at")?,
                revoked_at: r.try_get("revoked_at")?,
                ended_reason: r
                    .try_get::<Option<String>, _>("ended_reason")?
                    .as_deref()
                    .and_then(EndReason::parse),
                login_source: r.try_get("login_source")?,
            })
        }

        fn access_from(r: &$row) -> Result<AccessTokenRecord, sqlx::Error> {
            let scopes: String = r.try_get("scopes")?;
            Ok(AccessTokenRecord {
                token_hash: r.try_get("token_hash")?,
                grant_id: r.try_get("grant_id")?,
                client_id: r.try_get("client_id")?,
                user_id: r.try_get("user_id")?,
                resource: r.try_get("resource")?,
                scopes: split_scopes(&scopes),
                created_at: r.try_get("created_at")?,
                expires_at: r.try_get("expires_at")?,
            })
        }

        fn refresh_from(r: &$row) -> Result<RefreshTokenRecord, sqlx::Error> {
            Ok(RefreshTokenRecord {
                token_hash: r.try_get("token_hash")?,
                grant_id: r.try_get("grant_id")?,
                client_id: r.try_get("client_id")?,
                created_at: r.try_get("created_at")?,
                expires_at: r.try_get("expires_at")?,
                used_at: r.try_get("used_at")?,
                successor_hash: r.try_get("successor_hash")?,
                retry_sealed: r.try_get("retry_sealed")?,
                retry_until: r.try_get("retry_until")?,
            })
        }

        /// A refresh token row joined with its grant's columns, which come prefixed `g_`.
        fn refresh_and_grant_from(
            r: &$row,
        ) -> Result<(RefreshTokenRecord, Option<GrantRecord>), sqlx::Error> {
            let refresh = refresh_from(r)?;
            let grant = match r.try_get::<Option<String>, _>("g_id")? {
                None => None,
                Some(id) => Some(GrantRecord {
                    id,
                    user_id: r.try_get("g_user_id")?,
                    client_id: r.try_get("g_client_id")?,
                    resource: r.try_get("g_resource")?,
                    scopes: split_scopes(&r.try_get::<String, _>("g_scopes")?),
                    created_at: r.try_get("g_created_at")?,
                    revoked_at: r.try_get("g_revoked_at")?,
                    ended_reason: r
                        .try_get::<Option<String>, _>("g_ended_reason")?
                        .as_deref()
                        .and_then(EndReason::parse),
                    login_source: r.try_get("g_login_source")?,
                }),
            };
            Ok((refresh, grant))
        }
    };
}

/// The columns of `refresh_and_grant_from`, for `FROM refresh_tokens r LEFT JOIN grants g`.
pub(crate) const REFRESH_AND_GRANT_COLUMNS: &str = "r.*, g.id AS g_id, g.user_id AS g_user_id, \
     g.client_id AS g_client_id, g.resource AS g_resource, g.scopes AS g_scopes, \
     g.created_at AS g_created_at, g.revoked_at AS g_revoked_at, g.ended_reason AS g_ended_reason, g.login_source AS g_login_source";

pub(crate) use row_mappers;

/// `store copy`'s side of an engine: read and write whole tables, typed by the column kinds
/// of [`super::copy::TABLES`].
macro_rules! table_copy {
    ($db:ty, $pool:ty, $schema_sql:expr) => {
        async fn schema_of(pool: &$pool) -> Result<Vec<(String, Vec<String>)>, sqlx::Error> {
            let rows = sqlx::query($schema_sql).fetch_all(pool).await?;
            let mut out: Vec<(String, Vec<String>)> = Vec::new();
            for r in rows {
                let (table, column): (String, String) = (r.try_get(0)?, r.try_get(1)?);
                match out.iter_mut().find(|(t, _)| *t == table) {
                    Some((_, cols)) => cols.push(column),
                    None => out.push((table, vec![column])),
                }
            }
            Ok(out)
        }

        async fn count_rows_of(pool: &$pool, t: &super::copy::Table) -> Result<i64, sqlx::Error> {
            sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {}", t.name))
                .fetch_one(pool)
                .await
        }

        async fn export_rows_of(
            pool: &$pool,
            t: &super::copy::Table,
        ) -> Result<Vec<super::copy::Row>, sqlx::Error> {
            use super::copy::{Cell, Kind};
            let rows = sqlx::query(&t.select_sql()).fetch_all(pool).await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let mut cells = Vec::with_capacity(t.columns.len());
                for (i, (_, kind)) in t.columns.iter().enumerate() {
                    cells.push(match kind {
                        Kind::Text => Cell::Text(r.try_get(i)?),
                        Kind::Int => Cell::Int(r.try_get(i)?),
                        Kind::Bool => Cell::Bool(r.try_get(i)?),
                        Kind::Bytes => Cell::Bytes(r.try_get(i)?),
                    });
                }
                out.push(cells);
            }
            Ok(out)
        }

        async fn import_rows_into(
            tx: &mut sqlx::Transaction<'static, $db>,
            data: &[(&super::copy::Table, Vec<super::copy::Row>)],
        ) -> Result<(), sqlx::Error> {
            use super::copy::Cell;
            for (t, rows) in data {
                let sql = t.insert_sql();
                for row in rows {
                    let mut q = sqlx::query(&sql);
                    for cell in row {
                        q = match cell {
                            Cell::Text(v) => q.bind(v.as_deref()),
                            Cell::Int(v) => q.bind(*v),
                            Cell::Bool(v) => q.bind(*v),
                            Cell::Bytes(v) => q.bind(v.as_deref()),
                        };
                    }
                    q.execute(&mut **tx).await?;
                }
            }
            Ok(())
        }
    };
}

pub(crate) use table_copy;
