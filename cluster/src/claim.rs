//! The claim algorithm: which node owns each partition of the ring.
//!
//! Two layouts are used, chosen by the number of nodes n after a join:
//!
//! - n <= N + 1: the ring is laid out afresh from the nodes sorted by id.
//!   With n <= N every preference list contains every node anyway, so a fresh
//!   layout moves nothing between nodes as a set. At n = N + 1 the ring is a
//!   sequence of blocks, each a prefix of one fixed node order with a length
//!   of N or N + 1. A window of N partitions that straddles two blocks takes
//!   a suffix of the first block and a prefix of the second. These are
//!   distinct because the first block is at least N long. So any N
//!   consecutive partitions have distinct owners (the spacing rule).
//! - n > N + 1: the new node claims `round(Q / n)` partitions one at a time,
//!   each from the currently most loaded old owner, only at circular
//!   distance >= N from every partition it already took, and preferring
//!   positions that leave room for its later picks. Replacing an owner by a brand-new node never
//!   creates a repeat among old owners, so the spacing rule keeps holding,
//!   every window gains at most one new node, and each preference list
//!   changes only by inserting the new node and dropping one old member.
//!
//! When nodes leave, [`reassign_leaving`] gives their partitions to the
//! remaining nodes without moving other partitions where the spacing rule
//! allows, and a ring left with N + 1 nodes or fewer is laid out afresh.
//!
//! Everything is deterministic (ties go to the lowest node id, then the
//! lowest partition), so every node computes the same ring.
//!
//! Known limits: the block layout needs Q to be a sum of Ns and (N + 1)s
//! (true for every Q >= N * (N - 1)); smaller rings fall back to round robin
//! and may break the spacing rule. A node joining a ring that already has Q
//! owners gets no partition.

use crate::NodeId;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

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
///
/// Each pick takes the best partition by this order:
/// 1. it fixes a spacing violation;
/// 2. its owner has the highest load;
/// 3. it makes the fewest other partitions ineligible, so the new node does
///    not run out of room before it has its share;
/// 4. it is farthest from the new node's partitions, with distances capped
///    at 2N (beyond that all count as far);
/// 5. its owner has the lowest id, then it is the lowest partition.
///
/// Candidates are kept in ordered sets that are updated only around each
/// pick, so a claim costs about O((Q + target * n) log Q) instead of
/// O(target * Q). Measured on a shared 2-core machine in a release build,
/// growing a Q=65536, N=3 ring from 1 to 20 nodes took about 0.5 s.
pub(crate) fn claim_incremental(
    owners: &mut [NodeId],
    replicas: u32,
    new_node: NodeId,
    target: usize,
) {
    let mut claim = Claim::new(owners, replicas as usize, new_node);
    for _ in 0..target {
        let Some(chosen) = claim.best_candidate() else {
            // NOTE: no partition of an old owner is far enough from the new
            // node's partitions; the new node ends up with fewer than its share.
            break;
        };
        claim.take(chosen);
    }
}

/// Gives each partition owned by a `leaving` node to a remaining node.
///
/// The orphaned partitions are handed out in increasing order. Each goes to
/// the least loaded remaining node (lowest id on ties) that owns no partition
/// less than `replicas` positions away, so the spacing rule keeps holding
/// where it held before, and no other partition changes owner.
///
/// When every remaining node is that close, which can happen only while at
/// most 2N - 2 nodes remain, a repair moves the nearby partitions of one
/// remaining node to other remaining nodes so that it can take the orphan.
/// When no repair exists either, the orphan goes to the least loaded node
/// and the spacing rule breaks around it. Returns the number of partitions
/// of remaining nodes that the repairs moved.
///
/// Changes nothing when every owner is leaving.
pub(crate) fn reassign_leaving(
    owners: &mut [NodeId],
    replicas: u32,
    leaving: &BTreeSet<NodeId>,
) -> usize {
    let q = owners.len();
    let spacing = replicas as usize;
    let mut load: BTreeMap<NodeId, usize> = BTreeMap::new();
    for &owner in owners.iter() {
        if !leaving.contains(&owner) {
            *load.entry(owner).or_default() += 1;
        }
    }
    let mut by_load: BTreeSet<(usize, NodeId)> =
        load.iter().map(|(&node, &count)| (count, node)).collect();
    let Some(&(_, least_loaded)) = by_load.first() else {
        return 0;
    };

    let orphaned: Vec<usize> = (0..q).filter(|&p| leaving.contains(&owners[p])).collect();
    let mut moved = 0;
    for p in orphaned {
        // Partitions that still belong to leaving nodes never match a
        // remaining node, so they need no special case here.
        let spaced = by_load
            .iter()
            .map(|&(_, node)| node)
            .find(|&node| is_spaced(owners, p, spacing, node));
        let node = match spaced {
            Some(node) => node,
            None => match plan_repair(owners, spacing, p, &by_load) {
                Some((node, relocations)) => {
                    for (r, target) in relocations {
                        change_owner(owners, &mut load, &mut by_load, r, target);
                        moved += 1;
                    }
                    node
                }
                // NOTE: the spacing rule breaks around `p` here.
                None => by_load.first().map_or(least_loaded, |&(_, node)| node),
            },
        };
        change_owner(owners, &mut load, &mut by_load, p, node);
    }
    moved
}

