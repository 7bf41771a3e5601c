//! The admin service: node status, members, ring and one replica's local
//! state of a key.

use crate::coordinator::validate_key;
use crate::node::Node;
use kv_cluster::causality::LocalCopy;
use kv_cluster::context::encode_context;
use kv_cluster::format_node_id;
use kv_cluster::version::Value;
use kv_proto::v1::admin_server::Admin;
use kv_proto::v1::PendingHints;
use kv_proto::v1::{
    AdminReplicaReadRequest, AdminReplicaReadResponse, MemberInfo, MembersRequest, MembersResponse,
    ReplicaState, RingRequest, RingResponse, StatusRequest, StatusResponse,
};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Hints held per target node, for `Status`.
fn pending_hints(node: &Node) -> Vec<PendingHints> {
    node.hints
        .counts()
        .into_iter()
        .map(|(target, hints)| PendingHints {
            node_id: format_node_id(target),
            address: node.view.address_of(target).unwrap_or_default(),
            hints,
        })
        .collect()
}

/// The `Admin` service.
pub struct AdminService {
    pub node: Arc<Node>,
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn decommission(
        &self,
        _request: Request<kv_proto::v1::DecommissionRequest>,
    ) -> Result<Response<kv_proto::v1::MembershipCommandResponse>, Status> {
        let message = self.node.decommission().await?;
        Ok(Response::new(kv_proto::v1::MembershipCommandResponse {
            message,
        }))
    }

    async fn remove(
        &self,
        request: Request<kv_proto::v1::RemoveRequest>,
    ) -> Result<Response<kv_proto::v1::MembershipCommandResponse>, Status> {
        let message = self.node.remove_member(&request.into_inner().node_id)?;
        Ok(Response::new(kv_proto::v1::MembershipCommandResponse {
            message,
        }))
    }

