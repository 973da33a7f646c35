//! Administration as a service: what an operator can do to users, clients, grants and signing
//! keys, for the command line today and the console next. Each operation returns a typed
//! result or an [`AdminError`] and prints nothing; each one that changes something writes one
//! [`audit`] event once the change is made.

pub mod audit;
pub mod audit_log;

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use crate::clock::{SharedClock, Timestamp};
use crate::config::{Config, StaticClientConfig};
use crate::crypto::{self, EncryptionKeys};
use crate::login::{LocalAccounts, validate_profile};
use crate::store::{ClientRecord, EndReason, GrantFilter, SharedStore, StoreError, UserRecord};

pub use audit::AuditEvent;

use crate::authorization::policy::{self, RegistrationPolicy};

/// What an [`AdminError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    User,
    Client,
    SigningKey,
    /// A client's block.
    Block,
}

/// How an entity is named in a message: "no {noun} `x`", "a {noun} `x` exists already".
fn noun(what: &Entity) -> &'static str {
    match what {
        Entity::User => "user named",
        Entity::Client => "client",
        Entity::SigningKey => "live key",
        Entity::Block => "block of the client",
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// It does not exist (or no longer: another operator may just have removed it).
    #[error("no {} `{name}`", noun(.what))]
    NotFound { what: Entity, name: String },
    #[error("a {} `{name}` exists already", noun(.what))]
    Exists { what: Entity, name: String },
    /// A value given is not acceptable (an email address, a group name).
    #[error("{0}")]
    Invalid(String),
    /// Clients from the configuration file are changed there, not in the store.
    #[error("`{client}` is configured in the file; remove it there")]
    ConfiguredClient { client: String },
    /// Revoking needs a user, a client or a grant: never every grant at once.
    #[error("say which grants: a user, a client or a grant")]
    NoGrantSelected,
    /// Retiring the only live key would leave nothing to sign with.
    #[error(
        "`{kid}` is the only live key; add another first and retire this one once that one signs"
    )]
    OnlyLiveKey { kid: String },
    /// Retiring the key that signs would leave nothing to sign with until the next is active.
    #[error(
        "`{kid}` still signs; retire it after the newer key has taken over ({} s after it was made)",
        crate::proxy::KEY_ACTIVATION_DELAY_SECS
    )]
    KeyStillSigns { kid: String },
    /// The audit log is read back only from a file.
    #[error(
        "the audit log is not written to a file: set `[audit] path` to read it here (standard output and the log are read where they go)"
    )]
    NoAuditFile,
    /// The audit log's file could not be read.
    #[error("the audit log cannot be read: {0}")]
    AuditLog(String),
    /// Re-encrypting needs an encryption key in the configuration.
    #[error("`keys.encryption` is empty: configure an encryption key first")]
    NoEncryptionKey,
    /// What local accounts refused or failed at; they report it as text (a password too
    /// short, an invalid username, hashing or the store failing).
    #[error("{0}")]
    Accounts(String),
    /// Making, sealing or re-sealing a signing key failed.
    #[error("{0}")]
    Keys(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// `LocalAccounts` reports failures as text. The two that name a missing or an existing
/// account become their kinds again, so that callers can tell them apart; the message stays
/// the same either way.
fn accounts_error(message: String, name: &str) -> AdminError {
    if message == format!("no user named `{name}`") {
        AdminError::NotFound {
            what: Entity::User,
            name: name.to_string(),
        }
    } else if message == format!("a user named `{name}` exists already") {
        AdminError::Exists {
            what: Entity::User,
            name: name.to_string(),
        }
    } else if message.starts_with("store error: ") || message.starts_with("store unavailable: ") {
        // The store's own words (tables, hosts) are for the log, not for a page.
        AdminError::Store(StoreError::Backend(message))
    } else {
        AdminError::Accounts(message)
    }
}

/// A local account, without its password hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSummary {
    pub id: String,
    pub username: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
    pub created_at: Timestamp,
    pub disabled_at: Option<Timestamp>,
}

