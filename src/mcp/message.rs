//! One strict reading of a JSON-RPC body, shared by everything that judges a message (tool
//! rules, session checks, the `Mcp-Method`/`Mcp-Name` headers, error ids).
//!
//! The gateway forwards the client's original bytes, so this reading must leave an upstream
//! no other way to read them. It refuses every ambiguity a lenient decoder could resolve
//! differently: a key repeated in any object; in the message and in `params`, a key that is
//! not a member name but equals one under case folding (Go's `encoding/json` matches keys
//! that way, with Unicode simple folding: `ſ` is `s`, `K` is `k`); a `method` or `id` of the
//! wrong type; non-object `params`; a message that is both a request and a response; and a
//! `tools/call` without a string `params.name`. What is read is what the upstream executes.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// What one JSON-RPC message says, as far as the gateway needs to know.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Message {
    /// The id of a request or response (a string, a number or null).
    pub id: Option<Value>,
    pub method: Option<String>,
    /// `params.name`: the tool of `tools/call`, the prompt of `prompts/get`.
    pub name: Option<String>,
    /// `params.uri`: the resource of `resources/read` and the subscriptions.
    pub uri: Option<String>,
    /// `params._meta` protocol version (MCP 2026-07-28 puts it on every request).
    pub meta_protocol_version: Option<String>,
    /// A response (`result` or `error`) rather than a request or notification.
    pub is_response: bool,
}

/// A whole POST body: one message or a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Body {
    pub messages: Vec<Message>,
    pub batch: bool,
}

impl Body {
    /// The id to answer an error with: the single message's, else null.
    pub fn reply_id(&self) -> Value {
        match (&self.messages[..], self.batch) {
            ([one], false) => one.id.clone().unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }

    /// The single message, when the body is not a batch.
    pub fn single(&self) -> Option<&Message> {
        match (&self.messages[..], self.batch) {
            ([one], false) => Some(one),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// Not JSON at all (JSON-RPC -32700).
    #[error("the body is not valid JSON ({0})")]
    Syntax(String),
    /// JSON, but not one unambiguous JSON-RPC message or batch (-32600).
    #[error("{0}")]
    Invalid(String),
}

impl MessageError {
    pub fn jsonrpc_code(&self) -> i64 {
        match self {
            Self::Syntax(_) => -32700,
            Self::Invalid(_) => -32600,
        }
    }
}

/// The key under which MCP 2026-07-28 carries the protocol version in `_meta`.
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";

const ENVELOPE_MEMBERS: &[&str] = &["jsonrpc", "id", "method", "params", "result", "error"];
/// Members of `params` across MCP's methods; a case variant of one of these is refused.
const PARAMS_MEMBERS: &[&str] = &[
    "name",
    "arguments",
    "_meta",
    "uri",
    "cursor",
    "protocolVersion",
    "capabilities",
    "clientInfo",
    "ref",
    "argument",
    "context",
    "level",
    "requestId",
    "reason",
    "progressToken",
    "progress",
    "total",
    "message",
    "task",
];
const META_MEMBERS: &[&str] = &[META_PROTOCOL_VERSION, "progressToken"];

/// Unicode simple case folding, reduced to what can make a key equal an ASCII member name:
/// ASCII letters, and the two non-ASCII letters that fold to ASCII (U+017F `ſ` to `s`,
/// U+212A Kelvin sign to `k`).
fn fold(c: char) -> char {
    match c {
        '\u{017F}' => 's',
        '\u{212A}' => 'k',
        c => c.to_ascii_lowercase(),
    }
}

fn fold_eq(a: &str, b: &str) -> bool {
    let (mut x, mut y) = (a.chars(), b.chars());
    loop {
        match (x.next(), y.next()) {
            (None, None) => return true,
            (Some(p), Some(q)) if fold(p) == fold(q) => {}
            _ => return false,
        }
    }
}

/// Keys of one object, to refuse repeats; a set once the object is large.
#[derive(Default)]
struct SeenKeys<'de> {
    few: Vec<Cow<'de, str>>,
    many: Option<HashSet<Cow<'de, str>>>,
}

impl<'de> SeenKeys<'de> {
    /// False if the key was seen already.
    fn insert(&mut self, key: Cow<'de, str>) -> bool {
        if let Some(set) = &mut self.many {
            return set.insert(key);
        }
        if self.few.contains(&key) {
            return false;
        }
        self.few.push(key);
        if self.few.len() > 16 {
            self.many = Some(self.few.drain(..).collect());
        }
        true
    }
}

/// A key, borrowed from the body when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Checks a key of an object whose members the gateway reads: no repeat, and no case
/// variant of a member name. (The key is a `Cow` so that a borrowed one is kept in `seen`
/// without a copy.)
#[allow(clippy::ptr_arg)]
fn check_member_key<'de, E: de::Error>(
    key: &Cow<'de, str>,
    seen: &mut SeenKeys<'de>,
    members: &[&str],
    place: &str,
) -> Result<(), E> {
    if !seen.insert(key.clone()) {
        return Err(E::custom(format!("a key is repeated in {place}")));
    }
    if !members.contains(&key.as_ref()) && members.iter().any(|m| fold_eq(m, key)) {
        return Err(E::custom(format!(
            "{place} has a key that differs from a member name only in letter case"
        )));
    }
    Ok(())
}

/// Any JSON value, checked for repeated keys at every depth and otherwise skipped.
struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Strict)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = SeenKeys::default();
        while let Some(Key(k)) = map.next_key()? {
            if !seen.insert(k) {
                return Err(de::Error::custom("a key is repeated in an object"));
            }
            map.next_value_seed(Strict)?;
        }
        Ok(())
    }
}

