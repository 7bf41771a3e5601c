//! Node metadata: identity, generation and ring in the engine's metadata
//! space, and the records that protect causality in small files beside it.
//!
//! The epoch reservation, the restart mark and the clean-stop marker live in
//! files of their own (`epochs`, `clean-stop`), written atomically (a
//! temporary file, fsync, rename, fsync of the directory), not in the storage
//! engine. An engine that recovers a damaged journal by cutting it short
//! would otherwise roll them back silently, and a node whose epoch counter
//! goes back issues dots that already name other acknowledged values.
//!
//! An engine that loses recent writes is detected too: every data write
//! batch also stores an increasing write sequence number, and a clean stop
//! records the last one in the clean-stop file. A start that finds the
//! engine behind that number treats the previous stop as unclean.
//!
//! Epochs also never fall below the wall clock in seconds times 2^20, so a
//! data directory restored from an old backup does not reuse epochs either,
//! as long as the clock has not gone back.

use kv_cluster::causality::{EpochSource, EpochUnavailable};
use kv_cluster::ring::Ring;
use kv_cluster::NodeId;
use kv_storage::{record, Engine, GroupCommit, Space, StorageError, WriteOp};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

const NODE_ID: &[u8] = b"node_id";
const GENERATION: &[u8] = b"generation";
const RING: &[u8] = b"ring";
/// Key of the write sequence number in the metadata space.
pub const WRITE_SEQUENCE: &[u8] = b"write_sequence";

const EPOCHS_FILE: &str = "epochs";
const CLEAN_STOP_FILE: &str = "clean-stop";
/// Present while the node is being decommissioned.
const LEAVING_FILE: &str = "leaving";
/// Present once the node has left its cluster; it never starts again.
const LEFT_FILE: &str = "left";

/// Epochs reserved per fsync of the reservation file. Every key's first put
/// through a coordinator takes a fresh epoch, so blocks are large.
const EPOCH_BLOCK: u64 = 1 << 20;

/// Errors reading or writing node metadata.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("metadata record {name:?} in {data_dir} is unreadable ({reason}); the node cannot tell its identity, so wipe the data directory and start it as a new node")]
    Corrupt {
        name: &'static str,
        data_dir: String,
        reason: String,
    },
    #[error("cannot write {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
}

/// Facts the node read about itself at start.
#[derive(Debug)]
pub struct StartInfo {
    pub node_id: NodeId,
    pub generation: u64,
    /// True when the data directory was empty (a new node).
    pub first_start: bool,
    /// True when the previous run did not stop cleanly, or the engine lost
    /// writes since.
    pub unclean_restart: bool,
    pub restart_mark: u64,
    pub ring: Option<Ring>,
}

/// Metadata store of one node.
pub struct Meta {
    engine: Arc<dyn Engine>,
    commit: GroupCommit,
    data_dir: PathBuf,
    epochs: Arc<EpochCounter>,
    write_sequence: Arc<AtomicU64>,
}

fn read_u64(
    engine: &dyn Engine,
    name: &'static [u8],
) -> Result<Option<Result<u64, String>>, StorageError> {
    let Some(bytes) = engine.get(Space::Meta, name)? else {
        return Ok(None);
    };
    Ok(Some(decode_u64s::<1>(&bytes).map(|[value]| value)))
}

/// Decodes a record holding `N` big-endian u64 values.
fn decode_u64s<const N: usize>(bytes: &[u8]) -> Result<[u64; N], String> {
    let payload = record::decode(bytes).map_err(|error| error.to_string())?;
    if payload.len() != 8 * N {
        return Err(format!("expected {} bytes, found {}", 8 * N, payload.len()));
    }
    let mut values = [0u64; N];
    for (value, chunk) in values.iter_mut().zip(payload.chunks_exact(8)) {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(chunk);
        *value = u64::from_be_bytes(raw);
    }
    Ok(values)
}

fn encode_u64s(values: &[u64]) -> Vec<u8> {
    let payload: Vec<u8> = values
        .iter()
        .flat_map(|value| value.to_be_bytes())
        .collect();
    record::encode(&payload)
}

/// Builds the write op of one u64 metadata value.
pub fn u64_op(name: &'static [u8], value: u64) -> WriteOp {
    WriteOp {
        space: Space::Meta,
        key: name.to_vec(),
        value: Some(encode_u64s(&[value])),
    }
}

fn name_of(key: &'static [u8]) -> &'static str {
    std::str::from_utf8(key).unwrap_or("?")
}

/// Writes `bytes` to `dir/name` atomically and durably.
fn write_file_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), MetaError> {
    let path = dir.join(name);
    let temporary = dir.join(format!("{name}.tmp"));
    let wrap = |source| MetaError::File {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::File::create(&temporary).map_err(wrap)?;
    file.write_all(bytes).map_err(wrap)?;
    file.sync_all().map_err(wrap)?;
    std::fs::rename(&temporary, &path).map_err(wrap)?;
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(wrap)?;
    Ok(())
}

/// Removes `dir/name` durably, if it exists.
fn remove_file_durably(dir: &Path, name: &str) -> Result<(), MetaError> {
    let path = dir.join(name);
    let wrap = |source| MetaError::File {
        path: path.display().to_string(),
        source,
    };
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(wrap(error)),
    }
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(wrap)
}

