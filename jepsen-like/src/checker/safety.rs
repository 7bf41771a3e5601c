//! Safety checks on one key's operations and final values: lost writes,
//! lost supersedes, resurrected deletes and phantom values.
//!
//! A value `v` is *covered* by an operation whose `covers` lists it: that
//! operation's context had seen `v`, so the operation legitimately removes
//! it. Coverage is unknown for a delete sent without a context (the
//! coordinator reads at R and deletes what it saw) and for a write or delete
//! that sent a context but recorded no `covers`. Such an operation may have
//! removed any value whose write was invoked before it completed, so those
//! values are never reported lost.

use super::final_state::FinalState;
use super::operations::Operation;
use super::replicas::{DecodedReplicas, FinalValues};
use super::stats::kind_label;
use super::{set_elements, Anomaly, AnomalyKind, Indeterminate};
use crate::history::{OpKind, Outcome};
use kv_cluster::version::Value;
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// One key's operations and what it ended with.
pub struct KeyView<'h, 'o> {
    pub key: &'h str,
    /// True when the set workload used the key (an `add` touched it).
    pub is_set: bool,
    pub operations: Vec<&'o Operation<'h>>,
    /// `None` when the final values could not be read.
    pub final_values: Option<FinalValues>,
    /// Set keys: the union of the elements of the final values.
    final_elements: BTreeSet<String>,
}

impl<'h, 'o> KeyView<'h, 'o> {
    pub fn new(
        key: &'h str,
        operations: Vec<&'o Operation<'h>>,
        final_values: Option<FinalValues>,
    ) -> KeyView<'h, 'o> {
        let is_set = operations
            .iter()
            .any(|operation| operation.kind == OpKind::Add);
        let final_elements = match (&final_values, is_set) {
            (Some(found), true) => found
                .values
                .iter()
                .flat_map(|value| set_elements(value))
                .collect(),
            _ => BTreeSet::new(),
        };
        KeyView {
            key,
            is_set,
            operations,
            final_values,
            final_elements,
        }
    }

    fn final_contains(&self, value: &str) -> bool {
        self.final_values
            .as_ref()
            .is_some_and(|found| found.values.iter().any(|final_value| final_value == value))
    }

    fn final_contains_element(&self, element: &str) -> bool {
        self.final_elements.contains(element)
    }

    fn final_source(&self) -> &'static str {
        self.final_values
            .as_ref()
            .map_or("the final values", |found| found.source)
    }

    /// Finds an operation other than `written` that may have removed a value:
    /// its `covers` matches, or its coverage is unknown and it completed
    /// after `written` was invoked. Failed operations never remove anything.
    fn find_remover(
        &self,
        written: &Operation<'_>,
        covered: impl Fn(&str) -> bool,
        kinds: &[OpKind],
    ) -> Option<&Operation<'_>> {
        self.operations.iter().copied().find(|candidate| {
            if std::ptr::eq(*candidate, written)
                || candidate.outcome() == Outcome::Fail
                || !kinds.contains(&candidate.kind)
            {
                return false;
            }
            let blind_delete = candidate.kind == OpKind::Delete && !candidate.sent_context();
            let may_follow = written.invoke.time_ms < candidate.completed_ms();
            match candidate.covers() {
                _ if blind_delete => may_follow,
                Some(covers) => covers.iter().any(|value| covered(value)),
                None if candidate.sent_context() => may_follow,
                None => false,
            }
        })
    }
}

