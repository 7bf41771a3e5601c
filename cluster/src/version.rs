//! Dotted version vector sets: the state of one key, its merge and its
//! canonical encoding.
//!
//! A [`State`] is a causal context (a [`VersionVector`], actor → counter,
//! meaning "every event of this actor up to the counter has been seen") and a
//! set of dotted values: each value or tombstone is tagged with the [`Dot`]
//! of the write that created it. This is the dotted version vector set of
//! Almeida et al., "Scalable and Accurate Causality Tracking for Eventually
//! Consistent Stores" (2014).
//!
//! Invariants of a well-formed state, enforced by [`State::decode`]:
//! - every dot lies inside the state's own context;
//! - no context entry has counter 0.
//!
//! [`State::merge`] is a semilattice join on well-formed states (commutative,
//! associative, idempotent) as long as a dot never names two different
//! values. When it does, which only a bug or lost data can cause, the merge
//! keeps the value with the larger digest so that replicas still converge,
//! and reports the clash in [`Merged::dot_conflicts`].
//!
//! Canonical encoding (all integers big-endian, fixed width, so equal states
//! give equal bytes and the bytes have exactly one decoding):
//!
//! ```text
//! u8  format version (1)
//! u32 context entry count, then per entry in ascending actor order:
//!     u64 node, u64 epoch, u64 counter (>= 1)
//! u32 value count, then per value in ascending dot order:
//!     u64 node, u64 epoch, u64 counter, u8 kind (0 tombstone, 1 data),
//!     and for data: u32 length, then the bytes
//! ```
//!
//! Local fields such as a record's `gen` are not part of a state and never
//! appear in this encoding.

use crate::hash::digest128;
use crate::NodeId;
use std::collections::BTreeMap;
use std::fmt;

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

/// The result of [`State::merge`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Merged {
    /// The joined state.
    pub state: State,
    /// Number of dots that the two states held with different values. Each
    /// one is a bug or a sign of lost data, so callers log it and count it.
    pub dot_conflicts: u32,
}

/// Format version byte that starts every canonical state encoding.
pub const STATE_FORMAT_VERSION: u8 = 1;

const KIND_TOMBSTONE: u8 = 0;
const KIND_DATA: u8 = 1;

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}@{}", self.node, self.epoch)
    }
}

impl fmt::Display for Dot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.actor, self.counter)
    }
}

impl VersionVector {
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the counter of `actor`, 0 when the vector has no entry for it.
    pub fn get(&self, actor: &Actor) -> u64 {
        self.entries.get(actor).copied().unwrap_or(0)
    }

    /// Returns whether the vector has seen the write named by `dot`.
    pub fn covers(&self, dot: &Dot) -> bool {
        self.get(&dot.actor) >= dot.counter
    }

    /// Raises every counter to the maximum of the two vectors.
    pub fn join(&mut self, other: &VersionVector) {
        for (actor, &counter) in &other.entries {
            let entry = self.entries.entry(*actor).or_insert(0);
            if *entry < counter {
                *entry = counter;
            }
        }
    }

    /// Raises the counter of `actor` to at least `counter`.
    pub fn raise(&mut self, actor: Actor, counter: u64) {
        if counter == 0 {
            return;
        }
        let entry = self.entries.entry(actor).or_insert(0);
        if *entry < counter {
            *entry = counter;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends the canonical encoding: a u32 entry count, then node, epoch
    /// and counter of each entry as big-endian u64 in ascending actor order.
    /// Entries with counter 0 are left out, since they mean "nothing seen".
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let count = self
            .entries
            .values()
            .filter(|&&counter| counter > 0)
            .count();
        out.extend_from_slice(&(count as u32).to_be_bytes());
        for (actor, &counter) in &self.entries {
            if counter == 0 {
                continue;
            }
            out.extend_from_slice(&actor.node.to_be_bytes());
            out.extend_from_slice(&actor.epoch.to_be_bytes());
            out.extend_from_slice(&counter.to_be_bytes());
        }
    }

    /// Reads one vector written by [`VersionVector::encode_into`] from the
    /// front of `input` and advances `input` past it. Rejects truncated
    /// input, actors out of ascending order or repeated, and zero counters.
    pub fn decode_from(input: &mut &[u8]) -> Result<VersionVector, DecodeError> {
        let mut reader = Reader { rest: input };
        let vector = reader.version_vector()?;
        *input = reader.rest;
        Ok(vector)
    }
}

impl State {
    pub fn new() -> Self {
        Self::default()
    }

