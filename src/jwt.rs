//! Verifying JSON Web Tokens signed by someone else: identity providers' ID tokens,
//! identity assertions (ID-JAG) and, in the resource-server-only mode, access tokens of an
//! external authorization server. One strict reading for all of them:
//!
//! - the compact form only (three base64url parts, no padding), a header that is a JSON
//!   object naming `alg` (and no `crit` extensions, which nothing here understands);
//! - the algorithm from an explicit allow-list, never `none`, and the key's type and
//!   declared algorithm must agree with it (no RSA key read as an HMAC secret);
//! - keys from a JWKS, picked by `kid`; an unknown `kid` lets the caller fetch the set again
//!   once ([`KeySet::needs_refetch`]), which is how a provider's key rotation is followed;
//! - claims checked by [`Expect`]: `iss`, `aud` (a string or an array), `azp` when several
//!   audiences, `exp`/`nbf`/`iat` with a bounded skew, `nonce`, `typ`.

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ED25519, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents,
    UnparsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

/// Signature algorithms the gateway verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum Alg {
    RS256,
    ES256,
    EdDSA,
}

impl Alg {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "RS256" => Some(Self::RS256),
            "ES256" => Some(Self::ES256),
            "EdDSA" => Some(Self::EdDSA),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token is not a compact JWS")]
    Malformed,
    #[error("the token's algorithm `{0}` is not allowed")]
    Algorithm(String),
    #[error("the token names a key that is not in the key set")]
    UnknownKey,
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token's `{0}` is missing or wrong")]
    Claim(&'static str),
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the key set is not a JWKS")]
    KeySet,
}

/// A public key of a JWKS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// Modulus and exponent, big-endian without leading zeros.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed P-256 point: `04 || x || y`.
    P256(Vec<u8>),
    Ed25519(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwk {
    pub kid: Option<String>,
    /// The algorithm the key is for, when the set says.
    pub alg: Option<String>,
    pub key: PublicKey,
}

impl Jwk {
    fn fits(&self, alg: Alg) -> bool {
        let kind = matches!(
            (&self.key, alg),
            (PublicKey::Rsa { .. }, Alg::RS256)
                | (PublicKey::P256(_), Alg::ES256)
                | (PublicKey::Ed25519(_), Alg::EdDSA)
        );
        let declared = self
            .alg
            .as_deref()
            .is_none_or(|a| Alg::parse(a) == Some(alg));
        kind && declared
    }
}

fn b64(s: &str) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_NO_PAD.decode(s).map_err(|_| JwtError::Malformed)
}

fn strip_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let lead = v.iter().take_while(|b| **b == 0).count();
    v.drain(..lead.min(v.len().saturating_sub(1)));
    v
}

/// The signing keys of a JWKS document. Keys of other types or uses (encryption) are
/// skipped; a document that is not a JWKS at all is an error.
pub fn parse_jwks(bytes: &[u8]) -> Result<Vec<Jwk>, JwtError> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|_| JwtError::KeySet)?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or(JwtError::KeySet)?;
    let mut out = Vec::new();
    for k in keys {
        let Some(k) = k.as_object() else { continue };
        let text = |name: &str| k.get(name).and_then(Value::as_str);
        if text("use").is_some_and(|u| u != "sig") {
            continue;
        }
        let field = |name: &str| text(name).map(b64).transpose().ok().flatten();
        let key = match (text("kty"), text("crv")) {
            (Some("RSA"), _) => match (field("n"), field("e")) {
                // At least 2048 bits, counted after any leading zero bytes.
                (Some(n), Some(e)) if strip_zeros(n.clone()).len() >= 256 => PublicKey::Rsa {
                    n: strip_zeros(n),
                    e: strip_zeros(e),
                },
                _ => continue,
            },
            (Some("EC"), Some("P-256")) => match (field("x"), field("y")) {
                (Some(x), Some(y)) if x.len() == 32 && y.len() == 32 => {
                    let mut point = vec![4u8];
                    point.extend(x);
                    point.extend(y);
                    PublicKey::P256(point)
                }
                _ => continue,
            },
            (Some("OKP"), Some("Ed25519")) => match field("x") {
                Some(x) if x.len() == 32 => PublicKey::Ed25519(x),
                _ => continue,
            },
            _ => continue,
        };
        out.push(Jwk {
            kid: text("kid").map(str::to_string),
            alg: text("alg").map(str::to_string),
            key,
        });
    }
    Ok(out)
}

