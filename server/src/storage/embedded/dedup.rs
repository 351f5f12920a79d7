//! The in-memory dedup window of the embedded store: 64-bit fingerprints of
//! (site, event id) for every event whose timestamp is recent enough that ingest
//! could still accept it again, each with the UTC day of its timestamp so that
//! old days can be forgotten.
//!
//! Most fingerprints sit in one sorted array of `u64`s, eight bytes per event:
//! the top 16 bits of a fingerprint pick one of 65,536 buckets (a directory of
//! bucket starts), and each entry keeps the other 48 bits and the day. A
//! look-up starts in its bucket (about 150 entries at 10 million events) where
//! the fingerprint's low bits say it should be, and walks from there. New
//! fingerprints go to a small hash table first, which is merged into the
//! array, in place, once it holds a thirty-second of it. No disk read or
//! index write per event.
//!
//! A fingerprint collision (two different ids with the same 64 bits) would
//! turn a new event into a duplicate; with n events in the window its chance
//! per event is n / 2^64, about 5e-13 at 10 million.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Micros per day.
pub const DAY_MICROS: i64 = 86_400_000_000;

/// Buckets of the sorted array: the fingerprints' top 16 bits.
const BUCKETS: usize = 1 << 16;
/// Low 48 bits of a fingerprint.
const LOW48: u64 = (1 << 48) - 1;
/// The hash table of new fingerprints is merged into the sorted array once it
/// holds this many, or a thirty-second of the array if that is more.
const MIN_FRESH: usize = 1 << 16;
/// Fingerprints loaded at start-up are merged in runs of this many.
const LOAD_RUN: usize = 1 << 20;

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

/// The fingerprint of an event id within a site.
pub fn fingerprint(site_num: u32, id: &[u8; 16]) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    hasher.write_u32(site_num);
    hasher.write(id);
    hasher.finish()
}

/// The UTC day of a timestamp, as days since 1970 (clamped to `u16`, which
/// reaches 2149).
fn day_of(ts_micros: i64) -> u16 {
    ts_micros.div_euclid(DAY_MICROS).clamp(0, i64::from(u16::MAX)) as u16
}

/// An entry of the sorted array: the fingerprint's low 48 bits, then the day.
fn pack(fingerprint: u64, day: u16) -> u64 {
    (fingerprint << 16) | u64::from(day)
}

fn day_of_entry(entry: u64) -> u16 {
    entry as u16
}

/// Steps [`first_not_below`] takes from its guess before it falls back to a
/// binary search.
const SCAN_STEPS: usize = 8;

/// The index of the first entry of a bucket that is not below `key`
/// (`partition_point`).
///
/// Fingerprints are uniform, so an entry's rank in its bucket is close to its
/// low 48 bits' share of their range: the search starts there and walks a few
/// entries, one or two cache lines, where a binary search would touch about
/// six. A bucket whose entries are not spread evenly gets the binary search.
fn first_not_below(entries: &[u64], key: u64) -> usize {
    let guess = ((u128::from(key >> 16) * entries.len() as u128) >> 48) as usize;
    let (mut lo, mut hi) = (0, entries.len());
    if entries.get(guess).is_some_and(|e| *e < key) {
        lo = guess + 1;
        for _ in 0..SCAN_STEPS {
            match entries.get(lo) {
                Some(e) if *e < key => lo += 1,
                _ => return lo,
            }
        }
    } else {
        hi = guess.min(entries.len());
        for _ in 0..SCAN_STEPS {
            if hi == 0 || entries[hi - 1] < key {
                return hi;
            }
            hi -= 1;
        }
    }
    lo + entries[lo..hi].partition_point(|e| *e < key)
}

/// Fingerprints of recent events, with the day of their timestamp.
pub struct DedupWindow {
    window_days: i64,
    /// Entries ([`pack`]) sorted by (fingerprint, day), bucket by bucket.
    sorted: Vec<u64>,
    /// Bucket `b` is `sorted[starts[b]..starts[b + 1]]`.
    starts: Vec<u32>,
    /// Fingerprints not yet merged into `sorted`, with their day.
    fresh: HashMap<u64, u16, BuildHasherDefault<IdentityHasher>>,
    /// Fingerprints read at start-up, not yet merged (see [`Self::load`]).
    loading: Vec<(u64, u16)>,
    /// The oldest day held, so that [`Self::prune`] knows when it has work.
    oldest: u16,
}

impl DedupWindow {
    /// An empty window that remembers events of the last `window_days` days.
    pub fn new(window_days: i64) -> Self {
        Self {
            window_days,
            sorted: Vec::new(),
            starts: vec![0; BUCKETS + 1],
            fresh: HashMap::default(),
            loading: Vec::new(),
            oldest: u16::MAX,
        }
    }

