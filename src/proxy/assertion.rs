//! Signed identity assertions for upstreams: a short-lived JWT (ES256) naming the user and
//! the client, which the upstream verifies with the gateway's published JWKS
//! (`/.well-known/jwks.json`) instead of trusting a plain header.

use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::authorization::token::Principal;
use crate::clock::Timestamp;
use crate::crypto::{self, EncryptionKeys};
use crate::store::SharedStore;

/// How long a new key is published before it signs: every instance re-reads the keys every
/// [`KEY_RELOAD_SECS`], so by then every instance's JWKS lists it, and a verifier that fetched
/// the JWKS from any of them can check what the new key signs.
pub const KEY_ACTIVATION_DELAY_SECS: i64 = 120;
/// How often a running instance re-reads the keys from the store.
pub const KEY_RELOAD_SECS: u64 = 30;

struct KeyRing {
    kid: String,
    key: EcdsaKeyPair,
    /// Every live key's public JWK, the signing one first.
    jwks: Value,
}

/// Signs identity assertions with the store's keys; re-read while running
/// ([`Signer::reload`]), so `keys rotate` and `keys retire` need no restart.
pub struct Signer {
    ring: std::sync::RwLock<std::sync::Arc<KeyRing>>,
    rng: SystemRandom,
    /// Opens the private halves when they are stored encrypted.
    encryption: Option<Arc<EncryptionKeys>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.ring().kid)
            .finish_non_exhaustive()
    }
}

fn public_jwk(kid: &str, key: &EcdsaKeyPair) -> Option<Value> {
    // The uncompressed point: 0x04 || X || Y.
    let point = key.public_key().as_ref();
    if point.len() != 65 || point[0] != 4 {
        return None;
    }
    Some(json!({
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..]),
    }))
}

/// Which of the live keys (their creation times, newest first) signs at `now`: the newest
/// one published for at least [`KEY_ACTIVATION_DELAY_SECS`]; while every key is newer than
/// that (the very first start), the oldest.
pub fn signing_index(created_newest_first: &[Timestamp], now: Timestamp) -> usize {
    created_newest_first
        .iter()
        .position(|c| *c + KEY_ACTIVATION_DELAY_SECS <= now)
        .unwrap_or(created_newest_first.len().saturating_sub(1))
}

/// A new ES256 key in PKCS#8.
pub fn generate_key() -> Result<Vec<u8>, String> {
    EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
        .map(|k| k.as_ref().to_vec())
        .map_err(|_| "could not generate a signing key".to_string())
}

/// What a signing key's envelope is bound to, so it opens on its own row only.
fn sealed_row(kid: &str) -> String {
    format!("signing_keys/{kid}")
}

/// How a key's private half is stored: sealed under the active encryption key when there are
/// encryption keys, PKCS#8 as is otherwise.
pub fn stored_form(
    encryption: Option<&EncryptionKeys>,
    kid: &str,
    pkcs8: &[u8],
) -> Result<Vec<u8>, String> {
    match encryption {
        Some(keys) => keys
            .seal(&sealed_row(kid), pkcs8)
            .map_err(|e| format!("signing key {kid}: {e}")),
        None => Ok(pkcs8.to_vec()),
    }
}

/// The PKCS#8 of a stored private half; the error names the key and what is missing.
fn pkcs8_of(
    encryption: Option<&EncryptionKeys>,
    kid: &str,
    stored: &[u8],
) -> Result<Vec<u8>, String> {
    match (crypto::sealed_with(stored), encryption) {
        (None, _) => Ok(stored.to_vec()),
        (Some(by), None) => Err(format!(
            "signing key {kid} is stored encrypted with encryption key `{by}`, but `keys.encryption` is empty"
        )),
        (Some(_), Some(keys)) => keys
            .open(&sealed_row(kid), stored)
            .map_err(|e| format!("signing key {kid} {e} (`keys.encryption`)")),
    }
}

/// Re-seals every live key that is not sealed under the active encryption key (stored in
/// clear before encryption was configured, or under a key being rotated out). Returns how
/// many it changed; several instances doing it at once change each key once.
pub async fn reseal_signing_keys(
    store: &SharedStore,
    encryption: &EncryptionKeys,
) -> Result<usize, String> {
    let mut changed = 0;
    for (kid, stored, _) in store.signing_keys().await.map_err(|e| e.to_string())? {
        if crypto::sealed_with(&stored) == Some(encryption.active_id()) {
            continue;
        }
        let pkcs8 = pkcs8_of(Some(encryption), &kid, &stored)?;
        let sealed = stored_form(Some(encryption), &kid, &pkcs8)?;
        if store
            .reseal_signing_key(&kid, &stored, &sealed)
            .await
            .map_err(|e| e.to_string())?
        {
            changed += 1;
        }
    }
    Ok(changed)
}

