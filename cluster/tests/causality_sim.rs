//! Property tests: three replicas A, B, C of one key (N=3, W=2, R=2) driven
//! by random histories of blind and contextual puts through random
//! coordinators, reads with read repair, replica messages that are dropped,
//! delayed and delivered out of order, anti-entropy, wiped and corrupted
//! records, and unclean restarts that revert a node to its last synced copy.
//!
//! Beside the real states the simulation keeps an oracle: the causal history
//! of each copy, as sets of value ids (every value id the copy has seen, and
//! the ids still live). Causal histories are exact by construction, and a
//! dotted version vector set must describe the same sets as long as no dot is
//! issued twice. After every step the test checks that
//! - no dot was ever issued for two different values;
//! - each copy's live values and the dots its context covers are exactly the
//!   oracle's live and seen ids;
//! - a put removes from the coordinator's copy only values its client had
//!   seen, and removes every value the client was returned;
//! - no merge meets two values under one dot.
//!
//! After healing (all messages delivered, all copies merged) it checks that
//! every put acknowledged by W replicas survives, unless a later put's client
//! was returned it or every copy that knew it was lost to faults. It also
//! checks that merge is commutative, associative and idempotent on the
//! reachable states.

mod common;

use common::{put_with_rules, MemoryEpochs, Rules};
use kv_cluster::causality::{decode_record, encode_record, store_incoming, LocalCopy};
use kv_cluster::version::{Dot, State, Value, VersionVector};
use kv_cluster::NodeId;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestError, TestRng, TestRunner};
use std::collections::{BTreeMap, BTreeSet};

const REPLICAS: usize = 3;
const NODE_IDS: [NodeId; REPLICAS] = [0xa, 0xb, 0xc];
const WRITE_QUORUM: usize = 2;
const READ_QUORUM: usize = 2;
/// Cap on the reachable states kept for the merge-law checks.
const MAX_REACHABLE: usize = 48;

type ValueId = u32;

/// One step of a history.
#[derive(Clone, Debug)]
enum Op {
    /// A put through `coordinator`, blind or with a context from an earlier
    /// read or put reply.
    Put {
        coordinator: usize,
        context: Option<Index>,
        tombstone: bool,
    },
    /// A read at R=2 that starts at `coordinator`, with read repair.
    Read { coordinator: usize, reverse: bool },
    /// Delivers one pending replica message, in any order.
    Deliver { message: Index },
    /// Loses one pending replica message.
    Drop { message: Index },
    /// Exchanges states between two replicas in both directions.
    AntiEntropy { first: usize, offset: usize },
    /// Deletes a node's record of the key.
    Wipe { node: usize },
    /// Makes a node's record unreadable.
    Corrupt { node: usize },
    /// Flushes a node's copy to disk.
    Sync { node: usize },
    /// Unclean stop and start. The copy reverts to the last synced one and
    /// the epoch counter rises to the next reserved block.
    Restart { node: usize, block_gap: u64 },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let node = 0..REPLICAS;
    let put = (
        node.clone(),
        proptest::option::weighted(0.5, any::<Index>()),
        proptest::bool::weighted(0.1),
    )
        .prop_map(|(coordinator, context, tombstone)| Op::Put {
            coordinator,
            context,
            tombstone,
        });
    let read = (node.clone(), any::<bool>()).prop_map(|(coordinator, reverse)| Op::Read {
        coordinator,
        reverse,
    });
    prop_oneof![
        4 => put,
        2 => read,
        5 => any::<Index>().prop_map(|message| Op::Deliver { message }),
        1 => any::<Index>().prop_map(|message| Op::Drop { message }),
        1 => (node.clone(), 1..REPLICAS).prop_map(|(first, offset)| Op::AntiEntropy { first, offset }),
        1 => node.clone().prop_map(|node| Op::Wipe { node }),
        1 => node.clone().prop_map(|node| Op::Corrupt { node }),
        2 => node.clone().prop_map(|node| Op::Sync { node }),
        1 => (node, 0u64..3).prop_map(|(node, block_gap)| Op::Restart { node, block_gap }),
    ]
}

