//! The device authorization grant (RFC 8628), for clients that cannot open a browser.
//!
//! A client asks at `/device_authorization` (with `resource`, RFC 8707) and gets a device
//! code (its secret, stored only as a hash) and a short user code. A signed-in person types
//! the user code on the gateway's page, sees the same consent as in the browser flow, and
//! approves or denies. Approval stores an authorization code for the person in the same
//! transaction; the client's next poll of `/token` redeems it exactly as a browser flow's
//! code is redeemed (one grant, tokens once; a second redemption revokes what the first
//! issued). Until then the poll answers `authorization_pending`, `slow_down` (polled sooner
//! than the interval, which then grows by 5 s), `access_denied` or `expired_token`.
//!
//! User codes: eight letters from 20 consonants (RFC 8628 §6.1: no vowels, no lookalikes),
//! about 2^34.6 of them, live 10 minutes; typing them is throttled per person and per
//! address, so guessing one that another person's device is waiting on is out of reach.

use serde_json::{Value, json};

use super::AuthorizationServer;
use super::clients::Client;
use super::error::{ErrorCode, OAuthError};
use super::params::Params;
use super::token::TokenResponse;
use crate::crypto;
use crate::store::{AuthCodeRecord, DeviceAuthorization, DeviceStatus};

pub const DEVICE_CODE: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// The grant's name in records and metrics.
const GRANT_LABEL: &str = "device_code";

const ALPHABET: &[u8; 20] = b"BCDFGHJKLMNPQRSTVWXZ";
const USER_CODE_LEN: usize = 8;
/// How long a device authorization lives.
pub const DEVICE_TTL_SECS: i64 = 600;
/// The polling interval a client starts with.
const INTERVAL_SECS: i64 = 5;
/// Throttling, per 15-minute window: codes typed by one person and from one address, and
/// device authorizations asked for from one address.
const WINDOW_SECS: i64 = 900;
const LOOKUPS_PER_PERSON: i64 = 10;
const LOOKUPS_PER_ADDRESS: i64 = 30;
const REQUESTS_PER_ADDRESS: i64 = 60;

const DEVICE_CODE_PREFIX: &str = "mog_dc_";

/// A new user code: eight letters, uniformly from [`ALPHABET`] (rejection sampling).
fn new_user_code() -> String {
    let mut out = String::with_capacity(USER_CODE_LEN);
    while out.len() < USER_CODE_LEN {
        for b in crypto::random_bytes::<16>() {
            // 240 = 12 × 20: bytes above it would favour the first letters.
            if b < 240 && out.len() < USER_CODE_LEN {
                out.push(char::from(ALPHABET[usize::from(b % 20)]));
            }
        }
    }
    out
}

/// A user code as typed (any case, with or without the dash or spaces) in its stored form;
/// `None` when it cannot be one.
pub fn normalize_user_code(typed: &str) -> Option<String> {
    if typed.len() > 32 {
        return None;
    }
    let code: String = typed
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    (code.len() == USER_CODE_LEN && code.bytes().all(|b| ALPHABET.contains(&b))).then_some(code)
}

/// `BCDFGHJK` as people read it: `BCDF-GHJK`.
pub fn display_user_code(code: &str) -> String {
    match (code.get(..4), code.get(4..)) {
        (Some(a), Some(b)) => format!("{a}-{b}"),
        _ => code.to_string(),
    }
}

/// What the person approving sees of a waiting device.
#[derive(Debug, Clone)]
pub struct DeviceRequest {
    pub user_code: String,
    pub client_id: String,
    pub client_name: Option<String>,
    /// The client's identity is vouched for (configured, or CIMD on a trusted domain).
    pub verified: bool,
    pub scopes: Vec<String>,
    pub resource: String,
    pub resource_name: String,
    /// What the consent form's token is bound to: the device code's hash, which only the
    /// server knows (a form token derived from the user code alone could be made by anyone
    /// signed in, for any code, without the typing throttle).
    pub binding: String,
}

