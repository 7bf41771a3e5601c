//! Hint storage of hinted handoff: key states that this node holds for other
//! nodes, in the engine's hints space and apart from its own data.
//!
//! A hint's storage key is `partition (u32 BE) || target node id (u64 BE) ||
//! storage key of the user key`, so the hints of one partition, and the hints
//! of one partition for one target, are contiguous ranges of the space. Its
//! value is a checksummed record of the key's canonical state.
//!
//! Every change of a hint runs under the key's lock from [`LocalStore`]'s
//! striped table, the lock that also guards the key's data. A hint stored for
//! a key and target that already have one is merged into it, so one hint per
//! (key, target) carries everything sent for that pair. A hint is deleted
//! only if its state is still the one that was delivered.

use crate::store::{LocalStore, StoreError};
use kv_cluster::hash::{partition_of, storage_key};
use kv_cluster::version::State;
use kv_cluster::NodeId;
use kv_storage::{record, Space, WriteOp};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Hints read per engine scan when counting them at start.
const COUNT_PAGE: usize = 4096;

/// Length of the hint key prefix: partition and target.
const PREFIX_LEN: usize = 4 + 8;

/// Length of the hash that starts a storage key.
const HASH_LEN: usize = 8;

/// One hint as read from the hints space.
pub struct HeldHint {
    /// Storage key of the hint in the hints space.
    pub hint_key: Vec<u8>,
    pub partition: u32,
    /// Node the hint is meant for.
    pub target: NodeId,
    /// User key.
    pub key: Vec<u8>,
    /// The stored record, decoded by [`HeldHint::state`].
    record: Vec<u8>,
}

impl HeldHint {
    /// Decodes the state to deliver; `None` when the stored record is
    /// unreadable.
    pub fn state(&self) -> Option<State> {
        decode_hint(&self.record).ok()
    }
}

/// The hints this node holds, with a count per target node.
pub struct HintStore {
    store: Arc<LocalStore>,
    /// Q of the cluster, fixed when the cluster was created.
    partitions: u32,
    /// Hints held per target node, changed under the keys' locks together
    /// with the hints space.
    counts: Mutex<BTreeMap<NodeId, u64>>,
}

/// Returns the hint key of `key` for `target`.
pub fn hint_key(partition: u32, target: NodeId, key: &[u8]) -> Vec<u8> {
    let stored = storage_key(key);
    let mut out = Vec::with_capacity(PREFIX_LEN + stored.len());
    out.extend_from_slice(&partition.to_be_bytes());
    out.extend_from_slice(&target.to_be_bytes());
    out.extend_from_slice(&stored);
    out
}

/// Splits a hint key into partition, target and user key; `None` when it is
/// too short to be one.
pub fn parse_hint_key(hint_key: &[u8]) -> Option<(u32, NodeId, Vec<u8>)> {
    if hint_key.len() <= PREFIX_LEN + HASH_LEN {
        return None;
    }
    let partition = u32::from_be_bytes(hint_key[0..4].try_into().ok()?);
    let target = NodeId::from_be_bytes(hint_key[4..PREFIX_LEN].try_into().ok()?);
    let key = hint_key[PREFIX_LEN + HASH_LEN..].to_vec();
    Some((partition, target, key))
}

/// Returns the first hint key after every hint of `partition` for `target`,
/// or `None` when no hint key can follow them.
pub fn after_target(partition: u32, target: NodeId) -> Option<Vec<u8>> {
    match target.checked_add(1) {
        Some(next) => {
            let mut out = partition.to_be_bytes().to_vec();
            out.extend_from_slice(&next.to_be_bytes());
            Some(out)
        }
        None => partition_hint_range(partition).1,
    }
}

/// Returns the key range `[start, end)` of the hints of one partition.
fn partition_hint_range(partition: u32) -> (Vec<u8>, Option<Vec<u8>>) {
    let start = partition.to_be_bytes().to_vec();
    let end = partition
        .checked_add(1)
        .map(|next| next.to_be_bytes().to_vec());
    (start, end)
}

fn encode_hint(state: &State) -> Vec<u8> {
    record::encode(&state.encode())
}

