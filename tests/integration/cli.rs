//! The binary itself: first start, account management, configuration errors.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_mcp-oauth-gateway");

fn run(dir: &std::path::Path, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    run_env(dir, args, stdin, &[])
}

fn run_env(
    dir: &std::path::Path,
    args: &[&str],
    stdin: Option<&str>,
    env: &[(&str, &str)],
) -> (bool, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("MCP_OAUTH_GATEWAY_STORE__URL", "sqlite://state.db")
        .envs(env.iter().copied())
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

#[test]
fn the_registration_policy_and_approvals_change_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = run(dir.path(), &["registration", "show"], None);
    assert!(ok, "{err}");
    assert!(
        out.contains("dcr\topen") && out.contains("from\tthe configuration file"),
        "{out}"
    );
    let (ok, out, err) = run(
        dir.path(),
        &[
            "registration",
            "set",
            "--dcr",
            "off",
            "--block-domain",
            "*.Evil.example",
            "--approve-new-clients",
            "true",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("dcr\toff")
            && out.contains("cimd_blocked_domains\t*.evil.example")
            && out.contains("approve_new_clients\ttrue")
            && out.contains("set at run time"),
        "{out}"
    );
    // Kept: the next command reads it back, and changes only what it names.
    let (ok, out, _) = run(
        dir.path(),
        &["registration", "set", "--cimd", "false"],
        None,
    );
    assert!(
        ok && out.contains("dcr\toff") && out.contains("cimd\tfalse"),
        "{out}"
    );
    let (ok, _, err) = run(
        dir.path(),
        &[
            "registration",
            "set",
            "--allow-domain",
            "https://x.example/",
        ],
        None,
    );
    assert!(!ok && err.contains("is not a domain"), "{err}");
    let (ok, _, err) = run(dir.path(), &["registration", "set", "--dcr", "token"], None);
    assert!(!ok && err.contains("initial_access_tokens"), "{err}");
    let (ok, _, err) = run(dir.path(), &["registration", "set", "--dcr", "maybe"], None);
    assert!(!ok && err.contains("maybe"), "{err}");
    let (ok, out, _) = run(dir.path(), &["registration", "reset"], None);
    assert!(
        ok && out.contains("dcr\topen") && out.contains("the configuration file"),
        "{out}"
    );
    // Approving ahead of a client's first visit, once.
    let (ok, out, err) = run(
        dir.path(),
        &["clients", "approve", "https://app.example/c.json"],
        None,
    );
    assert!(ok && out.contains("approved client"), "{out}{err}");
    let (ok, _, err) = run(
        dir.path(),
        &["clients", "approve", "https://app.example/c.json"],
        None,
    );
    assert!(!ok && err.contains("approved already"), "{err}");
    let (ok, out, _) = run(dir.path(), &["clients", "approvals"], None);
    assert!(
        ok && out.starts_with("https://app.example/c.json\tapproved "),
        "{out}"
    );
}

#[tokio::test]
async fn encryption_keys_are_made_and_applied_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let entry = |id: Option<&str>| {
        let mut args = vec!["keys", "new-encryption-key"];
        args.extend(id);
        let (ok, out, err) = run(d, &args, None);
        assert!(ok, "{err}");
        out.trim().to_string()
    };
    let k1 = entry(Some("k1"));
    assert!(k1.starts_with("k1:") && k1.len() == 3 + 44, "{k1}");
    let dated = entry(None);
    let id = dated.split_once(':').unwrap().0;
    assert!(
        id.len() == 15 && id.as_bytes()[8] == b'-' && id[..8].bytes().all(|b| b.is_ascii_digit()),
        "{id}"
    );
    assert!(
        !d.join("state.db").exists(),
        "making a key touches no store"
    );
    let k2 = entry(Some("k2"));
    let material = |e: &str| e.split_once(':').unwrap().1.to_string();
    let enc = "MCP_OAUTH_GATEWAY_KEYS__ENCRYPTION";
    let list = |env: &[(&str, &str)]| {
        let (ok, out, err) = run_env(d, &["keys", "list"], None, env);
        assert!(ok, "{err}");
        out
    };

    // A key made before encryption was configured is stored in clear ...
    let (ok, _, err) = run(d, &["keys", "rotate"], None);
    assert!(ok, "{err}");
    assert!(list(&[]).contains("\tunencrypted"));
    let (ok, _, err) = run(d, &["keys", "reseal"], None);
    assert!(!ok && err.contains("`keys.encryption` is empty"), "{err}");
    // ... and sealed by `keys reseal` once a key is configured; new keys are sealed at once.
    let (ok, out, err) = run_env(d, &["keys", "reseal"], None, &[(enc, &k1)]);
    assert!(
        ok && out.contains("1 signing key(s) re-encrypted"),
        "{out}{err}"
    );
    let (ok, _, err) = run_env(d, &["keys", "rotate"], None, &[(enc, &k1)]);
    assert!(ok, "{err}");
    let out = list(&[]);
    assert_eq!(out.matches("\tencrypted with `k1`").count(), 2, "{out}");
    // Rotation of the encryption key: the new one first in a space-separated list.
    let both = format!("{k2} {k1}");
    let (ok, out, err) = run_env(d, &["keys", "reseal"], None, &[(enc, &both)]);
    assert!(
        ok && out.contains("2 signing key(s) re-encrypted"),
        "{out}{err}"
    );
    assert!(out.contains("now encrypted with `k2`"), "{out}");
    assert_eq!(list(&[]).matches("`k2`").count(), 2);

    // Serving without the key that sealed them fails at start, naming what is missing.
    for (env, expect) in [
        (vec![], "`keys.encryption` is empty"),
        (vec![(enc, k1.as_str())], "`k2`, which is not configured"),
    ] {
        let mut env = env;
        env.push(("MCP_OAUTH_GATEWAY_SERVER__LISTEN", "127.0.0.1:0"));
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new(BIN)
                .current_dir(d)
                .env("MCP_OAUTH_GATEWAY_STORE__URL", "sqlite://state.db")
                .envs(env.iter().copied())
                .env_remove("MCP_OAUTH_GATEWAY_CONFIG")
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("serve gave up at start instead of running")
        .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(expect), "{err}");
    }

    // Bad entries are configuration errors that name the key and never echo the material.
    let short = "k3:c2hvcnQta2V5LW1hdGVyaWFs";
    for (value, expect) in [
        (short, "must be 32 bytes, it is 18"),
        ("k3", "is not `id:key`"),
    ] {
        let (ok, _, err) = run_env(d, &["check-config"], None, &[(enc, value)]);
        assert!(
            !ok && err.contains("keys.encryption") && err.contains(expect),
            "{err}"
        );
        assert!(!err.contains("c2hvcnQ"), "{err}");
    }
    let (ok, _, err) = run_env(
        d,
        &["check-config"],
        None,
        &[
            (enc, &k1),
            ("MCP_OAUTH_GATEWAY_KEYS__ENCRYPTION_ACTIVE", "k9"),
        ],
    );
    assert!(!ok && err.contains("keys.encryption_active"), "{err}");
    // No command ever prints key material it was given.
    for args in [&["keys", "list"][..], &["check-config"][..]] {
        let (ok, out, err) = run_env(d, args, None, &[(enc, &both)]);
        assert!(ok, "{err}");
        for m in [material(&k1), material(&k2)] {
            assert!(!out.contains(&m) && !err.contains(&m));
        }
    }
}

