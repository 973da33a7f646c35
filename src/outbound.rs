//! Calls to services the operator configured (identity providers, trusted token issuers):
//! bounded in time and size, never following redirects, answers read as JSON. Unlike
//! [`crate::net::SafeFetcher`] (for URLs strangers supply), private addresses are allowed:
//! a Keycloak inside the network is a normal set-up. Errors name the cause, never a
//! secret or what the service sent.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::StreamExt;
use serde_json::Value;
use url::Url;

/// The largest answer read (discovery documents, key sets, token responses).
const MAX_BYTES: usize = 512 * 1024;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum OutboundError {
    #[error("could not reach it: {0}")]
    Unreachable(String),
    #[error("it did not answer within {0} s")]
    Timeout(u64),
    #[error("its answer is larger than {MAX_BYTES} bytes")]
    TooLarge,
    #[error("its answer (HTTP {0}) is not a JSON object")]
    NotJson(u16),
}

/// A JSON answer with its status. No `Debug`: it holds tokens.
pub struct Answer {
    pub status: u16,
    pub body: serde_json::Map<String, Value>,
}

impl Answer {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// An OAuth error answer's `error` code (RFC 6749 §5.2).
    pub fn oauth_error(&self) -> Option<&str> {
        self.body.get("error").and_then(Value::as_str)
    }
}

#[derive(Clone)]
pub struct Outbound {
    client: reqwest::Client,
    timeout: Duration,
}

/// How a client authenticates at a token endpoint.
pub enum ClientAuth<'a> {
    /// `client_secret_basic` (RFC 6749 §2.3.1: both parts form-encoded first).
    Basic { id: &'a str, secret: &'a str },
    /// `client_secret_post`.
    Post { id: &'a str, secret: &'a str },
}

impl Outbound {
    pub fn new(timeout: Duration) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .timeout(timeout)
            .user_agent(concat!("mcp-oauth-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("an HTTP client: {e}"))?;
        Ok(Self { client, timeout })
    }

    /// `GET` a JSON object, with a bearer token when given.
    pub async fn get_json(&self, url: &Url, bearer: Option<&str>) -> Result<Answer, OutboundError> {
        object(self.get_json_list(url, bearer).await?)
    }

    /// `GET` any JSON value (an API answering with a list).
    pub async fn get_json_list(
        &self,
        url: &Url,
        bearer: Option<&str>,
    ) -> Result<(u16, Value), OutboundError> {
        let mut req = self
            .client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(token) = bearer {
            req = req.bearer_auth(token);
        }
        self.send_value(req).await
    }

    /// `POST` a JSON body with a bearer token (an API call).
    pub async fn post_json(
        &self,
        url: &Url,
        bearer: &str,
        body: &Value,
    ) -> Result<Answer, OutboundError> {
        let req = self
            .client
            .post(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .bearer_auth(bearer)
            .body(body.to_string());
        self.send(req).await
    }

    /// `POST` a form (a token request), authenticating the client as asked.
    pub async fn post_form(
        &self,
        url: &Url,
        pairs: &[(&str, &str)],
        auth: ClientAuth<'_>,
    ) -> Result<Answer, OutboundError> {
        let (body, authorization) = form_body(pairs, &auth);
        let mut req = self
            .client
            .post(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
        if let Some(value) = authorization {
            req = req.header(reqwest::header::AUTHORIZATION, value);
        }
        self.send(req.body(body)).await
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Answer, OutboundError> {
        object(self.send_value(req).await?)
    }

    async fn send_value(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<(u16, Value), OutboundError> {
        let describe = |e: reqwest::Error| {
            if e.is_timeout() {
                OutboundError::Timeout(self.timeout.as_secs())
            } else {
                OutboundError::Unreachable(cause(&e))
            }
        };
        let resp = req.send().await.map_err(describe)?;
        let status = resp.status().as_u16();
        if resp.content_length().is_some_and(|l| l > MAX_BYTES as u64) {
            return Err(OutboundError::TooLarge);
        }
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(describe)?;
            if body.len() + chunk.len() > MAX_BYTES {
                return Err(OutboundError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice::<Value>(&body)
            .map(|v| (status, v))
            .map_err(|_| OutboundError::NotJson(status))
    }
}

/// An answer that must be a JSON object.
fn object((status, value): (u16, Value)) -> Result<Answer, OutboundError> {
    match value {
        Value::Object(body) => Ok(Answer { status, body }),
        _ => Err(OutboundError::NotJson(status)),
    }
}

/// The form's body, and the `Authorization` header for `client_secret_basic`.
fn form_body(pairs: &[(&str, &str)], auth: &ClientAuth<'_>) -> (String, Option<String>) {
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        form.append_pair(k, v);
    }
    let header = match auth {
        ClientAuth::Basic { id, secret } => {
            let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let pair = format!("{}:{}", enc(id), enc(secret));
            Some(format!("Basic {}", STANDARD.encode(pair)))
        }
        ClientAuth::Post { id, secret } => {
            form.append_pair("client_id", id);
            form.append_pair("client_secret", secret);
            None
        }
    };
    (form.finish(), header)
}

/// The innermost cause of a failed request, without the URL (which may carry a query).
fn cause(e: &reqwest::Error) -> String {
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut last = None;
    while let Some(s) = source {
        last = Some(s.to_string());
        source = s.source();
    }
    let text = last.unwrap_or_else(|| "the request failed".into());
    // Bounded and printable: it goes into logs.
    crate::text::printable(&text.chars().take(200).collect::<String>()).into_owned()
}
