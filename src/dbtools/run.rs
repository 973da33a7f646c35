//! Running statements as the person: one statement per call, in a transaction the database
//! keeps read-only (or, for engines that cannot, after [`super::guard`] accepted it), with a
//! statement timeout, a row limit and a size cap. Values come back as the database writes
//! them as text (its simple query protocol), turned into JSON numbers, booleans and objects
//! where the column's type says so.

use std::time::Duration;

use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};
use sqlx::{Column, Either, Executor, Row, TypeInfo, ValueRef};

use super::config::{Engine, ReadOnly, ToolLimits};
use super::connect::{ConnectError, Pool, classify};

/// Why a statement gave no result.
#[derive(Debug)]
pub enum RunError {
    /// The database's own error: the person's statement, their rights, a timeout it
    /// enforced. Its message goes back to them as is.
    Sql(String),
    /// Refused before it reached the database (read-only, not one statement).
    NotAllowed(String),
    /// The gateway stopped waiting.
    Timeout(Duration),
    /// A new connection was refused: the credential is no longer good.
    Refused(String),
    Unavailable(String),
}

/// What a statement returned.
#[derive(Debug, Default)]
pub struct Output {
    pub columns: Vec<(String, String)>,
    pub rows: Vec<Vec<Value>>,
    /// Why rows are missing: `row_limit` or `max_result_bytes`.
    pub truncated: Option<&'static str>,
    pub rows_affected: Option<u64>,
}

impl Output {
    pub fn to_json(&self) -> Value {
        json!({
            "columns": self.columns.iter().map(|(n, t)| json!({"name": n, "type": t})).collect::<Vec<_>>(),
            "rows": self.rows,
            "row_count": self.rows.len(),
            "truncated": self.truncated.is_some(),
            "truncated_by": self.truncated,
            "rows_affected": self.rows_affected,
        })
    }
}

/// Extra time past the statement timeout before the gateway gives up on the database
/// enforcing it (and closes the connection).
const GRACE: Duration = Duration::from_secs(2);
/// How long ending a transaction may take (after a truncated result it reads the rest).
const END_TIMEOUT: Duration = Duration::from_secs(2);

fn sql_error(e: sqlx::Error) -> RunError {
    match e {
        sqlx::Error::Database(d) => RunError::Sql(d.message().to_string()),
        other => RunError::Unavailable(other.to_string()),
    }
}

fn acquire_error(e: sqlx::Error) -> RunError {
    match classify(e) {
        ConnectError::Refused(m) => RunError::Refused(m),
        ConnectError::Unavailable(m) | ConnectError::TimedOut(m) => RunError::Unavailable(m),
        ConnectError::AcceptsAnyPassword => {
            RunError::Unavailable("the database does not check passwords".into())
        }
    }
}

/// What is run before and after the statement on each engine.
fn brackets(engine: Engine, write: bool, timeout: Duration) -> (String, Option<&'static str>) {
    let ms = timeout.as_millis();
    let secs = timeout.as_secs().max(1);
    let end = if write { "COMMIT" } else { "ROLLBACK" };
    match (engine, write) {
        (Engine::Postgres, false) => (
            format!("BEGIN READ ONLY; SET LOCAL statement_timeout = {ms}"),
            Some(end),
        ),
        (Engine::Postgres, true) => (
            format!("BEGIN; SET LOCAL statement_timeout = {ms}"),
            Some(end),
        ),
        // The session is read-only too: DDL commits the transaction it is in before it
        // runs, and would then run outside it.
        (Engine::Mysql | Engine::Mariadb, _) => {
            let timeout = if engine == Engine::Mysql {
                format!("max_execution_time = {ms}")
            } else {
                format!("max_statement_time = {secs}")
            };
            let (session, start) = if write {
                ("READ WRITE", "START TRANSACTION")
            } else {
                ("READ ONLY", "START TRANSACTION READ ONLY")
            };
            (
                format!(
                    "SET SESSION TRANSACTION {session}; SET SESSION {timeout}; {start}; SELECT CONNECTION_ID()"
                ),
                Some(end),
            )
        }
        (Engine::Tidb, _) => (
            format!("SET SESSION max_execution_time = {ms}; SELECT CONNECTION_ID()"),
            None,
        ),
        (Engine::Doris | Engine::Starrocks, _) => (
            format!("SET query_timeout = {secs}; SELECT CONNECTION_ID()"),
            None,
        ),
    }
}

