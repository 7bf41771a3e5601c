//! The key-value subcommands and `members` and `status`.

use std::io::{IsTerminal, Read, Write};

use anyhow::Context as _;
use kv_client::proto::{MemberInfo, MembersResponse, StatusResponse, TransferStatus};
use kv_client::{
    parse_node_id, Client, Context, DeleteOptions, ReadOptions, ReplicaRead, WriteOptions,
};
use serde_json::json;

use crate::args::{DeleteArgs, GetArgs, MembersArgs, PutArgs, StatusArgs};
use crate::output::{display_value, print_table, values_json};
use crate::CliError;

fn parse_context(text: Option<&str>) -> Result<Option<Context>, CliError> {
    text.map(|text| Context::from_base64(text).map_err(CliError::InvalidContext))
        .transpose()
}

/// Prints each value on its own line, numbered when there are several.
fn print_values(label: &str, values: &[Vec<u8>]) {
    if values.len() == 1 {
        println!("{label}: {}", display_value(&values[0]));
        return;
    }
    for (index, value) in values.iter().enumerate() {
        println!("{label} {}: {}", index + 1, display_value(value));
    }
}

pub async fn get(client: &Client, args: &GetArgs, json: bool) -> anyhow::Result<()> {
    if let Some(node) = &args.replica {
        check_replica_is_member(client, node).await?;
        let read = client.replica_read(node, &args.key).await?;
        print_replica_read(&args.key, &read, json);
        return Ok(());
    }

    let read = client
        .get_with(&args.key, ReadOptions { r: args.r })
        .await?;
    if args.raw {
        return match read.values.as_slice() {
            [] => Err(CliError::KeyNotFound {
                key: args.key.clone(),
            }
            .into()),
            [value] => {
                let mut stdout = std::io::stdout().lock();
                stdout
                    .write_all(value)
                    .context("cannot write to standard output")?;
                stdout.flush().context("cannot write to standard output")?;
                Ok(())
            }
            values => Err(CliError::Siblings {
                key: args.key.clone(),
                count: values.len(),
            }
            .into()),
        };
    }

    if json {
        let (values, values_base64) = values_json(&read.values);
        let document = json!({
            "key": args.key,
            "found": !read.is_missing(),
            "values": values,
            "values_base64": values_base64,
            "context": read.context.to_base64(),
        });
        println!("{document}");
    } else {
        if read.has_siblings() {
            println!(
                "{} siblings (resolve them and put with this context):",
                read.values.len()
            );
        }
        print_values("value", &read.values);
        if !read.context.is_empty() {
            println!("context: {}", read.context);
        }
    }
    if read.is_missing() {
        return Err(CliError::KeyNotFound {
            key: args.key.clone(),
        }
        .into());
    }
    Ok(())
}

/// Returns true when `node` (a node id or a `host:port`) names one of
/// `members`. Ids compare as numbers, addresses as text, so `localhost:7401`
/// does not match a member listed as `127.0.0.1:7401`.
pub fn is_member(members: &[MemberInfo], node: &str) -> bool {
    let node = node.trim();
    let id = parse_node_id(node);
    members.iter().any(|member| {
        member.address == node || (id.is_some() && parse_node_id(&member.node_id) == id)
    })
}

/// Formats members as "id (address)" for messages.
pub fn describe_members(members: &[MemberInfo]) -> Vec<String> {
    members
        .iter()
        .map(|member| format!("{} ({})", member.node_id, member.address))
        .collect()
}

/// Rejects a `--replica` that is not in the member list, which would
/// otherwise fail as an unreachable node. When no node returns the member
/// list, the check is skipped and the replica read reports the failure.
async fn check_replica_is_member(client: &Client, node: &str) -> anyhow::Result<()> {
    let reply = match client.members(None).await {
        Ok(reply) => reply,
        Err(error) => {
            tracing::debug!(%error, "cannot fetch the member list; skipping the --replica check");
            return Ok(());
        }
    };
    if is_member(&reply.members, node) {
        return Ok(());
    }
    Err(CliError::NotMember {
        node: node.trim().to_string(),
        members: describe_members(&reply.members),
    }
    .into())
}

