//! One run from start to verdict: the run folder, the network, the nodes,
//! the clients and the nemesis, then healing, the convergence wait, the
//! final reads, the replica snapshots and the checkers.
//!
//! Phases stamped on the history: `load` until the first fault starts,
//! `faults` until the time limit, `heal` while everything is healed and the
//! replicas are polled for convergence, `final` for the reads at R=N.
//!
//! Everything the run starts is owned by the future of [`run`]: dropping
//! it (on Ctrl-C, see `main.rs`) or returning early on an error stops the
//! nodes and deletes the network through the `Drop` guards of
//! [`Cluster`] and [`Network`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kv_client::proto::admin_client::AdminClient;
use kv_client::proto::AdminReplicaReadRequest;
use kv_client::{Client, ClientOptions};
use tonic::transport::{Channel, Endpoint};

use crate::checker::{
    self, Convergence, FinalRead, FinalState, KeyFinal, ReplicaFinal, ReplicaKind, Verdicts,
};
use crate::cluster::{Cluster, ClusterConfig, ClusterError, NodeLaunch, NodeStatus};
use crate::history::Event;
use crate::membership::{self, MembershipError};
use crate::nemesis::{self, Fault, FaultKind, ScheduleConfig, Window};
use crate::net::{self, NetError, Network};
use crate::recorder::{Recorder, RecorderError};
use crate::skew::{self, Skew, SkewError};
use crate::workload::{self, Session, WorkloadConfig, WorkloadKind};
use crate::{report, timeline};

/// Settings of one run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub workload: WorkloadKind,
    pub nemesis: Vec<FaultKind>,
    pub time_limit: Duration,
    pub seed: u64,
    /// Number of nodes that are members from the start.
    pub nodes: usize,
    /// Number of spare nodes the membership fault may join; they are
    /// created only when the nemesis includes that fault.
    pub spares: usize,
    pub replicas: u32,
    pub clients: usize,
    pub keys: usize,
    /// Parent folder of the run folder.
    pub out: PathBuf,
    pub node_bin: PathBuf,
    /// Maximum operations per client.
    pub max_ops: u64,
    /// Pause between two operations of one client.
    pub op_interval: Duration,
    /// Client request timeout.
    pub request_timeout: Duration,
    /// Coordinator quorum timeout given to the nodes.
    pub quorum_timeout: Duration,
    /// Time allowed for the replicas to converge after healing.
    pub converge_timeout: Duration,
    /// Time allowed for the cluster to form or re-form.
    pub ready_timeout: Duration,
    /// Time allowed for each wait of a membership change: for the previous
    /// change to settle, for the request to be accepted and for the change
    /// to finish.
    pub change_timeout: Duration,
    /// Bounds of the nemesis windows.
    pub fault_secs: (u64, u64),
    pub healthy_secs: (u64, u64),
}

/// Results of a finished run.
#[derive(Debug)]
pub struct RunReport {
    pub dir: PathBuf,
    pub events: Vec<Event>,
    pub final_state: FinalState,
    /// Faults asked for but skipped, with the reason.
    pub skipped: Vec<String>,
    /// Verdicts of the checkers.
    pub verdicts: Verdicts,
    /// Short text summary for the terminal.
    pub summary: String,
}