/// Runs one statement. `write`: the upstream is writable and this is `query`; `explain`:
/// the statement's plan is wanted (always read-only).
pub async fn statement(
    pool: &Pool,
    engine: Engine,
    sql: &str,
    write: bool,
    explain: bool,
    max_rows: usize,
    limits: &ToolLimits,
) -> Result<Output, RunError> {
    let write = write && !explain;
    // Engines that cannot keep a transaction read-only get the parser's rendering of one
    // read statement; the others get the text as it came, checked to be one statement by
    // the database itself (preparing it).
    let parsed = engine.read_only() == ReadOnly::Parsed;
    let text = match (parsed, write, explain) {
        (true, false, false) => super::guard::single_read(sql).map_err(RunError::NotAllowed)?,
        (true, false, true) => super::guard::explain_read(sql).map_err(RunError::NotAllowed)?,
        (true, true, false) => super::guard::single_statement(sql).map_err(RunError::NotAllowed)?,
        (_, _, true) => format!("EXPLAIN {sql}"),
        (_, _, false) => sql.to_string(),
    };
    if text.trim().is_empty() {
        return Err(RunError::NotAllowed("there is no statement".into()));
    }
    let (begin, end) = brackets(engine, write, limits.statement_timeout);
    let prepare = !parsed;
    let size = Limits {
        rows: max_rows,
        bytes: limits.max_result_bytes,
    };
    match pool {
        Pool::Postgres(p) => {
            let mut conn = Held::new(p.acquire().await.map_err(acquire_error)?);
            let outcome = bracketed::<sqlx::Postgres, _>(
                &mut conn,
                &begin,
                end,
                &text,
                prepare,
                size,
                limits.statement_timeout,
            )
            .await;
            // The server's own statement_timeout ends a statement; the socket closing
            // ends the rest.
            conn.done = !outcome.close;
            outcome.result
        }
        Pool::Mysql(p) => {
            let mut conn = Held::new(p.acquire().await.map_err(acquire_error)?);
            let outcome = bracketed::<sqlx::MySql, _>(
                &mut conn,
                &begin,
                end,
                &text,
                prepare,
                size,
                limits.statement_timeout,
            )
            .await;
            conn.done = !outcome.close;
            drop(conn);
            // A MySQL server goes on running a statement whose client went away (and
            // `max_execution_time` covers top-level SELECTs only): it is killed.
            if let (true, Some(thread)) = (outcome.timed_out, outcome.thread) {
                let p = p.clone();
                tokio::spawn(async move {
                    let sql = format!("KILL QUERY {thread}");
                    let kill = p.execute(sqlx::raw_sql(&sql));
                    if let Ok(Err(e)) = tokio::time::timeout(END_TIMEOUT, kill).await {
                        tracing::warn!(error = %e, "a timed-out statement could not be killed");
                    }
                });
            }
            outcome.result
        }
    }
}

/// A pooled connection that is closed, not handed to the next caller, unless the call
/// finished cleanly: a call cancelled midway (its client went away) leaves a transaction
/// open on it, which the next call's statement would otherwise join — and on a writable
/// upstream, commit.
struct Held<DB: sqlx::Database> {
    conn: sqlx::pool::PoolConnection<DB>,
    done: bool,
}

impl<DB: sqlx::Database> Held<DB> {
    fn new(conn: sqlx::pool::PoolConnection<DB>) -> Self {
        Self { conn, done: false }
    }
}

impl<DB: sqlx::Database> Drop for Held<DB> {
    fn drop(&mut self) {
        if !self.done {
            self.conn.close_on_drop();
        }
    }
}

impl<DB: sqlx::Database> std::ops::Deref for Held<DB> {
    type Target = DB::Connection;
    fn deref(&self) -> &DB::Connection {
        &self.conn
    }
}

impl<DB: sqlx::Database> std::ops::DerefMut for Held<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        &mut self.conn
    }
}

#[derive(Clone, Copy)]
struct Limits {
    rows: usize,
    bytes: usize,
}

