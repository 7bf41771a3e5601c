//! Sloppy quorum and hinted handoff on real 4-node clusters (N=3): writes
//! that a stand-in takes while a replica is down, hints that survive a
//! restart of the stand-in and reach the replica when it returns, and
//! strict quorum.

mod common;

use common::{status, wait_until, TestCluster, TEST_DEADLINE};
use kv_client::{format_node_id, parse_node_id, Error, NodeId, ReplicaState, Ring, WriteOptions};
use kv_proto::v1::peer_client::PeerClient;
use kv_proto::v1::{HintsForPartitionRequest, PeerHeader};
use std::time::Duration;

/// Ids of the cluster's nodes, in the order of `cluster.nodes`.
async fn node_ids(cluster: &TestCluster) -> Vec<NodeId> {
    let mut ids = Vec::new();
    for address in cluster.addresses() {
        let reply = status(&address).await.expect("status");
        ids.push(parse_node_id(&reply.node_id).expect("status returns a hex node id"));
    }
    ids
}

/// Returns `count` keys whose preference list holds every node of `listed`
/// and not `outside`.
fn keys_listing(ring: &Ring, listed: &[NodeId], outside: NodeId, count: usize) -> Vec<String> {
    let keys: Vec<String> = (0..100_000)
        .map(|index| format!("hinted-{index}"))
        .filter(|key| {
            let list = ring.preference_list_for_key(key.as_bytes());
            listed.iter().all(|id| list.contains(id)) && !list.contains(&outside)
        })
        .take(count)
        .collect();
    assert_eq!(
        keys.len(),
        count,
        "too few keys with the wanted preference list"
    );
    keys
}

/// Asks the node at `address`, through the peer service, whether it holds
/// hints for `partition`.
async fn holds_hints(address: &str, cluster_id: &str, partition: u32) -> bool {
    let mut peer = PeerClient::connect(format!("http://{address}"))
        .await
        .expect("connect to the peer service");
    let request = HintsForPartitionRequest {
        header: Some(PeerHeader {
            format_version: kv_proto::FORMAT_VERSION,
            cluster_id: cluster_id.to_string(),
            sender: 1,
            ring_version: 0,
            timeout_ms: 3000,
        }),
        partition,
    };
    peer.hints_for_partition(request)
        .await
        .expect("HintsForPartition")
        .into_inner()
        .holds_hints
}

