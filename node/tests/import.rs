//! `kv-cli import` loads a file of records into a real cluster.

mod common;

use common::{cli_binary, TestCluster, TEST_DEADLINE};
use futures::stream::{self, StreamExt};
use std::io::Write;

const RECORDS: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_import_of_ten_thousand_records_reads_back() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start(3).await;
        let path = cluster.root.path().join("records.tsv");
        let mut file = std::fs::File::create(&path).expect("create records file");
        for index in 0..RECORDS {
            writeln!(file, "user:{index:05}\tname-{index} with some text").expect("write record");
        }
        drop(file);

        let output = tokio::process::Command::new(cli_binary())
            .args(["--endpoints", &cluster.addresses().join(","), "import"])
            .arg(&path)
            .args(["--format", "tsv"])
            .output()
            .await
            .expect("run kv-cli import");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "import failed:\n{stdout}\n{stderr}"
        );
        let summary = format!("{stdout}{stderr}");
        assert!(
            summary.contains(&format!("loaded {RECORDS}")),
            "summary: {summary}"
        );

        let client = cluster.client().await;
        let client = &client;
        let missing: Vec<usize> = stream::iter(0..RECORDS)
            .map(|index| async move {
                let read = client.get(format!("user:{index:05}")).await.expect("get");
                let expected = format!("name-{index} with some text").into_bytes();
                (index, read.values == vec![expected])
            })
            .buffer_unordered(32)
            .filter_map(|(index, found)| async move { (!found).then_some(index) })
            .collect()
            .await;
        assert!(
            missing.is_empty(),
            "{} records did not read back, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
    })
    .await
    .expect("test timed out");
}
