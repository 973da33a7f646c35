//! Local accounts: Argon2id password hashes, throttled per account and per client address
//! with counters in the store (so every instance sees the same count), and the same answer
//! for an unknown user as for a wrong password.

use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

use crate::clock::SharedClock;
use crate::config::LoginConfig;
use crate::crypto;
use crate::store::{EndReason, SharedStore, StoreError, UserRecord};

/// Argon2id takes 19 MiB per hash. Without a bound, a burst of logins from many addresses
/// (each under its own throttle) could ask for hundreds of them at once.
pub const CONCURRENT_HASHES: usize = 4;
static HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(CONCURRENT_HASHES);

/// Runs a password hash or check once one of [`CONCURRENT_HASHES`] places is free, on a
/// thread of its own that ends with it: its 19 MiB go back to the system at once instead of
/// staying with a pooled thread. A waiting caller that gives up frees its place; a running
/// hash keeps its place until it ends.
pub async fn off_thread<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let permit = HASHING
        .acquire()
        .await
        .map_err(|_| "password hashing has stopped".to_string())?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("password-hash".into())
        .spawn(move || {
            let _ = tx.send(work());
            drop(permit);
        })
        .map_err(|e| format!("cannot start a thread to hash a password: {e}"))?;
    rx.await
        .map_err(|_| "password hashing ended without an answer".to_string())
}

#[derive(Debug)]
pub enum LoginOutcome {
    Success(UserRecord),
    /// Wrong user or wrong password: deliberately indistinguishable.
    Invalid,
    Throttled {
        retry_after: u64,
    },
}

pub struct LocalAccounts {
    store: SharedStore,
    clock: SharedClock,
    max_per_account: i64,
    max_per_ip: i64,
    window: i64,
}

pub fn validate_username(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("a username has 1 to 64 characters".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
    {
        return Err("a username uses letters, digits and . _ - @ only".into());
    }
    Ok(())
}

/// An email address and group names fit to travel in HTTP headers and tokens.
pub fn validate_profile(email: Option<&str>, groups: &[String]) -> Result<(), String> {
    if let Some(e) = email
        && (e.len() > 254
            || !e.contains('@')
            || e.chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == ','))
    {
        return Err(format!("`{e}` is not an email address"));
    }
    for g in groups {
        validate_username(g)
            .map_err(|_| format!("`{g}`: a group name uses 1 to 64 letters, digits and . _ - @"))?;
    }
    Ok(())
}

fn validate_password(pw: &str) -> Result<(), String> {
    if pw.chars().count() < 8 {
        return Err("a password has at least 8 characters".into());
    }
    if pw.len() > 1024 {
        return Err("a password has at most 1024 bytes".into());
    }
    Ok(())
}

pub fn hash_password(pw: &str) -> Result<String, String> {
    let salt = SaltString::encode_b64(&crypto::random_bytes::<16>()).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(pw.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

fn verify_hash(pw: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| Argon2::default().verify_password(pw.as_bytes(), &h).is_ok())
        .unwrap_or(false)
}

/// A hash to verify against when the user does not exist, so that both cases cost the same.
fn dummy_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| hash_password("not a password of anyone").unwrap_or_default())
}

impl LocalAccounts {
    pub fn new(store: SharedStore, clock: SharedClock, cfg: &LoginConfig) -> Self {
        Self {
            store,
            clock,
            max_per_account: cfg.max_failures_per_account,
            max_per_ip: cfg.max_failures_per_ip,
            window: cfg.throttle_window_secs,
        }
    }