fn print_replica_read(key: &str, read: &ReplicaRead, json: bool) {
    if json {
        let (values, values_base64) = values_json(&read.values);
        let document = json!({
            "key": key,
            "node_id": read.node_id,
            "address": read.address,
            "state": read.state.as_str(),
            "values": values,
            "values_base64": values_base64,
            "tombstones": read.tombstones,
            "dots": read.dots,
            "context": read.context.to_base64(),
        });
        println!("{document}");
        return;
    }
    println!("node: {} ({})", read.node_id, read.address);
    println!("state: {}", read.state.as_str());
    print_values("value", &read.values);
    println!("tombstones: {}", read.tombstones);
    if !read.dots.is_empty() {
        println!("dots: {}", read.dots.join(", "));
    }
    if !read.context.is_empty() {
        println!("context: {}", read.context);
    }
}

fn read_value(args: &PutArgs) -> anyhow::Result<Vec<u8>> {
    if let Some(value) = &args.value {
        return Ok(value.as_bytes().to_vec());
    }
    if let Some(path) = &args.file {
        return std::fs::read(path)
            .with_context(|| format!("cannot read value file {}", path.display()));
    }
    let mut value = Vec::new();
    if std::io::stdin().is_terminal() {
        eprintln!("reading the value from standard input; end it with Ctrl-D");
    }
    std::io::stdin()
        .read_to_end(&mut value)
        .context("cannot read the value from standard input")?;
    Ok(value)
}

fn print_write(key: &str, context: &Context, siblings: &[Vec<u8>], json: bool) {
    if json {
        let (values, values_base64) = values_json(siblings);
        let document = json!({
            "key": key,
            "context": context.to_base64(),
            "siblings": values,
            "siblings_base64": values_base64,
        });
        println!("{document}");
        return;
    }
    println!("context: {context}");
    if !siblings.is_empty() {
        match siblings.len() {
            1 => println!("1 concurrent sibling remains:"),
            count => println!("{count} concurrent siblings remain:"),
        }
        print_values("sibling", siblings);
    }
}

pub async fn put(client: &Client, args: &PutArgs, json: bool) -> anyhow::Result<()> {
    let context = parse_context(args.context.as_deref())?;
    let value = read_value(args)?;
    let written = client
        .put_with(
            &args.key,
            value,
            context.as_ref(),
            WriteOptions {
                w: args.w,
                strict_quorum: args.strict_quorum,
            },
        )
        .await?;
    print_write(&args.key, &written.context, &written.siblings, json);
    Ok(())
}

/// Returns the line printed when a delete without context found nothing.
fn nothing_to_delete_message(key: &str) -> String {
    format!("key {key:?} not found; nothing to delete")
}

pub async fn delete(client: &Client, args: &DeleteArgs, json: bool) -> anyhow::Result<()> {
    let context = parse_context(args.context.as_deref())?;
    // Without a context the node deletes what its read at R returns. Read
    // first, so a missing or already deleted key is reported instead of
    // printing an empty context. A value written between the two reads is
    // still deleted by the node's own read.
    if context.is_none() {
        let read = client
            .get_with(&args.key, ReadOptions { r: args.r })
            .await?;
        if read.is_missing() {
            print_nothing_to_delete(&args.key, &read.context, json);
            return Ok(());
        }
    }
    let options = DeleteOptions {
        w: args.w,
        r: args.r,
        strict_quorum: args.strict_quorum,
    };
    let deleted = client
        .delete_with(&args.key, context.as_ref(), options)
        .await?;
    print_write(&args.key, &deleted.context, &deleted.siblings, json);
    Ok(())
}

fn print_nothing_to_delete(key: &str, context: &Context, json: bool) {
    if json {
        let document = json!({
            "key": key,
            "found": false,
            "context": context.to_base64(),
            "siblings": [],
            "siblings_base64": [],
        });
        println!("{document}");
    } else {
        println!("{}", nothing_to_delete_message(key));
    }
}

fn member_state(member: &MemberInfo) -> &'static str {
    if member.marked_down {
        "marked-down"
    } else if member.up {
        "up"
    } else {
        "down"
    }
}

