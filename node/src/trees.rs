//! The in-memory anti-entropy hash trees of the partitions this node
//! replicates (see `kv_cluster::tree` for their layout).
//!
//! Each partition has a slot behind its own mutex. A data write locks the
//! slot of its partition across the engine write and the tree update
//! ([`Trees::lock_for_write`]), so the tree always matches what the engine
//! stores once the slot is free again.
//!
//! A (re)build scans the partition in chunks of [`SCAN_CHUNK`] records into a
//! fresh tree, each chunk under the slot's mutex, and keeps a cursor: the
//! last storage key scanned. A write at or below the cursor, or any write
//! once the scan has reached the end of the partition, is applied to the
//! fresh tree too, because the scan has already passed it; a write above the
//! cursor is left to the scan. Chunks leave the slot free in between, so
//! writes are held up for one chunk at most. When the scan ends, a fresh tree that
//! differs from the kept one is drift: it is counted, logged, and replaces
//! the kept tree.
//!
//! Until its first build finishes a partition has no kept tree and is not
//! exchanged with peers.

use kv_cluster::causality::{decode_record, LocalCopy};
use kv_cluster::hash::partition_range;
use kv_cluster::tree::{unknown_digest, HashTree, TreeGeometry};
use kv_storage::{record, Engine, Space, StorageError};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// Records read per scan step of a tree build, under the slot's mutex.
pub const SCAN_CHUNK: usize = 256;

/// Records read per engine call when listing the key digests of a leaf.
const LIST_CHUNK: usize = 1024;

/// Returns the tree digest of a key's local copy: 0 for a missing key, the
/// state digest for a readable record and [`unknown_digest`] for an
/// unreadable one.
pub fn copy_digest(key: &[u8], copy: &LocalCopy) -> u128 {
    match copy {
        LocalCopy::Missing => 0,
        LocalCopy::Unknown => unknown_digest(key),
        LocalCopy::Present { state, .. } => state.digest(key),
    }
}

/// Returns the user key and the tree digest of a stored data record. A
/// record that fails its checksum or does not decode gets
/// [`unknown_digest`].
pub fn stored_digest<'a>(stored_key: &'a [u8], value: &[u8]) -> (&'a [u8], u128) {
    let key = stored_key.get(8..).unwrap_or_default();
    let digest = record::decode(value)
        .ok()
        .and_then(|payload| decode_record(payload).ok())
        .map(|(state, _gen)| state.digest(key))
        .unwrap_or_else(|| unknown_digest(key));
    (key, digest)
}

/// Returns the ring position stored in the first 8 bytes of a storage key.
fn stored_hash(stored_key: &[u8]) -> u64 {
    let mut raw = [0u8; 8];
    if let Some(prefix) = stored_key.get(..8) {
        raw.copy_from_slice(prefix);
    }
    u64::from_be_bytes(raw)
}

#[derive(Default)]
struct Slot {
    /// The tree kept up to date by writes; `None` until the first build.
    tree: Option<HashTree>,
    built_at: Option<Instant>,
    build: Option<Build>,
    /// Builds started so far; names the current one.
    builds: u64,
}

/// A build in progress.
struct Build {
    id: u64,
    tree: HashTree,
    /// Last storage key scanned; `None` before the first chunk.
    cursor: Option<Vec<u8>>,
    /// The scan reached the end of the partition, so it has passed every
    /// key, also those created after the cursor was set.
    scanned: bool,
}

impl Build {
    fn has_passed(&self, stored_key: &[u8]) -> bool {
        self.scanned
            || self
                .cursor
                .as_deref()
                .is_some_and(|cursor| stored_key <= cursor)
    }
}

/// Holds a partition's tree locked across an engine write; see
/// [`Trees::lock_for_write`].
pub struct TreeWriteGuard<'a> {
    slot: MutexGuard<'a, Slot>,
    stored_key: &'a [u8],
    leaf: u32,
}

