//! Node failures on a real 3-node cluster: quorums with a killed node,
//! restarts, read repair and failure detection.

mod common;

use common::{members, wait_until, TestCluster, TEST_DEADLINE};
use kv_client::{Error, ReadOptions, ReplicaState, WriteOptions};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_holds_with_one_node_killed() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let mut cluster = TestCluster::start(3).await;
        let client = cluster.client().await;
        client
            .put("before", "v0", None)
            .await
            .expect("put before the kill");

        let victim = cluster.nodes[2].address.clone();
        cluster.nodes[2].kill();
        let first = cluster.nodes[0].address.clone();
        cluster
            .wait_member_up(&first, &victim, false, Duration::from_secs(30))
            .await;

        // R=W=2 keep working.
        for index in 0..10 {
            let key = format!("during-{index}");
            client
                .put_with(&key, "v1", None, WriteOptions { w: Some(2) })
                .await
                .expect("W=2 put with one node down");
            let read = client
                .get_with(&key, ReadOptions { r: Some(2) })
                .await
                .expect("R=2 get");
            assert_eq!(read.values, vec![b"v1".to_vec()]);
        }
        let read = client.get("before").await.expect("R=2 get of an older key");
        assert_eq!(read.values, vec![b"v0".to_vec()]);

        // W=3 cannot be met, and the error says why.
        match client
            .put_with("strict", "v", None, WriteOptions { w: Some(3) })
            .await
        {
            Err(Error::QuorumFailed { message }) => {
                assert!(
                    message.contains("W=3"),
                    "message does not name the quorum: {message}"
                );
                assert!(
                    message.contains(&victim),
                    "message does not name the down node: {message}"
                );
            }
            other => panic!("expected UNAVAILABLE for W=3, got {other:?}"),
        }
        match client.get_with("before", ReadOptions { r: Some(3) }).await {
            Err(Error::QuorumFailed { message }) => {
                assert!(message.contains("R=3"), "message: {message}")
            }
            other => panic!("expected UNAVAILABLE for R=3, got {other:?}"),
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_keeps_data_and_read_repair_catches_it_up() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let mut cluster = TestCluster::start(3).await;
        let client = cluster.client().await;
        client
            .put_with("kept", "old", None, WriteOptions { w: Some(3) })
            .await
            .expect("put on all three");

        let lagging = cluster.nodes[2].address.clone();
        cluster.nodes[2].kill();
        let first = cluster.nodes[0].address.clone();
        cluster
            .wait_member_up(&first, &lagging, false, Duration::from_secs(30))
            .await;
        client
            .put("missed", "new", None)
            .await
            .expect("put while the node is down");

        cluster.nodes[2].spawn();
        cluster.wait_converged(Duration::from_secs(60)).await;

        let kept = client
            .replica_read(&lagging, "kept")
            .await
            .expect("replica read");
        assert_eq!(
            kept.state,
            ReplicaState::Present,
            "the restarted node lost its data"
        );
        assert_eq!(kept.values, vec![b"old".to_vec()]);
        let missed = client
            .replica_read(&lagging, "missed")
            .await
            .expect("replica read");
        assert_eq!(
            missed.state,
            ReplicaState::Missing,
            "the node cannot have the write it missed yet"
        );

        // A quorum read repairs the replica that missed the write.
        let read = client.get("missed").await.expect("get");
        assert_eq!(read.values, vec![b"new".to_vec()]);
        let client_ref = &client;
        let lagging_ref = &lagging;
        wait_until(
            Duration::from_secs(20),
            "read repair of the restarted node",
            || async move {
                client_ref
                    .replica_read(lagging_ref, "missed")
                    .await
                    .is_ok_and(|replica| replica.values == vec![b"new".to_vec()])
            },
        )
        .await;
    })
    .await
    .expect("test timed out");
}

/// Runs `kv-cli members --json` against `endpoint` and returns the member
/// whose address is `address`.
fn cli_member(endpoint: &str, address: &str) -> Option<serde_json::Value> {
    let output = std::process::Command::new(common::cli_binary())
        .args(["--endpoints", endpoint, "--json", "members"])
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let document: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    document["members"]
        .as_array()?
        .iter()
        .find(|member| member["address"] == address)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_is_reported_down_then_up() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let mut cluster = TestCluster::start(3).await;
        let observer = cluster.nodes[0].address.clone();
        let victim = cluster.nodes[1].address.clone();
        assert_eq!(
            cli_member(&observer, &victim).map(|member| member["up"].clone()),
            Some(serde_json::Value::Bool(true)),
            "kv-cli members shows the node up before the kill"
        );

        cluster.nodes[1].kill();
        let started = std::time::Instant::now();
        let (observer_ref, victim_ref) = (&observer, &victim);
        wait_until(
            Duration::from_secs(20),
            "kv-cli members to show the node down",
            || async move {
                cli_member(observer_ref, victim_ref).is_some_and(|member| member["up"] == false)
            },
        )
        .await;
        let down_after = started.elapsed();
        eprintln!("reported down after {down_after:?}");

        cluster.nodes[1].spawn();
        wait_until(
            Duration::from_secs(20),
            "kv-cli members to show the node up again",
            || async move {
                cli_member(observer_ref, victim_ref).is_some_and(|member| member["up"] == true)
            },
        )
        .await;
        cluster.wait_converged(Duration::from_secs(30)).await;
        let third = members(&cluster.nodes[2].address).await.expect("members");
        assert!(
            third.members.iter().all(|member| member.up),
            "every node sees the restarted one up"
        );
    })
    .await
    .expect("test timed out");
}
