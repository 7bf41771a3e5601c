//! The `kv-node` processes of a run: start, kill, restart, pause, resume and
//! stop them by PID.
//!
//! Each node has its own data directory (`<run>/n<i>/data`) and log file
//! (`<run>/n<i>.log`). Node 1 creates the cluster; the others join through
//! it one at a time, each in the ring before the next starts, so every run
//! forms its cluster the same way. A restarted node keeps its data directory and gets every other
//! member as seed, so it rejoins whichever of them is up.
//!
//! Spare nodes are not started with the cluster. [`Cluster::join`] starts
//! one with an empty data directory and the members as seeds, and it stays
//! a member. A node that was decommissioned or removed is never started
//! again, because ringkv rejects its data directory.
//!
//! Invariants:
//! - Signals go only to PIDs this module spawned, and a PID is forgotten
//!   once its child has been reaped, so a recycled PID is never signalled.
//! - Dropping a [`Cluster`] stops every node it still runs (SIGCONT, then
//!   SIGTERM, then SIGKILL after [`STOP_GRACE`]).
//! - Each child gets `PR_SET_PDEATHSIG = SIGKILL`, so the nodes also die if
//!   the harness itself is killed. NOTE: Linux sends that signal when the
//!   spawning *thread* exits, so nodes must be spawned from threads that
//!   live as long as the run (tokio workers or the main thread), never from
//!   `spawn_blocking` threads, which exit when idle.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kv_client::proto::admin_client::AdminClient;
use kv_client::proto::RingRequest;
use kv_client::{Client, ClientOptions};
use kv_cluster::ring::Ring;
use tonic::transport::Endpoint;

/// Time a node gets to exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Pause between two readiness polls.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Errors of node control.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot create {path}: {source}; check that the run folder is writable")]
    CreateFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start node n{node} with {program}: {source}; pass the kv-node binary with --node-bin")]
    Spawn {
        node: usize,
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("node n{node} is not running; it must be started before it can be {action}")]
    NotRunning { node: usize, action: &'static str },
    #[error("cannot send {signal} to node n{node} (PID {pid}): {source}")]
    Signal {
        node: usize,
        pid: u32,
        signal: &'static str,
        source: std::io::Error,
    },
    #[error("node n{node} exited during start with {status}; see its log {log}")]
    ExitedEarly {
        node: usize,
        status: std::process::ExitStatus,
        log: PathBuf,
    },
    #[error(
        "the cluster was not ready after {waited:?}: {reason}; see the node logs in the run folder"
    )]
    NotReady { waited: Duration, reason: String },
    #[error("node n{node} is not a spare that has never run, so it cannot join")]
    NotSpare { node: usize },
    #[error("invalid node address {address}: {source}")]
    Client {
        address: String,
        source: kv_client::Error,
    },
}

/// Launch settings of one node process.
#[derive(Clone, Debug)]
pub struct NodeLaunch {
    /// Address the node listens on and peers and clients use.
    pub address: String,
    /// Network namespace to run the node in (through `ip netns exec`), or
    /// `None` to run it in the harness's namespace.
    pub namespace: Option<String>,
    /// Extra environment, e.g. the libfaketime preload.
    pub env: Vec<(String, String)>,
}

/// Settings shared by every node of a run.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The `kv-node` binary.
    pub node_bin: PathBuf,
    /// Folder that contains the nodes' data directories and logs.
    pub run_dir: PathBuf,
    /// Replicas per key (N).
    pub replicas: u32,
    /// Extra `kv-node` flags given to every node.
    pub extra_args: Vec<String>,
    /// Time allowed for the cluster to form, and for a restarted node to
    /// rejoin.
    pub ready_timeout: Duration,
}

/// State of one node process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    Running,
    Paused,
    Killed,
    /// A spare that has not joined yet.
    Spare,
    /// Decommissioned: it handed over its partitions and exited.
    Left,
    /// Killed and removed from the ring by another node.
    Removed,
}

impl NodeStatus {
    /// True for a node of the ring: running, paused or killed, but not a
    /// spare and not gone for good.
    pub fn is_member(self) -> bool {
        matches!(
            self,
            NodeStatus::Running | NodeStatus::Paused | NodeStatus::Killed
        )
    }
}

struct Node {
    launch: NodeLaunch,
    child: Option<Child>,
    status: NodeStatus,
}

/// The node processes of one run. Nodes are numbered from 1 (`n1`).
pub struct Cluster {
    config: ClusterConfig,
    nodes: BTreeMap<usize, Node>,
}

