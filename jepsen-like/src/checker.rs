//! Checkers of a kv-jepsen history and the cluster's final state.
//!
//! [`check`] pairs the history's events into operations, groups them by
//! key, and compares them with the [`FinalState`] the harness read after
//! the faults healed. It reports:
//!
//! - **lost writes**: an `ok` write whose value (or an `ok` add whose
//!   element) is absent from the key's final values, although no other
//!   operation that may have been applied (`ok`, `info` or never completed)
//!   covered it;
//! - **lost supersedes** and **resurrected deletes**: a value present in the
//!   final values although an `ok` write or delete covered it, or returned
//!   by a converged read after an earlier converged read showed it gone.
//!   A converged read is one of the `final` phase or one invoked at or
//!   after [`Convergence::converged_at_ms`]. Reads during faults may be
//!   stale and never count;
//! - **phantom values**: a value (or set element) that appears anywhere but
//!   that no invoke of that key wrote;
//! - **unconverged replicas**: replicas of a key that hold different states
//!   at the end, or a convergence wait that hit its deadline;
//! - **dot conflicts**: one dot holding two different values on two
//!   replicas;
//! - availability per phase and per fault window, and latency percentiles
//!   per operation kind. These are measurements, never anomalies.
//!
//! Indeterminate (`info`) operations may be present or absent. They are
//! counted in [`Indeterminate`] and never reported lost.
//!
//! The final values of a key are the final read at R=N or, when that read
//! failed, the merge of all replica states. A key with neither is listed in
//! [`Verdicts::unchecked`], and the verdict is `unknown` unless an anomaly
//! was found elsewhere.
//!
//! A key is a set key when an `add` touched it. Its values are sets of
//! elements written as text: the elements joined by `,`, see
//! [`set_elements`] and [`set_value`]. Elements must not contain a comma or
//! be empty.

mod final_state;
mod operations;
mod replicas;
mod safety;
mod stats;

pub use final_state::{
    Convergence, FinalRead, FinalState, FinalStateError, KeyFinal, ReplicaFinal, ReplicaKind,
};
pub use operations::{
    fault_windows, faulty_intervals, pair_operations, FaultWindow, Operation, Operations, NEMESIS,
};
pub use stats::{kind_label, Availability, Latency, Share, WindowShare};

use crate::history::{Event, OpKind, Outcome};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Splits the text of a set value into its elements. The empty text is the
/// empty set, and empty parts (as in `a,,b`) are skipped.
pub fn set_elements(value: &str) -> Vec<String> {
    value
        .split(',')
        .filter(|element| !element.is_empty())
        .map(str::to_string)
        .collect()
}

/// Joins set elements into the text that [`set_elements`] reads: sorted,
/// without duplicates, separated by `,`.
pub fn set_value<'a>(elements: impl IntoIterator<Item = &'a str>) -> String {
    let unique: BTreeSet<&str> = elements
        .into_iter()
        .filter(|element| !element.is_empty())
        .collect();
    unique.into_iter().collect::<Vec<_>>().join(",")
}

/// The kinds of anomaly. Any of them makes a history invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    LostWrite,
    LostSupersede,
    ResurrectedDelete,
    PhantomValue,
    Unconverged,
    DotConflict,
}

/// One anomaly and the evidence for it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    /// `None` for a run-wide anomaly, such as a convergence wait that hit
    /// its deadline.
    pub key: Option<String>,
    /// The value or set element concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Dot conflicts: the value the other replica holds for the dot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflicting_value: Option<String>,
    /// Dot conflicts: the dot, as `actor.counter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dot: Option<String>,
    /// Replicas involved, for convergence and dot conflicts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<String>,
    /// Indexes of the history events that prove the anomaly. Empty when
    /// only the final state proves it.
    pub events: Vec<u64>,
    /// One-line description of the anomaly.
    pub explanation: String,
}

impl Anomaly {
    fn about_value(
        kind: AnomalyKind,
        key: &str,
        value: &str,
        events: Vec<u64>,
        explanation: String,
    ) -> Anomaly {
        Anomaly {
            kind,
            key: Some(key.to_string()),
            value: Some(value.to_string()),
            conflicting_value: None,
            dot: None,
            replicas: Vec::new(),
            events,
            explanation,
        }
    }
}

/// Something the checkers could not check, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Unchecked {
    pub key: Option<String>,
    pub reason: String,
}

/// Indeterminate (`info` or never completed) writes, adds and deletes, and
/// whether their value ended up present. Deletes count only in
/// `operations`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Indeterminate {
    pub operations: u64,
    pub present: u64,
    pub absent: u64,
}

/// Convergence result of the replicas.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConvergenceVerdict {
    /// The harness's own result of its convergence wait.
    pub converged: bool,
    pub waited_ms: f64,
    pub deadline_ms: f64,
    /// The wait's deadline, if it was hit, and every key whose replicas
    /// differ at the end.
    pub anomalies: Vec<Anomaly>,
}

/// The overall result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// No anomaly, and every key was checked.
    Valid,
    /// At least one anomaly.
    Invalid,
    /// No anomaly, but some keys could not be checked.
    Unknown,
}

/// Everything the checkers found, written to `results.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdicts {
    /// False when any anomaly was found.
    pub valid: bool,
    pub verdict: Verdict,
    pub anomaly_count: usize,
    pub lost_writes: Vec<Anomaly>,
    pub lost_supersedes: Vec<Anomaly>,
    pub resurrected_deletes: Vec<Anomaly>,
    pub phantom_values: Vec<Anomaly>,
    pub convergence: ConvergenceVerdict,
    pub dot_conflicts: Vec<Anomaly>,
    pub indeterminate: Indeterminate,
    pub availability: Availability,
    /// Operation kind (`read`, `write`, `delete`, `add`) to its latencies.
    pub latency: BTreeMap<String, Latency>,
    pub fault_windows: Vec<FaultWindow>,
    /// Keys (or history lines) the checkers could not check.
    pub unchecked: Vec<Unchecked>,
    pub keys: usize,
    pub operations: usize,
}

