//! Discovery, as an MCP client must do it, toward an upstream MCP server that demands OAuth
//! of its own: an unauthenticated request and its `401` challenge (`resource_metadata`,
//! `scope`), else the protected-resource metadata at the path-inserted then the root
//! well-known URL (RFC 9728); then the authorization server's metadata in the MCP
//! specification's order (RFC 8414 path-inserted, OpenID path-inserted, OpenID
//! path-appended; the root forms for an issuer without a path).
//!
//! What is refused: protected-resource metadata whose `resource` is not this upstream;
//! authorization-server metadata whose `issuer` is not the one it was fetched for; an
//! authorization server that does not offer PKCE with S256. URLs on the upstream's own origin
//! are as trusted as the configured URL; every other URL (from a header or a document) goes
//! through [`SafeFetcher`]: https, public addresses only, no redirects, bounded.
//!
//! Every step is recorded, so that `upstreams probe` can show an operator where it stopped.

use serde::Deserialize;
use serde_json::Value;
use url::Url;

use crate::net::{FetchError, SafeFetcher};

/// Largest metadata document read.
const MAX_METADATA: usize = 64 * 1024;

/// One step of discovery, for the operator.
#[derive(Debug, Clone)]
pub struct Step {
    pub what: &'static str,
    pub url: String,
    pub outcome: String,
}

/// What discovery found.
#[derive(Debug, Clone)]
pub struct Discovered {
    pub resource: String,
    /// The scope the upstream's challenge asked for, if any.
    pub challenge_scope: Option<String>,
    pub resource_scopes: Vec<String>,
    pub server: ServerMetadata,
}

/// The authorization server metadata the broker uses (RFC 8414).
#[derive(Debug, Clone, Deserialize)]
pub struct ServerMetadata {
    pub issuer: String,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    #[serde(default)]
    pub registration_endpoint: Option<String>,
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    #[serde(default)]
    pub code_challenge_methods_supported: Vec<String>,
    #[serde(default)]
    pub scopes_supported: Vec<String>,
    #[serde(default)]
    pub grant_types_supported: Vec<String>,
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Vec<String>,
    #[serde(default)]
    pub client_id_metadata_document_supported: bool,
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("the upstream could not be reached: {0}")]
    Unreachable(String),
    #[error("no protected resource metadata was found")]
    NoResourceMetadata,
    #[error(
        "the protected resource metadata names resource `{found}`, not this upstream (`{expected}`)"
    )]
    ResourceMismatch { expected: String, found: String },
    #[error("the protected resource metadata names no authorization server")]
    NoAuthorizationServer,
    #[error("no authorization server metadata was found for `{0}`")]
    NoServerMetadata(String),
    #[error("the authorization server metadata fetched for `{expected}` names issuer `{found}`")]
    IssuerMismatch { expected: String, found: String },
    #[error("the authorization server does not offer PKCE with S256")]
    NoS256,
    #[error("the authorization server metadata lacks {0}")]
    Incomplete(&'static str),
    #[error("{0}")]
    Invalid(String),
}