fn history_strategy() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op_strategy(), 1..60)
}

/// The oracle's causal history of a copy: every value id seen, and the ids
/// still live (a subset of `seen`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct History {
    seen: BTreeSet<ValueId>,
    live: BTreeSet<ValueId>,
}

impl History {
    /// Joins two causal histories: a live id stays live unless the other side
    /// has seen it without keeping it.
    fn merge(&self, other: &History) -> History {
        let live = self
            .live
            .iter()
            .chain(other.live.iter())
            .filter(|id| {
                let kept_by_self = !self.seen.contains(id) || self.live.contains(id);
                let kept_by_other = !other.seen.contains(id) || other.live.contains(id);
                kept_by_self && kept_by_other
            })
            .copied()
            .collect();
        let seen = self.seen.union(&other.seen).copied().collect();
        History { seen, live }
    }
}

/// The oracle's view of a local copy, mirroring [`LocalCopy`].
#[derive(Clone, Debug, PartialEq, Eq)]
enum OracleCopy {
    Missing,
    Unknown,
    Present(History),
}

struct Replica {
    copy: LocalCopy,
    oracle: OracleCopy,
    synced: LocalCopy,
    synced_oracle: OracleCopy,
    epochs: MemoryEpochs,
    restart_mark: u64,
}

/// A replica write or read repair in flight.
struct Message {
    to: usize,
    state: State,
    history: History,
    /// The put whose acknowledgement this delivery counts toward.
    put: Option<ValueId>,
}

/// A context a client holds: from a read or from a put's reply.
#[derive(Clone)]
struct ClientContext {
    context: VersionVector,
    history: BTreeSet<ValueId>,
    /// Value ids the client was returned with this context (siblings and
    /// tombstones), which it must treat as seen.
    returned: BTreeSet<ValueId>,
}

struct Sim {
    rules: Rules,
    replicas: Vec<Replica>,
    messages: Vec<Message>,
    contexts: Vec<ClientContext>,
    /// Every dot issued and the value id it names.
    dots: BTreeMap<Dot, ValueId>,
    values: Vec<Value>,
    /// Replicas that stored each put's own state (the coordinator counts).
    acks: Vec<BTreeSet<usize>>,
    /// Ids returned to a client that later put with that context.
    seen_by_put_clients: BTreeSet<ValueId>,
    reachable: Vec<State>,
}

impl Sim {
    fn new(rules: Rules) -> Self {
        let replicas = (0..REPLICAS)
            .map(|_| Replica {
                copy: LocalCopy::Missing,
                oracle: OracleCopy::Missing,
                synced: LocalCopy::Missing,
                synced_oracle: OracleCopy::Missing,
                epochs: MemoryEpochs::default(),
                restart_mark: 0,
            })
            .collect();
        Sim {
            rules,
            replicas,
            messages: Vec::new(),
            contexts: Vec::new(),
            dots: BTreeMap::new(),
            values: Vec::new(),
            acks: Vec::new(),
            seen_by_put_clients: BTreeSet::new(),
            reachable: Vec::new(),
        }
    }