/// Errors that abort a run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot create the run folder {path}: {source}")]
    RunDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    WriteFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot find a free port on 127.0.0.1: {0}")]
    Port(std::io::Error),
    #[error("invalid run settings: {0}")]
    Invalid(String),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Skew(#[from] SkewError),
    #[error(transparent)]
    Recorder(#[from] RecorderError),
    #[error(transparent)]
    Membership(#[from] MembershipError),
    #[error("cannot connect a client to {endpoints}: {source}")]
    Client {
        endpoints: String,
        source: kv_client::Error,
    },
    #[error("cannot save the final state: {0}")]
    FinalState(String),
    #[error("the checkers failed: {0}")]
    Checker(String),
}

/// Formats a Unix time as `YYYYMMDDTHHMMSSZ` (UTC).
pub fn utc_timestamp(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian calendar,
    // eras of 400 years of 146,097 days).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Creates `<out>/<timestamp>-<workload>-<seed>`, adding `-2`, `-3`, …
/// when a run of the same second already has that folder.
fn create_run_dir(config: &RunConfig) -> Result<PathBuf, RunError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let base = format!(
        "{}-{}-{}",
        utc_timestamp(now),
        config.workload.name(),
        config.seed
    );
    std::fs::create_dir_all(&config.out).map_err(|source| RunError::RunDir {
        path: config.out.clone(),
        source,
    })?;
    for attempt in 1..1000 {
        let name = if attempt == 1 {
            base.clone()
        } else {
            format!("{base}-{attempt}")
        };
        let path = config.out.join(name);
        match std::fs::create_dir(&path) {
            Ok(()) => return Ok(path),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(source) => return Err(RunError::RunDir { path, source }),
        }
    }
    Err(RunError::RunDir {
        path: config.out.join(base),
        source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
    })
}

/// Picks `count` distinct free ports on 127.0.0.1. The listeners stay open
/// until all are chosen. Another process may still take a port before the
/// node binds it, and the node then fails to start with a clear error.
fn free_ports(count: usize) -> Result<Vec<u16>, RunError> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(RunError::Port)?;
    listeners
        .iter()
        .map(|listener| listener.local_addr().map(|address| address.port()))
        .collect::<Result<_, _>>()
        .map_err(RunError::Port)
}

fn write_file(path: &Path, text: &str) -> Result<(), RunError> {
    std::fs::write(path, text).map_err(|source| RunError::WriteFile {
        path: path.to_path_buf(),
        source,
    })
}

/// The fault tools a run has: the network for partitions and the skew
/// files.
struct Tools {
    network: Option<Network>,
    skew: Option<Skew>,
}

/// Runs the whole test and returns its report. See the module
/// documentation for the phases.
pub async fn run(config: RunConfig) -> Result<RunReport, RunError> {
    validate(&config)?;
    let dir = create_run_dir(&config)?;
    println!("run folder: {}", dir.display());

    let (tools, kinds, mut skipped) = prepare_tools(&config, &dir)?;
    let spares = spare_count(&config, &kinds);
    let mut cluster = start_cluster(&config, &dir, &tools, spares).await?;
    let addresses = cluster.member_addresses();
    println!("cluster ready: {}", addresses.join(" "));

    // Clients and nemesis.
    let recorder = Arc::new(Recorder::create(&dir.join("history.jsonl"))?);
    let fault_kinds = kinds.len();
    let windows = nemesis::schedule(&schedule_config(&config, kinds, spares));
    if windows.is_empty() && fault_kinds > 0 {
        let message = format!(
            "--time-limit {} s leaves no room for a fault window after the first healthy window (2 to 4 s) and before the final healthy one ({} s); running without faults",
            config.time_limit.as_secs(),
            config.healthy_secs.0
        );
        println!("{message}");
        skipped.push(message);
    }
    write_file(
        &dir.join("schedule.txt"),
        &nemesis::describe_schedule(&windows),
    )?;
    let client_options = ClientOptions {
        request_timeout: config.request_timeout,
        connect_timeout: Duration::from_secs(1).min(config.request_timeout),
        rotate_coordinators: false,
        ..ClientOptions::default()
    };
    let deadline = recorder.started() + config.time_limit;
    let mut client_runs = Vec::new();
    for id in 1..=config.clients {
        let client = connect(&addresses, client_options.clone()).await?;
        let session = Session::new(id, client, recorder.clone());
        let workload_config = WorkloadConfig {
            kind: config.workload,
            keys: config.keys,
            deadline,
            max_ops: config.max_ops,
            op_interval: config.op_interval,
            seed: config.seed,
        };
        client_runs.push(workload::run_client(session, workload_config));
    }
    let nemesis_run = run_nemesis(
        &windows,
        &mut cluster,
        &tools,
        &recorder,
        NemesisTiming {
            time_limit: config.time_limit,
            change_timeout: config.change_timeout,
        },
    );
    let (_, nemesis_result) = futures::join!(futures::future::join_all(client_runs), nemesis_run);
    nemesis_result?;

    // Heal everything and wait for the cluster.
    recorder.set_phase("heal");
    heal_all(&mut cluster, &tools)?;
    recorder.nemesis("heal all".into());
    cluster.wait_members_ready(config.ready_timeout).await?;
    // A membership change may still move partitions; the final reads and
    // replica snapshots need the ring it ends with.
    cluster.wait_ring_settled(config.ready_timeout).await?;

    let final_client = connect(&cluster.member_addresses(), client_options).await?;
    let names = cluster.addresses();
    let final_state = read_final_state(&config, &dir, &names, final_client, &recorder).await?;
    final_state
        .save(&dir.join("final-state.json"))
        .map_err(|error| RunError::FinalState(error.to_string()))?;

    let events = recorder.finish()?;
    drop(cluster);
    drop(tools);

    let verdicts = check_run(&dir, &config, &skipped, &events, &final_state)?;
    let summary = summarize(&config, &events, &skipped, &report::summary(&verdicts));
    write_file(&dir.join("summary.txt"), &summary)?;
    Ok(RunReport {
        dir,
        events,
        final_state,
        skipped,
        verdicts,
        summary,
    })
}

fn validate(config: &RunConfig) -> Result<(), RunError> {
    if config.nodes == 0 || config.clients == 0 || config.keys == 0 {
        return Err(RunError::Invalid(format!(
            "--nodes ({}), --clients ({}) and --keys ({}) must be at least 1",
            config.nodes, config.clients, config.keys
        )));
    }
    if config.nodes + config.spares > 200 {
        return Err(RunError::Invalid(format!(
            "--nodes {} plus --spares {} is too many; give at most 200 in all because node addresses end in 11 to 210 of one /24",
            config.nodes, config.spares
        )));
    }
    Ok(())
}

/// Decides which faults this machine can inject and sets up their tools.
/// Returns the tools, the fault kinds left and why the others were
/// skipped.
fn prepare_tools(
    config: &RunConfig,
    dir: &Path,
) -> Result<(Tools, BTreeSet<FaultKind>, Vec<String>), RunError> {
    let mut kinds: BTreeSet<FaultKind> = config.nemesis.iter().copied().collect();
    let mut skipped = Vec::new();
    let mut tools = Tools {
        network: None,
        skew: None,
    };
    if kinds.contains(&FaultKind::Partition) {
        match net::partitions_unavailable_reason() {
            None => {
                let total = config.nodes + spare_count(config, &kinds);
                tools.network = Some(Network::create(total)?)
            }
            Some(reason) => {
                let message = format!(
                    "network partitions need root and the ip and nft commands; running the other faults on 127.0.0.1 ({reason})"
                );
                println!("{message}");
                skipped.push(message);
                kinds.remove(&FaultKind::Partition);
            }
        }
    }
    if kinds.contains(&FaultKind::Skew) {
        match skew::find_libfaketime() {
            Some(library) => tools.skew = Some(Skew::new(library, dir)),
            None => {
                let message = "clock skew needs libfaketime (Debian package faketime), which is not installed; skipping the skew fault".to_string();
                println!("{message}");
                skipped.push(message);
                kinds.remove(&FaultKind::Skew);
            }
        }
    }
    Ok((tools, kinds, skipped))
}

/// Returns the number of spare nodes to create: `config.spares` when the
/// membership fault runs, else none.
fn spare_count(config: &RunConfig, kinds: &BTreeSet<FaultKind>) -> usize {
    if kinds.contains(&FaultKind::Membership) {
        config.spares
    } else {
        0
    }
}

/// Starts the members: in the run's namespaces when partitions are on, else
/// on free 127.0.0.1 ports; under libfaketime when skew is on. The `spares`
/// nodes after them get their address and namespace but are not started.
async fn start_cluster(
    config: &RunConfig,
    dir: &Path,
    tools: &Tools,
    spares: usize,
) -> Result<Cluster, RunError> {
    let total = config.nodes + spares;
    let ports = match tools.network {
        Some(_) => Vec::new(),
        None => free_ports(total)?,
    };
    let mut launches = Vec::new();
    for node in 1..=total {
        let (address, namespace) = match &tools.network {
            Some(network) => (
                network.node_address(node),
                network.namespace(node).map(str::to_string),
            ),
            None => (format!("127.0.0.1:{}", ports[node - 1]), None),
        };
        let env = match &tools.skew {
            Some(skew) => skew.env_for(node)?,
            None => Vec::new(),
        };
        launches.push(NodeLaunch {
            address,
            namespace,
            env,
        });
    }
    let cluster_config = ClusterConfig {
        node_bin: config.node_bin.clone(),
        run_dir: dir.to_path_buf(),
        replicas: config.replicas,
        // A run lasts seconds, so hinted handoff, anti-entropy, tombstone
        // reaping and partition transfers run far more often than their
        // production defaults, and repairs, purges and membership changes
        // finish within the run.
        extra_args: [
            "--request-timeout-ms",
            &config.quorum_timeout.as_millis().to_string(),
            "--message-deadline-ms",
            "2000",
            "--hint-interval-ms",
            "500",
            "--aae-interval-ms",
            "1000",
            "--peer-keepalive-ms",
            "500",
            "--reap-grace-ms",
            "4000",
            "--reap-interval-ms",
            "500",
            "--transfer-interval-ms",
            "200",
            "--transfer-max-keys-per-second",
            "200000",
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect(),
        ready_timeout: config.ready_timeout,
    };
    Ok(Cluster::start_with_spares(cluster_config, launches, config.nodes).await?)
}

fn schedule_config(
    config: &RunConfig,
    kinds: BTreeSet<FaultKind>,
    spares: usize,
) -> ScheduleConfig {
    let mut schedule = ScheduleConfig::new(
        config.seed,
        config.time_limit,
        kinds.into_iter().collect(),
        config.nodes,
    );
    schedule.spares = spares;
    // Every key keeps N distinct replicas, and a 3-node minimum leaves a
    // quorum of 2 when one of them fails.
    schedule.min_members = (config.replicas as usize).max(3);
    schedule.fault = (
        Duration::from_secs(config.fault_secs.0),
        Duration::from_secs(config.fault_secs.1),
    );
    schedule.healthy = (
        Duration::from_secs(config.healthy_secs.0),
        Duration::from_secs(config.healthy_secs.1),
    );
    schedule
}

/// Waits for convergence, reads every key at R=N, waits for the read
/// repair those reads start, and reads every replica of every key.
async fn read_final_state(
    config: &RunConfig,
    dir: &Path,
    addresses: &[String],
    client: Client,
    recorder: &Arc<Recorder>,
) -> Result<FinalState, RunError> {
    let names: HashMap<String, String> = addresses
        .iter()
        .enumerate()
        .map(|(index, address)| (address.clone(), format!("n{}", index + 1)))
        .collect();
    let keys: BTreeSet<String> = recorder
        .events()
        .iter()
        .filter_map(|event| event.key.clone())
        .collect();
    let mut inspector = Inspector::new(client.clone(), names);
    let convergence = inspector
        .wait_converged(&keys, config.converge_timeout, recorder)
        .await;
    let before = inspector.snapshot(&keys).await;
    save_json(&dir.join("replicas-after-heal.json"), &before)?;

    recorder.set_phase("final");
    let mut reader = Session::final_reader(client, recorder.clone());
    let mut final_reads = BTreeMap::new();
    for key in &keys {
        let read = match reader.read(key, Some(config.replicas)).await {
            Ok(result) => FinalRead::Values(
                result
                    .values
                    .iter()
                    .map(|value| String::from_utf8_lossy(value).into_owned())
                    .collect(),
            ),
            Err(error) => FinalRead::Error(error.to_string()),
        };
        final_reads.insert(key.clone(), read);
    }

    // Read repair runs in the background after the final reads, so give
    // it the same deadline to settle before the last snapshot.
    inspector.wait_settled(&keys, config.converge_timeout).await;
    let after = inspector.snapshot(&keys).await;
    let mut final_state = FinalState {
        keys: BTreeMap::new(),
        convergence,
    };
    for key in &keys {
        let read = final_reads
            .remove(key)
            .unwrap_or_else(|| FinalRead::Error("no final read".into()));
        let replicas = after.get(key).cloned().unwrap_or_default();
        final_state
            .keys
            .insert(key.clone(), KeyFinal { read, replicas });
    }
    Ok(final_state)
}

/// Description of the run that `results.json` stores next to the verdicts.
#[derive(Debug, serde::Serialize)]
struct RunDescription<'a> {
    workload: &'static str,
    nemesis: Vec<&'static str>,
    skipped: &'a [String],
    seed: u64,
    time_limit_secs: u64,
    nodes: usize,
    spares: usize,
    replicas: u32,
    clients: usize,
    keys: usize,
}

/// Runs the checkers and writes `results.json` and `timeline.svg`.
fn check_run(
    dir: &Path,
    config: &RunConfig,
    skipped: &[String],
    events: &[Event],
    final_state: &FinalState,
) -> Result<Verdicts, RunError> {
    let verdicts = checker::check(events, final_state);
    let description = RunDescription {
        workload: config.workload.name(),
        nemesis: config.nemesis.iter().map(|kind| kind.name()).collect(),
        skipped,
        seed: config.seed,
        time_limit_secs: config.time_limit.as_secs(),
        nodes: config.nodes,
        spares: config.spares,
        replicas: config.replicas,
        clients: config.clients,
        keys: config.keys,
    };
    report::write(dir, &verdicts, &description)
        .map_err(|error| RunError::Checker(error.to_string()))?;
    timeline::write_svg(&dir.join("timeline.svg"), events)
        .map_err(|error| RunError::Checker(error.to_string()))?;
    Ok(verdicts)
}

/// Formats the terminal summary: the run settings, the outcome counts per
/// phase and operation, then the checkers' summary.
fn summarize(
    config: &RunConfig,
    events: &[Event],
    skipped: &[String],
    checker_summary: &str,
) -> String {
    let nemesis: Vec<&str> = config.nemesis.iter().map(|kind| kind.name()).collect();
    let spares = if config.nemesis.contains(&FaultKind::Membership) {
        format!(" + {} spares", config.spares)
    } else {
        String::new()
    };
    let mut text = format!(
        "workload {} | nemesis {} | {} s | seed {} | {} nodes{}, N={} | {} clients\n",
        config.workload.name(),
        nemesis.join(","),
        config.time_limit.as_secs(),
        config.seed,
        config.nodes,
        spares,
        config.replicas,
        config.clients
    );
    for reason in skipped {
        text.push_str(&format!("skipped: {reason}\n"));
    }

    let faults = events
        .iter()
        .filter(|event| event.process == crate::recorder::NEMESIS)
        .count();
    text.push_str(&format!("nemesis events: {faults}\n"));
    text.push_str(&outcome_table(events));
    text.push_str(checker_summary);
    text.push('\n');
    text
}

/// Counts ok, fail and info completions per phase and operation kind.
fn outcome_table(events: &[Event]) -> String {
    use crate::history::Outcome;

    let mut counts: BTreeMap<String, [usize; 3]> = BTreeMap::new();
    for event in events {
        let (Some(op), Some(outcome)) = (event.op, event.outcome) else {
            continue;
        };
        let column = match outcome {
            Outcome::Ok => 0,
            Outcome::Fail => 1,
            Outcome::Info => 2,
            Outcome::Invoke => continue,
        };
        let phase = event.phase.clone().unwrap_or_default();
        let row = format!("{phase:>6} {op:?}").to_lowercase();
        counts.entry(row).or_default()[column] += 1;
    }

    let mut text = String::from("phase  op          ok  fail  info\n");
    for (row, [ok, fail, info]) in &counts {
        text.push_str(&format!("{row:<18} {ok:>5} {fail:>5} {info:>5}\n"));
    }
    text
}

fn save_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), RunError> {
    let text = serde_json::to_string_pretty(value).map_err(|error| RunError::WriteFile {
        path: path.to_path_buf(),
        source: std::io::Error::other(error),
    })?;
    write_file(path, &text)
}

