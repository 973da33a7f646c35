//! The audit log: every administrative change is one `tracing` event with target `audit`,
//! written by [`emit`] alone, so that a log pipeline can pick the changes out by target and
//! read them by field name.
//!
//! The names are stable: `action` (the variant in snake_case, see [`AuditEvent::action`]),
//! `actor` (who made the change: `cli`, or the operator at the console), and the change's own
//! fields (`user`, `groups`, `grants_ended`, `client`, `grant`, `count`, `kid`,
//! `encryption_key`). No event ever carries a secret: no password, token or key material.

use super::GrantSelection;

/// The `tracing` target of every audit event.
pub const TARGET: &str = "audit";

/// One administrative change, as it is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditEvent {
    /// A local account was created, with these groups.
    UserCreated {
        user: String,
        groups: Vec<String>,
    },
    /// A user's email and groups were replaced (the groups are the new ones).
    UserUpdated {
        user: String,
        groups: Vec<String>,
    },
    /// A user's password was set; their sessions ended, and `grants_ended` grants.
    PasswordChanged {
        user: String,
        grants_ended: u64,
    },
    /// A user can no longer sign in; their sessions ended, and `grants_ended` grants.
    UserDisabled {
        user: String,
        grants_ended: u64,
    },
    UserEnabled {
        user: String,
    },
    /// A user was deleted with everything issued to them.
    UserRemoved {
        user: String,
    },
    /// A user was signed out of every browser (their grants stay).
    SessionsEnded {
        user: String,
    },
    /// A registered client was deleted; its grants ended.
    ClientRemoved {
        client: String,
    },
    /// A client (any kind) was blocked; its grants ended.
    ClientBlocked {
        client: String,
        reason: String,
    },
    ClientUnblocked {
        client: String,
    },
    /// A client may be authorized (the policy asks for approval of new clients).
    ClientApproved {
        client: String,
    },
    /// A client was taken off the list of those waiting for approval.
    ClientDismissed {
        client: String,
    },
    /// The selected live grants ended: `count` of them.
    GrantsRevoked {
        selection: GrantSelection,
        count: u64,
    },
    /// A new signing key was added (it signs once activated).
    SigningKeyRotated {
        kid: String,
    },
    /// A signing key is no longer published; its private half is erased.
    SigningKeyRetired {
        kid: String,
    },
    /// `count` signing keys were re-encrypted under the encryption key `encryption_key` (its
    /// id).
    SigningKeysResealed {
        encryption_key: String,
        count: u64,
    },
    /// The registration policy in force now; `configured`: the configuration file's again.
    RegistrationPolicyChanged {
        dcr: &'static str,
        cimd: bool,
        cimd_allowed_domains: Vec<String>,
        cimd_blocked_domains: Vec<String>,
        configured: bool,
    },
}

impl AuditEvent {
    /// The `action` field: stable, snake_case.
    pub fn action(&self) -> &'static str {
        match self {
            Self::UserCreated { .. } => "user_created",
            Self::UserUpdated { .. } => "user_updated",
            Self::PasswordChanged { .. } => "password_changed",
            Self::UserDisabled { .. } => "user_disabled",
            Self::UserEnabled { .. } => "user_enabled",
            Self::UserRemoved { .. } => "user_removed",
            Self::SessionsEnded { .. } => "sessions_ended",
            Self::ClientRemoved { .. } => "client_removed",
            Self::ClientBlocked { .. } => "client_blocked",
            Self::ClientUnblocked { .. } => "client_unblocked",
            Self::ClientApproved { .. } => "client_approved",
            Self::ClientDismissed { .. } => "client_dismissed",
            Self::GrantsRevoked { .. } => "grants_revoked",
            Self::SigningKeyRotated { .. } => "signing_key_rotated",
            Self::SigningKeyRetired { .. } => "signing_key_retired",
            Self::SigningKeysResealed { .. } => "signing_keys_resealed",
            Self::RegistrationPolicyChanged { .. } => "registration_policy_changed",
        }
    }
}

