//! Login sources: the ways a person can prove who they are. Local accounts are one; identity
//! providers (the browser goes there and comes back to a callback) and databases (a username
//! and password checked against another system) plug in through the same interface.
//!
//! A source answers with an [`Authenticated`]: who the person is *at that source* (a stable
//! subject), and what it must keep for later (a database password, a provider's refresh
//! token), which the authorization server seals to the grant being created
//! ([`super::context`]). Turning a subject into a gateway user is not the source's business:
//! [`LoginSources::resolve`] does it, through the `identities` table and the first sign-in
//! policy.

use std::sync::Arc;

use async_trait::async_trait;

use crate::clock::SharedClock;
use crate::crypto;
use crate::store::{SharedStore, StoreError, UserRecord};

/// The name local accounts sign in under.
pub const LOCAL: &str = "local";

/// How a source takes the person's proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// The gateway's own form: a username and a password, checked by the source.
    Password,
    /// The browser is sent to the source and comes back to `<public_url>/login/<name>/callback`.
    Redirect,
}

/// What a source established about the person at the browser.
pub struct Authenticated {
    /// Stable at the source, never reassigned (not an e-mail address, which can change
    /// hands). For local accounts, the user's id.
    pub subject: String,
    /// The name a new gateway user gets (first sign-in); the source's preferred username.
    pub username: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
    /// What the source must have again later, sealed to the grant; never stored in clear.
    pub keep: Option<Vec<u8>>,
}

// `keep` may be a password: never print it.
impl std::fmt::Debug for Authenticated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticated")
            .field("subject", &self.subject)
            .field("username", &self.username)
            .field("keep", &self.keep.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Where a redirecting source sends the browser, and what it needs back when the browser
/// returns (a PKCE verifier, a nonce): the authorization server seals that to the request
/// and hands it to [`LoginSource::finish`] once.
pub struct Departure {
    pub url: String,
    pub leg: Vec<u8>,
}

// The leg holds the PKCE verifier: never print it.
impl std::fmt::Debug for Departure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Departure")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// What a source says when what it kept for a grant is used again (a client refreshing the
/// grant's tokens).
pub enum Renewal {
    /// Nothing to renew, or nothing changed.
    Unchanged,
    /// The kept value was renewed (a provider's refresh token rotated): seal this instead.
    Renewed(Vec<u8>),
    /// The source no longer accepts the person (the provider answered `invalid_grant`:
    /// account disabled, session revoked): the grant ends.
    Refused(String),
    /// The source cannot answer now; the grant goes on.
    Unavailable(String),
}

impl std::fmt::Debug for Renewal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unchanged => f.write_str("Unchanged"),
            Self::Renewed(_) => f.write_str("Renewed(<redacted>)"),
            Self::Refused(why) => f.debug_tuple("Refused").field(why).finish(),
            Self::Unavailable(why) => f.debug_tuple("Unavailable").field(why).finish(),
        }
    }
}

/// The answer to one sign-in attempt.
#[derive(Debug)]
pub enum Attempt {
    Success(Authenticated),
    /// Wrong user or wrong password: deliberately indistinguishable.
    Invalid,
    /// The source (or its allow-list) refused this person; the text tells them why and
    /// what to do, and names nothing secret.
    Refused(String),
    Throttled {
        retry_after: u64,
    },
    /// The system behind the source cannot answer now (a database down): not the person's
    /// fault, and not counted against them.
    Unavailable(String),
}

