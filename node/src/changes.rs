//! Operator commands that change membership: decommission, remove and
//! mark down. Each only records the operator's decision, in this node's own
//! entry or in a grow-only set carried by gossip. The claimant turns it
//! into a plan, and the transfers move the data (see `transfer.rs`).

use crate::node::Node;
use kv_cluster::membership::MemberStatus;
use kv_cluster::{format_node_id, parse_node_id, NodeId};
use std::sync::Arc;
use tonic::Status;

impl Node {
    /// Starts decommissioning this node: it announces itself leaving, and
    /// the claimant plans its partitions onto the other nodes. Idempotent.
    pub async fn decommission(self: &Arc<Self>) -> Result<String, Status> {
        let me = self.node_id();
        let described = self.describe_node(me);
        let ring = self.view.ring();
        if self.view.own_status() == MemberStatus::Leaving {
            return Ok(format!(
                "node {described} is already leaving; follow the transfers with `kv-cli status`"
            ));
        }
        if !ring.nodes().contains(&me) {
            return Err(Status::failed_precondition(format!(
                "node {described} owns no partition yet (it is still joining), so there is nothing to hand over; stop it instead"
            )));
        }
        let others = ring.nodes().into_iter().filter(|id| *id != me).count();
        if others == 0 {
            return Err(Status::failed_precondition(format!(
                "node {described} is the only node of cluster {}; there is no node to hand its data to. Add a node first",
                ring.cluster_id
            )));
        }
        let node = self.clone();
        tokio::task::spawn_blocking(move || node.meta.mark_leaving())
            .await
            .map_err(|error| Status::internal(error.to_string()))?
            .map_err(|error| {
                Status::internal(format!("cannot record the decommission: {error}"))
            })?;
        self.view.set_leaving();
        self.view.beat(self.generation, self.store.holds_data());
        let replicas = ring.replicas_per_node().get(&me).copied().unwrap_or(0);
        tracing::info!(partition_replicas = replicas, "decommission requested; waiting for the claimant to plan this node's partitions onto the others");
        let mut message = format!(
            "node {described} is leaving: the claimant plans its {replicas} partition replicas onto the {others} other node(s), which copy them from it. Follow with `kv-cli ring` and `kv-cli status`; the process exits once they hold its data"
        );
        if others < ring.replicas as usize {
            message.push_str(&format!(
                ". Note: {others} node(s) remain for N={}, so keys will have only {others} replica(s)",
                ring.replicas
            ));
        }
        Ok(message)
    }

    /// Removes a node that is dead for good: its id joins the grow-only
    /// removed set, and the claimant plans its partitions onto the others,
    /// which rebuild them from the surviving replicas.
    pub fn remove_member(self: &Arc<Self>, node: &str) -> Result<String, Status> {
        let id = self.resolve_other_member(node, "remove")?;
        let described = self.describe_node(id);
        if self
            .view
            .with_membership(|table| table.removed.contains(&id))
        {
            return Ok(format!("node {described} was already removed"));
        }
        if self.view.is_up(id) {
            return Err(Status::failed_precondition(format!(
                "node {described} is up; removing it would drop its replicas while it still serves. Decommission it with `kv-cli decommission` instead, or stop it first and wait until `kv-cli members` shows it down"
            )));
        }
        let ring = self.view.ring();
        let removed = self.view.with_membership(|table| table.removed.clone());
        let remaining = ring
            .nodes()
            .into_iter()
            .filter(|other| *other != id && !removed.contains(other))
            .count();
        if remaining == 0 {
            return Err(Status::failed_precondition(format!(
                "node {described} is the last node that owns partitions; removing it would leave no copy of the data"
            )));
        }
        self.view.with_membership(|table| table.remove(id));
        tracing::warn!(node = %described, "node removed by an operator; its partitions will be rebuilt from the surviving replicas");
        Ok(format!(
            "node {described} removed: it can never rejoin with its data directory. The claimant plans its partitions onto the remaining {remaining} node(s), which rebuild them from the surviving replicas; follow with `kv-cli ring` and `kv-cli status`"
        ))
    }

    /// Declares a dead node down for ring changes: it no longer blocks ring
    /// readiness and cannot be the claimant.
    pub fn mark_member_down(self: &Arc<Self>, node: &str) -> Result<String, Status> {
        let id = self.resolve_other_member(node, "mark down")?;
        let described = self.describe_node(id);
        if self
            .view
            .with_membership(|table| table.marked_down.contains(&id))
        {
            return Ok(format!("node {described} was already marked down"));
        }
        if self.view.is_up(id) {
            return Err(Status::failed_precondition(format!(
                "node {described} is up; only a node that this node's failure detector reports down can be marked down. Stop it first, or wait until `kv-cli members` shows it down"
            )));
        }
        self.view.with_membership(|table| table.mark_down(id));
        tracing::warn!(node = %described, "node marked down by an operator; ring changes no longer wait for it");
        Ok(format!(
            "node {described} marked down: ring changes no longer wait for it and it cannot be the claimant. It still owns its partitions; remove it with `kv-cli remove` if it is gone for good"
        ))
    }

    /// Parses a node id given to `action` and checks that it names a known
    /// member other than this node.
    fn resolve_other_member(&self, node: &str, action: &str) -> Result<NodeId, Status> {
        let id = parse_node_id(node.trim()).ok_or_else(|| {
            Status::invalid_argument(format!(
                "invalid node id {node:?}: expected 16 hex digits as `kv-cli members` shows them"
            ))
        })?;
        if id == self.node_id() {
            return Err(Status::failed_precondition(format!(
                "cannot {action} node {}: it is the node that received the request. Send the command to another node with --endpoints",
                self.describe_node(id)
            )));
        }
        let known = self.view.with_membership(|table| {
            table.members.contains_key(&id) || table.removed.contains(&id)
        }) || self.view.ring().nodes().contains(&id);
        if !known {
            return Err(Status::not_found(format!(
                "no member {} in cluster {}; `kv-cli members` lists the members",
                format_node_id(id),
                self.cluster_id()
            )));
        }
        Ok(id)
    }
}
