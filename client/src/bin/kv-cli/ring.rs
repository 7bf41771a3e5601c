//! The `ring` subcommand: version, claimant, partition counts per node and,
//! while the ownership of partitions changes, the progress of the plan.
//!
//! Everything is computed from the ring the node sends in its encoding, so
//! the counts and the plan come from one ring version.

use kv_client::{format_node_id, Client, NodeId, Ring, RingSnapshot};
use serde_json::json;

use crate::args::RingArgs;
use crate::output::print_table;

/// Partition counts of one node, now and once the running plan ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeCounts {
    pub node: NodeId,
    /// Partitions the node is the first owner of.
    pub owned: u32,
    /// Preference lists the node is in. A moving partition that is done
    /// already counts with its planned list.
    pub replicas: u32,
    /// `owned` under the planned owners; `None` without a plan.
    pub planned_owned: Option<u32>,
    /// `replicas` under the planned owners; `None` without a plan.
    pub planned_replicas: Option<u32>,
}

/// Progress of the running plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanProgress {
    /// Ring version that started the plan.
    pub started: u64,
    /// Partitions whose data is moving now, in index order.
    pub moving: Vec<u32>,
    /// Moving partitions of the plan whose transfer is complete.
    pub done: usize,
}

/// Counts partitions per node for every node of the ring, now and in the
/// plan, sorted by node id. A node that only the plan lists owns 0 now, and
/// a leaving node owns 0 in the plan.
pub fn node_counts(ring: &Ring) -> Vec<NodeCounts> {
    let owned = ring.partitions_per_node();
    let replicas = ring.replicas_per_node();
    let planned = ring.planned();
    let planned_owned = planned.as_ref().map(Ring::partitions_per_node);
    let planned_replicas = planned.as_ref().map(Ring::replicas_per_node);
    ring.nodes()
        .into_iter()
        .map(|node| NodeCounts {
            node,
            owned: owned.get(&node).copied().unwrap_or(0),
            replicas: replicas.get(&node).copied().unwrap_or(0),
            planned_owned: planned_owned
                .as_ref()
                .map(|counts| counts.get(&node).copied().unwrap_or(0)),
            planned_replicas: planned_replicas
                .as_ref()
                .map(|counts| counts.get(&node).copied().unwrap_or(0)),
        })
        .collect()
}

/// Returns the progress of the ring's plan, or `None` when no plan runs.
pub fn plan_progress(ring: &Ring) -> Option<PlanProgress> {
    let plan = ring.plan.as_ref()?;
    Some(PlanProgress {
        started: plan.started,
        moving: ring.moving_partitions(),
        done: plan.done.len(),
    })
}

/// Renders the plan line of `kv-cli ring`.
pub fn plan_line(progress: Option<&PlanProgress>) -> String {
    match progress {
        None => "plan: none".to_string(),
        Some(progress) => format!(
            "plan started at version {}: {} partitions moving, {} done",
            progress.started,
            progress.moving.len(),
            progress.done
        ),
    }
}

/// Renders the plan cell of a partition in `kv-cli ring --partitions`:
/// where a moving partition's data goes, "done" once it got there, or
/// nothing for a partition that does not move.
fn partition_plan_cell(ring: &Ring, partition: u32) -> String {
    if let Some(moving) = ring.moving(partition) {
        return format!("moving to {}", format_nodes(&moving.new));
    }
    match &ring.plan {
        Some(plan) if plan.done.contains(&partition) => "done".to_string(),
        _ => String::new(),
    }
}

fn format_nodes(nodes: &[NodeId]) -> String {
    let ids: Vec<String> = nodes.iter().map(|node| format_node_id(*node)).collect();
    ids.join(" ")
}

/// Renders an optional count, empty when there is none.
fn optional_cell(count: Option<u32>) -> String {
    count.map(|count| count.to_string()).unwrap_or_default()
}

