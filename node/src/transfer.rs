//! Partition transfers of a membership change, and the deletion of copies
//! a node no longer holds.
//!
//! The claimant writes a plan into the ring (kv-cluster's `Plan`). A node
//! that is a receiver of a moving partition (in its planned list, not in
//! its current one) takes the partitions one at a time:
//!
//! 1. it deletes any copy of the partition it kept from an earlier
//!    ownership, so a tombstone purged meanwhile cannot be undone by it;
//! 2. it pages through the whole copy of one old replica (preferably the
//!    one that leaves the list) and merges every record as a replica write
//!    does, at most `--transfer-max-keys-per-second`;
//! 3. it builds its hash tree of the partition and runs one anti-entropy
//!    exchange with each other old replica, so a write that reached only
//!    some of them is merged too (with `--aae off` it merges their whole
//!    copies instead);
//! 4. it reports the partition to the claimant, which marks it done in the
//!    next ring version once every receiver reported it.
//!
//! Writes during the move reach both lists (W in each) and reads count the
//! current list, so nothing acknowledged is missed in between. An old
//! replica that is not in the partition's list any more deletes its copy
//! once every member announces the ring version that dropped it, so a node
//! with an older ring finds the data still in place; until then, and after,
//! it refuses replica traffic for the partition from senders with an older
//! ring, which makes them fetch the newer one.

use crate::aae::{ExchangeOutcome, RepairPacer};
use crate::node::Node;
use crate::peers::header;
use crate::store::ReplicaOp;
use kv_cluster::hash::partition_range;
use kv_cluster::membership::MemberStatus;
use kv_cluster::ring::Ring;
use kv_cluster::version::State;
use kv_cluster::{format_node_id, NodeId};
use kv_proto::v1::{
    PartitionEntry, PartitionPageRequest, PartitionPageResponse, TransferDoneRequest,
    TransferStatus,
};
use kv_proto::FORMAT_VERSION;
use kv_storage::{record, Space, WriteOp};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tonic::Status;

/// Partitions copied before they are compared and reported together.
const PARTITIONS_PER_BATCH: usize = 16;

/// Records per page of a partition transfer.
const PAGE_ENTRIES: u32 = 500;

/// Records deleted per storage job when a node drops a partition's copy.
const DELETE_CHUNK: usize = 1000;

/// Transfer progress of one node, receiver and claimant side.
#[derive(Default)]
pub struct Transfers {
    state: Mutex<ReceiveState>,
    keys_received: AtomicU64,
    bytes_received: AtomicU64,
    /// Claimant side: by plan, the receivers that reported each partition.
    reports: Mutex<BTreeMap<u64, BTreeMap<u32, BTreeSet<NodeId>>>>,
}

#[derive(Default)]
struct ReceiveState {
    /// Ring version that started the plan this state belongs to.
    plan_started: u64,
    /// Partitions of the plan merged from every old replica.
    received: BTreeSet<u32>,
    /// Partitions whose full copy has been merged; the exchanges may still
    /// be missing.
    copied: BTreeSet<u32>,
    current: Option<u32>,
    waiting: String,
    keys_per_second: f64,
    bytes_per_second: f64,
}

/// Counts of one partition copy.
#[derive(Default)]
struct Copied {
    keys: u64,
    bytes: u64,
}

impl Transfers {
    fn state(&self) -> std::sync::MutexGuard<'_, ReceiveState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records that `receiver` has received `partitions` of the plan
    /// started at `plan_started`.
    pub fn record_report(&self, plan_started: u64, receiver: NodeId, partitions: &[u32]) {
        let mut reports = self
            .reports
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        reports.retain(|plan, _| *plan >= plan_started);
        let plan = reports.entry(plan_started).or_default();
        for &partition in partitions {
            plan.entry(partition).or_default().insert(receiver);
        }
    }

