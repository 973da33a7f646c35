//! Clients, however they came to be known: configured, dynamically registered (RFC 7591), or
//! named by the URL of their metadata document (CIMD).

use serde_json::{Map, Value, json};

use super::AuthorizationServer;
use super::error::{ErrorCode, OAuthError};
use super::redirect::check_registered_redirect_uri;
use crate::config::{DcrMode, StaticClientConfig, TokenEndpointAuthMethod};
use crate::crypto;
use crate::store::ClientRecord;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    Configured,
    Registered,
    /// A Client ID Metadata Document; its client_id is the document's https URL.
    Metadata,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    None,
    ClientSecretBasic,
    ClientSecretPost,
}

impl AuthMethod {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Self::None),
            "client_secret_basic" => Some(Self::ClientSecretBasic),
            "client_secret_post" => Some(Self::ClientSecretPost),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::ClientSecretBasic => "client_secret_basic",
            Self::ClientSecretPost => "client_secret_post",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    pub client_id: String,
    pub kind: ClientKind,
    pub name: Option<String>,
    pub redirect_uris: Vec<String>,
    pub auth_method: AuthMethod,
    pub secret_hash: Option<String>,
    pub grant_types: Vec<String>,
    /// Scopes it may obtain; `None`: any configured scope.
    pub scopes: Option<Vec<String>>,
    pub introspection: bool,
    /// Resource identifiers whose access tokens this client sees when it introspects.
    pub introspection_audiences: Vec<String>,
}

impl Client {
    pub fn is_public(&self) -> bool {
        self.auth_method == AuthMethod::None
    }
    pub fn allows_grant(&self, grant: &str) -> bool {
        self.grant_types.iter().any(|g| g == grant)
    }

    pub(crate) fn from_config(c: &StaticClientConfig) -> Self {
        Self {
            client_id: c.client_id.clone(),
            kind: ClientKind::Configured,
            name: c.client_name.clone(),
            redirect_uris: c.redirect_uris.clone(),
            auth_method: match c.token_endpoint_auth_method {
                TokenEndpointAuthMethod::None => AuthMethod::None,
                TokenEndpointAuthMethod::ClientSecretBasic => AuthMethod::ClientSecretBasic,
                TokenEndpointAuthMethod::ClientSecretPost => AuthMethod::ClientSecretPost,
            },
            secret_hash: c
                .client_secret
                .as_ref()
                .map(|s| crypto::hash_secret(s.expose()))
                .or_else(|| {
                    c.client_secret_sha256
                        .as_ref()
                        .map(|h| h.to_ascii_lowercase())
                }),
            grant_types: c
                .grant_types
                .iter()
                .map(|g| g.as_str().to_owned())
                .collect(),
            scopes: (!c.scopes.is_empty()).then(|| c.scopes.clone()),
            introspection: c.introspection,
            // Resolved to resource URLs once the resources are known.
            introspection_audiences: c.introspection_resources.clone(),
        }
    }

    fn from_record(r: ClientRecord) -> Self {
        Self {
            auth_method: AuthMethod::parse(&r.token_endpoint_auth_method)
                .unwrap_or(AuthMethod::None),
            client_id: r.client_id,
            kind: ClientKind::Registered,
            name: r.client_name,
            redirect_uris: r.redirect_uris,
            secret_hash: r.secret_hash,
            grant_types: r.grant_types,
            scopes: r.scope,
            introspection: false,
            introspection_audiences: Vec::new(),
        }
    }
}

/// What a registration request asked for, once checked.
struct Registration {
    redirect_uris: Vec<String>,
    auth_method: AuthMethod,
    grant_types: Vec<String>,
    client_name: Option<String>,
    client_uri: Option<String>,
    scope: Option<Vec<String>>,
    software_id: Option<String>,
    software_version: Option<String>,
}