/// Builds the JSON document of `kv-cli ring`.
fn ring_json(snapshot: &RingSnapshot, partitions: bool) -> serde_json::Value {
    let ring = &snapshot.ring;
    let nodes: Vec<_> = node_counts(ring)
        .into_iter()
        .map(|counts| {
            json!({
                "node_id": format_node_id(counts.node),
                "address": snapshot.address_of(counts.node).unwrap_or("?"),
                "partitions_owned": counts.owned,
                "partition_replicas": counts.replicas,
                "planned_partitions_owned": counts.planned_owned,
                "planned_partition_replicas": counts.planned_replicas,
            })
        })
        .collect();
    let plan = plan_progress(ring).map(|progress| {
        json!({
            "started": progress.started,
            "moving": progress.moving.len(),
            "done": progress.done,
            "moving_partitions": progress.moving,
        })
    });
    let mut document = json!({
        "cluster_id": ring.cluster_id,
        "version": ring.version,
        "claimant": format_node_id(ring.claimant),
        "partitions": ring.partitions,
        "n": ring.replicas,
        "plan": plan,
        "nodes": nodes,
    });
    if partitions {
        let lists: Vec<Vec<String>> = ring
            .preference_lists()
            .iter()
            .map(|list| list.iter().map(|node| format_node_id(*node)).collect())
            .collect();
        document["preference_lists"] = json!(lists);
        if let Some(planned) = ring.planned() {
            let lists: Vec<Vec<String>> = planned
                .preference_lists()
                .iter()
                .map(|list| list.iter().map(|node| format_node_id(*node)).collect())
                .collect();
            document["planned_preference_lists"] = json!(lists);
        }
    }
    document
}

