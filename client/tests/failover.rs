//! Failover and update rules of the client against in-process fake nodes.
//!
//! Each fake serves only the `Kv` service on 127.0.0.1 with a scripted
//! reply, so the ring fetch fails (UNIMPLEMENTED) and the client routes
//! through the seed endpoints in the order given (rotation off).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kv_client::proto::kv_server::{Kv, KvServer};
use kv_client::proto::{
    DeleteRequest, DeleteResponse, GetRequest, GetResponse, PingRequest, PingResponse, PutRequest,
    PutResponse,
};
use kv_client::{Client, ClientOptions, Error, ERROR_METADATA_KEY, QUORUM_ERROR};
use tonic::metadata::MetadataMap;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};

#[derive(Clone, Copy)]
enum Behavior {
    /// Serves gets with the value `value` and context `ctx`.
    Serve,
    /// Plain UNAVAILABLE: the node is shutting down.
    ShuttingDown,
    /// UNAVAILABLE with the quorum marker.
    QuorumFailure,
    /// Never replies within any client timeout used here.
    Hang,
}

struct FakeNode {
    behavior: Behavior,
    gets: AtomicUsize,
    puts: AtomicUsize,
    /// Number of puts whose reply reports a concurrent sibling.
    puts_with_sibling: usize,
}

impl FakeNode {
    async fn check(&self) -> Result<(), Status> {
        match self.behavior {
            Behavior::Hang => {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(())
            }
            Behavior::Serve => Ok(()),
            Behavior::ShuttingDown => Err(Status::unavailable("node is shutting down")),
            Behavior::QuorumFailure => {
                let mut metadata = MetadataMap::new();
                metadata.insert(ERROR_METADATA_KEY, QUORUM_ERROR.parse().expect("ascii"));
                Err(Status::with_metadata(
                    Code::Unavailable,
                    "1 of 2 required replicas answered",
                    metadata,
                ))
            }
        }
    }
}

/// The `Kv` service of one fake node; `Deref` gives its shared state.
struct FakeService(Arc<FakeNode>);

impl std::ops::Deref for FakeService {
    type Target = FakeNode;

    fn deref(&self) -> &FakeNode {
        &self.0
    }
}

#[tonic::async_trait]
impl Kv for FakeService {
    async fn get(&self, _request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.check().await?;
        Ok(Response::new(GetResponse {
            values: vec![b"value".to_vec()],
            context: b"ctx".to_vec(),
        }))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let earlier_puts = self.puts.fetch_add(1, Ordering::SeqCst);
        self.check().await?;
        let request = request.into_inner();
        if request.context != b"ctx" {
            return Err(Status::invalid_argument("expected the context of the get"));
        }
        let siblings = if earlier_puts < self.puts_with_sibling {
            vec![b"concurrent".to_vec()]
        } else {
            Vec::new()
        };
        Ok(Response::new(PutResponse {
            context: b"ctx2".to_vec(),
            siblings,
        }))
    }

    async fn delete(
        &self,
        _request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        self.check().await?;
        Ok(Response::new(DeleteResponse::default()))
    }

    async fn ping(&self, _request: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        self.check().await?;
        Ok(Response::new(PingResponse {}))
    }
}

/// Starts a fake node on an ephemeral loopback port. It stops with the
/// test's runtime.
fn start_node(behavior: Behavior, puts_with_sibling: usize) -> (SocketAddr, Arc<FakeNode>) {
    let node = Arc::new(FakeNode {
        behavior,
        gets: AtomicUsize::new(0),
        puts: AtomicUsize::new(0),
        puts_with_sibling,
    });
    let incoming =
        TcpIncoming::bind("127.0.0.1:0".parse().expect("valid address")).expect("bind loopback");
    let address = incoming.local_addr().expect("bound address");
    let service = KvServer::new(FakeService(node.clone()));
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
    });
    (address, node)
}

async fn connect(addresses: &[SocketAddr]) -> Client {
    connect_with_timeout(addresses, Duration::from_secs(5)).await
}

async fn connect_with_timeout(addresses: &[SocketAddr], request_timeout: Duration) -> Client {
    let endpoints: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
    let options = ClientOptions {
        request_timeout,
        rotate_coordinators: false,
        ..ClientOptions::default()
    };
    Client::connect_with(&endpoints, options)
        .await
        .expect("valid endpoints")
}

