//! Worker-id leases stored in the cluster.
//!
//! A snowflake id is unique only while no two live processes share a worker
//! id and a restarted process starts above the last millisecond its
//! predecessor used. An app therefore claims its worker id at start with
//! [`claim_worker`], which keeps a lease record under the key
//! `apps/{app}/workers/{worker_id}`:
//!
//! ```json
//! {"instance":"3f9c…","pid":4242,"host":"web-1","high_water_ms":1767225612345,"expires_ms":1767225612345}
//! ```
//!
//! - `instance` is a random id drawn at each start, so a restart is a new
//!   instance.
//! - `expires_ms` is the Unix time in ms until which the lease is live. The
//!   renewal task ([`WorkerLease::spawn_renewal`]) pushes it forward every
//!   [`DEFAULT_RENEW_INTERVAL`] by [`DEFAULT_LEASE_TTL`].
//! - `high_water_ms` is at least the time of any id the instance may issue
//!   before its next renewal (the later of the last issued time and now,
//!   plus the TTL). A new instance passes it to [`IdGenerator::new`] as the
//!   floor, so its ids start above every id of its predecessors.
//!
//! Worker ids are assigned by the operator: one `--worker-id` per running
//! instance of an app. A claim of a worker id whose lease belongs to another
//! instance and has not expired fails with [`WorkerError::InUse`]. A process
//! that crashed holds its lease until `expires_ms`, so a restart with the
//! same id within the TTL fails too, while [`WorkerLease::release`] at a
//! clean shutdown frees the id at once.
//!
//! Concurrent writes leave siblings on the lease key. A read resolves them
//! to the maximum `high_water_ms`, and any live sibling of another instance
//! counts as a conflict: a claim fails, and a renewal logs an error on each
//! round while the duplicate lasts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kv_client::ids::{Clock, IdError, IdGenerator, SystemClock, MAX_WORKER_ID};
use kv_client::{Client, Context};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Default time a lease stays live without renewal.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);
/// Default period of lease renewal; several renewals fit in one TTL, so a
/// single failed write does not let the lease expire.
pub const DEFAULT_RENEW_INTERVAL: Duration = Duration::from_secs(3);

/// Lease record stored as the JSON value of the lease key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Random id of the process instance that wrote the record.
    pub instance: String,
    /// Process id of that instance.
    pub pid: u32,
    /// Host name of that instance.
    pub host: String,
    /// Unix ms at or above the time of every id the instance may have issued.
    pub high_water_ms: u64,
    /// Unix ms until which the lease is live; 0 after a release.
    pub expires_ms: u64,
}

/// Errors of [`claim_worker`] and [`WorkerLease::release`].
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The worker id does not fit in the id layout.
    #[error("invalid worker id {worker_id}: must be in 0..={max}", max = MAX_WORKER_ID)]
    InvalidWorkerId { worker_id: u16 },

    /// Another instance holds a live lease on the worker id.
    #[error(
        "worker id {worker_id} of app {app} is in use by instance {instance} (pid {pid} on \
         host {host}) for another {remaining_ms} ms; give this process another --worker-id, \
         or stop that instance and wait for its lease to expire"
    )]
    InUse {
        app: String,
        worker_id: u16,
        instance: String,
        pid: u32,
        host: String,
        remaining_ms: u64,
    },

    /// Reading or writing the lease key failed.
    #[error("failed to access the worker lease key {key}: {source}")]
    Cluster {
        key: String,
        #[source]
        source: kv_client::Error,
    },

    /// The clock is behind the lease's high-water mark by more than the TTL.
    #[error(
        "clock is {behind_ms} ms behind the high-water mark of worker lease {key}; ids issued \
         now could repeat earlier ones; check the system clock (NTP)"
    )]
    ClockBehind { key: String, behind_ms: u64 },

    /// Creating the id generator failed.
    #[error(transparent)]
    Id(#[from] IdError),
}

