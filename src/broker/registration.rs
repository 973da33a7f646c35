//! Registration of the gateway as an OAuth client at an upstream's authorization server. The
//! MCP specification's order is: credentials from the configuration, then a Client ID
//! Metadata Document, then dynamic registration (RFC 7591). Built so far: dynamic
//! registration, stored per (upstream, issuer) — never used at another issuer — with a
//! fingerprint of the upstream's settings, so that a changed configuration starts afresh.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::discovery::{Discovered, Step};
use crate::clock::Timestamp;
use crate::crypto::EncryptionKeys;
use crate::net::SafeFetcher;
use crate::store::{SharedStore, UpstreamClientRecord};

/// Largest registration response read.
const MAX_RESPONSE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error(
        "the authorization server offers no dynamic registration (Client ID Metadata Documents and configured client credentials are not built yet)"
    )]
    NoWay,
    #[error("the registration endpoint refused: {0}")]
    Refused(String),
    #[error("the registration endpoint could not be used: {0}")]
    Failed(String),
    #[error("the registration response is not usable: {0}")]
    Invalid(String),
    #[error(
        "the authorization server gave a client secret, and no encryption keys are configured to keep it"
    )]
    NoKeys,
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// The registration in use.
#[derive(Debug)]
pub struct Registered {
    pub client_id: String,
    pub method: String,
    /// Found stored, not made now.
    pub reused: bool,
}

/// A fingerprint of what a registration depends on: the upstream's URL and the gateway's
/// own address (its redirect URI).
pub fn settings_fingerprint(upstream_url: &str, public_url: &str) -> String {
    let mut h = Sha256::new();
    h.update(upstream_url.as_bytes());
    h.update([0]);
    h.update(public_url.as_bytes());
    crate::crypto::hex(&h.finalize()[..16])
}

/// Where the upstream's authorization server sends the browser back to the gateway: one
/// address per upstream, so that an answer arriving at another upstream's address (a mix-up,
/// RFC 9700 §4.4) is refused.
pub fn redirect_uri(public_url: &str, upstream: &str) -> String {
    format!(
        "{}/connect/callback/{upstream}",
        public_url.trim_end_matches('/')
    )
}

/// The gateway's Client ID Metadata Document for `upstream`: its address is the client id
/// at servers that accept such documents, one per upstream (each names only that upstream's
/// redirect URI). `configured`: `[broker] client_metadata_url`, one document the operator
/// publishes elsewhere, naming every upstream's redirect URI.
pub fn client_metadata_url(public_url: &str, configured: Option<&str>, upstream: &str) -> String {
    match configured {
        Some(u) => u.to_string(),
        None => format!(
            "{}/connect/clients/{upstream}",
            public_url.trim_end_matches('/')
        ),
    }
}

/// The document itself: a public client using PKCE, with the redirect URIs of `upstreams`.
pub fn client_metadata(public_url: &str, client_id: &str, upstreams: &[&str]) -> Value {
    let redirects: Vec<String> = upstreams
        .iter()
        .map(|u| redirect_uri(public_url, u))
        .collect();
    json!({
        "client_id": client_id,
        "client_name": "mcp-oauth-gateway",
        "client_uri": public_url,
        "redirect_uris": redirects,
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
        "software_id": "mcp-oauth-gateway",
        "software_version": env!("CARGO_PKG_VERSION"),
    })
}

/// Whether a server can fetch the gateway's document: published elsewhere by the operator
/// (https, checked at start), or at an https `public_url` (or, where the operator allows
/// loopback for development, a loopback one).
pub fn client_metadata_usable(
    public_url: &str,
    configured: Option<&str>,
    allow_http_loopback: bool,
) -> bool {
    if configured.is_some() {
        return true;
    }
    let Ok(u) = url::Url::parse(public_url) else {
        return false;
    };
    u.scheme() == "https"
        || (allow_http_loopback && crate::authorization::redirect::is_loopback(&u))
}

fn row(upstream: &str, issuer: &str) -> String {
    format!("upstream-client\n{upstream}\n{issuer}")
}

