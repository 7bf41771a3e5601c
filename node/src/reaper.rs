//! Tombstone reaping: purges a deleted key once no replica, hint or message
//! in flight can still bring an older value of it back.
//!
//! Every node watches the keys whose writes left only tombstones. The reaper
//! of a key is the first node of its preference list that the failure
//! detector reports up. Only the reaper purges the key, and only when all of
//! these hold, checked in this order right before the purge:
//!
//! - the key has held the same tombstone-only state on the reaper for
//!   `--reap-grace-ms`, measured on the reaper's monotonic clock from when
//!   it first saw that state. The grace is longer than the message deadline
//!   plus twice the peer keepalive, so by then every replica write sent
//!   before the delete was applied, or given up on and kept as a hint;
//! - every owner in the preference list answers with that state's digest or
//!   with nothing (an owner that does not answer blocks the purge);
//! - every member that was not removed answers, asked directly, that it
//!   holds no hint for the key's partition (a silent member blocks it).
//!
//! - no ownership change runs: while a plan moves partitions, nothing is
//!   purged anywhere (stricter than only the moving partitions, and simple
//!   to check).
//!
//! The reaper then stores a purge intent (key and digest) durably and asks
//! every owner to delete the key if it still has that digest. It retries the
//! intent every round until every owner has deleted the key, holds nothing,
//! or holds a different state; only then is the intent deleted. A put onto a
//! purged key draws a fresh epoch (see kv-cluster's causality rules), so a
//! tombstone that arrives later never covers the new value.

use crate::node::Node;
use crate::peers::header;
use crate::store::PurgeResult;
use kv_cluster::causality::{self, LocalCopy};
use kv_cluster::hash::storage_key;
use kv_cluster::{format_node_id, NodeId};
use kv_proto::v1::{
    HintsForPartitionRequest, PurgeOutcome, ReplicaItem, ReplicaPurgeRequest, ReplicaState,
};
use kv_storage::{record, Space, WriteOp};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;

/// Candidates checked per round; the rest wait for the next round.
const CHECKS_PER_ROUND: usize = 1000;

/// Purge intents retried per round.
const INTENTS_PER_ROUND: usize = 1000;

/// A key that held only tombstones when last seen.
struct Candidate {
    /// Digest of its tombstone-only state; `None` until first checked.
    digest: Option<u128>,
    /// When this node first saw that state.
    since: Instant,
}

/// State of this node's reaper.
#[derive(Default)]
pub struct Reaper {
    candidates: Mutex<HashMap<Vec<u8>, Candidate>>,
    /// Tombstone records this node deleted since it started, as reaper or
    /// at a reaper's request.
    pub purged: AtomicU64,
    /// Purge intents found in the latest round.
    pub intents: AtomicU64,
}

impl Reaper {
    fn note(&self, keys: impl IntoIterator<Item = Vec<u8>>) {
        let now = Instant::now();
        let mut candidates = self
            .candidates
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for key in keys {
            candidates.entry(key).or_insert(Candidate {
                digest: None,
                since: now,
            });
        }
    }
}

/// Outcome of checking one candidate.
enum Verdict {
    /// Not tombstone-only any more: forget it.
    Drop,
    /// Check again next round.
    Wait,
    /// Every rule holds for this digest.
    Purge(u128),
}

