use serde_json::Value;

use crate::support::TestGateway;

#[tokio::test]
async fn authorization_server_metadata_and_alias_agree() {
    let gw = TestGateway::start().await;
    let http = TestGateway::http();
    let a: Value = http
        .get(gw.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let b: Value = http
        .get(gw.url("/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(a["issuer"], gw.base);
    assert_eq!(a["authorization_endpoint"], gw.url("/authorize"));
    assert_eq!(a["token_endpoint"], gw.url("/token"));
    assert_eq!(a["registration_endpoint"], gw.url("/register"));
    assert_eq!(
        a["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(a["authorization_response_iss_parameter_supported"], true);
    assert_eq!(a["client_id_metadata_document_supported"], true);
}

#[tokio::test]
async fn protected_resource_metadata_at_path_inserted_and_root_urls() {
    let gw = TestGateway::start().await;
    let http = TestGateway::http();
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ] {
        let r = http.get(gw.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["resource"], gw.resource());
        assert_eq!(
            v["authorization_servers"][0], gw.base,
            "issuer byte-identical"
        );
        assert_eq!(v["scopes_supported"], serde_json::json!(["mcp"]));
    }
    let r = http
        .get(gw.url("/.well-known/oauth-protected-resource/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn metadata_is_public_with_cors_and_options() {
    let gw = TestGateway::start().await;
    let http = TestGateway::http();
    let r = http
        .request(
            reqwest::Method::OPTIONS,
            gw.url("/.well-known/oauth-authorization-server"),
        )
        .header("origin", "http://localhost:6274")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let r = http
        .get(gw.url("/.well-known/oauth-protected-resource/mcp"))
        .header("origin", "http://localhost:6274")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn issuer_with_a_path_is_served_at_the_path_inserted_url() {
    let gw = TestGateway::start_with(|c| {
        let base = format!("http://{}/gw", c.server.listen);
        c.server.public_url = Some(base);
    })
    .await;
    let http = TestGateway::http();
    let origin = gw.base.trim_end_matches("/gw").to_string();
    assert_eq!(gw.direct, gw.base);
    let v: Value = http
        .get(format!(
            "{origin}/.well-known/oauth-authorization-server/gw"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["issuer"], gw.base);
    assert_eq!(v["token_endpoint"], format!("{}/token", gw.base));
    let r = http.post(gw.url("/mcp")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.contains(&format!(
            "{origin}/.well-known/oauth-protected-resource/gw/mcp"
        )),
        "{challenge}"
    );
    let prm = http
        .get(format!(
            "{origin}/.well-known/oauth-protected-resource/gw/mcp"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(prm.status(), 200);
}

#[test]
fn every_example_configuration_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            mcp_oauth_gateway::config::Config::load(Some(&path), std::iter::empty())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(n > 0);
}
