//! Client ID Metadata Documents: the client_id is an https URL; the document behind it says
//! who the client is and where it may be redirected. Fetched with the SSRF-safe client,
//! cached as its response allows, bounded in count.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::Value;
use url::Url;

use super::clients::{AuthMethod, Client, ClientKind};
use super::error::OAuthError;
use super::redirect::check_registered_redirect_uri;
use crate::clock::Timestamp;
use crate::net::{FetchError, SafeFetcher};

/// The CIMD draft recommends documents of at most 5 KB.
const MAX_DOCUMENT_BYTES: usize = 5 * 1024;
const MAX_CACHED: usize = 1024;
const MIN_CACHE_SECS: u64 = 60;
const MAX_CACHE_SECS: u64 = 24 * 3600;
/// A failed fetch is remembered briefly so one bad client cannot make the gateway fetch in a loop.
const NEGATIVE_CACHE_SECS: i64 = 30;

/// A cached lookup: valid until, and the client or why it was refused.
type CacheEntry = (Timestamp, Result<Client, String>);

pub struct CimdResolver {
    fetcher: SafeFetcher,
    default_cache_secs: u64,
    cache: Mutex<HashMap<String, CacheEntry>>,
}

fn invalid(d: impl std::fmt::Display) -> OAuthError {
    OAuthError::invalid_client(format!("client metadata document: {d}"))
}

impl CimdResolver {
    pub fn new(fetcher: SafeFetcher, default_cache_secs: u64) -> Self {
        Self {
            fetcher,
            default_cache_secs,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Checks the form of a URL client_id (CIMD draft §3): https with a path, no fragment,
    /// no credentials, no dot segments.
    pub fn check_client_id(&self, client_id: &str) -> Result<Url, OAuthError> {
        let url = Url::parse(client_id).map_err(|_| invalid("the client_id is not a URL"))?;
        if url.as_str() != client_id && format!("{}/", client_id) != url.as_str() {
            // The URL must be in its normal form so it compares equal to the document's.
            return Err(invalid("the client_id URL is not in normal form"));
        }
        if url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
            return Err(invalid(
                "the client_id URL must not have a fragment or credentials",
            ));
        }
        if url.path() == "/" || url.path().is_empty() {
            return Err(invalid("the client_id URL must have a path"));
        }
        if client_id.contains("/./") || client_id.contains("/../") {
            return Err(invalid("the client_id URL must not have dot segments"));
        }
        self.fetcher.check_url(&url).map_err(invalid)?;
        Ok(url)
    }

    pub async fn resolve(&self, client_id: &str, now: Timestamp) -> Result<Client, OAuthError> {
        if let Ok(cache) = self.cache.lock()
            && let Some((until, entry)) = cache.get(client_id)
            && *until > now
        {
            return entry.clone().map_err(invalid);
        }
        let url = self.check_client_id(client_id).inspect_err(|e| {
            tracing::info!(client_id = ?client_id, reason = ?e.description, "client metadata document refused");
        })?;
        let (ttl, result) = match self.fetch(&url, client_id).await {
            Ok((client, ttl)) => (ttl as i64, Ok(client)),
            Err(e) => {
                tracing::info!(client_id = ?client_id, reason = ?e, "client metadata document refused");
                (NEGATIVE_CACHE_SECS, Err(e))
            }
        };
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= MAX_CACHED {
                cache.retain(|_, (until, _)| *until > now);
                if cache.len() >= MAX_CACHED {
                    cache.clear();
                }
            }
            if ttl > 0 {
                cache.insert(client_id.to_string(), (now + ttl, result.clone()));
            }
        }
        result.map_err(invalid)
    }

    async fn fetch(&self, url: &Url, client_id: &str) -> Result<(Client, u64), String> {
        let fetched = self
            .fetcher
            .get(url, "application/json", MAX_DOCUMENT_BYTES)
            .await
            .map_err(|e| match e {
                FetchError::Status(s) => format!("fetching it answered HTTP {s}"),
                FetchError::TooLarge(n) => format!("it is larger than {n} bytes"),
                other => other.to_string(),
            })?;
        if let Some(ct) = &fetched.content_type {
            let essence = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if essence != "application/json" && !essence.ends_with("+json") {
                return Err(format!("it is served as `{essence}`, not application/json"));
            }
        }
        let doc: Value = serde_json::from_slice(&fetched.body)
            .map_err(|_| "it is not valid JSON".to_string())?;
        let client = parse_document(&doc, client_id)?;
        let ttl = fetched
            .max_age
            .map(|s| {
                if s == 0 {
                    0
                } else {
                    s.clamp(MIN_CACHE_SECS, MAX_CACHE_SECS)
                }
            })
            .unwrap_or(self.default_cache_secs);
        Ok((client, ttl))
    }
}

