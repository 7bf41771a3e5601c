//! Active anti-entropy: replicas of a partition compare their hash trees
//! and merge the keys whose copies differ, so a replica that missed writes
//! or stores an unreadable record catches up without a client read.
//!
//! Every `--aae-interval-ms` this node exchanges with each peer that its
//! failure detector reports up, one peer at a time:
//!
//! 1. `TreeRoots` for every partition both nodes replicate whose local tree
//!    is built (one request for all of them);
//! 2. `TreeLeaves` for each partition whose roots differ;
//! 3. `TreeKeys` for the leaves that differ, and a local listing of the same
//!    leaves;
//! 4. a repair of every key whose digests differ, both ways: the peer's
//!    state is merged into the local copy through the store's incoming path,
//!    and the merge is sent back to the peer as a replica write through the
//!    outbox. States are always merged, never overwritten. A local record
//!    that is unreadable is replaced by the merge of the other replicas'
//!    readable copies, as read repair does.
//!
//! Repairs are paced to `--aae-max-repairs-per-second`. A second task keeps
//! the trees: it builds them at start and for partitions that become
//! replicated, rebuilds them after `--aae-rebuild-interval-ms`, and drops
//! those of partitions the node no longer replicates.

use crate::config::OnOff;
use crate::node::Node;
use crate::trees::{BuildOutcome, BuildProgress, LeafListing};
use futures::stream::{self, StreamExt};
use kv_cluster::causality::LocalCopy;
use kv_cluster::tree::{
    decode_leaves, differing_keys, differing_leaves, encode_leaves, unknown_digest, KeyDifference,
};
use kv_cluster::version::State;
use kv_cluster::{format_node_id, NodeId};
use kv_proto::v1::{
    AaePeerStatus, KeyDigest, PeerHeader, ReplicaItem, ReplicaState, TreeKeysRequest,
    TreeKeysResponse, TreeLeavesRequest, TreeLeavesResponse, TreeRoot, TreeRootsRequest,
    TreeRootsResponse, TreeStatus,
};
use kv_proto::FORMAT_VERSION;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tonic::Status;

/// Keys a node lists in one `TreeKeys` reply before it stops adding leaves.
const MAX_KEYS_PER_REPLY: usize = 10_000;

/// Partitions per `TreeRoots` request.
const MAX_ROOTS_PER_REQUEST: usize = 4096;

/// Key repairs of one exchange in flight at once. Their replica reads and
/// writes share outbox batches.
const REPAIRS_IN_FLIGHT: usize = 32;

/// Maximum interval between two checks of the trees' ages.
const TREE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Exchanges this node started with one peer, for `Status`.
#[derive(Clone, Debug, Default)]
pub struct PeerExchanges {
    pub exchanges: u64,
    pub keys_repaired: u64,
    pub last_exchange: Option<Instant>,
    pub failures: u64,
    pub last_failure: String,
}

/// Counts of one exchange with a peer.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ExchangeOutcome {
    pub(crate) partitions_compared: u64,
    partitions_differing: u64,
    keys_differing: u64,
    pub(crate) keys_repaired: u64,
}

impl ExchangeOutcome {
    fn add(&mut self, other: &ExchangeOutcome) {
        self.partitions_compared += other.partitions_compared;
        self.partitions_differing += other.partitions_differing;
        self.keys_differing += other.keys_differing;
        self.keys_repaired += other.keys_repaired;
    }
}

/// Spaces key repairs (or transferred keys) `1 / rate` apart on average.
/// It sleeps only once the schedule runs a millisecond or more ahead of the
/// clock, because the timer cannot sleep for less, so bursts stay below a
/// millisecond's worth of keys.
pub(crate) struct RepairPacer {
    spacing: Duration,
    next: Mutex<tokio::time::Instant>,
}