/// True when `node` owns no partition less than `spacing` positions from `p`
/// (not counting `p` itself).
fn is_spaced(owners: &[NodeId], p: usize, spacing: usize, node: NodeId) -> bool {
    let q = owners.len();
    (1..spacing.min(q)).all(|k| owners[(p + k) % q] != node && owners[(p + q - k) % q] != node)
}

/// Finds a remaining node that can take the orphaned partition `p` once its
/// partitions near `p` go to other remaining nodes that keep the spacing
/// rule there. Tries nodes from the least loaded up and returns the first
/// that works, with the (partition, new owner) moves it needs. Leaves
/// `owners` as it found it.
fn plan_repair(
    owners: &mut [NodeId],
    spacing: usize,
    p: usize,
    by_load: &BTreeSet<(usize, NodeId)>,
) -> Option<(NodeId, Vec<(usize, NodeId)>)> {
    let q = owners.len();
    let orphan_owner = owners[p];
    for &(_, node) in by_load {
        // Writes the trial into `owners` and undoes it before returning,
        // which avoids copying the whole ring for every remaining node.
        owners[p] = node;
        let nearby: Vec<usize> = (1..spacing.min(q))
            .flat_map(|k| [(p + k) % q, (p + q - k) % q])
            .filter(|&r| r != p && owners[r] == node)
            .collect();
        let mut relocations = Vec::new();
        for r in nearby {
            let target = by_load
                .iter()
                .map(|&(_, other)| other)
                .find(|&other| other != node && is_spaced(owners, r, spacing, other));
            let Some(target) = target else {
                break;
            };
            owners[r] = target;
            relocations.push((r, target));
        }
        let fixed = is_spaced(owners, p, spacing, node);
        for &(r, _) in &relocations {
            owners[r] = node;
        }
        owners[p] = orphan_owner;
        if fixed {
            return Some((node, relocations));
        }
    }
    None
}

/// Gives partition `p` to `node` and keeps the load counts up to date.
fn change_owner(
    owners: &mut [NodeId],
    load: &mut BTreeMap<NodeId, usize>,
    by_load: &mut BTreeSet<(usize, NodeId)>,
    p: usize,
    node: NodeId,
) {
    for (owner, delta) in [(owners[p], -1isize), (node, 1)] {
        if let Some(count) = load.get_mut(&owner) {
            by_load.remove(&(*count, owner));
            *count = count.saturating_add_signed(delta);
            by_load.insert((*count, owner));
        }
    }
    owners[p] = node;
}

/// Candidate order within one owner: fewest partitions blocked, then the
/// farthest from the new node's partitions, then the lowest partition.
type Candidate = (Reverse<usize>, usize, Reverse<usize>);

/// Candidate set a partition is filed in.
#[derive(Clone, Copy)]
enum Slot {
    /// Not a candidate: owned by the new node or too close to its partitions.
    None,
    /// A candidate that fixes a spacing violation (only in rings that break
    /// the spacing rule, so these are few and compared directly).
    Fixing,
    /// An ordinary candidate, filed under its owner.
    Owner(NodeId, Candidate),
}

/// State of one node's claim.
struct Claim<'a> {
    owners: &'a mut [NodeId],
    spacing: usize,
    new_node: NodeId,
    load: BTreeMap<NodeId, usize>,
    /// Owners ordered by load, then by id (the max is the preferred one).
    by_load: BTreeSet<(usize, Reverse<NodeId>)>,
    /// Circular distance from each partition to the nearest one the new node
    /// holds, capped at [`distance_cap`].
    distance: Vec<usize>,
    slots: Vec<Slot>,
    fixing: BTreeSet<usize>,
    candidates: BTreeMap<NodeId, BTreeSet<Candidate>>,
}

