//! Membership gossip, the join handshake, identity checks and the claimant.
//!
//! Every gossip interval a node bumps its own heartbeat and exchanges its
//! whole membership table and ring with one random live peer (push-pull).
//! About one round in four it picks a peer it considers down or a seed
//! instead, so that healed partitions and restarted nodes are found. The
//! newest ring, ordered by (version, claimant), wins everywhere.
//!
//! Identity: every peer message carries the cluster id. A node refuses
//! messages of another cluster, of another N or Q, of a removed node id, and
//! of a node that reuses the id of a live member at another address (a
//! copied data directory). The refused node logs why and exits.

use crate::node::Node;
use crate::peers::header;
use kv_cluster::membership::{Member, MemberStatus, Membership};
use kv_cluster::ring::Ring;
use kv_cluster::{format_node_id, NodeId};
use kv_proto::v1::{
    GossipRequest, GossipResponse, JoinRequest, JoinResponse, MemberEntry, PeerHeader,
};
use kv_proto::FORMAT_VERSION;
use rand::seq::IndexedRandom;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tonic::metadata::MetadataValue;
use tonic::Status;

/// Value of the `ringkv-error` metadata on a refusal the sender cannot
/// recover from by retrying (wrong cluster, duplicate or removed id).
pub const IDENTITY_REFUSAL: &str = "identity";

/// Builds a rejection that makes the rejected node stop.
pub fn identity_refusal(message: String) -> Status {
    let mut status = Status::failed_precondition(message);
    status.metadata_mut().insert(
        crate::error::ERROR_KIND_KEY,
        MetadataValue::from_static(IDENTITY_REFUSAL),
    );
    status
}

pub fn is_identity_refusal(status: &Status) -> bool {
    status
        .metadata()
        .get(crate::error::ERROR_KIND_KEY)
        .is_some_and(|value| value == IDENTITY_REFUSAL)
}

pub fn to_entries(membership: &Membership) -> Vec<MemberEntry> {
    membership
        .members
        .values()
        .map(|member| MemberEntry {
            node_id: member.id,
            address: member.address.clone(),
            status: member.status.as_str().to_string(),
            generation: member.generation,
            version: member.version,
            ring_version: member.ring_version,
            holds_data: member.holds_data,
        })
        .collect()
}

pub fn from_entries(entries: &[MemberEntry], removed: &[u64], marked_down: &[u64]) -> Membership {
    let mut membership = Membership::default();
    for entry in entries {
        let Some(status) = MemberStatus::parse(&entry.status) else {
            tracing::warn!(peer = %format_node_id(entry.node_id), status = %entry.status, "ignoring a member entry with an unknown status");
            continue;
        };
        membership.members.insert(
            entry.node_id,
            Member {
                id: entry.node_id,
                address: entry.address.clone(),
                status,
                generation: entry.generation,
                version: entry.version,
                ring_version: entry.ring_version,
                holds_data: entry.holds_data,
            },
        );
    }
    membership.removed = removed.iter().copied().collect();
    membership.marked_down = marked_down.iter().copied().collect();
    membership
}

impl Node {
    /// Checks the header of a peer message: format version, cluster id and
    /// removed sender.
    pub fn check_header(&self, header: Option<&PeerHeader>) -> Result<(), Status> {
        let Some(header) = header else {
            return Err(Status::invalid_argument("peer message without a header"));
        };
        if header.format_version != FORMAT_VERSION {
            return Err(Status::failed_precondition(format!(
                "unsupported peer message format version {}; this node speaks version {FORMAT_VERSION}",
                header.format_version
            )));
        }
        let cluster_id = self.cluster_id();
        if header.cluster_id != cluster_id {
            return Err(identity_refusal(format!(
                "cluster id mismatch: the sender belongs to cluster {}, this node to cluster {cluster_id}; point the node at seeds of its own cluster",
                header.cluster_id
            )));
        }
        if self
            .view
            .with_membership(|table| table.removed.contains(&header.sender))
        {
            return Err(identity_refusal(format!(
                "node {} was removed from cluster {cluster_id}; wipe its data directory to join as a new node",
                format_node_id(header.sender)
            )));
        }
        Ok(())
    }