async fn connect(addresses: &[String], options: ClientOptions) -> Result<Client, RunError> {
    Client::connect_with(addresses, options)
        .await
        .map_err(|source| RunError::Client {
            endpoints: addresses.join(","),
            source,
        })
}

/// Time bounds of the nemesis.
#[derive(Clone, Copy, Debug)]
struct NemesisTiming {
    time_limit: Duration,
    change_timeout: Duration,
}

/// Applies the schedule: waits for each window, starts its fault, records
/// it, waits for its end, stops it and records that. A membership change
/// instead runs until it finished, however long that takes within the
/// change timeout. Windows that a slow change delayed past the time limit
/// are dropped, because the clients have stopped by then.
async fn run_nemesis(
    windows: &[Window],
    cluster: &mut Cluster,
    tools: &Tools,
    recorder: &Recorder,
    timing: NemesisTiming,
) -> Result<(), RunError> {
    let started = recorder.started();
    for (index, window) in windows.iter().enumerate() {
        tokio::time::sleep_until((started + window.start).into()).await;
        if started.elapsed() >= timing.time_limit {
            tracing::warn!(
                dropped = windows.len() - index,
                "a membership change ran past the time limit; dropping the remaining fault windows"
            );
            break;
        }
        recorder.set_phase("faults");
        if window.fault.kind() == FaultKind::Membership {
            membership::run_change(&window.fault, cluster, recorder, timing.change_timeout).await?;
            tokio::time::sleep_until((started + window.end).into()).await;
            continue;
        }
        start_fault(&window.fault, cluster, tools)?;
        for text in window.fault.start_texts() {
            recorder.nemesis(text);
        }
        tokio::time::sleep_until((started + window.end).into()).await;
        stop_fault(&window.fault, cluster, tools)?;
        for text in window.fault.stop_texts() {
            recorder.nemesis(text);
        }
    }
    Ok(())
}

