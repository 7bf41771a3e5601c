//! The nemesis: a fault schedule generated from a seed, and its execution.
//!
//! The schedule alternates healthy and fault windows: a healthy start, then
//! repeatedly one fault for a random length followed by a healthy window,
//! until the time limit. The run always ends with a healthy window. Window lengths and every choice (fault kind,
//! nodes, skew amounts) come from a ChaCha8 generator seeded with `--seed`,
//! so one seed, time limit, node count and kind list always give the same
//! schedule. Only one fault is active at a time.
//!
//! Each start and stop is a history event of process `nemesis` whose
//! `fault` text the checkers parse: `partition <shape> [..] [..]` … `heal`,
//! `kill n3` … `restart n3`, `pause n2` … `resume n2`, `skew n1 +30s` …
//! `skew n1 +0`, `join n4` … `joined n4`, `decommission n2` … `left n2`,
//! `remove n1` … `removed n1`, and `heal all` once everything is healed at
//! the end.
//!
//! Membership changes alter which nodes later faults may target, so the
//! generator keeps the member set as the schedule goes: a spare node that
//! joined stays a member, and a node that left or was removed is never
//! chosen again. A change is chosen only when it keeps at least
//! [`ScheduleConfig::min_members`] members.

use std::collections::BTreeSet;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A kind of fault the nemesis may choose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    Partition,
    Kill,
    Pause,
    Skew,
    Membership,
}

impl FaultKind {
    /// Lower-case name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Partition => "partition",
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Skew => "skew",
            FaultKind::Membership => "membership",
        }
    }
}

/// The shape of a network partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Partition {
    /// Two sides that cannot reach each other.
    Halves { left: Vec<usize>, right: Vec<usize> },
    /// One node cut off from every other.
    Isolate { node: usize, rest: Vec<usize> },
    /// Two sides that cannot reach each other, both reaching `middle`.
    Bridge {
        left: Vec<usize>,
        middle: usize,
        right: Vec<usize>,
    },
}

/// One fault of the schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    Partition(Partition),
    Kill {
        node: usize,
    },
    Pause {
        node: usize,
    },
    /// Wall-clock offsets in seconds per node.
    Skew {
        offsets: Vec<(usize, i64)>,
    },
    /// Start a spare node that joins the cluster and stays.
    Join {
        node: usize,
    },
    /// Ask a member to hand over its partitions and leave.
    Decommission {
        node: usize,
    },
    /// Kill a member and remove it from the ring.
    Remove {
        node: usize,
    },
}

/// A fault and when it starts and stops, relative to the run start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: Duration,
    pub end: Duration,
    pub fault: Fault,
}

/// Bounds of the schedule's windows.
#[derive(Clone, Debug)]
pub struct ScheduleConfig {
    pub seed: u64,
    pub time_limit: Duration,
    pub kinds: Vec<FaultKind>,
    /// Number of nodes that are members from the start (`n1` to `n<nodes>`).
    pub nodes: usize,
    /// Number of spare nodes (`n<nodes + 1>` onwards) that only a
    /// membership change starts.
    pub spares: usize,
    /// Minimum number of members a membership change may leave.
    pub min_members: usize,
    /// Length of the first healthy window.
    pub first_healthy: (Duration, Duration),
    /// Length of each fault window.
    pub fault: (Duration, Duration),
    /// Length of each healthy window after a fault.
    pub healthy: (Duration, Duration),
}

impl ScheduleConfig {
    /// Default bounds: a 2–4 s healthy start, 5–10 s faults, 5–10 s
    /// healthy windows between them, no spare node and at least 3 members.
    pub fn new(
        seed: u64,
        time_limit: Duration,
        kinds: Vec<FaultKind>,
        nodes: usize,
    ) -> ScheduleConfig {
        ScheduleConfig {
            seed,
            time_limit,
            kinds,
            nodes,
            spares: 0,
            min_members: 3,
            first_healthy: (Duration::from_secs(2), Duration::from_secs(4)),
            fault: (Duration::from_secs(5), Duration::from_secs(10)),
            healthy: (Duration::from_secs(5), Duration::from_secs(10)),
        }
    }
}

fn random_duration(rng: &mut ChaCha8Rng, (low, high): (Duration, Duration)) -> Duration {
    if high <= low {
        return low;
    }
    let millis = rng.random_range(low.as_millis() as u64..=high.as_millis() as u64);
    Duration::from_millis(millis)
}

