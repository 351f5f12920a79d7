//! A mergeable distinct-count sketch: exact while small, HyperLogLog beyond.
//!
//! A sketch holds the ids themselves (sorted) up to [`SPARSE_MAX`] of them,
//! so small counts, which are most rollup cells, are exact and cheap. Past
//! that it turns into a HyperLogLog with 2^12 registers (standard error
//! 1.04 / 64 = 1.6 %), estimated with Ertl's improved raw estimator ("New
//! cardinality estimation algorithms for HyperLogLog sketches", 2017), which
//! needs no bias tables and is accurate over the whole range. Merging is a
//! union; a union of exact sketches stays exact while it stays small.
//!
//! The registers are held in four bits each (2 KiB): a rank of 15 or more,
//! which one observation in 16,384 reaches, is held as 15 in its four bits
//! and in full in a short list after them. So a sketch keeps every rank
//! exactly, as one byte per register would, in about half the memory: a
//! server's rollups hold tens of thousands of these.

use std::collections::HashSet;

/// Ids kept exactly before a sketch turns into a HyperLogLog.
pub const SPARSE_MAX: usize = 256;
const P: u32 = 12;
const M: usize = 1 << P;
/// Bytes of the four-bit registers.
const NIBBLES: usize = M / 2;
/// A four-bit register holding this has its rank in the list of large ranks.
const LARGE: u8 = 15;
/// Relative standard error of an estimate.
pub const STANDARD_ERROR: f64 = 1.04 / 64.0;

/// A distinct-count sketch of 64-bit ids.
#[derive(Clone, Debug)]
pub enum Sketch {
    /// The ids, sorted, at most [`SPARSE_MAX`].
    Sparse(Vec<u64>),
    /// HyperLogLog registers: [`NIBBLES`] bytes of two four-bit registers
    /// each (see [`nibble_shift`]), then for each register at
    /// [`LARGE`] its index (`u16`, little-endian) and rank, by index.
    Dense(Box<[u8]>),
}

impl Default for Sketch {
    fn default() -> Self {
        Self::Sparse(Vec::new())
    }
}

/// Spreads an id over 64 bits (ids may be sequential).
fn mix(id: u64) -> u64 {
    let mut z = id.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The register and rank an id updates.
fn register_of(id: u64) -> (usize, u8) {
    let h = mix(id);
    let index = (h >> (64 - P)) as usize;
    let rest = (h << P) | (1 << (P - 1));
    (index, rest.leading_zeros() as u8 + 1)
}

fn observe(registers: &mut [u8; M], id: u64) {
    let (index, rank) = register_of(id);
    if registers[index] < rank {
        registers[index] = rank;
    }
}

/// [`observe`] for four-bit registers.
fn observe_packed(packed: &mut Box<[u8]>, id: u64) {
    let (index, rank) = register_of(id);
    raise_packed(packed, index, rank);
}

/// Empty four-bit registers.
fn empty_packed() -> Box<[u8]> {
    vec![0u8; NIBBLES].into_boxed_slice()
}

/// Register `i` is in byte `i % NIBBLES`: the low four bits for the first
/// half of the registers, the high four for the second.
fn nibble_shift(index: usize) -> usize {
    (index / NIBBLES) * 4
}

fn nibble(packed: &[u8], index: usize) -> u8 {
    (packed[index % NIBBLES] >> nibble_shift(index)) & 0x0f
}

/// The large ranks of packed registers: (index, rank) by index.
fn large_ranks(packed: &[u8]) -> impl Iterator<Item = (usize, u8)> + '_ {
    packed[NIBBLES..]
        .chunks_exact(3)
        .map(|e| (usize::from(u16::from_le_bytes([e[0], e[1]])), e[2]))
}

/// Raises register `index` of packed registers to `rank`.
#[inline]
fn raise_packed(packed: &mut Box<[u8]>, index: usize, rank: u8) {
    let held = nibble(packed, index);
    if rank <= held {
        return;
    }
    if rank < LARGE {
        let shift = nibble_shift(index);
        packed[index % NIBBLES] = (packed[index % NIBBLES] & !(0x0f << shift)) | (rank << shift);
        return;
    }
    if held == LARGE {
        let at = large_ranks(packed)
            .position(|(i, _)| i == index)
            .expect("a register at 15 has a large rank");
        let slot = &mut packed[NIBBLES + 3 * at + 2];
        *slot = (*slot).max(rank);
        return;
    }
    packed[index % NIBBLES] |= LARGE << nibble_shift(index);
    let at = large_ranks(packed).take_while(|(i, _)| *i < index).count();
    let mut grown = Vec::with_capacity(packed.len() + 3);
    grown.extend_from_slice(&packed[..NIBBLES + 3 * at]);
    grown.extend_from_slice(&(index as u16).to_le_bytes());
    grown.push(rank);
    grown.extend_from_slice(&packed[NIBBLES + 3 * at..]);
    *packed = grown.into_boxed_slice();
}

