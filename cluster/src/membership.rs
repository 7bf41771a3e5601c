//! The gossiped membership table and its merge.
//!
//! Each node is the only writer of its own entry: it bumps `version` on
//! every heartbeat and every change, and sets `generation` anew on each
//! start. So a merge keeps, per node, the entry with the higher
//! (generation, version), and a restarted node wins over its old self even
//! if the old entry had a higher version.
//!
//! Two grow-only sets travel with the table. `removed` contains ids an operator
//! removed: such an id is dropped from `members` and its entries are ignored
//! whatever their generation, so a removed node never comes back by gossip.
//! `marked_down` holds ids an operator declared dead, which stops them from
//! being chosen as claimant. Whether a member is up or down right now is each
//! node's local opinion (see the failure detector) and is not in this table.
//!
//! Merging is a join: commutative, associative and idempotent on tables.
//! Entries with equal (generation, version) but different contents can only
//! come from a node that broke the single-writer rule. They are ordered by
//! their remaining fields, so replicas still converge on one of them.

use crate::NodeId;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Lifecycle status of a member, set by the member itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemberStatus {
    /// Started with seeds and waiting for the claimant to give it partitions.
    Joining,
    /// Part of the ring.
    Normal,
    /// Handing its partitions to others before it leaves.
    Leaving,
    /// Left the cluster; it owns nothing.
    Left,
}

impl MemberStatus {
    /// Lower-case name used on the wire and in logs: "joining", "normal",
    /// "leaving" or "left".
    pub fn as_str(&self) -> &'static str {
        match self {
            MemberStatus::Joining => "joining",
            MemberStatus::Normal => "normal",
            MemberStatus::Leaving => "leaving",
            MemberStatus::Left => "left",
        }
    }

    /// Parses a name written by [`MemberStatus::as_str`]; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "joining" => Some(MemberStatus::Joining),
            "normal" => Some(MemberStatus::Normal),
            "leaving" => Some(MemberStatus::Leaving),
            "left" => Some(MemberStatus::Left),
            _ => None,
        }
    }

    /// Position in the lifecycle, used only to order conflicting entries.
    fn rank(self) -> u8 {
        match self {
            MemberStatus::Joining => 0,
            MemberStatus::Normal => 1,
            MemberStatus::Leaving => 2,
            MemberStatus::Left => 3,
        }
    }
}

impl fmt::Display for MemberStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One member's entry, written only by that member.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub id: NodeId,
    /// Address other nodes reach it at (host:port).
    pub address: String,
    pub status: MemberStatus,
    /// Set on each start to max(stored generation + 1, Unix time in seconds).
    pub generation: u64,
    /// Heartbeat counter, bumped on every heartbeat and change.
    pub version: u64,
    /// Version of the newest ring the member has.
    pub ring_version: u64,
    /// True while the member stores data for some partition.
    pub holds_data: bool,
}

impl Member {
    /// Orders two entries of the same member: (generation, version) first,
    /// then the other fields so that conflicting entries still have a winner.
    fn precedence(&self, other: &Member) -> Ordering {
        (self.generation, self.version)
            .cmp(&(other.generation, other.version))
            .then_with(|| self.status.rank().cmp(&other.status.rank()))
            .then_with(|| self.address.cmp(&other.address))
            .then_with(|| self.ring_version.cmp(&other.ring_version))
            .then_with(|| self.holds_data.cmp(&other.holds_data))
    }
}

/// The gossiped membership table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Membership {
    /// Entries by member id; never contains an id of `removed`.
    pub members: BTreeMap<NodeId, Member>,
    /// Ids removed by an operator (grow-only).
    pub removed: BTreeSet<NodeId>,
    /// Ids an operator marked down (grow-only).
    pub marked_down: BTreeSet<NodeId>,
}

