//! OpenTelemetry traces, in the build with the cargo feature `otel` (scripts/test builds that
//! binary and names it in MCP_GATEWAY_TEST_OTEL_BIN): the gateway sends each request's span
//! over OTLP/HTTP to the configured collector — here a listener that keeps what it gets —
//! inside the trace a trusted caller named in `traceparent` (a stranger's is ignored), and
//! sends what is buffered when it stops. The default build refuses `[traces] endpoint` with the way to get traces.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use tokio::io::{AsyncBufReadExt, BufReader};

fn otel_binary() -> Option<std::path::PathBuf> {
    match std::env::var_os("MCP_GATEWAY_TEST_OTEL_BIN") {
        Some(p) => Some(p.into()),
        None => {
            assert!(
                std::env::var_os("CI").is_none(),
                "MCP_GATEWAY_TEST_OTEL_BIN is not set: scripts/test builds the otel binary"
            );
            eprintln!(
                "SKIPPED: no otel build; run scripts/test (or cargo build --features otel and set MCP_GATEWAY_TEST_OTEL_BIN)"
            );
            None
        }
    }
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

const TRACE_A: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACE_B: &str = "0af7651916cd43dd8448eb211c80319c";

/// Runs the otel build with `extra` configuration against a collector, sends the same
/// requests each time, stops it, and returns everything the collector received.
async fn run_and_collect(bin: &std::path::Path, extra: &str) -> Vec<u8> {
    let received: Arc<Mutex<Vec<u8>>> = Arc::default();
    let keep = received.clone();
    let collector = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let keep = keep.clone();
            async move {
                keep.lock().unwrap().extend_from_slice(&body);
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, collector).await });

    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[store]\nurl = \"sqlite://{}/gw.db\"\n[traces]\nendpoint = \"http://{collector_addr}/v1/traces\"\nservice_name = \"gateway-under-test\"\n{extra}",
            dir.path().display()
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(bin)
        .arg("--config")
        .arg(&config)
        .current_dir(dir.path())
        .env_remove("MCP_OAUTH_GATEWAY_CONFIG")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let started = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("MCP endpoint") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(started);
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    // In a sampled trace; with a malformed traceparent; in a trace its caller did not sample;
    // with a bearer token; with a method nobody standardized.
    for (path, traceparent) in [
        (
            "/.well-known/oauth-authorization-server",
            format!("00-{TRACE_A}-00f067aa0ba902b7-01"),
        ),
        (
            "/.well-known/oauth-authorization-server",
            "00-zz-garbage".into(),
        ),
        ("/healthz", format!("00-{TRACE_B}-00f067aa0ba902b7-00")),
    ] {
        let r = http
            .get(format!("{base}{path}"))
            .header("traceparent", traceparent)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = http
        .post(format!("{base}/mcp"))
        .header("authorization", "Bearer not-a-real-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .request(
            reqwest::Method::from_bytes(b"INVENTEDMETHOD").unwrap(),
            format!("{base}/readyz"),
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().as_u16() < 500 || r.status().as_u16() == 503);

    // Stopped, it sends what it buffered.
    let pid = child.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the gateway stops")
        .unwrap();
    assert!(status.success(), "{status}");
    let mut got = Vec::new();
    for _ in 0..100 {
        got = received.lock().unwrap().clone();
        if contains(&got, b"POST mcp") && contains(&got, b"_OTHER health") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    got
}

#[tokio::test]
async fn the_otel_build_sends_request_spans_in_a_trusted_callers_trace() {
    let Some(bin) = otel_binary() else {
        return;
    };
    let got = run_and_collect(&bin, "trust_any_traceparent = true\n").await;
    assert!(contains(&got, b"gateway-under-test"), "service.name");
    assert!(contains(&got, b"GET metadata"), "the request span's name");
    assert!(contains(&got, b"POST mcp"));
    assert!(contains(&got, b"http.response.status_code"));
    assert!(
        contains(&got, &unhex(TRACE_A)),
        "the span is in the caller's trace"
    );
    assert!(
        !contains(&got, &unhex(TRACE_B)),
        "a trace its caller did not sample is not sent"
    );
    assert!(
        contains(&got, b"_OTHER health") && !contains(&got, b"INVENTEDMETHOD"),
        "a client's own method never names a span"
    );
    assert!(
        !contains(&got, b"not-a-real-token-0123456789"),
        "no credential in a span"
    );
}

#[tokio::test]
async fn a_strangers_traceparent_is_not_followed() {
    let Some(bin) = otel_binary() else {
        return;
    };
    // Loopback is no trusted proxy here: the caller's trace and its sampling are ignored.
    let got = run_and_collect(&bin, "").await;
    assert!(contains(&got, b"GET metadata"), "spans are sent");
    assert!(
        !contains(&got, &unhex(TRACE_A)),
        "not joined to the stranger's trace"
    );
    assert!(
        contains(&got, b"GET health"),
        "its own decision, not the caller's, keeps this one"
    );
}

#[cfg(not(feature = "otel"))]
#[test]
fn the_default_build_says_how_to_get_traces() {
    let mut c = mcp_oauth_gateway::config::Config::default();
    c.traces.endpoint = Some("http://127.0.0.1:4318/v1/traces".into());
    let e = c.validate().unwrap_err().to_string();
    assert!(
        e.contains("traces.endpoint") && e.contains("--features otel"),
        "{e}"
    );
}
