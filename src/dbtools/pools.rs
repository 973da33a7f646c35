//! Per-person pools: one per grant, opened on first use from the grant's sealed credential,
//! bounded in size, closed when idle, when the grant ends (on any instance), or when the
//! instance's connection budget needs room (least recently used first). Any instance can
//! open one: all it needs is the grant's sealed context in the shared store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::connect::{ConnectError, Connector, Credential, Pool};
use crate::cache::TtlCache;
use crate::clock::SharedClock;
use crate::store::StoreEvent;

/// Pools one database account may hold on an instance (one per grant, so one per MCP
/// client): past it, that account's least recently used pool makes room — one person with
/// many grants cannot push everyone else out of the budget.
pub const POOLS_PER_ACCOUNT: usize = 4;

/// Metadata answers kept per person.
const METADATA_ENTRIES: usize = 256;

/// One person's pool (for one grant), with what their own metadata calls answered.
pub struct UserPool {
    pub pool: Pool,
    /// The database account it is opened as.
    account: String,
    fingerprint: [u8; 32],
    size: u32,
    last_used: AtomicI64,
    /// Database, table and column lists this person saw: never anyone else's.
    pub metadata: TtlCache<Value>,
}

/// Why no pool could be had.
#[derive(Debug)]
pub enum PoolError {
    /// The grant has no credential (it ended, or was not made by this source).
    NoCredential,
    /// The database refused the credential: the grant must end.
    Refused(String),
    Unavailable(String),
}

pub struct PoolSettings {
    pub size: u32,
    pub idle_secs: i64,
    pub budget: u32,
    pub metadata_secs: i64,
    /// How long opening a pool may wait for room in the budget.
    pub wait: std::time::Duration,
}

pub struct UserPools {
    connector: Arc<Connector>,
    settings: PoolSettings,
    clock: SharedClock,
    state: Arc<Mutex<State>>,
    /// Told whenever a closing pool has given its connections back.
    room: Arc<tokio::sync::Notify>,
    /// One build per grant at a time (by stripe of the grant id), so that a burst of first
    /// calls opens one pool, not one each.
    building: Vec<tokio::sync::Mutex<()>>,
    /// Keys the fingerprints: a fingerprint says whether two credentials are the same,
    /// never what they are.
    salt: [u8; 32],
}

/// Grants heard ending are remembered this long, so that a pool whose opening overlapped
/// the end is closed instead of kept.
const ENDED_MEMORY_SECS: i64 = 600;
const ENDED_MAX: usize = 10_000;

#[derive(Default)]
struct State {
    pools: HashMap<String, Arc<UserPool>>,
    /// Connections the open pools, and those being opened, may hold together.
    reserved: u32,
    /// Connections of pools being closed: counted until they are gone.
    closing: u32,
    /// Grants heard ending, with when.
    ended: HashMap<String, i64>,
}

/// A pool's place in the budget while it is being opened: given back if the opening fails
/// or its caller goes away, kept once the pool is in the table.
struct Reservation<'a> {
    pools: &'a UserPools,
    size: u32,
    armed: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.armed
            && let Ok(mut s) = self.pools.state.lock()
        {
            s.reserved = s.reserved.saturating_sub(self.size);
            drop(s);
            self.pools.room.notify_waiters();
        }
    }
}

impl UserPools {
    pub fn new(connector: Arc<Connector>, settings: PoolSettings, clock: SharedClock) -> Arc<Self> {
        Arc::new(Self {
            connector,
            settings,
            clock,
            state: Arc::new(Mutex::new(State::default())),
            room: Arc::new(tokio::sync::Notify::new()),
            building: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
            salt: crate::crypto::random_bytes::<32>(),
        })
    }

    pub fn connector(&self) -> &Connector {
        &self.connector
    }

