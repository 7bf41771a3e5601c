//! Hinted handoff: hints taken in as a stand-in and their delivery.
//!
//! A coordinator that cannot write a key's state to a replica of its
//! preference list sends it to a stand-in, a healthy node beyond the list,
//! naming the replica it was meant for (`hint_for`). The stand-in stores it
//! as a hint ([`crate::hints`]) and acknowledges once the hint is durable.
//! A replica write that fails with no stand-in to take it becomes a hint on
//! the coordinator itself.
//!
//! Every `--hint-interval-ms` a delivery round reads the held hints in key
//! order:
//! - a hint whose target replicates the key in this node's ring is sent to
//!   the target as a plain replica write, through the outbox and with the
//!   message deadline, when the failure detector reports the target up.
//!   After the target's durable acknowledgement the hint is deleted only if
//!   its state still has the digest of the state that was sent;
//! - a hint whose target does not replicate the key in this node's ring (a
//!   removed node, or a ring change) is moved to the key's preference list.
//!   It is merged into this node's own copy when this node is on the list,
//!   and stored as a hint for each other node on it.
//!
//! No hint is ever dropped: one that fails stays for the next round.

use crate::hints::{after_target, successor, HeldHint};
use crate::node::Node;
use futures::stream::{FuturesUnordered, StreamExt};
use kv_cluster::version::State;
use kv_cluster::{format_node_id, NodeId};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

/// Hints read and sent at once in a delivery round.
const DELIVERY_PAGE: usize = 256;

/// Counts of one delivery round, logged when something happened.
#[derive(Default)]
struct RoundCounts {
    delivered: u64,
    /// Acknowledged, but kept because a newer state was merged into them
    /// while they were in flight.
    changed_in_flight: u64,
    moved: u64,
    failed: u64,
    unreadable: u64,
}

impl Node {
    /// Stores a hint for `target` on this node: the fallback of a replica
    /// write that failed with no stand-in to take it. Failures are logged,
    /// because the caller has no one to report them to.
    pub async fn store_local_hint(self: &Arc<Self>, target: NodeId, key: &[u8], state: &[u8]) {
        let state = match State::decode(state) {
            Ok(state) => state,
            Err(error) => {
                tracing::error!(%error, "cannot store a hint: the state does not decode");
                return;
            }
        };
        let outcome = self
            .hints
            .store(vec![(key.to_vec(), target, state)])
            .await
            .and_then(|mut results| results.pop().unwrap_or(Ok(())));
        if let Err(error) = outcome {
            tracing::error!(target_node = %format_node_id(target), key = %crate::coordinator::display_key(key), %error, "cannot store a hint for a failed replica write; the replica catches up only by read repair");
        }
    }