/// Checks a fetched document (public for the fuzz target).
pub fn parse_document(doc: &Value, client_id: &str) -> Result<Client, String> {
    let m = doc.as_object().ok_or("it is not a JSON object")?;
    if m.get("client_id").and_then(Value::as_str) != Some(client_id) {
        return Err("its client_id does not equal the URL it was fetched from".into());
    }
    for k in ["client_secret", "client_secret_expires_at"] {
        if m.contains_key(k) {
            return Err(format!("`{k}` must not appear in a metadata document"));
        }
    }
    let method = m
        .get("token_endpoint_auth_method")
        .and_then(Value::as_str)
        .unwrap_or("none");
    if method != "none" {
        return Err(format!(
            "token_endpoint_auth_method `{method}` is not supported for metadata documents; use none"
        ));
    }
    let redirect_uris: Vec<String> = m
        .get("redirect_uris")
        .and_then(Value::as_array)
        .ok_or("redirect_uris is missing")?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or("redirect_uris must be strings")
        })
        .collect::<Result<_, _>>()?;
    if redirect_uris.is_empty() || redirect_uris.len() > 20 {
        return Err("redirect_uris must have 1 to 20 entries".into());
    }
    let redirect_uris = redirect_uris
        .iter()
        .map(|u| check_registered_redirect_uri(u, true))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(gt) = m.get("grant_types").and_then(Value::as_array)
        && gt.iter().any(|g| {
            !matches!(
                g.as_str(),
                Some(
                    "authorization_code"
                        | "refresh_token"
                        | super::id_jag::JWT_BEARER
                        | super::device::DEVICE_CODE
                )
            )
        })
    {
        return Err(
            "only the authorization_code, refresh_token, device_code and jwt-bearer grant types are allowed"
                .into(),
        );
    }
    // The code and refresh grants always (as before); the ID-JAG grant when it is listed.
    let mut grant_types = vec![
        "authorization_code".to_string(),
        "refresh_token".to_string(),
    ];
    for extra in [super::id_jag::JWT_BEARER, super::device::DEVICE_CODE] {
        if m.get("grant_types")
            .and_then(Value::as_array)
            .is_some_and(|gt| gt.iter().any(|g| g.as_str() == Some(extra)))
        {
            grant_types.push(extra.into());
        }
    }
    let name = match m.get("client_name") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= 200 => {
            crate::text::check_display_name(s).map_err(|why| format!("client_name {why}"))?;
            Some(s.clone())
        }
        Some(_) => return Err("client_name must be a string of at most 200 bytes".into()),
    };
    Ok(Client {
        client_id: client_id.to_string(),
        kind: ClientKind::Metadata,
        name,
        redirect_uris,
        auth_method: AuthMethod::None,
        secret_hash: None,
        grant_types,
        scopes: None,
        introspection: false,
        introspection_audiences: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn document_rules() {
        let id = "https://app.example/client.json";
        let good = json!({"client_id": id, "client_name": "App", "redirect_uris": ["http://127.0.0.1/cb"]});
        assert!(parse_document(&good, id).is_ok());
        assert!(parse_document(&good, "https://other.example/c.json").is_err());
        let secret = json!({"client_id": id, "client_secret": "x", "redirect_uris": ["http://127.0.0.1/cb"]});
        assert!(parse_document(&secret, id).is_err());
        let basic = json!({"client_id": id, "token_endpoint_auth_method": "client_secret_basic", "redirect_uris": ["https://a/cb"]});
        assert!(parse_document(&basic, id).is_err());
        let no_redirect = json!({"client_id": id});
        assert!(parse_document(&no_redirect, id).is_err());
        let bidi = json!({"client_id": id, "client_name": "Claude \u{202e}edoC", "redirect_uris": ["http://127.0.0.1/cb"]});
        assert!(parse_document(&bidi, id).is_err());
        let newline = json!({"client_id": id, "redirect_uris": ["http://127.0.0.1/cb\nforged"]});
        assert!(parse_document(&newline, id).is_err());
    }
}