fn start_fault(fault: &Fault, cluster: &mut Cluster, tools: &Tools) -> Result<(), RunError> {
    match fault {
        Fault::Partition(partition) => {
            if let Some(network) = &tools.network {
                network.apply(&partition.blocked(cluster.len()))?;
            }
        }
        Fault::Kill { node } => cluster.kill(*node)?,
        Fault::Pause { node } => cluster.pause(*node)?,
        Fault::Skew { offsets } => {
            if let Some(skew) = &tools.skew {
                for (node, secs) in offsets {
                    skew.set(*node, *secs)?;
                }
            }
        }
        // Membership changes run in `membership::run_change`.
        Fault::Join { .. } | Fault::Decommission { .. } | Fault::Remove { .. } => {}
    }
    Ok(())
}

fn stop_fault(fault: &Fault, cluster: &mut Cluster, tools: &Tools) -> Result<(), RunError> {
    match fault {
        Fault::Partition(_) => {
            if let Some(network) = &tools.network {
                network.heal()?;
            }
        }
        Fault::Kill { node } => cluster.restart_now(*node)?,
        Fault::Pause { node } => cluster.resume(*node)?,
        Fault::Skew { offsets } => {
            if let Some(skew) = &tools.skew {
                for (node, _) in offsets {
                    skew.set(*node, 0)?;
                }
            }
        }
        Fault::Join { .. } | Fault::Decommission { .. } | Fault::Remove { .. } => {}
    }
    Ok(())
}