struct Outcome {
    result: Result<Output, RunError>,
    /// The connection is in a state nobody should inherit.
    close: bool,
    /// The gateway stopped waiting for the statement.
    timed_out: bool,
    /// The server's id of the connection (MySQL protocol), to kill what it still runs.
    thread: Option<u64>,
}

/// The raw text of a cell, however each driver gives it.
trait RawCells: Row {
    fn raw(&self, i: usize) -> Option<&[u8]>;
}

impl RawCells for sqlx::postgres::PgRow {
    fn raw(&self, i: usize) -> Option<&[u8]> {
        let v = self.try_get_raw(i).ok()?;
        if v.is_null() {
            return None;
        }
        v.as_bytes().ok()
    }
}

impl RawCells for sqlx::mysql::MySqlRow {
    fn raw(&self, i: usize) -> Option<&[u8]> {
        self.try_get_unchecked::<Option<&[u8]>, _>(i).ok().flatten()
    }
}

trait Affected {
    fn affected(&self) -> u64;
}

impl Affected for sqlx::postgres::PgQueryResult {
    fn affected(&self) -> u64 {
        self.rows_affected()
    }
}

impl Affected for sqlx::mysql::MySqlQueryResult {
    fn affected(&self) -> u64 {
        self.rows_affected()
    }
}

async fn bracketed<DB, C>(
    conn: &mut C,
    begin: &str,
    end: Option<&'static str>,
    text: &str,
    prepare: bool,
    size: Limits,
    timeout: Duration,
) -> Outcome
where
    DB: sqlx::Database,
    DB::Row: RawCells,
    DB::QueryResult: Affected,
    C: std::ops::DerefMut<Target = DB::Connection>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let fail = |result: RunError, thread: Option<u64>| Outcome {
        timed_out: matches!(result, RunError::Timeout(_)),
        result: Err(result),
        close: true,
        thread,
    };
    let thread = match tokio::time::timeout(
        timeout + GRACE,
        (&mut **conn).fetch_all(sqlx::raw_sql(begin)),
    )
    .await
    {
        Ok(Ok(rows)) => rows
            .last()
            .and_then(|r| r.raw(0))
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|t| t.parse::<u64>().ok()),
        // Without a transaction, the bracket only sets the engine's statement timeout: a
        // server that does not know the setting still gets the gateway's own timer.
        Ok(Err(sqlx::Error::Database(d))) if end.is_none() => {
            tracing::warn!(error = %d.message(), "the database did not take the statement timeout; the gateway's own timer applies");
            None
        }
        Ok(Err(e)) => return fail(sql_error(e), None),
        Err(_) => return fail(RunError::Timeout(timeout), None),
    };
    let ran = tokio::time::timeout(timeout + GRACE, async {
        let columns = if prepare {
            // The database's own parser: more than one statement is refused here.
            let stmt = (&mut **conn).prepare(text).await.map_err(sql_error)?;
            sqlx::Statement::columns(&stmt)
                .iter()
                .map(|c| (c.name().to_string(), c.type_info().name().to_string()))
                .collect()
        } else {
            Vec::new()
        };
        let stream = (&mut **conn).fetch_many(sqlx::raw_sql(text));
        collect::<DB, _>(stream, columns, size).await
    })
    .await;
    let (result, mut close) = match ran {
        Ok(r) => {
            // Without a transaction to end, nothing drains what a truncated result left
            // unread in time: the connection goes instead.
            let close = matches!(r, Err(RunError::Unavailable(_)))
                || (end.is_none() && matches!(&r, Ok(o) if o.truncated.is_some()));
            (r, close)
        }
        Err(_) => return fail(RunError::Timeout(timeout), thread),
    };
    if let Some(end) = end
        && !close
    {
        let end = if result.is_ok() { end } else { "ROLLBACK" };
        match tokio::time::timeout(END_TIMEOUT, (&mut **conn).execute(sqlx::raw_sql(end))).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                close = true;
                if result.is_ok() {
                    return fail(sql_error(e), thread);
                }
            }
            Err(_) => close = true,
        }
    }
    Outcome {
        result,
        close,
        timed_out: false,
        thread,
    }
}