/// Fields that make the server fetch or display something the registrant controls; refused
/// on registration that anybody may call.
const REFUSED_ON_OPEN_REGISTRATION: &[&str] = &[
    "jwks_uri",
    "jwks",
    "logo_uri",
    "software_statement",
    "sector_identifier_uri",
    "request_uris",
    "initiate_login_uri",
];

fn metadata_error(d: impl Into<String>) -> OAuthError {
    OAuthError::new(ErrorCode::InvalidClientMetadata, d)
}

fn opt_string(m: &Map<String, Value>, key: &str, max: usize) -> Result<Option<String>, OAuthError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= max => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(metadata_error(format!(
            "`{key}` is longer than {max} characters"
        ))),
        Some(_) => Err(metadata_error(format!("`{key}` must be a string"))),
    }
}

/// A name shown to people (the consent page, the console): no control or invisible
/// formatting characters, so what is shown is what is there.
fn display_name(m: &Map<String, Value>, key: &str) -> Result<Option<String>, OAuthError> {
    let Some(name) = opt_string(m, key, 200)? else {
        return Ok(None);
    };
    crate::text::check_display_name(&name)
        .map_err(|why| metadata_error(format!("`{key}` {why}")))?;
    Ok(Some(name))
}

/// An identifier or URL: visible characters only.
fn visible(m: &Map<String, Value>, key: &str, max: usize) -> Result<Option<String>, OAuthError> {
    let v = opt_string(m, key, max)?;
    if v.as_deref().is_some_and(crate::text::has_invisible) {
        return Err(metadata_error(format!(
            "`{key}` contains white space, control or invisible characters"
        )));
    }
    Ok(v)
}

