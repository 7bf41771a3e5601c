//! The coordinator: quorum writes and reads of client requests.
//!
//! Contract of a write at quorum W: the coordinator applies the put to its
//! own engine and at once sends the resulting state of the key (context and
//! every value, never only the new value) to the other replicas of the
//! preference list. It returns after W durable acknowledgements, its own
//! group commit included. Writes still in flight then continue in the background.
//! If W acknowledgements do not arrive before the request timeout the client
//! gets UNAVAILABLE, and the message says the write may still have been
//! applied on some replicas.
//!
//! Sloppy quorum: a replica that the failure detector reports down, or whose
//! write fails, is replaced by a stand-in, the next healthy node on the ring
//! beyond the preference list. The stand-in stores the state as a hint for
//! that replica, and its durable acknowledgement counts towards W. With
//! strict quorum (a per-request option) only the preference list counts. A
//! replica write that finally fails, with no stand-in to take it, becomes a
//! hint on the coordinator (see `handoff.rs`).
//!
//! Contract of a read at quorum R: the coordinator reads its own copy and asks
//! R-1 other replicas for their states (more when a copy is unknown or a
//! replica fails), and asks the remaining replicas for a digest only. It
//! answers with the merge of R states. In the background it waits for the
//! remaining replies, fetches the state of any replica whose digest differs,
//! and sends the merged state to every replica that answered with less, with
//! a different digest, with nothing or with an unreadable record (read
//! repair).

use crate::error::RequestError;
use crate::node::Node;
use futures::stream::{FuturesUnordered, StreamExt};
use kv_cluster::causality::LocalCopy;
use kv_cluster::context::{decode_context, encode_context};
use kv_cluster::ring::WriteSets;
use kv_cluster::version::{State, Value, VersionVector};
use kv_cluster::{format_node_id, NodeId};
use kv_proto::v1::{ReplicaItem, ReplicaState};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::time::Instant;

/// Largest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// Result of a quorum write.
pub struct WriteResult {
    pub context: Vec<u8>,
    pub siblings: Vec<Vec<u8>>,
}

/// Result of a quorum read.
pub struct ReadResult {
    pub state: State,
}

/// Replica reads in flight: (replica, digest only, reply).
type PendingReads =
    FuturesUnordered<futures::future::BoxFuture<'static, (NodeId, bool, Result<Answer, String>)>>;

/// One replica's reply to a read.
#[derive(Clone, Debug)]
enum Answer {
    /// Its whole state; `None` when the key is missing there.
    State(Option<State>),
    /// Its digest only; `None` when the key is missing there.
    Digest(Option<u128>),
    /// Its record is unreadable.
    Unknown,
}

pub fn validate_key(key: &[u8]) -> Result<(), RequestError> {
    if key.is_empty() {
        return Err(RequestError::InvalidArgument(
            "invalid key: the key is empty; keys are 1 to 1024 bytes".into(),
        ));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(RequestError::InvalidArgument(format!(
            "invalid key: {} bytes is over the limit of {MAX_KEY_BYTES} bytes",
            key.len()
        )));
    }
    Ok(())
}

fn digest_bytes(digest: u128) -> Vec<u8> {
    digest.to_be_bytes().to_vec()
}

fn parse_digest(bytes: &[u8]) -> Option<u128> {
    let raw: [u8; 16] = bytes.try_into().ok()?;
    Some(u128::from_be_bytes(raw))
}

impl Node {
    /// Resolves a requested quorum (0 = the node's default) and checks it.
    pub fn quorum(&self, requested: u32, default: u32, name: &str) -> Result<usize, RequestError> {
        let n = self.view.ring().replicas;
        let value = if requested == 0 { default } else { requested };
        if value == 0 || value > n {
            return Err(RequestError::InvalidArgument(format!(
                "invalid {name}={requested}: must be between 1 and N={n}"
            )));
        }
        Ok(value as usize)
    }

    /// Formats a node for messages as "id (address)".
    pub fn describe_node(&self, id: NodeId) -> String {
        match self.view.address_of(id) {
            Some(address) => format!("{} ({address})", format_node_id(id)),
            None => format_node_id(id),
        }
    }

