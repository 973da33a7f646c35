//! A small time-bounded map for per-instance caches of store reads.
//!
//! Entries are trusted for `ttl` seconds at most and the map holds at most `max` of them
//! (when full, expired ones go first, then everything), so memory is bounded whatever the
//! traffic. Revocations empty the caches that could hold what was revoked.

use std::collections::HashMap;
use std::sync::Mutex;

pub struct TtlCache<V> {
    entries: Mutex<HashMap<String, (V, i64)>>,
    ttl: i64,
    max: usize,
}

impl<V: Clone> TtlCache<V> {
    pub fn new(ttl: i64, max: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            ttl,
            max,
        }
    }

    pub fn get(&self, key: &str, now: i64) -> Option<V> {
        let m = self.entries.lock().ok()?;
        let (value, cached_at) = m.get(key)?;
        (now < cached_at + self.ttl).then(|| value.clone())
    }

    pub fn put(&self, key: String, value: V, now: i64) {
        if let Ok(mut m) = self.entries.lock() {
            if m.len() >= self.max {
                let ttl = self.ttl;
                m.retain(|_, (_, at)| now < *at + ttl);
                if m.len() >= self.max {
                    m.clear();
                }
            }
            m.insert(key, (value, now));
        }
    }

    pub fn remove(&self, key: &str) {
        if let Ok(mut m) = self.entries.lock() {
            m.remove(key);
        }
    }

    /// Removes every entry whose value matches.
    pub fn remove_where(&self, mut matches: impl FnMut(&V) -> bool) {
        if let Ok(mut m) = self.entries.lock() {
            m.retain(|_, (v, _)| !matches(v));
        }
    }

    pub fn clear(&self) {
        if let Ok(mut m) = self.entries.lock() {
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
}
