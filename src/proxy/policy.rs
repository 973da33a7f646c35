//! Per-upstream rules for `tools/call`, and per-user / per-client rate and concurrency
//! limits on MCP requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::authorization::token::Principal;
use crate::clock::Timestamp;
use crate::config::{ProxyConfig, ToolRule};
use crate::mcp::message::Body;

#[derive(Debug, PartialEq, Eq)]
pub enum ToolDecision {
    Allow,
    Deny(String),
    /// The token lacks scopes these tools need.
    NeedScopes(Vec<String>),
}

fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

fn decide(rules: &[ToolRule], name: &str, p: &Principal) -> ToolDecision {
    let Some(rule) = rules
        .iter()
        .find(|r| r.tools.iter().any(|t| matches(t, name)))
    else {
        return ToolDecision::Allow;
    };
    if rule.deny {
        return ToolDecision::Deny(name.to_string());
    }
    let restricted = !rule.users.is_empty() || !rule.groups.is_empty();
    let named = p.username.as_ref().is_some_and(|u| rule.users.contains(u));
    let member = p.groups.iter().any(|g| rule.groups.contains(g));
    if restricted && !named && !member {
        return ToolDecision::Deny(name.to_string());
    }
    if rule.scopes.iter().any(|s| !p.scopes.contains(s)) {
        return ToolDecision::NeedScopes(rule.scopes.clone());
    }
    ToolDecision::Allow
}

/// Applies the rules to every `tools/call` of a body (one message or a batch), as the
/// strict reading in [`crate::mcp::message`] found them: what is judged is what runs.
pub fn check_tool_calls(rules: &[ToolRule], body: Option<&Body>, p: &Principal) -> ToolDecision {
    let Some(body) = body.filter(|_| !rules.is_empty()) else {
        return ToolDecision::Allow;
    };
    for m in &body.messages {
        if m.method.as_deref() == Some("tools/call") {
            // The strict reading refuses a `tools/call` without a string name.
            let d = decide(rules, m.name.as_deref().unwrap_or(""), p);
            if d != ToolDecision::Allow {
                return d;
            }
        }
    }
    ToolDecision::Allow
}

/// Fixed one-minute windows and in-flight counts, per instance.
pub struct Limits {
    per_user: u32,
    per_client: u32,
    max_concurrent: u32,
    windows: Mutex<HashMap<String, (Timestamp, u32)>>,
    inflight: Mutex<HashMap<String, u32>>,
}

/// A request in flight; it stops counting when dropped (with the response body).
pub struct InFlight {
    limits: Arc<Limits>,
    key: Option<String>,
    /// Gauges raised for this request, lowered with it.
    gauges: Vec<prometheus_client::metrics::gauge::Gauge>,
}

impl InFlight {
    /// Raises `gauge` now and lowers it when the request (with its response body) ends.
    pub fn track(&mut self, gauge: prometheus_client::metrics::gauge::Gauge) {
        gauge.inc();
        self.gauges.push(gauge);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        for g in &self.gauges {
            g.dec();
        }
        if let Some(key) = self.key.take()
            && let Ok(mut m) = self.limits.inflight.lock()
            && let Some(n) = m.get_mut(&key)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&key);
            }
        }
    }
}

impl Limits {
    pub fn new(cfg: &ProxyConfig) -> Arc<Self> {
        Arc::new(Self {
            per_user: cfg.per_user_per_minute,
            per_client: cfg.per_client_per_minute,
            max_concurrent: cfg.max_concurrent_per_user,
            windows: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
        })
    }

    fn count(&self, key: String, limit: u32, window: Timestamp) -> bool {
        if limit == 0 {
            return true;
        }
        let Ok(mut m) = self.windows.lock() else {
            return true;
        };
        if m.len() > 100_000 {
            m.retain(|_, (w, _)| *w == window);
        }
        let entry = m.entry(key).or_insert((window, 0));
        if entry.0 != window {
            *entry = (window, 0);
        }
        entry.1 += 1;
        entry.1 <= limit
    }