pub async fn ring(client: &Client, args: &RingArgs, json: bool) -> anyhow::Result<()> {
    let snapshot = client.ring().await?;
    if json {
        println!("{}", ring_json(&snapshot, args.partitions));
        return Ok(());
    }

    let ring = &snapshot.ring;
    let address = |node| snapshot.address_of(node).unwrap_or("?").to_string();
    println!("cluster: {}", ring.cluster_id);
    println!("version: {}", ring.version);
    println!("claimant: {}", format_node_id(ring.claimant));
    println!("partitions (Q): {}", ring.partitions);
    println!("replicas (N): {}", ring.replicas);
    println!("{}", plan_line(plan_progress(ring).as_ref()));

    let counts = node_counts(ring);
    if ring.plan.is_some() {
        let rows: Vec<Vec<String>> = counts
            .iter()
            .map(|counts| {
                vec![
                    format_node_id(counts.node),
                    address(counts.node),
                    counts.owned.to_string(),
                    optional_cell(counts.planned_owned),
                    counts.replicas.to_string(),
                    optional_cell(counts.planned_replicas),
                ]
            })
            .collect();
        print_table(
            &[
                "NODE ID",
                "ADDRESS",
                "OWNED",
                "PLANNED OWNED",
                "REPLICAS",
                "PLANNED REPLICAS",
            ],
            &rows,
        );
    } else {
        let rows: Vec<Vec<String>> = counts
            .iter()
            .map(|counts| {
                vec![
                    format_node_id(counts.node),
                    address(counts.node),
                    counts.owned.to_string(),
                    counts.replicas.to_string(),
                ]
            })
            .collect();
        print_table(&["NODE ID", "ADDRESS", "OWNED", "REPLICAS"], &rows);
    }

    if args.partitions {
        println!();
        let rows: Vec<Vec<String>> = ring
            .preference_lists()
            .iter()
            .enumerate()
            .map(|(partition, list)| {
                let mut row = vec![partition.to_string(), format_nodes(list)];
                if ring.plan.is_some() {
                    row.push(partition_plan_cell(ring, partition as u32));
                }
                row
            })
            .collect();
        if ring.plan.is_some() {
            print_table(&["PARTITION", "PREFERENCE LIST", "PLAN"], &rows);
        } else {
            print_table(&["PARTITION", "PREFERENCE LIST"], &rows);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Ring of 8 partitions and N=2 owned in turn by nodes 1 and 2.
    fn two_node_ring() -> Ring {
        let mut ring = Ring::new("c0ffee".into(), 8, 2, 1).expect("valid ring");
        ring.owners = (0..8).map(|p| if p % 2 == 0 { 1 } else { 2 }).collect();
        ring
    }

    #[test]
    fn counts_without_plan() {
        let ring = two_node_ring();
        let counts = node_counts(&ring);
        assert_eq!(counts.len(), 2);
        for node in &counts {
            assert_eq!(node.owned, 4, "{node:?}");
            assert_eq!(node.replicas, 8, "{node:?}");
            assert_eq!(node.planned_owned, None, "{node:?}");
            assert_eq!(node.planned_replicas, None, "{node:?}");
        }
        assert_eq!(plan_progress(&ring), None);
        assert_eq!(plan_line(None), "plan: none");
    }

    #[test]
    fn counts_with_joining_node() {
        let ring = two_node_ring();
        // Node 3 takes every fourth partition from node 1.
        let planned: Vec<NodeId> = (0..8)
            .map(|p| match p % 4 {
                0 => 3,
                2 => 1,
                _ => 2,
            })
            .collect();
        let ring = ring.with_plan(planned, 1);
        let counts: BTreeMap<NodeId, NodeCounts> = node_counts(&ring)
            .into_iter()
            .map(|counts| (counts.node, counts))
            .collect();
        assert_eq!(counts.len(), 3);
        assert_eq!(counts[&1].owned, 4);
        assert_eq!(counts[&1].planned_owned, Some(2));
        assert_eq!(counts[&2].planned_owned, Some(4));
        assert_eq!(counts[&3].owned, 0);
        assert_eq!(counts[&3].replicas, 0);
        assert_eq!(counts[&3].planned_owned, Some(2));
        assert!(counts[&3].planned_replicas.expect("plan runs") > 0);

        let progress = plan_progress(&ring).expect("plan runs");
        assert_eq!(progress.started, ring.version);
        assert_eq!(progress.done, 0);
        assert!(!progress.moving.is_empty());
        assert_eq!(
            plan_line(Some(&progress)),
            format!(
                "plan started at version {}: {} partitions moving, 0 done",
                ring.version,
                progress.moving.len()
            )
        );
    }

    #[test]
    fn progress_counts_done_partitions() {
        let ring = two_node_ring();
        let planned: Vec<NodeId> = (0..8).map(|p| if p < 4 { 3 } else { 2 }).collect();
        let ring = ring.with_plan(planned, 1);
        let moving = ring.moving_partitions();
        assert!(moving.len() >= 2, "{moving:?}");
        let first = moving[0];
        let ring = ring.with_partitions_done(&[first], 1);

        let progress = plan_progress(&ring).expect("plan still runs");
        assert_eq!(progress.done, 1);
        assert_eq!(progress.moving.len(), moving.len() - 1);
        assert!(!progress.moving.contains(&first));
        assert_eq!(partition_plan_cell(&ring, first), "done");
        let next = progress.moving[0];
        assert!(
            partition_plan_cell(&ring, next).starts_with("moving to "),
            "{}",
            partition_plan_cell(&ring, next)
        );
    }

    #[test]
    fn json_has_plan_and_planned_counts() {
        let ring = two_node_ring();
        let planned: Vec<NodeId> = (0..8).map(|p| if p % 2 == 0 { 3 } else { 2 }).collect();
        let ring = ring.with_plan(planned, 1);
        let snapshot = RingSnapshot {
            addresses: [(1, "127.0.0.1:7801".to_string())].into_iter().collect(),
            ring,
        };
        let document = ring_json(&snapshot, true);
        assert_eq!(document["plan"]["done"], 0);
        assert!(document["plan"]["moving"].as_u64().expect("number") > 0);
        assert_eq!(document["nodes"][0]["address"], "127.0.0.1:7801");
        assert_eq!(document["nodes"][0]["planned_partitions_owned"], 0);
        assert_eq!(document["nodes"][2]["address"], "?");
        assert_eq!(document["nodes"][2]["partitions_owned"], 0);
        assert_eq!(document["nodes"][2]["planned_partitions_owned"], 4);
        assert_eq!(
            document["planned_preference_lists"][0],
            json!(["0000000000000003", "0000000000000002"])
        );

        let document = ring_json(
            &RingSnapshot {
                ring: two_node_ring(),
                addresses: BTreeMap::new(),
            },
            false,
        );
        assert!(document["plan"].is_null());
        assert!(document["nodes"][0]["planned_partitions_owned"].is_null());
        assert!(document.get("preference_lists").is_none());
    }
}
