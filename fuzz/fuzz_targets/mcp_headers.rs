//! `Mcp-Method` / `Mcp-Name` / `MCP-Protocol-Version` against the body: never a panic, and
//! whatever passes names exactly what the body does.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mcp_oauth_gateway::mcp::message;

fuzz_target!(|data: &[u8]| {
    // Layout: three header values separated by 0xff, then the body.
    let mut parts = data.splitn(4, |b| *b == 0xff);
    let (Some(m), Some(n), Some(v), Some(body)) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    for (name, value) in [("mcp-method", m), ("mcp-name", n), ("mcp-protocol-version", v)] {
        if value.is_empty() {
            continue;
        }
        if let Ok(value) = http::HeaderValue::from_bytes(value) {
            headers.insert(name, value);
        }
    }
    let parsed = message::read(body).ok();
    if message::check_headers(&headers, parsed.as_ref()).is_ok()
        && let (Some(h), Some(msg)) = (
            headers.get("mcp-method").and_then(|v| v.to_str().ok()),
            parsed.as_ref().and_then(|b| b.single()),
        )
    {
        assert_eq!(Some(h.trim_matches([' ', '\t'])), msg.method.as_deref());
    }
});
