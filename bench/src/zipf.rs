//! Zipfian key choice as in YCSB's core workloads.
//!
//! [`Zipfian`] draws ranks in `0..n`, where rank 0 is the most popular, with
//! the method of Gray et al., "Quickly Generating Billion-Record Synthetic
//! Databases" (SIGMOD 1994), which YCSB's `ZipfianGenerator` also uses. The
//! constant is 0.99 ([`ZIPFIAN_CONSTANT`]), the YCSB default.
//!
//! Invariants: every draw is below the current item count, and the
//! generator has no random state, so a caller that seeds its own RNG gets
//! a deterministic sequence.
//!
//! Known limits: ranks are used as key numbers without YCSB's hash
//! scrambling, so the hottest keys are `user0`, `user1`, ... This does not
//! cluster load on ringkv, because nodes place keys by their xxh3 hash. The
//! item count can only grow ([`Zipfian::grow_to`]), which is all the
//! read-latest workload needs.

use rand::Rng;

/// Skew constant of YCSB's zipfian distribution.
pub const ZIPFIAN_CONSTANT: f64 = 0.99;

/// Zipfian distribution over ranks `0..item_count`.
#[derive(Clone, Debug)]
pub struct Zipfian {
    item_count: u64,
    theta: f64,
    alpha: f64,
    zeta2: f64,
    zetan: f64,
    eta: f64,
}

/// Sum of `1 / i^theta` for `i` in `from + 1 ..= to`.
fn zeta_range(from: u64, to: u64, theta: f64) -> f64 {
    (from + 1..=to).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

impl Zipfian {
    /// Creates the distribution over `item_count` ranks with
    /// [`ZIPFIAN_CONSTANT`]. Takes time linear in `item_count`, so build it
    /// once and clone it.
    ///
    /// # Panics
    /// When `item_count` is 0; callers check their record count first.
    pub fn new(item_count: u64) -> Zipfian {
        assert!(
            item_count > 0,
            "a zipfian distribution needs at least one item"
        );
        let theta = ZIPFIAN_CONSTANT;
        let zeta2 = zeta_range(0, 2, theta);
        let mut zipfian = Zipfian {
            item_count,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zeta2,
            zetan: zeta_range(0, item_count, theta),
            eta: 0.0,
        };
        zipfian.eta = zipfian.compute_eta();
        zipfian
    }

    fn compute_eta(&self) -> f64 {
        let n = self.item_count as f64;
        (1.0 - (2.0 / n).powf(1.0 - self.theta)) / (1.0 - self.zeta2 / self.zetan)
    }

    /// Returns the number of ranks drawn from.
    #[cfg(test)]
    pub fn item_count(&self) -> u64 {
        self.item_count
    }

    /// Extends the distribution to `item_count` ranks, adding only the new
    /// terms of the zeta sum. A smaller count leaves it unchanged.
    pub fn grow_to(&mut self, item_count: u64) {
        if item_count <= self.item_count {
            return;
        }
        self.zetan += zeta_range(self.item_count, item_count, self.theta);
        self.item_count = item_count;
        self.eta = self.compute_eta();
    }

    /// Draws a rank in `0..item_count`; rank 0 is the most likely.
    pub fn sample(&self, rng: &mut impl Rng) -> u64 {
        let u: f64 = rng.random();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5_f64.powf(self.theta) {
            return 1.min(self.item_count - 1);
        }
        let n = self.item_count as f64;
        let rank = (n * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        // Rounding at u close to 1 can reach item_count itself.
        rank.min(self.item_count - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn counts(zipfian: &Zipfian, seed: u64, draws: usize) -> Vec<u64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut counts = vec![0u64; zipfian.item_count() as usize];
        for _ in 0..draws {
            counts[zipfian.sample(&mut rng) as usize] += 1;
        }
        counts
    }

    #[test]
    fn zipfian_stays_in_range() {
        for item_count in [1, 2, 3, 10, 1000] {
            let zipfian = Zipfian::new(item_count);
            let mut rng = ChaCha8Rng::seed_from_u64(7);
            for _ in 0..20_000 {
                let rank = zipfian.sample(&mut rng);
                assert!(rank < item_count, "rank {rank} with {item_count} items");
            }
        }
    }

    #[test]
    fn zipfian_rank_zero_most_popular() {
        let zipfian = Zipfian::new(1000);
        let counts = counts(&zipfian, 11, 200_000);
        let top = counts[0];
        for (rank, &count) in counts.iter().enumerate().skip(1) {
            assert!(count < top, "rank {rank} drawn {count} times, rank 0 {top}");
        }
        // Expected share of rank 0 is 1 / zeta(1000, 0.99), about 13%.
        let share = top as f64 / 200_000.0;
        let expected = 1.0 / zeta_range(0, 1000, ZIPFIAN_CONSTANT);
        assert!(
            (share - expected).abs() < 0.01,
            "share {share}, expected {expected}"
        );
    }

    #[test]
    fn zipfian_skews_toward_low_ranks() {
        let zipfian = Zipfian::new(1000);
        let counts = counts(&zipfian, 12, 200_000);
        let first_ten: u64 = counts[..10].iter().sum();
        let last_ten: u64 = counts[990..].iter().sum();
        assert!(
            first_ten > 20 * last_ten,
            "first ten {first_ten}, last ten {last_ten}"
        );
    }

    #[test]
    fn zipfian_same_seed_same_sequence() {
        let zipfian = Zipfian::new(10_000);
        let draw = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..1000)
                .map(|_| zipfian.sample(&mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }

    #[test]
    fn zipfian_grow_matches_fresh() {
        let mut grown = Zipfian::new(100);
        grown.grow_to(5000);
        let fresh = Zipfian::new(5000);
        assert_eq!(grown.item_count(), 5000);
        assert!((grown.zetan - fresh.zetan).abs() < 1e-9);
        assert!((grown.eta - fresh.eta).abs() < 1e-9);

        grown.grow_to(10);
        assert_eq!(
            grown.item_count(),
            5000,
            "a smaller count must not shrink it"
        );
    }
}