    /// First day still remembered at `now_micros`.
    pub fn first_day(&self, now_micros: i64) -> i64 {
        now_micros.div_euclid(DAY_MICROS) - self.window_days
    }

    /// True when an event with this fingerprint was seen.
    pub fn contains(&self, fingerprint: u64) -> bool {
        if self.fresh.contains_key(&fingerprint) {
            return true;
        }
        let bucket = (fingerprint >> 48) as usize;
        let entries = &self.sorted[self.starts[bucket] as usize..self.starts[bucket + 1] as usize];
        let at = first_not_below(entries, pack(fingerprint, 0));
        entries.get(at).is_some_and(|e| e >> 16 == fingerprint & LOW48)
    }

    /// Remembers an event.
    pub fn insert(&mut self, fingerprint: u64, ts_micros: i64) {
        let day = day_of(ts_micros);
        self.oldest = self.oldest.min(day);
        let held = self.fresh.entry(fingerprint).or_insert(day);
        *held = (*held).max(day);
        if self.fresh.len() >= MIN_FRESH.max(self.sorted.len() / 32) {
            let fresh: Vec<(u64, u16)> = self.fresh.drain().collect();
            self.merge(fresh);
        }
    }

    /// Remembers an event read back at start-up: like [`Self::insert`], but
    /// [`Self::contains`] only sees it after [`Self::finish_loading`].
    pub fn load(&mut self, fingerprint: u64, ts_micros: i64) {
        let day = day_of(ts_micros);
        self.oldest = self.oldest.min(day);
        self.loading.push((fingerprint, day));
        if self.loading.len() >= LOAD_RUN {
            let run = std::mem::take(&mut self.loading);
            self.merge(run);
        }
    }

    /// Merges what [`Self::load`] read.
    pub fn finish_loading(&mut self) {
        let run = std::mem::take(&mut self.loading);
        self.merge(run);
    }

    /// Merges `new` into the sorted array, in place, from the back.
    fn merge(&mut self, mut new: Vec<(u64, u16)>) {
        if new.is_empty() {
            return;
        }
        // Per fingerprint, the latest day first; then one entry per fingerprint.
        new.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        new.dedup_by_key(|(fp, _)| *fp);
        let old_len = self.sorted.len();
        self.sorted.reserve_exact(new.len());
        self.sorted.resize(old_len + new.len(), 0);
        let (mut i, mut j, mut k) = (old_len, new.len(), old_len + new.len());
        // The bucket of the old entry `i - 1`.
        let mut bucket = BUCKETS - 1;
        while j > 0 {
            let (fp, day) = new[j - 1];
            let new_is_greater = i == 0 || {
                while self.starts[bucket] as usize >= i {
                    bucket -= 1;
                }
                let entry = self.sorted[i - 1];
                (fp, day) > (((bucket as u64) << 48) | (entry >> 16), day_of_entry(entry))
            };
            k -= 1;
            if new_is_greater {
                self.sorted[k] = pack(fp, day);
                j -= 1;
            } else {
                self.sorted[k] = self.sorted[i - 1];
                i -= 1;
            }
        }
        let mut counts = vec![0u32; BUCKETS];
        for (fp, _) in &new {
            counts[(fp >> 48) as usize] += 1;
        }
        let mut before = 0;
        for (start, count) in self.starts.iter_mut().zip(&counts) {
            *start += before;
            before += count;
        }
        self.starts[BUCKETS] += before;
    }

    /// Forgets days that ingest can no longer accept events for.
    pub fn prune(&mut self, now_micros: i64) {
        let first = self.first_day(now_micros);
        // Called on every group commit: only rewrite when a day has expired.
        if i64::from(self.oldest) >= first || self.len() == 0 {
            return;
        }
        let keep = |day: u16| i64::from(day) >= first;
        self.fresh.retain(|_, day| keep(*day));
        self.loading.retain(|(_, day)| keep(*day));
        let mut oldest = u16::MAX;
        for day in self.fresh.values().chain(self.loading.iter().map(|(_, d)| d)) {
            oldest = oldest.min(*day);
        }
        let (mut read, mut write) = (0, 0);
        for bucket in 0..BUCKETS {
            let end = self.starts[bucket + 1] as usize;
            self.starts[bucket] = write as u32;
            while read < end {
                let entry = self.sorted[read];
                if keep(day_of_entry(entry)) {
                    oldest = oldest.min(day_of_entry(entry));
                    self.sorted[write] = entry;
                    write += 1;
                }
                read += 1;
            }
        }
        self.starts[BUCKETS] = write as u32;
        self.sorted.truncate(write);
        self.sorted.shrink_to_fit();
        self.oldest = oldest;
    }