/// A token split and decoded, its signature not yet checked.
#[derive(Debug)]
pub struct Decoded {
    pub alg: Alg,
    pub kid: Option<String>,
    pub typ: Option<String>,
    pub claims: Map<String, Value>,
    signing_input_len: usize,
    signature: Vec<u8>,
}

/// Splits a compact JWS and reads its header and claims strictly. `allowed` lists the
/// algorithms the caller accepts; anything else (and `none`) is refused before any key is
/// looked at.
pub fn decode(token: &str, allowed: &[Alg]) -> Result<Decoded, JwtError> {
    if token.len() > 16 * 1024 {
        return Err(JwtError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let header: Map<String, Value> =
        serde_json::from_slice(&b64(h)?).map_err(|_| JwtError::Malformed)?;
    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(JwtError::Malformed)?;
    let alg = Alg::parse(alg_name)
        .filter(|a| allowed.contains(a))
        .ok_or_else(|| {
            JwtError::Algorithm(
                crate::text::printable(&alg_name.chars().take(20).collect::<String>()).into_owned(),
            )
        })?;
    if header.contains_key("crit") {
        return Err(JwtError::Malformed);
    }
    let claims: Map<String, Value> =
        serde_json::from_slice(&b64(p)?).map_err(|_| JwtError::Malformed)?;
    Ok(Decoded {
        alg,
        kid: match header.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.clone()),
            Some(_) => return Err(JwtError::Malformed),
        },
        typ: header
            .get("typ")
            .and_then(Value::as_str)
            .map(str::to_string),
        claims,
        signing_input_len: h.len() + 1 + p.len(),
        signature: b64(s)?,
    })
}

impl Decoded {
    /// Checks the signature of `token` (the string this was decoded from) with `key`.
    pub fn verify(&self, token: &str, key: &Jwk) -> Result<(), JwtError> {
        if !key.fits(self.alg) {
            return Err(JwtError::UnknownKey);
        }
        let input = token
            .get(..self.signing_input_len)
            .ok_or(JwtError::Malformed)?
            .as_bytes();
        let ok = match &key.key {
            PublicKey::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                .verify(&RSA_PKCS1_2048_8192_SHA256, input, &self.signature)
                .is_ok(),
            PublicKey::P256(point) => UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                .verify(input, &self.signature)
                .is_ok(),
            PublicKey::Ed25519(x) => UnparsedPublicKey::new(&ED25519, x)
                .verify(input, &self.signature)
                .is_ok(),
        };
        ok.then_some(()).ok_or(JwtError::Signature)
    }
}

/// A JWKS as fetched, with the rule for fetching it again.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<Jwk>,
    fetched_at: i64,
}

/// A key set is fetched again for an unknown `kid` at most this often.
pub const REFETCH_AFTER_SECS: i64 = 30;

impl KeySet {
    pub fn new(keys: Vec<Jwk>, fetched_at: i64) -> Self {
        Self { keys, fetched_at }
    }

    /// The key for a token: by `kid`, or the only key that fits when the token names none.
    pub fn key_for(&self, d: &Decoded) -> Option<&Jwk> {
        match &d.kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid.as_str()) && k.fits(d.alg)),
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.fits(d.alg));
                match (fitting.next(), fitting.next()) {
                    (Some(only), None) => Some(only),
                    _ => None,
                }
            }
        }
    }

    /// Whether a token whose key is missing justifies fetching the set again (the provider
    /// rotated its keys) — not more than once per [`REFETCH_AFTER_SECS`], so that tokens
    /// naming made-up keys cannot make the gateway hammer the provider.
    pub fn needs_refetch(&self, d: &Decoded, now: i64) -> bool {
        self.key_for(d).is_none() && now - self.fetched_at >= REFETCH_AFTER_SECS
    }
}

/// What the claims must say.
#[derive(Debug, Clone)]
pub struct Expect<'a> {
    pub issuer: &'a str,
    /// The audience that must be among `aud`.
    pub audience: &'a str,
    /// With several audiences, `azp` must name this party (OpenID Connect Core §3.1.3.7).
    pub authorized_party: Option<&'a str>,
    pub nonce: Option<&'a str>,
    /// The header's `typ`, compared without case and without an `application/` prefix.
    pub typ: Option<&'a str>,
    pub now: i64,
    /// Clock difference tolerated on `exp`, `nbf` and `iat`.
    pub skew: i64,
    /// `iat` may be at most this old (for one-time assertions); `None` for no bound.
    pub max_age: Option<i64>,
}

