//! Test harness: real `kv-node` processes on 127.0.0.1, each with its own
//! temporary data directory and log file, stopped by PID when the harness
//! is dropped (also when a test panics).

#![allow(dead_code)]

use kv_proto::v1::admin_client::AdminClient;
use kv_proto::v1::{MembersRequest, MembersResponse, StatusRequest, StatusResponse};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Upper bound for any single test.
pub const TEST_DEADLINE: Duration = Duration::from_secs(180);

/// Path of the kv-node binary built by cargo for this test run.
pub fn node_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kv-node"))
}

/// Path of the kv-cli binary: built into the same directory by
/// `cargo build --workspace`, which the test script runs first.
pub fn cli_binary() -> PathBuf {
    let path = node_binary().with_file_name("kv-cli");
    assert!(
        path.exists(),
        "{} is missing; build it first with `cargo build --workspace` (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A free port on 127.0.0.1, found by binding port 0.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// One node process of a test cluster.
pub struct TestNode {
    pub address: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub seeds: Vec<String>,
    pub extra_args: Vec<String>,
    /// Environment variables set for the process, besides RUST_LOG.
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

impl TestNode {
    pub fn new(root: &Path, name: &str, seeds: Vec<String>) -> TestNode {
        TestNode {
            address: format!("127.0.0.1:{}", free_port()),
            data_dir: root.join(name),
            log_path: root.join(format!("{name}.log")),
            seeds,
            extra_args: Vec::new(),
            env: Vec::new(),
            child: None,
        }
    }

    /// Starts the process (no waiting for readiness).
    pub fn spawn(&mut self) {
        assert!(
            self.child.is_none(),
            "node {} is already running",
            self.address
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open node log");
        let mut command = Command::new(node_binary());
        command
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(&self.address)
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        if !self.seeds.is_empty() {
            command.arg("--seeds").arg(self.seeds.join(","));
        }
        self.child = Some(command.spawn().expect("start kv-node"));
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|child| child.id())
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits (bounded) for a clean exit; returns its status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: plain kill(2) on the PID of a child this harness started.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("node {} did not stop within 20 s of SIGTERM", self.address);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) for the process to exit by itself; returns its status.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits for a node that should be refused to exit, and returns its log.
pub fn expect_refused(node: &mut TestNode, needle: &str) -> String {
    let status = node
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the node was not refused within 30 s; log:\n{}", node.log()));
    assert!(
        !status.success(),
        "a refused node exits with a failure status"
    );
    let log = node.log();
    assert!(
        log.contains(needle),
        "the log does not say {needle:?}:\n{log}"
    );
    log
}

/// A cluster of node processes in one temporary directory.
pub struct TestCluster {
    pub root: tempfile::TempDir,
    pub nodes: Vec<TestNode>,
}

impl TestCluster {
    /// Starts `count` nodes (the first creates the cluster, the others join
    /// through it) and waits until every node sees every other one up in a
    /// ring that holds them all.
    pub async fn start(count: usize) -> TestCluster {
        Self::start_with(count, &[]).await
    }

    pub async fn start_with(count: usize, extra_args: &[&str]) -> TestCluster {
        let root = tempfile::tempdir().expect("temporary directory");
        let mut nodes = Vec::new();
        for index in 0..count {
            let seeds = if index == 0 {
                Vec::new()
            } else {
                vec![nodes
                    .first()
                    .map(|first: &TestNode| first.address.clone())
                    .unwrap_or_default()]
            };
            let mut node = TestNode::new(root.path(), &format!("node{index}"), seeds);
            node.extra_args = extra_args.iter().map(|arg| arg.to_string()).collect();
            node.spawn();
            nodes.push(node);
        }
        let cluster = TestCluster { root, nodes };
        cluster.wait_converged(Duration::from_secs(60)).await;
        cluster
    }

    pub fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(|node| node.address.clone()).collect()
    }

    pub async fn client(&self) -> kv_client::Client {
        let running: Vec<String> = self
            .nodes
            .iter()
            .filter(|node| node.is_running())
            .map(|node| node.address.clone())
            .collect();
        kv_client::Client::connect(&running)
            .await
            .expect("connect client")
    }

    /// Waits until every running node lists every node up, normal and on one
    /// ring version.
    pub async fn wait_converged(&self, within: Duration) {
        let expected = self.nodes.len();
        let running: Vec<String> = self
            .nodes
            .iter()
            .filter(|node| node.is_running())
            .map(|node| node.address.clone())
            .collect();
        wait_until(within, "cluster convergence", || {
            let running = running.clone();
            async move {
                let mut versions = Vec::new();
                for address in &running {
                    let Ok(members) = members(address).await else {
                        return false;
                    };
                    let ready = members.members.len() == expected
                        && members
                            .members
                            .iter()
                            .all(|member| member.up && member.status == "normal");
                    if !ready {
                        return false;
                    }
                    versions.extend(members.members.iter().map(|member| member.ring_version));
                }
                versions.windows(2).all(|pair| pair[0] == pair[1])
            }
        })
        .await;
    }

    /// Waits until the node at `observer` sees the node at `target` as up
    /// (or down), and returns how long that took.
    pub async fn wait_member_up(
        &self,
        observer: &str,
        target: &str,
        up: bool,
        within: Duration,
    ) -> Duration {
        let started = Instant::now();
        let observer = observer.to_string();
        let target = target.to_string();
        wait_until(
            within,
            &format!("{observer} to see {target} up={up}"),
            || {
                let observer = observer.clone();
                let target = target.clone();
                async move {
                    let Ok(members) = members(&observer).await else {
                        return false;
                    };
                    members
                        .members
                        .iter()
                        .any(|member| member.address == target && member.up == up)
                }
            },
        )
        .await;
        started.elapsed()
    }
}

pub async fn admin(
    address: &str,
) -> Result<AdminClient<tonic::transport::Channel>, tonic::transport::Error> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("valid address")
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(3))
        .connect()
        .await?;
    Ok(AdminClient::new(channel))
}

pub async fn members(address: &str) -> anyhow::Result<MembersResponse> {
    let mut client = admin(address).await?;
    Ok(client.members(MembersRequest {}).await?.into_inner())
}

pub async fn status(address: &str) -> anyhow::Result<StatusResponse> {
    let mut client = admin(address).await?;
    Ok(client.status(StatusRequest {}).await?.into_inner())
}

/// Polls `condition` every 100 ms until it holds; panics after `within`.
pub async fn wait_until<F, Fut>(within: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if condition().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
