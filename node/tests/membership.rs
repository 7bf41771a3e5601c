//! Membership changes with data, on real clusters: a node joins under
//! writes, two join at once, one is decommissioned, a dead one is removed,
//! and a dead claimant is marked down. Every check reads each replica's own
//! copy with ReplicaRead, so read repair cannot hide a missing copy.

mod common;

use common::{
    admin, expect_refused, members, status, wait_until, TestCluster, TestNode, TEST_DEADLINE,
};
use futures::stream::{self, StreamExt};
use kv_client::{format_node_id, Client, NodeId, ReplicaState};
use kv_cluster::ring::Ring;
use kv_proto::v1::kv_client::KvClient;
use kv_proto::v1::{DecommissionRequest, MarkDownRequest, PutRequest, RemoveRequest, RingRequest};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Node flags of these tests: transfers checked often, no throttle worth
/// the name.
const FLAGS: &[&str] = &[
    "--transfer-interval-ms",
    "200",
    "--transfer-max-keys-per-second",
    "200000",
];

/// Requests in flight while loading and checking.
const IN_FLIGHT: usize = 48;

/// Writes `prefix{i}` = `value-{i}` for every i in `range` and returns the
/// keys that were acknowledged. Every write must be acknowledged.
async fn load(client: &Client, prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    let keys: Vec<String> = range.map(|i| format!("{prefix}{i}")).collect();
    let results: Vec<Result<(), String>> = stream::iter(keys.iter().cloned())
        .map(|key| async move {
            client
                .put(&key, format!("value-{key}"), None)
                .await
                .map(|_| ())
                .map_err(|error| format!("{key}: {error}"))
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} loads failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    keys
}

/// Keys written while a membership change runs, and the writer's state.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    failed: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts 8 writers that put `live-{n}` keys until stopped, at most 200,000
/// writes and 150 s.
fn start_writer(client: Client) -> Writer {
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (client, stop, acked, failed, next) = (
            client.clone(),
            stop.clone(),
            acked.clone(),
            failed.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(150) {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= 200_000 {
                    break;
                }
                let key = format!("live-{n}");
                match client.put(&key, format!("value-{key}"), None).await {
                    Ok(_) => acked.lock().unwrap().push(key),
                    Err(error) => failed.lock().unwrap().push(format!("{key}: {error}")),
                }
            }
        }));
    }
    let task = tokio::spawn(async move {
        for task in tasks {
            let _ = task.await;
        }
    });
    Writer {
        stop,
        acked,
        failed,
        task,
    }
}

impl Writer {
    /// Stops the writers and returns the acknowledged keys.
    async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let failed = self.failed.lock().unwrap().clone();
        if !failed.is_empty() {
            eprintln!(
                "{} writes during the change failed (not acknowledged, so not checked): {:?}",
                failed.len(),
                &failed[..failed.len().min(5)]
            );
        }
        let acked = self.acked.lock().unwrap().clone();
        assert!(
            !acked.is_empty(),
            "no write was acknowledged during the change"
        );
        acked
    }
}

/// The ring the node at `address` holds.
async fn ring_of(address: &str) -> Option<Ring> {
    let mut client = admin(address).await.ok()?;
    let reply = client.ring(RingRequest {}).await.ok()?.into_inner();
    Ring::decode(&reply.encoded).ok()
}

/// Waits until every node of `addresses` holds the same ring, with no plan
/// and exactly `nodes` nodes, and returns it.
async fn wait_change_complete(addresses: &[String], nodes: usize, within: Duration) -> Ring {
    let found: Arc<Mutex<Option<Ring>>> = Arc::default();
    let slot = found.clone();
    wait_until(
        within,
        &format!("a finished ring of {nodes} nodes on every node"),
        || {
            let slot = slot.clone();
            let addresses = addresses.to_vec();
            async move {
                let mut rings = Vec::new();
                for address in &addresses {
                    match ring_of(address).await {
                        Some(ring) => rings.push(ring),
                        None => return false,
                    }
                }
                let first = rings[0].clone();
                let done = first.plan.is_none()
                    && first.nodes().len() == nodes
                    && rings.iter().all(|ring| *ring == first);
                if done {
                    *slot.lock().unwrap() = Some(first);
                }
                done
            }
        },
    )
    .await;
    let ring = found.lock().unwrap().clone();
    ring.expect("the ring was recorded")
}

