//! Checks of the replicas' final states: which values a key ends with,
//! whether its replicas converged, and whether one dot names two values.

use super::final_state::{FinalRead, KeyFinal, ReplicaFinal, ReplicaKind};
use super::{Anomaly, AnomalyKind, Unchecked};
use kv_cluster::version::{State, Value};
use std::collections::BTreeMap;

/// Text that stands for a tombstone in dot conflict reports.
const TOMBSTONE: &str = "<tombstone>";

/// The live values a key ended with, and where they came from.
#[derive(Clone, Debug)]
pub struct FinalValues {
    pub values: Vec<String>,
    /// "the final read at R=N" or "the merged replica states".
    pub source: &'static str,
}

/// The decoded states of a key's replicas, by replica name.
pub struct DecodedReplicas {
    pub states: BTreeMap<String, State>,
}

/// Decodes every replica's canonical state bytes. A state that does not
/// decode is listed in `unchecked` and left out.
pub fn decode_replicas(
    key: &str,
    final_key: &KeyFinal,
    unchecked: &mut Vec<Unchecked>,
) -> DecodedReplicas {
    let mut states = BTreeMap::new();
    for (name, replica) in &final_key.replicas {
        let Some(bytes) = replica.state.as_deref() else {
            continue;
        };
        match State::decode(bytes) {
            Ok(state) => {
                states.insert(name.clone(), state);
            }
            Err(error) => unchecked.push(Unchecked {
                key: Some(key.to_string()),
                reason: format!("replica {name} returned a state that does not decode: {error}"),
            }),
        }
    }
    DecodedReplicas { states }
}

/// Returns the values the key ended with: the final read at R=N, or, when
/// that read failed, the merge of every replica's decoded state. `None` when
/// neither is available, e.g. a replica was unreachable and the read failed.
pub fn final_values(final_key: &KeyFinal, decoded: &DecodedReplicas) -> Option<FinalValues> {
    if let FinalRead::Values(values) = &final_key.read {
        return Some(FinalValues {
            values: values.clone(),
            source: "the final read at R=N",
        });
    }
    if final_key.replicas.is_empty() {
        return None;
    }
    let mut merged = State::new();
    for (name, replica) in &final_key.replicas {
        match replica.kind {
            ReplicaKind::Missing => {}
            ReplicaKind::Present => merged = merged.merge(decoded.states.get(name)?).state,
            ReplicaKind::Unknown | ReplicaKind::Unreachable => return None,
        }
    }
    Some(FinalValues {
        values: merged
            .live_values()
            .into_iter()
            .map(|value| String::from_utf8_lossy(value).into_owned())
            .collect(),
        source: "the merged replica states",
    })
}

/// Reports the key when its replicas hold different states: byte-different
/// canonical states, or different kinds, values, tombstone counts or dots
/// when a replica's state bytes are not available. A key that every replica
/// holds as deleted (only tombstones, or nothing) has converged, because
/// the tombstone reaper purges it one replica after the other.
pub fn check_convergence(key: &str, final_key: &KeyFinal) -> Option<Anomaly> {
    if final_key.replicas.values().all(ReplicaFinal::is_deleted) {
        return None;
    }
    let mut descriptions: Vec<(String, String)> = final_key
        .replicas
        .iter()
        .map(|(name, replica)| (name.clone(), describe_replica(replica)))
        .collect();
    let all_have_state = final_key
        .replicas
        .values()
        .all(|replica| replica.kind != ReplicaKind::Present || replica.state.is_some());
    let fingerprints: Vec<String> = final_key
        .replicas
        .iter()
        .map(|(name, replica)| fingerprint(name, replica, all_have_state))
        .collect();
    if fingerprints.windows(2).all(|pair| pair[0] == pair[1]) {
        return None;
    }

    descriptions.sort();
    let listed: Vec<String> = descriptions
        .iter()
        .map(|(name, description)| format!("{name}: {description}"))
        .collect();
    Some(Anomaly {
        kind: AnomalyKind::Unconverged,
        key: Some(key.to_string()),
        value: None,
        conflicting_value: None,
        dot: None,
        replicas: final_key.replicas.keys().cloned().collect(),
        events: Vec::new(),
        explanation: format!(
            "replicas of key {key} hold different states at the end: {}",
            listed.join("; ")
        ),
    })
}

/// Reports every dot that two replicas hold with different values.
///
/// Dots come from the decoded states. A replica without state bytes is used
/// only when it has no tombstones, because `dots` lists tombstones too while
/// `values` does not, so only then does the n-th dot belong to the n-th value.
pub fn check_dot_conflicts(
    key: &str,
    final_key: &KeyFinal,
    decoded: &DecodedReplicas,
) -> Vec<Anomaly> {
    // Dot to (replica, value) in replica name order.
    let mut holders: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (name, replica) in &final_key.replicas {
        if let Some(state) = decoded.states.get(name) {
            for (dot, value) in &state.values {
                let text = match value {
                    Value::Data(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                    Value::Tombstone => TOMBSTONE.to_string(),
                };
                holders
                    .entry(dot.to_string())
                    .or_default()
                    .push((name.clone(), text));
            }
        } else if replica.kind == ReplicaKind::Present
            && replica.tombstones == 0
            && replica.dots.len() == replica.values.len()
        {
            for (dot, value) in replica.dots.iter().zip(&replica.values) {
                holders
                    .entry(dot.clone())
                    .or_default()
                    .push((name.clone(), value.clone()));
            }
        }
    }

    let mut anomalies = Vec::new();
    for (dot, held) in holders {
        let Some((first_replica, first_value)) = held.first() else {
            continue;
        };
        let Some((other_replica, other_value)) =
            held.iter().find(|(_, value)| value != first_value)
        else {
            continue;
        };
        anomalies.push(Anomaly {
            kind: AnomalyKind::DotConflict,
            key: Some(key.to_string()),
            value: Some(first_value.clone()),
            conflicting_value: Some(other_value.clone()),
            dot: Some(dot.clone()),
            replicas: vec![first_replica.clone(), other_replica.clone()],
            events: Vec::new(),
            explanation: format!(
                "dot {dot} of key {key} holds {first_value:?} on {first_replica} but {other_value:?} on {other_replica}"
            ),
        });
    }
    anomalies
}

fn describe_replica(replica: &ReplicaFinal) -> String {
    match replica.kind {
        ReplicaKind::Present => format!(
            "present, values {:?}, {} tombstones, dots [{}]",
            replica.values,
            replica.tombstones,
            replica.dots.join(" ")
        ),
        ReplicaKind::Missing => "missing".to_string(),
        ReplicaKind::Unknown => "unknown (checksum failed)".to_string(),
        ReplicaKind::Unreachable => format!(
            "unreachable ({})",
            replica.error.as_deref().unwrap_or("no error recorded")
        ),
    }
}

/// Returns a string that is equal for two replicas exactly when they hold
/// the same state.
fn fingerprint(name: &str, replica: &ReplicaFinal, use_state_bytes: bool) -> String {
    match replica.kind {
        ReplicaKind::Present if use_state_bytes => {
            format!("present {:?}", replica.state.as_deref().unwrap_or_default())
        }
        ReplicaKind::Present => {
            let mut values = replica.values.clone();
            values.sort();
            format!(
                "present {values:?} {} {:?}",
                replica.tombstones, replica.dots
            )
        }
        ReplicaKind::Missing => "missing".to_string(),
        ReplicaKind::Unknown => "unknown".to_string(),
        // An unreachable replica cannot be compared, so it never matches.
        ReplicaKind::Unreachable => format!("unreachable {name}"),
    }
}