    pub async fn create(&self, username: &str, password: &str) -> Result<UserRecord, String> {
        validate_username(username)?;
        validate_password(password)?;
        let pw = password.to_string();
        let hash = off_thread(move || hash_password(&pw)).await??;
        let user = UserRecord {
            id: crypto::new_id(),
            username: username.to_string(),
            password_hash: hash,
            created_at: self.clock.now(),
            email: None,
            groups: Vec::new(),
            disabled_at: None,
        };
        match self.store.create_user(&user).await {
            Ok(()) => Ok(user),
            Err(StoreError::Conflict) => Err(format!("a user named `{username}` exists already")),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn named(&self, username: &str) -> Result<UserRecord, String> {
        self.store
            .user_by_name(username)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no user named `{username}`"))
    }

    /// Sets a new password. Whoever knew the old one may hold a browser session or grants
    /// made with it: the sessions end, and the grants too unless `keep_grants`. Returns how
    /// many grants were revoked.
    pub async fn set_password(
        &self,
        username: &str,
        password: &str,
        keep_grants: bool,
    ) -> Result<u64, String> {
        validate_password(password)?;
        let user = self.named(username).await?;
        let pw = password.to_string();
        let hash = off_thread(move || hash_password(&pw)).await??;
        self.store
            .set_password(&user.id, &hash)
            .await
            .map_err(|e| e.to_string())?;
        self.end_access(&user, keep_grants, EndReason::PasswordChanged)
            .await
    }

    /// Disables (or enables again) an account. Disabling ends its browser sessions, and its
    /// grants unless `keep_grants`. Returns how many grants were revoked.
    pub async fn set_disabled(
        &self,
        username: &str,
        disabled: bool,
        keep_grants: bool,
    ) -> Result<u64, String> {
        let user = self.named(username).await?;
        let at = disabled.then(|| self.clock.now());
        self.store
            .set_user_disabled(&user.id, at)
            .await
            .map_err(|e| e.to_string())?;
        if disabled {
            self.end_access(&user, keep_grants, EndReason::UserDisabled)
                .await
        } else {
            Ok(0)
        }
    }

    /// Signs a user out of every browser (their grants stay).
    pub async fn end_sessions(&self, username: &str) -> Result<(), String> {
        let user = self.named(username).await?;
        // Grants stay, so the reason is never recorded.
        self.end_access(&user, true, EndReason::AdminRevoked)
            .await
            .map(|_| ())
    }

    async fn end_access(
        &self,
        user: &UserRecord,
        keep_grants: bool,
        reason: EndReason,
    ) -> Result<u64, String> {
        let n = self
            .store
            .end_user_access(&user.id, !keep_grants, reason, self.clock.now())
            .await
            .map_err(|e| e.to_string())?;
        // Recorded in the audit log by the administration service that called.
        Ok(n)
    }

    pub async fn verify(
        &self,
        username: &str,
        password: &str,
        ip: &str,
    ) -> Result<LoginOutcome, StoreError> {
        let now = self.clock.now();
        let window_start = now - now.rem_euclid(self.window);
        let retry_after = (window_start + self.window - now).max(1) as u64;
        let account_key = format!("login:acct:{}", username.to_ascii_lowercase());
        let ip_key = format!("login:ip:{ip}");
        // Every attempt reserves its place in both counts before the password is checked,
        // in one atomic increment each: concurrent attempts cannot all read "under the
        // limit" and then all be checked. What is over the limit is refused unchecked.
        // The address first: an address over its limit must not count against (and so lock)
        // the accounts it names.
        if self.store.hit(&ip_key, window_start).await? > self.max_per_ip {
            return Ok(LoginOutcome::Throttled { retry_after });
        }
        if self.store.hit(&account_key, window_start).await? > self.max_per_account {
            return Ok(LoginOutcome::Throttled { retry_after });
        }
        let user = if validate_username(username).is_ok() && password.len() <= 1024 {
            self.store.user_by_name(username).await?
        } else {
            None
        };
        // A user made by another login source has no password here: checked like an
        // unknown one, at the same cost.
        let hash = user
            .as_ref()
            .map(|u| u.password_hash.clone())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| dummy_hash().to_string());
        let pw = password.to_string();
        let ok = off_thread(move || verify_hash(&pw, &hash))
            .await
            .unwrap_or(false);
        match user {
            // A disabled account answers like a wrong password: nothing is revealed to
            // someone who does not know the password either.
            Some(u) if ok && !u.password_hash.is_empty() && u.disabled_at.is_none() => {
                // A success gives back only its own reservation: failures counted in the
                // meantime, by attempts running beside it, stay counted.
                self.store.unhit(&account_key, window_start).await?;
                self.store.unhit(&ip_key, window_start).await?;
                Ok(LoginOutcome::Success(u))
            }
            _ => Ok(LoginOutcome::Invalid),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn no_more_than_the_bound_hash_at_once() {
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..12)
            .map(|i| {
                let (running, peak) = (running.clone(), peak.clone());
                tokio::spawn(super::off_thread(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(30));
                    running.fetch_sub(1, Ordering::SeqCst);
                    i
                }))
            })
            .collect();
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.expect("task").expect("hash"));
        }
        assert_eq!(answers, (0..12).collect::<Vec<_>>());
        let peak = peak.load(Ordering::SeqCst);
        assert!(peak <= super::CONCURRENT_HASHES, "{peak} at once");
        assert!(peak >= 2, "they did run side by side ({peak})");
    }
}
