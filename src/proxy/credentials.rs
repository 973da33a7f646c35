//! What goes upstream as a credential: an async source per upstream, which may fail with an
//! error the MCP client understands — among them "this user must connect first", a JSON-RPC
//! error carrying a URL (the MCP URL-elicitation error) — and which is asked again when the
//! upstream answers `401` (the response phase), so that a source holding a refreshable
//! token can refresh it and have the request retried once.
//!
//! Today's sources (none, a static bearer token or header, the user's identity headers, a
//! signed assertion) are implementations; the upstream OAuth broker's token vault will be
//! another.

use std::sync::Arc;

use async_trait::async_trait;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::Signer;
use crate::authorization::token::Principal;
use crate::clock::SharedClock;
use crate::config::UpstreamCredentials;

/// Why no credential could be put on a request.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    /// The user has to authorize the gateway at the upstream first, at `url`.
    #[error("{message}")]
    ConnectFirst { url: String, message: String },
    /// The credential cannot be had now (its issuer is down, say); try again later.
    #[error("the credential for this upstream is unavailable: {0}")]
    Unavailable(String),
}

/// What to do after the upstream refused a request with `401`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterUnauthorized {
    /// Relay the `401` as it is.
    GiveUp,
    /// The credential was renewed: send the request once more.
    Retry,
    /// Answer this instead (the person must reconnect, say).
    Fail(CredentialError),
}

#[async_trait]
pub trait CredentialSource: Send + Sync {
    /// The header the credential travels in, when not `Authorization`: a client's own copy
    /// of it is removed before the request goes upstream.
    fn header(&self) -> Option<&str> {
        None
    }
    /// Puts the credential for `principal` on the upstream request.
    async fn apply(
        &self,
        principal: &Principal,
        headers: &mut HeaderMap,
    ) -> Result<(), CredentialError>;
    /// For a stdio upstream run per user: environment values its process gets for
    /// `principal` (a process is started per distinct set).
    async fn environment(
        &self,
        _principal: &Principal,
    ) -> Result<Vec<(String, String)>, CredentialError> {
        Ok(Vec::new())
    }
    /// The upstream answered `401` to a request that carried `sent` (the request's headers
    /// as they went); `scope` is what its Bearer challenge asked for, if anything.
    async fn unauthorized(
        &self,
        _principal: &Principal,
        _sent: &HeaderMap,
        _scope: Option<&str>,
    ) -> AfterUnauthorized {
        AfterUnauthorized::GiveUp
    }
    /// Whether the upstream's `WWW-Authenticate` challenges are its business with this
    /// source (kept from the MCP client), as with an upstream's own OAuth.
    fn hides_challenge(&self) -> bool {
        false
    }
    /// The upstream refused the retried request too (`401` after a renewal): an error to
    /// answer instead of relaying it, or `None`.
    async fn still_unauthorized(&self, _principal: &Principal) -> Option<CredentialError> {
        None
    }
    /// The upstream answered `403` with `insufficient_scope`, asking for `scope`: an error to
    /// answer instead of relaying it (a step-up the person must confirm), or `None`.
    async fn insufficient_scope(
        &self,
        _principal: &Principal,
        _scope: Option<&str>,
    ) -> Option<CredentialError> {
        None
    }
}

/// Nothing goes upstream.
pub struct NoCredential;

#[async_trait]
impl CredentialSource for NoCredential {
    async fn apply(&self, _: &Principal, _: &mut HeaderMap) -> Result<(), CredentialError> {
        Ok(())
    }
}

/// A source that must be built elsewhere and was not: every request fails, loudly.
struct NotBuilt(String);

#[async_trait]
impl CredentialSource for NotBuilt {
    async fn apply(&self, _: &Principal, _: &mut HeaderMap) -> Result<(), CredentialError> {
        Err(CredentialError::Unavailable(format!(
            "the credentials from `{}` are not set up",
            self.0
        )))
    }
}

/// The same header on every request: `Authorization: Bearer …`, or an API key.
pub struct StaticHeader {
    name: HeaderName,
    value: HeaderValue,
    /// Set when the header is not `Authorization`.
    custom: Option<String>,
}

#[async_trait]
impl CredentialSource for StaticHeader {
    fn header(&self) -> Option<&str> {
        self.custom.as_deref()
    }
    async fn apply(&self, _: &Principal, h: &mut HeaderMap) -> Result<(), CredentialError> {
        h.insert(self.name.clone(), self.value.clone());
        Ok(())
    }
}

/// The user's identity as `X-Forwarded-User`, `-Email`, `-Groups` and `-Client` (any such
/// headers from the client are removed before).
pub struct IdentityHeaders;

