//! The operation history of a run: one JSON object per line, in the order
//! events happened.
//!
//! A client operation appears twice: an `invoke` event when the client sends
//! it and a completion with the same `op_id`: `ok` (applied and
//! acknowledged), `fail` (certainly not applied, e.g. INVALID_ARGUMENT or a
//! quorum check that refused before writing) or `info` (indeterminate: a
//! timeout or a quorum failure after writing started, so the write may or
//! may not have been applied). The nemesis records its faults as events of
//! process `nemesis`.
//!
//! Values are unique per run (every write writes a value no other write
//! wrote), so a value names the write that produced it.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::Path;

/// What happened to an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// The kind of a client operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// A get; `read` holds the sibling values returned.
    Read,
    /// A put of `value`.
    Write,
    /// A delete (a put of a tombstone).
    Delete,
    /// Set workload: read, union the siblings, add the element `value`,
    /// write back. Recorded as one operation.
    Add,
}

/// One line of the history.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the history, from 0.
    pub index: u64,
    /// Milliseconds since the run started (monotonic clock of the harness).
    pub time_ms: f64,
    /// `client-N` or `nemesis`.
    pub process: String,
    /// Pairs an invoke with its completion; 0 for nemesis events.
    pub op_id: u64,
    pub outcome: Option<Outcome>,
    pub op: Option<OpKind>,
    pub key: Option<String>,
    /// The value written (write), the element added (add).
    pub value: Option<String>,
    /// Values returned by a read (siblings, tombstones excluded), or the
    /// values of the set read by an add before it wrote.
    pub read: Option<Vec<String>>,
    /// Address of the node the client sent the request to first.
    pub node: Option<String>,
    /// Base64 context sent with a write or delete; empty for a blind one.
    pub context_sent: Option<String>,
    /// Base64 context returned by the operation.
    pub context_returned: Option<String>,
    /// The values the sent context covers: exactly what the client had seen
    /// in the reply that returned that context (a read's values, or a put's
    /// new value and siblings). A write legitimately supersedes these and
    /// nothing else.
    pub covers: Option<Vec<String>>,
    /// Error message of a fail or info completion.
    pub error: Option<String>,
    /// Nemesis events: the fault started or stopped, e.g.
    /// "partition halves [n1 n2] [n3 n4 n5]", "kill n3", "heal".
    pub fault: Option<String>,
    /// Phase of the run: "load", "faults", "heal", "final".
    pub phase: Option<String>,
}

/// Appends events to a JSON-lines file and keeps them in memory.
pub struct HistoryWriter {
    file: std::io::BufWriter<std::fs::File>,
    next_index: u64,
}

impl HistoryWriter {
    pub fn create(path: &Path) -> std::io::Result<HistoryWriter> {
        Ok(HistoryWriter {
            file: std::io::BufWriter::new(std::fs::File::create(path)?),
            next_index: 0,
        })
    }

    /// Numbers and appends one event; returns it with its index set.
    pub fn append(&mut self, mut event: Event) -> std::io::Result<Event> {
        event.index = self.next_index;
        self.next_index += 1;
        serde_json::to_writer(&mut self.file, &event)?;
        self.file.write_all(b"\n")?;
        Ok(event)
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Reads a history written by [`HistoryWriter`].
pub fn read_history(path: &Path) -> anyhow::Result<Vec<Event>> {
    let file = std::fs::File::open(path)?;
    let mut events = Vec::new();
    for (number, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let event: Event = serde_json::from_str(&line).map_err(|error| {
            anyhow::anyhow!(
                "{}:{}: invalid history line: {error}",
                path.display(),
                number + 1
            )
        })?;
        events.push(event);
    }
    Ok(events)
}
