//! Random secrets, their hashes, and the small amount of symmetric crypto the gateway needs.
//!
//! Secrets handed to clients (codes, tokens, client secrets) are 256-bit random values with a
//! recognisable prefix, so that secret scanners can find leaked ones. Only their SHA-256 hash
//! is ever stored.

mod envelope;
pub use envelope::{EncryptionKeys, EnvelopeError, KeysError, sealed_with};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const ACCESS_TOKEN_PREFIX: &str = "mog_at_";
pub const REFRESH_TOKEN_PREFIX: &str = "mog_rt_";
pub const CODE_PREFIX: &str = "mog_ac_";
pub const CLIENT_SECRET_PREFIX: &str = "mog_cs_";
pub const CLIENT_ID_PREFIX: &str = "mog_ci_";

/// Fills a buffer from the operating system's generator. Failure here means the machine
/// cannot produce secrets at all; there is nothing sensible to continue with.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    if let Err(e) = getrandom::fill(&mut buf) {
        // No unwrap outside tests: but an OS without entropy is not recoverable.
        panic!("the operating system's random generator failed: {e}");
    }
    buf
}

/// A new 256-bit secret, base64url, behind `prefix`.
pub fn new_secret(prefix: &str) -> String {
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(random_bytes::<32>()))
}

/// A shorter random identifier (128 bits) for things that are not secrets by themselves.
/// Hex, not base64url: ids are typed on command lines, where a leading `-` reads as a flag.
pub fn new_id() -> String {
    hex(&random_bytes::<16>())
}

/// SHA-256 of a secret, hex; the only form in which secrets are stored.
pub fn hash_secret(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

/// Compares two byte strings without leaking where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// RFC 7636 S256: BASE64URL(SHA256(verifier)).
pub fn pkce_s256_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// RFC 7636 S256: BASE64URL(SHA256(verifier)) == challenge, compared in constant time.
pub fn pkce_s256_matches(verifier: &str, challenge: &str) -> bool {
    constant_time_eq(
        pkce_s256_challenge(verifier).as_bytes(),
        challenge.as_bytes(),
    )
}

/// RFC 7636 §4.1: 43..=128 characters of [A-Z a-z 0-9 - . _ ~].
pub fn is_valid_pkce_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// A S256 challenge is the base64url of 32 bytes: exactly 43 characters.
pub fn is_valid_s256_challenge(challenge: &str) -> bool {
    challenge.len() == 43
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// Seals `plaintext` under a key derived from `secret` (which the store never holds), binding
/// `context` as associated data. Used to keep a refresh retry answer without storing a usable
/// token: only someone presenting the original secret can open it.
pub fn seal_with_secret(secret: &str, context: &str, plaintext: &[u8]) -> Option<Vec<u8>> {
    let cipher = Aes256Gcm::new_from_slice(&derive_key(secret)).ok()?;
    let mut out = Vec::new();
    seal_into(&mut out, &cipher, context.as_bytes(), plaintext)?;
    Some(out)
}

pub fn open_with_secret(secret: &str, context: &str, sealed: &[u8]) -> Option<Vec<u8>> {
    let cipher = Aes256Gcm::new_from_slice(&derive_key(secret)).ok()?;
    open_sealed(&cipher, context.as_bytes(), sealed)
}

/// Appends `nonce || AES-256-GCM(plaintext)` to `out`, with a fresh random nonce; the one
/// layout every sealed value uses after its own header.
fn seal_into(out: &mut Vec<u8>, cipher: &Aes256Gcm, aad: &[u8], plaintext: &[u8]) -> Option<()> {
    let nonce = random_bytes::<NONCE_LEN>();
    let sealed = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .ok()?;
    out.reserve(NONCE_LEN + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Some(())
}

/// Opens what [`seal_into`] wrote; `None` if it is too short, altered, or sealed under
/// another key or associated data.
fn open_sealed(cipher: &Aes256Gcm, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return None;
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad })
        .ok()
}

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

fn derive_key(secret: &str) -> [u8; 32] {
    // Domain-separated from `hash_secret`, so the stored hash is not the key.
    let mut h = Sha256::new();
    h.update(b"mcp-oauth-gateway retry-key v1\0");
    h.update(secret.as_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_rfc7636_appendix_b() {
        assert!(pkce_s256_matches(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        ));
        assert!(!pkce_s256_matches(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXj",
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        ));
    }

    #[test]
    fn sealed_answer_opens_only_with_the_secret() {
        let sealed = seal_with_secret("s1", "ctx", b"hello").expect("seal");
        assert_eq!(
            open_with_secret("s1", "ctx", &sealed).as_deref(),
            Some(&b"hello"[..])
        );
        assert!(open_with_secret("s2", "ctx", &sealed).is_none());
        assert!(open_with_secret("s1", "other", &sealed).is_none());
    }

    #[test]
    fn secrets_are_prefixed_and_hashes_hex() {
        let s = new_secret(ACCESS_TOKEN_PREFIX);
        assert!(s.starts_with("mog_at_"));
        assert_eq!(hash_secret(&s).len(), 64);
    }
}