/// Every example configuration in the repository is valid as shipped.
#[test]
fn every_example_configuration_loads() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            mcp_oauth_gateway::config::Config::load(Some(&path), std::iter::empty())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(
        seen > 0,
        "no example configuration found in {}",
        dir.display()
    );
}

#[test]
fn check_config_reports_every_problem_advice_and_the_effective_settings() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.toml"),
        "[server]\npublic_url = \"ftp://gw.example\"\n[store]\nmax_connections = 0\n",
    )
    .unwrap();
    let (ok, out, err) = run(dir.path(), &["--config", "bad.toml", "check-config"], None);
    assert!(!ok);
    assert!(err.contains("server.public_url"), "{err}");
    assert!(
        err.contains("store.max_connections"),
        "both problems, not only the first: {err}"
    );
    assert!(err.contains("2 problem(s)"), "{err}");
    assert!(out.contains("effective configuration"), "{out}");
    std::fs::write(
        dir.path().join("good.toml"),
        "[server]\nlisten = \"0.0.0.0:8080\"\npublic_url = \"http://gw.example\"\negress_proxy = \"http://user:proxy-password@proxy.example:3128\"\n[[upstreams]]\nname = \"up\"\nurl = \"https://u:upstream-password@up.example/mcp?api_key=query-secret\"\n[[clients]]\nclient_id = \"ci\"\nclient_secret = \"a-very-secret-value\"\ngrant_types = [\"client_credentials\"]\n",
    )
    .unwrap();
    let (ok, out, err) = run(dir.path(), &["--config", "good.toml", "check-config"], None);
    assert!(ok, "{out}{err}");
    assert!(out.contains("configuration OK"), "{out}");
    assert!(out.contains("advice: server.public_url"), "{out}");
    assert!(out.contains("advice: audit.path"), "{out}");
    assert!(out.contains("effective configuration") && out.contains("0.0.0.0:8080"));
    assert!(
        out.contains("client `ci`: client_credentials") && !out.contains("a-very-secret-value"),
        "{out}"
    );
    assert!(out.contains("https://up.example/…"), "{out}");
    for secret in ["proxy-password", "upstream-password", "query-secret"] {
        assert!(!out.contains(secret), "{secret}: {out}");
    }
    // Behind a proxy on this host that is not declared: /metrics would answer everyone.
    std::fs::write(
        dir.path().join("proxied.toml"),
        "[server]\nlisten = \"127.0.0.1:8080\"\npublic_url = \"https://gw.example\"\n",
    )
    .unwrap();
    let (ok, out, _) = run(
        dir.path(),
        &["--config", "proxied.toml", "check-config"],
        None,
    );
    assert!(ok && out.contains("reverse proxy on this host"), "{out}");
}

#[tokio::test]
async fn healthcheck_asks_the_running_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    // Nobody listens yet: not healthy, and it says why.
    let (ok, _, err) = run_env(
        dir.path(),
        &["healthcheck"],
        None,
        &[("MCP_OAUTH_GATEWAY_SERVER__LISTEN", &listen)],
    );
    assert!(!ok && err.contains("no answer"), "{err}");
    let mut child = tokio::process::Command::new(BIN)
        .current_dir(dir.path())
        .env("MCP_OAUTH_GATEWAY_SERVER__LISTEN", &listen)
        .env("MCP_OAUTH_GATEWAY_STORE__URL", "sqlite://state.db")
        .env("MCP_OAUTH_GATEWAY_LOG_FORMAT", "json")
        .env_remove("MCP_OAUTH_GATEWAY_CONFIG")
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        let d = tempfile::tempdir().unwrap();
        run_env(
            d.path(),
            &["healthcheck", "--wait", "30"],
            None,
            &[("MCP_OAUTH_GATEWAY_SERVER__LISTEN", &listen)],
        )
    })
    .await
    .unwrap();
    assert!(out.0, "{}{}", out.1, out.2);
    assert!(out.1.contains("ready"));
    child.kill().await.unwrap();
}
