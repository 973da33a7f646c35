//! The `dbtools` upstream: an MCP server inside the gateway whose tools run as the person
//! who called them, through their own pool. No grant, no credential; no credential, no
//! pool; and never a shared account.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::config::{ReadOnly, ToolLimits};
use super::connect::Credential;
use super::pools::{PoolError, UserPool};
use super::run::{self, Metadata, Output, RunError};
use super::source::DatabaseSource;
use crate::authorization::token::Principal;
use crate::clock::SharedClock;
use crate::login::{LoginContexts, LoginSource};
use crate::mcp::server::{ToolServer, Tools, UnknownTool, tool_error};
use crate::store::{EndReason, GrantFilter, SharedStore};

pub struct DbTools {
    upstream: String,
    source: Arc<DatabaseSource>,
    contexts: LoginContexts,
    store: SharedStore,
    clock: SharedClock,
    limits: ToolLimits,
}

impl DbTools {
    pub fn server(
        upstream: &str,
        source: Arc<DatabaseSource>,
        contexts: LoginContexts,
        store: SharedStore,
        clock: SharedClock,
        limits: ToolLimits,
    ) -> ToolServer<Self> {
        ToolServer::new(Self {
            upstream: upstream.to_string(),
            source,
            contexts,
            store,
            clock,
            limits,
        })
    }

    /// The caller's pool, opened now from their grant's sealed credential if this instance
    /// has none; or the tool result that says why not.
    async fn pool_for(&self, principal: &Principal) -> Result<Arc<UserPool>, Value> {
        let name = self.source.name();
        let grant = match (&principal.grant_id, &principal.login_source) {
            (Some(grant), Some(source)) if source == name => grant,
            _ => {
                return Err(tool_error(&format!(
                    "These tools run as your own account at “{}”. This connection was authorized another way: authorize it again and sign in with that account.",
                    self.source.label()
                )));
            }
        };
        let load = || async {
            match self.contexts.read(&self.store, name, grant).await {
                Ok(Some(kept)) => serde_json::from_slice::<Credential>(&kept)
                    .map(Some)
                    .map_err(|_| {
                        PoolError::Unavailable("the sealed credential cannot be read".into())
                    }),
                Ok(None) => Ok(None),
                Err(e) => Err(PoolError::Unavailable(e.to_string())),
            }
        };
        match self.source.pools.get_or_open(grant, load).await {
            Ok(p) => Ok(p),
            Err(PoolError::NoCredential) => Err(tool_error(
                "Your sign-in has ended: authorize this connection again.",
            )),
            Err(PoolError::Refused(why)) => Err(self.refused(principal, grant, &why).await),
            Err(PoolError::Unavailable(why)) => {
                tracing::warn!(upstream = %self.upstream, reason = %why, "database pool not opened");
                Err(tool_error(&format!(
                    "The database cannot be reached right now: {why}. Try again shortly."
                )))
            }
        }
    }

    /// The database refused the credential kept for this grant: the grant ends (on every
    /// instance, with its pools), and the client is told to sign in again.
    async fn refused(&self, principal: &Principal, grant: &str, why: &str) -> Value {
        self.source.pools.close(grant);
        let ended = self
            .store
            .revoke_grants(
                &GrantFilter {
                    grant_id: Some(grant.to_string()),
                    ..Default::default()
                },
                EndReason::CredentialRefused,
                self.clock.now(),
            )
            .await;
        if let Err(e) = ended {
            tracing::error!(error = %e, "a grant whose credential the database refused could not be ended");
        }
        tracing::warn!(upstream = %self.upstream, user = ?principal.username, reason = %why, "the database refused a signed-in person's credential; their grant ended");
        tool_error(&format!(
            "The database no longer accepts your credentials ({why}). Sign in again: authorize this connection once more."
        ))
    }

    fn run_error(&self, e: RunError) -> Value {
        match e {
            RunError::Sql(m) => tool_error(&m),
            RunError::NotAllowed(m) => tool_error(&m),
            RunError::Timeout(d) => tool_error(&format!(
                "The statement did not finish within {} s and was cancelled.",
                d.as_secs()
            )),
            RunError::Refused(m) => tool_error(&format!(
                "The database no longer accepts your credentials ({m}). Sign in again."
            )),
            RunError::Unavailable(m) => tool_error(&format!(
                "The database cannot be reached right now: {m}. Try again shortly."
            )),
        }
    }

