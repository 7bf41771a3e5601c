//! Crash test per engine. A child process writes with group commit
//! (`SyncMode::Always`) and prints each key only after `durable()` returned.
//! The parent SIGKILLs it mid-write, reopens the directory and checks that
//! every acknowledged key is there with its value.
//!
//! The child is the ignored test `crash_child_writer` of this same binary,
//! started through `std::env::current_exe()`.
//!
//! NOTE: a SIGKILL keeps the page cache, so this checks recovery and the
//! acknowledgement order, not the disk's write cache. fjall hands each write
//! to the operating system before `write` returns, so for fjall an
//! acknowledgement sent before the flush would pass too. sled buffers writes
//! in the process, and acknowledging before `durable()` fails this test.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_storage::{open, record, EngineKind, GroupCommit, Space, SyncMode, WriteOp};

const DIR_VAR: &str = "RINGKV_CRASH_DIR";
const ENGINE_VAR: &str = "RINGKV_CRASH_ENGINE";
const ROUND_VAR: &str = "RINGKV_CRASH_ROUND";
const CHILD_TEST: &str = "crash_child_writer";
const ACK_PREFIX: &str = "ringkv-ack ";
/// Written after the key, so a line cut short by the kill is not taken as an acknowledgement.
const ACK_SUFFIX: &str = " end";

const CHILD_WRITERS: usize = 8;
/// Acknowledgements the parent waits for before each kill.
const ACKS_BEFORE_KILL: usize = 300;
const ROUNDS: usize = 2;
/// Upper bound of one round: the child's run, the kill and the drain of its output.
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);

/// Value stored for `key`: a record of about 100 bytes derived from the key.
fn expected_value(key: &str) -> Vec<u8> {
    let mut payload = format!("value of {key} ").into_bytes();
    payload.resize(100, b'.');
    record::encode(&payload)
}

/// Child side: writes until killed, or until `ROUND_TIMEOUT` if the parent is gone.
#[test]
#[ignore = "child process of the crash tests, started by them"]
fn crash_child_writer() {
    let (Ok(dir), Ok(engine)) = (std::env::var(DIR_VAR), std::env::var(ENGINE_VAR)) else {
        eprintln!("{CHILD_TEST} runs only as the child of a crash test ({DIR_VAR} is not set)");
        return;
    };
    let kind: EngineKind = engine.parse().expect("invalid engine in the environment");
    let round = std::env::var(ROUND_VAR).unwrap_or_default();

    let engine = open(kind, Path::new(&dir)).expect("child failed to open the engine");
    let group = GroupCommit::start(Arc::clone(&engine), SyncMode::Always);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("child failed to build a tokio runtime");
    let deadline = Instant::now() + ROUND_TIMEOUT;

    runtime.block_on(async move {
        let mut tasks = Vec::new();
        for writer in 0..CHILD_WRITERS {
            let engine = Arc::clone(&engine);
            let group = group.clone();
            let round = round.clone();
            tasks.push(tokio::spawn(async move {
                let mut sequence = 0u64;
                while Instant::now() < deadline {
                    let key = format!("r{round}-w{writer:02}-{sequence:08}");
                    let value = expected_value(&key);
                    engine
                        .write(&[
                            WriteOp::put(Space::Data, key.as_bytes(), value.clone()),
                            WriteOp::put(Space::Hints, key.as_bytes(), value),
                        ])
                        .expect("child write failed");
                    group.durable().await.expect("child flush failed");
                    println!("{ACK_PREFIX}{key}{ACK_SUFFIX}");
                    sequence += 1;
                }
            }));
        }
        for task in tasks {
            task.await.expect("child writer panicked");
        }
    });
}

/// Kills and reaps the child when dropped, also when the test panics.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL on Unix; it fails only if the child was already reaped.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs one child on `dir`, kills it after `ACKS_BEFORE_KILL` acknowledgements
/// and returns every key it acknowledged.
fn run_child_and_kill(kind: EngineKind, dir: &Path, round: usize) -> Vec<String> {
    let exe = std::env::current_exe().expect("failed to find the test binary");
    let child = Command::new(exe)
        .args(["--exact", CHILD_TEST, "--nocapture", "--include-ignored"])
        .env(DIR_VAR, dir)
        .env(ENGINE_VAR, kind.name())
        .env(ROUND_VAR, round.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("failed to start the child test binary");
    let mut child = ChildGuard(child);
    let stdout = child.0.stdout.take().expect("child stdout is piped");

    let (sender, acks) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // libtest may print its own text on the same line before the first acknowledgement.
            let Some(start) = line.find(ACK_PREFIX) else {
                continue;
            };
            let Some(key) = line[start + ACK_PREFIX.len()..].strip_suffix(ACK_SUFFIX) else {
                continue;
            };
            if sender.send(key.to_owned()).is_err() {
                break;
            }
        }
    });

    let deadline = Instant::now() + ROUND_TIMEOUT;
    let mut acknowledged = Vec::new();
    while acknowledged.len() < ACKS_BEFORE_KILL {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match acks.recv_timeout(remaining) {
            Ok(key) => acknowledged.push(key),
            Err(error) => panic!(
                "{kind} round {round}: child stopped acknowledging after {} keys ({error})",
                acknowledged.len()
            ),
        }
    }

    child.0.kill().expect("failed to SIGKILL the child");
    let status = child.0.wait().expect("failed to reap the child");
    assert!(
        !status.success(),
        "{kind} round {round}: child exited by itself before the kill"
    );

    // Keys acknowledged before the kill took effect are still in the pipe.
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match acks.recv_timeout(remaining) {
            Ok(key) => acknowledged.push(key),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("{kind} round {round}: child output did not end")
            }
        }
    }
    reader.join().expect("stdout reader panicked");
    acknowledged
}

fn killed_writer_keeps_acknowledged(kind: EngineKind) {
    let dir = tempfile::tempdir().expect("failed to create a temporary directory");
    let mut acknowledged = Vec::new();
    for round in 0..ROUNDS {
        acknowledged.extend(run_child_and_kill(kind, dir.path(), round));

        let engine = open(kind, dir.path()).unwrap_or_else(|error| {
            panic!("{kind} round {round}: reopen after SIGKILL failed: {error}")
        });
        for key in &acknowledged {
            let expected = expected_value(key);
            let data = engine
                .get(Space::Data, key.as_bytes())
                .expect("read of Data failed");
            assert_eq!(
                data.as_ref(),
                Some(&expected),
                "{kind} round {round}: acknowledged key {key} lost in Data"
            );
            let hint = engine
                .get(Space::Hints, key.as_bytes())
                .expect("read of Hints failed");
            assert_eq!(
                hint.as_ref(),
                Some(&expected),
                "{kind} round {round}: {key} in Data but not in Hints"
            );
        }
        let stored = engine
            .scan(Space::Data, b"", None, usize::MAX)
            .expect("scan failed");
        for (key, value) in &stored {
            assert!(
                record::decode(value).is_ok(),
                "{kind}: stored record {key:?} is corrupt"
            );
        }
        eprintln!(
            "{kind} round {round}: {} acknowledged keys survived, {} keys stored",
            acknowledged.len(),
            stored.len()
        );
    }
}

#[test]
fn fjall_sigkill_keeps_acknowledged() {
    killed_writer_keeps_acknowledged(EngineKind::Fjall);
}

#[test]
fn sled_sigkill_keeps_acknowledged() {
    killed_writer_keeps_acknowledged(EngineKind::Sled);
}