impl From<UserRecord> for UserSummary {
    fn from(u: UserRecord) -> Self {
        Self {
            id: u.id,
            username: u.username,
            email: u.email,
            groups: u.groups,
            created_at: u.created_at,
            disabled_at: u.disabled_at,
        }
    }
}

/// Where a client is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientSource {
    /// In the configuration file.
    Configured,
    /// Registered dynamically, kept in the store.
    Registered,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSummary {
    pub client_id: String,
    pub source: ClientSource,
    pub name: Option<String>,
    /// Registered clients' redirect URIs (configured ones are in the file).
    pub redirect_uris: Vec<String>,
}

/// Everything known of one client. What strangers registered is shown as they wrote it: the
/// caller escapes it for its medium.
#[derive(Debug, Clone)]
pub enum ClientDetails {
    Configured(StaticClientConfig),
    Registered(ClientRecord),
}

/// Which grants an operation concerns, as an operator names them; fields combine with AND.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantSelection {
    /// A username.
    pub user: Option<String>,
    pub client: Option<String>,
    pub grant: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantSummary {
    pub id: String,
    pub user_id: Option<String>,
    /// The user's name, while the user exists.
    pub username: Option<String>,
    pub client_id: String,
    pub resource: String,
    pub scopes: Vec<String>,
    pub created_at: Timestamp,
    pub ended_at: Option<Timestamp>,
    pub ended_reason: Option<EndReason>,
}

