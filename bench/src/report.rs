//! Latency recording and the final report.
//!
//! Each worker task owns a [`Recorder`] with one HDR histogram of successful
//! latencies per operation kind and counts of failed operations per kind and
//! error kind. Histograms store microseconds with 3 significant digits from
//! 1 µs to 60 s, and longer latencies are recorded as 60 s. The run merges the recorders
//! into a [`Report`], printed as a text table or as JSON.
//!
//! Throughput counts successful operations only. Failed operations appear
//! in their own counters and in the error rate, never in the ops/s figure,
//! and their latencies are not in the histograms.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::workload::OpKind;

/// Highest latency a histogram tracks, in microseconds (60 s).
const MAX_TRACKED_MICROS: u64 = 60_000_000;

/// Latencies and errors seen by one worker.
#[derive(Clone, Debug)]
pub struct Recorder {
    histograms: Vec<Histogram<u64>>,
    /// Failed operations by (operation kind, error kind).
    errors: BTreeMap<(OpKind, String), u64>,
    /// Reads that found no value, which are successes but worth seeing.
    missing_reads: u64,
    /// Successful operations as the workload issued them; the read and the
    /// update inside a read-modify-write are not counted here.
    completed_ok: u64,
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder::new()
    }
}

impl Recorder {
    /// Creates an empty recorder.
    pub fn new() -> Recorder {
        let histograms = OpKind::ALL
            .iter()
            .map(|_| {
                Histogram::new_with_bounds(1, MAX_TRACKED_MICROS, 3)
                    .expect("constant histogram bounds are valid")
            })
            .collect();
        Recorder {
            histograms,
            errors: BTreeMap::new(),
            missing_reads: 0,
            completed_ok: 0,
        }
    }

    /// Records one successful operation of `kind` that took `latency`.
    pub fn record_success(&mut self, kind: OpKind, latency: Duration) {
        self.completed_ok += 1;
        self.record_part(kind, latency);
    }

    /// Records the latency of a successful step of a larger operation (the
    /// read or the update of a read-modify-write) without counting an
    /// operation.
    pub fn record_part(&mut self, kind: OpKind, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.histograms[kind.index()].saturating_record(micros.clamp(1, MAX_TRACKED_MICROS));
    }

    /// Counts one failed operation of `kind` under `error_kind`.
    pub fn record_error(&mut self, kind: OpKind, error_kind: &str) {
        *self
            .errors
            .entry((kind, error_kind.to_string()))
            .or_default() += 1;
    }

    /// Counts one read that returned no value.
    pub fn record_missing_read(&mut self) {
        self.missing_reads += 1;
    }

    /// Adds the counts of `other` to this recorder.
    pub fn merge(&mut self, other: &Recorder) {
        for (mine, theirs) in self.histograms.iter_mut().zip(&other.histograms) {
            mine.add(theirs)
                .expect("histograms with equal bounds always merge");
        }
        for (key, count) in &other.errors {
            *self.errors.entry(key.clone()).or_default() += count;
        }
        self.missing_reads += other.missing_reads;
        self.completed_ok += other.completed_ok;
    }
}

/// Latency percentiles and counts of one operation kind.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OpReport {
    /// Operation kind, for example `read` or `update`.
    pub op: &'static str,
    /// Successful operations.
    pub count: u64,
    /// Failed operations.
    pub errors: u64,
    /// Successful operations per second of the measured time.
    pub ops_per_sec: f64,
    /// Latency percentiles and maximum of the successful operations, in
    /// microseconds; 0 when `count` is 0.
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// One error kind of one operation kind, with its count.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ErrorCount {
    pub op: &'static str,
    /// The error kind, for example `quorum_failed` (a `kv_client::Error`
    /// variant) or, against etcd, a gRPC status code such as `unavailable`.
    pub kind: String,
    pub count: u64,
}

/// Settings of the run, repeated in the report so a saved report explains
/// itself.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunSettings {
    pub workload: String,
    /// Store measured: `ringkv` or `etcd`.
    pub target: String,
    pub endpoints: Vec<String>,
    pub records: u64,
    /// First key number that `load` inserts.
    pub insert_start: u64,
    pub value_bytes: usize,
    pub concurrency: usize,
    pub distribution: String,
    /// Target rate in operations per second; 0 means unlimited.
    pub target_rate: u64,
    pub seed: u64,
    /// Read quorum sent with each get; `None` uses the cluster default.
    pub r: Option<u32>,
    /// Write quorum sent with each put; `None` uses the cluster default.
    pub w: Option<u32>,
}