    /// Runs a delivery round every `--hint-interval-ms` until shutdown. The
    /// first round starts one interval after the call.
    pub async fn run_hint_delivery(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let period = self.config.hint_interval();
        let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => return,
            }
            if !self.has_hints_to_deliver() {
                continue;
            }
            tokio::select! {
                _ = self.deliver_hints() => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Returns whether a round could send or move a hint: some target of
    /// the held hints is up, is this node, or has left the ring.
    ///
    /// NOTE: while every target is down and in the ring, no round runs, so
    /// hints of a down target that no longer replicates their key are moved
    /// only once it is up again or has left the ring.
    fn has_hints_to_deliver(&self) -> bool {
        let ring_nodes = self.view.ring().nodes();
        self.hints.counts().keys().any(|target| {
            *target == self.node_id() || !ring_nodes.contains(target) || self.view.is_up(*target)
        })
    }

    /// Returns whether `hint` waits for its target: a down or unreachable
    /// node that replicates the hint's partition. The other hints of that
    /// partition for that target wait too.
    fn waits_for_target(&self, hint: &HeldHint, unreachable: &BTreeSet<NodeId>) -> bool {
        let target = hint.target;
        target != self.node_id()
            && (unreachable.contains(&target) || !self.view.is_up(target))
            && self.preference_list(&hint.key).contains(&target)
    }

    /// Runs one delivery round over the held hints. The hints of a
    /// partition for a target that is down are skipped with one seek, so a
    /// round does not read every hint held for a down node.
    async fn deliver_hints(self: &Arc<Self>) {
        let mut counts = RoundCounts::default();
        // A target that failed once is skipped for the rest of the round.
        let mut unreachable: BTreeSet<NodeId> = BTreeSet::new();
        let mut start: Vec<u8> = Vec::new();
        loop {
            let page = match self.hints.page(start.clone(), DELIVERY_PAGE).await {
                Ok(page) => page,
                Err(error) => {
                    tracing::error!(%error, "cannot read the held hints; retrying next round");
                    break;
                }
            };
            let Some(last) = page.last() else { break };
            let mut next = Some(successor(&last.hint_key));
            let mut batch = Vec::with_capacity(page.len());
            for hint in page {
                if self.waits_for_target(&hint, &unreachable) {
                    next = after_target(hint.partition, hint.target);
                    break;
                }
                batch.push(hint);
            }
            self.deliver_page(batch, &mut unreachable, &mut counts)
                .await;
            match next {
                Some(key) => start = key,
                None => break,
            }
        }

        self.stats
            .hints_delivered
            .fetch_add(counts.delivered, Ordering::Relaxed);
        if counts.delivered + counts.moved + counts.failed + counts.changed_in_flight > 0 {
            tracing::info!(
                delivered = counts.delivered,
                changed_in_flight = counts.changed_in_flight,
                moved = counts.moved,
                failed = counts.failed,
                unreachable_targets = unreachable.len(),
                held = self.hints.total(),
                "hinted handoff round"
            );
        }
        if counts.unreadable > 0 {
            if let Some(suppressed) = self.warnings.admit("unreadable hint") {
                tracing::warn!(
                    unreadable = counts.unreadable,
                    suppressed,
                    "held hints fail their checksum and cannot be delivered; they stay in the hints space"
                );
            }
        }
    }

    async fn deliver_page(
        self: &Arc<Self>,
        page: Vec<HeldHint>,
        unreachable: &mut BTreeSet<NodeId>,
        counts: &mut RoundCounts,
    ) {
        let me = self.node_id();
        let mut sends = FuturesUnordered::new();
        for hint in page {
            let Some(state) = hint.state() else {
                counts.unreadable += 1;
                continue;
            };
            let HeldHint { key, target, .. } = hint;
            let owners = self.preference_list(&key);
            if target == me || !owners.contains(&target) {
                let destinations = if target == me && owners.contains(&me) {
                    vec![me]
                } else {
                    owners
                };
                match self.hints.rehome(&key, target, destinations, me).await {
                    Ok(()) => counts.moved += 1,
                    Err(error) => {
                        counts.failed += 1;
                        tracing::warn!(target_node = %format_node_id(target), %error, "cannot move a hint to the key's current replicas; retrying next round");
                    }
                }
                continue;
            }
            if unreachable.contains(&target) || !self.view.is_up(target) {
                continue;
            }
            let node = self.clone();
            sends.push(async move {
                let digest = state.digest(&key);
                let result = node.send_replica_write(target, &key, state.encode()).await;
                (key, target, digest, result)
            });
        }

        while let Some((key, target, digest, result)) = sends.next().await {
            if let Err(reason) = result {
                counts.failed += 1;
                if unreachable.insert(target) {
                    if let Some(suppressed) = self.warnings.admit("hint delivery") {
                        tracing::warn!(target_node = %self.describe_node(target), %reason, suppressed, "hint delivery failed; retrying next round");
                    }
                }
                continue;
            }
            match self.hints.delete_if_unchanged(&key, target, digest).await {
                Ok(true) => counts.delivered += 1,
                Ok(false) => counts.changed_in_flight += 1,
                Err(error) => {
                    counts.failed += 1;
                    tracing::warn!(target_node = %format_node_id(target), %error, "cannot delete a delivered hint; it is sent again next round");
                }
            }
        }
    }
}