/// Raises `registers` to the packed registers, register by register.
fn unpack_into(registers: &mut [u8; M], packed: &[u8]) {
    // Two runs of registers, one per half of the bytes: loops the compiler
    // turns into vector instructions.
    let (low, high) = registers.split_at_mut(NIBBLES);
    for (r, byte) in low.iter_mut().zip(&packed[..NIBBLES]) {
        *r = (*r).max(byte & 0x0f);
    }
    for (r, byte) in high.iter_mut().zip(&packed[..NIBBLES]) {
        *r = (*r).max(byte >> 4);
    }
    for (index, rank) in large_ranks(packed) {
        registers[index] = registers[index].max(rank);
    }
}

/// An id with the register it raises, worked out once for every sketch the
/// id goes in (an event goes in a dozen rollup cells).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hashed {
    id: u64,
    index: u16,
    rank: u8,
}

impl Hashed {
    /// `id` with its register.
    pub fn new(id: u64) -> Self {
        let (index, rank) = register_of(id);
        Self {
            id,
            index: index as u16,
            rank,
        }
    }

    /// The id.
    pub fn id(self) -> u64 {
        self.id
    }
}

impl Sketch {
    /// Adds an id.
    pub fn insert(&mut self, id: u64) {
        self.insert_hashed(Hashed::new(id));
    }

    /// Adds an id whose register is worked out.
    pub fn insert_hashed(&mut self, hashed: Hashed) {
        let id = hashed.id;
        match self {
            Self::Sparse(ids) => {
                if let Err(at) = ids.binary_search(&id) {
                    if ids.len() < SPARSE_MAX {
                        ids.insert(at, id);
                    } else {
                        let mut packed = empty_packed();
                        for x in ids.iter().copied().chain([id]) {
                            observe_packed(&mut packed, x);
                        }
                        *self = Self::Dense(packed);
                    }
                }
            }
            Self::Dense(packed) => raise_packed(packed, usize::from(hashed.index), hashed.rank),
        }
    }

    /// Adds every id of `other` (a union, as [`Union`] does, but keeping
    /// the result a sketch): exact while the union has at most
    /// [`SPARSE_MAX`] ids.
    pub fn merge(&mut self, other: &Sketch) {
        match (&mut *self, other) {
            (_, Self::Sparse(ids)) => ids.iter().for_each(|id| self.insert(*id)),
            (Self::Dense(mine), Self::Dense(theirs)) => {
                for (m, t) in mine[..NIBBLES].iter_mut().zip(&theirs[..NIBBLES]) {
                    *m = (*m & 0x0f).max(t & 0x0f) | (*m & 0xf0).max(t & 0xf0);
                }
                // Registers now at 15 through `theirs` get its large rank.
                for (index, rank) in large_ranks(theirs) {
                    if large_ranks(mine).all(|(i, _)| i != index) {
                        // Clear the 15 just merged in, so that the raise adds the rank.
                        mine[index % NIBBLES] &= !(0x0f << nibble_shift(index));
                    }
                    raise_packed(mine, index, rank);
                }
            }
            (Self::Sparse(ids), Self::Dense(theirs)) => {
                let mut packed = theirs.clone();
                ids.iter().for_each(|id| observe_packed(&mut packed, *id));
                *self = Self::Dense(packed);
            }
        }
    }

    /// Appends the sketch to `out`: a tag, then the sorted ids as varint
    /// deltas, or the registers, one byte each.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Sparse(ids) => {
                out.push(0);
                put_varint(out, ids.len() as u64);
                let mut previous = 0u64;
                for id in ids {
                    put_varint(out, id.wrapping_sub(previous));
                    previous = *id;
                }
            }
            Self::Dense(packed) => {
                out.push(1);
                let mut registers = [0u8; M];
                unpack_into(&mut registers, packed);
                out.extend_from_slice(&registers);
            }
        }
    }

    /// Reads a sketch written by [`Sketch::encode`] from the front of `input`.
    pub fn decode(input: &mut &[u8]) -> Option<Self> {
        let (&tag, rest) = input.split_first()?;
        *input = rest;
        match tag {
            0 => {
                let len = usize::try_from(take_varint(input)?).ok()?;
                if len > SPARSE_MAX {
                    return None;
                }
                let mut ids = Vec::with_capacity(len);
                let mut previous = 0u64;
                for _ in 0..len {
                    previous = previous.wrapping_add(take_varint(input)?);
                    ids.push(previous);
                }
                ids.windows(2).all(|w| w[0] < w[1]).then_some(Self::Sparse(ids))
            }
            1 => {
                let (registers, rest) = input.split_at_checked(M)?;
                *input = rest;
                // A register's rank is at most 64 - P + 1.
                if registers.iter().any(|r| u32::from(*r) > 64 - P + 1) {
                    return None;
                }
                let mut packed = empty_packed();
                for (index, rank) in registers.iter().enumerate() {
                    raise_packed(&mut packed, index, *rank);
                }
                Some(Self::Dense(packed))
            }
            _ => None,
        }
    }

    /// Bytes on the heap.
    pub fn heap_bytes(&self) -> usize {
        match self {
            Self::Sparse(ids) => ids.capacity() * 8,
            Self::Dense(packed) => packed.len(),
        }
    }
}

