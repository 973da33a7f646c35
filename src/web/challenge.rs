//! `WWW-Authenticate` (RFC 9110 §11.6.1): the gateway writes Bearer challenges (RFC 6750,
//! RFC 9728 `resource_metadata`), and reads them from upstreams that demand OAuth
//! themselves. Writing never produces a header value that fails to parse back; reading
//! refuses what is ambiguous (a parameter repeated within a challenge).

/// One challenge: its scheme and its parameters, names lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A quoted-string of `value`: `"` and `\` escaped, and anything a header cannot carry
/// (control characters, non-ASCII) replaced by `?`, so the header is always valid.
pub fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' ' | '\t' | '!'..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

/// A Bearer challenge with these parameters, each value quoted.
pub fn bearer(params: &[(&str, &str)]) -> String {
    let mut out = String::from("Bearer");
    for (i, (k, v)) in params.iter().enumerate() {
        out.push_str(if i == 0 { " " } else { ", " });
        out.push_str(k);
        out.push('=');
        out.push_str(&quoted(v));
    }
    out
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t') {
            self.i += 1;
        }
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn token(&mut self) -> Option<String> {
        let start = self.i;
        while self.i < self.s.len() && is_tchar(self.s[self.i]) {
            self.i += 1;
        }
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }
    fn quoted(&mut self) -> Result<String, String> {
        self.i += 1; // the opening quote
        let mut out = Vec::new();
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                b'"' => return Ok(String::from_utf8_lossy(&out).into_owned()),
                b'\\' => {
                    let escaped = self.peek().ok_or("an escape at the end of the header")?;
                    self.i += 1;
                    out.push(escaped);
                }
                c if c == b'\t' || c >= 0x20 && c != 0x7f => out.push(c),
                _ => return Err("a control character in a quoted string".into()),
            }
        }
        Err("an unterminated quoted string".into())
    }
    /// token68 after a scheme: letters, digits and `-._~+/`, then `=` padding.
    fn token68(&mut self) -> Option<String> {
        let start = self.i;
        while self.i < self.s.len()
            && (self.s[self.i].is_ascii_alphanumeric() || b"-._~+/".contains(&self.s[self.i]))
        {
            self.i += 1;
        }
        while self.peek() == Some(b'=') {
            self.i += 1;
        }
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }
}

/// Every challenge of one `WWW-Authenticate` value.
pub fn parse(value: &str) -> Result<Vec<Challenge>, String> {
    let mut c = Cursor {
        s: value.as_bytes(),
        i: 0,
    };
    let mut out: Vec<Challenge> = Vec::new();
    loop {
        c.skip_ws();
        while c.peek() == Some(b',') {
            c.i += 1;
            c.skip_ws();
        }
        if c.peek().is_none() {
            return Ok(out);
        }
        let scheme = c.token().ok_or("a challenge must start with a scheme")?;
        let mut challenge = Challenge {
            scheme,
            params: Vec::new(),
        };
        // Parameters (or one token68) follow after white space.
        let before = c.i;
        c.skip_ws();
        let spaced = c.i > before;
        if spaced && c.peek().is_some_and(|b| b != b',') {
            let at = c.i;
            let name = c.token();
            c.skip_ws();
            if name.is_some() && c.peek() == Some(b'=') && c.s.get(c.i + 1) != Some(&b'=') {
                c.i = at;
                loop {
                    c.skip_ws();
                    let at = c.i;
                    let Some(name) = c.token() else { break };
                    c.skip_ws();
                    if c.peek() != Some(b'=') {
                        // The next challenge's scheme.
                        c.i = at;
                        break;
                    }
                    c.i += 1;
                    c.skip_ws();
                    let value = match c.peek() {
                        Some(b'"') => c.quoted()?,
                        _ => c.token().ok_or("a parameter without a value")?,
                    };
                    let name = name.to_ascii_lowercase();
                    if challenge.params.iter().any(|(k, _)| *k == name) {
                        return Err(format!("the parameter `{name}` is repeated"));
                    }
                    challenge.params.push((name, value));
                    c.skip_ws();
                    match c.peek() {
                        Some(b',') => {
                            c.i += 1;
                        }
                        None => break,
                        Some(_) => return Err("parameters must be separated by commas".into()),
                    }
                }
            } else {
                c.i = at;
                let t = c.token68().ok_or("an unreadable challenge")?;
                challenge.params.push((String::new(), t));
            }
        }
        out.push(challenge);
        c.skip_ws();
        match c.peek() {
            None => return Ok(out),
            Some(b',') => {}
            Some(_) if out.last().is_some_and(|l| l.params.is_empty()) => {
                return Err("challenges must be separated by commas".into());
            }
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_reads_back() {
        let v = bearer(&[
            (
                "resource_metadata",
                "https://gw.example/.well-known/oauth-protected-resource/mcp",
            ),
            ("scope", "mcp files:read"),
            ("error", "invalid_token"),
            ("error_description", "say \"hi\" \\ bye\n\u{7}é"),
        ]);
        assert!(http::HeaderValue::from_str(&v).is_ok());
        let c = parse(&v).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "Bearer");
        assert_eq!(c[0].param("scope"), Some("mcp files:read"));
        assert_eq!(
            c[0].param("error_description"),
            Some("say \"hi\" \\ bye???")
        );
    }

    #[test]
    fn several_challenges_and_token68() {
        let c = parse(r#"Basic realm="a", Bearer realm="b", error=invalid_token, Negotiate abc=="#)
            .unwrap();
        let schemes: Vec<_> = c.iter().map(|c| c.scheme.as_str()).collect();
        assert_eq!(schemes, ["Basic", "Bearer", "Negotiate"]);
        assert_eq!(c[1].param("error"), Some("invalid_token"));
        assert_eq!(c[2].params, [(String::new(), "abc==".to_string())]);
        assert!(parse(r#"Bearer realm="a", realm="b""#).is_err());
        assert!(parse(r#"Bearer realm="a"#).is_err());
        assert_eq!(parse("Bearer").unwrap()[0].params, []);
    }
}
