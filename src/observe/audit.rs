//! The audit log of security events, as JSON lines to a file or standard output.
//!
//! Each line is one [`Event`]: `ts` (RFC 3339, UTC, milliseconds), `action`, the event's own
//! fields, `request_id` (the HTTP request it happened in, also on the log lines and in the
//! `X-Request-Id` response header), `ip` (the client's address, through trusted proxies) and
//! `flow` — the grant id, named when an authorization request arrives and kept by its code,
//! its tokens and every refresh, so one client's flow is one `flow` from `/authorize` to the
//! last refresh or revocation. No event carries a token, code, password or secret; reasons
//! are the gateway's own words or OAuth error codes, never what a client sent.
//!
//! Lines are handed to a writer thread through a bounded queue and written in order,
//! flushed whenever the queue empties and when the gateway stops. A request never waits for
//! the disk: when the destination stalls (a full disk, a blocked pipe) and the queue is
//! full, records are dropped and counted (`mcp_gateway_audit_dropped_total`, and an error
//! in the log) rather than stopping every worker thread of the gateway.

use std::io::Write;
use std::sync::mpsc::{Receiver, SyncSender};

use serde_json::{Value, json};

use super::request::RequestContext;

/// Where the records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Stdout,
    File(std::path::PathBuf),
}

/// How a sign-in attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInOutcome {
    Success,
    Refused,
    Throttled,
    Unavailable,
}

impl SignInOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Refused => "refused",
            Self::Throttled => "throttled",
            Self::Unavailable => "unavailable",
        }
    }
}

/// One security event. Strings are identifiers (client ids, usernames, upstream and source
/// names), OAuth error codes or the gateway's own reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An authorization request arrived; `error` when it was refused before sign-in.
    AuthorizationRequested {
        client: String,
        resource: Option<String>,
        error: Option<&'static str>,
    },
    SignIn {
        source: String,
        /// On success: the user it signed in.
        user: Option<String>,
        client: Option<String>,
        outcome: SignInOutcome,
        reason: Option<String>,
    },
    ConsentGiven {
        client: String,
        user: String,
        scopes: Vec<String>,
        resource: String,
        /// Approved earlier and remembered: no page was shown.
        remembered: bool,
    },
    ConsentDenied {
        client: String,
        user: Option<String>,
    },
    /// A person revoked their own grant to a client (the console); `flow` is the grant.
    ConsentRevoked { client: String, user: String },
    /// A person ended one of their browser sessions (the console).
    SessionEnded { user: String },
    TokenIssued {
        grant_type: &'static str,
        client: String,
        user: Option<String>,
        resource: String,
        scopes: Vec<String>,
    },
    /// The token endpoint refused: the OAuth error code.
    TokenRefused {
        grant_type: Option<String>,
        client: Option<String>,
        error: &'static str,
    },
    /// A rotated refresh token came back; its grant (the `flow`) was revoked.
    RefreshReuseDetected { client: String },
    /// A client revoked a token (RFC 7009): `refresh_token` ends the grant.
    TokenRevoked { client: String, kind: &'static str },
    /// A device client asked for a device authorization (RFC 8628); `device` names it (a
    /// prefix of its code's hash) until a person decides.
    DeviceAuthorizationRequested {
        client: String,
        resource: String,
        device: String,
    },
    /// A person approved or denied a waiting device (approved: the `flow` is its grant).
    DeviceDecided {
        client: String,
        user: String,
        device: String,
        approved: bool,
    },
    ClientRegistered {
        client: String,
        method: &'static str,
    },
    /// A client was refused for what it is (blocked, not allowed by the CIMD domain rules).
    ClientRefused { client: String, reason: String },
    /// The broker's events about people's upstream connections.
    Upstream {
        action: &'static str,
        upstream: String,
        user: Option<String>,
        reason: Option<String>,
    },
    /// An administrative change ([`crate::admin::AuditEvent`]) and who made it.
    Admin {
        actor: String,
        event: crate::admin::AuditEvent,
    },
}

/// What a client sent, kept for the record (a client id it named, a grant type): at most
/// 128 characters, so that a stranger cannot fill the log.
pub fn bounded(s: &str) -> String {
    s.chars().take(128).collect()
}

