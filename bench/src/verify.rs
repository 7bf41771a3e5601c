//! The `verify` workload: counts how many loaded keys one node stores.
//!
//! It reads each key of `user{insert_start} .. user{insert_start+records-1}`
//! from a single node with the Admin ReplicaRead RPC, which returns that
//! node's local copy without a quorum and without read repair. The check
//! therefore does not change what the node stores, so it can watch hinted
//! handoff and anti-entropy bring a returning node up to date.
//!
//! With `--until-complete` it repeats passes over the keys still missing,
//! `--poll-interval-ms` apart, until every key is present or `--max-secs`
//! passes, and reports the time from its start to the end of the pass that
//! found the last key. That time is exact only to one pass plus one poll
//! interval.
//!
//! NOTE: every key counts, so a node that is not a replica of some keys
//! (N smaller than the node count) never reaches complete.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kv_client::{Client, ReplicaState};
use serde::Serialize;

use crate::target::{Ringkv, Target};
use crate::workload::key_name;

/// Everything a verify run needs besides the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyPlan {
    /// Node whose local copies are read, host:port or node id.
    pub replica: String,
    /// First key number to check.
    pub insert_start: u64,
    /// Number of keys to check.
    pub records: u64,
    /// Replica reads in flight at once.
    pub concurrency: usize,
    /// Repeat passes until every key is present, instead of one pass.
    pub until_complete: bool,
    /// Pause between passes.
    pub poll_interval: Duration,
    /// Time after which no new replica read starts.
    pub time_limit: Duration,
}

/// State of one key on the probed node, as a replica read returns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyState {
    /// The node stores at least one live value for the key.
    Present,
    /// The node stores nothing for the key, or only tombstones.
    Missing,
    /// The node's record of the key failed its checksum.
    Unknown,
}

/// Reads one node's local copy of a key. [`ReplicaProbe`] reads over the
/// network, and tests use an in-memory store.
pub trait Probe: Send + Sync + 'static {
    /// Returns the state of `key` on the probed node, or the report name
    /// and message of the error.
    fn probe(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<KeyState, (&'static str, String)>> + Send;
}

/// Reads keys from one ringkv node with Admin ReplicaRead.
pub struct ReplicaProbe {
    pub client: Client,
    /// Node id or host:port of the node to read.
    pub replica: String,
}

impl Probe for ReplicaProbe {
    async fn probe(&self, key: &str) -> Result<KeyState, (&'static str, String)> {
        match self.client.replica_read(&self.replica, key).await {
            Ok(read) => Ok(match read.state {
                ReplicaState::Present if !read.values.is_empty() => KeyState::Present,
                ReplicaState::Present | ReplicaState::Missing => KeyState::Missing,
                ReplicaState::Unknown => KeyState::Unknown,
            }),
            Err(error) => Err((Ringkv::error_kind(&error), error.to_string())),
        }
    }
}

/// Outcome of a verify run, printed as text or JSON.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub workload: &'static str,
    pub replica: String,
    pub insert_start: u64,
    pub records: u64,
    /// Keys the node stores a live value for at the end of the run.
    pub present: u64,
    /// Keys that the last pass read and found absent or tombstoned.
    pub missing: u64,
    /// Keys whose record on the node failed its checksum in the last pass.
    pub unknown: u64,
    /// Keys whose replica read failed in the last pass.
    pub failed: u64,
    /// Keys that the last pass did not read because the time limit passed.
    pub unchecked: u64,
    /// Failed replica reads of the whole run, by error kind.
    pub errors: BTreeMap<String, u64>,
    /// True when every key is present.
    pub complete: bool,
    pub passes: u64,
    /// Time from the start to the end of the last pass, in seconds.
    pub elapsed_secs: f64,
    /// `complete`, `single-pass` or `max-secs`: what ended the run.
    pub stopped_by: &'static str,
}

impl VerifyReport {
    /// Renders the report as a few lines of text.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        let last = self.insert_start + self.records.saturating_sub(1);
        let _ = writeln!(
            text,
            "verify {}: {} of {} keys present (user{} .. user{last})",
            self.replica, self.present, self.records, self.insert_start
        );
        let _ = writeln!(
            text,
            "last pass: {} missing, {} unknown, {} failed, {} unchecked",
            self.missing, self.unknown, self.failed, self.unchecked
        );
        for (kind, count) in &self.errors {
            let _ = writeln!(text, "failed replica reads ({kind}): {count}");
        }
        let _ = writeln!(
            text,
            "complete: {} after {:.1} s and {} passes (stopped by {})",
            self.complete, self.elapsed_secs, self.passes, self.stopped_by
        );
        text
    }
}

/// Keys not yet present after one pass, and what the pass found for them.
#[derive(Debug, Default)]
struct PassOutcome {
    not_present: Vec<u64>,
    missing: u64,
    unknown: u64,
    failed: u64,
    unchecked: u64,
}