impl TreeWriteGuard<'_> {
    /// Replaces the key's digest `old` with `new` in the kept tree, and in
    /// the tree being built when the scan has passed the key.
    pub fn record(mut self, old: u128, new: u128) {
        if old == new {
            return;
        }
        let leaf = self.leaf;
        let stored_key = self.stored_key;
        let slot = &mut *self.slot;
        if let Some(tree) = slot.tree.as_mut() {
            tree.update(leaf, old, new);
        }
        if let Some(build) = slot.build.as_mut() {
            if build.has_passed(stored_key) {
                build.tree.update(leaf, old, new);
            }
        }
    }
}

/// Result of a finished build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuildOutcome {
    /// Leaves of the fresh tree that differ from the kept tree (0 on a first
    /// build).
    pub drifted_leaves: usize,
    /// Records read by the scan.
    pub records: u64,
    /// Records among them that failed their checksum or did not decode.
    pub unreadable: u64,
}

/// The trees of every partition of the ring, built only for the partitions
/// this node replicates.
pub struct Trees {
    geometry: TreeGeometry,
    engine: Arc<dyn Engine>,
    slots: Vec<Mutex<Slot>>,
}

impl Trees {
    pub fn new(geometry: TreeGeometry, engine: Arc<dyn Engine>) -> Trees {
        Trees {
            geometry,
            engine,
            slots: (0..geometry.partitions)
                .map(|_| Mutex::new(Slot::default()))
                .collect(),
        }
    }

    pub fn geometry(&self) -> TreeGeometry {
        self.geometry
    }