/// A change a merge made to the table, for logging and reactions.
#[derive(Clone, Debug, PartialEq)]
pub enum MembershipChange {
    /// A member not in the table before.
    Joined { id: NodeId, address: String },
    /// A member came back with a higher generation.
    Restarted { id: NodeId, generation: u64 },
    /// A member changed its status.
    StatusChanged {
        id: NodeId,
        from: MemberStatus,
        to: MemberStatus,
    },
    /// A member changed its address.
    AddressChanged {
        id: NodeId,
        from: String,
        to: String,
    },
    /// An id joined the removed set.
    Removed { id: NodeId },
    /// An id joined the marked-down set.
    MarkedDown { id: NodeId },
}

impl Membership {
    /// Merges one entry: the entry with the higher (generation, version)
    /// wins, and entries of removed ids are ignored.
    ///
    /// Returns the change the entry made, or `None` when it lost or was a
    /// plain heartbeat (a higher version with the same generation, status
    /// and address, which still updates the table). An entry that changes
    /// several things reports one of them, preferring `Restarted`, then
    /// `StatusChanged`, then `AddressChanged`.
    pub fn merge_entry(&mut self, entry: Member) -> Option<MembershipChange> {
        if self.removed.contains(&entry.id) {
            return None;
        }
        let Some(current) = self.members.get_mut(&entry.id) else {
            let change = MembershipChange::Joined {
                id: entry.id,
                address: entry.address.clone(),
            };
            self.members.insert(entry.id, entry);
            return Some(change);
        };
        if entry.precedence(current) != Ordering::Greater {
            return None;
        }

        let change = if entry.generation > current.generation {
            Some(MembershipChange::Restarted {
                id: entry.id,
                generation: entry.generation,
            })
        } else if entry.status != current.status {
            Some(MembershipChange::StatusChanged {
                id: entry.id,
                from: current.status,
                to: entry.status,
            })
        } else if entry.address != current.address {
            Some(MembershipChange::AddressChanged {
                id: entry.id,
                from: current.address.clone(),
                to: entry.address.clone(),
            })
        } else {
            None
        };
        *current = entry;
        change
    }

    /// Merges another table: the grow-only `removed` and `marked_down` sets,
    /// then every entry. A removed id is dropped from `members` and never
    /// added again.
    ///
    /// Returns the changes in this order: removals, marks, then entries by id.
    pub fn merge(&mut self, other: &Membership) -> Vec<MembershipChange> {
        let mut changes = Vec::new();
        for &id in &other.removed {
            changes.extend(self.remove(id));
        }
        for &id in &other.marked_down {
            changes.extend(self.mark_down(id));
        }
        // Keeps the table consistent even if `members` was edited directly.
        let removed = &self.removed;
        self.members.retain(|id, _| !removed.contains(id));

        for entry in other.members.values() {
            changes.extend(self.merge_entry(entry.clone()));
        }
        changes
    }

    /// Adds `id` to the removed set and drops its entry. Returns `Removed`
    /// unless the id was already removed.
    pub fn remove(&mut self, id: NodeId) -> Option<MembershipChange> {
        self.members.remove(&id);
        self.removed
            .insert(id)
            .then_some(MembershipChange::Removed { id })
    }

    /// Adds `id` to the marked-down set. Returns `MarkedDown` unless it was
    /// already there.
    pub fn mark_down(&mut self, id: NodeId) -> Option<MembershipChange> {
        self.marked_down
            .insert(id)
            .then_some(MembershipChange::MarkedDown { id })
    }

