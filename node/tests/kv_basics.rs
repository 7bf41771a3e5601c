//! Quorum reads and writes, siblings and input checks on a real 3-node
//! cluster, through kv-client.

mod common;

use common::{TestCluster, TEST_DEADLINE};
use kv_client::{Context, Error, WriteOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_delete_round_trip() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start(3).await;
        let client = cluster.client().await;

        let written = client.put("fruit", "apple", None).await.expect("put");
        assert!(!written.context.is_empty(), "a put returns the new context");
        assert!(written.siblings.is_empty());

        let read = client.get("fruit").await.expect("get");
        assert_eq!(read.values, vec![b"apple".to_vec()]);

        client.delete("fruit", None).await.expect("delete");
        let read = client.get("fruit").await.expect("get after delete");
        assert!(
            read.values.is_empty(),
            "a deleted key reads as missing: {:?}",
            read.values
        );
        assert!(
            !read.context.is_empty(),
            "a deleted key still returns its context"
        );

        // A put with the tombstone's context supersedes it.
        client
            .put("fruit", "pear", Some(&read.context))
            .await
            .expect("put after delete");
        let read = client.get("fruit").await.expect("get after re-put");
        assert_eq!(read.values, vec![b"pear".to_vec()]);

        let missing = client
            .get("never-written")
            .await
            .expect("get of a missing key");
        assert!(missing.values.is_empty());
        assert!(missing.context.is_empty());
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blind_puts_become_siblings_and_context_resolves_them() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start(3).await;
        let client = cluster.client().await;

        client
            .put("cart", "milk", None)
            .await
            .expect("first blind put");
        client
            .put("cart", "eggs", None)
            .await
            .expect("second blind put");
        let read = client.get("cart").await.expect("get");
        let mut values = read.values.clone();
        values.sort();
        assert_eq!(
            values,
            vec![b"eggs".to_vec(), b"milk".to_vec()],
            "two blind puts stay siblings"
        );

        client
            .put("cart", "eggs,milk", Some(&read.context))
            .await
            .expect("resolving put");
        let read = client.get("cart").await.expect("get after resolving");
        assert_eq!(
            read.values,
            vec![b"eggs,milk".to_vec()],
            "a put with the read context collapses siblings"
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_puts_end_with_one_value() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start(3).await;
        let client = cluster.client().await;

        let mut context: Option<Context> = None;
        for round in 0..20 {
            let written = client
                .put("counter", round.to_string(), context.as_ref())
                .await
                .expect("chained put");
            assert!(
                written.siblings.is_empty(),
                "round {round} left siblings: {:?}",
                written.siblings
            );
            context = Some(written.context);
        }
        let read = client.get("counter").await.expect("get");
        assert_eq!(read.values, vec![b"19".to_vec()]);
    })
    .await
    .expect("test timed out");
}

