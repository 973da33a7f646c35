//! What is known of the HTTP request being served, for every record made while serving it:
//! its id (the `X-Request-Id` it came with when that is a plain token, else one made here)
//! and the client's address. Held in a task-local around the request's handler, so the
//! audit log reads it without every call in between passing it on.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone)]
pub struct RequestContext {
    pub id: Arc<str>,
    pub ip: Option<IpAddr>,
}

tokio::task_local! {
    static CURRENT: RequestContext;
}

impl RequestContext {
    /// The context of the request this task is serving, if any.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Runs `f` with this context as the current one.
    pub async fn scope<F: std::future::Future>(self, f: F) -> F::Output {
        CURRENT.scope(self, f).await
    }
}

/// A request id the client sent, when it is one to keep: 1 to 64 characters of letters,
/// digits, `-`, `_`, `.` and `:` (anything else — a log-injection attempt, a huge value —
/// is replaced by one of ours).
pub fn accept_id(sent: &[u8]) -> Option<&str> {
    let ok = !sent.is_empty()
        && sent.len() <= 64
        && sent
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if ok {
        std::str::from_utf8(sent).ok()
    } else {
        None
    }
}

/// A new request id: this process's random prefix and a counter (unique without a random
/// draw per request).
pub fn new_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let prefix = PREFIX.get_or_init(|| crate::crypto::new_id().chars().take(10).collect());
    format!("{prefix}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_ids_are_kept() {
        assert_eq!(accept_id(b"abc-123_x.y:z"), Some("abc-123_x.y:z"));
        assert_eq!(accept_id(b""), None);
        assert_eq!(accept_id(b"a b"), None);
        assert_eq!(accept_id(b"a\nforged=1"), None);
        assert_eq!(accept_id("é".as_bytes()), None);
        assert_eq!(accept_id(&[b'a'; 65]), None);
        let (a, b) = (new_id(), new_id());
        assert_ne!(a, b);
        assert!(accept_id(a.as_bytes()).is_some());
    }
}