#[derive(Debug)]
pub enum DeviceLookup {
    Found(DeviceRequest),
    /// No device is waiting on that code (never was, expired, decided).
    NotFound,
    Throttled {
        retry_after: u64,
    },
}

/// A short, stable name for a device authorization in records (not its secret).
fn device_ref(device_code_hash: &str) -> String {
    device_code_hash.chars().take(16).collect()
}

impl AuthorizationServer {
    /// Where people enter the user code.
    pub fn device_verification_uri(&self) -> String {
        format!("{}/authorize/device", self.settings.issuer)
    }

    /// `POST /device_authorization` (RFC 8628 §3.1–3.2).
    pub async fn device_authorization(
        &self,
        params: &Params,
        basic: Option<(String, String)>,
        ip: &str,
    ) -> Result<Value, OAuthError> {
        params.check_not_repeated(&["resource"])?;
        let now = self.clock.now();
        let window = now - now.rem_euclid(WINDOW_SECS);
        if self
            .store
            .hit(&format!("device:issue:{ip}"), window)
            .await?
            > REQUESTS_PER_ADDRESS
        {
            return Err(OAuthError::new(
                ErrorCode::TooManyRequests,
                "too many device authorizations from this address; try later",
            )
            .with_retry_after((window + WINDOW_SECS - now).max(1) as u64));
        }
        let client = self
            .authenticate_client(params, basic, super::clients::ClientLookup::Fresh)
            .await?;
        self.check_approved(&client).await?;
        if !client.allows_grant(DEVICE_CODE) {
            return Err(OAuthError::new(
                ErrorCode::UnauthorizedClient,
                "this client is not registered for the device_code grant",
            ));
        }
        let resource = self.resolve_resource(params.all("resource"))?.url.clone();
        let scopes = self.check_scopes(params.get("scope")?, &client)?;
        let device_code = crypto::new_secret(DEVICE_CODE_PREFIX);
        let device_code_hash = crypto::hash_secret(&device_code);
        let mut user_code = None;
        // A clash with a live code is rare (2^34 codes); a few draws settle it.
        for _ in 0..5 {
            let candidate = new_user_code();
            let d = DeviceAuthorization {
                device_code_hash: device_code_hash.clone(),
                user_code: candidate.clone(),
                client_id: client.client_id.clone(),
                scopes: scopes.clone(),
                resource: resource.clone(),
                created_at: now,
                expires_at: now + DEVICE_TTL_SECS,
                interval: INTERVAL_SECS,
                polled_at: None,
                status: DeviceStatus::Pending,
                user_id: None,
                code_hash: None,
            };
            if self.store.insert_device(&d).await? {
                user_code = Some(candidate);
                break;
            }
        }
        let user_code = user_code.ok_or_else(OAuthError::server_error)?;
        self.observer.record(
            crate::observe::Event::DeviceAuthorizationRequested {
                client: client.client_id.clone(),
                resource: resource.clone(),
                device: device_ref(&device_code_hash),
            },
            None,
        );
        let shown = display_user_code(&user_code);
        let uri = self.device_verification_uri();
        let complete = format!(
            "{uri}?user_code={}",
            form_urlencoded::byte_serialize(shown.as_bytes()).collect::<String>()
        );
        Ok(json!({
            "device_code": device_code,
            "user_code": shown,
            "verification_uri": uri,
            "verification_uri_complete": complete,
            "expires_in": DEVICE_TTL_SECS,
            "interval": INTERVAL_SECS,
        }))
    }

