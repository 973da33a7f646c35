//! The administration service on a real (SQLite) store: what each operation returns, its
//! precise errors, and the one audit event each change writes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use mcp_oauth_gateway::admin::{Admin, AdminError, Entity, GrantSelection, KeyState};
use mcp_oauth_gateway::clock::{SharedClock, SystemClock};
use mcp_oauth_gateway::config::Config;
use tracing_subscriber::layer::SubscriberExt;

type Fields = BTreeMap<String, String>;

const PASSWORD: &str = "a good password";

/// The fields of every event with target `audit` seen on this thread.
#[derive(Clone, Default)]
struct AuditLog(Arc<Mutex<Vec<Fields>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AuditLog {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if event.metadata().target() != "audit" {
            return;
        }
        let mut fields = Visitor::default();
        event.record(&mut fields);
        self.0.lock().unwrap().push(fields.0);
    }
}

impl AuditLog {
    /// The structured audit events since the last call (those with an `action`; older
    /// free-form lines with the same target are left out).
    fn take(&self) -> Vec<Fields> {
        std::mem::take(&mut *self.0.lock().unwrap())
            .into_iter()
            .filter(|f| f.contains_key("action"))
            .collect()
    }

    /// Exactly one event was written since the last call, with this action and actor.
    #[track_caller]
    fn one(&self, action: &str) -> Fields {
        let events = self.take();
        assert_eq!(events.len(), 1, "{action}: {events:?}");
        let event = events.into_iter().next().unwrap();
        assert_eq!(event["action"], action, "{event:?}");
        assert_eq!(event["actor"], "tester", "{event:?}");
        event
    }

    #[track_caller]
    fn none(&self) {
        let events = self.take();
        assert!(events.is_empty(), "{events:?}");
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

// The capture is this thread's default subscriber: on a current-thread runtime every await of
// the test runs here, so every event the service writes is seen.
#[tokio::test(flavor = "current_thread")]
async fn each_operation_returns_its_result_and_writes_one_audit_event() {
    let log = AuditLog::default();
    let subscriber = tracing_subscriber::registry().with(log.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("admin.db").display());
    let store = mcp_oauth_gateway::store::open(&url).await.unwrap();
    let clock: SharedClock = Arc::new(SystemClock);
    let admin = Admin::new(store, clock, &Config::default(), "tester").unwrap();
    assert_eq!(admin.actor(), "tester");

    // Create.
    let groups = vec!["dev".to_string(), "ops".to_string()];
    let id = admin
        .create_user("carol", PASSWORD, Some("carol@example.com"), &groups)
        .await
        .unwrap();
    let event = log.one("user_created");
    assert_eq!(event["user"], "carol");
    assert_eq!(event["groups"], "dev,ops");
    assert!(
        !event.values().any(|v| v.contains(PASSWORD)),
        "no secret in the audit log: {event:?}"
    );
    let users = admin.list_users().await.unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].id, id);
    assert_eq!(users[0].username, "carol");
    assert_eq!(users[0].email.as_deref(), Some("carol@example.com"));
    assert_eq!(users[0].groups, groups);
    assert_eq!(users[0].disabled_at, None);
    log.none();