/// A JSON-RPC id: a string, a number or null.
struct Id;

impl<'de> DeserializeSeed<'de> for Id {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Id {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string, a number or null")
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

/// A string member; anything else is refused with the member's name.
struct Text(&'static str);

impl<'de> DeserializeSeed<'de> for Text {
    type Value = String;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Text {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "`{}` to be a string", self.0)
    }
    fn visit_str<E>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_string<E>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
}

/// What `params` says; the rest of it is only checked.
#[derive(Default)]
struct Params {
    name: Option<Result<String, ()>>,
    uri: Option<Result<String, ()>>,
    meta_protocol_version: Option<String>,
}

/// A member the gateway reads but whose type it judges later (a non-string `name` is only
/// an error for methods that name something).
struct MaybeText;

impl<'de> DeserializeSeed<'de> for MaybeText {
    type Value = Result<String, ()>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for MaybeText {
    type Value = Result<String, ()>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Ok(v.to_string()))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err(()))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Err(()))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Err(()))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err(()))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Err(()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Strict.visit_seq(seq).map(|()| Err(()))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Strict.visit_map(map).map(|()| Err(()))
    }
}

struct ParamsSeed;

impl<'de> DeserializeSeed<'de> for ParamsSeed {
    type Value = Params;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Params, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ParamsSeed {
    type Value = Params;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("`params` to be an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Params, A::Error> {
        let mut seen = SeenKeys::default();
        let mut p = Params::default();
        while let Some(Key(k)) = map.next_key()? {
            check_member_key(&k, &mut seen, PARAMS_MEMBERS, "`params`")?;
            match k.as_ref() {
                "name" => p.name = Some(map.next_value_seed(MaybeText)?),
                "uri" => p.uri = Some(map.next_value_seed(MaybeText)?),
                "_meta" => p.meta_protocol_version = map.next_value_seed(MetaSeed)?,
                _ => map.next_value_seed(Strict)?,
            }
        }
        Ok(p)
    }
}

struct MetaSeed;

impl<'de> DeserializeSeed<'de> for MetaSeed {
    type Value = Option<String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<String>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for MetaSeed {
    type Value = Option<String>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("`_meta` to be an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<String>, A::Error> {
        let mut seen = SeenKeys::default();
        let mut version = None;
        while let Some(Key(k)) = map.next_key()? {
            check_member_key(&k, &mut seen, META_MEMBERS, "`_meta`")?;
            if k == META_PROTOCOL_VERSION {
                version = Some(map.next_value_seed(Text(META_PROTOCOL_VERSION))?);
            } else {
                map.next_value_seed(Strict)?;
            }
        }
        Ok(version)
    }
}

struct MessageSeed;

impl<'de> DeserializeSeed<'de> for MessageSeed {
    type Value = Message;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Message, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for MessageSeed {
    type Value = Message;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON-RPC message (an object)")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Message, A::Error> {
        let mut seen = SeenKeys::default();
        let mut m = Message::default();
        let mut version = None;
        let mut params = None;
        while let Some(Key(k)) = map.next_key()? {
            check_member_key(&k, &mut seen, ENVELOPE_MEMBERS, "the message")?;
            match k.as_ref() {
                "jsonrpc" => version = Some(map.next_value_seed(Text("jsonrpc"))?),
                "id" => m.id = Some(map.next_value_seed(Id)?),
                "method" => m.method = Some(map.next_value_seed(Text("method"))?),
                "params" => params = Some(map.next_value_seed(ParamsSeed)?),
                "result" | "error" => {
                    m.is_response = true;
                    map.next_value_seed(Strict)?;
                }
                _ => map.next_value_seed(Strict)?,
            }
        }
        if version.as_deref() != Some("2.0") {
            return Err(de::Error::custom("`jsonrpc` must be \"2.0\""));
        }
        match (&m.method, m.is_response) {
            (Some(_), true) => {
                return Err(de::Error::custom(
                    "a message cannot be both a request and a response",
                ));
            }
            (None, false) => {
                return Err(de::Error::custom(
                    "a message needs a `method`, a `result` or an `error`",
                ));
            }
            _ => {}
        }
        if let Some(p) = params {
            let named = matches!(m.method.as_deref(), Some("tools/call" | "prompts/get"));
            m.name = match p.name {
                Some(Ok(n)) => Some(n),
                Some(Err(())) if named => {
                    return Err(de::Error::custom("`params.name` must be a string"));
                }
                _ => None,
            };
            m.uri = p.uri.and_then(Result::ok);
            m.meta_protocol_version = p.meta_protocol_version;
        }
        if m.method.as_deref() == Some("tools/call") && m.name.is_none() {
            return Err(de::Error::custom(
                "a `tools/call` needs a string `params.name`",
            ));
        }
        Ok(m)
    }
}

struct BodySeed;

impl<'de> DeserializeSeed<'de> for BodySeed {
    type Value = Body;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Body, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for BodySeed {
    type Value = Body;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON-RPC message or a batch of them")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Body, A::Error> {
        Ok(Body {
            messages: vec![MessageSeed.visit_map(map)?],
            batch: false,
        })
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Body, A::Error> {
        let mut messages = Vec::new();
        while let Some(m) = seq.next_element_seed(MessageSeed)? {
            messages.push(m);
        }
        if messages.is_empty() {
            return Err(de::Error::custom("an empty batch"));
        }
        Ok(Body {
            messages,
            batch: true,
        })
    }
}

/// Reads a POST body strictly, or says precisely why not.
pub fn read(body: &[u8]) -> Result<Body, MessageError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = BodySeed.deserialize(&mut de).and_then(|b| {
        de.end()?;
        Ok(b)
    });
    parsed.map_err(|e| {
        let text = e.to_string();
        match e.classify() {
            serde_json::error::Category::Data => MessageError::Invalid(text),
            _ => MessageError::Syntax(text),
        }
    })
}

/// A body the gateway judges must be declared as what it was judged as: JSON in UTF-8, not
/// compressed. Upstream servers decode with the declared charset (the TypeScript SDK and
/// Python's aiohttp honour `charset=utf-7`, in which a method or tool name can be spelled in
/// plain ASCII that the gateway would read as something else), and decompress what says
/// `Content-Encoding`. So only `application/json`, with at most `charset=utf-8`, passes.
pub fn check_body_encoding(headers: &http::HeaderMap) -> Result<(), String> {
    let mut types = headers.get_all(http::header::CONTENT_TYPE).iter();
    let (Some(ct), None) = (types.next(), types.next()) else {
        return Err("the body needs one Content-Type: application/json".into());
    };
    let ct = ct
        .to_str()
        .map_err(|_| "the Content-Type header is not visible ASCII".to_string())?;
    let mut parts = ct.split(';');
    let essence = parts.next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err("the body must be application/json".into());
    }
    for p in parts {
        let (name, value) = p.split_once('=').unwrap_or((p, ""));
        let value = value.trim().trim_matches('"');
        if !(name.trim().eq_ignore_ascii_case("charset") && value.eq_ignore_ascii_case("utf-8")) {
            return Err("the only Content-Type parameter accepted is charset=utf-8".into());
        }
    }
    for enc in headers.get_all(http::header::CONTENT_ENCODING) {
        if !enc.to_str().is_ok_and(|e| {
            e.split(',')
                .all(|e| e.trim().eq_ignore_ascii_case("identity"))
        }) {
            return Err("a compressed or encoded body is not accepted".into());
        }
    }
    Ok(())
}

/// Protocol revisions of the stateless era, which carry the version in every request's
/// `_meta` and repeat the method and name in headers.
pub const STATELESS_VERSIONS: &[&str] = &["2026-07-28"];

/// HTTP header-body disagreement (MCP 2026-07-28 `HeaderMismatch`).
pub const HEADER_MISMATCH: i64 = -32020;

/// Why the MCP headers of a request cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HeaderMismatch(pub String);

/// The one value of a header that may appear once, if it is there; surrounding spaces and
/// tabs are not part of it (RFC 9110 §5.5).
fn single_header<'h>(
    headers: &'h http::HeaderMap,
    name: &str,
) -> Result<Option<&'h str>, HeaderMismatch> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(HeaderMismatch(format!("more than one {name} header")));
    }
    first
        .to_str()
        .map(|v| Some(v.trim_matches([' ', '\t'])))
        .map_err(|_| HeaderMismatch(format!("the {name} header is not visible ASCII")))
}

