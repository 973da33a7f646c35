//! `store copy`: moves a whole installation from one engine to another (typically a
//! single-instance SQLite file to the PostgreSQL that several instances will share).
//!
//! The copy is table by table, column by column, so a token's hash, a grant's id and a
//! refresh token's sealed retry answer arrive unchanged and everything issued before the move
//! keeps working after it. Both engines keep the same tables; the list below is checked
//! against the source's actual schema before anything is written, so a table or column added
//! by a later migration cannot be skipped silently.

use super::{SharedStore, StoreError, StoreResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Int,
    Bool,
    Bytes,
}

/// One value of a row, typed by its column so that a NULL is bound with the right type.
#[derive(Clone, PartialEq)]
pub enum Cell {
    Text(Option<String>),
    Int(Option<i64>),
    Bool(Option<bool>),
    Bytes(Option<Vec<u8>>),
}

// Rows hold password hashes and private keys: never print their values.
impl std::fmt::Debug for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cell(<redacted>)")
    }
}

pub type Row = Vec<Cell>;

pub struct Table {
    pub name: &'static str,
    pub columns: &'static [(&'static str, Kind)],
}

impl Table {
    pub fn select_sql(&self) -> String {
        let cols: Vec<&str> = self.columns.iter().map(|(c, _)| *c).collect();
        format!("SELECT {} FROM {}", cols.join(", "), self.name)
    }

    /// Placeholders `$1, $2…`, which both engines read.
    pub fn insert_sql(&self) -> String {
        let cols: Vec<&str> = self.columns.iter().map(|(c, _)| *c).collect();
        let marks: Vec<String> = (1..=cols.len()).map(|i| format!("${i}")).collect();
        format!(
            "INSERT INTO {} ({}) VALUES ({})",
            self.name,
            cols.join(", "),
            marks.join(", ")
        )
    }
}

use Kind::*;

/// Every table of the schema (both engines), in an order that puts what others refer to
/// first.
pub const TABLES: &[Table] = &[
    Table {
        name: "users",
        columns: &[
            ("id", Text),
            ("username", Text),
            ("password_hash", Text),
            ("created_at", Int),
            ("email", Text),
            ("groups", Text),
            ("disabled_at", Int),
        ],
    },
    Table {
        name: "identities",
        columns: &[
            ("source", Text),
            ("subject", Text),
            ("user_id", Text),
            ("created_at", Int),
        ],
    },
    Table {
        name: "clients",
        columns: &[
            ("client_id", Text),
            ("secret_hash", Text),
            ("client_name", Text),
            ("redirect_uris", Text),
            ("token_endpoint_auth_method", Text),
            ("grant_types", Text),
            ("scope", Text),
            ("metadata", Text),
            ("registered_ip", Text),
            ("created_at", Int),
            ("last_used_at", Int),
        ],
    },
    Table {
        name: "grants",
        columns: &[
            ("id", Text),
            ("user_id", Text),
            ("client_id", Text),
            ("resource", Text),
            ("scopes", Text),
            ("created_at", Int),
            ("revoked_at", Int),
            ("ended_reason", Text),
            ("login_source", Text),
            ("login_context", Bytes),
        ],
    },
    Table {
        name: "auth_codes",
        columns: &[
            ("code_hash", Text),
            ("client_id", Text),
            ("user_id", Text),
            ("redirect_uri", Text),
            ("redirect_given", Bool),
            ("resource", Text),
            ("scopes", Text),
            ("code_challenge", Text),
            ("created_at", Int),
            ("expires_at", Int),
            ("consumed_at", Int),
            ("grant_id", Text),
            ("login_source", Text),
            ("login_context", Bytes),
        ],
    },
    Table {
        name: "access_tokens",
        columns: &[
            ("token_hash", Text),
            ("grant_id", Text),
            ("client_id", Text),
            ("user_id", Text),
            ("resource", Text),
            ("scopes", Text),
            ("created_at", Int),
            ("expires_at", Int),
        ],
    },
    Table {
        name: "refresh_tokens",
        columns: &[
            ("token_hash", Text),
            ("grant_id", Text),
            ("client_id", Text),
            ("created_at", Int),
            ("expires_at", Int),
            ("used_at", Int),
            ("successor_hash", Text),
            ("retry_sealed", Bytes),
            ("retry_until", Int),
        ],
    },
    Table {
        name: "consents",
        columns: &[
            ("user_id", Text),
            ("client_id", Text),
            ("redirect_uri", Text),
            ("resource", Text),
            ("scopes", Text),
            ("created_at", Int),
        ],
    },
    Table {
        name: "client_blocks",
        columns: &[("client_id", Text), ("blocked_at", Int), ("reason", Text)],
    },
    Table {
        name: "client_approvals",
        columns: &[
            ("client_id", Text),
            ("client_name", Text),
            ("seen_at", Int),
            ("approved_at", Int),
        ],
    },
    Table {
        name: "settings",
        columns: &[("name", Text), ("value", Text), ("updated_at", Int)],
    },
    Table {
        name: "device_authorizations",
        columns: &[
            ("device_code_hash", Text),
            ("user_code", Text),
            ("client_id", Text),
            ("scopes", Text),
            ("resource", Text),
            ("created_at", Int),
            ("expires_at", Int),
            ("interval_secs", Int),
            ("polled_at", Int),
            ("status", Text),
            ("user_id", Text),
            ("code_hash", Text),
        ],
    },
    Table {
        name: "pending_authorizations",
        columns: &[
            ("id", Text),
            ("client_id", Text),
            ("redirect_uri", Text),
            ("redirect_given", Bool),
            ("scopes", Text),
            ("resource", Text),
            ("state", Text),
            ("code_challenge", Text),
            ("csrf_token", Text),
            ("binding_hash", Text),
            ("user_id", Text),
            ("created_at", Int),
            ("expires_at", Int),
            ("grant_id", Text),
            ("login_source", Text),
            ("login_context", Bytes),
            ("login_state", Text),
            ("login_leg", Bytes),
            ("consented", Bool),
        ],
    },
    Table {
        name: "upstream_clients",
        columns: &[
            ("upstream", Text),
            ("issuer", Text),
            ("client_id", Text),
            ("client_secret", Bytes),
            ("method", Text),
            ("settings", Text),
            ("registered_at", Int),
        ],
    },
    Table {
        name: "upstream_tokens",
        columns: &[
            ("user_id", Text),
            ("upstream", Text),
            ("issuer", Text),
            ("sealed", Bytes),
            ("status", Text),
            ("scope", Text),
            ("expires_at", Int),
            ("settings", Text),
            ("connected_at", Int),
            ("updated_at", Int),
            ("lease_until", Int),
        ],
    },
    Table {
        name: "upstream_connects",
        columns: &[
            ("state_hash", Text),
            ("user_id", Text),
            ("session_hash", Text),
            ("upstream", Text),
            ("issuer", Text),
            ("sealed", Bytes),
            ("settings", Text),
            ("expires_at", Int),
        ],
    },
    Table {
        name: "used_assertions",
        columns: &[("id", Text), ("expires_at", Int)],
    },
    Table {
        name: "browser_sessions",
        columns: &[
            ("id_hash", Text),
            ("user_id", Text),
            ("created_at", Int),
            ("expires_at", Int),
            ("login_source", Text),
        ],
    },
    Table {
        name: "counters",
        columns: &[("key", Text), ("window_start", Int), ("count", Int)],
    },
    Table {
        name: "mcp_sessions",
        columns: &[
            ("upstream", Text),
            ("session_hash", Text),
            ("owner", Text),
            ("created_at", Int),
            ("expires_at", Int),
        ],
    },
    Table {
        name: "signing_keys",
        columns: &[
            ("kid", Text),
            ("pkcs8", Bytes),
            ("created_at", Int),
            ("retired_at", Int),
        ],
    },
];

