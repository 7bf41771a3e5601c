//! Command-line flags of kv-bench and their checks.

use std::time::Duration;

use clap::Parser;
use kv_client::{ReadOptions, WriteOptions};

use crate::report::RunSettings;
use crate::runner::Plan;
use crate::target::TargetKind;
use crate::verify::VerifyPlan;
use crate::workload::{Distribution, Workload};

/// YCSB-style benchmark of a ringkv cluster, or of an etcd cluster with
/// the same workloads.
#[derive(Debug, Parser)]
#[command(name = "kv-bench", version, after_help = EXIT_STATUS_HELP)]
pub struct Args {
    /// Store to measure. `etcd` reads with etcd's default linearizable
    /// Range, writes with Put, and maps `ping` to Maintenance.Status. It
    /// needs kv-bench built with `--features etcd`.
    #[arg(long, value_enum, default_value_t = TargetKind::Ringkv)]
    pub against: TargetKind,

    /// Nodes to contact, comma-separated host:port. A ringkv client learns
    /// the rest of the cluster from them. An etcd client spreads its
    /// requests over exactly these members.
    #[arg(long, env = "RINGKV_ENDPOINTS", value_delimiter = ',', required = true)]
    pub endpoints: Vec<String>,

    /// Workload to run. Run `load` first with the same --records, so the
    /// other workloads find their keys.
    #[arg(long, value_enum)]
    pub workload: Workload,

    /// Number of keys (user0 .. user{N-1}) that `load` inserts and the
    /// other workloads read and update.
    #[arg(long, value_name = "KEYS", default_value_t = 100_000)]
    pub records: u64,

    /// First key number that `load` inserts: it writes
    /// user{N} .. user{N+records-1}, so a later `load` can add fresh keys to
    /// a loaded cluster (YCSB's insertstart). `verify` checks the same
    /// range. Only for `load` and `verify`.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub insert_start: u64,

    /// Size of each written value, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    pub value_bytes: usize,

    /// Requests in flight at once (one per task).
    #[arg(long, value_name = "REQUESTS", default_value_t = 64)]
    pub concurrency: usize,

    /// Run time in seconds; 30 when neither this nor --operations is given.
    /// With --operations, and for `load`, the run stops at the count or at
    /// this time, whichever comes first.
    #[arg(long, value_name = "SECONDS")]
    pub duration_secs: Option<u64>,

    /// Number of operations to issue (not used by `load`, which issues
    /// --records inserts).
    #[arg(long, value_name = "COUNT")]
    pub operations: Option<u64>,

    /// Upper bound on any run, `load` included, in seconds; no request
    /// starts after it.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    pub max_secs: u64,

    /// Read quorum sent with each get (1..=N); the cluster default when
    /// not given. ringkv only.
    #[arg(long, value_name = "REPLICAS")]
    pub r: Option<u32>,

    /// Write quorum sent with each put (1..=N); the cluster default when
    /// not given. ringkv only.
    #[arg(long, value_name = "REPLICAS")]
    pub w: Option<u32>,

    /// Operations per second across all requests in flight; 0 means as
    /// fast as the cluster replies.
    #[arg(long, value_name = "OPS_PER_SEC", default_value_t = 0)]
    pub target_rate: u64,

    /// Key choice of reads and updates. Workload D with `zipfian` prefers
    /// the newest keys, as YCSB's "latest" distribution does.
    #[arg(long, value_enum, default_value_t = Distribution::Zipfian)]
    pub distribution: Distribution,

    /// Seed of the operation mix, key choice and values; task i uses
    /// seed + i.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Timeout of each request at one node, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub timeout_ms: u64,

    /// Print the report as one JSON document on stdout instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Node whose local copies `verify` reads, as host:port or node id.
    /// Only for `verify`, which needs it.
    #[arg(long, value_name = "NODE")]
    pub replica: Option<String>,

    /// Make `verify` repeat its check of the keys still missing until the
    /// node stores all of them or --max-secs passes.
    #[arg(long)]
    pub until_complete: bool,

    /// Pause between two checks of --until-complete, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub poll_interval_ms: u64,
}

/// Exit statuses, shown at the end of `--help`.
const EXIT_STATUS_HELP: &str = "Workloads against etcd: load, a, b, c, d and f run the same \
operations as against ringkv; ping sends etcd's Maintenance.Status RPC.