/// Restarts killed nodes, resumes paused ones, clears every drop rule and
/// resets every clock. Spares, and nodes that left or were removed, stay
/// down.
fn heal_all(cluster: &mut Cluster, tools: &Tools) -> Result<(), RunError> {
    for node in 1..=cluster.len() {
        match cluster.status(node) {
            Some(NodeStatus::Killed) => cluster.restart_now(node)?,
            Some(NodeStatus::Paused) => cluster.resume(node)?,
            _ => {}
        }
        if let Some(skew) = &tools.skew {
            skew.set(node, 0)?;
        }
    }
    if let Some(network) = &tools.network {
        network.heal()?;
    }
    Ok(())
}

/// Pause between two convergence polls.
const CONVERGE_POLL: Duration = Duration::from_millis(250);

/// Reads replica states with the admin `ReplicaRead` call, which returns
/// one node's local state without quorum or repair.
struct Inspector {
    client: Client,
    /// Node address to its name (`n1`, …).
    names: HashMap<String, String>,
    channels: HashMap<String, Channel>,
}

/// Replica states per key, per node name.
type Snapshot = BTreeMap<String, BTreeMap<String, ReplicaFinal>>;

impl Inspector {
    fn new(client: Client, names: HashMap<String, String>) -> Inspector {
        Inspector {
            client,
            names,
            channels: HashMap::new(),
        }
    }