/// Runs `kv-cli status --json` against `address` and returns its document.
fn cli_status(address: &str) -> serde_json::Value {
    let output = std::process::Command::new(common::cli_binary())
        .args(["--endpoints", address, "--json", "status"])
        .output()
        .expect("run kv-cli status");
    assert!(
        output.status.success(),
        "kv-cli status failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("kv-cli status prints JSON")
}

/// Hints the node at `address` holds for `target`, from its status.
async fn hints_held_for(address: &str, target: NodeId) -> Option<u64> {
    let reply = status(address).await.ok()?;
    let target = format_node_id(target);
    Some(
        reply
            .pending_hints
            .iter()
            .filter(|pending| pending.node_id == target)
            .map(|pending| pending.hints)
            .sum(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hinted_writes_reach_owner_after_stand_in_restart() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let mut cluster = TestCluster::start_with(4, &["--hint-interval-ms", "200"]).await;
        let ids = node_ids(&cluster).await;
        let client = cluster.client().await;
        let snapshot = client.ring().await.expect("ring");
        let cluster_id = snapshot.ring.cluster_id.clone();

        // Keys replicated on nodes 0, 2 and 3: with node 3 down, node 1 is
        // the only node beyond their preference list, so it is the stand-in.
        let owner = cluster.nodes[3].address.clone();
        let stand_in = cluster.nodes[1].address.clone();
        let keys = keys_listing(&snapshot.ring, &[ids[0], ids[2], ids[3]], ids[1], 20);

        cluster.nodes[3].kill();
        for observer in [0, 2] {
            let observer = cluster.nodes[observer].address.clone();
            cluster
                .wait_member_up(&observer, &owner, false, Duration::from_secs(30))
                .await;
            // Under load a detector can suspect a healthy node for a moment;
            // the coordinators must see the stand-in up before the writes.
            cluster
                .wait_member_up(&observer, &stand_in, true, Duration::from_secs(30))
                .await;
        }

        for (index, key) in keys.iter().enumerate() {
            client
                .put_with(
                    key,
                    format!("value-{index}"),
                    None,
                    WriteOptions {
                        w: Some(3),
                        ..Default::default()
                    },
                )
                .await
                .expect("W=3 put through a stand-in with one replica down");
        }

        // The stand-in keeps the writes as hints, apart from its own data.
        assert_eq!(
            hints_held_for(&stand_in, ids[3]).await,
            Some(keys.len() as u64),
            "hints held by the stand-in for the down replica"
        );
        let replica = client
            .replica_read(&stand_in, &keys[0])
            .await
            .expect("replica read on the stand-in");
        assert_eq!(
            replica.state,
            ReplicaState::Missing,
            "a hint must not enter the stand-in's own data"
        );
        let partition = snapshot.ring.partition_for_key(keys[0].as_bytes());
        assert!(
            holds_hints(&stand_in, &cluster_id, partition).await,
            "HintsForPartition does not report the held hint"
        );
        let document = cli_status(&stand_in);
        let pending = document["pending_hints"]
            .as_array()
            .expect("kv-cli status --json lists pending_hints");
        assert!(
            pending
                .iter()
                .any(|entry| entry["node_id"] == format_node_id(ids[3])
                    && entry["hints"] == keys.len() as u64),
            "kv-cli status does not show the hints per target: {pending:?}"
        );

        // The stand-in dies with its hints; the owner returns while it is
        // down, and then the stand-in restarts.
        cluster.nodes[1].kill();
        cluster.nodes[3].spawn();
        cluster.nodes[1].spawn();
        cluster.wait_converged(Duration::from_secs(60)).await;

        let (client_ref, owner_ref, keys_ref) = (&client, &owner, &keys);
        wait_until(
            Duration::from_secs(60),
            "every hinted write on the returned owner",
            || async move {
                for (index, key) in keys_ref.iter().enumerate() {
                    let expected = vec![format!("value-{index}").into_bytes()];
                    let arrived = client_ref
                        .replica_read(owner_ref, key)
                        .await
                        .is_ok_and(|replica| replica.values == expected);
                    if !arrived {
                        return false;
                    }
                }
                true
            },
        )
        .await;

        let (stand_in_ref, target) = (&stand_in, ids[3]);
        wait_until(
            Duration::from_secs(30),
            "the stand-in to delete its delivered hints",
            || async move { hints_held_for(stand_in_ref, target).await == Some(0) },
        )
        .await;
        let after = status(&stand_in).await.expect("status");
        assert_eq!(
            after.hints_delivered,
            keys.len() as u64,
            "the stand-in delivered every hint after its restart"
        );
        assert!(
            !holds_hints(&stand_in, &cluster_id, partition).await,
            "HintsForPartition still reports a delivered hint"
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_quorum_fails_with_a_replica_down() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let mut cluster = TestCluster::start(4).await;
        let ids = node_ids(&cluster).await;
        let client = cluster.client().await;
        let snapshot = client.ring().await.expect("ring");
        let key = keys_listing(&snapshot.ring, &[ids[0], ids[2], ids[3]], ids[1], 1).remove(0);

        let down = cluster.nodes[3].address.clone();
        cluster.nodes[3].kill();
        for observer in [0, 2] {
            let observer = cluster.nodes[observer].address.clone();
            cluster
                .wait_member_up(&observer, &down, false, Duration::from_secs(30))
                .await;
        }

        let strict = WriteOptions {
            w: Some(3),
            strict_quorum: true,
        };
        match client.put_with(&key, "strict", None, strict).await {
            Err(Error::QuorumFailed { message }) => {
                assert!(
                    message.contains("strict write quorum"),
                    "message does not say the quorum was strict: {message}"
                );
                assert!(
                    message.contains("W=3"),
                    "message does not name the quorum: {message}"
                );
                assert!(
                    message.contains(&down),
                    "message does not name the down replica: {message}"
                );
            }
            other => panic!("expected UNAVAILABLE for a strict W=3 put, got {other:?}"),
        }

        let output = std::process::Command::new(common::cli_binary())
            .args([
                "--endpoints",
                &cluster.nodes[0].address,
                "put",
                &key,
                "strict-cli",
                "--w",
                "3",
                "--strict-quorum",
            ])
            .output()
            .expect("run kv-cli put");
        assert!(
            !output.status.success(),
            "kv-cli put --strict-quorum succeeded with a replica down"
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&down),
            "kv-cli does not name the down replica: {stderr}"
        );

        client
            .put_with(
                &key,
                "sloppy",
                None,
                WriteOptions {
                    w: Some(3),
                    ..Default::default()
                },
            )
            .await
            .expect("the same put without strict quorum succeeds through a stand-in");
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w2_writes_succeed_with_two_of_five_down() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let mut cluster = TestCluster::start(5).await;
        let ids = node_ids(&cluster).await;
        let client = cluster.client().await;
        let snapshot = client.ring().await.expect("ring");

        // Keys whose preference list holds both nodes that go down, so each
        // write needs a stand-in for two replicas.
        let keys: Vec<String> = (0..100_000)
            .map(|index| format!("two-down-{index}"))
            .filter(|key| {
                let list = snapshot.ring.preference_list_for_key(key.as_bytes());
                list.contains(&ids[3]) && list.contains(&ids[4])
            })
            .take(10)
            .collect();
        assert_eq!(
            keys.len(),
            10,
            "too few keys with the wanted preference list"
        );

        let down = [
            cluster.nodes[3].address.clone(),
            cluster.nodes[4].address.clone(),
        ];
        cluster.nodes[3].kill();
        cluster.nodes[4].kill();
        for observer in 0..3 {
            let observer = cluster.nodes[observer].address.clone();
            for target in &down {
                cluster
                    .wait_member_up(&observer, target, false, Duration::from_secs(30))
                    .await;
            }
        }

        for key in &keys {
            client
                .put_with(
                    key,
                    "value",
                    None,
                    WriteOptions {
                        w: Some(2),
                        ..Default::default()
                    },
                )
                .await
                .expect("W=2 put with two of five nodes down");
        }

        // Each write left one hint for each down replica on a stand-in.
        for target in [ids[3], ids[4]] {
            let mut held = 0;
            for node in &cluster.nodes[0..3] {
                held += hints_held_for(&node.address, target)
                    .await
                    .expect("status of a running node");
            }
            assert_eq!(
                held,
                keys.len() as u64,
                "hints held for {}",
                format_node_id(target)
            );
        }
    })
    .await
    .expect("test timed out");
}