/// A header value as MCP encodes it: plain, or `=?base64?…?=` for what is not plain ASCII.
fn decode_header_value(v: &str) -> Option<std::borrow::Cow<'_, str>> {
    match v
        .strip_prefix("=?base64?")
        .and_then(|rest| rest.strip_suffix("?="))
    {
        None => Some(v.into()),
        Some(b64) => {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
            String::from_utf8(bytes).ok().map(Into::into)
        }
    }
}

/// What `Mcp-Name` carries for a method: the tool or prompt name, or the resource URI.
fn name_member(m: &Message) -> Option<&str> {
    match m.method.as_deref() {
        Some("tools/call" | "prompts/get") => m.name.as_deref(),
        Some("resources/read" | "resources/subscribe" | "resources/unsubscribe") => {
            m.uri.as_deref()
        }
        _ => None,
    }
}

/// Whether a request speaks a stateless-era revision, by its header or by its body.
pub fn is_stateless(headers: &http::HeaderMap, body: Option<&Body>) -> bool {
    let by_header = headers
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| STATELESS_VERSIONS.contains(&v.trim()));
    by_header || body.is_some_and(|b| b.messages.iter().any(|m| m.meta_protocol_version.is_some()))
}

/// MCP 2026-07-28 repeats a request's method, and the tool, prompt or resource it names, in
/// the `Mcp-Method` and `Mcp-Name` headers for load balancers and gateways to route on. Any
/// disagreement with the body would let what is routed differ from what runs, so it is
/// refused before anything else reads the request. On stateless-era requests the headers
/// are required (and the protocol version header must equal the body's); on older ones they
/// are optional, but checked when present.
pub fn check_headers(headers: &http::HeaderMap, body: Option<&Body>) -> Result<(), HeaderMismatch> {
    // Which revision judges the request must not depend on which of two values is read.
    single_header(headers, "mcp-protocol-version")?;
    let method = single_header(headers, "mcp-method")?;
    let name = single_header(headers, "mcp-name")?;
    let stateless = is_stateless(headers, body);
    if !stateless && method.is_none() && name.is_none() {
        return Ok(());
    }
    let Some(m) = body.and_then(Body::single) else {
        return match (stateless, body) {
            (true, Some(_)) => Err(HeaderMismatch(
                "a request of this protocol revision is one JSON-RPC message, not a batch".into(),
            )),
            (_, None) if method.is_none() && name.is_none() => Ok(()),
            _ => Err(HeaderMismatch(
                "Mcp-Method and Mcp-Name describe a single JSON-RPC message".into(),
            )),
        };
    };
    let is_request = m.id.is_some() && m.method.is_some();
    match method {
        Some(h) if m.method.as_deref() != Some(h) => {
            return Err(HeaderMismatch(
                "the Mcp-Method header does not match the body's method".into(),
            ));
        }
        None if stateless && is_request => {
            return Err(HeaderMismatch("the Mcp-Method header is missing".into()));
        }
        _ => {}
    }
    match (name.map(decode_header_value), name_member(m)) {
        (Some(None), _) => {
            return Err(HeaderMismatch(
                "the Mcp-Name header is not valid base64-encoded UTF-8".into(),
            ));
        }
        (Some(Some(h)), Some(b)) if h == b => {}
        (Some(_), _) => {
            return Err(HeaderMismatch(
                "the Mcp-Name header does not match the body".into(),
            ));
        }
        (None, Some(_)) if stateless && is_request => {
            return Err(HeaderMismatch("the Mcp-Name header is missing".into()));
        }
        (None, _) => {}
    }
    if stateless
        && let (Some(h), Some(b)) = (
            single_header(headers, "mcp-protocol-version")?,
            m.meta_protocol_version.as_deref(),
        )
        && h != b
    {
        return Err(HeaderMismatch(
            "the MCP-Protocol-Version header does not match the request's _meta".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(body: &str) -> String {
        match read(body.as_bytes()) {
            Err(MessageError::Invalid(m)) => m,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn reads_what_the_upstream_executes() {
        let b = read(br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"Name":"x","name":"y"}}}"#).unwrap();
        let m = b.single().unwrap();
        assert_eq!(m.method.as_deref(), Some("tools/call"));
        assert_eq!(m.name.as_deref(), Some("echo"));
        assert_eq!(b.reply_id(), Value::from(7));
        let b = read(br#"[{"jsonrpc":"2.0","method":"notifications/initialized"},{"jsonrpc":"2.0","id":"a","result":{}}]"#).unwrap();
        assert!(b.batch);
        assert!(b.messages[1].is_response);
        assert_eq!(b.reply_id(), Value::Null);
        let b = read(
            br#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#,
        )
        .unwrap();
        let m = b.single().unwrap();
        assert_eq!(m.uri.as_deref(), Some("file:///a"));
        assert_eq!(m.meta_protocol_version.as_deref(), Some("2026-07-28"));
    }

    #[test]
    fn refuses_every_ambiguity() {
        for body in [
            // Case and Unicode-folding variants of member names.
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"Name":"drop"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","NAME":"drop"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","Method":"tools/call"}"#,
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"param\u{017F}\":{\"name\":\"x\"}}",
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"argument\u{017F}\":{}}}",
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"params\":{\"_meta\":{\"progressTo\u{212A}en\":1}}}",
            // Repeated keys, at any depth.
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","name":"drop"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"e","arguments":{"a":1,"a":2}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"_meta":{"progressToken":1,"progressToken":2}}}"#,
            // Wrong types and shapes.
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":7}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["drop"]}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":null}"#,
            r#"{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":7}"#,
            r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
            r#"{"id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","result":{}}"#,
            r#"{"jsonrpc":"2.0","id":1}"#,
            r#"[]"#,
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},7]"#,
            r#""tools/call""#,
        ] {
            invalid(body);
        }
    }

    #[test]
    fn what_is_not_json_is_a_parse_error() {
        for body in [
            "{not json",
            "",
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"} trailing",
            "\u{feff}{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}",
            r#"{"jsonrpc":"2.0","id":1,"method":"\ud800"}"#,
        ] {
            assert!(
                matches!(read(body.as_bytes()), Err(MessageError::Syntax(_))),
                "{body}"
            );
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(read(deep.as_bytes()).is_err());
    }

    #[test]
    fn large_objects_are_checked_without_quadratic_work() {
        let keys: Vec<String> = (0..20_000).map(|i| format!("\"k{i}\":{i}")).collect();
        let body = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{{\"name\":\"e\",\"arguments\":{{{}}}}}}}",
            keys.join(",")
        );
        assert!(read(body.as_bytes()).is_ok());
        let dup = body.replacen("\"k1\":1", "\"k19999\":1", 1);
        assert!(read(dup.as_bytes()).is_err());
    }

    #[test]
    fn only_utf8_json_is_judged() {
        let ok = |ct: &str| check_body_encoding(&headers(&[("content-type", ct)])).is_ok();
        assert!(ok("application/json"));
        assert!(ok("Application/JSON; charset=UTF-8"));
        assert!(ok("application/json;charset=\"utf-8\""));
        for bad in [
            "application/json; charset=utf-7",
            "application/json; charset=utf-16",
            "application/json; charset=utf-8; charset=utf-7",
            "application/json; boundary=x",
            "text/plain",
            "application/json-seq",
        ] {
            assert!(!ok(bad), "{bad}");
        }
        assert!(check_body_encoding(&headers(&[])).is_err());
        assert!(
            check_body_encoding(&headers(&[
                ("content-type", "application/json"),
                ("content-type", "application/json; charset=utf-7")
            ]))
            .is_err()
        );
        assert!(
            check_body_encoding(&headers(&[
                ("content-type", "application/json"),
                ("content-encoding", "gzip")
            ]))
            .is_err()
        );
    }

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn mcp_headers_must_agree_with_the_body() {
        let call = read(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#).unwrap();
        let ok = |h: &[(&str, &str)]| check_headers(&headers(h), Some(&call));
        let v = ("mcp-protocol-version", "2026-07-28");
        assert!(ok(&[v, ("mcp-method", "tools/call"), ("mcp-name", "echo")]).is_ok());
        assert!(ok(&[v, ("mcp-method", "tools/call"), ("mcp-name", "  echo\t")]).is_ok());
        assert!(
            ok(&[
                v,
                ("mcp-method", "tools/call"),
                ("mcp-name", "=?base64?ZWNobw==?=")
            ])
            .is_ok()
        );
        for bad in [
            vec![v, ("mcp-method", "tools/call"), ("mcp-name", "drop")],
            vec![v, ("mcp-method", "tools/call")],
            vec![v, ("mcp-name", "echo")],
            vec![v, ("mcp-method", "Tools/Call"), ("mcp-name", "echo")],
            vec![v, ("mcp-method", "tools/list"), ("mcp-name", "echo")],
            vec![
                v,
                ("mcp-method", "tools/call"),
                ("mcp-name", "echo"),
                ("mcp-name", "echo"),
            ],
            vec![
                v,
                ("mcp-method", "tools/call"),
                ("mcp-name", "=?base64?!!?="),
            ],
            vec![
                ("mcp-protocol-version", "2025-11-25"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "echo"),
            ],
        ] {
            assert!(ok(&bad).is_err(), "{bad:?}");
        }
        // An older revision needs no headers, but those it sends must agree.
        let old =
            read(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#)
                .unwrap();
        let h = |p: &[(&str, &str)]| check_headers(&headers(p), Some(&old));
        assert!(h(&[("mcp-protocol-version", "2025-11-25")]).is_ok());
        assert!(h(&[("mcp-method", "tools/call"), ("mcp-name", "drop")]).is_err());
        assert!(
            h(&[
                ("mcp-protocol-version", "2025-11-25"),
                ("mcp-protocol-version", "2026-07-28")
            ])
            .is_err()
        );
        let batch = read(br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#).unwrap();
        assert!(check_headers(&headers(&[("mcp-method", "ping")]), Some(&batch)).is_err());
        assert!(check_headers(&headers(&[v, ("mcp-method", "ping")]), Some(&batch)).is_err());
        assert!(check_headers(&headers(&[]), Some(&batch)).is_ok());
    }
}
