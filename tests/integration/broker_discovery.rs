//! Discovery toward an upstream MCP server that demands its own OAuth: against the
//! TypeScript SDK's example server with its demo authorization server (a real one), and
//! against hand-made metadata for each refusal — a resource that is not the upstream, an
//! issuer that is not the one asked, no S256, private and link-local addresses, a huge
//! document.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use mcp_oauth_gateway::config::Config;
use serde_json::json;

/// A listener that only counts who connects.
async fn counting_listener() -> (u16, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok((_c, _)) = listener.accept().await {
            s.fetch_add(1, Ordering::SeqCst);
        }
    });
    (port, seen, task)
}

fn config(upstream: &str, allow_loopback: bool) -> Config {
    let mut c = Config::default();
    c.upstreams
        .push(serde_json::from_value(json!({"name": "up", "url": upstream})).unwrap());
    c.broker.allow_http_loopback = allow_loopback;
    c
}

async fn probe(c: &Config) -> (Result<(), String>, String) {
    let dir = tempfile::tempdir().unwrap();
    let store = mcp_oauth_gateway::store::open_with(
        &format!("sqlite://{}", dir.path().join("gw.db").display()),
        &c.store.pool(),
    )
    .await
    .unwrap();
    probe_with(c, &store).await
}

async fn probe_with(
    c: &Config,
    store: &mcp_oauth_gateway::store::SharedStore,
) -> (Result<(), String>, String) {
    let mut out = Vec::new();
    let r = mcp_oauth_gateway::broker::probe(c, "up", store, 1_800_000_000, &mut out).await;
    (r, String::from_utf8(out).unwrap())
}

/// An upstream at `/mcp` whose challenge points at its own metadata, which names
/// `resource` and the authorization server `issuer`.
async fn upstream_naming(
    resource_for: impl Fn(&str) -> String,
    issuer: &str,
) -> (String, tokio::task::JoinHandle<()>) {
    // The port is known only once bound: bind, then serve the routes that name it.
    let probe_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe_listener.local_addr().unwrap().port();
    drop(probe_listener);
    let base = format!("http://127.0.0.1:{port}");
    let prm =
        json!({"resource": resource_for(&base), "authorization_servers": [issuer]}).to_string();
    let routes = vec![
        (
            "/mcp".to_string(),
            401,
            vec![(
                "www-authenticate".to_string(),
                format!(
                    "Bearer resource_metadata=\"{base}/.well-known/oauth-protected-resource/mcp\", scope=\"files:read\""
                ),
            )],
            String::new(),
        ),
        (
            "/.well-known/oauth-protected-resource/mcp".to_string(),
            200,
            vec![],
            prm,
        ),
    ];
    let (served, task) = serve_on(port, routes).await;
    assert_eq!(served, base);
    (format!("{base}/mcp"), task)
}

/// A path's fixed answer: (path, status, headers, body).
type Route = (String, u16, Vec<(String, String)>, String);

/// Serves fixed answers by path (any method).
async fn serve_on(port: u16, routes: Vec<Route>) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let routes = Arc::new(routes);
    let app = axum::Router::new().fallback(move |uri: http::Uri| {
        let routes = routes.clone();
        async move {
            let Some((_, status, headers, body)) = routes.iter().find(|(p, ..)| p == uri.path())
            else {
                return http::Response::builder()
                    .status(404)
                    .body(axum::body::Body::empty())
                    .unwrap();
            };
            let mut r = http::Response::builder()
                .status(*status)
                .header("content-type", "application/json");
            for (k, v) in headers {
                r = r.header(k, v);
            }
            r.body(axum::body::Body::from(body.clone())).unwrap()
        }
    });
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (base, task)
}

fn server_metadata(issuer: &str, s256: bool) -> String {
    json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "registration_endpoint": format!("{issuer}/register"),
        "code_challenge_methods_supported": if s256 { json!(["S256"]) } else { json!(["plain"]) },
        "authorization_response_iss_parameter_supported": true
    })
    .to_string()
}

