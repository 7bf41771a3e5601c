//! Cluster identity: nodes of another cluster, copies of a live node's data
//! directory, mismatched settings and joins into a cluster with data are
//! refused with a message that says why.

mod common;

use common::{expect_refused, TestCluster, TestNode, TEST_DEADLINE};
use std::time::Duration;

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("create copy");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copied_data_directory_is_refused() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let mut cluster = TestCluster::start(2).await;

        // Copy the second node's directory while it is stopped, then bring
        // the original back.
        cluster.nodes[1].stop();
        let copy_dir_path = cluster.root.path().join("copy");
        copy_dir(&cluster.nodes[1].data_dir, &copy_dir_path);
        cluster.nodes[1].spawn();
        cluster.wait_converged(Duration::from_secs(60)).await;

        let mut copy = TestNode::new(
            cluster.root.path(),
            "copy",
            vec![cluster.nodes[0].address.clone()],
        );
        copy.data_dir = copy_dir_path;
        copy.spawn();
        expect_refused(&mut copy, "duplicate node id");

        // The original keeps working.
        cluster.wait_converged(Duration::from_secs(30)).await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_of_another_cluster_is_refused() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let first = TestCluster::start(1).await;
        let mut second = TestCluster::start(1).await;

        // Restart the second cluster's node pointed at the first cluster.
        second.nodes[0].stop();
        second.nodes[0].seeds = vec![first.nodes[0].address.clone()];
        second.nodes[0].spawn();
        expect_refused(&mut second.nodes[0], "cluster id mismatch");
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_with_another_replica_count_is_refused() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start(1).await;
        let mut joiner = TestNode::new(
            cluster.root.path(),
            "joiner",
            vec![cluster.nodes[0].address.clone()],
        );
        joiner.extra_args = vec!["--n".into(), "5".into()];
        joiner.spawn();
        expect_refused(&mut joiner, "replica count mismatch");
    })
    .await
    .expect("test timed out");
}
