//! The peer service: replica reads and writes, gossip and join.

use crate::coordinator::{encode_digest, validate_key};
use crate::node::Node;
use crate::store::{ReplicaOp, ReplicaOpResult};
use kv_cluster::causality::LocalCopy;
use kv_cluster::format_node_id;
use kv_cluster::version::State;
use kv_proto::v1::peer_server::Peer;
use kv_proto::v1::{
    GossipRequest, GossipResponse, JoinRequest, JoinResponse, PeerHeader, ReplicaBatchRequest,
    ReplicaBatchResponse, ReplicaItem, ReplicaItemResult, ReplicaState,
};
use kv_proto::v1::{HintsForPartitionRequest, HintsForPartitionResponse};
use kv_proto::v1::{ReplicaPurgeRequest, ReplicaPurgeResponse};
use kv_proto::v1::{
    TreeKeysRequest, TreeKeysResponse, TreeLeavesRequest, TreeLeavesResponse, TreeRootsRequest,
    TreeRootsResponse,
};
use kv_proto::FORMAT_VERSION;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Marks the refusal of a replica message from a sender whose ring is
/// older than the receiver's, so the sender fetches the newer ring.
pub const STALE_RING: &str = "(stale ring)";

/// The `Peer` service.
pub struct PeerService {
    pub node: Arc<Node>,
}

impl PeerService {
    /// Rejects replica traffic for a key this node does not replicate, unless
    /// the sender has a newer ring (then this node's ring is the stale one).
    fn check_replica(&self, header: Option<&PeerHeader>, key: &[u8]) -> Result<(), Status> {
        let ring = self.node.view.ring();
        let sender_version = header.map(|header| header.ring_version).unwrap_or_default();
        if sender_version > ring.version {
            return Ok(());
        }
        if !self
            .node
            .view
            .replica_set_for_key(key)
            .contains(&self.node.node_id())
        {
            return Err(Status::failed_precondition(format!(
                "node {} does not hold this key in ring version {} {STALE_RING}; the sender refreshes its ring",
                format_node_id(self.node.node_id()),
                ring.version
            )));
        }
        Ok(())
    }
}

impl PeerService {
    /// Checks one item of a batch and turns it into a store operation.
    /// Returns the operation, the key and whether only a digest was asked.
    fn prepare(
        &self,
        header: Option<&PeerHeader>,
        item: ReplicaItem,
    ) -> Result<(ReplicaOp, Vec<u8>, bool), Status> {
        validate_key(&item.key)?;
        self.check_replica(header, &item.key)?;
        if !item.write {
            let op = ReplicaOp::Read {
                key: item.key.clone(),
            };
            return Ok((op, item.key, item.digest_only));
        }
        let state = State::decode(&item.state).map_err(|error| {
            Status::invalid_argument(format!("replica write with an invalid state: {error}"))
        })?;
        let op = ReplicaOp::Write {
            key: item.key.clone(),
            state,
        };
        Ok((op, item.key, false))
    }
}

/// Checks a hinted write, which this node stores as a stand-in for the node
/// named by `hint_for`, and returns its key and state. It is not checked
/// against this node's preference lists, because a stand-in is outside them.
fn prepare_hint(item: &ReplicaItem) -> Result<(Vec<u8>, State), Status> {
    validate_key(&item.key)?;
    let state = State::decode(&item.state).map_err(|error| {
        Status::invalid_argument(format!("hinted write with an invalid state: {error}"))
    })?;
    Ok((item.key.clone(), state))
}

/// Result of an item that failed with `status`.
fn failed(status: &Status) -> ReplicaItemResult {
    ReplicaItemResult {
        code: status.code() as i32,
        message: status.message().to_string(),
        ..Default::default()
    }
}

/// Result of a replica read of `key` whose local copy is `local`.
fn read_result(key: &[u8], local: LocalCopy, digest_only: bool) -> ReplicaItemResult {
    match local {
        LocalCopy::Missing => ReplicaItemResult {
            kind: ReplicaState::Missing as i32,
            ..Default::default()
        },
        LocalCopy::Unknown => ReplicaItemResult {
            kind: ReplicaState::Unknown as i32,
            ..Default::default()
        },
        LocalCopy::Present { state, .. } => ReplicaItemResult {
            kind: ReplicaState::Present as i32,
            digest: encode_digest(state.digest(key)),
            state: if digest_only {
                Vec::new()
            } else {
                state.encode()
            },
            ..Default::default()
        },
    }
}