#[tokio::test]
async fn plain_unavailable_fails_over_to_next_node() {
    let (down, down_node) = start_node(Behavior::ShuttingDown, 0);
    let (up, up_node) = start_node(Behavior::Serve, 0);
    let client = connect(&[down, up]).await;

    let read = tokio::time::timeout(Duration::from_secs(20), client.get("k"))
        .await
        .expect("get finishes")
        .expect("second node serves the get");
    assert_eq!(read.values, vec![b"value".to_vec()]);
    assert_eq!(down_node.gets.load(Ordering::SeqCst), 1);
    assert_eq!(up_node.gets.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn quorum_failure_does_not_fail_over() {
    let (failing, failing_node) = start_node(Behavior::QuorumFailure, 0);
    let (up, up_node) = start_node(Behavior::Serve, 0);
    let client = connect(&[failing, up]).await;

    let context = kv_client::Context::from_bytes(b"ctx".to_vec());
    let error = tokio::time::timeout(
        Duration::from_secs(20),
        client.put("k", b"v".to_vec(), Some(&context)),
    )
    .await
    .expect("put finishes")
    .expect_err("quorum failure is returned");
    assert!(matches!(error, Error::QuorumFailed { .. }), "{error:?}");
    assert_eq!(failing_node.puts.load(Ordering::SeqCst), 1);
    assert_eq!(
        up_node.puts.load(Ordering::SeqCst),
        0,
        "a quorum failure must not be retried elsewhere"
    );
}

#[tokio::test]
async fn get_fails_over_after_timeout() {
    let (hung, hung_node) = start_node(Behavior::Hang, 0);
    let (up, up_node) = start_node(Behavior::Serve, 0);
    let client = connect_with_timeout(&[hung, up], Duration::from_millis(300)).await;

    let read = tokio::time::timeout(Duration::from_secs(20), client.get("k"))
        .await
        .expect("get finishes")
        .expect("second node serves the get");
    assert_eq!(read.values, vec![b"value".to_vec()]);
    assert_eq!(hung_node.gets.load(Ordering::SeqCst), 1);
    assert_eq!(up_node.gets.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn put_timeout_does_not_fail_over() {
    let (hung, hung_node) = start_node(Behavior::Hang, 0);
    let (up, up_node) = start_node(Behavior::Serve, 0);
    let client = connect_with_timeout(&[hung, up], Duration::from_millis(300)).await;

    let context = kv_client::Context::from_bytes(b"ctx".to_vec());
    let error = tokio::time::timeout(
        Duration::from_secs(20),
        client.put("k", b"v".to_vec(), Some(&context)),
    )
    .await
    .expect("put finishes")
    .expect_err("the put times out");
    assert!(matches!(error, Error::DeadlineExceeded { .. }), "{error:?}");
    assert_eq!(hung_node.puts.load(Ordering::SeqCst), 1);
    assert_eq!(
        up_node.puts.load(Ordering::SeqCst),
        0,
        "a timed-out write must not be retried elsewhere"
    );
}

#[tokio::test]
async fn every_node_down_gives_no_reachable_node() {
    let (first, _) = start_node(Behavior::ShuttingDown, 0);
    let (second, _) = start_node(Behavior::ShuttingDown, 0);
    let client = connect(&[first, second]).await;

    let error = tokio::time::timeout(Duration::from_secs(20), client.ping())
        .await
        .expect("ping finishes")
        .expect_err("no node serves");
    match error {
        Error::NoReachableNode { tried } => {
            assert_eq!(tried.len(), 2, "{tried:?}");
            assert!(tried[0].starts_with(&first.to_string()), "{tried:?}");
            assert!(tried[1].contains("shutting down"), "{tried:?}");
        }
        other => panic!("expected NoReachableNode, got {other:?}"),
    }
}

#[tokio::test]
async fn update_retries_when_siblings_appear() {
    let (address, node) = start_node(Behavior::Serve, 1);
    let client = connect(&[address]).await;

    let mut calls = 0;
    let written = tokio::time::timeout(
        Duration::from_secs(20),
        client.update("k", |values| {
            calls += 1;
            assert_eq!(values, [b"value".to_vec()]);
            Some(b"merged".to_vec())
        }),
    )
    .await
    .expect("update finishes")
    .expect("update succeeds")
    .expect("resolve returned a value");
    assert!(written.siblings.is_empty());
    assert_eq!(calls, 2, "one round for the sibling, one clean round");
    assert_eq!(node.gets.load(Ordering::SeqCst), 2);
    assert_eq!(node.puts.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn update_skips_put_when_resolve_declines() {
    let (address, node) = start_node(Behavior::Serve, 0);
    let client = connect(&[address]).await;

    let outcome = tokio::time::timeout(Duration::from_secs(20), client.update("k", |_| None))
        .await
        .expect("update finishes")
        .expect("update succeeds");
    assert!(outcome.is_none());
    assert_eq!(node.puts.load(Ordering::SeqCst), 0);
}
