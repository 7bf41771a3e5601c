//! Quick fault runs against real `kv-node` processes: one run per fault
//! kind, each with 3 nodes and a 15 s time limit (25 to 30 s with
//! membership changes, which need time to move partitions), asserting the
//! checkers' verdicts.
//!
//! The runs go one at a time (a shared lock), because several clusters at
//! once on a small machine turn slowness into timeouts. Each run stops its
//! nodes and deletes its network when it ends, also when it fails. Run
//! folders stay under the cargo target folder for inspection.
//!
//! Partition runs need root and the `ip` and `nft` commands; without them
//! they print why and return. Skew runs need libfaketime in the same way.
//! The tests need the `kv-node` binary: `cargo build -p kv-node` (the
//! README's test command builds it first).

use std::path::PathBuf;
use std::time::Duration;

use kv_jepsen::checker::{AnomalyKind, Verdicts};
use kv_jepsen::cluster::default_node_bin;
use kv_jepsen::nemesis::FaultKind;
use kv_jepsen::runner::{self, RunConfig, RunReport};
use kv_jepsen::workload::WorkloadKind;

/// Serialises the runs of this file.
static ONE_RUN_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Upper bound of one run, setup and checks included.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn config(workload: WorkloadKind, fault: FaultKind, seed: u64) -> RunConfig {
    let node_bin = default_node_bin();
    assert!(
        node_bin.is_file(),
        "kv-node not found at {}; run `cargo build -p kv-node` first",
        node_bin.display()
    );
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("jepsen-runs");
    RunConfig {
        workload,
        nemesis: vec![fault],
        time_limit: Duration::from_secs(15),
        seed,
        nodes: 3,
        spares: 2,
        replicas: 3,
        clients: 3,
        keys: 3,
        out,
        node_bin,
        max_ops: 2000,
        op_interval: Duration::from_millis(50),
        request_timeout: Duration::from_secs(3),
        quorum_timeout: Duration::from_secs(2),
        converge_timeout: Duration::from_secs(10),
        ready_timeout: Duration::from_secs(60),
        change_timeout: Duration::from_secs(40),
        fault_secs: (4, 6),
        // The last fault heals at least 3 s before the time limit, so the
        // failure detectors see the nodes up again before the convergence
        // wait, and handoff, anti-entropy or read repair catch up the
        // replicas that missed writes.
        healthy_secs: (3, 4),
    }
}

async fn run(workload: WorkloadKind, fault: FaultKind, seed: u64) -> RunReport {
    run_config(config(workload, fault, seed)).await
}

/// Runs `config`, at most [`RUN_TIMEOUT`], one run at a time.
async fn run_config(config: RunConfig) -> RunReport {
    let _serial = ONE_RUN_AT_A_TIME.lock().await;
    let workload = config.workload.name();
    let faults: Vec<&str> = config.nemesis.iter().map(|kind| kind.name()).collect();
    let faults = faults.join(",");
    let report = tokio::time::timeout(RUN_TIMEOUT, runner::run(config))
        .await
        .unwrap_or_else(|_| panic!("{workload} run with {faults} faults exceeded {RUN_TIMEOUT:?}"))
        .unwrap_or_else(|error| panic!("{workload} run with {faults} faults failed: {error}"));
    println!("{}", report.summary);
    println!("run folder: {}", report.dir.display());
    report
}

/// Returns why partitions cannot run here, after printing it.
fn partitions_skipped() -> bool {
    match kv_jepsen::net::partitions_unavailable_reason() {
        Some(reason) => {
            println!(
                "skipped: network partitions need root and the ip and nft commands ({reason})"
            );
            true
        }
        None => false,
    }
}

fn skew_skipped() -> bool {
    if kv_jepsen::skew::find_libfaketime().is_none() {
        println!("skipped: clock skew needs libfaketime (Debian package faketime)");
        return true;
    }
    false
}

fn count(verdicts: &Verdicts, kind: AnomalyKind) -> usize {
    verdicts
        .anomalies()
        .filter(|anomaly| anomaly.kind == kind)
        .count()
}

/// Asserts no safety anomaly: nothing lost, no phantom, no resurrection,
/// no dot conflict. Convergence is asserted separately by each test.
fn assert_safe(report: &RunReport) {
    let verdicts = &report.verdicts;
    for kind in [
        AnomalyKind::LostWrite,
        AnomalyKind::LostSupersede,
        AnomalyKind::ResurrectedDelete,
        AnomalyKind::PhantomValue,
        AnomalyKind::DotConflict,
    ] {
        assert_eq!(
            count(verdicts, kind),
            0,
            "{kind:?} in {}:\n{}",
            report.dir.display(),
            report.summary
        );
    }
}

/// Asserts that the run had client operations and the fault happened.
fn assert_ran(report: &RunReport, fault_word: &str) {
    assert!(
        report.verdicts.operations > 50,
        "too few operations:\n{}",
        report.summary
    );
    let faults = report
        .events
        .iter()
        .filter(|event| {
            event
                .fault
                .as_deref()
                .is_some_and(|text| text.starts_with(fault_word))
        })
        .count();
    assert!(
        faults > 0,
        "no '{fault_word}' nemesis event in {}",
        report.dir.display()
    );
}

