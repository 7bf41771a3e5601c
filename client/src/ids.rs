//! Snowflake-style 64-bit unique ids.
//!
//! An id packs, from the most significant bit down: one zero bit, 41 bits of
//! milliseconds since [`EPOCH_MS`], [`WORKER_BITS`] bits of worker id and
//! [`SEQUENCE_BITS`] bits of per-millisecond sequence. Ids of one
//! [`IdGenerator`] are strictly increasing, and ids of generators with
//! different worker ids never collide. Sorting ids sorts them by creation
//! time to the millisecond.
//!
//! Uniqueness across processes rests on two rules that this module cannot
//! enforce alone: no two live processes share a worker id, and a restarted
//! process passes the last millisecond it may have used as `last_issued_ms`.
//! The `kv-apps-common` crate keeps both in a lease stored in the cluster.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Start of the id timestamps: 2026-01-01T00:00:00Z in Unix milliseconds.
pub const EPOCH_MS: u64 = 1_767_225_600_000;
/// Number of bits of the worker id.
pub const WORKER_BITS: u32 = 10;
/// Number of bits of the per-millisecond sequence.
pub const SEQUENCE_BITS: u32 = 12;
/// Number of bits of the timestamp (milliseconds since [`EPOCH_MS`]).
pub const TIMESTAMP_BITS: u32 = 63 - WORKER_BITS - SEQUENCE_BITS;
/// Largest valid worker id (1023).
pub const MAX_WORKER_ID: u16 = (1 << WORKER_BITS) - 1;
/// Largest sequence number within one millisecond (4095).
pub const MAX_SEQUENCE: u64 = (1 << SEQUENCE_BITS) - 1;
/// Default maximum time [`IdGenerator::next_id`] waits for the clock to
/// pass the last issued millisecond.
pub const DEFAULT_MAX_CLOCK_WAIT: Duration = Duration::from_secs(2);

/// Source of wall-clock time in Unix milliseconds.
pub trait Clock: Send + Sync + 'static {
    /// Returns the current time in milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// Errors of [`IdGenerator`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The worker id does not fit in [`WORKER_BITS`] bits.
    #[error("invalid worker id {worker_id}: must be in 0..={max}")]
    WorkerOutOfRange { worker_id: u16, max: u16 },

    /// The clock stayed behind the last issued millisecond for longer than
    /// the wait bound, so issuing an id now could repeat an earlier one.
    #[error(
        "clock is {behind_ms} ms behind the last issued id time; waited {waited_ms} ms \
         for it to catch up; check the system clock (NTP) and retry"
    )]
    ClockBehind { behind_ms: u64, waited_ms: u64 },

    /// The clock reads a time before [`EPOCH_MS`].
    #[error("clock reads {now_ms} ms, before the id epoch {epoch_ms} ms (2026-01-01T00:00:00Z)")]
    ClockBeforeEpoch { now_ms: u64, epoch_ms: u64 },

    /// The time since [`EPOCH_MS`] no longer fits in [`TIMESTAMP_BITS`] bits
    /// (about 69 years after the epoch).
    #[error("clock reads {now_ms} ms, past the last time an id can encode")]
    TimestampOverflow { now_ms: u64 },
}

/// Generator of unique, strictly increasing ids for one worker id.
///
/// Safe to share between threads: calls are serialized by an internal
/// mutex.
pub struct IdGenerator {
    worker_id: u16,
    clock: Arc<dyn Clock>,
    max_clock_wait: Duration,
    state: Mutex<GeneratorState>,
}

struct GeneratorState {
    /// Unix milliseconds of the last issued id, or the floor given at
    /// creation. New ids use a later millisecond, or this one with a higher
    /// sequence.
    last_ms: u64,
    /// Sequence of the last id issued in `last_ms`. The floor counts as
    /// fully used, so it starts at [`MAX_SEQUENCE`].
    last_sequence: u64,
}