fn read_file(dir: &Path, name: &str) -> Result<Option<Vec<u8>>, String> {
    match std::fs::read(dir.join(name)) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error.to_string()),
    }
}

impl Meta {
    /// Opens the metadata of a node, creating its identity on first start,
    /// bumping its generation and reserving a block of epochs. Detects an
    /// unclean previous stop and sets the restart mark then.
    pub fn open(
        engine: Arc<dyn Engine>,
        commit: GroupCommit,
        data_dir: PathBuf,
    ) -> Result<(Meta, StartInfo), MetaError> {
        let shown_dir = data_dir.display().to_string();
        let corrupt = |name: &'static [u8], reason: String| MetaError::Corrupt {
            name: name_of(name),
            data_dir: shown_dir.clone(),
            reason,
        };

        // Identity: a new random id on first start.
        let (node_id, first_start) = match read_u64(engine.as_ref(), NODE_ID)? {
            Some(Ok(id)) => (id, false),
            Some(Err(reason)) => return Err(corrupt(NODE_ID, reason)),
            None => {
                let mut id = 0;
                while id == 0 {
                    id = rand::random::<u64>();
                }
                (id, true)
            }
        };

        // Generation: never lower than the wall clock, so a restored old value
        // cannot make the node look older than it is.
        let stored_generation = match read_u64(engine.as_ref(), GENERATION)? {
            Some(Ok(value)) => value,
            Some(Err(_)) | None => 0,
        };
        let now_seconds = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs())
            .unwrap_or(0);
        let generation = (stored_generation + 1).max(now_seconds);

        // Clean stop: the marker file holds the engine's write sequence at
        // the final flush. A missing marker, or an engine behind it, means
        // the last writes may be lost.
        let engine_sequence = match read_u64(engine.as_ref(), WRITE_SEQUENCE)? {
            Some(Ok(value)) => value,
            Some(Err(reason)) => return Err(corrupt(WRITE_SEQUENCE, reason)),
            None => 0,
        };
        let clean_stop_sequence = match read_file(&data_dir, CLEAN_STOP_FILE) {
            Ok(Some(bytes)) => decode_u64s::<1>(&bytes).ok().map(|[value]| value),
            Ok(None) | Err(_) => None,
        };
        let unclean_restart = !first_start && clean_stop_sequence != Some(engine_sequence);
        if let Some(expected) = clean_stop_sequence.filter(|expected| *expected > engine_sequence) {
            tracing::error!(
                expected,
                found = engine_sequence,
                "the storage engine lost writes since the last clean stop; keys written last continue under fresh epochs and are repaired from other replicas on read"
            );
        }

        // Epochs: continue above every earlier reservation and above the
        // wall-clock floor. A missing or unreadable reservation on a node
        // that existed before disables coordination of puts.
        let clock_floor = now_seconds.saturating_mul(EPOCH_BLOCK);
        let stored = match read_file(&data_dir, EPOCHS_FILE) {
            Ok(Some(bytes)) => decode_u64s::<2>(&bytes).map(Some),
            Ok(None) if first_start => Ok(None),
            Ok(None) => Err("the file is missing".to_string()),
            Err(reason) => Err(reason),
        };
        let (epoch_floor, stored_mark, epochs_available) = match stored {
            Ok(Some([reserved, mark])) => (reserved.max(clock_floor), mark, true),
            Ok(None) => (clock_floor, 0, true),
            Err(reason) => {
                tracing::error!(%reason, file = %data_dir.join(EPOCHS_FILE).display(), "the epoch reservation is unreadable; this node will not coordinate puts until its data directory is wiped");
                (clock_floor, u64::MAX, false)
            }
        };
        let restart_mark = if unclean_restart {
            stored_mark.max(epoch_floor)
        } else {
            stored_mark
        };
        let reserved = epoch_floor + EPOCH_BLOCK;

        let ring = match engine.get(Space::Meta, RING)? {
            None => None,
            Some(bytes) => {
                let payload =
                    record::decode(&bytes).map_err(|error| corrupt(RING, error.to_string()))?;
                Some(Ring::decode(payload).map_err(|error| corrupt(RING, error.to_string()))?)
            }
        };

        engine.write(&[u64_op(NODE_ID, node_id), u64_op(GENERATION, generation)])?;
        commit.flush_now_blocking()?;
        if epochs_available {
            write_file_durably(
                &data_dir,
                EPOCHS_FILE,
                &encode_u64s(&[reserved, restart_mark]),
            )?;
        }
        remove_file_durably(&data_dir, CLEAN_STOP_FILE)?;

        let epochs = Arc::new(EpochCounter {
            current: AtomicU64::new(epoch_floor),
            reserved: Mutex::new(reserved),
            restart_mark,
            available: AtomicBool::new(epochs_available),
            data_dir: data_dir.clone(),
        });
        let info = StartInfo {
            node_id,
            generation,
            first_start,
            unclean_restart,
            restart_mark,
            ring,
        };
        Ok((
            Meta {
                engine,
                commit,
                data_dir,
                epochs,
                write_sequence: Arc::new(AtomicU64::new(engine_sequence)),
            },
            info,
        ))
    }

    pub fn epochs(&self) -> Arc<EpochCounter> {
        self.epochs.clone()
    }

    /// Returns the counter the store bumps with every data write batch.
    pub fn write_sequence(&self) -> Arc<AtomicU64> {
        self.write_sequence.clone()
    }

    pub fn data_dir(&self) -> String {
        self.data_dir.display().to_string()
    }

    /// Stores the ring durably.
    /// Records durably that the node is being decommissioned, so a restart
    /// goes on leaving.
    pub fn mark_leaving(&self) -> Result<(), MetaError> {
        write_file_durably(&self.data_dir, LEAVING_FILE, b"leaving\n")
    }

    /// True when the node was decommissioned and has not left yet.
    pub fn is_leaving(&self) -> bool {
        matches!(read_file(&self.data_dir, LEAVING_FILE), Ok(Some(_)))
    }

    /// Records durably that the node left cluster `cluster_id`.
    pub fn mark_left(&self, cluster_id: &str) -> Result<(), MetaError> {
        write_file_durably(
            &self.data_dir,
            LEFT_FILE,
            format!("left cluster {cluster_id}\n").as_bytes(),
        )
    }

    /// Returns the content of the left marker when the node has left.
    pub fn left_marker(data_dir: &Path) -> Option<String> {
        match read_file(data_dir, LEFT_FILE) {
            Ok(Some(bytes)) => Some(String::from_utf8_lossy(&bytes).trim().to_string()),
            _ => None,
        }
    }

    pub fn save_ring(&self, ring: &Ring) -> Result<(), MetaError> {
        self.engine.write(&[WriteOp {
            space: Space::Meta,
            key: RING.to_vec(),
            value: Some(record::encode(&ring.encode())),
        }])?;
        self.commit.flush_now_blocking()?;
        Ok(())
    }

    /// Writes the clean-stop marker with the engine's write sequence. Call
    /// only after the final flush of the data, so the marker never claims
    /// more than is on disk.
    pub fn mark_clean_stop(&self) -> Result<(), MetaError> {
        let sequence = self.write_sequence.load(Ordering::SeqCst);
        // Concurrent writes store their sequence numbers in the order their
        // batches land, so the engine may hold a lower number than the last
        // one handed out. Once every write is done, storing the last number
        // again makes the engine and the marker agree.
        self.engine.write(&[u64_op(WRITE_SEQUENCE, sequence)])?;
        self.engine.flush()?;
        write_file_durably(&self.data_dir, CLEAN_STOP_FILE, &encode_u64s(&[sequence]))
    }
}