/// Checks the claims of a verified token.
pub fn check_claims(d: &Decoded, e: &Expect<'_>) -> Result<(), JwtError> {
    let c = &d.claims;
    let text = |name| c.get(name).and_then(Value::as_str);
    // A present field of the wrong type is refused, never read as absent.
    let present_text = |name: &'static str| match c.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(JwtError::Claim(name)),
    };
    // NumericDate (RFC 7519 §2): a number, possibly with a fraction; whole seconds here.
    let date = |name: &'static str| match c.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| f.floor() as i64)
            })
            .map(Some)
            .ok_or(JwtError::Claim(name)),
        Some(_) => Err(JwtError::Claim(name)),
    };
    if let Some(want) = e.typ {
        let norm = |t: &str| {
            let t = t.to_ascii_lowercase();
            t.strip_prefix("application/")
                .map(str::to_string)
                .unwrap_or(t)
        };
        if d.typ.as_deref().map(norm) != Some(norm(want)) {
            return Err(JwtError::Claim("typ"));
        }
    }
    if text("iss") != Some(e.issuer) {
        return Err(JwtError::Claim("iss"));
    }
    let audiences: Vec<&str> = match c.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().ok_or(JwtError::Claim("aud")))
            .collect::<Result<_, _>>()?,
        _ => return Err(JwtError::Claim("aud")),
    };
    if !audiences.contains(&e.audience) {
        return Err(JwtError::Claim("aud"));
    }
    if let Some(azp) = present_text("azp")? {
        if e.authorized_party.is_some_and(|p| p != azp) {
            return Err(JwtError::Claim("azp"));
        }
    } else if audiences.len() > 1 && e.authorized_party.is_some() {
        return Err(JwtError::Claim("azp"));
    }
    let exp = date("exp")?.ok_or(JwtError::Claim("exp"))?;
    if e.now > exp.saturating_add(e.skew) {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = date("nbf")?
        && e.now < nbf.saturating_sub(e.skew)
    {
        return Err(JwtError::NotYetValid);
    }
    if let Some(iat) = date("iat")? {
        if e.now < iat.saturating_sub(e.skew) {
            return Err(JwtError::NotYetValid);
        }
        if e.max_age
            .is_some_and(|m| e.now.saturating_sub(iat) > m.saturating_add(e.skew))
        {
            return Err(JwtError::Expired);
        }
    } else if e.max_age.is_some() {
        return Err(JwtError::Claim("iat"));
    }
    if let Some(nonce) = e.nonce
        && text("nonce") != Some(nonce)
    {
        return Err(JwtError::Claim("nonce"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::KeySize;
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256,
        RsaKeyPair,
    };
    use serde_json::json;

    fn enc(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).expect("json"))
    }

    fn jws(header: &Value, claims: &Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
        let input = format!("{}.{}", enc(header), enc(claims));
        let sig = sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    /// The modulus and exponent of a DER `RSAPublicKey` (SEQUENCE of two INTEGERs).
    fn rsa_components(der: &[u8]) -> (Vec<u8>, Vec<u8>) {
        fn read(d: &[u8]) -> (usize, usize) {
            // (header length, content length) of the element at the start of `d`.
            let l = d[1] as usize;
            if l < 0x80 {
                (2, l)
            } else {
                let n = l & 0x7f;
                let len = d[2..2 + n].iter().fold(0usize, |a, b| a << 8 | *b as usize);
                (2 + n, len)
            }
        }
        let (h, _) = read(der);
        let body = &der[h..];
        let (nh, nl) = read(body);
        let n = body[nh..nh + nl].to_vec();
        let rest = &body[nh + nl..];
        let (eh, el) = read(rest);
        (strip_zeros(n), rest[eh..eh + el].to_vec())
    }

    fn claims(now: i64) -> Value {
        json!({"iss": "https://idp", "aud": "gw", "exp": now + 60, "iat": now, "nonce": "n1", "sub": "s1"})
    }

    fn expect(now: i64) -> Expect<'static> {
        Expect {
            issuer: "https://idp",
            audience: "gw",
            authorized_party: Some("gw"),
            nonce: Some("n1"),
            typ: None,
            now,
            skew: 30,
            max_age: None,
        }
    }

    #[test]
    fn each_algorithm_verifies_with_its_key_and_no_other() {
        let rng = SystemRandom::new();
        let now = 1_900_000_000;
        let ec = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("ec");
        let point = ec.public_key().as_ref().to_vec();
        let rsa = RsaKeyPair::generate(KeySize::Rsa2048).expect("rsa");
        let (n, e) = rsa_components(rsa.public_key().as_ref());
        let ed = Ed25519KeyPair::generate().expect("ed");
        let jwks = json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "ec", "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])},
            {"kty": "RSA", "kid": "rsa", "alg": "RS256", "n": URL_SAFE_NO_PAD.encode(&n), "e": URL_SAFE_NO_PAD.encode(&e)},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": URL_SAFE_NO_PAD.encode(ed.public_key().as_ref())},
            {"kty": "RSA", "use": "enc", "kid": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}
        ]});
        let set = KeySet::new(parse_jwks(jwks.to_string().as_bytes()).expect("jwks"), now);
        let all = [Alg::RS256, Alg::ES256, Alg::EdDSA];
        let tokens = [
            jws(&json!({"alg": "ES256", "kid": "ec"}), &claims(now), |m| {
                ec.sign(&rng, m).expect("sign").as_ref().to_vec()
            }),
            jws(&json!({"alg": "RS256", "kid": "rsa"}), &claims(now), |m| {
                let mut sig = vec![0; rsa.public_modulus_len()];
                rsa.sign(&RSA_PKCS1_SHA256, &rng, m, &mut sig)
                    .expect("sign");
                sig
            }),
            jws(&json!({"alg": "EdDSA", "kid": "ed"}), &claims(now), |m| {
                ed.sign(m).as_ref().to_vec()
            }),
        ];
        for t in &tokens {
            let d = decode(t, &all).expect("decode");
            let key = set.key_for(&d).expect("key");
            d.verify(t, key).expect("verifies");
            check_claims(&d, &expect(now)).expect("claims");
            // Altered claims do not verify.
            let mut parts: Vec<&str> = t.split('.').collect();
            let forged =
                enc(&json!({"iss": "https://idp", "aud": "gw", "exp": now + 60, "sub": "admin"}));
            parts[1] = &forged;
            let forged = parts.join(".");
            let d = decode(&forged, &all).expect("decode");
            assert_eq!(d.verify(&forged, key), Err(JwtError::Signature));
        }
        // The ES256 token with the RSA key: refused before any verification.
        let d = decode(&tokens[0], &all).expect("decode");
        let rsa_key = set
            .keys
            .iter()
            .find(|k| k.kid.as_deref() == Some("rsa"))
            .expect("rsa");
        assert_eq!(d.verify(&tokens[0], rsa_key), Err(JwtError::UnknownKey));
        // Off the allow-list, and `none`, and HMAC: refused at decoding.
        assert!(matches!(
            decode(&tokens[1], &[Alg::ES256]),
            Err(JwtError::Algorithm(_))
        ));
        let none = format!("{}.{}.", enc(&json!({"alg": "none"})), enc(&claims(now)));
        assert!(matches!(decode(&none, &all), Err(JwtError::Algorithm(_))));
        let hs = format!(
            "{}.{}.c2ln",
            enc(&json!({"alg": "HS256", "kid": "hmac"})),
            enc(&claims(now))
        );
        assert!(matches!(decode(&hs, &all), Err(JwtError::Algorithm(_))));
        // Only signing keys of known types were kept.
        assert_eq!(set.keys.len(), 3);
        // A key declared for another algorithm does not verify this one's tokens.
        let mut declared = set.keys[0].clone();
        declared.alg = Some("RS256".into());
        let d = decode(&tokens[0], &all).expect("decode");
        assert_eq!(d.verify(&tokens[0], &declared), Err(JwtError::UnknownKey));
        // A token without a kid takes the one key that fits, and a kid that is not a string
        // is refused.
        let no_kid = jws(&json!({"alg": "EdDSA"}), &claims(now), |m| {
            ed.sign(m).as_ref().to_vec()
        });
        let d = decode(&no_kid, &all).expect("decode");
        d.verify(&no_kid, set.key_for(&d).expect("the one Ed25519 key"))
            .expect("verifies");
        let odd = format!(
            "{}.{}.c2ln",
            enc(&json!({"alg": "ES256", "kid": 7})),
            enc(&claims(now))
        );
        assert_eq!(decode(&odd, &all).err(), Some(JwtError::Malformed));
        // A modulus short of 2048 bits behind a leading zero byte is no RSA key here.
        let mut short = vec![0u8];
        short.extend(vec![0xffu8; 255]);
        let weak =
            json!({"keys": [{"kty": "RSA", "n": URL_SAFE_NO_PAD.encode(&short), "e": "AQAB"}]});
        assert!(
            parse_jwks(weak.to_string().as_bytes())
                .expect("jwks")
                .is_empty()
        );
        // An unknown kid: fetch again, but not within the refetch interval.
        let other = jws(&json!({"alg": "ES256", "kid": "new"}), &claims(now), |m| {
            ec.sign(&rng, m).expect("sign").as_ref().to_vec()
        });
        let d = decode(&other, &all).expect("decode");
        assert!(set.key_for(&d).is_none());
        assert!(!set.needs_refetch(&d, now + 5));
        assert!(set.needs_refetch(&d, now + REFETCH_AFTER_SECS));
    }

    #[test]
    fn claims_are_checked_with_a_bounded_skew() {
        let now = 1_900_000_000;
        let d = |c: Value, h: Value| Decoded {
            alg: Alg::ES256,
            kid: None,
            typ: h.get("typ").and_then(Value::as_str).map(str::to_string),
            claims: c.as_object().cloned().expect("object"),
            signing_input_len: 0,
            signature: vec![],
        };
        let ok = |c: Value| check_claims(&d(c, json!({})), &expect(now));
        assert_eq!(ok(claims(now)), Ok(()));
        let with = |k: &str, v: Value| {
            let mut c = claims(now);
            c[k] = v;
            c
        };
        assert_eq!(
            ok(with("iss", json!("https://other"))),
            Err(JwtError::Claim("iss"))
        );
        assert_eq!(ok(with("aud", json!("other"))), Err(JwtError::Claim("aud")));
        assert_eq!(
            ok(with("aud", json!(["other", "gw"]))),
            Err(JwtError::Claim("azp"))
        );
        assert_eq!(ok(with("azp", json!("other"))), Err(JwtError::Claim("azp")));
        assert_eq!(
            ok(with("nonce", json!("n2"))),
            Err(JwtError::Claim("nonce"))
        );
        assert_eq!(ok(with("exp", json!(now - 31))), Err(JwtError::Expired));
        assert_eq!(ok(with("exp", json!(now - 29))), Ok(()), "within the skew");
        assert_eq!(ok(with("nbf", json!(now + 31))), Err(JwtError::NotYetValid));
        assert_eq!(ok(with("iat", json!(now + 31))), Err(JwtError::NotYetValid));
        let mut no_exp = claims(now);
        no_exp.as_object_mut().expect("object").remove("exp");
        assert_eq!(ok(no_exp), Err(JwtError::Claim("exp")));
        let typed = Expect {
            typ: Some("oauth-id-jag+jwt"),
            max_age: Some(300),
            ..expect(now)
        };
        let jag = json!({"typ": "application/oauth-id-jag+jwt"});
        assert_eq!(check_claims(&d(claims(now), jag.clone()), &typed), Ok(()));
        assert_eq!(
            check_claims(&d(claims(now), json!({"typ": "JWT"})), &typed),
            Err(JwtError::Claim("typ"))
        );
        assert_eq!(
            check_claims(&d(with("iat", json!(now - 400)), jag), &typed),
            Err(JwtError::Expired)
        );
        // Dates with fractions are read; a wrong type is refused, never read as absent; an
        // `iat` at the far end of the range does not overflow the age check.
        assert_eq!(ok(with("exp", json!((now + 60) as f64 + 0.5))), Ok(()));
        assert_eq!(
            ok(with("nbf", json!("1900000000"))),
            Err(JwtError::Claim("nbf"))
        );
        assert_eq!(
            ok(with("nbf", json!((now + 31) as f64 + 0.5))),
            Err(JwtError::NotYetValid)
        );
        assert_eq!(ok(with("azp", json!(7))), Err(JwtError::Claim("azp")));
        assert_eq!(
            ok(with("aud", json!(["gw", 1]))),
            Err(JwtError::Claim("aud"))
        );
        assert_eq!(
            ok(with("aud", json!(["gw", "other"]))),
            Err(JwtError::Claim("azp"))
        );
        let mut both = with("aud", json!(["gw", "other"]));
        both["azp"] = json!("gw");
        assert_eq!(ok(both), Ok(()), "several audiences with the right azp");
        let aged = Expect {
            max_age: Some(300),
            ..expect(now)
        };
        assert_eq!(
            check_claims(&d(with("iat", json!(i64::MIN)), json!({})), &aged),
            Err(JwtError::Expired)
        );
        // Not a JWS at all.
        assert_eq!(
            decode("a.b", &[Alg::ES256]).err(),
            Some(JwtError::Malformed)
        );
        assert_eq!(
            decode("a.b.c.d", &[Alg::ES256]).err(),
            Some(JwtError::Malformed)
        );
        let crit = format!(
            "{}.{}.",
            enc(&json!({"alg": "ES256", "crit": ["exp"]})),
            enc(&claims(now))
        );
        assert_eq!(
            decode(&crit, &[Alg::ES256]).err(),
            Some(JwtError::Malformed)
        );
    }
}
