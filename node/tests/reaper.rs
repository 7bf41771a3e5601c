//! Tombstone reaping on real nodes: a tombstone is purged only once every
//! replica holds it and no member holds a hint for its partition, and a
//! purged key never comes back.

mod common;

use common::{members, status, wait_until, TestCluster, TEST_DEADLINE};
use kv_client::ReplicaState;
use kv_cluster::format_node_id;
use kv_proto::v1::kv_client::KvClient;
use kv_proto::v1::DeleteRequest;
use std::time::{Duration, Instant};

/// Short timings so that a test sees several grace periods and rounds.
const FAST_REAPING: &[&str] = &[
    "--message-deadline-ms",
    "1000",
    "--peer-keepalive-ms",
    "500",
    "--reap-grace-ms",
    "2500",
    "--reap-interval-ms",
    "200",
    "--aae-interval-ms",
    "300",
    "--hint-interval-ms",
    "200",
];

fn signal(pid: Option<u32>, signal: libc::c_int) {
    let pid = pid.expect("the node is running") as libc::pid_t;
    // SAFETY: kill(2) with a PID this test started has no memory effects.
    let result = unsafe { libc::kill(pid, signal) };
    assert_eq!(result, 0, "kill({pid}, {signal}) failed");
}

/// Waits until the node at `observer` reports the node at `address` up or
/// down.
async fn wait_reported(observer: &str, address: &str, up: bool) {
    let what = format!(
        "{observer} reports {address} {}",
        if up { "up" } else { "down" }
    );
    wait_until(Duration::from_secs(30), &what, || async {
        let Ok(view) = members(observer).await else {
            return false;
        };
        view.members
            .iter()
            .any(|member| member.address == address && member.up == up)
    })
    .await;
}

/// Deletes `key` through the node at `address`, which coordinates it.
async fn delete_at(address: &str, key: &str) {
    let mut kv = KvClient::connect(format!("http://{address}"))
        .await
        .expect("connect to the coordinator");
    kv.delete(DeleteRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    })
    .await
    .expect("delete");
}

