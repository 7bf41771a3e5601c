//! Conformance suite run against every engine: the same cases for fjall and sled.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kv_storage::record::{self, RecordError};
use kv_storage::{
    open, Engine, EngineKind, GroupCommit, ParseSettingError, Space, StorageError, SyncMode,
    WriteOp,
};

/// Upper bound of every async test body.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

fn open_engine(kind: EngineKind, dir: &Path) -> Arc<dyn Engine> {
    open(kind, dir)
        .unwrap_or_else(|error| panic!("failed to open {kind} in {}: {error}", dir.display()))
}

fn put(engine: &dyn Engine, space: Space, key: &[u8], value: &[u8]) {
    engine
        .write(&[WriteOp::put(space, key, value)])
        .expect("put failed");
}

fn keys_of(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<Vec<u8>> {
    entries.iter().map(|(key, _)| key.clone()).collect()
}

fn get_put_delete_each_space(kind: EngineKind) {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(kind, dir.path());
    assert_eq!(engine.kind(), kind);
    for space in Space::ALL {
        assert_eq!(engine.get(space, b"k").unwrap(), None, "{space}: fresh key");
        put(&*engine, space, b"k", b"v1");
        assert_eq!(
            engine.get(space, b"k").unwrap(),
            Some(b"v1".to_vec()),
            "{space}: after put"
        );
        put(&*engine, space, b"k", b"v2");
        assert_eq!(
            engine.get(space, b"k").unwrap(),
            Some(b"v2".to_vec()),
            "{space}: overwrite"
        );
        engine.write(&[WriteOp::delete(space, b"k")]).unwrap();
        assert_eq!(
            engine.get(space, b"k").unwrap(),
            None,
            "{space}: after delete"
        );
        engine
            .write(&[WriteOp::delete(space, b"never-written")])
            .unwrap();
    }
}

fn spaces_are_isolated(kind: EngineKind) {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(kind, dir.path());
    for space in Space::ALL {
        put(&*engine, space, b"shared", space.name().as_bytes());
    }
    for space in Space::ALL {
        assert_eq!(
            engine.get(space, b"shared").unwrap(),
            Some(space.name().as_bytes().to_vec())
        );
        let all = engine.scan(space, b"", None, usize::MAX).unwrap();
        assert_eq!(all.len(), 1, "{space} sees keys of another space");
    }
    engine
        .write(&[WriteOp::delete(Space::Hints, b"shared")])
        .unwrap();
    assert_eq!(engine.get(Space::Hints, b"shared").unwrap(), None);
    assert_eq!(
        engine.get(Space::Data, b"shared").unwrap(),
        Some(b"data".to_vec())
    );
}

fn multi_op_write_applies_all(kind: EngineKind) {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(kind, dir.path());
    put(&*engine, Space::Meta, b"old", b"x");
    engine
        .write(&[
            WriteOp::put(Space::Data, b"a", b"1"),
            WriteOp::put(Space::Hints, b"b", b"2"),
            WriteOp::delete(Space::Meta, b"old"),
            WriteOp::put(Space::Data, b"a", b"last"),
        ])
        .unwrap();
    assert_eq!(
        engine.get(Space::Data, b"a").unwrap(),
        Some(b"last".to_vec()),
        "later op wins"
    );
    assert_eq!(engine.get(Space::Hints, b"b").unwrap(), Some(b"2".to_vec()));
    assert_eq!(engine.get(Space::Meta, b"old").unwrap(), None);
    engine.write(&[]).expect("write of an empty batch failed");
}

/// A reader that sees the first key of a two-space batch must see the second.
fn multi_op_write_is_atomic_to_readers(kind: EngineKind) {
    const BATCHES: u32 = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(kind, dir.path());
    let writer_engine = Arc::clone(&engine);
    let writer = std::thread::spawn(move || {
        for i in 0..BATCHES {
            let key = i.to_be_bytes();
            writer_engine
                .write(&[
                    WriteOp::put(Space::Hints, key, b"h"),
                    WriteOp::put(Space::Data, key, b"d"),
                ])
                .unwrap();
        }
    });
    let mut seen = 0;
    while seen < BATCHES {
        let key = seen.to_be_bytes();
        // Checked before the read, so a miss after the writer finished is a lost batch.
        let writer_finished = writer.is_finished();
        if engine.get(Space::Data, &key).unwrap().is_some() {
            assert!(
                engine.get(Space::Hints, &key).unwrap().is_some(),
                "batch {seen}: data visible without its hint"
            );
            seen += 1;
        } else if writer_finished {
            panic!("batch {seen} missing after the writer finished");
        }
    }
    writer.join().unwrap();
}

fn scan_bounds_order_limit(kind: EngineKind) {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(kind, dir.path());
    for key in [&b"d"[..], b"b", b"a", b"c", b"e", b"bb"] {
        put(&*engine, Space::Data, key, key);
    }
    let range = engine.scan(Space::Data, b"b", Some(b"d"), 100).unwrap();
    assert_eq!(
        keys_of(&range),
        [b"b".to_vec(), b"bb".to_vec(), b"c".to_vec()],
        "start included, end excluded"
    );
    assert!(
        range.iter().all(|(key, value)| key == value),
        "values belong to their keys"
    );

    let open_end = engine.scan(Space::Data, b"c", None, 100).unwrap();
    assert_eq!(
        keys_of(&open_end),
        [b"c".to_vec(), b"d".to_vec(), b"e".to_vec()]
    );

    let limited = engine.scan(Space::Data, b"", None, 2).unwrap();
    assert_eq!(
        keys_of(&limited),
        [b"a".to_vec(), b"b".to_vec()],
        "limit keeps the smallest keys"
    );

    assert!(
        engine.scan(Space::Data, b"a", None, 0).unwrap().is_empty(),
        "limit 0"
    );
    assert!(
        engine
            .scan(Space::Data, b"c", Some(b"c"), 10)
            .unwrap()
            .is_empty(),
        "empty range"
    );
    assert!(
        engine
            .scan(Space::Data, b"d", Some(b"b"), 10)
            .unwrap()
            .is_empty(),
        "inverted range"
    );
    assert!(
        engine.scan(Space::Data, b"f", None, 10).unwrap().is_empty(),
        "start past the last key"
    );
}

fn binary_keys_and_empty_values(kind: EngineKind) {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(kind, dir.path());
    let keys: [&[u8]; 5] = [
        &[0x00],
        &[0x00, 0x00],
        &[0x7f, 0x00, 0xff],
        &[0xff],
        &[0xff, 0xff, 0xff],
    ];
    for key in keys {
        put(&*engine, Space::Data, key, b"");
    }
    for key in keys {
        assert_eq!(
            engine.get(Space::Data, key).unwrap(),
            Some(Vec::new()),
            "key {key:?}"
        );
    }
    let all = engine.scan(Space::Data, &[], None, 100).unwrap();
    assert_eq!(
        keys_of(&all),
        keys.map(<[u8]>::to_vec),
        "bytewise unsigned order"
    );
    let high = engine
        .scan(Space::Data, &[0x80], Some(&[0xff, 0xff, 0xff]), 100)
        .unwrap();
    assert_eq!(keys_of(&high), [vec![0xff]]);
}

fn large_value_round_trip(kind: EngineKind) {
    let dir = tempfile::tempdir().unwrap();
    let value: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    {
        let engine = open_engine(kind, dir.path());
        put(&*engine, Space::Data, b"big", &value);
        assert_eq!(
            engine.get(Space::Data, b"big").unwrap().as_deref(),
            Some(value.as_slice())
        );
        engine.flush().unwrap();
    }
    let engine = open_engine(kind, dir.path());
    assert_eq!(
        engine.get(Space::Data, b"big").unwrap().as_deref(),
        Some(value.as_slice()),
        "after reopen"
    );
}

fn reopen_keeps_flushed_data(kind: EngineKind) {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = open_engine(kind, dir.path());
        for space in Space::ALL {
            put(&*engine, space, b"key", space.name().as_bytes());
        }
        put(&*engine, Space::Data, b"gone", b"x");
        engine
            .write(&[WriteOp::delete(Space::Data, b"gone")])
            .unwrap();
        engine.flush().unwrap();
    }
    let engine = open_engine(kind, dir.path());
    for space in Space::ALL {
        assert_eq!(
            engine.get(space, b"key").unwrap(),
            Some(space.name().as_bytes().to_vec()),
            "{space}"
        );
    }
    assert_eq!(
        engine.get(Space::Data, b"gone").unwrap(),
        None,
        "delete survives reopen"
    );
    assert!(
        dir.path().join(kind.name()).is_dir(),
        "engine files live under DIR/{kind}"
    );
}

