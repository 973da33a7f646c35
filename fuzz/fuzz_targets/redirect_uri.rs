//! Redirect URIs offered for registration and presented at /authorize.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mcp_oauth_gateway::authorization::redirect::{check_registered_redirect_uri, redirect_matches};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (registered, presented) = s.split_once('\u{1}').unwrap_or((s, s));
    for public in [true, false] {
        if let Ok(canonical) = check_registered_redirect_uri(registered, public) {
            // Canonical form is stable, visible, and matches itself.
            assert_eq!(check_registered_redirect_uri(&canonical, public).as_deref(), Ok(canonical.as_str()));
            assert!(!canonical.chars().any(|c| c.is_control() || c.is_whitespace()));
            assert!(redirect_matches(&canonical, &canonical));
            if redirect_matches(&canonical, presented) {
                assert!(!presented.chars().any(|c| c.is_control() || c.is_whitespace()));
            }
        }
    }
});
