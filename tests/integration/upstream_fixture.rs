//! A real upstream MCP server for the proxy tests: an rmcp Streamable HTTP server, with or
//! without sessions, whose tools echo, report the headers they received, stream progress,
//! and take their time.

use std::sync::Arc;
use std::time::Duration;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{ProgressNotificationParam, RequestMetaObject, ServerCapabilities, ServerConfig};
use rmcp::service::Peer;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{RoleServer, ServerHandler, schemars, tool, tool_handler, tool_router};
use serde_json::json;

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct EchoArgs {
    pub text: String,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct CountArgs {
    pub n: u32,
    pub delay_ms: u64,
    /// Names this run in `steps_done`, so a test can see whether it went on.
    #[serde(default)]
    pub tag: String,
}

static STEPS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, u32>>> =
    std::sync::LazyLock::new(Default::default);

/// How many steps the `count` run tagged `tag` has made.
pub fn steps_done(tag: &str) -> u32 {
    STEPS.lock().unwrap().get(tag).copied().unwrap_or(0)
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct SleepArgs {
    pub ms: u64,
}

#[derive(Clone)]
pub struct Fixture {
    #[allow(dead_code)] // read by the tool_handler macro's expansion in some rmcp versions
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl Fixture {
    pub fn new() -> Self {
        Self {
            tool_router: Self::tool_router(),
        }
    }

    #[tool(description = "Echoes its text")]
    fn echo(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> String {
        text
    }

    #[tool(description = "The HTTP headers this call arrived with")]
    async fn headers(&self, Extension(parts): Extension<http::request::Parts>) -> String {
        let get = |n: &str| {
            parts
                .headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        json!({
            "authorization": get("authorization"),
            "x-forwarded-user": get("x-forwarded-user"),
            "x-forwarded-client": get("x-forwarded-client"),
            "x-forwarded-email": get("x-forwarded-email"),
            "x-forwarded-groups": get("x-forwarded-groups"),
            "x-api-key": get("x-api-key"),
            "x-db-user": get("x-db-user"),
            "x-db-password": get("x-db-password"),
            "cookie": get("cookie"),
            "host": get("host"),
        })
        .to_string()
    }

    #[tool(description = "Counts to n, one progress notification per step")]
    async fn count(
        &self,
        meta: RequestMetaObject,
        client: Peer<RoleServer>,
        Parameters(CountArgs { n, delay_ms, tag }): Parameters<CountArgs>,
    ) -> String {
        if let Some(token) = meta.get_progress_token() {
            for step in 1..=n {
                *STEPS.lock().unwrap().entry(tag.clone()).or_default() = step;
                let _ = client
                    .notify_progress(
                        ProgressNotificationParam::new(token.clone(), step as f64)
                            .with_total(n as f64),
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            }
        }
        format!("counted to {n}")
    }

    #[tool(description = "Sleeps, then answers")]
    async fn sleep(&self, Parameters(SleepArgs { ms }): Parameters<SleepArgs>) -> String {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        "slept".into()
    }
}

#[tool_handler]
impl ServerHandler for Fixture {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

pub struct Upstream {
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// Starts the fixture on a loopback port; `sessions` picks the stateful mode.
    pub async fn start(sessions: bool) -> Self {
        let service = StreamableHttpService::new(
            || Ok(Fixture::new()),
            Arc::new(LocalSessionManager::default()),
            StreamableHttpServerConfig::default()
                .with_legacy_session_mode(sessions)
                .with_sse_keep_alive(None),
        );
        let router = axum::Router::new().nest_service("/mcp", service);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/mcp", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self { url, task }
    }
}