fn string_array(
    m: &Map<String, Value>,
    key: &str,
    max_items: usize,
) -> Result<Option<Vec<String>>, OAuthError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => {
            if items.len() > max_items {
                return Err(metadata_error(format!(
                    "`{key}` has more than {max_items} entries"
                )));
            }
            items
                .iter()
                .map(|v| {
                    v.as_str().map(str::to_string).ok_or_else(|| {
                        metadata_error(format!("`{key}` must be an array of strings"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some)
        }
        Some(_) => Err(metadata_error(format!(
            "`{key}` must be an array of strings"
        ))),
    }
}

impl AuthorizationServer {
    /// Finds a client by id: configured, registered, or (for an https URL) its metadata
    /// document. `Ok(None)` when nobody by that name exists.
    pub async fn find_client(&self, client_id: &str) -> Result<Option<Client>, OAuthError> {
        self.find_client_via(client_id, ClientLookup::Fresh).await
    }

    /// [`Self::find_client`], refusing a client an administrator blocked. A client taken
    /// from the cache needs no look at the blocks: blocking empties that cache on every
    /// instance (as removing does).
    async fn find_client_via(
        &self,
        client_id: &str,
        lookup: ClientLookup,
    ) -> Result<Option<Client>, OAuthError> {
        if client_id.is_empty() || client_id.len() > 2048 {
            return Ok(None);
        }
        if lookup == ClientLookup::Cached
            && let Some(c) = self.clients_seen.get(client_id, self.clock.now())
        {
            return Ok(Some(c));
        }
        if self.store.client_block(client_id).await?.is_some() {
            self.observer.record(
                crate::observe::Event::ClientRefused {
                    client: crate::observe::audit::bounded(client_id),
                    reason: "blocked".into(),
                },
                None,
            );
            return Err(OAuthError::invalid_client(
                "this client has been blocked by the gateway's administrator",
            ));
        }
        self.resolve_client(client_id, lookup).await
    }

    /// Refuses a client that waits for an administrator's approval, when the registration
    /// policy asks for approval (configured clients never wait). Asked where grants begin:
    /// the browser and device flows, and `/token` for `client_credentials` and jwt-bearer;
    /// not for a code or a refresh, which continue what began before (grants made before
    /// approval was asked for stay).
    pub async fn check_approved(&self, client: &Client) -> Result<(), OAuthError> {
        if client.kind == ClientKind::Configured || !self.policy.get().await.approve_new_clients {
            return Ok(());
        }
        let name = client.name.as_deref().map(crate::observe::audit::bounded);
        if self
            .store
            .client_approval(&client.client_id, name.as_deref(), self.clock.now())
            .await?
            .is_some()
        {
            return Ok(());
        }
        self.observer.record(
            crate::observe::Event::ClientRefused {
                client: crate::observe::audit::bounded(&client.client_id),
                reason: "waiting for approval".into(),
            },
            None,
        );
        Err(OAuthError::invalid_client(
            "this client waits for the gateway administrator's approval",
        ))
    }

    async fn resolve_client(
        &self,
        client_id: &str,
        lookup: ClientLookup,
    ) -> Result<Option<Client>, OAuthError> {
        if let Some(c) = self
            .static_clients
            .iter()
            .find(|c| c.client_id == client_id)
        {
            return Ok(Some(c.clone()));
        }
        if client_id.starts_with("https://") || client_id.starts_with("http://") {
            let policy = self.policy.get().await;
            if !policy.cimd {
                return Ok(None);
            }
            if let Some(why) = policy.cimd_refusal(client_id) {
                self.observer.record(
                    crate::observe::Event::ClientRefused {
                        client: crate::observe::audit::bounded(client_id),
                        reason: why.into(),
                    },
                    None,
                );
                return Err(OAuthError::invalid_client(why));
            }
            return self
                .cimd
                .resolve(client_id, self.clock.now())
                .await
                .map(Some);
        }
        let now = self.clock.now();
        if lookup == ClientLookup::Cached
            && let Some(c) = self.clients_seen.get(client_id, now)
        {
            return Ok(Some(c));
        }
        let generation = self.clients_seen.generation();
        let found = self.store.client(client_id).await?.map(Client::from_record);
        if let Some(c) = &found {
            self.clients_seen.put_unless_removed_since(
                generation,
                client_id.to_string(),
                c.clone(),
                now,
            );
        }
        Ok(found)
    }

    /// RFC 7591 registration. `bearer` is the initial access token presented, if any.
    pub async fn register_client(
        &self,
        body: &Value,
        bearer: Option<&str>,
        ip: &str,
    ) -> Result<Value, OAuthError> {
        let policy = self.policy.get().await;
        match policy.dcr {
            DcrMode::Off => {
                return Err(OAuthError::new(
                    ErrorCode::AccessDenied,
                    "dynamic client registration is disabled",
                ));
            }
            DcrMode::Token => {
                let ok = bearer.is_some_and(|b| {
                    self.settings.initial_access_token_hashes.iter().any(|h| {
                        crypto::constant_time_eq(h.as_bytes(), crypto::hash_secret(b).as_bytes())
                    })
                });
                if !ok {
                    return Err(OAuthError::new(
                        ErrorCode::InvalidToken,
                        "registration needs a valid initial access token",
                    ));
                }
            }
            DcrMode::Open => {}
        }
        let now = self.clock.now();
        let window = now - now.rem_euclid(3600);
        let hits = self.store.hit(&format!("dcr:ip:{ip}"), window).await?;
        if hits > self.settings.dcr_per_ip_per_hour {
            return Err(OAuthError::new(
                ErrorCode::TooManyRequests,
                "too many registrations from this address",
            )
            .with_retry_after((window + 3600 - now).max(1) as u64));
        }
        let Value::Object(m) = body else {
            return Err(metadata_error(
                "the registration request must be a JSON object",
            ));
        };
        let open = policy.dcr == DcrMode::Open;
        let reg = self.check_registration(m, open)?;
        let client_id = crypto::new_secret(crypto::CLIENT_ID_PREFIX);
        let secret = (reg.auth_method != AuthMethod::None)
            .then(|| crypto::new_secret(crypto::CLIENT_SECRET_PREFIX));
        let mut response = json!({
            "client_id": client_id,
            "client_id_issued_at": now,
            "redirect_uris": reg.redirect_uris,
            "token_endpoint_auth_method": reg.auth_method.as_str(),
            "grant_types": reg.grant_types,
            "response_types": ["code"],
        });
        if let Value::Object(r) = &mut response {
            for (k, v) in [
                ("client_name", &reg.client_name),
                ("client_uri", &reg.client_uri),
                ("software_id", &reg.software_id),
                ("software_version", &reg.software_version),
            ] {
                if let Some(v) = v {
                    r.insert(k.into(), Value::String(v.clone()));
                }
            }
            if let Some(s) = &reg.scope {
                r.insert("scope".into(), Value::String(s.join(" ")));
            }
        }
        let record = ClientRecord {
            client_id: client_id.clone(),
            secret_hash: secret.as_deref().map(crypto::hash_secret),
            client_name: reg.client_name.clone(),
            redirect_uris: reg.redirect_uris.clone(),
            token_endpoint_auth_method: reg.auth_method.as_str().into(),
            grant_types: reg.grant_types.clone(),
            scope: reg.scope.clone(),
            metadata: response.clone(),
            registered_ip: Some(ip.to_string()),
            created_at: now,
            last_used_at: None,
        };
        match self
            .store
            .register_client(&record, self.settings.max_clients)
            .await
        {
            Ok(()) => {}
            Err(crate::store::StoreError::ClientLimit) => {
                return Err(OAuthError::new(
                    ErrorCode::TemporarilyUnavailable,
                    "the gateway holds as many registered clients as it is configured to; try later",
                )
                .with_retry_after(3600));
            }
            Err(e) => return Err(e.into()),
        }
        if let (Some(secret), Value::Object(r)) = (secret, &mut response) {
            r.insert("client_secret".into(), Value::String(secret));
            r.insert("client_secret_expires_at".into(), json!(0));
        }
        tracing::info!(client_id = ?client_id, ip, "client registered");
        self.observer.record(
            crate::observe::Event::ClientRegistered {
                client: client_id.to_string(),
                method: "dcr",
            },
            None,
        );
        Ok(response)
    }

    fn check_registration(
        &self,
        m: &Map<String, Value>,
        open: bool,
    ) -> Result<Registration, OAuthError> {
        if open {
            for k in REFUSED_ON_OPEN_REGISTRATION {
                if m.get(*k).is_some_and(|v| !v.is_null()) {
                    return Err(metadata_error(format!(
                        "`{k}` is not accepted on open registration"
                    )));
                }
            }
        }
        let auth_method = match opt_string(m, "token_endpoint_auth_method", 64)? {
            // RFC 7591 §2: the default is client_secret_basic.
            None => AuthMethod::ClientSecretBasic,
            Some(s) => AuthMethod::parse(&s).ok_or_else(|| {
                metadata_error(format!(
                    "token_endpoint_auth_method `{s}` is not supported; use none, client_secret_basic or client_secret_post"
                ))
            })?,
        };
        let grant_types = string_array(m, "grant_types", 8)?
            .unwrap_or_else(|| vec!["authorization_code".into(), "refresh_token".into()]);
        for g in &grant_types {
            match g.as_str() {
                "authorization_code"
                | "refresh_token"
                | super::id_jag::JWT_BEARER
                | super::device::DEVICE_CODE => {}
                "client_credentials" if !open && auth_method != AuthMethod::None => {}
                "client_credentials" => {
                    return Err(metadata_error(
                        "client_credentials is not available to openly registered or public clients",
                    ));
                }
                other => {
                    return Err(metadata_error(format!(
                        "grant type `{other}` is not supported"
                    )));
                }
            }
        }
        if let Some(rt) = string_array(m, "response_types", 8)?
            && rt.iter().any(|r| r != "code")
        {
            return Err(metadata_error("only the `code` response type is supported"));
        }
        let redirect_uris = string_array(m, "redirect_uris", 20)?.unwrap_or_default();
        if grant_types.iter().any(|g| g == "authorization_code") && redirect_uris.is_empty() {
            return Err(OAuthError::new(
                ErrorCode::InvalidRedirectUri,
                "redirect_uris is required for the authorization_code grant",
            ));
        }
        // Stored (and later compared and shown) in canonical form.
        let redirect_uris = redirect_uris
            .iter()
            .map(|u| {
                check_registered_redirect_uri(u, auth_method == AuthMethod::None)
                    .map_err(|e| OAuthError::new(ErrorCode::InvalidRedirectUri, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let scope = match opt_string(m, "scope", 1024)? {
            None => None,
            Some(s) => {
                let scopes = crate::store::split_scopes(&s);
                for sc in &scopes {
                    if !self.settings.scopes.contains(sc) {
                        return Err(metadata_error(format!("scope `{sc}` is not offered here")));
                    }
                }
                Some(scopes)
            }
        };
        let client_uri = visible(m, "client_uri", 2000)?;
        if let Some(u) = &client_uri {
            let ok = url::Url::parse(u).is_ok_and(|u| matches!(u.scheme(), "https" | "http"));
            if !ok {
                return Err(metadata_error("client_uri must be an http(s) URL"));
            }
        }
        Ok(Registration {
            redirect_uris,
            auth_method,
            grant_types,
            client_name: display_name(m, "client_name")?,
            client_uri,
            scope,
            software_id: visible(m, "software_id", 200)?,
            software_version: visible(m, "software_version", 100)?,
        })
    }

    /// Authenticates the client at the token, revocation and introspection endpoints.
    /// `basic` is the decoded HTTP Basic pair, if the request had one.
    pub async fn authenticate_client(
        &self,
        params: &super::params::Params,
        basic: Option<(String, String)>,
        lookup: ClientLookup,
    ) -> Result<Client, OAuthError> {
        let post_secret = params.get("client_secret")?;
        let param_id = params.get("client_id")?;
        let used_basic = basic.is_some();
        let fail = |d: &str| {
            let mut e = OAuthError::invalid_client(d);
            e.basic_challenge = used_basic;
            e
        };
        if basic.is_some() && post_secret.is_some() {
            return Err(OAuthError::invalid_request(
                "use one client authentication method, not HTTP Basic and client_secret together",
            ));
        }
        let (client_id, secret) = match &basic {
            Some((id, secret)) => {
                if param_id.is_some_and(|p| p != id) {
                    return Err(fail("client_id does not match the HTTP Basic credentials"));
                }
                // "client_id:" with an empty secret is how some public clients send Basic.
                (id.as_str(), Some(secret.as_str()).filter(|s| !s.is_empty()))
            }
            None => match param_id {
                Some(id) => (id, post_secret),
                None => {
                    return Err(fail(
                        "client authentication is required (client_id is missing)",
                    ));
                }
            },
        };
        let Some(client) = self.find_client_via(client_id, lookup).await.map_err(|e| {
            if e.code == ErrorCode::InvalidClient {
                fail(&e.description)
            } else {
                e
            }
        })?
        else {
            return Err(fail("unknown client"));
        };
        match (&client.secret_hash, secret) {
            (None, None) => Ok(client),
            (None, Some(_)) => Err(fail("this client is public and has no secret")),
            (Some(_), None) => Err(fail("this client must authenticate with its secret")),
            (Some(h), Some(s)) => {
                if crypto::constant_time_eq(h.as_bytes(), crypto::hash_secret(s).as_bytes()) {
                    Ok(client)
                } else {
                    Err(fail("client authentication failed"))
                }
            }
        }
    }
}

/// Whether a registered client may come from the short-lived per-instance cache.
///
/// Only where whatever the client obtains also needs a live grant in the store (refresh),
/// so that a client removed a moment ago obtains nothing; everywhere else (authorization,
/// client_credentials, revocation, introspection) the store is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientLookup {
    Cached,
    Fresh,
}
