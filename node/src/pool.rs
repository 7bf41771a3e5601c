//! A fixed set of threads that run storage calls off the async executor.
//!
//! Engine reads and writes may block on disk, so they never run on tokio's
//! worker threads. Handing each call to tokio's blocking pool woke a fresh
//! thread per call, and the context switches cost more than the calls
//! themselves (most reads are served from memory). Here a few long-lived
//! threads take jobs from one queue. A thread that finds the queue non-empty
//! takes the next job without sleeping, so under load most jobs cost no
//! thread wake-up at all.

use std::panic::{catch_unwind, AssertUnwindSafe};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// Error of a job that did not return a result.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("the storage threads have stopped")]
    Stopped,
    #[error("a storage job panicked")]
    Panicked,
}

/// Queue and threads of the storage calls.
pub struct StoragePool {
    sender: crossbeam_channel::Sender<Job>,
}

impl StoragePool {
    /// Starts `threads` threads (at least one) named `ringkv-storage-N`.
    pub fn start(threads: usize) -> std::io::Result<StoragePool> {
        let (sender, receiver) = crossbeam_channel::unbounded::<Job>();
        for index in 0..threads.max(1) {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("ringkv-storage-{index}"))
                .spawn(move || {
                    // The loop ends when the pool, the only sender, is dropped.
                    while let Ok(job) = receiver.recv() {
                        job();
                    }
                })?;
        }
        Ok(StoragePool { sender })
    }

    /// Runs `work` on a storage thread and returns its result. A panic in
    /// `work` is caught on the storage thread, which goes on with the next
    /// job, and is returned as [`PoolError::Panicked`].
    pub async fn run<T, F>(&self, work: F) -> Result<T, PoolError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (reply, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            if let Ok(value) = catch_unwind(AssertUnwindSafe(work)) {
                let _ = reply.send(value);
            }
        });
        self.sender.send(job).map_err(|_| PoolError::Stopped)?;
        result.await.map_err(|_| PoolError::Panicked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pool_runs_jobs_off_the_runtime_threads() {
        let pool = StoragePool::start(2).unwrap();
        let name = pool
            .run(|| std::thread::current().name().map(str::to_string))
            .await
            .unwrap();
        assert!(name.unwrap().starts_with("ringkv-storage-"));
    }

    #[tokio::test]
    async fn pool_survives_a_panicking_job() {
        let pool = StoragePool::start(1).unwrap();
        let failed = pool
            .run(|| -> u32 { panic!("deliberate test panic") })
            .await;
        assert!(matches!(failed, Err(PoolError::Panicked)));
        assert_eq!(pool.run(|| 7).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn pool_runs_many_concurrent_jobs() {
        let pool = std::sync::Arc::new(StoragePool::start(2).unwrap());
        let tasks: Vec<_> = (0..200u64)
            .map(|i| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.run(move || i * 2).await.unwrap() })
            })
            .collect();
        let mut sum = 0u64;
        for task in tasks {
            sum += task.await.unwrap();
        }
        assert_eq!(sum, (0..200u64).map(|i| i * 2).sum::<u64>());
    }
}