    /// Refuses a sender that claims the id of this node or of a live member
    /// at another address.
    fn check_identity(&self, sender: NodeId, address: &str) -> Result<(), Status> {
        if sender == self.node_id() && address != self.view.address {
            return Err(identity_refusal(format!(
                "duplicate node id {}: the live node at {} already uses it. Was its data directory copied? Give every node its own data directory",
                format_node_id(sender),
                self.view.address
            )));
        }
        if let Some(member) = self.view.member(sender) {
            if member.address != address && self.view.is_up(sender) {
                return Err(identity_refusal(format!(
                    "duplicate node id {}: the live node at {} already uses it. Was its data directory copied? Give every node its own data directory",
                    format_node_id(sender),
                    member.address
                )));
            }
        }
        Ok(())
    }

    fn check_shape(&self, n: u32, partitions: u32) -> Result<(), Status> {
        let ring = self.view.ring();
        if n != ring.replicas {
            return Err(identity_refusal(format!(
                "replica count mismatch: the node was started with --n {n}, cluster {} has N={}; restart it with --n {}",
                ring.cluster_id, ring.replicas, ring.replicas
            )));
        }
        if partitions != ring.partitions {
            return Err(identity_refusal(format!(
                "partition count mismatch: the node was started with --partitions {partitions}, cluster {} has Q={}; restart it with --partitions {}",
                ring.cluster_id, ring.partitions, ring.partitions
            )));
        }
        Ok(())
    }

    /// Handles a gossip request from a peer.
    pub async fn handle_gossip(
        self: &Arc<Self>,
        request: GossipRequest,
    ) -> Result<GossipResponse, Status> {
        self.check_header(request.header.as_ref())?;
        let sender = request
            .header
            .as_ref()
            .map(|header| header.sender)
            .unwrap_or_default();
        self.check_identity(sender, &request.sender_address)?;
        self.check_shape(request.n, request.partitions)?;

        let received = from_entries(&request.members, &request.removed, &request.marked_down);
        self.view.merge_membership(&received);
        if !ring_frozen_for_test() {
            self.offer_ring_bytes(&request.ring).await;
        }
        Ok(self.gossip_response())
    }

    fn gossip_response(&self) -> GossipResponse {
        let membership = self.view.membership();
        GossipResponse {
            format_version: FORMAT_VERSION,
            members: to_entries(&membership),
            removed: membership.removed.iter().copied().collect(),
            marked_down: membership.marked_down.iter().copied().collect(),
            ring: self.view.ring().encode(),
        }
    }

    /// Adopts a received ring if it is newer, and stores it.
    pub async fn offer_ring_bytes(self: &Arc<Self>, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let ring = match Ring::decode(bytes) {
            Ok(ring) => ring,
            Err(error) => {
                tracing::warn!(%error, "ignoring an undecodable ring from a peer");
                return;
            }
        };
        self.adopt_ring(ring).await;
    }