async fn collect<DB, S>(
    mut stream: S,
    mut columns: Vec<(String, String)>,
    size: Limits,
) -> Result<Output, RunError>
where
    DB: sqlx::Database,
    DB::Row: RawCells,
    DB::QueryResult: Affected,
    S: Stream<Item = Result<Either<DB::QueryResult, DB::Row>, sqlx::Error>> + Unpin,
{
    let mut out = Output::default();
    let mut bytes = 0usize;
    while let Some(item) = stream.next().await {
        match item.map_err(sql_error)? {
            Either::Left(done) => {
                out.rows_affected = Some(out.rows_affected.unwrap_or(0) + done.affected());
            }
            Either::Right(row) => {
                if columns.is_empty() {
                    columns = row
                        .columns()
                        .iter()
                        .map(|c| (c.name().to_string(), c.type_info().name().to_string()))
                        .collect();
                }
                if out.rows.len() >= size.rows {
                    out.truncated = Some("row_limit");
                    break;
                }
                // Measured before anything is made of it: a huge cell is not copied.
                let raw: usize = (0..row.len())
                    .map(|i| row.raw(i).map_or(4, <[u8]>::len) + 3)
                    .sum();
                if bytes + raw > size.bytes {
                    out.truncated = Some("max_result_bytes");
                    break;
                }
                let cells: Vec<Value> = (0..row.len())
                    .map(|i| {
                        let t = columns.get(i).map(|c| c.1.as_str()).unwrap_or("");
                        cell(t, row.raw(i))
                    })
                    .collect();
                bytes += cells.iter().map(approximate_size).sum::<usize>() + 2;
                if bytes > size.bytes {
                    out.truncated = Some("max_result_bytes");
                    break;
                }
                out.rows.push(cells);
            }
        }
    }
    out.columns = columns;
    if !out.columns.is_empty() && out.truncated.is_none() {
        // A result set's count is its rows, not "rows affected".
        out.rows_affected = None;
    }
    if out.truncated.is_some() {
        out.rows_affected = None;
    }
    Ok(out)
}

fn approximate_size(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len() + 3,
        Value::Null => 4,
        other => other.to_string().len() + 1,
    }
}

/// One cell as JSON: numbers, booleans and JSON documents as such; everything else as the
/// database's text; bytes that are not UTF-8 as `0x…`.
pub fn cell(type_name: &str, raw: Option<&[u8]>) -> Value {
    let Some(bytes) = raw else {
        return Value::Null;
    };
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Value::String(format!("0x{}", crate::crypto::hex(bytes)));
    };
    let upper = type_name.to_ascii_uppercase();
    let base = upper.trim_end_matches(" UNSIGNED");
    let as_text = || Value::String(text.to_string());
    match base {
        "BOOL" | "BOOLEAN" => match text {
            "t" | "true" | "1" => Value::Bool(true),
            "f" | "false" | "0" => Value::Bool(false),
            _ => as_text(),
        },
        "INT2" | "INT4" | "INT8" | "OID" | "TINYINT" | "SMALLINT" | "MEDIUMINT" | "INT"
        | "INTEGER" | "BIGINT" | "YEAR" => text
            .parse::<i64>()
            .map(Value::from)
            .or_else(|_| text.parse::<u64>().map(Value::from))
            .unwrap_or_else(|_| as_text()),
        "FLOAT4" | "FLOAT8" | "FLOAT" | "DOUBLE" | "REAL" => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or_else(as_text),
        "JSON" | "JSONB" => serde_json::from_str(text).unwrap_or_else(|_| as_text()),
        _ => as_text(),
    }
}

/// What the metadata tools ask.
pub enum Metadata<'a> {
    Databases,
    Tables {
        database: Option<&'a str>,
    },
    Columns {
        table: &'a str,
        database: Option<&'a str>,
    },
}