/// Generates the schedule. The last fault ends at least the shortest
/// healthy window (and at least one second) before the time limit, so the
/// clients run on the healed cluster before the convergence wait. A fault
/// window shorter than one second is not started.
pub fn schedule(config: &ScheduleConfig) -> Vec<Window> {
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut kinds = config.kinds.clone();
    kinds.sort();
    kinds.dedup();
    let mut windows = Vec::new();
    if kinds.is_empty() || config.nodes == 0 {
        return windows;
    }
    let tail = config.healthy.0.max(Duration::from_secs(1));
    let last_end = config.time_limit.saturating_sub(tail);
    let mut members = Members {
        current: (1..=config.nodes).collect(),
        spares: (config.nodes + 1..=config.nodes + config.spares).collect(),
        min: config.min_members,
    };
    let mut now = random_duration(&mut rng, config.first_healthy);
    while now + Duration::from_secs(1) <= last_end {
        let length = random_duration(&mut rng, config.fault);
        let end = (now + length).min(last_end);
        let kind = kinds[rng.random_range(0..kinds.len())];
        // With no change possible (no spare left and no member to spare),
        // a membership window becomes a healthy stretch.
        if let Some(fault) = choose_fault(&mut rng, kind, &mut members) {
            windows.push(Window {
                start: now,
                end,
                fault,
            });
        }
        now = end + random_duration(&mut rng, config.healthy);
    }
    windows
}

/// The member set while the schedule is generated.
struct Members {
    /// Members in ascending order.
    current: Vec<usize>,
    /// Spare nodes not started yet, in the order they join.
    spares: Vec<usize>,
    min: usize,
}

/// A membership change the generator may choose.
#[derive(Clone, Copy)]
enum Change {
    Join,
    Decommission,
    Remove,
}

/// Chooses a membership change that keeps at least `members.min` members
/// and applies it to `members`. Returns `None` when no change is possible.
fn choose_change(rng: &mut ChaCha8Rng, members: &mut Members) -> Option<Fault> {
    let mut changes = Vec::new();
    if !members.spares.is_empty() {
        changes.push(Change::Join);
    }
    if members.current.len() > members.min {
        changes.push(Change::Decommission);
        changes.push(Change::Remove);
    }
    if changes.is_empty() {
        return None;
    }
    let fault = match changes[rng.random_range(0..changes.len())] {
        Change::Join => {
            let node = members.spares.remove(0);
            members.current.push(node);
            members.current.sort();
            Fault::Join { node }
        }
        Change::Decommission => {
            let index = rng.random_range(0..members.current.len());
            Fault::Decommission {
                node: members.current.remove(index),
            }
        }
        Change::Remove => {
            let index = rng.random_range(0..members.current.len());
            Fault::Remove {
                node: members.current.remove(index),
            }
        }
    };
    Some(fault)
}

fn choose_fault(rng: &mut ChaCha8Rng, kind: FaultKind, members: &mut Members) -> Option<Fault> {
    let mut order: Vec<usize> = members.current.clone();
    let nodes = order.len();
    if nodes == 0 {
        return None;
    }
    order.shuffle(rng);
    let fault = match kind {
        FaultKind::Membership => return choose_change(rng, members),
        FaultKind::Kill => Fault::Kill { node: order[0] },
        FaultKind::Pause => Fault::Pause { node: order[0] },
        FaultKind::Skew => {
            // Skew about half of the nodes, each by 10 to 60 s either way.
            let count = (nodes / 2).max(1);
            let mut offsets: Vec<(usize, i64)> = order[..count]
                .iter()
                .map(|node| {
                    let secs = rng.random_range(10..=60i64);
                    (*node, if rng.random_bool(0.5) { secs } else { -secs })
                })
                .collect();
            offsets.sort();
            Fault::Skew { offsets }
        }
        FaultKind::Partition => {
            let shape = if nodes < 3 { 1 } else { rng.random_range(0..3) };
            Fault::Partition(match shape {
                0 => {
                    let mut left = order[..nodes / 2].to_vec();
                    let mut right = order[nodes / 2..].to_vec();
                    left.sort();
                    right.sort();
                    Partition::Halves { left, right }
                }
                1 => {
                    let mut rest = order[1..].to_vec();
                    rest.sort();
                    Partition::Isolate {
                        node: order[0],
                        rest,
                    }
                }
                _ => {
                    let middle = order[0];
                    let others = &order[1..];
                    let mut left = others[..others.len() / 2].to_vec();
                    let mut right = others[others.len() / 2..].to_vec();
                    left.sort();
                    right.sort();
                    Partition::Bridge {
                        left,
                        middle,
                        right,
                    }
                }
            })
        }
    };
    Some(fault)
}

fn node_list(nodes: &[usize]) -> String {
    let names: Vec<String> = nodes.iter().map(|node| format!("n{node}")).collect();
    format!("[{}]", names.join(" "))
}

