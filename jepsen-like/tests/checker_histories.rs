//! Hand-made histories fed to the checkers: each anomaly must be reported
//! with its key and value, and legal histories must be reported valid.

use kv_cluster::version::{Actor, Dot, State, Value};
use kv_jepsen::checker::{
    check, AnomalyKind, Convergence, FinalRead, FinalState, KeyFinal, ReplicaFinal, Verdict,
    Verdicts,
};
use kv_jepsen::history::{Event, OpKind, Outcome};
use std::collections::BTreeMap;

/// Any non-empty text stands for a context: the checkers never decode it.
const CONTEXT: &str = "Y29udGV4dA==";

/// Builds a history event by event, with times in milliseconds.
#[derive(Default)]
struct History {
    events: Vec<Event>,
    next_op: u64,
    phase: String,
}

/// The invoke of an operation that still needs its completion.
struct Pending {
    process: String,
    op_id: u64,
    op: OpKind,
    key: String,
    value: Option<String>,
}

impl History {
    fn new() -> History {
        History {
            phase: "load".to_string(),
            ..History::default()
        }
    }

    fn push(&mut self, mut event: Event) {
        event.index = self.events.len() as u64;
        event.phase = Some(self.phase.clone());
        self.events.push(event);
    }

    fn invoke(
        &mut self,
        time_ms: f64,
        process: &str,
        op: OpKind,
        key: &str,
        value: Option<&str>,
        covers: Option<&[&str]>,
    ) -> Pending {
        self.next_op += 1;
        let context = match covers {
            Some(covers) if !covers.is_empty() => CONTEXT.to_string(),
            _ => String::new(),
        };
        let sends_context = matches!(op, OpKind::Write | OpKind::Delete | OpKind::Add);
        self.push(Event {
            time_ms,
            process: process.to_string(),
            op_id: self.next_op,
            outcome: Some(Outcome::Invoke),
            op: Some(op),
            key: Some(key.to_string()),
            value: value.map(str::to_string),
            context_sent: sends_context.then_some(context),
            covers: covers.map(|covers| covers.iter().map(|value| value.to_string()).collect()),
            ..Event::default()
        });
        Pending {
            process: process.to_string(),
            op_id: self.next_op,
            op,
            key: key.to_string(),
            value: value.map(str::to_string),
        }
    }

    fn complete(
        &mut self,
        pending: Pending,
        time_ms: f64,
        outcome: Outcome,
        read: Option<&[&str]>,
    ) {
        self.push(Event {
            time_ms,
            process: pending.process,
            op_id: pending.op_id,
            outcome: Some(outcome),
            op: Some(pending.op),
            key: Some(pending.key),
            value: pending.value,
            read: read.map(|values| values.iter().map(|value| value.to_string()).collect()),
            error: (outcome != Outcome::Ok).then(|| "deadline exceeded".to_string()),
            ..Event::default()
        });
    }

    /// Records a put of `value` whose context covers `covers` (blind when
    /// empty).
    fn write(
        &mut self,
        process: &str,
        key: &str,
        value: &str,
        covers: &[&str],
        (start, end): (f64, f64),
        outcome: Outcome,
    ) {
        let pending = self.invoke(
            start,
            process,
            OpKind::Write,
            key,
            Some(value),
            Some(covers),
        );
        self.complete(pending, end, outcome, None);
    }

    fn delete(
        &mut self,
        process: &str,
        key: &str,
        covers: &[&str],
        (start, end): (f64, f64),
        outcome: Outcome,
    ) {
        let pending = self.invoke(start, process, OpKind::Delete, key, None, Some(covers));
        self.complete(pending, end, outcome, None);
    }

    fn read(&mut self, process: &str, key: &str, values: &[&str], (start, end): (f64, f64)) {
        let pending = self.invoke(start, process, OpKind::Read, key, None, None);
        self.complete(pending, end, Outcome::Ok, Some(values));
    }