    /// A metadata answer, from this person's own cache when fresh.
    async fn metadata(
        &self,
        pool: &UserPool,
        key: String,
        question: Metadata<'_>,
    ) -> Result<Vec<Vec<Option<String>>>, RunError> {
        let now = self.clock.now();
        if let Some(Value::Array(rows)) = pool.metadata.get(&key, now) {
            return Ok(rows
                .iter()
                .map(|r| {
                    r.as_array()
                        .map(|cells| cells.iter().map(|c| c.as_str().map(String::from)).collect())
                        .unwrap_or_default()
                })
                .collect());
        }
        let rows = run::metadata(&pool.pool, &question, self.limits.statement_timeout).await?;
        pool.metadata.put(key, json!(rows), now);
        Ok(rows)
    }
}

/// The arguments a tool takes: unknown ones and wrong types are the caller's error.
struct Args<'a> {
    given: &'a Map<String, Value>,
}

impl<'a> Args<'a> {
    fn new(given: &'a Map<String, Value>, allowed: &[&str]) -> Result<Self, Value> {
        if let Some(k) = given.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(tool_error(&format!(
                "unknown argument `{k}`; this tool takes {}",
                if allowed.is_empty() {
                    "none".to_string()
                } else {
                    allowed.join(", ")
                }
            )));
        }
        Ok(Self { given })
    }

    fn text(&self, key: &str) -> Result<Option<&'a str>, Value> {
        match self.given.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(tool_error(&format!("`{key}` must be a string"))),
        }
    }

    fn required_text(&self, key: &str) -> Result<&'a str, Value> {
        match self.text(key)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            _ => Err(tool_error(&format!("`{key}` is required"))),
        }
    }

    fn count(&self, key: &str) -> Result<Option<usize>, Value> {
        match self.given.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .filter(|n| *n >= 1)
                .map(|n| Some(n as usize))
                .ok_or_else(|| {
                    tool_error(&format!("`{key}` must be a whole number of at least 1"))
                }),
        }
    }
}

/// Result of a tool: the structured value, and a text rendering of it for models and people
/// that read only text.
fn result(structured: Value, text: String) -> Value {
    json!({
        "content": [{"type": "text", "text": text}],
        "structuredContent": structured,
        "isError": false
    })
}

/// A plain text table.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    const CELL: usize = 120;
    let clip = |s: &str| -> String {
        let flat: String = s
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if flat.chars().count() > CELL {
            let mut t: String = flat.chars().take(CELL - 1).collect();
            t.push('…');
            t
        } else {
            flat
        }
    };
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| clip(c)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = widths
                    .get(i)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(c.chars().count());
                format!("{c}{}", " ".repeat(pad))
            })
            .collect::<Vec<_>>()
            .join(" | ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![
        line(header.to_vec()),
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-+-"),
    ];
    for r in &rows {
        out.push(line(r.iter().map(String::as_str).collect()));
    }
    out.join("\n")
}

fn show(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn output_text(out: &Output, limit: usize, max_bytes: usize) -> String {
    let mut text = if out.columns.is_empty() && out.rows.is_empty() {
        match out.rows_affected {
            Some(n) => format!("Done: {n} row(s) affected."),
            None => "Done: the statement returned no rows.".into(),
        }
    } else {
        let header: Vec<&str> = out.columns.iter().map(|(n, _)| n.as_str()).collect();
        let rows: Vec<Vec<String>> = out
            .rows
            .iter()
            .map(|r| r.iter().map(show).collect())
            .collect();
        format!("{}\n({} row(s))", table(&header, &rows), out.rows.len())
    };
    match out.truncated {
        Some("row_limit") => text.push_str(&format!(
            "\nTruncated: only the first {limit} rows are shown (the row limit)."
        )),
        Some(_) => text.push_str(&format!(
            "\nTruncated: the rows shown are all that fit in {max_bytes} bytes (the result size cap)."
        )),
        None => {}
    }
    text
}

fn statement_output_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "columns": {"type": "array", "items": {"type": "object", "properties": {
                "name": {"type": "string"}, "type": {"type": "string"}}, "required": ["name", "type"]}},
            "rows": {"type": "array", "items": {"type": "array"}},
            "row_count": {"type": "integer"},
            "truncated": {"type": "boolean"},
            "truncated_by": {"type": ["string", "null"], "enum": ["row_limit", "max_result_bytes", null]},
            "rows_affected": {"type": ["integer", "null"]}
        },
        "required": ["columns", "rows", "row_count", "truncated"]
    })
}

#[async_trait]
impl Tools for DbTools {
    fn server_info(&self) -> Value {
        json!({"name": format!("dbtools-{}", self.upstream), "title": format!("Database tools ({})", self.source.label()), "version": env!("CARGO_PKG_VERSION")})
    }

    fn instructions(&self) -> &str {
        "Tools that run on the database as the signed-in person: what they may see is what their own database account may see. Start with list_databases and list_tables, then describe_table, then query."
    }