fn assert_invalid(result: Result<impl std::fmt::Debug, Error>, needle: &str) {
    match result {
        Err(Error::InvalidArgument { message }) => {
            assert!(
                message.contains(needle),
                "message {message:?} does not mention {needle:?}"
            )
        }
        other => panic!("expected INVALID_ARGUMENT mentioning {needle:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_is_rejected_and_not_stored() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start_with(3, &["--max-value-bytes", "1000"]).await;
        let client = cluster.client().await;

        assert_invalid(client.put("", "value", None).await, "empty");
        assert_invalid(client.get("").await, "empty");
        let long_key = vec![b'k'; 1025];
        assert_invalid(client.put(&long_key, "value", None).await, "1025 bytes");
        assert_invalid(client.get(&long_key).await, "1025 bytes");
        assert_invalid(client.put("big", vec![0u8; 1001], None).await, "1001 bytes");

        let garbage = Context::from_bytes(b"not a context".to_vec());
        assert_invalid(client.put("key", "value", Some(&garbage)).await, "context");
        assert_invalid(client.delete("key", Some(&garbage)).await, "context");

        let other = client.put("other", "value", None).await.expect("put other");
        assert_invalid(
            client.put("key", "value", Some(&other.context)).await,
            "another key",
        );

        // The accepted key of 1024 bytes works, and nothing rejected was stored.
        let max_key = vec![b'k'; 1024];
        client
            .put(&max_key, "fits", None)
            .await
            .expect("1024-byte key");
        for key in [&b"big"[..], b"key"] {
            let read = client.get(key).await.expect("get");
            assert!(
                read.values.is_empty(),
                "a rejected put stored {:?}",
                read.values
            );
            for address in cluster.addresses() {
                let replica = client
                    .replica_read(&address, key)
                    .await
                    .expect("replica read");
                assert_eq!(
                    replica.state,
                    kv_client::ReplicaState::Missing,
                    "{address} stored a rejected put"
                );
            }
        }

        // W above N is rejected too.
        let result = client
            .put_with(
                "key",
                "value",
                None,
                WriteOptions {
                    w: Some(4),
                    ..Default::default()
                },
            )
            .await;
        assert_invalid(result, "W=4");
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sibling_cap_rejects_blind_put_until_resolved() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start_with(3, &["--max-siblings", "3"]).await;
        let client = cluster.client().await;

        for value in ["a", "b", "c"] {
            client
                .put("crowded", value, None)
                .await
                .expect("blind put under the cap");
        }
        match client.put("crowded", "d", None).await {
            Err(Error::FailedPrecondition { message }) => {
                assert!(message.contains("limit of 3"), "message: {message}")
            }
            other => panic!("expected FAILED_PRECONDITION, got {other:?}"),
        }
        let read = client.get("crowded").await.expect("get");
        assert_eq!(read.values.len(), 3);
        client
            .put("crowded", "abc", Some(&read.context))
            .await
            .expect("a resolving put is admitted");
        assert_eq!(
            client.get("crowded").await.expect("get").values,
            vec![b"abc".to_vec()]
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_to_non_replica_is_forwarded() {
    use kv_proto::v1::kv_client::KvClient;
    use kv_proto::v1::{GetRequest, PutRequest};

    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start(4).await;
        let client = cluster.client().await;
        let outsider = cluster.nodes[0].address.clone();
        let outsider_id =
            kv_cluster::parse_node_id(&common::status(&outsider).await.expect("status").node_id)
                .expect("node id");
        let ring = client.ring().await.expect("ring");
        let key = (0..1000)
            .map(|index| format!("forwarded-{index}"))
            .find(|key| {
                !ring
                    .ring
                    .preference_list_for_key(key.as_bytes())
                    .contains(&outsider_id)
            })
            .expect("some key is not replicated on the first node");

        let mut kv = KvClient::connect(format!("http://{outsider}"))
            .await
            .expect("connect");
        kv.put(PutRequest {
            key: key.clone().into_bytes(),
            value: b"via a non-replica".to_vec(),
            context: Vec::new(),
            w: 2,
            forwarded: false,
            strict_quorum: false,
        })
        .await
        .expect("put through a non-replica");
        let read = kv
            .get(GetRequest {
                key: key.clone().into_bytes(),
                r: 2,
                forwarded: false,
            })
            .await
            .expect("get through a non-replica")
            .into_inner();
        assert_eq!(read.values, vec![b"via a non-replica".to_vec()]);

        let status = common::status(&outsider).await.expect("status");
        assert!(
            status.forwarded >= 2,
            "the node forwarded {} requests",
            status.forwarded
        );
        let replica = client
            .replica_read(&outsider, &key)
            .await
            .expect("replica read");
        assert_eq!(
            replica.state,
            kv_client::ReplicaState::Missing,
            "the non-replica stored nothing"
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_output_into_closed_pipe_does_not_panic() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start(1).await;
        let mut child = std::process::Command::new(common::cli_binary())
            .args(["--endpoints", &cluster.addresses()[0], "members"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start kv-cli");
        // The reader goes away before kv-cli has its answer to print.
        drop(child.stdout.take());
        let output = child.wait_with_output().expect("wait for kv-cli");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "kv-cli panicked: {stderr}");
        assert_ne!(output.status.code(), Some(101), "{stderr}");
    })
    .await
    .expect("test timed out");
}
