//! The grant lifecycle's events: every way a grant ends is one [`GrantEnded`], published once
//! to this process's subscribers as the ending commits, and carried to every other instance on
//! the same store (PostgreSQL `NOTIFY`; on SQLite, an events table that a running gateway
//! polls, so that what the CLI ends is heard within a second).
//!
//! Subscribers are per-instance state that a grant's end must empty: token, client and session
//! caches today; the per-user database pools and the token vault next.

use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// Why a grant ended. The names are stable: they are stored, sent between instances and
/// written to the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The client revoked its refresh token (`/revoke`).
    Revoked,
    /// The authorization code that created it was presented again.
    CodeReplayed,
    /// A rotated refresh token of it was presented again.
    RefreshReplayed,
    /// An administrator revoked it (`grants revoke`, the console).
    AdminRevoked,
    UserRemoved,
    ClientRemoved,
    /// An administrator blocked the client.
    ClientBlocked,
    PasswordChanged,
    UserDisabled,
    /// Nothing live was left of it: its last refresh token (or, without one, its last access
    /// token) expired unused.
    Expired,
    /// It reached `authorization.grant_max_lifetime_secs`.
    MaxLifetime,
    /// The identity provider the user signed in at refused to renew their session
    /// (`invalid_grant` on a refresh: account disabled, session revoked there).
    ProviderRefused,
    /// The database the user signed in to no longer accepts the credential kept for them
    /// (password changed, account locked or removed there).
    CredentialRefused,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Revoked => "revoked",
            Self::CodeReplayed => "code_replayed",
            Self::RefreshReplayed => "refresh_replayed",
            Self::AdminRevoked => "admin_revoked",
            Self::UserRemoved => "user_removed",
            Self::ClientRemoved => "client_removed",
            Self::ClientBlocked => "client_blocked",
            Self::PasswordChanged => "password_changed",
            Self::UserDisabled => "user_disabled",
            Self::Expired => "expired",
            Self::MaxLifetime => "max_lifetime",
            Self::ProviderRefused => "provider_refused",
            Self::CredentialRefused => "credential_refused",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        ALL_REASONS.iter().copied().find(|r| r.as_str() == s)
    }
}

const ALL_REASONS: [EndReason; 13] = [
    EndReason::ClientBlocked,
    EndReason::ProviderRefused,
    EndReason::CredentialRefused,
    EndReason::Revoked,
    EndReason::CodeReplayed,
    EndReason::RefreshReplayed,
    EndReason::AdminRevoked,
    EndReason::UserRemoved,
    EndReason::ClientRemoved,
    EndReason::PasswordChanged,
    EndReason::UserDisabled,
    EndReason::Expired,
    EndReason::MaxLifetime,
];

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A grant has ended: its tokens are gone and it will never be live again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantEnded {
    pub grant: String,
    pub user: Option<String>,
    pub client: String,
    pub reason: EndReason,
}

/// What subscribers hear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StoreEvent {
    GrantEnded(GrantEnded),
    /// One access token was revoked on its own (its grant lives on).
    AccessTokenRevoked {
        token_hash: String,
    },
    /// A user was removed (after the ends of their grants): what is cached of them goes.
    UserRemoved {
        user: String,
    },
    /// A client was removed (after the ends of its grants), with any token it held for
    /// itself.
    ClientRemoved {
        client: String,
    },
    /// Events may have been missed (a lost connection to the store, a subscriber too slow):
    /// drop everything cached.
    Resync,
}

/// More events than this from one commit reach listeners as one `Resync`.
const LISTENER_BATCH: usize = 64;

/// Called with each event as it is published, before `publish` returns: for caches, which
/// must not answer from what a commit just ended even for a moment.
pub type Listener = Arc<dyn Fn(&StoreEvent) + Send + Sync>;

/// The in-process side of the events: listeners called at once, a broadcast channel for
/// subscribers that do slower work, and the identity of this process's store so that its own
/// events coming back from the database are not heard twice.
#[derive(Clone)]
pub struct EventBus {
    sender: broadcast::Sender<StoreEvent>,
    listeners: Arc<RwLock<Vec<Listener>>>,
    origin: String,
    channel: String,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    pub fn new() -> Self {
        Self::announced_on(String::new())
    }

    /// A bus whose events other instances hear on `channel` (PostgreSQL's `NOTIFY`).
    pub fn announced_on(channel: String) -> Self {
        let (sender, _) = broadcast::channel(1024);
        Self {
            sender,
            listeners: Arc::default(),
            origin: crate::crypto::new_id(),
            channel,
        }
    }

    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Names this process's store in the events it writes.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.sender.subscribe()
    }

    pub fn listen(&self, listener: Listener) {
        if let Ok(mut l) = self.listeners.write() {
            l.push(listener);
        }
    }

    fn tell_listeners(&self, event: &StoreEvent) {
        if let Ok(listeners) = self.listeners.read() {
            for l in listeners.iter() {
                l(event);
            }
        }
    }

    pub fn publish(&self, event: StoreEvent) {
        self.tell_listeners(&event);
        // No subscriber is not an error: the CLI has none.
        let _ = self.sender.send(event);
    }

    /// What one commit ended. Listeners (caches, which scan themselves per event) hear a
    /// large batch as one `Resync`; subscribers hear every event.
    pub fn publish_all(&self, events: Vec<StoreEvent>) {
        if events.len() <= LISTENER_BATCH {
            for e in events {
                self.publish(e);
            }
            return;
        }
        self.tell_listeners(&StoreEvent::Resync);
        for e in events {
            let _ = self.sender.send(e);
        }
    }

    /// An event read back from the database: heard unless this process wrote it.
    pub fn publish_remote(&self, origin: &str, event: StoreEvent) {
        if origin != self.origin {
            self.publish(event);
        }
    }
}

/// The payload of a `NOTIFY` and of an events-table row.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    pub origin: String,
    pub event: StoreEvent,
}

/// Receives events for as long as the subscriber wants them; a subscriber that fell behind
/// hears `Resync` instead of what it missed.
pub async fn next_event(rx: &mut broadcast::Receiver<StoreEvent>) -> Option<StoreEvent> {
    match rx.recv().await {
        Ok(e) => Some(e),
        Err(broadcast::error::RecvError::Lagged(_)) => Some(StoreEvent::Resync),
        Err(broadcast::error::RecvError::Closed) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_by_name() {
        for r in ALL_REASONS {
            assert_eq!(EndReason::parse(r.as_str()), Some(r));
            let json = serde_json::to_string(&r).expect("json");
            assert_eq!(json, format!("\"{}\"", r.as_str()));
        }
        assert_eq!(EndReason::parse("nope"), None);
    }

    #[test]
    fn own_events_read_back_are_not_heard_twice() {
        let bus = EventBus::new();
        let mut rx = bus.subscribe();
        let own = bus.origin().to_string();
        bus.publish_remote(&own, StoreEvent::Resync);
        assert!(rx.try_recv().is_err());
        bus.publish_remote("elsewhere", StoreEvent::Resync);
        assert_eq!(rx.try_recv().ok(), Some(StoreEvent::Resync));
    }
}
