//! How a coordinator picks the dot of a put, and how a replica stores an
//! incoming state.
//!
//! Counters are per key, so a node whose copy of a key lost information
//! could issue a dot that already names a different value on another
//! replica. One of the two acknowledged values would then silently
//! disappear in the next merge. A copy can lose information without the
//! node noticing: it is wiped or corrupted and then refilled from an older
//! replica, or an unclean stop loses its last writes. Three rules keep every
//! dot unique:
//!
//! - Actors are `(node id, epoch)`. Epochs come from a node-wide counter that
//!   never goes back ([`EpochSource`]).
//! - Every local record of a key carries `gen`: the node's epoch counter when
//!   the copy was created without being merged into a readable local copy (a
//!   put onto a missing or unknown record, or an incoming state stored into
//!   one). `gen` is local and never sent to other nodes.
//! - After a start that follows an unclean stop, the node sets
//!   `restart_mark` to its epoch counter.
//!
//! A coordinator continues its actor `(node, e)` for a key (with `e` the
//! largest epoch of the node in the key's context) only if the local copy is
//! present, `e > gen`, `e > restart_mark`, and the client's context has no
//! counter of any actor of the node beyond what the local context covers.
//! Otherwise it takes a fresh epoch. Any epoch greater than `gen` and the
//! restart mark was handed out after this copy was created and after the last
//! restart, so every earlier dot of that actor was issued from this very copy
//! and its context covers them all.
//!
//! The functions here are pure: the caller holds the key's lock, reads the
//! local record, calls one of them and writes the result back.

use crate::version::{Actor, DecodeError, Dot, State, Value, VersionVector};
use crate::NodeId;

/// The local copy of a key as the node's storage returns it.
#[derive(Clone, Debug)]
pub enum LocalCopy {
    /// No record for the key.
    Missing,
    /// A record exists but cannot be read (failed checksum or decoding). It
    /// is never served and never counted as a reply toward R.
    Unknown,
    /// A readable record and its local `gen`.
    Present { state: State, gen: u64 },
}

/// The node cannot hand out a fresh epoch, for example because its epoch
/// record is unreadable.
#[derive(Debug, thiserror::Error)]
#[error("the epoch counter is unavailable; this node cannot coordinate puts")]
pub struct EpochUnavailable;

/// The node-wide epoch counter.
pub trait EpochSource {
    /// Returns the node-wide epoch counter now: the largest epoch handed out
    /// so far, or the reserved floor after a restart. It never goes back.
    fn current(&self) -> u64;
    /// Hands out a new epoch, strictly greater than every earlier one.
    fn fresh_epoch(&mut self) -> Result<u64, EpochUnavailable>;
}

/// The result of [`coordinate_put`]: the record to store and the dot issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutOutcome {
    /// The new state of the key, to store locally and send to the replicas.
    pub state: State,
    /// The local `gen` to store with it.
    pub gen: u64,
    /// The dot of the new value.
    pub dot: Dot,
    /// Whether the put took a fresh epoch instead of continuing an actor.
    pub fresh_epoch: bool,
}

