//! The errors of the authorization server, as OAuth defines them. How each becomes an HTTP
//! response is decided in one place, `web::errors`.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    UnsupportedResponseType,
    InvalidScope,
    InvalidTarget,
    AccessDenied,
    /// RFC 8628 §3.5: the device poll's answers. `DeviceDenied` is `access_denied` with the
    /// token endpoint's 400 (the person said no), where `AccessDenied` refuses a client (403).
    AuthorizationPending,
    DeviceDenied,
    SlowDown,
    ExpiredToken,
    /// OpenID Connect's answers to `prompt=none`.
    LoginRequired,
    ConsentRequired,
    InvalidRedirectUri,
    InvalidClientMetadata,
    InvalidToken,
    TooManyRequests,
    TemporarilyUnavailable,
    ServerError,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::UnsupportedResponseType => "unsupported_response_type",
            Self::InvalidScope => "invalid_scope",
            Self::InvalidTarget => "invalid_target",
            Self::AccessDenied => "access_denied",
            Self::AuthorizationPending => "authorization_pending",
            Self::DeviceDenied => "access_denied",
            Self::SlowDown => "slow_down",
            Self::ExpiredToken => "expired_token",
            Self::LoginRequired => "login_required",
            Self::ConsentRequired => "consent_required",
            Self::InvalidRedirectUri => "invalid_redirect_uri",
            Self::InvalidClientMetadata => "invalid_client_metadata",
            Self::InvalidToken => "invalid_token",
            // Not an OAuth code; used with HTTP 429.
            Self::TooManyRequests => "too_many_requests",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
            Self::ServerError => "server_error",
        }
    }
}

#[derive(Debug, Clone)]
pub struct OAuthError {
    pub code: ErrorCode,
    pub description: String,
    /// The client tried HTTP Basic; a 401 must then challenge for it (RFC 6749 §5.2).
    pub basic_challenge: bool,
    /// Seconds, for 429 and 503.
    pub retry_after: Option<u64>,
}

impl OAuthError {
    /// Descriptions are kept within RFC 6749's character set here, once for every error,
    /// wherever it is shown (JSON, a redirect, a log line).
    pub fn new(code: ErrorCode, description: impl Into<String>) -> Self {
        let description = description.into();
        let description = match crate::text::oauth_description(&description) {
            std::borrow::Cow::Borrowed(_) => description,
            std::borrow::Cow::Owned(clean) => clean,
        };
        Self {
            code,
            description,
            basic_challenge: false,
            retry_after: None,
        }
    }
    pub fn invalid_request(d: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, d)
    }
    pub fn invalid_client(d: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidClient, d)
    }
    pub fn invalid_grant(d: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidGrant, d)
    }
    pub fn server_error() -> Self {
        Self::new(ErrorCode::ServerError, "internal error; it has been logged")
    }
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

impl fmt::Display for OAuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.description)
    }
}

impl std::error::Error for OAuthError {}

impl From<crate::store::StoreError> for OAuthError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Unavailable(m) => {
                tracing::warn!(error = %m, "store unavailable");
                Self::new(
                    ErrorCode::TemporarilyUnavailable,
                    "the store is unavailable; retry shortly",
                )
                .with_retry_after(2)
            }
            other => {
                tracing::error!(error = %other, "store error");
                Self::server_error()
            }
        }
    }
}