/// Returns what `address` holds for `key`: its state kind and tombstone count.
async fn replica(
    client: &kv_client::Client,
    address: &str,
    key: &str,
) -> (ReplicaState, u32, Vec<Vec<u8>>) {
    let read = client
        .replica_read(address, key)
        .await
        .expect("replica read");
    (read.state, read.tombstones, read.values)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstone_purged_after_silent_replica_returns() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let cluster = TestCluster::start_with(3, FAST_REAPING).await;
        let addresses = cluster.addresses();
        let client = cluster.client().await;
        client.put("doomed", "v1", None).await.expect("put");
        wait_until(
            Duration::from_secs(10),
            "every replica holds v1",
            || async {
                for address in &addresses {
                    let (_, _, values) = replica(&client, address, "doomed").await;
                    if values != vec![b"v1".to_vec()] {
                        return false;
                    }
                }
                true
            },
        )
        .await;

        // The third node goes silent; the first marks it down, then deletes.
        let silent = addresses[2].clone();
        signal(cluster.nodes[2].pid(), libc::SIGSTOP);
        wait_reported(&addresses[0], &silent, false).await;
        delete_at(&addresses[0], "doomed").await;

        // While a replica cannot answer, the tombstone stays, well past the
        // grace period.
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until {
            for address in &addresses[..2] {
                let (state, tombstones, values) = replica(&client, address, "doomed").await;
                assert_eq!(
                    state,
                    ReplicaState::Present,
                    "purged while {silent} was silent"
                );
                assert!(values.is_empty(), "the key is deleted on {address}");
                assert!(tombstones >= 1, "{address} holds the tombstone");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        signal(cluster.nodes[2].pid(), libc::SIGCONT);
        wait_until(
            Duration::from_secs(60),
            "every replica purged the key",
            || async {
                for address in &addresses {
                    let (state, _, _) = replica(&client, address, "doomed").await;
                    if state != ReplicaState::Missing {
                        return false;
                    }
                }
                true
            },
        )
        .await;
        let mut purged = 0;
        for address in &addresses {
            purged += status(address).await.expect("status").tombstones_purged;
        }
        // More than 3 when anti-entropy copied the tombstone back to an owner
        // between two of the reaper's deletions, and the retry deleted it again.
        assert!(
            purged >= 3,
            "each node deleted its own tombstone record: {purged}"
        );

        // Several anti-entropy rounds later the key is still gone everywhere.
        let mut exchanges_before = Vec::new();
        for address in &addresses {
            exchanges_before.push(status(address).await.expect("status").aae_exchanges);
        }
        wait_until(
            Duration::from_secs(30),
            "two more anti-entropy rounds",
            || async {
                for (address, before) in addresses.iter().zip(&exchanges_before) {
                    let Ok(now) = status(address).await else {
                        return false;
                    };
                    if now.aae_exchanges < before + 2 {
                        return false;
                    }
                }
                true
            },
        )
        .await;
        for address in &addresses {
            let (state, _, _) = replica(&client, address, "doomed").await;
            assert_eq!(
                state,
                ReplicaState::Missing,
                "the key came back on {address}"
            );
        }
        let read = client.get("doomed").await.expect("get after purge");
        assert!(read.values.is_empty(), "a purged key reads as missing");

        // A new write after the purge is not shadowed by the old tombstone.
        client
            .put("doomed", "v2", None)
            .await
            .expect("put after purge");
        let read = client.get("doomed").await.expect("get of the new value");
        assert_eq!(read.values, vec![b"v2".to_vec()]);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reap_off_keeps_tombstones() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let mut args = FAST_REAPING.to_vec();
        // One node holds every key alone, so quorums of one.
        args.extend(["--reap", "off", "--r", "1", "--w", "1"]);
        let cluster = TestCluster::start_with(1, &args).await;
        let address = cluster.addresses()[0].clone();
        let client = cluster.client().await;
        client.put("kept", "v1", None).await.expect("put");
        client.delete("kept", None).await.expect("delete");

        assert!(!status(&address).await.expect("status").reap_enabled);
        // Two grace periods pass without a purge.
        let until = Instant::now() + Duration::from_millis(5500);
        while Instant::now() < until {
            let (state, tombstones, _) = replica(&client, &address, "kept").await;
            assert_eq!(
                state,
                ReplicaState::Present,
                "--reap off purged a tombstone"
            );
            assert!(tombstones >= 1);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_hint_holder_blocks_purge_until_it_answers() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let mut cluster = TestCluster::start_with(4, FAST_REAPING).await;
        let addresses = cluster.addresses();
        let client = cluster.client().await;

        // The key's three owners, and the fourth node as the stand-in.
        let ring = client.ring().await.expect("ring");
        let owners: Vec<usize> = ring
            .ring
            .preference_list_for_key(b"ghost")
            .into_iter()
            .map(|id| {
                let address = ring.address_of(id).expect("owner address");
                addresses
                    .iter()
                    .position(|known| known == address)
                    .unwrap_or_else(|| panic!("owner {} not started here", format_node_id(id)))
            })
            .collect();
        assert_eq!(owners.len(), 3);
        let stand_in = (0..4)
            .find(|index| !owners.contains(index))
            .expect("stand-in");
        let (coordinator, lagging) = (owners[0], owners[2]);

        // With one owner down, the write leaves a hint on the stand-in.
        cluster.nodes[lagging].kill();
        wait_reported(&addresses[coordinator], &addresses[lagging], false).await;
        let mut kv = KvClient::connect(format!("http://{}", addresses[coordinator]))
            .await
            .expect("connect to the coordinator");
        kv.put(kv_proto::v1::PutRequest {
            key: b"ghost".to_vec(),
            value: b"v1".to_vec(),
            ..Default::default()
        })
        .await
        .expect("put with one owner down");
        wait_until(
            Duration::from_secs(10),
            "the stand-in holds a hint",
            || async {
                status(&addresses[stand_in])
                    .await
                    .map(|node| node.pending_hints.iter().any(|pending| pending.hints > 0))
                    .unwrap_or(false)
            },
        )
        .await;

        // The stand-in goes silent with its hint; the owner comes back and
        // the key is deleted on all three owners.
        signal(cluster.nodes[stand_in].pid(), libc::SIGSTOP);
        cluster.nodes[lagging].spawn();
        wait_reported(&addresses[coordinator], &addresses[lagging], true).await;
        delete_at(&addresses[coordinator], "ghost").await;
        wait_until(
            Duration::from_secs(10),
            "every owner holds the tombstone",
            || async {
                for owner in &owners {
                    let (state, tombstones, values) =
                        replica(&client, &addresses[*owner], "ghost").await;
                    if state != ReplicaState::Present || tombstones == 0 || !values.is_empty() {
                        return false;
                    }
                }
                true
            },
        )
        .await;

        // Every owner agrees, but a member that holds a hint for the
        // partition does not answer, so the tombstone stays.
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until {
            for owner in &owners {
                let (state, _, _) = replica(&client, &addresses[*owner], "ghost").await;
                assert_eq!(
                    state,
                    ReplicaState::Present,
                    "purged while the stand-in with a hint was silent"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // Once it answers, the hint is delivered, then the key is purged,
        // and the old value never comes back.
        signal(cluster.nodes[stand_in].pid(), libc::SIGCONT);
        wait_until(
            Duration::from_secs(60),
            "the key is purged everywhere",
            || async {
                for address in &addresses {
                    let (state, _, _) = replica(&client, address, "ghost").await;
                    if state != ReplicaState::Missing {
                        return false;
                    }
                }
                true
            },
        )
        .await;
        let hints_left = status(&addresses[stand_in])
            .await
            .expect("status of the stand-in")
            .pending_hints
            .iter()
            .map(|pending| pending.hints)
            .sum::<u64>();
        assert_eq!(hints_left, 0, "the stand-in delivered its hint");
        let read = client.get("ghost").await.expect("get after purge");
        assert!(
            read.values.is_empty(),
            "the deleted value came back: {:?}",
            read.values
        );
    })
    .await
    .expect("test timed out");
}