impl Partition {
    /// Formats the fault text, e.g. `partition halves [n1 n2] [n3 n4 n5]`.
    pub fn describe(&self) -> String {
        match self {
            Partition::Halves { left, right } => {
                format!("partition halves {} {}", node_list(left), node_list(right))
            }
            Partition::Isolate { node, rest } => {
                format!("partition isolate [n{node}] {}", node_list(rest))
            }
            Partition::Bridge {
                left,
                middle,
                right,
            } => format!(
                "partition bridge {} [n{middle}] {}",
                node_list(left),
                node_list(right)
            ),
        }
    }

    /// For each node (index `node - 1`), the peers it must not reach.
    pub fn blocked(&self, nodes: usize) -> Vec<BTreeSet<usize>> {
        let mut blocked = vec![BTreeSet::new(); nodes];
        let mut cut = |a: &[usize], b: &[usize]| {
            for x in a {
                for y in b {
                    if let Some(set) = blocked.get_mut(x - 1) {
                        set.insert(*y);
                    }
                    if let Some(set) = blocked.get_mut(y - 1) {
                        set.insert(*x);
                    }
                }
            }
        };
        match self {
            Partition::Halves { left, right } | Partition::Bridge { left, right, .. } => {
                cut(left, right)
            }
            Partition::Isolate { node, rest } => cut(&[*node], rest),
        }
        blocked
    }
}

impl Fault {
    /// Returns the kind of this fault.
    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::Partition(_) => FaultKind::Partition,
            Fault::Kill { .. } => FaultKind::Kill,
            Fault::Pause { .. } => FaultKind::Pause,
            Fault::Skew { .. } => FaultKind::Skew,
            Fault::Join { .. } | Fault::Decommission { .. } | Fault::Remove { .. } => {
                FaultKind::Membership
            }
        }
    }

    /// Returns the fault texts of the start events (one per skewed node).
    pub fn start_texts(&self) -> Vec<String> {
        match self {
            Fault::Partition(partition) => vec![partition.describe()],
            Fault::Kill { node } => vec![format!("kill n{node}")],
            Fault::Pause { node } => vec![format!("pause n{node}")],
            Fault::Skew { offsets } => offsets
                .iter()
                .map(|(node, secs)| format!("skew n{node} {}", crate::skew::offset_text(*secs)))
                .collect(),
            Fault::Join { node } => vec![format!("join n{node}")],
            Fault::Decommission { node } => vec![format!("decommission n{node}")],
            Fault::Remove { node } => vec![format!("remove n{node}")],
        }
    }

    /// Returns the fault texts of the stop events.
    pub fn stop_texts(&self) -> Vec<String> {
        match self {
            Fault::Partition(_) => vec!["heal".into()],
            Fault::Kill { node } => vec![format!("restart n{node}")],
            Fault::Pause { node } => vec![format!("resume n{node}")],
            Fault::Skew { offsets } => offsets
                .iter()
                .map(|(node, _)| format!("skew n{node} +0"))
                .collect(),
            Fault::Join { node } => vec![format!("joined n{node}")],
            Fault::Decommission { node } => vec![format!("left n{node}")],
            Fault::Remove { node } => vec![format!("removed n{node}")],
        }
    }
}

