//! Counters shown by `kv-cli status`.

use std::sync::atomic::AtomicU64;

/// Counters since the node started.
#[derive(Default, Debug)]
pub struct Stats {
    pub puts_coordinated: AtomicU64,
    pub gets_coordinated: AtomicU64,
    pub read_repairs: AtomicU64,
    pub corrupt_records: AtomicU64,
    pub dot_conflicts: AtomicU64,
    pub forwarded: AtomicU64,
}
