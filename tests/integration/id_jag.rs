//! Enterprise-managed authorization: an MCP client exchanges an Identity Assertion JWT
//! Authorization Grant (ID-JAG) from a trusted enterprise identity provider for a gateway
//! access token, without a browser. The provider here is the test: it signs with keys it
//! publishes at a loopback JWKS URL, and each thing wrong in an assertion is refused.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::support::*;
use mcp_oauth_gateway::config::{IdJagIssuerConfig, StaticClientConfig};

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

pub(crate) struct Idp {
    pub(crate) issuer: String,
    es: EcdsaKeyPair,
    ed: Ed25519KeyPair,
    _task: tokio::task::JoinHandle<()>,
}

impl Drop for Idp {
    fn drop(&mut self) {
        self._task.abort();
    }
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

impl Idp {
    /// An identity provider with an ES256 key (`es-1`) and an Ed25519 key (`ed-1`), both
    /// published at `<issuer>/jwks`.
    pub(crate) async fn start() -> Self {
        let rng = SystemRandom::new();
        let es_doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let es =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, es_doc.as_ref()).unwrap();
        let ed_doc = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let ed = Ed25519KeyPair::from_pkcs8(ed_doc.as_ref()).unwrap();
        let point = es.public_key().as_ref().to_vec();
        let jwks = json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "es-1", "alg": "ES256", "use": "sig",
             "x": b64(&point[1..33]), "y": b64(&point[33..65])},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed-1", "alg": "EdDSA", "use": "sig",
             "x": b64(ed.public_key().as_ref())},
        ]});
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let jwks = jwks.clone();
                async move { axum::Json(jwks) }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            issuer,
            es,
            ed,
            _task: task,
        }
    }

    pub(crate) fn sign(&self, header: Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(&serde_json::to_vec(&header).unwrap()),
            b64(&serde_json::to_vec(claims).unwrap())
        );
        let sig = match header["alg"].as_str() {
            Some("ES256") => self
                .es
                .sign(&SystemRandom::new(), input.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec(),
            Some("EdDSA") => self.ed.sign(input.as_bytes()).as_ref().to_vec(),
            _ => Vec::new(),
        };
        format!("{input}.{}", b64(&sig))
    }

    /// A correct ID-JAG for `client_id` at the gateway `gw`, as `sub`.
    fn claims(&self, gw: &TestGateway, client_id: &str, sub: &str) -> Value {
        let now = gw.now();
        json!({
            "iss": self.issuer, "sub": sub, "aud": gw.base, "client_id": client_id,
            "resource": gw.resource(), "scope": "mcp", "jti": mcp_oauth_gateway::crypto::new_id(),
            "iat": now, "exp": now + 300, "email": format!("{sub}@corp.example"),
            "email_verified": true, "preferred_username": sub,
        })
    }

    fn es256(&self, claims: &Value) -> String {
        self.sign(
            json!({"alg": "ES256", "kid": "es-1", "typ": "oauth-id-jag+jwt"}),
            claims,
        )
    }
}

async fn setup() -> (TestGateway, Idp) {
    let idp = Idp::start().await;
    let trusted = IdJagIssuerConfig {
        name: "corp".into(),
        issuer: idp.issuer.clone(),
        jwks_uri: format!("{}/jwks", idp.issuer),
        algorithms: vec!["ES256".into()],
    };
    let gw = TestGateway::start_with(|c| {
        c.trust.id_jag = vec![trusted];
        for (id, grants) in [("agent", JWT_BEARER), ("other", JWT_BEARER), ("plain", "client_credentials")] {
            let client: StaticClientConfig = toml::from_str(&format!(
                "client_id = \"{id}\"\nclient_secret = \"{id}-secret\"\ntoken_endpoint_auth_method = \"client_secret_post\"\ngrant_types = [\"{grants}\"]"
            ))
            .unwrap();
            c.clients.push(client);
        }
    })
    .await;
    (gw, idp)
}

async fn exchange(
    gw: &TestGateway,
    client: &str,
    assertion: &str,
    extra: &[(&str, &str)],
) -> (u16, Value) {
    let secret = format!("{client}-secret");
    let mut form = vec![
        ("grant_type", JWT_BEARER),
        ("assertion", assertion),
        ("client_id", client),
        ("client_secret", secret.as_str()),
    ];
    form.extend_from_slice(extra);
    gw.post_form("/token", &form).await
}

