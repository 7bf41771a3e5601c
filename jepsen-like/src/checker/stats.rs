//! Availability (share of completed operations that were ok) per phase and
//! per fault window, and latency percentiles per operation kind.
//!
//! An operation belongs to the phase and window in which it was invoked.
//! Operations that never completed are counted as `incomplete` and left out
//! of the ok share and the latencies.

use super::operations::{faulty_intervals, FaultWindow, Operation};
use crate::history::{OpKind, Outcome};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Operation counts by outcome and the share that was ok.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Share {
    pub completed: u64,
    pub ok: u64,
    pub fail: u64,
    pub info: u64,
    /// Invoked but never completed.
    pub incomplete: u64,
    /// `ok / completed`, `None` when nothing completed.
    pub ok_share: Option<f64>,
}

impl Share {
    fn add(&mut self, operation: &Operation<'_>) {
        if operation.completion.is_none() {
            self.incomplete += 1;
            return;
        }
        self.completed += 1;
        match operation.outcome() {
            Outcome::Ok => self.ok += 1,
            Outcome::Fail => self.fail += 1,
            Outcome::Info | Outcome::Invoke => self.info += 1,
        }
        self.ok_share = Some(self.ok as f64 / self.completed as f64);
    }
}

/// A stretch of the run in which the set of active faults did not change
/// between "some" and "none".
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowShare {
    /// True when at least one fault was active.
    pub faulty: bool,
    /// The faults that were active, joined by "; ", or "healthy".
    pub label: String,
    pub start_ms: f64,
    pub end_ms: f64,
    pub share: Share,
}

/// Availability of the whole run, per phase and per window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Availability {
    pub overall: Share,
    /// Phase name (from the history, "none" when missing) to its share.
    pub phases: BTreeMap<String, Share>,
    /// All operations invoked while some fault was active.
    pub during_faults: Share,
    /// All operations invoked while no fault was active.
    pub healthy: Share,
    pub windows: Vec<WindowShare>,
}

/// Latency percentiles of one operation kind, from invoke to completion.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Computes availability per phase and per window.
pub fn availability(
    operations: &[Operation<'_>],
    windows: &[FaultWindow],
    end_of_run_ms: f64,
) -> Availability {
    let faulty = faulty_intervals(windows, end_of_run_ms);
    let mut result = Availability {
        windows: split_windows(&faulty, windows, end_of_run_ms),
        ..Availability::default()
    };

    for operation in operations {
        let invoked = operation.invoke.time_ms;
        result.overall.add(operation);
        result
            .phases
            .entry(operation.phase().unwrap_or("none").to_string())
            .or_default()
            .add(operation);
        if faulty
            .iter()
            .any(|&(start, end)| invoked >= start && invoked < end)
        {
            result.during_faults.add(operation);
        } else {
            result.healthy.add(operation);
        }
        if let Some(window) = result
            .windows
            .iter_mut()
            .find(|window| invoked >= window.start_ms && invoked < window.end_ms)
        {
            window.share.add(operation);
        } else if let Some(last) = result.windows.last_mut() {
            // Invoked at or after the end of the last window.
            last.share.add(operation);
        }
    }
    result
}

/// Splits `[0, end_of_run_ms)` into alternating healthy and faulty windows.
fn split_windows(
    faulty: &[(f64, f64)],
    windows: &[FaultWindow],
    end_of_run_ms: f64,
) -> Vec<WindowShare> {
    let mut result = Vec::new();
    let mut cursor = 0.0f64;
    let mut push = |faulty: bool, label: String, start_ms: f64, end_ms: f64| {
        if end_ms > start_ms {
            result.push(WindowShare {
                faulty,
                label,
                start_ms,
                end_ms,
                share: Share::default(),
            });
        }
    };
    for &(start, end) in faulty {
        push(false, "healthy".to_string(), cursor, start);
        let labels: Vec<&str> = windows
            .iter()
            .filter(|window| {
                window.start_ms < end && window.end_ms.unwrap_or(end_of_run_ms) > start
            })
            .map(|window| window.label.as_str())
            .collect();
        push(true, labels.join("; "), start, end);
        cursor = end;
    }
    push(
        false,
        "healthy".to_string(),
        cursor,
        end_of_run_ms.max(cursor),
    );
    result
}

/// Largest latency recorded exactly, in microseconds (one hour). Longer
/// latencies are recorded as one hour.
const MAX_LATENCY_MICROS: u64 = 3_600_000_000;

/// Computes latency percentiles per operation kind over completed operations.
pub fn latencies(operations: &[Operation<'_>]) -> BTreeMap<String, Latency> {
    let mut histograms: BTreeMap<&'static str, Histogram<u64>> = BTreeMap::new();
    for operation in operations {
        let Some(completion) = operation.completion else {
            continue;
        };
        // Microseconds, at least 1 so that instant replies are recorded.
        let micros = ((completion.time_ms - operation.invoke.time_ms) * 1000.0).max(1.0) as u64;
        let histogram = histograms
            .entry(kind_label(operation.kind))
            .or_insert_with(|| {
                Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 3)
                    .expect("bounds 1..=1 hour with 3 significant figures are valid")
            });
        histogram.saturating_record(micros);
    }

    histograms
        .into_iter()
        .map(|(kind, histogram)| {
            let millis = |micros: u64| micros as f64 / 1000.0;
            let latency = Latency {
                count: histogram.len(),
                p50_ms: millis(histogram.value_at_quantile(0.50)),
                p90_ms: millis(histogram.value_at_quantile(0.90)),
                p99_ms: millis(histogram.value_at_quantile(0.99)),
                max_ms: millis(histogram.max()),
            };
            (kind.to_string(), latency)
        })
        .collect()
}

/// Returns the history's name of an operation kind.
pub fn kind_label(kind: OpKind) -> &'static str {
    match kind {
        OpKind::Read => "read",
        OpKind::Write => "write",
        OpKind::Delete => "delete",
        OpKind::Add => "add",
    }
}