    /// The device code grant at `/token` (RFC 8628 §3.4–3.5).
    pub(super) async fn device_token(
        &self,
        params: &Params,
        client: &Client,
    ) -> Result<TokenResponse, OAuthError> {
        let device_code = params.require("device_code")?;
        let hash = crypto::hash_secret(device_code);
        let now = self.clock.now();
        let Some(d) = self.store.device(&hash).await? else {
            return Err(OAuthError::invalid_grant("the device code is not valid"));
        };
        if d.client_id != client.client_id {
            return Err(OAuthError::invalid_grant(
                "the device code was issued to another client",
            ));
        }
        // Redeemed already: treated as a replayed code (what it issued is revoked).
        let code = match (&d.status, &d.code_hash) {
            (DeviceStatus::Approved, Some(h)) => self.store.code(h).await?,
            _ => None,
        };
        if let Some(c) = &code
            && c.consumed_at.is_some()
        {
            if let Some(g) = &c.grant_id {
                self.revoke_grant_after_replay(g, crate::store::EndReason::CodeReplayed)
                    .await?;
            }
            return Err(OAuthError::invalid_grant(
                "the device code was used already",
            ));
        }
        // An approved one lives as long as its code (from the approval); the others until
        // the device authorization itself expires.
        let expired = match (&d.status, &code) {
            (DeviceStatus::Approved, Some(c)) => c.expires_at <= now,
            _ => d.expires_at <= now,
        };
        if expired {
            return Err(OAuthError::new(
                ErrorCode::ExpiredToken,
                "the device code has expired; start again",
            ));
        }
        match d.status {
            DeviceStatus::Denied => Err(OAuthError::new(
                ErrorCode::DeviceDenied,
                "the person denied the request",
            )),
            DeviceStatus::Pending => {
                let too_soon = d.polled_at.is_some_and(|p| now - p < d.interval);
                let interval = if too_soon { d.interval + 5 } else { d.interval };
                self.store.device_polled(&hash, now, interval).await?;
                Err(if too_soon {
                    OAuthError::new(
                        ErrorCode::SlowDown,
                        format!("poll at most every {interval} seconds"),
                    )
                } else {
                    OAuthError::new(
                        ErrorCode::AuthorizationPending,
                        "the person has not decided yet",
                    )
                })
            }
            DeviceStatus::Approved => {
                let record =
                    code.ok_or_else(|| OAuthError::invalid_grant("the device code is not valid"))?;
                self.redeem(params, client, record, GRANT_LABEL).await
            }
        }
    }

    /// The device waiting on a typed user code, for the person `user_id` at `ip`. Every
    /// attempt counts against both throttles before the lookup; a found one gives its
    /// counts back, so only wrong codes use them up.
    pub async fn find_device(
        &self,
        typed: &str,
        user_id: &str,
        ip: &str,
    ) -> Result<DeviceLookup, OAuthError> {
        let now = self.clock.now();
        let window = now - now.rem_euclid(WINDOW_SECS);
        let retry_after = (window + WINDOW_SECS - now).max(1) as u64;
        let keys = [
            (format!("device:lookup:ip:{ip}"), LOOKUPS_PER_ADDRESS),
            (format!("device:lookup:user:{user_id}"), LOOKUPS_PER_PERSON),
        ];
        for (key, max) in &keys {
            if self.store.hit(key, window).await? > *max {
                return Ok(DeviceLookup::Throttled { retry_after });
            }
        }
        let found = match normalize_user_code(typed) {
            Some(code) => self.store.pending_device(&code, now).await?,
            None => None,
        };
        let Some(d) = found else {
            return Ok(DeviceLookup::NotFound);
        };
        for (key, _) in &keys {
            self.store.unhit(key, window).await?;
        }
        let client = self.find_client(&d.client_id).await?;
        let resource_name = self
            .resources
            .iter()
            .find(|r| r.url == d.resource)
            .map(|r| r.name.clone())
            .unwrap_or_default();
        Ok(DeviceLookup::Found(DeviceRequest {
            user_code: display_user_code(&d.user_code),
            client_name: client.as_ref().and_then(|c| c.name.clone()),
            verified: client.as_ref().is_some_and(|c| self.client_is_verified(c)),
            client_id: d.client_id,
            scopes: d.scopes,
            resource: d.resource,
            resource_name,
            binding: d.device_code_hash,
        }))
    }

