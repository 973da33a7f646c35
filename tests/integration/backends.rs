//! Backends and credential sources: what goes upstream as a credential comes from an async
//! source that can fail in a way the MCP client understands ("connect first", a JSON-RPC
//! URL-elicitation error) and that is asked again when the upstream answers `401` — the
//! response phase, which retries once with a renewed credential.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use mcp_oauth_gateway::authorization::token::Principal;
use mcp_oauth_gateway::config::UpstreamConfig;
use mcp_oauth_gateway::proxy::{AfterUnauthorized, CredentialError, CredentialSource};
use mcp_oauth_gateway::web::Extensions;
use serde_json::{Value, json};

use crate::support::*;

/// An upstream that accepts only `Bearer fresh`, and counts what reaches it.
async fn picky_upstream() -> (String, Arc<Mutex<Vec<String>>>) {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    let app = axum::Router::new().route(
        "/mcp",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let log = log.clone();
            async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                log.lock().unwrap().push(auth.clone());
                if auth != "Bearer fresh" {
                    return (
                        StatusCode::UNAUTHORIZED,
                        [("www-authenticate", "Bearer error=\"invalid_token\"")],
                    )
                        .into_response();
                }
                let id = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v.get("id").cloned())
                    .unwrap_or(Value::Null);
                axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": {"ok": true}}))
                    .into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/mcp"), seen)
}

/// A token that can be renewed, as the upstream OAuth broker's vault will hold.
struct Renewable {
    token: Mutex<String>,
    renewals: AtomicUsize,
    /// Renews every time (to show the retry happens once, however willing the source).
    always: bool,
}

#[async_trait]
impl CredentialSource for Renewable {
    async fn apply(&self, _: &Principal, h: &mut HeaderMap) -> Result<(), CredentialError> {
        let v = format!("Bearer {}", self.token.lock().unwrap());
        h.insert("authorization", HeaderValue::from_str(&v).unwrap());
        Ok(())
    }
    async fn unauthorized(
        &self,
        _: &Principal,
        _: &http::HeaderMap,
        _: Option<&str>,
    ) -> AfterUnauthorized {
        self.renewals.fetch_add(1, Ordering::SeqCst);
        if self.always {
            *self.token.lock().unwrap() = "still-stale".into();
            return AfterUnauthorized::Retry;
        }
        let mut t = self.token.lock().unwrap();
        if *t == "fresh" {
            return AfterUnauthorized::GiveUp;
        }
        *t = "fresh".into();
        AfterUnauthorized::Retry
    }
}

/// The user has not connected the upstream yet.
struct NotConnected;

#[async_trait]
impl CredentialSource for NotConnected {
    async fn apply(&self, p: &Principal, _: &mut HeaderMap) -> Result<(), CredentialError> {
        Err(CredentialError::ConnectFirst {
            url: format!(
                "https://gw.example/connect/picky?user={}",
                p.user_id.as_deref().unwrap_or("")
            ),
            message: "Connect your picky account first".into(),
        })
    }
}

async fn gateway_with(source: Arc<dyn CredentialSource>) -> (TestGateway, Arc<Mutex<Vec<String>>>) {
    let (url, seen) = picky_upstream().await;
    let extensions = Extensions {
        credential_sources: vec![("picky".into(), source)],
        ..Default::default()
    };
    let gw = TestGateway::start_with_extensions(
        move |c| {
            let u: UpstreamConfig =
                toml::from_str(&format!("name = \"picky\"\nurl = \"{url}\"")).unwrap();
            c.upstreams.push(u);
        },
        extensions,
    )
    .await;
    (gw, seen)
}

async fn call(gw: &TestGateway, token: &str) -> (u16, Value) {
    call_as(gw, token, "2025-11-25").await
}