impl Event {
    /// The `action` field: stable, snake_case.
    pub fn action(&self) -> &'static str {
        match self {
            Self::AuthorizationRequested { .. } => "authorization_requested",
            Self::SignIn { .. } => "sign_in",
            Self::ConsentGiven { .. } => "consent_given",
            Self::ConsentDenied { .. } => "consent_denied",
            Self::ConsentRevoked { .. } => "consent_revoked",
            Self::SessionEnded { .. } => "session_ended",
            Self::TokenIssued { .. } => "token_issued",
            Self::TokenRefused { .. } => "token_refused",
            Self::RefreshReuseDetected { .. } => "refresh_reuse_detected",
            Self::TokenRevoked { .. } => "token_revoked",
            Self::ClientRegistered { .. } => "client_registered",
            Self::DeviceAuthorizationRequested { .. } => "device_authorization_requested",
            Self::DeviceDecided { approved: true, .. } => "device_approved",
            Self::DeviceDecided {
                approved: false, ..
            } => "device_denied",
            Self::ClientRefused { .. } => "client_refused",
            Self::Upstream { action, .. } => action,
            Self::Admin { event, .. } => event.action(),
        }
    }

    /// The event's own fields.
    fn fields(&self, m: &mut Line) {
        match self {
            Self::AuthorizationRequested {
                client,
                resource,
                error,
            } => {
                m.put("client", Some(client));
                m.put("resource", resource.as_deref());
                m.insert(
                    "outcome",
                    &json!(if error.is_some() {
                        "refused"
                    } else {
                        "accepted"
                    }),
                );
                m.put("error", *error);
            }
            Self::SignIn {
                source,
                user,
                client,
                outcome,
                reason,
            } => {
                m.put("source", Some(source));
                m.put("user_id", user.as_deref());
                m.put("client", client.as_deref());
                m.put("outcome", Some(outcome.as_str()));
                m.put("reason", reason.as_deref());
            }
            Self::ConsentGiven {
                client,
                user,
                scopes,
                resource,
                remembered,
            } => {
                m.put("client", Some(client));
                m.put("user_id", Some(user));
                m.strs("scopes", scopes);
                m.put("resource", Some(resource));
                m.insert("remembered", &json!(remembered));
            }
            Self::ConsentDenied { client, user } => {
                m.put("client", Some(client));
                m.put("user_id", user.as_deref());
            }
            Self::ConsentRevoked { client, user } => {
                m.put("client", Some(client));
                m.put("user_id", Some(user));
            }
            Self::SessionEnded { user } => m.put("user_id", Some(user)),
            Self::TokenIssued {
                grant_type,
                client,
                user,
                resource,
                scopes,
            } => {
                m.put("grant_type", Some(grant_type));
                m.put("client", Some(client));
                m.put("user_id", user.as_deref());
                m.put("resource", Some(resource));
                m.strs("scopes", scopes);
            }
            Self::TokenRefused {
                grant_type,
                client,
                error,
            } => {
                m.put("grant_type", grant_type.as_deref());
                m.put("client", client.as_deref());
                m.put("error", Some(error));
            }
            Self::RefreshReuseDetected { client } => m.put("client", Some(client)),
            Self::TokenRevoked { client, kind } => {
                m.put("client", Some(client));
                m.put("token_type", Some(kind));
            }
            Self::DeviceAuthorizationRequested {
                client,
                resource,
                device,
            } => {
                m.put("client", Some(client));
                m.put("resource", Some(resource));
                m.put("device", Some(device));
            }
            Self::DeviceDecided {
                client,
                user,
                device,
                ..
            } => {
                m.put("client", Some(client));
                m.put("user_id", Some(user));
                m.put("device", Some(device));
            }
            Self::ClientRegistered { client, method } => {
                m.put("client", Some(client));
                m.put("method", Some(method));
            }
            Self::ClientRefused { client, reason } => {
                m.put("client", Some(client));
                m.put("reason", Some(reason));
            }
            Self::Upstream {
                upstream,
                user,
                reason,
                ..
            } => {
                m.put("upstream", Some(upstream));
                m.put("user_id", user.as_deref());
                m.put("reason", reason.as_deref());
            }
            Self::Admin { actor, event } => {
                m.put("actor", Some(actor));
                for (k, v) in event.fields() {
                    m.insert(k, &v);
                }
            }
        }
    }

    /// The whole line: time, action, fields, and what the request it happened in says.
    /// Written straight into one string (no map of owned keys): a busy token endpoint
    /// writes one of these per token.
    pub fn to_line(
        &self,
        now_ms: i64,
        request: Option<&RequestContext>,
        flow: Option<&str>,
    ) -> String {
        let mut m = Line(String::with_capacity(256));
        m.0.push('{');
        m.put("ts", Some(&crate::clock::rfc3339_millis(now_ms)));
        m.put("action", Some(self.action()));
        self.fields(&mut m);
        if let Some(r) = request {
            m.put("request_id", Some(&r.id));
            if let Some(ip) = r.ip {
                m.put("ip", Some(&ip.to_string()));
            }
        }
        m.put("flow", flow);
        m.0.push('}');
        m.0
    }

    /// [`Self::to_line`] parsed, for tests.
    pub fn to_json(
        &self,
        now_ms: i64,
        request: Option<&RequestContext>,
        flow: Option<&str>,
    ) -> Value {
        serde_json::from_str(&self.to_line(now_ms, request, flow)).unwrap_or(Value::Null)
    }
}

