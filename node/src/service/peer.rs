//! The peer service: replica reads and writes, gossip and join.

use crate::coordinator::{encode_digest, validate_key};
use crate::node::Node;
use kv_cluster::causality::LocalCopy;
use kv_cluster::format_node_id;
use kv_cluster::version::State;
use kv_proto::v1::peer_server::Peer;
use kv_proto::v1::{
    GossipRequest, GossipResponse, JoinRequest, JoinResponse, PeerHeader, ReplicaReadRequest,
    ReplicaReadResponse, ReplicaState, ReplicaWriteRequest, ReplicaWriteResponse,
};
use kv_proto::FORMAT_VERSION;
use std::sync::Arc;
use tonic::{Request, Response, Status};

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
        if !ring
            .preference_list_for_key(key)
            .contains(&self.node.node_id())
        {
            return Err(Status::failed_precondition(format!(
                "node {} does not replicate this key in ring version {}; refresh the ring",
                format_node_id(self.node.node_id()),
                ring.version
            )));
        }
        Ok(())
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
    async fn replica_read(
        &self,
        request: Request<ReplicaReadRequest>,
    ) -> Result<Response<ReplicaReadResponse>, Status> {
        let request = request.into_inner();
        self.node.check_header(request.header.as_ref())?;
        validate_key(&request.key)?;
        self.check_replica(request.header.as_ref(), &request.key)?;
        let header = request.header.clone();
        let response = within_timeout(header.as_ref(), async {
            let local = self
                .node
                .store
                .read(&request.key)
                .await
                .map_err(|error| Status::internal(error.to_string()))?;
            let response = match local {
                LocalCopy::Missing => ReplicaReadResponse {
                    format_version: FORMAT_VERSION,
                    kind: ReplicaState::Missing as i32,
                    ..Default::default()
                },
                LocalCopy::Unknown => ReplicaReadResponse {
                    format_version: FORMAT_VERSION,
                    kind: ReplicaState::Unknown as i32,
                    ..Default::default()
                },
                LocalCopy::Present { state, .. } => ReplicaReadResponse {
                    format_version: FORMAT_VERSION,
                    kind: ReplicaState::Present as i32,
                    digest: encode_digest(state.digest(&request.key)),
                    state: if request.digest_only {
                        Vec::new()
                    } else {
                        state.encode()
                    },
                },
            };
            Ok(response)
        })
        .await?;
        Ok(Response::new(response))
    }

    async fn replica_write(
        &self,
        request: Request<ReplicaWriteRequest>,
    ) -> Result<Response<ReplicaWriteResponse>, Status> {
        let request = request.into_inner();
        self.node.check_header(request.header.as_ref())?;
        validate_key(&request.key)?;
        self.check_replica(request.header.as_ref(), &request.key)?;
        let state = State::decode(&request.state).map_err(|error| {
            Status::invalid_argument(format!("replica write with an invalid state: {error}"))
        })?;
        within_timeout(request.header.as_ref(), async {
            self.node
                .store
                .store_incoming(&request.key, state)
                .await
                .map_err(|error| Status::internal(error.to_string()))?;
            Ok(())
        })
        .await?;
        Ok(Response::new(ReplicaWriteResponse {
            format_version: FORMAT_VERSION,
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
}