    /// Joins two states. A dotted value is kept if both states contain it,
    /// or if one contains it and the other's context does not cover its dot.
    /// The context is the pointwise maximum. The same dot with different values
    /// keeps the value with the larger digest and counts one conflict.
    pub fn merge(&self, other: &State) -> Merged {
        let mut context = self.context.clone();
        context.join(&other.context);

        let mut values = BTreeMap::new();
        let mut dot_conflicts = 0u32;
        for (dot, value) in &self.values {
            match other.values.get(dot) {
                Some(other_value) if other_value == value => {
                    values.insert(*dot, value.clone());
                }
                Some(other_value) => {
                    dot_conflicts = dot_conflicts.saturating_add(1);
                    values.insert(*dot, pick_conflict_winner(value, other_value).clone());
                }
                None if !other.context.covers(dot) => {
                    values.insert(*dot, value.clone());
                }
                None => {}
            }
        }
        for (dot, value) in &other.values {
            if !self.values.contains_key(dot) && !self.context.covers(dot) {
                values.insert(*dot, value.clone());
            }
        }

        Merged {
            state: State { context, values },
            dot_conflicts,
        }
    }

    /// Returns the data values in dot order, tombstones left out.
    pub fn live_values(&self) -> Vec<&[u8]> {
        self.values
            .values()
            .filter_map(|value| match value {
                Value::Data(bytes) => Some(bytes.as_slice()),
                Value::Tombstone => None,
            })
            .collect()
    }

    /// Returns whether the state has values and all of them are tombstones.
    pub fn is_tombstone_only(&self) -> bool {
        !self.values.is_empty()
            && self
                .values
                .values()
                .all(|value| matches!(value, Value::Tombstone))
    }

    /// Returns whether the state has no live (data) value, so a read of it
    /// reports the key as missing.
    pub fn is_deleted_or_empty(&self) -> bool {
        !self
            .values
            .values()
            .any(|value| matches!(value, Value::Data(_)))
    }

    /// Returns the number of dotted values, tombstones included.
    pub fn sibling_count(&self) -> usize {
        self.values.len()
    }

    /// Returns the sum of the lengths of the data values in bytes.
    pub fn value_bytes(&self) -> usize {
        self.values
            .values()
            .map(|value| match value {
                Value::Data(bytes) => bytes.len(),
                Value::Tombstone => 0,
            })
            .sum()
    }

    /// Returns the canonical encoding described in the module documentation.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 4 + 24 * self.context.entries.len() + 4 + 64);
        out.push(STATE_FORMAT_VERSION);
        self.context.encode_into(&mut out);
        out.extend_from_slice(&(self.values.len() as u32).to_be_bytes());
        for (dot, value) in &self.values {
            out.extend_from_slice(&dot.actor.node.to_be_bytes());
            out.extend_from_slice(&dot.actor.epoch.to_be_bytes());
            out.extend_from_slice(&dot.counter.to_be_bytes());
            match value {
                Value::Tombstone => out.push(KIND_TOMBSTONE),
                Value::Data(bytes) => {
                    out.push(KIND_DATA);
                    // Values are capped far below 4 GiB when a put is
                    // admitted, so the length always fits in a u32.
                    let len = u32::try_from(bytes.len())
                        .expect("a value longer than u32::MAX bytes cannot be encoded");
                    out.extend_from_slice(&len.to_be_bytes());
                    out.extend_from_slice(bytes);
                }
            }
        }
        out
    }

