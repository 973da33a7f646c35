//! Redirect URI rules: what may be registered, and when a presented URI matches a registered
//! one (exactly, except loopback redirects, RFC 8252 §7.3 and §8.3).

use url::{Host, Url};

const FORBIDDEN_SCHEMES: &[&str] = &[
    "javascript",
    "data",
    "file",
    "vbscript",
    "about",
    "blob",
    "filesystem",
];

/// Checks a URI offered for registration and returns its canonical form, which is what is
/// stored. `public` clients may use private-use schemes (native apps, RFC 8252 §7.1);
/// confidential ones need https or loopback http.
pub fn check_registered_redirect_uri(uri: &str, public: bool) -> Result<String, String> {
    if uri.len() > 2000 {
        return Err("a redirect URI is longer than 2000 characters".into());
    }
    // The URL parser would silently drop tabs and newlines; the raw string would then be
    // stored and printed. Nothing invisible is accepted, and the message does not repeat it.
    if crate::text::has_invisible(uri) {
        return Err("a redirect URI contains white space, control or invisible characters".into());
    }
    let url = Url::parse(uri).map_err(|e| format!("`{uri}` is not an absolute URI ({e})"))?;
    if url.fragment().is_some() || uri.contains('#') {
        return Err(format!("`{uri}` has a fragment"));
    }
    // Checked on the canonical form too: the parser maps look-alikes such as the fullwidth
    // asterisk in a host name to the ASCII character.
    if uri.contains('*') || url.as_str().contains('*') {
        return Err(format!("`{uri}`: wildcards are not allowed"));
    }
    match url.scheme() {
        "https" if url.host().is_none() => {
            return Err(format!("`{uri}` has no host"));
        }
        "https" => {}
        "http" if !is_loopback(&url) => {
            return Err(format!(
                "`{uri}`: plain http is allowed only for loopback redirects (127.0.0.1, [::1], localhost)"
            ));
        }
        "http" => {}
        s if FORBIDDEN_SCHEMES.contains(&s) => {
            return Err(format!("`{uri}`: the `{s}` scheme is not allowed"));
        }
        _ if !public => {
            return Err(format!(
                "`{uri}`: private-use schemes are for public (native) clients only"
            ));
        }
        _ => {}
    }
    if crate::text::has_invisible(url.as_str()) {
        return Err("a redirect URI contains invisible characters".into());
    }
    // Percent-encoding can make the canonical form longer than what was sent.
    if url.as_str().len() > 2000 {
        return Err("a redirect URI is longer than 2000 characters once encoded".into());
    }
    Ok(url.as_str().to_string())
}

pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Does `presented` match `registered`? Exact string comparison, except for http loopback
/// redirects, where the port may differ (native apps pick one at run time) and `localhost`,
/// `127.0.0.1` and `[::1]` are treated as one host.
pub fn redirect_matches(registered: &str, presented: &str) -> bool {
    if registered == presented {
        return true;
    }
    if crate::text::has_invisible(presented) {
        return false;
    }
    let (Ok(r), Ok(p)) = (Url::parse(registered), Url::parse(presented)) else {
        return false;
    };
    // Registered URIs are stored in canonical form; the same URL spelled otherwise (scheme or
    // host case, a default port) is the same place.
    if r.as_str() == p.as_str() {
        return true;
    }
    r.scheme() == "http"
        && p.scheme() == "http"
        && is_loopback(&r)
        && is_loopback(&p)
        && r.path() == p.path()
        && r.query() == p.query()
        && p.fragment().is_none()
        && p.username().is_empty()
        && p.password().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_port_and_host_may_vary() {
        assert!(redirect_matches(
            "http://127.0.0.1/cb",
            "http://127.0.0.1:53124/cb"
        ));
        assert!(redirect_matches(
            "http://localhost:3000/cb",
            "http://127.0.0.1:4000/cb"
        ));
        assert!(!redirect_matches(
            "http://127.0.0.1/cb",
            "http://127.0.0.1:5/other"
        ));
        assert!(!redirect_matches(
            "https://app.example/cb",
            "https://app.example/cb/"
        ));
        assert!(!redirect_matches(
            "https://app.example/cb",
            "https://evil.example/cb"
        ));
        assert!(!redirect_matches(
            "http://localhost/cb",
            "http://localhost.evil.example/cb"
        ));
    }

    #[test]
    fn registration_rules() {
        assert!(check_registered_redirect_uri("https://app.example/cb", false).is_ok());
        assert!(check_registered_redirect_uri("http://app.example/cb", true).is_err());
        assert!(
            check_registered_redirect_uri("cursor://anysphere.cursor-mcp/oauth/callback", true)
                .is_ok()
        );
        assert!(check_registered_redirect_uri("cursor://x/cb", false).is_err());
        assert!(check_registered_redirect_uri("javascript:alert(1)", true).is_err());
        assert!(check_registered_redirect_uri("https://app.example/cb#x", true).is_err());
        assert!(check_registered_redirect_uri("/relative", true).is_err());
        // Found by the fuzz target: a fullwidth asterisk becomes `*` once parsed.
        assert!(check_registered_redirect_uri("https:Att.ph-\u{FF0A}2usht.l", true).is_err());
    }
}
