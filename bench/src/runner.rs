//! Drives a workload: `concurrency` tasks, each with one request in flight,
//! share an operation counter, a time limit and an optional target rate.
//!
//! Invariants:
//! - A run ends at the first of its limits: the operation count (for `load`,
//!   the record count) or the time limit. No new request starts after the
//!   time limit; requests already in flight finish and are counted.
//! - With a target rate, operation `i` does not start before
//!   `start + i / rate`, so the rate applies to all tasks together. Latency is measured
//!   from the moment a request is sent, not from its scheduled start, so a
//!   cluster that falls behind the target rate shows it in the throughput
//!   rather than in the latencies.
//! - Every failed operation is counted under its error kind
//!   ([`Target::error_kind`]); the first failure of each kind is also logged
//!   with its message.
//!
//! Against a target with contexts (ringkv), updates in workloads A and B
//! send the context of the key's last read or write in this run, the way an
//! application that keeps contexts writes.
//! NOTE: the first update of a key that this run has not read yet has no
//! context, so it adds a sibling next to the loaded value instead of
//! replacing it. The next read returns both values and its context
//! supersedes them, so such keys carry at most one extra sibling.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::report::Recorder;
use crate::target::Target;
use crate::workload::{key_name, Distribution, KeyChooser, OpKind, Workload};

/// Number of lock shards of the context cache.
const CONTEXT_SHARDS: usize = 64;

/// Everything a run needs besides the client.
#[derive(Clone, Debug)]
pub struct Plan {
    pub workload: Workload,
    /// Keys loaded before the run (for `load`, keys to insert).
    pub records: u64,
    /// First key number that `load` inserts.
    pub insert_start: u64,
    pub value_bytes: usize,
    /// Requests in flight, one per task.
    pub concurrency: usize,
    /// Operations to issue; `None` runs until the time limit.
    pub operations: Option<u64>,
    /// Time after which no new request starts.
    pub time_limit: Duration,
    /// Operations per second across all tasks; 0 means unlimited.
    pub target_rate: u64,
    pub distribution: Distribution,
    pub seed: u64,
}

impl Plan {
    /// Returns the operation limit: the record count for `load`, else
    /// `operations` (unbounded when `None`).
    fn operation_limit(&self) -> u64 {
        match self.workload {
            Workload::Load => self.records,
            _ => self.operations.unwrap_or(u64::MAX),
        }
    }
}

/// Outcome of [`run`].
#[derive(Debug)]
pub struct RunOutcome {
    pub recorder: Recorder,
    /// Time from the start of the first task to the end of the last.
    pub elapsed: Duration,
    /// `records`, `operations` or `duration`: the limit that ended the run.
    pub stopped_by: &'static str,
}

/// Last known context of each key, shared by the tasks.
struct ContextCache<C> {
    shards: Vec<Mutex<HashMap<u64, C>>>,
}

