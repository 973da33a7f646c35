//! One storage interface; engines behind it. Callers hold an `Arc<dyn Store>` and never know
//! which engine answers. Every transition that must happen once (a code redeemed, a refresh
//! token rotated, a client counted against the cap) is a single atomic operation here, so that
//! several gateway instances on one database cannot both win it.

pub mod copy;
pub mod events;
mod postgres;
mod rows;
mod shared;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

use crate::clock::Timestamp;

pub use events::{EndReason, EventBus, GrantEnded, StoreEvent};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("already exists")]
    Conflict,
    #[error("the client registration limit is reached")]
    ClientLimit,
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store error: {0}")]
    Backend(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Clone)]
pub struct UserRecord {
    pub id: String,
    pub username: String,
    pub password_hash: String,
    pub created_at: Timestamp,
    pub email: Option<String>,
    pub groups: Vec<String>,
    /// When an administrator disabled the account; it cannot sign in while set.
    pub disabled_at: Option<Timestamp>,
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("password_hash", &"<redacted>")
            .finish()
    }
}

// The CSRF token, the client's state and the sealed context stay out of logs.
impl std::fmt::Debug for PendingAuthorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingAuthorization")
            .field("client_id", &self.client_id)
            .field("redirect_uri", &self.redirect_uri)
            .field("resource", &self.resource)
            .field("user_id", &self.user_id)
            .field("grant_id", &self.grant_id)
            .field("login_source", &self.login_source)
            .field(
                "login_context",
                &self.login_context.as_ref().map(|_| "<sealed>"),
            )
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for AuthCodeRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthCodeRecord")
            .field("client_id", &self.client_id)
            .field("user_id", &self.user_id)
            .field("resource", &self.resource)
            .field("consumed_at", &self.consumed_at)
            .field("grant_id", &self.grant_id)
            .field("login_source", &self.login_source)
            .field(
                "login_context",
                &self.login_context.as_ref().map(|_| "<sealed>"),
            )
            .finish_non_exhaustive()
    }
}

/// A signed-in browser at the authorization server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrowserSession {
    pub user_id: String,
    pub login_source: String,
}

/// Most clients kept as waiting for approval: strangers cannot fill the store with them.
pub const MAX_WAITING_CLIENTS: i64 = 1000;
/// A client waiting longer is forgotten (it is listed again if it comes back).
pub const WAITING_CLIENT_TTL_SECS: i64 = 7 * 24 * 3600;

/// A client an administrator approved, or one waiting for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientApproval {
    pub client_id: String,
    pub client_name: Option<String>,
    /// When it first asked to be authorized.
    pub seen_at: Timestamp,
    pub approved_at: Option<Timestamp>,
}

/// A browser session as its owner sees it in the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    /// The hash of the cookie's secret (never the secret).
    pub id_hash: String,
    pub login_source: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// A client registered at the gateway (dynamically); configured and CIMD clients are not
/// stored here.
#[derive(Debug, Clone)]
pub struct ClientRecord {
    pub client_id: String,
    pub secret_hash: Option<String>,
    pub client_name: Option<String>,
    pub redirect_uris: Vec<String>,
    pub token_endpoint_auth_method: String,
    pub grant_types: Vec<String>,
    pub scope: Option<Vec<String>>,
    pub metadata: serde_json::Value,
    pub registered_ip: Option<String>,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
}

/// An authorization request that has been validated and waits for login and consent.
#[derive(Clone)]
pub struct PendingAuthorization {
    /// Hash of the handle carried by the login and consent forms.
    pub id: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub redirect_given: bool,
    pub scopes: Vec<String>,
    pub resource: String,
    pub state: Option<String>,
    pub code_challenge: String,
    pub csrf_token: String,
    pub binding_hash: String,
    pub user_id: Option<String>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    /// The grant this request will create, named from the start so that what the login
    /// source keeps can be sealed to it (absent on requests stored by older versions).
    pub grant_id: Option<String>,
    /// The login source that signed the person in, once one has.
    pub login_source: Option<String>,
    /// What that source keeps for later, sealed to `grant_id` ([`crate::login::context`]).
    pub login_context: Option<Vec<u8>>,
    /// The hash of the `state` a redirecting login source will come back with.
    pub login_state: Option<String>,
    /// What that source needs back on the way in (its PKCE verifier, nonce), sealed to the
    /// request's grant id; used once.
    pub login_leg: Option<Vec<u8>>,
    /// The person approved the client before being sent to a redirecting source.
    pub consented: bool,
}

