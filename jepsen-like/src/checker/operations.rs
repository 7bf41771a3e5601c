//! Pairs the events of a history into operations and the nemesis events
//! into fault windows.
//!
//! An operation is an `invoke` event and the completion (`ok`, `fail` or
//! `info`) of the same process with the same `op_id`. An invoke without a
//! completion (the run ended first) is indeterminate, like `info`. A field
//! missing on the invoke is taken from the completion.
//!
//! Fault windows come from the `fault` text of `nemesis` events, whose first
//! word is a verb:
//!
//! | starts a fault        | ends it                    |
//! |-----------------------|----------------------------|
//! | `partition ...`       | `heal` (every partition)   |
//! | `kill NODE`           | `restart NODE`, `start NODE` |
//! | `pause NODE`          | `resume NODE`              |
//! | `skew NODE ...`       | `unskew NODE`, `skew NODE 0` |
//! | `join NODE`           | `joined NODE`              |
//! | `decommission NODE`   | `left NODE`                |
//! | `remove NODE`         | `removed NODE`             |
//!
//! `heal all` ends every fault. Repeating a verb for a fault that is already
//! active (an invoke and its completion both carrying the text) changes
//! nothing. Any other verb is a point event: it is listed but opens no
//! window.

use crate::history::{Event, OpKind, Outcome};
use std::collections::BTreeMap;

/// One client operation: its invoke and, when it completed, its completion.
#[derive(Clone, Debug)]
pub struct Operation<'a> {
    pub kind: OpKind,
    pub key: &'a str,
    pub invoke: &'a Event,
    pub completion: Option<&'a Event>,
}

impl<'a> Operation<'a> {
    /// Returns the outcome, `info` when the operation never completed.
    pub fn outcome(&self) -> Outcome {
        match self.completion.and_then(|event| event.outcome) {
            Some(Outcome::Invoke) | None => Outcome::Info,
            Some(outcome) => outcome,
        }
    }

    /// Returns the value written, or the element added.
    pub fn value(&self) -> Option<&'a str> {
        self.field(|event| event.value.as_deref())
    }

    /// Returns the values the operation read (a read's siblings or an add's set).
    pub fn read(&self) -> Option<&'a [String]> {
        self.completion
            .and_then(|event| event.read.as_deref())
            .or(self.invoke.read.as_deref())
    }

    /// Returns the values that the sent context covers.
    pub fn covers(&self) -> Option<&'a [String]> {
        self.field(|event| event.covers.as_deref())
    }

    /// Returns whether the operation sent a non-empty context.
    pub fn sent_context(&self) -> bool {
        self.field(|event| event.context_sent.as_deref())
            .is_some_and(|context| !context.is_empty())
    }

    pub fn phase(&self) -> Option<&'a str> {
        self.field(|event| event.phase.as_deref())
    }

    /// Returns the completion time in milliseconds, `f64::INFINITY` when
    /// the operation never completed.
    pub fn completed_ms(&self) -> f64 {
        self.completion.map_or(f64::INFINITY, |event| event.time_ms)
    }

    /// Returns the event indexes of the invoke and, if any, the completion.
    pub fn indexes(&self) -> Vec<u64> {
        let mut indexes = vec![self.invoke.index];
        if let Some(completion) = self.completion {
            indexes.push(completion.index);
        }
        indexes
    }

    fn field<T: ?Sized>(&self, get: impl Fn(&'a Event) -> Option<&'a T>) -> Option<&'a T> {
        get(self.invoke).or_else(|| self.completion.and_then(&get))
    }
}

/// The operations of a history and what could not be paired.
#[derive(Debug, Default)]
pub struct Operations<'a> {
    /// Operations in invoke order.
    pub operations: Vec<Operation<'a>>,
    /// Descriptions of events that could not be used, e.g. a completion
    /// without an invoke.
    pub unpaired: Vec<String>,
}

/// Pairs the client events of `events` into operations.
pub fn pair_operations(events: &[Event]) -> Operations<'_> {
    let mut result = Operations::default();
    let mut open: BTreeMap<(&str, u64), usize> = BTreeMap::new();

    for event in events {
        if event.process == NEMESIS {
            continue;
        }
        match event.outcome {
            Some(Outcome::Invoke) => {
                let (Some(kind), Some(key)) = (event.op, event.key.as_deref()) else {
                    result.unpaired.push(format!(
                        "event {}: invoke without an op kind or key",
                        event.index
                    ));
                    continue;
                };
                open.insert(
                    (event.process.as_str(), event.op_id),
                    result.operations.len(),
                );
                result.operations.push(Operation {
                    kind,
                    key,
                    invoke: event,
                    completion: None,
                });
            }
            Some(_) => match open.remove(&(event.process.as_str(), event.op_id)) {
                Some(position) => result.operations[position].completion = Some(event),
                None => result.unpaired.push(format!(
                    "event {}: completion of op {} of {} without an open invoke",
                    event.index, event.op_id, event.process
                )),
            },
            None => result
                .unpaired
                .push(format!("event {}: no outcome", event.index)),
        }
    }
    result
}