    /// Records an add of `element` that read the set values `read` and covers
    /// them.
    fn add(
        &mut self,
        process: &str,
        key: &str,
        element: &str,
        read: &[&str],
        (start, end): (f64, f64),
        outcome: Outcome,
    ) {
        let pending = self.invoke(start, process, OpKind::Add, key, Some(element), Some(read));
        self.complete(pending, end, outcome, Some(read));
    }

    fn nemesis(&mut self, time_ms: f64, fault: &str) {
        self.push(Event {
            time_ms,
            process: "nemesis".to_string(),
            fault: Some(fault.to_string()),
            outcome: Some(Outcome::Info),
            ..Event::default()
        });
    }
}

fn actor(node: u64) -> Actor {
    Actor { node, epoch: 1 }
}

/// Canonical state bytes with the given dotted values (`None` is a
/// tombstone); the context covers exactly those dots.
fn state_bytes(values: &[(u64, u64, Option<&str>)]) -> Vec<u8> {
    let mut state = State::new();
    for &(node, counter, value) in values {
        let dot = Dot {
            actor: actor(node),
            counter,
        };
        state.context.raise(dot.actor, counter);
        let value = value.map_or(Value::Tombstone, |text| {
            Value::Data(text.as_bytes().to_vec())
        });
        state.values.insert(dot, value);
    }
    state.encode()
}

fn replica(values: &[(u64, u64, Option<&str>)]) -> ReplicaFinal {
    ReplicaFinal::from_state(state_bytes(values)).expect("test states are well formed")
}

/// Builds a key whose three replicas all hold `values` (one dot each, from actor 1),
/// and whose final read returned the live ones.
fn converged_key(values: &[Option<&str>]) -> KeyFinal {
    let dotted: Vec<(u64, u64, Option<&str>)> = values
        .iter()
        .enumerate()
        .map(|(position, value)| (1, position as u64 + 1, *value))
        .collect();
    let read = values
        .iter()
        .flatten()
        .map(|value| value.to_string())
        .collect();
    let replicas = ["n1", "n2", "n3"]
        .iter()
        .map(|name| (name.to_string(), replica(&dotted)))
        .collect();
    KeyFinal {
        read: FinalRead::Values(read),
        replicas,
    }
}

fn converged(keys: Vec<(&str, KeyFinal)>) -> FinalState {
    FinalState {
        keys: keys
            .into_iter()
            .map(|(key, final_key)| (key.to_string(), final_key))
            .collect(),
        convergence: Convergence {
            converged: true,
            waited_ms: 120.0,
            deadline_ms: 30_000.0,
            converged_at_ms: None,
        },
    }
}

fn assert_valid(verdicts: &Verdicts) {
    let anomalies: Vec<&str> = verdicts
        .anomalies()
        .map(|anomaly| anomaly.explanation.as_str())
        .collect();
    assert!(anomalies.is_empty(), "unexpected anomalies: {anomalies:#?}");
    assert!(verdicts.valid);
    assert_eq!(
        verdicts.verdict,
        Verdict::Valid,
        "unchecked: {:?}",
        verdicts.unchecked
    );
}

// ---------------------------------------------------------------------------
// Anomalies that must be reported.

#[test]
fn lost_write_reported() {
    let mut history = History::new();
    history.write("client-1", "k1", "a1", &[], (0.0, 5.0), Outcome::Ok);
    history.write("client-2", "k1", "a2", &[], (1.0, 6.0), Outcome::Ok);
    let final_state = converged(vec![("k1", converged_key(&[Some("a2")]))]);

    let verdicts = check(&history.events, &final_state);

    assert!(!verdicts.valid);
    assert_eq!(verdicts.verdict, Verdict::Invalid);
    assert_eq!(verdicts.lost_writes.len(), 1, "{:#?}", verdicts.lost_writes);
    let lost = &verdicts.lost_writes[0];
    assert_eq!(lost.kind, AnomalyKind::LostWrite);
    assert_eq!(lost.key.as_deref(), Some("k1"));
    assert_eq!(lost.value.as_deref(), Some("a1"));
    assert_eq!(lost.events, vec![0, 1]);
    assert_eq!(verdicts.anomaly_count, 1);
}

