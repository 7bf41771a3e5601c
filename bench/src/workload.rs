//! The workloads: which operations each one issues, in which proportions,
//! and on which keys.
//!
//! The mixes follow YCSB's core workloads A, B, C, D and F. `load` inserts
//! the keys `user0 .. user{records-1}` in order, and `ping` sends empty
//! `Ping` RPCs to measure the RPC cost of the stack without storage.
//! `verify` reads loaded keys from one node's local copy (see `verify.rs`).
//!
//! Invariants: each mix's proportions sum to 1, and every key chooser
//! returns a key number below the number of keys inserted so far (the
//! record count, plus the inserts of workload D).

use std::fmt;

use clap::ValueEnum;
use rand::Rng;
use serde::Serialize;

use crate::zipf::Zipfian;

/// A workload selected with `--workload`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Insert `--records` keys, one put each (YCSB load phase).
    Load,
    /// 50% reads, 50% updates (YCSB workload A, update heavy).
    A,
    /// 95% reads, 5% updates (YCSB workload B, read mostly).
    B,
    /// 100% reads (YCSB workload C, read only).
    C,
    /// 95% reads of recently inserted keys, 5% inserts (YCSB workload D).
    D,
    /// 50% reads, 50% read-modify-writes (YCSB workload F).
    F,
    /// 100% empty Ping RPCs, the RPC ceiling of the same client and server.
    Ping,
    /// Reads of loaded keys from one node's local copy (Admin
    /// ReplicaRead), counting the keys it stores. It runs outside the
    /// runner (see `verify.rs`).
    Verify,
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Workload::Load => "load",
            Workload::A => "a",
            Workload::B => "b",
            Workload::C => "c",
            Workload::D => "d",
            Workload::F => "f",
            Workload::Ping => "ping",
            Workload::Verify => "verify",
        };
        f.write_str(name)
    }
}

/// Key choice selected with `--distribution`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// YCSB zipfian with constant 0.99; for workload D, skewed toward the
    /// newest keys.
    Zipfian,
    /// Every key equally likely.
    Uniform,
}

/// One operation type, with its own latency histogram in the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpKind {
    /// A get at R.
    Read,
    /// A put of an existing key with the last context this run saw for it.
    Update,
    /// A put of a new key without a context.
    Insert,
    /// A get followed by a put with the context of that get.
    ReadModifyWrite,
    /// An empty `Ping` RPC.
    Ping,
}

impl OpKind {
    /// Every kind, in report order.
    pub const ALL: [OpKind; 5] = [
        OpKind::Read,
        OpKind::Update,
        OpKind::Insert,
        OpKind::ReadModifyWrite,
        OpKind::Ping,
    ];

    /// Returns the kind's name in the report.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Update => "update",
            OpKind::Insert => "insert",
            OpKind::ReadModifyWrite => "read-modify-write",
            OpKind::Ping => "ping",
        }
    }

    /// Returns the position of the kind in [`OpKind::ALL`].
    pub fn index(self) -> usize {
        match self {
            OpKind::Read => 0,
            OpKind::Update => 1,
            OpKind::Insert => 2,
            OpKind::ReadModifyWrite => 3,
            OpKind::Ping => 4,
        }
    }
}

impl Workload {
    /// Returns the operation mix as (kind, proportion) pairs that sum to 1.
    pub fn mix(self) -> &'static [(OpKind, f64)] {
        match self {
            Workload::Load => &[(OpKind::Insert, 1.0)],
            Workload::A => &[(OpKind::Read, 0.5), (OpKind::Update, 0.5)],
            Workload::B => &[(OpKind::Read, 0.95), (OpKind::Update, 0.05)],
            Workload::C => &[(OpKind::Read, 1.0)],
            Workload::D => &[(OpKind::Read, 0.95), (OpKind::Insert, 0.05)],
            Workload::F => &[(OpKind::Read, 0.5), (OpKind::ReadModifyWrite, 0.5)],
            Workload::Ping => &[(OpKind::Ping, 1.0)],
            // Every verify operation is a read, of one replica.
            Workload::Verify => &[(OpKind::Read, 1.0)],
        }
    }

    /// Draws the next operation kind from the mix.
    pub fn choose_op(self, rng: &mut impl Rng) -> OpKind {
        let mix = self.mix();
        let mut point: f64 = rng.random();
        for &(kind, proportion) in mix {
            if point < proportion {
                return kind;
            }
            point -= proportion;
        }
        // Rounding can leave a point just above the sum; it belongs to the
        // last kind.
        mix[mix.len() - 1].0
    }
}