    /// Number of fingerprints held.
    pub fn len(&self) -> usize {
        self.sorted.len() + self.fresh.len() + self.loading.len()
    }

    /// Bytes of memory held (arrays and tables at their capacity).
    pub fn heap_bytes(&self) -> usize {
        self.sorted.capacity() * 8
            + self.starts.capacity() * 4
            + self.fresh.capacity() * 17
            + self.loading.capacity() * 16
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

    /// A small deterministic generator (splitmix64).
    fn ids(seed: u64, n: usize) -> Vec<u64> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^ (z >> 31)
            })
            .collect()
    }

    #[test]
    fn agrees_with_a_hash_set_through_merges_loads_and_prunes() {
        let now = 200 * DAY_MICROS;
        let mut window = DedupWindow::new(10);
        let mut model: HashMap<u64, i64> = HashMap::new();
        // Start-up: loaded in several runs, fingerprints sharing buckets and
        // the extremes of the range, some loaded twice on different days.
        let mut loaded = ids(1, 3 * LOAD_RUN / 2);
        loaded.extend([0, 1, u64::MAX, u64::MAX - 1, 1 << 48, (1 << 48) - 1]);
        for (n, fp) in loaded.iter().enumerate() {
            let day = 185 + (n % 15) as i64;
            window.load(*fp, day * DAY_MICROS + 7);
            let held = model.entry(*fp).or_insert(day);
            *held = (*held).max(day);
        }
        for fp in loaded.iter().step_by(97) {
            window.load(*fp, 199 * DAY_MICROS);
            model.insert(*fp, 199);
        }
        window.finish_loading();
        // Ingest: enough to merge the hash table several times.
        for (n, fp) in ids(2, 300_000).into_iter().enumerate() {
            let day = 190 + (n % 10) as i64;
            assert!(!window.contains(fp) || model.contains_key(&fp));
            window.insert(fp, day * DAY_MICROS);
            let held = model.entry(fp).or_insert(day);
            *held = (*held).max(day);
        }
        let check = |window: &DedupWindow, model: &HashMap<u64, i64>| {
            for fp in model.keys() {
                assert!(window.contains(*fp), "holds {fp:#x}");
            }
            let absent = ids(3, 100_000);
            assert!(
                absent
                    .iter()
                    .all(|fp| model.contains_key(fp) || !window.contains(*fp))
            );
            assert!(
                window.len() >= model.len(),
                "{} held, {} expected",
                window.len(),
                model.len()
            );
        };
        check(&window, &model);
        // Two days expire.
        window.prune(now + 2 * DAY_MICROS);
        model.retain(|_, day| *day >= 192);
        check(&window, &model);
        let forgotten = loaded.iter().filter(|fp| !model.contains_key(fp)).count();
        assert!(forgotten > 100_000, "{forgotten} forgotten");
        assert!(
            loaded
                .iter()
                .filter(|fp| !model.contains_key(fp))
                .all(|fp| !window.contains(*fp))
        );
        // Everything expires.
        window.prune(now + 100 * DAY_MICROS);
        assert_eq!(window.len(), 0);
        assert!(loaded.iter().all(|fp| !window.contains(*fp)));
    }

    #[test]
    fn the_guessed_search_finds_what_a_binary_search_finds() {
        // Even buckets, a bucket of clustered entries (the guess is far off)
        // and equal fingerprints on several days.
        let even: Vec<u64> = ids(5, 2_000).into_iter().map(|fp| pack(fp, 3)).collect();
        let clustered: Vec<u64> = (0..2_000u64).map(|n| pack(n * 3, (n % 4) as u16)).collect();
        for mut entries in [even, clustered] {
            entries.sort_unstable();
            let probes = entries
                .iter()
                .flat_map(|e| [*e, e.saturating_sub(1), e + 1, e & !0xffff])
                .chain([0, u64::MAX, 1 << 63]);
            for len in [0, 1, 2, 9, 17, 500, entries.len()] {
                let entries = &entries[..len];
                for key in probes.clone() {
                    assert_eq!(
                        first_not_below(entries, key),
                        entries.partition_point(|e| *e < key),
                        "key {key:#x} in {len} entries"
                    );
                }
            }
        }
    }

    #[test]
    fn holds_about_eight_bytes_per_fingerprint() {
        let mut window = DedupWindow::new(30);
        for fp in ids(4, 2 * LOAD_RUN) {
            window.load(fp, 1000 * DAY_MICROS);
        }
        window.finish_loading();
        let per = window.heap_bytes() as f64 / window.len() as f64;
        assert!(per < 8.2, "{per:.2} bytes per fingerprint");
    }
}