#[test]
fn lost_set_element_reported() {
    let mut history = History::new();
    history.add("client-1", "set-0", "e1", &[], (0.0, 5.0), Outcome::Ok);
    history.add(
        "client-2",
        "set-0",
        "e2",
        &["e1"],
        (10.0, 15.0),
        Outcome::Ok,
    );
    history.add(
        "client-3",
        "set-0",
        "e3",
        &["e1,e2"],
        (20.0, 25.0),
        Outcome::Ok,
    );
    // The last add's value kept e1 and e3 but lost e2.
    let final_state = converged(vec![("set-0", converged_key(&[Some("e1,e3")]))]);

    let verdicts = check(&history.events, &final_state);

    assert!(!verdicts.valid);
    assert_eq!(verdicts.lost_writes.len(), 1, "{:#?}", verdicts.lost_writes);
    assert_eq!(verdicts.lost_writes[0].key.as_deref(), Some("set-0"));
    assert_eq!(verdicts.lost_writes[0].value.as_deref(), Some("e2"));
}

#[test]
fn phantom_value_in_read_reported() {
    let mut history = History::new();
    history.write("client-1", "k1", "a1", &[], (0.0, 5.0), Outcome::Ok);
    history.read("client-2", "k1", &["a1", "ghost"], (10.0, 12.0));
    let final_state = converged(vec![("k1", converged_key(&[Some("a1")]))]);

    let verdicts = check(&history.events, &final_state);

    assert!(!verdicts.valid);
    assert_eq!(
        verdicts.phantom_values.len(),
        1,
        "{:#?}",
        verdicts.phantom_values
    );
    let phantom = &verdicts.phantom_values[0];
    assert_eq!(phantom.key.as_deref(), Some("k1"));
    assert_eq!(phantom.value.as_deref(), Some("ghost"));
    assert_eq!(phantom.events, vec![3]);
}

#[test]
fn phantom_value_in_replica_reported() {
    let mut history = History::new();
    history.write("client-1", "k1", "a1", &[], (0.0, 5.0), Outcome::Ok);
    // A value written to another key must not count for k1.
    history.write("client-1", "k2", "b1", &[], (6.0, 9.0), Outcome::Ok);
    let final_state = converged(vec![
        ("k1", converged_key(&[Some("a1"), Some("b1")])),
        ("k2", converged_key(&[Some("b1")])),
    ]);

    let verdicts = check(&history.events, &final_state);

    assert!(!verdicts.valid);
    assert_eq!(
        verdicts.phantom_values.len(),
        1,
        "{:#?}",
        verdicts.phantom_values
    );
    assert_eq!(verdicts.phantom_values[0].key.as_deref(), Some("k1"));
    assert_eq!(verdicts.phantom_values[0].value.as_deref(), Some("b1"));
}

#[test]
fn phantom_set_element_reported() {
    let mut history = History::new();
    history.add("client-1", "set-0", "e1", &[], (0.0, 5.0), Outcome::Ok);
    let final_state = converged(vec![("set-0", converged_key(&[Some("e1,e9")]))]);

    let verdicts = check(&history.events, &final_state);

    assert_eq!(
        verdicts.phantom_values.len(),
        1,
        "{:#?}",
        verdicts.phantom_values
    );
    assert_eq!(verdicts.phantom_values[0].value.as_deref(), Some("e9"));
    assert!(verdicts.lost_writes.is_empty());
}

#[test]
fn resurrected_delete_in_final_state_reported() {
    let mut history = History::new();
    history.write("client-1", "k1", "a1", &[], (0.0, 5.0), Outcome::Ok);
    history.read("client-1", "k1", &["a1"], (10.0, 12.0));
    history.delete("client-1", "k1", &["a1"], (20.0, 25.0), Outcome::Ok);
    let final_state = converged(vec![("k1", converged_key(&[Some("a1")]))]);

    let verdicts = check(&history.events, &final_state);

    assert!(!verdicts.valid);
    assert_eq!(
        verdicts.resurrected_deletes.len(),
        1,
        "{:#?}",
        verdicts.resurrected_deletes
    );
    let resurrected = &verdicts.resurrected_deletes[0];
    assert_eq!(resurrected.kind, AnomalyKind::ResurrectedDelete);
    assert_eq!(resurrected.key.as_deref(), Some("k1"));
    assert_eq!(resurrected.value.as_deref(), Some("a1"));
    assert_eq!(resurrected.events, vec![4, 5]);
    assert!(verdicts.lost_supersedes.is_empty());
}

