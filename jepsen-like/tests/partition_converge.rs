//! Convergence of a node that was partitioned away while writes went on.
//!
//! Five `kv-node` processes (N=3, 256 partitions) run in their own network
//! namespaces. One node is cut off from the four others in both directions
//! while 600 keys are written at W=2 through the other four. After the
//! partition heals, and without any client read, the isolated node must end
//! up with the same state as the other replicas for every key whose
//! preference list contains it. Hinted handoff and anti-entropy are the only
//! ways for it to get there, and the test checks that no read repair ran.
//!
//! The test needs root and the `ip` and `nft` commands; without them it
//! prints why and passes. It needs the `kv-node` binary:
//! `cargo build -p kv-node`. It stops every node by PID and deletes its
//! namespaces and bridge also when it fails or times out, and checks that
//! afterwards.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use kv_client::proto::admin_client::AdminClient;
use kv_client::proto::kv_client::KvClient;
use kv_client::proto::{AdminReplicaReadRequest, PutRequest, ReplicaState};
use kv_client::{Client, ClientOptions, NodeId, RingSnapshot};
use kv_jepsen::cluster::{default_node_bin, Cluster, ClusterConfig, NodeLaunch};
use kv_jepsen::net::Network;
use tonic::transport::{Channel, Endpoint};

/// Nodes in the cluster.
const NODES: usize = 5;

/// Replicas per key (N).
const REPLICAS: u32 = 3;

/// The node cut off from all others during the writes.
const ISOLATED: usize = 3;

/// Distinct keys written during the partition.
const KEYS: usize = 600;

/// Write quorum of every put.
const WRITE_QUORUM: u32 = 2;

/// Puts in flight at once.
const PUT_CONCURRENCY: usize = 8;

/// Time allowed for the other nodes' failure detectors to report the
/// isolated node down.
const DETECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Time allowed for the hints of the missed writes to be stored.
const HINTS_TIMEOUT: Duration = Duration::from_secs(15);

/// Time allowed for the isolated node to catch up after the heal.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(20);

/// Pause between two polls of hints or replica states.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Upper bound of the whole scenario, cluster start and checks included.
const TEST_TIMEOUT: Duration = Duration::from_secs(90);

