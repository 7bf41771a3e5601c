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
    pub replica_batches_sent: AtomicU64,
    pub replica_items_sent: AtomicU64,
    /// Anti-entropy: finished exchanges, keys repaired, and tree rebuilds
    /// that found drift.
    pub aae_exchanges: AtomicU64,
    pub aae_keys_repaired: AtomicU64,
    pub aae_tree_drift: AtomicU64,
    /// Anti-entropy exchanges per peer this node started them with.
    pub aae_peers: std::sync::Mutex<std::collections::BTreeMap<u64, crate::aae::PeerExchanges>>,
    /// Hints acknowledged by their target and then deleted.
    pub hints_delivered: AtomicU64,
}

/// Limits repeated warnings of one kind to one line per interval, reporting
/// how many were suppressed in between.
pub struct LogLimiter {
    interval: std::time::Duration,
    state: std::sync::Mutex<std::collections::HashMap<&'static str, (std::time::Instant, u64)>>,
}

impl LogLimiter {
    pub fn new(interval: std::time::Duration) -> LogLimiter {
        LogLimiter {
            interval,
            state: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Returns `Some(suppressed)` when a warning of `kind` may be logged now,
    /// with the number of warnings of that kind suppressed since the last one.
    pub fn admit(&self, kind: &'static str) -> Option<u64> {
        let now = std::time::Instant::now();
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match state.get_mut(kind) {
            Some((last, suppressed)) if now.duration_since(*last) < self.interval => {
                *suppressed += 1;
                None
            }
            Some((last, suppressed)) => {
                let count = *suppressed;
                *last = now;
                *suppressed = 0;
                Some(count)
            }
            None => {
                state.insert(kind, (now, 0));
                Some(0)
            }
        }
    }
}