/// What a live signing key is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Newer than the signing key, waiting for instances to publish it first.
    SignsSoon,
    Signing,
    /// Older than the signing key: published so that what it signed still verifies.
    Verifies,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeySummary {
    pub kid: String,
    pub created_at: Timestamp,
    pub state: KeyState,
    /// The id of the encryption key its private half is sealed with; `None` when it is kept
    /// unencrypted.
    pub sealed_with: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resealed {
    /// How many keys were re-encrypted (those already under the active key are not).
    pub count: u64,
    /// The id of the encryption key every live key is now sealed with.
    pub encryption_key: String,
}

/// The administrative operations. Cheap to clone: a console can make one per operator with
/// [`Admin::acting_as`].
#[derive(Clone)]
pub struct Admin {
    store: SharedStore,
    clock: SharedClock,
    accounts: Arc<LocalAccounts>,
    configured_clients: Arc<[StaticClientConfig]>,
    encryption: Option<Arc<EncryptionKeys>>,
    actor: Arc<str>,
    observer: crate::observe::SharedObserver,
    /// The audit log's file, to read it back.
    audit_file: Option<Arc<std::path::Path>>,
    /// The registration policy of the configuration file.
    configured_policy: Arc<RegistrationPolicy>,
    /// Whether the configuration has initial access tokens (`dcr = token` needs one).
    initial_access_tokens: bool,
}

impl Admin {
    /// `actor` names who acts in the audit log (`cli`, or the operator at the console). Fails
    /// only on encryption keys that `Config::load` would have refused already.
    pub fn new(
        store: SharedStore,
        clock: SharedClock,
        config: &Config,
        actor: &str,
    ) -> Result<Self, AdminError> {
        let encryption = config
            .keys
            .encryption_keys()
            .map_err(|e| AdminError::Invalid(e.to_string()))?
            .map(Arc::new);
        let accounts = LocalAccounts::new(store.clone(), clock.clone(), &config.login);
        Ok(Self {
            store,
            clock,
            accounts: Arc::new(accounts),
            configured_clients: config.clients.clone().into(),
            encryption,
            actor: actor.into(),
            observer: crate::observe::Observer::off(),
            configured_policy: Arc::new(RegistrationPolicy::from_config(&config.registration)),
            initial_access_tokens: !config.registration.initial_access_tokens.is_empty(),
            audit_file: match config.audit.destination() {
                Some(crate::observe::audit::Destination::File(p)) => Some(p.into()),
                _ => None,
            },
        })
    }

    /// The same service, recording its changes in this observer's audit log too.
    pub fn observed_by(self, observer: crate::observe::SharedObserver) -> Self {
        Self { observer, ..self }
    }

    /// The same service, recording `actor` as the one who acts.
    pub fn acting_as(&self, actor: &str) -> Self {
        Self {
            actor: actor.into(),
            ..self.clone()
        }
    }

    pub fn actor(&self) -> &str {
        &self.actor
    }

    fn audit(&self, event: AuditEvent) {
        audit::emit(&self.actor, &event);
        self.observer.record(
            crate::observe::Event::Admin {
                actor: self.actor.to_string(),
                event,
            },
            None,
        );
    }

    async fn user_named(&self, name: &str) -> Result<UserRecord, AdminError> {
        self.store
            .user_by_name(name)
            .await?
            .ok_or_else(|| AdminError::NotFound {
                what: Entity::User,
                name: name.to_string(),
            })
    }

    // ----- users -----

    pub async fn list_users(&self) -> Result<Vec<UserSummary>, AdminError> {
        let users = self.store.list_users().await?;
        Ok(users.into_iter().map(UserSummary::from).collect())
    }

    /// Every user's links to login sources, by user id (one query for a whole list).
    pub async fn all_identities(
        &self,
    ) -> Result<HashMap<String, Vec<(String, String)>>, AdminError> {
        let mut by_user: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for (user, source, subject) in self.store.all_identities().await? {
            by_user.entry(user).or_default().push((source, subject));
        }
        Ok(by_user)
    }

    /// Whether a user signs in through a login source (linked to one, no local password).
    pub async fn user_signs_in_elsewhere(&self, name: &str) -> Result<bool, AdminError> {
        let user = self.user_named(name).await?;
        Ok(user.password_hash.is_empty() && !self.store.identities_of(&user.id).await?.is_empty())
    }

    /// Creates a local account with a profile; returns its id.
    pub async fn create_user(
        &self,
        name: &str,
        password: &str,
        email: Option<&str>,
        groups: &[String],
    ) -> Result<String, AdminError> {
        validate_profile(email, groups).map_err(AdminError::Invalid)?;
        let user = self
            .accounts
            .create(name, password)
            .await
            .map_err(|e| accounts_error(e, name))?;
        let profiled = if email.is_some() || !groups.is_empty() {
            self.store
                .set_profile(&user.id, email, groups)
                .await
                .map(|_| ())
        } else {
            Ok(())
        };
        // The account exists even if its profile could not be set: that is recorded, with
        // the groups it really has.
        let groups = if profiled.is_ok() {
            groups.to_vec()
        } else {
            Vec::new()
        };
        self.audit(AuditEvent::UserCreated {
            user: user.username,
            groups,
        });
        profiled?;
        Ok(user.id)
    }

    /// Sets a user's email and groups (the groups given replace the old ones).
    pub async fn update_user(
        &self,
        name: &str,
        email: Option<&str>,
        groups: &[String],
    ) -> Result<(), AdminError> {
        validate_profile(email, groups).map_err(AdminError::Invalid)?;
        let user = self.user_named(name).await?;
        if !self.store.set_profile(&user.id, email, groups).await? {
            return Err(AdminError::NotFound {
                what: Entity::User,
                name: name.to_string(),
            });
        }
        self.audit(AuditEvent::UserUpdated {
            user: user.username,
            groups: groups.to_vec(),
        });
        Ok(())
    }

    /// Removes a user and everything issued to them (their grants end).
    pub async fn remove_user(&self, name: &str) -> Result<(), AdminError> {
        let user = self.user_named(name).await?;
        if !self.store.delete_user(&user.id, self.clock.now()).await? {
            return Err(AdminError::NotFound {
                what: Entity::User,
                name: name.to_string(),
            });
        }
        self.audit(AuditEvent::UserRemoved {
            user: user.username,
        });
        Ok(())
    }

    /// Sets a user's password: their browser sessions end, and their grants unless
    /// `keep_grants`. Returns how many grants ended.
    pub async fn set_password(
        &self,
        name: &str,
        password: &str,
        keep_grants: bool,
    ) -> Result<u64, AdminError> {
        let n = self
            .accounts
            .set_password(name, password, keep_grants)
            .await
            .map_err(|e| accounts_error(e, name))?;
        self.audit(AuditEvent::PasswordChanged {
            user: name.to_string(),
            grants_ended: n,
        });
        Ok(n)
    }

    /// Stops a user from signing in: their browser sessions end, and their grants unless
    /// `keep_grants`. Returns how many grants ended.
    pub async fn disable_user(&self, name: &str, keep_grants: bool) -> Result<u64, AdminError> {
        let n = self
            .accounts
            .set_disabled(name, true, keep_grants)
            .await
            .map_err(|e| accounts_error(e, name))?;
        self.audit(AuditEvent::UserDisabled {
            user: name.to_string(),
            grants_ended: n,
        });
        Ok(n)
    }

    /// Lets a disabled user sign in again.
    pub async fn enable_user(&self, name: &str) -> Result<(), AdminError> {
        self.accounts
            .set_disabled(name, false, true)
            .await
            .map_err(|e| accounts_error(e, name))?;
        self.audit(AuditEvent::UserEnabled {
            user: name.to_string(),
        });
        Ok(())
    }

    /// Signs a user out of every browser; their grants stay.
    pub async fn end_sessions(&self, name: &str) -> Result<(), AdminError> {
        self.accounts
            .end_sessions(name)
            .await
            .map_err(|e| accounts_error(e, name))?;
        self.audit(AuditEvent::SessionsEnded {
            user: name.to_string(),
        });
        Ok(())
    }

    // ----- the registration policy -----

    /// The policy in force and whether it is the configuration file's (none set at run time).
    pub async fn registration_policy(&self) -> Result<(RegistrationPolicy, bool), AdminError> {
        let stored = self.store.setting(policy::SETTING).await?;
        let configured = stored.is_none();
        Ok((
            policy::read(&self.store, &self.configured_policy).await?,
            configured,
        ))
    }

    /// Puts `new` in force on every instance (within seconds); `None` goes back to the
    /// configuration file's policy.
    pub async fn set_registration_policy(
        &self,
        new: Option<RegistrationPolicy>,
    ) -> Result<RegistrationPolicy, AdminError> {
        let now = self.clock.now();
        let (in_force, configured) = match new {
            Some(p) => {
                let p = p.normalized().map_err(AdminError::Invalid)?;
                if p.dcr == crate::config::DcrMode::Token && !self.initial_access_tokens {
                    return Err(AdminError::Invalid(
                        "registration with a token needs `registration.initial_access_tokens` in the configuration, and none is set".into(),
                    ));
                }
                let json =
                    serde_json::to_string(&p).map_err(|e| AdminError::Invalid(e.to_string()))?;
                self.store
                    .put_setting(policy::SETTING, Some(&json), now)
                    .await?;
                (p, false)
            }
            None => {
                self.store.put_setting(policy::SETTING, None, now).await?;
                ((*self.configured_policy).clone(), true)
            }
        };
        self.audit(AuditEvent::RegistrationPolicyChanged {
            dcr: in_force.dcr.as_str(),
            cimd: in_force.cimd,
            cimd_allowed_domains: in_force.cimd_allowed_domains.clone(),
            cimd_blocked_domains: in_force.cimd_blocked_domains.clone(),
            configured,
        });
        Ok(in_force)
    }

    // ----- the audit log -----

    /// The newest audit records that match, newest first (see [`audit_log::read_recent`]).
    pub async fn audit_records(
        &self,
        filter: audit_log::AuditFilter,
        limit: usize,
    ) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, AdminError> {
        let path = self.audit_file.clone().ok_or(AdminError::NoAuditFile)?;
        tokio::task::spawn_blocking(move || audit_log::read_recent(&path, &filter, limit))
            .await
            .map_err(|e| AdminError::AuditLog(e.to_string()))?
            .map_err(|e| AdminError::AuditLog(e.to_string()))
    }

    // ----- clients -----

    fn configured_client(&self, client_id: &str) -> Option<&StaticClientConfig> {
        self.configured_clients
            .iter()
            .find(|s| s.client_id == client_id)
    }

    /// The configured clients, then the registered ones.
    pub async fn list_clients(&self) -> Result<Vec<ClientSummary>, AdminError> {
        let mut out: Vec<ClientSummary> = self
            .configured_clients
            .iter()
            .map(|s| ClientSummary {
                client_id: s.client_id.clone(),
                source: ClientSource::Configured,
                name: s.client_name.clone(),
                redirect_uris: Vec::new(),
            })
            .collect();
        for r in self.store.list_clients().await? {
            out.push(ClientSummary {
                client_id: r.client_id,
                source: ClientSource::Registered,
                name: r.client_name,
                redirect_uris: r.redirect_uris,
            });
        }
        Ok(out)
    }

    /// One client; a configured one wins over a registered one of the same id.
    pub async fn client(&self, client_id: &str) -> Result<ClientDetails, AdminError> {
        if let Some(s) = self.configured_client(client_id) {
            return Ok(ClientDetails::Configured(s.clone()));
        }
        self.store
            .client(client_id)
            .await?
            .map(ClientDetails::Registered)
            .ok_or_else(|| AdminError::NotFound {
                what: Entity::Client,
                name: client_id.to_string(),
            })
    }

    /// Removes a registered client; its grants and tokens end.
    pub async fn remove_client(&self, client_id: &str) -> Result<(), AdminError> {
        if self.configured_client(client_id).is_some() {
            return Err(AdminError::ConfiguredClient {
                client: client_id.to_string(),
            });
        }
        if !self
            .store
            .delete_client(client_id, self.clock.now())
            .await?
        {
            return Err(AdminError::NotFound {
                what: Entity::Client,
                name: client_id.to_string(),
            });
        }
        self.audit(AuditEvent::ClientRemoved {
            client: client_id.to_string(),
        });
        Ok(())
    }

    /// Blocks a client (registered, CIMD or configured, by its id): refused at `/authorize`
    /// and `/token` from now on, its grants and tokens ended on every instance. `reason` is
    /// recorded with the block.
    pub async fn block_client(&self, client_id: &str, reason: &str) -> Result<(), AdminError> {
        if client_id.is_empty() || client_id.len() > 2048 {
            return Err(AdminError::Invalid(
                "a client id is 1 to 2048 characters".into(),
            ));
        }
        let reason: String = reason
            .chars()
            .filter(|c| !c.is_control())
            .take(500)
            .collect();
        if !self
            .store
            .block_client(client_id, &reason, self.clock.now())
            .await?
        {
            return Err(AdminError::Exists {
                what: Entity::Block,
                name: client_id.to_string(),
            });
        }
        self.audit(AuditEvent::ClientBlocked {
            client: client_id.to_string(),
            reason,
        });
        Ok(())
    }

    pub async fn unblock_client(&self, client_id: &str) -> Result<(), AdminError> {
        if !self.store.unblock_client(client_id).await? {
            return Err(AdminError::NotFound {
                what: Entity::Block,
                name: client_id.to_string(),
            });
        }
        self.audit(AuditEvent::ClientUnblocked {
            client: client_id.to_string(),
        });
        Ok(())
    }

    /// Lets a client be authorized when the policy asks for approval (one waiting, or one
    /// not seen yet: approved ahead).
    pub async fn approve_client(&self, client_id: &str) -> Result<(), AdminError> {
        if client_id.is_empty() || client_id.len() > 2048 {
            return Err(AdminError::Invalid(
                "a client id is 1 to 2048 characters".into(),
            ));
        }
        if !self
            .store
            .approve_client(client_id, self.clock.now())
            .await?
        {
            return Err(AdminError::Invalid(format!(
                "`{}` is approved already",
                crate::observe::audit::bounded(client_id)
            )));
        }
        self.audit(AuditEvent::ClientApproved {
            client: client_id.to_string(),
        });
        Ok(())
    }

    /// Takes a client off the waiting list without approving or blocking it.
    pub async fn dismiss_client(&self, client_id: &str) -> Result<(), AdminError> {
        if !self.store.dismiss_waiting_client(client_id).await? {
            return Err(AdminError::NotFound {
                what: Entity::Client,
                name: format!(
                    "{} waiting for approval",
                    crate::observe::audit::bounded(client_id)
                ),
            });
        }
        self.audit(AuditEvent::ClientDismissed {
            client: client_id.to_string(),
        });
        Ok(())
    }

    /// Clients waiting for approval, then approved ones.
    pub async fn client_approvals(&self) -> Result<Vec<crate::store::ClientApproval>, AdminError> {
        Ok(self.store.client_approvals().await?)
    }

    /// Every blocked client: (client id, when, why).
    pub async fn blocked_clients(&self) -> Result<Vec<(String, Timestamp, String)>, AdminError> {
        Ok(self.store.client_blocks().await?)
    }

    // ----- grants -----

    async fn grant_filter(&self, select: &GrantSelection) -> Result<GrantFilter, AdminError> {
        let user_id = match &select.user {
            Some(name) => Some(self.user_named(name).await?.id),
            None => None,
        };
        Ok(GrantFilter {
            grant_id: select.grant.clone(),
            user_id,
            client_id: select.client.clone(),
        })
    }

    /// The selected grants (with `include_ended`, those that ended too), with their users'
    /// names.
    pub async fn list_grants(
        &self,
        select: &GrantSelection,
        include_ended: bool,
    ) -> Result<Vec<GrantSummary>, AdminError> {
        let filter = self.grant_filter(select).await?;
        let grants = self.store.list_grants(&filter, include_ended).await?;
        // A user usually holds several grants: each name is looked up once.
        let mut names: HashMap<String, Option<String>> = HashMap::new();
        let mut out = Vec::with_capacity(grants.len());
        for g in grants {
            let username = match &g.user_id {
                Some(id) => match names.get(id) {
                    Some(name) => name.clone(),
                    None => {
                        let name = self.store.user_by_id(id).await?.map(|u| u.username);
                        names.insert(id.clone(), name.clone());
                        name
                    }
                },
                None => None,
            };
            out.push(GrantSummary {
                id: g.id,
                user_id: g.user_id,
                username,
                client_id: g.client_id,
                resource: g.resource,
                scopes: g.scopes,
                created_at: g.created_at,
                ended_at: g.revoked_at,
                ended_reason: g.ended_reason,
            });
        }
        Ok(out)
    }

    /// Ends the selected live grants and every token they issued; returns how many ended.
    pub async fn revoke_grants(&self, select: &GrantSelection) -> Result<u64, AdminError> {
        let filter = self.grant_filter(select).await?;
        if filter.is_empty() {
            return Err(AdminError::NoGrantSelected);
        }
        let n = self
            .store
            .revoke_grants(&filter, EndReason::AdminRevoked, self.clock.now())
            .await?;
        self.audit(AuditEvent::GrantsRevoked {
            selection: select.clone(),
            count: n,
        });
        Ok(n)
    }

    // ----- signing keys -----

    /// The live signing keys, the newest first.
    pub async fn list_signing_keys(&self) -> Result<Vec<SigningKeySummary>, AdminError> {
        let keys = self.store.signing_keys().await?;
        let created: Vec<Timestamp> = keys.iter().map(|(_, _, c)| *c).collect();
        let signing = crate::proxy::signing_index(&created, self.clock.now());
        Ok(keys
            .into_iter()
            .enumerate()
            .map(|(i, (kid, stored, created_at))| SigningKeySummary {
                kid,
                created_at,
                state: match i.cmp(&signing) {
                    Ordering::Less => KeyState::SignsSoon,
                    Ordering::Equal => KeyState::Signing,
                    Ordering::Greater => KeyState::Verifies,
                },
                sealed_with: crypto::sealed_with(&stored).map(str::to_string),
            })
            .collect())
    }

    /// Adds a new signing key, sealed under the active encryption key if there is one;
    /// returns its id. Running instances publish it within `KEY_RELOAD_SECS` and sign with it
    /// after `KEY_ACTIVATION_DELAY_SECS`.
    pub async fn rotate_signing_key(&self) -> Result<String, AdminError> {
        let kid = crypto::new_id();
        let pkcs8 = crate::proxy::generate_key().map_err(AdminError::Keys)?;
        let stored = crate::proxy::stored_form(self.encryption.as_deref(), &kid, &pkcs8)
            .map_err(AdminError::Keys)?;
        // Keys are ordered by creation second: a second rotation within the same second
        // must still come out newest.
        let keys = self.store.signing_keys().await?;
        let newest = keys.first().map(|(_, _, c)| *c);
        let now = self.clock.now();
        let created = newest.map_or(now, |n| now.max(n + 1));
        self.store.add_signing_key(&kid, &stored, created).await?;
        self.audit(AuditEvent::SigningKeyRotated { kid: kid.clone() });
        Ok(kid)
    }

    /// Stops publishing a key (never the one that signs, nor the only one) and erases its
    /// private half.
    pub async fn retire_signing_key(&self, kid: &str) -> Result<(), AdminError> {
        let not_found = || AdminError::NotFound {
            what: Entity::SigningKey,
            name: kid.to_string(),
        };
        let keys = self.store.signing_keys().await?;
        if !keys.iter().any(|(k, _, _)| k == kid) {
            return Err(not_found());
        }
        if keys.len() == 1 {
            return Err(AdminError::OnlyLiveKey {
                kid: kid.to_string(),
            });
        }
        let created: Vec<Timestamp> = keys.iter().map(|(_, _, c)| *c).collect();
        let signing = crate::proxy::signing_index(&created, self.clock.now());
        if keys.get(signing).is_some_and(|(k, _, _)| k == kid) {
            return Err(AdminError::KeyStillSigns {
                kid: kid.to_string(),
            });
        }
        if !self.store.retire_signing_key(kid, self.clock.now()).await? {
            return Err(not_found());
        }
        self.audit(AuditEvent::SigningKeyRetired {
            kid: kid.to_string(),
        });
        Ok(())
    }

    /// Re-encrypts every live signing key under the active encryption key, so that older
    /// encryption keys can be removed from the configuration.
    /// The configured encryption keys' ids and the active one's; `None` without keys.
    pub fn encryption_key_ids(&self) -> Option<(Vec<String>, String)> {
        self.encryption.as_deref().map(|k| {
            (
                k.ids().into_iter().map(str::to_string).collect(),
                k.active_id().to_string(),
            )
        })
    }

    pub async fn reseal_signing_keys(&self) -> Result<Resealed, AdminError> {
        let keys = self
            .encryption
            .as_deref()
            .ok_or(AdminError::NoEncryptionKey)?;
        let n = crate::proxy::reseal_signing_keys(&self.store, keys)
            .await
            .map_err(AdminError::Keys)?;
        let done = Resealed {
            count: n as u64,
            encryption_key: keys.active_id().to_string(),
        };
        self.audit(AuditEvent::SigningKeysResealed {
            encryption_key: done.encryption_key.clone(),
            count: done.count,
        });
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_what_is_missing_or_exists() {
        let missing = |what| AdminError::NotFound {
            what,
            name: "x".into(),
        };
        assert_eq!(missing(Entity::User).to_string(), "no user named `x`");
        assert_eq!(missing(Entity::Client).to_string(), "no client `x`");
        assert_eq!(missing(Entity::SigningKey).to_string(), "no live key `x`");
        let exists = AdminError::Exists {
            what: Entity::User,
            name: "x".into(),
        };
        assert_eq!(exists.to_string(), "a user named `x` exists already");
    }

    #[test]
    fn the_accounts_texts_for_missing_and_existing_users_become_kinds() {
        assert!(matches!(
            accounts_error("no user named `carol`".into(), "carol"),
            AdminError::NotFound {
                what: Entity::User,
                ..
            }
        ));
        assert!(matches!(
            accounts_error("a user named `carol` exists already".into(), "carol"),
            AdminError::Exists {
                what: Entity::User,
                ..
            }
        ));
        let other = accounts_error("a password has at least 8 characters".into(), "carol");
        assert!(matches!(other, AdminError::Accounts(_)));
        assert_eq!(other.to_string(), "a password has at least 8 characters");
    }
}