/// Runs discovery for the upstream at `upstream`: `client` is the proxy's own client (for
/// the upstream's origin), `fetcher` the guarded one for every other URL.
pub async fn discover(
    upstream: &Url,
    client: &reqwest::Client,
    fetcher: &SafeFetcher,
    steps: &mut Vec<Step>,
) -> Result<Discovered, DiscoveryError> {
    let mut step = |what: &'static str, url: &str, outcome: String| {
        steps.push(Step {
            what,
            url: url.to_string(),
            outcome,
        })
    };
    // 1. An unauthenticated MCP request, as a client's first.
    let probe = client
        .post(upstream.clone())
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"mcp-oauth-gateway","version":"0"}}}"#)
        .send()
        .await
        .map_err(|e| DiscoveryError::Unreachable(e.without_url().to_string()))?;
    let status = probe.status().as_u16();
    let challenge = probe
        .headers()
        .get_all("www-authenticate")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| crate::web::challenge::parse(v).ok())
        .flatten()
        .find(|c| c.scheme.eq_ignore_ascii_case("bearer"));
    let header_metadata = challenge
        .as_ref()
        .and_then(|c| c.param("resource_metadata"))
        .map(str::to_string);
    let challenge_scope = challenge
        .as_ref()
        .and_then(|c| c.param("scope"))
        .map(str::to_string);
    step(
        "unauthenticated request",
        upstream.as_str(),
        format!(
            "HTTP {status}{}",
            match (&header_metadata, &challenge_scope) {
                (Some(m), _) => format!(", resource_metadata = {m}"),
                (None, Some(_)) => ", a Bearer challenge without resource_metadata".into(),
                (None, None) if challenge.is_some() => ", a Bearer challenge".into(),
                _ => ", no Bearer challenge".into(),
            }
        ),
    );

    // 2. The protected resource metadata.
    let mut candidates = Vec::new();
    if let Some(m) = &header_metadata {
        candidates.push(Url::parse(m).map_err(|_| {
            DiscoveryError::Invalid(format!("resource_metadata `{m}` is not a URL"))
        })?);
    }
    let path = upstream.path().trim_end_matches('/');
    let origin = upstream.origin().ascii_serialization();
    for u in [
        format!("{origin}/.well-known/oauth-protected-resource{path}"),
        format!("{origin}/.well-known/oauth-protected-resource"),
    ] {
        if let Ok(u) = Url::parse(&u)
            && !candidates.contains(&u)
        {
            candidates.push(u);
        }
    }
    let mut prm = None;
    for url in &candidates {
        match fetch_json(url, upstream, client, fetcher).await {
            Ok(v) => {
                step("protected resource metadata", url.as_str(), "found".into());
                prm = Some(v);
                break;
            }
            Err(e) => step("protected resource metadata", url.as_str(), e.to_string()),
        }
    }
    let prm = prm.ok_or(DiscoveryError::NoResourceMetadata)?;
    let resource = prm
        .get("resource")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            DiscoveryError::Invalid("the protected resource metadata has no `resource`".into())
        })?
        .to_string();
    if !same_resource(&resource, upstream) {
        return Err(DiscoveryError::ResourceMismatch {
            expected: upstream.to_string(),
            found: resource,
        });
    }
    let issuer = prm
        .get("authorization_servers")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str)
        .ok_or(DiscoveryError::NoAuthorizationServer)?
        .to_string();
    let resource_scopes = prm
        .get("scopes_supported")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();

    // 3. The authorization server's metadata, in the specification's order.
    let issuer_url = Url::parse(&issuer).map_err(|_| {
        DiscoveryError::Invalid(format!("authorization server `{issuer}` is not a URL"))
    })?;
    let mut server = None;
    for url in server_metadata_urls(&issuer_url) {
        match fetch_json(&url, upstream, client, fetcher).await {
            Ok(v) => {
                let meta: ServerMetadata = serde_json::from_value(v).map_err(|e| {
                    DiscoveryError::Invalid(format!("the authorization server metadata: {e}"))
                })?;
                // Compared exactly: a document that names another issuer is another
                // server's (RFC 8414 §3.3).
                if meta.issuer != issuer {
                    step(
                        "authorization server metadata",
                        url.as_str(),
                        format!("names issuer `{}`: refused", meta.issuer),
                    );
                    return Err(DiscoveryError::IssuerMismatch {
                        expected: issuer,
                        found: meta.issuer,
                    });
                }
                step(
                    "authorization server metadata",
                    url.as_str(),
                    "found".into(),
                );
                server = Some(meta);
                break;
            }
            Err(e) => step("authorization server metadata", url.as_str(), e.to_string()),
        }
    }
    let server = server.ok_or_else(|| DiscoveryError::NoServerMetadata(issuer.clone()))?;
    if !server
        .code_challenge_methods_supported
        .iter()
        .any(|m| m == "S256")
    {
        step("PKCE", &issuer, "S256 not offered: refused".into());
        return Err(DiscoveryError::NoS256);
    }
    for (name, present) in [
        (
            "authorization_endpoint",
            server.authorization_endpoint.is_some(),
        ),
        ("token_endpoint", server.token_endpoint.is_some()),
    ] {
        if !present {
            return Err(DiscoveryError::Incomplete(name));
        }
    }
    step("PKCE", &issuer, "S256 offered".into());
    Ok(Discovered {
        resource,
        challenge_scope,
        resource_scopes,
        server,
    })
}