/// Reports acknowledged writes and adds missing from the final values that
/// no other operation covered, and counts indeterminate operations.
pub fn check_lost_writes(
    view: &KeyView<'_, '_>,
    indeterminate: &mut Indeterminate,
) -> Vec<Anomaly> {
    let mut anomalies = Vec::new();
    for operation in &view.operations {
        let outcome = operation.outcome();
        if outcome == Outcome::Fail || operation.kind == OpKind::Read {
            continue;
        }
        if outcome == Outcome::Info {
            count_indeterminate(view, operation, indeterminate);
            continue;
        }
        let Some(value) = operation.value() else {
            continue;
        };
        if view.final_values.is_none() {
            continue;
        }

        // Look for a remover only when the value is missing, because the
        // search scans every operation of the key.
        let removed = match operation.kind {
            OpKind::Write => {
                view.final_contains(value)
                    || view
                        .find_remover(
                            operation,
                            |covered| covered == value,
                            &[OpKind::Write, OpKind::Delete, OpKind::Add],
                        )
                        .is_some()
            }
            // Adds merge the set they read, so only a plain write or a
            // delete can remove an element.
            OpKind::Add => {
                view.final_contains_element(value)
                    || view
                        .find_remover(
                            operation,
                            |covered| set_elements(covered).iter().any(|element| element == value),
                            &[OpKind::Write, OpKind::Delete],
                        )
                        .is_some()
            }
            OpKind::Delete | OpKind::Read => continue,
        };
        if removed {
            continue;
        }
        let what = if operation.kind == OpKind::Add {
            "element"
        } else {
            "value"
        };
        anomalies.push(Anomaly::about_value(
            AnomalyKind::LostWrite,
            view.key,
            value,
            operation.indexes(),
            format!(
                "acknowledged {what} {value:?} of key {} (event {}) is absent from {} and no later write or delete covered it",
                view.key,
                operation.invoke.index,
                view.final_source()
            ),
        ));
    }
    anomalies
}

fn count_indeterminate(
    view: &KeyView<'_, '_>,
    operation: &Operation<'_>,
    indeterminate: &mut Indeterminate,
) {
    indeterminate.operations += 1;
    let Some(value) = operation.value() else {
        return;
    };
    if view.final_values.is_none() || operation.kind == OpKind::Delete {
        return;
    }
    let present = match operation.kind {
        OpKind::Add => view.final_contains_element(value),
        _ => view.final_contains(value),
    };
    if present {
        indeterminate.present += 1;
    } else {
        indeterminate.absent += 1;
    }
}

/// Reports values that are present although an acknowledged write or
/// delete covered them: in the final values, or in a converged read after
/// an earlier converged read had shown them gone.
///
/// `is_converged_read` returns whether a read ran after the replicas had
/// converged. Reads during faults may be stale (sloppy quorum), so they
/// never count. Adds are not used as superseding operations: a retried add
/// can write the same set text twice, so the text does not name one write.
pub fn check_supersedes(
    view: &KeyView<'_, '_>,
    is_converged_read: &dyn Fn(&Operation<'_>) -> bool,
) -> Vec<Anomaly> {
    // Covered value to the acknowledged operation that completed first.
    let mut covered_by: BTreeMap<&str, &Operation<'_>> = BTreeMap::new();
    for operation in &view.operations {
        if operation.outcome() != Outcome::Ok
            || !matches!(operation.kind, OpKind::Write | OpKind::Delete)
        {
            continue;
        }
        let Some(covers) = operation.covers() else {
            continue;
        };
        for value in covers {
            if Some(value.as_str()) == operation.value() {
                continue;
            }
            let earlier = covered_by
                .get(value.as_str())
                .is_some_and(|known| known.completed_ms() <= operation.completed_ms());
            if !earlier {
                covered_by.insert(value, operation);
            }
        }
    }

    let reads: Vec<&Operation<'_>> = view
        .operations
        .iter()
        .copied()
        .filter(|operation| {
            operation.kind == OpKind::Read
                && operation.outcome() == Outcome::Ok
                && is_converged_read(operation)
        })
        .collect();

    let mut anomalies = Vec::new();
    for (value, superseder) in covered_by {
        let kind = if superseder.kind == OpKind::Delete {
            AnomalyKind::ResurrectedDelete
        } else {
            AnomalyKind::LostSupersede
        };
        let verb = if kind == AnomalyKind::ResurrectedDelete {
            "deleted"
        } else {
            "superseded"
        };

        if view.final_contains(value) {
            anomalies.push(Anomaly::about_value(
                kind,
                view.key,
                value,
                superseder.indexes(),
                format!(
                    "value {value:?} of key {} was {verb} by the acknowledged {} at event {} but is present in {}",
                    view.key,
                    kind_label(superseder.kind),
                    superseder.invoke.index,
                    view.final_source()
                ),
            ));
            continue;
        }

        let shows = |read: &Operation<'_>| {
            read.read()
                .is_some_and(|values| values.iter().any(|read_value| read_value == value))
        };
        let gone = reads
            .iter()
            .find(|read| read.invoke.time_ms > superseder.completed_ms() && !shows(read));
        let Some(gone) = gone else {
            continue;
        };
        let back = reads
            .iter()
            .find(|read| read.invoke.time_ms > gone.completed_ms() && shows(read));
        if let Some(back) = back {
            let mut events = superseder.indexes();
            events.extend(gone.indexes());
            events.extend(back.indexes());
            anomalies.push(Anomaly::about_value(
                kind,
                view.key,
                value,
                events,
                format!(
                    "value {value:?} of key {} was {verb} at event {}, a converged read at event {} showed it gone, and the read at event {} returned it again",
                    view.key,
                    superseder.invoke.index,
                    gone.invoke.index,
                    back.invoke.index
                ),
            ));
        }
    }
    anomalies
}