/// Timing of a lease.
#[derive(Clone, Copy, Debug)]
pub struct LeaseOptions {
    /// Time a lease stays live without renewal.
    pub ttl: Duration,
    /// Period of [`WorkerLease::spawn_renewal`].
    pub renew_interval: Duration,
}

impl Default for LeaseOptions {
    fn default() -> LeaseOptions {
        LeaseOptions {
            ttl: DEFAULT_LEASE_TTL,
            renew_interval: DEFAULT_RENEW_INTERVAL,
        }
    }
}

/// Returns the lease key of `worker_id` of `app`.
pub fn lease_key(app: &str, worker_id: u16) -> String {
    format!("apps/{app}/workers/{worker_id}")
}

/// Claims `worker_id` for `app` with [`LeaseOptions::default`].
pub async fn claim_worker(
    client: &Client,
    app: &str,
    worker_id: u16,
) -> Result<WorkerLease, WorkerError> {
    claim_worker_with(client, app, worker_id, LeaseOptions::default()).await
}

/// Claims `worker_id` for `app`: fails with [`WorkerError::InUse`] while
/// another instance's lease is live, and otherwise writes this instance's
/// lease record.
///
/// The returned lease is not renewed until [`WorkerLease::spawn_renewal`]
/// runs.
pub async fn claim_worker_with(
    client: &Client,
    app: &str,
    worker_id: u16,
    options: LeaseOptions,
) -> Result<WorkerLease, WorkerError> {
    if worker_id > MAX_WORKER_ID {
        return Err(WorkerError::InvalidWorkerId { worker_id });
    }
    let key = lease_key(app, worker_id);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let instance = format!("{:016x}", rand::random::<u64>());
    let lease = LeaseState {
        client: client.clone(),
        app: app.to_string(),
        worker_id,
        key: key.clone(),
        instance: instance.clone(),
        pid: std::process::id(),
        host: host_name(),
        options,
        clock: Arc::clone(&clock),
    };

    let read = lease.read().await?;
    let now_ms = clock.now_ms();
    if let Some(holder) = read.live_other(&instance, now_ms) {
        return Err(lease.in_use(holder, now_ms));
    }

    // Start above every id a predecessor may have issued. After a lease
    // expired the clock is past its mark, so this waits only after a clock
    // step back, and at most one TTL.
    let floor_ms = read.high_water_ms();
    if floor_ms > now_ms {
        let behind_ms = floor_ms - now_ms;
        if Duration::from_millis(behind_ms) > options.ttl {
            return Err(WorkerError::ClockBehind { key, behind_ms });
        }
        tracing::warn!(%key, behind_ms, "clock is behind the worker lease; waiting");
        tokio::time::sleep(Duration::from_millis(behind_ms + 1)).await;
    }

    let record = lease.record(floor_ms, floor_ms);
    let written = lease.write(&record, Some(&read.context)).await?;

    // A claim that raced this one left its record as a sibling. If it is
    // live, the other instance keeps the id: write its record back alone
    // so that it does not see this failed claim as a duplicate.
    let now_ms = clock.now_ms();
    let concurrent = parse_records(&key, &written.siblings);
    if let Some(holder) = concurrent
        .iter()
        .find(|other| other.instance != instance && other.expires_ms > now_ms)
    {
        let error = lease.in_use(holder, now_ms);
        if let Err(write_error) = lease.write(holder, Some(&written.context)).await {
            tracing::warn!(%key, error = %write_error, "failed to withdraw a losing worker claim");
        }
        return Err(error);
    }

    let generator = IdGenerator::new(worker_id, clock, floor_ms)?;
    tracing::info!(
        %key,
        %instance,
        floor_ms,
        "claimed worker id {worker_id} of app {app}"
    );
    let (stop, _) = watch::channel(false);
    Ok(WorkerLease {
        last_issued_ms: floor_ms,
        worker_id,
        instance,
        shared: Arc::new(Shared {
            lease,
            generator: Arc::new(generator),
            stop,
            released: AtomicBool::new(false),
        }),
    })
}

