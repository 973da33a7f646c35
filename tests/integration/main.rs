#![allow(clippy::unwrap_used, clippy::expect_used)]
//! One integration-test binary: the real gateway in-process on port 0, real clients.

mod admin;
mod authorize;
mod backends;
mod broker;
mod broker_discovery;
mod cimd;
mod cimd_fixture;
mod cli;
mod cluster;
mod conformance;
mod conformance_client;
mod dbtools;
mod everything;
mod external_mode;
mod github_fixture;
pub mod hardening;
mod hardening_auth;
mod id_jag;
pub mod js;
mod lifecycle;
mod login_sources;
mod metadata;
mod oidc_login;
mod oidc_provider;
mod operations;
mod protected;
mod proxy;
mod registration;
pub mod rmcp_client;
mod stdio;
mod store_suite;
mod support;
mod token;
mod upstream_fixture;
mod whoami_modern;
