//! `kv-cli wait`: polls the endpoints until the cluster has formed.
//!
//! The cluster counts as formed when every endpoint replies to `Members`
//! and lists at least `--nodes` members that are `normal`, up (or itself)
//! and not marked down, all on the same ring version. Scripts run it after
//! starting nodes instead of sleeping.

use std::time::{Duration, Instant};

use kv_client::proto::MembersResponse;
use kv_client::Client;

use crate::args::WaitArgs;
use crate::CliError;

/// Pause between two polls.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Checks one node's member list; returns why the cluster is not formed yet.
pub fn check_members(reply: &MembersResponse, nodes: u32) -> Result<(), String> {
    let ready: Vec<_> = reply
        .members
        .iter()
        .filter(|m| m.status == "normal" && (m.up || m.is_self) && !m.marked_down)
        .collect();
    if ready.len() < nodes as usize {
        return Err(format!("{} of {nodes} members normal and up", ready.len()));
    }
    let first_version = ready[0].ring_version;
    if let Some(other) = ready.iter().find(|m| m.ring_version != first_version) {
        return Err(format!(
            "members disagree on the ring version ({} has {}, {} has {})",
            ready[0].node_id, first_version, other.node_id, other.ring_version
        ));
    }
    Ok(())
}

pub async fn run(client: &Client, args: &WaitArgs, endpoints: &[String]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    loop {
        let mut pending = None;
        for endpoint in endpoints {
            let outcome = match client.members(Some(endpoint)).await {
                Ok(reply) => check_members(&reply, args.nodes),
                Err(error) => Err(error.to_string()),
            };
            if let Err(reason) = outcome {
                pending = Some(format!("{endpoint}: {reason}"));
                break;
            }
        }
        let Some(reason) = pending else {
            println!("cluster formed: {} node(s) normal and up", args.nodes);
            return Ok(());
        };
        if Instant::now() + POLL_INTERVAL > deadline {
            return Err(CliError::WaitTimedOut {
                seconds: args.timeout_secs,
                reason,
            }
            .into());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_client::proto::MemberInfo;

    fn member(id: &str, status: &str, up: bool, ring_version: u64) -> MemberInfo {
        MemberInfo {
            node_id: id.into(),
            status: status.into(),
            up,
            ring_version,
            ..MemberInfo::default()
        }
    }

    fn reply(members: Vec<MemberInfo>) -> MembersResponse {
        MembersResponse {
            members,
            ..MembersResponse::default()
        }
    }

    #[test]
    fn check_members_accepts_formed_cluster() {
        let members = reply(vec![
            member("a", "normal", true, 2),
            member("b", "normal", true, 2),
        ]);
        assert_eq!(check_members(&members, 2), Ok(()));
    }

    #[test]
    fn check_members_counts_self_as_up() {
        let mut me = member("a", "normal", false, 1);
        me.is_self = true;
        assert_eq!(check_members(&reply(vec![me]), 1), Ok(()));
    }

    #[test]
    fn check_members_rejects_joining_or_down() {
        let members = reply(vec![
            member("a", "normal", true, 2),
            member("b", "joining", true, 2),
            member("c", "normal", false, 2),
        ]);
        let reason = check_members(&members, 2).expect_err("only one member ready");
        assert!(reason.starts_with("1 of 2"), "{reason}");
    }

    #[test]
    fn check_members_rejects_ring_version_mismatch() {
        let members = reply(vec![
            member("a", "normal", true, 2),
            member("b", "normal", true, 3),
        ]);
        let reason = check_members(&members, 2).expect_err("versions differ");
        assert!(reason.contains("ring version"), "{reason}");
    }
}