    fn slot(&self, partition: u32) -> Option<MutexGuard<'_, Slot>> {
        self.slots
            .get(partition as usize)
            .map(|slot| slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// Locks the tree of a storage key's partition. The caller writes the
    /// record to the engine while it holds the guard, then calls
    /// [`TreeWriteGuard::record`]; dropping the guard after a failed write
    /// leaves the tree as it was.
    pub fn lock_for_write<'a>(&'a self, stored_key: &'a [u8]) -> TreeWriteGuard<'a> {
        let (partition, leaf) = self.geometry.locate(stored_hash(stored_key));
        // `locate` returns a partition below Q, so the slot exists.
        let slot = self.slots[partition as usize]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        TreeWriteGuard {
            slot,
            stored_key,
            leaf,
        }
    }

    /// Returns a copy of a partition's kept tree, or `None` before its
    /// first build (or for a partition outside the ring).
    pub fn snapshot(&self, partition: u32) -> Option<HashTree> {
        self.slot(partition)?.tree.clone()
    }

    /// Returns when a partition's kept tree was built, or `None` before its
    /// first build.
    pub fn built_at(&self, partition: u32) -> Option<Instant> {
        self.slot(partition)?.built_at
    }

    /// Forgets the tree of a partition this node no longer replicates.
    pub fn discard(&self, partition: u32) {
        if let Some(mut slot) = self.slot(partition) {
            // `builds` stays, so a later build never reuses the id of one
            // discarded here.
            slot.tree = None;
            slot.built_at = None;
            slot.build = None;
        }
    }

    /// Rebuilds a partition's tree from storage in one blocking call, one
    /// chunk per lock of the slot. [`Trees::build_step`] lets other storage
    /// jobs run between chunks.
    #[cfg(test)]
    pub fn rebuild(&self, partition: u32) -> Result<BuildOutcome, StorageError> {
        let mut progress = BuildProgress::default();
        loop {
            if let Some(outcome) = self.build_step(partition, &mut progress)? {
                return Ok(outcome);
            }
        }
    }

    /// Runs one chunk of a partition's build and returns the outcome once
    /// the build has finished. A step with no build in progress starts one;
    /// otherwise it continues the build from its cursor.
    pub fn build_step(
        &self,
        partition: u32,
        progress: &mut BuildProgress,
    ) -> Result<Option<BuildOutcome>, StorageError> {
        let (partition_start, partition_end) = partition_range(partition, self.geometry.partitions);

        // Scan one chunk under the slot's mutex, so no write of the
        // partition falls between the scan and the cursor update.
        let entries = {
            let Some(mut slot) = self.slot(partition) else {
                return Ok(Some(BuildOutcome {
                    drifted_leaves: 0,
                    records: 0,
                    unreadable: 0,
                }));
            };
            let slot = &mut *slot;
            if slot.build.is_none() {
                slot.builds += 1;
            }
            let id = slot.builds;
            let build = slot.build.get_or_insert_with(|| Build {
                id,
                tree: HashTree::new(self.geometry.leaves),
                cursor: None,
                scanned: false,
            });
            let start = match &build.cursor {
                Some(cursor) => {
                    let mut next = cursor.clone();
                    next.push(0);
                    next
                }
                None => partition_start,
            };
            let entries =
                self.engine
                    .scan(Space::Data, &start, partition_end.as_deref(), SCAN_CHUNK)?;
            if let Some((last, _)) = entries.last() {
                build.cursor = Some(last.clone());
            }
            build.scanned = entries.len() < SCAN_CHUNK;
            (build.id, entries)
        };
        let (build_id, entries) = entries;

        // Digests are computed without the mutex. XOR commutes, so writes
        // applied to the fresh tree meanwhile do not change the result.
        let mut digests = Vec::with_capacity(entries.len());
        for (stored_key, value) in &entries {
            let (key, digest) = stored_digest(stored_key, value);
            if digest == unknown_digest(key) {
                progress.unreadable += 1;
            }
            let leaf = self.geometry.leaf_of(stored_hash(stored_key));
            digests.push((leaf, digest));
        }
        progress.records += entries.len() as u64;

        let abandoned = BuildOutcome {
            drifted_leaves: 0,
            records: progress.records,
            unreadable: progress.unreadable,
        };
        let Some(mut slot) = self.slot(partition) else {
            return Ok(Some(abandoned));
        };
        let Some(build) = slot.build.as_mut().filter(|build| build.id == build_id) else {
            // Discarded meanwhile (the partition is no longer replicated),
            // so these digests belong to no build.
            return Ok(Some(abandoned));
        };
        for (leaf, digest) in digests {
            build.tree.toggle(leaf, digest);
        }
        if !build.scanned {
            return Ok(None);
        }
        let fresh = slot.build.take().map(|build| build.tree);
        let drifted_leaves = match (&slot.tree, &fresh) {
            (Some(kept), Some(fresh)) => {
                kv_cluster::tree::differing_leaves(kept.leaves(), fresh.leaves()).len()
            }
            _ => 0,
        };
        slot.tree = fresh;
        slot.built_at = Some(Instant::now());
        Ok(Some(BuildOutcome {
            drifted_leaves,
            records: progress.records,
            unreadable: progress.unreadable,
        }))
    }

    /// Lists the key digests of whole leaves of a partition (blocking),
    /// leaf by leaf, and stops adding leaves once `max_keys` is reached.
    /// The first leaf is always listed, however many keys it holds.
    pub fn list_leaves(
        &self,
        partition: u32,
        leaves: &[u32],
        max_keys: usize,
    ) -> Result<LeafListing, StorageError> {
        let mut covered = Vec::new();
        let mut digests = BTreeMap::new();
        for &leaf in leaves {
            if !covered.is_empty() && digests.len() >= max_keys {
                break;
            }
            let (mut start, end) = self.geometry.leaf_storage_range(partition, leaf);
            loop {
                let entries = self
                    .engine
                    .scan(Space::Data, &start, end.as_deref(), LIST_CHUNK)?;
                for (stored_key, value) in &entries {
                    let (key, digest) = stored_digest(stored_key, value);
                    digests.insert(key.to_vec(), digest);
                }
                match entries.last() {
                    Some((last, _)) if entries.len() == LIST_CHUNK => {
                        start = last.clone();
                        start.push(0);
                    }
                    _ => break,
                }
            }
            covered.push(leaf);
        }
        Ok(LeafListing {
            leaves: covered,
            digests,
        })
    }
}

/// The key digests of whole leaves of one partition.
pub struct LeafListing {
    /// The leaves listed in full.
    pub leaves: Vec<u32>,
    /// Digest of every key stored in those leaves.
    pub digests: BTreeMap<Vec<u8>, u128>,
}

/// Counts carried between the steps of one build.
#[derive(Default)]
pub struct BuildProgress {
    records: u64,
    unreadable: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_cluster::causality::encode_record;
    use kv_cluster::hash::{key_hash, storage_key};
    use kv_cluster::version::{Actor, Dot, State, Value};
    use kv_storage::{EngineKind, WriteOp};