    /// Decodes a canonical encoding. Rejects, without panicking, an unknown
    /// format version, truncated input, trailing bytes, actors or dots out of
    /// ascending order or repeated, zero counters, unknown value kinds and
    /// dots outside the state's own context.
    pub fn decode(bytes: &[u8]) -> Result<State, DecodeError> {
        let mut reader = Reader { rest: bytes };
        let version = reader.u8("format version")?;
        if version != STATE_FORMAT_VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        let state = reader.state_body()?;
        if !reader.rest.is_empty() {
            return Err(DecodeError::Invalid(format!(
                "unexpected bytes after the state: {}",
                reader.rest.len()
            )));
        }
        Ok(state)
    }

    /// Returns the xxh3-128 digest of the key length (u64 big-endian), the
    /// key and the canonical encoding, so equal states of a key hash equally.
    pub fn digest(&self, key: &[u8]) -> u128 {
        digest_of_encoding(key, &self.encode())
    }
}

/// Returns [`State::digest`] of a state from its canonical encoding, so a
/// caller that holds the encoded bytes need not decode and encode again.
pub fn digest_of_encoding(key: &[u8], encoded: &[u8]) -> u128 {
    let mut input = Vec::with_capacity(8 + key.len() + encoded.len());
    input.extend_from_slice(&(key.len() as u64).to_be_bytes());
    input.extend_from_slice(key);
    input.extend_from_slice(encoded);
    digest128(&input)
}

/// Picks the value kept when two states contain one dot with different values:
/// the larger digest, then the larger encoding if the digests tie, so the
/// choice does not depend on the merge order.
fn pick_conflict_winner<'a>(left: &'a Value, right: &'a Value) -> &'a Value {
    let left_bytes = value_bytes_for_digest(left);
    let right_bytes = value_bytes_for_digest(right);
    let left_key = (digest128(&left_bytes), &left_bytes);
    let right_key = (digest128(&right_bytes), &right_bytes);
    if left_key >= right_key {
        left
    } else {
        right
    }
}

fn value_bytes_for_digest(value: &Value) -> Vec<u8> {
    match value {
        Value::Tombstone => vec![KIND_TOMBSTONE],
        Value::Data(bytes) => {
            let mut out = Vec::with_capacity(1 + bytes.len());
            out.push(KIND_DATA);
            out.extend_from_slice(bytes);
            out
        }
    }
}