/// Process name of the fault injector's events.
pub const NEMESIS: &str = "nemesis";

/// One fault, from the nemesis event that started it to the one that ended it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FaultWindow {
    /// The `fault` text of the starting event.
    pub label: String,
    pub start_ms: f64,
    /// `None` when the fault was still active at the end of the history.
    pub end_ms: Option<f64>,
    pub start_index: u64,
    pub end_index: Option<u64>,
}

/// Returns the fault windows of `events` in start order. See the module
/// documentation for the verbs.
pub fn fault_windows(events: &[Event]) -> Vec<FaultWindow> {
    let mut windows: Vec<FaultWindow> = Vec::new();
    // Fault identity ("partition", "kill n3") to the index of its open window.
    let mut active: BTreeMap<String, usize> = BTreeMap::new();

    for event in events {
        if event.process != NEMESIS {
            continue;
        }
        let Some(text) = event.fault.as_deref() else {
            continue;
        };
        let words: Vec<&str> = text.split_whitespace().collect();
        let verb = words.first().map(|word| word.to_ascii_lowercase());
        let target = words.get(1).copied().unwrap_or("");
        let close = |identity: &dyn Fn(&str) -> bool,
                     windows: &mut Vec<FaultWindow>,
                     active: &mut BTreeMap<String, usize>| {
            let ended: Vec<String> = active.keys().filter(|id| identity(id)).cloned().collect();
            for id in ended {
                if let Some(position) = active.remove(&id) {
                    windows[position].end_ms = Some(event.time_ms);
                    windows[position].end_index = Some(event.index);
                }
            }
        };

        let opened = match verb.as_deref() {
            Some("partition") => Some("partition".to_string()),
            Some("kill") | Some("pause") | Some("join") | Some("decommission") | Some("remove") => {
                Some(format!("{} {target}", words[0].to_ascii_lowercase()))
            }
            Some("skew") if !is_zero_skew(words.get(2).copied()) => Some(format!("skew {target}")),
            Some("skew") | Some("unskew") => {
                let id = format!("skew {target}");
                close(&|active_id| active_id == id, &mut windows, &mut active);
                None
            }
            Some("heal") if target.eq_ignore_ascii_case("all") => {
                close(&|_| true, &mut windows, &mut active);
                None
            }
            Some("heal") => {
                close(&|id| id == "partition", &mut windows, &mut active);
                None
            }
            Some("restart") | Some("start") => {
                let id = format!("kill {target}");
                close(&|active_id| active_id == id, &mut windows, &mut active);
                None
            }
            Some("resume") => {
                let id = format!("pause {target}");
                close(&|active_id| active_id == id, &mut windows, &mut active);
                None
            }
            Some(end @ ("joined" | "left" | "removed")) => {
                let start = match end {
                    "joined" => "join",
                    "left" => "decommission",
                    _ => "remove",
                };
                let id = format!("{start} {target}");
                close(&|active_id| active_id == id, &mut windows, &mut active);
                None
            }
            _ => None,
        };

        if let Some(id) = opened {
            if active.contains_key(&id) && id != "partition" {
                continue;
            }
            // A new partition replaces the previous one, as `ip`/`nft` rules do.
            if id == "partition" {
                close(
                    &|active_id| active_id == "partition",
                    &mut windows,
                    &mut active,
                );
            }
            active.insert(id, windows.len());
            windows.push(FaultWindow {
                label: text.to_string(),
                start_ms: event.time_ms,
                end_ms: None,
                start_index: event.index,
                end_index: None,
            });
        }
    }
    windows
}

/// Returns whether a skew amount such as `0`, `+0s` or `-0ms` is zero.
fn is_zero_skew(amount: Option<&str>) -> bool {
    let Some(amount) = amount else {
        return false;
    };
    let digits: String = amount
        .trim_start_matches(['+', '-'])
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    digits.parse::<f64>().is_ok_and(|number| number == 0.0)
}

/// Merges the windows into disjoint `(start_ms, end_ms)` intervals during
/// which at least one fault was active. Open windows end at `end_of_run_ms`.
pub fn faulty_intervals(windows: &[FaultWindow], end_of_run_ms: f64) -> Vec<(f64, f64)> {
    let mut intervals: Vec<(f64, f64)> = windows
        .iter()
        .map(|window| (window.start_ms, window.end_ms.unwrap_or(end_of_run_ms)))
        .collect();
    intervals.sort_by(|a, b| a.0.total_cmp(&b.0));

    let mut merged: Vec<(f64, f64)> = Vec::new();
    for (start, end) in intervals {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}