/// A claimed worker id, the id generator that uses it and its renewal.
/// Cheap to clone; clones share the generator and the renewal.
#[derive(Clone)]
pub struct WorkerLease {
    /// Unix ms above which this instance's ids start: the maximum
    /// high-water mark of earlier instances with this worker id.
    pub last_issued_ms: u64,
    /// The claimed worker id.
    pub worker_id: u16,
    /// Random id of this process instance in the lease record.
    pub instance: String,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for WorkerLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerLease")
            .field("key", &self.shared.lease.key)
            .field("instance", &self.instance)
            .field("last_issued_ms", &self.last_issued_ms)
            .finish_non_exhaustive()
    }
}

struct Shared {
    lease: LeaseState,
    generator: Arc<IdGenerator>,
    stop: watch::Sender<bool>,
    released: AtomicBool,
}

impl WorkerLease {
    /// Returns the id generator of the claimed worker id.
    pub fn generator(&self) -> Arc<IdGenerator> {
        Arc::clone(&self.shared.generator)
    }

    /// Returns the lease key in the cluster.
    pub fn key(&self) -> &str {
        &self.shared.lease.key
    }

    /// Spawns the task that renews the lease every renew interval until
    /// [`WorkerLease::release`]. Each round raises `high_water_ms` above the
    /// ids issued so far and logs an error when another live instance wrote
    /// the key since the last round (a duplicate worker id).
    ///
    /// NOTE: a lease whose renewals keep failing expires after the TTL while
    /// this process keeps issuing ids, so a new instance may then claim the
    /// same worker id. Each failure is logged as a warning.
    pub fn spawn_renewal(&self) -> tokio::task::JoinHandle<()> {
        let shared = Arc::clone(&self.shared);
        let mut stop = shared.stop.subscribe();
        tokio::spawn(async move {
            let interval = shared.lease.options.renew_interval;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = stop.changed() => return,
                }
                if shared.released.load(Ordering::SeqCst) {
                    return;
                }
                if let Err(error) = shared.renew().await {
                    tracing::warn!(key = %shared.lease.key, %error, "failed to renew the worker lease");
                }
            }
        })
    }

    /// Renews the lease once, as one round of the renewal task does.
    pub async fn renew(&self) -> Result<(), WorkerError> {
        self.shared.renew().await
    }

    /// Stops the renewal and frees the worker id for the next instance,
    /// recording the last issued time as the high-water mark. Leaves the
    /// key alone when another live instance wrote it since.
    pub async fn release(&self) -> Result<(), WorkerError> {
        let shared = &self.shared;
        shared.released.store(true, Ordering::SeqCst);
        shared.stop.send_replace(true);

        let lease = &shared.lease;
        let read = lease.read().await?;
        let now_ms = lease.clock.now_ms();
        if let Some(holder) = read.live_other(&lease.instance, now_ms) {
            tracing::error!(
                key = %lease.key,
                other = %holder.instance,
                "worker lease is held by another instance; not releasing it"
            );
            return Ok(());
        }
        let high_water_ms = read
            .high_water_of_others(&lease.instance)
            .max(shared.generator.last_issued_ms());
        let record = LeaseRecord {
            high_water_ms,
            expires_ms: 0,
            ..lease.record(0, 0)
        };
        lease.write(&record, Some(&read.context)).await?;
        tracing::info!(key = %lease.key, high_water_ms, "released the worker lease");
        Ok(())
    }
}

impl Shared {
    async fn renew(&self) -> Result<(), WorkerError> {
        let lease = &self.lease;
        let read = lease.read().await?;
        let now_ms = lease.clock.now_ms();
        if let Some(holder) = read.live_other(&lease.instance, now_ms) {
            tracing::error!(
                key = %lease.key,
                other = %holder.instance,
                other_pid = holder.pid,
                other_host = %holder.host,
                "duplicate worker id {}: another live instance of app {} uses it, so ids may repeat; \
                 restart one of them with another --worker-id",
                lease.worker_id,
                lease.app,
            );
        }
        // Carry over the marks of other instances, but not this instance's
        // own mark: adding the TTL to it on every round would raise it
        // without bound.
        let record = lease.record(
            self.generator.last_issued_ms(),
            read.high_water_of_others(&lease.instance),
        );
        lease.write(&record, Some(&read.context)).await?;
        Ok(())
    }
}