/// Appends `value` as a LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads a LEB128 varint from the front of `input`.
pub fn take_varint(input: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The union of several sketches.
#[derive(Default)]
pub struct Union {
    exact: HashSet<u64>,
    registers: Option<Box<[u8; M]>>,
}

impl Union {
    /// Adds a sketch to the union.
    pub fn add(&mut self, sketch: &Sketch) {
        match sketch {
            Sketch::Sparse(ids) => match &mut self.registers {
                Some(registers) => ids.iter().for_each(|id| observe(registers, *id)),
                None => {
                    self.exact.extend(ids.iter().copied());
                    if self.exact.len() > SPARSE_MAX * 16 {
                        self.densify();
                    }
                }
            },
            Sketch::Dense(packed) => unpack_into(self.densify(), packed),
        }
    }

    fn densify(&mut self) -> &mut [u8; M] {
        let exact = &mut self.exact;
        self.registers.get_or_insert_with(|| {
            let mut registers = Box::new([0u8; M]);
            for id in exact.drain() {
                observe(&mut registers, id);
            }
            registers
        })
    }

    /// True while the count is exact.
    pub fn is_exact(&self) -> bool {
        self.registers.is_none()
    }

    /// The distinct count: exact, or estimated (see the module docs).
    pub fn count(&self) -> u64 {
        match &self.registers {
            None => self.exact.len() as u64,
            Some(registers) => estimate(registers),
        }
    }
}

/// Ertl's improved raw estimator.
fn estimate(registers: &[u8; M]) -> u64 {
    let q = 64 - P as usize;
    let mut histogram = vec![0u32; q + 2];
    for r in registers.iter() {
        histogram[usize::from(*r).min(q + 1)] += 1;
    }
    let m = M as f64;
    let mut z = m * tau(1.0 - f64::from(histogram[q + 1]) / m);
    for k in (1..=q).rev() {
        z = 0.5 * (z + f64::from(histogram[k]));
    }
    z += m * sigma(f64::from(histogram[0]) / m);
    let alpha = 0.5 / std::f64::consts::LN_2;
    (alpha * m * m / z).round() as u64
}

fn sigma(mut x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let mut y = 1.0;
    let mut z = x;
    loop {
        x *= x;
        let previous = z;
        z += x * y;
        y += y;
        if z == previous {
            return z;
        }
    }
}

fn tau(mut x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let mut y = 1.0;
    let mut z = 1.0 - x;
    loop {
        x = x.sqrt();
        let previous = z;
        y *= 0.5;
        z -= (1.0 - x).powi(2) * y;
        if z == previous {
            return z / 3.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count_of(ids: impl IntoIterator<Item = u64>) -> (u64, bool) {
        let mut sketch = Sketch::default();
        ids.into_iter().for_each(|id| sketch.insert(id));
        let mut union = Union::default();
        union.add(&sketch);
        (union.count(), union.is_exact())
    }

    #[test]
    fn small_sets_are_exact() {
        assert_eq!(count_of([]), (0, true));
        assert_eq!(count_of([7, 7, 7, 9]), (2, true));
        assert_eq!(count_of(0..SPARSE_MAX as u64), (SPARSE_MAX as u64, true));
    }

    #[test]
    fn large_sets_are_within_four_standard_errors() {
        for n in [300u64, 1_000, 10_000, 100_000, 1_000_000] {
            let (count, exact) = count_of(0..n);
            assert!(!exact);
            let error = (count as f64 - n as f64).abs() / n as f64;
            assert!(
                error < 4.0 * STANDARD_ERROR,
                "n {n}: estimate {count}, error {error}"
            );
        }
    }

    #[test]
    fn merged_sketches_count_like_a_union_and_survive_encoding() {
        // Exact + exact staying small, exact + exact turning dense, dense + exact.
        for (a, b) in [
            (0..100u64, 50..150u64),
            (0..200, 150..400),
            (0..5_000, 4_000..4_100),
        ] {
            let (mut left, mut right) = (Sketch::default(), Sketch::default());
            a.clone().for_each(|id| left.insert(id));
            b.clone().for_each(|id| right.insert(id));
            let mut union = Union::default();
            union.add(&left);
            union.add(&right);
            left.merge(&right);
            let mut bytes = Vec::new();
            left.encode(&mut bytes);
            let mut input = bytes.as_slice();
            let decoded = Sketch::decode(&mut input).unwrap();
            assert!(input.is_empty());
            let mut merged = Union::default();
            merged.add(&decoded);
            let truth = a.chain(b).collect::<HashSet<_>>().len() as u64;
            if truth <= SPARSE_MAX as u64 {
                assert_eq!((merged.count(), merged.is_exact()), (truth, true));
            } else {
                let error = (merged.count() as f64 - truth as f64).abs() / truth as f64;
                assert!(error < 4.0 * STANDARD_ERROR, "truth {truth}: {}", merged.count());
                // Registers merged as the union merged them.
                assert!(
                    union.count().abs_diff(merged.count()) <= truth / 50,
                    "{} {}",
                    union.count(),
                    merged.count()
                );
            }
        }
        assert!(
            Sketch::decode(&mut [0u8, 2, 5, 0].as_slice()).is_none(),
            "ids must increase"
        );
    }

    /// The registers of `ids`, one byte each, computed directly.
    fn byte_registers(ids: impl IntoIterator<Item = u64>) -> Vec<u8> {
        let mut registers = [0u8; M];
        ids.into_iter().for_each(|id| observe(&mut registers, id));
        registers.to_vec()
    }

    fn encoded_registers(sketch: &Sketch) -> Vec<u8> {
        let mut bytes = Vec::new();
        sketch.encode(&mut bytes);
        assert_eq!(bytes[0], 1, "dense");
        bytes[1..].to_vec()
    }

    #[test]
    fn four_bit_registers_keep_every_rank() {
        // 300,000 ids reach ranks above 15 in a few hundred registers.
        let mut sketch = Sketch::default();
        (0..300_000u64).for_each(|id| sketch.insert(id));
        let expected = byte_registers(0..300_000u64);
        assert!(expected.iter().filter(|r| **r >= LARGE).count() > 10);
        assert_eq!(encoded_registers(&sketch), expected);
        assert!(sketch.heap_bytes() < M * 3 / 4, "{} bytes", sketch.heap_bytes());

        // Merged: dense + dense (large ranks on either side), sparse + dense.
        let (mut a, mut b) = (Sketch::default(), Sketch::default());
        (0..150_000u64).for_each(|id| a.insert(id));
        (100_000..400_000u64).for_each(|id| b.insert(id));
        a.merge(&b);
        assert_eq!(encoded_registers(&a), byte_registers(0..400_000u64));
        let mut small = Sketch::default();
        (500_000..500_100u64).for_each(|id| small.insert(id));
        small.merge(&b);
        assert_eq!(
            encoded_registers(&small),
            byte_registers((100_000..400_000u64).chain(500_000..500_100))
        );

        // Through encoding, and into a union.
        let mut input = Vec::new();
        a.encode(&mut input);
        let decoded = Sketch::decode(&mut input.as_slice()).unwrap();
        assert_eq!(encoded_registers(&decoded), byte_registers(0..400_000u64));
        let mut union = Union::default();
        union.add(&decoded);
        assert_eq!(
            union.registers.as_deref().unwrap().to_vec(),
            byte_registers(0..400_000u64)
        );
        let mut damaged = input.clone();
        damaged[9] = 60;
        assert!(Sketch::decode(&mut damaged.as_slice()).is_none(), "rank above 53");
    }

    #[test]
    fn unions_count_each_id_once() {
        // Three overlapping days of 50,000 visitors, 20,000 new each day.
        let days: Vec<Sketch> = (0..3u64)
            .map(|d| {
                let mut s = Sketch::default();
                (d * 20_000..d * 20_000 + 50_000).for_each(|id| s.insert(id));
                s
            })
            .collect();
        let mut union = Union::default();
        days.iter().for_each(|s| union.add(s));
        let truth = 90_000.0;
        let error = (union.count() as f64 - truth).abs() / truth;
        assert!(error < 4.0 * STANDARD_ERROR, "estimate {}", union.count());

        // Small sketches stay exact through a union.
        let (mut a, mut b) = (Sketch::default(), Sketch::default());
        (0..100).for_each(|id| a.insert(id));
        (50..150).for_each(|id| b.insert(id));
        let mut union = Union::default();
        union.add(&a);
        union.add(&b);
        assert_eq!((union.count(), union.is_exact()), (150, true));
    }
}