    // The same name again is a conflict, named precisely; nothing changed, nothing recorded.
    let e = admin
        .create_user("carol", "another password", None, &[])
        .await
        .unwrap_err();
    assert!(
        matches!(&e, AdminError::Exists { what: Entity::User, name } if name == "carol"),
        "{e:?}"
    );
    assert_eq!(e.to_string(), "a user named `carol` exists already");
    log.none();
    // A bad profile or password is refused before anything is made.
    let e = admin
        .create_user("dave", PASSWORD, Some("not an email"), &[])
        .await
        .unwrap_err();
    assert!(matches!(e, AdminError::Invalid(_)), "{e:?}");
    let e = admin
        .create_user("dave", "short", None, &[])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("at least 8"), "{e}");
    log.none();
    assert_eq!(admin.list_users().await.unwrap().len(), 1);

    // Profile.
    admin
        .update_user("carol", None, &["ops".to_string()])
        .await
        .unwrap();
    assert_eq!(log.one("user_updated")["groups"], "ops");
    let users = admin.list_users().await.unwrap();
    assert_eq!(users[0].email, None);
    assert_eq!(users[0].groups, ["ops"]);

    // Password.
    let ended = admin
        .set_password("carol", "a newer password", false)
        .await
        .unwrap();
    assert_eq!(ended, 0, "carol holds no grants");
    let event = log.one("password_changed");
    assert_eq!(event["user"], "carol");
    assert_eq!(event["grants_ended"], "0");
    assert!(!event.values().any(|v| v.contains("a newer password")));

    // Disable and enable.
    assert_eq!(admin.disable_user("carol", false).await.unwrap(), 0);
    assert_eq!(log.one("user_disabled")["user"], "carol");
    assert!(admin.list_users().await.unwrap()[0].disabled_at.is_some());
    admin.enable_user("carol").await.unwrap();
    assert_eq!(log.one("user_enabled")["user"], "carol");
    assert_eq!(admin.list_users().await.unwrap()[0].disabled_at, None);

    // Sessions.
    admin.end_sessions("carol").await.unwrap();
    assert_eq!(log.one("sessions_ended")["user"], "carol");

    // Grants: only a selection is revoked, and its parts are recorded.
    let all = GrantSelection::default();
    assert!(matches!(
        admin.revoke_grants(&all).await,
        Err(AdminError::NoGrantSelected)
    ));
    log.none();
    let carols = GrantSelection {
        user: Some("carol".into()),
        ..GrantSelection::default()
    };
    assert!(admin.list_grants(&carols, true).await.unwrap().is_empty());
    assert_eq!(admin.revoke_grants(&carols).await.unwrap(), 0);
    let event = log.one("grants_revoked");
    assert_eq!(event["user"], "carol");
    assert_eq!(event["count"], "0");
    assert!(!event.contains_key("client"), "{event:?}");
    assert!(!event.contains_key("grant"), "{event:?}");

    // Remove.
    admin.remove_user("carol").await.unwrap();
    assert_eq!(log.one("user_removed")["user"], "carol");
    assert!(admin.list_users().await.unwrap().is_empty());

    // What is gone is named as missing, by every operation on it, and nothing is recorded.
    let missing = |e: AdminError| {
        assert!(
            matches!(&e, AdminError::NotFound { what: Entity::User, name } if name == "carol"),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "no user named `carol`");
    };
    missing(admin.remove_user("carol").await.unwrap_err());
    missing(
        admin
            .set_password("carol", "a newer password", false)
            .await
            .unwrap_err(),
    );
    missing(admin.disable_user("carol", true).await.unwrap_err());
    missing(admin.enable_user("carol").await.unwrap_err());
    missing(admin.end_sessions("carol").await.unwrap_err());
    missing(admin.update_user("carol", None, &[]).await.unwrap_err());
    missing(admin.revoke_grants(&carols).await.unwrap_err());
    let e = admin.remove_client("nobody").await.unwrap_err();
    assert!(
        matches!(&e, AdminError::NotFound { what: Entity::Client, name } if name == "nobody"),
        "{e:?}"
    );
    assert_eq!(e.to_string(), "no client `nobody`");
    log.none();
}

#[tokio::test(flavor = "current_thread")]
async fn signing_keys_rotate_and_retire_with_audit_events() {
    let log = AuditLog::default();
    let subscriber = tracing_subscriber::registry().with(log.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keys.db").display());
    let store = mcp_oauth_gateway::store::open(&url).await.unwrap();
    let clock: SharedClock = Arc::new(SystemClock);
    let admin = Admin::new(store, clock, &Config::default(), "cli")
        .unwrap()
        .acting_as("tester");

    let first = admin.rotate_signing_key().await.unwrap();
    assert_eq!(log.one("signing_key_rotated")["kid"], first);
    let keys = admin.list_signing_keys().await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].kid, first);
    assert_eq!(keys[0].state, KeyState::Signing);
    assert_eq!(keys[0].sealed_with, None, "no encryption key is configured");
    assert!(matches!(
        admin.retire_signing_key(&first).await,
        Err(AdminError::OnlyLiveKey { .. })
    ));
    assert!(matches!(
        admin.reseal_signing_keys().await,
        Err(AdminError::NoEncryptionKey)
    ));
    log.none();

    let second = admin.rotate_signing_key().await.unwrap();
    assert_eq!(log.one("signing_key_rotated")["kid"], second);
    let states: Vec<_> = admin
        .list_signing_keys()
        .await
        .unwrap()
        .into_iter()
        .map(|k| (k.kid, k.state))
        .collect();
    assert_eq!(
        states,
        [
            (second.clone(), KeyState::SignsSoon),
            (first.clone(), KeyState::Signing)
        ]
    );
    assert!(matches!(
        admin.retire_signing_key(&first).await,
        Err(AdminError::KeyStillSigns { .. })
    ));
    log.none();
    admin.retire_signing_key(&second).await.unwrap();
    assert_eq!(log.one("signing_key_retired")["kid"], second);
    let e = admin.retire_signing_key(&second).await.unwrap_err();
    assert_eq!(e.to_string(), format!("no live key `{second}`"));
    log.none();
}

