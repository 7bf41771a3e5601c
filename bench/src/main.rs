//! `kv-bench`: YCSB-style load generator for ringkv.
//!
//! Runs one workload against the nodes in `--endpoints`: a pure-insert
//! `load` phase, YCSB core workloads A, B, C, D and F, or bare `Ping` RPCs.
//! The `verify` workload instead counts the loaded keys that one node
//! stores (see `verify.rs`), once or until it stores all of them.
//! It prints a progress line to stderr about once per second and ends with
//! throughput and latency percentiles per operation kind, as a text table
//! or as JSON (`--json`).
//!
//! The store is ringkv through `kv-client` by default. With the `etcd`
//! feature, `--against etcd` runs the same workloads against an etcd
//! cluster through its gRPC API (see `etcd.rs`), so both stores are
//! measured by the same runner.
//!
//! Every run is bounded: `load` by `--records`, the others by
//! `--operations` or `--duration-secs`, and all of them by `--max-secs`.
//! It sends traffic only to the endpoints given and, for ringkv, to the
//! node addresses those nodes report in their ring.
//!
//! Exit status: 0 when at least one operation succeeded, 1 when none did
//! or the client could not start, 2 for invalid flags. `verify` exits with
//! 0 only when the node stores every key, else 1.

mod args;
#[cfg(feature = "etcd")]
mod etcd;
mod report;
mod runner;
mod target;
mod verify;
mod workload;
mod zipf;

use std::process::ExitCode;

use clap::Parser;
use kv_client::{Client, ClientOptions};

use crate::args::Args;
use crate::report::Report;
use crate::runner::{Plan, RunOutcome};
use crate::target::{Ringkv, TargetKind};
use crate::verify::ReplicaProbe;
use crate::workload::Workload;

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
    if args.workload == Workload::Verify {
        return run_verify(&args).await;
    }
    let plan = match args.plan() {
        Ok(plan) => plan,
        Err(error) => {
            eprintln!("kv-bench: {error}");
            return ExitCode::from(2);
        }
    };

    let outcome = match args.against {
        TargetKind::Ringkv => run_against_ringkv(&args, plan).await,
        TargetKind::Etcd => run_against_etcd(&args, plan).await,
    };
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(message) => {
            eprintln!("kv-bench: {message}");
            return ExitCode::from(1);
        }
    };

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

/// Runs `--workload verify` and prints its report.
async fn run_verify(args: &Args) -> ExitCode {
    let plan = match args.verify_plan() {
        Ok(plan) => plan,
        Err(error) => {
            eprintln!("kv-bench: {error}");
            return ExitCode::from(2);
        }
    };
    let options = ClientOptions {
        request_timeout: args.request_timeout(),
        ..ClientOptions::default()
    };
    let client = match Client::connect_with(&args.endpoints, options).await {
        Ok(client) => client,
        Err(error) => {
            eprintln!("kv-bench: cannot create the client: {error}");
            return ExitCode::from(1);
        }
    };
    let probe = ReplicaProbe {
        client,
        replica: plan.replica.clone(),
    };
    let report = verify::run(probe, plan).await;

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
    if report.complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Connects to the ringkv nodes of `--endpoints` and runs `plan`.
async fn run_against_ringkv(args: &Args, plan: Plan) -> Result<RunOutcome, String> {
    let options = ClientOptions {
        request_timeout: args.request_timeout(),
        ..ClientOptions::default()
    };
    let client = Client::connect_with(&args.endpoints, options)
        .await
        .map_err(|error| format!("cannot create the client: {error}"))?;
    let (read_options, write_options) = args.quorums();
    let target = Ringkv {
        client,
        read_options,
        write_options,
    };
    Ok(runner::run(target, plan).await)
}

/// Connects to the etcd members of `--endpoints` and runs `plan`.
#[cfg(feature = "etcd")]
async fn run_against_etcd(args: &Args, plan: Plan) -> Result<RunOutcome, String> {
    let target = etcd::Etcd::connect(&args.endpoints, args.request_timeout())
        .await
        .map_err(|error| format!("cannot create the etcd client: {error}"))?;
    Ok(runner::run(target, plan).await)
}

/// Fails: this build has no etcd client. [`Args::plan`] rejects
/// `--against etcd` before this is reached.
#[cfg(not(feature = "etcd"))]
async fn run_against_etcd(_args: &Args, _plan: Plan) -> Result<RunOutcome, String> {
    Err(args::ArgsError::EtcdNotBuilt.to_string())
}
