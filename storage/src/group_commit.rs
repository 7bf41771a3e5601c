//! Group commit: one dedicated thread makes writes durable, one engine flush
//! per round for every writer waiting at the start of the round.
//!
//! A writer applies its write with [`Engine::write`], then calls
//! [`GroupCommit::durable`]. That queues a waiter; the thread takes every
//! queued waiter, runs one [`Engine::flush`], and completes them all with its
//! result. Writers that arrive during a flush wait for the next round, so
//! under load many writes share one flush without any added delay.
//!
//! Invariant: a waiter is queued after its write was applied and is taken
//! before the flush that completes it starts, so that flush covers the write.
//!
//! In [`SyncMode::Periodic`] the thread flushes every `interval` instead, and
//! `durable()` returns at once: a machine crash can lose the writes of the
//! last interval. `flush_now_blocking` flushes at once in both modes.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::{Engine, ParseSettingError, StorageError};

/// When a write counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// A write is acknowledged only after a flush that covers it.
    #[default]
    Always,
    /// Writes are acknowledged at once and the engine is flushed every `interval`.
    ///
    /// NOTE: fjall hands each write to the operating system before `write`
    /// returns, so only a machine crash loses the last interval. sled 0.34
    /// keeps writes in its own buffers until a flush, so with sled a kill of
    /// the process can lose them too.
    Periodic { interval: Duration },
}

impl SyncMode {
    /// Flush interval of `"periodic"` parsed from a string.
    pub const DEFAULT_PERIODIC_INTERVAL: Duration = Duration::from_millis(10);
}

impl fmt::Display for SyncMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncMode::Always => f.write_str("always"),
            SyncMode::Periodic { .. } => f.write_str("periodic"),
        }
    }
}

impl FromStr for SyncMode {
    type Err = ParseSettingError;

    /// Parses `"always"`, or `"periodic"` with [`SyncMode::DEFAULT_PERIODIC_INTERVAL`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(SyncMode::Always),
            "periodic" => Ok(SyncMode::Periodic {
                interval: SyncMode::DEFAULT_PERIODIC_INTERVAL,
            }),
            _ => Err(ParseSettingError::UnknownSyncMode { name: s.to_owned() }),
        }
    }
}

type FlushResult = Result<(), Arc<StorageError>>;

/// Writer waiting for the next flush.
enum Waiter {
    Async(oneshot::Sender<FlushResult>),
    Blocking(mpsc::SyncSender<FlushResult>),
}

impl Waiter {
    fn complete(self, result: FlushResult) {
        // A send fails only when the caller stopped waiting (a dropped future), so nobody needs the result.
        let _ = match self {
            Waiter::Async(sender) => sender.send(result).map_err(drop),
            Waiter::Blocking(sender) => sender.send(result).map_err(drop),
        };
    }
}

struct Queue {
    waiters: VecDeque<Waiter>,
    stopping: bool,
}

/// State shared between the handles and the flush thread.
struct Shared {
    engine: Arc<dyn Engine>,
    mode: SyncMode,
    queue: Mutex<Queue>,
    wake: Condvar,
    flushes: AtomicU64,
    /// Error of the latest flush, `None` once a flush succeeds again; read by
    /// `durable()` in periodic mode.
    last_error: Mutex<Option<Arc<StorageError>>>,
}

impl Shared {
    fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        // The queue stays consistent even if a holder panicked: it is only pushed and drained.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_last_error(&self) -> MutexGuard<'_, Option<Arc<StorageError>>> {
        self.last_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn enqueue(&self, waiter: Waiter) -> Result<(), StorageError> {
        let mut queue = self.lock_queue();
        if queue.stopping {
            return Err(StorageError::GroupCommitStopped);
        }
        queue.waiters.push_back(waiter);
        drop(queue);
        self.wake.notify_one();
        Ok(())
    }

    fn flush(&self) -> FlushResult {
        let result = self.engine.flush().map_err(Arc::new);
        self.flushes.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = &result {
            tracing::error!(%error, "group commit flush failed");
        }
        *self.lock_last_error() = result.clone().err();
        result
    }

    /// Body of the flush thread: runs rounds until shutdown, then a final flush.
    fn run(&self) {
        let mut next_periodic = match self.mode {
            SyncMode::Always => None,
            SyncMode::Periodic { interval } => Some(Instant::now() + interval),
        };
        loop {
            let mut queue = self.lock_queue();
            while queue.waiters.is_empty() && !queue.stopping {
                match next_periodic {
                    None => {
                        queue = self.wake.wait(queue).unwrap_or_else(|p| p.into_inner());
                    }
                    Some(deadline) => {
                        let now = Instant::now();
                        if now >= deadline {
                            break;
                        }
                        queue = self
                            .wake
                            .wait_timeout(queue, deadline - now)
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                    }
                }
            }
            let stopping = queue.stopping;
            let waiters = std::mem::take(&mut queue.waiters);
            drop(queue);

            let result = self.flush();
            for waiter in waiters {
                waiter.complete(result.clone());
            }
            if let (Some(deadline), SyncMode::Periodic { interval }) =
                (&mut next_periodic, self.mode)
            {
                *deadline = Instant::now() + interval;
            }
            if stopping {
                return;
            }
        }
    }
}

