//! The [`Client`]: connections, ring-aware routing with failover, and the
//! key-value and admin calls.
//!
//! Invariants:
//! - One lazily connected tonic channel per address, cached and shared by
//!   every clone of the client; each sets `TCP_NODELAY`.
//! - A request is sent to the next candidate only after a connection error
//!   or a plain `UNAVAILABLE`, which means no coordinator handled it. A
//!   quorum failure, a timeout or any other status is returned at once,
//!   because the request may have been applied. Reads (get, ping, admin
//!   listings) also move on after a timeout, since repeating them is
//!   harmless.
//! - Nodes that the cluster's failure detectors report down (as the node
//!   that served the latest ring refresh sees them) are tried last, so a
//!   hung node, which would hold a write until the request timeout, is
//!   avoided once the cluster notices it. A write that timed out also
//!   triggers a refresh. NOTE: each refresh replaces the list, so a refresh
//!   served by a node that has not noticed the hung one yet clears it.
//! - The ring is refreshed by a background task every
//!   [`ClientOptions::ring_refresh_interval`] and soon after a failover. The
//!   task stops when the last clone of the client is dropped.
//!
//! Known limit: the ring is only used to pick coordinators; a stale ring
//! costs at most one forward on the node, never correctness.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use kv_cluster::ring::Ring;
use kv_cluster::{format_node_id, parse_node_id};
use kv_proto::v1::admin_client::AdminClient;
use kv_proto::v1::kv_client::KvClient;
use kv_proto::v1::{
    AdminReplicaReadRequest, DecommissionRequest, DeleteRequest, GetRequest, MarkDownRequest,
    MembersRequest, MembersResponse, PingRequest, PutRequest, RemoveRequest, RingRequest,
    StatusRequest, StatusResponse,
};
use tokio::sync::Notify;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::error::{should_fail_over, Error};
use crate::options::{ClientOptions, DeleteOptions, ReadOptions, WriteOptions};
use crate::routing;
use crate::types::{DeleteResult, GetResult, PutResult, ReplicaRead, ReplicaState, RingSnapshot};
use crate::Context;

/// Whether a request may run twice without harm. Reads may fail over after
/// a timeout; writes may not, because the first node may have applied them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Idempotent {
    Yes,
    No,
}

/// Minimum pause between two ring refreshes triggered by failovers.
const MIN_TRIGGERED_REFRESH_GAP: Duration = Duration::from_secs(1);

/// Async client of a ringkv cluster. Cheap to clone; clones share
/// connections and the cached ring.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    options: ClientOptions,
    /// Endpoints given to [`Client::connect`], as `host:port` or URIs.
    seeds: Vec<String>,
    channels: Mutex<HashMap<String, Channel>>,
    ring: RwLock<Option<Arc<RingSnapshot>>>,
    /// Per-request counter that rotates the first node tried.
    next_request: AtomicUsize,
    /// Wakes the background refresh task after a failover.
    refresh_wanted: Arc<Notify>,
    /// Addresses that the node of the latest ring refresh reported down;
    /// requests try them last.
    down: RwLock<std::collections::HashSet<String>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("seeds", &self.inner.seeds)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

/// Turns `host:port` into an `http://` URI; a string with a scheme is kept.
fn endpoint_uri(address: &str) -> String {
    if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    }
}

impl Client {
    /// Connects with default [`ClientOptions`]. See [`Client::connect_with`].
    pub async fn connect(endpoints: &[impl AsRef<str>]) -> Result<Client, Error> {
        Client::connect_with(endpoints, ClientOptions::default()).await
    }

