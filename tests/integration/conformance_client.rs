//! The official MCP conformance suite's client authorization scenarios, with the gateway as
//! the client under test: `scripts/conformance-client` starts a gateway (this build's binary)
//! whose upstream is the suite's mock server, plays the person at the browser and an MCP
//! client of the gateway, and the suite judges what the gateway did toward its mock servers
//! (discovery, registration, PKCE, `resource`, scopes, step-up, `iss`, migration, …).

use std::path::PathBuf;
use std::time::Duration;

use crate::js::{js_dir, node};

fn wrapper() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/conformance-client")
}

/// Runs the suite at `cli` (a conformance package's entry point) with `args`; its output.
async fn suite(node: &PathBuf, cli: &str, args: &[&str]) -> (bool, String) {
    let expected = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/conformance-client-expected-failures.yml");
    let run = tokio::process::Command::new(node)
        .arg(js_dir().join(cli))
        .arg("client")
        .arg("--command")
        .arg(wrapper())
        .arg("--expected-failures")
        .arg(expected)
        .args(args)
        .env("MCP_GATEWAY_BIN", env!("CARGO_BIN_EXE_mcp-oauth-gateway"))
        .env("NO_COLOR", "1")
        .current_dir(js_dir())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the suite finished in time")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn summary(text: &str) -> String {
    text.lines()
        .filter(|l| l.starts_with('✓') || l.starts_with('✗') || l.starts_with("Total"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn the_gateway_passes_the_client_authorization_scenarios_as_the_client() {
    let Some(node) = node() else { return };
    // 0.1.16's auth suite, then 0.2.0-alpha.12's, every scenario of each.
    for (cli, version) in [
        ("node_modules/conformance-0.1/dist/index.js", "0.1.16"),
        (
            "node_modules/@modelcontextprotocol/conformance/dist/index.js",
            "0.2.0-alpha.12",
        ),
    ] {
        let (ok, text) = suite(&node, cli, &["--suite", "auth"]).await;
        let lines = summary(&text);
        assert!(ok, "{version}: the auth suite failed:\n{lines}\n\n{text}");
        assert!(!lines.contains('✗'), "{version}:\n{lines}");
        assert!(
            lines.contains("0 failed, 0 warnings"),
            "{version}:\n{lines}\n{text}"
        );
        assert!(
            lines.lines().filter(|l| l.starts_with('✓')).count() >= 14,
            "{version}: every scenario ran:\n{lines}"
        );
    }
    // 0.2.0-alpha.12's scenarios of the 2026-07-28 revision, each at that revision.
    for scenario in [
        "auth/iss-supported",
        "auth/iss-not-advertised",
        "auth/iss-supported-missing",
        "auth/iss-wrong-issuer",
        "auth/iss-unexpected",
        "auth/iss-normalized",
        "auth/metadata-issuer-mismatch",
        "auth/authorization-server-migration",
        "auth/resource-mismatch",
        "auth/offline-access-scope",
        "auth/offline-access-not-supported",
    ] {
        let (ok, text) = suite(
            &node,
            "node_modules/@modelcontextprotocol/conformance/dist/index.js",
            &[
                "--spec-version",
                "2026-07-28",
                "--force",
                "--scenario",
                scenario,
            ],
        )
        .await;
        assert!(ok, "{scenario} failed:\n{text}");
        assert!(
            text.contains("0 failed, 0 warnings") || text.contains("OVERALL: PASSED"),
            "{scenario}:\n{text}"
        );
        assert!(!text.contains("WARNING"), "{scenario}:\n{text}");
    }
}
