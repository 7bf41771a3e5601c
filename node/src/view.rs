//! This node's view of the cluster: the newest ring it has seen, the
//! membership table, and its own failure-detector opinion of every peer.
//!
//! Up and down are local opinions, never gossiped as facts.

use kv_cluster::detector::{DetectorConfig, PhiDetector};
use kv_cluster::membership::{Member, MemberStatus, Membership, MembershipChange};
use kv_cluster::ring::Ring;
use kv_cluster::{format_node_id, NodeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// A ring, the preference list of each of its partitions, and each
/// partition's replica set (the list, plus the receivers while it moves).
struct RingWithLists {
    ring: Arc<Ring>,
    lists: Arc<Vec<Vec<NodeId>>>,
    sets: Arc<Vec<Vec<NodeId>>>,
}

fn with_lists(ring: Ring) -> RingWithLists {
    let lists = Arc::new(ring.preference_lists());
    let sets = Arc::new(
        (0..ring.partitions)
            .map(|partition| ring.replica_set(partition))
            .collect(),
    );
    RingWithLists {
        ring: Arc::new(ring),
        lists,
        sets,
    }
}

struct Liveness {
    detector: PhiDetector,
    /// (generation, version) of the member's entry when last seen.
    seen: (u64, u64),
}

/// Shared cluster view of one node.
pub struct ClusterView {
    pub node_id: NodeId,
    pub address: String,
    /// The current ring and its preference lists, computed once per ring
    /// rather than once per request.
    ring: RwLock<RingWithLists>,
    membership: Mutex<Membership>,
    liveness: Mutex<HashMap<NodeId, Liveness>>,
    detector_config: DetectorConfig,
    started: Instant,
    /// Set when an operator decommissioned this node.
    leaving: std::sync::atomic::AtomicBool,
}

impl ClusterView {
    pub fn new(
        node_id: NodeId,
        address: String,
        ring: Ring,
        membership: Membership,
        phi_threshold: f64,
    ) -> ClusterView {
        ClusterView {
            node_id,
            address,
            ring: RwLock::new(with_lists(ring)),
            membership: Mutex::new(membership),
            liveness: Mutex::new(HashMap::new()),
            detector_config: DetectorConfig {
                threshold: phi_threshold,
                ..DetectorConfig::default()
            },
            started: Instant::now(),
            leaving: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Milliseconds since this view was created: the clock of the detectors.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn uptime_seconds(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    pub fn ring(&self) -> Arc<Ring> {
        self.ring
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .ring
            .clone()
    }

    /// Returns the current ring and the replica set of each partition: the
    /// nodes that hold its data, receivers of a moving partition included.
    pub fn ring_and_replica_sets(&self) -> (Arc<Ring>, Arc<Vec<Vec<NodeId>>>) {
        let current = self
            .ring
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        (current.ring.clone(), current.sets.clone())
    }

    /// Preference list of a user key in the current ring.
    pub fn preference_list_for_key(&self, key: &[u8]) -> Vec<NodeId> {
        let current = self
            .ring
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        current
            .lists
            .get(current.ring.partition_for_key(key) as usize)
            .cloned()
            .unwrap_or_default()
    }

    /// Replica set of a user key in the current ring: its preference list,
    /// and the nodes receiving its partition while it moves.
    pub fn replica_set_for_key(&self, key: &[u8]) -> Vec<NodeId> {
        let current = self
            .ring
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        current
            .sets
            .get(current.ring.partition_for_key(key) as usize)
            .cloned()
            .unwrap_or_default()
    }

    /// Adopts `ring` when it is newer than the current one; returns whether it
    /// did. A ring of another cluster is never adopted.
    pub fn offer_ring(&self, ring: Ring) -> bool {
        let mut current = self
            .ring
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if ring.cluster_id != current.ring.cluster_id || !ring.is_newer_than(&current.ring) {
            return false;
        }
        *current = with_lists(ring);
        true
    }

    pub fn membership(&self) -> Membership {
        self.membership
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Runs `update` on the membership table under its lock.
    pub fn with_membership<T>(&self, update: impl FnOnce(&mut Membership) -> T) -> T {
        let mut membership = self
            .membership
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        update(&mut membership)
    }

    /// Merges a received table, feeds the failure detectors with every entry
    /// whose heartbeat advanced, and logs what changed.
    pub fn merge_membership(&self, received: &Membership) {
        let changes: Vec<MembershipChange> = self.with_membership(|table| {
            let mut received = received.clone();
            // Only this node writes its own entry.
            received.members.remove(&self.node_id);
            table.merge(&received)
        });
        for change in &changes {
            log_change(change);
        }
        self.observe_heartbeats();
    }

    /// Records a heartbeat for every member whose entry advanced since the
    /// last look.
    pub fn observe_heartbeats(&self) {
        let now = self.now_ms();
        let membership = self.membership();
        let mut liveness = self
            .liveness
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for member in membership.members.values() {
            if member.id == self.node_id {
                continue;
            }
            let seen = (member.generation, member.version);
            let entry = liveness.entry(member.id).or_insert_with(|| Liveness {
                detector: PhiDetector::new(self.detector_config.clone()),
                seen: (0, 0),
            });
            if seen > entry.seen {
                let was_up = entry.detector.is_available(now);
                if seen.0 > entry.seen.0 && entry.seen != (0, 0) {
                    // A restart: the old arrival history no longer applies.
                    entry.detector = PhiDetector::new(self.detector_config.clone());
                }
                entry.detector.heartbeat(now);
                entry.seen = seen;
                if !was_up {
                    tracing::info!(peer = %format_node_id(member.id), address = %member.address, "peer is up");
                }
            }
        }
    }

    /// This node's opinion: is `id` up? This node itself always is.
    pub fn is_up(&self, id: NodeId) -> bool {
        if id == self.node_id {
            return true;
        }
        let now = self.now_ms();
        let liveness = self
            .liveness
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        liveness
            .get(&id)
            .is_some_and(|entry| entry.detector.is_available(now))
    }

    /// Phi and milliseconds since the last heartbeat of a peer.
    pub fn suspicion(&self, id: NodeId) -> (f64, Option<u64>) {
        if id == self.node_id {
            return (0.0, Some(0));
        }
        let now = self.now_ms();
        let liveness = self
            .liveness
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match liveness.get(&id) {
            Some(entry) => (
                entry.detector.phi(now),
                entry
                    .detector
                    .last_heartbeat_ms()
                    .map(|last| now.saturating_sub(last)),
            ),
            None => (f64::INFINITY, None),
        }
    }

    /// Logs peers that went down since the last call; returns the down set.
    pub fn note_down_transitions(&self, previously_down: &mut std::collections::BTreeSet<NodeId>) {
        let membership = self.membership();
        for id in membership
            .members
            .keys()
            .copied()
            .filter(|id| *id != self.node_id)
        {
            let down = !self.is_up(id);
            if down && previously_down.insert(id) {
                let address = membership
                    .members
                    .get(&id)
                    .map(|m| m.address.clone())
                    .unwrap_or_default();
                tracing::warn!(peer = %format_node_id(id), %address, "peer is down (failure detector)");
            } else if !down {
                previously_down.remove(&id);
            }
        }
    }

    pub fn address_of(&self, id: NodeId) -> Option<String> {
        if id == self.node_id {
            return Some(self.address.clone());
        }
        self.with_membership(|table| table.members.get(&id).map(|member| member.address.clone()))
    }

    pub fn member(&self, id: NodeId) -> Option<Member> {
        self.with_membership(|table| table.members.get(&id).cloned())
    }

    /// Marks this node as leaving: its next heartbeat announces it, and the
    /// claimant plans its partitions away.
    pub fn set_leaving(&self) {
        self.leaving
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Returns this node's status as its heartbeats announce it. Once
    /// decommissioned it is leaving, and left when no partition names it
    /// any more. Otherwise it is normal when it owns partitions, and
    /// joining before.
    pub fn own_status(&self) -> MemberStatus {
        let ring = self.ring();
        let in_ring = ring.nodes().contains(&self.node_id);
        if self.leaving.load(std::sync::atomic::Ordering::SeqCst) {
            if in_ring {
                MemberStatus::Leaving
            } else {
                MemberStatus::Left
            }
        } else if ring.owners.contains(&self.node_id) {
            MemberStatus::Normal
        } else {
            MemberStatus::Joining
        }
    }

    /// Updates this node's own entry for a heartbeat: bumps its version and
    /// refreshes status, ring version and the holds-data flag.
    pub fn beat(&self, generation: u64, holds_data: bool) {
        let ring = self.ring();
        let status = self.own_status();
        self.with_membership(|table| {
            let version = table
                .members
                .get(&self.node_id)
                .map(|member| member.version + 1)
                .unwrap_or(1);
            table.members.insert(
                self.node_id,
                Member {
                    id: self.node_id,
                    address: self.address.clone(),
                    status,
                    generation,
                    version,
                    ring_version: ring.version,
                    holds_data,
                },
            );
        });
    }

    /// Returns why the claimant may not change the ring now, or None when the
    /// ring is ready: every member not marked down is up and on this ring
    /// version.
    pub fn ring_not_ready_reason(&self) -> Option<String> {
        let ring = self.ring();
        let membership = self.membership();
        for member in membership.members.values() {
            if membership.marked_down.contains(&member.id) || member.status == MemberStatus::Left {
                continue;
            }
            if !self.is_up(member.id) {
                return Some(format!(
                    "node {} ({}) is unreachable",
                    format_node_id(member.id),
                    member.address
                ));
            }
            if member.ring_version != ring.version {
                return Some(format!(
                    "node {} ({}) is on ring version {}, not {}",
                    format_node_id(member.id),
                    member.address,
                    member.ring_version,
                    ring.version
                ));
            }
        }
        None
    }
}

fn log_change(change: &MembershipChange) {
    match change {
        MembershipChange::Joined { id, address } => {
            tracing::info!(peer = %format_node_id(*id), %address, "member added")
        }
        MembershipChange::Restarted { id, generation } => {
            tracing::info!(peer = %format_node_id(*id), generation, "member restarted")
        }
        MembershipChange::StatusChanged { id, from, to } => {
            tracing::info!(peer = %format_node_id(*id), from = from.as_str(), to = to.as_str(), "member status changed")
        }
        MembershipChange::AddressChanged { id, from, to } => {
            tracing::info!(peer = %format_node_id(*id), %from, %to, "member address changed")
        }
        MembershipChange::Removed { id } => {
            tracing::info!(peer = %format_node_id(*id), "member removed")
        }
        MembershipChange::MarkedDown { id } => {
            tracing::info!(peer = %format_node_id(*id), "member marked down")
        }
    }
}
