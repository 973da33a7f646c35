//! mcp-oauth-gateway: OAuth 2.1 in front of MCP servers.
//!
//! Capabilities live in their own folders; `web` is the only place that knows about HTTP
//! framing, and `main.rs` only parses the command line and wires these together.

pub mod admin;
pub mod authorization;
pub mod broker;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod dbtools;
pub mod jwt;
pub mod keyset;
pub mod login;
pub mod mcp;
pub mod net;
pub mod observe;
pub mod outbound;
pub mod proxy;
pub mod secret;
pub mod store;
pub mod text;
pub mod web;

pub use web::{App, Gateway};