    /// Moving partitions of `ring` that every receiver has reported. A
    /// receiver that was removed counts as reported: the plan then ends
    /// with it as an owner, and the next plan moves its partitions away,
    /// copied from the replicas that hold them.
    pub fn partitions_ready(&self, ring: &Ring, removed: &BTreeSet<NodeId>) -> Vec<u32> {
        let Some(plan) = &ring.plan else {
            return Vec::new();
        };
        let reports = self
            .reports
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let empty = BTreeMap::new();
        let reported = reports.get(&plan.started).unwrap_or(&empty);
        ring.moving_partitions()
            .into_iter()
            .filter(|partition| {
                let Some(moving) = ring.moving(*partition) else {
                    return false;
                };
                let done = reported.get(partition);
                moving.receivers().iter().all(|node| {
                    removed.contains(node) || done.is_some_and(|done| done.contains(node))
                })
            })
            .collect()
    }
}

/// Partitions `me` receives in the plan of `ring`, done ones included.
fn planned_receipts(ring: &Ring, me: NodeId) -> BTreeSet<u32> {
    let Some(planned) = ring.planned() else {
        return BTreeSet::new();
    };
    let current = Ring {
        plan: None,
        ..ring.clone()
    };
    (0..ring.partitions)
        .filter(|&partition| {
            planned.preference_list(partition).contains(&me)
                && !current.preference_list(partition).contains(&me)
        })
        .collect()
}