/// Runs a metadata question: fixed statements of the gateway's, the person's names as bound
/// parameters. The database's own catalogue views show each person only what they may see.
pub async fn metadata(
    pool: &Pool,
    question: &Metadata<'_>,
    timeout: Duration,
) -> Result<Vec<Vec<Option<String>>>, RunError> {
    let run = async {
        match pool {
            Pool::Postgres(p) => {
                let q = match question {
                    Metadata::Databases => sqlx::query(
                        "SELECT schema_name::text FROM information_schema.schemata \
                         WHERE schema_name NOT IN ('pg_catalog', 'information_schema') \
                         AND schema_name NOT LIKE 'pg\\_%' ORDER BY 1",
                    ),
                    Metadata::Tables { database } => sqlx::query(
                        "SELECT table_schema::text, table_name::text, table_type::text \
                         FROM information_schema.tables \
                         WHERE table_schema NOT IN ('pg_catalog', 'information_schema') \
                         AND ($1::text IS NULL OR table_schema = $1) ORDER BY 1, 2",
                    )
                    .bind(*database),
                    Metadata::Columns { table, database } => sqlx::query(
                        "SELECT column_name::text, data_type::text, is_nullable::text, \
                         column_default::text FROM information_schema.columns \
                         WHERE table_name = $1 AND table_schema = COALESCE($2, current_schema()) \
                         ORDER BY ordinal_position",
                    )
                    .bind(*table)
                    .bind(*database),
                };
                let rows = q.fetch_all(p).await?;
                Ok(rows.iter().map(strings).collect())
            }
            Pool::Mysql(p) => {
                let q = match question {
                    Metadata::Databases => sqlx::query(
                        "SELECT CAST(SCHEMA_NAME AS CHAR) FROM information_schema.SCHEMATA \
                         WHERE SCHEMA_NAME NOT IN ('information_schema', 'mysql', 'performance_schema', 'sys') \
                         ORDER BY 1",
                    ),
                    Metadata::Tables { database } => sqlx::query(
                        "SELECT CAST(TABLE_SCHEMA AS CHAR), CAST(TABLE_NAME AS CHAR), CAST(TABLE_TYPE AS CHAR) \
                         FROM information_schema.TABLES \
                         WHERE TABLE_SCHEMA NOT IN ('information_schema', 'mysql', 'performance_schema', 'sys') \
                         AND (? IS NULL OR TABLE_SCHEMA = ?) ORDER BY 1, 2",
                    )
                    .bind(*database)
                    .bind(*database),
                    Metadata::Columns { table, database } => sqlx::query(
                        "SELECT CAST(COLUMN_NAME AS CHAR), CAST(COLUMN_TYPE AS CHAR), CAST(IS_NULLABLE AS CHAR), \
                         CAST(COLUMN_DEFAULT AS CHAR) FROM information_schema.COLUMNS \
                         WHERE TABLE_NAME = ? AND TABLE_SCHEMA = COALESCE(?, DATABASE()) \
                         ORDER BY ORDINAL_POSITION",
                    )
                    .bind(*table)
                    .bind(*database),
                };
                let rows = q.fetch_all(p).await?;
                Ok(rows.iter().map(strings).collect())
            }
        }
    };
    match tokio::time::timeout(timeout + GRACE, run).await {
        Ok(Ok(rows)) => Ok(rows),
        Ok(Err(e)) => Err(match e {
            sqlx::Error::Database(d) => RunError::Sql(d.message().to_string()),
            other => acquire_error(other),
        }),
        Err(_) => Err(RunError::Timeout(timeout)),
    }
}

fn strings<R: Row>(row: &R) -> Vec<Option<String>>
where
    for<'r> Option<String>: sqlx::Decode<'r, R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    (0..row.len())
        .map(|i| row.try_get_unchecked::<Option<String>, _>(i).ok().flatten())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_keep_their_types() {
        assert_eq!(cell("INT4", Some(b"42")), json!(42));
        assert_eq!(
            cell("BIGINT UNSIGNED", Some(b"18446744073709551615")),
            json!(18446744073709551615u64)
        );
        assert_eq!(cell("BOOL", Some(b"t")), json!(true));
        assert_eq!(cell("FLOAT8", Some(b"NaN")), json!("NaN"));
        assert_eq!(cell("NUMERIC", Some(b"1.10")), json!("1.10"));
        assert_eq!(cell("JSONB", Some(br#"{"a": 1}"#)), json!({"a": 1}));
        assert_eq!(cell("BLOB", Some(&[0xff, 0x00])), json!("0xff00"));
        assert_eq!(cell("TEXT", None), Value::Null);
    }
}