/// Runs `plan` with `probe` and returns the report.
pub async fn run<P: Probe>(probe: P, plan: VerifyPlan) -> VerifyReport {
    let start = Instant::now();
    let deadline = start + plan.time_limit;
    let probe = Arc::new(probe);
    let errors = Arc::new(Mutex::new(BTreeMap::new()));
    let mut pending: Vec<u64> = (plan.insert_start..plan.insert_start + plan.records).collect();
    let mut passes = 0;

    let (last_pass, stopped_by) = loop {
        let pass = run_pass(&probe, &pending, plan.concurrency, deadline, &errors).await;
        passes += 1;
        let present = plan.records - pass.not_present.len() as u64;
        eprintln!(
            "[{:>5.1} s] pass {passes}: {present} of {} keys present on {}",
            start.elapsed().as_secs_f64(),
            plan.records,
            plan.replica
        );
        pending.clone_from(&pass.not_present);

        if pending.is_empty() {
            break (pass, "complete");
        }
        if !plan.until_complete {
            break (pass, "single-pass");
        }
        if Instant::now() + plan.poll_interval >= deadline {
            break (pass, "max-secs");
        }
        tokio::time::sleep(plan.poll_interval).await;
    };

    let errors = errors.lock().map(|map| map.clone()).unwrap_or_default();
    VerifyReport {
        workload: "verify",
        replica: plan.replica,
        insert_start: plan.insert_start,
        records: plan.records,
        present: plan.records - pending.len() as u64,
        missing: last_pass.missing,
        unknown: last_pass.unknown,
        failed: last_pass.failed,
        unchecked: last_pass.unchecked,
        errors,
        complete: pending.is_empty(),
        passes,
        elapsed_secs: start.elapsed().as_secs_f64(),
        stopped_by,
    }
}

/// Reads every key of `keys` with `concurrency` tasks, each with one read
/// in flight. No read starts after `deadline`, and the keys left count as
/// unchecked and stay pending.
async fn run_pass<P: Probe>(
    probe: &Arc<P>,
    keys: &[u64],
    concurrency: usize,
    deadline: Instant,
    errors: &Arc<Mutex<BTreeMap<String, u64>>>,
) -> PassOutcome {
    let keys: Arc<Vec<u64>> = Arc::new(keys.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(keys.len()).max(1) {
        let probe = Arc::clone(probe);
        let keys = Arc::clone(&keys);
        let next = Arc::clone(&next);
        let errors = Arc::clone(errors);
        tasks.spawn(async move { check_keys(&*probe, &keys, &next, deadline, &errors).await });
    }

    let mut outcome = PassOutcome::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(task) => {
                outcome.not_present.extend(task.not_present);
                outcome.missing += task.missing;
                outcome.unknown += task.unknown;
                outcome.failed += task.failed;
            }
            Err(error) => tracing::error!(%error, "a verify task panicked; its keys stay pending"),
        }
    }

    // Keys that no task took before the deadline.
    let claimed = next.load(Ordering::Relaxed).min(keys.len());
    outcome.unchecked = (keys.len() - claimed) as u64;
    outcome.not_present.extend_from_slice(&keys[claimed..]);
    outcome.not_present.sort_unstable();
    outcome
}

