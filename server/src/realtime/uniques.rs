//! Distinct visitor counts with bounded memory: an exact set while small,
//! then a HyperLogLog sketch.
//!
//! This is the shape of Redis's own HyperLogLog (a sparse form that turns
//! dense past a size), so the in-memory and the later Redis backend give the
//! same kind of answer: exact for small counts, about 1.6 % standard error
//! (precision 12, 4 KiB of registers) beyond [`EXACT_LIMIT`] visitors.

use std::collections::HashSet;

/// Visitors kept exactly before the set turns into a sketch. At 512 ids the
/// set takes about as much memory as the 4 KiB sketch that replaces it.
pub const EXACT_LIMIT: usize = 512;

/// Bits of the hash that pick a register.
const PRECISION: u32 = 12;
const REGISTERS: usize = 1 << PRECISION;

/// A set of visitor ids that can be counted and merged.
#[derive(Clone, Debug)]
pub enum Uniques {
    /// Every id, while there are at most [`EXACT_LIMIT`].
    Exact(HashSet<u64, foldhash::fast::RandomState>),
    /// A HyperLogLog sketch: per register, the highest rank seen.
    Sketch(Box<[u8; REGISTERS]>),
}

impl Default for Uniques {
    fn default() -> Self {
        Self::Exact(HashSet::default())
    }
}

/// Spreads the bits of an id: visitor ids are keyed hashes already, but ids
/// from other sources (tests, user ids hashed elsewhere) may not be uniform.
fn mix(mut x: u64) -> u64 {
    // The splitmix64 finaliser.
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn observe(registers: &mut [u8; REGISTERS], id: u64) {
    let hash = mix(id);
    let index = (hash >> (64 - PRECISION)) as usize;
    // Rank: position of the first set bit in the remaining bits, from 1.
    let rest = (hash << PRECISION) | (1 << (PRECISION - 1));
    let rank = rest.leading_zeros() as u8 + 1;
    if registers[index] < rank {
        registers[index] = rank;
    }
}

impl Uniques {
    /// Adds one visitor id.
    pub fn insert(&mut self, id: u64) {
        match self {
            Self::Exact(set) => {
                set.insert(id);
                if set.len() > EXACT_LIMIT {
                    self.densify();
                }
            }
            Self::Sketch(registers) => observe(registers, id),
        }
    }

    /// Adds every id of `other` to `self`.
    pub fn merge(&mut self, other: &Uniques) {
        match (&mut *self, other) {
            (Self::Exact(mine), Self::Exact(theirs)) => {
                mine.extend(theirs.iter().copied());
                if mine.len() > EXACT_LIMIT {
                    self.densify();
                }
            }
            (Self::Sketch(mine), Self::Exact(theirs)) => {
                for &id in theirs {
                    observe(mine, id);
                }
            }
            (Self::Exact(_), Self::Sketch(_)) => {
                self.densify();
                self.merge(other);
            }
            (Self::Sketch(mine), Self::Sketch(theirs)) => {
                for (m, t) in mine.iter_mut().zip(theirs.iter()) {
                    *m = (*m).max(*t);
                }
            }
        }
    }

    /// The number of distinct ids (estimated once a sketch).
    pub fn count(&self) -> i64 {
        match self {
            Self::Exact(set) => set.len() as i64,
            Self::Sketch(registers) => estimate(registers),
        }
    }

    /// True when no id was added.
    pub fn is_empty(&self) -> bool {
        matches!(self, Self::Exact(set) if set.is_empty())
    }

    fn densify(&mut self) {
        let Self::Exact(set) = self else { return };
        let mut registers = Box::new([0u8; REGISTERS]);
        for &id in set.iter() {
            observe(&mut registers, id);
        }
        *self = Self::Sketch(registers);
    }
}

/// The HyperLogLog estimate, with linear counting for small cardinalities
/// (64-bit hashes need no large-range correction).
fn estimate(registers: &[u8; REGISTERS]) -> i64 {
    let m = REGISTERS as f64;
    let alpha = 0.7213 / (1.0 + 1.079 / m);
    let sum: f64 = registers.iter().map(|&r| 2f64.powi(-i32::from(r))).sum();
    let raw = alpha * m * m / sum;
    let zeros = registers.iter().filter(|&&r| r == 0).count();
    let estimate = if raw <= 2.5 * m && zeros > 0 {
        m * (m / zeros as f64).ln()
    } else {
        raw
    };
    estimate.round() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(ids: impl IntoIterator<Item = u64>) -> Uniques {
        let mut u = Uniques::default();
        for id in ids {
            u.insert(id);
        }
        u
    }

    #[test]
    fn exact_while_small() {
        let u = of((0..EXACT_LIMIT as u64).chain(0..10));
        assert!(matches!(u, Uniques::Exact(_)));
        assert_eq!(u.count(), EXACT_LIMIT as i64);
    }

    #[test]
    fn sketch_within_a_few_percent() {
        for n in [1_000u64, 10_000, 200_000] {
            let u = of(0..n);
            assert!(matches!(u, Uniques::Sketch(_)));
            let error = (u.count() - n as i64).abs() as f64 / n as f64;
            assert!(error < 0.05, "{n}: counted {}", u.count());
        }
    }

    #[test]
    fn merge_is_a_union_in_every_form() {
        let cases = [
            (0..100u64, 50..150u64),
            (0..400, 200..800),
            (0..5_000, 2_500..7_500),
        ];
        for (a, b) in cases {
            let expected = a.start.min(b.start)..a.end.max(b.end);
            let n = (expected.end - expected.start) as i64;
            let mut merged = of(a.clone());
            merged.merge(&of(b.clone()));
            let mut reversed = of(b);
            reversed.merge(&of(a));
            for u in [merged, reversed] {
                let error = (u.count() - n).abs() as f64 / n as f64;
                assert!(error < 0.05, "{n}: counted {}", u.count());
                if n <= EXACT_LIMIT as i64 {
                    assert_eq!(u.count(), n);
                }
            }
        }
    }
}
