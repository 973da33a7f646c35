//! A small time-bounded map for per-instance caches of store reads.
//!
//! Entries are trusted for `ttl` seconds at most and the map holds at most `max` of them
//! (when full, expired ones go first, then everything), so memory is bounded whatever the
//! traffic. Revocations empty the caches that could hold what was revoked.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct TtlCache<V> {
    entries: Mutex<HashMap<String, (V, i64)>>,
    ttl: i64,
    max: usize,
    /// Counts removals: a value read from the store before a removal must not be put in
    /// after it (the read may predate what the removal was for).
    generation: AtomicU64,
    stats: std::sync::Arc<crate::observe::metrics::CacheStats>,
}

impl<V: Clone> TtlCache<V> {
    pub fn new(ttl: i64, max: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            ttl,
            max,
            generation: AtomicU64::new(0),
            stats: Default::default(),
        }
    }

    /// Its hits and misses, for the metrics.
    pub fn stats(&self) -> std::sync::Arc<crate::observe::metrics::CacheStats> {
        self.stats.clone()
    }

    /// Read before reading the store; pass to [`Self::put_unless_removed_since`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Puts a value read from the store, unless something was removed from the cache since
    /// `generation` was read (the value may be what was removed).
    pub fn put_unless_removed_since(&self, generation: u64, key: String, value: V, now: i64) {
        if let Ok(mut m) = self.entries.lock() {
            if self.generation.load(Ordering::SeqCst) != generation {
                return;
            }
            Self::insert(&mut m, self.ttl, self.max, key, value, now);
        }
    }

    fn insert(
        m: &mut HashMap<String, (V, i64)>,
        ttl: i64,
        max: usize,
        key: String,
        value: V,
        now: i64,
    ) {
        if m.len() >= max {
            m.retain(|_, (_, at)| now < *at + ttl);
            if m.len() >= max {
                m.clear();
            }
        }
        m.insert(key, (value, now));
    }

    pub fn get(&self, key: &str, now: i64) -> Option<V> {
        let found = self.entries.lock().ok().and_then(|m| {
            let (value, cached_at) = m.get(key)?;
            (now < cached_at + self.ttl).then(|| value.clone())
        });
        match found {
            Some(_) => self.stats.hit(),
            None => self.stats.miss(),
        }
        found
    }

    pub fn put(&self, key: String, value: V, now: i64) {
        if let Ok(mut m) = self.entries.lock() {
            Self::insert(&mut m, self.ttl, self.max, key, value, now);
        }
    }

    pub fn remove(&self, key: &str) {
        if let Ok(mut m) = self.entries.lock() {
            self.generation.fetch_add(1, Ordering::SeqCst);
            m.remove(key);
        }
    }

    /// Removes every entry whose value matches.
    pub fn remove_where(&self, mut matches: impl FnMut(&V) -> bool) {
        if let Ok(mut m) = self.entries.lock() {
            self.generation.fetch_add(1, Ordering::SeqCst);
            m.retain(|_, (v, _)| !matches(v));
        }
    }

    pub fn clear(&self) {
        if let Ok(mut m) = self.entries.lock() {
            self.generation.fetch_add(1, Ordering::SeqCst);
            m.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TtlCache;

    #[test]
    fn entries_expire_and_the_size_is_bounded() {
        let c = TtlCache::new(5, 2);
        c.put("a".into(), 1, 100);
        assert_eq!(c.get("a", 104), Some(1));
        assert_eq!(c.get("a", 105), None);
        c.put("b".into(), 2, 200);
        c.put("c".into(), 3, 200);
        // Full: "a" has expired and goes, the others stay.
        c.put("d".into(), 4, 201);
        assert_eq!(c.get("a", 201), None);
        assert_eq!(c.get("d", 201), Some(4));
        c.remove("d");
        assert_eq!(c.get("d", 201), None);
        c.clear();
        assert_eq!(c.get("b", 201), None);
    }

    #[test]
    fn a_read_from_before_a_removal_is_not_put_after_it() {
        let c = TtlCache::new(5, 10);
        let before = c.generation();
        c.remove("t");
        c.put_unless_removed_since(before, "t".into(), 1, 100);
        assert_eq!(c.get("t", 100), None);
        let now = c.generation();
        c.put_unless_removed_since(now, "t".into(), 1, 100);
        assert_eq!(c.get("t", 100), Some(1));
    }
}
