//! The client service: get, put, delete and ping. A request for a key this
//! node does not replicate is forwarded once to a replica.

use crate::error::RequestError;
use crate::node::Node;
use kv_cluster::context::encode_context;
use kv_cluster::version::Value;
use kv_cluster::{format_node_id, NodeId};
use kv_proto::v1::kv_server::Kv;
use kv_proto::v1::{
    DeleteRequest, DeleteResponse, GetRequest, GetResponse, PingRequest, PingResponse, PutRequest,
    PutResponse,
};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The `Kv` service.
pub struct KvService {
    pub node: Arc<Node>,
}

/// Destination of a request for a key.
enum Route {
    Local,
    Forward(Vec<NodeId>),
}

impl KvService {
    fn route(&self, key: &[u8], forwarded: bool) -> Result<Route, RequestError> {
        crate::coordinator::validate_key(key)?;
        let list = self.node.preference_list(key);
        if list.contains(&self.node.node_id()) {
            return Ok(Route::Local);
        }
        if forwarded {
            return Err(RequestError::Unavailable(format!(
                "node {} does not replicate this key in ring version {} and the request was already forwarded once; refresh the ring and retry",
                format_node_id(self.node.node_id()),
                self.node.view.ring().version
            )));
        }
        let mut targets = list;
        targets.sort_by_key(|id| !self.node.view.is_up(*id));
        Ok(Route::Forward(targets))
    }

    /// Sends a request to the first replica that accepts the connection.
    async fn forward<T, F, Fut>(&self, targets: Vec<NodeId>, call: F) -> Result<Response<T>, Status>
    where
        F: Fn(kv_proto::v1::kv_client::KvClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        self.node.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        let mut last_error = None;
        for target in targets {
            let Some(address) = self.node.view.address_of(target) else {
                continue;
            };
            let client = self.node.peers.kv(&address)?;
            match call(client).await {
                Ok(response) => return Ok(response),
                Err(status) if is_connection_failure(&status) => last_error = Some(status),
                Err(status) => return Err(status),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            Status::unavailable("no replica of the key is reachable to forward the request to")
        }))
    }
}

/// Returns true for a failure to reach a node at all, as opposed to an error
/// the node returned.
pub fn is_connection_failure(status: &Status) -> bool {
    status.code() == tonic::Code::Unavailable
        && status
            .metadata()
            .get(crate::error::ERROR_KIND_KEY)
            .is_none()
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let request = request.into_inner();
        match self.route(&request.key, request.forwarded)? {
            Route::Forward(targets) => {
                let forwarded = GetRequest {
                    forwarded: true,
                    ..request
                };
                self.forward(targets, |mut client| {
                    let forwarded = forwarded.clone();
                    async move { client.get(forwarded).await }
                })
                .await
            }
            Route::Local => {
                let read = self.node.coordinate_get(&request.key, request.r).await?;
                let values = read
                    .state
                    .live_values()
                    .into_iter()
                    .map(|value| value.to_vec())
                    .collect();
                let context = if read.state.context.is_empty() {
                    Vec::new()
                } else {
                    encode_context(&request.key, &read.state.context)
                };
                Ok(Response::new(GetResponse { values, context }))
            }
        }
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let request = request.into_inner();
        match self.route(&request.key, request.forwarded)? {
            Route::Forward(targets) => {
                let forwarded = PutRequest {
                    forwarded: true,
                    ..request
                };
                self.forward(targets, |mut client| {
                    let forwarded = forwarded.clone();
                    async move { client.put(forwarded).await }
                })
                .await
            }
            Route::Local => {
                let written = self
                    .node
                    .coordinate_put(
                        &request.key,
                        Value::Data(request.value),
                        &request.context,
                        request.w,
                        request.strict_quorum,
                    )
                    .await?;
                Ok(Response::new(PutResponse {
                    context: written.context,
                    siblings: written.siblings,
                }))
            }
        }
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let request = request.into_inner();
        match self.route(&request.key, request.forwarded)? {
            Route::Forward(targets) => {
                let forwarded = DeleteRequest {
                    forwarded: true,
                    ..request
                };
                self.forward(targets, |mut client| {
                    let forwarded = forwarded.clone();
                    async move { client.delete(forwarded).await }
                })
                .await
            }
            Route::Local => {
                let written = self
                    .node
                    .coordinate_delete(
                        &request.key,
                        &request.context,
                        request.w,
                        request.r,
                        request.strict_quorum,
                    )
                    .await?;
                Ok(Response::new(DeleteResponse {
                    context: written.context,
                    siblings: written.siblings,
                }))
            }
        }
    }

    async fn ping(&self, _request: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        Ok(Response::new(PingResponse {}))
    }
}
