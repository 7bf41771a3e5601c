//! `kv-jepsen`: runs a ringkv cluster under faults and checks the history.
//!
//! Exit codes: 0 when the checkers found no anomaly, 1 when they found one,
//! 2 when the run itself failed (bad flags, the cluster did not start, a
//! fault could not be injected), 130 after Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use kv_jepsen::cluster::default_node_bin;
use kv_jepsen::nemesis::FaultKind;
use kv_jepsen::runner::{self, RunConfig};
use kv_jepsen::workload::WorkloadKind;

/// Fault-injection harness of ringkv: starts real kv-node processes, drives
/// concurrent clients, injects faults on a seeded schedule, records every
/// operation and checks the history.
#[derive(Parser, Debug)]
#[command(name = "kv-jepsen", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one test and write its run folder.
    Run(RunArgs),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Workload the clients run.
    #[arg(long, value_enum, default_value = "set")]
    workload: WorkloadKind,

    /// Comma-separated fault kinds the nemesis chooses from (partition,
    /// kill, pause, skew, membership), or "none" for a run without faults.
    /// Partitions need root and the ip and nft commands; skew needs
    /// libfaketime; membership joins --spares nodes, decommissions members
    /// and removes killed ones.
    #[arg(long, alias = "faults", value_parser = parse_nemesis, default_value = "partition,kill,pause,skew")]
    nemesis: NemesisKinds,

    /// Length of the client and fault phase, in seconds.
    #[arg(long, default_value_t = 60)]
    time_limit: u64,

    /// Seed of the fault schedule and the clients' choices; the same seed
    /// gives the same schedule.
    #[arg(long, default_value_t = 7)]
    seed: u64,

    /// Number of kv-node processes.
    #[arg(long, default_value_t = 5)]
    nodes: usize,

    /// Number of spare nodes, started only when the membership fault joins
    /// them.
    #[arg(long, default_value_t = 2)]
    spares: usize,

    /// Replicas per key (N) of the cluster.
    #[arg(long = "n", default_value_t = 3)]
    replicas: u32,

    /// Number of concurrent clients.
    #[arg(long, default_value_t = 5)]
    clients: usize,

    /// Number of keys: shared keys of the set workload, keys per client of
    /// the register workload (the delete workload uses fresh keys).
    #[arg(long, default_value_t = 3)]
    keys: usize,

    /// Maximum operations per client.
    #[arg(long, default_value_t = 5000)]
    max_ops: u64,

    /// Pause between two operations of one client, in milliseconds.
    #[arg(long, default_value_t = 50)]
    op_interval_ms: u64,

    /// Client request timeout, in milliseconds; a write that times out is
    /// recorded as indeterminate (info).
    #[arg(long, default_value_t = 3000)]
    request_timeout_ms: u64,

    /// Time a coordinator waits for its quorum, in milliseconds (the
    /// nodes' --request-timeout-ms); keep it below --request-timeout-ms.
    #[arg(long, default_value_t = 2000)]
    quorum_timeout_ms: u64,

    /// Time allowed for the replicas to converge after healing, in seconds.
    #[arg(long, default_value_t = 20)]
    converge_timeout_secs: u64,

    /// Time allowed for the cluster to form or re-form, in seconds.
    #[arg(long, default_value_t = 60)]
    ready_timeout_secs: u64,

    /// Time allowed for each wait of a membership change (the previous
    /// change settling, the request, the change finishing), in seconds.
    #[arg(long, default_value_t = 60)]
    change_timeout_secs: u64,

    /// Shortest and longest fault window, in seconds.
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"], default_values_t = [5, 10])]
    fault_secs: Vec<u64>,

    /// Shortest and longest healthy window between faults, in seconds.
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"], default_values_t = [5, 10])]
    healthy_secs: Vec<u64>,

    /// Folder that receives the run folder
    /// `<timestamp>-<workload>-<seed>/`.
    #[arg(long, default_value = "jepsen-runs")]
    out: PathBuf,

    /// The kv-node binary; by default kv-node next to this executable,
    /// else target/debug/kv-node of the workspace.
    #[arg(long)]
    node_bin: Option<PathBuf>,
}