#[derive(Clone)]
pub struct AuthCodeRecord {
    pub code_hash: String,
    pub client_id: String,
    pub user_id: String,
    pub redirect_uri: String,
    pub redirect_given: bool,
    pub resource: String,
    pub scopes: Vec<String>,
    pub code_challenge: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub consumed_at: Option<Timestamp>,
    /// The grant it creates (named when the request began), or for codes stored by older
    /// versions, the grant it created.
    pub grant_id: Option<String>,
    pub login_source: Option<String>,
    pub login_context: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
pub struct GrantRecord {
    pub id: String,
    pub user_id: Option<String>,
    pub client_id: String,
    pub resource: String,
    pub scopes: Vec<String>,
    pub created_at: Timestamp,
    /// When it ended (whatever the reason; the column keeps its first name).
    pub revoked_at: Option<Timestamp>,
    pub ended_reason: Option<EndReason>,
    /// The login source that signed the person in (`local` for client credentials).
    pub login_source: String,
}

#[derive(Debug, Clone)]
pub struct AccessTokenRecord {
    pub token_hash: String,
    pub grant_id: Option<String>,
    pub client_id: String,
    pub user_id: Option<String>,
    pub resource: String,
    pub scopes: Vec<String>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct RefreshTokenRecord {
    pub token_hash: String,
    pub grant_id: String,
    pub client_id: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub used_at: Option<Timestamp>,
    pub successor_hash: Option<String>,
    pub retry_sealed: Option<Vec<u8>>,
    pub retry_until: Option<Timestamp>,
}

/// What a valid access token stands for, with the user's name resolved.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub token: AccessTokenRecord,
    /// The login source of the token's grant; none for client credentials.
    pub login_source: Option<String>,
    pub username: Option<String>,
    pub email: Option<String>,
    pub groups: Vec<String>,
}

#[derive(Debug)]
pub enum RedeemOutcome {
    Issued,
    /// The code had been redeemed before; the grant it produced (if any) is named so the
    /// caller can revoke it.
    Replayed {
        grant_id: Option<String>,
    },
    /// Unknown or expired.
    Invalid,
}

#[derive(Debug)]
pub enum RotateOutcome {
    Rotated,
    /// Presented again after rotation.
    AlreadyUsed {
        record: RefreshTokenRecord,
        successor_used: bool,
    },
    /// Unknown, expired, or its grant is revoked.
    Invalid,
}

/// Which grants a listing or revocation concerns; fields combine with AND.
#[derive(Debug, Clone, Default)]
pub struct GrantFilter {
    pub grant_id: Option<String>,
    pub user_id: Option<String>,
    pub client_id: Option<String>,
}

impl GrantFilter {
    pub fn is_empty(&self) -> bool {
        self.grant_id.is_none() && self.user_id.is_none() && self.client_id.is_none()
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepCounts {
    pub codes: u64,
    pub access_tokens: u64,
    pub refresh_tokens: u64,
    pub pending: u64,
    pub sessions: u64,
    pub clients: u64,
    pub counters: u64,
    pub mcp_sessions: u64,
    pub events: u64,
    /// Grants ended because nothing live was left of them, or they reached their lifetime.
    pub grants_ended: u64,
}

// The store is split by concern, so that a capability depends only on what it uses; `Store`
// is all of them, for the places (the server's assembly, `store copy`) that need everything.

#[async_trait]
pub trait UserStore: Send + Sync {
    async fn create_user(&self, user: &UserRecord) -> StoreResult<()>;
    async fn user_by_name(&self, username: &str) -> StoreResult<Option<UserRecord>>;
    async fn user_by_id(&self, id: &str) -> StoreResult<Option<UserRecord>>;
    async fn list_users(&self) -> StoreResult<Vec<UserRecord>>;
    async fn set_password(&self, user_id: &str, password_hash: &str) -> StoreResult<bool>;
    async fn set_profile(
        &self,
        user_id: &str,
        email: Option<&str>,
        groups: &[String],
    ) -> StoreResult<bool>;
    /// Deletes the user and everything issued to them; their grants end (`UserRemoved`).
    async fn delete_user(&self, user_id: &str, now: Timestamp) -> StoreResult<bool>;
    /// Ends what a user's past sign-ins hold, in one transaction: their browser sessions,
    /// unfinished authorization requests and unused codes, and with `revoke_grants` their
    /// grants (for `reason`). Returns how many grants ended.
    async fn end_user_access(
        &self,
        user_id: &str,
        revoke_grants: bool,
        reason: EndReason,
        now: Timestamp,
    ) -> StoreResult<u64>;
    async fn set_user_disabled(
        &self,
        user_id: &str,
        disabled_at: Option<Timestamp>,
    ) -> StoreResult<bool>;
    async fn count_users(&self) -> StoreResult<i64>;
    /// The (source, subject) pairs a user is linked to; none for a local account.
    async fn identities_of(&self, user_id: &str) -> StoreResult<Vec<(String, String)>>;
    /// Every link: (user id, source, subject).
    async fn all_identities(&self) -> StoreResult<Vec<(String, String, String)>>;
    /// The user a login source's subject is linked to.
    async fn user_by_identity(
        &self,
        source: &str,
        subject: &str,
    ) -> StoreResult<Option<UserRecord>>;
    /// Creates a user (without a password: `password_hash` empty) linked to a source's
    /// subject, in one transaction; `Conflict` if the username or the identity exists.
    async fn create_user_with_identity(
        &self,
        user: &UserRecord,
        source: &str,
        subject: &str,
    ) -> StoreResult<()>;
}

#[async_trait]
pub trait ClientStore: Send + Sync {
    /// Inserts a dynamically registered client unless `max_clients` are already stored.
    async fn register_client(&self, client: &ClientRecord, max_clients: i64) -> StoreResult<()>;
    async fn client(&self, client_id: &str) -> StoreResult<Option<ClientRecord>>;
    async fn list_clients(&self) -> StoreResult<Vec<ClientRecord>>;
    /// Deletes a client with its codes and consents; its grants end (`ClientRemoved`).
    async fn delete_client(&self, client_id: &str, now: Timestamp) -> StoreResult<bool>;
    async fn touch_client(&self, client_id: &str, now: Timestamp) -> StoreResult<()>;
    /// Blocks a client (any kind, by id): its codes, requests and tokens go, its grants end
    /// (`ClientBlocked`), and every instance forgets it; `false` when it was blocked already.
    async fn block_client(
        &self,
        client_id: &str,
        reason: &str,
        now: Timestamp,
    ) -> StoreResult<bool>;
    /// `false` when it was not blocked.
    async fn unblock_client(&self, client_id: &str) -> StoreResult<bool>;
    /// When and why a client was blocked, if it is.
    async fn client_block(&self, client_id: &str) -> StoreResult<Option<(Timestamp, String)>>;
    /// Every blocked client: (client id, when, why).
    async fn client_blocks(&self) -> StoreResult<Vec<(String, Timestamp, String)>>;
    /// When `client_id` was approved. A client not approved is kept as waiting (with its
    /// name) unless [`MAX_WAITING_CLIENTS`] wait already.
    async fn client_approval(
        &self,
        client_id: &str,
        client_name: Option<&str>,
        now: Timestamp,
    ) -> StoreResult<Option<Timestamp>>;
    /// Forgets a waiting client (it is listed again if it comes back); `false` when it was
    /// not waiting.
    async fn dismiss_waiting_client(&self, client_id: &str) -> StoreResult<bool>;
    /// Approves a client (waiting or not seen yet); `false` when it was approved already.
    async fn approve_client(&self, client_id: &str, now: Timestamp) -> StoreResult<bool>;
    /// Waiting and approved clients, waiting first, newest first.
    async fn client_approvals(&self) -> StoreResult<Vec<ClientApproval>>;
    /// A setting changed at run time (JSON), by name; `None`: the configuration's applies.
    async fn setting(&self, name: &str) -> StoreResult<Option<String>>;
    /// Sets it, or with `None` removes it (the configuration's applies again).
    async fn put_setting(&self, name: &str, value: Option<&str>, now: Timestamp)
    -> StoreResult<()>;
}

/// Authorization requests in flight and the codes they end in.
#[async_trait]
pub trait AuthorizationStore: Send + Sync {
    async fn put_pending(&self, p: &PendingAuthorization) -> StoreResult<()>;
    async fn pending(&self, id: &str, now: Timestamp) -> StoreResult<Option<PendingAuthorization>>;
    /// Records who signed in, through which source, and what it keeps (sealed).
    async fn set_pending_login(
        &self,
        id: &str,
        user_id: &str,
        login_source: &str,
        login_context: Option<&[u8]>,
    ) -> StoreResult<()>;
    /// Whether it was still there: a request is finished once, by whoever deletes it.
    async fn delete_pending(&self, id: &str) -> StoreResult<bool>;
    /// Notes the hash of the `state` a redirecting login source will come back with.
    /// The person approved the client and leaves for a redirecting source: the request is
    /// marked consented, with the hash of the `state` it will come back with and the sealed
    /// secrets of the source's leg.
    async fn set_pending_login_state(
        &self,
        id: &str,
        state_hash: &str,
        leg: Option<&[u8]>,
    ) -> StoreResult<()>;
    /// The live request a redirecting login source came back for.
    async fn pending_by_login_state(
        &self,
        state_hash: &str,
        now: Timestamp,
    ) -> StoreResult<Option<PendingAuthorization>>;
    /// Gives the request a new handle (its id is the handle's hash) and forgets its login
    /// state, so the state works once; false when someone else did it first.
    async fn rekey_pending(&self, id: &str, state_hash: &str, new_id: &str) -> StoreResult<bool>;
    async fn insert_code(&self, code: &AuthCodeRecord) -> StoreResult<()>;
    async fn code(&self, code_hash: &str) -> StoreResult<Option<AuthCodeRecord>>;
}

/// Grants and the tokens they issue. Every end of a grant happens here, atomically, and is
/// published as one [`GrantEnded`].
#[async_trait]
pub trait GrantStore: Send + Sync {
    /// An identity assertion exchanged: its id (a hash of issuer and `jti`) is recorded
    /// until it expires, and the grant and its access token are created, in one
    /// transaction; false, with nothing written, when the assertion was used already.
    async fn grant_from_assertion(
        &self,
        assertion_id: &str,
        assertion_expires_at: Timestamp,
        grant: &GrantRecord,
        access: &AccessTokenRecord,
    ) -> StoreResult<bool>;
    /// Atomically: mark the code used (only if unused and unexpired), create the grant and its
    /// first tokens, and link the code to the grant.
    async fn redeem_code(
        &self,
        code_hash: &str,
        now: Timestamp,
        grant: &GrantRecord,
        access: &AccessTokenRecord,
        refresh: Option<&RefreshTokenRecord>,
    ) -> StoreResult<RedeemOutcome>;
    async fn insert_access_token(&self, token: &AccessTokenRecord) -> StoreResult<()>;
    async fn access_token(
        &self,
        token_hash: &str,
        now: Timestamp,
    ) -> StoreResult<Option<TokenInfo>>;
    async fn refresh_token(
        &self,
        token_hash: &str,
        now: Timestamp,
    ) -> StoreResult<Option<RefreshTokenRecord>>;
    /// A live (unexpired) refresh token and its grant, in one read: the refresh hot path.
    async fn refresh_token_and_grant(
        &self,
        token_hash: &str,
        now: Timestamp,
    ) -> StoreResult<Option<(RefreshTokenRecord, Option<GrantRecord>)>>;
    /// Atomically: consume `old_hash` (only if unused, unexpired and its grant live), store
    /// its successors and the sealed retry answer.
    async fn rotate_refresh(
        &self,
        old_hash: &str,
        now: Timestamp,
        access: &AccessTokenRecord,
        refresh: &RefreshTokenRecord,
        retry_sealed: &[u8],
        retry_until: Timestamp,
    ) -> StoreResult<RotateOutcome>;
    async fn revoke_access_token(&self, token_hash: &str, now: Timestamp) -> StoreResult<bool>;
    /// Replaces the sealed login context of a live grant (a provider's rotated refresh
    /// token) if it is still `was`; false when the grant has ended or another renewal
    /// replaced it meanwhile.
    async fn set_login_context(
        &self,
        grant_id: &str,
        sealed: &[u8],
        was: &[u8],
    ) -> StoreResult<bool>;
    /// A live grant's login source and sealed login context, if it has one.
    async fn login_context(&self, grant_id: &str) -> StoreResult<Option<(String, Vec<u8>)>>;
    async fn grant(&self, grant_id: &str) -> StoreResult<Option<GrantRecord>>;
    /// When each of a person's grants last had an access token issued (its first, or a
    /// refresh), while those tokens are kept: (grant id, time).
    async fn last_tokens(&self, user_id: &str) -> StoreResult<Vec<(String, Timestamp)>>;
    async fn list_grants(
        &self,
        filter: &GrantFilter,
        include_revoked: bool,
    ) -> StoreResult<Vec<GrantRecord>>;
    /// Ends the matching live grants for `reason`: deletes every token they issued and the
    /// matching remembered consents. Returns how many grants ended.
    async fn revoke_grants(
        &self,
        filter: &GrantFilter,
        reason: EndReason,
        now: Timestamp,
    ) -> StoreResult<u64>;
    /// What this process hears of ended grants and revoked tokens: its own, and once
    /// `hear_other_instances` was called, every other instance's on the same store.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<StoreEvent>;
    /// Like `subscribe`, but `listener` is called as each event is published, before the
    /// call that ended the grant returns: for caches.
    fn on_event(&self, listener: events::Listener);
    /// Starts (once) hearing what other instances and processes end: PostgreSQL's `LISTEN`,
    /// or a poll of SQLite's events table. A serving gateway calls it; the CLI does not.
    fn hear_other_instances(&self);
}

#[async_trait]
pub trait ConsentStore: Send + Sync {
    async fn has_consent(
        &self,
        user_id: &str,
        client_id: &str,
        redirect_uri: &str,
        resource: &str,
        scopes: &[String],
    ) -> StoreResult<bool>;
    async fn put_consent(
        &self,
        user_id: &str,
        client_id: &str,
        redirect_uri: &str,
        resource: &str,
        scopes: &[String],
        now: Timestamp,
    ) -> StoreResult<()>;
}

/// Browser sessions at the authorization server.
#[async_trait]
pub trait BrowserSessionStore: Send + Sync {
    async fn put_session(
        &self,
        id_hash: &str,
        session: &BrowserSession,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> StoreResult<()>;
    async fn session(&self, id_hash: &str, now: Timestamp) -> StoreResult<Option<BrowserSession>>;
    async fn delete_session(&self, id_hash: &str) -> StoreResult<()>;
    /// A person's live browser sessions, newest first.
    async fn sessions_of(&self, user_id: &str, now: Timestamp) -> StoreResult<Vec<SessionSummary>>;
    /// Ends one of `user_id`'s sessions; `false` when it is not theirs (or gone).
    async fn delete_session_of(&self, user_id: &str, id_hash: &str) -> StoreResult<bool>;
}

/// MCP sessions bound to their owners.
#[async_trait]
pub trait McpSessionStore: Send + Sync {
    /// Binds a session id (hashed) of an upstream to its owner; an existing binding is kept
    /// (its owner never changes).
    async fn bind_session(
        &self,
        upstream: &str,
        session_hash: &str,
        owner: &str,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> StoreResult<()>;
    /// The owner of a live session, extending its life to `expires_at`.
    async fn session_owner(
        &self,
        upstream: &str,
        session_hash: &str,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> StoreResult<Option<String>>;
    async fn unbind_session(&self, upstream: &str, session_hash: &str) -> StoreResult<()>;
}

/// Signing keys.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Live (not retired) signing keys, newest first: (kid, private key as stored — PKCS#8,
    /// or an envelope of it under an encryption key —, created_at).
    async fn signing_keys(&self) -> StoreResult<Vec<(String, Vec<u8>, Timestamp)>>;
    /// Adds a key that becomes the active one (the newest live key signs).
    async fn add_signing_key(&self, kid: &str, pkcs8: &[u8], now: Timestamp) -> StoreResult<()>;
    /// Retires a key: it is no longer published, so what it signed stops verifying; its
    /// private half is erased.
    async fn retire_signing_key(&self, kid: &str, now: Timestamp) -> StoreResult<bool>;
    /// Replaces a live key's stored private half (re-sealed under another encryption key) if
    /// it still is `current`; false when it changed meanwhile or the key is gone.
    async fn reseal_signing_key(&self, kid: &str, current: &[u8], new: &[u8]) -> StoreResult<bool>;
    /// Adds a key unless one is live already (several instances starting at once keep one).
    async fn add_signing_key_if_none(
        &self,
        kid: &str,
        pkcs8: &[u8],
        now: Timestamp,
    ) -> StoreResult<()>;
}

/// An RFC 8628 device authorization: what a device client asked for, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAuthorization {
    pub device_code_hash: String,
    /// Eight letters, without the dash it is shown with.
    pub user_code: String,
    pub client_id: String,
    pub scopes: Vec<String>,
    pub resource: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    /// Seconds the client must wait between polls (raised by `slow_down`).
    pub interval: i64,
    pub polled_at: Option<Timestamp>,
    pub status: DeviceStatus,
    /// Who approved or denied it.
    pub user_id: Option<String>,
    /// The authorization code stored on approval, which the next poll redeems.
    pub code_hash: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStatus {
    Pending,
    Approved,
    Denied,
}

impl DeviceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "approved" => Some(Self::Approved),
            "denied" => Some(Self::Denied),
            _ => None,
        }
    }
}

/// Device authorizations (RFC 8628).
#[async_trait]
pub trait DeviceStore: Send + Sync {
    /// Stores a new one; `false` when its user code is taken by a live one (draw another).
    async fn insert_device(&self, d: &DeviceAuthorization) -> StoreResult<bool>;
    async fn device(&self, device_code_hash: &str) -> StoreResult<Option<DeviceAuthorization>>;
    /// A pending, unexpired authorization by its user code.
    async fn pending_device(
        &self,
        user_code: &str,
        now: Timestamp,
    ) -> StoreResult<Option<DeviceAuthorization>>;
    /// Approves a pending, unexpired one for `user_id` and stores `code` with it, in one
    /// transaction; `false` when it was no longer pending (decided, expired, gone).
    async fn approve_device(
        &self,
        user_code: &str,
        now: Timestamp,
        code: &AuthCodeRecord,
    ) -> StoreResult<bool>;
    /// Denies a pending, unexpired one; `false` when it was no longer pending.
    async fn deny_device(
        &self,
        user_code: &str,
        now: Timestamp,
        user_id: &str,
    ) -> StoreResult<bool>;
    /// Records a poll at `now`, with the interval the client must keep from now on.
    async fn device_polled(
        &self,
        device_code_hash: &str,
        now: Timestamp,
        interval: i64,
    ) -> StoreResult<()>;
}

/// Counters for throttling, shared by every instance on the same store.
#[async_trait]
pub trait ThrottleStore: Send + Sync {
    /// Adds one to `key` in the window starting at `window_start`; returns the new count.
    async fn hit(&self, key: &str, window_start: Timestamp) -> StoreResult<i64>;
    async fn hits(&self, key: &str, window_start: Timestamp) -> StoreResult<i64>;
    async fn clear_hits(&self, key: &str) -> StoreResult<()>;
    /// Gives back one hit of the window (a reserved attempt that succeeded); never below 0.
    async fn unhit(&self, key: &str, window_start: Timestamp) -> StoreResult<()>;
}

/// The gateway's registration as an OAuth client at an upstream's authorization server.
#[derive(Clone)]
pub struct UpstreamClientRecord {
    pub upstream: String,
    pub issuer: String,
    pub client_id: String,
    /// Sealed under the encryption keys, when the server gave one.
    pub client_secret: Option<Vec<u8>>,
    /// `dcr`, `cimd` or `configured`.
    pub method: String,
    /// A fingerprint of the upstream's URL and OAuth settings when it was made.
    pub settings: String,
    pub registered_at: Timestamp,
}

// The secret is sealed, but a sealed secret is still nobody's business in a log.
impl std::fmt::Debug for UpstreamClientRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClientRecord")
            .field("upstream", &self.upstream)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

/// One person's tokens at an upstream (the vault): the token set is sealed to the row's
/// identity; what is plain here is what the connections page and the CLI show.
#[derive(Clone)]
pub struct UpstreamTokenRecord {
    /// The person, or `*` for an upstream's one shared slot.
    pub user_id: String,
    pub upstream: String,
    pub issuer: String,
    pub sealed: Vec<u8>,
    /// `connected`, or `broken` (refused by the upstream and not renewable: reconnect).
    pub status: String,
    pub scope: String,
    /// When the access token expires, if the server said.
    pub expires_at: Option<Timestamp>,
    /// The upstream's settings fingerprint when it was made.
    pub settings: String,
    pub connected_at: Timestamp,
    pub updated_at: Timestamp,
}

impl std::fmt::Debug for UpstreamTokenRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTokenRecord")
            .field("user_id", &self.user_id)
            .field("upstream", &self.upstream)
            .field("issuer", &self.issuer)
            .field("status", &self.status)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A connect flow under way, found by the hash of its `state`.
#[derive(Clone)]
pub struct UpstreamConnectRecord {
    pub state_hash: String,
    pub user_id: String,
    /// The hash of the browser session that confirmed it: the way back must bring it.
    pub session_hash: String,
    pub upstream: String,
    pub issuer: String,
    /// The PKCE verifier and what the token request needs, sealed.
    pub sealed: Vec<u8>,
    /// The upstream's settings fingerprint when it began.
    pub settings: String,
    pub expires_at: Timestamp,
}

/// What the gateway keeps as an OAuth client of upstreams.
#[async_trait]
pub trait BrokerStore: Send + Sync {
    async fn upstream_client(
        &self,
        upstream: &str,
        issuer: &str,
    ) -> StoreResult<Option<UpstreamClientRecord>>;
    /// Stores a registration, replacing the one for the same upstream and issuer.
    async fn put_upstream_client(&self, record: &UpstreamClientRecord) -> StoreResult<()>;
    /// Forgets an upstream's registrations made under other settings than `settings`;
    /// returns how many.
    async fn purge_upstream_clients(&self, upstream: &str, settings: &str) -> StoreResult<u64>;