/// Addresses of the ring's nodes, from the members table of `address`.
async fn addresses_by_id(address: &str) -> BTreeMap<NodeId, String> {
    members(address)
        .await
        .expect("members")
        .members
        .into_iter()
        .filter_map(|member| {
            kv_client::parse_node_id(&member.node_id).map(|id| (id, member.address))
        })
        .collect()
}

/// Returns the (key, node) pairs of `keys` whose copy on a node of the
/// key's preference list in `ring` is missing or has no value.
async fn missing_copies(
    client: &Client,
    ring: &Ring,
    addresses: &BTreeMap<NodeId, String>,
    keys: &[String],
) -> Vec<(String, String)> {
    let checks: Vec<(String, String)> = keys
        .iter()
        .flat_map(|key| {
            ring.preference_list_for_key(key.as_bytes())
                .into_iter()
                .map(|node| (key.clone(), addresses[&node].clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let results: Vec<Option<(String, String)>> = stream::iter(checks)
        .map(|(key, address)| async move {
            let expected = format!("value-{key}").into_bytes();
            match client.replica_read(&address, &key).await {
                Ok(read)
                    if read.state == ReplicaState::Present && read.values.contains(&expected) =>
                {
                    None
                }
                _ => Some((key, address)),
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    results.into_iter().flatten().collect()
}

/// Waits until every key of `keys` is on every node of its preference list
/// in `ring`; `observer` names the nodes' addresses. Anti-entropy may still
/// be copying the last writes of the change, so the missing ones are read
/// again until the deadline.
async fn wait_every_copy(
    client: &Client,
    observer: &str,
    ring: &Ring,
    keys: &[String],
    within: Duration,
) {
    let addresses = addresses_by_id(observer).await;
    let deadline = Instant::now() + within;
    let mut pending: Vec<String> = keys.to_vec();
    loop {
        let missing = missing_copies(client, ring, &addresses, &pending).await;
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} copies still missing after {within:?}, for example {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        pending = missing.into_iter().map(|(key, _)| key).collect();
        pending.dedup();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Starts a node named `name` with `flags` that joins through `seed`.
fn spawn_joiner(cluster: &TestCluster, name: &str, seed: &str, flags: &[&str]) -> TestNode {
    let mut joiner = TestNode::new(cluster.root.path(), name, vec![seed.to_string()]);
    joiner.extra_args = flags.iter().map(|flag| flag.to_string()).collect();
    joiner.spawn();
    joiner
}

/// Asserts that every node holds within 1.10 times the mean number of
/// partition replicas.
fn assert_balanced(ring: &Ring) {
    let counts = ring.replicas_per_node();
    let mean = counts.values().sum::<u32>() as f64 / counts.len() as f64;
    for (node, count) in &counts {
        assert!(
            (*count as f64) <= mean * 1.10,
            "node {} holds {count} partition replicas, over 1.10 x the mean {mean:.1}: {counts:?}",
            format_node_id(*node)
        );
    }
}

/// Id of the node at `address`.
async fn id_of(address: &str) -> NodeId {
    let reply = status(address).await.expect("status");
    kv_client::parse_node_id(&reply.node_id).expect("hex node id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn join_under_writes_places_every_key() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let started = Instant::now();
        let mut cluster = TestCluster::start_with(3, FLAGS).await;
        let client = cluster.client().await;
        let mut keys = load(&client, "key-", 0..20_000).await;
        eprintln!(
            "[{:>6.1} s] loaded {} keys",
            started.elapsed().as_secs_f64(),
            keys.len()
        );

        let writer = start_writer(client.clone());
        let joiner = spawn_joiner(&cluster, "node3", &cluster.nodes[0].address, FLAGS);
        cluster.nodes.push(joiner);

        let ring = wait_change_complete(&cluster.addresses(), 4, Duration::from_secs(120)).await;
        eprintln!("[{:>6.1} s] join complete", started.elapsed().as_secs_f64());
        keys.extend(writer.finish().await);
        assert_balanced(&ring);
        wait_every_copy(
            &client,
            &cluster.nodes[0].address,
            &ring,
            &keys,
            Duration::from_secs(60),
        )
        .await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_joins_share_one_plan() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let mut cluster = TestCluster::start_with(3, FLAGS).await;
        let client = cluster.client().await;
        let keys = load(&client, "key-", 0..4_000).await;
        let before = ring_of(&cluster.nodes[0].address).await.expect("ring");

        let mut joiners = Vec::new();
        for name in ["node3", "node4"] {
            let joiner = spawn_joiner(&cluster, name, &cluster.nodes[0].address, FLAGS);
            joiners.push(joiner);
        }
        let joiner_ids = [
            id_of_when_up(&joiners[0].address).await,
            id_of_when_up(&joiners[1].address).await,
        ];
        cluster.nodes.extend(joiners);

        // The first plan after the old ring names both new nodes.
        let observer = cluster.nodes[0].address.clone();
        let seen: Arc<Mutex<Option<Ring>>> = Arc::default();
        let slot = seen.clone();
        wait_until(Duration::from_secs(60), "the first plan", || {
            let (observer, slot) = (observer.clone(), slot.clone());
            async move {
                match ring_of(&observer).await {
                    Some(ring) if ring.version > before.version => {
                        *slot.lock().unwrap() = Some(ring);
                        true
                    }
                    _ => false,
                }
            }
        })
        .await;
        let first = seen.lock().unwrap().clone().expect("a newer ring");
        let planned = first.planned().unwrap_or_else(|| first.clone());
        for id in joiner_ids {
            assert!(
                planned.nodes().contains(&id),
                "the first plan after version {} leaves out {}: {planned:?}",
                before.version,
                format_node_id(id)
            );
        }

        let ring = wait_change_complete(&cluster.addresses(), 5, Duration::from_secs(120)).await;
        assert_balanced(&ring);
        wait_every_copy(
            &client,
            &cluster.nodes[0].address,
            &ring,
            &keys,
            Duration::from_secs(60),
        )
        .await;
    })
    .await
    .expect("test timed out");
}

/// Id of the node at `address`, once it answers.
async fn id_of_when_up(address: &str) -> NodeId {
    wait_until(
        Duration::from_secs(30),
        "the new node to answer",
        || async { status(address).await.is_ok() },
    )
    .await;
    id_of(address).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn decommission_hands_over_every_key() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let mut cluster = TestCluster::start_with(4, FLAGS).await;
        let client = cluster.client().await;
        let mut keys = load(&client, "key-", 0..8_000).await;

        let writer = start_writer(client.clone());
        let leaving = cluster.nodes[3].address.clone();
        let reply = admin(&leaving)
            .await
            .expect("admin")
            .decommission(DecommissionRequest {})
            .await
            .expect("Decommission")
            .into_inner();
        assert!(reply.message.contains("is leaving"), "{}", reply.message);

        let exit = cluster.nodes[3]
            .wait_exit(Duration::from_secs(120))
            .unwrap_or_else(|| {
                panic!(
                    "the decommissioned node did not stop; log:\n{}",
                    cluster.nodes[3].log()
                )
            });
        assert!(
            exit.success(),
            "a node that left exits with success: {exit:?}"
        );
        assert!(cluster.nodes[3].log().contains("left the cluster"));

        let remaining: Vec<String> = cluster.addresses()[..3].to_vec();
        let ring = wait_change_complete(&remaining, 3, Duration::from_secs(60)).await;
        keys.extend(writer.finish().await);
        wait_every_copy(
            &client,
            &cluster.nodes[0].address,
            &ring,
            &keys,
            Duration::from_secs(60),
        )
        .await;

        // Started again on its old data, it is refused.
        cluster.nodes[3].spawn();
        expect_refused(&mut cluster.nodes[3], "was decommissioned");
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removed_node_rebuilt_from_survivors() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let mut cluster = TestCluster::start_with(4, FLAGS).await;
        let client = cluster.client().await;
        let keys = load(&client, "key-", 0..8_000).await;
        let dead = cluster.nodes[3].address.clone();
        let dead_id = id_of(&dead).await;

        cluster.nodes[3].kill();
        for observer in cluster.addresses()[..3].to_vec() {
            cluster
                .wait_member_up(&observer, &dead, false, Duration::from_secs(30))
                .await;
        }
        let reply = admin(&cluster.nodes[0].address)
            .await
            .expect("admin")
            .remove(RemoveRequest {
                node_id: format_node_id(dead_id),
            })
            .await
            .expect("Remove")
            .into_inner();
        assert!(reply.message.contains("removed"), "{}", reply.message);

        let remaining: Vec<String> = cluster.addresses()[..3].to_vec();
        let ring = wait_change_complete(&remaining, 3, Duration::from_secs(90)).await;
        assert!(!ring.nodes().contains(&dead_id));
        wait_every_copy(
            &client,
            &cluster.nodes[0].address,
            &ring,
            &keys,
            Duration::from_secs(60),
        )
        .await;

        // Back with its old data directory, the removed node is refused.
        cluster.nodes[3].spawn();
        expect_refused(&mut cluster.nodes[3], "was removed");
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn marked_down_claimant_unblocks_plans() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let mut cluster = TestCluster::start_with(4, FLAGS).await;
        let client = cluster.client().await;
        let keys = load(&client, "key-", 0..2_000).await;

        let claimant = members(&cluster.nodes[0].address)
            .await
            .expect("members")
            .claimant;
        let claimant_index = {
            let mut found = None;
            for (index, node) in cluster.nodes.iter().enumerate() {
                if format_node_id(id_of(&node.address).await) == claimant {
                    found = Some(index);
                }
            }
            found.expect("the claimant is a node of the cluster")
        };
        let claimant_address = cluster.nodes[claimant_index].address.clone();
        cluster.nodes[claimant_index].kill();
        let survivors: Vec<String> = cluster
            .addresses()
            .into_iter()
            .filter(|address| *address != claimant_address)
            .collect();

        let joiner = spawn_joiner(&cluster, "node4", &survivors[0], FLAGS);
        let joiner_id = id_of_when_up(&joiner.address).await;
        cluster.nodes.push(joiner);

        // The change waits for the dead claimant, and says so.
        let observer = survivors[0].clone();
        let needle = claimant.clone();
        wait_until(
            Duration::from_secs(60),
            "the change to wait for the dead claimant",
            || {
                let (observer, needle) = (observer.clone(), needle.clone());
                async move {
                    status(&observer)
                        .await
                        .map(|reply| {
                            reply.ring_change_waiting.contains("ring not ready")
                                && reply.ring_change_waiting.contains(&needle)
                        })
                        .unwrap_or(false)
                }
            },
        )
        .await;

        cluster
            .wait_member_up(
                &survivors[1],
                &claimant_address,
                false,
                Duration::from_secs(30),
            )
            .await;
        admin(&survivors[1])
            .await
            .expect("admin")
            .mark_down(MarkDownRequest {
                node_id: claimant.clone(),
            })
            .await
            .expect("MarkDown");

        let mut running = survivors.clone();
        running.push(cluster.nodes[4].address.clone());
        let ring = wait_change_complete(&running, 5, Duration::from_secs(90)).await;
        assert!(ring.nodes().contains(&joiner_id));
        assert_ne!(
            format_node_id(ring.claimant),
            claimant,
            "the dead claimant cannot plan"
        );
        // Keys whose old replicas included the dead node are copied from
        // the live ones; the dead node's own copies are not checked.
        let live_keys: Vec<String> = keys
            .into_iter()
            .filter(|key| {
                !ring
                    .preference_list_for_key(key.as_bytes())
                    .iter()
                    .any(|node| format_node_id(*node) == claimant)
            })
            .collect();
        wait_every_copy(
            &client,
            &survivors[0],
            &ring,
            &live_keys,
            Duration::from_secs(60),
        )
        .await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_coordinator_reaches_new_owners() {
    tokio::time::timeout(TEST_DEADLINE, async {
        let mut cluster = TestCluster::start_with(4, FLAGS).await;
        let client = cluster.client().await;
        let keys = load(&client, "key-", 0..2_000).await;

        // A node other than the claimant (which makes the rings) restarts
        // with the test hook that holds back rings from gossip while a file
        // exists.
        let claimant = members(&cluster.nodes[0].address)
            .await
            .expect("members")
            .claimant;
        let mut index = 3;
        while format_node_id(id_of(&cluster.nodes[index].address).await) == claimant {
            index -= 1;
        }
        let freeze = cluster.root.path().join("freeze-ring");
        let stale = cluster.nodes[index].address.clone();
        let stale_id = id_of(&stale).await;
        cluster.nodes[index].stop();
        // Its own anti-entropy rounds would send repairs, whose refusals
        // hand it the newer ring too; other nodes still exchange with it.
        cluster.nodes[index]
            .extra_args
            .extend(["--aae-interval-ms".to_string(), "600000".to_string()]);
        cluster.nodes[index].env = vec![(
            "RINGKV_TEST_FREEZE_RING".to_string(),
            freeze.display().to_string(),
        )];
        cluster.nodes[index].spawn();
        cluster.wait_converged(Duration::from_secs(60)).await;
        let old_ring = ring_of(&stale).await.expect("ring");
        std::fs::write(&freeze, b"held").expect("create the freeze file");

        let joiner = spawn_joiner(&cluster, "node4", &cluster.nodes[0].address, FLAGS);
        cluster.nodes.push(joiner);
        let fresh: Vec<String> = cluster
            .addresses()
            .into_iter()
            .filter(|address| *address != stale)
            .collect();
        let ring = wait_change_complete(&fresh, 5, Duration::from_secs(120)).await;
        assert_eq!(
            ring_of(&stale).await.expect("ring").version,
            old_ring.version,
            "the hook did not hold the stale node's ring back"
        );

        // Keys that the stale node replicates in both rings, and whose old
        // list has a node that no longer holds them. That node refuses the
        // stale node's replica write as stale.
        let written: Vec<String> = (0..100_000)
            .map(|i| format!("stale-{i}"))
            .filter(|key| {
                let old = old_ring.preference_list_for_key(key.as_bytes());
                let new = ring.preference_list_for_key(key.as_bytes());
                old.contains(&stale_id)
                    && new.contains(&stale_id)
                    && old.iter().any(|node| !new.contains(node))
            })
            .take(40)
            .collect();
        assert_eq!(written.len(), 40);
        let mut kv = KvClient::connect(format!("http://{stale}"))
            .await
            .expect("connect to the stale node");
        for key in &written {
            kv.put(PutRequest {
                key: key.clone().into_bytes(),
                value: format!("value-{key}").into_bytes(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|status| panic!("put of {key} through the stale node: {status}"));
        }
        // The refusals handed the stale node the newer ring.
        assert_eq!(
            ring_of(&stale).await.expect("ring").version,
            ring.version,
            "no refusal corrected the stale node's ring"
        );

        std::fs::remove_file(&freeze).expect("remove the freeze file");
        let mut checked = keys;
        checked.extend(written);
        wait_every_copy(
            &client,
            &cluster.nodes[0].address,
            &ring,
            &checked,
            Duration::from_secs(60),
        )
        .await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_joiner_cancelled_by_remove() {
    tokio::time::timeout(TEST_DEADLINE, async {
        // A slow transfer, so the joiner dies in the middle of it.
        let slow: Vec<&str> = vec![
            "--transfer-interval-ms",
            "200",
            "--transfer-max-keys-per-second",
            "1000",
        ];
        let mut cluster = TestCluster::start_with(3, &slow).await;
        let client = cluster.client().await;
        let keys = load(&client, "key-", 0..8_000).await;

        let joiner = spawn_joiner(&cluster, "node3", &cluster.nodes[0].address, &slow);
        let joiner_id = id_of_when_up(&joiner.address).await;
        cluster.nodes.push(joiner);

        // Once some partitions are done and others still move, the joiner dies.
        let observer = cluster.nodes[0].address.clone();
        wait_until(
            Duration::from_secs(60),
            "a plan with partitions done",
            || {
                let observer = observer.clone();
                async move {
                    ring_of(&observer).await.is_some_and(|ring| {
                        ring.plan.as_ref().is_some_and(|plan| !plan.done.is_empty())
                            && !ring.moving_partitions().is_empty()
                    })
                }
            },
        )
        .await;
        let joiner_address = cluster.nodes[3].address.clone();
        cluster.nodes[3].kill();
        for observer in cluster.addresses()[..3].to_vec() {
            cluster
                .wait_member_up(&observer, &joiner_address, false, Duration::from_secs(30))
                .await;
        }

        // The old owners keep serving every key meanwhile.
        let unreadable: Vec<String> = stream::iter(keys.iter().take(500).cloned())
            .map(|key| {
                let client = client.clone();
                async move {
                    match client.get(&key).await {
                        Ok(read) if read.values == vec![format!("value-{key}").into_bytes()] => {
                            None
                        }
                        other => Some(format!("{key}: {other:?}")),
                    }
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .filter_map(|failure| async move { failure })
            .collect()
            .await;
        assert!(
            unreadable.is_empty(),
            "reads failed while the joiner was dead: {unreadable:?}"
        );

        // Removing the joiner cancels its part: the plan ends, and the next
        // one moves its partitions back to the live nodes.
        admin(&cluster.nodes[1].address)
            .await
            .expect("admin")
            .remove(RemoveRequest {
                node_id: format_node_id(joiner_id),
            })
            .await
            .expect("Remove");
        let live: Vec<String> = cluster.addresses()[..3].to_vec();
        let ring = wait_change_complete(&live, 3, Duration::from_secs(120)).await;
        assert!(!ring.nodes().contains(&joiner_id));
        wait_every_copy(&client, &live[0], &ring, &keys, Duration::from_secs(60)).await;
    })
    .await
    .expect("test timed out");
}