fn decode_hint(bytes: &[u8]) -> Result<State, String> {
    let payload = record::decode(bytes).map_err(|error| error.to_string())?;
    State::decode(payload).map_err(|error| error.to_string())
}

impl HintStore {
    /// Opens the hint store of a node and counts the hints it holds
    /// (blocking: one scan of the hints space).
    pub fn open(store: Arc<LocalStore>, partitions: u32) -> Result<HintStore, StoreError> {
        let mut counts: BTreeMap<NodeId, u64> = BTreeMap::new();
        let mut start: Vec<u8> = Vec::new();
        loop {
            let page = store
                .engine()
                .scan(Space::Hints, &start, None, COUNT_PAGE)?;
            let Some((last, _)) = page.last() else { break };
            for (hint_key, _) in &page {
                match parse_hint_key(hint_key) {
                    Some((_, target, _)) => *counts.entry(target).or_insert(0) += 1,
                    None => tracing::warn!(
                        length = hint_key.len(),
                        "ignoring a malformed key in the hints space"
                    ),
                }
            }
            start = successor(last);
        }
        let held: u64 = counts.values().sum();
        if held > 0 {
            tracing::info!(
                hints = held,
                targets = counts.len(),
                "found hints held for other nodes"
            );
        }
        Ok(HintStore {
            store,
            partitions,
            counts: Mutex::new(counts),
        })
    }

    fn lock_counts(&self) -> MutexGuard<'_, BTreeMap<NodeId, u64>> {
        self.counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn count_added(&self, target: NodeId) {
        *self.lock_counts().entry(target).or_insert(0) += 1;
    }