/// Identity and location of one instance's lease.
struct LeaseState {
    client: Client,
    app: String,
    worker_id: u16,
    key: String,
    instance: String,
    pid: u32,
    host: String,
    options: LeaseOptions,
    clock: Arc<dyn Clock>,
}

/// Lease records read from the key, with the read's context.
struct LeaseRead {
    records: Vec<LeaseRecord>,
    context: Context,
}

impl LeaseRead {
    fn high_water_ms(&self) -> u64 {
        self.records
            .iter()
            .map(|record| record.high_water_ms)
            .max()
            .unwrap_or(0)
    }

    fn high_water_of_others(&self, instance: &str) -> u64 {
        self.records
            .iter()
            .filter(|record| record.instance != instance)
            .map(|record| record.high_water_ms)
            .max()
            .unwrap_or(0)
    }

    /// Returns the live record of another instance that expires last.
    fn live_other(&self, instance: &str, now_ms: u64) -> Option<&LeaseRecord> {
        self.records
            .iter()
            .filter(|record| record.instance != instance && record.expires_ms > now_ms)
            .max_by_key(|record| record.expires_ms)
    }
}

impl LeaseState {
    async fn read(&self) -> Result<LeaseRead, WorkerError> {
        let read = self
            .client
            .get(&self.key)
            .await
            .map_err(|source| WorkerError::Cluster {
                key: self.key.clone(),
                source,
            })?;
        Ok(LeaseRead {
            records: parse_records(&self.key, &read.values),
            context: read.context,
        })
    }

    async fn write(
        &self,
        record: &LeaseRecord,
        context: Option<&Context>,
    ) -> Result<kv_client::PutResult, WorkerError> {
        let value = serde_json::to_vec(record).expect("a lease record always serializes");
        self.client
            .put(&self.key, value, context)
            .await
            .map_err(|source| WorkerError::Cluster {
                key: self.key.clone(),
                source,
            })
    }

    /// Builds this instance's record for a write now. The lease is live for
    /// one TTL, and the mark covers ids issued until then: one TTL above the
    /// later of `last_issued_ms` and now, and at least `carried_high_water_ms`.
    fn record(&self, last_issued_ms: u64, carried_high_water_ms: u64) -> LeaseRecord {
        let now_ms = self.clock.now_ms();
        let ttl_ms = self.options.ttl.as_millis() as u64;
        LeaseRecord {
            instance: self.instance.clone(),
            pid: self.pid,
            host: self.host.clone(),
            high_water_ms: (last_issued_ms.max(now_ms) + ttl_ms).max(carried_high_water_ms),
            expires_ms: now_ms + ttl_ms,
        }
    }

    fn in_use(&self, holder: &LeaseRecord, now_ms: u64) -> WorkerError {
        WorkerError::InUse {
            app: self.app.clone(),
            worker_id: self.worker_id,
            instance: holder.instance.clone(),
            pid: holder.pid,
            host: holder.host.clone(),
            remaining_ms: holder.expires_ms.saturating_sub(now_ms),
        }
    }
}

/// Parses sibling values of a lease key, skipping values that are not lease
/// records with a warning.
fn parse_records(key: &str, values: &[Vec<u8>]) -> Vec<LeaseRecord> {
    let mut records = Vec::with_capacity(values.len());
    for value in values {
        match serde_json::from_slice::<LeaseRecord>(value) {
            Ok(record) => records.push(record),
            Err(error) => {
                tracing::warn!(%key, %error, "skipping an invalid worker lease value");
            }
        }
    }
    records
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}
