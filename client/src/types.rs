//! Results of client calls.

use std::collections::BTreeMap;

use kv_cluster::ring::Ring;
use kv_cluster::NodeId;

use crate::Context;

/// Result of a get: every live sibling and the context covering them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GetResult {
    /// Live sibling values in dot order; empty when the key is missing or
    /// deleted.
    pub values: Vec<Vec<u8>>,
    /// Context to pass to the next put or delete of this key; empty when
    /// the key was never written.
    pub context: Context,
}

impl GetResult {
    /// True when the key has no live value.
    pub fn is_missing(&self) -> bool {
        self.values.is_empty()
    }

    /// True when concurrent writes left more than one value.
    pub fn has_siblings(&self) -> bool {
        self.values.len() > 1
    }
}

/// Result of a put.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutResult {
    /// Context of the new state; it covers the new value and `siblings`.
    pub context: Context,
    /// Concurrent values the put's context did not cover, still live next
    /// to the new value. Empty after an uncontended put with a fresh context.
    pub siblings: Vec<Vec<u8>>,
}

/// Result of a delete.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteResult {
    /// Context of the new state, covering the tombstone.
    pub context: Context,
    /// Values that stay live because the delete's context did not cover
    /// them.
    pub siblings: Vec<Vec<u8>>,
}

/// State of a key on one replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaState {
    /// The replica stores a state for the key (possibly only tombstones).
    Present,
    /// The replica stores nothing for the key.
    Missing,
    /// The stored record failed its checksum, so its content is not served.
    Unknown,
}

impl ReplicaState {
    /// Lower-case name used in kv-cli output.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaState::Present => "present",
            ReplicaState::Missing => "missing",
            ReplicaState::Unknown => "unknown",
        }
    }
}

/// One node's local state of a key, read without quorum or repair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaRead {
    /// Id of the node that replied, 16 hex digits.
    pub node_id: String,
    /// Address the request was sent to.
    pub address: String,
    pub state: ReplicaState,
    /// Live values in dot order.
    pub values: Vec<Vec<u8>>,
    /// Number of tombstones among the dotted values.
    pub tombstones: u32,
    /// Client context of the local state.
    pub context: Context,
    /// Dots of the values as `actor.counter` strings.
    pub dots: Vec<String>,
}

/// The cluster's ring and the address of every node in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingSnapshot {
    pub ring: Ring,
    /// Address of each node that owns a partition.
    pub addresses: BTreeMap<NodeId, String>,
}

impl RingSnapshot {
    /// Address of `node`, when the ring lists it.
    pub fn address_of(&self, node: NodeId) -> Option<&str> {
        self.addresses.get(&node).map(String::as_str)
    }
}
