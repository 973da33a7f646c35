//! Client ID Metadata Documents, gateway side: fetched, checked, shown as verified.

use serde_json::json;

use crate::cimd_fixture::CimdFixture;
use crate::support::*;

const REDIRECT: &str = "http://127.0.0.1:9999/callback";

fn authorize_url(gw: &TestGateway, client_id: &str, redirect: &str, pkce: &Pkce) -> String {
    let resource = gw.resource();
    url::Url::parse_with_params(
        &gw.url("/authorize"),
        &authorize_params(client_id, redirect, pkce, &resource),
    )
    .unwrap()
    .to_string()
}

#[tokio::test]
async fn consent_shows_the_verified_domain_of_a_metadata_document_client() {
    let fixture = CimdFixture::standard(REDIRECT).await;
    let gw = TestGateway::start_with(|c| c.registration.cimd_allow_http_loopback = true).await;
    let pkce = Pkce::new();
    let browser = TestGateway::browser();
    let html = browser
        .get(authorize_url(&gw, &fixture.client_id, REDIRECT, &pkce))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (request, csrf) = (
        hidden(&html, "request").unwrap(),
        hidden(&html, "csrf").unwrap(),
    );
    assert!(html.contains("Fixture Client"));
    let consent = browser
        .post(gw.url("/authorize/login"))
        .form(&[
            ("request", request.as_str()),
            ("csrf", csrf.as_str()),
            ("username", "alice"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(consent.contains("Verified domain: 127.0.0.1"), "{consent}");
    // A redirect URI the document does not list stops at a page.
    let r = TestGateway::http()
        .get(authorize_url(
            &gw,
            &fixture.client_id,
            "http://127.0.0.1:9999/elsewhere",
            &pkce,
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers().get("location").is_none());
}

#[tokio::test]
async fn metadata_documents_that_break_the_rules_are_refused() {
    let gw = TestGateway::start_with(|c| c.registration.cimd_allow_http_loopback = true).await;
    let pkce = Pkce::new();
    type Document = Box<dyn Fn(&str) -> serde_json::Value + Send + Sync>;
    let bad_docs: Vec<Document> = vec![
        Box::new(
            |_id| json!({"client_id": "http://127.0.0.1:1/other.json", "redirect_uris": [REDIRECT]}),
        ),
        Box::new(|id| json!({"client_id": id, "redirect_uris": [REDIRECT], "client_secret": "x"})),
        Box::new(
            |id| json!({"client_id": id, "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "client_secret_basic"}),
        ),
        Box::new(|id| json!({"client_id": id})),
        Box::new(
            |id| json!({"client_id": id, "redirect_uris": [REDIRECT], "padding": "x".repeat(6000)}),
        ),
    ];
    for doc in bad_docs {
        let fixture = CimdFixture::serve(doc).await;
        let r = TestGateway::http()
            .get(authorize_url(&gw, &fixture.client_id, REDIRECT, &pkce))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert!(r.headers().get("location").is_none());
        // At the token endpoint the same client is an invalid_client.
        let (s, v) = gw
            .post_form(
                "/token",
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", "x"),
                    ("client_id", &fixture.client_id),
                ],
            )
            .await;
        assert_eq!((s, v["error"].as_str()), (401, Some("invalid_client")));
    }
}

#[tokio::test]
async fn plain_http_and_private_addresses_are_not_fetched_by_default() {
    let fixture = CimdFixture::standard(REDIRECT).await;
    let gw = TestGateway::start().await;
    let pkce = Pkce::new();
    for client_id in [
        fixture.client_id.clone(),
        fixture.client_id.replace("http://", "https://"),
        "https://10.0.0.1/client.json".to_string(),
        "https://169.254.169.254/latest/meta-data".to_string(),
        "https://localhost/client.json".to_string(),
        "https://[::1]/client.json".to_string(),
        "https://app.example/".to_string(),
    ] {
        let r = TestGateway::http()
            .get(authorize_url(&gw, &client_id, REDIRECT, &pkce))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{client_id}");
        assert!(r.headers().get("location").is_none());
    }
    // And with CIMD switched off, a URL is simply an unknown client.
    let off = TestGateway::start_with(|c| {
        c.registration.cimd = false;
        c.registration.cimd_allow_http_loopback = true;
    })
    .await;
    let r = TestGateway::http()
        .get(authorize_url(&off, &fixture.client_id, REDIRECT, &pkce))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}
