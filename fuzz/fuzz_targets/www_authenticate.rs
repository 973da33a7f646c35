//! WWW-Authenticate: reading any value never panics, and what the gateway writes is a valid
//! header that reads back to what was meant (sanitised).
#![no_main]
use libfuzzer_sys::fuzz_target;
use mcp_oauth_gateway::web::challenge;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = challenge::parse(&text);
    let values: Vec<&str> = text.split('\u{1}').take(4).collect();
    let names = ["resource_metadata", "scope", "error", "error_description"];
    let params: Vec<(&str, &str)> = names.iter().copied().zip(values.iter().copied()).collect();
    let written = challenge::bearer(&params);
    assert!(http::HeaderValue::from_str(&written).is_ok(), "{written:?}");
    let read = challenge::parse(&written).expect("what is written reads back");
    assert_eq!(read.len(), 1);
    for (k, v) in &params {
        let expected: String = v
            .chars()
            .map(|c| if c == ' ' || c == '\t' || ('!'..='~').contains(&c) { c } else { '?' })
            .collect();
        assert_eq!(read[0].param(k), Some(expected.as_str()));
    }
});
