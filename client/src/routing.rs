//! Choice of the nodes a request is sent to, in the order they are tried.
//!
//! With a known ring, a keyed request goes to the key's preference list
//! (computed by kv-cluster from the ring), starting at a rotating position
//! so coordinator load spreads over the replicas, or at the owner when
//! rotation is off. The seed endpoints follow as a last resort: any node
//! forwards a request for a key it does not replicate. Requests without a
//! key, and every request while the ring is unknown, go to the ring's nodes
//! and then the seeds. Each address appears once.

use kv_cluster::ring::Ring;

use crate::types::RingSnapshot;

/// Returns `items` rotated left by `start % len`.
pub(crate) fn rotated<T: Clone>(items: &[T], start: usize) -> Vec<T> {
    if items.is_empty() {
        return Vec::new();
    }
    let split = start % items.len();
    let mut out = Vec::with_capacity(items.len());
    out.extend_from_slice(&items[split..]);
    out.extend_from_slice(&items[..split]);
    out
}

/// Appends the addresses of `extra` that `list` does not contain yet.
fn append_missing(list: &mut Vec<String>, extra: impl IntoIterator<Item = String>) {
    for address in extra {
        if !list.contains(&address) {
            list.push(address);
        }
    }
}

/// Orders the addresses a request is tried at.
///
/// `start` is a per-request counter used for rotation; `rotate` turns
/// rotation on or off. Requests without a key always rotate over the
/// ring's nodes. With rotation off, keyed requests start at the owner and
/// seeds are tried in the order given.
pub(crate) fn candidates(
    snapshot: Option<&RingSnapshot>,
    key: Option<&[u8]>,
    seeds: &[String],
    start: usize,
    rotate: bool,
) -> Vec<String> {
    let mut list = Vec::new();
    if let Some(snapshot) = snapshot {
        let preferred: Vec<String> = match key {
            Some(key) => preference_addresses(&snapshot.ring, snapshot, key),
            None => snapshot.addresses.values().cloned().collect(),
        };
        let start = if rotate || key.is_none() { start } else { 0 };
        append_missing(&mut list, rotated(&preferred, start));
    }
    let seed_start = if rotate { start } else { 0 };
    append_missing(&mut list, rotated(seeds, seed_start));
    list
}

/// Addresses of the key's preference list, skipping nodes without an
/// address in the snapshot.
fn preference_addresses(ring: &Ring, snapshot: &RingSnapshot, key: &[u8]) -> Vec<String> {
    ring.preference_list_for_key(key)
        .into_iter()
        .filter_map(|node| snapshot.address_of(node).map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn seeds() -> Vec<String> {
        vec!["s1:1".into(), "s2:2".into(), "s3:3".into()]
    }

    #[test]
    fn rotated_wraps_start() {
        assert_eq!(rotated(&[1, 2, 3], 0), vec![1, 2, 3]);
        assert_eq!(rotated(&[1, 2, 3], 4), vec![2, 3, 1]);
        assert!(rotated::<u8>(&[], 7).is_empty());
    }

    #[test]
    fn candidates_without_ring_use_seeds() {
        assert_eq!(
            candidates(None, Some(b"k"), &seeds(), 1, true),
            vec!["s2:2", "s3:3", "s1:1"]
        );
        assert_eq!(
            candidates(None, Some(b"k"), &seeds(), 1, false),
            vec!["s1:1", "s2:2", "s3:3"]
        );
    }

    #[test]
    fn candidates_without_key_use_ring_nodes_then_seeds() {
        let ring = Ring {
            cluster_id: "c".into(),
            partitions: 4,
            replicas: 2,
            owners: vec![1, 2, 1, 2],
            version: 3,
            claimant: 1,
            tree_leaves: 16,
            plan: None,
        };
        let snapshot = RingSnapshot {
            ring,
            addresses: BTreeMap::from([(1, "s1:1".to_string()), (2, "n2:2".to_string())]),
        };
        assert_eq!(
            candidates(Some(&snapshot), None, &seeds(), 0, true),
            vec!["s1:1", "n2:2", "s2:2", "s3:3"]
        );
    }
}