#[allow(clippy::too_many_arguments)]
pub async fn register(
    upstream: &str,
    settings: &str,
    found: &Discovered,
    public_url: &str,
    store: &SharedStore,
    fetcher: &SafeFetcher,
    keys: Option<&EncryptionKeys>,
    now: Timestamp,
    steps: &mut Vec<Step>,
) -> Result<Registered, RegistrationError> {
    let issuer = &found.server.issuer;
    let purged = store.purge_upstream_clients(upstream, settings).await?;
    if purged > 0 {
        steps.push(Step {
            what: "registration",
            url: issuer.clone(),
            outcome: format!("{purged} registration(s) made under other settings forgotten"),
        });
    }
    if let Some(r) = store.upstream_client(upstream, issuer).await? {
        steps.push(Step {
            what: "registration",
            url: issuer.clone(),
            outcome: format!("stored ({}): client_id {}", r.method, r.client_id),
        });
        return Ok(Registered {
            client_id: r.client_id,
            method: r.method,
            reused: true,
        });
    }
    let Some(endpoint) = &found.server.registration_endpoint else {
        return Err(RegistrationError::NoWay);
    };
    let url = url::Url::parse(endpoint).map_err(|_| {
        RegistrationError::Invalid(format!("registration_endpoint `{endpoint}` is not a URL"))
    })?;
    let mut body = json!({
        "client_name": "mcp-oauth-gateway",
        "redirect_uris": [redirect_uri(public_url, upstream)],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
        "application_type": "web",
        "software_id": "mcp-oauth-gateway",
        "software_version": env!("CARGO_PKG_VERSION"),
    });
    let scope = found
        .challenge_scope
        .clone()
        .or_else(|| (!found.resource_scopes.is_empty()).then(|| found.resource_scopes.join(" ")));
    if let Some(s) = scope {
        body["scope"] = json!(s);
    }
    let (status, answer) = fetcher
        .post_json(&url, &body, MAX_RESPONSE)
        .await
        .map_err(|e| {
            steps.push(Step {
                what: "dynamic registration",
                url: endpoint.clone(),
                outcome: e.to_string(),
            });
            RegistrationError::Failed(e.to_string())
        })?;
    let answer: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
    if !(200..300).contains(&status) {
        // The server's own words, printed inert: they are a stranger's text.
        let why = format!(
            "HTTP {status}: {} {}",
            answer["error"].as_str().unwrap_or("no error code"),
            answer["error_description"].as_str().unwrap_or("")
        );
        let why = crate::text::printable(why.trim()).into_owned();
        steps.push(Step {
            what: "dynamic registration",
            url: endpoint.clone(),
            outcome: why.clone(),
        });
        return Err(RegistrationError::Refused(why));
    }
    let client_id = answer["client_id"]
        .as_str()
        .filter(|c| !c.is_empty() && c.len() <= 255 && !c.chars().any(char::is_control))
        .ok_or_else(|| RegistrationError::Invalid("no usable client_id".into()))?
        .to_string();
    let client_secret = match answer["client_secret"].as_str().filter(|s| !s.is_empty()) {
        None => None,
        Some(secret) => {
            let keys = keys.ok_or(RegistrationError::NoKeys)?;
            Some(
                keys.seal(&row(upstream, issuer), secret.as_bytes())
                    .map_err(|e| RegistrationError::Invalid(e.to_string()))?,
            )
        }
    };
    store
        .put_upstream_client(&UpstreamClientRecord {
            upstream: upstream.to_string(),
            issuer: issuer.clone(),
            client_id: client_id.clone(),
            client_secret,
            method: "dcr".into(),
            settings: settings.to_string(),
            registered_at: now,
        })
        .await?;
    steps.push(Step {
        what: "dynamic registration",
        url: endpoint.clone(),
        outcome: format!(
            "registered: client_id {}",
            crate::text::printable(&client_id)
        ),
    });
    Ok(Registered {
        client_id,
        method: "dcr".into(),
        reused: false,
    })
}

/// Opens a stored registration's client secret (sealed to its upstream and issuer).
pub fn open_secret(
    keys: &EncryptionKeys,
    upstream: &str,
    issuer: &str,
    sealed: &[u8],
) -> Option<String> {
    keys.open(&row(upstream, issuer), sealed)
        .ok()
        .and_then(|p| String::from_utf8(p).ok())
}