fn second_open_is_locked(kind: EngineKind) {
    let dir = tempfile::tempdir().unwrap();
    let _engine = open_engine(kind, dir.path());
    for other in EngineKind::ALL {
        match open(other, dir.path()) {
            Err(StorageError::Locked { path }) => {
                assert_eq!(path, dir.path());
                let message = StorageError::Locked { path }.to_string();
                assert!(message.contains("is another kv-node running"), "{message}");
            }
            Err(error) => panic!("open of {other} returned {error} instead of Locked"),
            Ok(_) => panic!("second open of {other} succeeded while {kind} holds the directory"),
        }
    }
}

fn other_engine_dir_rejected(kind: EngineKind) {
    let dir = tempfile::tempdir().unwrap();
    drop(open_engine(kind, dir.path()));
    for other in EngineKind::ALL.into_iter().filter(|other| *other != kind) {
        match open(other, dir.path()) {
            Err(StorageError::EngineMismatch {
                path,
                found,
                requested,
            }) => {
                assert_eq!(path, dir.path());
                assert_eq!(found, kind);
                assert_eq!(requested, other);
            }
            Err(error) => panic!("open of {other} returned {error} instead of EngineMismatch"),
            Ok(_) => panic!("{other} opened a directory that contains {kind} data"),
        }
        assert!(
            !dir.path().join(other.name()).exists(),
            "rejected open created {other} files"
        );
    }
    drop(open_engine(kind, dir.path()));
}