impl<C: Clone> ContextCache<C> {
    fn new() -> ContextCache<C> {
        ContextCache {
            shards: (0..CONTEXT_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
        }
    }

    fn shard(&self, key: u64) -> &Mutex<HashMap<u64, C>> {
        &self.shards[(key % CONTEXT_SHARDS as u64) as usize]
    }

    fn get(&self, key: u64) -> Option<C> {
        // A poisoned shard only means another task panicked; its map is
        // still usable.
        let shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        shard.get(&key).cloned()
    }

    /// Stores `context` as the key's last one. `None` keeps the previous
    /// one.
    fn store(&self, key: u64, context: Option<C>) {
        let Some(context) = context else {
            return;
        };
        let mut shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        shard.insert(key, context);
    }
}

/// State shared by every task of a run.
struct Shared<T: Target> {
    plan: Plan,
    target: T,
    start: Instant,
    deadline: Instant,
    operation_limit: u64,
    /// Operations handed out so far, including those not started yet.
    issued: AtomicU64,
    /// Next key number an insert writes.
    next_insert: AtomicU64,
    /// Keys that exist: the records plus the acknowledged inserts.
    existing_keys: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    /// Set once the time limit stopped a task.
    timed_out: AtomicBool,
    /// Error variants already logged once.
    logged_errors: Mutex<HashSet<&'static str>>,
    /// Present for workloads with updates against a target with contexts.
    contexts: Option<ContextCache<T::Context>>,
}

/// Runs `plan` against `target`, printing a progress line to stderr about
/// once per second, and returns the merged latencies and errors.
pub async fn run<T: Target>(target: T, plan: Plan) -> RunOutcome {
    let start = Instant::now();
    let needs_contexts = T::HAS_CONTEXTS
        && plan
            .workload
            .mix()
            .iter()
            .any(|(kind, _)| *kind == OpKind::Update);
    let first_insert = match plan.workload {
        Workload::Load => plan.insert_start,
        _ => plan.records,
    };
    let shared = Arc::new(Shared {
        operation_limit: plan.operation_limit(),
        deadline: start + plan.time_limit,
        start,
        issued: AtomicU64::new(0),
        next_insert: AtomicU64::new(first_insert),
        existing_keys: AtomicU64::new(plan.records),
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        timed_out: AtomicBool::new(false),
        logged_errors: Mutex::new(HashSet::new()),
        contexts: needs_contexts.then(ContextCache::new),
        target,
        plan,
    });

    // Build the zipfian tables once; each task clones them.
    let chooser = KeyChooser::new(
        shared.plan.workload,
        shared.plan.distribution,
        shared.plan.records.max(1),
    );

    let progress = tokio::spawn(print_progress(Arc::clone(&shared)));
    let mut tasks = Vec::with_capacity(shared.plan.concurrency);
    for task_index in 0..shared.plan.concurrency {
        let rng = ChaCha8Rng::seed_from_u64(shared.plan.seed.wrapping_add(task_index as u64));
        tasks.push(tokio::spawn(run_task(
            Arc::clone(&shared),
            chooser.clone(),
            rng,
        )));
    }

    let mut recorder = Recorder::new();
    for task in tasks {
        match task.await {
            Ok(task_recorder) => recorder.merge(&task_recorder),
            Err(error) => tracing::error!(%error, "a benchmark task panicked; its counts are lost"),
        }
    }
    let elapsed = start.elapsed();
    progress.abort();

    let stopped_by = if shared.timed_out.load(Ordering::Relaxed) {
        "duration"
    } else if shared.plan.workload == Workload::Load {
        "records"
    } else {
        "operations"
    };
    RunOutcome {
        recorder,
        elapsed,
        stopped_by,
    }
}

/// Prints operations so far, the rate of the last second and the failures.
async fn print_progress<T: Target>(shared: Arc<Shared<T>>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let mut previous_ok = 0;
    let mut previous_at = Instant::now();
    loop {
        ticker.tick().await;
        let now = Instant::now();
        let ok = shared.ok.load(Ordering::Relaxed);
        let failed = shared.failed.load(Ordering::Relaxed);
        let interval = now.duration_since(previous_at).as_secs_f64();
        let recent_rate = (ok - previous_ok) as f64 / interval.max(1e-6);
        let total_secs = now.duration_since(shared.start).as_secs_f64();
        eprintln!(
            "[{total_secs:>5.0} s] {ok} ok, {failed} failed, {recent_rate:.0} ops/s now, {:.0} ops/s average",
            ok as f64 / total_secs.max(1e-6)
        );
        previous_ok = ok;
        previous_at = now;
    }
}

/// Issues operations one at a time until a limit is reached.
async fn run_task<T: Target>(
    shared: Arc<Shared<T>>,
    mut chooser: KeyChooser,
    mut rng: ChaCha8Rng,
) -> Recorder {
    let mut recorder = Recorder::new();
    let mut value = vec![0u8; shared.plan.value_bytes];
    loop {
        if Instant::now() >= shared.deadline {
            shared.timed_out.store(true, Ordering::Relaxed);
            break;
        }
        let index = shared.issued.fetch_add(1, Ordering::Relaxed);
        if index >= shared.operation_limit {
            break;
        }
        if shared.plan.target_rate > 0 {
            let offset = Duration::from_secs_f64(index as f64 / shared.plan.target_rate as f64);
            let scheduled = shared.start + offset;
            if scheduled >= shared.deadline {
                shared.timed_out.store(true, Ordering::Relaxed);
                break;
            }
            tokio::time::sleep_until(scheduled.into()).await;
        }

        let kind = shared.plan.workload.choose_op(&mut rng);
        rng.fill_bytes(&mut value);
        let result =
            run_operation(&shared, kind, &mut chooser, &mut rng, &value, &mut recorder).await;
        match result {
            Ok(()) => {
                shared.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                let error_kind = T::error_kind(&error);
                recorder.record_error(kind, error_kind);
                log_first_error(&shared, kind, error_kind, &error);
            }
        }
    }
    recorder
}

/// Logs the first failure of each error variant, so a run that fails
/// thousands of times prints one line per cause.
fn log_first_error<T: Target>(
    shared: &Shared<T>,
    kind: OpKind,
    error_kind: &'static str,
    error: &T::Error,
) {
    let mut logged = shared
        .logged_errors
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if logged.insert(error_kind) {
        tracing::warn!(op = kind.name(), error_kind, %error, "operation failed; later failures of this kind are only counted");
    }
}

/// Runs one operation of `kind` and records its latency on success.
async fn run_operation<T: Target>(
    shared: &Shared<T>,
    kind: OpKind,
    chooser: &mut KeyChooser,
    rng: &mut ChaCha8Rng,
    value: &[u8],
    recorder: &mut Recorder,
) -> Result<(), T::Error> {
    let target = &shared.target;
    let plan = &shared.plan;
    match kind {
        OpKind::Read => {
            let key = chooser.next_key(existing_keys(shared), rng);
            let started = Instant::now();
            let read = target.get(&key_name(key)).await?;
            recorder.record_success(kind, started.elapsed());
            if !read.found {
                recorder.record_missing_read();
            }
            if let Some(contexts) = &shared.contexts {
                contexts.store(key, read.context);
            }
        }
        OpKind::Update => {
            let key = chooser.next_key(existing_keys(shared), rng);
            let context = shared
                .contexts
                .as_ref()
                .and_then(|contexts| contexts.get(key));
            let started = Instant::now();
            let written = target.put(&key_name(key), value, context.as_ref()).await?;
            recorder.record_success(kind, started.elapsed());
            if let Some(contexts) = &shared.contexts {
                contexts.store(key, written);
            }
        }
        OpKind::Insert => {
            let key = shared.next_insert.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            target.put(&key_name(key), value, None).await?;
            recorder.record_success(kind, started.elapsed());
            if plan.workload != Workload::Load {
                shared.existing_keys.fetch_add(1, Ordering::Relaxed);
            }
        }
        OpKind::ReadModifyWrite => {
            let key = chooser.next_key(existing_keys(shared), rng);
            let name = key_name(key);
            let started = Instant::now();
            let read = target.get(&name).await?;
            let read_done = Instant::now();
            recorder.record_part(OpKind::Read, read_done - started);
            if !read.found {
                recorder.record_missing_read();
            }
            target.put(&name, value, read.context.as_ref()).await?;
            recorder.record_part(OpKind::Update, read_done.elapsed());
            recorder.record_success(kind, started.elapsed());
        }
        OpKind::Ping => {
            let started = Instant::now();
            target.ping().await?;
            recorder.record_success(kind, started.elapsed());
        }
    }
    Ok(())
}

/// Returns the number of keys reads may pick from, at least 1.
///
/// NOTE: in workload D this counts acknowledged inserts, but inserts are
/// acknowledged out of order, so the newest key number can belong to an
/// insert still in flight. Such a read finds no value and is counted in
/// `missing_reads`.
fn existing_keys<T: Target>(shared: &Shared<T>) -> u64 {
    shared.existing_keys.load(Ordering::Relaxed).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Report, RunSettings};
    use crate::target::{ReadOutcome, Ringkv};
    use kv_client::proto::kv_server::{Kv, KvServer};
    use kv_client::proto::{
        DeleteRequest, DeleteResponse, GetRequest, GetResponse, PingRequest, PingResponse,
        PutRequest, PutResponse,
    };
    use kv_client::{
        Client, ClientOptions, Context, ReadOptions, WriteOptions, ERROR_METADATA_KEY, QUORUM_ERROR,
    };
    use tonic::metadata::MetadataMap;
    use tonic::transport::server::TcpIncoming;
    use tonic::{Code, Request, Response, Status};