/// The final report of one run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub settings: RunSettings,
    /// Measured time from the first request to the last reply, in seconds.
    pub elapsed_secs: f64,
    /// Why the run ended: `operations`, `duration` or `records`.
    pub stopped_by: String,
    /// Successful operations of every kind.
    pub total_ok: u64,
    /// Failed operations of every kind.
    pub total_errors: u64,
    /// Successful operations per second.
    pub throughput_ops_per_sec: f64,
    /// Reads that returned no value (counted as successful).
    pub missing_reads: u64,
    /// One entry per operation kind that ran, in a fixed order.
    pub operations: Vec<OpReport>,
    pub errors: Vec<ErrorCount>,
}

/// Converts a count over `elapsed` to a rate per second.
fn per_second(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

impl Report {
    /// Builds the report from the merged `recorder` of a run that took
    /// `elapsed`.
    pub fn new(
        settings: RunSettings,
        recorder: &Recorder,
        elapsed: Duration,
        stopped_by: &str,
    ) -> Report {
        let mut operations = Vec::new();
        for kind in OpKind::ALL {
            let histogram = &recorder.histograms[kind.index()];
            let errors: u64 = recorder
                .errors
                .iter()
                .filter(|((op, _), _)| *op == kind)
                .map(|(_, count)| count)
                .sum();
            if histogram.is_empty() && errors == 0 {
                continue;
            }
            operations.push(OpReport {
                op: kind.name(),
                count: histogram.len(),
                errors,
                ops_per_sec: per_second(histogram.len(), elapsed),
                p50_us: histogram.value_at_quantile(0.50),
                p90_us: histogram.value_at_quantile(0.90),
                p99_us: histogram.value_at_quantile(0.99),
                p999_us: histogram.value_at_quantile(0.999),
                max_us: histogram.max(),
            });
        }

        let errors: Vec<ErrorCount> = recorder
            .errors
            .iter()
            .map(|((op, kind), count)| ErrorCount {
                op: op.name(),
                kind: kind.clone(),
                count: *count,
            })
            .collect();

        let total_ok = recorder.completed_ok;
        let total_errors: u64 = errors.iter().map(|error| error.count).sum();

        Report {
            settings,
            elapsed_secs: elapsed.as_secs_f64(),
            stopped_by: stopped_by.to_string(),
            total_ok,
            total_errors,
            throughput_ops_per_sec: per_second(total_ok, elapsed),
            missing_reads: recorder.missing_reads,
            operations,
            errors,
        }
    }

    /// Formats the report as a text table with latencies in milliseconds.
    pub fn to_text(&self) -> String {
        let s = &self.settings;
        let mut text = String::new();
        let _ = writeln!(
            text,
            "{} | workload {} | records {} | value {} B | concurrency {} | {} keys | seed {}",
            s.target, s.workload, s.records, s.value_bytes, s.concurrency, s.distribution, s.seed
        );
        let _ = writeln!(
            text,
            "{:.1} s, stopped by {}: {} ok, {} failed, {:.0} ops/s (successful only)",
            self.elapsed_secs,
            self.stopped_by,
            self.total_ok,
            self.total_errors,
            self.throughput_ops_per_sec
        );
        let _ = writeln!(
            text,
            "{:<18} {:>9} {:>7} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "op", "ok", "failed", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
        );
        for op in &self.operations {
            // A kind with no success has no latencies; show dashes, not 0.
            let ms = |micros: u64| {
                if op.count == 0 {
                    "-".to_string()
                } else {
                    format!("{:.2}", micros as f64 / 1000.0)
                }
            };
            let _ = writeln!(
                text,
                "{:<18} {:>9} {:>7} {:>9.0} {:>8} {:>8} {:>8} {:>8} {:>8}",
                op.op,
                op.count,
                op.errors,
                op.ops_per_sec,
                ms(op.p50_us),
                ms(op.p90_us),
                ms(op.p99_us),
                ms(op.p999_us),
                ms(op.max_us)
            );
        }
        if self.missing_reads > 0 {
            let _ = writeln!(text, "reads that found no value: {}", self.missing_reads);
        }
        for error in &self.errors {
            let _ = writeln!(text, "errors: {} {} x{}", error.op, error.kind, error.count);
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> RunSettings {
        RunSettings {
            workload: "a".into(),
            target: "ringkv".into(),
            endpoints: vec!["127.0.0.1:7401".into()],
            records: 10,
            insert_start: 0,
            value_bytes: 100,
            concurrency: 4,
            distribution: "zipfian".into(),
            target_rate: 0,
            seed: 1,
            r: None,
            w: Some(2),
        }
    }

    fn sample_report() -> Report {
        let mut recorder = Recorder::new();
        for micros in 1..=1000u64 {
            recorder.record_success(OpKind::Read, Duration::from_micros(micros));
        }
        recorder.record_success(OpKind::Update, Duration::from_millis(3));
        recorder.record_error(OpKind::Update, "quorum_failed");
        recorder.record_error(OpKind::Update, "quorum_failed");
        recorder.record_error(OpKind::Read, "deadline_exceeded");
        Report::new(settings(), &recorder, Duration::from_secs(2), "duration")
    }

    #[test]
    fn report_json_has_expected_fields() {
        let json = serde_json::to_value(sample_report()).expect("report serializes");
        for field in [
            "settings",
            "elapsed_secs",
            "stopped_by",
            "total_ok",
            "total_errors",
            "throughput_ops_per_sec",
            "missing_reads",
            "operations",
            "errors",
        ] {
            assert!(json.get(field).is_some(), "missing field {field}");
        }
        assert_eq!(json["settings"]["workload"], "a");
        assert_eq!(json["settings"]["target"], "ringkv");
        assert_eq!(json["settings"]["insert_start"], 0);
        assert_eq!(json["settings"]["w"], 2);
        assert!(json["settings"]["r"].is_null());

        let read = &json["operations"][0];
        assert_eq!(read["op"], "read");
        for field in [
            "count",
            "errors",
            "ops_per_sec",
            "p50_us",
            "p90_us",
            "p99_us",
            "p999_us",
            "max_us",
        ] {
            assert!(
                read[field].is_number(),
                "operations[0].{field} is not a number"
            );
        }
        assert_eq!(json["errors"][0]["kind"], "deadline_exceeded");
        assert_eq!(json["errors"][1]["op"], "update");
        assert_eq!(json["errors"][1]["count"], 2);
    }

    #[test]
    fn report_counts_errors_apart_from_throughput() {
        let report = sample_report();
        assert_eq!(report.total_ok, 1001);
        assert_eq!(report.total_errors, 3);
        assert!((report.throughput_ops_per_sec - 500.5).abs() < 1e-9);
        let update = &report.operations[1];
        assert_eq!(update.op, "update");
        assert_eq!(update.count, 1);
        assert_eq!(update.errors, 2);
    }

    #[test]
    fn report_percentiles_in_microseconds() {
        let read = &sample_report().operations[0];
        // HDR histograms with 3 significant digits round within 0.1%.
        assert!((499..=501).contains(&read.p50_us), "p50 {}", read.p50_us);
        assert!((989..=991).contains(&read.p99_us), "p99 {}", read.p99_us);
        assert!((999..=1001).contains(&read.max_us), "max {}", read.max_us);
    }

    #[test]
    fn report_rmw_counts_once() {
        let mut recorder = Recorder::new();
        for _ in 0..10 {
            recorder.record_part(OpKind::Read, Duration::from_micros(100));
            recorder.record_part(OpKind::Update, Duration::from_micros(100));
            recorder.record_success(OpKind::ReadModifyWrite, Duration::from_micros(200));
        }
        for _ in 0..5 {
            recorder.record_success(OpKind::Read, Duration::from_micros(100));
        }
        let report = Report::new(settings(), &recorder, Duration::from_secs(1), "operations");
        // 5 plain reads and 10 read-modify-writes; their inner reads and
        // updates are not counted twice.
        assert_eq!(report.total_ok, 15);
    }

    #[test]
    fn report_text_dashes_without_successes() {
        let mut recorder = Recorder::new();
        recorder.record_error(OpKind::Read, "no_reachable_node");
        let report = Report::new(settings(), &recorder, Duration::from_secs(1), "operations");
        let text = report.to_text();
        let read_line = text
            .lines()
            .find(|line| line.starts_with("read"))
            .expect("a line for reads");
        assert!(read_line.contains(" - "), "line {read_line:?}");
        assert!(
            text.contains("errors: read no_reachable_node x1"),
            "text {text:?}"
        );
    }

    #[test]
    fn report_skips_kinds_that_did_not_run() {
        let report = sample_report();
        let ops: Vec<&str> = report.operations.iter().map(|op| op.op).collect();
        assert_eq!(ops, vec!["read", "update"]);
    }
}
