//! Browser tests in a real browser: Playwright (`playwright-core` from npm) driving Debian's
//! Chromium headless, on loopback (tests/js/browser.mjs). A person signs in and consents
//! for an MCP client, sees the grant on the console and revokes it — the client's next call
//! is refused; then enters the code mcp-remote `--device-code` prints on "Authorize a device"
//! while it polls, and its MCP calls go through; then
//! an administrator blocks a client at the administrators' console, and the client's token
//! and its next authorization are refused.
//! Screenshots of each page land in `target/screenshots` (the docs' come from there).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::support::{self, PASSWORD, TestGateway};

/// Debian's Chromium, or `None` (with a message) where it is not installed; in CI that is a
/// failure: scripts/test installs it.
fn chromium() -> Option<PathBuf> {
    let path = PathBuf::from(
        std::env::var("MCP_GATEWAY_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
    );
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "Chromium is missing: the test command (scripts/test) installs Debian's package"
    );
    eprintln!(
        "SKIPPED: no Chromium at {}; run scripts/test to install it",
        path.display()
    );
    None
}

struct Browser {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Browser {
    fn start(node: &PathBuf, chromium: &PathBuf, shots: &std::path::Path) -> Self {
        let mut child = tokio::process::Command::new(node)
            .arg(crate::js::js_dir().join("browser.mjs"))
            .current_dir(crate::js::js_dir())
            .env("USER", "alice")
            .env("PASSWORD", PASSWORD)
            .env("SHOTS", shots)
            .env("CHROMIUM", chromium)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            child,
            stdin,
            lines,
        }
    }

    async fn step(&mut self, step: Value) -> Value {
        self.stdin
            .write_all(format!("{step}\n").as_bytes())
            .await
            .unwrap();
        let line = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
            .await
            .expect("the browser answered in time")
            .unwrap()
            .expect("the browser script ended (see its output above)");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert!(v.get("error").is_none(), "{step}: {}", v["error"]);
        v
    }

    async fn quit(mut self) {
        let _ = self.stdin.write_all(b"{\"do\":\"quit\"}\n").await;
        let _ = tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await;
    }
}

/// The client's redirect URI: loopback port 9, where the browser script catches it.
const REDIRECT: &str = "http://127.0.0.1:9/callback";

/// An authorization request of `client_id` for the gateway's resource, and its PKCE.
fn authorize_url(gw: &TestGateway, client_id: &str) -> (support::Pkce, String) {
    let pkce = support::Pkce::new();
    let resource = gw.resource();
    let params = support::authorize_params(client_id, REDIRECT, &pkce, &resource);
    let url = url::Url::parse_with_params(&gw.url("/authorize"), &params).unwrap();
    (pkce, url.to_string())
}

/// Authorized in the browser (sign in if asked, consent), the code redeemed: the access token.
async fn authorized(browser: &mut Browser, gw: &TestGateway, client_id: &str) -> String {
    let (pkce, url) = authorize_url(gw, client_id);
    let v = browser.step(json!({"do": "authorize", "url": url})).await;
    let (status, tokens) = gw
        .post_form(
            "/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", v["code"].as_str().unwrap()),
                ("redirect_uri", REDIRECT),
                ("client_id", client_id),
                ("code_verifier", &pkce.verifier),
                ("resource", &gw.resource()),
            ],
        )
        .await;
    assert_eq!(status, 200, "{tokens}");
    tokens["access_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn in_a_real_browser_a_person_consents_revokes_and_approves_a_device() {
    let (Some(node), Some(chromium)) = (crate::js::node(), chromium()) else {
        return;
    };
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let audit = tempfile::tempdir().unwrap();
    let audit_path = audit.path().join("audit.jsonl").display().to_string();
    let gw = TestGateway::start_with(move |c| {
        c.console.admins = vec!["alice".into()];
        c.audit.path = Some(audit_path);
    })
    .await;
    let mut browser = Browser::start(&node, &chromium, &shots);

    // An MCP client's authorization, in the browser: sign in, consent, back with a code.
    let client_id = gw.register_public(REDIRECT).await;
    let access = authorized(&mut browser, &gw, &client_id).await;
    assert_eq!(support::call_whoami(&gw, &access).await.0, 200);

    // The console shows the grant; revoking it refuses the client's next call.
    let v = browser
        .step(json!({"do": "console_revoke", "base": gw.url("/authorize"), "client": client_id}))
        .await;
    assert_eq!(v["revoked"], true);
    assert_eq!(support::call_whoami(&gw, &access).await.0, 401);

    // A device: mcp-remote --device-code asks and polls while the person enters its code
    // in the browser; then its MCP calls go through as that person.
    let mut remote = crate::device::DeviceMcpRemote::start(&node, &gw).await;
    let ticker = crate::device::keep_clock_moving(&gw);
    let v = browser
        .step(json!({"do": "device", "url": remote.uri}))
        .await;
    assert_eq!(v["approved"], true);
    let who = remote.initialized_then_whoami().await;
    ticker.abort();
    assert!(who.to_string().contains("alice"), "{who}");
    remote.child.kill().await.unwrap();

    // The administrator blocks the first client: its new grant's token is refused, and so
    // is its next authorization.
    let access = authorized(&mut browser, &gw, &client_id).await;
    assert_eq!(support::call_whoami(&gw, &access).await.0, 200);
    let v = browser
        .step(json!({"do": "admin_block", "base": gw.url("/authorize"), "client": client_id}))
        .await;
    assert_eq!(v["blocked"], true);
    assert_eq!(support::call_whoami(&gw, &access).await.0, 401);
    let (_, url) = authorize_url(&gw, &client_id);
    let v = browser.step(json!({"do": "refused", "url": url})).await;
    assert!(
        v["text"].as_str().unwrap().contains("blocked"),
        "{}",
        v["text"]
    );
    browser.quit().await;
    for name in [
        "admin-users",
        "admin-clients",
        "admin-audit",
        "sign-in",
        "consent",
        "console",
        "console-revoked",
        "device-code",
        "device-consent",
    ] {
        assert!(shots.join(format!("{name}.png")).exists(), "{name}.png");
    }
}
