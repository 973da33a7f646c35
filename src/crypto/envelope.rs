//! Encryption of secrets the gateway must keep usable in the store (signing keys' private
//! halves; later the upstream token vault): AES-256-GCM envelopes under operator-supplied keys
//! that have ids, one of which is active.
//!
//! An envelope is `[VERSION][id length][id][nonce 12][ciphertext + tag]`; the associated data
//! binds the version, the key id and the row the value belongs to, so an envelope copied onto
//! another row does not open. Every instance configured with the same keys opens what any of
//! them sealed; rotating means adding a key, making it active, re-sealing, and only then
//! removing the old one.

use std::fmt;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::KeyInit;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};

use super::{NONCE_LEN, TAG_LEN, open_sealed, random_bytes, seal_into};

/// First byte of every envelope. A DER value (such as a PKCS#8 key kept from before any
/// encryption key was configured) starts with `0x30`, so the two cannot be confused.
const VERSION: u8 = 0xE1;
const MAX_ID_LEN: usize = 64;
const ID_RULE: &str = "the id must be 1 to 64 characters of letters, digits, `.`, `_` or `-`";

/// What is wrong with configured encryption keys; which configuration key it concerns
/// follows from the variant, never from the wording.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeysError {
    /// One of the `id:key` entries (or the list as a whole).
    #[error("{0}")]
    Entry(String),
    /// The named active key.
    #[error("the active key `{0}` is not among the keys")]
    Active(String),
}

impl From<KeysError> for String {
    fn from(e: KeysError) -> Self {
        e.to_string()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("sealed with encryption key `{0}`, which is not configured")]
    UnknownKey(String),
    #[error("does not open with encryption key `{0}` (another key under that id, or altered)")]
    WontOpen(String),
    #[error("is not a readable envelope")]
    Malformed,
}

/// The configured encryption keys. `Debug` shows their ids only.
#[derive(Clone)]
pub struct EncryptionKeys {
    active: usize,
    keys: Vec<(String, Aes256Gcm)>,
}

impl fmt::Debug for EncryptionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptionKeys")
            .field("active", &self.active_id())
            .field(
                "ids",
                &self
                    .keys
                    .iter()
                    .map(|(id, _)| id.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A key id: 1–64 characters of `[A-Za-z0-9._-]`, so it reads plainly in logs and errors.
fn valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl EncryptionKeys {
    /// Parses `id:key` entries (the key: 32 bytes in base64, standard or URL-safe, padding
    /// optional) and picks the active one (`active`, or the first entry). Errors say which
    /// entry is wrong and how, and never repeat key material.
    pub fn parse(entries: &[String], active: Option<&str>) -> Result<Self, KeysError> {
        let bad = |m: String| KeysError::Entry(m);
        if entries.is_empty() {
            return Err(bad("no keys given".into()));
        }
        let mut keys: Vec<(String, Aes256Gcm)> = Vec::with_capacity(entries.len());
        for (n, entry) in entries.iter().enumerate() {
            let n = n + 1;
            let Some((id, material)) = entry.trim().split_once(':') else {
                return Err(bad(format!(
                    "entry {n} is not `id:key` (generate one with `mcp-oauth-gateway keys new-encryption-key`)"
                )));
            };
            if !valid_id(id) {
                return Err(bad(format!("entry {n}: {ID_RULE}")));
            }
            if keys.iter().any(|(k, _)| k == id) {
                return Err(bad(format!("entry {n}: the id `{id}` is used twice")));
            }
            let bytes = decode_key(material)
                .ok_or_else(|| bad(format!("entry {n} (`{id}`): the key is not base64")))?;
            let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| {
                bad(format!(
                    "entry {n} (`{id}`): the key must be 32 bytes, it is {}",
                    bytes.len()
                ))
            })?;
            keys.push((id.to_string(), cipher));
        }
        let active = match active {
            None => 0,
            Some(want) => keys
                .iter()
                .position(|(id, _)| id == want)
                .ok_or_else(|| KeysError::Active(want.to_string()))?,
        };
        Ok(Self { active, keys })
    }

    /// A new key entry, `id:base64`, for the configuration.
    pub fn generate_entry(id: &str) -> Result<String, String> {
        if !valid_id(id) {
            return Err(ID_RULE.into());
        }
        Ok(format!("{id}:{}", STANDARD.encode(random_bytes::<32>())))
    }

    /// Every key's id, in the configuration's order (never key material).
    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|(id, _)| id.as_str()).collect()
    }

    pub fn active_id(&self) -> &str {
        self.keys
            .get(self.active)
            .map(|(id, _)| id.as_str())
            .unwrap_or_default()
    }

    /// Seals `plaintext` for the row named by `row` with the active key.
    pub fn seal(&self, row: &str, plaintext: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        let (id, cipher) = self.keys.get(self.active).ok_or(EnvelopeError::Malformed)?;
        let mut out = Vec::with_capacity(2 + id.len() + NONCE_LEN + plaintext.len() + TAG_LEN);
        out.push(VERSION);
        out.push(id.len() as u8);
        out.extend_from_slice(id.as_bytes());
        seal_into(&mut out, cipher, &associated_data(id, row), plaintext)
            .ok_or(EnvelopeError::Malformed)?;
        Ok(out)
    }

    /// Opens an envelope sealed for `row` by any configured key.
    pub fn open(&self, row: &str, envelope: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        let (id, sealed) = split(envelope).ok_or(EnvelopeError::Malformed)?;
        let (_, cipher) = self
            .keys
            .iter()
            .find(|(k, _)| k == id)
            .ok_or_else(|| EnvelopeError::UnknownKey(id.to_string()))?;
        open_sealed(cipher, &associated_data(id, row), sealed)
            .ok_or_else(|| EnvelopeError::WontOpen(id.to_string()))
    }
}