/// An authorization server at its own origin whose metadata names `issuer_in_document`.
async fn authorization_server(
    issuer_in_document: Option<&str>,
    s256: bool,
    body_bytes: Option<usize>,
) -> (String, tokio::task::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let base = format!("http://127.0.0.1:{port}");
    let body = match body_bytes {
        Some(n) => format!("{{\"issuer\": \"{base}\", \"pad\": \"{}\"}}", "x".repeat(n)),
        None => server_metadata(issuer_in_document.unwrap_or(&base), s256),
    };
    serve_on(
        port,
        vec![
            (
                "/.well-known/oauth-authorization-server".into(),
                200,
                vec![],
                body,
            ),
            (
                "/register".into(),
                201,
                vec![],
                json!({"client_id": "gateway-at-test-as"}).to_string(),
            ),
        ],
    )
    .await
}

#[tokio::test]
async fn discovery_of_a_real_oauth_protected_server_and_the_probe() {
    let Some(node) = crate::js::node() else {
        return;
    };
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (mcp_port, auth_port) = (free(), free());
    let script = crate::js::js_dir().join(
        "node_modules/@modelcontextprotocol/sdk/dist/esm/examples/server/simpleStreamableHttp.js",
    );
    let _server = tokio::process::Command::new(node)
        .arg(script)
        .arg("--oauth")
        .env("MCP_PORT", mcp_port.to_string())
        .env("MCP_AUTH_PORT", auth_port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", mcp_port))
            .await
            .is_ok()
            && tokio::net::TcpStream::connect(("127.0.0.1", auth_port))
                .await
                .is_ok()
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let upstream = format!("http://localhost:{mcp_port}/mcp");
    let dir = tempfile::tempdir().unwrap();
    let store = mcp_oauth_gateway::store::open_with(
        &format!("sqlite://{}", dir.path().join("gw.db").display()),
        &Config::default().store.pool(),
    )
    .await
    .unwrap();
    let (r, out) = probe_with(&config(&upstream, true), &store).await;
    assert!(r.is_ok(), "{r:?}\n{out}");
    assert!(
        out.contains(&format!(
            "issuer                           http://localhost:{auth_port}/"
        )),
        "{out}"
    );
    assert!(
        out.contains("token_endpoint                   http://localhost:"),
        "{out}"
    );
    assert!(out.contains("discovery: OK"), "{out}");
    // Registered dynamically at the demo authorization server, and kept for that issuer.
    assert!(out.contains("registered now"), "{out}");
    assert!(out.contains("registration: OK"), "{out}");
    let (r, again) = probe_with(&config(&upstream, true), &store).await;
    assert!(r.is_ok(), "{again}");
    assert!(again.contains("dcr, stored"), "{again}");
    // The gateway's address changes (its redirect URI with it): the old registration is
    // forgotten and a new one made.
    let mut moved = config(&upstream, true);
    moved.server.public_url = Some("https://gateway.example".into());
    let (r, out) = probe_with(&moved, &store).await;
    assert!(r.is_ok(), "{out}");
    assert!(
        out.contains("made under other settings forgotten") && out.contains("registered now"),
        "{out}"
    );
    // Without loopback allowed, the authorization server on another origin is not fetched.
    let (r, out) = probe(&config(&upstream, false)).await;
    let e = r.unwrap_err();
    assert!(e.contains("no authorization server metadata"), "{e}\n{out}");
    assert!(out.contains("only https URLs are fetched"), "{out}");
}

#[tokio::test]
async fn discovery_refuses_what_an_mcp_client_must_refuse() {
    // The resource is another server's.
    let (issuer, _as) = authorization_server(None, true, None).await;
    let (up, _u) = upstream_naming(|_| "https://elsewhere.example/mcp".into(), &issuer).await;
    let (r, out) = probe(&config(&up, true)).await;
    assert!(
        r.unwrap_err()
            .contains("names resource `https://elsewhere.example/mcp`"),
        "{out}"
    );

    // A resource with an escape sequence in it: refused, and printed inert.
    let (issuer, _as) = authorization_server(None, true, None).await;
    let (up, _u) = upstream_naming(|_| "https://evil.example/\u{1b}[2J".into(), &issuer).await;
    let (r, out) = probe(&config(&up, true)).await;
    let e = r.unwrap_err();
    assert!(
        e.contains("names resource") && !e.contains('\u{1b}'),
        "{e:?}\n{out}"
    );

    // The metadata names another issuer than the one it was fetched for.
    let (issuer, _as) = authorization_server(Some("https://impostor.example"), true, None).await;
    let (up, _u) = upstream_naming(|b| format!("{b}/mcp"), &issuer).await;
    let (r, out) = probe(&config(&up, true)).await;
    assert!(
        r.unwrap_err()
            .contains("names issuer `https://impostor.example`"),
        "{out}"
    );

    // No S256.
    let (issuer, _as) = authorization_server(None, false, None).await;
    let (up, _u) = upstream_naming(|b| format!("{b}/mcp"), &issuer).await;
    let (r, out) = probe(&config(&up, true)).await;
    assert!(r.unwrap_err().contains("PKCE with S256"), "{out}");

    // A document too large to be metadata.
    let (issuer, _as) = authorization_server(None, true, Some(200_000)).await;
    let (up, _u) = upstream_naming(|b| format!("{b}/mcp"), &issuer).await;
    let (r, out) = probe(&config(&up, true)).await;
    assert!(r.is_err(), "{out}");
    assert!(out.contains("larger than"), "{out}");

    // A registration endpoint that refuses, in words the operator sees inert.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let issuer = format!("http://127.0.0.1:{port}");
    let (_, _as) = serve_on(
        port,
        vec![
            (
                "/.well-known/oauth-authorization-server".into(),
                200,
                vec![],
                server_metadata(&issuer, true),
            ),
            (
                "/register".into(),
                400,
                vec![],
                json!({"error": "invalid_redirect_uri", "error_description": "no\u{1b}[31m thanks"}).to_string(),
            ),
        ],
    )
    .await;
    let (up, _u) = upstream_naming(|b| format!("{b}/mcp"), &issuer).await;
    let (r, out) = probe(&config(&up, true)).await;
    let e = r.unwrap_err();
    assert!(
        e.contains("registration stopped") && e.contains("invalid_redirect_uri"),
        "{e}"
    );
    assert!(
        !e.contains('\u{1b}') && !out.contains('\u{1b}'),
        "an escape sequence reached the terminal"
    );

    // And a good one, for contrast.
    let (issuer, _as) = authorization_server(None, true, None).await;
    let (up, _u) = upstream_naming(|b| format!("{b}/mcp"), &issuer).await;
    let (r, out) = probe(&config(&up, true)).await;
    assert!(r.is_ok(), "{r:?}\n{out}");
    assert!(out.contains("files:read"), "the challenge's scope: {out}");
}

#[tokio::test]
async fn discovery_never_connects_to_private_addresses_it_was_pointed_at() {
    let (port, seen, _l) = counting_listener().await;
    for issuer in [
        format!("http://127.0.0.1:{port}"),
        format!("https://127.0.0.1:{port}"),
        "https://169.254.169.254".to_string(),
        "https://[::ffff:10.0.0.1]".to_string(),
        "https://10.1.2.3".to_string(),
    ] {
        let (up, _u) = upstream_naming(|b| format!("{b}/mcp"), &issuer).await;
        // Loopback is not allowed here: only the upstream's own origin is trusted.
        let (r, out) = probe(&config(&up, false)).await;
        let e = r.unwrap_err();
        assert!(
            e.contains("no authorization server metadata"),
            "{issuer}: {e}\n{out}"
        );
        assert!(
            out.contains("is not a public address") || out.contains("only https URLs are fetched"),
            "{issuer}: {out}"
        );
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "a private address was contacted"
    );
}
