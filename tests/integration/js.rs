//! Real JavaScript peers: the TypeScript SDK client and the official conformance suite.
//! Their npm packages (and Node 22) are installed by the test command (`scripts/test`).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use crate::cimd_fixture::CimdFixture;
use crate::support::*;

pub fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

/// Node 22 from the `node` npm package, or `None` (with a message) when the packages are
/// not installed; in CI that is a failure, not a skip.
pub fn node() -> Option<PathBuf> {
    let node = js_dir().join("node_modules/.bin/node");
    if node.exists()
        && js_dir()
            .join("node_modules/@modelcontextprotocol/sdk")
            .exists()
    {
        return Some(node);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "tests/js/node_modules is missing: the test command (scripts/test) installs it"
    );
    eprintln!("SKIPPED: tests/js/node_modules is not installed; run scripts/test to install it");
    None
}

pub struct SdkRun {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl SdkRun {
    fn start(gw: &TestGateway, node: &PathBuf, client_id: Option<&str>, wait: bool) -> Self {
        Self::start_at(gw.url("/mcp"), node, client_id, wait, &[])
    }

    /// The SDK client against `url`, with extra environment (MCP_TOOL, MCP_ARGS).
    pub fn start_at(
        url: String,
        node: &PathBuf,
        client_id: Option<&str>,
        wait: bool,
        env: &[(&str, &str)],
    ) -> Self {
        let mut cmd = Command::new(node);
        cmd.arg(js_dir().join("sdk-client.mjs"))
            .current_dir(js_dir())
            .envs(env.iter().copied())
            .env("MCP_URL", url)
            .env("MCP_USER", "alice")
            .env("MCP_PASSWORD", PASSWORD)
            .env("MCP_WAIT", if wait { "1" } else { "0" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(id) = client_id {
            cmd.env("MCP_CLIENT_ID", id);
        }
        let mut child = cmd.spawn().expect("spawn node");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self { child, lines }
    }

    pub async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
            .await
            .expect("the SDK client answered in time")
            .expect("read")
            .expect("the SDK client printed a result (see its stderr above)");
        serde_json::from_str(&line).expect("JSON line")
    }

    pub async fn finish(mut self) {
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success());
    }
}

#[tokio::test]
async fn typescript_sdk_client_with_dynamic_registration() {
    let Some(node) = node() else { return };
    let gw = TestGateway::start().await;
    let mut run = SdkRun::start(&gw, &node, None, false);
    let v = run.next().await;
    assert_eq!(v["who"]["user"], "alice");
    assert_eq!(v["who"]["resource"], gw.resource());
    assert!(v["client_id"].as_str().unwrap().starts_with("mog_ci_"));
    run.finish().await;
}

#[tokio::test]
async fn typescript_sdk_client_with_a_client_id_metadata_document() {
    let Some(node) = node() else { return };
    let fixture = CimdFixture::standard("http://127.0.0.1:9999/callback").await;
    let gw = TestGateway::start_with(|c| c.registration.cimd_allow_http_loopback = true).await;
    let mut run = SdkRun::start(&gw, &node, Some(&fixture.client_id), false);
    let v = run.next().await;
    assert_eq!(v["who"]["client_id"], fixture.client_id);
    assert_eq!(v["who"]["user"], "alice");
    run.finish().await;
}

#[tokio::test]
async fn typescript_sdk_client_refreshes_after_the_access_token_expired() {
    let Some(node) = node() else { return };
    let gw = TestGateway::start().await;
    let mut run = SdkRun::start(&gw, &node, None, true);
    let first = run.next().await;
    assert_eq!(first["who"]["user"], "alice");
    gw.clock.advance(3601);
    run.child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"go\n")
        .await
        .unwrap();
    let second = run.next().await;
    assert_eq!(second["who"]["user"], "alice");
    assert_eq!(second["refreshed"], true, "the SDK refreshed after the 401");
    assert!(
        second["who"]["expires_at"].as_i64().unwrap()
            > first["who"]["expires_at"].as_i64().unwrap()
    );
    run.finish().await;
}

/// A JavaScript MCP server from tests/js/node_modules, on a loopback port.
pub struct NodeServer {
    pub port: u16,
    _child: tokio::process::Child,
}

impl NodeServer {
    /// Runs `node <script> <args>` with `PORT` set, until it says it is listening (or running).
    pub async fn start(node: &PathBuf, script: &str, args: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(node)
            .arg(js_dir().join(script))
            .args(args)
            .env("PORT", port.to_string())
            .current_dir(js_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                let l = line.to_ascii_lowercase();
                if l.contains("listening") || l.contains("running on port") {
                    return;
                }
            }
            panic!("the server exited before listening");
        })
        .await
        .expect("the server started in time");
        // Keep draining its log so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            port,
            _child: child,
        }
    }
}