impl<'a> Claim<'a> {
    fn new(owners: &'a mut [NodeId], spacing: usize, new_node: NodeId) -> Self {
        let q = owners.len();
        let mut load: BTreeMap<NodeId, usize> = BTreeMap::new();
        for &owner in owners.iter() {
            if owner != new_node {
                *load.entry(owner).or_default() += 1;
            }
        }
        let by_load = load
            .iter()
            .map(|(&owner, &count)| (count, Reverse(owner)))
            .collect();
        let mut claim = Claim {
            owners,
            spacing,
            new_node,
            load,
            by_load,
            distance: vec![distance_cap(spacing); q],
            slots: vec![Slot::None; q],
            fixing: BTreeSet::new(),
            candidates: BTreeMap::new(),
        };
        for p in 0..q {
            if claim.owners[p] == new_node {
                claim.lower_distances(p);
            }
        }
        for p in 0..q {
            claim.refresh(p);
        }
        claim
    }

    fn is_eligible(&self, p: usize) -> bool {
        self.owners[p] != self.new_node && self.distance[p] >= self.spacing
    }

    /// Candidates that taking `p` would make ineligible.
    fn blocked_by(&self, p: usize) -> usize {
        let q = self.owners.len();
        (1..self.spacing.min(q))
            .flat_map(|k| [(p + k) % q, (p + q - k) % q])
            .filter(|&other| self.is_eligible(other))
            .count()
    }

    /// Files partition `p` under its current candidate key.
    fn refresh(&mut self, p: usize) {
        match std::mem::replace(&mut self.slots[p], Slot::None) {
            Slot::None => {}
            Slot::Fixing => {
                self.fixing.remove(&p);
            }
            Slot::Owner(owner, candidate) => {
                if let Some(set) = self.candidates.get_mut(&owner) {
                    set.remove(&candidate);
                }
            }
        }
        if !self.is_eligible(p) {
            return;
        }
        if violates_spacing(self.owners, p, self.spacing) {
            self.fixing.insert(p);
            self.slots[p] = Slot::Fixing;
            return;
        }
        let owner = self.owners[p];
        let candidate = (Reverse(self.blocked_by(p)), self.distance[p], Reverse(p));
        self.candidates.entry(owner).or_default().insert(candidate);
        self.slots[p] = Slot::Owner(owner, candidate);
    }

    /// Computes the full ordering key of a candidate, as listed on
    /// [`claim_incremental`].
    fn key(
        &self,
        p: usize,
    ) -> (
        bool,
        usize,
        Reverse<usize>,
        usize,
        Reverse<NodeId>,
        Reverse<usize>,
    ) {
        let owner = self.owners[p];
        (
            violates_spacing(self.owners, p, self.spacing),
            self.load.get(&owner).copied().unwrap_or(0),
            Reverse(self.blocked_by(p)),
            self.distance[p],
            Reverse(owner),
            Reverse(p),
        )
    }

    fn best_candidate(&self) -> Option<usize> {
        if let Some(best) = self.fixing.iter().copied().max_by_key(|&p| self.key(p)) {
            return Some(best);
        }
        // Walks the owners from the most loaded down. At one load level the
        // best candidate of each owner competes, and the first level with
        // any candidate wins.
        let mut level: Option<usize> = None;
        let mut best: Option<(Candidate, Reverse<NodeId>)> = None;
        for &(count, Reverse(owner)) in self.by_load.iter().rev() {
            if level.is_some_and(|level| count < level) {
                break;
            }
            let Some(&top) = self.candidates.get(&owner).and_then(|set| set.last()) else {
                continue;
            };
            level = Some(count);
            let contender = (top, Reverse(owner));
            if best.is_none_or(|best| {
                (contender.0 .0, contender.0 .1, contender.1) > (best.0 .0, best.0 .1, best.1)
            }) {
                best = Some(contender);
            }
        }
        best.map(|((_, _, Reverse(p)), _)| p)
    }

    /// Gives partition `chosen` to the new node and updates the candidates
    /// whose key this can change.
    fn take(&mut self, chosen: usize) {
        let q = self.owners.len();
        let previous = self.owners[chosen];
        if let Some(count) = self.load.get_mut(&previous) {
            self.by_load.remove(&(*count, Reverse(previous)));
            *count -= 1;
            self.by_load.insert((*count, Reverse(previous)));
        }
        self.owners[chosen] = self.new_node;

        let mut touched = self.lower_distances(chosen);
        // Eligibility changed only within spacing - 1 of `chosen`, so blocked
        // counts and violations changed only within twice that.
        let radius = (2 * self.spacing).min(q / 2);
        for offset in 0..=radius {
            touched.push((chosen + offset) % q);
            touched.push((chosen + q - offset) % q);
        }
        touched.sort_unstable();
        touched.dedup();
        for p in touched {
            self.refresh(p);
        }
    }

