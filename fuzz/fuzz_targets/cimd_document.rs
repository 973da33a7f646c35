//! Client ID Metadata Documents as a client's site serves them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mcp_oauth_gateway::authorization::cimd::parse_document;

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(client) = parse_document(&doc, "https://app.example/client.json") {
        assert!(!client.redirect_uris.is_empty());
        if let Some(name) = &client.name {
            assert!(!name.chars().any(char::is_control));
        }
    }
});