impl Cluster {
    /// Starts every node, node 1 first, and waits until all of them are
    /// normal members that see each other up on one ring version.
    pub async fn start(
        config: ClusterConfig,
        launches: Vec<NodeLaunch>,
    ) -> Result<Cluster, ClusterError> {
        let members = launches.len();
        Cluster::start_with_spares(config, launches, members).await
    }

    /// Starts the first `members` nodes like [`Cluster::start`] and keeps
    /// the others as spares for [`Cluster::join`].
    pub async fn start_with_spares(
        config: ClusterConfig,
        launches: Vec<NodeLaunch>,
        members: usize,
    ) -> Result<Cluster, ClusterError> {
        let mut cluster = Cluster {
            config,
            nodes: BTreeMap::new(),
        };
        for (index, launch) in launches.into_iter().enumerate() {
            cluster.nodes.insert(
                index + 1,
                Node {
                    launch,
                    child: None,
                    status: if index < members {
                        NodeStatus::Killed
                    } else {
                        NodeStatus::Spare
                    },
                },
            );
        }

        let count = members.min(cluster.nodes.len());
        for node in 1..=count {
            cluster.spawn(node, node > 1)?;
            // Joins are one at a time: the first node must have created the
            // cluster, and each joiner is in the ring before the next starts.
            cluster
                .wait_ready(node, cluster.config.ready_timeout)
                .await?;
        }
        Ok(cluster)
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when the cluster has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Client address of node `node`.
    pub fn address(&self, node: usize) -> Option<&str> {
        self.nodes.get(&node).map(|n| n.launch.address.as_str())
    }

    /// Client addresses of every node, spares and departed nodes
    /// included, in node order.
    pub fn addresses(&self) -> Vec<String> {
        self.nodes
            .values()
            .map(|n| n.launch.address.clone())
            .collect()
    }

    /// Numbers of the nodes that are members now (see
    /// [`NodeStatus::is_member`]), in ascending order.
    pub fn members(&self) -> Vec<usize> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.status.is_member())
            .map(|(node, _)| *node)
            .collect()
    }

    /// Client addresses of the members, in node order.
    pub fn member_addresses(&self) -> Vec<String> {
        self.nodes
            .values()
            .filter(|n| n.status.is_member())
            .map(|n| n.launch.address.clone())
            .collect()
    }

    /// Current state of node `node`.
    pub fn status(&self, node: usize) -> Option<NodeStatus> {
        self.nodes.get(&node).map(|n| n.status)
    }

    /// PID of node `node` while its process exists.
    pub fn pid(&self, node: usize) -> Option<u32> {
        self.nodes.get(&node)?.child.as_ref().map(Child::id)
    }

    /// Log file of node `node`.
    pub fn log_path(&self, node: usize) -> PathBuf {
        self.config.run_dir.join(format!("n{node}.log"))
    }

    fn data_dir(&self, node: usize) -> PathBuf {
        self.config.run_dir.join(format!("n{node}")).join("data")
    }

    /// Spawns node `node`. With `join`, it gets every other member as seed.
    fn spawn(&mut self, node: usize, join: bool) -> Result<(), ClusterError> {
        let data_dir = self.data_dir(node);
        std::fs::create_dir_all(&data_dir).map_err(|source| ClusterError::CreateFile {
            path: data_dir.clone(),
            source,
        })?;
        let log_path = self.log_path(node);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| ClusterError::CreateFile {
                path: log_path.clone(),
                source,
            })?;
        let log_err = log.try_clone().map_err(|source| ClusterError::CreateFile {
            path: log_path.clone(),
            source,
        })?;

        let seeds: Vec<String> = self
            .nodes
            .iter()
            .filter(|(other, n)| **other != node && n.status.is_member())
            .map(|(_, n)| n.launch.address.clone())
            .collect();
        let Some(entry) = self.nodes.get(&node) else {
            return Err(ClusterError::NotRunning {
                node,
                action: "started",
            });
        };
        let launch = entry.launch.clone();

        let mut node_args: Vec<String> = vec![
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--listen".into(),
            launch.address.clone(),
            "--n".into(),
            self.config.replicas.to_string(),
        ];
        if join && !seeds.is_empty() {
            node_args.push("--seeds".into());
            node_args.push(seeds.join(","));
        }
        node_args.extend(self.config.extra_args.iter().cloned());

        let (program, args) = match &launch.namespace {
            Some(namespace) => {
                let mut args: Vec<String> = vec!["netns".into(), "exec".into(), namespace.clone()];
                args.push(self.config.node_bin.display().to_string());
                args.extend(node_args);
                (PathBuf::from("ip"), args)
            }
            None => (self.config.node_bin.clone(), node_args),
        };

        let mut command = Command::new(&program);
        command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .env(
                "RUST_LOG",
                std::env::var("RINGKV_NODE_LOG").unwrap_or_else(|_| "info".into()),
            );
        for (name, value) in &launch.env {
            command.env(name, value);
        }
        set_parent_death_signal(&mut command);

        let child = command.spawn().map_err(|source| ClusterError::Spawn {
            node,
            program: program.clone(),
            source,
        })?;
        tracing::info!(node = %format!("n{node}"), pid = child.id(), address = %launch.address, "started node");
        if let Some(entry) = self.nodes.get_mut(&node) {
            entry.child = Some(child);
            entry.status = NodeStatus::Running;
        }
        Ok(())
    }

    /// Kills node `node` with SIGKILL and reaps it.
    pub fn kill(&mut self, node: usize) -> Result<(), ClusterError> {
        let entry = self.running_entry(node, "killed")?;
        let mut child = entry.child.take().ok_or(ClusterError::NotRunning {
            node,
            action: "killed",
        })?;
        let pid = child.id();
        send_signal(node, pid, libc::SIGKILL, "SIGKILL")?;
        let _ = child.wait();
        entry.status = NodeStatus::Killed;
        tracing::info!(node = %format!("n{node}"), pid, "killed node");
        Ok(())
    }

    /// Restarts a killed node with its data directory and waits until it
    /// is a ready member again.
    pub async fn restart(&mut self, node: usize) -> Result<(), ClusterError> {
        if self.status(node) != Some(NodeStatus::Killed) {
            return Ok(());
        }
        self.spawn(node, true)?;
        self.wait_members_ready(self.config.ready_timeout).await
    }

    /// Starts spare node `node` with an empty data directory and the
    /// members as seeds, without waiting for the join to finish.
    pub fn join(&mut self, node: usize) -> Result<(), ClusterError> {
        if self.status(node) != Some(NodeStatus::Spare) {
            return Err(ClusterError::NotSpare { node });
        }
        self.spawn(node, true)
    }

    /// Waits until node `node` exits by itself, as a decommissioned node
    /// does, and marks it left. Returns its exit status, or `None` when it
    /// still runs after `timeout`.
    pub async fn wait_left(
        &mut self,
        node: usize,
        timeout: Duration,
    ) -> Result<Option<std::process::ExitStatus>, ClusterError> {
        let started = Instant::now();
        loop {
            let entry = self.running_entry(node, "decommissioned")?;
            let child = entry.child.as_mut().ok_or(ClusterError::NotRunning {
                node,
                action: "decommissioned",
            })?;
            if let Ok(Some(status)) = child.try_wait() {
                entry.child = None;
                entry.status = NodeStatus::Left;
                tracing::info!(node = %format!("n{node}"), %status, "node left the cluster");
                return Ok(Some(status));
            }
            if started.elapsed() >= timeout {
                return Ok(None);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Marks killed node `node` as removed, so nothing restarts it.
    pub fn mark_removed(&mut self, node: usize) -> Result<(), ClusterError> {
        match self.nodes.get_mut(&node) {
            Some(entry) if entry.status == NodeStatus::Killed => {
                entry.status = NodeStatus::Removed;
                Ok(())
            }
            _ => Err(ClusterError::NotRunning {
                node,
                action: "removed after its kill",
            }),
        }
    }

    /// Restarts a killed node without waiting for it to rejoin.
    pub fn restart_now(&mut self, node: usize) -> Result<(), ClusterError> {
        if self.status(node) != Some(NodeStatus::Killed) {
            return Ok(());
        }
        self.spawn(node, true)
    }

    /// Stops node `node` with SIGSTOP.
    pub fn pause(&mut self, node: usize) -> Result<(), ClusterError> {
        let entry = self.running_entry(node, "paused")?;
        let pid = child_pid(entry, node, "paused")?;
        send_signal(node, pid, libc::SIGSTOP, "SIGSTOP")?;
        entry.status = NodeStatus::Paused;
        tracing::info!(node = %format!("n{node}"), pid, "paused node");
        Ok(())
    }

    /// Continues a paused node with SIGCONT; a node that is not paused is
    /// left alone.
    pub fn resume(&mut self, node: usize) -> Result<(), ClusterError> {
        let Some(entry) = self.nodes.get_mut(&node) else {
            return Err(ClusterError::NotRunning {
                node,
                action: "resumed",
            });
        };
        if entry.status != NodeStatus::Paused {
            return Ok(());
        }
        let pid = child_pid(entry, node, "resumed")?;
        send_signal(node, pid, libc::SIGCONT, "SIGCONT")?;
        entry.status = NodeStatus::Running;
        tracing::info!(node = %format!("n{node}"), pid, "resumed node");
        Ok(())
    }

    fn running_entry(
        &mut self,
        node: usize,
        action: &'static str,
    ) -> Result<&mut Node, ClusterError> {
        match self.nodes.get_mut(&node) {
            Some(entry) if entry.status != NodeStatus::Killed && entry.child.is_some() => Ok(entry),
            _ => Err(ClusterError::NotRunning { node, action }),
        }
    }

    /// Waits until the first `count` nodes all reply to `Members` and each
    /// lists `count` members that are normal, up and on one ring version.
    pub async fn wait_ready(
        &mut self,
        count: usize,
        timeout: Duration,
    ) -> Result<(), ClusterError> {
        let addresses: Vec<String> = self.addresses().into_iter().take(count).collect();
        self.wait_addresses_ready(addresses, timeout).await
    }

    /// Waits like [`Cluster::wait_ready`] for the current members.
    pub async fn wait_members_ready(&mut self, timeout: Duration) -> Result<(), ClusterError> {
        let addresses = self.member_addresses();
        self.wait_addresses_ready(addresses, timeout).await
    }

    async fn wait_addresses_ready(
        &mut self,
        addresses: Vec<String>,
        timeout: Duration,
    ) -> Result<(), ClusterError> {
        let started = Instant::now();
        let count = addresses.len();
        let options = ClientOptions {
            request_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            ..ClientOptions::default()
        };
        let client = Client::connect_with(&addresses, options)
            .await
            .map_err(|source| ClusterError::Client {
                address: addresses.join(","),
                source,
            })?;
        loop {
            self.check_exited()?;
            let mut pending = None;
            for address in &addresses {
                let outcome = match client.members(Some(address)).await {
                    Ok(reply) => check_members(&reply, count),
                    Err(error) => Err(error.to_string()),
                };
                if let Err(reason) = outcome {
                    pending = Some(format!("{address}: {reason}"));
                    break;
                }
            }
            let Some(reason) = pending else {
                return Ok(());
            };
            if started.elapsed() >= timeout {
                return Err(ClusterError::NotReady {
                    waited: started.elapsed(),
                    reason,
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until every member returns the same ring, with no partition
    /// move plan and with exactly the members as its nodes, so that no
    /// membership change is in progress.
    pub async fn wait_ring_settled(&mut self, timeout: Duration) -> Result<(), ClusterError> {
        let started = Instant::now();
        loop {
            self.check_exited()?;
            let reason = match self.ring_unsettled_reason().await {
                None => return Ok(()),
                Some(reason) => reason,
            };
            if started.elapsed() >= timeout {
                return Err(ClusterError::NotReady {
                    waited: started.elapsed(),
                    reason,
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Returns why the members' rings are not settled, or `None` when they
    /// are.
    async fn ring_unsettled_reason(&self) -> Option<String> {
        let addresses = self.member_addresses();
        let mut first: Option<Ring> = None;
        for address in &addresses {
            let ring = match fetch_ring(address).await {
                Ok(ring) => ring,
                Err(error) => return Some(format!("{address}: {error}")),
            };
            if ring.plan.is_some() {
                return Some(format!(
                    "{address}: ring version {} still moves partitions",
                    ring.version
                ));
            }
            if ring.nodes().len() != addresses.len() {
                return Some(format!(
                    "{address}: ring version {} has {} nodes, expected {}",
                    ring.version,
                    ring.nodes().len(),
                    addresses.len()
                ));
            }
            match &first {
                None => first = Some(ring),
                Some(other) if *other != ring => {
                    return Some(format!(
                        "{address}: ring version {} differs from version {} of {}",
                        ring.version, other.version, addresses[0]
                    ))
                }
                Some(_) => {}
            }
        }
        None
    }

    /// Fails when a node that should run has exited on its own.
    fn check_exited(&mut self) -> Result<(), ClusterError> {
        let mut exited = None;
        for (node, entry) in self.nodes.iter_mut() {
            if !matches!(entry.status, NodeStatus::Running | NodeStatus::Paused) {
                continue;
            }
            if let Some(child) = entry.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    entry.child = None;
                    entry.status = NodeStatus::Killed;
                    exited = Some((*node, status));
                    break;
                }
            }
        }
        match exited {
            Some((node, status)) => Err(ClusterError::ExitedEarly {
                node,
                status,
                log: self.log_path(node),
            }),
            None => Ok(()),
        }
    }

    /// Stops every node: SIGCONT (a stopped process cannot handle SIGTERM),
    /// SIGTERM, then SIGKILL for nodes still alive after [`STOP_GRACE`].
    pub fn stop_all(&mut self) {
        for (node, entry) in self.nodes.iter_mut() {
            if let Some(child) = entry.child.as_ref() {
                let pid = child.id();
                let _ = send_signal(*node, pid, libc::SIGCONT, "SIGCONT");
                let _ = send_signal(*node, pid, libc::SIGTERM, "SIGTERM");
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        for (node, entry) in self.nodes.iter_mut() {
            let Some(mut child) = entry.child.take() else {
                continue;
            };
            entry.status = NodeStatus::Killed;
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        let pid = child.id();
                        tracing::warn!(node = %format!("n{node}"), pid, "node did not stop after SIGTERM; sending SIGKILL");
                        let _ = send_signal(*node, pid, libc::SIGKILL, "SIGKILL");
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Fetches and decodes the ring of the node at `address`.
async fn fetch_ring(address: &str) -> Result<Ring, String> {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|error| error.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2));
    let channel = endpoint
        .connect()
        .await
        .map_err(|error| format!("cannot connect: {error}"))?;
    let mut admin =
        AdminClient::new(channel).max_decoding_message_size(kv_client::DEFAULT_MAX_MESSAGE_BYTES);
    let reply = admin
        .ring(RingRequest {})
        .await
        .map_err(|status| format!("Ring failed: {}: {}", status.code(), status.message()))?
        .into_inner();
    Ring::decode(&reply.encoded).map_err(|error| format!("the ring does not decode: {error}"))
}

/// Checks one node's member list; returns why the cluster is not ready.
fn check_members(reply: &kv_client::proto::MembersResponse, count: usize) -> Result<(), String> {
    let ready: Vec<_> = reply
        .members
        .iter()
        .filter(|m| m.status == "normal" && (m.up || m.is_self) && !m.marked_down)
        .collect();
    if ready.len() < count {
        return Err(format!("{} of {count} members normal and up", ready.len()));
    }
    let version = ready[0].ring_version;
    if ready.iter().any(|m| m.ring_version != version) {
        return Err("members disagree on the ring version".into());
    }
    Ok(())
}

/// Returns the PID of node `node`'s process, or the error that `action`
/// found no process to act on.
fn child_pid(entry: &Node, node: usize, action: &'static str) -> Result<u32, ClusterError> {
    entry
        .child
        .as_ref()
        .map(Child::id)
        .ok_or(ClusterError::NotRunning { node, action })
}

/// Sends `signal` to `pid`, a child this module spawned and has not reaped.
fn send_signal(
    node: usize,
    pid: u32,
    signal: libc::c_int,
    name: &'static str,
) -> Result<(), ClusterError> {
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return Err(ClusterError::Signal {
            node,
            pid,
            signal: name,
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        });
    };
    // SAFETY: kill(2) has no memory effects; `raw` is the PID of our own
    // unreaped child, so it cannot name another process.
    let result = unsafe { libc::kill(raw, signal) };
    if result == 0 {
        Ok(())
    } else {
        Err(ClusterError::Signal {
            node,
            pid,
            signal: name,
            source: std::io::Error::last_os_error(),
        })
    }
}

#[cfg(target_os = "linux")]
fn set_parent_death_signal(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the
    // parent; it runs in the forked child before exec.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn set_parent_death_signal(_command: &mut Command) {}

/// Finds the `kv-node` binary: next to the running executable (or one
/// folder up, for test binaries in `target/<profile>/deps`), else
/// `target/debug/kv-node` of the workspace this crate was built from.
pub fn default_node_bin() -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            for candidate in [dir.join("kv-node"), dir.join("..").join("kv-node")] {
                if candidate.is_file() {
                    return candidate;
                }
            }
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("debug")
        .join("kv-node")
}