/// Reports values that no invoke of the key wrote, wherever they appear:
/// client reads, `covers` lists, the final read and every replica. For a
/// set key every element of a value must have been added (or the whole
/// value written by a plain write).
///
/// NOTE: values of failed writes count as written, so a `fail` write whose
/// value shows up after all (a write reported as not applied that was
/// applied) is not reported.
pub fn check_phantoms(
    view: &KeyView<'_, '_>,
    final_state: &FinalState,
    decoded: Option<&DecodedReplicas>,
) -> Vec<Anomaly> {
    let written: HashSet<&str> = view
        .operations
        .iter()
        .filter(|operation| operation.kind == OpKind::Write)
        .filter_map(|operation| operation.value())
        .collect();
    let added: HashSet<&str> = view
        .operations
        .iter()
        .filter(|operation| operation.kind == OpKind::Add)
        .filter_map(|operation| operation.value())
        .collect();
    let unwritten_parts = |value: &str| -> Vec<String> {
        if written.contains(value) {
            return Vec::new();
        }
        if !view.is_set {
            return vec![value.to_string()];
        }
        value
            .split(',')
            .filter(|element| !element.is_empty() && !added.contains(element))
            .map(str::to_string)
            .collect()
    };

    let mut reported: BTreeSet<String> = BTreeSet::new();
    let mut anomalies = Vec::new();
    let mut report = |value: &str, events: &[u64], place: &dyn Fn() -> String| {
        for part in unwritten_parts(value) {
            if !reported.insert(part.clone()) {
                continue;
            }
            let what = if view.is_set { "element" } else { "value" };
            anomalies.push(Anomaly::about_value(
                AnomalyKind::PhantomValue,
                view.key,
                &part,
                events.to_vec(),
                format!(
                    "{what} {part:?} of key {} appeared in {} but no operation ever wrote it",
                    view.key,
                    place()
                ),
            ));
        }
    };

    // Set values are long and read again and again, so each distinct text
    // of the history is checked once, at its first appearance.
    let mut history_values: HashSet<&str> = HashSet::new();
    for operation in &view.operations {
        let read_event = operation.completion.unwrap_or(operation.invoke).index;
        let lists = [
            (operation.read(), "read", read_event),
            (operation.covers(), "covers", operation.invoke.index),
        ];
        for (list, field, event) in lists {
            for value in list.unwrap_or_default() {
                if !history_values.insert(value.as_str()) {
                    continue;
                }
                report(value, &[event], &|| {
                    format!("the {field} list of event {event}")
                });
            }
        }
    }

    let Some(final_key) = final_state.keys.get(view.key) else {
        return anomalies;
    };
    if let super::final_state::FinalRead::Values(values) = &final_key.read {
        for value in values {
            report(value, &[], &|| "the final read".to_string());
        }
    }
    for (name, replica) in &final_key.replicas {
        for value in &replica.values {
            report(value, &[], &|| format!("replica {name}"));
        }
    }
    if let Some(decoded) = decoded {
        for (name, state) in &decoded.states {
            for value in state.values.values() {
                if let Value::Data(bytes) = value {
                    report(&String::from_utf8_lossy(bytes), &[], &|| {
                        format!("the state of replica {name}")
                    });
                }
            }
        }
    }
    anomalies
}
