//! The peer `ReplicaBatch` RPC on a real node: each item gets its own
//! result in order, a bad item fails alone, and writes are applied.

mod common;

use common::{admin, status, TestCluster, TEST_DEADLINE};
use futures::StreamExt;
use kv_proto::v1::peer_client::PeerClient;
use kv_proto::v1::{
    AdminReplicaReadRequest, PeerHeader, ReplicaBatchRequest, ReplicaItem, ReplicaState,
};
use kv_proto::FORMAT_VERSION;

/// Sums the replica batches and items sent by every node.
async fn sent_totals(cluster: &TestCluster) -> (u64, u64) {
    let mut totals = (0, 0);
    for address in cluster.addresses() {
        let node = status(&address).await.expect("status");
        totals.0 += node.replica_batches_sent;
        totals.1 += node.replica_items_sent;
    }
    totals
}

fn read(key: &str, digest_only: bool) -> ReplicaItem {
    ReplicaItem {
        key: key.as_bytes().to_vec(),
        write: false,
        state: Vec::new(),
        digest_only,
        hint_for: 0,
    }
}

fn write(key: &str, state: Vec<u8>) -> ReplicaItem {
    ReplicaItem {
        key: key.as_bytes().to_vec(),
        write: true,
        state,
        digest_only: false,
        hint_for: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_batch_returns_one_result_per_item_in_order() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start(3).await;
        let client = cluster.client().await;
        client.put("alpha", "one", None).await.expect("put alpha");

        let target = cluster.addresses()[0].clone();
        let sender = cluster.addresses()[1].clone();
        let target_status = status(&target).await.expect("status of the target");
        let sender_id = u64::from_str_radix(
            &status(&sender).await.expect("status of the sender").node_id,
            16,
        )
        .expect("node ids are hex");
        let alpha_state = admin(&target)
            .await
            .expect("admin client")
            .replica_read(AdminReplicaReadRequest {
                key: b"alpha".to_vec(),
            })
            .await
            .expect("replica read of alpha")
            .into_inner()
            .state;
        assert!(!alpha_state.is_empty(), "the target holds alpha");

        let mut peer = PeerClient::connect(format!("http://{target}"))
            .await
            .expect("connect to the target");
        let request = ReplicaBatchRequest {
            header: Some(PeerHeader {
                format_version: FORMAT_VERSION,
                cluster_id: target_status.cluster_id.clone(),
                sender: sender_id,
                ring_version: target_status.ring_version,
                timeout_ms: 5_000,
            }),
            items: vec![
                read("alpha", false),
                read("", false),
                write("beta", alpha_state.clone()),
                read("alpha", true),
                write("gamma", b"not a state".to_vec()),
                read("missing", false),
            ],
        };
        let results = peer
            .replica_batch(request)
            .await
            .expect("the batch as a whole succeeds")
            .into_inner()
            .results;
        assert_eq!(results.len(), 6, "one result per item: {results:?}");

        assert_eq!(results[0].code, 0);
        assert_eq!(results[0].kind, ReplicaState::Present as i32);
        assert_eq!(
            results[0].state, alpha_state,
            "a full read returns the state"
        );
        assert_eq!(results[0].digest.len(), 16);

        assert_eq!(results[1].code, tonic::Code::InvalidArgument as i32);
        assert!(results[1].message.contains("key is empty"), "{results:?}");

        assert_eq!(
            results[2].code, 0,
            "the write of beta succeeds: {results:?}"
        );

        assert_eq!(results[3].code, 0);
        assert!(
            results[3].state.is_empty(),
            "a digest read returns no state"
        );
        assert_eq!(results[3].digest, results[0].digest);

        assert_eq!(results[4].code, tonic::Code::InvalidArgument as i32);
        assert!(results[4].message.contains("invalid state"), "{results:?}");

        assert_eq!(results[5].code, 0);
        assert_eq!(results[5].kind, ReplicaState::Missing as i32);

        // The write was applied: the target now holds alpha's value under beta.
        let beta = client
            .replica_read(&target, "beta")
            .await
            .expect("replica read of beta");
        assert_eq!(beta.values, vec![b"one".to_vec()]);
        let gamma = client
            .replica_read(&target, "gamma")
            .await
            .expect("replica read of gamma");
        assert!(gamma.values.is_empty(), "the bad write stored nothing");

        // Writes issued together share batches: every put sends two replica
        // writes, and with 64 puts in flight they queue behind each other.
        let before = sent_totals(&cluster).await;
        let puts = futures::stream::iter(0..400).map(|i| {
            let client = client.clone();
            async move { client.put(format!("load-{i}"), "value", None).await }
        });
        let results: Vec<_> = puts.buffer_unordered(64).collect().await;
        assert!(results.iter().all(Result::is_ok), "every put succeeds");
        let after = sent_totals(&cluster).await;
        let (batches, items) = (after.0 - before.0, after.1 - before.1);
        assert!(items >= 800, "two replica writes per put: {items} items");
        assert!(
            batches < items,
            "concurrent writes were coalesced: {items} items in {batches} batches"
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_batch_from_another_cluster_is_rejected_whole() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start(1).await;
        let target = cluster.addresses()[0].clone();
        let mut peer = PeerClient::connect(format!("http://{target}"))
            .await
            .expect("connect to the node");
        let request = ReplicaBatchRequest {
            header: Some(PeerHeader {
                format_version: FORMAT_VERSION,
                cluster_id: "another-cluster".to_string(),
                sender: 7,
                ring_version: 1,
                timeout_ms: 5_000,
            }),
            items: vec![write("alpha", Vec::new())],
        };
        let error = peer
            .replica_batch(request)
            .await
            .expect_err("a foreign cluster is rejected");
        assert!(
            error.message().contains("cluster id mismatch"),
            "{}",
            error.message()
        );
    })
    .await
    .expect("test timed out");
}
