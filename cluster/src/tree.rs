//! Anti-entropy hash trees: one per partition, compared between replicas to
//! find the keys whose copies differ.
//!
//! A tree has `ring.tree_leaves` leaves. A key's leaf comes from the bits of
//! its xxh3-64 hash right below the partition bits, so every leaf is one
//! contiguous range of hashes and of storage keys. A leaf is the XOR of the
//! 128-bit digests of the keys in it: [`State::digest`] for a readable record
//! and [`unknown_digest`] for a record that fails its checksum. A missing key
//! adds nothing. XOR is commutative and its own inverse, so a write updates
//! a leaf in O(1): XOR out the old digest, XOR in the new one. The leaves
//! depend only on the set of (key, state) pairs, never on the order of the
//! writes. The root is the xxh3-128 hash of the leaves.
//!
//! Two replicas compare roots, then the leaves of a partition whose roots
//! differ, then the key digests of the leaves that differ
//! ([`differing_leaves`], [`differing_keys`]).

use crate::hash::{digest128, partition_of};
use crate::ring::Ring;
use std::collections::BTreeMap;

/// The layout of a cluster's trees: Q partitions of L leaves each, both
/// fixed in the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeGeometry {
    /// Q, a power of two.
    pub partitions: u32,
    /// Leaves per partition, at least 1.
    pub leaves: u32,
}

impl TreeGeometry {
    /// Returns the geometry of a ring's trees.
    pub fn of_ring(ring: &Ring) -> TreeGeometry {
        TreeGeometry {
            partitions: ring.partitions,
            leaves: ring.tree_leaves.max(1),
        }
    }

    /// Width of one partition in the hash space.
    fn partition_width(&self) -> u128 {
        1u128 << (64 - self.partitions.trailing_zeros())
    }

    /// Returns the partition of a key hash.
    pub fn partition_of(&self, hash: u64) -> u32 {
        partition_of(hash, self.partitions)
    }

    /// Returns the leaf of a key hash within its partition: the hash bits
    /// below the partition bits, scaled to the leaf count. With L a power of
    /// two this is the top log2(L) of those bits.
    pub fn leaf_of(&self, hash: u64) -> u32 {
        let width = self.partition_width();
        let offset = hash as u128 % width;
        (offset * self.leaves as u128 / width) as u32
    }

    /// Returns the partition and the leaf of a key hash.
    pub fn locate(&self, hash: u64) -> (u32, u32) {
        (self.partition_of(hash), self.leaf_of(hash))
    }

    /// Returns the half-open hash range `[start, end)` of a leaf. `end` is
    /// `None` when the range reaches the end of the hash space. A leaf is
    /// empty when the partition is narrower than its leaf count.
    pub fn leaf_hash_range(&self, partition: u32, leaf: u32) -> (u64, Option<u64>) {
        let width = self.partition_width();
        let leaves = self.leaves as u128;
        let base = partition as u128 * width;
        let start = base + (leaf as u128 * width).div_ceil(leaves);
        let end = base + ((leaf as u128 + 1) * width).div_ceil(leaves);
        let end = u64::try_from(end).ok();
        (start as u64, end)
    }

    /// Returns the half-open storage-key range of a leaf (see
    /// [`crate::hash::storage_key`]). `end` is `None` at the end of the
    /// hash space.
    pub fn leaf_storage_range(&self, partition: u32, leaf: u32) -> (Vec<u8>, Option<Vec<u8>>) {
        let (start, end) = self.leaf_hash_range(partition, leaf);
        (
            start.to_be_bytes().to_vec(),
            end.map(|end| end.to_be_bytes().to_vec()),
        )
    }
}

/// Marker hashed after the key in [`unknown_digest`]. No canonical state
/// encoding is one byte long, so the input never equals that of a state.
const UNKNOWN_MARKER: u8 = 0xff;

/// Returns the tree digest of an unreadable record of `key`. It depends on
/// the key, so two unreadable records in one leaf do not cancel each other
/// out.
pub fn unknown_digest(key: &[u8]) -> u128 {
    let mut input = Vec::with_capacity(8 + key.len() + 1);
    input.extend_from_slice(&(key.len() as u64).to_be_bytes());
    input.extend_from_slice(key);
    input.push(UNKNOWN_MARKER);
    digest128(&input)
}

/// The leaves of one partition's tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashTree {
    leaves: Vec<u128>,
}

impl HashTree {
    /// Creates the tree of an empty partition.
    pub fn new(leaves: u32) -> HashTree {
        HashTree {
            leaves: vec![0; leaves.max(1) as usize],
        }
    }