/// Fetches the member list from `--node`, or else from the first endpoint
/// that replies, in the order given. A failure that a retry may fix moves
/// on to the next endpoint; any other failure is returned at once.
async fn fetch_members(
    client: &Client,
    args: &MembersArgs,
    endpoints: &[String],
) -> Result<MembersResponse, kv_client::Error> {
    if let Some(node) = &args.node {
        return client.members(Some(node)).await;
    }
    let mut tried = Vec::new();
    for endpoint in endpoints {
        match client.members(Some(endpoint)).await {
            Ok(reply) => return Ok(reply),
            Err(error) if error.is_retryable() => {
                tracing::debug!(%endpoint, %error, "endpoint did not return members; trying the next one");
                tried.push(format!("{endpoint}: {error}"));
            }
            Err(error) => return Err(error),
        }
    }
    Err(kv_client::Error::NoReachableNode { tried })
}

/// Returns "id (address)" of the member that produced the list, or
/// "an unnamed node" when no member is marked as itself.
fn answering_node(reply: &MembersResponse) -> String {
    match reply.members.iter().find(|member| member.is_self) {
        Some(member) => format!("{} ({})", member.node_id, member.address),
        None => "an unnamed node".into(),
    }
}

pub async fn members(
    client: &Client,
    args: &MembersArgs,
    endpoints: &[String],
    json: bool,
) -> anyhow::Result<()> {
    let reply = fetch_members(client, args, endpoints).await?;
    if json {
        let members: Vec<_> = reply
            .members
            .iter()
            .map(|m| {
                json!({
                    "node_id": m.node_id,
                    "address": m.address,
                    "status": m.status,
                    "up": m.up,
                    "marked_down": m.marked_down,
                    "phi": m.phi,
                    "generation": m.generation,
                    "heartbeat": m.heartbeat,
                    "partitions_owned": m.partitions_owned,
                    "partition_replicas": m.partition_replicas,
                    "ring_version": m.ring_version,
                    "last_seen_ms": m.last_seen_ms,
                    "is_self": m.is_self,
                })
            })
            .collect();
        let document = json!({
            "cluster_id": reply.cluster_id,
            "claimant": reply.claimant,
            "members": members,
        });
        println!("{document}");
        return Ok(());
    }
    println!(
        "cluster {}, claimant {}, as seen by {}",
        reply.cluster_id,
        reply.claimant,
        answering_node(&reply)
    );
    let rows: Vec<Vec<String>> = reply
        .members
        .iter()
        .map(|m| {
            vec![
                m.node_id.clone(),
                m.address.clone(),
                m.status.clone(),
                member_state(m).to_string(),
                m.partitions_owned.to_string(),
                m.partition_replicas.to_string(),
                m.ring_version.to_string(),
                if m.is_self { "*".into() } else { String::new() },
            ]
        })
        .collect();
    print_table(
        &[
            "NODE ID", "ADDRESS", "STATUS", "STATE", "OWNED", "REPLICAS", "RING", "SELF",
        ],
        &rows,
    );
    Ok(())
}

fn status_json(status: &StatusResponse) -> serde_json::Value {
    let mut document = json!({
        "node_id": status.node_id,
        "address": status.address,
        "cluster_id": status.cluster_id,
        "version": status.version,
        "ring_version": status.ring_version,
        "ring_not_ready_reason": status.ring_not_ready_reason,
        "partitions": status.partitions,
        "n": status.n,
        "r": status.r,
        "w": status.w,
        "engine": status.engine,
        "sync_mode": status.sync_mode,
        "data_dir": status.data_dir,
        "uptime_seconds": status.uptime_seconds,
        "generation": status.generation,
        "epoch": status.epoch,
        "restart_mark": status.restart_mark,
        "puts_coordinated": status.puts_coordinated,
        "gets_coordinated": status.gets_coordinated,
        "read_repairs": status.read_repairs,
        "corrupt_records": status.corrupt_records,
        "dot_conflicts": status.dot_conflicts,
        "forwarded": status.forwarded,
        "replica_batches_sent": status.replica_batches_sent,
        "replica_items_sent": status.replica_items_sent,
        "hints_delivered": status.hints_delivered,
        "reap_enabled": status.reap_enabled,
        "tombstones_purged": status.tombstones_purged,
        "purge_intents": status.purge_intents,
        "pending_hints": status
            .pending_hints
            .iter()
            .map(|pending| json!({
                "node_id": pending.node_id,
                "address": pending.address,
                "hints": pending.hints,
            }))
            .collect::<Vec<_>>(),
    });
    add_aae_json(&mut document, status);
    add_membership_json(&mut document, status);
    document
}