    fn apply(&mut self, op: &Op) -> Result<(), String> {
        match *op {
            Op::Put {
                coordinator,
                context,
                tombstone,
            } => self.put(coordinator, context, tombstone),
            Op::Read {
                coordinator,
                reverse,
            } => self.read(coordinator, reverse),
            Op::Deliver { message } => {
                if self.messages.is_empty() {
                    return Ok(());
                }
                let message = self.messages.remove(message.index(self.messages.len()));
                self.deliver(message)
            }
            Op::Drop { message } => {
                if !self.messages.is_empty() {
                    self.messages.remove(message.index(self.messages.len()));
                }
                Ok(())
            }
            Op::AntiEntropy { first, offset } => {
                let second = (first + offset) % REPLICAS;
                self.push_copy(first, second)?;
                self.push_copy(second, first)
            }
            Op::Wipe { node } => {
                let replica = &mut self.replicas[node];
                replica.copy = LocalCopy::Missing;
                replica.oracle = OracleCopy::Missing;
                replica.synced = LocalCopy::Missing;
                replica.synced_oracle = OracleCopy::Missing;
                Ok(())
            }
            Op::Corrupt { node } => {
                let replica = &mut self.replicas[node];
                replica.copy = LocalCopy::Unknown;
                replica.oracle = OracleCopy::Unknown;
                replica.synced = LocalCopy::Unknown;
                replica.synced_oracle = OracleCopy::Unknown;
                Ok(())
            }
            Op::Sync { node } => {
                let replica = &mut self.replicas[node];
                replica.synced = replica.copy.clone();
                replica.synced_oracle = replica.oracle.clone();
                Ok(())
            }
            Op::Restart { node, block_gap } => {
                let replica = &mut self.replicas[node];
                replica.copy = replica.synced.clone();
                replica.oracle = replica.synced_oracle.clone();
                replica.epochs.counter += block_gap;
                replica.restart_mark = replica.epochs.counter;
                Ok(())
            }
        }
    }

    fn put(
        &mut self,
        coordinator: usize,
        context: Option<Index>,
        tombstone: bool,
    ) -> Result<(), String> {
        let client = match context {
            Some(index) if !self.contexts.is_empty() => {
                self.contexts[index.index(self.contexts.len())].clone()
            }
            _ => ClientContext {
                context: VersionVector::new(),
                history: BTreeSet::new(),
                returned: BTreeSet::new(),
            },
        };
        let id = self.values.len() as ValueId;
        let value = if tombstone {
            Value::Tombstone
        } else {
            Value::Data(format!("v{id}").into_bytes())
        };
        self.values.push(value.clone());

        let replica = &mut self.replicas[coordinator];
        let outcome = put_with_rules(
            self.rules,
            NODE_IDS[coordinator],
            &replica.copy,
            &client.context,
            value,
            &mut replica.epochs,
            replica.restart_mark,
        )
        .map_err(|error| format!("put failed: {error}"))?;

        if let Some(&earlier) = self.dots.get(&outcome.dot) {
            return Err(format!(
                "dot {} issued for v{id} was already issued for v{earlier}",
                outcome.dot
            ));
        }
        self.dots.insert(outcome.dot, id);

        // The oracle's put: drop what the client has seen, add the new id.
        let before = match &replica.oracle {
            OracleCopy::Present(history) => history.clone(),
            OracleCopy::Missing | OracleCopy::Unknown => History::default(),
        };
        let mut after = History {
            seen: before.seen.union(&client.history).copied().collect(),
            live: before.live.difference(&client.history).copied().collect(),
        };
        after.seen.insert(id);
        after.live.insert(id);

        replica.copy = LocalCopy::Present {
            state: outcome.state.clone(),
            gen: outcome.gen,
        };
        replica.oracle = OracleCopy::Present(after.clone());

        let live_after = self.value_ids(&outcome.state)?;
        check_put_supersedes(id, &before.live, &live_after, &client)?;

        self.acks.push(BTreeSet::from([coordinator]));
        self.seen_by_put_clients
            .extend(client.returned.iter().copied());
        for to in (0..REPLICAS).filter(|&to| to != coordinator) {
            self.messages.push(Message {
                to,
                state: outcome.state.clone(),
                history: after.clone(),
                put: Some(id),
            });
        }
        self.contexts.push(ClientContext {
            context: outcome.state.context.clone(),
            history: after.seen,
            returned: live_after,
        });
        Ok(())
    }