    fn list(&self) -> Vec<Value> {
        let pg = self.source.engine() == super::config::Engine::Postgres;
        let db_word = if pg { "schema" } else { "database" };
        let read_only = !self.limits.writable;
        let read_only_note = match (read_only, self.source.engine().read_only()) {
            (false, _) => "Runs one statement; changes are committed.",
            (true, ReadOnly::Transaction) => "Runs one statement in a read-only transaction.",
            (true, ReadOnly::Parsed) => "Runs one SELECT, SHOW, DESCRIBE or EXPLAIN statement.",
        };
        vec![
            json!({
                "name": "list_databases",
                "title": if pg { "List schemas" } else { "List databases" },
                "description": format!("Lists the {db_word}s your account can see."),
                "inputSchema": {"type": "object", "properties": {}, "additionalProperties": false},
                "outputSchema": {"type": "object", "properties": {"databases": {"type": "array", "items": {"type": "string"}}}, "required": ["databases"]},
                "annotations": {"readOnlyHint": true, "openWorldHint": false}
            }),
            json!({
                "name": "list_tables",
                "title": "List tables",
                "description": format!("Lists the tables and views your account can see, in one {db_word} or in all."),
                "inputSchema": {"type": "object", "properties": {
                    "database": {"type": "string", "description": format!("Only this {db_word}.")}
                }, "additionalProperties": false},
                "outputSchema": {"type": "object", "properties": {"tables": {"type": "array", "items": {"type": "object", "properties": {
                    "database": {"type": "string"}, "name": {"type": "string"}, "type": {"type": "string"}}}}}, "required": ["tables"]},
                "annotations": {"readOnlyHint": true, "openWorldHint": false}
            }),
            json!({
                "name": "describe_table",
                "title": "Describe a table",
                "description": "The columns of a table or view: name, type, whether it may be null, default.",
                "inputSchema": {"type": "object", "properties": {
                    "table": {"type": "string"},
                    "database": {"type": "string", "description": format!("Its {db_word}; the current one by default.")}
                }, "required": ["table"], "additionalProperties": false},
                "outputSchema": {"type": "object", "properties": {
                    "table": {"type": "string"}, "database": {"type": ["string", "null"]},
                    "columns": {"type": "array", "items": {"type": "object", "properties": {
                        "name": {"type": "string"}, "type": {"type": "string"}, "nullable": {"type": "boolean"}, "default": {"type": ["string", "null"]}}}}
                }, "required": ["table", "columns"]},
                "annotations": {"readOnlyHint": true, "openWorldHint": false}
            }),
            json!({
                "name": "query",
                "title": "Run a SQL statement",
                "description": format!("{read_only_note} At most {} rows and {} bytes come back; a longer result says it was truncated. Times out after {} s.", self.limits.row_limit, self.limits.max_result_bytes, self.limits.statement_timeout.as_secs()),
                "inputSchema": {"type": "object", "properties": {
                    "sql": {"type": "string", "description": "One SQL statement."},
                    "max_rows": {"type": "integer", "minimum": 1, "maximum": self.limits.row_limit, "description": "Fewer rows than the limit."}
                }, "required": ["sql"], "additionalProperties": false},
                "outputSchema": statement_output_schema(),
                "annotations": {"readOnlyHint": read_only, "destructiveHint": !read_only, "openWorldHint": false}
            }),
            json!({
                "name": "explain",
                "title": "Explain a SQL statement",
                "description": "The database's plan for one statement, without running it.",
                "inputSchema": {"type": "object", "properties": {
                    "sql": {"type": "string", "description": "One SQL statement."}
                }, "required": ["sql"], "additionalProperties": false},
                "outputSchema": statement_output_schema(),
                "annotations": {"readOnlyHint": true, "openWorldHint": false}
            }),
        ]
    }

    async fn call(
        &self,
        principal: &Principal,
        name: &str,
        arguments: &Map<String, Value>,
    ) -> Result<Value, UnknownTool> {
        let allowed: &[&str] = match name {
            "list_databases" => &[],
            "list_tables" => &["database"],
            "describe_table" => &["table", "database"],
            "query" => &["sql", "max_rows"],
            "explain" => &["sql"],
            other => return Err(UnknownTool(other.to_string())),
        };
        Ok(
            match self.run_tool(principal, name, arguments, allowed).await {
                Ok(v) | Err(v) => v,
            },
        )
    }
}

