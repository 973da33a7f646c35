//! OAuth parameters from form bodies and query strings.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mcp_oauth_gateway::authorization::params::Params;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Params::parse(data) {
        for name in ["client_id", "redirect_uri", "resource", "scope", "state", "code"] {
            if let Ok(Some(v)) = p.get(name) {
                // What was accepted is valid UTF-8 with no replacement characters.
                assert!(!v.contains('\u{FFFD}'));
            }
            let _ = p.all(name);
        }
        let _ = p.first_repeated(&["resource", "scope"]);
    }
});