    fn read(&mut self, coordinator: usize, reverse: bool) -> Result<(), String> {
        let order: Vec<usize> = if reverse {
            vec![
                coordinator,
                (coordinator + 2) % REPLICAS,
                (coordinator + 1) % REPLICAS,
            ]
        } else {
            vec![
                coordinator,
                (coordinator + 1) % REPLICAS,
                (coordinator + 2) % REPLICAS,
            ]
        };

        let mut contacted = Vec::new();
        let mut replies = Vec::new();
        for at in order {
            if replies.len() == READ_QUORUM {
                break;
            }
            contacted.push(at);
            match (&self.replicas[at].copy, &self.replicas[at].oracle) {
                (LocalCopy::Present { state, .. }, OracleCopy::Present(history)) => {
                    replies.push((state.clone(), history.clone()));
                }
                (LocalCopy::Missing, _) => replies.push((State::new(), History::default())),
                // An unknown copy is not a reply and does not count toward R.
                _ => {}
            }
        }
        if replies.len() < READ_QUORUM {
            return Ok(());
        }

        let mut merged = State::new();
        let mut merged_history = History::default();
        for (state, history) in &replies {
            merged = merge_checked(&merged, state)?;
            merged_history = merged_history.merge(history);
        }

        // Read repair of every contacted replica whose copy differs, unknown
        // copies included.
        for at in contacted {
            let up_to_date = matches!(
                &self.replicas[at].copy,
                LocalCopy::Present { state, .. } if *state == merged
            );
            if !up_to_date {
                self.messages.push(Message {
                    to: at,
                    state: merged.clone(),
                    history: merged_history.clone(),
                    put: None,
                });
            }
        }

        let returned = self.value_ids(&merged)?;
        self.contexts.push(ClientContext {
            context: merged.context,
            history: merged_history.seen,
            returned,
        });
        Ok(())
    }

    fn deliver(&mut self, message: Message) -> Result<(), String> {
        let replica = &mut self.replicas[message.to];
        let stored = store_incoming(&replica.copy, &message.state, replica.epochs.counter);
        if stored.dot_conflicts > 0 {
            return Err(format!(
                "storing at replica {} met {} dot conflicts",
                message.to, stored.dot_conflicts
            ));
        }
        let history = match &replica.oracle {
            OracleCopy::Present(local) => local.merge(&message.history),
            OracleCopy::Missing | OracleCopy::Unknown => message.history.clone(),
        };
        replica.copy = LocalCopy::Present {
            state: stored.state,
            gen: stored.gen,
        };
        replica.oracle = OracleCopy::Present(history);
        if let Some(put) = message.put {
            self.acks[put as usize].insert(message.to);
        }
        Ok(())
    }

    /// Sends the readable copy of `from` to `to`, as one direction of an
    /// anti-entropy exchange.
    fn push_copy(&mut self, from: usize, to: usize) -> Result<(), String> {
        let source = &self.replicas[from];
        let (LocalCopy::Present { state, .. }, OracleCopy::Present(history)) =
            (&source.copy, &source.oracle)
        else {
            return Ok(());
        };
        let message = Message {
            to,
            state: state.clone(),
            history: history.clone(),
            put: None,
        };
        self.deliver(message)
    }

    /// Maps the dotted values of a state to value ids: a data value by its
    /// bytes, which name its id, and a tombstone by its dot. Checks that each
    /// dot still names the value it was issued for.
    fn value_ids(&self, state: &State) -> Result<BTreeSet<ValueId>, String> {
        let mut ids = BTreeSet::new();
        for (dot, value) in &state.values {
            let issued = self.dots.get(dot).copied();
            let id = match value {
                Value::Data(bytes) => parse_value_id(bytes)?,
                Value::Tombstone => issued.ok_or_else(|| format!("dot {dot} was never issued"))?,
            };
            if issued != Some(id) {
                return Err(format!(
                    "dot {dot} holds v{id}, but was issued for {issued:?}"
                ));
            }
            ids.insert(id);
        }
        Ok(ids)
    }

    /// Maps the dots a context covers to value ids. Every covered dot must
    /// have been issued.
    fn covered_ids(&self, context: &VersionVector) -> Result<BTreeSet<ValueId>, String> {
        let mut ids = BTreeSet::new();
        for (actor, &counter) in &context.entries {
            for counter in 1..=counter {
                let dot = Dot {
                    actor: *actor,
                    counter,
                };
                let Some(&id) = self.dots.get(&dot) else {
                    return Err(format!("context covers dot {dot}, never issued"));
                };
                ids.insert(id);
            }
        }
        Ok(ids)
    }