/// Applies a client put at coordinator `node`.
///
/// The new state keeps the values of the local state whose dots the client
/// context does not cover, adds the new dotted value, and has context
/// local ⊔ client ⊔ {actor: counter}.
///
/// The put continues the actor `(node, e)`, with `e` the largest epoch of
/// `node` in the local context, only if the local copy is present,
/// `e > gen` and `e > restart_mark`. The client context must also have no
/// counter of any actor of `node` beyond what the local context covers.
/// Otherwise the put takes a fresh epoch. A put onto a missing or unknown
/// copy creates it with `gen = epochs.current()`, read before the fresh
/// epoch is drawn so that the fresh epoch is greater than `gen`; a put onto a
/// present copy keeps its `gen`.
///
/// Fails only when a fresh epoch is needed and `epochs` cannot hand one out.
pub fn coordinate_put(
    node: NodeId,
    local: &LocalCopy,
    client_context: &VersionVector,
    value: Value,
    epochs: &mut dyn EpochSource,
    restart_mark: u64,
) -> Result<PutOutcome, EpochUnavailable> {
    let empty = State::new();
    let (base, gen) = match local {
        LocalCopy::Present { state, gen } => (state, *gen),
        LocalCopy::Missing | LocalCopy::Unknown => (&empty, epochs.current()),
    };

    let continued = match local {
        LocalCopy::Present { state, gen } => {
            continuable_actor(node, state, *gen, restart_mark, client_context)
        }
        LocalCopy::Missing | LocalCopy::Unknown => None,
    };
    let (actor, fresh_epoch) = match continued {
        Some(actor) => (actor, false),
        None => {
            let epoch = epochs.fresh_epoch()?;
            (Actor { node, epoch }, true)
        }
    };

    // A fresh actor is absent from both contexts, so its first dot is 1. The
    // maximum of both contexts is taken anyway so that the new dot is never
    // covered by the context it is written under.
    let counter = base.context.get(&actor).max(client_context.get(&actor)) + 1;
    let dot = Dot { actor, counter };

    let mut state = State::new();
    for (kept_dot, kept_value) in &base.values {
        if !client_context.covers(kept_dot) {
            state.values.insert(*kept_dot, kept_value.clone());
        }
    }
    state.values.insert(dot, value);
    state.context = base.context.clone();
    state.context.join(client_context);
    state.context.raise(actor, counter);

    Ok(PutOutcome {
        state,
        gen,
        dot,
        fresh_epoch,
    })
}

/// Returns the actor of `node` that a put may continue on this copy, or
/// `None` when the put must take a fresh epoch.
fn continuable_actor(
    node: NodeId,
    local: &State,
    gen: u64,
    restart_mark: u64,
    client_context: &VersionVector,
) -> Option<Actor> {
    let actor = local
        .context
        .entries
        .keys()
        .filter(|actor| actor.node == node)
        .max_by_key(|actor| actor.epoch)
        .copied()?;
    if actor.epoch <= gen || actor.epoch <= restart_mark {
        return None;
    }

    // A client context ahead of the local copy on one of this node's actors
    // means the copy lost writes that this node issued: continuing could
    // issue one of their dots again.
    let client_ahead = client_context
        .entries
        .iter()
        .any(|(client_actor, &counter)| {
            client_actor.node == node && counter > local.context.get(client_actor)
        });
    if client_ahead {
        return None;
    }
    Some(actor)
}

/// The result of [`store_incoming`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The state to store.
    pub state: State,
    /// The local `gen` to store with it.
    pub gen: u64,
    /// Whether the stored bytes differ from the record before. The caller
    /// may skip the write when this is false.
    pub changed: bool,
    /// Dots that the local and incoming states held with different values
    /// (see [`crate::version::Merged`]). The caller logs and counts them.
    pub dot_conflicts: u32,
}

/// Stores an incoming state (replica write, read repair, hint delivery,
/// anti-entropy). Into a present copy it merges and keeps `gen`. Into a
/// missing or unknown copy it stores the incoming state as it is, with
/// `gen = epoch_counter`, the node's epoch counter now, because the copy is
/// refilled from another replica and may lack dots that this node issued.
pub fn store_incoming(local: &LocalCopy, incoming: &State, epoch_counter: u64) -> Stored {
    match local {
        LocalCopy::Present { state, gen } => {
            let merged = state.merge(incoming);
            let changed = merged.state != *state;
            Stored {
                state: merged.state,
                gen: *gen,
                changed,
                dot_conflicts: merged.dot_conflicts,
            }
        }
        LocalCopy::Missing | LocalCopy::Unknown => Stored {
            state: incoming.clone(),
            gen: epoch_counter,
            changed: true,
            dot_conflicts: 0,
        },
    }
}

/// Format version byte that starts every local record encoding.
pub const RECORD_FORMAT_VERSION: u8 = 1;

/// Encodes the local record of a key: a format version byte, `gen` as a
/// big-endian u64, then the canonical state encoding. `gen` is local, so
/// only this record carries it, never the state sent to other nodes.
pub fn encode_record(state: &State, gen: u64) -> Vec<u8> {
    let encoded = state.encode();
    let mut out = Vec::with_capacity(1 + 8 + encoded.len());
    out.push(RECORD_FORMAT_VERSION);
    out.extend_from_slice(&gen.to_be_bytes());
    out.extend_from_slice(&encoded);
    out
}