impl DbTools {
    async fn run_tool(
        &self,
        principal: &Principal,
        name: &str,
        arguments: &Map<String, Value>,
        allowed: &[&str],
    ) -> Result<Value, Value> {
        let args = Args::new(arguments, allowed)?;
        // The arguments are checked before the pool: a mistake costs no connection.
        let sql = match name {
            "query" | "explain" => Some(args.required_text("sql")?),
            _ => None,
        };
        let max_rows = args.count("max_rows")?;
        let database = args.text("database")?;
        let table_name = match name {
            "describe_table" => Some(args.required_text("table")?),
            _ => None,
        };
        let pool = self.pool_for(principal).await?;
        let grant = principal.grant_id.as_deref().unwrap_or_default();
        let failed = |e: RunError| async {
            if let RunError::Refused(why) = &e {
                return self.refused(principal, grant, why).await;
            }
            self.run_error(e)
        };
        match name {
            "list_databases" => {
                let rows = match self
                    .metadata(&pool, "databases".into(), Metadata::Databases)
                    .await
                {
                    Ok(r) => r,
                    Err(e) => return Err(failed(e).await),
                };
                let names: Vec<String> = rows
                    .into_iter()
                    .filter_map(|r| r.into_iter().next().flatten())
                    .collect();
                let text = if names.is_empty() {
                    "No databases are visible to your account.".to_string()
                } else {
                    names.join("\n")
                };
                Ok(result(json!({"databases": names}), text))
            }
            "list_tables" => {
                let key = format!("tables\n{}", database.unwrap_or("\u{0}"));
                let rows = match self
                    .metadata(&pool, key, Metadata::Tables { database })
                    .await
                {
                    Ok(r) => r,
                    Err(e) => return Err(failed(e).await),
                };
                let tables: Vec<Value> = rows
                    .iter()
                    .map(|r| {
                        json!({
                            "database": r.first().cloned().flatten(),
                            "name": r.get(1).cloned().flatten(),
                            "type": r.get(2).cloned().flatten(),
                        })
                    })
                    .collect();
                let text_rows: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| r.iter().map(|c| c.clone().unwrap_or_default()).collect())
                    .collect();
                let text = if tables.is_empty() {
                    "No tables are visible to your account here.".to_string()
                } else {
                    table(&["database", "table", "type"], &text_rows)
                };
                Ok(result(json!({"tables": tables}), text))
            }
            "describe_table" => {
                let table_name = table_name.unwrap_or_default();
                let mariadb = self.source.engine() == super::config::Engine::Mariadb;
                let key = format!("columns\n{}\n{table_name}", database.unwrap_or("\u{0}"));
                let rows = match self
                    .metadata(
                        &pool,
                        key,
                        Metadata::Columns {
                            table: table_name,
                            database,
                        },
                    )
                    .await
                {
                    Ok(r) => r,
                    Err(e) => return Err(failed(e).await),
                };
                if rows.is_empty() {
                    return Err(tool_error(&format!(
                        "No table or view `{table_name}` is visible to your account{}.",
                        database.map(|d| format!(" in `{d}`")).unwrap_or_default()
                    )));
                }
                let columns: Vec<Value> = rows
                    .iter()
                    .map(|r| {
                        json!({
                            "name": r.first().cloned().flatten(),
                            "type": r.get(1).cloned().flatten(),
                            "nullable": r.get(2).cloned().flatten().as_deref() == Some("YES"),
                            // MariaDB writes "no default" as the expression NULL (a
                            // string default is quoted there).
                            "default": r.get(3).cloned().flatten().filter(|d| !(mariadb && d == "NULL")),
                        })
                    })
                    .collect();
                let text_rows: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        r.iter()
                            .map(|c| c.clone().unwrap_or_else(|| "NULL".into()))
                            .collect()
                    })
                    .collect();
                Ok(result(
                    json!({"table": table_name, "database": database, "columns": columns}),
                    table(&["column", "type", "nullable", "default"], &text_rows),
                ))
            }
            _ => {
                let explain = name == "explain";
                let limit = max_rows
                    .unwrap_or(self.limits.row_limit)
                    .min(self.limits.row_limit);
                let out = match run::statement(
                    &pool.pool,
                    self.source.engine(),
                    sql.unwrap_or_default(),
                    self.limits.writable,
                    explain,
                    limit,
                    &self.limits,
                )
                .await
                {
                    Ok(o) => o,
                    Err(e) => return Err(failed(e).await),
                };
                // A statement that may have changed the schema makes this person's
                // metadata answers stale.
                if self.limits.writable && !explain {
                    pool.metadata.clear();
                }
                let text = output_text(&out, limit, self.limits.max_result_bytes);
                Ok(result(out.to_json(), text))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_aligned_and_clipped() {
        let t = table(
            &["a", "bb"],
            &[
                vec!["x".into(), "y\nz".into()],
                vec!["long".into(), "".into()],
            ],
        );
        assert_eq!(t, "a    | bb\n-----+----\nx    | y z\nlong |");
    }
}