    /// In-process `Kv` service on 127.0.0.1 that stores no values: gets
    /// return one value, puts succeed or fail with a quorum error. It
    /// keeps the keys of the puts.
    #[derive(Default)]
    struct FakeKv {
        fail_puts: bool,
        gets: AtomicU64,
        puts: AtomicU64,
        put_keys: Mutex<Vec<Vec<u8>>>,
    }

    struct FakeService(Arc<FakeKv>);

    #[tonic::async_trait]
    impl Kv for FakeService {
        async fn get(
            &self,
            _request: Request<GetRequest>,
        ) -> Result<Response<GetResponse>, Status> {
            self.0.gets.fetch_add(1, Ordering::SeqCst);
            Ok(Response::new(GetResponse {
                values: vec![b"value".to_vec()],
                context: vec![1],
            }))
        }

        async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
            self.0.puts.fetch_add(1, Ordering::SeqCst);
            self.0
                .put_keys
                .lock()
                .expect("no test task panicked")
                .push(request.into_inner().key);
            if self.0.fail_puts {
                let mut metadata = MetadataMap::new();
                metadata.insert(
                    ERROR_METADATA_KEY,
                    QUORUM_ERROR.parse().expect("ascii value"),
                );
                return Err(Status::with_metadata(
                    Code::Unavailable,
                    "1 of 2 required replicas acknowledged",
                    metadata,
                ));
            }
            Ok(Response::new(PutResponse {
                context: vec![2],
                siblings: Vec::new(),
            }))
        }