#[tokio::test]
async fn a_trusted_providers_assertion_becomes_a_token_for_its_one_resource() {
    let (gw, idp) = setup().await;
    let meta: Value = TestGateway::http()
        .get(gw.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        meta["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&json!(JWT_BEARER))
    );
    assert_eq!(
        meta["authorization_grant_profiles_supported"],
        json!(["urn:ietf:params:oauth:grant-profile:id-jag"])
    );

    let (s, tokens) = exchange(
        &gw,
        "agent",
        &idp.es256(&idp.claims(&gw, "agent", "dana")),
        &[],
    )
    .await;
    assert_eq!(s, 200, "{tokens}");
    assert!(tokens.get("refresh_token").is_none());
    assert_eq!(tokens["scope"], "mcp");
    let (s, who) = call_whoami(&gw, tokens["access_token"].as_str().unwrap()).await;
    assert_eq!(s, 200);
    let who = &who["result"]["structuredContent"];
    assert_eq!(who["user"], "dana.corp");
    assert_eq!(who["client_id"], "agent");
    assert_eq!(who["resource"], gw.resource());
    // Mapped through the identities table, like a sign-in at that provider: the same user
    // the next time.
    let user = gw
        .store
        .user_by_identity("corp", "dana")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(user.email.as_deref(), Some("dana@corp.example"));
    let (s, _) = exchange(
        &gw,
        "agent",
        &idp.es256(&idp.claims(&gw, "agent", "dana")),
        &[],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        gw.store.list_users().await.unwrap().len(),
        3,
        "alice, bob, dana"
    );

    // Scopes: those both asked for and asserted.
    let mut c = idp.claims(&gw, "agent", "dana");
    c["scope"] = json!("other");
    let (s, body) = exchange(&gw, "agent", &idp.es256(&c), &[("scope", "mcp")]).await;
    assert_eq!(s, 400);
    assert_eq!(body["error"], "invalid_scope");
}

#[tokio::test]
async fn each_thing_wrong_in_an_assertion_is_refused() {
    let (gw, idp) = setup().await;
    let good = || idp.claims(&gw, "agent", "erin");
    // `what` is found in the error's description: refused for that reason, not another.
    let refused = |(s, body): (u16, Value), error: &str, what: &str| {
        assert_eq!(s, 400, "{what}: {body}");
        assert_eq!(body["error"], error, "{what}: {body}");
        assert!(
            body["error_description"]
                .as_str()
                .unwrap_or("")
                .contains(what),
            "{what}: {body}"
        );
    };

    // The same assertion sent twice at once: one token.
    let racing = idp.es256(&good());
    let (a, b) = tokio::join!(
        exchange(&gw, "agent", &racing, &[]),
        exchange(&gw, "agent", &racing, &[])
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [200, 400], "{a:?} {b:?}");
    // Replayed jti: once, and never again (on any instance: it is in the store).
    let once = idp.es256(&good());
    assert_eq!(exchange(&gw, "agent", &once, &[]).await.0, 200);
    refused(
        exchange(&gw, "agent", &once, &[]).await,
        "invalid_grant",
        "used already",
    );

    let mut wrong_aud = good();
    wrong_aud["aud"] = json!("https://other.example");
    refused(
        exchange(&gw, "agent", &idp.es256(&wrong_aud), &[]).await,
        "invalid_grant",
        "not for this server",
    );
    let mut two_auds = good();
    two_auds["aud"] = json!([gw.base, "https://other.example"]);
    refused(
        exchange(&gw, "agent", &idp.es256(&two_auds), &[]).await,
        "invalid_grant",
        "this server alone",
    );

    let mut wrong_resource = good();
    wrong_resource["resource"] = json!(format!("{}/mcp/nowhere", gw.base));
    refused(
        exchange(&gw, "agent", &idp.es256(&wrong_resource), &[]).await,
        "invalid_target",
        "resource",
    );
    let mut no_resource = good();
    no_resource.as_object_mut().unwrap().remove("resource");
    refused(
        exchange(&gw, "agent", &idp.es256(&no_resource), &[]).await,
        "invalid_grant",
        "no resource",
    );

    let mut expired = good();
    expired["iat"] = json!(gw.now() - 3600);
    expired["exp"] = json!(gw.now() - 1800);
    refused(
        exchange(&gw, "agent", &idp.es256(&expired), &[]).await,
        "invalid_grant",
        "expired",
    );

    // For another client, or presented by another client.
    refused(
        exchange(&gw, "other", &idp.es256(&good()), &[]).await,
        "invalid_grant",
        "another client",
    );
    refused(
        exchange(
            &gw,
            "plain",
            &idp.es256(&idp.claims(&gw, "plain", "erin")),
            &[],
        )
        .await,
        "unauthorized_client",
        "not allowed",
    );

    // alg none, an algorithm off this issuer's list (EdDSA, whose key is published), a
    // wrong typ, an unknown issuer, a forged signature.
    let none = idp.sign(json!({"alg": "none", "typ": "oauth-id-jag+jwt"}), &good());
    refused(
        exchange(&gw, "agent", &none, &[]).await,
        "invalid_grant",
        "algorithm",
    );
    let eddsa = idp.sign(
        json!({"alg": "EdDSA", "kid": "ed-1", "typ": "oauth-id-jag+jwt"}),
        &good(),
    );
    refused(
        exchange(&gw, "agent", &eddsa, &[]).await,
        "invalid_grant",
        "not accepted from this issuer",
    );
    let jwt_typ = idp.sign(
        json!({"alg": "ES256", "kid": "es-1", "typ": "JWT"}),
        &good(),
    );
    refused(
        exchange(&gw, "agent", &jwt_typ, &[]).await,
        "invalid_grant",
        "typ",
    );
    let mut stranger = good();
    stranger["iss"] = json!("https://idp.stranger.example");
    refused(
        exchange(&gw, "agent", &idp.es256(&stranger), &[]).await,
        "invalid_grant",
        "not trusted",
    );
    let genuine = idp.es256(&good());
    let (head, _) = genuine.rsplit_once('.').unwrap();
    let mut tampered_claims = good();
    tampered_claims["sub"] = json!("mallory");
    let forged = format!(
        "{}.{}.{}",
        head.split('.').next().unwrap(),
        b64(&serde_json::to_vec(&tampered_claims).unwrap()),
        genuine.rsplit('.').next().unwrap()
    );
    refused(
        exchange(&gw, "agent", &forged, &[]).await,
        "invalid_grant",
        "signature",
    );

    let mut no_jti = good();
    no_jti.as_object_mut().unwrap().remove("jti");
    refused(
        exchange(&gw, "agent", &idp.es256(&no_jti), &[]).await,
        "invalid_grant",
        "no jti",
    );
    let mut later = good();
    later["nbf"] = json!(gw.now() + 3600);
    refused(
        exchange(&gw, "agent", &idp.es256(&later), &[]).await,
        "invalid_grant",
        "not valid yet",
    );
    let mut old = good();
    old["iat"] = json!(gw.now() - 3600);
    refused(
        exchange(&gw, "agent", &idp.es256(&old), &[]).await,
        "invalid_grant",
        "expired",
    );
    let elsewhere = format!("{}/mcp/elsewhere", gw.base);
    refused(
        exchange(
            &gw,
            "agent",
            &idp.es256(&good()),
            &[("resource", &elsewhere)],
        )
        .await,
        "invalid_target",
        "resource",
    );
    // Issuers that would share users with another provider's are refused at start.
    let mut config = mcp_oauth_gateway::config::Config::default();
    let entry = |name: &str, issuer: &str| IdJagIssuerConfig {
        name: name.into(),
        issuer: issuer.into(),
        jwks_uri: format!("{issuer}/jwks"),
        algorithms: vec!["ES256".into()],
    };
    config.trust.id_jag = vec![
        entry("corp", "https://a.example"),
        entry("corp", "https://b.example"),
    ];
    assert!(
        config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("trust.id_jag[1].name")
    );
    config.trust.id_jag = vec![entry("github", "https://a.example")];
    config.login.oidc =
        vec![toml::from_str(
        "name = \"github\"\nprovider = \"github\"\nclient_id = \"c\"\nclient_secret = \"s\"",
    )
    .unwrap()];
    assert!(
        config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("trust.id_jag[0].name")
    );

    // Duplicated parameters are refused before anything is judged.
    let a = idp.es256(&good());
    refused(
        exchange(&gw, "agent", &a, &[("assertion", "x")]).await,
        "invalid_request",
        "repeated",
    );
    assert!(
        gw.store
            .user_by_identity("corp", "mallory")
            .await
            .unwrap()
            .is_none()
    );
}