/// Returns the key stored for key number `number`.
pub fn key_name(number: u64) -> String {
    format!("user{number}")
}

/// Picks key numbers for reads and updates.
#[derive(Clone, Debug)]
pub enum KeyChooser {
    /// Uniform over `0..item_count`, where `item_count` is given per draw.
    Uniform,
    /// Zipfian over `0..records`, rank 0 hottest.
    Zipfian(Zipfian),
    /// Zipfian over the keys inserted so far, newest hottest (workload D).
    Latest(Zipfian),
}

impl KeyChooser {
    /// Creates the chooser of `workload` over `records` loaded keys.
    pub fn new(workload: Workload, distribution: Distribution, records: u64) -> KeyChooser {
        match (distribution, workload) {
            (Distribution::Uniform, _) => KeyChooser::Uniform,
            (Distribution::Zipfian, Workload::D) => KeyChooser::Latest(Zipfian::new(records)),
            (Distribution::Zipfian, _) => KeyChooser::Zipfian(Zipfian::new(records)),
        }
    }

    /// Draws a key number below `inserted`, the number of keys that exist.
    /// `inserted` must be at least 1.
    pub fn next_key(&mut self, inserted: u64, rng: &mut impl Rng) -> u64 {
        match self {
            KeyChooser::Uniform => rng.random_range(0..inserted),
            KeyChooser::Zipfian(zipfian) => zipfian.sample(rng).min(inserted - 1),
            KeyChooser::Latest(zipfian) => {
                zipfian.grow_to(inserted);
                let back = zipfian.sample(rng).min(inserted - 1);
                inserted - 1 - back
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const ALL_WORKLOADS: [Workload; 8] = [
        Workload::Load,
        Workload::A,
        Workload::B,
        Workload::C,
        Workload::D,
        Workload::F,
        Workload::Ping,
        Workload::Verify,
    ];

    #[test]
    fn mix_proportions_sum_to_one() {
        for workload in ALL_WORKLOADS {
            let sum: f64 = workload.mix().iter().map(|(_, p)| p).sum();
            assert!((sum - 1.0).abs() < 1e-9, "workload {workload}: sum {sum}");
        }
    }

    #[test]
    fn mix_draws_match_proportions() {
        let draws = 100_000;
        for workload in ALL_WORKLOADS {
            let mut rng = ChaCha8Rng::seed_from_u64(5);
            let mut counts = [0u64; OpKind::ALL.len()];
            for _ in 0..draws {
                counts[workload.choose_op(&mut rng).index()] += 1;
            }
            for kind in OpKind::ALL {
                let expected = workload
                    .mix()
                    .iter()
                    .find(|(k, _)| *k == kind)
                    .map_or(0.0, |(_, p)| *p);
                let share = counts[kind.index()] as f64 / draws as f64;
                assert!(
                    (share - expected).abs() < 0.01,
                    "workload {workload}, {}: share {share}, expected {expected}",
                    kind.name()
                );
            }
        }
    }

    #[test]
    fn mix_workload_a_is_half_updates() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let updates = (0..10_000)
            .filter(|_| Workload::A.choose_op(&mut rng) == OpKind::Update)
            .count();
        assert!(
            (4_700..=5_300).contains(&updates),
            "updates {updates} of 10000"
        );
    }

    #[test]
    fn op_index_matches_all_order() {
        for (position, kind) in OpKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), position, "{}", kind.name());
        }
    }

    #[test]
    fn key_chooser_stays_below_inserted() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for distribution in [Distribution::Zipfian, Distribution::Uniform] {
            for workload in [Workload::A, Workload::D] {
                let mut chooser = KeyChooser::new(workload, distribution, 100);
                for inserted in [1, 50, 100, 150] {
                    for _ in 0..2_000 {
                        let key = chooser.next_key(inserted, &mut rng);
                        assert!(
                            key < inserted,
                            "{workload} {distribution:?}: {key} >= {inserted}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn key_chooser_latest_prefers_newest() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut chooser = KeyChooser::new(Workload::D, Distribution::Zipfian, 1000);
        let newest = (0..10_000)
            .filter(|_| chooser.next_key(1000, &mut rng) == 999)
            .count();
        let oldest = (0..10_000)
            .filter(|_| chooser.next_key(1000, &mut rng) == 0)
            .count();
        assert!(
            newest > 10 * oldest.max(1),
            "newest {newest}, oldest {oldest}"
        );
    }
}