    /// Checks that a state describes exactly the oracle's history.
    fn check_matches(&self, state: &State, history: &History, name: &str) -> Result<(), String> {
        let live = self.value_ids(state)?;
        if live != history.live {
            return Err(format!(
                "{name}: values {live:?}, expected {:?}",
                history.live
            ));
        }
        let covered = self.covered_ids(&state.context)?;
        if covered != history.seen {
            return Err(format!(
                "{name}: context covers {covered:?}, expected {:?}",
                history.seen
            ));
        }
        Ok(())
    }

    fn check_replicas(&mut self) -> Result<(), String> {
        for (at, replica) in self.replicas.iter().enumerate() {
            match (&replica.copy, &replica.oracle) {
                (LocalCopy::Present { state, .. }, OracleCopy::Present(history)) => {
                    self.check_matches(state, history, &format!("replica {at}"))?;
                }
                (LocalCopy::Missing, OracleCopy::Missing)
                | (LocalCopy::Unknown, OracleCopy::Unknown) => {}
                (copy, oracle) => {
                    return Err(format!("replica {at}: copy {copy:?} but oracle {oracle:?}"));
                }
            }
        }

        for replica in &self.replicas {
            if let LocalCopy::Present { state, .. } = &replica.copy {
                if self.reachable.len() < MAX_REACHABLE && !self.reachable.contains(state) {
                    self.reachable.push(state.clone());
                }
            }
        }
        Ok(())
    }

    /// Delivers every pending message, merges all copies and checks the
    /// acknowledged puts and the merge laws.
    fn heal_and_check(mut self) -> Result<(), String> {
        for message in std::mem::take(&mut self.messages) {
            self.deliver(message)?;
        }
        self.check_replicas()?;

        let mut healed = State::new();
        let mut healed_history = History::default();
        for replica in &self.replicas {
            if let (LocalCopy::Present { state, .. }, OracleCopy::Present(history)) =
                (&replica.copy, &replica.oracle)
            {
                healed = merge_checked(&healed, state)?;
                healed_history = healed_history.merge(history);
            }
        }
        self.check_matches(&healed, &healed_history, "healed state")?;

        let survivors = self.value_ids(&healed)?;
        for (id, acks) in self.acks.iter().enumerate() {
            let id = id as ValueId;
            let acknowledged = acks.len() >= WRITE_QUORUM;
            // Every copy that knew the put was wiped, corrupted or reverted.
            let lost_to_faults = !healed_history.seen.contains(&id);
            if !acknowledged || lost_to_faults {
                continue;
            }
            if !survivors.contains(&id) && !self.seen_by_put_clients.contains(&id) {
                return Err(format!(
                    "acknowledged v{id} was dropped, but no later put's client was returned it"
                ));
            }
        }

        check_merge_laws(&self.reachable)?;
        for state in &self.reachable {
            check_codecs(state)?;
        }
        Ok(())
    }
}

fn parse_value_id(bytes: &[u8]) -> Result<ValueId, String> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| text.strip_prefix('v'))
        .and_then(|digits| digits.parse().ok())
        .ok_or_else(|| format!("value {bytes:?} was never written"))
}

/// Merges two states and fails on a dot conflict.
fn merge_checked(left: &State, right: &State) -> Result<State, String> {
    let merged = left.merge(right);
    if merged.dot_conflicts > 0 {
        return Err(format!("merge met {} dot conflicts", merged.dot_conflicts));
    }
    Ok(merged.state)
}

