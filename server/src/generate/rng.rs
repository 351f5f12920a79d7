//! The generator's random numbers: one seeded ChaCha8 stream and the few
//! distributions the model needs, written out here so that the same seed
//! gives the same data set whatever sampling algorithms `rand` ships.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A seeded random stream.
pub struct Rng(ChaCha8Rng);

impl Rng {
    /// The stream of `seed`.
    pub fn new(seed: u64) -> Self {
        Self(ChaCha8Rng::seed_from_u64(seed))
    }

    /// Uniform in [0, 1), 53 bits.
    pub fn unit(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.unit() * n as f64) as usize).min(n - 1)
    }

    /// Uniform in `lo..hi` (`hi` > `lo`).
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo) as usize) as i64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// A standard normal number (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u = 1.0 - self.unit();
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// Log-normal with the given median; `sigma` is the spread of its logarithm.
    pub fn lognormal(&mut self, median: f64, sigma: f64) -> f64 {
        median * (sigma * self.normal()).exp()
    }

    /// A count of at least 1 with the given mean (geometric).
    pub fn count(&mut self, mean: f64) -> u32 {
        let stop = 1.0 / mean.max(1.0);
        let mut n = 1;
        while n < 1000 && !self.chance(stop) {
            n += 1;
        }
        n
    }

    /// Random bytes.
    pub fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        self.0.fill_bytes(&mut out);
        out
    }

    /// A random 64-bit number.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
}

/// A discrete distribution over `0..len` from weights, sampled by binary search.
#[derive(Clone, Debug)]
pub struct Weighted {
    cumulative: Vec<f64>,
}

impl Weighted {
    /// From weights (at least one positive).
    pub fn new(weights: impl IntoIterator<Item = f64>) -> Self {
        let mut sum = 0.0;
        let cumulative = weights
            .into_iter()
            .map(|w| {
                sum += w.max(0.0);
                sum
            })
            .collect();
        Self { cumulative }
    }

    /// Zipf-like ranks: the weight of rank `r` (from 1) is `1 / r^s`.
    pub fn zipf(len: usize, s: f64) -> Self {
        Self::new((1..=len).map(|r| 1.0 / (r as f64).powf(s)))
    }

    /// An index.
    pub fn sample(&self, rng: &mut Rng) -> usize {
        let total = *self.cumulative.last().expect("weights are not empty");
        let x = rng.unit() * total;
        self.cumulative
            .partition_point(|c| *c <= x)
            .min(self.cumulative.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_numbers() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let draw = |r: &mut Rng| (r.next_u64(), r.below(10), r.count(3.0), r.bytes::<4>());
        assert_eq!(draw(&mut a), draw(&mut b));
        // The stream itself is fixed: ChaCha8 seeded from 7.
        assert_eq!(Rng::new(7).next_u64(), Rng::new(7).next_u64());
        assert_ne!(Rng::new(7).next_u64(), Rng::new(8).next_u64());
    }

    #[test]
    fn weighted_sampling_follows_the_weights() {
        let mut rng = Rng::new(1);
        let weights = Weighted::new([1.0, 0.0, 3.0]);
        let mut counts = [0; 3];
        for _ in 0..40_000 {
            counts[weights.sample(&mut rng)] += 1;
        }
        assert_eq!(counts[1], 0);
        let ratio = f64::from(counts[2]) / f64::from(counts[0]);
        assert!((2.8..3.2).contains(&ratio), "{counts:?}");
    }

    #[test]
    fn counts_have_their_mean() {
        let mut rng = Rng::new(2);
        let n = 20_000;
        let sum: u32 = (0..n).map(|_| rng.count(3.0)).sum();
        let mean = f64::from(sum) / f64::from(n);
        assert!((2.85..3.15).contains(&mean), "{mean}");
    }
}
