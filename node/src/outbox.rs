//! Outgoing replica reads and writes, coalesced per peer.
//!
//! Each peer address has two queues, one for reads and one for writes,
//! each with a sender task. The task waits until fewer than
//! [`MAX_BATCHES_IN_FLIGHT`] batches of its queue are in flight,
//! then takes every queued item (up to [`MAX_BATCH_ITEMS`] items and half the
//! gRPC message limit in bytes) and sends them as one `ReplicaBatch`. An
//! item queued alone goes out at once, so batching adds no wait at low load.
//! Under load, the items that queue while earlier batches are in flight
//! share the next batch: one RPC, one storage job and one group-commit wait
//! on the peer instead of one of each per item.
//!
//! Reads and writes to one peer travel in separate batches with separate
//! limits: a peer answers a batch only once its writes are durable, and a
//! read in the same batch would wait for that flush.
//!
//! Every item carries its own deadline. The caller stops waiting at the
//! deadline, and the sender task drops items whose deadline has passed or
//! whose caller has stopped waiting before it sends them.

use crate::node::Node;
use crate::peers::header;
use kv_cluster::{format_node_id, NodeId};
use kv_proto::v1::{ReplicaBatchRequest, ReplicaItem, ReplicaItemResult};
use prost::Message;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

/// Batches in flight to one peer at a time.
const MAX_BATCHES_IN_FLIGHT: usize = 2;

/// Items in one batch.
const MAX_BATCH_ITEMS: usize = 256;

type ItemReply = Result<ReplicaItemResult, String>;

struct Queued {
    item: ReplicaItem,
    deadline: Instant,
    reply: oneshot::Sender<ItemReply>,
}

/// The queues of the peers, keyed by address and by whether they carry
/// writes.
#[derive(Default)]
pub struct Outbox {
    queues: Mutex<HashMap<(String, bool), mpsc::UnboundedSender<Queued>>>,
    /// Held while a refused batch fetches a peer's newer ring.
    ring_refresh: tokio::sync::Mutex<()>,
}

impl Node {
    /// Queues `item` for `peer` and waits at most `timeout` for its result.
    /// A failed item (non-zero code) is returned as an error.
    pub async fn send_replica_item(
        self: &Arc<Self>,
        peer: NodeId,
        item: ReplicaItem,
        timeout: Duration,
    ) -> Result<ReplicaItemResult, String> {
        let address = self
            .view
            .address_of(peer)
            .ok_or_else(|| format!("address of node {} unknown", format_node_id(peer)))?;
        let deadline = Instant::now() + timeout;
        let (reply, result) = oneshot::channel();
        self.queue_for(&address, item.write)
            .send(Queued {
                item,
                deadline,
                reply,
            })
            .map_err(|_| "the sender task of the peer has stopped".to_string())?;
        let outcome = match tokio::time::timeout_at(deadline, result).await {
            Ok(Ok(outcome)) => outcome?,
            Ok(Err(_)) => return Err("dropped before it was sent".to_string()),
            Err(_) => return Err("timed out".to_string()),
        };
        if outcome.code != 0 {
            if outcome.message.contains(crate::service::peer::STALE_RING) {
                self.refresh_ring_from(&address).await;
            }
            return Err(format!(
                "{:?}: {}",
                tonic::Code::from_i32(outcome.code),
                outcome.message
            ));
        }
        Ok(outcome)
    }

    /// Fetches the newer ring of the peer at `address` with one gossip
    /// exchange. Refusals of one batch arrive together, so one refresh at
    /// a time runs, and none when the ring changed meanwhile.
    async fn refresh_ring_from(self: &Arc<Self>, address: &str) {
        let before = self.view.ring().version;
        let _one_at_a_time = self.outbox.ring_refresh.lock().await;
        if self.view.ring().version != before {
            return;
        }
        if let Err(status) = self.fetch_newer_ring(address).await {
            tracing::debug!(peer = %address, reason = %status.message(), "cannot fetch the newer ring of a peer");
        }
    }

    fn queue_for(self: &Arc<Self>, address: &str, writes: bool) -> mpsc::UnboundedSender<Queued> {
        let mut queues = self
            .outbox
            .queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let queue_key = (address.to_string(), writes);
        if let Some(queue) = queues.get(&queue_key) {
            if !queue.is_closed() {
                return queue.clone();
            }
        }
        let (queue, receiver) = mpsc::unbounded_channel();
        let byte_limit = self.config.grpc_message_limit() / 2;
        tokio::spawn(run_sender(
            Arc::downgrade(self),
            address.to_string(),
            receiver,
            byte_limit,
        ));
        queues.insert(queue_key, queue.clone());
        queue
    }

    /// Sends one batch and hands each caller its result.
    async fn send_batch(&self, address: &str, batch: Vec<Queued>) {
        let now = Instant::now();
        let batch: Vec<Queued> = batch
            .into_iter()
            .filter(|queued| queued.deadline > now && !queued.reply.is_closed())
            .collect();
        let Some(timeout) = batch.iter().map(|queued| queued.deadline - now).max() else {
            return;
        };

        let (items, replies): (Vec<ReplicaItem>, Vec<oneshot::Sender<ItemReply>>) = batch
            .into_iter()
            .map(|queued| (queued.item, queued.reply))
            .unzip();

        let fail_all = |replies: Vec<oneshot::Sender<ItemReply>>, reason: String| {
            for reply in replies {
                let _ = reply.send(Err(reason.clone()));
            }
        };

        let mut client = match self.peers.peer(address) {
            Ok(client) => client,
            Err(status) => return fail_all(replies, status.message().to_string()),
        };

        self.stats
            .replica_batches_sent
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.stats
            .replica_items_sent
            .fetch_add(items.len() as u64, std::sync::atomic::Ordering::Relaxed);

        let ring = self.view.ring();
        // The receiver works on the batch until the last caller stops waiting.
        let request = ReplicaBatchRequest {
            header: Some(header(
                &ring.cluster_id,
                self.node_id(),
                ring.version,
                Some(timeout),
            )),
            items,
        };

        match tokio::time::timeout(timeout, client.replica_batch(request)).await {
            Ok(Ok(response)) => {
                let results = response.into_inner().results;
                if results.len() != replies.len() {
                    let reason = format!(
                        "malformed reply: {} results for {} items",
                        results.len(),
                        replies.len()
                    );
                    return fail_all(replies, reason);
                }
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
            }
            Ok(Err(status)) => fail_all(
                replies,
                format!("{:?}: {}", status.code(), status.message()),
            ),
            Err(_) => fail_all(replies, "timed out".to_string()),
        }
    }
}

/// Takes the queued items of one peer and sends them in batches until the
/// node or the queue goes away.
async fn run_sender(
    node: Weak<Node>,
    address: String,
    mut queue: mpsc::UnboundedReceiver<Queued>,
    byte_limit: usize,
) {
    let slots = Arc::new(Semaphore::new(MAX_BATCHES_IN_FLIGHT));
    // An item that did not fit in the previous batch opens the next one.
    let mut carried: Option<Queued> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(queued) => queued,
            None => match queue.recv().await {
                Some(queued) => queued,
                None => return,
            },
        };
        let mut bytes = first.item.encoded_len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_ITEMS {
            let Ok(next) = queue.try_recv() else { break };
            let size = next.item.encoded_len();
            if bytes + size > byte_limit {
                carried = Some(next);
                break;
            }
            bytes += size;
            batch.push(next);
        }
        let Some(node) = node.upgrade() else { return };
        let address = address.clone();
        tokio::spawn(async move {
            node.send_batch(&address, batch).await;
            drop(slot);
        });
    }
}