/// The node-wide epoch counter. It never goes back: epochs are reserved in
/// blocks whose upper bound is fsynced before any epoch of the block is
/// handed out, and a restart continues above the last reservation.
pub struct EpochCounter {
    current: AtomicU64,
    reserved: Mutex<u64>,
    restart_mark: u64,
    available: AtomicBool,
    data_dir: PathBuf,
}

impl EpochCounter {
    pub fn value(&self) -> u64 {
        self.current.load(Ordering::SeqCst)
    }

    pub fn is_available(&self) -> bool {
        self.available.load(Ordering::SeqCst)
    }

    fn next(&self) -> Result<u64, EpochUnavailable> {
        if !self.is_available() {
            return Err(EpochUnavailable);
        }
        let epoch = self.current.fetch_add(1, Ordering::SeqCst) + 1;
        let mut reserved = self.reserved.lock().map_err(|_| EpochUnavailable)?;
        if epoch > *reserved {
            // NOTE: this fsync can run while a key lock is held; it happens
            // once per EPOCH_BLOCK epochs.
            let next_reserved = epoch + EPOCH_BLOCK;
            let written = write_file_durably(
                &self.data_dir,
                EPOCHS_FILE,
                &encode_u64s(&[next_reserved, self.restart_mark]),
            );
            if let Err(error) = written {
                tracing::error!(%error, "cannot reserve epochs; this node stops coordinating puts");
                self.available.store(false, Ordering::SeqCst);
                return Err(EpochUnavailable);
            }
            *reserved = next_reserved;
        }
        Ok(epoch)
    }
}

/// [`EpochSource`] over the shared counter, for one put.
pub struct EpochHandle<'a>(pub &'a EpochCounter);

impl EpochSource for EpochHandle<'_> {
    fn current(&self) -> u64 {
        self.0.value()
    }

    fn fresh_epoch(&mut self) -> Result<u64, EpochUnavailable> {
        self.0.next()
    }
}
