//! The device authorization grant (RFC 8628): a client that cannot open a browser gets a
//! code, a person approves it on "Authorize a device", the client's polling gets tokens —
//! with raw HTTP for every answer of the protocol, and with mcp-remote's `--device-code`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{self, PASSWORD, TestGateway};

const GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// Signs `user` in without a cookie jar: (the Cookie header to send, the session secret).
async fn raw_session(gw: &TestGateway, user: &str) -> (String, String) {
    let http = TestGateway::http();
    let cookie_of = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.strip_prefix(&format!("{name}=")))
            .map(|v| v.split(';').next().unwrap().to_string())
    };
    let r = http.get(gw.url("/authorize/signin")).send().await.unwrap();
    let bind = cookie_of(&r, "mog_bind").unwrap();
    let page = r.text().await.unwrap();
    let csrf = support::hidden(&page, "csrf").unwrap();
    let r = http
        .post(gw.url("/authorize/signin"))
        .header("cookie", format!("mog_bind={bind}"))
        .form(&[("username", user), ("password", PASSWORD), ("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let session = cookie_of(&r, "mog_session").unwrap();
    (format!("mog_bind={bind}; mog_session={session}"), session)
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn register_device_client(gw: &TestGateway) -> String {
    let r = TestGateway::http()
        .post(gw.url("/register"))
        .json(&json!({
            "client_name": "Headless Agent",
            "token_endpoint_auth_method": "none",
            "grant_types": [GRANT, "refresh_token"],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    v["client_id"].as_str().unwrap().to_string()
}

async fn ask(gw: &TestGateway, client_id: &str) -> Value {
    let (status, v) = gw
        .post_form(
            "/device_authorization",
            &[("client_id", client_id), ("resource", &gw.resource())],
        )
        .await;
    assert_eq!(status, 200, "{v}");
    v
}

async fn poll(gw: &TestGateway, client_id: &str, device_code: &str) -> (u16, Value) {
    gw.post_form(
        "/token",
        &[
            ("grant_type", GRANT),
            ("device_code", device_code),
            ("client_id", client_id),
        ],
    )
    .await
}

/// A browser signed in as `user` through the gateway's sign-in page, arriving at the
/// device page for `code` (as the verification URI sends people).
async fn signed_in_at_device_page(gw: &TestGateway, user: &str, code: &str) -> reqwest::Client {
    let browser = TestGateway::browser();
    let r = browser
        .get(gw.url(&format!("/authorize/device?user_code={code}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "not signed in: off to the sign-in page");
    let to = r.headers()["location"].to_str().unwrap().to_string();
    assert!(to.contains("/authorize/signin?device="), "{to}");
    let page = browser
        .get(gw.url(&to))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = support::hidden(&page, "csrf").unwrap();
    let r = browser
        .post(gw.url(&to))
        .form(&[("username", user), ("password", PASSWORD), ("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let back = r.headers()["location"].to_str().unwrap().to_string();
    assert!(
        back.ends_with(&format!("/authorize/device?user_code={code}")),
        "{back}"
    );
    browser
}

/// Enters `code` on the device page: the consent page's HTML (or the page again).
async fn enter(gw: &TestGateway, browser: &reqwest::Client, code: &str) -> (u16, String) {
    let page = browser
        .get(gw.url("/authorize/device"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = support::hidden(&page, "csrf").unwrap();
    let r = browser
        .post(gw.url("/authorize/device"))
        .form(&[("user_code", code), ("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn decide(
    gw: &TestGateway,
    browser: &reqwest::Client,
    consent: &str,
    decision: &str,
) -> (u16, String) {
    let r = browser
        .post(gw.url("/authorize/device/decide"))
        .form(&[
            ("user_code", support::hidden(consent, "user_code").unwrap()),
            ("csrf", support::hidden(consent, "csrf").unwrap()),
            ("decision", decision.to_string()),
        ])
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn a_device_gets_tokens_once_a_person_approves_its_code() {
    let gw = TestGateway::start().await;
    let (_, meta) = {
        let r = TestGateway::http()
            .get(gw.url("/.well-known/oauth-authorization-server"))
            .send()
            .await
            .unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(
        meta["device_authorization_endpoint"],
        gw.url("/device_authorization").as_str()
    );
    assert!(
        meta["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&json!(GRANT))
    );
    let client_id = register_device_client(&gw).await;
    let d = ask(&gw, &client_id).await;
    let device_code = d["device_code"].as_str().unwrap().to_string();
    let user_code = d["user_code"].as_str().unwrap().to_string();
    assert_eq!(user_code.len(), 9);
    assert_eq!(d["verification_uri"], gw.url("/authorize/device").as_str());
    assert_eq!(
        d["verification_uri_complete"],
        format!("{}?user_code={user_code}", gw.url("/authorize/device")).as_str()
    );
    assert_eq!(d["interval"], 5);
    assert_eq!(d["expires_in"], 600);

    // Nobody has decided: pending; polling again at once: slow down (and the interval grows).
    let (status, v) = poll(&gw, &client_id, &device_code).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("authorization_pending"))
    );
    let (status, v) = poll(&gw, &client_id, &device_code).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("slow_down")),
        "{v}"
    );
    gw.clock.advance(6);
    let (_, v) = poll(&gw, &client_id, &device_code).await;
    assert_eq!(v["error"], "slow_down", "the interval is 10 s now");
    // Each slow_down adds 5 s for good (RFC 8628 §3.5): 15 s now.
    gw.clock.advance(14);
    let (_, v) = poll(&gw, &client_id, &device_code).await;
    assert_eq!(v["error"], "slow_down");
    gw.clock.advance(20);
    let (_, v) = poll(&gw, &client_id, &device_code).await;
    assert_eq!(v["error"], "authorization_pending");
    // Another client cannot poll it.
    let other = register_device_client(&gw).await;
    let (_, v) = poll(&gw, &other, &device_code).await;
    assert_eq!(v["error"], "invalid_grant");

    let browser = signed_in_at_device_page(&gw, "alice", &user_code).await;
    // Typed any way a person might: lower case, without the dash.
    let typed = user_code.replace('-', "").to_lowercase();
    let (status, consent) = enter(&gw, &browser, &typed).await;
    assert_eq!(status, 200, "{consent}");
    assert!(consent.contains("Headless Agent") && consent.contains(&user_code));
    assert!(consent.contains(&gw.resource()));
    let (status, done) = decide(&gw, &browser, &consent, "allow").await;
    assert_eq!(status, 200, "{done}");
    // The same consent form again: decided already.
    let (status, _) = decide(&gw, &browser, &consent, "allow").await;
    assert_eq!(status, 403);

    gw.clock.advance(21);
    let (status, tokens) = poll(&gw, &client_id, &device_code).await;
    assert_eq!(status, 200, "{tokens}");
    let access = tokens["access_token"].as_str().unwrap().to_string();
    let (status, who) = support::call_whoami(&gw, &access).await;
    assert_eq!(status, 200);
    assert!(who.to_string().contains("alice"), "{who}");
    let (status, refreshed) = gw
        .post_form(
            "/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
                ("client_id", &client_id),
            ],
        )
        .await;
    assert_eq!(status, 200, "{refreshed}");
    // The device code a second time: refused, and what it issued is revoked.
    gw.clock.advance(11);
    let (_, v) = poll(&gw, &client_id, &device_code).await;
    assert_eq!(v["error"], "invalid_grant");
    let (status, _) = support::call_whoami(&gw, refreshed["access_token"].as_str().unwrap()).await;
    assert_eq!(status, 401);
    // Counted: the request, the approval, the tokens of the device grant; polling answers
    // are not refusals.
    let m = metrics(&gw).await;
    assert!(!m.contains("reason=\"slow_down\"") && !m.contains("reason=\"authorization_pending\""));
    for (series, n) in [
        (
            "mcp_gateway_tokens_issued_total{grant_type=\"device_code\"}",
            "1",
        ),
        (
            "mcp_gateway_security_events_total{action=\"device_authorization_requested\"}",
            "1",
        ),
        (
            "mcp_gateway_security_events_total{action=\"device_approved\"}",
            "1",
        ),
    ] {
        assert!(
            m.lines().any(|l| l == format!("{series} {n}")),
            "{series}: {m}"
        );
    }
}

async fn metrics(gw: &TestGateway) -> String {
    TestGateway::http()
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn denial_expiry_and_unregistered_clients_get_their_answers() {
    let gw = TestGateway::start().await;
    let client_id = register_device_client(&gw).await;
    // A client registered for the browser flow only may not ask.
    let browser_client = gw.register_public("http://127.0.0.1:9999/callback").await;
    let (status, v) = gw
        .post_form(
            "/device_authorization",
            &[("client_id", &browser_client), ("resource", &gw.resource())],
        )
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("unauthorized_client"))
    );
    // Nor for a resource that is not here, nor an unknown scope.
    let (_, v) = gw
        .post_form(
            "/device_authorization",
            &[
                ("client_id", &client_id),
                ("resource", "https://elsewhere.example/mcp"),
            ],
        )
        .await;
    assert_eq!(v["error"], "invalid_target");
    let (_, v) = gw
        .post_form(
            "/device_authorization",
            &[("client_id", &client_id), ("scope", "root")],
        )
        .await;
    assert_eq!(v["error"], "invalid_scope");

    // Denied.
    let d = ask(&gw, &client_id).await;
    let code = d["user_code"].as_str().unwrap();
    let browser = signed_in_at_device_page(&gw, "bob", code).await;
    let (_, consent) = enter(&gw, &browser, code).await;
    let (status, _) = decide(&gw, &browser, &consent, "deny").await;
    assert_eq!(status, 200);
    let (status, v) = poll(&gw, &client_id, d["device_code"].as_str().unwrap()).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("access_denied")));
    assert!(
        metrics(&gw)
            .await
            .contains("mcp_gateway_security_events_total{action=\"device_denied\"} 1")
    );

    // Expired, before anyone decided: the page finds nothing, the poll says so.
    let d = ask(&gw, &client_id).await;
    gw.clock.advance(601);
    let (status, page) = enter(&gw, &browser, d["user_code"].as_str().unwrap()).await;
    assert_eq!(status, 400, "{page}");
    let (_, v) = poll(&gw, &client_id, d["device_code"].as_str().unwrap()).await;
    assert_eq!(v["error"], "expired_token");
    let (_, v) = poll(&gw, &client_id, "mog_dc_made-up").await;
    assert_eq!(v["error"], "invalid_grant");
}

#[tokio::test]
async fn codes_cannot_be_guessed_or_approved_from_another_site() {
    let gw = TestGateway::start().await;
    let client_id = register_device_client(&gw).await;
    let d = ask(&gw, &client_id).await;
    let code = d["user_code"].as_str().unwrap().to_string();
    let browser = signed_in_at_device_page(&gw, "alice", &code).await;

    // The consent form without this browser's token (a page of another site posting it).
    let (_, consent) = enter(&gw, &browser, &code).await;
    let r = browser
        .post(gw.url("/authorize/device/decide"))
        .form(&[
            ("user_code", code.as_str()),
            ("csrf", "0123456789abcdef0123456789abcdef"),
            ("decision", "allow"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A signed-in stranger knows their own session cookie and can guess user codes: a form
    // token derived from those two alone would let them decide any device without the
    // typing throttle. The token is bound to the device (which only the server knows), so
    // such a forgery fits no device — and gets the answer a code nobody waits on gets.
    let (cookies, session) = raw_session(&gw, "bob").await;
    let forged = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(format!("device-decide\n{}", code.replace('-', "")).as_bytes());
        h.update([0]);
        h.update(session.as_bytes());
        hex_of(&h.finalize()[..16])
    };
    for user_code in [code.as_str(), "BBBB-BBBB"] {
        let r = TestGateway::http()
            .post(gw.url("/authorize/device/decide"))
            .header("cookie", &cookies)
            .form(&[
                ("user_code", user_code),
                ("csrf", forged.as_str()),
                ("decision", "allow"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{user_code}");
    }
    let (_, v) = poll(&gw, &client_id, d["device_code"].as_str().unwrap()).await;
    assert_eq!(v["error"], "authorization_pending", "nothing was decided");
    // The right token, but for another code than the one shown.
    let r = browser
        .post(gw.url("/authorize/device/decide"))
        .form(&[
            ("user_code", "BCDF-GHJK"),
            ("csrf", support::hidden(&consent, "csrf").unwrap().as_str()),
            ("decision", "allow"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Another browser, not signed in, with the whole form.
    let stranger = TestGateway::browser();
    let (status, _) = decide(&gw, &stranger, &consent, "allow").await;
    assert_eq!(status, 403);
    // Entering a code from another site's form (no token): refused.
    let r = browser
        .post(gw.url("/authorize/device"))
        .form(&[("user_code", code.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // Guessing: ten wrong codes, then even the right one is refused for a while.
    for i in 0..10 {
        let (status, _) = enter(&gw, &browser, "BBBB-BBBB").await;
        assert_eq!(status, 400, "attempt {i}");
    }
    let (status, page) = enter(&gw, &browser, &code).await;
    assert_eq!(status, 429, "{page}");
    gw.clock.advance(6);
    let (_, v) = poll(&gw, &client_id, d["device_code"].as_str().unwrap()).await;
    assert_eq!(v["error"], "authorization_pending", "nothing was approved");
    // The next window.
    gw.clock.advance(900);
    let d = ask(&gw, &client_id).await;
    let (status, _) = enter(&gw, &browser, d["user_code"].as_str().unwrap()).await;
    assert_eq!(status, 200);

    // Where the sign-in page sends a person is the device page, whatever is smuggled in.
    let r = TestGateway::browser()
        .get(gw.url("/authorize/device?user_code=%2F%2Fevil.example"))
        .send()
        .await
        .unwrap();
    let to = r.headers()["location"].to_str().unwrap();
    assert!(to.ends_with("/authorize/signin?device="), "{to}");
}

/// mcp-remote (a real MCP client) with `--device-code`, started and asked to initialize:
/// it registers for the grant and prints the verification URI, which is returned.
pub(crate) struct DeviceMcpRemote {
    pub child: tokio::process::Child,
    pub stdin: tokio::process::ChildStdin,
    pub stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    pub uri: String,
    _home: tempfile::TempDir,
}

impl DeviceMcpRemote {
    pub(crate) async fn start(node: &std::path::Path, gw: &TestGateway) -> Self {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let home = tempfile::tempdir().unwrap();
        let script = crate::js::js_dir().join("node_modules/mcp-remote/dist/proxy.js");
        let mut child = tokio::process::Command::new(node)
            .arg(&script)
            .arg(gw.url("/mcp"))
            .arg("--device-code")
            .env("MCP_REMOTE_CONFIG_DIR", home.path())
            .env("HOME", home.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut stdin = child.stdin.take().unwrap();
        // mcp-remote connects when the MCP client speaks first.
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "device-test", "version": "1"}}});
        stdin
            .write_all(format!("{init}\n").as_bytes())
            .await
            .unwrap();
        let mut seen = Vec::new();
        let uri = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(l) = stderr.next_line().await.unwrap() {
                seen.push(l.clone());
                if let Some(at) = l.find("/authorize/device?user_code=") {
                    let start = l[..at].rfind("http").unwrap();
                    return l[start..].trim().to_string();
                }
            }
            panic!("mcp-remote ended: {seen:#?}");
        })
        .await
        .unwrap_or_else(|_| panic!("no verification URI: {seen:#?}"));
        // Its later output is not needed, but must not fill the pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
        Self {
            child,
            stdin,
            stdout,
            uri,
            _home: home,
        }
    }

    /// The answer to request `id`.
    pub(crate) async fn reply(&mut self, id: i64, wait: Duration) -> Value {
        tokio::time::timeout(wait, async {
            while let Some(l) = self.stdout.next_line().await.unwrap() {
                if let Ok(v) = serde_json::from_str::<Value>(&l)
                    && v["id"] == id
                {
                    return v;
                }
            }
            panic!("mcp-remote closed its output");
        })
        .await
        .unwrap_or_else(|_| panic!("no answer to request {id}"))
    }

    /// Once a person approved: the answer to its `initialize` (checked), then `tools/call
    /// whoami`'s answer.
    pub(crate) async fn initialized_then_whoami(&mut self) -> Value {
        let reply = self.reply(1, Duration::from_secs(60)).await;
        assert!(reply["result"]["serverInfo"].is_object(), "{reply}");
        self.send(&[
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}),
        ])
        .await;
        self.reply(2, Duration::from_secs(30)).await
    }

    /// Sends lines of JSON-RPC.
    pub(crate) async fn send(&mut self, messages: &[Value]) {
        use tokio::io::AsyncWriteExt;
        for m in messages {
            self.stdin
                .write_all(format!("{m}\n").as_bytes())
                .await
                .unwrap();
        }
    }
}

/// Its polls run on real time while a test gateway's clock stands still: keeps the clock
/// moving so that a poll is never "too soon".
pub(crate) fn keep_clock_moving(gw: &TestGateway) -> tokio::task::JoinHandle<()> {
    let clock = gw.clock.clone();
    tokio::spawn(async move {
        // An interval, not a sleep in a loop: on a busy machine the gateway's clock must not
        // fall behind real time, or a poll on time would look too soon.
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            clock.advance(1);
        }
    })
}

/// mcp-remote (a real MCP client) with `--device-code`: it registers for the grant, prints
/// the verification URI, polls while a person approves, then proxies MCP calls.
#[tokio::test]
async fn mcp_remote_signs_in_with_a_device_code() {
    let Some(node) = crate::js::node() else {
        return;
    };
    let gw = TestGateway::start().await;
    let mut remote = DeviceMcpRemote::start(&node, &gw).await;
    let code = remote.uri.rsplit("user_code=").next().unwrap().to_string();
    let browser = signed_in_at_device_page(&gw, "alice", &code).await;
    let (status, consent) = enter(&gw, &browser, &code).await;
    assert_eq!(status, 200, "{consent}");
    let (status, _) = decide(&gw, &browser, &consent, "allow").await;
    assert_eq!(status, 200);
    let ticker = keep_clock_moving(&gw);
    let who = remote.initialized_then_whoami().await;
    ticker.abort();
    assert!(who.to_string().contains("alice"), "{who}");
    remote.child.kill().await.unwrap();
}
