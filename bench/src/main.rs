//! `kv-bench`: YCSB-style load generator for ringkv.
//!
//! Runs one workload through `kv-client` against the nodes in
//! `--endpoints`: a pure-insert `load` phase, YCSB core workloads A, B, C, D
//! and F, or bare `Ping` RPCs. It prints a progress line to stderr about once
//! per second and ends with throughput and latency percentiles per operation
//! kind, as a text table or as JSON (`--json`).
//!
//! Every run is bounded: `load` by `--records`, the others by
//! `--operations` or `--duration-secs`, and all of them by `--max-secs`.
//! It sends traffic only to the endpoints given and to the node addresses
//! those nodes report in their ring.
//!
//! Exit status: 0 when at least one operation succeeded, 1 when none did
//! or the client could not start, 2 for invalid flags.

mod report;
mod runner;
mod workload;
mod zipf;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use kv_client::{Client, ClientOptions, ReadOptions, WriteOptions};

use crate::report::{Report, RunSettings};
use crate::runner::Plan;
use crate::workload::{Distribution, Workload};

/// YCSB-style benchmark of a ringkv cluster.
#[derive(Debug, Parser)]
#[command(name = "kv-bench", version, after_help = EXIT_STATUS_HELP)]
struct Args {
    /// Nodes to contact, comma-separated host:port; the client learns the
    /// rest of the cluster from them.
    #[arg(long, env = "RINGKV_ENDPOINTS", value_delimiter = ',', required = true)]
    endpoints: Vec<String>,

    /// Workload to run. Run `load` first with the same --records, so the
    /// other workloads find their keys.
    #[arg(long, value_enum)]
    workload: Workload,

    /// Number of keys (user0 .. user{N-1}) that `load` inserts and the
    /// other workloads read and update.
    #[arg(long, value_name = "KEYS", default_value_t = 100_000)]
    records: u64,

    /// Size of each written value, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    value_bytes: usize,

    /// Requests in flight at once (one per task).
    #[arg(long, value_name = "REQUESTS", default_value_t = 64)]
    concurrency: usize,

    /// Run time in seconds; 30 when neither this nor --operations is given.
    /// With --operations, and for `load`, the run stops at the count or at
    /// this time, whichever comes first.
    #[arg(long, value_name = "SECONDS")]
    duration_secs: Option<u64>,

    /// Number of operations to issue (not used by `load`, which issues
    /// --records inserts).
    #[arg(long, value_name = "COUNT")]
    operations: Option<u64>,

    /// Upper bound on any run, `load` included, in seconds; no request
    /// starts after it.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    max_secs: u64,

    /// Read quorum sent with each get (1..=N); the cluster default when
    /// not given.
    #[arg(long, value_name = "REPLICAS")]
    r: Option<u32>,

    /// Write quorum sent with each put (1..=N); the cluster default when
    /// not given.
    #[arg(long, value_name = "REPLICAS")]
    w: Option<u32>,

    /// Operations per second across all requests in flight; 0 means as
    /// fast as the cluster replies.
    #[arg(long, value_name = "OPS_PER_SEC", default_value_t = 0)]
    target_rate: u64,

    /// Key choice of reads and updates. Workload D with `zipfian` prefers
    /// the newest keys, as YCSB's "latest" distribution does.
    #[arg(long, value_enum, default_value_t = Distribution::Zipfian)]
    distribution: Distribution,

    /// Seed of the operation mix, key choice and values; task i uses
    /// seed + i.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Timeout of each request at one node, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    timeout_ms: u64,

    /// Print the report as one JSON document on stdout instead of a table.
    #[arg(long)]
    json: bool,
}

/// Exit statuses, shown at the end of `--help`.
const EXIT_STATUS_HELP: &str = "Exit status: 0 when at least one operation succeeded, \
1 when none did or the client could not start, 2 for invalid flags.";

/// Default run time when neither --operations nor --duration-secs is given.
const DEFAULT_DURATION_SECS: u64 = 30;

/// A flag combination that cannot run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
enum ArgsError {
    #[error("invalid --concurrency 0: at least one request must be in flight")]
    ZeroConcurrency,
    #[error(
        "invalid --records 0 for workload {workload}: it needs keys; pass --records of at least 1"
    )]
    ZeroRecords { workload: Workload },
    #[error("invalid --operations {operations} for workload load: load inserts --records keys; set --records instead")]
    OperationsWithLoad { operations: u64 },
    #[error("invalid --{flag} 0: pass at least 1 second")]
    ZeroSeconds { flag: &'static str },
    #[error("invalid --operations 0: pass at least 1, or --duration-secs")]
    ZeroOperations,
}