    /// Creates a client for the cluster reachable at `endpoints`
    /// (`host:port`, or URIs with a scheme) and fetches the ring from the
    /// first endpoint that replies.
    ///
    /// Fails only on an empty list or an endpoint that is not a valid
    /// address. When no node replies, the client still starts: requests go
    /// to the endpoints in turn until the ring is known.
    pub async fn connect_with(
        endpoints: &[impl AsRef<str>],
        options: ClientOptions,
    ) -> Result<Client, Error> {
        let seeds: Vec<String> = endpoints
            .iter()
            .map(|endpoint| endpoint.as_ref().trim().to_string())
            .filter(|endpoint| !endpoint.is_empty())
            .collect();
        if seeds.is_empty() {
            return Err(Error::InvalidEndpoint {
                endpoint: String::new(),
                reason: "no endpoint given; pass at least one host:port".into(),
            });
        }

        let inner = Arc::new(Inner {
            options,
            seeds,
            channels: Mutex::new(HashMap::new()),
            ring: RwLock::new(None),
            next_request: AtomicUsize::new(rand::random::<u32>() as usize),
            refresh_wanted: Arc::new(Notify::new()),
            down: RwLock::new(std::collections::HashSet::new()),
        });
        let client = Client { inner };
        for seed in &client.inner.seeds {
            client.channel(seed)?;
        }

        if let Err(error) = client.refresh_ring().await {
            tracing::warn!(%error, "cannot fetch the ring; routing through the seed endpoints");
        }
        spawn_ring_refresher(&client.inner);
        Ok(client)
    }

    /// Returns the options this client was created with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// Returns the cached ring, if one was fetched.
    pub fn cached_ring(&self) -> Option<Arc<RingSnapshot>> {
        self.inner.ring.read().ok().and_then(|guard| guard.clone())
    }

    // ---------------------------------------------------------------------
    // Key-value calls.

