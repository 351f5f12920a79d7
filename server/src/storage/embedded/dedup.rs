//! The in-memory dedup window of the embedded store: 64-bit fingerprints of
//! (site, event id) for every event whose timestamp is recent enough that ingest
//! could still accept it again, grouped by day so old days drop in one step.
//!
//! About ten bytes of memory per event in the window, and no disk read or index
//! write per event. A fingerprint collision (two different ids with the same 64
//! bits) would turn a new event into a duplicate; with n events in the window
//! its chance per event is n / 2^64, about 5e-13 at 10 million.

use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Micros per day.
pub const DAY_MICROS: i64 = 86_400_000_000;

/// Fingerprints are already uniformly distributed: hash them as they are.
#[derive(Default)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type FingerprintSet = HashSet<u64, BuildHasherDefault<IdentityHasher>>;

/// The fingerprint of an event id within a site.
pub fn fingerprint(site_num: u32, id: &[u8; 16]) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    hasher.write_u32(site_num);
    hasher.write(id);
    hasher.finish()
}

/// Fingerprints of recent events, by the UTC day of their timestamp.
pub struct DedupWindow {
    window_days: i64,
    days: BTreeMap<i64, FingerprintSet>,
}

impl DedupWindow {
    /// An empty window that remembers events of the last `window_days` days.
    pub fn new(window_days: i64) -> Self {
        Self {
            window_days,
            days: BTreeMap::new(),
        }
    }

    /// First day still remembered at `now_micros`.
    pub fn first_day(&self, now_micros: i64) -> i64 {
        now_micros.div_euclid(DAY_MICROS) - self.window_days
    }

    /// True when an event with this fingerprint and timestamp was seen.
    pub fn contains(&self, fingerprint: u64) -> bool {
        self.days.values().any(|set| set.contains(&fingerprint))
    }

    /// Remembers an event.
    pub fn insert(&mut self, fingerprint: u64, ts_micros: i64) {
        self.days
            .entry(ts_micros.div_euclid(DAY_MICROS))
            .or_default()
            .insert(fingerprint);
    }

    /// Forgets days that ingest can no longer accept events for.
    pub fn prune(&mut self, now_micros: i64) {
        let first = self.first_day(now_micros);
        // Called on every group commit: only rebuild the map when a day has expired.
        if self.days.first_key_value().is_some_and(|(day, _)| *day < first) {
            self.days = self.days.split_off(&first);
        }
    }

    /// Number of fingerprints held.
    pub fn len(&self) -> usize {
        self.days.values().map(HashSet::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_within_the_window_and_forgets_after() {
        let now = 100 * DAY_MICROS + 5;
        let mut window = DedupWindow::new(3);
        window.insert(1, now);
        window.insert(2, now - 3 * DAY_MICROS);
        window.insert(3, now - 4 * DAY_MICROS);
        window.prune(now);
        assert!(window.contains(1) && window.contains(2));
        assert!(!window.contains(3), "older than the window");
        assert_eq!(window.len(), 2);
    }

    #[test]
    fn fingerprints_differ_by_site_and_id() {
        let id = [7u8; 16];
        assert_ne!(fingerprint(1, &id), fingerprint(2, &id));
        assert_ne!(fingerprint(1, &id), fingerprint(1, &[8u8; 16]));
        assert_eq!(fingerprint(1, &id), fingerprint(1, &id));
    }
}