/// Runs a replica request within the sender's timeout (0 means no limit).
async fn within_timeout<T>(
    header: Option<&PeerHeader>,
    work: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let timeout_ms = header.map(|header| header.timeout_ms).unwrap_or(0);
    if timeout_ms == 0 {
        return work.await;
    }
    tokio::time::timeout(std::time::Duration::from_millis(timeout_ms), work)
        .await
        .map_err(|_| {
            Status::deadline_exceeded(format!(
                "gave up after the sender's timeout of {timeout_ms} ms"
            ))
        })?
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn partition_page(
        &self,
        request: Request<kv_proto::v1::PartitionPageRequest>,
    ) -> Result<Response<kv_proto::v1::PartitionPageResponse>, Status> {
        let page = self.node.serve_partition_page(request.into_inner()).await?;
        Ok(Response::new(page))
    }

    async fn transfer_done(
        &self,
        request: Request<kv_proto::v1::TransferDoneRequest>,
    ) -> Result<Response<kv_proto::v1::TransferDoneResponse>, Status> {
        let request = request.into_inner();
        self.node.check_header(request.header.as_ref())?;
        let sender = request
            .header
            .as_ref()
            .map(|header| header.sender)
            .unwrap_or(0);
        self.node
            .transfers
            .record_report(request.plan_started, sender, &request.partitions);
        Ok(Response::new(kv_proto::v1::TransferDoneResponse {
            format_version: FORMAT_VERSION,
        }))
    }

    async fn replica_batch(
        &self,
        request: Request<ReplicaBatchRequest>,
    ) -> Result<Response<ReplicaBatchResponse>, Status> {
        let request = request.into_inner();
        let header = request.header;
        self.node.check_header(header.as_ref())?;

        // Items that fail their checks get their error at once; the others
        // run together as one storage job.
        let mut results = vec![ReplicaItemResult::default(); request.items.len()];
        let mut ops = Vec::new();
        let mut accepted = Vec::new();
        let mut hints = Vec::new();
        let mut hinted = Vec::new();
        for (index, item) in request.items.into_iter().enumerate() {
            if item.write && item.hint_for != 0 && item.hint_for != self.node.node_id() {
                match prepare_hint(&item) {
                    Ok((key, state)) => {
                        hints.push((key, item.hint_for, state));
                        hinted.push(index);
                    }
                    Err(status) => results[index] = failed(&status),
                }
                continue;
            }
            match self.prepare(header.as_ref(), item) {
                Ok((op, key, digest_only)) => {
                    ops.push(op);
                    accepted.push((index, key, digest_only));
                }
                Err(status) => results[index] = failed(&status),
            }
        }
        let (outcomes, hint_outcomes) = within_timeout(header.as_ref(), async {
            let (outcomes, hint_outcomes) = tokio::join!(
                self.node.store.apply_batch(ops),
                self.node.hints.store(hints)
            );
            let internal = |error: crate::store::StoreError| Status::internal(error.to_string());
            Ok((
                outcomes.map_err(internal)?,
                hint_outcomes.map_err(internal)?,
            ))
        })
        .await?;
        for (index, outcome) in hinted.into_iter().zip(hint_outcomes) {
            if let Err(error) = outcome {
                results[index] = failed(&Status::internal(error.to_string()));
            }
        }
        for ((index, key, digest_only), outcome) in accepted.into_iter().zip(outcomes) {
            results[index] = match outcome {
                Ok(ReplicaOpResult::Read(local)) => read_result(&key, local, digest_only),
                Ok(ReplicaOpResult::Written) => ReplicaItemResult::default(),
                Err(error) => failed(&Status::internal(error.to_string())),
            };
        }
        Ok(Response::new(ReplicaBatchResponse {
            format_version: FORMAT_VERSION,
            results,
        }))
    }

    async fn gossip(
        &self,
        request: Request<GossipRequest>,
    ) -> Result<Response<GossipResponse>, Status> {
        Ok(Response::new(
            self.node.handle_gossip(request.into_inner()).await?,
        ))
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        Ok(Response::new(
            self.node.handle_join(request.into_inner()).await?,
        ))
    }

    async fn replica_purge(
        &self,
        request: Request<ReplicaPurgeRequest>,
    ) -> Result<Response<ReplicaPurgeResponse>, Status> {
        let request = request.into_inner();
        self.node.check_header(request.header.as_ref())?;
        validate_key(&request.key)?;
        self.check_replica(request.header.as_ref(), &request.key)?;
        let outcome = within_timeout(
            request.header.as_ref(),
            self.node
                .handle_replica_purge(&request.key, &request.digest),
        )
        .await?;
        Ok(Response::new(ReplicaPurgeResponse {
            format_version: FORMAT_VERSION,
            outcome: outcome as i32,
        }))
    }

    async fn hints_for_partition(
        &self,
        request: Request<HintsForPartitionRequest>,
    ) -> Result<Response<HintsForPartitionResponse>, Status> {
        let request = request.into_inner();
        self.node.check_header(request.header.as_ref())?;
        let partitions = self.node.view.ring().partitions;
        if request.partition >= partitions {
            return Err(Status::invalid_argument(format!(
                "invalid partition {}: the ring has {partitions} partitions, numbered from 0",
                request.partition
            )));
        }
        let holds_hints = self
            .node
            .hints
            .holds_partition(request.partition)
            .await
            .map_err(|error| Status::internal(error.to_string()))?;
        Ok(Response::new(HintsForPartitionResponse {
            format_version: FORMAT_VERSION,
            holds_hints,
        }))
    }

    // Anti-entropy: hash-tree exchange, served by `crate::aae`.

    async fn tree_roots(
        &self,
        request: Request<TreeRootsRequest>,
    ) -> Result<Response<TreeRootsResponse>, Status> {
        self.node
            .handle_tree_roots(request.into_inner())
            .map(Response::new)
    }

    async fn tree_leaves(
        &self,
        request: Request<TreeLeavesRequest>,
    ) -> Result<Response<TreeLeavesResponse>, Status> {
        self.node
            .handle_tree_leaves(request.into_inner())
            .map(Response::new)
    }

    async fn tree_keys(
        &self,
        request: Request<TreeKeysRequest>,
    ) -> Result<Response<TreeKeysResponse>, Status> {
        let request = request.into_inner();
        let header = request.header.clone();
        within_timeout(header.as_ref(), self.node.handle_tree_keys(request))
            .await
            .map(Response::new)
    }
}
