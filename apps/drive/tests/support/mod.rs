//! Test harness: real `kv-node` and `kv-drive` processes on 127.0.0.1, each
//! with its own log file in a temporary directory, killed by PID when
//! dropped (also when a test panics).

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of the kv-drive binary built for this test run.
pub fn drive_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kv-drive"))
}

/// Path of the kv-node binary: cargo puts it next to kv-drive when the
/// workspace binaries are built, as scripts/test.sh does first.
pub fn node_binary() -> PathBuf {
    let path = drive_binary().with_file_name("kv-node");
    assert!(
        path.exists(),
        "{} is missing; build it first with `cargo build -p kv-node` \
         (scripts/test.sh builds every binary)",
        path.display()
    );
    path
}

/// Returns a free port on 127.0.0.1, found by binding port 0.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// A child process whose output goes to a log file; killed on drop.
pub struct Process {
    pub address: String,
    pub log_path: PathBuf,
    child: Option<Child>,
}

impl Process {
    fn spawn(mut command: Command, address: String, log_path: PathBuf) -> Process {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open the process log");
        command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log);
        let child = command.spawn().expect("start the process");
        Process {
            address,
            log_path,
            child: Some(child),
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Sends SIGKILL to the process and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits up to `within` for the process to exit.
    /// Returns its exit status, or `None` when it had to be killed.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: plain kill(2) on the PID of a child this harness started
        // and has not reaped yet.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// kv-node processes, the first creating the cluster and the others joining
/// through it, with the node defaults N=3, R=2 and W=2.
pub struct TestCluster {
    pub root: tempfile::TempDir,
    pub nodes: Vec<Process>,
}

impl TestCluster {
    pub async fn start(count: usize) -> TestCluster {
        let root = tempfile::tempdir().expect("temporary directory");
        let mut nodes: Vec<Process> = Vec::new();
        for index in 0..count {
            let address = format!("127.0.0.1:{}", free_port());
            let mut command = Command::new(node_binary());
            command
                .arg("--data-dir")
                .arg(root.path().join(format!("node{index}")))
                .arg("--listen")
                .arg(&address);
            if let Some(first) = nodes.first() {
                command.arg("--seeds").arg(&first.address);
            }
            let log_path = root.path().join(format!("node{index}.log"));
            nodes.push(Process::spawn(command, address, log_path));
        }
        let cluster = TestCluster { root, nodes };
        cluster.wait_converged(Duration::from_secs(60)).await;
        cluster
    }

    pub fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(|node| node.address.clone()).collect()
    }

    /// Waits until every node lists every node up and normal, on one ring
    /// version.
    pub async fn wait_converged(&self, within: Duration) {
        let expected = self.nodes.len();
        let addresses = self.addresses();
        wait_until(within, "cluster convergence", || {
            let addresses = addresses.clone();
            async move {
                let mut versions = Vec::new();
                for address in &addresses {
                    let Ok(client) = kv_client::Client::connect(&[address]).await else {
                        return false;
                    };
                    let Ok(members) = client.members(Some(address)).await else {
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
}

/// Starts a kv-drive instance against `endpoints` and waits until it
/// serves requests.
pub async fn start_drive(
    root: &Path,
    name: &str,
    endpoints: &[String],
    worker_id: u16,
    extra_args: &[&str],
) -> Process {
    let address = format!("127.0.0.1:{}", free_port());
    let mut command = Command::new(drive_binary());
    command
        .arg("--endpoints")
        .arg(endpoints.join(","))
        .arg("--worker-id")
        .arg(worker_id.to_string())
        .arg("--listen")
        .arg(&address)
        .args(extra_args);
    let process = Process::spawn(command, address, root.join(format!("{name}.log")));

    // Listing a root folder returns 200 once the app is up and reaches the
    // cluster.
    let probe = format!("http://{}/api/v1/list/probe", process.address);
    let http = reqwest::Client::new();
    wait_until(Duration::from_secs(60), &format!("{name} to serve"), || {
        let request = http.get(&probe).header("X-User", "probe").send();
        async move {
            matches!(request.await, Ok(response) if response.status() == reqwest::StatusCode::OK)
        }
    })
    .await;
    process
}

/// Polls `condition` every 100 ms until it holds; panics after `within`.
pub async fn wait_until<F, Fut>(within: Duration, description: &str, mut condition: F)
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
            "timed out after {within:?} waiting for {description}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
