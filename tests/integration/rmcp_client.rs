//! The rmcp client (the Rust MCP SDK) completes OAuth against the gateway on its own —
//! discovery from the 401, registration, PKCE, the code exchange, refresh — and calls whoami.

use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::auth::{
    AuthClient, AuthorizationManager, AuthorizationRequest, CredentialStore,
    InMemoryCredentialStore, OAuthState,
};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::Value;

use crate::cimd_fixture::CimdFixture;
use crate::support::*;

const REDIRECT: &str = "http://127.0.0.1:9999/callback";

/// Runs the rmcp OAuth flow, approving in a headless browser as `user`; returns the
/// authorized manager.
async fn authorize(
    gw: &TestGateway,
    request: AuthorizationRequest,
    creds: InMemoryCredentialStore,
    user: &str,
) -> AuthorizationManager {
    authorize_at(gw, &gw.resource(), request, creds, user).await
}

/// The rmcp OAuth flow against the MCP endpoint at `url` (the URL a user would give it).
pub async fn authorize_at(
    gw: &TestGateway,
    url: &str,
    request: AuthorizationRequest,
    creds: InMemoryCredentialStore,
    user: &str,
) -> AuthorizationManager {
    let mut manager = AuthorizationManager::new(url).await.unwrap();
    manager.set_credential_store(creds);
    let mut state = OAuthState::Unauthorized(manager);
    state.start_authorization(request).await.unwrap();
    let url = state.get_authorization_url().await.unwrap();
    let location = approve(&TestGateway::browser(), gw, &url, user).await;
    state.handle_callback_url(&location).await.unwrap();
    state.into_authorization_manager().unwrap()
}

pub async fn whoami_with(gw: &TestGateway, manager: AuthorizationManager) -> Value {
    let client = AuthClient::new(reqwest::Client::new(), manager);
    let transport = StreamableHttpClientTransport::with_client(
        client,
        StreamableHttpClientTransportConfig::with_uri(gw.resource()),
    );
    let service = ().serve(transport).await.unwrap();
    let tools = service.list_all_tools().await.unwrap();
    assert_eq!(tools.len(), 1);
    assert_eq!(tools[0].name, "whoami");
    let result = service
        .call_tool(CallToolRequestParams::new("whoami"))
        .await
        .unwrap();
    let _ = service.cancel().await;
    result.structured_content.unwrap()
}

#[tokio::test]
async fn rmcp_client_with_dynamic_registration() {
    let gw = TestGateway::start().await;
    let request = AuthorizationRequest::new(REDIRECT).with_client_name("rmcp test client");
    let manager = authorize(&gw, request, InMemoryCredentialStore::new(), "alice").await;
    let who = whoami_with(&gw, manager).await;
    assert_eq!(who["user"], "alice");
    assert_eq!(who["resource"], gw.resource());
    assert!(who["client_id"].as_str().unwrap().starts_with("mog_ci_"));
}

#[tokio::test]
async fn rmcp_client_with_a_client_id_metadata_document() {
    let fixture = CimdFixture::standard(REDIRECT).await;
    let gw = TestGateway::start_with(|c| c.registration.cimd_allow_http_loopback = true).await;
    // rmcp only offers https metadata URLs itself; a URL client_id is otherwise sent as is.
    let request =
        AuthorizationRequest::new(REDIRECT).with_preregistered_client(fixture.client_id.clone());
    let manager = authorize(&gw, request, InMemoryCredentialStore::new(), "bob").await;
    let who = whoami_with(&gw, manager).await;
    assert_eq!(who["user"], "bob");
    assert_eq!(who["client_id"], fixture.client_id);
    assert!(
        gw.store.list_clients().await.unwrap().is_empty(),
        "nothing registered"
    );
}

#[tokio::test]
async fn rmcp_client_refreshes_after_the_access_token_expired() {
    let gw = TestGateway::start().await;
    let creds = InMemoryCredentialStore::new();
    let request = AuthorizationRequest::new(REDIRECT).with_client_name("rmcp refresh");
    let manager = authorize(&gw, request, creds.clone(), "alice").await;
    let before = creds.load().await.unwrap().unwrap();
    let old_token = before.token_response.as_ref().map(|t| {
        serde_json::to_value(t).unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    });
    // An hour passes on both sides: the gateway's clock, and the client's record of when it
    // got the token.
    gw.clock.advance(3601);
    let mut aged = before.clone();
    aged.token_received_at = aged.token_received_at.map(|t| t - 3601);
    creds.save(aged).await.unwrap();
    assert_eq!(call_whoami(&gw, old_token.as_deref().unwrap()).await.0, 401);
    let who = whoami_with(&gw, manager).await;
    assert_eq!(who["user"], "alice");
    let after = creds.load().await.unwrap().unwrap();
    let new_token = after.token_response.as_ref().map(|t| {
        serde_json::to_value(t).unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    });
    assert_ne!(old_token, new_token, "the client refreshed");
}