    /// Returns the claimant: the lowest id among `Normal` members that are
    /// neither marked down nor removed.
    pub fn claimant(&self) -> Option<NodeId> {
        self.members
            .values()
            .filter(|member| member.status == MemberStatus::Normal)
            .map(|member| member.id)
            .find(|id| !self.marked_down.contains(id) && !self.removed.contains(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn member(id: NodeId, status: MemberStatus, generation: u64, version: u64) -> Member {
        Member {
            id,
            address: format!("127.0.0.1:{}", 7000 + id),
            status,
            generation,
            version,
            ring_version: 1,
            holds_data: false,
        }
    }

    #[test]
    fn status_names_round_trip() {
        for status in [
            MemberStatus::Joining,
            MemberStatus::Normal,
            MemberStatus::Leaving,
            MemberStatus::Left,
        ] {
            assert_eq!(MemberStatus::parse(status.as_str()), Some(status));
            assert_eq!(status.to_string(), status.as_str());
        }
        assert_eq!(MemberStatus::parse("Normal"), None);
        assert_eq!(MemberStatus::parse(""), None);
    }

    #[test]
    fn merge_entry_reports_new_member() {
        let mut table = Membership::default();
        let change = table.merge_entry(member(1, MemberStatus::Joining, 10, 1));
        assert_eq!(
            change,
            Some(MembershipChange::Joined {
                id: 1,
                address: "127.0.0.1:7001".to_string()
            })
        );
        assert_eq!(table.members.len(), 1);
    }

    #[test]
    fn merge_entry_heartbeat_updates_silently() {
        let mut table = Membership::default();
        table.merge_entry(member(1, MemberStatus::Normal, 10, 1));
        let mut beat = member(1, MemberStatus::Normal, 10, 2);
        beat.ring_version = 4;
        assert_eq!(table.merge_entry(beat), None);
        assert_eq!(table.members[&1].version, 2);
        assert_eq!(table.members[&1].ring_version, 4);
    }

    #[test]
    fn merge_entry_ignores_older_version() {
        let mut table = Membership::default();
        table.merge_entry(member(1, MemberStatus::Normal, 10, 5));
        assert_eq!(
            table.merge_entry(member(1, MemberStatus::Leaving, 10, 4)),
            None
        );
        assert_eq!(table.members[&1].status, MemberStatus::Normal);
        assert_eq!(table.members[&1].version, 5);
    }

    #[test]
    fn merge_entry_reports_status_change() {
        let mut table = Membership::default();
        table.merge_entry(member(1, MemberStatus::Joining, 10, 1));
        let change = table.merge_entry(member(1, MemberStatus::Normal, 10, 2));
        assert_eq!(
            change,
            Some(MembershipChange::StatusChanged {
                id: 1,
                from: MemberStatus::Joining,
                to: MemberStatus::Normal
            })
        );
    }

    #[test]
    fn merge_entry_reports_address_change() {
        let mut table = Membership::default();
        table.merge_entry(member(1, MemberStatus::Normal, 10, 1));
        let mut moved = member(1, MemberStatus::Normal, 10, 2);
        moved.address = "127.0.0.1:9000".to_string();
        let change = table.merge_entry(moved);
        assert_eq!(
            change,
            Some(MembershipChange::AddressChanged {
                id: 1,
                from: "127.0.0.1:7001".to_string(),
                to: "127.0.0.1:9000".to_string()
            })
        );
    }

    #[test]
    fn higher_generation_beats_higher_version() {
        let mut table = Membership::default();
        table.merge_entry(member(1, MemberStatus::Normal, 10, 500));
        let change = table.merge_entry(member(1, MemberStatus::Joining, 11, 1));
        assert_eq!(
            change,
            Some(MembershipChange::Restarted {
                id: 1,
                generation: 11
            })
        );
        assert_eq!(table.members[&1].version, 1);
        assert_eq!(table.members[&1].status, MemberStatus::Joining);

        // The old incarnation's later heartbeats lose.
        assert_eq!(
            table.merge_entry(member(1, MemberStatus::Normal, 10, 501)),
            None
        );
        assert_eq!(table.members[&1].generation, 11);
    }

    #[test]
    fn removed_outranks_any_generation() {
        let mut table = Membership::default();
        table.merge_entry(member(1, MemberStatus::Normal, 10, 1));
        assert_eq!(table.remove(1), Some(MembershipChange::Removed { id: 1 }));
        assert_eq!(table.remove(1), None);
        assert!(!table.members.contains_key(&1));

        assert_eq!(
            table.merge_entry(member(1, MemberStatus::Joining, u64::MAX, u64::MAX)),
            None
        );
        assert!(!table.members.contains_key(&1));
    }

    #[test]
    fn merge_drops_member_removed_elsewhere() {
        let mut local = Membership::default();
        local.merge_entry(member(1, MemberStatus::Normal, 10, 1));
        local.merge_entry(member(2, MemberStatus::Normal, 10, 1));

        let mut remote = Membership::default();
        remote.merge_entry(member(1, MemberStatus::Normal, 12, 1));
        remote.remove(2);
        remote.mark_down(1);

        let changes = local.merge(&remote);
        assert_eq!(
            changes,
            vec![
                MembershipChange::Removed { id: 2 },
                MembershipChange::MarkedDown { id: 1 },
                MembershipChange::Restarted {
                    id: 1,
                    generation: 12
                },
            ]
        );
        assert!(!local.members.contains_key(&2));
        assert!(local.removed.contains(&2));
        assert!(local.marked_down.contains(&1));
        assert_eq!(local.merge(&remote), Vec::new());
    }

    #[test]
    fn claimant_is_lowest_normal_member() {
        let mut table = Membership::default();
        assert_eq!(table.claimant(), None);
        table.merge_entry(member(1, MemberStatus::Joining, 10, 1));
        table.merge_entry(member(2, MemberStatus::Leaving, 10, 1));
        table.merge_entry(member(5, MemberStatus::Normal, 10, 1));
        table.merge_entry(member(3, MemberStatus::Normal, 10, 1));
        table.merge_entry(member(4, MemberStatus::Normal, 10, 1));
        assert_eq!(table.claimant(), Some(3));

        table.mark_down(3);
        assert_eq!(table.claimant(), Some(4));
        table.remove(4);
        assert_eq!(table.claimant(), Some(5));
        table.mark_down(5);
        assert_eq!(table.claimant(), None);
    }

    fn status_strategy() -> impl Strategy<Value = MemberStatus> {
        prop_oneof![
            Just(MemberStatus::Joining),
            Just(MemberStatus::Normal),
            Just(MemberStatus::Leaving),
            Just(MemberStatus::Left),
        ]
    }

    fn member_strategy() -> impl Strategy<Value = Member> {
        (
            0u64..6,
            status_strategy(),
            0u64..3,
            0u64..4,
            0u16..2,
            0u64..3,
            any::<bool>(),
        )
            .prop_map(
                |(id, status, generation, version, port, ring_version, holds_data)| Member {
                    id,
                    address: format!("127.0.0.1:{}", 7000 + port),
                    status,
                    generation,
                    version,
                    ring_version,
                    holds_data,
                },
            )
    }

    /// Tables built the way nodes build them: by merging entries and marks.
    fn table_strategy() -> impl Strategy<Value = Membership> {
        (
            proptest::collection::vec(member_strategy(), 0..10),
            proptest::collection::btree_set(0u64..6, 0..2),
            proptest::collection::btree_set(0u64..6, 0..3),
        )
            .prop_map(|(entries, removed, marked_down)| {
                let mut table = Membership::default();
                for id in removed {
                    table.remove(id);
                }
                for id in marked_down {
                    table.mark_down(id);
                }
                for entry in entries {
                    table.merge_entry(entry);
                }
                table
            })
    }

    fn merged(left: &Membership, right: &Membership) -> Membership {
        let mut result = left.clone();
        result.merge(right);
        result
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in table_strategy(), b in table_strategy()) {
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
        }

        #[test]
        fn merge_is_associative(
            a in table_strategy(),
            b in table_strategy(),
            c in table_strategy(),
        ) {
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
        }

        #[test]
        fn merge_is_idempotent(a in table_strategy(), b in table_strategy()) {
            prop_assert_eq!(merged(&a, &a), a.clone());
            let once = merged(&a, &b);
            let mut twice = once.clone();
            prop_assert_eq!(twice.merge(&b), Vec::new());
            prop_assert_eq!(twice, once);
        }

        #[test]
        fn merge_never_keeps_removed_ids(a in table_strategy(), b in table_strategy()) {
            let result = merged(&a, &b);
            for id in &result.removed {
                prop_assert!(!result.members.contains_key(id));
            }
        }
    }
}