impl RepairPacer {
    pub(crate) fn new(per_second: u64) -> RepairPacer {
        RepairPacer {
            spacing: Duration::from_nanos(1_000_000_000 / per_second.max(1)),
            next: Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Waits for the next repair slot.
    pub(crate) async fn wait(&self) {
        self.wait_for(1).await;
    }

    /// Waits until `count` more slots are free.
    pub(crate) async fn wait_for(&self, count: u32) {
        let slot = {
            let mut next = self
                .next
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let slot = (*next).max(tokio::time::Instant::now());
            *next = slot + self.spacing * count;
            slot
        };
        if slot >= tokio::time::Instant::now() + Duration::from_millis(1) {
            tokio::time::sleep_until(slot).await;
        }
    }
}

/// A peer's copy of a key, as a replica read returns it.
enum Fetched {
    Present(State),
    Missing,
    Unknown,
}

fn parse_u128(bytes: &[u8], field: &str) -> Result<u128, String> {
    let raw: [u8; 16] = bytes
        .try_into()
        .map_err(|_| format!("malformed {field}: {} bytes instead of 16", bytes.len()))?;
    Ok(u128::from_be_bytes(raw))
}

/// Awaits a peer RPC for at most `timeout` and turns its failure into a
/// message.
async fn call<T>(
    timeout: Duration,
    rpc: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, String> {
    match tokio::time::timeout(timeout, rpc).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Err(_) => Err(format!("no reply within {} ms", timeout.as_millis())),
    }
}

impl Node {
    /// Runs anti-entropy until shutdown: the tree keeper and the exchange
    /// rounds. Returns at once with `--aae off`.
    pub async fn run_anti_entropy(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        if self.config.aae == OnOff::Off {
            tracing::info!("anti-entropy is off (--aae off)");
            return;
        }
        let keeper = tokio::spawn(self.clone().keep_trees(shutdown.clone()));
        let pacer = RepairPacer::new(self.config.aae_max_repairs_per_second);
        let period = self.config.aae_interval();
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.changed() => break,
            }
            tokio::select! {
                _ = self.exchange_round(&pacer) => {}
                _ = shutdown.changed() => break,
            }
        }
        let _ = keeper.await;
    }