/// A blocked client: its tokens stop working at once, its refresh and any new authorization
/// are refused; unblocked, it may be authorized anew. The block goes through the same
/// service as the CLI's `clients block`, into the gateway's audit log and series.
#[tokio::test]
async fn a_blocked_client_is_refused_everywhere_until_unblocked() {
    use crate::support::{self, TestGateway};
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let audit_path = audit.display().to_string();
    let gw = TestGateway::start_with(move |c| c.audit.path = Some(audit_path)).await;
    let a = support::authorize_user(&gw, "alice").await;
    let other = support::authorize_user(&gw, "bob").await;
    assert_eq!(support::call_whoami(&gw, &a.access_token).await.0, 200);
    let config = Config {
        audit: mcp_oauth_gateway::config::AuditConfig {
            path: Some(audit.display().to_string()),
        },
        ..Config::default()
    };
    let observer =
        mcp_oauth_gateway::observe::Observer::for_command(&config, Arc::new(SystemClock)).unwrap();
    let admin = Admin::new(gw.store.clone(), Arc::new(SystemClock), &config, "tester")
        .unwrap()
        .observed_by(observer);
    admin
        .block_client(&a.client_id, "abuse\nforged line")
        .await
        .unwrap();
    assert!(matches!(
        admin.block_client(&a.client_id, "again").await,
        Err(AdminError::Exists {
            what: Entity::Block,
            ..
        })
    ));
    // Its token: refused at once (the cache forgot it); its refresh: the client is refused.
    assert_eq!(support::call_whoami(&gw, &a.access_token).await.0, 401);
    let (status, v) = gw
        .post_form(
            "/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &a.refresh_token),
                ("client_id", &a.client_id),
            ],
        )
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (401, Some("invalid_client")),
        "{v}"
    );
    // A new authorization: stopped on the gateway's page, nothing sent to the client.
    let pkce = support::Pkce::new();
    let resource = gw.resource();
    let params = support::authorize_params(&a.client_id, &a.redirect, &pkce, &resource);
    let url = url::Url::parse_with_params(&gw.url("/authorize"), &params).unwrap();
    let r = TestGateway::browser()
        .get(url.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("blocked"));
    // Another client is untouched.
    assert_eq!(support::call_whoami(&gw, &other.access_token).await.0, 200);
    let blocked = admin.blocked_clients().await.unwrap();
    assert_eq!(blocked.len(), 1);
    assert_eq!(
        blocked[0].2, "abuseforged line",
        "control characters are dropped"
    );

    admin.unblock_client(&a.client_id).await.unwrap();
    assert!(matches!(
        admin.unblock_client(&a.client_id).await,
        Err(AdminError::NotFound {
            what: Entity::Block,
            ..
        })
    ));
    let location = support::approve(&TestGateway::browser(), &gw, url.as_str(), "alice").await;
    assert!(location.contains("code="), "{location}");
    // The audit log has both changes, by the acting administrator.
    let text = std::fs::read_to_string(&audit).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let blocked = lines
        .iter()
        .find(|l| l["action"] == "client_blocked")
        .expect("client_blocked recorded");
    assert_eq!(blocked["client"], a.client_id.as_str());
    assert_eq!(blocked["actor"], "tester");
    assert!(lines.iter().any(|l| l["action"] == "client_unblocked"));
}