    fn count_removed(&self, target: NodeId) {
        let mut counts = self.lock_counts();
        if let Some(count) = counts.get_mut(&target) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&target);
            }
        }
    }

    /// Hints held per target node.
    pub fn counts(&self) -> BTreeMap<NodeId, u64> {
        self.lock_counts().clone()
    }

    /// Number of hints held for all targets.
    pub fn total(&self) -> u64 {
        self.lock_counts().values().sum()
    }

    fn partition_of_key(&self, key: &[u8]) -> u32 {
        partition_of(kv_cluster::hash::key_hash(key), self.partitions)
    }

    /// Merges `state` into the hint of `key` for `target` (blocking). The
    /// caller holds the key's lock and makes the write durable.
    fn merge_hint_locked(
        &self,
        key: &[u8],
        target: NodeId,
        state: &State,
    ) -> Result<(), StoreError> {
        let hint_key = hint_key(self.partition_of_key(key), target, key);
        let engine = self.store.engine();
        let existing = engine.get(Space::Hints, &hint_key)?;
        let merged = match &existing {
            None => state.clone(),
            Some(bytes) => match decode_hint(bytes) {
                Ok(held) => {
                    let merged = held.merge(state);
                    if merged.dot_conflicts > 0 {
                        tracing::error!(key = %crate::coordinator::display_key(key), conflicts = merged.dot_conflicts, "a hint and an incoming state hold the same dot with different values; kept the value with the larger digest");
                    }
                    if merged.state == held {
                        return Ok(());
                    }
                    merged.state
                }
                Err(reason) => {
                    // The unreadable hint cannot be delivered anyway; the
                    // incoming state replaces it.
                    tracing::warn!(key = %crate::coordinator::display_key(key), %reason, "replacing an unreadable hint");
                    state.clone()
                }
            },
        };
        engine.write(&[WriteOp::put(Space::Hints, hint_key, encode_hint(&merged))])?;
        if existing.is_none() {
            self.count_added(target);
        }
        Ok(())
    }

    /// Stores hints, each a (key, target, state), merging each into the
    /// hint already held for its key and target. Returns one result per
    /// hint, in order, once every stored hint is durable.
    pub async fn store(
        self: &Arc<Self>,
        hints: Vec<(Vec<u8>, NodeId, State)>,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        if hints.is_empty() {
            return Ok(Vec::new());
        }
        let this = self.clone();
        let results = self
            .store
            .pool()
            .run(move || {
                hints
                    .iter()
                    .map(|(key, target, state)| {
                        let _guard = this.store.lock_key(key);
                        this.merge_hint_locked(key, *target, state)
                    })
                    .collect::<Vec<_>>()
            })
            .await?;
        // An unchanged hint is made durable too: the write it matched may
        // still wait for its flush.
        if results.iter().any(Result::is_ok) {
            self.store.commit().durable().await?;
        }
        Ok(results)
    }

    /// Returns whether this node stores a hint for any key of `partition`.
    pub async fn holds_partition(self: &Arc<Self>, partition: u32) -> Result<bool, StoreError> {
        let store = self.store.clone();
        self.store
            .pool()
            .run(move || {
                let (start, end) = partition_hint_range(partition);
                let found = store
                    .engine()
                    .scan(Space::Hints, &start, end.as_deref(), 1)?;
                Ok(!found.is_empty())
            })
            .await?
    }

    /// Reads up to `limit` hints in key order, from the hint key `start`
    /// on. Keys that do not parse as hint keys are left out.
    pub async fn page(
        self: &Arc<Self>,
        start: Vec<u8>,
        limit: usize,
    ) -> Result<Vec<HeldHint>, StoreError> {
        let store = self.store.clone();
        self.store
            .pool()
            .run(move || {
                let entries = store.engine().scan(Space::Hints, &start, None, limit)?;
                let hints: Vec<HeldHint> = entries
                    .into_iter()
                    .filter_map(|(hint_key, record)| {
                        let (partition, target, key) = parse_hint_key(&hint_key)?;
                        Some(HeldHint {
                            hint_key,
                            partition,
                            target,
                            key,
                            record,
                        })
                    })
                    .collect();
                Ok(hints)
            })
            .await?
    }

    /// Deletes the hint of `key` for `target` if its state still has
    /// `digest`, the digest of the state that the target acknowledged.
    /// Returns whether it deleted the hint. A hint merged with a newer state
    /// since it was sent stays, to be sent again.
    pub async fn delete_if_unchanged(
        self: &Arc<Self>,
        key: &[u8],
        target: NodeId,
        digest: u128,
    ) -> Result<bool, StoreError> {
        let this = self.clone();
        let key = key.to_vec();
        self.store
            .pool()
            .run(move || {
                let _guard = this.store.lock_key(&key);
                let hint_key = hint_key(this.partition_of_key(&key), target, &key);
                let engine = this.store.engine();
                let Some(bytes) = engine.get(Space::Hints, &hint_key)? else {
                    return Ok(false);
                };
                let unchanged = decode_hint(&bytes).is_ok_and(|state| state.digest(&key) == digest);
                if !unchanged {
                    return Ok(false);
                }
                engine.write(&[WriteOp::delete(Space::Hints, hint_key)])?;
                this.count_removed(target);
                Ok(true)
            })
            .await?
    }

    /// Moves the hint of `key` for `target` to `owners`, the key's
    /// preference list in this node's current ring, for a target that no
    /// longer replicates the key. The state is merged into this node's own
    /// copy when `me` is an owner, and into a hint for each other owner. The
    /// old hint is deleted in the same engine write as the new hints, and the
    /// result is durable when this returns. With no owners nothing changes,
    /// so a hint is never dropped.
    pub async fn rehome(
        self: &Arc<Self>,
        key: &[u8],
        target: NodeId,
        owners: Vec<NodeId>,
        me: NodeId,
    ) -> Result<(), StoreError> {
        if owners.is_empty() {
            return Ok(());
        }
        let this = self.clone();
        let key = key.to_vec();
        self.store
            .pool()
            .run(move || this.rehome_blocking(&key, target, &owners, me))
            .await??;
        self.store.commit().durable().await?;
        Ok(())
    }

    fn rehome_blocking(
        &self,
        key: &[u8],
        target: NodeId,
        owners: &[NodeId],
        me: NodeId,
    ) -> Result<(), StoreError> {
        let _guard = self.store.lock_key(key);
        let old_key = hint_key(self.partition_of_key(key), target, key);
        let engine = self.store.engine();
        let Some(bytes) = engine.get(Space::Hints, &old_key)? else {
            return Ok(());
        };
        let Ok(state) = decode_hint(&bytes) else {
            // An unreadable hint stays where it is and is reported as held.
            return Ok(());
        };

        if owners.contains(&me) {
            // This node's own copy: the data write comes first, so a crash
            // before the hint's delete leaves the hint to be moved again.
            self.store.merge_locked(key, &storage_key(key), &state)?;
        }

        let mut ops = Vec::new();
        let mut added = Vec::new();
        for owner in owners.iter().copied().filter(|owner| *owner != me) {
            let new_key = hint_key(self.partition_of_key(key), owner, key);
            let merged = match engine.get(Space::Hints, &new_key)? {
                Some(existing) => match decode_hint(&existing) {
                    Ok(held) => held.merge(&state).state,
                    Err(_) => state.clone(),
                },
                None => {
                    added.push(owner);
                    state.clone()
                }
            };
            ops.push(WriteOp::put(Space::Hints, new_key, encode_hint(&merged)));
        }
        ops.push(WriteOp::delete(Space::Hints, old_key));

        engine.write(&ops)?;
        for owner in added {
            self.count_added(owner);
        }
        self.count_removed(target);
        Ok(())
    }
}