    /// The person's answer for the device waiting on `user_code` (as found by
    /// [`Self::find_device`]), when `proof` accepts that device's binding (the consent form's
    /// token); `Ok(false)` when no device waits on the code or the proof does not fit — one
    /// answer for both, so a forged form learns nothing. A sign-in through a source that keeps
    /// something per grant (a database password, a provider's tokens) cannot stand in for one
    /// here: such a person is asked to use the browser flow.
    pub async fn decide_device(
        &self,
        user_code: &str,
        user_id: &str,
        login_source: &str,
        allow: bool,
        proof: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<bool, OAuthError> {
        let Some(code) = normalize_user_code(user_code) else {
            return Ok(false);
        };
        let now = self.clock.now();
        let Some(d) = self.store.pending_device(&code, now).await? else {
            return Ok(false);
        };
        if !proof(&d.device_code_hash) {
            return Ok(false);
        }
        let device = device_ref(&d.device_code_hash);
        if !allow {
            let denied = self.store.deny_device(&code, now, user_id).await?;
            if denied {
                self.observer.record(
                    crate::observe::Event::DeviceDecided {
                        client: d.client_id.clone(),
                        user: user_id.to_string(),
                        device,
                        approved: false,
                    },
                    None,
                );
            }
            return Ok(denied);
        }
        if self
            .login
            .get(login_source)
            .is_none_or(|s| s.keeps_context())
        {
            return Err(OAuthError::invalid_request(
                "your sign-in keeps something per authorization, which approving a device cannot carry; connect the application through the browser instead",
            ));
        }
        let grant_id = crypto::new_id();
        let record = AuthCodeRecord {
            code_hash: crypto::hash_secret(&crypto::new_secret(crypto::CODE_PREFIX)),
            client_id: d.client_id.clone(),
            user_id: user_id.to_string(),
            redirect_uri: String::new(),
            redirect_given: false,
            resource: d.resource.clone(),
            scopes: d.scopes.clone(),
            code_challenge: String::new(),
            created_at: now,
            // From the approval: one approved just before the device's code ran out is still
            // redeemed by the next poll.
            expires_at: now + self.settings.code_ttl.max(2 * d.interval),
            consumed_at: None,
            grant_id: Some(grant_id.clone()),
            login_source: Some(login_source.to_string()),
            login_context: None,
        };
        let approved = self.store.approve_device(&code, now, &record).await?;
        if approved {
            self.observer.record(
                crate::observe::Event::DeviceDecided {
                    client: d.client_id.clone(),
                    user: user_id.to_string(),
                    device,
                    approved: true,
                },
                Some(&grant_id),
            );
            self.observer.record(
                crate::observe::Event::ConsentGiven {
                    client: d.client_id,
                    user: user_id.to_string(),
                    scopes: d.scopes,
                    resource: d.resource,
                    remembered: false,
                },
                Some(&grant_id),
            );
        }
        Ok(approved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_codes_are_eight_consonants_and_read_back_as_typed() {
        for _ in 0..200 {
            let c = new_user_code();
            assert_eq!(c.len(), 8);
            assert!(c.bytes().all(|b| ALPHABET.contains(&b)), "{c}");
            let shown = display_user_code(&c);
            assert_eq!(shown.len(), 9);
            assert_eq!(normalize_user_code(&shown).as_deref(), Some(c.as_str()));
            assert_eq!(
                normalize_user_code(&shown.to_ascii_lowercase()).as_deref(),
                Some(c.as_str())
            );
        }
        assert_eq!(
            normalize_user_code("BCDF GHJK").as_deref(),
            Some("BCDFGHJK")
        );
        for bad in [
            "BCDF-GHJ",
            "BCDF-GHJKL",
            "ABCD-EFGH",
            "BCDF-GHJ1",
            "",
            "BCDF-GHJ\u{0}",
        ] {
            assert_eq!(normalize_user_code(bad), None, "{bad}");
        }
        assert_eq!(normalize_user_code(&"B".repeat(100)), None);
    }
}
