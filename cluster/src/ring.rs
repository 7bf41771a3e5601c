//! The partitioned ring (STUB: signatures are fixed, bodies to be written).

use crate::NodeId;
use std::collections::BTreeMap;

/// Errors of ring construction and decoding.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RingError {
    #[error("invalid ring: {0}")]
    Invalid(String),
    #[error("cannot decode ring: {0}")]
    Decode(String),
}

/// The versioned ring document carried by gossip.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ring {
    /// Cluster id minted when the cluster was created (32 hex digits).
    pub cluster_id: String,
    /// Q: number of equal partitions of the 64-bit hash space, a power of two.
    pub partitions: u32,
    /// N: replicas per key.
    pub replicas: u32,
    /// Owner (claim) of each partition, indexed by partition.
    pub owners: Vec<NodeId>,
    /// Bumped by the claimant on every change.
    pub version: u64,
    /// Node that computed this version.
    pub claimant: NodeId,
    /// Anti-entropy hash-tree leaves per partition, fixed cluster-wide.
    pub tree_leaves: u32,
}

impl Ring {
    /// Creates version 1 of a new cluster's ring with one node owning every
    /// partition.
    pub fn new(
        cluster_id: String,
        partitions: u32,
        replicas: u32,
        first: NodeId,
    ) -> Result<Ring, RingError> {
        let _ = (cluster_id, partitions, replicas, first);
        todo!()
    }

    /// Partition of a user key.
    pub fn partition_for_key(&self, key: &[u8]) -> u32 {
        crate::hash::partition_of(crate::hash::key_hash(key), self.partitions)
    }

    /// Preference list of a partition by the skip rule.
    pub fn preference_list(&self, partition: u32) -> Vec<NodeId> {
        let _ = partition;
        todo!()
    }

    /// Preference list of a user key.
    pub fn preference_list_for_key(&self, key: &[u8]) -> Vec<NodeId> {
        self.preference_list(self.partition_for_key(key))
    }

    /// Distinct nodes that own at least one partition.
    pub fn nodes(&self) -> Vec<NodeId> {
        todo!()
    }

    /// Partitions each node owns (is first in the preference list of).
    pub fn partitions_per_node(&self) -> BTreeMap<NodeId, u32> {
        todo!()
    }

    /// Preference lists each node appears in.
    pub fn replicas_per_node(&self) -> BTreeMap<NodeId, u32> {
        todo!()
    }

    /// Returns the next version of this ring with `joining` nodes added,
    /// claimed by `claimant`.
    pub fn with_nodes_added(&self, joining: &[NodeId], claimant: NodeId) -> Ring {
        let _ = (joining, claimant);
        todo!()
    }

    /// True when this ring is newer than `other`: ordered by (version, claimant).
    pub fn is_newer_than(&self, other: &Ring) -> bool {
        (self.version, self.claimant) > (other.version, other.claimant)
    }

    /// Encodes the ring, with a format version byte first.
    pub fn encode(&self) -> Vec<u8> {
        todo!()
    }

    /// Decodes a ring written by [`Ring::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Ring, RingError> {
        let _ = bytes;
        todo!()
    }
}