    /// Addresses of the replicas of `key` in the current ring.
    async fn replicas(&self, key: &str) -> Vec<String> {
        let snapshot = match self.client.cached_ring() {
            Some(snapshot) => snapshot,
            None => match self.client.ring().await {
                Ok(snapshot) => snapshot,
                Err(_) => return self.names.keys().cloned().collect(),
            },
        };
        snapshot
            .ring
            .preference_list_for_key(key.as_bytes())
            .into_iter()
            .filter_map(|node| snapshot.address_of(node).map(str::to_string))
            .collect()
    }

    fn channel(&mut self, address: &str) -> Result<Channel, String> {
        if let Some(channel) = self.channels.get(address) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|error| error.to_string())?;
        let channel = endpoint
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .connect_lazy();
        self.channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    /// Reads one replica's state of `key`.
    async fn read_replica(&mut self, address: &str, key: &str) -> ReplicaFinal {
        let unreachable = |error: String| ReplicaFinal {
            kind: ReplicaKind::Unreachable,
            values: Vec::new(),
            tombstones: 0,
            dots: Vec::new(),
            state: None,
            error: Some(error),
        };
        let channel = match self.channel(address) {
            Ok(channel) => channel,
            Err(error) => return unreachable(error),
        };
        let mut admin = AdminClient::new(channel)
            .max_decoding_message_size(kv_client::DEFAULT_MAX_MESSAGE_BYTES);
        let request = AdminReplicaReadRequest {
            key: key.as_bytes().to_vec(),
        };
        let reply = match admin.replica_read(request).await {
            Ok(reply) => reply.into_inner(),
            Err(status) => return unreachable(format!("{}: {}", status.code(), status.message())),
        };
        use kv_client::proto::ReplicaState as Kind;
        match reply.kind() {
            Kind::Missing => ReplicaFinal::missing(),
            Kind::Unknown => ReplicaFinal {
                kind: ReplicaKind::Unknown,
                ..ReplicaFinal::missing()
            },
            Kind::Present if !reply.state.is_empty() => {
                match ReplicaFinal::from_state(reply.state.clone()) {
                    Ok(replica) => replica,
                    Err(error) => unreachable(format!("replica state does not decode: {error}")),
                }
            }
            Kind::Present => ReplicaFinal {
                kind: ReplicaKind::Present,
                values: reply
                    .values
                    .iter()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .collect(),
                tombstones: reply.tombstones,
                dots: reply.dots.clone(),
                state: None,
                error: None,
            },
            Kind::Unspecified => unreachable(format!(
                "node {address} returned an unspecified replica state"
            )),
        }
    }