/// Adds this node's member status, the reason a ring change waits and the
/// progress of the partitions it receives to its JSON document.
fn add_membership_json(document: &mut serde_json::Value, status: &StatusResponse) {
    let transfers = transfer_status(status);
    document["member_status"] = json!(status.member_status);
    document["ring_change_waiting"] = json!(status.ring_change_waiting);
    document["transfers"] = json!({
        "plan_started": transfers.plan_started,
        "partitions_to_receive": transfers.partitions_to_receive,
        "partitions_received": transfers.partitions_received,
        "current_partition": (transfers.current_partition >= 0).then_some(transfers.current_partition),
        "keys_received": transfers.keys_received,
        "bytes_received": transfers.bytes_received,
        "keys_per_second": transfers.keys_per_second,
        "bytes_per_second": transfers.bytes_per_second,
        "waiting": transfers.waiting,
    });
}

const MIB: f64 = 1024.0 * 1024.0;

/// Returns the transfer progress of a status, or an idle one when the node
/// sent none (a node built before transfers existed).
fn transfer_status(status: &StatusResponse) -> TransferStatus {
    status.transfers.clone().unwrap_or(TransferStatus {
        current_partition: -1,
        ..TransferStatus::default()
    })
}

/// Renders the partitions a node receives in the running plan, as a block
/// of lines. Empty when no plan runs and nothing was received since the
/// node started.
fn transfer_lines(status: &StatusResponse) -> Vec<String> {
    let transfers = transfer_status(status);
    let received_any = transfers.keys_received > 0 || transfers.partitions_received > 0;
    if transfers.plan_started == 0 && !received_any {
        return Vec::new();
    }
    let mut lines = Vec::new();
    if transfers.plan_started == 0 {
        lines.push("transfers (no plan running):".to_string());
    } else {
        let current = if transfers.current_partition >= 0 {
            format!("receiving partition {}", transfers.current_partition)
        } else {
            "no partition being received".to_string()
        };
        lines.push(format!(
            "transfers (plan started at version {}):",
            transfers.plan_started
        ));
        lines.push(format!(
            "  partitions: {} of {} received, {current}",
            transfers.partitions_received, transfers.partitions_to_receive
        ));
    }
    lines.push(format!(
        "  received since start: {} keys, {} bytes ({:.1} MiB)",
        transfers.keys_received,
        transfers.bytes_received,
        transfers.bytes_received as f64 / MIB
    ));
    lines.push(format!(
        "  rate of the last transfer: {:.0} keys/s, {:.2} MiB/s",
        transfers.keys_per_second,
        transfers.bytes_per_second / MIB
    ));
    if !transfers.waiting.is_empty() {
        lines.push(format!("  waiting: {}", transfers.waiting));
    }
    lines
}

/// Adds the anti-entropy fields of a status to its JSON document.
fn add_aae_json(document: &mut serde_json::Value, status: &StatusResponse) {
    let peers: Vec<serde_json::Value> = status
        .aae_peers
        .iter()
        .map(|peer| {
            json!({
                "node_id": peer.node_id,
                "address": peer.address,
                "exchanges": peer.exchanges,
                "keys_repaired": peer.keys_repaired,
                "last_exchange_ms_ago": peer.last_exchange_ms_ago,
                "failures": peer.failures,
                "last_failure": peer.last_failure,
            })
        })
        .collect();
    document["aae_enabled"] = json!(status.aae_enabled);
    document["aae_exchanges"] = json!(status.aae_exchanges);
    document["aae_keys_repaired"] = json!(status.aae_keys_repaired);
    document["aae_tree_drift"] = json!(status.aae_tree_drift);
    document["aae_trees_replicated"] = json!(status.aae_trees_replicated);
    document["aae_trees_built"] = json!(status.aae_trees_built);
    document["aae_peers"] = json!(peers);
}

