//! A real OpenID Connect provider (npm `oidc-provider`, a certified implementation) on
//! loopback, and a browser walking through its sign-in and consent pages. The identity
//! provider logins are built on it; for now it shows that the gateway's JWT reader verifies
//! the ID tokens a real provider issues, with the keys it publishes, and refuses them when
//! anything in them is not what was asked for.

use std::process::Stdio;

use mcp_oauth_gateway::jwt::{self, Alg, Expect, JwtError, KeySet};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::js::{js_dir, node};

pub struct OidcProvider {
    pub issuer: String,
    _child: Child,
}

impl OidcProvider {
    /// Starts the provider with one confidential client; `None` (with a message) when the
    /// JavaScript packages are not installed outside CI.
    pub async fn start(client_id: &str, secret: &str, redirect_uri: &str) -> Option<Self> {
        // A port found free can be taken by another test before node binds it: try again.
        for _ in 0..3 {
            match Self::start_on(free_port(), client_id, secret, redirect_uri).await? {
                Ok(op) => return Some(op),
                Err(why) => eprintln!("oidc-provider did not start ({why}); another port"),
            }
        }
        panic!("oidc-provider did not start on three ports");
    }

    /// On a port chosen before (the gateway must know the issuer before it starts):
    /// `None` without the packages, `Some(Err)` when it could not listen there.
    pub async fn start_on(
        port: u16,
        client_id: &str,
        secret: &str,
        redirect_uri: &str,
    ) -> Option<Result<Self, String>> {
        let node = node()?;
        let mut child = Command::new(node)
            .arg(js_dir().join("oidc-provider.mjs"))
            .current_dir(js_dir())
            .env("OIDC_PORT", port.to_string())
            .env("OIDC_CLIENT_ID", client_id)
            .env("OIDC_CLIENT_SECRET", secret)
            .env("OIDC_REDIRECT_URI", redirect_uri)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let line = match tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line())
            .await
            .expect("the provider starts in time")
        {
            Ok(Some(line)) => line,
            // It exited without listening (the port was taken meanwhile).
            _ => return Some(Err(format!("nothing listens on {port}"))),
        };
        // The rest of what it prints is read and dropped: a closed pipe would end it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let issuer = serde_json::from_str::<Value>(&line).expect("json")["issuer"]
            .as_str()
            .expect("issuer")
            .to_string();
        Some(Ok(Self {
            issuer,
            _child: child,
        }))
    }

    /// Asks the provider for what a correct one never does (see `oidc-provider.mjs`).
    pub async fn control(&self, query: &str) {
        let r = reqwest::Client::new()
            .post(format!("{}/_test/control?{query}", self.issuer))
            .send()
            .await
            .expect("the provider's control");
        assert_eq!(r.status(), 200);
    }
}