impl Node {
    /// Runs reaping rounds every `--reap-interval-ms` until shutdown.
    pub async fn run_reaper(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        if self.config.reap == crate::config::OnOff::Off {
            return;
        }
        if let Err(error) = self.find_stored_tombstones().await {
            tracing::warn!(%error, "could not scan for tombstones written before this start; they are reaped when written again");
        }
        let mut ticker = tokio::time::interval(self.config.reap_interval());
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return;
            }
            self.reap_round().await;
        }
    }

    /// Adds every stored tombstone-only key to the candidates.
    async fn find_stored_tombstones(self: &Arc<Self>) -> Result<(), String> {
        let mut start = Vec::new();
        loop {
            let store = self.store.clone();
            let from = start.clone();
            let page = self
                .store
                .pool()
                .run(move || store.engine().scan(Space::Data, &from, None, 1000))
                .await
                .map_err(|error| error.to_string())?
                .map_err(|error| error.to_string())?;
            let Some((last, _)) = page.last() else {
                return Ok(());
            };
            start = last.clone();
            start.push(0);
            let keys = page.iter().filter_map(|(stored_key, value)| {
                let payload = record::decode(value).ok()?;
                let (state, _) = causality::decode_record(payload).ok()?;
                state
                    .is_tombstone_only()
                    .then(|| stored_key.get(8..).unwrap_or_default().to_vec())
            });
            self.reaper.note(keys);
        }
    }

    /// Runs one round: retries open intents, then checks the candidates.
    async fn reap_round(self: &Arc<Self>) {
        self.reaper.note(self.store.take_tombstone_keys());
        self.retry_intents().await;

        let keys: Vec<Vec<u8>> = self
            .reaper
            .candidates
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .keys()
            .take(CHECKS_PER_ROUND)
            .cloned()
            .collect();
        // Hint answers hold for the whole round: a hint stored later is for
        // a write newer than the tombstones checked here.
        let mut hint_free: HashMap<u32, bool> = HashMap::new();
        for key in keys {
            match self.check_candidate(&key, &mut hint_free).await {
                Verdict::Drop => {
                    self.forget_candidate(&key);
                }
                Verdict::Wait => {}
                Verdict::Purge(digest) => {
                    if let Err(error) = self.record_intent(&key, digest).await {
                        tracing::warn!(key = %crate::coordinator::display_key(&key), %error, "could not store a purge intent; the purge waits for the next round");
                        continue;
                    }
                    self.forget_candidate(&key);
                    if self.purge_everywhere(&key, digest).await {
                        self.delete_intent(&key).await;
                    }
                }
            }
        }
    }

    fn forget_candidate(&self, key: &[u8]) {
        self.reaper
            .candidates
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(key);
    }

    async fn check_candidate(
        self: &Arc<Self>,
        key: &[u8],
        hint_free: &mut HashMap<u32, bool>,
    ) -> Verdict {
        let state = match self.store.read(key).await {
            Ok(LocalCopy::Present { state, .. }) if state.is_tombstone_only() => state,
            Ok(_) => return Verdict::Drop,
            Err(_) => return Verdict::Wait,
        };
        let digest = state.digest(key);
        {
            let mut candidates = self
                .reaper
                .candidates
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let Some(candidate) = candidates.get_mut(key) else {
                return Verdict::Wait;
            };
            if candidate.digest != Some(digest) {
                // A new tombstone state restarts the grace period.
                candidate.digest = Some(digest);
                candidate.since = Instant::now();
                return Verdict::Wait;
            }
            if candidate.since.elapsed() < self.config.reap_grace() {
                return Verdict::Wait;
            }
        }

        let me = self.node_id();
        let ring = self.view.ring();
        // No purge while any ownership change runs: a node receiving the
        // partition, or one that held it before, could bring the value back.
        if ring.plan.is_some() {
            return Verdict::Wait;
        }
        let list = self.preference_list(key);
        if list.iter().copied().find(|id| self.view.is_up(*id)) != Some(me) {
            return Verdict::Wait;
        }
        for owner in list.iter().copied().filter(|id| *id != me) {
            if !self.owner_agrees(owner, key, digest).await {
                return Verdict::Wait;
            }
        }
        let partition = self.view.ring().partition_for_key(key);
        let free = match hint_free.get(&partition) {
            Some(free) => *free,
            None => {
                let free = self.no_member_holds_hints(partition).await;
                hint_free.insert(partition, free);
                free
            }
        };
        if !free {
            return Verdict::Wait;
        }
        Verdict::Purge(digest)
    }

    /// Returns true when `owner` holds exactly the state with `digest`, or
    /// nothing, for `key`.
    async fn owner_agrees(self: &Arc<Self>, owner: NodeId, key: &[u8], digest: u128) -> bool {
        let item = ReplicaItem {
            key: key.to_vec(),
            digest_only: true,
            ..Default::default()
        };
        let Ok(result) = self
            .send_replica_item(owner, item, self.config.request_timeout())
            .await
        else {
            return false;
        };
        match ReplicaState::try_from(result.kind) {
            Ok(ReplicaState::Missing) => true,
            Ok(ReplicaState::Present) => result.digest == digest.to_be_bytes(),
            _ => false,
        }
    }

    /// Asks every member that was not removed, this node included, whether
    /// it holds a hint for `partition`. Returns false when any holds one or
    /// does not answer.
    async fn no_member_holds_hints(self: &Arc<Self>, partition: u32) -> bool {
        match self.hints.holds_partition(partition).await {
            Ok(false) => {}
            _ => return false,
        }
        let me = self.node_id();
        let membership = self.view.membership();
        let ring = self.view.ring();
        let timeout = self.config.request_timeout();
        for member in membership.members.values() {
            if member.id == me || membership.removed.contains(&member.id) {
                continue;
            }
            let Ok(mut client) = self.peers.peer(&member.address) else {
                return false;
            };
            let request = HintsForPartitionRequest {
                header: Some(header(&ring.cluster_id, me, ring.version, Some(timeout))),
                partition,
            };
            match tokio::time::timeout(timeout, client.hints_for_partition(request)).await {
                Ok(Ok(reply)) if !reply.get_ref().holds_hints => {}
                _ => return false,
            }
        }
        true
    }

    async fn record_intent(self: &Arc<Self>, key: &[u8], digest: u128) -> Result<(), String> {
        let store = self.store.clone();
        let op = WriteOp {
            space: Space::Intents,
            key: storage_key(key),
            value: Some(record::encode(&digest.to_be_bytes())),
        };
        self.store
            .pool()
            .run(move || store.engine().write(&[op]))
            .await
            .map_err(|error| error.to_string())?
            .map_err(|error| error.to_string())?;
        self.store
            .commit()
            .durable()
            .await
            .map_err(|error| error.to_string())
    }

    async fn delete_intent(self: &Arc<Self>, key: &[u8]) {
        let store = self.store.clone();
        let op = WriteOp {
            space: Space::Intents,
            key: storage_key(key),
            value: None,
        };
        let result = self
            .store
            .pool()
            .run(move || store.engine().write(&[op]))
            .await;
        if !matches!(result, Ok(Ok(()))) {
            tracing::warn!(key = %crate::coordinator::display_key(key), "could not delete a finished purge intent; the next round retries it, which is harmless");
        }
    }

    /// Retries the purge of every stored intent.
    async fn retry_intents(self: &Arc<Self>) {
        let store = self.store.clone();
        let intents = match self
            .store
            .pool()
            .run(move || {
                store
                    .engine()
                    .scan(Space::Intents, &[], None, INTENTS_PER_ROUND)
            })
            .await
        {
            Ok(Ok(intents)) => intents,
            _ => return,
        };
        self.reaper
            .intents
            .store(intents.len() as u64, Ordering::Relaxed);
        for (stored_key, value) in intents {
            let key = stored_key.get(8..).unwrap_or_default().to_vec();
            let digest = record::decode(&value)
                .ok()
                .and_then(|payload| <[u8; 16]>::try_from(payload).ok())
                .map(u128::from_be_bytes);
            let Some(digest) = digest else {
                tracing::error!(key = %crate::coordinator::display_key(&key), "purge intent is unreadable; deleting it, so the key is reaped again from scratch");
                self.delete_intent(&key).await;
                continue;
            };
            if self.purge_everywhere(&key, digest).await {
                self.delete_intent(&key).await;
            }
        }
    }

    /// Asks every owner of `key` to delete it if it still has `digest`.
    /// Returns true when every owner answered.
    async fn purge_everywhere(self: &Arc<Self>, key: &[u8], digest: u128) -> bool {
        let me = self.node_id();
        let mut complete = true;
        for owner in self.preference_list(key) {
            let answered = if owner == me {
                self.purge_local(key, digest).await.is_ok()
            } else {
                self.send_purge(owner, key, digest).await
            };
            if !answered {
                complete = false;
            }
        }
        complete
    }

    async fn send_purge(self: &Arc<Self>, owner: NodeId, key: &[u8], digest: u128) -> bool {
        let Some(address) = self.view.address_of(owner) else {
            return false;
        };
        let Ok(mut client) = self.peers.peer(&address) else {
            return false;
        };
        let ring = self.view.ring();
        let timeout = self.config.message_deadline();
        let request = ReplicaPurgeRequest {
            header: Some(header(
                &ring.cluster_id,
                self.node_id(),
                ring.version,
                Some(timeout),
            )),
            key: key.to_vec(),
            digest: digest.to_be_bytes().to_vec(),
        };
        match tokio::time::timeout(timeout, client.replica_purge(request)).await {
            Ok(Ok(_)) => true,
            Ok(Err(status)) => {
                if let Some(suppressed) = self.warnings.admit("purge") {
                    tracing::warn!(owner = %format_node_id(owner), reason = %status.message(), suppressed, "purge request failed; the intent is retried next round");
                }
                false
            }
            Err(_) => false,
        }
    }

    /// Deletes this node's record of `key` if it still has `digest`, and
    /// counts the deletion.
    async fn purge_local(
        self: &Arc<Self>,
        key: &[u8],
        digest: u128,
    ) -> Result<PurgeResult, crate::store::StoreError> {
        let result = self.store.purge_if_unchanged(key, digest).await?;
        if result == PurgeResult::Purged {
            self.reaper.purged.fetch_add(1, Ordering::Relaxed);
        }
        Ok(result)
    }

    /// Serves a purge request from a key's reaper.
    pub async fn handle_replica_purge(
        self: &Arc<Self>,
        key: &[u8],
        digest: &[u8],
    ) -> Result<PurgeOutcome, tonic::Status> {
        let digest: [u8; 16] = digest.try_into().map_err(|_| {
            tonic::Status::invalid_argument(format!(
                "invalid purge digest: {} bytes, expected 16",
                digest.len()
            ))
        })?;
        let result = self
            .purge_local(key, u128::from_be_bytes(digest))
            .await
            .map_err(|error| tonic::Status::internal(error.to_string()))?;
        Ok(match result {
            PurgeResult::Purged => PurgeOutcome::Purged,
            PurgeResult::Missing => PurgeOutcome::Missing,
            PurgeResult::Different => PurgeOutcome::Different,
        })
    }
}