#[test]
fn resurrected_delete_after_converged_read_reported() {
    let mut history = History::new();
    history.write("client-1", "k1", "a1", &[], (0.0, 5.0), Outcome::Ok);
    history.delete("client-1", "k1", &["a1"], (20.0, 25.0), Outcome::Ok);
    history.phase = "final".to_string();
    history.read("client-0", "k1", &[], (100.0, 102.0));
    history.read("client-0", "k1", &["a1"], (110.0, 112.0));
    // The final state no longer shows the value: only the reads prove it.
    let final_state = converged(vec![("k1", converged_key(&[None]))]);

    let verdicts = check(&history.events, &final_state);

    assert_eq!(
        verdicts.resurrected_deletes.len(),
        1,
        "{:#?}",
        verdicts.resurrected_deletes
    );
    let resurrected = &verdicts.resurrected_deletes[0];
    assert_eq!(resurrected.value.as_deref(), Some("a1"));
    assert_eq!(resurrected.events, vec![2, 3, 4, 5, 6, 7]);
}

#[test]
fn lost_supersede_in_register_reported() {
    let mut history = History::new();
    history.write("client-1", "r1", "v1", &[], (0.0, 5.0), Outcome::Ok);
    history.write("client-1", "r1", "v2", &["v1"], (10.0, 15.0), Outcome::Ok);
    history.write("client-1", "r1", "v3", &["v2"], (20.0, 25.0), Outcome::Ok);
    // v3 superseded v2 correctly, but v1 came back next to it.
    let final_state = converged(vec![("r1", converged_key(&[Some("v1"), Some("v3")]))]);

    let verdicts = check(&history.events, &final_state);

    assert!(!verdicts.valid);
    assert_eq!(
        verdicts.lost_supersedes.len(),
        1,
        "{:#?}",
        verdicts.lost_supersedes
    );
    let supersede = &verdicts.lost_supersedes[0];
    assert_eq!(supersede.kind, AnomalyKind::LostSupersede);
    assert_eq!(supersede.key.as_deref(), Some("r1"));
    assert_eq!(supersede.value.as_deref(), Some("v1"));
    assert_eq!(supersede.events, vec![2, 3]);
    assert!(verdicts.resurrected_deletes.is_empty());
    assert!(verdicts.lost_writes.is_empty());
}

#[test]
fn dot_conflict_reported() {
    let mut history = History::new();
    history.write("client-1", "k1", "x", &[], (0.0, 5.0), Outcome::Info);
    history.write("client-2", "k1", "y", &[], (1.0, 6.0), Outcome::Info);
    let mut key = converged_key(&[Some("x")]);
    key.replicas
        .insert("n2".to_string(), replica(&[(1, 1, Some("y"))]));
    let final_state = converged(vec![("k1", key)]);

    let verdicts = check(&history.events, &final_state);

    assert!(!verdicts.valid);
    assert_eq!(
        verdicts.dot_conflicts.len(),
        1,
        "{:#?}",
        verdicts.dot_conflicts
    );
    let conflict = &verdicts.dot_conflicts[0];
    assert_eq!(conflict.key.as_deref(), Some("k1"));
    assert_eq!(conflict.value.as_deref(), Some("x"));
    assert_eq!(conflict.conflicting_value.as_deref(), Some("y"));
    assert_eq!(conflict.dot.as_deref(), Some("0000000000000001@1.1"));
    assert_eq!(conflict.replicas, vec!["n1".to_string(), "n2".to_string()]);
    assert!(verdicts.phantom_values.is_empty());
}

