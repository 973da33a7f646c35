//! OAuth request parameters (`application/x-www-form-urlencoded`, in a query or a body),
//! parsed strictly: RFC 6749 §3.1 says parameters must not be repeated, and values must be
//! UTF-8 and of reasonable length.

use std::collections::BTreeMap;

use super::error::OAuthError;

/// Longest value accepted for any single parameter.
pub const MAX_VALUE_LEN: usize = 4096;

#[derive(Debug, Default, Clone)]
pub struct Params {
    values: BTreeMap<String, Vec<String>>,
}

impl Params {
    pub fn parse(raw: &[u8]) -> Result<Self, OAuthError> {
        if std::str::from_utf8(raw).is_err() {
            return Err(OAuthError::invalid_request(
                "the parameters are not valid UTF-8",
            ));
        }
        let mut values: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in form_urlencoded::parse(raw) {
            // form_urlencoded replaces invalid percent-encoded UTF-8 with U+FFFD.
            if k.contains('\u{FFFD}') || v.contains('\u{FFFD}') {
                return Err(OAuthError::invalid_request(
                    "a parameter is not valid UTF-8 once decoded",
                ));
            }
            if k.len() > 128 {
                return Err(OAuthError::invalid_request("a parameter name is too long"));
            }
            if v.len() > MAX_VALUE_LEN {
                return Err(OAuthError::invalid_request(format!(
                    "a parameter is longer than {MAX_VALUE_LEN} bytes"
                )));
            }
            values
                .entry(k.into_owned())
                .or_default()
                .push(v.into_owned());
        }
        Ok(Self { values })
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut values: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in pairs {
            values.entry(k.to_string()).or_default().push(v.to_string());
        }
        Self { values }
    }

    /// The single value of `name`; an empty value counts as absent (RFC 6749 §3.1).
    pub fn get(&self, name: &str) -> Result<Option<&str>, OAuthError> {
        match self.values.get(name).map(Vec::as_slice) {
            None => Ok(None),
            Some([v]) => Ok(Some(v.as_str()).filter(|v| !v.is_empty())),
            Some(_) => Err(OAuthError::invalid_request(format!(
                "the `{name}` parameter is repeated"
            ))),
        }
    }

    pub fn require(&self, name: &str) -> Result<&str, OAuthError> {
        self.get(name)?.ok_or_else(|| {
            OAuthError::invalid_request(format!("the `{name}` parameter is missing"))
        })
    }

    /// Every value of a parameter that may legitimately repeat (`resource`, RFC 8707).
    pub fn all(&self, name: &str) -> &[String] {
        self.values.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Refuses a repeated parameter (RFC 6749 §3.1), except the ones allowed to repeat. The
    /// description names a parameter only if it is one OAuth defines: the name is the
    /// client's text, and descriptions travel back in redirects.
    pub fn check_not_repeated(&self, allowed: &[&str]) -> Result<(), OAuthError> {
        const KNOWN: &[&str] = &[
            "response_type",
            "client_id",
            "redirect_uri",
            "scope",
            "state",
            "code_challenge",
            "code_challenge_method",
            "resource",
            "prompt",
            "response_mode",
            "grant_type",
            "code",
            "code_verifier",
            "refresh_token",
            "client_secret",
            "token",
            "token_type_hint",
            "assertion",
        ];
        match self.first_repeated(allowed) {
            None => Ok(()),
            Some(name) if KNOWN.contains(&name) => Err(OAuthError::invalid_request(format!(
                "the `{name}` parameter is repeated"
            ))),
            Some(_) => Err(OAuthError::invalid_request("a parameter is repeated")),
        }
    }

    /// The first parameter that appears more than once, ignoring the ones allowed to repeat.
    pub fn first_repeated(&self, allowed: &[&str]) -> Option<&str> {
        self.values
            .iter()
            .find(|(k, v)| v.len() > 1 && !allowed.contains(&k.as_str()))
            .map(|(k, _)| k.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_parameter_is_an_error() {
        let p = Params::parse(b"a=1&a=2&b=3").expect("parse");
        assert!(p.get("a").is_err());
        assert_eq!(p.get("b").expect("b"), Some("3"));
        assert_eq!(p.first_repeated(&[]), Some("a"));
        let e = Params::parse(b"x=1&PLEASE-CALL-555=1&PLEASE-CALL-555=2")
            .expect("parsed")
            .check_not_repeated(&[])
            .expect_err("repeated");
        assert_eq!(e.description, "a parameter is repeated");
    }

    #[test]
    fn bad_utf8_is_an_error() {
        assert!(Params::parse(b"a=%ff").is_err());
        assert!(Params::parse(&[b'a', b'=', 0xff]).is_err());
    }
}