    /// Builds and rebuilds the hash trees until shutdown.
    async fn keep_trees(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let check_interval = TREE_CHECK_INTERVAL.min(self.config.aae_rebuild_interval());
        let mut ticks = tokio::time::interval(check_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.changed() => return,
            }
            tokio::select! {
                _ = self.maintain_trees() => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Builds the trees of replicated partitions that have none, rebuilds
    /// those older than `--aae-rebuild-interval-ms`, and discards the trees
    /// of partitions this node no longer replicates.
    async fn maintain_trees(&self) {
        let (ring, lists) = self.view.ring_and_replica_sets();
        let me = self.node_id();
        let trees = self.store.trees();
        let max_age = self.config.aae_rebuild_interval();
        let mut due = Vec::new();
        let mut first_builds = 0u64;
        for partition in 0..ring.partitions {
            let replicated = lists
                .get(partition as usize)
                .is_some_and(|list| list.contains(&me));
            if !replicated {
                trees.discard(partition);
                continue;
            }
            match trees.built_at(partition) {
                None => {
                    first_builds += 1;
                    due.push(partition);
                }
                Some(built) if built.elapsed() >= max_age => due.push(partition),
                Some(_) => {}
            }
        }
        if due.is_empty() {
            return;
        }

        let started = Instant::now();
        let (mut records, mut unreadable, mut drifted) = (0u64, 0u64, 0u64);
        for partition in due.iter().copied() {
            match self.build_tree(partition).await {
                Ok(outcome) => {
                    records += outcome.records;
                    unreadable += outcome.unreadable;
                    if outcome.drifted_leaves > 0 {
                        drifted += 1;
                        self.stats.aae_tree_drift.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            partition,
                            leaves = outcome.drifted_leaves,
                            "hash tree differed from a rebuild by a scan of its partition; the rebuilt tree replaces it"
                        );
                    }
                }
                Err(reason) => {
                    if let Some(suppressed) = self.warnings.admit("hash tree build") {
                        tracing::warn!(partition, %reason, suppressed, "building a hash tree failed; the next check retries it");
                    }
                }
            }
        }
        let elapsed_ms = started.elapsed().as_millis() as u64;
        if first_builds > 0 {
            tracing::info!(
                partitions = due.len(),
                first_builds,
                records,
                unreadable,
                drifted,
                elapsed_ms,
                "built hash trees"
            );
        } else {
            tracing::debug!(
                partitions = due.len(),
                records,
                unreadable,
                drifted,
                elapsed_ms,
                "rebuilt hash trees"
            );
        }
    }

    /// Builds one partition's tree, one scan chunk per storage job so other
    /// storage work runs in between.
    pub(crate) async fn build_tree(&self, partition: u32) -> Result<BuildOutcome, String> {
        let mut progress = BuildProgress::default();
        loop {
            let trees = self.store.trees().clone();
            let (step, returned) = self
                .store
                .pool()
                .run(move || {
                    let step = trees.build_step(partition, &mut progress);
                    (step, progress)
                })
                .await
                .map_err(|error| error.to_string())?;
            progress = returned;
            if let Some(outcome) = step.map_err(|error| error.to_string())? {
                return Ok(outcome);
            }
        }
    }

    /// Exchanges with every peer that is up, one after the other, and logs
    /// the totals of the round.
    async fn exchange_round(self: &Arc<Self>, pacer: &RepairPacer) {
        let (ring, lists) = self.view.ring_and_replica_sets();
        let me = self.node_id();
        let trees = self.store.trees();
        let started = Instant::now();
        let mut totals = ExchangeOutcome::default();
        let mut peers = 0u64;
        for peer in ring.nodes().into_iter().filter(|id| *id != me) {
            if !self.view.is_up(peer) {
                continue;
            }
            let shared: Vec<u32> = (0..ring.partitions)
                .filter(|partition| {
                    lists
                        .get(*partition as usize)
                        .is_some_and(|list| list.contains(&me) && list.contains(&peer))
                        && trees.built_at(*partition).is_some()
                })
                .collect();
            if shared.is_empty() {
                continue;
            }
            let mut outcome = ExchangeOutcome::default();
            let result = self.exchange_with(peer, &shared, pacer, &mut outcome).await;
            self.record_exchange(peer, &outcome, &result);
            peers += 1;
            totals.add(&outcome);
            if let Err(reason) = result {
                if let Some(suppressed) = self.warnings.admit("anti-entropy exchange") {
                    tracing::warn!(peer = %self.describe_node(peer), %reason, suppressed, "anti-entropy exchange failed; the next round retries it");
                }
            }
        }
        let elapsed_ms = started.elapsed().as_millis() as u64;
        if totals.keys_differing > 0 {
            tracing::info!(
                peers,
                partitions_compared = totals.partitions_compared,
                partitions_differing = totals.partitions_differing,
                keys_differing = totals.keys_differing,
                keys_repaired = totals.keys_repaired,
                elapsed_ms,
                "anti-entropy round found differing keys"
            );
        } else {
            tracing::debug!(
                peers,
                partitions_compared = totals.partitions_compared,
                partitions_differing = totals.partitions_differing,
                elapsed_ms,
                "anti-entropy round found no differing keys"
            );
        }
    }

    fn record_exchange(
        &self,
        peer: NodeId,
        outcome: &ExchangeOutcome,
        result: &Result<(), String>,
    ) {
        let mut peers = self
            .stats
            .aae_peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = peers.entry(peer).or_default();
        entry.keys_repaired += outcome.keys_repaired;
        match result {
            Ok(()) => {
                entry.exchanges += 1;
                entry.last_exchange = Some(Instant::now());
                self.stats.aae_exchanges.fetch_add(1, Ordering::Relaxed);
            }
            Err(reason) => {
                entry.failures += 1;
                entry.last_failure = reason.clone();
            }
        }
    }

    fn aae_header(&self, timeout: Duration) -> PeerHeader {
        let ring = self.view.ring();
        crate::peers::header(
            &ring.cluster_id,
            self.node_id(),
            ring.version,
            Some(timeout),
        )
    }

    /// Compares the trees of `shared` partitions with `peer` and repairs the
    /// keys that differ. `outcome` counts what was done, also when the
    /// exchange fails halfway.
    pub(crate) async fn exchange_with(
        self: &Arc<Self>,
        peer: NodeId,
        shared: &[u32],
        pacer: &RepairPacer,
        outcome: &mut ExchangeOutcome,
    ) -> Result<(), String> {
        let address = self
            .view
            .address_of(peer)
            .ok_or_else(|| "address of the peer unknown".to_string())?;
        let mut client = self
            .peers
            .peer(&address)
            .map_err(|status| status.message().to_string())?;
        let timeout = self.config.request_timeout();
        let trees = self.store.trees().clone();
        let leaf_count = trees.geometry().leaves;

        let mut differing = Vec::new();
        for chunk in shared.chunks(MAX_ROOTS_PER_REQUEST) {
            let request = TreeRootsRequest {
                header: Some(self.aae_header(timeout)),
                partitions: chunk.to_vec(),
            };
            let response = call(timeout, client.tree_roots(request)).await?;
            if response.roots.len() != chunk.len() {
                return Err(format!(
                    "malformed TreeRoots reply: {} roots for {} partitions",
                    response.roots.len(),
                    chunk.len()
                ));
            }
            for (&partition, root) in chunk.iter().zip(&response.roots) {
                if root.partition != partition {
                    return Err(format!(
                        "malformed TreeRoots reply: partition {} in place of {partition}",
                        root.partition
                    ));
                }
                if root.status != TreeStatus::Ready as i32 {
                    continue;
                }
                let Some(local) = trees.snapshot(partition) else {
                    continue;
                };
                outcome.partitions_compared += 1;
                if parse_u128(&root.root, "root")? != local.root() {
                    differing.push(partition);
                }
            }
        }
        outcome.partitions_differing = differing.len() as u64;

        for partition in differing {
            let request = TreeLeavesRequest {
                header: Some(self.aae_header(timeout)),
                partition,
            };
            let response = call(timeout, client.tree_leaves(request)).await?;
            let theirs = decode_leaves(&response.leaves)?;
            let Some(local) = trees.snapshot(partition) else {
                continue;
            };
            let mut leaves = differing_leaves(local.leaves(), &theirs);
            leaves.retain(|leaf| *leaf < leaf_count);

            // A reply lists whole leaves up to a size limit; ask again for
            // the leaves it left out.
            while !leaves.is_empty() {
                let request = TreeKeysRequest {
                    header: Some(self.aae_header(timeout)),
                    partition,
                    leaves: leaves.clone(),
                };
                let response = call(timeout, client.tree_keys(request)).await?;
                let covered: Vec<u32> = response
                    .leaves
                    .iter()
                    .copied()
                    .filter(|leaf| leaves.contains(leaf))
                    .collect();
                if covered.is_empty() {
                    return Err(format!(
                        "malformed TreeKeys reply: none of the {} requested leaves of partition {partition} listed",
                        leaves.len()
                    ));
                }
                let mut theirs = BTreeMap::new();
                for entry in response.keys {
                    theirs.insert(entry.key, parse_u128(&entry.digest, "key digest")?);
                }
                let ours = self
                    .list_leaves(partition, covered.clone(), usize::MAX)
                    .await?
                    .digests;
                let differences = differing_keys(&ours, &theirs);
                outcome.keys_differing += differences.len() as u64;
                outcome.keys_repaired += self.repair_differences(peer, differences, pacer).await;
                leaves.retain(|leaf| !covered.contains(leaf));
            }
        }
        Ok(())
    }

    /// Lists the key digests of whole leaves of a partition on a storage
    /// thread, as [`crate::trees::Trees::list_leaves`] describes.
    async fn list_leaves(
        &self,
        partition: u32,
        leaves: Vec<u32>,
        max_keys: usize,
    ) -> Result<LeafListing, String> {
        let trees = self.store.trees().clone();
        self.store
            .pool()
            .run(move || trees.list_leaves(partition, &leaves, max_keys))
            .await
            .map_err(|error| error.to_string())?
            .map_err(|error| error.to_string())
    }

    /// Repairs keys whose digests differ with `peer`, paced and a few at a
    /// time, and returns how many copies changed.
    async fn repair_differences(
        self: &Arc<Self>,
        peer: NodeId,
        differences: Vec<KeyDifference>,
        pacer: &RepairPacer,
    ) -> u64 {
        let repaired = stream::iter(differences)
            .map(|difference| async move {
                pacer.wait().await;
                let key = crate::coordinator::display_key(&difference.key);
                match self.repair_difference(peer, difference).await {
                    Ok(changed) => changed,
                    Err(reason) => {
                        if let Some(suppressed) = self.warnings.admit("anti-entropy repair") {
                            tracing::warn!(peer = %format_node_id(peer), %key, %reason, suppressed, "anti-entropy repair of a key failed; the next round retries it");
                        }
                        false
                    }
                }
            })
            .buffer_unordered(REPAIRS_IN_FLIGHT)
            .filter(|changed| std::future::ready(*changed))
            .count()
            .await as u64;
        self.stats
            .aae_keys_repaired
            .fetch_add(repaired, Ordering::Relaxed);
        repaired
    }

    /// Repairs one key whose digest differs between this node and `peer`
    /// by merging both ways. Returns whether a copy changed.
    async fn repair_difference(
        self: &Arc<Self>,
        peer: NodeId,
        difference: KeyDifference,
    ) -> Result<bool, String> {
        let key = difference.key.as_slice();
        let local = self
            .store
            .read(key)
            .await
            .map_err(|error| error.to_string())?;
        let local_state = match local {
            LocalCopy::Unknown => return self.replace_unknown(key).await,
            LocalCopy::Missing => None,
            LocalCopy::Present { state, .. } => Some(state),
        };

        // The listing already shows a missing or unreadable copy on the
        // peer, and neither has a state to fetch.
        let remote_readable = difference
            .theirs
            .is_some_and(|digest| digest != unknown_digest(key));
        let remote_state = if remote_readable {
            match self.fetch_state(peer, key).await? {
                Fetched::Present(state) => Some(state),
                Fetched::Missing | Fetched::Unknown => None,
            }
        } else {
            None
        };

        let mut changed = false;
        if let Some(remote) = &remote_state {
            if local_state.as_ref() != Some(remote) {
                let stored = self
                    .store
                    .store_incoming(key, remote.clone())
                    .await
                    .map_err(|error| error.to_string())?;
                changed |= stored.changed;
            }
        }
        let merged = match (local_state, &remote_state) {
            (Some(local), Some(remote)) => Some(local.merge(remote).state),
            (Some(local), None) => Some(local),
            (None, _) => None,
        };
        if let Some(merged) = merged {
            if remote_state.as_ref() != Some(&merged) {
                self.send_replica_write(peer, key, merged.encode()).await?;
                changed = true;
            }
        }
        Ok(changed)
    }

    /// Replaces this node's unreadable copy of a key with the merge of the
    /// other replicas' readable copies, as read repair does, and returns
    /// whether the copy changed. The copy stays unknown while no other
    /// replica returns a readable one.
    async fn replace_unknown(self: &Arc<Self>, key: &[u8]) -> Result<bool, String> {
        let me = self.node_id();
        let others: Vec<NodeId> = self
            .preference_list(key)
            .into_iter()
            .filter(|id| *id != me)
            .collect();
        let fetches = others.iter().map(|peer| self.fetch_state(*peer, key));
        let mut merged: Option<State> = None;
        for fetched in futures::future::join_all(fetches).await {
            if let Ok(Fetched::Present(state)) = fetched {
                merged = Some(match merged {
                    Some(merged) => merged.merge(&state).state,
                    None => state,
                });
            }
        }
        let Some(merged) = merged else {
            return Ok(false);
        };
        let stored = self
            .store
            .store_incoming(key, merged)
            .await
            .map_err(|error| error.to_string())?;
        Ok(stored.changed)
    }

    /// Reads a peer's copy of a key through the outbox.
    async fn fetch_state(self: &Arc<Self>, peer: NodeId, key: &[u8]) -> Result<Fetched, String> {
        let item = ReplicaItem {
            key: key.to_vec(),
            ..Default::default()
        };
        let result = self
            .send_replica_item(peer, item, self.config.request_timeout())
            .await?;
        match ReplicaState::try_from(result.kind).unwrap_or(ReplicaState::Unspecified) {
            ReplicaState::Present => State::decode(&result.state)
                .map(Fetched::Present)
                .map_err(|error| format!("replica read returned an invalid state: {error}")),
            ReplicaState::Missing => Ok(Fetched::Missing),
            ReplicaState::Unknown => Ok(Fetched::Unknown),
            ReplicaState::Unspecified => Err("replica read reply without a state kind".to_string()),
        }
    }

    /// Returns whether this node replicates `partition` in its ring.
    fn replicates_partition(&self, partition: u32) -> bool {
        let (_, lists) = self.view.ring_and_replica_sets();
        lists
            .get(partition as usize)
            .is_some_and(|list| list.contains(&self.node_id()))
    }

    fn check_replicated_partition(&self, partition: u32) -> Result<(), Status> {
        if self.replicates_partition(partition) {
            return Ok(());
        }
        let ring = self.view.ring();
        Err(Status::failed_precondition(format!(
            "node {} does not replicate partition {partition} in ring version {}",
            format_node_id(self.node_id()),
            ring.version
        )))
    }

    /// Serves `TreeRoots`: the root of each requested partition, or why
    /// there is none.
    pub fn handle_tree_roots(
        &self,
        request: TreeRootsRequest,
    ) -> Result<TreeRootsResponse, Status> {
        self.check_header(request.header.as_ref())?;
        let (_, lists) = self.view.ring_and_replica_sets();
        let me = self.node_id();
        let trees = self.store.trees();
        let roots = request
            .partitions
            .iter()
            .map(|&partition| {
                let replicated = lists
                    .get(partition as usize)
                    .is_some_and(|list| list.contains(&me));
                if !replicated {
                    return TreeRoot {
                        partition,
                        status: TreeStatus::NotReplicated as i32,
                        root: Vec::new(),
                    };
                }
                match trees.snapshot(partition) {
                    Some(tree) => TreeRoot {
                        partition,
                        status: TreeStatus::Ready as i32,
                        root: tree.root().to_be_bytes().to_vec(),
                    },
                    None => TreeRoot {
                        partition,
                        status: TreeStatus::NotBuilt as i32,
                        root: Vec::new(),
                    },
                }
            })
            .collect();
        Ok(TreeRootsResponse {
            format_version: FORMAT_VERSION,
            roots,
        })
    }

    /// Serves `TreeLeaves`: the leaves of one partition's tree.
    pub fn handle_tree_leaves(
        &self,
        request: TreeLeavesRequest,
    ) -> Result<TreeLeavesResponse, Status> {
        self.check_header(request.header.as_ref())?;
        self.check_replicated_partition(request.partition)?;
        let tree = self.store.trees().snapshot(request.partition).ok_or_else(|| {
            Status::failed_precondition(format!(
                "the hash tree of partition {} is not built on node {}; anti-entropy is off there or still building it",
                request.partition,
                format_node_id(self.node_id())
            ))
        })?;
        Ok(TreeLeavesResponse {
            format_version: FORMAT_VERSION,
            leaves: encode_leaves(tree.leaves()),
        })
    }

    /// Serves `TreeKeys`: the key digests of whole leaves of one partition,
    /// read from storage.
    pub async fn handle_tree_keys(
        &self,
        request: TreeKeysRequest,
    ) -> Result<TreeKeysResponse, Status> {
        self.check_header(request.header.as_ref())?;
        self.check_replicated_partition(request.partition)?;
        let leaf_count = self.store.trees().geometry().leaves;
        if let Some(leaf) = request.leaves.iter().find(|leaf| **leaf >= leaf_count) {
            return Err(Status::invalid_argument(format!(
                "invalid leaf {leaf}: the ring has {leaf_count} leaves per partition, numbered from 0"
            )));
        }
        let listing = self
            .list_leaves(request.partition, request.leaves, MAX_KEYS_PER_REPLY)
            .await
            .map_err(Status::internal)?;
        Ok(TreeKeysResponse {
            format_version: FORMAT_VERSION,
            leaves: listing.leaves,
            keys: listing
                .digests
                .into_iter()
                .map(|(key, digest)| KeyDigest {
                    key,
                    digest: digest.to_be_bytes().to_vec(),
                })
                .collect(),
        })
    }

    /// Returns the number of partitions this node replicates and the number
    /// of them with a built tree.
    pub fn aae_tree_counts(&self) -> (u32, u32) {
        let (ring, lists) = self.view.ring_and_replica_sets();
        let trees = self.store.trees();
        let mut replicated = 0;
        let mut built = 0;
        for partition in 0..ring.partitions {
            if lists
                .get(partition as usize)
                .is_some_and(|list| list.contains(&self.node_id()))
            {
                replicated += 1;
                if trees.built_at(partition).is_some() {
                    built += 1;
                }
            }
        }
        (replicated, built)
    }

    /// Returns the exchanges per peer for `Status`.
    pub fn aae_peer_statuses(&self) -> Vec<AaePeerStatus> {
        let peers = self
            .stats
            .aae_peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        peers
            .into_iter()
            .map(|(peer, exchanges)| AaePeerStatus {
                node_id: format_node_id(peer),
                address: self.view.address_of(peer).unwrap_or_default(),
                exchanges: exchanges.exchanges,
                keys_repaired: exchanges.keys_repaired,
                last_exchange_ms_ago: exchanges
                    .last_exchange
                    .map(|at| at.elapsed().as_millis() as u64),
                failures: exchanges.failures,
                last_failure: exchanges.last_failure,
            })
            .collect()
    }
}