#[test]
fn dot_conflict_found_without_state_bytes() {
    let mut history = History::new();
    history.write("client-1", "k1", "x", &[], (0.0, 5.0), Outcome::Info);
    history.write("client-2", "k1", "y", &[], (1.0, 6.0), Outcome::Info);
    let mut key = converged_key(&[Some("x")]);
    for replica in key.replicas.values_mut() {
        replica.state = None;
    }
    let n3 = key.replicas.get_mut("n3").expect("converged_key has n3");
    n3.values = vec!["y".to_string()];

    let verdicts = check(&history.events, &converged(vec![("k1", key)]));

    assert_eq!(
        verdicts.dot_conflicts.len(),
        1,
        "{:#?}",
        verdicts.dot_conflicts
    );
    assert_eq!(
        verdicts.dot_conflicts[0].conflicting_value.as_deref(),
        Some("y")
    );
}

#[test]
fn unconverged_replicas_reported() {
    let mut history = History::new();
    history.write("client-1", "k1", "a1", &[], (0.0, 5.0), Outcome::Ok);
    history.write("client-2", "k1", "a2", &[], (1.0, 6.0), Outcome::Ok);
    let mut replicas = BTreeMap::new();
    replicas.insert(
        "n1".to_string(),
        replica(&[(1, 1, Some("a1")), (2, 1, Some("a2"))]),
    );
    replicas.insert("n2".to_string(), replica(&[(1, 1, Some("a1"))]));
    replicas.insert("n3".to_string(), ReplicaFinal::missing());
    let key = KeyFinal {
        read: FinalRead::Values(vec!["a1".to_string(), "a2".to_string()]),
        replicas,
    };
    let mut final_state = converged(vec![("k1", key)]);
    final_state.convergence.converged = false;
    final_state.convergence.waited_ms = 30_000.0;

    let verdicts = check(&history.events, &final_state);

    assert!(!verdicts.valid);
    assert!(!verdicts.convergence.converged);
    let keys: Vec<Option<&str>> = verdicts
        .convergence
        .anomalies
        .iter()
        .map(|anomaly| anomaly.key.as_deref())
        .collect();
    assert_eq!(keys, vec![None, Some("k1")]);
    assert!(verdicts.convergence.anomalies[1]
        .explanation
        .contains("n3: missing"));
    assert!(
        verdicts.lost_writes.is_empty(),
        "the final read at R=N has both values"
    );
}

#[test]
fn key_deleted_everywhere_is_converged_mid_purge() {
    let history = History::new();
    let mut replicas = BTreeMap::new();
    // Two replicas still hold the tombstone; the reaper purged the third.
    replicas.insert("n1".to_string(), replica(&[(1, 2, None)]));
    replicas.insert("n2".to_string(), replica(&[(1, 2, None)]));
    replicas.insert("n3".to_string(), ReplicaFinal::missing());
    let key = KeyFinal {
        read: FinalRead::Values(Vec::new()),
        replicas,
    };

    let verdicts = check(&history.events, &converged(vec![("k1", key)]));

    assert!(
        verdicts.convergence.anomalies.is_empty(),
        "{:#?}",
        verdicts.convergence.anomalies
    );
}

#[test]
fn diverged_key_reported_despite_converged_flag() {
    let mut history = History::new();
    history.write("client-1", "k1", "a1", &[], (0.0, 5.0), Outcome::Ok);
    let mut key = converged_key(&[Some("a1")]);
    key.replicas
        .insert("n2".to_string(), ReplicaFinal::missing());

    let verdicts = check(&history.events, &converged(vec![("k1", key)]));

    assert_eq!(verdicts.convergence.anomalies.len(), 1);
    assert_eq!(verdicts.convergence.anomalies[0].key.as_deref(), Some("k1"));
    assert!(!verdicts.valid);
}

#[test]
fn failed_final_read_falls_back_to_replicas() {
    let mut history = History::new();
    history.write("client-1", "k1", "a1", &[], (0.0, 5.0), Outcome::Ok);
    history.write("client-1", "k1", "a2", &[], (6.0, 8.0), Outcome::Ok);
    let mut key = converged_key(&[Some("a2")]);
    key.read = FinalRead::Error("quorum not reached".to_string());

    let verdicts = check(&history.events, &converged(vec![("k1", key)]));

    assert_eq!(verdicts.lost_writes.len(), 1, "{:#?}", verdicts.lost_writes);
    assert_eq!(verdicts.lost_writes[0].value.as_deref(), Some("a1"));
    assert!(verdicts.lost_writes[0]
        .explanation
        .contains("merged replica states"));
}

