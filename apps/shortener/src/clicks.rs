//! Click counting without a read-modify-write per redirect.
//!
//! Redirects add to in-memory counters. A background task flushes them every
//! flush interval into this worker's own key per code
//! (`shortener/clicks/<code>/<worker id>`), so instances never write the
//! same click key and a hit costs no cluster request.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use crate::store::Store;

/// Click counts not yet written to the cluster.
#[derive(Default)]
pub struct ClickCounter {
    pending: Mutex<HashMap<String, u64>>,
    /// Codes whose worker list already contains this worker id.
    registered: Mutex<HashSet<String>>,
}

impl ClickCounter {
    /// Counts one click of `code`.
    pub fn record(&self, code: &str) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        *pending.entry(code.to_string()).or_insert(0) += 1;
    }

    /// Returns the clicks of `code` counted here and not yet flushed.
    pub fn pending(&self, code: &str) -> u64 {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.get(code).copied().unwrap_or(0)
    }

    /// Writes all pending counts to the cluster. Counts whose write fails
    /// go back to the pending map for the next flush. Returns the number of
    /// codes that failed.
    pub async fn flush(&self, store: &Store) -> usize {
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let mut failed = 0;
        for (code, count) in batch {
            let register = !self
                .registered
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&code);
            match store.add_clicks(&code, count, register).await {
                Ok(()) => {
                    if register {
                        self.registered
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(code);
                    }
                }
                Err(error) => {
                    // NOTE: a write that failed after the node applied it
                    // (a failed quorum) is counted again at the next flush.
                    tracing::warn!(%code, count, %error, "failed to flush click count; retrying at the next flush");
                    failed += 1;
                    let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                    *pending.entry(code).or_insert(0) += count;
                }
            }
        }
        failed
    }

    /// Flushes every `interval` until `stop` changes. A flush in progress
    /// runs to its end first, so no taken batch is dropped halfway.
    pub async fn flush_every(
        &self,
        store: &Store,
        interval: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => return,
            }
            self.flush(store).await;
        }
    }
}