    async fn upstream_token(
        &self,
        user_id: &str,
        upstream: &str,
    ) -> StoreResult<Option<UpstreamTokenRecord>>;
    /// Stores a token set, replacing the row of the same user and upstream (and its lease).
    async fn put_upstream_token(&self, record: &UpstreamTokenRecord) -> StoreResult<()>;
    /// Replaces an existing row's token set (a refresh), freeing its lease; false when the row
    /// is gone (disconnected or removed meanwhile), which it does not bring back.
    async fn update_upstream_token(&self, record: &UpstreamTokenRecord) -> StoreResult<bool>;
    /// Marks a row `connected` or `broken`; false when there is none.
    async fn set_upstream_token_status(
        &self,
        user_id: &str,
        upstream: &str,
        status: &str,
        now: Timestamp,
    ) -> StoreResult<bool>;
    async fn delete_upstream_token(&self, user_id: &str, upstream: &str) -> StoreResult<bool>;
    /// One person's rows, or everyone's.
    async fn upstream_tokens(&self, user_id: Option<&str>)
    -> StoreResult<Vec<UpstreamTokenRecord>>;
    /// Forgets an upstream's tokens and connect flows made under other settings.
    async fn purge_upstream_tokens(&self, upstream: &str, settings: &str) -> StoreResult<u64>;
    /// Takes the row's refresh lease until `until` when nobody holds it at `now`: true when
    /// taken. Held across instances; released by [`Self::put_upstream_token`] or
    /// [`Self::release_upstream_token`], or by time.
    async fn lease_upstream_token(
        &self,
        user_id: &str,
        upstream: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> StoreResult<bool>;
    async fn release_upstream_token(&self, user_id: &str, upstream: &str) -> StoreResult<()>;
    /// Stores a connect flow; a person has at most five under way per upstream (the oldest go).
    async fn put_upstream_connect(&self, record: &UpstreamConnectRecord) -> StoreResult<()>;
    /// Removes and returns the connect flow of `state_hash` if it has not expired: once.
    async fn take_upstream_connect(
        &self,
        state_hash: &str,
        now: Timestamp,
    ) -> StoreResult<Option<UpstreamConnectRecord>>;
}

/// Whole tables (`store copy`) and the periodic sweep.
#[async_trait]
pub trait MaintenanceStore: Send + Sync {
    /// Every table with its columns, as the database reports them.
    async fn schema(&self) -> StoreResult<Vec<(String, Vec<String>)>>;
    /// The cheapest round trip to the database (readiness).
    async fn ping(&self) -> StoreResult<()>;
    async fn count_rows(&self, table: &copy::Table) -> StoreResult<i64>;
    async fn export_rows(&self, table: &copy::Table) -> StoreResult<Vec<copy::Row>>;
    /// Inserts the rows in one transaction: all of them or none.
    async fn import_rows(&self, data: &[(&copy::Table, Vec<copy::Row>)]) -> StoreResult<()>;
    /// Deletes what has expired and dynamically registered clients unused since before
    /// `unused_client_cutoff`; ends grants with nothing live left (`Expired`) and, with
    /// `grants_born_before`, those created then or earlier (`MaxLifetime`).
    async fn sweep(
        &self,
        now: Timestamp,
        unused_client_cutoff: Timestamp,
        grants_born_before: Option<Timestamp>,
    ) -> StoreResult<SweepCounts>;
}

pub trait Store:
    UserStore
    + ClientStore
    + AuthorizationStore
    + GrantStore
    + ConsentStore
    + BrowserSessionStore
    + McpSessionStore
    + KeyStore
    + ThrottleStore
    + BrokerStore
    + DeviceStore
    + MaintenanceStore
    + 'static
{
}

impl<T> Store for T where
    T: UserStore
        + ClientStore
        + AuthorizationStore
        + GrantStore
        + ConsentStore
        + BrowserSessionStore
        + McpSessionStore
        + KeyStore
        + ThrottleStore
        + BrokerStore
        + DeviceStore
        + MaintenanceStore
        + 'static
{
}

pub type SharedStore = Arc<dyn Store>;

/// Connection pool settings (`[store]` in the configuration).
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Connections per instance; `None` for the engine's default (SQLite 8, PostgreSQL 16).
    pub max_connections: Option<u32>,
    /// How long a request waits for a connection before it is answered 503 (PostgreSQL; SQLite
    /// waits at least 10 s for its file lock).
    pub acquire_timeout_ms: u64,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: None,
            acquire_timeout_ms: 3000,
        }
    }
}

/// Opens the engine the URL names, creating and migrating it as needed.
pub async fn open(url: &str) -> StoreResult<SharedStore> {
    open_with(url, &PoolSettings::default()).await
}

/// [`open`] with pool settings.
pub async fn open_with(url: &str, pool: &PoolSettings) -> StoreResult<SharedStore> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url, pool).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresStore::open(url, pool).await?))
    } else {
        Err(StoreError::Backend(format!(
            "unsupported store URL scheme in `{}`",
            url.split(':').next().unwrap_or("")
        )))
    }
}

pub(crate) fn join_scopes(scopes: &[String]) -> String {
    scopes.join(" ")
}

pub(crate) fn split_scopes(s: &str) -> Vec<String> {
    s.split(' ')
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

/// Consent is remembered per set of scopes; order does not matter.
pub(crate) fn canonical_scopes(scopes: &[String]) -> String {
    let mut v: Vec<&str> = scopes.iter().map(String::as_str).collect();
    v.sort_unstable();
    v.dedup();
    v.join(" ")
}