#[test]
fn missing_final_state_makes_verdict_unknown() {
    let mut history = History::new();
    history.write("client-1", "k1", "a1", &[], (0.0, 5.0), Outcome::Ok);

    let verdicts = check(&history.events, &converged(vec![]));

    assert!(verdicts.valid, "no anomaly can be proven");
    assert_eq!(verdicts.verdict, Verdict::Unknown);
    assert_eq!(verdicts.unchecked.len(), 1);
    assert_eq!(verdicts.unchecked[0].key.as_deref(), Some("k1"));
}

// ---------------------------------------------------------------------------
// Legal histories that must be reported valid.

#[test]
fn concurrent_blind_writes_stay_siblings() {
    let mut history = History::new();
    history.write("client-1", "k1", "a1", &[], (0.0, 10.0), Outcome::Ok);
    history.write("client-2", "k1", "a2", &[], (2.0, 8.0), Outcome::Ok);
    history.read("client-3", "k1", &["a1", "a2"], (20.0, 22.0));
    let final_state = converged(vec![("k1", converged_key(&[Some("a1"), Some("a2")]))]);

    let verdicts = check(&history.events, &final_state);

    assert_valid(&verdicts);
}

#[test]
fn resolved_siblings_valid() {
    let mut history = History::new();
    history.write("client-1", "k1", "a1", &[], (0.0, 10.0), Outcome::Ok);
    history.write("client-2", "k1", "a2", &[], (2.0, 8.0), Outcome::Ok);
    history.read("client-3", "k1", &["a1", "a2"], (20.0, 22.0));
    history.write(
        "client-3",
        "k1",
        "a3",
        &["a1", "a2"],
        (30.0, 33.0),
        Outcome::Ok,
    );
    let final_state = converged(vec![("k1", converged_key(&[Some("a3")]))]);

    let verdicts = check(&history.events, &final_state);

    assert_valid(&verdicts);
}

#[test]
fn absent_info_write_valid() {
    let mut history = History::new();
    history.write("client-1", "k1", "a1", &[], (0.0, 5.0), Outcome::Ok);
    history.write("client-2", "k1", "a2", &[], (10.0, 1_010.0), Outcome::Info);
    let final_state = converged(vec![("k1", converged_key(&[Some("a1")]))]);

    let verdicts = check(&history.events, &final_state);

    assert_valid(&verdicts);
    assert_eq!(verdicts.indeterminate.operations, 1);
    assert_eq!(verdicts.indeterminate.absent, 1);
    assert_eq!(verdicts.indeterminate.present, 0);
}

#[test]
fn present_info_write_valid() {
    let mut history = History::new();
    history.write("client-1", "k1", "a1", &[], (0.0, 5.0), Outcome::Ok);
    history.write("client-2", "k1", "a2", &[], (10.0, 1_010.0), Outcome::Info);
    let final_state = converged(vec![("k1", converged_key(&[Some("a1"), Some("a2")]))]);

    let verdicts = check(&history.events, &final_state);

    assert_valid(&verdicts);
    assert_eq!(verdicts.indeterminate.present, 1);
    assert_eq!(verdicts.indeterminate.absent, 0);
}

#[test]
fn never_completed_write_counts_as_info() {
    let mut history = History::new();
    let pending = history.invoke(0.0, "client-1", OpKind::Write, "k1", Some("a1"), Some(&[]));
    drop(pending);
    let final_state = converged(vec![("k1", converged_key(&[]))]);

    let verdicts = check(&history.events, &final_state);

    assert_valid(&verdicts);
    assert_eq!(verdicts.indeterminate.operations, 1);
    assert_eq!(verdicts.availability.overall.incomplete, 1);
}