    fn state(value: &str) -> State {
        let actor = Actor { node: 1, epoch: 1 };
        let mut state = State::new();
        state.context.raise(actor, 1);
        state.values.insert(
            Dot { actor, counter: 1 },
            Value::Data(value.as_bytes().to_vec()),
        );
        state
    }

    /// Writes a record through the tree, as the store's write path does.
    fn write(trees: &Trees, engine: &Arc<dyn Engine>, key: &[u8], old: &LocalCopy, new: &State) {
        let stored_key = storage_key(key);
        let guard = trees.lock_for_write(&stored_key);
        engine
            .write(&[WriteOp::put(
                Space::Data,
                stored_key.clone(),
                record::encode(&encode_record(new, 1)),
            )])
            .expect("write");
        guard.record(copy_digest(key, old), new.digest(key));
    }

    fn open() -> (tempfile::TempDir, Arc<dyn Engine>) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let engine = kv_storage::open(EngineKind::Fjall, dir.path()).expect("open engine");
        (dir, engine)
    }

    #[test]
    fn build_includes_concurrent_writes() {
        let (_dir, engine) = open();
        // One partition, so every key lands in the tree under test.
        let trees = Trees::new(
            TreeGeometry {
                partitions: 1,
                leaves: 8,
            },
            engine.clone(),
        );
        let keys: Vec<Vec<u8>> = (0..(3 * SCAN_CHUNK))
            .map(|index| format!("key-{index}").into_bytes())
            .collect();
        for key in &keys {
            write(&trees, &engine, key, &LocalCopy::Missing, &state("v1"));
        }

        let mut versions = vec![1u32; keys.len()];
        let first = build_while_writing(&trees, &engine, &keys, &mut versions);
        assert_eq!(first.records, keys.len() as u64);
        assert_eq!(
            first.drifted_leaves, 0,
            "a first build has nothing to drift from"
        );

        // The kept tree follows the writes of the second build too.
        let second = build_while_writing(&trees, &engine, &keys, &mut versions);
        assert_eq!(
            second.drifted_leaves, 0,
            "a rebuild disagrees with the kept tree"
        );

        let built = trees.snapshot(0).expect("built");
        let quiet = trees.rebuild(0).expect("rebuild");
        assert_eq!(
            quiet.drifted_leaves, 0,
            "a rebuild disagrees with the kept tree"
        );
        assert_eq!(trees.snapshot(0), Some(built));
    }

    /// Builds partition 0 step by step and overwrites a third of the keys
    /// between the steps. Keys are stored in hash order, so some writes fall
    /// behind the cursor and some ahead of it.
    fn build_while_writing(
        trees: &Trees,
        engine: &Arc<dyn Engine>,
        keys: &[Vec<u8>],
        versions: &mut [u32],
    ) -> BuildOutcome {
        let mut progress = BuildProgress::default();
        let mut step = 0;
        loop {
            if let Some(outcome) = trees.build_step(0, &mut progress).expect("step") {
                assert!(step >= 3, "the build took {step} steps");
                return outcome;
            }
            for (index, key) in keys.iter().enumerate().skip(step % 3).step_by(3) {
                let old = LocalCopy::Present {
                    state: state(&format!("v{}", versions[index])),
                    gen: 1,
                };
                versions[index] += 1;
                let new = state(&format!("v{}", versions[index]));
                write(trees, engine, key, &old, &new);
            }
            step += 1;
        }
    }