Workload verify (ringkv only) reads each key of user{insert-start} .. \
user{insert-start+records-1} from the one node given by --replica with \
Admin ReplicaRead, which neither needs a quorum nor repairs, and counts the \
keys present. That node must be a replica of every key (N at least the \
node count), or the keys it does not own count as missing.

Exit status: 0 when at least one operation succeeded (for verify: when \
every key is present), 1 when none did (verify: when keys are missing) \
or the client could not start, 2 for invalid flags.";

/// Default run time when neither --operations nor --duration-secs is given.
const DEFAULT_DURATION_SECS: u64 = 30;

/// A flag combination that cannot run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
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
    #[error("invalid --insert-start {insert_start} for workload {workload}: only `load` and `verify` use it; leave it out")]
    InsertStartWithoutLoad {
        insert_start: u64,
        workload: Workload,
    },
    #[error("invalid --insert-start {insert_start} with --records {records}: the last key number would exceed {}", u64::MAX)]
    InsertRangeOverflow { insert_start: u64, records: u64 },
    #[error("invalid --{flag} with --against etcd: read and write quorums are ringkv settings; leave it out")]
    QuorumWithEtcd { flag: &'static str },
    #[error("invalid --workload verify with --against etcd: verify reads ringkv replicas; leave out --against")]
    VerifyWithEtcd,
    #[error(
        "missing --replica for workload verify: pass the host:port or node id of the node to check"
    )]
    MissingReplica,
    #[error("invalid --{flag} for workload {workload}: only `verify` uses it; leave it out")]
    VerifyFlagWithoutVerify {
        flag: &'static str,
        workload: Workload,
    },
    #[error(
        "invalid --{flag} for workload verify: it reads every key once per pass; leave it out"
    )]
    FlagWithVerify { flag: &'static str },
    #[error("invalid --poll-interval-ms 0: pass at least 1")]
    ZeroPollInterval,
    #[error("--against etcd is not built into this kv-bench: rebuild it with `PROTOC=/usr/bin/protoc cargo build --release -p kv-bench --features etcd` (protoc from Debian's protobuf-compiler)")]
    EtcdNotBuilt,
}