    /// Formats the replicas that failed a quorum for an error message.
    fn describe_failures(&self, failures: &BTreeMap<NodeId, String>) -> String {
        if failures.is_empty() {
            return "no reply before the request timeout".to_string();
        }
        let detail: Vec<String> = failures
            .iter()
            .map(|(peer, reason)| format!("{}: {reason}", self.describe_node(*peer)))
            .collect();
        detail.join("; ")
    }

    /// Preference list of a key in the current ring.
    pub fn preference_list(&self, key: &[u8]) -> Vec<NodeId> {
        self.view.preference_list_for_key(key)
    }

    fn check_list_size(
        &self,
        list: &[NodeId],
        needed: usize,
        name: &str,
    ) -> Result<(), RequestError> {
        if list.len() < needed {
            return Err(RequestError::Quorum(format!(
                "{name}={needed} needs {needed} replicas, but the cluster has only {} node(s); lower {name} or add nodes",
                list.len()
            )));
        }
        Ok(())
    }

    /// Coordinates a put of `value` (or a tombstone) with the client's
    /// context. The caller has checked that this node replicates the key.
    pub async fn coordinate_put(
        self: &Arc<Self>,
        key: &[u8],
        value: Value,
        context: &[u8],
        w: u32,
        strict_quorum: bool,
    ) -> Result<WriteResult, RequestError> {
        validate_key(key)?;
        if let Value::Data(bytes) = &value {
            if bytes.len() > self.config.max_value_bytes {
                return Err(RequestError::InvalidArgument(format!(
                    "invalid value: {} bytes is over the limit of {} bytes (--max-value-bytes)",
                    bytes.len(),
                    self.config.max_value_bytes
                )));
            }
        }
        let client_context = decode_context(key, context)
            .map_err(|error| RequestError::InvalidArgument(error.to_string()))?;
        let w = self.quorum(w, self.config.w, "W")?;
        let list = self.preference_list(key);
        self.check_list_size(&list, w, "W")?;
        self.write_quorum(key, value, client_context, w, &list, strict_quorum)
            .await
    }