impl std::fmt::Debug for IdGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdGenerator")
            .field("worker_id", &self.worker_id)
            .field("last_issued_ms", &self.last_issued_ms())
            .field("max_clock_wait", &self.max_clock_wait)
            .finish_non_exhaustive()
    }
}

impl IdGenerator {
    /// Creates a generator for `worker_id` (0..=1023) whose ids all use
    /// milliseconds after `last_issued_ms` (Unix ms; 0 for a first start).
    ///
    /// Pass the last millisecond an earlier process with this worker id may
    /// have used, so that a restart cannot repeat its ids.
    pub fn new(
        worker_id: u16,
        clock: Arc<dyn Clock>,
        last_issued_ms: u64,
    ) -> Result<IdGenerator, IdError> {
        if worker_id > MAX_WORKER_ID {
            return Err(IdError::WorkerOutOfRange {
                worker_id,
                max: MAX_WORKER_ID,
            });
        }
        Ok(IdGenerator {
            worker_id,
            clock,
            max_clock_wait: DEFAULT_MAX_CLOCK_WAIT,
            state: Mutex::new(GeneratorState {
                last_ms: last_issued_ms,
                // The floor millisecond may hold ids of an earlier process,
                // so no sequence in it is free.
                last_sequence: MAX_SEQUENCE,
            }),
        })
    }

    /// Sets how long [`IdGenerator::next_id`] may wait for the clock to pass
    /// the last issued millisecond (default [`DEFAULT_MAX_CLOCK_WAIT`]).
    pub fn with_max_clock_wait(mut self, max_clock_wait: Duration) -> IdGenerator {
        self.max_clock_wait = max_clock_wait;
        self
    }

    /// Returns the worker id of this generator.
    pub fn worker_id(&self) -> u16 {
        self.worker_id
    }

    /// Returns the Unix milliseconds of the last issued id, or the floor
    /// given to [`IdGenerator::new`] before the first id.
    pub fn last_issued_ms(&self) -> u64 {
        self.lock_state().last_ms
    }

    /// Issues the next id, greater than every id this generator issued.
    ///
    /// When the 4096 sequence numbers of the current millisecond are used
    /// up, or the clock reads a time before the last issued millisecond
    /// (a step back), the call blocks the thread until the clock passes that
    /// millisecond. A step back larger than the wait bound fails at once
    /// with [`IdError::ClockBehind`], and so does one the clock does not
    /// recover from within the bound.
    pub fn next_id(&self) -> Result<u64, IdError> {
        let mut state = self.lock_state();
        let started = Instant::now();
        loop {
            let now_ms = self.clock.now_ms();
            if now_ms < EPOCH_MS {
                return Err(IdError::ClockBeforeEpoch {
                    now_ms,
                    epoch_ms: EPOCH_MS,
                });
            }
            let since_epoch = now_ms - EPOCH_MS;
            if since_epoch >> TIMESTAMP_BITS != 0 {
                return Err(IdError::TimestampOverflow { now_ms });
            }

            if now_ms > state.last_ms {
                state.last_ms = now_ms;
                state.last_sequence = 0;
                return Ok(self.compose(since_epoch, 0));
            }
            if now_ms == state.last_ms {
                let sequence = state.last_sequence + 1;
                if sequence <= MAX_SEQUENCE {
                    state.last_sequence = sequence;
                    return Ok(self.compose(since_epoch, sequence));
                }
            }

            // The clock has not passed the last millisecond: either the
            // sequence of this millisecond is used up or the clock is behind.
            let behind_ms = state.last_ms - now_ms;
            let waited = started.elapsed();
            let max_wait_ms = self.max_clock_wait.as_millis() as u64;
            if behind_ms > max_wait_ms || waited >= self.max_clock_wait {
                return Err(IdError::ClockBehind {
                    behind_ms,
                    waited_ms: waited.as_millis() as u64,
                });
            }
            // Sleep about until the next millisecond after the last one.
            let pause = Duration::from_millis(behind_ms.max(1)).min(Duration::from_millis(50));
            std::thread::sleep(pause);
        }
    }