/// Decodes a record written by [`encode_record`]. Rejects, without
/// panicking, an unknown record version, a truncated header and any state
/// that [`State::decode`] rejects.
pub fn decode_record(bytes: &[u8]) -> Result<(State, u64), DecodeError> {
    let Some((&version, rest)) = bytes.split_first() else {
        return Err(DecodeError::Invalid(
            "empty record: expected a format version byte".to_string(),
        ));
    };
    if version != RECORD_FORMAT_VERSION {
        return Err(DecodeError::UnknownVersion(version));
    }
    if rest.len() < 8 {
        return Err(DecodeError::Invalid(format!(
            "truncated record: gen needs 8 bytes, only {} left",
            rest.len()
        )));
    }
    let (gen_bytes, state_bytes) = rest.split_at(8);
    let mut gen_array = [0u8; 8];
    gen_array.copy_from_slice(gen_bytes);
    let state = State::decode(state_bytes)?;
    Ok((state, u64::from_be_bytes(gen_array)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: NodeId = 0xb;
    const OTHER: NodeId = 0xc;

    /// An epoch counter in memory; `fail` makes `fresh_epoch` fail.
    struct TestEpochs {
        counter: u64,
        fail: bool,
    }

    impl EpochSource for TestEpochs {
        fn current(&self) -> u64 {
            self.counter
        }

        fn fresh_epoch(&mut self) -> Result<u64, EpochUnavailable> {
            if self.fail {
                return Err(EpochUnavailable);
            }
            self.counter += 1;
            Ok(self.counter)
        }
    }

    fn epochs(counter: u64) -> TestEpochs {
        TestEpochs {
            counter,
            fail: false,
        }
    }

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

    fn vector(entries: &[(Actor, u64)]) -> VersionVector {
        VersionVector {
            entries: entries.iter().copied().collect(),
        }
    }

    fn state(context: &[(Actor, u64)], values: &[(Dot, Value)]) -> State {
        State {
            context: vector(context),
            values: values.iter().cloned().collect(),
        }
    }

    fn present(state: State, gen: u64) -> LocalCopy {
        LocalCopy::Present { state, gen }
    }

    #[test]
    fn put_onto_missing_takes_fresh_epoch_above_gen() {
        let mut source = epochs(4);

        let outcome = coordinate_put(
            NODE,
            &LocalCopy::Missing,
            &VersionVector::new(),
            data("v1"),
            &mut source,
            0,
        )
        .expect("epochs available");

        assert!(outcome.fresh_epoch);
        assert_eq!(outcome.gen, 4);
        assert_eq!(outcome.dot, dot(NODE, 5, 1));
        assert_eq!(
            outcome.state,
            state(&[(actor(NODE, 5), 1)], &[(dot(NODE, 5, 1), data("v1"))])
        );
    }

    #[test]
    fn put_onto_unknown_takes_fresh_epoch() {
        let mut source = epochs(2);
        let client = vector(&[(actor(OTHER, 1), 3)]);

        let outcome = coordinate_put(
            NODE,
            &LocalCopy::Unknown,
            &client,
            data("v"),
            &mut source,
            0,
        )
        .expect("epochs available");

        assert!(outcome.fresh_epoch);
        assert_eq!(outcome.gen, 2);
        assert_eq!(outcome.dot, dot(NODE, 3, 1));
        assert_eq!(outcome.state.context.get(&actor(OTHER, 1)), 3);
    }

    #[test]
    fn put_continues_actor_newer_than_gen_and_mark() {
        let local = state(&[(actor(NODE, 5), 2)], &[(dot(NODE, 5, 2), data("v2"))]);
        let mut source = epochs(9);

        let outcome = coordinate_put(
            NODE,
            &present(local, 4),
            &VersionVector::new(),
            data("v3"),
            &mut source,
            3,
        )
        .expect("no epoch needed");

        assert!(!outcome.fresh_epoch);
        assert_eq!(outcome.gen, 4);
        assert_eq!(outcome.dot, dot(NODE, 5, 3));
        assert_eq!(outcome.state.live_values(), vec![&b"v2"[..], &b"v3"[..]]);
        assert_eq!(source.counter, 9, "no epoch drawn");
    }

    #[test]
    fn put_continues_largest_epoch_of_node() {
        let local = state(&[(actor(NODE, 5), 2), (actor(NODE, 7), 1)], &[]);
        let mut source = epochs(9);

        let outcome = coordinate_put(
            NODE,
            &present(local, 1),
            &VersionVector::new(),
            data("v"),
            &mut source,
            0,
        )
        .expect("no epoch needed");

        assert_eq!(outcome.dot, dot(NODE, 7, 2));
    }

    #[test]
    fn put_fresh_epoch_when_gen_not_below() {
        // The copy was refilled while the counter was 5, so actor epoch 5
        // may have issued dots that the copy lacks.
        let local = state(&[(actor(NODE, 5), 1)], &[(dot(NODE, 5, 1), data("v1"))]);
        let mut source = epochs(6);

        let outcome = coordinate_put(
            NODE,
            &present(local, 5),
            &VersionVector::new(),
            data("v3"),
            &mut source,
            0,
        )
        .expect("epochs available");

        assert!(outcome.fresh_epoch);
        assert_eq!(outcome.dot, dot(NODE, 7, 1));
        assert_eq!(outcome.gen, 5);
        assert_eq!(outcome.state.live_values(), vec![&b"v1"[..], &b"v3"[..]]);
    }

    #[test]
    fn put_fresh_epoch_after_restart_mark() {
        let local = state(&[(actor(NODE, 5), 1)], &[(dot(NODE, 5, 1), data("v1"))]);
        let mut source = epochs(8);

        let outcome = coordinate_put(
            NODE,
            &present(local, 0),
            &VersionVector::new(),
            data("v3"),
            &mut source,
            5,
        )
        .expect("epochs available");

        assert!(outcome.fresh_epoch);
        assert_eq!(outcome.dot, dot(NODE, 9, 1));
    }

    #[test]
    fn put_fresh_epoch_when_client_ahead() {
        let local = state(&[(actor(NODE, 5), 1)], &[(dot(NODE, 5, 1), data("v1"))]);
        let client = vector(&[(actor(NODE, 5), 2)]);
        let mut source = epochs(6);

        let outcome = coordinate_put(
            NODE,
            &present(local, 0),
            &client,
            data("v3"),
            &mut source,
            0,
        )
        .expect("epochs available");

        assert!(outcome.fresh_epoch);
        assert_eq!(outcome.dot, dot(NODE, 7, 1));
        assert_eq!(outcome.state.live_values(), vec![&b"v3"[..]]);
        assert_eq!(outcome.state.context.get(&actor(NODE, 5)), 2);
    }

    #[test]
    fn put_fresh_epoch_client_ahead_older_actor() {
        // The client has seen more of an older actor of this node than the
        // local copy, so the copy lost writes even though its newest actor
        // could otherwise be continued.
        let local = state(&[(actor(NODE, 3), 1), (actor(NODE, 5), 1)], &[]);
        let client = vector(&[(actor(NODE, 3), 2)]);
        let mut source = epochs(6);

        let outcome = coordinate_put(NODE, &present(local, 0), &client, data("v"), &mut source, 0)
            .expect("epochs available");

        assert!(outcome.fresh_epoch);
    }

    #[test]
    fn put_ignores_other_nodes_ahead_in_client_context() {
        let local = state(&[(actor(NODE, 5), 1)], &[]);
        let client = vector(&[(actor(OTHER, 1), 4)]);
        let mut source = epochs(6);

        let outcome = coordinate_put(NODE, &present(local, 0), &client, data("v"), &mut source, 0)
            .expect("no epoch needed");

        assert!(!outcome.fresh_epoch);
        assert_eq!(outcome.dot, dot(NODE, 5, 2));
    }

    #[test]
    fn put_takes_fresh_epoch_without_actor_of_node() {
        let local = state(&[(actor(OTHER, 1), 1)], &[(dot(OTHER, 1, 1), data("x"))]);
        let mut source = epochs(2);

        let outcome = coordinate_put(
            NODE,
            &present(local, 0),
            &VersionVector::new(),
            data("v"),
            &mut source,
            0,
        )
        .expect("epochs available");

        assert!(outcome.fresh_epoch);
        assert_eq!(outcome.dot, dot(NODE, 3, 1));
    }

    #[test]
    fn put_supersedes_exactly_covered_values() {
        let local = state(
            &[(actor(NODE, 5), 2), (actor(OTHER, 1), 1)],
            &[
                (dot(NODE, 5, 1), data("seen")),
                (dot(NODE, 5, 2), data("unseen")),
                (dot(OTHER, 1, 1), data("also seen")),
            ],
        );
        let client = vector(&[(actor(NODE, 5), 1), (actor(OTHER, 1), 1)]);
        let mut source = epochs(6);

        let outcome = coordinate_put(
            NODE,
            &present(local, 0),
            &client,
            data("new"),
            &mut source,
            0,
        )
        .expect("no epoch needed");

        assert_eq!(outcome.dot, dot(NODE, 5, 3));
        assert_eq!(
            outcome.state.live_values(),
            vec![&b"unseen"[..], &b"new"[..]]
        );
        assert_eq!(
            outcome.state.context,
            vector(&[(actor(NODE, 5), 3), (actor(OTHER, 1), 1)])
        );
    }

    #[test]
    fn put_reports_unavailable_epochs() {
        let mut source = TestEpochs {
            counter: 1,
            fail: true,
        };

        let result = coordinate_put(
            NODE,
            &LocalCopy::Missing,
            &VersionVector::new(),
            data("v"),
            &mut source,
            0,
        );

        let error = result.expect_err("a fresh epoch was needed");
        assert_eq!(
            error.to_string(),
            "the epoch counter is unavailable; this node cannot coordinate puts"
        );
    }

    #[test]
    fn store_into_present_merges_and_keeps_gen() {
        let local = state(&[(actor(NODE, 5), 1)], &[(dot(NODE, 5, 1), data("v1"))]);
        let incoming = state(&[(actor(OTHER, 1), 1)], &[(dot(OTHER, 1, 1), data("v2"))]);

        let stored = store_incoming(&present(local.clone(), 3), &incoming, 9);

        assert_eq!(stored.gen, 3);
        assert!(stored.changed);
        assert_eq!(stored.dot_conflicts, 0);
        assert_eq!(stored.state, local.merge(&incoming).state);
    }

    #[test]
    fn store_of_known_state_is_unchanged() {
        let local = state(&[(actor(NODE, 5), 2)], &[(dot(NODE, 5, 2), data("v2"))]);
        let older = state(&[(actor(NODE, 5), 1)], &[(dot(NODE, 5, 1), data("v1"))]);

        let stored = store_incoming(&present(local.clone(), 3), &older, 9);

        assert!(!stored.changed);
        assert_eq!(stored.state, local);
    }

    #[test]
    fn store_counts_dot_conflicts() {
        let local = state(&[(actor(NODE, 5), 1)], &[(dot(NODE, 5, 1), data("a"))]);
        let incoming = state(&[(actor(NODE, 5), 1)], &[(dot(NODE, 5, 1), data("b"))]);

        let stored = store_incoming(&present(local, 0), &incoming, 9);

        assert_eq!(stored.dot_conflicts, 1);
    }

    #[test]
    fn store_into_missing_sets_gen() {
        let incoming = state(&[(actor(NODE, 5), 1)], &[(dot(NODE, 5, 1), data("v1"))]);

        for local in [LocalCopy::Missing, LocalCopy::Unknown] {
            let stored = store_incoming(&local, &incoming, 9);

            assert_eq!(stored.gen, 9, "{local:?}");
            assert!(stored.changed, "{local:?}");
            assert_eq!(stored.state, incoming, "{local:?}");
        }
    }

    #[test]
    fn record_round_trips_with_gen() {
        let original = state(
            &[(actor(NODE, 5), 1)],
            &[(dot(NODE, 5, 1), Value::Tombstone)],
        );

        let bytes = encode_record(&original, 42);

        assert_eq!(decode_record(&bytes), Ok((original.clone(), 42)));
        assert_eq!(&bytes[9..], original.encode().as_slice());
    }

    #[test]
    fn decode_record_rejects_bad_input() {
        let bytes = encode_record(&State::new(), 1);
        for len in 0..bytes.len() {
            assert!(
                decode_record(&bytes[..len]).is_err(),
                "prefix of {len} bytes"
            );
        }

        let mut wrong_version = bytes.clone();
        wrong_version[0] = 2;
        assert_eq!(
            decode_record(&wrong_version),
            Err(DecodeError::UnknownVersion(2))
        );

        let mut trailing = bytes;
        trailing.push(0);
        assert!(decode_record(&trailing).is_err());
    }
}
