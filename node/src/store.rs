//! The local replica store: one node's copy of each key it replicates.
//!
//! Every read-merge-write of a key (client put, replica write, read repair)
//! holds that key's lock from a striped lock table, so two merges of one key
//! never interleave and drop each other's values. The lock covers the local
//! read, the merge and the write into the engine. It is released before the
//! write is made durable and is never held across a network call. All engine
//! calls run on the storage threads ([`StoragePool`]), never on the async
//! executor threads.
//!
//! Every data write also updates the anti-entropy hash tree of the key's
//! partition ([`Trees`]), under the key's lock.
//!
//! A record that fails its checksum or does not decode is *unknown*: it is
//! never served, counted, logged, and queued for repair from other replicas.

use crate::meta::{EpochCounter, EpochHandle};
use crate::pool::{PoolError, StoragePool};
use crate::stats::Stats;
use crate::trees::{copy_digest, Trees};
use kv_cluster::causality::{
    self, coordinate_put, store_incoming, EpochUnavailable, LocalCopy, PutOutcome, Stored,
};
use kv_cluster::hash::storage_key;
use kv_cluster::tree::TreeGeometry;
use kv_cluster::version::{State, Value, VersionVector};
use kv_cluster::NodeId;
use kv_storage::{record, Engine, GroupCommit, Space, StorageError, WriteOp};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

const LOCK_STRIPES: usize = 4096;

/// Limits checked when a put is admitted.
#[derive(Clone, Copy, Debug)]
pub struct PutLimits {
    pub max_siblings: usize,
    pub max_state_bytes: usize,
}

/// Errors of local store operations.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Epoch(#[from] EpochUnavailable),
    #[error("the put would leave {siblings} siblings on the key, more than the limit of {limit}; read the key, resolve its siblings and put with the context of that read")]
    TooManySiblings { siblings: usize, limit: usize },
    #[error("the put would make the key's values {bytes} bytes in total, more than the limit of {limit} bytes; read the key, resolve its siblings and put with the context of that read")]
    StateTooLarge { bytes: usize, limit: usize },
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// Facts about its node that a store needs at start.
pub struct StoreIdentity {
    pub node_id: NodeId,
    /// Actors of this node with an epoch at or below the mark are never
    /// continued (set after an unclean stop).
    pub restart_mark: u64,
    /// True when the data space held a key at start.
    pub holds_data: bool,
    /// Write sequence number, bumped with every data write.
    pub write_sequence: Arc<std::sync::atomic::AtomicU64>,
    /// Partitions and hash-tree leaves of the cluster's ring.
    pub tree_geometry: TreeGeometry,
}

/// One node's copy of its keys.
pub struct LocalStore {
    node_id: NodeId,
    engine: Arc<dyn Engine>,
    commit: GroupCommit,
    locks: Vec<Mutex<()>>,
    epochs: Arc<EpochCounter>,
    restart_mark: u64,
    stats: Arc<Stats>,
    holds_data: AtomicBool,
    repair_tx: mpsc::UnboundedSender<Vec<u8>>,
    write_sequence: Arc<std::sync::atomic::AtomicU64>,
    pool: StoragePool,
    /// Anti-entropy hash trees, updated by every data write.
    trees: Arc<Trees>,
    /// Keys whose last write left only tombstones, for the reaper.
    tombstone_keys: Mutex<std::collections::HashSet<Vec<u8>>>,
}

/// One replica operation of a batch from a peer.
pub enum ReplicaOp {
    Read { key: Vec<u8> },
    Write { key: Vec<u8>, state: State },
}

/// Result of [`LocalStore::purge_if_unchanged`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PurgeResult {
    Purged,
    Missing,
    /// The record changed since the reaper decided, or is unreadable.
    Different,
}

/// Result of one [`ReplicaOp`].
pub enum ReplicaOpResult {
    Read(LocalCopy),
    Written,
}