    async fn mark_down(
        &self,
        request: Request<kv_proto::v1::MarkDownRequest>,
    ) -> Result<Response<kv_proto::v1::MembershipCommandResponse>, Status> {
        let message = self.node.mark_member_down(&request.into_inner().node_id)?;
        Ok(Response::new(kv_proto::v1::MembershipCommandResponse {
            message,
        }))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let node = &self.node;
        let ring = node.view.ring();
        let stats = &node.stats;
        let (aae_trees_replicated, aae_trees_built) = node.aae_tree_counts();
        Ok(Response::new(StatusResponse {
            node_id: format_node_id(node.node_id()),
            address: node.view.address.clone(),
            cluster_id: ring.cluster_id.clone(),
            ring_version: ring.version,
            partitions: ring.partitions,
            n: ring.replicas,
            r: node.config.r,
            w: node.config.w,
            engine: node.engine_kind.to_string(),
            sync_mode: format!("{:?}", node.config.sync).to_lowercase(),
            uptime_seconds: node.view.uptime_seconds(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            puts_coordinated: stats.puts_coordinated.load(Ordering::Relaxed),
            gets_coordinated: stats.gets_coordinated.load(Ordering::Relaxed),
            read_repairs: stats.read_repairs.load(Ordering::Relaxed),
            corrupt_records: stats.corrupt_records.load(Ordering::Relaxed),
            dot_conflicts: stats.dot_conflicts.load(Ordering::Relaxed),
            forwarded: stats.forwarded.load(Ordering::Relaxed),
            replica_batches_sent: stats.replica_batches_sent.load(Ordering::Relaxed),
            replica_items_sent: stats.replica_items_sent.load(Ordering::Relaxed),
            ring_not_ready_reason: node.view.ring_not_ready_reason().unwrap_or_default(),
            data_dir: node.meta.data_dir(),
            generation: node.generation,
            epoch: node.meta.epochs().value(),
            restart_mark: node.restart_mark,
            pending_hints: pending_hints(node),
            hints_delivered: stats.hints_delivered.load(Ordering::Relaxed),
            reap_enabled: node.config.reap == crate::config::OnOff::On,
            tombstones_purged: node.reaper.purged.load(Ordering::Relaxed),
            transfers: Some(node.transfer_status()),
            ring_change_waiting: node.ring_change_waiting(),
            member_status: node.view.own_status().to_string(),
            purge_intents: node.reaper.intents.load(Ordering::Relaxed),
            aae_enabled: node.config.aae == crate::config::OnOff::On,
            aae_exchanges: stats.aae_exchanges.load(Ordering::Relaxed),
            aae_keys_repaired: stats.aae_keys_repaired.load(Ordering::Relaxed),
            aae_tree_drift: stats.aae_tree_drift.load(Ordering::Relaxed),
            aae_trees_replicated,
            aae_trees_built,
            aae_peers: node.aae_peer_statuses(),
        }))
    }

    async fn members(
        &self,
        _request: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let node = &self.node;
        let ring = node.view.ring();
        let membership = node.view.membership();
        let owned = ring.partitions_per_node();
        let replicas = ring.replicas_per_node();
        let members = membership
            .members
            .values()
            .map(|member| {
                let (phi, last_seen) = node.view.suspicion(member.id);
                MemberInfo {
                    node_id: format_node_id(member.id),
                    address: member.address.clone(),
                    status: member.status.as_str().to_string(),
                    up: node.view.is_up(member.id),
                    phi: if phi.is_finite() { phi } else { f64::MAX },
                    generation: member.generation,
                    heartbeat: member.version,
                    partition_replicas: replicas.get(&member.id).copied().unwrap_or(0),
                    partitions_owned: owned.get(&member.id).copied().unwrap_or(0),
                    ring_version: member.ring_version,
                    last_seen_ms: last_seen.unwrap_or(u64::MAX),
                    is_self: member.id == node.node_id(),
                    marked_down: membership.marked_down.contains(&member.id),
                }
            })
            .collect();
        Ok(Response::new(MembersResponse {
            members,
            cluster_id: ring.cluster_id.clone(),
            claimant: membership
                .claimant()
                .map(format_node_id)
                .unwrap_or_default(),
        }))
    }

    async fn ring(&self, _request: Request<RingRequest>) -> Result<Response<RingResponse>, Status> {
        let node = &self.node;
        let ring = node.view.ring();
        let nodes = ring.nodes();
        let addresses = nodes
            .iter()
            .copied()
            .filter_map(|id| {
                node.view
                    .address_of(id)
                    .map(|address| (format_node_id(id), address))
            })
            .collect();
        let down_addresses = nodes
            .into_iter()
            .filter(|id| !node.view.is_up(*id))
            .filter_map(|id| node.view.address_of(id))
            .collect();
        Ok(Response::new(RingResponse {
            cluster_id: ring.cluster_id.clone(),
            version: ring.version,
            claimant: format_node_id(ring.claimant),
            partitions: ring.partitions,
            n: ring.replicas,
            owners: ring.owners.iter().copied().map(format_node_id).collect(),
            addresses,
            encoded: ring.encode(),
            down_addresses,
            planned_owners: ring
                .plan
                .as_ref()
                .map(|plan| plan.owners.iter().copied().map(format_node_id).collect())
                .unwrap_or_default(),
            plan_started: ring.plan.as_ref().map(|plan| plan.started).unwrap_or(0),
            moving_partitions: ring.moving_partitions(),
            partitions_done: ring
                .plan
                .as_ref()
                .map(|plan| plan.done.len() as u32)
                .unwrap_or(0),
        }))
    }

    async fn replica_read(
        &self,
        request: Request<AdminReplicaReadRequest>,
    ) -> Result<Response<AdminReplicaReadResponse>, Status> {
        let request = request.into_inner();
        validate_key(&request.key)?;
        let local = self
            .node
            .store
            .read(&request.key)
            .await
            .map_err(|error| Status::internal(error.to_string()))?;
        let node_id = format_node_id(self.node.node_id());
        let response = match local {
            LocalCopy::Missing => AdminReplicaReadResponse {
                kind: ReplicaState::Missing as i32,
                node_id,
                ..Default::default()
            },
            LocalCopy::Unknown => AdminReplicaReadResponse {
                kind: ReplicaState::Unknown as i32,
                node_id,
                ..Default::default()
            },
            LocalCopy::Present { state, .. } => AdminReplicaReadResponse {
                kind: ReplicaState::Present as i32,
                context: encode_context(&request.key, &state.context),
                values: state
                    .live_values()
                    .into_iter()
                    .map(|value| value.to_vec())
                    .collect(),
                tombstones: state
                    .values
                    .values()
                    .filter(|value| matches!(value, Value::Tombstone))
                    .count() as u32,
                state: state.encode(),
                node_id,
                dots: state.values.keys().map(|dot| dot.to_string()).collect(),
            },
        };
        Ok(Response::new(response))
    }
}