    /// Creates a tree from leaves received from a peer or kept elsewhere.
    pub fn from_leaves(leaves: Vec<u128>) -> HashTree {
        HashTree { leaves }
    }

    pub fn leaves(&self) -> &[u128] {
        &self.leaves
    }

    /// XORs a key digest into a leaf. Adding and removing a digest are the
    /// same operation. A leaf outside the tree is ignored, because only a
    /// geometry that differs from the tree's can produce one.
    pub fn toggle(&mut self, leaf: u32, digest: u128) {
        debug_assert!(
            (leaf as usize) < self.leaves.len(),
            "leaf {leaf} outside the tree"
        );
        if let Some(slot) = self.leaves.get_mut(leaf as usize) {
            *slot ^= digest;
        }
    }

    /// Replaces the digest `old` of a key with `new` (0 for a missing key).
    pub fn update(&mut self, leaf: u32, old: u128, new: u128) {
        self.toggle(leaf, old ^ new);
    }

    /// Returns the xxh3-128 hash of the leaves, each 16 bytes big-endian.
    pub fn root(&self) -> u128 {
        digest128(&encode_leaves(&self.leaves))
    }
}

/// Encodes leaves for the wire: 16 bytes big-endian each.
pub fn encode_leaves(leaves: &[u128]) -> Vec<u8> {
    leaves.iter().flat_map(|leaf| leaf.to_be_bytes()).collect()
}

/// Decodes leaves encoded by [`encode_leaves`].
pub fn decode_leaves(bytes: &[u8]) -> Result<Vec<u128>, String> {
    if !bytes.len().is_multiple_of(16) {
        return Err(format!(
            "invalid leaves: {} bytes is not a multiple of 16",
            bytes.len()
        ));
    }
    Ok(bytes
        .chunks_exact(16)
        .map(|chunk| {
            let mut raw = [0u8; 16];
            raw.copy_from_slice(chunk);
            u128::from_be_bytes(raw)
        })
        .collect())
}

/// Returns the indexes of the leaves that differ. Leaf vectors of different
/// lengths come from different geometries, and then every leaf differs.
pub fn differing_leaves(ours: &[u128], theirs: &[u128]) -> Vec<u32> {
    if ours.len() != theirs.len() {
        return (0..ours.len().max(theirs.len()) as u32).collect();
    }
    ours.iter()
        .zip(theirs)
        .enumerate()
        .filter(|(_, (left, right))| left != right)
        .map(|(index, _)| index as u32)
        .collect()
}

/// A key whose digest differs between two replicas. A side is `None` where
/// the key is missing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyDifference {
    pub key: Vec<u8>,
    pub ours: Option<u128>,
    pub theirs: Option<u128>,
}