/// Takes keys from the shared index until none is left or the deadline
/// passes, and reads each one.
async fn check_keys<P: Probe>(
    probe: &P,
    keys: &[u64],
    next: &AtomicUsize,
    deadline: Instant,
    errors: &Mutex<BTreeMap<String, u64>>,
) -> PassOutcome {
    let mut outcome = PassOutcome::default();
    let mut logged_kinds = HashSet::new();
    loop {
        if Instant::now() >= deadline {
            return outcome;
        }
        let index = next.fetch_add(1, Ordering::Relaxed);
        let Some(&number) = keys.get(index) else {
            return outcome;
        };
        match probe.probe(&key_name(number)).await {
            Ok(KeyState::Present) => {}
            Ok(KeyState::Missing) => {
                outcome.missing += 1;
                outcome.not_present.push(number);
            }
            Ok(KeyState::Unknown) => {
                outcome.unknown += 1;
                outcome.not_present.push(number);
            }
            Err((kind, message)) => {
                outcome.failed += 1;
                outcome.not_present.push(number);
                if logged_kinds.insert(kind) {
                    tracing::warn!(key = %key_name(number), kind, %message, "replica read failed");
                }
                if let Ok(mut counts) = errors.lock() {
                    *counts.entry(kind.to_string()).or_insert(0) += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::AtomicU64;

    /// An in-memory node: key `user{i}` becomes present on the probe that
    /// reads it for the `appear_after[i]`-th time, and some keys always
    /// fail or read as unknown.
    struct FakeNode {
        appear_after: HashMap<String, u64>,
        reads: Mutex<HashMap<String, u64>>,
        failing: HashSet<String>,
        unknown: HashSet<String>,
        total_reads: AtomicU64,
    }

    impl FakeNode {
        fn new(appear_after: &[(u64, u64)]) -> FakeNode {
            FakeNode {
                appear_after: appear_after
                    .iter()
                    .map(|&(number, reads)| (key_name(number), reads))
                    .collect(),
                reads: Mutex::new(HashMap::new()),
                failing: HashSet::new(),
                unknown: HashSet::new(),
                total_reads: AtomicU64::new(0),
            }
        }
    }

    impl Probe for Arc<FakeNode> {
        async fn probe(&self, key: &str) -> Result<KeyState, (&'static str, String)> {
            self.total_reads.fetch_add(1, Ordering::Relaxed);
            if self.failing.contains(key) {
                return Err(("unavailable", format!("{key} is unreachable")));
            }
            if self.unknown.contains(key) {
                return Ok(KeyState::Unknown);
            }
            let mut reads = self.reads.lock().expect("reads lock");
            let count = reads.entry(key.to_string()).or_insert(0);
            *count += 1;
            match self.appear_after.get(key) {
                Some(&needed) if *count >= needed => Ok(KeyState::Present),
                Some(_) => Ok(KeyState::Missing),
                None => Ok(KeyState::Missing),
            }
        }
    }

    fn plan(records: u64, until_complete: bool) -> VerifyPlan {
        VerifyPlan {
            replica: "127.0.0.1:1".to_string(),
            insert_start: 10,
            records,
            concurrency: 4,
            until_complete,
            poll_interval: Duration::from_millis(5),
            time_limit: Duration::from_secs(10),
        }
    }

    #[tokio::test]
    async fn verify_single_pass_counts_missing() {
        let node = Arc::new(FakeNode::new(&[(10, 1), (11, 1), (12, 2)]));
        let report = run(Arc::clone(&node), plan(4, false)).await;
        assert_eq!(report.present, 2);
        assert_eq!(report.missing, 2);
        assert_eq!(report.passes, 1);
        assert!(!report.complete);
        assert_eq!(report.stopped_by, "single-pass");
        assert_eq!(node.total_reads.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn verify_until_complete_rereads_pending() {
        let keys: Vec<(u64, u64)> = (10..110).map(|n| (n, 1 + n % 3)).collect();
        let node = Arc::new(FakeNode::new(&keys));
        let report = run(Arc::clone(&node), plan(100, true)).await;
        assert!(report.complete, "{report:?}");
        assert_eq!(report.present, 100);
        assert_eq!(report.missing, 0);
        assert_eq!(report.passes, 3);
        assert_eq!(report.stopped_by, "complete");
        // Each key is read once per pass until it appears: 1 + 2 + 3 reads
        // per group of three keys, and only present keys leave the list.
        let expected_reads: u64 = keys.iter().map(|&(_, reads)| reads).sum();
        assert_eq!(node.total_reads.load(Ordering::Relaxed), expected_reads);
    }

    #[tokio::test]
    async fn verify_stops_at_time_limit() {
        let mut node = FakeNode::new(&[(10, 1)]);
        node.failing.insert(key_name(11));
        node.unknown.insert(key_name(12));
        let node = Arc::new(node);
        let report = run(
            Arc::clone(&node),
            VerifyPlan {
                time_limit: Duration::from_millis(200),
                ..plan(3, true)
            },
        )
        .await;
        assert!(!report.complete);
        assert_eq!(report.stopped_by, "max-secs");
        assert_eq!(report.present, 1);
        assert_eq!(report.missing, 0);
        // The deadline may pass inside the last pass, leaving user11 or
        // user12 unchecked there; every earlier pass read both.
        assert_eq!(
            report.failed + report.unknown + report.unchecked,
            2,
            "{report:?}"
        );
        assert!(report.failed <= 1 && report.unknown <= 1, "{report:?}");
        assert!(report.passes >= 2, "passes {}", report.passes);
        let failed_reads = report.errors.get("unavailable").copied().unwrap_or(0);
        assert!(
            failed_reads == report.passes || failed_reads + 1 == report.passes,
            "{failed_reads} failed reads in {} passes",
            report.passes
        );
        assert!(report.elapsed_secs < 5.0, "elapsed {}", report.elapsed_secs);
    }

    #[tokio::test]
    async fn verify_report_text_names_counts() {
        let node = Arc::new(FakeNode::new(&[(10, 1)]));
        let text = run(node, plan(2, false)).await.to_text();
        assert!(
            text.contains("1 of 2 keys present (user10 .. user11)"),
            "{text}"
        );
        assert!(text.contains("1 missing"), "{text}");
        assert!(text.contains("stopped by single-pass"), "{text}");
    }
}