/// A JSON object being written: fields in order, values escaped.
struct Line(String);

impl Line {
    fn key(&mut self, k: &str) {
        if !self.0.ends_with('{') {
            self.0.push(',');
        }
        escape_into(&mut self.0, k);
        self.0.push(':');
    }

    fn put(&mut self, k: &str, v: Option<&str>) {
        if let Some(v) = v {
            self.key(k);
            escape_into(&mut self.0, v);
        }
    }

    fn strs(&mut self, k: &str, v: &[String]) {
        self.key(k);
        self.0.push('[');
        for (i, s) in v.iter().enumerate() {
            if i > 0 {
                self.0.push(',');
            }
            escape_into(&mut self.0, s);
        }
        self.0.push(']');
    }

    fn insert(&mut self, k: &str, v: &Value) {
        self.key(k);
        self.0.push_str(&v.to_string());
    }
}

/// `s` as a JSON string (RFC 8259 escapes; control characters as `\u00XX`).
fn escape_into(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The writer of audit records; off when no destination is configured.
pub struct AuditLog {
    sink: Sink,
}

enum Sink {
    Off,
    /// The serving gateway: lines queue for the writer thread (an empty line asks it to
    /// flush and stop).
    Queue {
        tx: SyncSender<String>,
        writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    },
    /// A command that ends right after its change: written before it returns.
    Direct(std::sync::Mutex<Box<dyn Write + Send>>),
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("on", &self.is_on())
            .finish()
    }
}

/// Records waiting for the writer at most (a few MiB); past this they are dropped.
const QUEUE: usize = 16_384;

impl AuditLog {
    pub fn off() -> Self {
        Self { sink: Sink::Off }
    }

