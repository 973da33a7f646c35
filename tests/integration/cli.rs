//! The binary itself: first start, account management, configuration errors.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_mcp-oauth-gateway");

fn run(dir: &std::path::Path, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("MCP_OAUTH_GATEWAY_STORE__URL", "sqlite://state.db")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn users_are_managed_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, _) = run(dir.path(), &["migrate"], None);
    assert!(ok && out.contains("migrated"), "{out}");
    let (ok, out, err) = run(
        dir.path(),
        &["users", "add", "carol", "--password-stdin"],
        Some("a good password\n"),
    );
    assert!(ok, "{err}");
    assert!(out.contains("added user `carol`"));
    assert!(!out.contains("a good password") && !err.contains("a good password"));
    let (ok, _, err) = run(
        dir.path(),
        &["users", "add", "carol", "--password-stdin"],
        Some("another password\n"),
    );
    assert!(!ok);
    assert!(err.contains("exists already"), "{err}");
    let (ok, _, err) = run(
        dir.path(),
        &["users", "add", "dave", "--password-stdin"],
        Some("short\n"),
    );
    assert!(!ok);
    assert!(err.contains("at least 8"), "{err}");
    let (ok, out, _) = run(dir.path(), &["users", "add", "erin"], None);
    assert!(ok);
    assert!(
        out.contains("with password: "),
        "a generated password is printed once"
    );
    let (ok, _, err) = run(
        dir.path(),
        &[
            "users",
            "update",
            "carol",
            "--email",
            "carol@example.com",
            "--group",
            "dev",
            "--group",
            "ops",
        ],
        None,
    );
    assert!(ok, "{err}");
    let (ok, _, err) = run(
        dir.path(),
        &["users", "update", "carol", "--email", "not an email"],
        None,
    );
    assert!(!ok);
    assert!(err.contains("not an email address"), "{err}");
    let (ok, out, _) = run(dir.path(), &["users", "list"], None);
    assert!(ok);
    assert!(out.contains("carol") && out.contains("erin"));
    assert!(
        out.contains("carol@example.com") && out.contains("dev,ops"),
        "{out}"
    );
    let (ok, _, err) = run(
        dir.path(),
        &["users", "passwd", "carol", "--password-stdin"],
        Some("a newer password\n"),
    );
    assert!(ok, "{err}");
    let (ok, _, _) = run(dir.path(), &["users", "remove", "erin"], None);
    assert!(ok);
    let (_, out, _) = run(dir.path(), &["users", "list"], None);
    assert!(!out.contains("erin"));
    let (ok, _, err) = run(dir.path(), &["grants", "revoke"], None);
    assert!(!ok);
    assert!(err.contains("--user, --client or --grant"), "{err}");
    let (ok, _, err) = run(dir.path(), &["clients", "remove", "nobody"], None);
    assert!(!ok);
    assert!(err.contains("no client"), "{err}");
}

#[test]
fn configuration_errors_name_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gw.toml"),
        "[authorization]\naccess_token_ttl_secs = -5\n",
    )
    .unwrap();
    let (ok, _, err) = run(dir.path(), &["--config", "gw.toml", "check-config"], None);
    assert!(!ok);
    assert!(
        err.contains("gw.toml") && err.contains("authorization.access_token_ttl_secs"),
        "{err}"
    );
    std::fs::write(
        dir.path().join("typo.toml"),
        "[sever]\nlisten = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let (ok, _, err) = run(dir.path(), &["--config", "typo.toml", "check-config"], None);
    assert!(!ok);
    assert!(err.contains("sever"), "{err}");
    std::fs::write(
        dir.path().join("ok.toml"),
        "[server]\nlisten = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let (ok, out, _) = run(dir.path(), &["--config", "ok.toml", "check-config"], None);
    assert!(ok);
    assert!(out.contains("configuration OK"));
}

#[tokio::test]
async fn first_start_creates_an_admin_and_serves_whoami() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(BIN)
        .current_dir(dir.path())
        .env(
            "MCP_OAUTH_GATEWAY_SERVER__LISTEN",
            format!("127.0.0.1:{port}"),
        )
        .env_remove("MCP_OAUTH_GATEWAY_CONFIG")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut password = None;
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(p) = line.trim().strip_prefix("password: ") {
                password = Some(p.to_string());
            }
            if line.contains("MCP endpoint") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(found);
    assert!(password.is_some_and(|p| p.len() >= 40));
    assert!(
        dir.path().join("mcp-oauth-gateway.db").exists(),
        "the default store is a file in the working directory"
    );
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/mcp"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    child.kill().await.unwrap();
}

#[test]
fn signing_keys_rotate_and_retire_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let kids = |out: &str| -> Vec<(String, String)> {
        out.lines()
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                (f[0].to_string(), f[2].to_string())
            })
            .collect()
    };
    // The first key signs at once (there is nothing to wait for).
    let (ok, _, err) = run(dir.path(), &["keys", "rotate"], None);
    assert!(ok, "{err}");
    let (ok, out, _) = run(dir.path(), &["keys", "list"], None);
    assert!(ok);
    let first = kids(&out);
    assert_eq!(first.len(), 1, "{out}");
    assert_eq!(first[0].1, "signing");
    let (ok, _, err) = run(dir.path(), &["keys", "retire", &first[0].0], None);
    assert!(!ok && err.contains("only live key"), "{err}");

    let (ok, out, err) = run(dir.path(), &["keys", "rotate"], None);
    assert!(ok && out.contains("sign with it after 120 s"), "{out}{err}");
    let (_, out, _) = run(dir.path(), &["keys", "list"], None);
    let both = kids(&out);
    assert_eq!(both.len(), 2, "{out}");
    assert_eq!(both[0].1, "published, signs soon");
    assert_eq!(both[1], (first[0].0.clone(), "signing".to_string()));
    // The key that signs cannot be retired; the other can.
    let (ok, _, err) = run(dir.path(), &["keys", "retire", &first[0].0], None);
    assert!(!ok && err.contains("still signs"), "{err}");
    let (ok, out, err) = run(dir.path(), &["keys", "retire", &both[0].0], None);
    assert!(ok && out.contains("retired"), "{out}{err}");
    let (ok, _, err) = run(dir.path(), &["keys", "retire", "no-such-key"], None);
    assert!(!ok && err.contains("no live key"), "{err}");
    // An id that looks like a flag is still an id.
    let (ok, _, err) = run(dir.path(), &["keys", "retire", "-Ab_c"], None);
    assert!(!ok && err.contains("no live key"), "{err}");
}