    /// Closes pools when their grants end (here or on another instance), and every pool
    /// when events may have been missed; and, every second, pools idle too long. Holds
    /// only a weak reference: the pools go when the gateway does.
    pub fn watch(self: &Arc<Self>, store: &crate::store::SharedStore) {
        let weak = Arc::downgrade(self);
        store.on_event(Arc::new(move |event| {
            let Some(pools) = weak.upgrade() else { return };
            match event {
                StoreEvent::GrantEnded(g) => pools.ended(&g.grant),
                StoreEvent::Resync => pools.close_all(),
                _ => {}
            }
        }));
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(pools) = weak.upgrade() else { return };
                pools.close_idle();
            }
        });
    }

    fn fingerprint(&self, who: &Credential) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.salt);
        h.update((who.username.len() as u64).to_be_bytes());
        h.update(who.username.as_bytes());
        h.update(who.password.as_bytes());
        h.finalize().into()
    }

    fn touch(&self, p: &UserPool) {
        p.last_used.store(self.clock.now(), Ordering::Relaxed);
    }

    /// The open pool of `grant`, if this instance has one.
    pub fn get(&self, grant: &str) -> Option<Arc<UserPool>> {
        let p = self.state.lock().ok()?.pools.get(grant).cloned()?;
        // Closed for the budget a moment ago: opened again by the caller.
        if p.pool.is_closed() {
            return None;
        }
        self.touch(&p);
        Some(p)
    }

    /// The pool of `grant`: the open one, or one opened now with the credential `load`
    /// gives (the grant's sealed context). A pool opened with another credential than the
    /// one `load` gives now is replaced.
    pub async fn get_or_open<F, Fut>(
        &self,
        grant: &str,
        load: F,
    ) -> Result<Arc<UserPool>, PoolError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Option<Credential>, PoolError>>,
    {
        if let Some(p) = self.get(grant) {
            return Ok(p);
        }
        let stripe = grant
            .bytes()
            .fold(0usize, |a, b| a.wrapping_mul(31).wrapping_add(b as usize))
            % self.building.len();
        let _building = self.building[stripe].lock().await;
        let who = load().await?.ok_or(PoolError::NoCredential)?;
        let fingerprint = self.fingerprint(&who);
        if let Some(p) = self.get(grant) {
            if p.fingerprint == fingerprint {
                return Ok(p);
            }
            self.close(grant);
        }
        self.cap_account(&who.username);
        let mut reservation = self.reserve().await?;
        let pool = match self.connector.pool(&who, self.settings.size).await {
            Ok(pool) => pool,
            Err(ConnectError::Refused(m)) => return Err(PoolError::Refused(m)),
            Err(ConnectError::Unavailable(m) | ConnectError::TimedOut(m)) => {
                return Err(PoolError::Unavailable(m));
            }
            Err(ConnectError::AcceptsAnyPassword) => {
                return Err(PoolError::Unavailable(
                    "the database does not check passwords".into(),
                ));
            }
        };
        let entry = Arc::new(UserPool {
            pool,
            account: who.username.clone(),
            fingerprint,
            size: self.settings.size,
            last_used: AtomicI64::new(self.clock.now()),
            metadata: TtlCache::new(self.settings.metadata_secs, METADATA_ENTRIES),
        });
        let (replaced, ended) = match self.state.lock() {
            // The grant ended while its pool was being opened: it is not kept.
            Ok(s) if s.ended.contains_key(grant) => (None, true),
            Ok(mut s) => (s.pools.insert(grant.to_string(), entry.clone()), false),
            Err(_) => (None, true),
        };
        if ended {
            // The reservation goes when the pool has closed, like any other.
            reservation.armed = false;
            self.retire(entry);
            return Err(PoolError::NoCredential);
        }
        reservation.armed = false;
        if let Some(old) = replaced {
            self.retire(old);
        }
        Ok(entry)
    }

    /// Closes `account`'s least recently used pools until it may open one more.
    fn cap_account(&self, account: &str) {
        let surplus: Vec<Arc<UserPool>> = match self.state.lock() {
            Ok(mut s) => {
                let mut own: Vec<(String, i64)> = s
                    .pools
                    .iter()
                    .filter(|(_, p)| p.account == account)
                    .map(|(g, p)| (g.clone(), p.last_used.load(Ordering::Relaxed)))
                    .collect();
                own.sort_by_key(|(_, used)| *used);
                let excess = (own.len() + 1).saturating_sub(POOLS_PER_ACCOUNT);
                own.iter()
                    .take(excess)
                    .filter_map(|(g, _)| s.pools.remove(g))
                    .collect()
            }
            Err(_) => Vec::new(),
        };
        for p in surplus {
            tracing::debug!("database pool closed: its account holds the most pools it may");
            self.retire(p);
        }
    }

    /// Makes room for one more pool in the budget, closing the least recently used pools and
    /// waiting (at most `settings.wait`) until their connections are gone.
    async fn reserve(&self) -> Result<Reservation<'_>, PoolError> {
        let size = self.settings.size;
        let deadline = tokio::time::Instant::now() + self.settings.wait;
        loop {
            // Asked for before looking, so that room made meanwhile is not missed.
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut evicted = Vec::new();
            let fits = {
                let mut s = self
                    .state
                    .lock()
                    .map_err(|_| PoolError::Unavailable("the pool table is unusable".into()))?;
                while s.reserved + s.closing + size > self.settings.budget {
                    let Some(oldest) = s
                        .pools
                        .iter()
                        .min_by_key(|(_, p)| p.last_used.load(Ordering::Relaxed))
                        .map(|(g, _)| g.clone())
                    else {
                        break;
                    };
                    if let Some(p) = s.pools.remove(&oldest) {
                        evicted.push(p);
                    }
                    // Counted as closing from now on.
                    if let Some(p) = evicted.last() {
                        s.reserved = s.reserved.saturating_sub(p.size);
                        s.closing += p.size;
                    }
                }
                let fits = s.reserved + s.closing + size <= self.settings.budget;
                if fits {
                    s.reserved += size;
                }
                fits
            };
            for p in evicted {
                tracing::debug!("database pool closed to stay within the connection budget");
                self.close_counted(p);
            }
            if fits {
                return Ok(Reservation {
                    pools: self,
                    size,
                    armed: true,
                });
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(PoolError::Unavailable(
                    "every connection this gateway may open to the database is in use; try again shortly".into(),
                ));
            }
        }
    }

    /// A pool leaving the table: its connections count as closing until they are gone.
    fn retire(&self, p: Arc<UserPool>) {
        if let Ok(mut s) = self.state.lock() {
            s.reserved = s.reserved.saturating_sub(p.size);
            s.closing += p.size;
        }
        self.close_counted(p);
    }

    /// Closes a pool already counted as closing; the count goes down once it is closed.
    fn close_counted(&self, p: Arc<UserPool>) {
        let (state, room) = (self.state.clone(), self.room.clone());
        let done = move |size: u32| {
            if let Ok(mut s) = state.lock() {
                s.closing = s.closing.saturating_sub(size);
            }
            room.notify_waiters();
        };
        match tokio::runtime::Handle::try_current() {
            // Connections in use close as they come back; the caller does not wait.
            Ok(rt) => {
                rt.spawn(async move {
                    p.pool.close().await;
                    done(p.size);
                });
            }
            Err(_) => done(p.size),
        }
    }

    /// A grant ended: its pool closes, and a pool still being opened for it is not kept.
    fn ended(&self, grant: &str) {
        let now = self.clock.now();
        if let Ok(mut s) = self.state.lock() {
            if s.ended.len() >= ENDED_MAX {
                s.ended.retain(|_, at| *at > now - ENDED_MEMORY_SECS);
                if s.ended.len() >= ENDED_MAX {
                    s.ended.clear();
                }
            }
            s.ended.insert(grant.to_string(), now);
        }
        self.close(grant);
    }

    /// Closes the pool of `grant` (its grant ended, or the database refused it).
    pub fn close(&self, grant: &str) {
        let removed = match self.state.lock() {
            Ok(mut s) => s.pools.remove(grant),
            Err(_) => None,
        };
        if let Some(p) = removed {
            self.retire(p);
        }
    }

    pub fn close_all(&self) {
        let all: Vec<_> = match self.state.lock() {
            Ok(mut s) => s.pools.drain().map(|(_, p)| p).collect(),
            Err(_) => Vec::new(),
        };
        for p in all {
            self.retire(p);
        }
    }

    fn close_idle(&self) {
        let before = self.clock.now() - self.settings.idle_secs;
        let idle: Vec<_> = match self.state.lock() {
            Ok(mut s) => {
                let grants: Vec<String> = s
                    .pools
                    .iter()
                    .filter(|(_, p)| p.last_used.load(Ordering::Relaxed) <= before)
                    .map(|(g, _)| g.clone())
                    .collect();
                grants.iter().filter_map(|g| s.pools.remove(g)).collect()
            }
            Err(_) => Vec::new(),
        };
        for p in idle {
            tracing::debug!("idle database pool closed");
            self.retire(p);
        }
    }

    /// Pools open on this instance, and the connections they hold now.
    pub fn stats(&self) -> (usize, u32) {
        match self.state.lock() {
            Ok(s) => (s.pools.len(), s.pools.values().map(|p| p.pool.size()).sum()),
            Err(_) => (0, 0),
        }
    }
}