fn is_empty_per_space(kind: EngineKind) {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(kind, dir.path());
    for space in Space::ALL {
        assert!(engine.is_empty(space).unwrap(), "{space} starts empty");
    }
    put(&*engine, Space::Intents, b"k", b"v");
    assert!(!engine.is_empty(Space::Intents).unwrap());
    assert!(
        engine.is_empty(Space::Data).unwrap(),
        "other spaces stay empty"
    );
    engine
        .write(&[WriteOp::delete(Space::Intents, b"k")])
        .unwrap();
    assert!(
        engine.is_empty(Space::Intents).unwrap(),
        "empty again after delete"
    );
}

fn stored_record_bit_flip_detected(kind: EngineKind) {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(kind, dir.path());
    put(&*engine, Space::Data, b"r", &record::encode(b"payload"));
    let mut stored = engine.get(Space::Data, b"r").unwrap().unwrap();
    assert_eq!(record::decode(&stored), Ok(&b"payload"[..]));

    let last = stored.len() - 1;
    stored[last] ^= 0x04;
    put(&*engine, Space::Data, b"r", &stored);
    let corrupt = engine.get(Space::Data, b"r").unwrap().unwrap();
    assert!(
        matches!(
            record::decode(&corrupt),
            Err(RecordError::BadChecksum { .. })
        ),
        "{:?}",
        record::decode(&corrupt)
    );
}

/// Writes one key per writer concurrently, then waits for durability.
async fn group_commit_shares_flushes(kind: EngineKind) {
    const WRITERS: usize = 32;
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(kind, dir.path());
    let group = GroupCommit::start(Arc::clone(&engine), SyncMode::Always);
    let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS));
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let engine = Arc::clone(&engine);
        let group = group.clone();
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            let key = format!("writer-{writer}");
            engine
                .write(&[WriteOp::put(Space::Data, key.as_bytes(), b"v")])
                .unwrap();
            barrier.wait().await;
            group.durable().await
        }));
    }
    for task in tasks {
        task.await.unwrap().expect("durable failed");
    }
    let flushes = group.flushes();
    assert!(flushes >= 1, "no flush ran");
    assert!(
        flushes < WRITERS as u64,
        "{flushes} flushes for {WRITERS} writers: no flush was shared"
    );

    group.shutdown().unwrap();
    assert!(matches!(
        group.durable().await,
        Err(StorageError::GroupCommitStopped)
    ));
    assert!(matches!(
        group.durable_blocking(),
        Err(StorageError::GroupCommitStopped)
    ));
    assert!(
        group.shutdown().is_ok(),
        "repeated shutdown returns the first result"
    );
    drop(group);
    drop(engine);

    let engine = open_engine(kind, dir.path());
    for writer in 0..WRITERS {
        let key = format!("writer-{writer}");
        assert_eq!(
            engine.get(Space::Data, key.as_bytes()).unwrap(),
            Some(b"v".to_vec()),
            "{key}"
        );
    }
}

async fn periodic_durable_skips_flush(kind: EngineKind) {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(kind, dir.path());
    let group = GroupCommit::start(
        Arc::clone(&engine),
        SyncMode::Periodic {
            interval: Duration::from_secs(3600),
        },
    );
    put(&*engine, Space::Data, b"k", b"v");
    group.durable().await.unwrap();
    group.durable_blocking().unwrap();
    assert_eq!(group.flushes(), 0, "periodic durable() must not flush");

    tokio::task::block_in_place(|| group.flush_now_blocking()).unwrap();
    assert_eq!(
        group.flushes(),
        1,
        "flush_now_blocking flushes in periodic mode"
    );

    group.shutdown().unwrap();
    assert_eq!(group.flushes(), 2, "shutdown runs a final flush");
}