    /// Reads every replica of every key.
    async fn snapshot(&mut self, keys: &BTreeSet<String>) -> Snapshot {
        let mut snapshot = Snapshot::new();
        for key in keys {
            let mut replicas = BTreeMap::new();
            for address in self.replicas(key).await {
                let name = self
                    .names
                    .get(&address)
                    .cloned()
                    .unwrap_or_else(|| address.clone());
                replicas.insert(name, self.read_replica(&address, key).await);
            }
            snapshot.insert(key.clone(), replicas);
        }
        snapshot
    }

    /// Polls until every key's replicas hold identical states or the
    /// timeout; keys already seen converged are not read again.
    async fn wait_settled(
        &mut self,
        keys: &BTreeSet<String>,
        timeout: Duration,
    ) -> (bool, Duration) {
        let started = Instant::now();
        let mut pending: Vec<String> = keys.iter().cloned().collect();
        loop {
            let mut still = Vec::new();
            for key in pending {
                let mut states = Vec::new();
                for address in self.replicas(&key).await {
                    states.push(self.read_replica(&address, &key).await);
                }
                if !converged(&states) {
                    still.push(key);
                }
            }
            pending = still;
            if pending.is_empty() {
                return (true, started.elapsed());
            }
            if started.elapsed() >= timeout {
                tracing::warn!(
                    keys = pending.len(),
                    "replicas did not converge before the deadline"
                );
                return (false, started.elapsed());
            }
            tokio::time::sleep(CONVERGE_POLL).await;
        }
    }

