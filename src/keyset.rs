//! A key set published by someone else (an identity provider, a trusted token issuer),
//! fetched when first needed and again — at most every [`jwt::REFETCH_AFTER_SECS`] — when a
//! token names a key it does not hold: the publisher rotated its keys.

use tokio::sync::{Mutex, RwLock};
use url::Url;

use crate::clock::SharedClock;
use crate::jwt::{self, Alg, Decoded, JwtError, KeySet};
use crate::outbound::Outbound;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Token(#[from] JwtError),
    /// The key set could not be fetched: not the token's fault.
    #[error("the key set could not be fetched: {0}")]
    Unavailable(String),
}

pub struct RemoteKeySet {
    url: Url,
    http: Outbound,
    clock: SharedClock,
    keys: RwLock<Option<KeySet>>,
    /// One fetch at a time; the others wait for it and use what it got. Holds when the
    /// last fetch failed, so that a key set that is down is not asked again at once by
    /// every request that arrives.
    fetching: Mutex<Option<i64>>,
}

/// After a failed fetch, the key set is not asked again for this long.
const RETRY_AFTER_FAILURE_SECS: i64 = 5;

impl std::fmt::Debug for RemoteKeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteKeySet")
            .field("url", &self.url.as_str())
            .finish_non_exhaustive()
    }
}

impl RemoteKeySet {
    pub fn new(url: Url, http: Outbound, clock: SharedClock) -> Self {
        Self {
            url,
            http,
            clock,
            keys: RwLock::new(None),
            fetching: Mutex::new(None),
        }
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    async fn fetch(&self) -> Result<KeySet, KeyError> {
        let answer = self
            .http
            .get_json(&self.url, None)
            .await
            .map_err(|e| KeyError::Unavailable(e.to_string()))?;
        if !answer.ok() {
            return Err(KeyError::Unavailable(format!("HTTP {}", answer.status)));
        }
        let bytes = serde_json::to_vec(&answer.body).map_err(|_| JwtError::KeySet)?;
        let keys = jwt::parse_jwks(&bytes).map_err(|e| KeyError::Unavailable(e.to_string()))?;
        Ok(KeySet::new(keys, self.clock.now()))
    }

    /// Decodes `token` (only `allowed` algorithms) and checks its signature with the
    /// publisher's key, fetching the set first, or again for an unknown key.
    pub async fn verify(&self, token: &str, allowed: &[Alg]) -> Result<Decoded, KeyError> {
        let d = jwt::decode(token, allowed)?;
        let now = self.clock.now();
        let current = self.keys.read().await.clone();
        let set = match current {
            Some(set) if !set.needs_refetch(&d, now) => set,
            stale => {
                let mut failed_at = self.fetching.lock().await;
                // Another caller may have fetched while this one waited.
                let latest = self.keys.read().await.clone();
                let recently_failed = failed_at.is_some_and(|t| now - t < RETRY_AFTER_FAILURE_SECS);
                match latest {
                    Some(set) if !set.needs_refetch(&d, now) => set,
                    Some(set) if recently_failed => set,
                    None if recently_failed => {
                        return Err(KeyError::Unavailable(
                            "the key set could not be fetched a moment ago".into(),
                        ));
                    }
                    _ => match self.fetch().await {
                        Ok(set) => {
                            *failed_at = None;
                            *self.keys.write().await = Some(set.clone());
                            set
                        }
                        // A failed refetch keeps what there was (a token naming an unknown
                        // key is then refused, the others still verify).
                        Err(e) => {
                            *failed_at = Some(now);
                            match latest.or(stale) {
                                Some(set) => set,
                                None => return Err(e),
                            }
                        }
                    },
                }
            }
        };
        let key = set.key_for(&d).ok_or(JwtError::UnknownKey)?;
        d.verify(token, key)?;
        Ok(d)
    }
}
