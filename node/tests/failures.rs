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
                .put_with(
                    &key,
                    "v1",
                    None,
                    WriteOptions {
                        w: Some(2),
                        ..Default::default()
                    },
                )
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
            .put_with(
                "strict",
                "v",
                None,
                WriteOptions {
                    w: Some(3),
                    ..Default::default()
                },
            )
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
        // Hinted handoff and anti-entropy would deliver the missed write on
        // their own. A long hint interval and --aae off hold them back, so
        // only read repair can catch the node up.
        let mut cluster =
            TestCluster::start_with(3, &["--hint-interval-ms", "600000", "--aae", "off"]).await;
        let client = cluster.client().await;
        client
            .put_with(
                "kept",
                "old",
                None,
                WriteOptions {
                    w: Some(3),
                    ..Default::default()
                },
            )
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

/// Epoch of a dot shown as `node@epoch.counter`.
fn dot_epoch(dot: &str) -> u64 {
    let (_, rest) = dot.split_once('@').expect("dot has an @");
    let (epoch, _) = rest.split_once('.').expect("dot has a counter");
    epoch.parse().expect("numeric epoch")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unclean_restart_continues_under_fresh_epoch() {
    use kv_proto::v1::kv_client::KvClient;
    use kv_proto::v1::PutRequest;

    tokio::time::timeout(TEST_DEADLINE, async {
        let mut cluster = TestCluster::start(3).await;
        let client = cluster.client().await;
        let coordinator = cluster.nodes[0].address.clone();
        let put_through_coordinator = |value: &'static str, context: Vec<u8>| {
            let coordinator = coordinator.clone();
            async move {
                let mut kv = KvClient::connect(format!("http://{coordinator}"))
                    .await
                    .expect("connect");
                kv.put(PutRequest {
                    key: b"chain".to_vec(),
                    value: value.as_bytes().to_vec(),
                    context,
                    w: 3,
                    forwarded: false,
                    strict_quorum: false,
                })
                .await
                .expect("put through the first node")
                .into_inner()
                .context
            }
        };

        let context = put_through_coordinator("v1", Vec::new()).await;
        let before = client
            .replica_read(&coordinator, "chain")
            .await
            .expect("replica read");
        let first_epoch = dot_epoch(&before.dots[0]);

        // A clean stop keeps the restart mark.
        let exit = cluster.nodes[0].stop().expect("the node was running");
        assert!(exit.success(), "SIGTERM stops the node cleanly, got {exit}");
        cluster.nodes[0].spawn();
        cluster.wait_converged(Duration::from_secs(60)).await;
        let clean = common::status(&coordinator).await.expect("status");
        assert_eq!(
            clean.restart_mark, 0,
            "a clean stop does not set the restart mark"
        );

        // SIGKILL is an unclean stop: the mark covers every earlier epoch.
        cluster.nodes[0].kill();
        cluster.nodes[0].spawn();
        cluster.wait_converged(Duration::from_secs(60)).await;
        let unclean = common::status(&coordinator).await.expect("status");
        assert!(
            unclean.restart_mark >= first_epoch,
            "restart mark {} does not cover epoch {first_epoch}",
            unclean.restart_mark
        );

        put_through_coordinator("v2", context).await;
        let after = client
            .replica_read(&coordinator, "chain")
            .await
            .expect("replica read");
        assert_eq!(
            after.values,
            vec![b"v2".to_vec()],
            "the chained put replaced v1"
        );
        let new_epoch = dot_epoch(&after.dots[0]);
        assert!(
            new_epoch > unclean.restart_mark,
            "the put after an unclean restart continued epoch {new_epoch}, not above the mark {}",
            unclean.restart_mark
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_stop_after_concurrent_writes_is_clean() {
    use futures::StreamExt;
    tokio::time::timeout(TEST_DEADLINE, async {
        let mut cluster = TestCluster::start_with(1, &["--r", "1", "--w", "1"]).await;
        let address = cluster.addresses()[0].clone();
        let client = cluster.client().await;

        // Many writes in flight at once land their batches out of order.
        let puts = futures::stream::iter(0..2000).map(|i| {
            let client = client.clone();
            async move { client.put(format!("key-{i}"), "value", None).await }
        });
        let results: Vec<_> = puts.buffer_unordered(64).collect().await;
        assert!(results.iter().all(Result::is_ok), "every put succeeds");

        let exit = cluster.nodes[0].stop().expect("the node was running");
        assert!(exit.success(), "SIGTERM stops the node cleanly, got {exit}");
        cluster.nodes[0].spawn();
        cluster.wait_converged(Duration::from_secs(60)).await;
        let restarted = common::status(&address).await.expect("status");
        assert_eq!(
            restarted.restart_mark, 0,
            "a clean stop after concurrent writes was taken for an unclean one"
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_avoid_a_hung_node_reported_down() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start(3).await;
        let addresses = cluster.addresses();
        let hung = addresses[2].clone();
        let pid = cluster.nodes[2].pid().expect("the node is running") as libc::pid_t;
        // SAFETY: kill(2) on a PID this test started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        // The client takes the down list of whichever node serves its ring,
        // so both healthy nodes must report the hung one down.
        for observer in &addresses[..2] {
            wait_until(
                Duration::from_secs(30),
                "the hung node is reported down",
                || async {
                    members(observer).await.is_ok_and(|view| {
                        view.members
                            .iter()
                            .any(|member| member.address == hung && !member.up)
                    })
                },
            )
            .await;
        }

        // A new client learns from the ring which node is down and tries it
        // last, so no write waits for the hung node's timeout.
        let client = kv_client::Client::connect(&addresses)
            .await
            .expect("connect");
        for i in 0..30 {
            let key = format!("avoid-{i}");
            let put = tokio::time::timeout(Duration::from_secs(4), client.put(&key, "v", None));
            put.await
                .unwrap_or_else(|_| panic!("put of {key} waited for the hung node"))
                .unwrap_or_else(|error| panic!("put of {key} failed: {error}"));
        }
        // SAFETY: as above.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    })
    .await
    .expect("test timed out");
}
