//! Parsing of request headers that strangers write: `Authorization` (Bearer and Basic) and
//! `Cookie`. Pure functions, so they can be fuzzed on their own.

use axum::http::{HeaderMap, header};
use base64::Engine;

use crate::authorization::OAuthError;

/// The bearer token of a request, from the one `Authorization` header only.
pub fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, &'static str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err("more than one Authorization header");
    }
    let v = v
        .to_str()
        .map_err(|_| "the Authorization header is not valid")?;
    match v.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            let token = token.trim();
            // RFC 6750 §2.1 b64token: one word of visible characters.
            if token.bytes().any(|b| !b.is_ascii_graphic()) {
                return Err("the bearer token is not one word of visible characters");
            }
            Ok(Some(token))
        }
        _ => Err("the Authorization header must use the Bearer scheme"),
    }
}

/// The value of the cookie `name`. A name sent twice is ambiguous — another page of the same
/// host (cookies ignore ports) or a more specific path can add a second one, and which comes
/// first is the browser's choice — so it counts as absent.
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut found = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'));
    let first = found.next()?;
    if found.next().is_some() {
        return None;
    }
    Some(first.to_string())
}

/// HTTP Basic client credentials, form-url-decoded as RFC 6749 §2.3.1 requires.
pub fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    let bad = || {
        let mut e = OAuthError::invalid_client("the Authorization header is not valid HTTP Basic");
        e.basic_challenge = true;
        e
    };
    if values.next().is_some() {
        return Err(OAuthError::invalid_request(
            "more than one Authorization header",
        ));
    }
    let v = v.to_str().map_err(|_| bad())?;
    let Some((scheme, rest)) = v.split_once(' ') else {
        return Err(bad());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(bad());
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(bad)?;
    let unescape = |s: &str| {
        form_urlencoded::parse(format!("v={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Ok(Some((unescape(id), unescape(secret))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(name: header::HeaderName, values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(name.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn cookies_are_read_only_when_unambiguous() {
        let h = with(header::COOKIE, &["a=1; mog_session=s1; b=2"]);
        assert_eq!(cookie_value(&h, "mog_session").as_deref(), Some("s1"));
        assert_eq!(cookie_value(&h, "mog"), None);
        let tossed = with(header::COOKIE, &["mog_bind=attacker; mog_bind=mine"]);
        assert_eq!(cookie_value(&tossed, "mog_bind"), None);
        let split = with(header::COOKIE, &["mog_bind=a", "mog_bind=b"]);
        assert_eq!(cookie_value(&split, "mog_bind"), None);
    }

    #[test]
    fn bearer_and_basic() {
        let h = with(header::AUTHORIZATION, &["Bearer abc.def"]);
        assert_eq!(bearer_token(&h), Ok(Some("abc.def")));
        assert!(bearer_token(&with(header::AUTHORIZATION, &["Bearer a b"])).is_err());
        assert!(bearer_token(&with(header::AUTHORIZATION, &["Basic abc"])).is_err());
        assert!(bearer_token(&with(header::AUTHORIZATION, &["Bearer a", "Bearer b"])).is_err());
        let b = with(
            header::AUTHORIZATION,
            &["Basic Y2xpZW50JTNBMTpzJTNBZWNyZXQ="],
        );
        assert_eq!(
            basic_credentials(&b).unwrap(),
            Some(("client:1".to_string(), "s:ecret".to_string()))
        );
        assert!(basic_credentials(&with(header::AUTHORIZATION, &["Basic !!"])).is_err());
    }
}