impl Args {
    /// Checks the flags and turns them into a run plan.
    pub fn plan(&self) -> Result<Plan, ArgsError> {
        self.check_target()?;
        self.check_verify_flags()?;
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
        if self.insert_start > 0 && !matches!(self.workload, Workload::Load | Workload::Verify) {
            return Err(ArgsError::InsertStartWithoutLoad {
                insert_start: self.insert_start,
                workload: self.workload,
            });
        }
        if self.insert_start.checked_add(self.records).is_none() {
            return Err(ArgsError::InsertRangeOverflow {
                insert_start: self.insert_start,
                records: self.records,
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
            insert_start: self.insert_start,
            value_bytes: self.value_bytes,
            concurrency: self.concurrency,
            operations: self.operations,
            time_limit: Duration::from_secs(duration.min(self.max_secs)),
            target_rate: self.target_rate,
            distribution: self.distribution,
            seed: self.seed,
        })
    }

    /// Checks the flags of `--workload verify` and turns them into its
    /// plan. The other workloads go through [`Args::plan`].
    pub fn verify_plan(&self) -> Result<VerifyPlan, ArgsError> {
        if self.against != TargetKind::Ringkv {
            return Err(ArgsError::VerifyWithEtcd);
        }
        if self.concurrency == 0 {
            return Err(ArgsError::ZeroConcurrency);
        }
        if self.records == 0 {
            return Err(ArgsError::ZeroRecords {
                workload: self.workload,
            });
        }
        if self.max_secs == 0 {
            return Err(ArgsError::ZeroSeconds { flag: "max-secs" });
        }
        if self.insert_start.checked_add(self.records).is_none() {
            return Err(ArgsError::InsertRangeOverflow {
                insert_start: self.insert_start,
                records: self.records,
            });
        }
        let flags_without_effect = [
            ("operations", self.operations.is_some()),
            ("duration-secs", self.duration_secs.is_some()),
            ("r", self.r.is_some()),
            ("w", self.w.is_some()),
            ("target-rate", self.target_rate != 0),
        ];
        if let Some((flag, _)) = flags_without_effect.iter().find(|(_, given)| *given) {
            return Err(ArgsError::FlagWithVerify { flag });
        }
        if self.until_complete && self.poll_interval_ms == 0 {
            return Err(ArgsError::ZeroPollInterval);
        }
        let Some(replica) = self.replica.clone() else {
            return Err(ArgsError::MissingReplica);
        };
        Ok(VerifyPlan {
            replica,
            insert_start: self.insert_start,
            records: self.records,
            concurrency: self.concurrency,
            until_complete: self.until_complete,
            poll_interval: Duration::from_millis(self.poll_interval_ms),
            time_limit: Duration::from_secs(self.max_secs),
        })
    }

    /// Rejects the flags that only `verify` uses on other workloads.
    fn check_verify_flags(&self) -> Result<(), ArgsError> {
        if self.workload == Workload::Verify {
            return Ok(());
        }
        let verify_flags = [
            ("replica", self.replica.is_some()),
            ("until-complete", self.until_complete),
        ];
        if let Some((flag, _)) = verify_flags.iter().find(|(_, given)| *given) {
            return Err(ArgsError::VerifyFlagWithoutVerify {
                flag,
                workload: self.workload,
            });
        }
        Ok(())
    }

    /// Checks that the build supports `--against` and that the flags fit
    /// that store.
    fn check_target(&self) -> Result<(), ArgsError> {
        if self.against != TargetKind::Etcd {
            return Ok(());
        }
        if !cfg!(feature = "etcd") {
            return Err(ArgsError::EtcdNotBuilt);
        }
        if self.r.is_some() {
            return Err(ArgsError::QuorumWithEtcd { flag: "r" });
        }
        if self.w.is_some() {
            return Err(ArgsError::QuorumWithEtcd { flag: "w" });
        }
        Ok(())
    }

    /// Returns the ringkv quorums of `--r` and `--w`.
    pub fn quorums(&self) -> (ReadOptions, WriteOptions) {
        (
            ReadOptions { r: self.r },
            WriteOptions {
                w: self.w,
                ..WriteOptions::default()
            },
        )
    }

    /// Returns the timeout of each request.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn settings(&self) -> RunSettings {
        RunSettings {
            workload: self.workload.to_string(),
            target: self.against.to_string(),
            endpoints: self.endpoints.clone(),
            records: self.records,
            insert_start: self.insert_start,
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
        let cases: [(&[&str], ArgsError); 6] = [
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
            (
                &["--workload", "a", "--insert-start", "10"],
                ArgsError::InsertStartWithoutLoad {
                    insert_start: 10,
                    workload: Workload::A,
                },
            ),
            (
                &[
                    "--workload",
                    "load",
                    "--insert-start",
                    "18446744073709551615",
                    "--records",
                    "2",
                ],
                ArgsError::InsertRangeOverflow {
                    insert_start: u64::MAX,
                    records: 2,
                },
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
        let args = parse(&[
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
        ]);
        let plan = args.plan().expect("valid plan");
        let (read_options, write_options) = args.quorums();
        assert_eq!(read_options.r, Some(1));
        assert_eq!(write_options.w, Some(3));
        assert_eq!(plan.value_bytes, 7);
        assert_eq!(plan.target_rate, 50);
        assert_eq!(plan.distribution, Distribution::Uniform);
        assert_eq!(plan.seed, 9);
    }

    #[test]
    fn args_insert_start_reaches_plan() {
        let args = parse(&[
            "--workload",
            "load",
            "--records",
            "500",
            "--insert-start",
            "100000",
        ]);
        let plan = args.plan().expect("valid plan");
        assert_eq!(plan.insert_start, 100_000);
        assert_eq!(plan.records, 500);
        assert_eq!(args.settings().insert_start, 100_000);
    }

    #[test]
    fn args_verify_flags_reach_plan() {
        let plan = parse(&[
            "--workload",
            "verify",
            "--replica",
            "127.0.0.1:7623",
            "--records",
            "500",
            "--insert-start",
            "100",
            "--concurrency",
            "8",
            "--until-complete",
            "--poll-interval-ms",
            "250",
            "--max-secs",
            "90",
        ])
        .verify_plan()
        .expect("valid verify plan");
        assert_eq!(plan.replica, "127.0.0.1:7623");
        assert_eq!(plan.records, 500);
        assert_eq!(plan.insert_start, 100);
        assert_eq!(plan.concurrency, 8);
        assert!(plan.until_complete);
        assert_eq!(plan.poll_interval, Duration::from_millis(250));
        assert_eq!(plan.time_limit, Duration::from_secs(90));
    }

    #[test]
    fn args_verify_single_pass_default() {
        let plan = parse(&["--workload", "verify", "--replica", "0a1b"])
            .verify_plan()
            .expect("valid verify plan");
        assert!(!plan.until_complete);
        assert_eq!(plan.records, 100_000);
        assert_eq!(plan.insert_start, 0);
    }

    #[test]
    fn args_verify_rejects_invalid_flags() {
        let verify = ["--workload", "verify", "--replica", "127.0.0.1:1"];
        let cases: [(&[&str], ArgsError); 9] = [
            (&["--workload", "verify"], ArgsError::MissingReplica),
            (
                &["--records", "0"],
                ArgsError::ZeroRecords {
                    workload: Workload::Verify,
                },
            ),
            (&["--concurrency", "0"], ArgsError::ZeroConcurrency),
            (
                &["--max-secs", "0"],
                ArgsError::ZeroSeconds { flag: "max-secs" },
            ),
            (
                &["--until-complete", "--poll-interval-ms", "0"],
                ArgsError::ZeroPollInterval,
            ),
            (
                &["--operations", "5"],
                ArgsError::FlagWithVerify { flag: "operations" },
            ),
            (
                &["--duration-secs", "5"],
                ArgsError::FlagWithVerify {
                    flag: "duration-secs",
                },
            ),
            (&["--w", "2"], ArgsError::FlagWithVerify { flag: "w" }),
            (
                &["--insert-start", "18446744073709551615", "--records", "2"],
                ArgsError::InsertRangeOverflow {
                    insert_start: u64::MAX,
                    records: 2,
                },
            ),
        ];
        for (extra, expected) in cases {
            // The first case leaves out --replica on purpose.
            let mut argv: Vec<&str> = if extra.first() == Some(&"--workload") {
                Vec::new()
            } else {
                verify.to_vec()
            };
            argv.extend_from_slice(extra);
            assert_eq!(
                parse(&argv).verify_plan().expect_err("invalid verify plan"),
                expected,
                "{argv:?}"
            );
        }
    }

    #[test]
    fn args_verify_rejects_etcd() {
        let error = parse(&[
            "--against",
            "etcd",
            "--workload",
            "verify",
            "--replica",
            "127.0.0.1:1",
        ])
        .verify_plan()
        .expect_err("verify reads ringkv replicas");
        assert_eq!(error, ArgsError::VerifyWithEtcd);
    }

    #[test]
    fn args_verify_flags_need_verify() {
        let cases: [(&[&str], &str); 2] = [
            (&["--workload", "c", "--replica", "127.0.0.1:1"], "replica"),
            (
                &["--workload", "load", "--until-complete"],
                "until-complete",
            ),
        ];
        for (argv, flag) in cases {
            let args = parse(argv);
            assert_eq!(
                args.plan().expect_err("flag only for verify"),
                ArgsError::VerifyFlagWithoutVerify {
                    flag,
                    workload: args.workload,
                },
                "{argv:?}"
            );
        }
    }

    #[test]
    fn args_insert_start_allowed_for_verify() {
        let args = parse(&[
            "--workload",
            "verify",
            "--replica",
            "127.0.0.1:1",
            "--insert-start",
            "7",
        ]);
        assert_eq!(
            args.verify_plan().expect("valid verify plan").insert_start,
            7
        );
    }

    #[test]
    fn args_default_target_is_ringkv() {
        let args = parse(&["--workload", "c"]);
        assert_eq!(args.against, TargetKind::Ringkv);
        assert_eq!(args.settings().target, "ringkv");
    }

    #[cfg(not(feature = "etcd"))]
    #[test]
    fn args_etcd_needs_feature() {
        let error = parse(&["--against", "etcd", "--workload", "c"])
            .plan()
            .expect_err("etcd is not built");
        assert_eq!(error, ArgsError::EtcdNotBuilt);
        assert!(
            error.to_string().contains("--features etcd"),
            "message {error}"
        );
    }

    #[cfg(feature = "etcd")]
    #[test]
    fn args_etcd_plan_valid() {
        let args = parse(&["--against", "etcd", "--workload", "f"]);
        let plan = args.plan().expect("valid plan");
        assert_eq!(plan.workload, Workload::F);
        assert_eq!(args.settings().target, "etcd");
    }

    #[cfg(feature = "etcd")]
    #[test]
    fn args_etcd_rejects_quorums() {
        for (flag, name) in [("--r", "r"), ("--w", "w")] {
            let error = parse(&["--against", "etcd", "--workload", "a", flag, "2"])
                .plan()
                .expect_err("quorums are ringkv settings");
            assert_eq!(error, ArgsError::QuorumWithEtcd { flag: name });
        }
    }
}