impl Node {
    /// Receives partitions, reports them, and deletes dropped copies, until
    /// shutdown.
    pub async fn run_transfers(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut ticks = tokio::time::interval(self.config.transfer_interval());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let pacer = RepairPacer::new(self.config.transfer_max_keys_per_second);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.changed() => return,
            }
            tokio::select! {
                _ = self.transfer_round(&pacer) => {}
                _ = shutdown.changed() => return,
            }
            tokio::select! {
                _ = self.drop_copies_not_replicated() => {}
                _ = shutdown.changed() => return,
            }
            if self.finish_leaving().await {
                return;
            }
        }
    }

    /// Receives the next partitions of the running plan, one at a time,
    /// and reports the received ones to the claimant.
    async fn transfer_round(self: &Arc<Self>, pacer: &RepairPacer) {
        let ring = self.view.ring();
        let me = self.node_id();
        let Some(plan) = ring.plan.clone() else {
            let mut state = self.transfers.state();
            state.current = None;
            state.waiting.clear();
            return;
        };
        {
            let mut state = self.transfers.state();
            if state.plan_started != plan.started {
                state.plan_started = plan.started;
                state.received.clear();
                state.copied.clear();
                state.waiting.clear();
            }
        }
        let pending: Vec<u32> = ring
            .moving_partitions()
            .into_iter()
            .filter(|partition| {
                ring.moving(*partition)
                    .is_some_and(|moving| moving.receivers().contains(&me))
            })
            .collect();
        // Copies run one partition at a time. The comparisons with the other
        // old replicas run per replica for a batch of copied partitions,
        // which saves most of their round trips, and each batch is reported
        // at once, so partitions flip while the rest still move.
        let unreceived: Vec<u32> = {
            let state = self.transfers.state();
            pending
                .iter()
                .copied()
                .filter(|partition| !state.received.contains(partition))
                .collect()
        };
        for batch in unreceived.chunks(PARTITIONS_PER_BATCH) {
            let mut sources_of: BTreeMap<u32, Vec<NodeId>> = BTreeMap::new();
            let mut stopped = false;
            for partition in batch.iter().copied() {
                if self.view.ring().plan.as_ref().map(|plan| plan.started) != Some(plan.started) {
                    stopped = true;
                    break;
                }
                self.transfers.state().current = Some(partition);
                let copied = self.copy_step(&ring, partition, pacer).await;
                self.transfers.state().current = None;
                match copied {
                    Ok(sources) => {
                        sources_of.insert(partition, sources);
                    }
                    Err(reason) => {
                        self.transfer_waits(format!("partition {partition}: {reason}"));
                        stopped = true;
                        break;
                    }
                }
            }
            let compared = self.compare_copies(&sources_of, pacer).await;
            let complete = compared.len() == sources_of.len();
            self.transfers.state().received.extend(compared);
            self.report_all_received(plan.started, &pending).await;
            if stopped || !complete {
                return;
            }
        }
        self.report_all_received(plan.started, &pending).await;
        self.transfers.state().waiting.clear();
    }

    /// Reports every partition of `pending` received so far to the claimant.
    async fn report_all_received(self: &Arc<Self>, plan_started: u64, pending: &[u32]) {
        let received: Vec<u32> = {
            let state = self.transfers.state();
            pending
                .iter()
                .copied()
                .filter(|partition| state.received.contains(partition))
                .collect()
        };
        if !received.is_empty() {
            self.report_received(plan_started, &received).await;
        }
    }

    /// Records why the transfer waits, and logs it (rate limited).
    fn transfer_waits(&self, reason: String) {
        if let Some(suppressed) = self.warnings.admit("partition transfer") {
            tracing::warn!(%reason, suppressed, "partition transfer waits; retrying");
        }
        self.transfers.state().waiting = reason;
    }

    /// Copies one moving partition from an old replica, unless this plan
    /// copied it already, and returns the old replicas to compare it with.
    async fn copy_step(
        self: &Arc<Self>,
        ring: &Ring,
        partition: u32,
        pacer: &RepairPacer,
    ) -> Result<Vec<NodeId>, String> {
        let moving = ring
            .moving(partition)
            .ok_or_else(|| "no longer moving".to_string())?;
        // Removed nodes are gone, and an operator marked the marked-down
        // ones dead: neither is waited for.
        let (removed, marked_down) = self
            .view
            .with_membership(|table| (table.removed.clone(), table.marked_down.clone()));
        let me = self.node_id();
        let sources: Vec<NodeId> = moving
            .old
            .iter()
            .copied()
            .filter(|id| *id != me && !removed.contains(id) && !marked_down.contains(id))
            .collect();
        if sources.is_empty() {
            return Err("no old replica is left to copy from".to_string());
        }

        let already_copied = self.transfers.state().copied.contains(&partition);
        if !already_copied {
            // A reachable old replica that leaves the list goes first: its
            // copy is the one that would otherwise be lost.
            let mut order = sources.clone();
            order.sort_by_key(|id| (!self.view.is_up(*id), moving.new.contains(id)));
            let source = order[0];
            if !self.view.is_up(source) {
                return Err(format!(
                    "old replica {} is unreachable",
                    self.describe_node(source)
                ));
            }
            self.drop_partition_copy(partition).await?;
            let started = Instant::now();
            let copied = self
                .copy_partition(source, partition, ring.version, pacer)
                .await?;
            let seconds = started.elapsed().as_secs_f64().max(0.001);
            let mut state = self.transfers.state();
            state.keys_per_second = copied.keys as f64 / seconds;
            state.bytes_per_second = copied.bytes as f64 / seconds;
            state.copied.insert(partition);
            tracing::info!(
                partition,
                source = %self.describe_node(source),
                keys = copied.keys,
                bytes = copied.bytes,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "copied a partition"
            );
        }

        Ok(sources)
    }

    /// Compares each copied partition with every other old replica by
    /// anti-entropy, one exchange per replica for all its partitions, and
    /// returns the partitions whose comparisons all succeeded.
    async fn compare_copies(
        self: &Arc<Self>,
        sources_of: &BTreeMap<u32, Vec<NodeId>>,
        pacer: &RepairPacer,
    ) -> Vec<u32> {
        if self.config.aae == crate::config::OnOff::Off {
            return self.copy_from_every_source(sources_of, pacer).await;
        }
        let mut failed: BTreeSet<u32> = BTreeSet::new();
        for &partition in sources_of.keys() {
            if self.store.trees().built_at(partition).is_none() {
                if let Err(reason) = self.build_tree(partition).await {
                    self.transfer_waits(format!(
                        "partition {partition}: cannot build its hash tree: {reason}"
                    ));
                    failed.insert(partition);
                }
            }
        }
        let mut by_source: BTreeMap<NodeId, Vec<u32>> = BTreeMap::new();
        for (&partition, sources) in sources_of {
            if failed.contains(&partition) {
                continue;
            }
            for &source in sources {
                by_source.entry(source).or_default().push(partition);
            }
        }
        for (source, partitions) in by_source {
            let mut outcome = ExchangeOutcome::default();
            let result = self
                .exchange_with(source, &partitions, pacer, &mut outcome)
                .await;
            let problem = match result {
                Err(reason) => Some(format!("anti-entropy exchange failed: {reason}")),
                Ok(()) if outcome.partitions_compared < partitions.len() as u64 => Some(format!(
                    "{} of {} hash trees are not built there yet",
                    partitions.len() as u64 - outcome.partitions_compared,
                    partitions.len()
                )),
                Ok(()) => None,
            };
            if let Some(problem) = problem {
                self.transfer_waits(format!(
                    "comparing {} partitions with {}: {problem}",
                    partitions.len(),
                    self.describe_node(source)
                ));
                failed.extend(partitions);
            }
        }
        sources_of
            .keys()
            .copied()
            .filter(|partition| !failed.contains(partition))
            .collect()
    }

    /// Without hash trees (`--aae off`), merges the whole copy of every
    /// other old replica instead of comparing trees with it, and returns
    /// the partitions whose copies all merged.
    async fn copy_from_every_source(
        self: &Arc<Self>,
        sources_of: &BTreeMap<u32, Vec<NodeId>>,
        pacer: &RepairPacer,
    ) -> Vec<u32> {
        let ring_version = self.view.ring().version;
        let mut merged = Vec::new();
        'partitions: for (&partition, sources) in sources_of {
            for &source in sources {
                if let Err(reason) = self
                    .copy_partition(source, partition, ring_version, pacer)
                    .await
                {
                    self.transfer_waits(format!(
                        "partition {partition}: copying from {} failed: {reason}",
                        self.describe_node(source)
                    ));
                    continue 'partitions;
                }
            }
            merged.push(partition);
        }
        merged
    }

    /// Pages through `source`'s copy of `partition` and merges every record.
    async fn copy_partition(
        self: &Arc<Self>,
        source: NodeId,
        partition: u32,
        ring_version: u64,
        pacer: &RepairPacer,
    ) -> Result<Copied, String> {
        let address = self
            .view
            .address_of(source)
            .ok_or_else(|| format!("address of {} unknown", format_node_id(source)))?;
        let mut client = self
            .peers
            .peer(&address)
            .map_err(|status| status.message().to_string())?;
        let timeout = self.config.request_timeout();
        let cluster_id = self.cluster_id();
        let mut after = Vec::new();
        let mut copied = Copied::default();
        loop {
            let request = PartitionPageRequest {
                header: Some(header(
                    &cluster_id,
                    self.node_id(),
                    ring_version,
                    Some(timeout),
                )),
                partition,
                after: after.clone(),
                limit: PAGE_ENTRIES,
            };
            let page = tokio::time::timeout(timeout, client.partition_page(request))
                .await
                .map_err(|_| format!("a page from {} timed out", self.describe_node(source)))?
                .map_err(|status| {
                    format!(
                        "{} refused a page: {}",
                        self.describe_node(source),
                        status.message()
                    )
                })?
                .into_inner();
            let mut ops = Vec::with_capacity(page.entries.len());
            pacer.wait_for(page.entries.len() as u32).await;
            for entry in page.entries.iter().filter(|entry| !entry.key.is_empty()) {
                let state = State::decode(&entry.state)
                    .map_err(|error| format!("a transferred record does not decode: {error}"))?;
                copied.bytes += (entry.key.len() + entry.state.len()) as u64;
                ops.push(ReplicaOp::Write {
                    key: entry.key.clone(),
                    state,
                });
            }
            copied.keys += ops.len() as u64;
            let merged = ops.len() as u64;
            let results = self
                .store
                .apply_batch(ops)
                .await
                .map_err(|error| format!("cannot store transferred records: {error}"))?;
            if let Some(Err(error)) = results.into_iter().find(|result| result.is_err()) {
                return Err(format!("cannot store a transferred record: {error}"));
            }
            self.transfers
                .keys_received
                .fetch_add(merged, Ordering::Relaxed);
            self.transfers.bytes_received.fetch_add(
                page.entries
                    .iter()
                    .map(|entry| (entry.key.len() + entry.state.len()) as u64)
                    .sum(),
                Ordering::Relaxed,
            );
            match page.entries.last() {
                Some(last) if !page.last => after = last.stored_key.clone(),
                _ => return Ok(copied),
            }
        }
    }

    /// Tells the claimant which partitions this node has received. The
    /// claimant may change or miss a report, so every round repeats it
    /// until the ring marks the partitions done.
    async fn report_received(self: &Arc<Self>, plan_started: u64, partitions: &[u32]) {
        let Some(claimant) = self.view.membership().claimant() else {
            return;
        };
        let ring = self.view.ring();
        if claimant == self.node_id() {
            self.transfers
                .record_report(plan_started, claimant, partitions);
            return;
        }
        let Some(address) = self.view.address_of(claimant) else {
            return;
        };
        let Ok(mut client) = self.peers.peer(&address) else {
            return;
        };
        let request = TransferDoneRequest {
            header: Some(header(
                &ring.cluster_id,
                self.node_id(),
                ring.version,
                Some(Duration::from_secs(2)),
            )),
            plan_started,
            partitions: partitions.to_vec(),
        };
        let sent =
            tokio::time::timeout(Duration::from_secs(2), client.transfer_done(request)).await;
        if !matches!(sent, Ok(Ok(_))) {
            tracing::debug!(claimant = %self.describe_node(claimant), "cannot report received partitions to the claimant; retrying next round");
        }
    }

    /// Serves one page of this node's copy of a partition.
    pub async fn serve_partition_page(
        self: &Arc<Self>,
        request: PartitionPageRequest,
    ) -> Result<PartitionPageResponse, Status> {
        self.check_header(request.header.as_ref())?;
        let ring = self.view.ring();
        if request.partition >= ring.partitions {
            return Err(Status::invalid_argument(format!(
                "partition {} is outside 0..{}",
                request.partition, ring.partitions
            )));
        }
        let (start, end) = partition_range(request.partition, ring.partitions);
        let from = if request.after.is_empty() {
            start
        } else {
            let mut next = request.after.clone();
            next.push(0);
            next.max(start)
        };
        let limit = request.limit.clamp(1, 10 * PAGE_ENTRIES) as usize;
        let engine = self.store.engine().clone();
        let entries = self
            .store
            .pool()
            .run(move || engine.scan(Space::Data, &from, end.as_deref(), limit))
            .await
            .map_err(|error| Status::internal(error.to_string()))?
            .map_err(|error| Status::internal(error.to_string()))?;
        let last = entries.len() < limit;
        let mut response = PartitionPageResponse {
            format_version: FORMAT_VERSION,
            entries: Vec::with_capacity(entries.len()),
            last,
            unreadable: 0,
        };
        for (stored_key, value) in entries {
            let key = stored_key.get(8..).unwrap_or_default().to_vec();
            let decoded = record::decode(&value)
                .ok()
                .and_then(|payload| kv_cluster::causality::decode_record(payload).ok());
            match decoded {
                Some((state, _)) => response.entries.push(PartitionEntry {
                    stored_key,
                    key,
                    state: state.encode(),
                }),
                None => {
                    // The record is skipped, but paging goes on after it.
                    response.unreadable += 1;
                    response.entries.push(PartitionEntry {
                        stored_key,
                        key: Vec::new(),
                        state: Vec::new(),
                    });
                }
            }
        }
        Ok(response)
    }

    /// Deletes this node's copy of `partition`, in chunks.
    async fn drop_partition_copy(&self, partition: u32) -> Result<u64, String> {
        let ring = self.view.ring();
        let (start, end) = partition_range(partition, ring.partitions);
        let mut deleted = 0u64;
        loop {
            let engine = self.store.engine().clone();
            let (from, until) = (start.clone(), end.clone());
            let count = self
                .store
                .pool()
                .run(move || -> Result<usize, kv_storage::StorageError> {
                    let entries =
                        engine.scan(Space::Data, &from, until.as_deref(), DELETE_CHUNK)?;
                    let ops: Vec<WriteOp> = entries
                        .into_iter()
                        .map(|(key, _)| WriteOp::delete(Space::Data, key))
                        .collect();
                    engine.write(&ops)?;
                    Ok(ops.len())
                })
                .await
                .map_err(|error| error.to_string())?
                .map_err(|error| error.to_string())?;
            deleted += count as u64;
            if count < DELETE_CHUNK {
                break;
            }
        }
        if deleted > 0 {
            self.store.trees().discard(partition);
            self.store
                .commit()
                .durable()
                .await
                .map_err(|error| error.to_string())?;
        }
        Ok(deleted)
    }

    /// Deletes the copies of partitions that are no longer in this node's
    /// replica sets, once every member announces this node's ring version.
    async fn drop_copies_not_replicated(self: &Arc<Self>) {
        let (ring, sets) = self.view.ring_and_replica_sets();
        let me = self.node_id();
        let membership = self.view.membership();
        let behind = membership.members.values().find(|member| {
            member.ring_version < ring.version
                && member.status != MemberStatus::Left
                && !membership.marked_down.contains(&member.id)
        });
        if behind.is_some() {
            return;
        }
        for partition in 0..ring.partitions {
            let replicated = sets
                .get(partition as usize)
                .is_some_and(|set| set.contains(&me));
            if replicated {
                continue;
            }
            let (start, end) = partition_range(partition, ring.partitions);
            let engine = self.store.engine().clone();
            let any = self
                .store
                .pool()
                .run(move || engine.scan(Space::Data, &start, end.as_deref(), 1))
                .await;
            if !matches!(any, Ok(Ok(ref entries)) if !entries.is_empty()) {
                continue;
            }
            match self.drop_partition_copy(partition).await {
                Ok(deleted) => tracing::info!(
                    partition,
                    deleted,
                    ring_version = ring.version,
                    "deleted the copy of a partition this node no longer holds"
                ),
                Err(reason) => {
                    tracing::warn!(partition, %reason, "failed to delete the copy of a partition this node no longer replicates; retrying")
                }
            }
        }
    }

    /// Ends a decommission: once no partition names this node and every
    /// member has seen that ring, records that the node left and asks the
    /// process to stop. Returns true when it stopped the node.
    async fn finish_leaving(self: &Arc<Self>) -> bool {
        if self.view.own_status() != MemberStatus::Left {
            return false;
        }
        let ring = self.view.ring();
        let membership = self.view.membership();
        let me = self.node_id();
        let behind = membership.members.values().any(|member| {
            member.id != me
                && member.ring_version < ring.version
                && member.status != MemberStatus::Left
                && !membership.marked_down.contains(&member.id)
                && self.view.is_up(member.id)
        });
        if behind {
            return false;
        }
        // Hints held here still belong to other nodes.
        if self.hints.counts().values().any(|count| *count > 0) {
            return false;
        }
        let node = self.clone();
        let cluster_id = ring.cluster_id.clone();
        match tokio::task::spawn_blocking(move || node.meta.mark_left(&cluster_id)).await {
            Ok(Ok(())) => {}
            _ => {
                tracing::error!("cannot record that this node left; retrying");
                return false;
            }
        }
        // Announce the status before stopping, so the others see it.
        self.view.beat(self.generation, self.store.holds_data());
        for member in membership.members.values() {
            if member.id != me && self.view.is_up(member.id) {
                let _ = self.gossip_with(&member.address).await;
            }
        }
        tracing::info!(cluster_id = %ring.cluster_id, "this node has handed over every partition and left the cluster; stopping");
        let _ = self.leave_signal.send(true);
        true
    }

    /// Returns the progress of the partitions this node receives, for
    /// `Status`.
    pub fn transfer_status(&self) -> TransferStatus {
        let ring = self.view.ring();
        let state = self.transfers.state();
        let (plan_started, to_receive, received) = match &ring.plan {
            Some(plan) => {
                let receipts = planned_receipts(&ring, self.node_id());
                let done = receipts
                    .iter()
                    .filter(|partition| {
                        plan.done.contains(partition)
                            || (state.plan_started == plan.started
                                && state.received.contains(partition))
                    })
                    .count();
                (plan.started, receipts.len() as u32, done as u32)
            }
            None => (0, 0, 0),
        };
        TransferStatus {
            plan_started,
            partitions_to_receive: to_receive,
            partitions_received: received,
            current_partition: state.current.map(i64::from).unwrap_or(-1),
            keys_received: self.transfers.keys_received.load(Ordering::Relaxed),
            bytes_received: self.transfers.bytes_received.load(Ordering::Relaxed),
            keys_per_second: state.keys_per_second,
            bytes_per_second: state.bytes_per_second,
            waiting: state.waiting.clone(),
        }
    }

    /// Returns why a planned ring change waits, or an empty string when
    /// nothing waits.
    pub fn ring_change_waiting(&self) -> String {
        self.waiting_change
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
            .unwrap_or_default()
    }
}
