//! The membership fault: join a spare node, decommission a member, or kill
//! and remove a member, each waited for until it finishes.
//!
//! Every change first waits until the members agree on a ring without a
//! partition move plan, so two changes never overlap. It then records its
//! start event (`join n4`, `decommission n2`, `remove n1`), performs the
//! change and records its end event (`joined n4`, `left n2`, `removed n1`)
//! once it finished:
//!
//! - join: the spare starts with an empty data directory and the members as
//!   seeds, and ends when every member returns the same ring, which lists it
//!   and has no plan;
//! - decommission: the member receives the `Decommission` admin request and
//!   ends when its process exits by itself;
//! - remove: the member is killed with SIGKILL, and every other member's
//!   failure detector must report it down. Another member then receives the
//!   `Remove` admin request. The change ends when every member returns the
//!   same ring, which no longer lists it and has no plan.
//!
//! A change that does not finish within the change timeout fails the run,
//! because a ring change that never completes is a ringkv bug.

use std::time::{Duration, Instant};

use kv_client::{Client, ClientOptions};

use crate::cluster::{Cluster, ClusterError};
use crate::nemesis::Fault;
use crate::recorder::Recorder;

/// Pause between two polls while a change runs.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Errors of a membership change.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(
        "{change} did not finish within {waited:?}: {reason}; see the node logs in the run folder"
    )]
    TimedOut {
        change: String,
        waited: Duration,
        reason: String,
    },
    #[error("node n{node} exited with {status} after its decommission instead of success; see its log n{node}.log")]
    LeftWithError {
        node: usize,
        status: std::process::ExitStatus,
    },
    #[error("cannot create an admin client for {addresses}: {source}")]
    Client {
        addresses: String,
        source: kv_client::Error,
    },
    #[error("{fault} is not a membership change")]
    NotAChange { fault: String },
}

/// Runs one membership change to its end, recording its start and end
/// events. `timeout` bounds each wait of the change: for the previous change
/// to settle, for the request to be accepted, and for the change to finish.
pub async fn run_change(
    fault: &Fault,
    cluster: &mut Cluster,
    recorder: &Recorder,
    timeout: Duration,
) -> Result<(), MembershipError> {
    let change = fault.start_texts().join(", ");
    settle(cluster, &format!("the change before {change}"), timeout).await?;
    for text in fault.start_texts() {
        recorder.nemesis(text);
    }
    match fault {
        Fault::Join { node } => {
            cluster.join(*node)?;
            settle(cluster, &change, timeout).await?;
        }
        Fault::Decommission { node } => decommission(cluster, *node, timeout).await?,
        Fault::Remove { node } => remove(cluster, *node, timeout).await?,
        other => {
            return Err(MembershipError::NotAChange {
                fault: other.start_texts().join(", "),
            })
        }
    }
    for text in fault.stop_texts() {
        recorder.nemesis(text);
    }
    Ok(())
}

/// Waits until every member returns the same ring without a plan. On a
/// timeout, the error adds each member's `ring_change_waiting` status.
async fn settle(
    cluster: &mut Cluster,
    change: &str,
    timeout: Duration,
) -> Result<(), MembershipError> {
    match cluster.wait_ring_settled(timeout).await {
        Ok(()) => Ok(()),
        Err(ClusterError::NotReady { waited, reason }) => {
            let waiting = waiting_reasons(&cluster.member_addresses()).await;
            Err(MembershipError::TimedOut {
                change: change.to_string(),
                waited,
                reason: format!("{reason}; ring changes waiting: {waiting}"),
            })
        }
        Err(error) => Err(error.into()),
    }
}

/// Returns what each member's Status reports the next ring change waits
/// for, as `address: reason` pairs.
async fn waiting_reasons(addresses: &[String]) -> String {
    let client = match admin_client(addresses).await {
        Ok(client) => client,
        Err(error) => return error.to_string(),
    };
    let mut reasons = Vec::new();
    for address in addresses {
        let reason = match client.status(address).await {
            Ok(status) if status.ring_change_waiting.is_empty() => "nothing".to_string(),
            Ok(status) => status.ring_change_waiting,
            Err(error) => format!("Status failed: {error}"),
        };
        reasons.push(format!("{address}: {reason}"));
    }
    reasons.join("; ")
}

