//! Dotted version vector sets (STUB: signatures are fixed).

use crate::NodeId;
use std::collections::BTreeMap;

/// Errors decoding a stored or received state.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("cannot decode state: {0}")]
    Invalid(String),
    #[error("unknown state format version {0}")]
    UnknownVersion(u8),
}

/// A causality actor: a node id and one of the node's epochs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Actor {
    pub node: NodeId,
    pub epoch: u64,
}

/// A dot names one write: the actor that created it and its counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dot {
    pub actor: Actor,
    pub counter: u64,
}

/// A version vector: actor to counter, "every event of this actor up to the
/// counter has been seen".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VersionVector {
    pub entries: BTreeMap<Actor, u64>,
}

/// A value or a tombstone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Data(Vec<u8>),
    Tombstone,
}

/// The state of a key: a causal context and dotted values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    pub context: VersionVector,
    pub values: BTreeMap<Dot, Value>,
}
