//! An authorization server in miniature for the external-mode case of `scripts/bench proxy`:
//! it makes an ES256 key, prints one access token (RFC 9068 claims, valid an hour) for the
//! audience given, and serves its key set at `/jwks`.
//! Usage: bench_jwt_issuer PORT AUDIENCE

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use axum::Router;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(18085);
    let audience = args.next().ok_or("usage: bench_jwt_issuer PORT AUDIENCE")?;
    let issuer = format!("http://127.0.0.1:{port}");
    let rng = SystemRandom::new();
    let doc =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).map_err(|_| "key")?;
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref())
        .map_err(|_| "key")?;
    let point = key.public_key().as_ref().to_vec();
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "bench", "alg": "ES256",
        "use": "sig", "x": b64(&point[1..33]), "y": b64(&point[33..65])}]});
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims = json!({"iss": issuer, "sub": "bench", "aud": audience, "client_id": "bench",
        "scope": "mcp", "iat": now, "exp": now + 3600, "jti": "bench"});
    let header = json!({"alg": "ES256", "kid": "bench", "typ": "at+jwt"});
    let input = format!(
        "{}.{}",
        b64(&serde_json::to_vec(&header)?),
        b64(&serde_json::to_vec(&claims)?)
    );
    let sig = key.sign(&rng, input.as_bytes()).map_err(|_| "sign")?;
    println!("{input}.{}", b64(sig.as_ref()));
    let app = Router::new().route(
        "/jwks",
        get(move || {
            let jwks = jwks.clone();
            async move { axum::Json(jwks) }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