/// Sends `Decommission` to node `node` and waits until its process exits.
async fn decommission(
    cluster: &mut Cluster,
    node: usize,
    timeout: Duration,
) -> Result<(), MembershipError> {
    let change = format!("decommission n{node}");
    let address = node_address(cluster, node)?;
    let client = admin_client(std::slice::from_ref(&address)).await?;
    let message = retry(&change, timeout, || client.decommission(&address)).await?;
    tracing::info!(node = %format!("n{node}"), %message, "requested the decommission");

    match cluster.wait_left(node, timeout).await? {
        Some(status) if status.success() => Ok(()),
        Some(status) => Err(MembershipError::LeftWithError { node, status }),
        None => Err(MembershipError::TimedOut {
            change,
            waited: timeout,
            reason: format!("the process of n{node} still runs"),
        }),
    }
}

/// Kills node `node`, waits until every other member reports it down, has
/// another member remove it and waits until the ring settles without it.
async fn remove(
    cluster: &mut Cluster,
    node: usize,
    timeout: Duration,
) -> Result<(), MembershipError> {
    let change = format!("remove n{node}");
    let address = node_address(cluster, node)?;
    let observers: Vec<String> = cluster
        .member_addresses()
        .into_iter()
        .filter(|other| *other != address)
        .collect();
    let mut all = observers.clone();
    all.push(address.clone());
    let client = admin_client(&all).await?;

    // The node id is known only while the node runs.
    let status = retry(&change, timeout, || client.status(&address)).await?;
    let node_id = status.node_id;
    cluster.kill(node)?;

    let started = Instant::now();
    for observer in &observers {
        loop {
            let down = match client.members(Some(observer)).await {
                Ok(reply) => reply
                    .members
                    .iter()
                    .any(|member| member.node_id == node_id && !member.up),
                Err(_) => false,
            };
            if down {
                break;
            }
            if started.elapsed() >= timeout {
                return Err(MembershipError::TimedOut {
                    change,
                    waited: started.elapsed(),
                    reason: format!("{observer} does not report n{node} ({node_id}) down"),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    let receiver = observers[0].clone();
    let message = retry(&change, timeout, || {
        client.remove_node_at(&receiver, &node_id)
    })
    .await?;
    tracing::info!(node = %format!("n{node}"), %node_id, %receiver, %message, "requested the removal");
    cluster.mark_removed(node)?;
    settle(cluster, &change, timeout).await
}

fn node_address(cluster: &Cluster, node: usize) -> Result<String, MembershipError> {
    cluster
        .address(node)
        .map(str::to_string)
        .ok_or(MembershipError::Cluster(ClusterError::NotRunning {
            node,
            action: "changed",
        }))
}

async fn admin_client(addresses: &[String]) -> Result<Client, MembershipError> {
    let options = ClientOptions {
        request_timeout: Duration::from_secs(3),
        connect_timeout: Duration::from_secs(1),
        ..ClientOptions::default()
    };
    Client::connect_with(addresses, options)
        .await
        .map_err(|source| MembershipError::Client {
            addresses: addresses.join(","),
            source,
        })
}

/// Repeats `request` until it succeeds or `timeout` passes. A node that was
/// just restarted after a kill fault may not accept requests yet. Repeats
/// are safe because kv-node accepts a second `Decommission` or `Remove` of
/// the same node as a success ("already leaving", "already removed").
async fn retry<T, F, Fut>(
    change: &str,
    timeout: Duration,
    mut request: F,
) -> Result<T, MembershipError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kv_client::Error>>,
{
    let started = Instant::now();
    loop {
        match request().await {
            Ok(value) => return Ok(value),
            Err(error) if started.elapsed() >= timeout => {
                return Err(MembershipError::TimedOut {
                    change: change.to_string(),
                    waited: started.elapsed(),
                    reason: format!("the last request failed: {error}"),
                })
            }
            Err(error) => {
                tracing::debug!(%change, %error, "membership request failed; retrying");
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        }
    }
}