impl Args {
    /// Checks the flags and turns them into a run plan.
    fn plan(&self) -> Result<Plan, ArgsError> {
        if self.concurrency == 0 {
            return Err(ArgsError::ZeroConcurrency);
        }
        if self.records == 0 && self.workload != Workload::Ping {
            return Err(ArgsError::ZeroRecords {
                workload: self.workload,
            });
        }
        if let (Workload::Load, Some(operations)) = (self.workload, self.operations) {
            return Err(ArgsError::OperationsWithLoad { operations });
        }
        if self.operations == Some(0) {
            return Err(ArgsError::ZeroOperations);
        }
        if self.max_secs == 0 {
            return Err(ArgsError::ZeroSeconds { flag: "max-secs" });
        }
        if self.duration_secs == Some(0) {
            return Err(ArgsError::ZeroSeconds {
                flag: "duration-secs",
            });
        }

        // `load` and runs with --operations stop by count, bounded by
        // --duration-secs if given and always by --max-secs.
        let counted = self.workload == Workload::Load || self.operations.is_some();
        let duration = match (self.duration_secs, counted) {
            (Some(secs), _) => secs,
            (None, true) => self.max_secs,
            (None, false) => DEFAULT_DURATION_SECS,
        };
        Ok(Plan {
            workload: self.workload,
            records: self.records,
            value_bytes: self.value_bytes,
            concurrency: self.concurrency,
            operations: self.operations,
            time_limit: Duration::from_secs(duration.min(self.max_secs)),
            target_rate: self.target_rate,
            distribution: self.distribution,
            seed: self.seed,
            read_options: ReadOptions { r: self.r },
            write_options: WriteOptions { w: self.w },
        })
    }

    fn settings(&self) -> RunSettings {
        RunSettings {
            workload: self.workload.to_string(),
            endpoints: self.endpoints.clone(),
            records: self.records,
            value_bytes: self.value_bytes,
            concurrency: self.concurrency,
            distribution: format!("{:?}", self.distribution).to_lowercase(),
            target_rate: self.target_rate,
            seed: self.seed,
            r: self.r,
            w: self.w,
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();

    let args = Args::parse();
    let plan = match args.plan() {
        Ok(plan) => plan,
        Err(error) => {
            eprintln!("kv-bench: {error}");
            return ExitCode::from(2);
        }
    };

    let options = ClientOptions {
        request_timeout: Duration::from_millis(args.timeout_ms),
        ..ClientOptions::default()
    };
    let client = match Client::connect_with(&args.endpoints, options).await {
        Ok(client) => client,
        Err(error) => {
            eprintln!("kv-bench: cannot create the client: {error}");
            return ExitCode::from(1);
        }
    };

    let outcome = runner::run(client, plan).await;
    let report = Report::new(
        args.settings(),
        &outcome.recorder,
        outcome.elapsed,
        outcome.stopped_by,
    );
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(error) => {
                eprintln!("kv-bench: cannot encode the report as JSON: {error}");
                return ExitCode::from(1);
            }
        }
    } else {
        print!("{}", report.to_text());
    }

    if report.total_ok == 0 {
        eprintln!("kv-bench: no operation succeeded; see the errors above");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Args {
        let mut argv = vec!["kv-bench", "--endpoints", "127.0.0.1:1"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).expect("arguments parse")
    }

    #[test]
    fn args_default_duration_without_operations() {
        let plan = parse(&["--workload", "a"]).plan().expect("valid plan");
        assert_eq!(plan.time_limit, Duration::from_secs(DEFAULT_DURATION_SECS));
        assert_eq!(plan.operations, None);
    }

    #[test]
    fn args_operations_bounded_by_max_secs() {
        let plan = parse(&["--workload", "c", "--operations", "10", "--max-secs", "5"])
            .plan()
            .expect("valid plan");
        assert_eq!(plan.operations, Some(10));
        assert_eq!(plan.time_limit, Duration::from_secs(5));
    }

    #[test]
    fn args_duration_capped_by_max_secs() {
        let plan = parse(&[
            "--workload",
            "c",
            "--duration-secs",
            "900",
            "--max-secs",
            "60",
        ])
        .plan()
        .expect("valid plan");
        assert_eq!(plan.time_limit, Duration::from_secs(60));
    }

    #[test]
    fn args_reject_invalid_combinations() {
        let cases: [(&[&str], ArgsError); 4] = [
            (
                &["--workload", "a", "--concurrency", "0"],
                ArgsError::ZeroConcurrency,
            ),
            (
                &["--workload", "c", "--records", "0"],
                ArgsError::ZeroRecords {
                    workload: Workload::C,
                },
            ),
            (
                &["--workload", "load", "--operations", "5"],
                ArgsError::OperationsWithLoad { operations: 5 },
            ),
            (
                &["--workload", "a", "--operations", "0"],
                ArgsError::ZeroOperations,
            ),
        ];
        for (argv, expected) in cases {
            assert_eq!(
                parse(argv).plan().expect_err("invalid plan"),
                expected,
                "{argv:?}"
            );
        }
    }

    #[test]
    fn args_flags_reach_plan() {
        let plan = parse(&[
            "--workload",
            "f",
            "--r",
            "1",
            "--w",
            "3",
            "--value-bytes",
            "7",
            "--target-rate",
            "50",
            "--distribution",
            "uniform",
            "--seed",
            "9",
        ])
        .plan()
        .expect("valid plan");
        assert_eq!(plan.read_options.r, Some(1));
        assert_eq!(plan.write_options.w, Some(3));
        assert_eq!(plan.value_bytes, 7);
        assert_eq!(plan.target_rate, 50);
        assert_eq!(plan.distribution, Distribution::Uniform);
        assert_eq!(plan.seed, 9);
    }
}