    fn compose(&self, since_epoch_ms: u64, sequence: u64) -> u64 {
        (since_epoch_ms << (WORKER_BITS + SEQUENCE_BITS))
            | (u64::from(self.worker_id) << SEQUENCE_BITS)
            | sequence
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, GeneratorState> {
        // The state is two integers updated together, so it stays valid
        // even if a thread panicked while holding the lock.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Returns the Unix milliseconds at which `id` was issued.
pub fn id_timestamp_ms(id: u64) -> u64 {
    (id >> (WORKER_BITS + SEQUENCE_BITS)) + EPOCH_MS
}

/// Returns the worker id that issued `id`.
pub fn id_worker(id: u64) -> u16 {
    ((id >> SEQUENCE_BITS) & u64::from(MAX_WORKER_ID)) as u16
}

/// Returns the per-millisecond sequence number of `id`.
pub fn id_sequence(id: u64) -> u64 {
    id & MAX_SEQUENCE
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Clock that returns the scripted times in order, then repeats the
    /// last one, and counts its reads.
    struct ScriptedClock {
        times: Mutex<VecDeque<u64>>,
        last: AtomicU64,
        reads: AtomicU64,
    }

    impl ScriptedClock {
        fn new(times: &[u64]) -> Arc<ScriptedClock> {
            Arc::new(ScriptedClock {
                times: Mutex::new(times.iter().copied().collect()),
                last: AtomicU64::new(times[0]),
                reads: AtomicU64::new(0),
            })
        }

        fn push(&self, times: &[u64]) {
            self.times.lock().unwrap().extend(times);
        }
    }

    impl Clock for ScriptedClock {
        fn now_ms(&self) -> u64 {
            self.reads.fetch_add(1, Ordering::SeqCst);
            if let Some(next) = self.times.lock().unwrap().pop_front() {
                self.last.store(next, Ordering::SeqCst);
            }
            self.last.load(Ordering::SeqCst)
        }
    }

    const T0: u64 = EPOCH_MS + 1_000_000;

    #[test]
    fn ids_strictly_increase() {
        let generator = IdGenerator::new(7, Arc::new(SystemClock), 0).unwrap();
        let mut previous = generator.next_id().unwrap();
        for _ in 0..100_000 {
            let id = generator.next_id().unwrap();
            assert!(id > previous, "id {id} is not above {previous}");
            assert_eq!(id_worker(id), 7);
            previous = id;
        }
    }

    #[test]
    fn ids_increase_across_threads() {
        let generator = Arc::new(IdGenerator::new(1, Arc::new(SystemClock), 0).unwrap());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let generator = Arc::clone(&generator);
                std::thread::spawn(move || {
                    let mut ids = Vec::with_capacity(20_000);
                    for _ in 0..20_000 {
                        ids.push(generator.next_id().unwrap());
                    }
                    ids
                })
            })
            .collect();
        let mut all = Vec::new();
        for handle in handles {
            let ids = handle.join().unwrap();
            assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
            all.extend(ids);
        }
        let count = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), count, "duplicate ids across threads");
    }

    #[test]
    fn id_fields_round_trip() {
        let clock = ScriptedClock::new(&[T0]);
        let generator = IdGenerator::new(MAX_WORKER_ID, clock, 0).unwrap();
        let first = generator.next_id().unwrap();
        let second = generator.next_id().unwrap();
        assert_eq!(id_timestamp_ms(first), T0);
        assert_eq!(id_worker(first), MAX_WORKER_ID);
        assert_eq!(id_sequence(first), 0);
        assert_eq!(id_sequence(second), 1);
        assert_eq!(generator.last_issued_ms(), T0);
    }

    #[test]
    fn worker_id_out_of_range_rejected() {
        let error = IdGenerator::new(1024, Arc::new(SystemClock), 0).unwrap_err();
        assert_eq!(
            error,
            IdError::WorkerOutOfRange {
                worker_id: 1024,
                max: 1023
            }
        );
        assert!(error.to_string().contains("0..=1023"));
    }

    #[test]
    fn sequence_overflow_waits_next_ms() {
        let clock = ScriptedClock::new(&[T0]);
        let generator = IdGenerator::new(3, clock.clone(), 0).unwrap();
        let mut previous = None;
        for expected_sequence in 0..=MAX_SEQUENCE {
            let id = generator.next_id().unwrap();
            assert_eq!(id_timestamp_ms(id), T0);
            assert_eq!(id_sequence(id), expected_sequence);
            if let Some(previous) = previous {
                assert!(id > previous);
            }
            previous = Some(id);
        }

        // The 4097th id of T0 has no sequence left: the generator must read
        // the clock again until it moves on to T0 + 1.
        let reads_before = clock.reads.load(Ordering::SeqCst);
        clock.push(&[T0, T0, T0 + 1]);
        let id = generator.next_id().unwrap();
        let reads = clock.reads.load(Ordering::SeqCst) - reads_before;
        assert_eq!(reads, 3, "expected two reads at T0 and one at T0 + 1");
        assert_eq!(id_timestamp_ms(id), T0 + 1);
        assert_eq!(id_sequence(id), 0);
        assert!(id > previous.unwrap());
    }

    #[test]
    fn clock_step_back_waits_within_bound() {
        let clock = ScriptedClock::new(&[T0]);
        let generator = IdGenerator::new(5, clock.clone(), 0).unwrap();
        let before = generator.next_id().unwrap();

        // The clock steps back 3 ms and then recovers past T0.
        clock.push(&[T0 - 3, T0 - 2, T0 - 1, T0, T0 + 1]);
        let after = generator.next_id().unwrap();
        assert!(
            after > before,
            "no duplicate or smaller id after a step back"
        );
        // T0 still had free sequence numbers, so the id may reuse T0.
        assert!(id_timestamp_ms(after) >= T0);
        assert_eq!(generator.last_issued_ms(), id_timestamp_ms(after));
    }

    #[test]
    fn clock_step_back_past_bound_fails() {
        let clock = ScriptedClock::new(&[T0]);
        let generator = IdGenerator::new(5, clock.clone(), 0)
            .unwrap()
            .with_max_clock_wait(Duration::from_millis(100));
        let before = generator.next_id().unwrap();

        // A step back far past the bound fails at once.
        clock.push(&[T0 - 10_000]);
        let error = generator.next_id().unwrap_err();
        let IdError::ClockBehind { behind_ms, .. } = error else {
            panic!("expected ClockBehind, got {error:?}");
        };
        assert_eq!(behind_ms, 10_000);

        // A small step back that never recovers fails after the bound.
        clock.push(&[T0 - 20]);
        let started = Instant::now();
        let error = generator.next_id().unwrap_err();
        let IdError::ClockBehind {
            behind_ms,
            waited_ms,
        } = error
        else {
            panic!("expected ClockBehind, got {error:?}");
        };
        assert_eq!(behind_ms, 20);
        assert!(waited_ms >= 100, "gave up after {waited_ms} ms");
        assert!(started.elapsed() < Duration::from_secs(10));

        // Once the clock passes T0 again, ids continue above the old ones.
        clock.push(&[T0 + 1]);
        let after = generator.next_id().unwrap();
        assert!(after > before);
    }

    #[test]
    fn restart_floor_skips_last_ms() {
        // A restarted generator with floor T0 must not reuse T0, even if
        // the clock reads T0, because an earlier process may have used it.
        let clock = ScriptedClock::new(&[T0, T0, T0 + 1]);
        let generator = IdGenerator::new(9, clock, T0).unwrap();
        let id = generator.next_id().unwrap();
        assert_eq!(id_timestamp_ms(id), T0 + 1);
    }

    #[test]
    fn clock_before_epoch_fails() {
        let clock = ScriptedClock::new(&[EPOCH_MS - 1]);
        let generator = IdGenerator::new(0, clock, 0).unwrap();
        let error = generator.next_id().unwrap_err();
        assert!(matches!(error, IdError::ClockBeforeEpoch { .. }));
    }
}