async fn call_as(gw: &TestGateway, token: &str, revision: &str) -> (u16, Value) {
    let r = TestGateway::http()
        .post(gw.url("/mcp/picky"))
        .bearer_auth(token)
        .header("mcp-protocol-version", revision)
        .header("mcp-method", "tools/call")
        .header("mcp-name", "x")
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "x", "arguments": {}}}))
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn an_upstream_401_lets_the_credential_source_renew_and_retry_once() {
    let source = Arc::new(Renewable {
        token: Mutex::new("stale".into()),
        renewals: AtomicUsize::new(0),
        always: false,
    });
    let (gw, seen) = gateway_with(source.clone()).await;
    let t = authorize_for(&gw, "alice", &format!("{}/mcp/picky", gw.base)).await;
    let (s, body) = call(&gw, &t.access_token).await;
    assert_eq!((s, &body["result"]["ok"]), (200, &json!(true)), "{body}");
    assert_eq!(
        *seen.lock().unwrap(),
        vec!["Bearer stale".to_string(), "Bearer fresh".to_string()]
    );
    assert_eq!(source.renewals.load(Ordering::SeqCst), 1);
    // The renewed credential serves the next call at once.
    let (s, _) = call(&gw, &t.access_token).await;
    assert_eq!(s, 200);
    assert_eq!(seen.lock().unwrap().len(), 3);
    // The client's own token never went upstream.
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .all(|a| !a.contains(&t.access_token))
    );
}

#[tokio::test]
async fn a_second_401_is_relayed_not_retried_again() {
    let source = Arc::new(Renewable {
        token: Mutex::new("stale".into()),
        renewals: AtomicUsize::new(0),
        always: true,
    });
    let (gw, seen) = gateway_with(source.clone()).await;
    let t = authorize_for(&gw, "alice", &format!("{}/mcp/picky", gw.base)).await;
    let (s, _) = call(&gw, &t.access_token).await;
    assert_eq!(s, 401);
    assert_eq!(seen.lock().unwrap().len(), 2, "one try and one retry");
    assert_eq!(source.renewals.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_user_who_must_connect_first_gets_a_url_elicitation_error() {
    let (gw, seen) = gateway_with(Arc::new(NotConnected)).await;
    let t = authorize_for(&gw, "alice", &format!("{}/mcp/picky", gw.base)).await;
    let (s, body) = call(&gw, &t.access_token).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["id"], 7);
    assert_eq!(body["error"]["code"], -32042);
    let e = &body["error"]["data"]["elicitations"][0];
    assert_eq!(e["mode"], "url");
    assert!(
        e["url"]
            .as_str()
            .unwrap()
            .starts_with("https://gw.example/connect/picky")
    );
    assert_eq!(e["message"], "Connect your picky account first");
    assert!(e["elicitationId"].as_str().is_some_and(|s| !s.is_empty()));

    // 2026-07-28: an input-required result naming the same URL, with the gateway's state.
    let (s, body) = call_as(&gw, &t.access_token, "2026-07-28").await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["id"], 7);
    assert!(body.get("error").is_none(), "{body}");
    let r = &body["result"];
    assert_eq!(r["resultType"], "input_required");
    let ask = &r["inputRequests"]["connect"];
    assert_eq!(ask["method"], "elicitation/create");
    assert_eq!(ask["params"]["mode"], "url");
    assert!(
        ask["params"]["url"]
            .as_str()
            .unwrap()
            .starts_with("https://gw.example/connect/picky")
    );
    assert_eq!(r["requestState"], "mcp-oauth-gateway/connect:picky");

    // Earlier revisions: a plain error whose message is all there is.
    let (s, body) = call_as(&gw, &t.access_token, "2025-06-18").await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["error"]["code"], -32000);
    assert_eq!(body["error"]["message"], "Connect your picky account first");
    assert!(body["error"].get("data").is_none());
    assert!(seen.lock().unwrap().is_empty(), "nothing went upstream");
}

#[tokio::test]
async fn a_credential_source_for_an_unknown_upstream_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = mcp_oauth_gateway::config::Config::default();
    config.store.url = format!("sqlite://{}", dir.path().join("gw.db").display());
    let store = mcp_oauth_gateway::store::open(&config.store.url)
        .await
        .unwrap();
    let clock: mcp_oauth_gateway::clock::SharedClock =
        Arc::new(mcp_oauth_gateway::clock::ManualClock::starting_now());
    let extensions = Extensions {
        credential_sources: vec![("nowhere".into(), Arc::new(NotConnected))],
        ..Default::default()
    };
    let err = mcp_oauth_gateway::web::Gateway::with_extensions(config, store, clock, extensions)
        .await
        .err()
        .unwrap();
    assert!(err.contains("nowhere"), "{err}");
}