    /// Lowers distances for a new partition of the new node at `taken` and
    /// returns the partitions whose distance changed. The cap keeps each
    /// walk short, because the new node's partitions tend to form a chain
    /// at spacing N and an uncapped distance would change all the way round
    /// the ring on every pick. The walk in each
    /// direction stops at the first partition that is already as close to
    /// another partition of the new node, because distances change by at
    /// most 1 between neighbours.
    fn lower_distances(&mut self, taken: usize) -> Vec<usize> {
        let q = self.owners.len();
        let mut changed = Vec::new();
        for (direction, first_step) in [(1, 0), (q - 1, 1)] {
            for step in first_step..=(q / 2).min(distance_cap(self.spacing)) {
                let p = (taken + step * direction) % q;
                if self.distance[p] <= step {
                    break;
                }
                self.distance[p] = step;
                changed.push(p);
            }
        }
        changed
    }
}

/// Distance beyond which a candidate counts as far from the new node's
/// partitions.
fn distance_cap(spacing: usize) -> usize {
    spacing.saturating_mul(2)
}

/// True when the owner of `p` also owns a partition less than `spacing`
/// positions away, so some window of `spacing` partitions repeats it.
pub(crate) fn violates_spacing(owners: &[NodeId], p: usize, spacing: usize) -> bool {
    let q = owners.len();
    (1..spacing.min(q))
        .any(|k| owners[(p + k) % q] == owners[p] || owners[(p + q - k) % q] == owners[p])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Runs the claim as a plain scan over every partition per pick: the
    /// definition the indexed [`claim_incremental`] must match exactly.
    pub(super) fn claim_incremental_reference(
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

        // Circular distance from each partition to the nearest one the new
        // node already owns (usize::MAX while it owns none).
        let mut distance = vec![usize::MAX; q];
        for (p, &owner) in owners.iter().enumerate() {
            if owner == new_node {
                update_distances(&mut distance, p);
            }
        }

        for _ in 0..target {
            let Some(chosen) = best_candidate(owners, spacing, &load, &distance, new_node) else {
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

    /// Finds the partition the new node takes next, in the order listed on
    /// [`claim_incremental`], or `None` when no partition qualifies.
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
                distance[p].min(distance_cap(spacing)),
                Reverse(owner),
            );
            // Strictly greater keeps the lowest partition on ties.
            if best.as_ref().is_none_or(|(_, best_key)| key > *best_key) {
                best = Some((p, key));
            }
        }
        best.map(|(p, _)| p)
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

    fn claimed(owners: &[NodeId], replicas: u32, new_node: NodeId, target: usize) -> Vec<NodeId> {
        let mut indexed = owners.to_vec();
        claim_incremental(&mut indexed, replicas, new_node, target);
        indexed
    }

    fn claimed_by_reference(
        owners: &[NodeId],
        replicas: u32,
        new_node: NodeId,
        target: usize,
    ) -> Vec<NodeId> {
        let mut scanned = owners.to_vec();
        claim_incremental_reference(&mut scanned, replicas, new_node, target);
        scanned
    }

    #[test]
    fn indexed_claim_matches_scan_on_growth() {
        for (partitions, replicas) in [(64u32, 3u32), (256, 3), (256, 2), (256, 5), (128, 1)] {
            let sorted: Vec<NodeId> = (1..=u64::from(replicas) + 1).collect();
            let mut owners = lay_out_fresh(partitions, replicas, &sorted);
            for new_node in u64::from(replicas) + 2..=24 {
                let target = (owners.len() + new_node as usize / 2) / new_node as usize;
                let expected = claimed_by_reference(&owners, replicas, new_node * 1000, target);
                let actual = claimed(&owners, replicas, new_node * 1000, target);
                assert_eq!(
                    actual, expected,
                    "Q={partitions} N={replicas} node {new_node}"
                );
                owners = actual;
            }
        }
    }

    proptest! {
        #[test]
        fn indexed_claim_matches_scan_on_any_ring(
            owners in proptest::collection::vec(0u64..6, 1..80),
            replicas in 1u32..5,
            new_node in 0u64..8,
            target in 0usize..30,
        ) {
            prop_assert_eq!(
                claimed(&owners, replicas, new_node, target),
                claimed_by_reference(&owners, replicas, new_node, target)
            );
        }
    }

    #[test]
    fn fresh_layout_keeps_spacing() {
        for (partitions, replicas) in [
            (64u32, 3u32),
            (256, 3),
            (256, 2),
            (256, 5),
            (64, 7),
            (16, 3),
        ] {
            let nodes: Vec<NodeId> = (10..=10 + u64::from(replicas)).collect();
            let owners = lay_out_fresh(partitions, replicas, &nodes);
            assert_eq!(owners.len(), partitions as usize);
            for p in 0..owners.len() {
                assert!(
                    !violates_spacing(&owners, p, replicas as usize),
                    "Q={partitions} N={replicas} p={p}"
                );
            }
        }
    }
}