fn assert_valid(report: &RunReport) {
    assert!(
        report.verdicts.valid,
        "expected a valid run:\n{}",
        report.summary
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_set_valid() {
    let report = run(WorkloadKind::Set, FaultKind::Kill, 1).await;
    assert_ran(&report, "kill");
    assert_safe(&report);
    // Clients read the few set keys all the time, so read repair brings a
    // restarted node up to date before the convergence wait ends.
    assert_valid(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_register_valid() {
    let report = run(WorkloadKind::Register, FaultKind::Pause, 2).await;
    assert_ran(&report, "pause");
    assert_safe(&report);
    assert_valid(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skew_set_valid() {
    if skew_skipped() {
        return;
    }
    let report = run(WorkloadKind::Set, FaultKind::Skew, 3).await;
    assert_ran(&report, "skew");
    assert_safe(&report);
    assert_valid(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_set_valid() {
    if partitions_skipped() {
        return;
    }
    let report = run(WorkloadKind::Set, FaultKind::Partition, 4).await;
    assert_ran(&report, "partition");
    assert_safe(&report);
    assert_valid(&report);

    // The run deleted its namespaces (named after this process's PID).
    let prefix = format!("kvn{}", std::process::id() % 1_000_000);
    let output = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list runs");
    let namespaces = String::from_utf8_lossy(&output.stdout);
    assert!(
        !namespaces.lines().any(|line| line.starts_with(&prefix)),
        "namespaces left behind:\n{namespaces}"
    );
}

// The delete workload never reads a finished key again, so a replica that
// missed writes or deletes during a fault catches up only by hinted
// handoff or anti-entropy, and deleted keys are purged by the reaper within
// the run. These runs must converge with no lost write and no resurrected
// delete.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_delete_valid() {
    let report = run(WorkloadKind::Delete, FaultKind::Kill, 5).await;
    assert_ran(&report, "kill");
    assert_safe(&report);
    assert_valid(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_delete_valid() {
    let report = run(WorkloadKind::Delete, FaultKind::Pause, 6).await;
    assert_ran(&report, "pause");
    assert_safe(&report);
    assert_valid(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_delete_valid() {
    if partitions_skipped() {
        return;
    }
    let report = run(WorkloadKind::Delete, FaultKind::Partition, 7).await;
    assert_ran(&report, "partition");
    assert_safe(&report);
    assert_valid(&report);
}

// Membership runs: 3 members and 2 spares. The first change is always a
// join, because 3 members is the minimum. Each seed below was chosen so
// that its schedule also makes a member leave. Seed 2 joins n4 and removes
// n2, and seed 12 joins n4, decommissions n2 and joins n5.

/// Returns the run settings of a membership run of `time_limit` seconds.
fn membership_config(
    workload: WorkloadKind,
    faults: Vec<FaultKind>,
    seed: u64,
    time_limit: u64,
) -> RunConfig {
    let mut config = config(workload, FaultKind::Membership, seed);
    config.nemesis = faults;
    config.time_limit = Duration::from_secs(time_limit);
    config
}

/// Returns the end events (`joined`, `left`, `removed`) of the changes
/// that finished.
fn finished_changes(report: &RunReport) -> Vec<String> {
    report
        .events
        .iter()
        .filter_map(|event| event.fault.clone())
        .filter(|text| {
            ["joined ", "left ", "removed "]
                .iter()
                .any(|verb| text.starts_with(verb))
        })
        .collect()
}

/// Asserts that a node joined and another one left or was removed.
fn assert_changes(report: &RunReport) {
    let changes = finished_changes(report);
    assert!(
        changes.iter().any(|text| text.starts_with("joined ")),
        "no join finished in {}: {changes:?}",
        report.dir.display()
    );
    assert!(
        changes
            .iter()
            .any(|text| text.starts_with("left ") || text.starts_with("removed ")),
        "no member left in {}: {changes:?}",
        report.dir.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_set_valid() {
    let config = membership_config(WorkloadKind::Set, vec![FaultKind::Membership], 2, 25);
    let report = run_config(config).await;
    assert_ran(&report, "join");
    assert_ran(&report, "remove");
    assert_changes(&report);
    assert_safe(&report);
    assert_valid(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_delete_valid() {
    let config = membership_config(WorkloadKind::Delete, vec![FaultKind::Membership], 12, 25);
    let report = run_config(config).await;
    assert_ran(&report, "join");
    assert_ran(&report, "decommission");
    assert_changes(&report);
    assert_safe(&report);
    assert_valid(&report);
}

// Seed 18 with these three kinds: partition isolate [n3] [n1 n2], kill n2,
// join n4 right after n2's restart, then partition halves [n1 n2] [n3 n4]
// with the joined node on one side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_kill_partition_set_valid() {
    if partitions_skipped() {
        return;
    }
    let faults = vec![FaultKind::Membership, FaultKind::Kill, FaultKind::Partition];
    let config = membership_config(WorkloadKind::Set, faults, 18, 30);
    let report = run_config(config).await;
    assert_ran(&report, "kill");
    assert_ran(&report, "partition");
    assert_ran(&report, "joined");
    assert_safe(&report);
    assert_valid(&report);
}