/// Returns the keys whose digests differ between two replicas' listings of
/// the same leaves, in key order.
pub fn differing_keys(
    ours: &BTreeMap<Vec<u8>, u128>,
    theirs: &BTreeMap<Vec<u8>, u128>,
) -> Vec<KeyDifference> {
    let mut differences = Vec::new();
    for (key, digest) in ours {
        let other = theirs.get(key).copied();
        if other != Some(*digest) {
            differences.push(KeyDifference {
                key: key.clone(),
                ours: Some(*digest),
                theirs: other,
            });
        }
    }
    for (key, digest) in theirs {
        if !ours.contains_key(key) {
            differences.push(KeyDifference {
                key: key.clone(),
                ours: None,
                theirs: Some(*digest),
            });
        }
    }
    differences.sort_by(|left, right| left.key.cmp(&right.key));
    differences
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::{key_hash, storage_key};
    use crate::version::{Actor, Dot, State, Value};
    use proptest::prelude::*;

    fn geometry(partitions: u32, leaves: u32) -> TreeGeometry {
        TreeGeometry { partitions, leaves }
    }

    fn state(node: u64, counter: u64, value: &str) -> State {
        let actor = Actor { node, epoch: 1 };
        let mut state = State::new();
        state.context.raise(actor, counter);
        state.values.insert(
            Dot { actor, counter },
            Value::Data(value.as_bytes().to_vec()),
        );
        state
    }

    /// Builds a tree from the final (key, state) pairs, as a range scan does.
    fn rebuild(geometry: TreeGeometry, records: &BTreeMap<Vec<u8>, State>) -> Vec<HashTree> {
        let mut trees: Vec<HashTree> = (0..geometry.partitions)
            .map(|_| HashTree::new(geometry.leaves))
            .collect();
        for (key, state) in records {
            let (partition, leaf) = geometry.locate(key_hash(key));
            trees[partition as usize].toggle(leaf, state.digest(key));
        }
        trees
    }

    #[test]
    fn leaf_uses_bits_below_partition_bits() {
        let geometry = geometry(256, 64);
        let hash = (7u64 << 56) | (42u64 << 50) | 12345;
        assert_eq!(geometry.locate(hash), (7, 42));
        assert_eq!(geometry.locate(0), (0, 0));
        assert_eq!(geometry.locate(u64::MAX), (255, 63));
    }

    #[test]
    fn single_partition_ring_uses_top_bits() {
        let geometry = geometry(1, 64);
        assert_eq!(geometry.locate(u64::MAX), (0, 63));
        assert_eq!(geometry.locate(1u64 << 58), (0, 1));
        assert_eq!(geometry.leaf_hash_range(0, 0), (0, Some(1u64 << 58)));
        assert_eq!(geometry.leaf_hash_range(0, 63), (63u64 << 58, None));
    }

    #[test]
    fn leaf_ranges_tile_each_partition() {
        for (partitions, leaves) in [(256, 64), (16, 10), (1, 3), (4, 1), (65536, 64)] {
            let geometry = geometry(partitions, leaves);
            for partition in [0, partitions / 2, partitions - 1] {
                let (partition_start, partition_end) =
                    crate::hash::partition_range(partition, partitions);
                let (first_start, _) = geometry.leaf_storage_range(partition, 0);
                assert_eq!(first_start, partition_start, "Q={partitions} L={leaves}");
                let (_, last_end) = geometry.leaf_storage_range(partition, leaves - 1);
                assert_eq!(last_end, partition_end, "Q={partitions} L={leaves}");
                for leaf in 1..leaves {
                    let (_, previous_end) = geometry.leaf_hash_range(partition, leaf - 1);
                    let (start, _) = geometry.leaf_hash_range(partition, leaf);
                    assert_eq!(previous_end, Some(start), "Q={partitions} L={leaves}");
                }
            }
        }
    }

    #[test]
    fn unknown_digest_differs_per_key() {
        assert_ne!(unknown_digest(b"a"), unknown_digest(b"b"));
        assert_eq!(unknown_digest(b"a"), unknown_digest(b"a"));
        assert_ne!(unknown_digest(b"a"), State::new().digest(b"a"));
        assert_ne!(unknown_digest(b"a"), state(1, 1, "v").digest(b"a"));
    }

    #[test]
    fn unknown_records_do_not_cancel() {
        let mut tree = HashTree::new(1);
        tree.toggle(0, unknown_digest(b"first"));
        tree.toggle(0, unknown_digest(b"second"));
        assert_ne!(tree, HashTree::new(1));
    }

    #[test]
    fn digest_of_encoding_matches_state_digest() {
        let state = state(3, 2, "value");
        assert_eq!(
            crate::version::digest_of_encoding(b"key", &state.encode()),
            state.digest(b"key")
        );
    }

    #[test]
    fn equal_states_reached_by_different_merges_hash_equally() {
        let a = state(1, 1, "a");
        let b = state(2, 1, "b");
        let c = state(3, 4, "c");
        let left = a.merge(&b).state.merge(&c).state;
        let right = c.merge(&a).state.merge(&b).state;
        assert_eq!(left.digest(b"k"), right.digest(b"k"));

        let mut first = HashTree::new(8);
        let mut second = HashTree::new(8);
        first.toggle(3, left.digest(b"k"));
        second.toggle(3, right.digest(b"k"));
        assert_eq!(first.root(), second.root());
    }

    #[test]
    fn root_changes_with_any_leaf() {
        let empty = HashTree::new(4);
        for leaf in 0..4 {
            let mut changed = empty.clone();
            changed.toggle(leaf, 1);
            assert_ne!(changed.root(), empty.root(), "leaf {leaf}");
        }
    }

    #[test]
    fn update_replaces_old_digest() {
        let mut tree = HashTree::new(2);
        tree.update(1, 0, 5);
        tree.update(1, 5, 9);
        assert_eq!(tree.leaves(), &[0, 9]);
        tree.update(1, 9, 0);
        assert_eq!(tree, HashTree::new(2));
    }

    #[test]
    fn leaves_round_trip_through_encoding() {
        let leaves = vec![0, 1, u128::MAX, 0x0102_0304];
        assert_eq!(decode_leaves(&encode_leaves(&leaves)), Ok(leaves));
        assert!(decode_leaves(&[0u8; 15]).is_err());
    }

    #[test]
    fn differing_leaves_lists_changed_indexes() {
        assert_eq!(differing_leaves(&[1, 2, 3], &[1, 5, 3]), vec![1]);
        assert_eq!(differing_leaves(&[1, 2], &[1, 2]), Vec::<u32>::new());
        assert_eq!(differing_leaves(&[1], &[1, 2]), vec![0, 1]);
    }

    #[test]
    fn differing_keys_reports_each_side() {
        let ours: BTreeMap<Vec<u8>, u128> = [(b"a".to_vec(), 1), (b"b".to_vec(), 2)].into();
        let theirs: BTreeMap<Vec<u8>, u128> = [(b"b".to_vec(), 3), (b"c".to_vec(), 4)].into();
        let differences = differing_keys(&ours, &theirs);
        assert_eq!(
            differences,
            vec![
                KeyDifference {
                    key: b"a".to_vec(),
                    ours: Some(1),
                    theirs: None
                },
                KeyDifference {
                    key: b"b".to_vec(),
                    ours: Some(2),
                    theirs: Some(3)
                },
                KeyDifference {
                    key: b"c".to_vec(),
                    ours: None,
                    theirs: Some(4)
                },
            ]
        );
        assert!(differing_keys(&ours, &ours).is_empty());
    }

    /// One write of a random history: key index, then a new value (node,
    /// counter, value byte) or a delete of the record (None).
    type Write = (u8, Option<(u64, u64, u8)>);

    fn arb_writes() -> impl Strategy<Value = Vec<Write>> {
        proptest::collection::vec(
            (
                0u8..24,
                proptest::option::of((1u64..4, 1u64..5, any::<u8>())),
            ),
            0..64,
        )
    }

    proptest! {
        #[test]
        fn tree_updated_per_write_equals_rebuild(writes in arb_writes(), leaves in 1u32..9) {
            let geometry = geometry(4, leaves);
            let mut trees: Vec<HashTree> = (0..4).map(|_| HashTree::new(leaves)).collect();
            let mut records: BTreeMap<Vec<u8>, State> = BTreeMap::new();
            for (key_index, write) in writes {
                let key = format!("key-{key_index}").into_bytes();
                let old = records.get(&key).map(|state| state.digest(&key)).unwrap_or(0);
                let new_state = write.map(|(node, counter, byte)| {
                    state(node, counter, &byte.to_string())
                });
                let new = new_state.as_ref().map(|state| state.digest(&key)).unwrap_or(0);
                let (partition, leaf) = geometry.locate(key_hash(&key));
                trees[partition as usize].update(leaf, old, new);
                match new_state {
                    Some(state) => records.insert(key, state),
                    None => records.remove(&key),
                };
            }
            prop_assert_eq!(trees, rebuild(geometry, &records));
        }

        #[test]
        fn tree_is_independent_of_write_order(
            records in proptest::collection::btree_map(
                proptest::collection::vec(any::<u8>(), 1..6),
                (1u64..4, 1u64..5, any::<u8>()),
                0..32,
            ),
            seed in any::<u64>(),
        ) {
            let geometry = geometry(2, 4);
            let records: BTreeMap<Vec<u8>, State> = records
                .into_iter()
                .map(|(key, (node, counter, byte))| (key, state(node, counter, &byte.to_string())))
                .collect();
            let mut order: Vec<(&Vec<u8>, &State)> = records.iter().collect();
            // A deterministic shuffle driven by the seed.
            order.sort_by_key(|(key, _)| crate::hash::digest128(&[&seed.to_be_bytes()[..], key].concat()));
            let mut trees: Vec<HashTree> = (0..2).map(|_| HashTree::new(4)).collect();
            for (key, state) in order {
                let (partition, leaf) = geometry.locate(key_hash(key));
                trees[partition as usize].toggle(leaf, state.digest(key));
            }
            prop_assert_eq!(trees, rebuild(geometry, &records));
        }

        #[test]
        fn storage_key_falls_in_its_leaf_range(key in proptest::collection::vec(any::<u8>(), 1..16), leaves in 1u32..100) {
            let geometry = geometry(64, leaves);
            let (partition, leaf) = geometry.locate(key_hash(&key));
            let (start, end) = geometry.leaf_storage_range(partition, leaf);
            let stored = storage_key(&key);
            prop_assert!(stored >= start);
            if let Some(end) = end {
                prop_assert!(stored < end);
            }
        }
    }
}
