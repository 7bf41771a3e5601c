//! Load benchmark of the engines through group commit.
//!
//! Writes `--records` records (default 100,000) with a `--value-bytes`
//! payload (default 100) framed by `record::encode`, from `--writers`
//! concurrent tokio tasks (default 16). Each write is acknowledged only after
//! `GroupCommit::durable()` in `SyncMode::Always`, as a node does. Prints the
//! throughput, the number of engine flushes and the acknowledgement latency.
//!
//! Usage: `cargo run --release -p kv-storage --example load -- [--engine fjall|sled|both]
//! [--records N] [--writers N] [--value-bytes N] [--dir PATH]`.
//! Without `--dir` the data go to a temporary directory, which is removed at
//! the end. The directory must be on a real disk: on tmpfs an fsync costs nothing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_storage::{open, record, EngineKind, GroupCommit, Space, SyncMode, WriteOp};

struct Options {
    engines: Vec<EngineKind>,
    records: usize,
    writers: usize,
    value_bytes: usize,
    dir: Option<PathBuf>,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        engines: EngineKind::ALL.to_vec(),
        records: 100_000,
        writers: 16,
        value_bytes: 100,
        dir: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| format!("missing value after {flag}"))?;
        let parse_count = |value: &str| {
            value
                .parse::<usize>()
                .map_err(|error| format!("invalid {flag} {value:?}: {error}"))
        };
        match flag.as_str() {
            "--engine" if value == "both" => options.engines = EngineKind::ALL.to_vec(),
            "--engine" => options.engines = vec![value.parse().map_err(|e| format!("{e}"))?],
            "--records" => options.records = parse_count(&value)?,
            "--writers" => options.writers = parse_count(&value)?.max(1),
            "--value-bytes" => options.value_bytes = parse_count(&value)?,
            "--dir" => options.dir = Some(PathBuf::from(value)),
            _ => {
                return Err(format!(
                    "unknown option {flag}: expected --engine, --records, --writers, --value-bytes or --dir"
                ))
            }
        }
    }
    Ok(options)
}

struct Report {
    elapsed: Duration,
    flushes: u64,
    latencies: Vec<Duration>,
}

async fn load(kind: EngineKind, dir: PathBuf, options: &Options) -> Result<Report, String> {
    let engine = open(kind, &dir).map_err(|error| error.to_string())?;
    let group = GroupCommit::start(Arc::clone(&engine), SyncMode::Always);
    let per_writer = options.records.div_ceil(options.writers);
    let payload = vec![b'x'; options.value_bytes];

    let started = Instant::now();
    let mut tasks = Vec::new();
    for writer in 0..options.writers {
        let engine = Arc::clone(&engine);
        let group = group.clone();
        let value = record::encode(&payload);
        let first = writer * per_writer;
        let last = (first + per_writer).min(options.records);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(last.saturating_sub(first));
            for sequence in first..last {
                let key = format!("key-{sequence:010}");
                let write_started = Instant::now();
                engine
                    .write(&[WriteOp::put(Space::Data, key.into_bytes(), value.clone())])
                    .map_err(|error| error.to_string())?;
                group.durable().await.map_err(|error| error.to_string())?;
                latencies.push(write_started.elapsed());
            }
            Ok::<_, String>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(options.records);
    for task in tasks {
        latencies.extend(task.await.map_err(|error| error.to_string())??);
    }
    let elapsed = started.elapsed();
    let flushes = group.flushes();
    group.shutdown().map_err(|error| error.to_string())?;
    Ok(Report {
        elapsed,
        flushes,
        latencies,
    })
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    sorted[index]
}

fn print_report(kind: EngineKind, options: &Options, report: &mut Report) {
    report.latencies.sort_unstable();
    let seconds = report.elapsed.as_secs_f64();
    let records = report.latencies.len();
    println!(
        "{kind}: {records} records of {} bytes, {} writers: {seconds:.2} s, {:.0} writes/s, \
         {} flushes ({:.1} writes per flush), latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        options.value_bytes,
        options.writers,
        records as f64 / seconds,
        report.flushes,
        records as f64 / report.flushes.max(1) as f64,
        percentile(&report.latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&report.latencies, 0.99).as_secs_f64() * 1e3,
        percentile(&report.latencies, 1.0).as_secs_f64() * 1e3,
    );
}

fn main() {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("error: {message}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("failed to build a tokio runtime");

    for &kind in &options.engines {
        // The temporary directory is removed when `_temporary` is dropped after the run.
        let (dir, _temporary) = match &options.dir {
            Some(dir) => (dir.join(kind.name()), None),
            None => {
                let temporary =
                    tempfile::tempdir().expect("failed to create a temporary directory");
                (temporary.path().to_path_buf(), Some(temporary))
            }
        };
        match runtime.block_on(load(kind, dir.clone(), &options)) {
            Ok(mut report) => print_report(kind, &options, &mut report),
            Err(message) => {
                eprintln!("error: {kind} load in {} failed: {message}", dir.display());
                std::process::exit(1);
            }
        }
    }
}
