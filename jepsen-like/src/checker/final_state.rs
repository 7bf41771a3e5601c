//! The state of the cluster after the faults healed: what the harness read
//! from every replica of every key, its final reads at R=N, and how long the
//! replicas took to converge.
//!
//! The harness fills a [`FinalState`] and saves it next to the history as
//! JSON, so a run can be checked again later and tests can build one by
//! hand. Values are UTF-8 strings, as in the history. Canonical state bytes
//! are stored as standard base64 under `state`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Everything the harness read after the run, per key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FinalState {
    /// Key to what the harness read for it.
    pub keys: BTreeMap<String, KeyFinal>,
    /// Whether, and how fast, the replicas of every key reached one state.
    pub convergence: Convergence,
}

/// The final reads of one key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyFinal {
    /// The read at R=N after convergence.
    pub read: FinalRead,
    /// Node name or address to that replica's local state of the key.
    #[serde(default)]
    pub replicas: BTreeMap<String, ReplicaFinal>,
}

/// Result of the final read at R=N of one key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinalRead {
    /// The live sibling values (empty when the key is missing or deleted).
    Values(Vec<String>),
    /// The error message of a read that failed.
    Error(String),
}

/// Kind of a replica's local state, as the admin `ReplicaRead` call returns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaKind {
    /// The replica stores a state (possibly tombstones only).
    Present,
    /// The replica stores nothing for the key.
    Missing,
    /// The stored record failed its checksum, so the node does not serve it.
    Unknown,
    /// The `ReplicaRead` call itself failed; `error` has the message.
    Unreachable,
}

/// One replica's local state of one key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicaFinal {
    pub kind: ReplicaKind,
    /// Live values in dot order.
    #[serde(default)]
    pub values: Vec<String>,
    /// Number of tombstones among the dotted values.
    #[serde(default)]
    pub tombstones: u32,
    /// Dots of every dotted value (tombstones included) in dot order, as
    /// `actor.counter` strings such as `1a2b3c4d5e6f7081@3.7`.
    #[serde(default)]
    pub dots: Vec<String>,
    /// Canonical state bytes, which `kv_cluster::version::State::decode`
    /// turns into every dot with its value or tombstone. `None` when the
    /// harness did not get them. The dot conflict check then pairs `dots`
    /// with `values`, which works only for a replica without tombstones.
    #[serde(
        default,
        with = "base64_bytes",
        skip_serializing_if = "Option::is_none"
    )]
    pub state: Option<Vec<u8>>,
    /// Error message when `kind` is `unreachable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Result of the harness's wait for convergence.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Convergence {
    /// True when every key's replicas held one state before the deadline.
    pub converged: bool,
    /// Milliseconds the harness waited: until convergence, or the deadline.
    pub waited_ms: f64,
    /// The deadline of the wait in milliseconds.
    pub deadline_ms: f64,
    /// History time (milliseconds since the run started) at which the
    /// replicas were seen converged. Reads invoked from then on count as
    /// converged reads for the resurrection check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converged_at_ms: Option<f64>,
}

/// Errors saving or loading a [`FinalState`].
#[derive(Debug, thiserror::Error)]
pub enum FinalStateError {
    #[error("failed to write the final state to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to read the final state from {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid final state JSON in {path}: {source}; write it with FinalState::save")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

impl ReplicaFinal {
    /// True when the replica holds no live value: nothing, or only
    /// tombstones. A key deleted everywhere goes through both while the
    /// tombstone reaper purges it replica by replica.
    pub fn is_deleted(&self) -> bool {
        match self.kind {
            ReplicaKind::Missing => true,
            ReplicaKind::Present => self.values.is_empty(),
            _ => false,
        }
    }

    /// Builds a missing replica.
    pub fn missing() -> ReplicaFinal {
        ReplicaFinal {
            kind: ReplicaKind::Missing,
            values: Vec::new(),
            tombstones: 0,
            dots: Vec::new(),
            state: None,
            error: None,
        }
    }

    /// Builds a present replica from its canonical state bytes, filling
    /// values, tombstones and dots from the decoded state.
    pub fn from_state(bytes: Vec<u8>) -> Result<ReplicaFinal, kv_cluster::version::DecodeError> {
        use kv_cluster::version::{State, Value};

        let state = State::decode(&bytes)?;
        let mut values = Vec::new();
        let mut tombstones = 0u32;
        for value in state.values.values() {
            match value {
                Value::Data(data) => values.push(String::from_utf8_lossy(data).into_owned()),
                Value::Tombstone => tombstones += 1,
            }
        }
        Ok(ReplicaFinal {
            kind: ReplicaKind::Present,
            values,
            tombstones,
            dots: state.values.keys().map(|dot| dot.to_string()).collect(),
            state: Some(bytes),
            error: None,
        })
    }
}

impl FinalState {
    /// Writes the final state as pretty JSON to `path`.
    pub fn save(&self, path: &Path) -> Result<(), FinalStateError> {
        let text = serde_json::to_string_pretty(self).map_err(|error| FinalStateError::Write {
            path: path.to_path_buf(),
            source: std::io::Error::other(error),
        })?;
        std::fs::write(path, text).map_err(|source| FinalStateError::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads a final state written by [`FinalState::save`].
    pub fn load(path: &Path) -> Result<FinalState, FinalStateError> {
        let text = std::fs::read_to_string(path).map_err(|source| FinalStateError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| FinalStateError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Serde helpers that store optional bytes as one standard base64 string.
mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        bytes: &Option<Vec<u8>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => {
                serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
            }
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        let text: Option<String> = Option::deserialize(deserializer)?;
        text.map(|text| {
            base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map_err(|error| {
                    serde::de::Error::custom(format!("invalid base64 in replica state: {error}"))
                })
        })
        .transpose()
    }
}
