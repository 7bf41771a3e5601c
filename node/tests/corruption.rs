//! Corrupted records: detected by their checksum, never served, and repaired
//! from the other replicas without losing a write.

mod common;

use common::{wait_until, TestCluster, TestNode, TEST_DEADLINE};
use kv_client::{ReplicaState, WriteOptions};
use kv_proto::v1::kv_client::KvClient;
use kv_proto::v1::{GetRequest, PutRequest};
use kv_storage::{EngineKind, Space, WriteOp};
use std::time::Duration;

/// Flips the last byte of the stored record of `key` in a stopped node's
/// data directory.
fn corrupt_record(node: &TestNode, key: &[u8]) {
    assert!(
        !node.is_running(),
        "stop the node before corrupting its data"
    );
    let engine =
        kv_storage::open(EngineKind::Fjall, &node.data_dir).expect("open the node's storage");
    let stored_key = kv_cluster::hash::storage_key(key);
    let mut record = engine
        .get(Space::Data, &stored_key)
        .expect("read record")
        .expect("the node holds the key");
    let last = record.len() - 1;
    record[last] ^= 0x5a;
    engine
        .write(&[WriteOp {
            space: Space::Data,
            key: stored_key,
            value: Some(record),
        }])
        .expect("write corrupted record");
    engine.flush().expect("flush");
}

async fn kv_at(address: &str) -> KvClient<tonic::transport::Channel> {
    KvClient::connect(format!("http://{address}"))
        .await
        .expect("connect to node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_record_is_not_served_and_gets_repaired() {
    tokio::time::timeout(TEST_DEADLINE, async {
        // Anti-entropy would repair the record before the first check.
        let mut cluster = TestCluster::start_with(3, &["--aae", "off"]).await;
        let client = cluster.client().await;
        client
            .put_with(
                "ledger",
                "balance=10",
                None,
                WriteOptions {
                    w: Some(3),
                    ..Default::default()
                },
            )
            .await
            .expect("put on all three");

        cluster.nodes[0].stop();
        corrupt_record(&cluster.nodes[0], b"ledger");
        cluster.nodes[0].spawn();
        cluster.wait_converged(Duration::from_secs(60)).await;
        let damaged = cluster.nodes[0].address.clone();

        let replica = client
            .replica_read(&damaged, "ledger")
            .await
            .expect("replica read");
        assert_eq!(
            replica.state,
            ReplicaState::Unknown,
            "the damaged record is reported as unknown"
        );
        assert!(
            replica.values.is_empty(),
            "an unknown record's content is never served"
        );

        // A read coordinated by the damaged node is served from the others.
        let mut kv = kv_at(&damaged).await;
        let read = kv
            .get(GetRequest {
                key: b"ledger".to_vec(),
                r: 2,
                forwarded: false,
            })
            .await
            .expect("get through the damaged node")
            .into_inner();
        assert_eq!(read.values, vec![b"balance=10".to_vec()]);

        let (client_ref, damaged_ref) = (&client, &damaged);
        wait_until(
            Duration::from_secs(20),
            "repair of the corrupt record",
            || async move {
                client_ref
                    .replica_read(damaged_ref, "ledger")
                    .await
                    .is_ok_and(|replica| {
                        replica.state == ReplicaState::Present
                            && replica.values == vec![b"balance=10".to_vec()]
                    })
            },
        )
        .await;
        let status = common::status(&damaged).await.expect("status");
        assert!(status.corrupt_records >= 1, "the corrupt record is counted");
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blind_put_onto_corrupt_record_keeps_both_values() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let mut cluster = TestCluster::start(3).await;
        let client = cluster.client().await;
        let coordinator = cluster.nodes[0].address.clone();

        let mut kv = kv_at(&coordinator).await;
        kv.put(PutRequest {
            key: b"doc".to_vec(),
            value: b"v1".to_vec(),
            context: Vec::new(),
            w: 3,
            forwarded: false,
            strict_quorum: false,
        })
        .await
        .expect("put v1 through node A");

        cluster.nodes[0].stop();
        corrupt_record(&cluster.nodes[0], b"doc");
        cluster.nodes[0].spawn();
        cluster.wait_converged(Duration::from_secs(60)).await;

        let mut kv = kv_at(&coordinator).await;
        kv.put(PutRequest {
            key: b"doc".to_vec(),
            value: b"v2".to_vec(),
            context: Vec::new(),
            w: 3,
            forwarded: false,
            strict_quorum: false,
        })
        .await
        .expect("blind put v2 through node A");

        for address in cluster.addresses() {
            let (client_ref, address_ref) = (&client, &address);
            wait_until(
                Duration::from_secs(20),
                &format!("{address} to hold v1 and v2"),
                || async move {
                    let Ok(replica) = client_ref.replica_read(address_ref, "doc").await else {
                        return false;
                    };
                    let mut values = replica.values.clone();
                    values.sort();
                    values == vec![b"v1".to_vec(), b"v2".to_vec()]
                },
            )
            .await;
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_repairs_corrupt_record_without_reads() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let mut cluster = TestCluster::start_with(
            3,
            &["--aae-interval-ms", "300", "--hint-interval-ms", "600000"],
        )
        .await;
        let client = cluster.client().await;
        let options = WriteOptions {
            w: Some(3),
            ..Default::default()
        };
        client
            .put_with("ledger", "balance=10", None, options)
            .await
            .expect("put on all three");

        cluster.nodes[0].stop();
        corrupt_record(&cluster.nodes[0], b"ledger");
        cluster.nodes[0].spawn();
        cluster.wait_converged(Duration::from_secs(60)).await;
        let damaged = cluster.nodes[0].address.clone();

        // Watch only the counters: a replica read of the damaged record
        // would queue a repair of its own.
        let addresses = cluster.addresses();
        let addresses_ref = &addresses;
        wait_until(
            Duration::from_secs(30),
            "an anti-entropy repair",
            || async move {
                let mut repaired = 0;
                for address in addresses_ref {
                    if let Ok(node) = common::status(address).await {
                        repaired += node.aae_keys_repaired;
                    }
                }
                repaired >= 1
            },
        )
        .await;

        let replica = client
            .replica_read(&damaged, "ledger")
            .await
            .expect("replica read");
        assert_eq!(replica.state, ReplicaState::Present);
        assert_eq!(replica.values, vec![b"balance=10".to_vec()]);
        let status = common::status(&damaged).await.expect("status");
        assert!(status.corrupt_records >= 1, "the corrupt record is counted");
        for address in &addresses {
            let node = common::status(address).await.expect("status");
            assert_eq!(node.gets_coordinated, 0, "{address} coordinated a read");
        }
    })
    .await
    .expect("test timed out");
}