/// The fault kinds of `--nemesis`.
#[derive(Clone, Debug)]
struct NemesisKinds(Vec<FaultKind>);

fn parse_nemesis(text: &str) -> Result<NemesisKinds, String> {
    let text = text.trim();
    if text.is_empty() || text == "none" {
        return Ok(NemesisKinds(Vec::new()));
    }
    let mut kinds = Vec::new();
    for word in text.split(',') {
        let kind = <FaultKind as clap::ValueEnum>::from_str(word.trim(), true).map_err(|_| {
            format!("invalid fault kind {word:?}; expected partition, kill, pause, skew, membership or none")
        })?;
        kinds.push(kind);
    }
    Ok(NemesisKinds(kinds))
}

fn pair(values: &[u64], name: &str) -> Result<(u64, u64), String> {
    match values {
        [low, high] if low <= high && *low > 0 => Ok((*low, *high)),
        _ => Err(format!(
            "invalid --{name} {values:?}: give MIN and MAX seconds with 0 < MIN <= MAX"
        )),
    }
}

fn run_config(args: RunArgs) -> Result<RunConfig, String> {
    if args.time_limit == 0 {
        return Err("invalid --time-limit 0: give at least 1 second".into());
    }
    if args.replicas == 0 || args.replicas as usize > args.nodes {
        return Err(format!(
            "invalid --n {}: must be between 1 and --nodes ({})",
            args.replicas, args.nodes
        ));
    }
    let node_bin = args.node_bin.unwrap_or_else(default_node_bin);
    if !node_bin.is_file() {
        return Err(format!(
            "kv-node binary not found at {}; build it with `cargo build -p kv-node` or pass --node-bin",
            node_bin.display()
        ));
    }
    Ok(RunConfig {
        workload: args.workload,
        nemesis: args.nemesis.0,
        time_limit: Duration::from_secs(args.time_limit),
        seed: args.seed,
        nodes: args.nodes,
        spares: args.spares,
        replicas: args.replicas,
        clients: args.clients,
        keys: args.keys,
        out: args.out,
        node_bin,
        max_ops: args.max_ops,
        op_interval: Duration::from_millis(args.op_interval_ms),
        request_timeout: Duration::from_millis(args.request_timeout_ms.max(1)),
        quorum_timeout: Duration::from_millis(args.quorum_timeout_ms.max(1)),
        converge_timeout: Duration::from_secs(args.converge_timeout_secs),
        ready_timeout: Duration::from_secs(args.ready_timeout_secs),
        change_timeout: Duration::from_secs(args.change_timeout_secs.max(1)),
        fault_secs: pair(&args.fault_secs, "fault-secs")?,
        healthy_secs: pair(&args.healthy_secs, "healthy-secs")?,
    })
}

/// Logs to standard error. `RUST_LOG` sets the filter. The default is
/// `info` for the harness, `warn` for most libraries and `error` for
/// kv-client, because its connection warnings during faults are expected
/// and the history records every failed request.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,kv_client=error,kv_jepsen=info")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let Command::Run(args) = cli.command;
    let config = match run_config(args) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("kv-jepsen: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kv-jepsen: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(async move {
        // Dropping the run future on Ctrl-C runs the Drop guards that stop
        // the nodes and delete the network.
        tokio::select! {
            result = runner::run(config) => match result {
                Ok(report) => {
                    print!("{}", report.summary);
                    println!("results: {}", report.dir.display());
                    if report.verdicts.valid {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(error) => {
                    eprintln!("kv-jepsen: run failed: {error}");
                    ExitCode::from(2)
                }
            },
            _ = tokio::signal::ctrl_c() => {
                eprintln!("kv-jepsen: interrupted; stopped the nodes of the run and deleted its network");
                ExitCode::from(130)
            }
        }
    })
}
