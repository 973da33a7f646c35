//! MCP as the gateway reads and serves it: the strict message reader, and the built-in
//! servers (`whoami`) behind one interface.

pub mod message;
pub mod server;
pub mod whoami;