#[async_trait]
impl CredentialSource for IdentityHeaders {
    async fn apply(&self, p: &Principal, h: &mut HeaderMap) -> Result<(), CredentialError> {
        let mut put = |name: &'static str, value: Option<&str>| {
            if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
                h.insert(HeaderName::from_static(name), v);
            }
        };
        put("x-forwarded-user", p.username.as_deref());
        put("x-forwarded-client", Some(&p.client_id));
        put("x-forwarded-email", p.email.as_deref());
        let groups = p.groups.join(",");
        put(
            "x-forwarded-groups",
            (!groups.is_empty()).then_some(groups.as_str()),
        );
        Ok(())
    }
}

/// A short-lived JWT naming the user and the client, signed by the gateway.
pub struct SignedAssertion {
    signer: Arc<Signer>,
    clock: SharedClock,
    issuer: String,
    audience: String,
    ttl_secs: i64,
    /// `None` for `Authorization: Bearer`; otherwise the header that carries the bare JWT.
    custom: Option<(String, HeaderName)>,
    upstream: String,
}

#[async_trait]
impl CredentialSource for SignedAssertion {
    fn header(&self) -> Option<&str> {
        self.custom.as_ref().map(|(n, _)| n.as_str())
    }
    async fn apply(&self, p: &Principal, h: &mut HeaderMap) -> Result<(), CredentialError> {
        let now = self.clock.now();
        let Some(jwt) = self
            .signer
            .assert(&self.issuer, &self.audience, p, now, self.ttl_secs)
        else {
            tracing::error!(upstream = %self.upstream, "could not sign an identity assertion");
            return Err(CredentialError::Unavailable(
                "the identity assertion could not be signed".into(),
            ));
        };
        let (name, value) = match &self.custom {
            None => (header::AUTHORIZATION, format!("Bearer {jwt}")),
            Some((_, name)) => (name.clone(), jwt),
        };
        let value = HeaderValue::from_str(&value)
            .map_err(|_| CredentialError::Unavailable("unusable assertion".into()))?;
        h.insert(name, value);
        Ok(())
    }
}

/// What the configured credentials of an upstream become. `default_audience` is the
/// upstream's URL, the assertion's `aud` unless one is configured.
pub fn from_config(
    config: &UpstreamCredentials,
    upstream: &str,
    default_audience: &str,
    signer: &Arc<Signer>,
    clock: &SharedClock,
    issuer: &str,
) -> Result<Arc<dyn CredentialSource>, String> {
    let bad = |what: &str| format!("upstream `{upstream}`: {what} is not a valid header value");
    Ok(match config {
        UpstreamCredentials::None => Arc::new(NoCredential),
        UpstreamCredentials::Bearer { token } => {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                .map_err(|_| bad("the bearer token"))?;
            value.set_sensitive(true);
            Arc::new(StaticHeader {
                name: header::AUTHORIZATION,
                value,
                custom: None,
            })
        }
        UpstreamCredentials::Header { name, value } => {
            let header_name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("upstream `{upstream}`: `{name}` is not a header name"))?;
            let mut value = HeaderValue::from_str(value.expose()).map_err(|_| bad("the header"))?;
            value.set_sensitive(true);
            Arc::new(StaticHeader {
                name: header_name,
                value,
                custom: Some(name.clone()),
            })
        }
        UpstreamCredentials::Identity => Arc::new(IdentityHeaders),
        // Built where the login sources are (`web::Gateway`), which replaces this; should
        // that ever not happen, nothing is sent rather than something wrong.
        UpstreamCredentials::ProviderToken { source }
        | UpstreamCredentials::DatabaseLogin { source, .. } => Arc::new(NotBuilt(source.clone())),
        UpstreamCredentials::Oauth { .. } => Arc::new(NotBuilt("the OAuth broker".into())),
        UpstreamCredentials::Assertion {
            header: name,
            audience,
            ttl_secs,
        } => {
            let custom = match name.as_deref() {
                None => None,
                Some(n) if n.eq_ignore_ascii_case("authorization") => None,
                Some(n) => Some((
                    n.to_string(),
                    HeaderName::from_bytes(n.as_bytes()).map_err(|_| {
                        format!("upstream `{upstream}`: `{n}` is not a header name")
                    })?,
                )),
            };
            Arc::new(SignedAssertion {
                signer: signer.clone(),
                clock: clock.clone(),
                issuer: issuer.to_string(),
                audience: audience
                    .clone()
                    .unwrap_or_else(|| default_audience.to_string()),
                ttl_secs: ttl_secs.unwrap_or(60),
                custom,
                upstream: upstream.to_string(),
            })
        }
    })
}