/// A cursor over untrusted bytes. Every read checks the remaining length.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < len {
            return Err(DecodeError::Invalid(format!(
                "truncated: {what} needs {len} bytes, only {} left",
                self.rest.len()
            )));
        }
        let (head, tail) = self.rest.split_at(len);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        let bytes = self.take(4, what)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        let bytes = self.take(8, what)?;
        let mut array = [0u8; 8];
        array.copy_from_slice(bytes);
        Ok(u64::from_be_bytes(array))
    }

    fn actor(&mut self) -> Result<Actor, DecodeError> {
        let node = self.u64("actor node")?;
        let epoch = self.u64("actor epoch")?;
        Ok(Actor { node, epoch })
    }

    fn version_vector(&mut self) -> Result<VersionVector, DecodeError> {
        let count = self.u32("context entry count")?;
        let mut entries = BTreeMap::new();
        let mut previous: Option<Actor> = None;
        for _ in 0..count {
            let actor = self.actor()?;
            let counter = self.u64("context counter")?;
            if previous.is_some_and(|previous| previous >= actor) {
                return Err(DecodeError::Invalid(format!(
                    "context actor {actor} is not in ascending order or repeats"
                )));
            }
            if counter == 0 {
                return Err(DecodeError::Invalid(format!(
                    "context actor {actor} has counter 0"
                )));
            }
            entries.insert(actor, counter);
            previous = Some(actor);
        }
        Ok(VersionVector { entries })
    }

    fn state_body(&mut self) -> Result<State, DecodeError> {
        let context = self.version_vector()?;
        let count = self.u32("value count")?;
        let mut values = BTreeMap::new();
        let mut previous: Option<Dot> = None;
        for _ in 0..count {
            let actor = self.actor()?;
            let counter = self.u64("dot counter")?;
            let dot = Dot { actor, counter };
            if previous.is_some_and(|previous| previous >= dot) {
                return Err(DecodeError::Invalid(format!(
                    "dot {dot} is not in ascending order or repeats"
                )));
            }
            if counter == 0 {
                return Err(DecodeError::Invalid(format!("dot {dot} has counter 0")));
            }
            if !context.covers(&dot) {
                return Err(DecodeError::Invalid(format!(
                    "dot {dot} lies outside the state's context"
                )));
            }
            let value = match self.u8("value kind")? {
                KIND_TOMBSTONE => Value::Tombstone,
                KIND_DATA => {
                    let len = self.u32("value length")? as usize;
                    Value::Data(self.take(len, "value bytes")?.to_vec())
                }
                other => {
                    return Err(DecodeError::Invalid(format!(
                        "dot {dot} has unknown value kind {other}"
                    )))
                }
            };
            values.insert(dot, value);
            previous = Some(dot);
        }
        Ok(State { context, values })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NODE_A: NodeId = 0xa;
    const NODE_B: NodeId = 0xb;

    fn actor(node: NodeId, epoch: u64) -> Actor {
        Actor { node, epoch }
    }

    fn dot(node: NodeId, epoch: u64, counter: u64) -> Dot {
        Dot {
            actor: actor(node, epoch),
            counter,
        }
    }

    fn data(text: &str) -> Value {
        Value::Data(text.as_bytes().to_vec())
    }

    /// Builds a state from context entries and dotted values.
    fn state(context: &[(Actor, u64)], values: &[(Dot, Value)]) -> State {
        State {
            context: VersionVector {
                entries: context.iter().copied().collect(),
            },
            values: values.iter().cloned().collect(),
        }
    }

    #[test]
    fn version_vector_get_covers_join() {
        let mut left = VersionVector::new();
        left.raise(actor(NODE_A, 1), 3);
        let mut right = VersionVector::new();
        right.raise(actor(NODE_A, 1), 2);
        right.raise(actor(NODE_B, 1), 5);

        left.join(&right);

        assert_eq!(left.get(&actor(NODE_A, 1)), 3);
        assert_eq!(left.get(&actor(NODE_B, 1)), 5);
        assert_eq!(left.get(&actor(NODE_B, 2)), 0);
        assert!(left.covers(&dot(NODE_A, 1, 3)));
        assert!(!left.covers(&dot(NODE_A, 1, 4)));
        assert!(!left.covers(&dot(NODE_A, 2, 1)));
        assert!(!left.is_empty());
        assert!(VersionVector::new().is_empty());
    }

    #[test]
    fn version_vector_round_trips_and_advances() {
        let mut vector = VersionVector::new();
        vector.raise(actor(NODE_B, 7), 2);
        vector.raise(actor(NODE_A, 1), 9);
        let mut bytes = Vec::new();
        vector.encode_into(&mut bytes);
        bytes.extend_from_slice(b"tail");

        let mut input = bytes.as_slice();
        let decoded = VersionVector::decode_from(&mut input).expect("valid vector");

        assert_eq!(decoded, vector);
        assert_eq!(input, b"tail");
    }

    #[test]
    fn merge_keeps_value_held_by_both() {
        let shared = state(&[(actor(NODE_A, 1), 1)], &[(dot(NODE_A, 1, 1), data("v1"))]);

        let merged = shared.merge(&shared);

        assert_eq!(merged.state, shared);
        assert_eq!(merged.dot_conflicts, 0);
    }

    #[test]
    fn merge_drops_value_covered_by_other_context() {
        let old = state(&[(actor(NODE_A, 1), 1)], &[(dot(NODE_A, 1, 1), data("v1"))]);
        let newer = state(&[(actor(NODE_A, 1), 2)], &[(dot(NODE_A, 1, 2), data("v2"))]);

        let merged = old.merge(&newer);

        assert_eq!(merged.state, newer);
        assert_eq!(newer.merge(&old).state, newer);
    }

    #[test]
    fn merge_keeps_concurrent_values_as_siblings() {
        let left = state(&[(actor(NODE_A, 1), 1)], &[(dot(NODE_A, 1, 1), data("a"))]);
        let right = state(&[(actor(NODE_B, 1), 1)], &[(dot(NODE_B, 1, 1), data("b"))]);

        let merged = left.merge(&right).state;

        assert_eq!(merged.live_values(), vec![&b"a"[..], &b"b"[..]]);
        assert_eq!(merged.context.get(&actor(NODE_A, 1)), 1);
        assert_eq!(merged.context.get(&actor(NODE_B, 1)), 1);
    }

    #[test]
    fn merge_dot_conflict_keeps_larger_digest_in_both_orders() {
        let left = state(
            &[(actor(NODE_A, 1), 1)],
            &[(dot(NODE_A, 1, 1), data("left"))],
        );
        let right = state(
            &[(actor(NODE_A, 1), 1)],
            &[(dot(NODE_A, 1, 1), data("right"))],
        );

        let forward = left.merge(&right);
        let backward = right.merge(&left);

        assert_eq!(forward.dot_conflicts, 1);
        assert_eq!(backward.dot_conflicts, 1);
        assert_eq!(forward.state, backward.state);
        let winner = if digest128(b"\x01left") >= digest128(b"\x01right") {
            data("left")
        } else {
            data("right")
        };
        assert_eq!(forward.state.values.get(&dot(NODE_A, 1, 1)), Some(&winner));
    }

    #[test]
    fn state_predicates_and_sizes() {
        let empty = State::new();
        assert!(empty.is_deleted_or_empty());
        assert!(!empty.is_tombstone_only());
        assert_eq!(empty.sibling_count(), 0);

        let deleted = state(
            &[(actor(NODE_A, 1), 1)],
            &[(dot(NODE_A, 1, 1), Value::Tombstone)],
        );
        assert!(deleted.is_deleted_or_empty());
        assert!(deleted.is_tombstone_only());
        assert_eq!(deleted.sibling_count(), 1);
        assert!(deleted.live_values().is_empty());

        let mixed = state(
            &[(actor(NODE_A, 1), 3)],
            &[
                (dot(NODE_A, 1, 1), data("abc")),
                (dot(NODE_A, 1, 2), Value::Tombstone),
                (dot(NODE_A, 1, 3), data("de")),
            ],
        );
        assert!(!mixed.is_deleted_or_empty());
        assert!(!mixed.is_tombstone_only());
        assert_eq!(mixed.sibling_count(), 3);
        assert_eq!(mixed.value_bytes(), 5);
        assert_eq!(mixed.live_values(), vec![&b"abc"[..], &b"de"[..]]);
    }

    #[test]
    fn display_shows_hex_node_epoch_counter() {
        let named = dot(0x1a2b3c4d5e6f7081, 3, 7);
        assert_eq!(named.actor.to_string(), "1a2b3c4d5e6f7081@3");
        assert_eq!(named.to_string(), "1a2b3c4d5e6f7081@3.7");
        assert_eq!(actor(1, 0).to_string(), "0000000000000001@0");
    }

    #[test]
    fn encode_has_exact_layout() {
        let one = state(&[(actor(1, 2), 1)], &[(dot(1, 2, 1), data("x"))]);
        let mut expected = vec![STATE_FORMAT_VERSION];
        expected.extend_from_slice(&1u32.to_be_bytes());
        expected.extend_from_slice(&1u64.to_be_bytes());
        expected.extend_from_slice(&2u64.to_be_bytes());
        expected.extend_from_slice(&1u64.to_be_bytes());
        expected.extend_from_slice(&1u32.to_be_bytes());
        expected.extend_from_slice(&1u64.to_be_bytes());
        expected.extend_from_slice(&2u64.to_be_bytes());
        expected.extend_from_slice(&1u64.to_be_bytes());
        expected.push(KIND_DATA);
        expected.extend_from_slice(&1u32.to_be_bytes());
        expected.push(b'x');

        assert_eq!(one.encode(), expected);
    }

    #[test]
    fn encode_leaves_out_zero_counters() {
        let mut with_zero = state(&[(actor(NODE_A, 1), 1)], &[]);
        with_zero.context.entries.insert(actor(NODE_B, 1), 0);
        let without_zero = state(&[(actor(NODE_A, 1), 1)], &[]);

        assert_eq!(with_zero.encode(), without_zero.encode());
        assert_eq!(State::decode(&with_zero.encode()), Ok(without_zero));
    }

    #[test]
    fn decode_round_trips_tombstones_and_empty_values() {
        let original = state(
            &[(actor(NODE_A, 1), 2), (actor(NODE_B, 4), 1)],
            &[
                (dot(NODE_A, 1, 1), Value::Tombstone),
                (dot(NODE_A, 1, 2), data("")),
                (dot(NODE_B, 4, 1), data("value")),
            ],
        );

        assert_eq!(State::decode(&original.encode()), Ok(original.clone()));
        assert_eq!(State::decode(&State::new().encode()), Ok(State::new()));
    }

    #[test]
    fn decode_rejects_every_truncation() {
        let original = state(
            &[(actor(NODE_A, 1), 2)],
            &[
                (dot(NODE_A, 1, 1), Value::Tombstone),
                (dot(NODE_A, 1, 2), data("abc")),
            ],
        );
        let bytes = original.encode();
        for len in 0..bytes.len() {
            assert!(
                State::decode(&bytes[..len]).is_err(),
                "prefix of {len} bytes decoded"
            );
        }
    }

    #[test]
    fn decode_rejects_unknown_version_and_trailing_bytes() {
        let mut bytes = State::new().encode();
        bytes[0] = 9;
        assert_eq!(State::decode(&bytes), Err(DecodeError::UnknownVersion(9)));

        let mut bytes = State::new().encode();
        bytes.push(0);
        assert!(matches!(
            State::decode(&bytes),
            Err(DecodeError::Invalid(_))
        ));
    }

    /// Writes a raw state encoding with no checks, for the rejection tests.
    fn raw_state(context: &[(u64, u64, u64)], values: &[(u64, u64, u64, Option<&str>)]) -> Vec<u8> {
        let mut out = vec![STATE_FORMAT_VERSION];
        out.extend_from_slice(&(context.len() as u32).to_be_bytes());
        for &(node, epoch, counter) in context {
            out.extend_from_slice(&node.to_be_bytes());
            out.extend_from_slice(&epoch.to_be_bytes());
            out.extend_from_slice(&counter.to_be_bytes());
        }
        out.extend_from_slice(&(values.len() as u32).to_be_bytes());
        for &(node, epoch, counter, value) in values {
            out.extend_from_slice(&node.to_be_bytes());
            out.extend_from_slice(&epoch.to_be_bytes());
            out.extend_from_slice(&counter.to_be_bytes());
            match value {
                None => out.push(KIND_TOMBSTONE),
                Some(text) => {
                    out.push(KIND_DATA);
                    out.extend_from_slice(&(text.len() as u32).to_be_bytes());
                    out.extend_from_slice(text.as_bytes());
                }
            }
        }
        out
    }

    #[test]
    fn decode_rejects_malformed_entries() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("unsorted actors", raw_state(&[(2, 1, 1), (1, 1, 1)], &[])),
            ("duplicate actors", raw_state(&[(1, 1, 1), (1, 1, 2)], &[])),
            ("zero counter", raw_state(&[(1, 1, 0)], &[])),
            (
                "unsorted dots",
                raw_state(&[(1, 1, 2)], &[(1, 1, 2, None), (1, 1, 1, None)]),
            ),
            (
                "duplicate dots",
                raw_state(&[(1, 1, 2)], &[(1, 1, 1, None), (1, 1, 1, None)]),
            ),
            (
                "dot beyond context",
                raw_state(&[(1, 1, 1)], &[(1, 1, 2, Some("x"))]),
            ),
            (
                "dot of unknown actor",
                raw_state(&[(1, 1, 1)], &[(2, 1, 1, Some("x"))]),
            ),
            (
                "zero dot counter",
                raw_state(&[(1, 1, 1)], &[(1, 1, 0, None)]),
            ),
        ];
        for (name, bytes) in cases {
            assert!(
                matches!(State::decode(&bytes), Err(DecodeError::Invalid(_))),
                "{name} was accepted"
            );
        }

        let mut unknown_kind = raw_state(&[(1, 1, 1)], &[(1, 1, 1, None)]);
        let last = unknown_kind.len() - 1;
        unknown_kind[last] = 7;
        assert!(matches!(
            State::decode(&unknown_kind),
            Err(DecodeError::Invalid(_))
        ));
    }

    #[test]
    fn digest_depends_on_key_and_state() {
        let one = state(&[(actor(NODE_A, 1), 1)], &[(dot(NODE_A, 1, 1), data("v"))]);
        let other = state(&[(actor(NODE_A, 1), 1)], &[(dot(NODE_A, 1, 1), data("w"))]);

        assert_eq!(one.digest(b"key"), one.clone().digest(b"key"));
        assert_ne!(one.digest(b"key"), one.digest(b"other"));
        assert_ne!(one.digest(b"key"), other.digest(b"key"));
        // The key length is hashed, so moving bytes between key and state
        // cannot produce the same input.
        assert_ne!(State::new().digest(b""), State::new().digest(b"\x01"));
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Tombstone),
            proptest::collection::vec(any::<u8>(), 0..8).prop_map(Value::Data),
        ]
    }

    /// Well-formed states: every dot inside the context.
    fn arb_state() -> impl Strategy<Value = State> {
        let entry = (0u64..3, 0u64..3, 1u64..4);
        proptest::collection::vec((entry, proptest::collection::vec(arb_value(), 0..3)), 0..4)
            .prop_map(|entries| {
                let mut state = State::new();
                for ((node, epoch, counter), values) in entries {
                    let actor = actor(node, epoch);
                    state.context.raise(actor, counter);
                    for (offset, value) in values.into_iter().enumerate() {
                        let counter = counter.saturating_sub(offset as u64).max(1);
                        state.values.insert(Dot { actor, counter }, value);
                    }
                }
                state
            })
    }

    proptest! {
        #[test]
        fn decode_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = State::decode(&bytes);
            let mut input = bytes.as_slice();
            let _ = VersionVector::decode_from(&mut input);
        }

        #[test]
        fn decode_mutated_encoding_never_panics(
            original in arb_state(),
            position in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut bytes = original.encode();
            let index = position.index(bytes.len());
            bytes[index] = byte;
            if let Ok(decoded) = State::decode(&bytes) {
                // Whatever decodes is canonical: it encodes to the same bytes.
                prop_assert_eq!(decoded.encode(), bytes);
            }
        }

        #[test]
        fn encode_round_trips(original in arb_state()) {
            let bytes = original.encode();
            prop_assert_eq!(State::decode(&bytes), Ok(original));
        }

        #[test]
        fn merge_is_a_join_on_well_formed_states(
            a in arb_state(),
            b in arb_state(),
            c in arb_state(),
        ) {
            prop_assert_eq!(a.merge(&a).state, a.clone());
            prop_assert_eq!(a.merge(&b).state, b.merge(&a).state);
            let left = a.merge(&b).state.merge(&c).state;
            let right = a.merge(&b.merge(&c).state).state;
            prop_assert_eq!(left, right);
        }
    }
}
