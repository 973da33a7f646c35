//! The strict reading of JSON-RPC bodies, against a lenient reader: whatever the gateway
//! accepts, a Go-style decoder (keys matched case-insensitively with Unicode simple folding,
//! the last match winning) must read as the same method and tool.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mcp_oauth_gateway::mcp::message;
use serde_json::Value;

fn fold(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\u{017F}' => 's',
            '\u{212A}' => 'k',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

fn pick<'a>(obj: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.iter().filter(|(k, _)| fold(k) == key).map(|(_, v)| v).last()
}

fn lenient(m: &Value) -> (Option<String>, Option<String>) {
    let Some(obj) = m.as_object() else {
        return (None, None);
    };
    let method = pick(obj, "method").and_then(Value::as_str).map(String::from);
    let name = pick(obj, "params")
        .and_then(Value::as_object)
        .and_then(|p| pick(p, "name"))
        .and_then(Value::as_str)
        .map(String::from);
    (method, name)
}

fuzz_target!(|data: &[u8]| {
    let Ok(body) = message::read(data) else {
        return;
    };
    let v: Value = serde_json::from_slice(data).expect("strictly read, so plain JSON");
    let members: Vec<&Value> = match &v {
        Value::Array(items) => items.iter().collect(),
        one => vec![one],
    };
    assert_eq!(members.len(), body.messages.len());
    for (m, judged) in members.iter().zip(&body.messages) {
        let (method, name) = lenient(m);
        assert_eq!(method, judged.method, "method read differently");
        if judged.method.as_deref() == Some("tools/call") {
            assert_eq!(name, judged.name, "tool read differently");
        }
    }
});