        async fn delete(
            &self,
            _request: Request<DeleteRequest>,
        ) -> Result<Response<DeleteResponse>, Status> {
            Err(Status::unimplemented("kv-bench never deletes"))
        }

        async fn ping(
            &self,
            _request: Request<PingRequest>,
        ) -> Result<Response<PingResponse>, Status> {
            Ok(Response::new(PingResponse {}))
        }
    }

    /// Starts a fake node and returns a target connected to it.
    async fn start_fake(fail_puts: bool) -> (Ringkv, Arc<FakeKv>) {
        let fake = Arc::new(FakeKv {
            fail_puts,
            ..FakeKv::default()
        });
        let incoming = TcpIncoming::bind("127.0.0.1:0".parse().expect("valid address"))
            .expect("bind loopback");
        let address = incoming.local_addr().expect("bound address");
        let service = KvServer::new(FakeService(Arc::clone(&fake)));
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        let options = ClientOptions {
            request_timeout: Duration::from_secs(5),
            ..ClientOptions::default()
        };
        let client = Client::connect_with(&[address.to_string()], options)
            .await
            .expect("client starts");
        let target = Ringkv {
            client,
            read_options: ReadOptions::default(),
            write_options: WriteOptions::default(),
        };
        (target, fake)
    }

    fn plan(workload: Workload) -> Plan {
        Plan {
            workload,
            records: 50,
            insert_start: 0,
            value_bytes: 16,
            concurrency: 4,
            operations: None,
            time_limit: Duration::from_secs(10),
            target_rate: 0,
            distribution: Distribution::Zipfian,
            seed: 3,
        }
    }

    fn report(outcome: &RunOutcome) -> Report {
        let settings = RunSettings {
            workload: "test".into(),
            target: "ringkv".into(),
            endpoints: Vec::new(),
            records: 50,
            insert_start: 0,
            value_bytes: 16,
            concurrency: 4,
            distribution: "zipfian".into(),
            target_rate: 0,
            seed: 3,
            r: None,
            w: None,
        };
        Report::new(
            settings,
            &outcome.recorder,
            outcome.elapsed,
            outcome.stopped_by,
        )
    }

    #[tokio::test]
    async fn run_load_inserts_every_record() {
        let (client, fake) = start_fake(false).await;
        let outcome = run(client, plan(Workload::Load)).await;
        let report = report(&outcome);
        assert_eq!(outcome.stopped_by, "records");
        assert_eq!(fake.puts.load(Ordering::SeqCst), 50);
        assert_eq!(report.total_ok, 50);
        assert_eq!(report.total_errors, 0);
    }

    #[tokio::test]
    async fn run_load_starts_at_insert_start() {
        let (client, fake) = start_fake(false).await;
        let outcome = run(
            client,
            Plan {
                records: 20,
                insert_start: 1000,
                ..plan(Workload::Load)
            },
        )
        .await;
        assert_eq!(outcome.stopped_by, "records");
        let mut keys = fake.put_keys.lock().expect("no test task panicked").clone();
        keys.sort();
        let mut expected: Vec<Vec<u8>> = (1000..1020)
            .map(|number| key_name(number).into_bytes())
            .collect();
        expected.sort();
        assert_eq!(keys, expected);
    }

    #[tokio::test]
    async fn run_failed_updates_not_in_throughput() {
        let (client, fake) = start_fake(true).await;
        let outcome = run(
            client,
            Plan {
                operations: Some(200),
                ..plan(Workload::A)
            },
        )
        .await;
        let report = report(&outcome);
        let gets = fake.gets.load(Ordering::SeqCst);
        let puts = fake.puts.load(Ordering::SeqCst);
        assert_eq!(outcome.stopped_by, "operations");
        assert_eq!(gets + puts, 200);
        assert_eq!(report.total_ok, gets);
        assert_eq!(report.total_errors, puts);
        assert_eq!(report.errors.len(), 1);
        assert_eq!(report.errors[0].op, "update");
        assert_eq!(report.errors[0].kind, "quorum_failed");
    }

    #[tokio::test]
    async fn run_rmw_counts_one_operation() {
        let (client, fake) = start_fake(false).await;
        let outcome = run(
            client,
            Plan {
                operations: Some(100),
                ..plan(Workload::F)
            },
        )
        .await;
        let report = report(&outcome);
        let puts = fake.puts.load(Ordering::SeqCst);
        let rmw = report
            .operations
            .iter()
            .find(|op| op.op == "read-modify-write")
            .expect("read-modify-writes ran");
        assert_eq!(report.total_ok, 100);
        assert_eq!(rmw.count, puts);
        assert_eq!(fake.gets.load(Ordering::SeqCst), 100);
    }

    #[tokio::test]
    async fn run_stops_at_time_limit() {
        let (client, _fake) = start_fake(false).await;
        let outcome = run(
            client,
            Plan {
                time_limit: Duration::from_millis(300),
                ..plan(Workload::Ping)
            },
        )
        .await;
        assert_eq!(outcome.stopped_by, "duration");
        assert!(
            outcome.elapsed >= Duration::from_millis(300),
            "elapsed {:?}",
            outcome.elapsed
        );
        assert!(
            outcome.elapsed < Duration::from_secs(5),
            "elapsed {:?}",
            outcome.elapsed
        );
    }

    #[tokio::test]
    async fn run_target_rate_paces_requests() {
        let (client, fake) = start_fake(false).await;
        let outcome = run(
            client,
            Plan {
                operations: Some(21),
                target_rate: 100,
                ..plan(Workload::C)
            },
        )
        .await;
        // Operation 20 may not start before 20 / 100 s = 200 ms.
        assert!(
            outcome.elapsed >= Duration::from_millis(200),
            "elapsed {:?}",
            outcome.elapsed
        );
        assert_eq!(fake.gets.load(Ordering::SeqCst), 21);
    }

    /// In-memory store without contexts, as etcd is to the runner. Clones
    /// share one store.
    #[derive(Clone, Default)]
    struct MemoryTarget(Arc<MemoryStore>);

    #[derive(Default)]
    struct MemoryStore {
        values: Mutex<HashMap<String, Vec<u8>>>,
        puts_with_context: AtomicU64,
    }

    impl Target for MemoryTarget {
        type Context = ();
        type Error = String;

        const HAS_CONTEXTS: bool = false;

        async fn get(&self, key: &str) -> Result<ReadOutcome<()>, String> {
            let values = self.0.values.lock().expect("no test task panicked");
            Ok(ReadOutcome {
                found: values.contains_key(key),
                context: None,
            })
        }

        async fn put(
            &self,
            key: &str,
            value: &[u8],
            context: Option<&()>,
        ) -> Result<Option<()>, String> {
            if context.is_some() {
                self.0.puts_with_context.fetch_add(1, Ordering::SeqCst);
            }
            let mut values = self.0.values.lock().expect("no test task panicked");
            values.insert(key.to_string(), value.to_vec());
            Ok(None)
        }

        async fn ping(&self) -> Result<(), String> {
            Ok(())
        }

        fn error_kind(_error: &String) -> &'static str {
            "memory"
        }
    }

    #[tokio::test]
    async fn run_target_without_contexts() {
        let target = MemoryTarget::default();
        let load = run(target.clone(), plan(Workload::Load)).await;
        assert_eq!(report(&load).total_ok, 50);
        assert_eq!(target.0.values.lock().expect("no panic").len(), 50);

        for workload in [Workload::A, Workload::F] {
            let outcome = run(
                target.clone(),
                Plan {
                    operations: Some(200),
                    ..plan(workload)
                },
            )
            .await;
            let report = report(&outcome);
            assert_eq!(report.total_ok, 200, "workload {workload}");
            assert_eq!(report.total_errors, 0, "workload {workload}");
            assert_eq!(report.missing_reads, 0, "workload {workload}");
        }
        assert_eq!(target.0.puts_with_context.load(Ordering::SeqCst), 0);
        assert_eq!(target.0.values.lock().expect("no panic").len(), 50);
    }

    #[test]
    fn context_cache_keeps_last_context() {
        let cache = ContextCache::new();
        assert!(cache.get(7).is_none());
        cache.store(7, Some(Context::from_bytes(vec![1, 2])));
        cache.store(7, Some(Context::from_bytes(vec![3])));
        assert_eq!(cache.get(7).map(Context::into_bytes), Some(vec![3]));
    }

    #[test]
    fn context_cache_ignores_missing_context() {
        let cache = ContextCache::new();
        cache.store(1, Some(Context::from_bytes(vec![9])));
        cache.store(1, None);
        assert_eq!(cache.get(1).map(Context::into_bytes), Some(vec![9]));
    }

    #[test]
    fn load_limit_is_record_count() {
        let plan = Plan {
            workload: Workload::Load,
            records: 500,
            insert_start: 0,
            value_bytes: 10,
            concurrency: 1,
            operations: Some(3),
            time_limit: Duration::from_secs(1),
            target_rate: 0,
            distribution: Distribution::Uniform,
            seed: 0,
        };
        assert_eq!(plan.operation_limit(), 500);
        let run_plan = Plan {
            workload: Workload::C,
            ..plan
        };
        assert_eq!(run_plan.operation_limit(), 3);
    }
}