/// Returns the smallest key greater than `key`.
pub fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::Meta;
    use crate::pool::StoragePool;
    use crate::stats::Stats;
    use crate::store::StoreIdentity;
    use kv_cluster::version::{Actor, Dot, Value, VersionVector};
    use kv_storage::{EngineKind, GroupCommit, SyncMode};
    use std::path::Path;

    const PARTITIONS: u32 = 16;
    const TARGET: NodeId = 0x7a7a;

    /// Opens a hint store over a new fjall engine in `dir`.
    fn open_hints(dir: &Path) -> Arc<HintStore> {
        let engine = kv_storage::open(EngineKind::Fjall, dir).expect("open the engine");
        let commit = GroupCommit::start(engine.clone(), SyncMode::Always);
        let (meta, info) =
            Meta::open(engine.clone(), commit.clone(), dir.to_path_buf()).expect("open metadata");
        let (repair_tx, _) = tokio::sync::mpsc::unbounded_channel();
        let store = Arc::new(LocalStore::new(
            StoreIdentity {
                node_id: info.node_id,
                restart_mark: info.restart_mark,
                holds_data: false,
                write_sequence: meta.write_sequence(),
                tree_geometry: kv_cluster::tree::TreeGeometry {
                    partitions: PARTITIONS,
                    leaves: kv_cluster::ring::DEFAULT_TREE_LEAVES,
                },
            },
            engine,
            commit,
            meta.epochs(),
            Arc::new(Stats::default()),
            repair_tx,
            StoragePool::start(1).expect("start a storage thread"),
        ));
        Arc::new(HintStore::open(store, PARTITIONS).expect("open the hint store"))
    }

    /// Builds a state with one value, written by `counter` of one actor,
    /// whose context covers every earlier counter of that actor.
    fn state(counter: u64, value: &str) -> State {
        let actor = Actor { node: 1, epoch: 1 };
        let mut context = VersionVector::new();
        context.entries.insert(actor, counter);
        let mut values = std::collections::BTreeMap::new();
        values.insert(
            Dot { actor, counter },
            Value::Data(value.as_bytes().to_vec()),
        );
        State { context, values }
    }

    async fn held(hints: &Arc<HintStore>) -> Vec<HeldHint> {
        hints.page(Vec::new(), 100).await.expect("read the hints")
    }

    #[tokio::test]
    async fn hint_merged_in_flight_is_not_deleted() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let hints = open_hints(dir.path());
        let key = b"account".to_vec();

        hints
            .store(vec![(key.clone(), TARGET, state(1, "old"))])
            .await
            .expect("store the first hint");
        // The delivery round reads the hint and sends it.
        let sent = held(&hints).await.remove(0);
        let sent_digest = sent.state().expect("readable hint").digest(&key);

        // A newer write reaches the stand-in while the delivery is in flight.
        hints
            .store(vec![(key.clone(), TARGET, state(2, "new"))])
            .await
            .expect("store the newer hint");
        assert_eq!(
            hints.counts().get(&TARGET),
            Some(&1),
            "one hint per key and target"
        );

        // The target acknowledges the older state: the hint must stay.
        let deleted = hints
            .delete_if_unchanged(&key, TARGET, sent_digest)
            .await
            .expect("compare and delete");
        assert!(!deleted, "a hint changed since it was sent was deleted");
        let remaining = held(&hints).await;
        assert_eq!(remaining.len(), 1);
        let newer = remaining[0].state().expect("readable hint");
        assert_eq!(
            newer.live_values(),
            vec![b"new".as_slice()],
            "the kept hint carries the newer write"
        );

        // The next round sends the newer state; its acknowledgement deletes.
        let deleted = hints
            .delete_if_unchanged(&key, TARGET, newer.digest(&key))
            .await
            .expect("compare and delete");
        assert!(
            deleted,
            "an unchanged hint was kept after its acknowledgement"
        );
        assert!(held(&hints).await.is_empty());
        assert_eq!(hints.total(), 0);
    }

    #[tokio::test]
    async fn reopened_store_keeps_hints() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let key = b"durable".to_vec();
        let partition = partition_of(kv_cluster::hash::key_hash(&key), PARTITIONS);
        {
            let hints = open_hints(dir.path());
            hints
                .store(vec![(key.clone(), TARGET, state(1, "v"))])
                .await
                .expect("store a hint");
        }
        let hints = open_hints(dir.path());
        assert_eq!(
            hints.counts().get(&TARGET),
            Some(&1),
            "the count is rebuilt at open"
        );
        assert!(hints.holds_partition(partition).await.expect("scan"));
        let other = (partition + 1) % PARTITIONS;
        assert!(!hints.holds_partition(other).await.expect("scan"));
    }

    #[tokio::test]
    async fn rehome_moves_a_hint_to_the_current_owners() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let hints = open_hints(dir.path());
        // Any id works for this node: the merge into its data does not use it.
        let me: NodeId = 0x4d4d;
        let key = b"moved".to_vec();
        hints
            .store(vec![(key.clone(), TARGET, state(1, "v"))])
            .await
            .expect("store a hint");

        let owner: NodeId = 0x5151;
        hints
            .rehome(&key, TARGET, vec![me, owner], me)
            .await
            .expect("move the hint");
        let counts = hints.counts();
        assert_eq!(counts.get(&TARGET), None, "the old hint is gone");
        assert_eq!(counts.get(&owner), Some(&1), "the other owner gets a hint");
        let local = hints.store.read(&key).await.expect("read the local copy");
        assert!(
            matches!(local, kv_cluster::causality::LocalCopy::Present { .. }),
            "this node, an owner, merged the state into its data"
        );
    }

    #[test]
    fn hint_key_round_trips() {
        let key = b"user:42";
        let encoded = hint_key(7, 0xfeed_beef, key);
        let (partition, target, decoded) = parse_hint_key(&encoded).expect("parses");
        assert_eq!(partition, 7);
        assert_eq!(target, 0xfeed_beef);
        assert_eq!(decoded, key.to_vec());
    }

    #[test]
    fn hint_keys_of_a_partition_are_one_range() {
        let (start, end) = partition_hint_range(3);
        let end = end.expect("partition 3 is not the last");
        for (partition, inside) in [(2, false), (3, true), (4, false)] {
            let encoded = hint_key(partition, 1, b"k");
            let in_range = encoded.as_slice() >= start.as_slice() && encoded < end;
            assert_eq!(in_range, inside, "partition {partition}");
        }
    }

    #[test]
    fn after_target_skips_one_target_of_a_partition() {
        let next = after_target(3, 9).expect("a key follows");
        assert!(
            hint_key(3, 9, b"zzzz") < next,
            "a hint of the target is not skipped"
        );
        assert!(next <= hint_key(3, 10, b"a"), "the next target is skipped");
        let last = after_target(3, NodeId::MAX).expect("the next partition follows");
        assert!(hint_key(3, NodeId::MAX, b"zzzz") < last);
        assert!(last <= hint_key(4, 0, b"a"));
    }

    #[test]
    fn short_hint_key_is_rejected() {
        assert!(parse_hint_key(&[0; PREFIX_LEN + HASH_LEN]).is_none());
    }
}
