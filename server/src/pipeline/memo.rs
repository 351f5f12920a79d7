//! A bounded, concurrent memo of per-user-agent results, so repeated user
//! agents (most traffic) cost one hash lookup instead of a regex run.

use std::sync::Arc;

use quick_cache::UnitWeighter;
use quick_cache::sync::{Cache, DefaultLifecycle};

/// A fast hash, randomly seeded per process (a user agent is attacker-chosen,
/// so the seed matters; a cryptographic hash would not).
type Hasher = foldhash::fast::RandomState;

/// Memoises `compute(key)` for up to `capacity` keys (least recently used go first).
pub struct Memo<V> {
    cache: Cache<Box<str>, Arc<V>, UnitWeighter, Hasher>,
}

impl<V> Memo<V> {
    /// A memo holding at most `capacity` results.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            cache: Cache::with(
                capacity,
                capacity as u64,
                UnitWeighter,
                Hasher::default(),
                DefaultLifecycle::default(),
            ),
        }
    }

    /// The memoised value for `key`, computed on a miss.
    pub fn get_or(&self, key: &str, compute: impl FnOnce(&str) -> V) -> Arc<V> {
        if let Some(hit) = self.cache.get(key) {
            return hit;
        }
        let value = Arc::new(compute(key));
        self.cache.insert(key.into(), value.clone());
        value
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn computes_once_per_key() {
        let memo = Memo::new(16);
        let calls = AtomicUsize::new(0);
        let len = |ua: &str| {
            calls.fetch_add(1, Ordering::Relaxed);
            ua.len()
        };
        assert_eq!(*memo.get_or("abc", len), 3);
        assert_eq!(*memo.get_or("abc", len), 3);
        assert_eq!(*memo.get_or("abcd", len), 4);
        assert_eq!(calls.load(Ordering::Relaxed), 2);
    }
}