/// Renders a schedule, one window per line, for the run folder.
pub fn describe_schedule(windows: &[Window]) -> String {
    let mut text = String::new();
    for window in windows {
        text.push_str(&format!(
            "{:>7.1}s {:>7.1}s  {}\n",
            window.start.as_secs_f64(),
            window.end.as_secs_f64(),
            window.fault.start_texts().join(", ")
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(seed: u64) -> ScheduleConfig {
        ScheduleConfig::new(
            seed,
            Duration::from_secs(60),
            vec![
                FaultKind::Partition,
                FaultKind::Kill,
                FaultKind::Pause,
                FaultKind::Skew,
            ],
            5,
        )
    }

    #[test]
    fn schedule_same_seed_same_windows() {
        assert_eq!(schedule(&config(7)), schedule(&config(7)));
        assert_ne!(schedule(&config(7)), schedule(&config(8)));
    }

    #[test]
    fn schedule_windows_disjoint_within_limit() {
        let windows = schedule(&config(3));
        assert!(!windows.is_empty());
        for pair in windows.windows(2) {
            assert!(pair[0].end < pair[1].start, "{pair:?}");
        }
        for window in &windows {
            assert!(window.start < window.end, "{window:?}");
            // A healthy tail of at least the shortest healthy window (5 s).
            assert!(window.end <= Duration::from_secs(55), "{window:?}");
        }
    }

    #[test]
    fn schedule_uses_only_given_kinds() {
        let mut only_kill = config(11);
        only_kill.kinds = vec![FaultKind::Kill];
        assert!(schedule(&only_kill)
            .iter()
            .all(|w| w.fault.kind() == FaultKind::Kill));
    }

    fn membership_config(seed: u64) -> ScheduleConfig {
        let mut config = ScheduleConfig::new(
            seed,
            Duration::from_secs(300),
            vec![FaultKind::Membership, FaultKind::Kill, FaultKind::Partition],
            3,
        );
        config.spares = 2;
        config.min_members = 3;
        config.fault = (Duration::from_secs(2), Duration::from_secs(3));
        config.healthy = (Duration::from_secs(2), Duration::from_secs(3));
        config
    }

    /// Replays `windows` on the member set and checks every fault against
    /// it: only members are faulted, changes keep `min` members, spares
    /// join once, departed nodes never come back.
    fn replay_members(windows: &[Window], nodes: usize, spares: usize, min: usize) -> usize {
        let mut members: BTreeSet<usize> = (1..=nodes).collect();
        let mut departed = BTreeSet::new();
        let mut changes = 0;
        for window in windows {
            match &window.fault {
                Fault::Join { node } => {
                    assert!(*node > nodes, "not a spare: {window:?}");
                    assert!(*node <= nodes + spares, "not a spare: {window:?}");
                    assert!(members.insert(*node), "joined twice: {window:?}");
                    changes += 1;
                }
                Fault::Decommission { node } | Fault::Remove { node } => {
                    assert!(members.remove(node), "not a member: {window:?}");
                    assert!(members.len() >= min, "below {min} members: {window:?}");
                    departed.insert(*node);
                    changes += 1;
                }
                Fault::Kill { node } | Fault::Pause { node } => {
                    assert!(members.contains(node), "not a member: {window:?}");
                }
                Fault::Skew { offsets } => {
                    for (node, _) in offsets {
                        assert!(members.contains(node), "not a member: {window:?}");
                    }
                }
                Fault::Partition(partition) => {
                    let blocked = partition.blocked(nodes + spares);
                    for (index, peers) in blocked.iter().enumerate() {
                        if !peers.is_empty() {
                            assert!(members.contains(&(index + 1)), "{window:?}");
                        }
                        for peer in peers {
                            assert!(members.contains(peer), "{window:?}");
                        }
                    }
                }
            }
            assert!(members.is_disjoint(&departed), "{window:?}");
        }
        changes
    }

    #[test]
    fn schedule_membership_targets_members_only() {
        for seed in 0..50 {
            let windows = schedule(&membership_config(seed));
            replay_members(&windows, 3, 2, 3);
        }
    }

    #[test]
    fn schedule_membership_changes_each_kind() {
        let mut seen = BTreeSet::new();
        for seed in 0..50 {
            for window in schedule(&membership_config(seed)) {
                seen.insert(
                    window.fault.start_texts()[0]
                        .split(' ')
                        .next()
                        .map(str::to_string),
                );
            }
        }
        for verb in ["join", "decommission", "remove"] {
            assert!(
                seen.contains(&Some(verb.to_string())),
                "no {verb} in 50 seeds"
            );
        }
    }

    #[test]
    fn schedule_membership_without_room_skips() {
        let mut config = membership_config(5);
        config.kinds = vec![FaultKind::Membership];
        config.spares = 0;
        assert!(schedule(&config).is_empty());

        // Two spares with a minimum of 3 members: at most two joins, then
        // at most two departures, so at most four changes.
        config.spares = 2;
        let windows = schedule(&config);
        let changes = replay_members(&windows, 3, 2, 3);
        assert!((1..=4).contains(&changes), "{windows:?}");
    }

    #[test]
    fn schedule_without_membership_unchanged_by_spares() {
        let mut with_spares = config(7);
        with_spares.spares = 2;
        assert_eq!(schedule(&with_spares), schedule(&config(7)));
    }

    #[test]
    fn partition_bridge_blocks_sides_not_middle() {
        let bridge = Partition::Bridge {
            left: vec![1, 2],
            middle: 3,
            right: vec![4, 5],
        };
        let blocked = bridge.blocked(5);
        assert_eq!(blocked[0], BTreeSet::from([4, 5]));
        assert_eq!(blocked[3], BTreeSet::from([1, 2]));
        assert!(blocked[2].is_empty());
        assert_eq!(bridge.describe(), "partition bridge [n1 n2] [n3] [n4 n5]");
    }

    #[test]
    fn partition_isolate_blocks_one_node() {
        let isolate = Partition::Isolate {
            node: 2,
            rest: vec![1, 3],
        };
        let blocked = isolate.blocked(3);
        assert_eq!(blocked[1], BTreeSet::from([1, 3]));
        assert_eq!(blocked[0], BTreeSet::from([2]));
        assert_eq!(blocked[2], BTreeSet::from([2]));
    }
}