impl AuditEvent {
    /// The event's own fields, as the audit log writes them.
    pub fn fields(&self) -> Vec<(&'static str, serde_json::Value)> {
        use serde_json::json;
        match self {
            Self::UserCreated { user, groups } | Self::UserUpdated { user, groups } => {
                vec![("user", json!(user)), ("groups", json!(groups))]
            }
            Self::PasswordChanged { user, grants_ended }
            | Self::UserDisabled { user, grants_ended } => {
                vec![("user", json!(user)), ("grants_ended", json!(grants_ended))]
            }
            Self::UserEnabled { user }
            | Self::UserRemoved { user }
            | Self::SessionsEnded { user } => {
                vec![("user", json!(user))]
            }
            Self::ClientRemoved { client }
            | Self::ClientUnblocked { client }
            | Self::ClientApproved { client }
            | Self::ClientDismissed { client } => {
                vec![("client", json!(client))]
            }
            Self::ClientBlocked { client, reason } => {
                vec![("client", json!(client)), ("reason", json!(reason))]
            }
            Self::GrantsRevoked { selection, count } => {
                let mut v = Vec::new();
                if let Some(u) = &selection.user {
                    v.push(("user", json!(u)));
                }
                if let Some(c) = &selection.client {
                    v.push(("client", json!(c)));
                }
                if let Some(g) = &selection.grant {
                    v.push(("grant", json!(g)));
                }
                v.push(("count", json!(count)));
                v
            }
            Self::SigningKeyRotated { kid } | Self::SigningKeyRetired { kid } => {
                vec![("kid", json!(kid))]
            }
            Self::SigningKeysResealed {
                encryption_key,
                count,
            } => vec![
                ("encryption_key", json!(encryption_key)),
                ("count", json!(count)),
            ],
            Self::RegistrationPolicyChanged {
                dcr,
                cimd,
                cimd_allowed_domains,
                cimd_blocked_domains,
                configured,
            } => vec![
                ("dcr", json!(dcr)),
                ("cimd", json!(cimd)),
                ("cimd_allowed_domains", json!(cimd_allowed_domains)),
                ("cimd_blocked_domains", json!(cimd_blocked_domains)),
                ("configured", json!(configured)),
            ],
        }
    }
}