/// The metadata URLs of an issuer, in the MCP specification's order.
pub fn server_metadata_urls(issuer: &Url) -> Vec<Url> {
    let origin = issuer.origin().ascii_serialization();
    let path = issuer.path().trim_end_matches('/');
    let urls = if path.is_empty() {
        vec![
            format!("{origin}/.well-known/oauth-authorization-server"),
            format!("{origin}/.well-known/openid-configuration"),
        ]
    } else {
        vec![
            format!("{origin}/.well-known/oauth-authorization-server{path}"),
            format!("{origin}/.well-known/openid-configuration{path}"),
            format!("{origin}{path}/.well-known/openid-configuration"),
        ]
    };
    urls.iter().filter_map(|u| Url::parse(u).ok()).collect()
}

/// The metadata's resource is this upstream: the same URL, a trailing slash aside.
/// Whether a protected resource named `resource` covers the upstream: the same origin, and
/// the upstream's path is the resource's path or below it (whole segments; a root document
/// names the origin, RFC 9728 §3), with no query or fragment beyond the upstream's.
fn same_resource(resource: &str, upstream: &Url) -> bool {
    let Ok(r) = Url::parse(resource) else {
        return false;
    };
    if r.origin() != upstream.origin() || r.fragment().is_some() {
        return false;
    }
    let (rp, up) = (
        r.path().trim_end_matches('/'),
        upstream.path().trim_end_matches('/'),
    );
    let covers = rp == up || (up.starts_with(rp) && up[rp.len()..].starts_with('/'));
    covers && (r.query().is_none() || r.query() == upstream.query())
}

#[derive(Debug, thiserror::Error)]
enum FetchJsonError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("not a JSON object")]
    NotJson,
}

/// A JSON document: through the proxy's client on the upstream's own origin, through the
/// guarded fetcher anywhere else.
async fn fetch_json(
    url: &Url,
    upstream: &Url,
    client: &reqwest::Client,
    fetcher: &SafeFetcher,
) -> Result<Value, FetchJsonError> {
    let body = if url.origin() == upstream.origin() {
        let r = client
            .get(url.clone())
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| FetchError::Failed(e.without_url().to_string()))?;
        if !r.status().is_success() {
            return Err(FetchError::Status(r.status().as_u16()).into());
        }
        // Bounded while it streams, not only by what it declares.
        crate::net::read_capped(r, MAX_METADATA).await?
    } else {
        fetcher
            .get(url, "application/json", MAX_METADATA)
            .await?
            .body
    };
    match serde_json::from_slice::<Value>(&body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(FetchJsonError::NotJson),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_urls_follow_the_specification_order() {
        let u = |s: &str| {
            server_metadata_urls(&Url::parse(s).unwrap())
                .iter()
                .map(Url::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            u("https://as.example/tenant1"),
            [
                "https://as.example/.well-known/oauth-authorization-server/tenant1",
                "https://as.example/.well-known/openid-configuration/tenant1",
                "https://as.example/tenant1/.well-known/openid-configuration",
            ]
        );
        assert_eq!(
            u("https://as.example/"),
            [
                "https://as.example/.well-known/oauth-authorization-server",
                "https://as.example/.well-known/openid-configuration",
            ]
        );
    }

    #[test]
    fn the_resource_must_be_this_upstream() {
        let up = Url::parse("https://mcp.example/mcp").unwrap();
        assert!(same_resource("https://mcp.example/mcp", &up));
        assert!(same_resource("https://mcp.example/mcp/", &up));
        assert!(!same_resource("https://mcp.example/other", &up));
        // A root document names the origin, which covers every path on it.
        assert!(same_resource("https://mcp.example", &up));
        assert!(same_resource("https://mcp.example/", &up));
        assert!(!same_resource("https://mcp.example/mc", &up));
        assert!(!same_resource("https://mcp.example/mcp/deeper", &up));
        assert!(!same_resource("https://mcp.example/?x=1", &up));
        assert!(!same_resource("https://evil.example/mcp", &up));
        assert!(!same_resource("http://mcp.example/mcp", &up));
    }
}
