//! The membership-change subcommands: `decommission`, `remove` and
//! `mark-down`.
//!
//! `decommission` goes to the node that leaves. `remove` and `mark-down`
//! name a dead node, and a node rejects a change of its own membership, so
//! they go to another member that is up.

use kv_client::proto::MemberInfo;
use kv_client::{format_node_id, parse_node_id, Client, NodeId};
use serde_json::json;

use crate::args::{DecommissionArgs, MarkDownArgs, NodeRef, RemoveArgs};
use crate::commands::describe_members;
use crate::CliError;

/// Returns the member that `node` names. Ids compare as numbers and
/// addresses as text, as in [`crate::commands::is_member`].
pub fn find_member<'a>(members: &'a [MemberInfo], node: &NodeRef) -> Option<&'a MemberInfo> {
    members.iter().find(|member| match node {
        NodeRef::Id(id) => parse_node_id(&member.node_id) == Some(*id),
        NodeRef::Address(address) => member.address == *address,
    })
}

/// Returns the addresses to send a command about node `target` to, in the
/// order to try them: members that are up, not marked down and not left,
/// other than the target. Those listed in `endpoints` come first, in that
/// order, then the rest in member-list order.
pub fn pick_senders(members: &[MemberInfo], target: NodeId, endpoints: &[String]) -> Vec<String> {
    let eligible: Vec<&MemberInfo> = members
        .iter()
        .filter(|member| member.up && !member.marked_down && member.status != "left")
        .filter(|member| parse_node_id(&member.node_id) != Some(target))
        .collect();

    let mut senders: Vec<String> = Vec::with_capacity(eligible.len());
    for endpoint in endpoints {
        let listed = eligible.iter().any(|member| member.address == *endpoint);
        if listed && !senders.contains(endpoint) {
            senders.push(endpoint.clone());
        }
    }
    for member in eligible {
        if !senders.contains(&member.address) {
            senders.push(member.address.clone());
        }
    }
    senders
}

/// Prints a node's reply to a membership command.
fn print_reply(node: Option<&str>, address: &str, message: &str, json: bool) {
    if json {
        let document = json!({
            "node_id": node,
            "sent_to": address,
            "message": message,
        });
        println!("{document}");
    } else {
        println!("{message}");
    }
}

pub async fn decommission(
    client: &Client,
    args: &DecommissionArgs,
    json: bool,
) -> anyhow::Result<()> {
    let (node_id, address) = match &args.node {
        NodeRef::Address(address) => (None, address.clone()),
        NodeRef::Id(id) => {
            let reply = client.members(None).await?;
            let Some(member) = find_member(&reply.members, &args.node) else {
                return Err(CliError::NotMember {
                    node: format_node_id(*id),
                    members: describe_members(&reply.members),
                }
                .into());
            };
            (Some(member.node_id.clone()), member.address.clone())
        }
    };
    let message = client.decommission(&address).await?;
    print_reply(node_id.as_deref(), &address, &message, json);
    Ok(())
}

/// A membership command sent to another member: remove or mark down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OtherNodeCommand {
    Remove,
    MarkDown,
}

pub async fn remove(
    client: &Client,
    args: &RemoveArgs,
    endpoints: &[String],
    json: bool,
) -> anyhow::Result<()> {
    send_to_other_member(
        client,
        OtherNodeCommand::Remove,
        &args.node,
        endpoints,
        json,
    )
    .await
}

pub async fn mark_down(
    client: &Client,
    args: &MarkDownArgs,
    endpoints: &[String],
    json: bool,
) -> anyhow::Result<()> {
    send_to_other_member(
        client,
        OtherNodeCommand::MarkDown,
        &args.node,
        endpoints,
        json,
    )
    .await
}