#[async_trait]
pub trait LoginSource: Send + Sync {
    /// The source's name: in URLs, in the store (identities, grants), in logs.
    fn name(&self) -> &str;
    /// What the sign-in page calls it.
    fn label(&self) -> &str;
    fn kind(&self) -> SourceKind;
    /// Whether it keeps something for later, so that the store needs encryption keys and a
    /// browser session alone (which carries nothing sealed) cannot stand in for a sign-in.
    fn keeps_context(&self) -> bool {
        false
    }
    /// What the sign-in page says when [`Attempt::Unavailable`] came back.
    fn unavailable_text(&self) -> String {
        "Signing in this way is unavailable right now. Try again shortly.".into()
    }
    /// A `Password` source checks a username and password; `ip` is for throttling.
    async fn check_password(
        &self,
        _username: &str,
        _password: &str,
        _ip: &str,
    ) -> Result<Attempt, StoreError> {
        Ok(Attempt::Unavailable(format!(
            "`{}` does not take a password here",
            self.name()
        )))
    }
    /// A `Redirect` source: where to send the browser for the request whose callback
    /// `state` is given, and what the source needs back on the way in.
    async fn start(&self, _state: &str, _callback: &str) -> Result<Departure, String> {
        Err(format!("`{}` does not redirect", self.name()))
    }
    /// A `Redirect` source: the person is back at the callback with these parameters;
    /// `leg` is what [`Self::start`] gave for this request.
    async fn finish(
        &self,
        _params: &[(String, String)],
        _callback: &str,
        _leg: &[u8],
    ) -> Result<Attempt, StoreError> {
        Ok(Attempt::Unavailable(format!(
            "`{}` does not redirect",
            self.name()
        )))
    }
    /// What the source kept for a grant (`kept`), when the client refreshes the grant's
    /// tokens or an upstream needs it: a provider session is checked and its tokens renewed
    /// here, when due by the source's own measure or when `force`d.
    async fn renew(&self, _kept: &[u8], _force: bool) -> Renewal {
        Renewal::Unchanged
    }
}

/// Who may become a gateway user by signing in through a source other than local accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FirstSignIn {
    /// Anyone the source accepts gets a user (named after the source's username, with the
    /// source's name appended if that name is taken).
    #[default]
    Create,
    /// Only identities already linked to a user may sign in.
    Refuse,
}

/// Why a person the source accepted still cannot sign in.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("this account is not allowed to sign in here")]
    NotLinked,
    #[error("this account is disabled")]
    Disabled,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The enabled login sources, in the order the sign-in page lists them.
#[derive(Clone)]
pub struct LoginSources {
    sources: Vec<Arc<dyn LoginSource>>,
    store: SharedStore,
    clock: SharedClock,
    first_sign_in: FirstSignIn,
}

impl LoginSources {
    pub fn new(store: SharedStore, clock: SharedClock, first_sign_in: FirstSignIn) -> Self {
        Self {
            sources: Vec::new(),
            store,
            clock,
            first_sign_in,
        }
    }