async fn periodic_flushes_on_interval(kind: EngineKind) {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(kind, dir.path());
    let group = GroupCommit::start(
        Arc::clone(&engine),
        SyncMode::Periodic {
            interval: Duration::from_millis(5),
        },
    );
    while group.flushes() < 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    group.shutdown().unwrap();
}

macro_rules! conformance_suite {
    ($module:ident, $kind:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn get_put_delete() {
                get_put_delete_each_space($kind);
            }

            #[test]
            fn spaces_isolated() {
                spaces_are_isolated($kind);
            }

            #[test]
            fn multi_op_write() {
                multi_op_write_applies_all($kind);
            }

            #[test]
            fn multi_op_write_atomic() {
                multi_op_write_is_atomic_to_readers($kind);
            }

            #[test]
            fn scan_bounds() {
                scan_bounds_order_limit($kind);
            }

            #[test]
            fn binary_keys() {
                binary_keys_and_empty_values($kind);
            }

            #[test]
            fn large_value() {
                large_value_round_trip($kind);
            }

            #[test]
            fn reopen_keeps_data() {
                reopen_keeps_flushed_data($kind);
            }

            #[test]
            fn open_twice_locked() {
                second_open_is_locked($kind);
            }

            #[test]
            fn other_engine_rejected() {
                other_engine_dir_rejected($kind);
            }

            #[test]
            fn is_empty() {
                is_empty_per_space($kind);
            }

            #[test]
            fn record_bit_flip() {
                stored_record_bit_flip_detected($kind);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn group_commit_shares() {
                tokio::time::timeout(TEST_TIMEOUT, group_commit_shares_flushes($kind))
                    .await
                    .unwrap();
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn periodic_no_flush() {
                tokio::time::timeout(TEST_TIMEOUT, periodic_durable_skips_flush($kind))
                    .await
                    .unwrap();
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn periodic_interval() {
                tokio::time::timeout(TEST_TIMEOUT, periodic_flushes_on_interval($kind))
                    .await
                    .unwrap();
            }
        }
    };
}

conformance_suite!(fjall, EngineKind::Fjall);
conformance_suite!(sled, EngineKind::Sled);

#[test]
fn record_codec_errors() {
    let encoded = record::encode(b"abc");
    assert_eq!(encoded[0], record::RECORD_VERSION);

    let mut flipped = encoded.clone();
    flipped[6] ^= 0x01;
    let stored = u32::from_le_bytes([encoded[1], encoded[2], encoded[3], encoded[4]]);
    assert_eq!(
        record::decode(&flipped),
        Err(RecordError::BadChecksum {
            stored,
            computed: reference_crc32(&flipped[5..])
        })
    );

    let mut bad_checksum = encoded.clone();
    bad_checksum[2] ^= 0x80;
    assert!(matches!(
        record::decode(&bad_checksum),
        Err(RecordError::BadChecksum { .. })
    ));

    assert_eq!(
        record::decode(&encoded[..4]),
        Err(RecordError::Truncated { len: 4 })
    );
    assert_eq!(record::decode(&[]), Err(RecordError::Truncated { len: 0 }));

    let mut future = encoded.clone();
    future[0] = 2;
    assert_eq!(
        record::decode(&future),
        Err(RecordError::UnknownVersion { version: 2 })
    );
}

/// CRC-32 (IEEE) computed bit by bit, independent of the crate under test.
fn reference_crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn engine_kind_parse_and_display() {
    assert_eq!(EngineKind::default(), EngineKind::Fjall);
    for kind in EngineKind::ALL {
        assert_eq!(kind.to_string().parse::<EngineKind>(), Ok(kind));
    }
    let error = "rocksdb".parse::<EngineKind>().unwrap_err();
    assert_eq!(
        error,
        ParseSettingError::UnknownEngine {
            name: "rocksdb".into()
        }
    );
    let message = error.to_string();
    assert!(
        message.contains("\"fjall\"") && message.contains("\"sled\""),
        "{message}"
    );
}

#[test]
fn sync_mode_parse() {
    assert_eq!("always".parse::<SyncMode>(), Ok(SyncMode::Always));
    assert_eq!(
        "periodic".parse::<SyncMode>(),
        Ok(SyncMode::Periodic {
            interval: SyncMode::DEFAULT_PERIODIC_INTERVAL
        })
    );
    let message = "sometimes".parse::<SyncMode>().unwrap_err().to_string();
    assert!(
        message.contains("\"always\"") && message.contains("\"periodic\""),
        "{message}"
    );
}