    /// Waits for convergence and records how it ended.
    async fn wait_converged(
        &mut self,
        keys: &BTreeSet<String>,
        timeout: Duration,
        recorder: &Recorder,
    ) -> Convergence {
        let (done, waited) = self.wait_settled(keys, timeout).await;
        Convergence {
            converged: done,
            waited_ms: waited.as_secs_f64() * 1000.0,
            deadline_ms: timeout.as_secs_f64() * 1000.0,
            converged_at_ms: done.then(|| recorder.now_ms()),
        }
    }
}

/// True when every replica is reachable and all hold the same state.
fn converged(states: &[ReplicaFinal]) -> bool {
    let Some(first) = states.first() else {
        return true;
    };
    // Deleted everywhere: the reaper may be half-way through its purge.
    if states.iter().all(ReplicaFinal::is_deleted) {
        return true;
    }
    states.iter().all(|state| {
        state.kind != ReplicaKind::Unreachable
            && state.kind == first.kind
            && state.state == first.state
            && state.values == first.values
            && state.dots == first.dots
            && state.tombstones == first.tombstones
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_timestamp_known_dates() {
        assert_eq!(utc_timestamp(0), "19700101T000000Z");
        assert_eq!(utc_timestamp(951_782_400), "20000229T000000Z");
        assert_eq!(utc_timestamp(1_796_424_245), "20261204T224405Z");
    }

    #[test]
    fn converged_needs_equal_reachable_states() {
        let present = ReplicaFinal {
            kind: ReplicaKind::Present,
            values: vec!["v1-1".into()],
            tombstones: 0,
            dots: vec!["a@1.1".into()],
            state: None,
            error: None,
        };
        assert!(converged(&[present.clone(), present.clone()]));
        assert!(!converged(&[present.clone(), ReplicaFinal::missing()]));
        let unreachable = ReplicaFinal {
            kind: ReplicaKind::Unreachable,
            error: Some("down".into()),
            ..ReplicaFinal::missing()
        };
        assert!(!converged(&[unreachable.clone(), unreachable]));
    }

    #[test]
    fn converged_counts_deleted_everywhere() {
        let tombstone = ReplicaFinal {
            kind: ReplicaKind::Present,
            values: Vec::new(),
            tombstones: 1,
            dots: vec!["a@1.2".into()],
            state: None,
            error: None,
        };
        assert!(converged(&[tombstone.clone(), ReplicaFinal::missing()]));
        let live = ReplicaFinal {
            values: vec!["v1-1".into()],
            tombstones: 0,
            ..tombstone.clone()
        };
        assert!(!converged(&[tombstone, live, ReplicaFinal::missing()]));
    }
}