    async fn write_quorum(
        self: &Arc<Self>,
        key: &[u8],
        value: Value,
        client_context: VersionVector,
        w: usize,
        list: &[NodeId],
        strict_quorum: bool,
    ) -> Result<WriteResult, RequestError> {
        self.stats.puts_coordinated.fetch_add(1, Ordering::Relaxed);
        let limits = crate::store::PutLimits {
            max_siblings: self.config.max_siblings,
            max_state_bytes: self.config.max_state_bytes,
        };
        let outcome = self
            .store
            .coordinate_put(key, client_context, value, limits)
            .await?;
        let state_bytes = Arc::new(outcome.state.encode());

        // Local durability and the replica writes run concurrently. While
        // the key's partition moves, the write goes to the current and the
        // planned list and needs W acknowledgements in each.
        let mut pending: FuturesUnordered<
            futures::future::BoxFuture<'static, (NodeId, Result<(), String>)>,
        > = FuturesUnordered::new();
        let me = self.node_id();
        let mut targets = WriteTargets::new(self, key, list);
        let commit = self.store.commit().clone();
        if targets.contains(me) {
            pending.push(Box::pin(async move {
                (
                    me,
                    commit.durable().await.map_err(|error| error.to_string()),
                )
            }));
            targets.sent.insert(me);
        }
        let stand_ins = if strict_quorum {
            None
        } else {
            Some(Arc::new(StandIns::new(key)))
        };
        let deadline = Instant::now() + self.config.request_timeout();
        let mut acked: Vec<NodeId> = Vec::new();
        let mut failures: BTreeMap<NodeId, String> = BTreeMap::new();
        for round in 0..MAX_WRITE_ROUNDS {
            for replica in targets.unsent() {
                targets.sent.insert(replica);
                let node = self.clone();
                let key = key.to_vec();
                let state_bytes = state_bytes.clone();
                let stand_ins = stand_ins.clone();
                pending.push(Box::pin(async move {
                    let result = node.replicate(replica, &key, state_bytes, stand_ins).await;
                    (replica, result)
                }));
            }
            let mut stale = false;
            while !targets.satisfied(&acked, w) {
                let next = tokio::time::timeout_at(deadline, pending.next()).await;
                match next {
                    Ok(Some((peer, Ok(())))) => acked.push(peer),
                    Ok(Some((peer, Err(reason)))) => {
                        stale |= is_stale_ring(&reason);
                        failures.insert(peer, reason);
                        if !targets.possible(&acked, &failures, w) {
                            break;
                        }
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            if targets.satisfied(&acked, w) || !stale || round + 1 == MAX_WRITE_ROUNDS {
                break;
            }
            // A replica refused the write because this node's ring is older
            // than its own; the refusal fetched the newer ring. Send to the
            // nodes the newer ring adds.
            targets = WriteTargets::new(self, key, &self.preference_list(key)).keeping(targets);
            failures.retain(|_, reason| !is_stale_ring(reason));
        }
        let acks = targets.counted(&acked);

        // Whatever is still in flight finishes in the background; a replica
        // write that fails there has already become a hint. A refusal that
        // showed this node's ring was stale sends the state to the nodes
        // the newer ring adds, so they need not wait for anti-entropy.
        if !pending.is_empty() {
            let node = self.clone();
            let key = key.to_vec();
            tokio::spawn(async move {
                let mut stale = false;
                while let Some((_, result)) = pending.next().await {
                    if let Err(reason) = &result {
                        stale |= is_stale_ring(reason);
                    }
                }
                if stale {
                    let list = node.preference_list(&key);
                    let targets = WriteTargets::new(&node, &key, &list).keeping(targets);
                    for replica in targets.unsent() {
                        let result = node
                            .replicate(replica, &key, state_bytes.clone(), stand_ins.clone())
                            .await;
                        if let Err(reason) = result {
                            tracing::debug!(replica = %node.describe_node(replica), %reason, "write to a node of the newer ring failed; kept as a hint");
                        }
                    }
                }
            });
        }

        if acks < w {
            let detail = self.describe_failures(&failures);
            let quorum = if strict_quorum {
                "strict write quorum"
            } else {
                "write quorum"
            };
            let counted = if strict_quorum {
                "from the preference list "
            } else {
                ""
            };
            return Err(RequestError::Quorum(format!(
                "{quorum} not reached: {acks} of W={w} acknowledgements {counted}({detail}). The write may still have been applied on some replicas; read the key before retrying"
            )));
        }

        let new_dot = outcome.dot;
        let siblings = outcome
            .state
            .values
            .iter()
            .filter(|(dot, _)| **dot != new_dot)
            .filter_map(|(_, value)| match value {
                Value::Data(bytes) => Some(bytes.clone()),
                Value::Tombstone => None,
            })
            .collect();
        Ok(WriteResult {
            context: encode_context(key, &outcome.state.context),
            siblings,
        })
    }

    /// Writes a key's state to `replica`, or to a stand-in that stores it as
    /// a hint for `replica` when the failure detector reports the replica
    /// down or its write fails. `stand_ins` is `None` under strict quorum.
    /// A replica reported down is still tried last. When nothing
    /// acknowledged, the state is stored as a hint on this node and the
    /// reasons are returned.
    async fn replicate(
        self: &Arc<Self>,
        replica: NodeId,
        key: &[u8],
        state: Arc<Vec<u8>>,
        stand_ins: Option<Arc<StandIns>>,
    ) -> Result<(), String> {
        // NOTE: a replica that hangs (paused, or cut off by a partition)
        // while the detector still reports it up gets a stand-in only after
        // the message deadline. With the defaults (10 s against a 5 s request
        // timeout) a write that needs that stand-in fails until the detector
        // reports the replica down.
        let reported_up = self.view.is_up(replica);
        let mut reason = if reported_up {
            match self
                .send_replica_write(replica, key, state.as_ref().clone())
                .await
            {
                Ok(()) => return Ok(()),
                Err(reason) => reason,
            }
        } else {
            "down (failure detector)".to_string()
        };

        let mut tried = Vec::new();
        if let Some(stand_ins) = &stand_ins {
            while let Some(stand_in) = stand_ins.next(self) {
                match self
                    .send_hinted_write(stand_in, replica, key, state.as_ref().clone())
                    .await
                {
                    Ok(()) => return Ok(()),
                    Err(failure) => tried.push(format!(
                        "stand-in {} failed: {failure}",
                        self.describe_node(stand_in)
                    )),
                }
            }
        }

        if stand_ins.is_some() {
            if tried.is_empty() {
                reason.push_str("; no stand-in beyond the preference list");
            } else {
                reason.push_str(&format!("; {}", tried.join("; ")));
            }
        }
        if !reported_up {
            // Suspicions under load are sometimes false, so a replica reported
            // down still gets the write when no stand-in took it.
            match self
                .send_replica_write(replica, key, state.as_ref().clone())
                .await
            {
                Ok(()) => return Ok(()),
                Err(failure) => reason.push_str(&format!("; direct write failed: {failure}")),
            }
        }
        if let Some(suppressed) = self.warnings.admit("replica write kept as a local hint") {
            tracing::warn!(replica = %self.describe_node(replica), %reason, suppressed, "replica write failed; storing it as a hint on this node");
        }
        self.store_local_hint(replica, key, &state).await;
        Err(reason)
    }

    /// Sends a key's state to `stand_in` as a hint for `replica` and waits
    /// for the stand-in's durable acknowledgement.
    async fn send_hinted_write(
        self: &Arc<Self>,
        stand_in: NodeId,
        replica: NodeId,
        key: &[u8],
        state: Vec<u8>,
    ) -> Result<(), String> {
        self.send_write(stand_in, replica, key, state).await
    }

    /// Sends a key's state to one replica and waits for its durable
    /// acknowledgement.
    pub async fn send_replica_write(
        self: &Arc<Self>,
        peer: NodeId,
        key: &[u8],
        state: Vec<u8>,
    ) -> Result<(), String> {
        self.send_write(peer, 0, key, state).await
    }

    /// Sends a key's state to `target` with the message deadline and waits
    /// for its durable acknowledgement. `hint_for` names the replica that
    /// `target` stands in for, or is 0 for a write to a replica itself.
    async fn send_write(
        self: &Arc<Self>,
        target: NodeId,
        hint_for: NodeId,
        key: &[u8],
        state: Vec<u8>,
    ) -> Result<(), String> {
        let item = ReplicaItem {
            key: key.to_vec(),
            write: true,
            state,
            digest_only: false,
            hint_for,
        };
        self.send_replica_item(target, item, self.config.message_deadline())
            .await
            .map(|_| ())
    }

    async fn send_replica_read(
        self: &Arc<Self>,
        peer: NodeId,
        key: &[u8],
        digest_only: bool,
    ) -> Result<Answer, String> {
        let item = ReplicaItem {
            key: key.to_vec(),
            write: false,
            state: Vec::new(),
            digest_only,
            hint_for: 0,
        };
        let response = self
            .send_replica_item(peer, item, self.config.request_timeout())
            .await?;
        match ReplicaState::try_from(response.kind).unwrap_or(ReplicaState::Unspecified) {
            ReplicaState::Missing if digest_only => Ok(Answer::Digest(None)),
            ReplicaState::Missing => Ok(Answer::State(None)),
            ReplicaState::Unknown => Ok(Answer::Unknown),
            ReplicaState::Present if digest_only => parse_digest(&response.digest)
                .map(|digest| Answer::Digest(Some(digest)))
                .ok_or_else(|| "malformed digest".to_string()),
            ReplicaState::Present => State::decode(&response.state)
                .map(|state| Answer::State(Some(state)))
                .map_err(|error| error.to_string()),
            ReplicaState::Unspecified => Err("reply without a state kind".to_string()),
        }
    }

    /// Coordinates a read at quorum R. The caller has checked that this node
    /// replicates the key.
    pub async fn coordinate_get(
        self: &Arc<Self>,
        key: &[u8],
        r: u32,
    ) -> Result<ReadResult, RequestError> {
        validate_key(key)?;
        let r = self.quorum(r, self.config.r, "R")?;
        let list = self.preference_list(key);
        self.check_list_size(&list, r, "R")?;
        self.stats.gets_coordinated.fetch_add(1, Ordering::Relaxed);
        self.read_quorum(
            key,
            r,
            &list,
            rand::random::<f64>() < self.config.read_repair_chance,
        )
        .await
    }

    /// Reads a key from the replicas in `list` (which contains this node) and
    /// schedules read repair.
    pub async fn read_quorum(
        self: &Arc<Self>,
        key: &[u8],
        r: usize,
        list: &[NodeId],
        ask_digests: bool,
    ) -> Result<ReadResult, RequestError> {
        let me = self.node_id();
        let mut answers: BTreeMap<NodeId, Answer> = BTreeMap::new();
        let mut states_counted = 0usize;
        if list.contains(&me) {
            let local = self.store.read(key).await?;
            let answer = match local {
                LocalCopy::Present { state, .. } => Answer::State(Some(state)),
                LocalCopy::Missing => Answer::State(None),
                LocalCopy::Unknown => Answer::Unknown,
            };
            if matches!(answer, Answer::State(_)) {
                states_counted += 1;
            }
            answers.insert(me, answer);
        }

        // Replicas the failure detector considers up go first, because they are
        // likely to reply.
        let mut others: Vec<NodeId> = list.iter().copied().filter(|id| *id != me).collect();
        others.sort_by_key(|id| !self.view.is_up(*id));
        let mut spare: std::collections::VecDeque<NodeId> = others.iter().copied().collect();

        let mut pending: PendingReads = FuturesUnordered::new();
        let launch = |peer: NodeId, digest_only: bool, pending: &mut PendingReads| {
            let node = self.clone();
            let key = key.to_vec();
            pending.push(Box::pin(async move {
                let result = node.send_replica_read(peer, &key, digest_only).await;
                (peer, digest_only, result)
            }));
        };
        let mut full_in_flight = 0usize;
        while full_in_flight < r.saturating_sub(states_counted) {
            let Some(peer) = spare.pop_front() else { break };
            launch(peer, false, &mut pending);
            full_in_flight += 1;
        }
        if ask_digests {
            for peer in spare.iter().copied() {
                launch(peer, true, &mut pending);
            }
        }

        let deadline = Instant::now() + self.config.request_timeout();
        let mut failures: BTreeMap<NodeId, String> = BTreeMap::new();
        while states_counted < r {
            let next = tokio::time::timeout_at(deadline, pending.next()).await;
            let (peer, digest_only, result) = match next {
                Ok(Some(reply)) => reply,
                Ok(None) | Err(_) => break,
            };
            if !digest_only {
                full_in_flight -= 1;
            }
            match result {
                Ok(Answer::State(state)) => {
                    states_counted += 1;
                    answers.insert(peer, Answer::State(state));
                }
                Ok(answer) => {
                    // A digest, or an unknown record that does not count.
                    let known_state = matches!(answers.get(&peer), Some(Answer::State(_)));
                    if !known_state {
                        answers.insert(peer, answer);
                    }
                }
                Err(reason) => {
                    failures.insert(peer, reason);
                }
            }
            if !digest_only && states_counted + full_in_flight < r {
                // Fall back to a replica not yet asked for its state.
                if let Some(peer) = spare.pop_front() {
                    launch(peer, false, &mut pending);
                    full_in_flight += 1;
                }
            }
        }

        if states_counted < r {
            self.spawn_read_repair(key, answers, pending);
            let detail = self.describe_failures(&failures);
            return Err(RequestError::Quorum(format!(
                "read quorum not reached: {states_counted} of R={r} replicas returned a readable state ({detail})"
            )));
        }

        let mut merged = State::default();
        for answer in answers.values() {
            if let Answer::State(Some(state)) = answer {
                merged = self.merge_counted(key, &merged, state);
            }
        }
        // Most reads find the replicas in agreement and have no reply left
        // to wait for; they need no repair task.
        let agreed = answers.values().all(|answer| match answer {
            Answer::State(Some(state)) => *state == merged,
            Answer::State(None) => merged == State::default(),
            Answer::Digest(_) | Answer::Unknown => false,
        });
        if !(agreed && pending.is_empty()) {
            self.spawn_read_repair(key, answers, pending);
        }
        Ok(ReadResult { state: merged })
    }

    fn merge_counted(&self, key: &[u8], left: &State, right: &State) -> State {
        let merged = left.merge(right);
        if merged.dot_conflicts > 0 {
            self.stats
                .dot_conflicts
                .fetch_add(merged.dot_conflicts as u64, Ordering::Relaxed);
            tracing::error!(key = %display_key(key), conflicts = merged.dot_conflicts, "replicas hold the same dot with different values; kept the value with the larger digest");
        }
        merged.state
    }

    /// Waits in the background for the replies still in flight, then sends
    /// the merged state to every replica whose copy lacks part of it or
    /// differs.
    fn spawn_read_repair(
        self: &Arc<Self>,
        key: &[u8],
        mut answers: BTreeMap<NodeId, Answer>,
        mut pending: PendingReads,
    ) {
        let node = self.clone();
        let key = key.to_vec();
        tokio::spawn(async move {
            let deadline = Instant::now() + node.config.message_deadline();
            while let Ok(Some((peer, _, result))) =
                tokio::time::timeout_at(deadline, pending.next()).await
            {
                if let Ok(answer) = result {
                    let known_state = matches!(answers.get(&peer), Some(Answer::State(_)));
                    if !known_state || matches!(answer, Answer::State(_)) {
                        answers.insert(peer, answer);
                    }
                }
            }
            node.repair(&key, answers).await;
        });
    }

    async fn repair(self: &Arc<Self>, key: &[u8], mut answers: BTreeMap<NodeId, Answer>) {
        let mut merged = State::default();
        for answer in answers.values() {
            if let Answer::State(Some(state)) = answer {
                merged = self.merge_counted(key, &merged, state);
            }
        }

        // A replica whose digest differs may hold writes the others lack.
        let differing: Vec<NodeId> = answers
            .iter()
            .filter_map(|(peer, answer)| match answer {
                Answer::Digest(Some(digest)) if *digest != merged.digest(key) => Some(*peer),
                _ => None,
            })
            .collect();
        for peer in differing {
            if let Ok(Answer::State(state)) = self.send_replica_read(peer, key, false).await {
                if let Some(state) = &state {
                    merged = self.merge_counted(key, &merged, state);
                }
                answers.insert(peer, Answer::State(state));
            }
        }
        if merged == State::default() {
            return;
        }

        let final_digest = merged.digest(key);
        let stale: Vec<NodeId> = answers
            .iter()
            .filter(|(_, answer)| match answer {
                Answer::State(Some(state)) => state.digest(key) != final_digest,
                Answer::State(None) | Answer::Unknown => true,
                Answer::Digest(digest) => *digest != Some(final_digest),
            })
            .map(|(peer, _)| *peer)
            .collect();
        if stale.is_empty() {
            return;
        }
        let state_bytes = merged.encode();
        let mut repaired = 0u64;
        for peer in stale {
            let result = if peer == self.node_id() {
                self.store
                    .store_incoming(key, merged.clone())
                    .await
                    .map(|_| ())
                    .map_err(|error| error.to_string())
            } else {
                self.send_replica_write(peer, key, state_bytes.clone())
                    .await
            };
            match result {
                Ok(()) => repaired += 1,
                Err(reason) => {
                    if let Some(suppressed) = self.warnings.admit("read repair") {
                        tracing::warn!(peer = %format_node_id(peer), %reason, suppressed, "read repair failed; storing the repair as a hint for the replica");
                    }
                    if peer != self.node_id() {
                        self.store_local_hint(peer, key, &state_bytes).await;
                    }
                }
            }
        }
        self.stats
            .read_repairs
            .fetch_add(repaired, Ordering::Relaxed);
    }

    /// Coordinates a delete: a put of a tombstone. Without a context it first
    /// reads at R and deletes what that read returned.
    pub async fn coordinate_delete(
        self: &Arc<Self>,
        key: &[u8],
        context: &[u8],
        w: u32,
        r: u32,
        strict_quorum: bool,
    ) -> Result<WriteResult, RequestError> {
        validate_key(key)?;
        if context.is_empty() {
            let read = self.coordinate_get(key, r).await?;
            if read.state == State::default() {
                // Nothing to delete: the key was never written.
                return Ok(WriteResult {
                    context: Vec::new(),
                    siblings: Vec::new(),
                });
            }
            let context = encode_context(key, &read.state.context);
            return self
                .coordinate_put(key, Value::Tombstone, &context, w, strict_quorum)
                .await;
        }
        self.coordinate_put(key, Value::Tombstone, context, w, strict_quorum)
            .await
    }

    /// Reads a key at R=N from every replica and repairs them: the repair
    /// queued when a local record turned out unreadable.
    pub async fn repair_key(self: &Arc<Self>, key: &[u8]) {
        let list = self.preference_list(key);
        let reachable = list.iter().filter(|id| self.view.is_up(**id)).count();
        let needed = reachable.saturating_sub(1).max(1);
        if let Err(error) = self.read_quorum(key, needed, &list, true).await {
            if let Some(suppressed) = self.warnings.admit("repair of an unreadable record") {
                tracing::warn!(%error, suppressed, "repair of an unreadable record failed; the next read of the key retries it");
            }
        }
    }
}

/// Rounds of replica writes one put sends: the first, and one more after
/// each refusal that showed this node's ring was stale.
const MAX_WRITE_ROUNDS: usize = 3;

/// Returns whether a replica write failed because the replica has a newer
/// ring in which it does not hold the key (see the peer service).
fn is_stale_ring(reason: &str) -> bool {
    reason.contains(crate::service::peer::STALE_RING)
}

/// The replicas one write must reach (kv-cluster's `WriteSets`), and those
/// it was already sent to in an earlier round.
struct WriteTargets {
    sets: WriteSets,
    sent: std::collections::BTreeSet<NodeId>,
}

impl WriteTargets {
    fn new(node: &Node, key: &[u8], list: &[NodeId]) -> WriteTargets {
        let ring = node.view.ring();
        let mut sets = WriteSets::of(&ring, ring.partition_for_key(key));
        // The caller's list is the one its checks used.
        sets.old = list.to_vec();
        WriteTargets {
            sets,
            sent: std::collections::BTreeSet::new(),
        }
    }

    /// Carries over the replicas already written to.
    fn keeping(mut self, earlier: WriteTargets) -> WriteTargets {
        self.sent = earlier.sent;
        self
    }

    fn contains(&self, id: NodeId) -> bool {
        self.sets.targets().contains(&id)
    }

    /// Replicas of either list no write was sent to yet.
    fn unsent(&self) -> Vec<NodeId> {
        let mut all = self.sets.targets();
        all.retain(|id| !self.sent.contains(id));
        all
    }

    fn counted(&self, acked: &[NodeId]) -> usize {
        self.sets.counted(acked)
    }

    fn satisfied(&self, acked: &[NodeId], w: usize) -> bool {
        self.sets.satisfied(acked, w)
    }

    fn possible(&self, acked: &[NodeId], failed: &BTreeMap<NodeId, String>, w: usize) -> bool {
        let failed: std::collections::BTreeSet<NodeId> = failed.keys().copied().collect();
        self.sets.reachable(acked, &failed, w)
    }
}

/// The stand-ins of one write, handed out one at a time so that two
/// replicas of the write never get the same stand-in.
struct StandIns {
    key: Vec<u8>,
    /// Stand-ins not handed out yet, computed from the ring on first use.
    remaining: std::sync::Mutex<Option<StandInQueue>>,
}

/// Stand-ins in ring order, and those passed over because the failure
/// detector suspected them when their turn came.
#[derive(Default)]
struct StandInQueue {
    unseen: std::collections::VecDeque<NodeId>,
    suspected: std::collections::VecDeque<NodeId>,
}

impl StandIns {
    fn new(key: &[u8]) -> StandIns {
        StandIns {
            key: key.to_vec(),
            remaining: std::sync::Mutex::new(None),
        }
    }

    /// Returns the next stand-in in ring order beyond the preference list,
    /// preferring nodes that the failure detector reports up. Suspected
    /// nodes come after every healthy one, since a suspicion under load
    /// can be false. `None` when none is left.
    fn next(&self, node: &Node) -> Option<NodeId> {
        let mut remaining = self
            .remaining
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let queue = remaining.get_or_insert_with(|| {
            let ring = node.view.ring();
            StandInQueue {
                unseen: ring.stand_ins(ring.partition_for_key(&self.key)).into(),
                suspected: Default::default(),
            }
        });
        while let Some(candidate) = queue.unseen.pop_front() {
            if candidate == node.node_id() {
                continue;
            }
            if node.view.is_up(candidate) {
                return Some(candidate);
            }
            queue.suspected.push_back(candidate);
        }
        queue.suspected.pop_front()
    }
}

/// Formats a key for logs: printable ASCII as is, other bytes as `\xNN`,
/// cut after 100 characters.
pub fn display_key(key: &[u8]) -> String {
    let mut shown: String = key
        .iter()
        .flat_map(|byte| std::ascii::escape_default(*byte))
        .map(char::from)
        .take(100)
        .collect();
    if shown.len() == 100 {
        shown.push('…');
    }
    shown
}

/// Encodes a digest for a replica-read reply.
pub fn encode_digest(digest: u128) -> Vec<u8> {
    digest_bytes(digest)
}