/// The id of the key that sealed `stored`, or `None` when it is not an envelope.
pub fn sealed_with(stored: &[u8]) -> Option<&str> {
    split(stored).map(|(id, _)| id)
}

/// An envelope's key id and its `nonce || ciphertext`.
fn split(envelope: &[u8]) -> Option<(&str, &[u8])> {
    let (&version, rest) = envelope.split_first()?;
    let (&id_len, rest) = rest.split_first()?;
    if version != VERSION || rest.len() < id_len as usize + NONCE_LEN + TAG_LEN {
        return None;
    }
    let (id, sealed) = rest.split_at(id_len as usize);
    let id = std::str::from_utf8(id).ok().filter(|id| valid_id(id))?;
    Some((id, sealed))
}

fn associated_data(id: &str, row: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(32 + id.len() + row.len());
    aad.extend_from_slice(b"mcp-oauth-gateway envelope\0");
    aad.push(VERSION);
    aad.extend_from_slice(id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(row.as_bytes());
    aad
}

fn decode_key(material: &str) -> Option<Vec<u8>> {
    let m = material.trim().trim_end_matches('=');
    if m.contains(['-', '_']) {
        URL_SAFE_NO_PAD.decode(m).ok()
    } else {
        STANDARD_NO_PAD.decode(m).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(entries: &[&str], active: Option<&str>) -> EncryptionKeys {
        let entries: Vec<String> = entries.iter().map(|s| s.to_string()).collect();
        EncryptionKeys::parse(&entries, active).expect("keys")
    }

    #[test]
    fn sealed_values_open_with_any_configured_key_for_their_row_only() {
        let a = EncryptionKeys::generate_entry("a").expect("a");
        let b = EncryptionKeys::generate_entry("b").expect("b");
        let old = keys(&[&a], None);
        let sealed = old.seal("signing_keys/k1", b"secret").expect("seal");
        assert_eq!(sealed_with(&sealed), Some("a"));
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        // Rotated: b active, a still opens what it sealed.
        let rotated = keys(&[&b, &a], None);
        assert_eq!(rotated.active_id(), "b");
        assert_eq!(
            rotated.open("signing_keys/k1", &sealed).expect("open"),
            b"secret"
        );
        assert_eq!(
            sealed_with(&rotated.seal("r", b"x").expect("seal")),
            Some("b")
        );
        // Moved to another row: refused.
        assert_eq!(
            rotated.open("signing_keys/k2", &sealed),
            Err(EnvelopeError::WontOpen("a".into()))
        );
        // Old key removed: named in the error.
        assert_eq!(
            keys(&[&b], None).open("signing_keys/k1", &sealed),
            Err(EnvelopeError::UnknownKey("a".into()))
        );
        // Another key under the same id, or a flipped bit: refused.
        let other_a = EncryptionKeys::generate_entry("a").expect("a");
        assert!(matches!(
            keys(&[&other_a], None).open("signing_keys/k1", &sealed),
            Err(EnvelopeError::WontOpen(_))
        ));
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(old.open("signing_keys/k1", &tampered).is_err());
        // DER (a key stored before encryption was configured) is not an envelope.
        assert_eq!(sealed_with(&[0x30, 0x81, 0x87, 0x02]), None);
        assert_eq!(old.open("r", &[0x30, 1, 2]), Err(EnvelopeError::Malformed));
    }

    #[test]
    fn bad_entries_are_named_without_their_material() {
        let err = |entries: &[&str], active: Option<&str>| {
            let entries: Vec<String> = entries.iter().map(|s| s.to_string()).collect();
            EncryptionKeys::parse(&entries, active)
                .expect_err("invalid")
                .to_string()
        };
        assert!(err(&[], None).contains("no keys"));
        assert!(err(&["nocolon"], None).contains("entry 1 is not `id:key`"));
        let short = "k:c2hvcnQta2V5LW1hdGVyaWFs";
        let e = err(&[short], None);
        assert!(e.contains("must be 32 bytes, it is 18"), "{e}");
        assert!(!e.contains("c2hvcnQ"));
        assert!(err(&["k:***"], None).contains("not base64"));
        assert!(err(&["bad id:AAAA"], None).contains("the id must be"));
        let a = EncryptionKeys::generate_entry("a").expect("a");
        assert!(err(&[&a, &a], None).contains("used twice"));
        assert!(err(&[&a], Some("z")).contains("`z` is not among"));
        // URL-safe and padded forms both read.
        let url_safe = format!("u:{}", URL_SAFE_NO_PAD.encode([0xfb_u8; 32]));
        let padded = format!("p:{}", STANDARD.encode([0xfb_u8; 32]));
        let ring = keys(&[&url_safe, &padded], Some("p"));
        assert_eq!(ring.active_id(), "p");
        let debug = format!("{ring:?}");
        assert!(debug.contains("\"u\"") && !debug.contains("-_"), "{debug}");
    }
}