struct Handle {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Result of the final flush, kept for repeated `shutdown` calls.
    final_result: Mutex<Option<FlushResult>>,
}

impl Handle {
    fn shutdown(&self) -> FlushResult {
        let mut final_result = self.final_result.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(result) = final_result.as_ref() {
            return result.clone();
        }
        self.shared.lock_queue().stopping = true;
        self.shared.wake.notify_one();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            if thread.join().is_err() {
                tracing::error!("group commit thread panicked");
            }
        }
        // The thread's final flush result is the latest one recorded.
        let result = match self.shared.lock_last_error().clone() {
            Some(error) => Err(error),
            None => Ok(()),
        };
        *final_result = Some(result.clone());
        result
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Err(error) = self.shutdown() {
            tracing::error!(%error, "final group commit flush failed while dropping");
        }
    }
}

/// Group commit on one dedicated thread, not a tokio blocking task per operation.
///
/// Writers register after their write. The thread takes every waiting writer,
/// runs one engine flush and wakes them all, so concurrent writes share one
/// flush. In periodic mode it flushes every `interval` and `durable()` returns
/// at once.
///
/// Cloning shares the same thread. The thread stops at [`GroupCommit::shutdown`]
/// or when the last clone is dropped, after a final flush either way.
#[derive(Clone)]
pub struct GroupCommit {
    handle: Arc<Handle>,
}

impl GroupCommit {
    /// Starts the flush thread for `engine`.
    ///
    /// # Panics
    /// Panics if the operating system cannot create a thread, like `std::thread::spawn`.
    pub fn start(engine: Arc<dyn Engine>, mode: SyncMode) -> GroupCommit {
        let shared = Arc::new(Shared {
            engine,
            mode,
            queue: Mutex::new(Queue {
                waiters: VecDeque::new(),
                stopping: false,
            }),
            wake: Condvar::new(),
            flushes: AtomicU64::new(0),
            last_error: Mutex::new(None),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("kv-group-commit".to_owned())
            .spawn(move || thread_shared.run())
            .expect("failed to spawn the group commit thread");
        GroupCommit {
            handle: Arc::new(Handle {
                shared,
                thread: Mutex::new(Some(thread)),
                final_result: Mutex::new(None),
            }),
        }
    }

    /// Sync mode given at start.
    pub fn mode(&self) -> SyncMode {
        self.handle.shared.mode
    }

    /// Resolves once every write applied before the call is durable (Always), or at once (Periodic). Err if the flush failed.
    ///
    /// In periodic mode it returns the error of the latest periodic flush, if that failed.
    pub async fn durable(&self) -> Result<(), StorageError> {
        if let Some(result) = self.periodic_result() {
            return result;
        }
        let (sender, receiver) = oneshot::channel();
        self.handle.shared.enqueue(Waiter::Async(sender))?;
        match receiver.await {
            Ok(result) => result.map_err(|source| StorageError::FlushFailed { source }),
            Err(_) => Err(StorageError::GroupCommitStopped),
        }
    }

    /// Blocks until every write applied before the call is durable, like
    /// [`GroupCommit::durable`]. Call it from blocking code only, because it
    /// blocks the thread until the flush ends.
    pub fn durable_blocking(&self) -> Result<(), StorageError> {
        if let Some(result) = self.periodic_result() {
            return result;
        }
        self.flush_now_blocking()
    }

    /// Flushes at once in every mode and waits for it, for metadata that must
    /// be synced even in periodic mode.
    pub fn flush_now_blocking(&self) -> Result<(), StorageError> {
        let (sender, receiver) = mpsc::sync_channel(1);
        self.handle.shared.enqueue(Waiter::Blocking(sender))?;
        match receiver.recv() {
            Ok(result) => result.map_err(|source| StorageError::FlushFailed { source }),
            Err(_) => Err(StorageError::GroupCommitStopped),
        }
    }

    /// Final flush and join of the thread (used at graceful shutdown, before the clean-stop marker is written).
    ///
    /// Later calls return the same result; `durable()` fails with
    /// [`StorageError::GroupCommitStopped`] afterwards.
    pub fn shutdown(&self) -> Result<(), StorageError> {
        self.handle
            .shutdown()
            .map_err(|source| StorageError::FlushFailed { source })
    }

    /// Number of engine flushes run so far, for tests and status.
    pub fn flushes(&self) -> u64 {
        self.handle.shared.flushes.load(Ordering::Relaxed)
    }

    /// In periodic mode, the immediate result of `durable()`.
    fn periodic_result(&self) -> Option<Result<(), StorageError>> {
        let shared = &self.handle.shared;
        match shared.mode {
            SyncMode::Always => None,
            SyncMode::Periodic { .. } => {
                if shared.lock_queue().stopping {
                    return Some(Err(StorageError::GroupCommitStopped));
                }
                let last_error = shared.lock_last_error().clone();
                Some(match last_error {
                    Some(source) => Err(StorageError::FlushFailed { source }),
                    None => Ok(()),
                })
            }
        }
    }
}

impl fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupCommit")
            .field("mode", &self.mode())
            .field("flushes", &self.flushes())
            .finish()
    }
}