impl Verdicts {
    /// Returns every anomaly, of every kind.
    pub fn anomalies(&self) -> impl Iterator<Item = &Anomaly> {
        self.lost_writes
            .iter()
            .chain(&self.lost_supersedes)
            .chain(&self.resurrected_deletes)
            .chain(&self.phantom_values)
            .chain(&self.convergence.anomalies)
            .chain(&self.dot_conflicts)
    }
}

/// Checks a history against the final state. See the module documentation
/// for what each checker reports.
pub fn check(events: &[Event], final_state: &FinalState) -> Verdicts {
    let paired = pair_operations(events);
    let windows = fault_windows(events);
    let end_of_run_ms = events.iter().map(|event| event.time_ms).fold(0.0, f64::max);

    let mut unchecked: Vec<Unchecked> = paired
        .unpaired
        .iter()
        .map(|reason| Unchecked {
            key: None,
            reason: reason.clone(),
        })
        .collect();
    let mut verdicts = Verdicts {
        valid: true,
        verdict: Verdict::Valid,
        anomaly_count: 0,
        lost_writes: Vec::new(),
        lost_supersedes: Vec::new(),
        resurrected_deletes: Vec::new(),
        phantom_values: Vec::new(),
        convergence: ConvergenceVerdict {
            converged: final_state.convergence.converged,
            waited_ms: final_state.convergence.waited_ms,
            deadline_ms: final_state.convergence.deadline_ms,
            anomalies: Vec::new(),
        },
        dot_conflicts: Vec::new(),
        indeterminate: Indeterminate::default(),
        availability: stats::availability(&paired.operations, &windows, end_of_run_ms),
        latency: stats::latencies(&paired.operations),
        fault_windows: windows,
        unchecked: Vec::new(),
        keys: 0,
        operations: paired.operations.len(),
    };
    if !final_state.convergence.converged {
        verdicts.convergence.anomalies.push(Anomaly {
            kind: AnomalyKind::Unconverged,
            key: None,
            value: None,
            conflicting_value: None,
            dot: None,
            replicas: Vec::new(),
            events: Vec::new(),
            explanation: format!(
                "replicas had not converged when the wait ended after {:.0} ms (deadline {:.0} ms)",
                final_state.convergence.waited_ms, final_state.convergence.deadline_ms
            ),
        });
    }

    let mut by_key: BTreeMap<&str, Vec<&Operation<'_>>> = BTreeMap::new();
    for key in final_state.keys.keys() {
        by_key.entry(key.as_str()).or_default();
    }
    for operation in &paired.operations {
        by_key.entry(operation.key).or_default().push(operation);
    }
    verdicts.keys = by_key.len();

    let converged_at_ms = final_state.convergence.converged_at_ms;
    let is_converged_read = |operation: &Operation<'_>| {
        operation.phase() == Some("final")
            || converged_at_ms.is_some_and(|converged| operation.invoke.time_ms >= converged)
    };

    for (key, operations) in by_key {
        let final_key = final_state.keys.get(key);
        let decoded =
            final_key.map(|final_key| replicas::decode_replicas(key, final_key, &mut unchecked));
        let final_values = match (final_key, &decoded) {
            (Some(final_key), Some(decoded)) => replicas::final_values(final_key, decoded),
            _ => None,
        };
        let view = safety::KeyView::new(key, operations, final_values);
        if view.final_values.is_none() && has_acknowledged_writes(&view.operations) {
            let reason = match final_key.map(|final_key| &final_key.read) {
                None => "no final read was recorded".to_string(),
                Some(FinalRead::Error(error)) => format!(
                    "the final read failed ({error}) and the replica states could not be merged"
                ),
                Some(FinalRead::Values(_)) => "the final values are unavailable".to_string(),
            };
            unchecked.push(Unchecked {
                key: Some(key.to_string()),
                reason: format!("lost writes not checked: {reason}"),
            });
        }

        verdicts.lost_writes.extend(safety::check_lost_writes(
            &view,
            &mut verdicts.indeterminate,
        ));
        for anomaly in safety::check_supersedes(&view, &is_converged_read) {
            match anomaly.kind {
                AnomalyKind::ResurrectedDelete => verdicts.resurrected_deletes.push(anomaly),
                _ => verdicts.lost_supersedes.push(anomaly),
            }
        }
        verdicts.phantom_values.extend(safety::check_phantoms(
            &view,
            final_state,
            decoded.as_ref(),
        ));

        if let (Some(final_key), Some(decoded)) = (final_key, &decoded) {
            verdicts
                .convergence
                .anomalies
                .extend(replicas::check_convergence(key, final_key));
            verdicts
                .dot_conflicts
                .extend(replicas::check_dot_conflicts(key, final_key, decoded));
        }
    }

    verdicts.unchecked = unchecked;
    verdicts.anomaly_count = verdicts.anomalies().count();
    verdicts.valid = verdicts.anomaly_count == 0;
    verdicts.verdict = if !verdicts.valid {
        Verdict::Invalid
    } else if verdicts.unchecked.is_empty() {
        Verdict::Valid
    } else {
        Verdict::Unknown
    };
    verdicts
}

fn has_acknowledged_writes(operations: &[&Operation<'_>]) -> bool {
    operations.iter().any(|operation| {
        matches!(operation.kind, OpKind::Write | OpKind::Add) && operation.outcome() == Outcome::Ok
    })
}
