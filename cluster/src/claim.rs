//! The claim algorithm: which node owns each partition of the ring.
//!
//! Two layouts are used, chosen by the number of nodes n after a join:
//!
//! - n <= N + 1: the ring is laid out afresh from the nodes sorted by id.
//!   With n <= N every preference list holds every node anyway, so a fresh
//!   layout moves nothing between nodes as a set. At n = N + 1 the ring is a
//!   sequence of blocks, each a prefix of one fixed node order with a length
//!   of N or N + 1. A window of N partitions that straddles two blocks takes
//!   a suffix of the first block and a prefix of the second, which are
//!   distinct because the first block is at least N long, so any N
//!   consecutive partitions have distinct owners (the spacing rule).
//! - n > N + 1: the new node claims `round(Q / n)` partitions one at a time,
//!   each from the currently most loaded old owner, only at circular
//!   distance >= N from every partition it already took, and preferring
//!   positions far from those. Replacing an owner by a brand-new node never
//!   creates a repeat among old owners, so the spacing rule keeps holding,
//!   every window gains at most one new node, and each preference list
//!   changes only by inserting the new node and dropping one old member.
//!
//! Everything is deterministic (ties go to the lowest node id, then the
//! lowest partition), so every node computes the same ring.
//!
//! Known limits: the block layout needs Q to be a sum of Ns and (N + 1)s
//! (true for every Q >= N * (N - 1)); smaller rings fall back to round robin
//! and may break the spacing rule. A node joining a ring that already has Q
//! owners gets no partition. A claim costs O(Q) per claimed partition.

use crate::NodeId;
use std::cmp::Reverse;
use std::collections::BTreeMap;

/// Lays out the owners of a ring of `partitions` partitions afresh for
/// `nodes` (sorted, distinct, at most `replicas + 1` of them).
pub(crate) fn lay_out_fresh(partitions: u32, replicas: u32, nodes: &[NodeId]) -> Vec<NodeId> {
    let q = partitions as usize;
    let n = nodes.len();
    if n == 0 {
        return Vec::new();
    }
    let round_robin = || (0..q).map(|p| nodes[p % n]).collect::<Vec<_>>();
    if n != replicas as usize + 1 || replicas <= 1 {
        return round_robin();
    }

    // Q = long * (N + 1) + short * N, with as many long blocks as possible
    // so that the last node of the order (present only in long blocks) owns
    // nearly as much as the others.
    let block = replicas as usize;
    let Some((long, short)) = (0..=q / (block + 1))
        .rev()
        .map(|long| (long, q - long * (block + 1)))
        .find(|(_, rest)| rest % block == 0)
        .map(|(long, rest)| (long, rest / block))
    else {
        return round_robin();
    };

    // Spreads the short blocks evenly among the long ones.
    let blocks = long + short;
    let mut owners = Vec::with_capacity(q);
    for i in 0..blocks {
        let is_short = (i + 1) * short / blocks > i * short / blocks;
        let length = if is_short { block } else { block + 1 };
        owners.extend_from_slice(&nodes[..length]);
    }
    owners
}

/// Replaces owners of up to `target` partitions by `new_node`, taking each
/// from the most loaded old owner while keeping the new node's partitions at
/// circular distance >= `replicas` from each other.
pub(crate) fn claim_incremental(
    owners: &mut [NodeId],
    replicas: u32,
    new_node: NodeId,
    target: usize,
) {
    let q = owners.len();
    let spacing = replicas as usize;
    let mut load: BTreeMap<NodeId, usize> = BTreeMap::new();
    for &owner in owners.iter() {
        *load.entry(owner).or_default() += 1;
    }

    // Circular distance from each partition to the nearest one the new node
    // already holds (usize::MAX while it holds none).
    let mut distance = vec![usize::MAX; q];
    for (p, &owner) in owners.iter().enumerate() {
        if owner == new_node {
            update_distances(&mut distance, p);
        }
    }

    for _ in 0..target {
        let Some(chosen) = best_candidate(owners, spacing, &load, &distance, new_node) else {
            // NOTE: no partition of an old owner is far enough from the new
            // node's partitions; the new node ends up with fewer than its share.
            break;
        };
        let previous = owners[chosen];
        if let Some(count) = load.get_mut(&previous) {
            *count -= 1;
        }
        owners[chosen] = new_node;
        update_distances(&mut distance, chosen);
    }
}

/// The partition the new node takes next, or `None` when no partition
/// qualifies. Ordering: fixes a spacing violation, then the owner's load,
/// then the fewest other partitions it makes ineligible (so the new node
/// does not run out of room before it has its share), then the distance to
/// the new node's partitions, then the lowest owner id and partition.
fn best_candidate(
    owners: &[NodeId],
    spacing: usize,
    load: &BTreeMap<NodeId, usize>,
    distance: &[usize],
    new_node: NodeId,
) -> Option<usize> {
    type Key = (bool, usize, Reverse<usize>, usize, Reverse<NodeId>);
    let q = owners.len();
    let eligible = |p: usize| owners[p] != new_node && distance[p] >= spacing;
    let mut best: Option<(usize, Key)> = None;
    for (p, &owner) in owners.iter().enumerate() {
        if !eligible(p) {
            continue;
        }
        let blocked = (1..spacing.min(q))
            .flat_map(|k| [(p + k) % q, (p + q - k) % q])
            .filter(|&other| eligible(other))
            .count();
        let key = (
            violates_spacing(owners, p, spacing),
            load.get(&owner).copied().unwrap_or(0),
            Reverse(blocked),
            distance[p],
            Reverse(owner),
        );
        // Strictly greater keeps the lowest partition on ties.
        if best.as_ref().is_none_or(|(_, best_key)| key > *best_key) {
            best = Some((p, key));
        }
    }
    best.map(|(p, _)| p)
}

/// True when the owner of `p` also owns a partition less than `spacing`
/// positions away, so some window of `spacing` partitions repeats it.
pub(crate) fn violates_spacing(owners: &[NodeId], p: usize, spacing: usize) -> bool {
    let q = owners.len();
    (1..spacing.min(q))
        .any(|k| owners[(p + k) % q] == owners[p] || owners[(p + q - k) % q] == owners[p])
}

/// Lowers each entry of `distance` to its circular distance from `taken`.
fn update_distances(distance: &mut [usize], taken: usize) {
    let q = distance.len();
    for (p, entry) in distance.iter_mut().enumerate() {
        let gap = p.abs_diff(taken);
        let circular = gap.min(q - gap);
        if circular < *entry {
            *entry = circular;
        }
    }
}