impl LocalStore {
    pub fn new(
        identity: StoreIdentity,
        engine: Arc<dyn Engine>,
        commit: GroupCommit,
        epochs: Arc<EpochCounter>,
        stats: Arc<Stats>,
        repair_tx: mpsc::UnboundedSender<Vec<u8>>,
        pool: StoragePool,
    ) -> LocalStore {
        let StoreIdentity {
            node_id,
            restart_mark,
            holds_data,
            write_sequence,
            tree_geometry,
        } = identity;
        let trees = Arc::new(Trees::new(tree_geometry, engine.clone()));
        LocalStore {
            node_id,
            engine,
            commit,
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            epochs,
            restart_mark,
            stats,
            holds_data: AtomicBool::new(holds_data),
            repair_tx,
            write_sequence,
            pool,
            trees,
            tombstone_keys: Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// Takes the keys whose writes left only tombstones since the last call.
    pub(crate) fn take_tombstone_keys(&self) -> std::collections::HashSet<Vec<u8>> {
        std::mem::take(
            &mut *self
                .tombstone_keys
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    pub fn trees(&self) -> &Arc<Trees> {
        &self.trees
    }

    pub fn holds_data(&self) -> bool {
        self.holds_data.load(Ordering::Relaxed)
    }

    pub fn commit(&self) -> &GroupCommit {
        &self.commit
    }

    /// Returns the engine, for spaces other than data (hints).
    pub(crate) fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// Returns the storage threads that every engine call runs on.
    pub(crate) fn pool(&self) -> &StoragePool {
        &self.pool
    }

    /// Takes the lock of a user key, which guards its data and its hints.
    pub(crate) fn lock_key(&self, key: &[u8]) -> std::sync::MutexGuard<'_, ()> {
        self.lock_for(&storage_key(key))
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_for(&self, stored_key: &[u8]) -> &Mutex<()> {
        let hash = kv_cluster::hash::digest128(stored_key) as usize;
        &self.locks[hash % LOCK_STRIPES]
    }

    /// Reads the local copy of a key (blocking).
    fn read_blocking(&self, key: &[u8], stored_key: &[u8]) -> Result<LocalCopy, StoreError> {
        let Some(bytes) = self.engine.get(Space::Data, stored_key)? else {
            return Ok(LocalCopy::Missing);
        };
        let decoded = record::decode(&bytes)
            .map_err(|error| error.to_string())
            .and_then(|payload| {
                causality::decode_record(payload).map_err(|error| error.to_string())
            });
        match decoded {
            Ok((state, gen)) => Ok(LocalCopy::Present { state, gen }),
            Err(reason) => {
                self.stats.corrupt_records.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(key = %crate::coordinator::display_key(key), %reason, "stored record is unreadable; treating it as unknown and queueing a repair");
                let _ = self.repair_tx.send(key.to_vec());
                Ok(LocalCopy::Unknown)
            }
        }
    }

    /// Writes a key's record. `old` is the copy it replaces, read under the
    /// key's lock, and its digest leaves the hash tree.
    fn write_blocking(
        &self,
        key: &[u8],
        stored_key: &[u8],
        old: &LocalCopy,
        state: &State,
        gen: u64,
    ) -> Result<(), StoreError> {
        let payload = causality::encode_record(state, gen);
        let old_digest = copy_digest(key, old);
        let new_digest = state.digest(key);
        // The sequence number lets the next start tell whether the engine
        // lost writes since the last clean stop.
        let sequence = self.write_sequence.fetch_add(1, Ordering::SeqCst) + 1;
        let tree = self.trees.lock_for_write(stored_key);
        self.engine.write(&[
            WriteOp {
                space: Space::Data,
                key: stored_key.to_vec(),
                value: Some(record::encode(&payload)),
            },
            crate::meta::u64_op(crate::meta::WRITE_SEQUENCE, sequence),
        ])?;
        tree.record(old_digest, new_digest);
        self.holds_data.store(true, Ordering::Relaxed);
        if state.is_tombstone_only() {
            self.tombstone_keys
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .insert(key.to_vec());
        }
        Ok(())
    }

    /// Reads the local copy of a key.
    pub async fn read(self: &Arc<Self>, key: &[u8]) -> Result<LocalCopy, StoreError> {
        let store = self.clone();
        let key = key.to_vec();
        self.pool
            .run(move || {
                let stored_key = storage_key(&key);
                store.read_blocking(&key, &stored_key)
            })
            .await?
    }

    /// Applies a client put as coordinator and writes the result to the
    /// engine. The caller makes it durable with [`LocalStore::commit`].
    pub async fn coordinate_put(
        self: &Arc<Self>,
        key: &[u8],
        client_context: VersionVector,
        value: Value,
        limits: PutLimits,
    ) -> Result<PutOutcome, StoreError> {
        let store = self.clone();
        let key = key.to_vec();
        self.pool
            .run(move || {
                let stored_key = storage_key(&key);
                let _guard = store
                    .lock_for(&stored_key)
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());

                let local = store.read_blocking(&key, &stored_key)?;
                let (old_siblings, old_bytes) = match &local {
                    LocalCopy::Present { state, .. } => {
                        (state.sibling_count(), state.value_bytes())
                    }
                    _ => (0, 0),
                };
                let outcome = coordinate_put(
                    store.node_id,
                    &local,
                    &client_context,
                    value,
                    &mut EpochHandle(&store.epochs),
                    store.restart_mark,
                )?;

                // A put that does not grow the key past its old size is always
                // admitted, so resolving siblings stays possible.
                let siblings = outcome.state.sibling_count();
                if siblings > limits.max_siblings && siblings > old_siblings {
                    return Err(StoreError::TooManySiblings {
                        siblings,
                        limit: limits.max_siblings,
                    });
                }
                let bytes = outcome.state.value_bytes();
                if bytes > limits.max_state_bytes && bytes > old_bytes {
                    return Err(StoreError::StateTooLarge {
                        bytes,
                        limit: limits.max_state_bytes,
                    });
                }

                store.write_blocking(&key, &stored_key, &local, &outcome.state, outcome.gen)?;
                Ok(outcome)
            })
            .await?
    }

    /// Merges an incoming state into the local copy under the key's lock
    /// (blocking). The caller makes the result durable.
    fn merge_blocking(&self, key: &[u8], incoming: &State) -> Result<Stored, StoreError> {
        let stored_key = storage_key(key);
        let _guard = self
            .lock_for(&stored_key)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.merge_locked(key, &stored_key, incoming)
    }

    /// Merges an incoming state into the local copy (blocking). The caller
    /// holds the key's lock and makes the result durable.
    pub(crate) fn merge_locked(
        &self,
        key: &[u8],
        stored_key: &[u8],
        incoming: &State,
    ) -> Result<Stored, StoreError> {
        let local = self.read_blocking(key, stored_key)?;
        let stored = store_incoming(&local, incoming, self.epochs.value());
        if stored.dot_conflicts > 0 {
            self.stats
                .dot_conflicts
                .fetch_add(stored.dot_conflicts as u64, Ordering::Relaxed);
            tracing::error!(key = %crate::coordinator::display_key(key), conflicts = stored.dot_conflicts, "two replicas hold the same dot with different values; kept the value with the larger digest");
        }
        if stored.changed {
            self.write_blocking(key, stored_key, &local, &stored.state, stored.gen)?;
        }
        Ok(stored)
    }

    /// Merges an incoming state (read repair of the local copy) and returns
    /// once the result is durable.
    pub async fn store_incoming(
        self: &Arc<Self>,
        key: &[u8],
        incoming: State,
    ) -> Result<Stored, StoreError> {
        let store = self.clone();
        let key = key.to_vec();
        let stored = self
            .pool
            .run(move || store.merge_blocking(&key, &incoming))
            .await??;
        self.commit.durable().await?;
        Ok(stored)
    }

    /// Deletes a key's record if it still holds only tombstones and has
    /// `digest`, and returns once the deletion is durable. The reaper calls
    /// this on every owner after it decided to purge the key.
    pub async fn purge_if_unchanged(
        self: &Arc<Self>,
        key: &[u8],
        digest: u128,
    ) -> Result<PurgeResult, StoreError> {
        let store = self.clone();
        let key = key.to_vec();
        let result = self
            .pool
            .run(move || {
                let stored_key = storage_key(&key);
                let _guard = store
                    .lock_for(&stored_key)
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                let local = store.read_blocking(&key, &stored_key)?;
                let matches = match &local {
                    LocalCopy::Missing => return Ok::<_, StoreError>(PurgeResult::Missing),
                    LocalCopy::Unknown => false,
                    LocalCopy::Present { state, .. } => {
                        state.is_tombstone_only() && state.digest(&key) == digest
                    }
                };
                if !matches {
                    return Ok(PurgeResult::Different);
                }
                let sequence = store.write_sequence.fetch_add(1, Ordering::SeqCst) + 1;
                let tree = store.trees.lock_for_write(&stored_key);
                store.engine.write(&[
                    WriteOp {
                        space: Space::Data,
                        key: stored_key.clone(),
                        value: None,
                    },
                    crate::meta::u64_op(crate::meta::WRITE_SEQUENCE, sequence),
                ])?;
                tree.record(
                    copy_digest(&key, &local),
                    copy_digest(&key, &LocalCopy::Missing),
                );
                Ok(PurgeResult::Purged)
            })
            .await??;
        if result == PurgeResult::Purged {
            self.commit.durable().await?;
        }
        Ok(result)
    }

    /// Runs the replica operations of one batch from a peer in one storage
    /// job and returns one result per operation, in order. Returns once every
    /// write of the batch is durable. Each key is locked on its own, so no
    /// two locks are ever held at once.
    pub async fn apply_batch(
        self: &Arc<Self>,
        ops: Vec<ReplicaOp>,
    ) -> Result<Vec<Result<ReplicaOpResult, StoreError>>, StoreError> {
        let store = self.clone();
        let results = self
            .pool
            .run(move || {
                ops.into_iter()
                    .map(|op| match op {
                        ReplicaOp::Read { key } => store
                            .read_blocking(&key, &storage_key(&key))
                            .map(ReplicaOpResult::Read),
                        ReplicaOp::Write { key, state } => store
                            .merge_blocking(&key, &state)
                            .map(|_| ReplicaOpResult::Written),
                    })
                    .collect::<Vec<_>>()
            })
            .await?;
        // An unchanged write is made durable too: the state it matched may
        // still wait for its flush.
        let wrote = results
            .iter()
            .any(|result| matches!(result, Ok(ReplicaOpResult::Written)));
        if wrote {
            self.commit.durable().await?;
        }
        Ok(results)
    }
}