/// Renders the anti-entropy totals, then one line per peer this node
/// exchanged with.
fn aae_lines(status: &StatusResponse) -> Vec<String> {
    if !status.aae_enabled {
        return vec!["anti-entropy: off".to_string()];
    }
    let mut lines = vec![format!(
        "anti-entropy: {} of {} trees built; since start {} exchanges, {} keys repaired, {} trees drifted",
        status.aae_trees_built,
        status.aae_trees_replicated,
        status.aae_exchanges,
        status.aae_keys_repaired,
        status.aae_tree_drift
    )];
    for peer in &status.aae_peers {
        let last = match peer.last_exchange_ms_ago {
            Some(ms) => format!("last exchange {:.1} s ago", ms as f64 / 1000.0),
            None => "no exchange finished".to_string(),
        };
        let mut line = format!(
            "  with {} ({}): {last}, {} exchanges, {} keys repaired",
            peer.node_id, peer.address, peer.exchanges, peer.keys_repaired
        );
        if peer.failures > 0 {
            line.push_str(&format!(
                ", {} failed (last: {})",
                peer.failures, peer.last_failure
            ));
        }
        lines.push(line);
    }
    lines
}

pub async fn status(
    client: &Client,
    args: &StatusArgs,
    endpoints: &[String],
    json: bool,
) -> anyhow::Result<()> {
    let address = match (&args.node, endpoints.first()) {
        (Some(node), _) => node.clone(),
        (None, Some(first)) => first.clone(),
        (None, None) => {
            return Err(CliError::Usage {
                message: "no node to ask; pass --node or --endpoints".into(),
            }
            .into())
        }
    };
    let status = client.status(&address).await?;
    if json {
        println!("{}", status_json(&status));
        return Ok(());
    }
    for line in status_lines(&status) {
        println!("{line}");
    }
    Ok(())
}

/// Renders what tombstone reaping has done on a node.
fn reap_line(status: &StatusResponse) -> String {
    if !status.reap_enabled {
        return "tombstone reaping: off (--reap off), tombstones are kept".to_string();
    }
    format!(
        "tombstone reaping: {} tombstones purged since start, {} purges waiting for an owner",
        status.tombstones_purged, status.purge_intents
    )
}

/// Renders the hints a node holds per target node and how many it delivered.
fn hint_line(status: &StatusResponse) -> String {
    let delivered = status.hints_delivered;
    if status.pending_hints.is_empty() {
        return format!("hinted handoff: no hints held, {delivered} delivered since start");
    }
    let held: Vec<String> = status
        .pending_hints
        .iter()
        .map(|pending| {
            if pending.address.is_empty() {
                format!("{} for {}", pending.hints, pending.node_id)
            } else {
                format!(
                    "{} for {} ({})",
                    pending.hints, pending.node_id, pending.address
                )
            }
        })
        .collect();
    format!(
        "hinted handoff: hints held: {}; {delivered} delivered since start",
        held.join(", ")
    )
}