    /// Admits a request of `owner` through `client_id`, or says how many seconds to wait.
    pub fn admit(
        self: &Arc<Self>,
        owner: &str,
        client_id: &str,
        now: Timestamp,
    ) -> Result<InFlight, u64> {
        let window = now - now.rem_euclid(60);
        let retry = (window + 60 - now).max(1) as u64;
        // Lock order: in-flight, then windows. A request refused for concurrency does not
        // spend the minute's budget.
        let mut inflight = self.inflight.lock().ok();
        if self.max_concurrent > 0
            && let Some(m) = &inflight
            && m.get(owner).copied().unwrap_or(0) >= self.max_concurrent
        {
            return Err(1);
        }
        if !self.count(format!("u:{owner}"), self.per_user, window)
            || !self.count(format!("c:{client_id}"), self.per_client, window)
        {
            return Err(retry);
        }
        let key = match (&mut inflight, self.max_concurrent) {
            (Some(m), n) if n > 0 => {
                *m.entry(owner.to_string()).or_insert(0) += 1;
                Some(owner.to_string())
            }
            _ => None,
        };
        Ok(InFlight {
            limits: self.clone(),
            key,
            gauges: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(user: &str, scopes: &[&str]) -> Principal {
        Principal {
            grant_id: Some("g1".into()),
            login_source: Some("local".into()),
            user_id: Some("u1".into()),
            username: Some(user.into()),
            email: None,
            groups: if user == "dana" {
                vec!["auditors".into()]
            } else {
                Vec::new()
            },
            client_id: "c".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            resource: "r".into(),
            expires_at: 0,
        }
    }

    fn rules() -> Vec<ToolRule> {
        toml::from_str::<toml::Table>(
            r#"
            [[r]]
            tools = ["drop_*"]
            deny = true
            [[r]]
            tools = ["write"]
            scopes = ["admin"]
            [[r]]
            tools = ["audit"]
            users = ["carol"]
            groups = ["auditors"]
            "#,
        )
        .unwrap()["r"]
            .clone()
            .try_into()
            .unwrap()
    }

    fn call(name: &str) -> Vec<u8> {
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name}})
            .to_string()
            .into_bytes()
    }

    fn check_tool_calls(rules: &[ToolRule], body: &[u8], p: &Principal) -> ToolDecision {
        let body = crate::mcp::message::read(body).unwrap();
        super::check_tool_calls(rules, Some(&body), p)
    }

    #[test]
    fn first_matching_rule_decides() {
        let r = rules();
        let alice = principal("alice", &["mcp"]);
        assert_eq!(
            check_tool_calls(&r, &call("drop_table"), &alice),
            ToolDecision::Deny("drop_table".into())
        );
        assert_eq!(
            check_tool_calls(&r, &call("write"), &alice),
            ToolDecision::NeedScopes(vec!["admin".into()])
        );
        assert_eq!(
            check_tool_calls(&r, &call("write"), &principal("alice", &["mcp", "admin"])),
            ToolDecision::Allow
        );
        assert_eq!(
            check_tool_calls(&r, &call("audit"), &alice),
            ToolDecision::Deny("audit".into())
        );
        assert_eq!(
            check_tool_calls(&r, &call("audit"), &principal("carol", &[])),
            ToolDecision::Allow
        );
        assert_eq!(
            check_tool_calls(&r, &call("audit"), &principal("dana", &[])),
            ToolDecision::Allow,
            "by group"
        );
        assert_eq!(
            check_tool_calls(&r, &call("read"), &alice),
            ToolDecision::Allow
        );
        let batch = format!(
            "[{},{}]",
            String::from_utf8(call("read")).unwrap(),
            String::from_utf8(call("drop_x")).unwrap()
        );
        assert_eq!(
            check_tool_calls(&r, batch.as_bytes(), &alice),
            ToolDecision::Deny("drop_x".into())
        );
        assert_eq!(
            super::check_tool_calls(&r, None, &alice),
            ToolDecision::Allow,
            "no message, nothing to call"
        );
    }

    #[test]
    fn limits_count_per_minute_and_in_flight() {
        let cfg = ProxyConfig {
            per_user_per_minute: 3,
            max_concurrent_per_user: 2,
            ..ProxyConfig::default()
        };
        let l = Limits::new(&cfg);
        let a = l.admit("u", "c", 120).unwrap();
        let b = l.admit("u", "c", 121).unwrap();
        assert_eq!(l.admit("u", "c", 122).err(), Some(1), "two in flight");
        drop(a);
        let _c = l.admit("u", "c", 123).unwrap();
        drop(b);
        assert_eq!(
            l.admit("u", "c", 124).err(),
            Some(56),
            "per-minute budget spent"
        );
        assert!(l.admit("u", "c", 180).is_ok(), "a new minute");
        assert!(
            l.admit("other", "c2", 181).is_ok(),
            "others are not affected"
        );
    }
}
