//! Node metadata kept in the engine's metadata space: the node id, its
//! generation, the epoch counter's reservation, the restart mark, the
//! clean-stop marker and the ring.
//!
//! Every entry is a checksummed record. Metadata writes are flushed with a
//! real fsync in every sync mode, because losing them would let a node reuse
//! an epoch or forget that its last stop was unclean.

use kv_cluster::causality::{EpochSource, EpochUnavailable};
use kv_cluster::ring::Ring;
use kv_cluster::NodeId;
use kv_storage::{record, Engine, GroupCommit, Space, StorageError, WriteOp};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

const NODE_ID: &[u8] = b"node_id";
const GENERATION: &[u8] = b"generation";
const EPOCH_RESERVED: &[u8] = b"epoch_reserved";
const RESTART_MARK: &[u8] = b"restart_mark";
const CLEAN_STOP: &[u8] = b"clean_stop";
const RING: &[u8] = b"ring";

/// Epochs reserved per fsync of the reservation record. Every key's first put
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
}

/// Facts the node read about itself at start.
#[derive(Debug)]
pub struct StartInfo {
    pub node_id: NodeId,
    pub generation: u64,
    /// True when the data directory was empty (a new node).
    pub first_start: bool,
    /// True when the previous run did not write its clean-stop marker.
    pub unclean_restart: bool,
    pub restart_mark: u64,
    pub ring: Option<Ring>,
}

/// Metadata store of one node.
pub struct Meta {
    engine: Arc<dyn Engine>,
    commit: GroupCommit,
    data_dir: String,
    epochs: Arc<EpochCounter>,
}

fn read_u64(
    engine: &dyn Engine,
    name: &'static [u8],
) -> Result<Option<Result<u64, String>>, StorageError> {
    let Some(bytes) = engine.get(Space::Meta, name)? else {
        return Ok(None);
    };
    let decoded = match record::decode(&bytes) {
        Ok(payload) if payload.len() == 8 => {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(payload);
            Ok(u64::from_be_bytes(raw))
        }
        Ok(payload) => Err(format!("expected 8 bytes, found {}", payload.len())),
        Err(error) => Err(error.to_string()),
    };
    Ok(Some(decoded))
}

fn u64_op(name: &'static [u8], value: u64) -> WriteOp {
    WriteOp {
        space: Space::Meta,
        key: name.to_vec(),
        value: Some(record::encode(&value.to_be_bytes())),
    }
}

fn name_of(key: &'static [u8]) -> &'static str {
    std::str::from_utf8(key).unwrap_or("?")
}

impl Meta {
    /// Opens the metadata of a node, creating its identity on first start,
    /// bumping its generation and reserving a block of epochs. Detects an
    /// unclean previous stop and sets the restart mark then.
    pub fn open(
        engine: Arc<dyn Engine>,
        commit: GroupCommit,
        data_dir: String,
    ) -> Result<(Meta, StartInfo), MetaError> {
        let corrupt = |name: &'static [u8], reason: String| MetaError::Corrupt {
            name: name_of(name),
            data_dir: data_dir.clone(),
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

        // Clean stop: the marker is written only after the final flush.
        let clean_stop = engine.get(Space::Meta, CLEAN_STOP)?.is_some();
        let unclean_restart = !first_start && !clean_stop;

        // Epochs: continue above everything reserved before. An unreadable
        // reservation disables coordination of puts.
        let (epoch_floor, epochs_available) = match read_u64(engine.as_ref(), EPOCH_RESERVED)? {
            Some(Ok(value)) => (value, true),
            None if first_start => (0, true),
            None => (0, false),
            Some(Err(reason)) => {
                tracing::error!(%reason, "epoch reservation record is unreadable; this node will not coordinate puts until its data directory is wiped");
                (0, false)
            }
        };
        let stored_mark = match read_u64(engine.as_ref(), RESTART_MARK)? {
            Some(Ok(value)) => value,
            Some(Err(reason)) => return Err(corrupt(RESTART_MARK, reason)),
            None => 0,
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

        let mut ops = vec![
            u64_op(NODE_ID, node_id),
            u64_op(GENERATION, generation),
            u64_op(RESTART_MARK, restart_mark),
            WriteOp {
                space: Space::Meta,
                key: CLEAN_STOP.to_vec(),
                value: None,
            },
        ];
        if epochs_available {
            ops.push(u64_op(EPOCH_RESERVED, reserved));
        }
        engine.write(&ops)?;
        commit.flush_now_blocking()?;

        let epochs = Arc::new(EpochCounter {
            current: AtomicU64::new(epoch_floor),
            reserved: Mutex::new(reserved),
            available: AtomicBool::new(epochs_available),
            engine: engine.clone(),
            commit: commit.clone(),
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
            },
            info,
        ))
    }

    pub fn epochs(&self) -> Arc<EpochCounter> {
        self.epochs.clone()
    }

    pub fn data_dir(&self) -> &str {
        &self.data_dir
    }

    /// Stores the ring durably.
    pub fn save_ring(&self, ring: &Ring) -> Result<(), MetaError> {
        self.engine.write(&[WriteOp {
            space: Space::Meta,
            key: RING.to_vec(),
            value: Some(record::encode(&ring.encode())),
        }])?;
        self.commit.flush_now_blocking()?;
        Ok(())
    }

    /// Writes the clean-stop marker. Call only after the final flush of the
    /// data, so the marker never claims more than is on disk.
    pub fn mark_clean_stop(&self) -> Result<(), MetaError> {
        self.engine.write(&[WriteOp {
            space: Space::Meta,
            key: CLEAN_STOP.to_vec(),
            value: Some(record::encode(&[1])),
        }])?;
        self.commit.flush_now_blocking()?;
        Ok(())
    }
}

/// The node-wide epoch counter. It never goes back: epochs are reserved in
/// blocks whose upper bound is fsynced before any epoch of the block is
/// handed out, and a restart continues above the last reservation.
pub struct EpochCounter {
    current: AtomicU64,
    reserved: Mutex<u64>,
    available: AtomicBool,
    engine: Arc<dyn Engine>,
    commit: GroupCommit,
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
            let written = self
                .engine
                .write(&[u64_op(EPOCH_RESERVED, next_reserved)])
                .and_then(|()| self.commit.flush_now_blocking());
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