    async fn adopt_ring(self: &Arc<Self>, ring: Ring) {
        let version = ring.version;
        if !self.view.offer_ring(ring.clone()) {
            return;
        }
        tracing::info!(ring_version = version, claimant = %format_node_id(ring.claimant), nodes = ring.nodes().len(), "adopted a newer ring");
        let node = self.clone();
        let saved = tokio::task::spawn_blocking(move || node.meta.save_ring(&ring)).await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "cannot store the new ring"),
            Err(error) => tracing::error!(%error, "cannot store the new ring"),
        }
    }

    /// Handles a join request from a node that has no ring yet.
    pub async fn handle_join(
        self: &Arc<Self>,
        request: JoinRequest,
    ) -> Result<JoinResponse, Status> {
        if request.format_version != FORMAT_VERSION {
            return Err(Status::failed_precondition(format!(
                "unsupported join format version {}; this node speaks version {FORMAT_VERSION}",
                request.format_version
            )));
        }
        self.check_shape(request.n, request.partitions)?;
        let ring = self.view.ring();
        let membership = self.view.membership();
        if membership.removed.contains(&request.node_id) {
            return Err(identity_refusal(format!(
                "node {} was removed from cluster {}; wipe its data directory to join as a new node",
                format_node_id(request.node_id),
                ring.cluster_id
            )));
        }
        self.check_identity(request.node_id, &request.address)?;

        self.view.with_membership(|table| {
            let known = table.members.get(&request.node_id).is_some_and(|member| {
                (member.generation, member.version) >= (request.generation, 0)
            });
            if !known {
                table.members.insert(
                    request.node_id,
                    Member {
                        id: request.node_id,
                        address: request.address.clone(),
                        status: MemberStatus::Joining,
                        generation: request.generation,
                        version: 0,
                        ring_version: ring.version,
                        holds_data: false,
                    },
                );
            }
        });
        tracing::info!(peer = %format_node_id(request.node_id), address = %request.address, "node asked to join");
        let membership = self.view.membership();
        Ok(JoinResponse {
            format_version: FORMAT_VERSION,
            cluster_id: ring.cluster_id.clone(),
            ring: ring.encode(),
            members: to_entries(&membership),
            removed: membership.removed.iter().copied().collect(),
            marked_down: membership.marked_down.iter().copied().collect(),
        })
    }

    fn gossip_request(&self) -> GossipRequest {
        let ring = self.view.ring();
        let membership = self.view.membership();
        GossipRequest {
            header: Some(header(&ring.cluster_id, self.node_id(), ring.version, None)),
            sender_address: self.view.address.clone(),
            members: to_entries(&membership),
            removed: membership.removed.iter().copied().collect(),
            marked_down: membership.marked_down.iter().copied().collect(),
            ring: ring.encode(),
            n: self.config.n,
            partitions: self.config.partitions,
        }
    }

    /// Runs one push-pull exchange with the peer at `address`.
    pub async fn gossip_with(self: &Arc<Self>, address: &str) -> Result<(), Status> {
        self.exchange_with_peer(address, ring_frozen_for_test())
            .await
    }

    /// Runs one exchange with the peer at `address` to adopt its ring when
    /// it is newer, after the peer refused a message from this node's
    /// older ring. The test hook that holds rings back does not apply.
    pub async fn fetch_newer_ring(self: &Arc<Self>, address: &str) -> Result<(), Status> {
        self.exchange_with_peer(address, false).await
    }

    async fn exchange_with_peer(
        self: &Arc<Self>,
        address: &str,
        keep_ring: bool,
    ) -> Result<(), Status> {
        let mut client = self.peers.peer(address)?;
        let request = self.gossip_request();
        let response = tokio::time::timeout(Duration::from_secs(2), client.gossip(request))
            .await
            .map_err(|_| Status::deadline_exceeded(format!("gossip with {address} timed out")))??
            .into_inner();
        let received = from_entries(&response.members, &response.removed, &response.marked_down);
        self.view.merge_membership(&received);
        if !keep_ring {
            self.offer_ring_bytes(&response.ring).await;
        }
        Ok(())
    }

    fn pick_gossip_target(&self) -> Option<String> {
        let membership = self.view.membership();
        let me = self.node_id();
        let peers: Vec<&Member> = membership
            .members
            .values()
            .filter(|member| member.id != me && !membership.removed.contains(&member.id))
            .collect();
        let up: Vec<&&Member> = peers
            .iter()
            .filter(|member| self.view.is_up(member.id))
            .collect();
        let down: Vec<&&Member> = peers
            .iter()
            .filter(|member| !self.view.is_up(member.id))
            .collect();
        let mut rng = rand::rng();
        let explore = up.is_empty() || rand::random::<f64>() < 0.25;
        if explore {
            let mut candidates: Vec<String> =
                down.iter().map(|member| member.address.clone()).collect();
            candidates.extend(
                self.config
                    .seeds
                    .iter()
                    .filter(|seed| **seed != self.view.address)
                    .cloned(),
            );
            if let Some(address) = candidates.choose(&mut rng) {
                return Some(address.clone());
            }
        }
        up.choose(&mut rng).map(|member| member.address.clone())
    }

    /// Runs the claimant's part of membership changes when this node is the
    /// claimant: marks received partitions done while a plan runs, and
    /// otherwise plans the pending joins, decommissions and removals in one
    /// plan, only while the ring is ready. Every node records why a change
    /// waits, for `Status`.
    async fn claimant_step(
        self: &Arc<Self>,
        waiting_logged: &mut Option<String>,
        settled: &mut Vec<String>,
    ) {
        let membership = self.view.membership();
        let ring = self.view.ring();
        let me = self.node_id();
        let is_claimant = membership.claimant() == Some(me);
        let in_ring = ring.nodes();
        let joining: Vec<NodeId> = membership
            .members
            .values()
            .filter(|member| member.status == MemberStatus::Joining)
            .filter(|member| !in_ring.contains(&member.id))
            .filter(|member| !membership.marked_down.contains(&member.id))
            .map(|member| member.id)
            .collect();
        let mut leaving: Vec<NodeId> = membership
            .members
            .values()
            .filter(|member| member.status == MemberStatus::Leaving)
            .map(|member| member.id)
            .filter(|id| ring.owners.contains(id))
            .collect();
        leaving.extend(
            membership
                .removed
                .iter()
                .copied()
                .filter(|id| in_ring.contains(id)),
        );
        let mut names: Vec<String> = joining.iter().copied().map(format_node_id).collect();
        names.extend(leaving.iter().copied().map(format_node_id));

        let waiting = if let Some(plan) = &ring.plan {
            if is_claimant {
                let ready = self.transfers.partitions_ready(&ring, &membership.removed);
                if !ready.is_empty() {
                    let next = ring.with_partitions_done(&ready, me);
                    let left = next.moving_partitions().len();
                    tracing::info!(
                        done = ready.len(),
                        still_moving = left,
                        ring_version = next.version,
                        "claimant marked received partitions done"
                    );
                    if next.plan.is_none() {
                        tracing::info!(
                            ring_version = next.version,
                            nodes = next.nodes().len(),
                            "ownership change complete"
                        );
                    }
                    self.adopt_ring(next).await;
                }
            }
            (!names.is_empty()).then(|| {
                format!(
                    "the plan started at ring version {} still moves {} partitions; the change of {} waits for it",
                    plan.started,
                    ring.moving_partitions().len(),
                    names.join(", ")
                )
            })
        } else if names.is_empty() {
            None
        } else if let Some(reason) = self.view.ring_not_ready_reason() {
            Some(format!("ring not ready: {reason}"))
        } else if !is_claimant {
            None
        } else if *settled != names {
            // Nodes that join or leave within one gossip interval of each
            // other go into one plan.
            settled.clone_from(&names);
            None
        } else {
            let grown = ring.with_nodes_added(&joining, me);
            match grown.with_nodes_removed(&leaving, me) {
                Ok(target) => {
                    let next = ring.with_plan(target.owners, me);
                    let moving = next.moving_partitions().len();
                    tracing::info!(
                        joining = ?joining.iter().copied().map(format_node_id).collect::<Vec<_>>(),
                        leaving = ?leaving.iter().copied().map(format_node_id).collect::<Vec<_>>(),
                        moving,
                        ring_version = next.version,
                        "claimant planned a ring change"
                    );
                    self.adopt_ring(next).await;
                    None
                }
                Err(error) => Some(error.to_string()),
            }
        };
        if waiting != *waiting_logged {
            if let Some(reason) = &waiting {
                tracing::info!(nodes = ?names, %reason, "ring change waiting");
            }
            waiting_logged.clone_from(&waiting);
        }
        *self
            .waiting_change
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = waiting;
    }

    /// Gossips until `shutdown` fires.
    pub async fn run_gossip(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let interval = Duration::from_millis(self.config.gossip_interval_ms);
        let mut down = BTreeSet::new();
        let mut waiting_logged = None;
        let mut settled = Vec::new();
        loop {
            self.view.beat(self.generation, self.store.holds_data());
            if let Some(address) = self.pick_gossip_target() {
                // The exchange runs on its own task: a peer that does not
                // answer (paused, partitioned away) would otherwise hold up
                // this node's heartbeats for the exchange's timeout, and
                // its peers would start to suspect it.
                let node = self.clone();
                tokio::spawn(async move {
                    if let Err(status) = node.gossip_with(&address).await {
                        if is_identity_refusal(&status) {
                            tracing::error!(peer = %address, reason = %status.message(), "a peer rejected this node");
                        } else {
                            tracing::debug!(peer = %address, reason = %status.message(), "gossip failed");
                        }
                    }
                });
            }
            self.view.observe_heartbeats();
            self.view.note_down_transitions(&mut down);
            self.claimant_step(&mut waiting_logged, &mut settled).await;

            // Jitter keeps nodes from gossiping in lockstep.
            let jitter = rand::random::<f64>() * 0.2 + 0.9;
            let pause = interval.mul_f64(jitter);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Test hook: while the file named by the environment variable
/// `RINGKV_TEST_FREEZE_RING` exists, this node adopts no ring from gossip,
/// so a test can hold a coordinator on a stale ring while a partition
/// moves. Refusals of its replica messages still hand it the newer ring.
fn ring_frozen_for_test() -> bool {
    std::env::var_os("RINGKV_TEST_FREEZE_RING")
        .is_some_and(|path| std::path::Path::new(&path).exists())
}

/// Asks the seeds to join their cluster until one replies. Returns the ring
/// and membership it sent, or the rejection of a seed.
pub async fn join_through_seeds(
    peers: &crate::peers::Peers,
    seeds: &[String],
    request: JoinRequest,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<(Ring, Membership)> {
    let mut attempts = 0u64;
    let mut last_error = String::new();
    loop {
        for seed in seeds {
            let mut client = peers
                .peer(seed)
                .map_err(|status| anyhow::anyhow!(status.message().to_string()))?;
            match tokio::time::timeout(Duration::from_secs(3), client.join(request.clone())).await {
                Ok(Ok(response)) => {
                    let response = response.into_inner();
                    let ring = Ring::decode(&response.ring).map_err(|error| {
                        anyhow::anyhow!("seed {seed} sent an undecodable ring: {error}")
                    })?;
                    let membership =
                        from_entries(&response.members, &response.removed, &response.marked_down);
                    tracing::info!(%seed, cluster_id = %response.cluster_id, ring_version = ring.version, "joined through seed");
                    return Ok((ring, membership));
                }
                Ok(Err(status))
                    if is_identity_refusal(&status)
                        || status.code() == tonic::Code::FailedPrecondition =>
                {
                    anyhow::bail!("seed {seed} rejected the join: {}", status.message());
                }
                Ok(Err(status)) => {
                    let cause = std::error::Error::source(&status)
                        .map(|source| format!(" ({source})"))
                        .unwrap_or_default();
                    last_error = format!("{seed}: {}{cause}", status.message());
                }
                Err(_) => last_error = format!("{seed}: timed out after 3 s"),
            }
        }
        if attempts.is_multiple_of(10) {
            tracing::warn!(seeds = ?seeds, %last_error, "no seed accepted the join request yet; retrying every second. Check --seeds and that a seed is running");
        }
        attempts += 1;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => anyhow::bail!("stopped while waiting for a seed"),
        }
    }
}