    /// Reads a key at the cluster's default R.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<GetResult, Error> {
        self.get_with(key, ReadOptions::default()).await
    }

    /// Reads a key. A missing key is not an error: it returns no values and
    /// an empty context.
    pub async fn get_with(
        &self,
        key: impl AsRef<[u8]>,
        options: ReadOptions,
    ) -> Result<GetResult, Error> {
        let key = key.as_ref();
        let message = GetRequest {
            key: key.to_vec(),
            r: options.r.unwrap_or(0),
            forwarded: false,
        };
        let reply = self
            .call_routed(Some(key), Idempotent::Yes, |this, channel| {
                let mut kv = this.kv_client(channel);
                let request = this.request(message.clone());
                async move { kv.get(request).await }
            })
            .await?;
        Ok(GetResult {
            values: reply.values,
            context: Context::from_bytes(reply.context),
        })
    }

    /// Writes `value`, superseding what `context` covers. `None` is a blind
    /// write: it supersedes nothing, so concurrent values become siblings.
    pub async fn put(
        &self,
        key: impl AsRef<[u8]>,
        value: impl Into<Vec<u8>>,
        context: Option<&Context>,
    ) -> Result<PutResult, Error> {
        self.put_with(key, value, context, WriteOptions::default())
            .await
    }

    /// Writes `value` with a per-request write quorum.
    pub async fn put_with(
        &self,
        key: impl AsRef<[u8]>,
        value: impl Into<Vec<u8>>,
        context: Option<&Context>,
        options: WriteOptions,
    ) -> Result<PutResult, Error> {
        let key = key.as_ref();
        let message = PutRequest {
            key: key.to_vec(),
            value: value.into(),
            context: context.map(|c| c.as_bytes().to_vec()).unwrap_or_default(),
            w: options.w.unwrap_or(0),
            forwarded: false,
            strict_quorum: options.strict_quorum,
        };
        let reply = self
            .call_routed(Some(key), Idempotent::No, |this, channel| {
                let mut kv = this.kv_client(channel);
                let request = this.request(message.clone());
                async move { kv.put(request).await }
            })
            .await?;
        Ok(PutResult {
            context: Context::from_bytes(reply.context),
            siblings: reply.siblings,
        })
    }

    /// Deletes a key. Without a context the coordinator reads at R first
    /// and deletes what that read returned.
    pub async fn delete(
        &self,
        key: impl AsRef<[u8]>,
        context: Option<&Context>,
    ) -> Result<DeleteResult, Error> {
        self.delete_with(key, context, DeleteOptions::default())
            .await
    }

    /// Deletes a key with per-request quorums.
    pub async fn delete_with(
        &self,
        key: impl AsRef<[u8]>,
        context: Option<&Context>,
        options: DeleteOptions,
    ) -> Result<DeleteResult, Error> {
        let key = key.as_ref();
        let message = DeleteRequest {
            key: key.to_vec(),
            context: context.map(|c| c.as_bytes().to_vec()).unwrap_or_default(),
            w: options.w.unwrap_or(0),
            r: options.r.unwrap_or(0),
            forwarded: false,
            strict_quorum: options.strict_quorum,
        };
        let reply = self
            .call_routed(Some(key), Idempotent::No, |this, channel| {
                let mut kv = this.kv_client(channel);
                let request = this.request(message.clone());
                async move { kv.delete(request).await }
            })
            .await?;
        Ok(DeleteResult {
            context: Context::from_bytes(reply.context),
            siblings: reply.siblings,
        })
    }

    /// Reads `key`, lets `resolve` merge its siblings into one value, and
    /// writes that value back with the read context.
    ///
    /// `resolve` receives every live sibling (an empty slice for a missing
    /// key) and returns the value to write, or `None` to leave the key
    /// unchanged, in which case `update` returns `Ok(None)`. When the put
    /// reply shows siblings that appeared since the read, the round repeats,
    /// up to [`ClientOptions::update_attempts`] rounds in all. The last
    /// put's result is returned even if it still has siblings.
    pub async fn update<F>(
        &self,
        key: impl AsRef<[u8]>,
        mut resolve: F,
    ) -> Result<Option<PutResult>, Error>
    where
        F: FnMut(&[Vec<u8>]) -> Option<Vec<u8>>,
    {
        let key = key.as_ref();
        let attempts = self.inner.options.update_attempts.max(1);
        let mut attempt = 1;
        loop {
            let read = self.get(key).await?;
            let Some(value) = resolve(&read.values) else {
                return Ok(None);
            };
            let written = self.put(key, value, Some(&read.context)).await?;
            if written.siblings.is_empty() || attempt >= attempts {
                return Ok(Some(written));
            }
            tracing::debug!(
                attempt,
                siblings = written.siblings.len(),
                "concurrent write during update; resolving again"
            );
            attempt += 1;
        }
    }

    /// Sends an empty request to one node and returns the round-trip time.
    pub async fn ping(&self) -> Result<Duration, Error> {
        self.call_routed(None, Idempotent::Yes, |this, channel| {
            let mut kv = this.kv_client(channel);
            let request = this.request(PingRequest {});
            async move {
                let started = Instant::now();
                kv.ping(request).await?;
                Ok(tonic::Response::new(started.elapsed()))
            }
        })
        .await
    }

    // ---------------------------------------------------------------------
    // Admin calls.

    /// Status and counters of the node at `address`.
    pub async fn status(&self, address: &str) -> Result<StatusResponse, Error> {
        self.call_at(address, |this, channel| {
            let mut admin = this.admin_client(channel);
            let request = this.request(StatusRequest {});
            async move { admin.status(request).await }
        })
        .await
    }

    /// Fetches the membership table from the node at `address`, or from
    /// any reachable node when `address` is `None`.
    pub async fn members(&self, address: Option<&str>) -> Result<MembersResponse, Error> {
        let op = |this: &Client, channel| {
            let mut admin = this.admin_client(channel);
            let request = this.request(MembersRequest {});
            async move { admin.members(request).await }
        };
        match address {
            Some(address) => self.call_at(address, op).await,
            None => self.call_routed(None, Idempotent::Yes, op).await,
        }
    }

    /// Fetches the current ring from any reachable node and caches it for
    /// routing.
    pub async fn ring(&self) -> Result<Arc<RingSnapshot>, Error> {
        self.refresh_ring().await
    }

    /// Reads one node's local state of `key` without quorum or repair.
    /// `node` is a node id (hex digits, as `members` shows it) or an
    /// address (`host:port`).
    pub async fn replica_read(
        &self,
        node: &str,
        key: impl AsRef<[u8]>,
    ) -> Result<ReplicaRead, Error> {
        let address = self.resolve_node(node).await?;
        let message = AdminReplicaReadRequest {
            key: key.as_ref().to_vec(),
        };
        let reply = self
            .call_at(&address, |this, channel| {
                let mut admin = this.admin_client(channel);
                let request = this.request(message.clone());
                async move { admin.replica_read(request).await }
            })
            .await?;
        let state = match reply.kind() {
            kv_proto::v1::ReplicaState::Present => ReplicaState::Present,
            kv_proto::v1::ReplicaState::Missing => ReplicaState::Missing,
            kv_proto::v1::ReplicaState::Unknown => ReplicaState::Unknown,
            kv_proto::v1::ReplicaState::Unspecified => {
                return Err(Error::Protocol {
                    message: format!(
                        "node {address} returned replica state {} (unspecified)",
                        reply.kind
                    ),
                })
            }
        };
        Ok(ReplicaRead {
            node_id: reply.node_id,
            address,
            state,
            values: reply.values,
            tombstones: reply.tombstones,
            context: Context::from_bytes(reply.context),
            dots: reply.dots,
        })
    }

    // ---------------------------------------------------------------------
    // Membership changes. Each returns the node's message for the operator.

    /// Asks the node at `address` to decommission itself: the claimant
    /// plans its partitions onto the other nodes, which copy the data from
    /// it, and the node leaves once they hold it.
    pub async fn decommission(&self, address: &str) -> Result<String, Error> {
        let reply = self
            .call_at(address, |this, channel| {
                let mut admin = this.admin_client(channel);
                let request = this.request(DecommissionRequest {});
                async move { admin.decommission(request).await }
            })
            .await?;
        Ok(reply.message)
    }

    /// Removes the node `node_id` (hex digits, as `members` shows it) for
    /// good. The node must be down. The remaining nodes rebuild its
    /// partitions from the surviving replicas.
    ///
    /// The request goes to any reachable node other than `node_id`, because
    /// a node rejects its own removal. The node's address is known only when
    /// the cached ring lists it.
    pub async fn remove_node(&self, node_id: &str) -> Result<String, Error> {
        let candidates = self.candidates_except(node_id)?;
        let message = RemoveRequest {
            node_id: node_id.trim().to_string(),
        };
        let reply = self
            .call_in_turn(candidates, Idempotent::Yes, |this, channel| {
                let mut admin = this.admin_client(channel);
                let request = this.request(message.clone());
                async move { admin.remove(request).await }
            })
            .await?;
        Ok(reply.message)
    }

    /// Sends the removal of `node_id` to the node at `address`; see
    /// [`Client::remove_node`].
    pub async fn remove_node_at(&self, address: &str, node_id: &str) -> Result<String, Error> {
        let message = RemoveRequest {
            node_id: node_id.trim().to_string(),
        };
        let reply = self
            .call_at(address, |this, channel| {
                let mut admin = this.admin_client(channel);
                let request = this.request(message);
                async move { admin.remove(request).await }
            })
            .await?;
        Ok(reply.message)
    }

    /// Declares the node `node_id` down, so ring changes stop waiting for
    /// it. The receiving node's failure detector must report the node
    /// down. No data moves: the node keeps its partitions.
    ///
    /// Routed like [`Client::remove_node`].
    pub async fn mark_down(&self, node_id: &str) -> Result<String, Error> {
        let candidates = self.candidates_except(node_id)?;
        let message = MarkDownRequest {
            node_id: node_id.trim().to_string(),
        };
        let reply = self
            .call_in_turn(candidates, Idempotent::Yes, |this, channel| {
                let mut admin = this.admin_client(channel);
                let request = this.request(message.clone());
                async move { admin.mark_down(request).await }
            })
            .await?;
        Ok(reply.message)
    }

    /// Sends the mark-down of `node_id` to the node at `address`; see
    /// [`Client::mark_down`].
    pub async fn mark_down_at(&self, address: &str, node_id: &str) -> Result<String, Error> {
        let message = MarkDownRequest {
            node_id: node_id.trim().to_string(),
        };
        let reply = self
            .call_at(address, |this, channel| {
                let mut admin = this.admin_client(channel);
                let request = this.request(message);
                async move { admin.mark_down(request).await }
            })
            .await?;
        Ok(reply.message)
    }

    /// Returns the candidates of a request without key, minus the address
    /// that the cached ring gives for `node_id`. Fails with
    /// [`Error::InvalidArgument`] when that address is the only candidate.
    fn candidates_except(&self, node_id: &str) -> Result<Vec<String>, Error> {
        let excluded = parse_node_id(node_id.trim()).and_then(|id| {
            self.cached_ring()
                .and_then(|snapshot| snapshot.address_of(id).map(str::to_string))
        });
        let mut candidates = self.candidates(None);
        if let Some(excluded) = excluded {
            candidates.retain(|address| *address != excluded);
            if candidates.is_empty() {
                return Err(Error::InvalidArgument {
                    message: format!(
                        "node {} ({excluded}) is the only node this client knows, and a node rejects a change of its own membership; pass another node's address as endpoint",
                        node_id.trim()
                    ),
                });
            }
        }
        Ok(candidates)
    }

    /// Maps a node id or address to an address.
    async fn resolve_node(&self, node: &str) -> Result<String, Error> {
        let node = node.trim();
        if node.contains(':') {
            return Ok(node.to_string());
        }
        let Some(id) = parse_node_id(node) else {
            return Err(Error::InvalidArgument {
                message: format!(
                    "{node:?} is neither a node id (hex digits) nor an address (host:port)"
                ),
            });
        };
        let snapshot = match self.cached_ring() {
            Some(snapshot) if snapshot.addresses.contains_key(&id) => snapshot,
            _ => self.refresh_ring().await?,
        };
        match snapshot.address_of(id) {
            Some(address) => Ok(address.to_string()),
            None => Err(Error::InvalidArgument {
                message: format!(
                    "node {} is not in ring version {}; known nodes: {}",
                    format_node_id(id),
                    snapshot.ring.version,
                    snapshot
                        .addresses
                        .keys()
                        .map(|id| format_node_id(*id))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        }
    }

    // ---------------------------------------------------------------------
    // Ring cache.

    /// Fetches the ring from any node and installs it unless the cached
    /// ring of the same cluster is newer.
    async fn refresh_ring(&self) -> Result<Arc<RingSnapshot>, Error> {
        let reply = self
            .call_routed(None, Idempotent::Yes, |this, channel| {
                let mut admin = this.admin_client(channel);
                let request = this.request(RingRequest {});
                async move { admin.ring(request).await }
            })
            .await?;
        if reply.encoded.is_empty() {
            return Err(Error::Protocol {
                message: format!(
                    "ring version {} of cluster {:?} came without its encoding",
                    reply.version, reply.cluster_id
                ),
            });
        }
        let ring = Ring::decode(&reply.encoded).map_err(|error| Error::Protocol {
            message: format!("cannot decode ring version {}: {error}", reply.version),
        })?;
        let mut addresses = BTreeMap::new();
        for (id_text, address) in reply.addresses {
            match parse_node_id(&id_text) {
                Some(id) => {
                    addresses.insert(id, address);
                }
                None => tracing::warn!(node = %id_text, "ring lists an invalid node id; ignored"),
            }
        }
        let fetched = Arc::new(RingSnapshot { ring, addresses });
        *self
            .inner
            .down
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) =
            reply.down_addresses.into_iter().collect();

        let mut guard = self
            .inner
            .ring
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let keep_cached = guard.as_ref().is_some_and(|cached| {
            cached.ring.cluster_id == fetched.ring.cluster_id
                && cached.ring.is_newer_than(&fetched.ring)
        });
        if keep_cached {
            return Ok(guard.clone().unwrap_or(fetched));
        }
        let changed = guard
            .as_ref()
            .is_none_or(|cached| cached.ring != fetched.ring);
        if changed {
            tracing::debug!(
                version = fetched.ring.version,
                nodes = fetched.addresses.len(),
                "installed ring"
            );
        }
        *guard = Some(fetched.clone());
        Ok(fetched)
    }

    // ---------------------------------------------------------------------
    // Transport.

    /// Returns the cached channel to `address`, creating it on first use.
    fn channel(&self, address: &str) -> Result<Channel, Error> {
        let mut channels = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(endpoint_uri(address)).map_err(|error| {
            Error::InvalidEndpoint {
                endpoint: address.to_string(),
                reason: format!("{error}; expected host:port such as 127.0.0.1:7401"),
            }
        })?;
        let channel = endpoint
            .connect_timeout(self.inner.options.connect_timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    fn kv_client(&self, channel: Channel) -> KvClient<Channel> {
        let limit = self.inner.options.max_message_bytes;
        KvClient::new(channel)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
    }

    fn admin_client(&self, channel: Channel) -> AdminClient<Channel> {
        let limit = self.inner.options.max_message_bytes;
        AdminClient::new(channel)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
    }

    /// Wraps a message with the request timeout as gRPC deadline.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.inner.options.request_timeout);
        request
    }

    /// Runs `op` at one address; a connection failure is
    /// [`Error::Unavailable`].
    async fn call_at<T, F, Fut>(&self, address: &str, op: F) -> Result<T, Error>
    where
        F: FnOnce(&Client, Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let channel = self.channel(address)?;
        self.attempt(address, op(self, channel)).await
    }

    /// Runs `op` at the candidates for `key` in turn until one node
    /// coordinates it; see the module documentation for the failover rule.
    /// An idempotent request also moves on after a timeout at one node.
    async fn call_routed<T, F, Fut>(
        &self,
        key: Option<&[u8]>,
        idempotent: Idempotent,
        op: F,
    ) -> Result<T, Error>
    where
        F: FnMut(&Client, Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let candidates = self.candidates(key);
        self.call_in_turn(candidates, idempotent, op).await
    }

    /// Orders the addresses a request for `key` is tried at: the routing
    /// order, with the nodes reported down moved to the end.
    fn candidates(&self, key: Option<&[u8]>) -> Vec<String> {
        let snapshot = self.cached_ring();
        let start = self.inner.next_request.fetch_add(1, Ordering::Relaxed);
        let mut candidates = routing::candidates(
            snapshot.as_deref(),
            key,
            &self.inner.seeds,
            start,
            self.inner.options.rotate_coordinators,
        );
        {
            let down = self
                .inner
                .down
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            // A stable sort keeps the routing order among the nodes up and
            // among those reported down.
            candidates.sort_by_key(|address| down.contains(address));
        }
        candidates
    }

    /// Runs `op` at `candidates` in turn until one node handles it, with
    /// the failover rule of [`Client::call_routed`].
    async fn call_in_turn<T, F, Fut>(
        &self,
        candidates: Vec<String>,
        idempotent: Idempotent,
        mut op: F,
    ) -> Result<T, Error>
    where
        F: FnMut(&Client, Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut tried = Vec::with_capacity(candidates.len());
        for address in candidates {
            let channel = match self.channel(&address) {
                Ok(channel) => channel,
                Err(error) => {
                    tried.push(format!("{address}: {error}"));
                    continue;
                }
            };
            match self.attempt(&address, op(self, channel)).await {
                Ok(value) => return Ok(value),
                Err(Error::Unavailable { address, message }) => {
                    tracing::debug!(%address, %message, "node unavailable; trying the next one");
                    tried.push(format!("{address}: {message}"));
                    self.inner.refresh_wanted.notify_one();
                }
                // A read can be repeated safely, so a broken connection
                // moves it on like a timeout does; a write is not retried
                // because it may have been applied.
                Err(Error::Transport { address, message }) if idempotent == Idempotent::Yes => {
                    tracing::debug!(%address, %message, "connection broke; trying the next node");
                    tried.push(format!("{address}: {message}"));
                    self.inner.refresh_wanted.notify_one();
                }
                Err(Error::DeadlineExceeded { timeout, message })
                    if idempotent == Idempotent::Yes =>
                {
                    tracing::debug!(%address, ?timeout, "node timed out; trying the next one");
                    tried.push(format!(
                        "{address}: timed out after {timeout:?} ({message})"
                    ));
                    self.inner.refresh_wanted.notify_one();
                }
                Err(error) => {
                    // A node that timed out may be hung: a fresh ring tells
                    // whether the cluster reports it down.
                    if matches!(
                        error,
                        Error::DeadlineExceeded { .. } | Error::Transport { .. }
                    ) {
                        self.inner.refresh_wanted.notify_one();
                    }
                    return Err(error);
                }
            }
        }
        Err(Error::NoReachableNode { tried })
    }

    /// Awaits one attempt under the request timeout and classifies its
    /// failure; only a failure that allows failover becomes
    /// [`Error::Unavailable`].
    async fn attempt<T>(
        &self,
        address: &str,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, Error> {
        let timeout = self.inner.options.request_timeout;
        match tokio::time::timeout(timeout, call).await {
            Err(_elapsed) => Err(Error::DeadlineExceeded {
                timeout,
                message: format!("no reply from {address}"),
            }),
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) if should_fail_over(&status) => Err(Error::Unavailable {
                address: address.to_string(),
                message: message_with_cause(&status),
            }),
            Ok(Err(status)) => Err(Error::from_status(&status, address, timeout)),
        }
    }
}

/// Returns the status message followed by the root cause of its error
/// source chain, because tonic's connection errors carry only "tcp connect
/// error" and keep the reason (such as "Connection refused") at the root.
fn message_with_cause(status: &Status) -> String {
    let mut message = status.message().to_string();
    let mut root = None;
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        root = Some(cause);
        source = cause.source();
    }
    if let Some(root) = root {
        let text = root.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
    }
    message
}

/// Starts the task that refreshes the ring periodically and after
/// failovers. It holds only a weak reference, so it ends once every clone
/// of the client is dropped (checked at its next wake-up).
fn spawn_ring_refresher(inner: &Arc<Inner>) {
    let weak: Weak<Inner> = Arc::downgrade(inner);
    let wake = inner.refresh_wanted.clone();
    let period = inner.options.ring_refresh_interval;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = wake.notified() => {}
            }
            let Some(inner) = weak.upgrade() else {
                return;
            };
            let client = Client { inner };
            if let Err(error) = client.refresh_ring().await {
                tracing::debug!(%error, "ring refresh failed; keeping the cached ring");
            }
            drop(client);
            tokio::time::sleep(MIN_TRIGGERED_REFRESH_GAP).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_uri_adds_http_scheme() {
        assert_eq!(endpoint_uri("127.0.0.1:7401"), "http://127.0.0.1:7401");
        assert_eq!(endpoint_uri("https://db:7401"), "https://db:7401");
    }

    #[tokio::test]
    async fn connect_rejects_empty_endpoint_list() {
        let endpoints: [&str; 0] = [];
        let error = Client::connect(&endpoints).await.expect_err("no endpoints");
        assert!(matches!(error, Error::InvalidEndpoint { .. }), "{error:?}");
    }

    #[tokio::test]
    async fn unreachable_node_gives_no_reachable_node() {
        // Port 1 on loopback is closed on any ordinary machine, so the
        // connection is refused at once.
        let options = ClientOptions {
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            ..ClientOptions::default()
        };
        let client = Client::connect_with(&["127.0.0.1:1"], options)
            .await
            .expect("client starts without a reachable node");
        let error = client.get(b"key").await.expect_err("nothing listens");
        match &error {
            Error::NoReachableNode { tried } => {
                assert_eq!(tried.len(), 1, "{tried:?}");
                assert!(tried[0].starts_with("127.0.0.1:1"), "{tried:?}");
            }
            other => panic!("expected NoReachableNode, got {other:?}"),
        }
        assert!(error.is_retryable());
    }
}
