//! Databases people sign in to with their own accounts, and the built-in MCP server whose
//! tools run as them (the Doris model): the database's own permissions — grants, roles,
//! row-level security — decide what each person sees.
//!
//! - [`source`]: the login source; a password is checked by opening one connection, and
//!   kept only in the grant's sealed login context.
//! - [`pools`]: one pool per grant, opened on first use on whichever instance gets the call,
//!   closed when the grant ends, when idle, or to stay within the connection budget.
//! - [`tools`]: `list_databases`, `list_tables`, `describe_table`, `query`, `explain`.
//! - [`run`] and [`guard`]: one statement per call, read-only unless the upstream is
//!   writable — by the database's read-only transactions, or by parsing for engines that
//!   have none.

pub mod config;
pub mod connect;
pub mod forward;
pub mod guard;
pub mod pools;
pub mod run;
pub mod source;
pub mod tools;

pub use config::DatabaseLoginConfig;
pub use source::DatabaseSource;