    #[test]
    fn rebuild_reports_drift_and_replaces_tree() {
        let (_dir, engine) = open();
        let geometry = TreeGeometry {
            partitions: 4,
            leaves: 8,
        };
        let trees = Trees::new(geometry, engine.clone());
        let key = b"drifting";
        let partition = geometry.partition_of(key_hash(key));
        trees.rebuild(partition).expect("first build");
        write(&trees, &engine, key, &LocalCopy::Missing, &state("v1"));
        let expected = trees.snapshot(partition).expect("built");

        // A write that bypasses the tree, as a bug or outside damage would.
        engine
            .write(&[WriteOp::put(
                Space::Data,
                storage_key(key),
                record::encode(&encode_record(&state("v2"), 1)),
            )])
            .expect("write");
        let outcome = trees.rebuild(partition).expect("rebuild");
        assert_eq!(outcome.drifted_leaves, 1);
        assert_ne!(trees.snapshot(partition), Some(expected));
        assert_eq!(trees.rebuild(partition).expect("rebuild").drifted_leaves, 0);
    }

    #[test]
    fn unreadable_record_counts_as_unknown() {
        let (_dir, engine) = open();
        let geometry = TreeGeometry {
            partitions: 1,
            leaves: 4,
        };
        let trees = Trees::new(geometry, engine.clone());
        let stored_key = storage_key(b"broken");
        let mut bytes = record::encode(&encode_record(&state("v"), 1));
        let last = bytes.len() - 1;
        bytes[last] ^= 0x5a;
        engine
            .write(&[WriteOp::put(Space::Data, stored_key, bytes)])
            .expect("write");

        let outcome = trees.rebuild(0).expect("build");
        assert_eq!(outcome.unreadable, 1);
        let mut expected = HashTree::new(4);
        expected.toggle(
            geometry.leaf_of(key_hash(b"broken")),
            unknown_digest(b"broken"),
        );
        assert_eq!(trees.snapshot(0), Some(expected));

        let leaf = geometry.leaf_of(key_hash(b"broken"));
        let listing = trees.list_leaves(0, &[leaf], 10).expect("list");
        assert_eq!(listing.leaves, vec![leaf]);
        assert_eq!(
            listing.digests.get(&b"broken"[..]),
            Some(&unknown_digest(b"broken"))
        );
    }

    #[test]
    fn list_leaves_stops_at_the_key_limit() {
        let (_dir, engine) = open();
        let geometry = TreeGeometry {
            partitions: 1,
            leaves: 4,
        };
        let trees = Trees::new(geometry, engine.clone());
        for index in 0..200 {
            let key = format!("listed-{index}").into_bytes();
            write(&trees, &engine, &key, &LocalCopy::Missing, &state("v"));
        }
        let listing = trees.list_leaves(0, &[0, 1, 2, 3], 1).expect("list");
        assert_eq!(
            listing.leaves,
            vec![0],
            "the first leaf alone passes the limit"
        );
        let expected: usize = (0..200)
            .filter(|index| geometry.leaf_of(key_hash(format!("listed-{index}").as_bytes())) == 0)
            .count();
        assert_eq!(listing.digests.len(), expected);

        let listing = trees.list_leaves(0, &[0, 1, 2, 3], 1000).expect("list");
        assert_eq!(listing.leaves, vec![0, 1, 2, 3]);
        assert_eq!(listing.digests.len(), 200);
    }
}