/// Resolves `node` to a node id through the member list and sends
/// `command` to the members from [`pick_senders`] in turn, moving on after
/// a failure that a retry may fix. Both commands are idempotent on the
/// node, so sending one twice does no harm.
///
/// An id that the member list does not contain is still sent, because the
/// node also tracks removed nodes and returns a precise error otherwise.
async fn send_to_other_member(
    client: &Client,
    command: OtherNodeCommand,
    node: &NodeRef,
    endpoints: &[String],
    json: bool,
) -> anyhow::Result<()> {
    let reply = client.members(None).await?;
    let target = find_member(&reply.members, node);
    let node_id = match (node, target) {
        (NodeRef::Id(id), _) => *id,
        (NodeRef::Address(_), Some(member)) => match parse_node_id(&member.node_id) {
            Some(id) => id,
            None => {
                return Err(kv_client::Error::Protocol {
                    message: format!(
                        "member {} lists the invalid node id {:?}",
                        member.address, member.node_id
                    ),
                }
                .into())
            }
        },
        (NodeRef::Address(address), None) => {
            return Err(CliError::NotMember {
                node: address.clone(),
                members: describe_members(&reply.members),
            }
            .into())
        }
    };
    let node_text = format_node_id(node_id);

    let senders = pick_senders(&reply.members, node_id, endpoints);
    if senders.is_empty() {
        return Err(CliError::NoOtherMemberUp {
            node: node_text,
            members: describe_members(&reply.members),
        }
        .into());
    }

    let mut tried = Vec::new();
    for sender in senders {
        let result = match command {
            OtherNodeCommand::Remove => client.remove_node_at(&sender, &node_text).await,
            OtherNodeCommand::MarkDown => client.mark_down_at(&sender, &node_text).await,
        };
        match result {
            Ok(message) => {
                print_reply(Some(&node_text), &sender, &message, json);
                return Ok(());
            }
            Err(error) if error.is_retryable() => {
                tracing::debug!(%sender, %error, "member did not take the command; trying the next one");
                tried.push(format!("{sender}: {error}"));
            }
            Err(error) => return Err(error.into()),
        }
    }
    Err(kv_client::Error::NoReachableNode { tried }.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, address: &str, up: bool) -> MemberInfo {
        MemberInfo {
            node_id: id.into(),
            address: address.into(),
            status: "normal".into(),
            up,
            ..MemberInfo::default()
        }
    }

    fn three_members() -> Vec<MemberInfo> {
        vec![
            member("00000000000000a1", "127.0.0.1:7801", true),
            member("00000000000000b2", "127.0.0.1:7802", true),
            member("00000000000000c3", "127.0.0.1:7803", false),
        ]
    }

    #[test]
    fn find_member_by_id_and_address() {
        let members = three_members();
        let by_id = find_member(&members, &NodeRef::Id(0xb2)).expect("b2 is a member");
        assert_eq!(by_id.address, "127.0.0.1:7802");
        let by_address = find_member(&members, &NodeRef::Address("127.0.0.1:7803".into()))
            .expect("7803 is a member");
        assert_eq!(by_address.node_id, "00000000000000c3");
        assert!(find_member(&members, &NodeRef::Id(0xd4)).is_none());
        assert!(find_member(&members, &NodeRef::Address("localhost:7801".into())).is_none());
    }

    #[test]
    fn senders_skip_target_and_down_members() {
        let members = three_members();
        let senders = pick_senders(&members, 0xc3, &[]);
        assert_eq!(senders, vec!["127.0.0.1:7801", "127.0.0.1:7802"]);

        let senders = pick_senders(&members, 0xa1, &[]);
        assert_eq!(senders, vec!["127.0.0.1:7802"]);

        let senders = pick_senders(&members, 0xee, &[]);
        assert_eq!(senders, vec!["127.0.0.1:7801", "127.0.0.1:7802"]);
    }

    #[test]
    fn senders_prefer_endpoints_in_order() {
        let mut members = three_members();
        members.push(member("00000000000000d4", "127.0.0.1:7804", true));
        let endpoints = vec![
            "127.0.0.1:7804".to_string(),
            "127.0.0.1:7803".to_string(),
            "127.0.0.1:7999".to_string(),
            "127.0.0.1:7804".to_string(),
        ];
        let senders = pick_senders(&members, 0xc3, &endpoints);
        assert_eq!(
            senders,
            vec!["127.0.0.1:7804", "127.0.0.1:7801", "127.0.0.1:7802"]
        );
    }

    #[test]
    fn senders_skip_marked_down_and_left() {
        let mut members = three_members();
        members[0].marked_down = true;
        members[1].status = "left".into();
        let senders = pick_senders(&members, 0xc3, &[]);
        assert!(senders.is_empty(), "{senders:?}");
    }
}