/// Renders a status as human-readable lines, related fields grouped.
pub fn status_lines(status: &StatusResponse) -> Vec<String> {
    let ring_state = if status.ring_not_ready_reason.is_empty() {
        "ready".to_string()
    } else {
        format!(
            "not ready, ring changes wait: {}",
            status.ring_not_ready_reason
        )
    };
    let member_status = if status.member_status.is_empty() {
        "unknown"
    } else {
        status.member_status.as_str()
    };
    let mut lines = vec![
        format!("node: {} ({})", status.node_id, status.address),
        format!("member status: {member_status}"),
        format!(
            "version: {}, up {} s",
            status.version, status.uptime_seconds
        ),
        format!("cluster: {}", status.cluster_id),
        format!("ring: {ring_state}"),
        format!(
            "ring version {}, {} partitions, N={} R={} W={}",
            status.ring_version, status.partitions, status.n, status.r, status.w
        ),
        format!(
            "storage: {} engine, sync {}, data dir {}",
            status.engine, status.sync_mode, status.data_dir
        ),
        format!(
            "restarts: generation {}, epoch {}, restart mark {}",
            status.generation, status.epoch, status.restart_mark
        ),
        format!(
            "requests since start: {} puts and {} gets coordinated, {} forwarded",
            status.puts_coordinated, status.gets_coordinated, status.forwarded
        ),
        format!(
            "repairs and faults since start: {} read repairs, {} corrupt records, {} dot conflicts",
            status.read_repairs, status.corrupt_records, status.dot_conflicts
        ),
        format!(
            "replica messages since start: {} items in {} batches",
            status.replica_items_sent, status.replica_batches_sent
        ),
        hint_line(status),
        reap_line(status),
    ];
    if !status.ring_change_waiting.is_empty() {
        lines.push(format!(
            "ring change waiting: {}",
            status.ring_change_waiting
        ));
    }
    lines.extend(transfer_lines(status));
    lines.extend(aae_lines(status));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, address: &str) -> MemberInfo {
        MemberInfo {
            node_id: id.into(),
            address: address.into(),
            ..MemberInfo::default()
        }
    }

    #[test]
    fn is_member_matches_address_and_id() {
        let members = vec![
            member("a1", "127.0.0.1:7401"),
            member("b2", "127.0.0.1:7402"),
        ];
        assert!(is_member(&members, "127.0.0.1:7402"));
        assert!(is_member(&members, " a1 "));
        assert!(is_member(&members, "A1"));
        assert!(!is_member(&members, "127.0.0.1:7999"));
        assert!(!is_member(&members, "c3"));
    }

    #[test]
    fn answering_node_is_self_member() {
        let mut second = member("b2", "127.0.0.1:7402");
        second.is_self = true;
        let reply = MembersResponse {
            members: vec![member("a1", "127.0.0.1:7401"), second],
            ..MembersResponse::default()
        };
        assert_eq!(answering_node(&reply), "b2 (127.0.0.1:7402)");
    }

    #[test]
    fn status_lines_show_ring_ready() {
        let status = StatusResponse::default();
        let lines = status_lines(&status);
        assert!(lines.contains(&"ring: ready".to_string()), "{lines:?}");
        assert!(
            lines
                .iter()
                .all(|line| !line.contains("ring_not_ready_reason")),
            "{lines:?}"
        );
    }

    #[test]
    fn status_lines_show_not_ready_reason() {
        let status = StatusResponse {
            ring_not_ready_reason: "waiting for 7402".into(),
            ..StatusResponse::default()
        };
        let lines = status_lines(&status);
        assert!(
            lines.contains(&"ring: not ready, ring changes wait: waiting for 7402".to_string()),
            "{lines:?}"
        );
    }

    #[test]
    fn status_lines_show_hints_per_target() {
        let status = StatusResponse {
            pending_hints: vec![
                kv_client::proto::PendingHints {
                    node_id: "a1".into(),
                    address: "127.0.0.1:7402".into(),
                    hints: 5,
                },
                kv_client::proto::PendingHints {
                    node_id: "b2".into(),
                    address: String::new(),
                    hints: 1,
                },
            ],
            hints_delivered: 7,
            ..StatusResponse::default()
        };
        let lines = status_lines(&status);
        let expected =
            "hinted handoff: hints held: 5 for a1 (127.0.0.1:7402), 1 for b2; 7 delivered since start";
        assert!(lines.contains(&expected.to_string()), "{lines:?}");
    }

    #[test]
    fn status_lines_show_anti_entropy_per_peer() {
        let status = StatusResponse {
            aae_enabled: true,
            aae_exchanges: 4,
            aae_keys_repaired: 12,
            aae_tree_drift: 1,
            aae_trees_replicated: 256,
            aae_trees_built: 250,
            aae_peers: vec![
                kv_client::proto::AaePeerStatus {
                    node_id: "a1".into(),
                    address: "127.0.0.1:7402".into(),
                    exchanges: 3,
                    keys_repaired: 12,
                    last_exchange_ms_ago: Some(1500),
                    failures: 1,
                    last_failure: "timed out".into(),
                },
                kv_client::proto::AaePeerStatus {
                    node_id: "b2".into(),
                    address: "127.0.0.1:7403".into(),
                    ..Default::default()
                },
            ],
            ..StatusResponse::default()
        };
        let lines = status_lines(&status);
        for expected in [
            "anti-entropy: 250 of 256 trees built; since start 4 exchanges, 12 keys repaired, 1 trees drifted",
            "  with a1 (127.0.0.1:7402): last exchange 1.5 s ago, 3 exchanges, 12 keys repaired, 1 failed (last: timed out)",
            "  with b2 (127.0.0.1:7403): no exchange finished, 0 exchanges, 0 keys repaired",
        ] {
            assert!(lines.contains(&expected.to_string()), "{lines:?}");
        }

        let document = status_json(&status);
        assert_eq!(document["aae_keys_repaired"], 12);
        assert_eq!(document["aae_peers"][0]["last_exchange_ms_ago"], 1500);
        assert!(document["aae_peers"][1]["last_exchange_ms_ago"].is_null());
    }

    #[test]
    fn status_lines_show_anti_entropy_off() {
        let lines = status_lines(&StatusResponse::default());
        assert!(
            lines.contains(&"anti-entropy: off".to_string()),
            "{lines:?}"
        );
    }

    #[test]
    fn status_lines_show_no_hints() {
        let lines = status_lines(&StatusResponse::default());
        let expected = "hinted handoff: no hints held, 0 delivered since start";
        assert!(lines.contains(&expected.to_string()), "{lines:?}");
    }

    #[test]
    fn status_lines_show_member_status() {
        let status = StatusResponse {
            member_status: "leaving".into(),
            ..StatusResponse::default()
        };
        let lines = status_lines(&status);
        assert!(
            lines.contains(&"member status: leaving".to_string()),
            "{lines:?}"
        );
        let lines = status_lines(&StatusResponse::default());
        assert!(
            lines.contains(&"member status: unknown".to_string()),
            "{lines:?}"
        );
    }

    #[test]
    fn status_lines_hide_idle_transfers() {
        let lines = status_lines(&StatusResponse::default());
        assert!(
            lines.iter().all(|line| !line.starts_with("transfers")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .all(|line| !line.starts_with("ring change waiting")),
            "{lines:?}"
        );
    }

    #[test]
    fn status_lines_show_running_transfer() {
        let status = StatusResponse {
            ring_change_waiting: "node 00000000000000c3 is down".into(),
            transfers: Some(TransferStatus {
                plan_started: 12,
                partitions_to_receive: 40,
                partitions_received: 15,
                current_partition: 77,
                keys_received: 120_000,
                bytes_received: 3 * 1024 * 1024 / 2,
                keys_per_second: 2500.4,
                bytes_per_second: 2.0 * 1024.0 * 1024.0,
                waiting: "throttled".into(),
            }),
            ..StatusResponse::default()
        };
        let lines = status_lines(&status);
        for expected in [
            "ring change waiting: node 00000000000000c3 is down",
            "transfers (plan started at version 12):",
            "  partitions: 15 of 40 received, receiving partition 77",
            "  received since start: 120000 keys, 1572864 bytes (1.5 MiB)",
            "  rate of the last transfer: 2500 keys/s, 2.00 MiB/s",
            "  waiting: throttled",
        ] {
            assert!(
                lines.contains(&expected.to_string()),
                "{expected}: {lines:?}"
            );
        }
    }

    #[test]
    fn status_lines_show_finished_transfer() {
        let status = StatusResponse {
            transfers: Some(TransferStatus {
                partitions_received: 3,
                partitions_to_receive: 3,
                current_partition: -1,
                keys_received: 10,
                ..TransferStatus::default()
            }),
            ..StatusResponse::default()
        };
        let lines = status_lines(&status);
        for expected in [
            "transfers (no plan running):",
            "  received since start: 10 keys, 0 bytes (0.0 MiB)",
        ] {
            assert!(
                lines.contains(&expected.to_string()),
                "{expected}: {lines:?}"
            );
        }
        assert!(
            lines.iter().all(|line| !line.starts_with("  partitions")),
            "{lines:?}"
        );
        assert!(
            lines.iter().all(|line| !line.starts_with("  waiting")),
            "{lines:?}"
        );
    }

    #[test]
    fn status_json_has_transfers() {
        let status = StatusResponse {
            member_status: "joining".into(),
            transfers: Some(TransferStatus {
                plan_started: 4,
                current_partition: -1,
                keys_received: 9,
                ..TransferStatus::default()
            }),
            ..StatusResponse::default()
        };
        let document = status_json(&status);
        assert_eq!(document["member_status"], "joining");
        assert_eq!(document["ring_change_waiting"], "");
        assert_eq!(document["transfers"]["plan_started"], 4);
        assert_eq!(document["transfers"]["keys_received"], 9);
        assert!(document["transfers"]["current_partition"].is_null());

        let document = status_json(&StatusResponse::default());
        assert_eq!(document["transfers"]["partitions_received"], 0);
        assert!(document["transfers"]["current_partition"].is_null());
    }

    #[test]
    fn nothing_to_delete_names_key() {
        assert_eq!(
            nothing_to_delete_message("nosuchkey"),
            "key \"nosuchkey\" not found; nothing to delete"
        );
    }
}