impl Signer {
    /// Loads the live keys from the store, creating the first one if there is none. With
    /// encryption keys, first re-seals any key not yet under the active one.
    pub async fn load(
        store: &SharedStore,
        now: Timestamp,
        encryption: Option<Arc<EncryptionKeys>>,
    ) -> Result<Self, String> {
        if store
            .signing_keys()
            .await
            .map_err(|e| e.to_string())?
            .is_empty()
        {
            let kid = crypto::new_id();
            let stored = stored_form(encryption.as_deref(), &kid, &generate_key()?)?;
            store
                .add_signing_key_if_none(&kid, &stored, now)
                .await
                .map_err(|e| e.to_string())?;
        }
        match &encryption {
            Some(keys) => {
                let n = reseal_signing_keys(store, keys).await?;
                if n > 0 {
                    tracing::info!(
                        count = n,
                        encryption_key = keys.active_id(),
                        "signing keys re-encrypted under the active encryption key"
                    );
                }
            }
            None => tracing::info!(
                "signing keys are stored unencrypted; set `keys.encryption` to encrypt them"
            ),
        }
        let ring = Self::read(store, now, encryption.as_deref()).await?;
        Ok(Self {
            ring: std::sync::RwLock::new(std::sync::Arc::new(ring)),
            rng: SystemRandom::new(),
            encryption,
        })
    }

    /// Re-reads the keys (a rotation or retirement made by the CLI or another instance).
    /// On failure the keys in use stay.
    pub async fn reload(&self, store: &SharedStore, now: Timestamp) -> Result<(), String> {
        let ring = std::sync::Arc::new(Self::read(store, now, self.encryption.as_deref()).await?);
        if let Ok(mut current) = self.ring.write() {
            *current = ring;
        }
        Ok(())
    }

    async fn read(
        store: &SharedStore,
        now: Timestamp,
        encryption: Option<&EncryptionKeys>,
    ) -> Result<KeyRing, String> {
        let keys = store.signing_keys().await.map_err(|e| e.to_string())?;
        let created: Vec<Timestamp> = keys.iter().map(|(_, _, c)| *c).collect();
        let signing = signing_index(&created, now);
        let mut jwks = Vec::new();
        let mut active = None;
        for (i, (kid, stored, _)) in keys.iter().enumerate() {
            let pkcs8 = pkcs8_of(encryption, kid, stored)?;
            let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8)
                .map_err(|_| format!("signing key {kid} is unreadable"))?;
            if let Some(jwk) = public_jwk(kid, &key) {
                if i == signing {
                    jwks.insert(0, jwk);
                } else {
                    jwks.push(jwk);
                }
            }
            if i == signing {
                active = Some((kid.clone(), key));
            }
        }
        let (kid, key) = active.ok_or("no signing key")?;
        Ok(KeyRing {
            kid,
            key,
            jwks: json!({ "keys": jwks }),
        })
    }

    fn ring(&self) -> std::sync::Arc<KeyRing> {
        match self.ring.read() {
            Ok(r) => r.clone(),
            // A panic while swapping cannot leave a half-written Arc; use what is there.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The public keys (JWKS), the signing one first.
    pub fn jwks(&self) -> Value {
        self.ring().jwks.clone()
    }

    /// The id of the key that signs now.
    pub fn active_kid(&self) -> String {
        self.ring().kid.clone()
    }

    /// A JWT for `principal`, for `audience`, valid `ttl` seconds.
    pub fn assert(
        &self,
        issuer: &str,
        audience: &str,
        principal: &Principal,
        now: Timestamp,
        ttl: i64,
    ) -> Option<String> {
        let ring = self.ring();
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": ring.kid});
        let subject = principal
            .user_id
            .clone()
            .unwrap_or_else(|| format!("client:{}", principal.client_id));
        let mut claims = json!({
            "iss": issuer,
            "aud": audience,
            "sub": subject,
            "client_id": principal.client_id,
            "scope": principal.scopes.join(" "),
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": crypto::new_id(),
        });
        if let Value::Object(c) = &mut claims {
            if let Some(name) = &principal.username {
                c.insert("preferred_username".into(), json!(name));
            }
            if let Some(email) = &principal.email {
                c.insert("email".into(), json!(email));
            }
            if !principal.groups.is_empty() {
                c.insert("groups".into(), json!(principal.groups));
            }
        }
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = ring.key.sign(&self.rng, signing_input.as_bytes()).ok()?;
        Some(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(sig.as_ref())
        ))
    }
}
