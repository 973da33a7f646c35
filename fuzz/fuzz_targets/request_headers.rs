//! Authorization (Bearer, Basic) and Cookie headers as strangers send them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mcp_oauth_gateway::web::headers;

fuzz_target!(|data: &[u8]| {
    let mut h = http::HeaderMap::new();
    for (i, part) in data.split(|b| *b == b'\n').take(4).enumerate() {
        if let Ok(v) = http::HeaderValue::from_bytes(part) {
            let name = if i % 2 == 0 { http::header::AUTHORIZATION } else { http::header::COOKIE };
            h.append(name, v);
        }
    }
    if let Ok(Some(token)) = headers::bearer_token(&h) {
        assert!(!token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()));
    }
    let _ = headers::basic_credentials(&h);
    for name in ["mog_session", "mog_bind", "__Host-mog_session"] {
        if let Some(v) = headers::cookie_value(&h, name) {
            assert!(!v.contains(';'));
        }
    }
});
