//! Group commit against an in-memory engine whose flush can be made to fail.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kv_storage::{Engine, EngineKind, Entry, GroupCommit, Space, StorageError, SyncMode, WriteOp};

const TEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Engine that stores nothing and fails its flush while `fail_flush` is set.
#[derive(Default)]
struct FlakyEngine {
    fail_flush: AtomicBool,
}

impl Engine for FlakyEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Fjall
    }

    fn get(&self, _space: Space, _key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(None)
    }

    fn write(&self, _ops: &[WriteOp]) -> Result<(), StorageError> {
        Ok(())
    }

    fn scan(
        &self,
        _: Space,
        _: &[u8],
        _: Option<&[u8]>,
        _: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(Vec::new())
    }

    fn flush(&self) -> Result<(), StorageError> {
        if self.fail_flush.load(Ordering::SeqCst) {
            return Err(StorageError::Io {
                operation: "fsync",
                path: "/nonexistent/journal".into(),
                source: std::io::Error::other("injected flush failure"),
            });
        }
        Ok(())
    }

    fn is_empty(&self, _space: Space) -> Result<bool, StorageError> {
        Ok(true)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_reports_flush_failure() {
    let engine = Arc::new(FlakyEngine::default());
    let group = GroupCommit::start(engine.clone(), SyncMode::Always);
    tokio::time::timeout(TEST_TIMEOUT, async {
        group.durable().await.expect("first flush succeeds");

        engine.fail_flush.store(true, Ordering::SeqCst);
        let error = group
            .durable()
            .await
            .expect_err("failed flush must fail durable()");
        assert!(matches!(error, StorageError::FlushFailed { .. }), "{error}");
        assert!(
            error.to_string().contains("injected flush failure"),
            "{error}"
        );
        assert!(group.durable_blocking().is_err());

        engine.fail_flush.store(false, Ordering::SeqCst);
        group.durable().await.expect("flush succeeds again");
    })
    .await
    .unwrap();
    group.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_reports_last_failure() {
    let engine = Arc::new(FlakyEngine::default());
    engine.fail_flush.store(true, Ordering::SeqCst);
    let group = GroupCommit::start(
        engine.clone(),
        SyncMode::Periodic {
            interval: Duration::from_millis(2),
        },
    );
    tokio::time::timeout(TEST_TIMEOUT, async {
        while group.durable().await.is_ok() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }

        engine.fail_flush.store(false, Ordering::SeqCst);
        while group.durable().await.is_err() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("periodic durable() did not follow the flush result");
    group.shutdown().unwrap();
}

#[test]
fn shutdown_reports_final_failure() {
    let engine = Arc::new(FlakyEngine::default());
    let group = GroupCommit::start(engine.clone(), SyncMode::Always);
    engine.fail_flush.store(true, Ordering::SeqCst);
    assert!(matches!(
        group.shutdown(),
        Err(StorageError::FlushFailed { .. })
    ));
    assert!(
        group.shutdown().is_err(),
        "repeated shutdown returns the same failure"
    );
    assert_eq!(group.flushes(), 1, "one final flush");
}

#[test]
fn last_clone_drop_stops_thread() {
    let engine = Arc::new(FlakyEngine::default());
    let group = GroupCommit::start(engine.clone(), SyncMode::Always);
    let clone = group.clone();
    drop(group);
    clone
        .durable_blocking()
        .expect("a remaining clone keeps the thread");
    drop(clone);
    assert_eq!(
        Arc::strong_count(&engine),
        1,
        "the flush thread still holds the engine"
    );
}