    /// Adds a source; names are unique (a later one with a taken name is refused) and plain
    /// (they go into paths, usernames and sealed contexts' associated data).
    pub fn add(&mut self, source: Arc<dyn LoginSource>) -> Result<(), String> {
        let name = source.name();
        if name.is_empty()
            || name.len() > 32
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "login source `{name}`: a name has 1 to 32 of a-z, 0-9, - and _"
            ));
        }
        // `local` is the gateway's own accounts, whose subjects are user ids: no other
        // source may answer under that name.
        if name == LOCAL && source.kind() != SourceKind::Password {
            return Err(format!(
                "login source `{LOCAL}` is the gateway's own accounts"
            ));
        }
        if self.get(source.name()).is_some() {
            return Err(format!("two login sources are named `{}`", source.name()));
        }
        self.sources.push(source);
        Ok(())
    }

    pub fn all(&self) -> &[Arc<dyn LoginSource>] {
        &self.sources
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn LoginSource>> {
        self.sources.iter().find(|s| s.name() == name)
    }

    /// The first source that needs sealing keys: one that keeps a login context, or one
    /// that redirects (its leg's secrets are sealed to the request).
    pub fn needing_keys(&self) -> Option<&str> {
        self.sources
            .iter()
            .find(|s| s.keeps_context() || s.kind() == SourceKind::Redirect)
            .map(|s| s.name())
    }

    /// The gateway user a source's subject stands for: local accounts are users already;
    /// any other source's subject is looked up in `identities`, and on a first sign-in a
    /// user without a password is created for it (per the policy).
    pub async fn resolve(
        &self,
        source: &str,
        who: &Authenticated,
    ) -> Result<UserRecord, ResolveError> {
        let user = if source == LOCAL {
            self.store.user_by_id(&who.subject).await?
        } else {
            self.store.user_by_identity(source, &who.subject).await?
        };
        let user = match user {
            Some(u) => u,
            None if source == LOCAL || self.first_sign_in == FirstSignIn::Refuse => {
                return Err(ResolveError::NotLinked);
            }
            None => self.create_for(source, who).await?,
        };
        if user.disabled_at.is_some() {
            return Err(ResolveError::Disabled);
        }
        Ok(user)
    }

    async fn create_for(
        &self,
        source: &str,
        who: &Authenticated,
    ) -> Result<UserRecord, ResolveError> {
        let subject_tag = &crypto::hash_secret(&who.subject)[..8];
        let base = if super::validate_username(&who.username).is_ok() {
            who.username.clone()
        } else {
            format!("user-{subject_tag}")
        };
        // Always under the source's name: a name of its own choosing must never become a
        // local user's (one removed, or one that tool rules name before it exists). When two
        // subjects of the source share a name, the second is told apart by its subject.
        let candidates = [
            format!("{base}.{source}"),
            format!("{base}.{source}.{subject_tag}"),
        ];
        // What the source says is checked like what an administrator types: a group name
        // with a space would otherwise read back as two groups.
        let email = who
            .email
            .clone()
            .filter(|e| super::validate_profile(Some(e), &[]).is_ok());
        let groups: Vec<String> = who
            .groups
            .iter()
            .filter(|g| super::validate_profile(None, std::slice::from_ref(g)).is_ok())
            .cloned()
            .collect();
        for name in candidates
            .iter()
            .filter(|n| super::validate_username(n).is_ok())
        {
            let user = UserRecord {
                id: crypto::new_id(),
                username: name.clone(),
                password_hash: String::new(),
                created_at: self.clock.now(),
                email: email.clone(),
                groups: groups.clone(),
                disabled_at: None,
            };
            match self
                .store
                .create_user_with_identity(&user, source, &who.subject)
                .await
            {
                Ok(()) => {
                    crate::admin::audit::emit(
                        &format!("login:{source}"),
                        &crate::admin::audit::AuditEvent::UserCreated {
                            user: user.username.clone(),
                            groups: user.groups.clone(),
                        },
                    );
                    return Ok(user);
                }
                Err(StoreError::Conflict) => {
                    // The same person signing in twice at once: the other attempt linked it.
                    if let Some(u) = self.store.user_by_identity(source, &who.subject).await? {
                        return Ok(u);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ResolveError::NotLinked)
    }
}

/// Local accounts as a login source.
pub struct LocalSource {
    accounts: super::LocalAccounts,
}

impl LocalSource {
    pub fn new(accounts: super::LocalAccounts) -> Self {
        Self { accounts }
    }
}

#[async_trait]
impl LoginSource for LocalSource {
    fn name(&self) -> &str {
        LOCAL
    }

    fn label(&self) -> &str {
        "Account on this server"
    }

    fn kind(&self) -> SourceKind {
        SourceKind::Password
    }

    async fn check_password(
        &self,
        username: &str,
        password: &str,
        ip: &str,
    ) -> Result<Attempt, StoreError> {
        Ok(match self.accounts.verify(username, password, ip).await? {
            super::LoginOutcome::Success(u) => Attempt::Success(Authenticated {
                subject: u.id,
                username: u.username,
                email: u.email,
                groups: u.groups,
                keep: None,
            }),
            super::LoginOutcome::Invalid => Attempt::Invalid,
            super::LoginOutcome::Throttled { retry_after } => Attempt::Throttled { retry_after },
        })
    }
}
