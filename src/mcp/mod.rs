//! MCP endpoints behind the gateway's protection. For now the built-in `whoami` server; the
//! proxy to upstream servers joins it here.

pub mod message;
pub mod whoami;