/// Checks that a put removed every value its client was returned, removed
/// no value its client had not seen, and added its own value.
fn check_put_supersedes(
    id: ValueId,
    live_before: &BTreeSet<ValueId>,
    live_after: &BTreeSet<ValueId>,
    client: &ClientContext,
) -> Result<(), String> {
    if !live_after.contains(&id) {
        return Err(format!("put of v{id} does not hold its own value"));
    }
    if let Some(kept) = client.returned.intersection(live_after).next() {
        return Err(format!(
            "put of v{id} kept v{kept}, which its client was returned"
        ));
    }
    for removed in live_before.difference(live_after) {
        if !client.history.contains(removed) {
            return Err(format!(
                "put of v{id} dropped v{removed}, which its client had never seen"
            ));
        }
    }
    for added in live_after.difference(live_before) {
        if *added != id {
            return Err(format!("put of v{id} added unrelated v{added}"));
        }
    }
    if client.context.is_empty() && live_after.len() != live_before.len() + 1 {
        return Err(format!("blind put of v{id} superseded a value"));
    }
    Ok(())
}

fn check_merge_laws(states: &[State]) -> Result<(), String> {
    for (i, a) in states.iter().enumerate() {
        if merge_checked(a, a)? != *a {
            return Err(format!("merge is not idempotent on reachable state {i}"));
        }
        for (j, b) in states.iter().enumerate().skip(i + 1) {
            let ab = merge_checked(a, b)?;
            let ba = merge_checked(b, a)?;
            if ab.encode() != ba.encode() {
                return Err(format!("merge is not commutative on states {i} and {j}"));
            }
            // Associativity over a third state chosen by position, so the
            // check stays linear in the number of pairs.
            let k = (i + j) % states.len();
            let c = &states[k];
            let left = merge_checked(&ab, c)?;
            let right = merge_checked(a, &merge_checked(b, c)?)?;
            if left != right {
                return Err(format!("merge is not associative on states {i}, {j}, {k}"));
            }
        }
    }
    Ok(())
}

fn check_codecs(state: &State) -> Result<(), String> {
    let decoded = State::decode(&state.encode()).map_err(|error| error.to_string())?;
    if decoded != *state {
        return Err("state does not survive an encode and decode".to_string());
    }
    let record = decode_record(&encode_record(state, 7)).map_err(|error| error.to_string())?;
    if record != (state.clone(), 7) {
        return Err("record does not survive an encode and decode".to_string());
    }
    Ok(())
}

/// Runs one history under `rules`. `Err` describes the first broken check.
fn run_history(rules: Rules, ops: &[Op]) -> Result<(), String> {
    let mut sim = Sim::new(rules);
    for (step, op) in ops.iter().enumerate() {
        sim.apply(op)
            .and_then(|()| sim.check_replicas())
            .map_err(|error| format!("step {step} ({op:?}): {error}"))?;
    }
    sim.heal_and_check()
        .map_err(|error| format!("after healing: {error}"))
}

proptest! {
    #![proptest_config(Config { cases: 1000, ..Config::default() })]

    #[test]
    fn random_histories_keep_every_acknowledged_write(ops in history_strategy()) {
        let result = run_history(Rules::All, &ops);
        prop_assert!(result.is_ok(), "{}", result.unwrap_err());
    }
}

/// Runs `cases` deterministic histories under `rules` and returns the first
/// failure message, if any.
fn first_failure(rules: Rules, cases: u32) -> Option<String> {
    let config = Config {
        cases,
        max_shrink_iters: 0,
        failure_persistence: None,
        ..Config::default()
    };
    let rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let result = runner.run(&history_strategy(), |ops| {
        run_history(rules, &ops).map_err(TestCaseError::fail)
    });
    match result {
        Ok(()) => None,
        Err(TestError::Fail(reason, _)) => Some(reason.to_string()),
        Err(TestError::Abort(reason)) => Some(format!("aborted: {reason}")),
    }
}

#[test]
fn simulation_catches_missing_gen_rule() {
    let failure = first_failure(Rules::WithoutGen, 3000);
    assert!(failure.is_some(), "no history broke without the gen rule");
}

#[test]
fn simulation_catches_missing_restart_mark() {
    let failure = first_failure(Rules::WithoutRestartMark, 3000);
    assert!(
        failure.is_some(),
        "no history broke without the restart mark"
    );
}
