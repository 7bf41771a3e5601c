//! Active anti-entropy on real 3-node clusters: replicas converge through
//! hash-tree exchanges alone, without any client read.

mod common;

use common::{status, TestCluster, TEST_DEADLINE};
use futures::StreamExt;
use kv_client::{ReplicaState, WriteOptions};
use std::time::{Duration, Instant};

/// Anti-entropy settings for tests: short rounds and no repair pacing to
/// speak of. Hinted handoff is held back, so only anti-entropy can deliver
/// missed writes.
const FAST_AAE: [&str; 6] = [
    "--aae-interval-ms",
    "300",
    "--aae-max-repairs-per-second",
    "100000",
    "--hint-interval-ms",
    "600000",
];

const KEYS: usize = 1000;

fn key(index: usize) -> String {
    format!("missed-{index}")
}

fn value(index: usize) -> String {
    format!("value-{index}")
}

/// Sums a counter of `Status` over the given nodes.
async fn total(addresses: &[String], counter: fn(&kv_proto::v1::StatusResponse) -> u64) -> u64 {
    let mut sum = 0;
    for address in addresses {
        sum += counter(&status(address).await.expect("status"));
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_receives_missed_writes() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let mut cluster = TestCluster::start_with(3, &FAST_AAE).await;
        let victim = cluster.nodes[2].address.clone();
        cluster.nodes[2].kill();

        let client = cluster.client().await;
        let results: Vec<(usize, Result<_, kv_client::Error>)> = futures::stream::iter(0..KEYS)
            .map(|index| {
                let client = client.clone();
                async move {
                    let options = WriteOptions {
                        w: Some(2),
                        ..Default::default()
                    };
                    let result = client
                        .put_with(key(index), value(index), None, options)
                        .await;
                    (index, result)
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for (index, result) in results {
            if let Err(error) = result {
                panic!(
                    "W=2 put of {} with one node down failed: {error}",
                    key(index)
                );
            }
        }

        cluster.nodes[2].spawn();
        let restarted_at = Instant::now();
        cluster.wait_converged(Duration::from_secs(60)).await;
        eprintln!(
            "cluster converged {:?} after the restart",
            restarted_at.elapsed()
        );

        // Only replica reads of the restarted node from here on: no client
        // read may repair a key.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut present = 0;
        while present < KEYS {
            let replica = client
                .replica_read(&victim, key(present))
                .await
                .expect("replica read");
            if replica.state == ReplicaState::Present {
                assert_eq!(
                    replica.values,
                    vec![value(present).into_bytes()],
                    "{} holds a wrong value",
                    key(present)
                );
                present += 1;
                continue;
            }
            assert!(
                Instant::now() < deadline,
                "after 60 s the restarted node holds {present} of {KEYS} keys; {} is {:?}",
                key(present),
                replica.state
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "the restarted node held all {KEYS} keys {:?} after its restart",
            restarted_at.elapsed()
        );

        let addresses = cluster.addresses();
        assert_eq!(
            total(&addresses, |node| node.read_repairs).await,
            0,
            "no read repair ran"
        );
        let repaired = total(&addresses, |node| node.aae_keys_repaired).await;
        assert!(
            repaired >= KEYS as u64,
            "anti-entropy counted {repaired} repairs for {KEYS} missed keys"
        );
        let restarted = status(&victim).await.expect("status");
        assert!(restarted.aae_enabled);
        assert_eq!(restarted.aae_trees_built, restarted.aae_trees_replicated);
        assert!(restarted.aae_exchanges >= 1, "the restarted node exchanged");
        assert_eq!(restarted.aae_peers.len(), 2, "{:?}", restarted.aae_peers);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_rebuilds_during_writes_find_no_drift() {
    tokio::time::timeout(TEST_DEADLINE, async {
        // Few partitions, so each build scans its records in several chunks
        // and writes land both behind and ahead of the scan.
        let mut args = FAST_AAE.to_vec();
        args.extend(["--aae-rebuild-interval-ms", "20", "--partitions", "4"]);
        let cluster = TestCluster::start_with(3, &args).await;
        let client = cluster.client().await;

        // Writes while every node rebuilds its tree again and again.
        let results: Vec<Result<_, kv_client::Error>> = futures::stream::iter(0..2 * KEYS)
            .map(|index| {
                let client = client.clone();
                async move { client.put(key(index), value(index), None).await }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for result in results {
            result.expect("put");
        }

        let addresses = cluster.addresses();
        assert_eq!(
            total(&addresses, |node| node.aae_tree_drift).await,
            0,
            "a rebuild disagreed with a tree kept up to date by the writes"
        );
        for address in &addresses {
            let node = status(address).await.expect("status");
            assert_eq!(node.aae_trees_built, node.aae_trees_replicated, "{address}");
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_rpcs_check_header_and_partition() {
    use common::wait_until;
    use kv_proto::v1::peer_client::PeerClient;
    use kv_proto::v1::{
        PeerHeader, TreeKeysRequest, TreeLeavesRequest, TreeRootsRequest, TreeStatus,
    };
    use kv_proto::FORMAT_VERSION;

    tokio::time::timeout(TEST_DEADLINE, async {
        // With N=2 of 3 nodes, each node replicates only some partitions.
        let cluster = TestCluster::start_with(3, &["--n", "2", "--partitions", "16"]).await;
        let client = cluster.client().await;
        let target = cluster.addresses()[0].clone();
        let target_ref = &target;
        wait_until(
            Duration::from_secs(30),
            "the target's trees",
            || async move {
                status(target_ref)
                    .await
                    .is_ok_and(|node| node.aae_trees_built == node.aae_trees_replicated)
            },
        )
        .await;
        let target_status = status(&target).await.expect("status");
        let target_id = kv_cluster::parse_node_id(&target_status.node_id).expect("node id");
        let ring = client.ring().await.expect("ring").ring.clone();
        let replicated = (0..ring.partitions)
            .find(|partition| ring.preference_list(*partition).contains(&target_id))
            .expect("the target replicates a partition");
        // A key stored on the target: W=2 reaches both replicas.
        let stored = (0..1000)
            .map(|index| format!("alpha-{index}"))
            .find(|key| {
                ring.preference_list_for_key(key.as_bytes())
                    .contains(&target_id)
            })
            .expect("some key is replicated on the target");
        client.put(&stored, "one", None).await.expect("put");
        let foreign = (0..ring.partitions)
            .find(|partition| !ring.preference_list(*partition).contains(&target_id))
            .expect("the target does not replicate every partition");
        let header = |cluster_id: &str| PeerHeader {
            format_version: FORMAT_VERSION,
            cluster_id: cluster_id.to_string(),
            sender: 7,
            ring_version: target_status.ring_version,
            timeout_ms: 5_000,
        };
        let own_cluster = target_status.cluster_id.as_str();
        let mut peer = PeerClient::connect(format!("http://{target}"))
            .await
            .expect("connect to the target");

        let roots = peer
            .tree_roots(TreeRootsRequest {
                header: Some(header(own_cluster)),
                partitions: vec![replicated, foreign, ring.partitions],
            })
            .await
            .expect("tree roots")
            .into_inner()
            .roots;
        assert_eq!(roots.len(), 3, "{roots:?}");
        assert_eq!(roots[0].status, TreeStatus::Ready as i32);
        assert_eq!(roots[0].root.len(), 16);
        assert_eq!(roots[1].status, TreeStatus::NotReplicated as i32);
        assert_eq!(roots[2].status, TreeStatus::NotReplicated as i32);

        let leaves = peer
            .tree_leaves(TreeLeavesRequest {
                header: Some(header(own_cluster)),
                partition: replicated,
            })
            .await
            .expect("tree leaves")
            .into_inner()
            .leaves;
        assert_eq!(leaves.len(), 16 * ring.tree_leaves as usize);

        let error = peer
            .tree_leaves(TreeLeavesRequest {
                header: Some(header(own_cluster)),
                partition: foreign,
            })
            .await
            .expect_err("a partition the node does not replicate is rejected");
        assert_eq!(error.code(), tonic::Code::FailedPrecondition);
        assert!(
            error.message().contains("does not replicate"),
            "{}",
            error.message()
        );

        let error = peer
            .tree_keys(TreeKeysRequest {
                header: Some(header(own_cluster)),
                partition: replicated,
                leaves: vec![ring.tree_leaves],
            })
            .await
            .expect_err("a leaf outside the tree is rejected");
        assert_eq!(error.code(), tonic::Code::InvalidArgument);

        let error = peer
            .tree_roots(TreeRootsRequest {
                header: Some(header("another-cluster")),
                partitions: vec![replicated],
            })
            .await
            .expect_err("a foreign cluster is rejected");
        assert!(
            error.message().contains("cluster id mismatch"),
            "{}",
            error.message()
        );

        // Listing every leaf of the key's partition finds the key alone.
        let listed = peer
            .tree_keys(TreeKeysRequest {
                header: Some(header(own_cluster)),
                partition: ring.partition_for_key(stored.as_bytes()),
                leaves: (0..ring.tree_leaves).collect(),
            })
            .await
            .expect("tree keys")
            .into_inner();
        assert_eq!(listed.leaves.len(), ring.tree_leaves as usize);
        let keys: Vec<&[u8]> = listed
            .keys
            .iter()
            .map(|entry| entry.key.as_slice())
            .collect();
        assert_eq!(keys, vec![stored.as_bytes()]);
        assert_eq!(listed.keys[0].digest.len(), 16);
    })
    .await
    .expect("test timed out");
}
