//! What the proxy last saw of each HTTP upstream: when it last answered, how fast, and the
//! last failure. Read by `/readyz` and the console; written on every forwarded request, so
//! it is one short lock per request and holds only the latest figures.

use std::sync::Mutex;

use serde::Serialize;

use crate::clock::Timestamp;

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct UpstreamState {
    /// When an answer last came (any status: the upstream is reachable).
    pub last_answer_at: Option<Timestamp>,
    pub last_status: Option<u16>,
    /// Milliseconds from sending to the answer's headers, last time.
    pub last_latency_ms: Option<u64>,
    /// When the last request got no answer, and why (the gateway's words).
    pub last_error_at: Option<Timestamp>,
    pub last_error: Option<String>,
}

impl UpstreamState {
    /// `up` when the last attempt got an answer, `down` when it got none, `unknown` before
    /// any request.
    pub fn state(&self) -> &'static str {
        match (self.last_answer_at, self.last_error_at) {
            (None, None) => "unknown",
            (Some(_), None) => "up",
            (None, Some(_)) => "down",
            (Some(a), Some(e)) => {
                if a >= e {
                    "up"
                } else {
                    "down"
                }
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct Health(Mutex<UpstreamState>);

impl Health {
    pub fn answered(&self, at: Timestamp, status: u16, latency_ms: u64) {
        if let Ok(mut s) = self.0.lock() {
            s.last_answer_at = Some(at);
            s.last_status = Some(status);
            s.last_latency_ms = Some(latency_ms);
        }
    }

    pub fn failed(&self, at: Timestamp, why: &str) {
        if let Ok(mut s) = self.0.lock() {
            s.last_error_at = Some(at);
            s.last_error = Some(why.to_string());
        }
    }

    pub fn read(&self) -> UpstreamState {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_later_of_answer_and_failure_decides() {
        let h = Health::default();
        assert_eq!(h.read().state(), "unknown");
        h.failed(10, "upstream `x` could not be reached");
        assert_eq!(h.read().state(), "down");
        h.answered(11, 200, 3);
        let s = h.read();
        assert_eq!(s.state(), "up");
        assert_eq!(
            s.last_error.as_deref(),
            Some("upstream `x` could not be reached")
        );
        h.failed(12, "timeout");
        assert_eq!(h.read().state(), "down");
    }
}
