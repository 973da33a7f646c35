//! Tokens and key sets others sign: reading any token or JWKS never panics, `none` and
//! algorithms off the allow-list never decode, and nothing made up verifies.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mcp_oauth_gateway::jwt::{self, Alg, Expect, KeySet};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (token, jwks) = text.split_once('\u{1}').unwrap_or((&text, ""));
    let keys = jwt::parse_jwks(jwks.as_bytes()).unwrap_or_default();
    let set = KeySet::new(keys, 0);
    for allowed in [&[Alg::ES256][..], &[Alg::RS256, Alg::ES256, Alg::EdDSA][..]] {
        if let Ok(d) = jwt::decode(token, allowed) {
            assert!(allowed.contains(&d.alg));
            if let Some(key) = set.key_for(&d) {
                // A fuzzer does not forge signatures: anything it makes is refused.
                assert!(d.verify(token, key).is_err());
            }
            let _ = set.needs_refetch(&d, 1_000);
            // Whatever the claims say, checking them never panics (no date overflows).
            for now in [0, i64::MIN, i64::MAX] {
                let _ = jwt::check_claims(
                    &d,
                    &Expect {
                        issuer: "https://idp",
                        audience: "gw",
                        authorized_party: Some("gw"),
                        nonce: Some("n"),
                        typ: Some("oauth-id-jag+jwt"),
                        now,
                        skew: 60,
                        max_age: Some(300),
                    },
                );
            }
        }
    }
});