impl OidcProvider {
    /// The provider's token response for `login`, signed in through its pages, asking for
    /// an access token for `resource` (RFC 8707) with the `mcp` scope.
    pub async fn tokens_for_resource(
        &self,
        client: (&str, &str),
        redirect: &str,
        login: &str,
        resource: &str,
    ) -> Value {
        let http = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let mut auth = url::Url::parse(&format!("{}/auth", self.issuer)).unwrap();
        auth.query_pairs_mut()
            .append_pair("client_id", client.0)
            .append_pair("redirect_uri", redirect)
            .append_pair("response_type", "code")
            .append_pair("scope", "openid mcp")
            .append_pair("resource", resource)
            .append_pair("state", "the-state")
            .append_pair("code_challenge", CHALLENGE)
            .append_pair("code_challenge_method", "S256");
        let back = walk_through(&http, auth.as_str(), login, redirect).await;
        let code = back
            .query_pairs()
            .find(|(k, _)| k == "code")
            .expect("a code")
            .1
            .into_owned();
        http.post(format!("{}/token", self.issuer))
            .basic_auth(client.0, Some(client.1))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", redirect),
                ("code_verifier", VERIFIER),
                ("resource", resource),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Follows the provider's pages as a person would — signing in as `login` (any password)
/// and consenting — until the browser is sent to `redirect_uri`; returns that URL.
pub async fn walk_through(
    browser: &reqwest::Client,
    start: &str,
    login: &str,
    redirect_uri: &str,
) -> url::Url {
    let mut at = url::Url::parse(start).expect("url");
    let mut next = browser.get(at.clone()).send().await.expect("provider");
    for _ in 0..12 {
        if next.status().is_redirection() {
            let to = next.headers()["location"].to_str().expect("location");
            let to = at.join(to).expect("a location");
            if to.as_str().starts_with(redirect_uri) {
                return to;
            }
            at = to;
            next = browser.get(at.clone()).send().await.expect("provider");
            continue;
        }
        let page = next.text().await.expect("page");
        let action = attr_after(&page, "<form", "action")
            .unwrap_or_else(|| panic!("a form at {at}: {page}"));
        let action = at.join(&action).expect("an action");
        let mut form: Vec<(String, String)> = Vec::new();
        for input in page.split("<input").skip(1) {
            let (Some(name), value) = (attr(input, "name"), attr(input, "value")) else {
                continue;
            };
            let value = match name.as_str() {
                "login" => login.to_string(),
                "password" => "any password".to_string(),
                _ => value.unwrap_or_default(),
            };
            form.push((name, value));
        }
        at = action.clone();
        next = browser.post(action).form(&form).send().await.expect("post");
    }
    panic!("the provider did not send the browser back");
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let tag = &tag[..tag.find('>').unwrap_or(tag.len())];
    let at = tag.find(&format!("{name}=\""))? + name.len() + 2;
    let end = tag[at..].find('"')?;
    Some(tag[at..at + end].replace("&amp;", "&"))
}

fn attr_after(page: &str, tag: &str, name: &str) -> Option<String> {
    let at = page.find(tag)?;
    attr(&page[at..], name)
}

/// RFC 7636's example verifier and its S256 challenge.
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

#[tokio::test]
async fn the_jwt_reader_verifies_a_real_providers_id_tokens() {
    let redirect = "http://127.0.0.1:9/callback";
    let Some(op) = OidcProvider::start("gateway", "provider secret", redirect).await else {
        return;
    };
    let http = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let discovery: Value = http
        .get(format!("{}/.well-known/openid-configuration", op.issuer))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(discovery["issuer"], op.issuer.as_str());
    let mut auth = url::Url::parse(discovery["authorization_endpoint"].as_str().unwrap()).unwrap();
    auth.query_pairs_mut()
        .append_pair("client_id", "gateway")
        .append_pair("redirect_uri", redirect)
        .append_pair("response_type", "code")
        .append_pair("scope", "openid email profile")
        .append_pair("state", "the-state")
        .append_pair("nonce", "the-nonce")
        .append_pair("code_challenge", CHALLENGE)
        .append_pair("code_challenge_method", "S256");
    let back = walk_through(&http, auth.as_str(), "alice", redirect).await;
    let q: std::collections::HashMap<_, _> = back.query_pairs().into_owned().collect();
    assert_eq!(q["state"], "the-state");
    let tokens: Value = http
        .post(discovery["token_endpoint"].as_str().unwrap())
        .basic_auth("gateway", Some("provider secret"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", q["code"].as_str()),
            ("redirect_uri", redirect),
            ("code_verifier", VERIFIER),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id_token = tokens["id_token"]
        .as_str()
        .expect("an ID token")
        .to_string();
    let jwks = http
        .get(discovery["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let set = KeySet::new(jwt::parse_jwks(&jwks).expect("the provider's JWKS"), now);
    let allowed = [Alg::RS256, Alg::ES256, Alg::EdDSA];
    let expect = Expect {
        issuer: &op.issuer,
        audience: "gateway",
        authorized_party: Some("gateway"),
        nonce: Some("the-nonce"),
        typ: None,
        now,
        skew: 60,
        max_age: None,
    };
    let d = jwt::decode(&id_token, &allowed).expect("decodes");
    let key = set.key_for(&d).expect("the key it names is published");
    d.verify(&id_token, key)
        .expect("the provider's signature verifies");
    jwt::check_claims(&d, &expect).expect("the claims are what was asked for");
    assert_eq!(d.claims["sub"], "alice");
    assert_eq!(d.claims["email"], "alice@example.com");

    // Anything else is refused: another nonce, another audience, another issuer, later
    // than its expiry, an algorithm not allowed, and a token altered in transit.
    for (e, why) in [
        (
            Expect {
                nonce: Some("another"),
                ..expect.clone()
            },
            JwtError::Claim("nonce"),
        ),
        (
            Expect {
                audience: "someone-else",
                ..expect.clone()
            },
            JwtError::Claim("aud"),
        ),
        (
            Expect {
                issuer: "http://127.0.0.1:1",
                ..expect.clone()
            },
            JwtError::Claim("iss"),
        ),
        (
            Expect {
                now: now + 24 * 3600,
                ..expect.clone()
            },
            JwtError::Expired,
        ),
    ] {
        assert_eq!(jwt::check_claims(&d, &e), Err(why));
    }
    assert!(matches!(
        jwt::decode(&id_token, &[Alg::EdDSA]),
        Err(JwtError::Algorithm(_))
    ));
    let mut parts: Vec<String> = id_token.split('.').map(str::to_string).collect();
    let mut payload = d.claims.clone();
    payload.insert("sub".into(), Value::from("mallory"));
    use base64::Engine;
    parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&payload).unwrap());
    let forged = parts.join(".");
    let f = jwt::decode(&forged, &allowed).unwrap();
    assert_eq!(f.verify(&forged, key), Err(JwtError::Signature));
}