    /// Opens the destination (a file: appended to, created readable by its owner only)
    /// and starts the writer thread.
    pub fn open(to: &Destination) -> Result<Self, String> {
        let out = Self::output(to)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let writer = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_lines(rx, out))
            .map_err(|e| format!("cannot start the audit writer: {e}"))?;
        Ok(Self {
            sink: Sink::Queue {
                tx,
                writer: std::sync::Mutex::new(Some(writer)),
            },
        })
    }

    /// Opens the destination for a command: each line is written before `write` returns.
    pub fn open_direct(to: &Destination) -> Result<Self, String> {
        Ok(Self {
            sink: Sink::Direct(std::sync::Mutex::new(Self::output(to)?)),
        })
    }

    fn output(to: &Destination) -> Result<Box<dyn Write + Send>, String> {
        Ok(match to {
            Destination::Stdout => Box::new(std::io::stdout()),
            Destination::File(path) => {
                let mut o = std::fs::OpenOptions::new();
                o.create(true).append(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
                Box::new(
                    o.open(path).map_err(|e| {
                        format!("audit.path: cannot open `{}`: {e}", path.display())
                    })?,
                )
            }
        })
    }

    pub fn is_on(&self) -> bool {
        !matches!(self.sink, Sink::Off)
    }

    /// Writes one record (a JSON object on one line); `false` when it was dropped (the
    /// queue full, the writer gone).
    pub fn write(&self, line: String) -> bool {
        let mut s = line;
        s.push('\n');
        match &self.sink {
            Sink::Off => true,
            Sink::Queue { tx, .. } => match tx.try_send(s) {
                Ok(()) => true,
                Err(std::sync::mpsc::TrySendError::Full(_)) => {
                    warn_dropped("the audit log cannot keep up; records are being dropped");
                    false
                }
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                    warn_dropped("the audit writer has stopped; records are being dropped");
                    false
                }
            },
            Sink::Direct(out) => {
                let written = out.lock().map_err(|_| ()).and_then(|mut o| {
                    o.write_all(s.as_bytes())
                        .and_then(|()| o.flush())
                        .map_err(|_| ())
                });
                if written.is_err() {
                    tracing::error!("cannot write the audit log");
                }
                written.is_ok()
            }
        }
    }

    /// Writes what is queued and stops the writer (at shutdown), waiting at most 5 s for a
    /// destination that may be stuck; later records are dropped.
    pub fn close(&self) {
        if let Sink::Queue { tx, writer } = &self.sink {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            // Room for the stop mark, while the writer drains.
            while let Err(std::sync::mpsc::TrySendError::Full(_)) = tx.try_send(String::new()) {
                if std::time::Instant::now() >= deadline {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            if let Some(handle) = writer.lock().ok().and_then(|mut w| w.take()) {
                while !handle.is_finished() {
                    if std::time::Instant::now() >= deadline {
                        tracing::error!(
                            "the audit writer did not finish in 5 s; what it holds is lost"
                        );
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                let _ = handle.join();
            }
        }
    }
}

/// Logs that records are being dropped, at most once every 10 s (the count is in the
/// metrics): under a flood of drops the log must not become the next thing that blocks.
fn warn_dropped(why: &str) {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let last = LAST.load(std::sync::atomic::Ordering::Relaxed);
    if now >= last + 10
        && LAST
            .compare_exchange(
                last,
                now,
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            )
            .is_ok()
    {
        tracing::error!("{why}");
    }
}

fn write_lines(rx: Receiver<String>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::new(out);
    let mut stop = false;
    while !stop && let Ok(line) = rx.recv() {
        let mut batch = vec![line];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let mut failed = false;
        for l in batch {
            if l.is_empty() {
                stop = true;
                break;
            }
            failed |= out.write_all(l.as_bytes()).is_err();
        }
        failed |= out.flush().is_err();
        if failed {
            tracing::error!("cannot write the audit log");
        }
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_carries_time_action_fields_request_and_flow() {
        let r = RequestContext {
            id: "req-1".into(),
            ip: Some("192.0.2.7".parse().unwrap()),
        };
        let e = Event::TokenIssued {
            grant_type: "authorization_code",
            client: "c1".into(),
            user: Some("alice".into()),
            resource: "https://gw/mcp".into(),
            scopes: vec!["mcp".into()],
        };
        let v = e.to_json(1_764_733_200_123, Some(&r), Some("g1"));
        assert_eq!(v["ts"], "2025-12-03T03:40:00.123Z");
        assert_eq!(v["action"], "token_issued");
        assert_eq!(v["grant_type"], "authorization_code");
        assert_eq!(v["user_id"], "alice");
        assert_eq!(v["scopes"], json!(["mcp"]));
        assert_eq!(v["request_id"], "req-1");
        assert_eq!(v["ip"], "192.0.2.7");
        assert_eq!(v["flow"], "g1");
    }

    #[test]
    fn any_text_is_escaped_and_reads_back_the_same() {
        let odd = "a\"b\\c\nd\re\tf\u{1}g\u{7f}h\u{2028}i é 🙂 </script>";
        let e = Event::ClientRefused {
            client: odd.into(),
            reason: "r".into(),
        };
        let line = e.to_line(0, None, Some(odd));
        assert!(!line.contains('\n') && !line.contains('\u{2028}'), "{line}");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["client"], odd);
        assert_eq!(v["flow"], odd);
        assert_eq!(v["ts"], "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn lines_reach_the_file_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&Destination::File(path.clone())).unwrap();
        for i in 0..100 {
            assert!(log.write(json!({ "n": i }).to_string()));
        }
        log.close();
        assert!(
            !log.write(json!({ "n": 100 }).to_string()),
            "closed: dropped, not blocking"
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == 100 {
                for (i, l) in text.lines().enumerate() {
                    assert_eq!(serde_json::from_str::<Value>(l).unwrap()["n"], i);
                }
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{text}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{mode:o}");
        }
    }
}