#[test]
fn stale_read_during_fault_valid() {
    let mut history = History::new();
    history.write("client-1", "k1", "a1", &[], (0.0, 5.0), Outcome::Ok);
    history.delete("client-1", "k1", &["a1"], (10.0, 15.0), Outcome::Ok);
    history.phase = "faults".to_string();
    history.nemesis(20.0, "partition isolate [n1] [n2 n3 n4 n5]");
    history.read("client-2", "k1", &[], (21.0, 23.0));
    // A sloppy quorum on the isolated side still has the old value.
    history.read("client-2", "k1", &["a1"], (25.0, 27.0));
    history.nemesis(30.0, "heal");
    history.phase = "final".to_string();
    history.read("client-0", "k1", &[], (100.0, 102.0));
    let final_state = converged(vec![("k1", converged_key(&[Some("a1"), None]))]);
    let mut final_state = final_state;
    // The tombstone-only final state reads as missing.
    final_state.keys.get_mut("k1").expect("key k1 exists").read = FinalRead::Values(Vec::new());
    for replica in final_state
        .keys
        .get_mut("k1")
        .expect("key k1 exists")
        .replicas
        .values_mut()
    {
        *replica = self::replica(&[(1, 2, None)]);
    }

    let verdicts = check(&history.events, &final_state);

    assert_valid(&verdicts);
}

#[test]
fn info_delete_may_remove_value() {
    let mut history = History::new();
    history.write("client-1", "k1", "a1", &[], (0.0, 5.0), Outcome::Ok);
    history.delete("client-1", "k1", &["a1"], (10.0, 1_010.0), Outcome::Info);
    let final_state = converged(vec![("k1", converged_key(&[None]))]);

    let verdicts = check(&history.events, &final_state);

    assert_valid(&verdicts);
}

#[test]
fn blind_delete_may_remove_earlier_values() {
    let mut history = History::new();
    history.write("client-1", "k1", "a1", &[], (0.0, 5.0), Outcome::Ok);
    // No context: the coordinator reads at R and deletes what it saw.
    history.delete("client-2", "k1", &[], (10.0, 15.0), Outcome::Ok);
    history.write("client-1", "k1", "a2", &[], (20.0, 25.0), Outcome::Ok);
    let final_state = converged(vec![("k1", converged_key(&[None, Some("a2")]))]);

    let verdicts = check(&history.events, &final_state);

    assert_valid(&verdicts);
}

#[test]
fn failed_delete_removes_nothing() {
    let mut history = History::new();
    history.write("client-1", "k1", "a1", &[], (0.0, 5.0), Outcome::Ok);
    history.delete("client-1", "k1", &["a1"], (10.0, 15.0), Outcome::Fail);
    let final_state = converged(vec![("k1", converged_key(&[]))]);

    let verdicts = check(&history.events, &final_state);

    assert_eq!(
        verdicts.lost_writes.len(),
        1,
        "a failed delete cannot excuse a missing value"
    );
    assert_eq!(verdicts.lost_writes[0].value.as_deref(), Some("a1"));
}

#[test]
fn set_adds_with_union_valid() {
    let mut history = History::new();
    history.add("client-1", "set-0", "e1", &[], (0.0, 5.0), Outcome::Ok);
    // Two concurrent adds that both read {e1}: their values become siblings.
    history.add(
        "client-2",
        "set-0",
        "e2",
        &["e1"],
        (10.0, 15.0),
        Outcome::Ok,
    );
    history.add(
        "client-3",
        "set-0",
        "e3",
        &["e1"],
        (11.0, 16.0),
        Outcome::Ok,
    );
    history.add(
        "client-1",
        "set-0",
        "e4",
        &["e1,e2", "e1,e3"],
        (20.0, 30.0),
        Outcome::Info,
    );
    let final_state = converged(vec![(
        "set-0",
        converged_key(&[Some("e1,e2"), Some("e1,e3")]),
    )]);

    let verdicts = check(&history.events, &final_state);

    assert_valid(&verdicts);
    assert_eq!(verdicts.indeterminate.absent, 1);
}