/// Flags of every node. Hinted handoff and anti-entropy run every few
/// hundred milliseconds, so the isolated node catches up within seconds.
/// The gossip interval keeps its default of 1 s because a gossip round to
/// the unreachable node blocks for its 2 s timeout. The shorter the
/// interval, the more such a stall looks like a silent node to the other
/// nodes' failure detectors, and a coordinator that suspects the stand-ins
/// writes past them.
fn node_args() -> Vec<String> {
    [
        "--request-timeout-ms",
        "2000",
        "--message-deadline-ms",
        "2000",
        "--hint-interval-ms",
        "300",
        "--aae-interval-ms",
        "500",
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect()
}

/// What the scenario set up, recorded as soon as it exists, so the test can
/// check afterwards that all of it is gone.
#[derive(Default)]
struct Resources {
    namespaces: Vec<String>,
    bridge: Option<String>,
    pids: Vec<u32>,
}

/// Numbers the scenario measured, printed at the end.
struct Outcome {
    keys_on_isolated: usize,
    partitions_replicated: usize,
    partitions_with_keys: usize,
    hints_for_isolated: u64,
    converged_after: Duration,
    hints_delivered: u64,
    aae_keys_repaired: u64,
}

impl Outcome {
    fn print(&self) {
        println!(
            "n{ISOLATED} replicates {} of the {KEYS} keys, on {} of its {} partitions",
            self.keys_on_isolated, self.partitions_with_keys, self.partitions_replicated
        );
        println!(
            "hints held for n{ISOLATED} before the heal: {}",
            self.hints_for_isolated
        );
        println!(
            "converged {:.1} s after the heal; hints delivered: {}, aae_keys_repaired summed over the nodes: {}",
            self.converged_after.as_secs_f64(),
            self.hints_delivered,
            self.aae_keys_repaired
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_node_converges_without_reads() {
    if let Some(reason) = kv_jepsen::net::partitions_unavailable_reason() {
        println!("skipped: network partitions need root and the ip and nft commands ({reason})");
        return;
    }
    let node_bin = default_node_bin();
    assert!(
        node_bin.is_file(),
        "kv-node not found at {}; run `cargo build -p kv-node` first",
        node_bin.display()
    );

    // The scenario runs in its own task, so a panic or the timeout drops it,
    // and with it the cluster and the network, before the checks below.
    let resources = Arc::new(Mutex::new(Resources::default()));
    let scenario = tokio::spawn(tokio::time::timeout(
        TEST_TIMEOUT,
        run_scenario(node_bin, resources.clone()),
    ));
    let result = scenario.await;
    let leftovers = leftover_resources(&resources.lock().expect("resources lock"));

    match result {
        Ok(Ok(outcome)) => outcome.print(),
        Ok(Err(_)) => panic!("the scenario exceeded {TEST_TIMEOUT:?}; leftovers: {leftovers:?}"),
        Err(error) => {
            eprintln!("leftovers after the failed scenario: {leftovers:?}");
            std::panic::resume_unwind(error.into_panic());
        }
    }
    assert!(
        leftovers.is_empty(),
        "the test left these behind: {leftovers:?}"
    );
}

async fn run_scenario(node_bin: PathBuf, resources: Arc<Mutex<Resources>>) -> Outcome {
    // The network is declared first so it is dropped last, after the nodes
    // that run in its namespaces have stopped.
    let network = Network::create(NODES).expect("create the partition network");
    {
        let mut resources = resources.lock().expect("resources lock");
        resources.bridge = Some(network.bridge().to_string());
        for node in 1..=NODES {
            let namespace = network.namespace(node).expect("namespace of each node");
            resources.namespaces.push(namespace.to_string());
        }
    }

    let run_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("partition-converge")
        .join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&run_dir);
    let launches = (1..=NODES)
        .map(|node| NodeLaunch {
            address: network.node_address(node),
            namespace: network.namespace(node).map(str::to_string),
            env: Vec::new(),
        })
        .collect();
    let config = ClusterConfig {
        node_bin,
        run_dir: run_dir.clone(),
        replicas: REPLICAS,
        extra_args: node_args(),
        ready_timeout: Duration::from_secs(30),
    };
    let cluster = Cluster::start(config, launches)
        .await
        .expect("start 5 nodes");
    {
        let mut resources = resources.lock().expect("resources lock");
        resources.pids = (1..=NODES).filter_map(|node| cluster.pid(node)).collect();
    }
    println!("run folder: {}", run_dir.display());

    let addresses: Vec<String> = (1..=NODES).map(|node| network.node_address(node)).collect();
    let nodes = Nodes::new(addresses).await;
    let isolated_id = nodes.id(ISOLATED);
    let keys: Vec<String> = (0..KEYS).map(|i| format!("converge-{i:04}")).collect();
    let keys_on_isolated: Vec<String> = keys
        .iter()
        .filter(|key| nodes.replicas(key).contains(&ISOLATED))
        .cloned()
        .collect();

    // Cut the isolated node off from every other node, both ways. The
    // bridge address stays reachable, so the test can still read it.
    let mut blocked = vec![BTreeSet::new(); NODES];
    for node in 1..=NODES {
        if node == ISOLATED {
            blocked[node - 1] = (1..=NODES).filter(|other| *other != node).collect();
        } else {
            blocked[node - 1].insert(ISOLATED);
        }
    }
    network.apply(&blocked).expect("apply the partition");

    // Replica writes sent to the isolated node sit in TCP send buffers,
    // TCP retransmits them after the heal, and the node applies them,
    // because a peer timeout counts from arrival. Writing only once every
    // other node reports it down sends its writes to stand-ins instead.
    // NOTE: a coordinator that also suspects both stand-ins (false
    // suspicions happen on a loaded machine) still writes to the isolated
    // node directly, so a few keys may converge through that backlog.
    nodes.wait_isolated_down(isolated_id).await;

    let failures = nodes.put_all(&keys).await;
    assert!(
        failures.is_empty(),
        "{} of {KEYS} puts at W={WRITE_QUORUM} failed during the partition, e.g. {:?}",
        failures.len(),
        failures.iter().take(3).collect::<Vec<_>>()
    );
    for key in &keys_on_isolated {
        let replica = nodes.read(ISOLATED, key).await;
        assert_eq!(
            replica.kind(),
            ReplicaState::Missing,
            "n{ISOLATED} received {key} through the partition"
        );
    }

    // Every missed replica write becomes a hint for the isolated node, on
    // a stand-in or, when the coordinator suspects those too, on itself.
    let hints_for_isolated = nodes
        .wait_hints(isolated_id, keys_on_isolated.len() as u64)
        .await;

    network.heal().expect("heal the partition");
    let started = Instant::now();
    let pending = nodes.wait_converged(&keys_on_isolated).await;
    assert!(
        pending.is_empty(),
        "n{ISOLATED} did not converge within {CONVERGE_TIMEOUT:?} on {} of {} keys, e.g. {:?}; node logs in {}",
        pending.len(),
        keys_on_isolated.len(),
        pending.iter().take(3).collect::<Vec<_>>(),
        run_dir.display()
    );
    let converged_after = started.elapsed();

    // Hints live apart from data: no node stores a key it does not
    // replicate, also not the stand-ins that held hints for the isolated
    // node.
    for key in &keys {
        let replicas = nodes.replicas(key);
        for node in (1..=NODES).filter(|node| !replicas.contains(node)) {
            let replica = nodes.read(node, key).await;
            assert_eq!(
                replica.kind(),
                ReplicaState::Missing,
                "n{node} stores {key} as data although its preference list is {replicas:?}"
            );
        }
    }

    let mut hints_delivered = 0;
    let mut aae_keys_repaired = 0;
    for node in 1..=NODES {
        let status = nodes.status(node).await;
        assert_eq!(
            status.read_repairs, 0,
            "n{node} ran read repairs, so the test did not isolate handoff and anti-entropy"
        );
        hints_delivered += status.hints_delivered;
        aae_keys_repaired += status.aae_keys_repaired;
    }

    let partitions_replicated = (0..nodes.ring().ring.partitions)
        .filter(|partition| {
            nodes
                .ring()
                .ring
                .preference_list(*partition)
                .contains(&isolated_id)
        })
        .count();
    let partitions_with_keys: BTreeSet<u32> = keys_on_isolated
        .iter()
        .map(|key| nodes.ring().ring.partition_for_key(key.as_bytes()))
        .collect();
    // About 3/5 of the keys (360) fall on the about 150 partitions the
    // isolated node replicates, so nearly all of them get keys. Half of
    // them is a loose floor.
    assert!(
        partitions_with_keys.len() * 2 >= partitions_replicated,
        "only {} of the {partitions_replicated} partitions n{ISOLATED} replicates received keys",
        partitions_with_keys.len()
    );

    drop(cluster);
    drop(network);
    Outcome {
        keys_on_isolated: keys_on_isolated.len(),
        partitions_replicated,
        partitions_with_keys: partitions_with_keys.len(),
        hints_for_isolated,
        converged_after,
        hints_delivered,
        aae_keys_repaired,
    }
}

/// Connections to the nodes and the ring, for puts, replica reads and
/// status calls aimed at one node each.
struct Nodes {
    client: Client,
    ring: Arc<RingSnapshot>,
    addresses: Vec<String>,
    channels: Vec<Channel>,
    /// Node id to node number (from 1).
    numbers: BTreeMap<NodeId, usize>,
}

impl Nodes {
    async fn new(addresses: Vec<String>) -> Nodes {
        let options = ClientOptions {
            request_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(1),
            ..ClientOptions::default()
        };
        let client = Client::connect_with(&addresses, options)
            .await
            .expect("connect to the nodes");
        let ring = client.ring().await.expect("fetch the ring");
        let mut numbers = BTreeMap::new();
        for (id, address) in &ring.addresses {
            let number = addresses
                .iter()
                .position(|known| known == address)
                .unwrap_or_else(|| panic!("the ring lists an unknown address {address}"));
            numbers.insert(*id, number + 1);
        }
        assert_eq!(numbers.len(), NODES, "ring nodes: {:?}", ring.addresses);

        let channels = addresses
            .iter()
            .map(|address| {
                Endpoint::from_shared(format!("http://{address}"))
                    .expect("valid node address")
                    .connect_timeout(Duration::from_secs(1))
                    .timeout(Duration::from_secs(5))
                    .tcp_nodelay(true)
                    .connect_lazy()
            })
            .collect();
        Nodes {
            client,
            ring,
            addresses,
            channels,
            numbers,
        }
    }

    fn ring(&self) -> &RingSnapshot {
        &self.ring
    }

    fn id(&self, node: usize) -> NodeId {
        self.numbers
            .iter()
            .find(|(_, number)| **number == node)
            .map(|(id, _)| *id)
            .unwrap_or_else(|| panic!("n{node} is not in the ring"))
    }

    /// Node numbers of the key's preference list, in order.
    fn replicas(&self, key: &str) -> Vec<usize> {
        self.ring
            .ring
            .preference_list_for_key(key.as_bytes())
            .iter()
            .map(|id| self.numbers[id])
            .collect()
    }

    /// Writes every key once, each through a node of its preference list
    /// other than the isolated one, and returns the failures.
    ///
    /// The puts bypass the routing of kv-client on purpose: it starts at
    /// the key's first replica, which may be the isolated node, and that
    /// node would fail the put for lack of a quorum instead of handing it
    /// on.
    async fn put_all(&self, keys: &[String]) -> Vec<String> {
        let puts = keys.iter().enumerate().map(|(index, key)| {
            let coordinators: Vec<usize> = self
                .replicas(key)
                .into_iter()
                .filter(|node| *node != ISOLATED)
                .collect();
            let coordinator = coordinators[index % coordinators.len()];
            let mut kv = KvClient::new(self.channels[coordinator - 1].clone());
            let request = PutRequest {
                key: key.as_bytes().to_vec(),
                value: value_of(key).into_bytes(),
                context: Vec::new(),
                w: WRITE_QUORUM,
                forwarded: false,
                strict_quorum: false,
            };
            async move {
                match kv.put(request).await {
                    Ok(_) => None,
                    Err(status) => Some(format!(
                        "{key} at n{coordinator}: {}: {}",
                        status.code(),
                        status.message()
                    )),
                }
            }
        });
        let puts: Vec<_> = puts.collect();
        let outcomes: Vec<Option<String>> = stream::iter(puts)
            .buffer_unordered(PUT_CONCURRENCY)
            .collect()
            .await;
        outcomes.into_iter().flatten().collect()
    }

    /// Reads the local state of `key` on one node, without quorum or
    /// repair.
    async fn read(&self, node: usize, key: &str) -> kv_client::proto::AdminReplicaReadResponse {
        let mut admin = AdminClient::new(self.channels[node - 1].clone());
        let request = AdminReplicaReadRequest {
            key: key.as_bytes().to_vec(),
        };
        match admin.replica_read(request).await {
            Ok(reply) => reply.into_inner(),
            Err(status) => panic!(
                "replica read of {key} on n{node} ({}) failed: {}: {}",
                self.addresses[node - 1],
                status.code(),
                status.message()
            ),
        }
    }

    async fn status(&self, node: usize) -> kv_client::proto::StatusResponse {
        let address = &self.addresses[node - 1];
        self.client
            .status(address)
            .await
            .unwrap_or_else(|error| panic!("status of n{node} ({address}) failed: {error}"))
    }

    /// Polls the other nodes until each of them reports `target` down.
    async fn wait_isolated_down(&self, target: NodeId) {
        let target = kv_client::format_node_id(target);
        let deadline = Instant::now() + DETECT_TIMEOUT;
        loop {
            let mut seen_up = Vec::new();
            for node in (1..=NODES).filter(|node| *node != ISOLATED) {
                let address = &self.addresses[node - 1];
                let members = self
                    .client
                    .members(Some(address))
                    .await
                    .unwrap_or_else(|error| panic!("members of n{node} failed: {error}"));
                let up = members
                    .members
                    .iter()
                    .any(|member| member.node_id == target && member.up && !member.marked_down);
                if up {
                    seen_up.push(node);
                }
            }
            if seen_up.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nodes {seen_up:?} still report n{ISOLATED} up {DETECT_TIMEOUT:?} after the partition"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Polls the other nodes until they store `expected` hints for `target`
    /// in total, and returns that total.
    async fn wait_hints(&self, target: NodeId, expected: u64) -> u64 {
        let target = kv_client::format_node_id(target);
        let deadline = Instant::now() + HINTS_TIMEOUT;
        loop {
            let mut stored = 0;
            for node in (1..=NODES).filter(|node| *node != ISOLATED) {
                let status = self.status(node).await;
                stored += status
                    .pending_hints
                    .iter()
                    .filter(|pending| pending.node_id == target)
                    .map(|pending| pending.hints)
                    .sum::<u64>();
            }
            if stored >= expected {
                return stored;
            }
            assert!(
                Instant::now() < deadline,
                "the other nodes store {stored} hints for n{ISOLATED} after {HINTS_TIMEOUT:?}, expected {expected}, one per key it missed"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Polls until every replica of every key stores the written value in
    /// one shared state, and returns the keys still differing at the
    /// deadline with the reason.
    async fn wait_converged(&self, keys: &[String]) -> Vec<String> {
        let deadline = Instant::now() + CONVERGE_TIMEOUT;
        let mut pending: Vec<String> = keys.to_vec();
        loop {
            let mut reasons = Vec::new();
            let mut still = Vec::new();
            for key in pending {
                if let Err(reason) = self.check_converged(&key).await {
                    reasons.push(format!("{key}: {reason}"));
                    still.push(key);
                }
            }
            if still.is_empty() || Instant::now() >= deadline {
                return reasons;
            }
            pending = still;
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Returns why the replicas of `key` differ, if they do.
    async fn check_converged(&self, key: &str) -> Result<(), String> {
        let expected = value_of(key).into_bytes();
        let mut first_state: Option<(usize, Vec<u8>)> = None;
        for node in self.replicas(key) {
            let replica = self.read(node, key).await;
            if replica.kind() != ReplicaState::Present {
                return Err(format!("n{node} returns {:?}", replica.kind()));
            }
            if replica.values != [expected.clone()] {
                return Err(format!(
                    "n{node} stores {} values instead of the one written",
                    replica.values.len()
                ));
            }
            match &first_state {
                None => first_state = Some((node, replica.state)),
                Some((other, state)) if *state != replica.state => {
                    return Err(format!("n{node} and n{other} store different states"));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

fn value_of(key: &str) -> String {
    format!("value of {key}")
}

/// Lists the namespaces, the bridge and the node processes of the scenario
/// that still exist.
fn leftover_resources(resources: &Resources) -> Vec<String> {
    let mut leftovers = Vec::new();
    let output = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list runs");
    let listed = String::from_utf8_lossy(&output.stdout);
    for namespace in &resources.namespaces {
        let exists = listed
            .lines()
            .any(|line| line.split_whitespace().next() == Some(namespace.as_str()));
        if exists {
            leftovers.push(format!("namespace {namespace}"));
        }
    }
    if let Some(bridge) = &resources.bridge {
        let exists = std::process::Command::new("ip")
            .args(["link", "show", "dev", bridge])
            .output()
            .expect("ip link show runs")
            .status
            .success();
        if exists {
            leftovers.push(format!("bridge {bridge}"));
        }
    }
    // A reaped PID may be reused, so only a process that still runs
    // kv-node counts.
    for pid in &resources.pids {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("kv-node") {
            leftovers.push(format!("kv-node process {pid}"));
        }
    }
    leftovers
}