/// Writes `event`, made by `actor`, as one `tracing` event (target [`TARGET`], level INFO).
pub fn emit(actor: &str, event: &AuditEvent) {
    let action = event.action();
    match event {
        AuditEvent::UserCreated { user, groups } => {
            let groups = groups.join(",");
            tracing::info!(
                target: TARGET,
                action,
                actor,
                user = user.as_str(),
                groups = groups.as_str(),
                "user created"
            );
        }
        AuditEvent::UserUpdated { user, groups } => {
            let groups = groups.join(",");
            tracing::info!(
                target: TARGET,
                action,
                actor,
                user = user.as_str(),
                groups = groups.as_str(),
                "user updated"
            );
        }
        AuditEvent::PasswordChanged { user, grants_ended } => tracing::info!(
            target: TARGET,
            action,
            actor,
            user = user.as_str(),
            grants_ended = *grants_ended,
            "password changed"
        ),
        AuditEvent::UserDisabled { user, grants_ended } => tracing::info!(
            target: TARGET,
            action,
            actor,
            user = user.as_str(),
            grants_ended = *grants_ended,
            "user disabled"
        ),
        AuditEvent::UserEnabled { user } => tracing::info!(
            target: TARGET,
            action,
            actor,
            user = user.as_str(),
            "user enabled"
        ),
        AuditEvent::UserRemoved { user } => tracing::info!(
            target: TARGET,
            action,
            actor,
            user = user.as_str(),
            "user removed"
        ),
        AuditEvent::SessionsEnded { user } => tracing::info!(
            target: TARGET,
            action,
            actor,
            user = user.as_str(),
            "user's browser sessions ended"
        ),
        AuditEvent::ClientRemoved { client } => tracing::info!(
            target: TARGET,
            action,
            actor,
            client = client.as_str(),
            "client removed"
        ),
        AuditEvent::ClientBlocked { client, reason } => tracing::info!(
            target: TARGET,
            action,
            actor,
            client = client.as_str(),
            reason = reason.as_str(),
            "client blocked"
        ),
        AuditEvent::ClientUnblocked { client } => tracing::info!(
            target: TARGET,
            action,
            actor,
            client = client.as_str(),
            "client unblocked"
        ),
        AuditEvent::ClientApproved { client } => tracing::info!(
            target: TARGET,
            action,
            actor,
            client = client.as_str(),
            "client approved"
        ),
        AuditEvent::ClientDismissed { client } => tracing::info!(
            target: TARGET,
            action,
            actor,
            client = client.as_str(),
            "waiting client dismissed"
        ),
        // What was not part of the selection is left out rather than written empty.
        AuditEvent::GrantsRevoked { selection, count } => tracing::info!(
            target: TARGET,
            action,
            actor,
            user = selection.user.as_deref(),
            client = selection.client.as_deref(),
            grant = selection.grant.as_deref(),
            count = *count,
            "grants revoked"
        ),
        AuditEvent::SigningKeyRotated { kid } => tracing::info!(
            target: TARGET,
            action,
            actor,
            kid = kid.as_str(),
            "signing key added"
        ),
        AuditEvent::SigningKeyRetired { kid } => tracing::info!(
            target: TARGET,
            action,
            actor,
            kid = kid.as_str(),
            "signing key retired"
        ),
        AuditEvent::SigningKeysResealed {
            encryption_key,
            count,
        } => tracing::info!(
            target: TARGET,
            action,
            actor,
            encryption_key = encryption_key.as_str(),
            count = *count,
            "signing keys re-encrypted"
        ),
        AuditEvent::RegistrationPolicyChanged {
            dcr,
            cimd,
            cimd_allowed_domains,
            cimd_blocked_domains,
            configured,
        } => {
            let allowed = cimd_allowed_domains.join(",");
            let blocked = cimd_blocked_domains.join(",");
            tracing::info!(
                target: TARGET,
                action,
                actor,
                dcr = *dcr,
                cimd = *cimd,
                cimd_allowed_domains = allowed.as_str(),
                cimd_blocked_domains = blocked.as_str(),
                configured = *configured,
                "registration policy changed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    type Fields = BTreeMap<String, String>;

    /// Every event seen, with its target.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<(String, Fields)>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let mut fields = Visitor::default();
            event.record(&mut fields);
            let target = event.metadata().target().to_string();
            self.0.lock().unwrap().push((target, fields.0));
        }
    }

    #[derive(Default)]
    struct Visitor(Fields);

    impl tracing::field::Visit for Visitor {
        fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
            self.0.insert(field.name().to_string(), value.to_string());
        }
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            self.0
                .insert(field.name().to_string(), format!("{value:?}"));
        }
    }

    fn emitted(event: &AuditEvent) -> (String, Fields) {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::registry().with(capture.clone());
        tracing::subscriber::with_default(subscriber, || emit("tester", event));
        let mut seen = capture.0.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "{event:?}");
        seen.remove(0)
    }

    /// The field names are an interface: log pipelines select on them.
    #[test]
    fn each_event_is_written_once_with_its_stable_fields() {
        let user = || "carol".to_string();
        let cases: Vec<(AuditEvent, &str, &[&str])> = vec![
            (
                AuditEvent::UserCreated {
                    user: user(),
                    groups: vec!["dev".into(), "ops".into()],
                },
                "user_created",
                &["user", "groups"][..],
            ),
            (
                AuditEvent::UserUpdated {
                    user: user(),
                    groups: Vec::new(),
                },
                "user_updated",
                &["user", "groups"][..],
            ),
            (
                AuditEvent::PasswordChanged {
                    user: user(),
                    grants_ended: 2,
                },
                "password_changed",
                &["user", "grants_ended"][..],
            ),
            (
                AuditEvent::UserDisabled {
                    user: user(),
                    grants_ended: 0,
                },
                "user_disabled",
                &["user", "grants_ended"][..],
            ),
            (
                AuditEvent::UserEnabled { user: user() },
                "user_enabled",
                &["user"][..],
            ),
            (
                AuditEvent::UserRemoved { user: user() },
                "user_removed",
                &["user"][..],
            ),
            (
                AuditEvent::SessionsEnded { user: user() },
                "sessions_ended",
                &["user"][..],
            ),
            (
                AuditEvent::ClientRemoved {
                    client: "mog_ci_x".into(),
                },
                "client_removed",
                &["client"][..],
            ),
            (
                AuditEvent::ClientBlocked {
                    client: "mog_ci_x".into(),
                    reason: "spam".into(),
                },
                "client_blocked",
                &["client", "reason"][..],
            ),
            (
                AuditEvent::ClientUnblocked {
                    client: "mog_ci_x".into(),
                },
                "client_unblocked",
                &["client"][..],
            ),
            (
                AuditEvent::GrantsRevoked {
                    selection: GrantSelection {
                        user: Some(user()),
                        client: None,
                        grant: Some("g1".into()),
                    },
                    count: 1,
                },
                "grants_revoked",
                &["user", "grant", "count"][..],
            ),
            (
                AuditEvent::SigningKeyRotated { kid: "k1".into() },
                "signing_key_rotated",
                &["kid"][..],
            ),
            (
                AuditEvent::SigningKeyRetired { kid: "k1".into() },
                "signing_key_retired",
                &["kid"][..],
            ),
            (
                AuditEvent::SigningKeysResealed {
                    encryption_key: "e1".into(),
                    count: 3,
                },
                "signing_keys_resealed",
                &["encryption_key", "count"][..],
            ),
            (
                AuditEvent::RegistrationPolicyChanged {
                    dcr: "off",
                    cimd: true,
                    cimd_allowed_domains: vec!["*.example.com".into()],
                    cimd_blocked_domains: Vec::new(),
                    configured: false,
                },
                "registration_policy_changed",
                &[
                    "dcr",
                    "cimd",
                    "cimd_allowed_domains",
                    "cimd_blocked_domains",
                    "configured",
                ][..],
            ),
        ];
        for (event, action, own) in cases {
            assert_eq!(event.action(), action);
            let (target, fields) = emitted(&event);
            assert_eq!(target, TARGET);
            let mut expected: Vec<&str> = vec!["action", "actor", "message"];
            expected.extend_from_slice(own);
            expected.sort_unstable();
            let names: Vec<&str> = fields.keys().map(String::as_str).collect();
            assert_eq!(names, expected, "{action}");
            assert_eq!(fields["action"], action);
            assert_eq!(fields["actor"], "tester");
        }
    }

    #[test]
    fn values_are_written_plainly() {
        let (_, fields) = emitted(&AuditEvent::UserCreated {
            user: "carol".into(),
            groups: vec!["dev".into(), "ops".into()],
        });
        assert_eq!(fields["user"], "carol");
        assert_eq!(fields["groups"], "dev,ops");
        let (_, fields) = emitted(&AuditEvent::PasswordChanged {
            user: "carol".into(),
            grants_ended: 2,
        });
        assert_eq!(fields["grants_ended"], "2");
    }
}