/// Tables whose rows matter only for a moment (events the other instances have heard
/// within seconds): not copied.
const TRANSIENT: &[&str] = &["store_events"];

/// How many rows of each table were copied.
#[derive(Debug, Default)]
pub struct CopyReport {
    pub tables: Vec<(&'static str, u64)>,
}

/// Checks that `schema` (table → columns, as an engine reports it) is exactly what [`TABLES`]
/// describes.
pub fn check_schema(schema: &[(String, Vec<String>)]) -> StoreResult<()> {
    for (table, columns) in schema {
        if TRANSIENT.contains(&table.as_str()) {
            continue;
        }
        let Some(known) = TABLES.iter().find(|t| t.name == table) else {
            return Err(StoreError::Backend(format!(
                "the source has a table `{table}` this version cannot copy"
            )));
        };
        for c in columns {
            if !known.columns.iter().any(|(k, _)| k == c) {
                return Err(StoreError::Backend(format!(
                    "the source's table `{table}` has a column `{c}` this version cannot copy"
                )));
            }
        }
    }
    for t in TABLES {
        if !schema.iter().any(|(name, _)| name == t.name) {
            return Err(StoreError::Backend(format!(
                "the source has no table `{}`",
                t.name
            )));
        }
    }
    Ok(())
}

/// Copies everything from `from` into `to`, which must be empty: the copy never merges, so
/// nothing at the destination can shadow or be shadowed by what arrives. The destination is
/// written in one transaction, so a failure leaves it empty.
pub async fn copy(from: &SharedStore, to: &SharedStore) -> StoreResult<CopyReport> {
    check_schema(&from.schema().await?)?;
    check_schema(&to.schema().await?)?;
    for t in TABLES {
        let n = to.count_rows(t).await?;
        if n > 0 {
            return Err(StoreError::Backend(format!(
                "the destination is not empty ({n} rows in `{}`); store copy only fills an empty store",
                t.name
            )));
        }
    }
    let mut data = Vec::with_capacity(TABLES.len());
    for t in TABLES {
        data.push((t, from.export_rows(t).await?));
    }
    to.import_rows(&data).await?;
    let mut report = CopyReport::default();
    for (t, rows) in &data {
        let arrived = to.count_rows(t).await?;
        if arrived != rows.len() as i64 {
            return Err(StoreError::Backend(format!(
                "`{}`: {} rows read but {arrived} found at the destination",
                t.name,
                rows.len()
            )));
        }
        report.tables.push((t.name, rows.len() as u64));
    }
    Ok(report)
}
