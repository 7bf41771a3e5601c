//! Test harness of the apps: real `kv-node` and app processes on
//! 127.0.0.1, each with its own log file in a temporary directory, killed
//! by PID when dropped (also when a test panics).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Returns the path of the kv-node binary. Cargo builds test executables
/// into `target/<profile>/deps/` and binaries into `target/<profile>/`,
/// where scripts/test.sh builds kv-node first.
pub fn node_binary() -> PathBuf {
    let test_executable = std::env::current_exe().expect("path of the test executable");
    let path = test_executable
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lies in target/<profile>/deps")
        .join("kv-node");
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
    /// Starts `command` with its output appended to `log_path`.
    pub fn spawn(mut command: Command, address: String, log_path: PathBuf) -> Process {
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
    pub fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
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

    /// Sends SIGTERM and returns the exit status; panics when the process
    /// does not exit within 20 s. `None` when it was not running.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.child.as_ref()?;
        let status = self.terminate(Duration::from_secs(20));
        assert!(
            status.is_some(),
            "process {} did not stop within 20 s of SIGTERM",
            self.address
        );
        status
    }

    /// Waits up to `within` for the process to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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
    /// Starts `count` nodes and waits until they have converged.
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

    pub async fn client(&self) -> kv_client::Client {
        kv_client::Client::connect(&self.addresses())
            .await
            .expect("connect client")
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

/// Builds the command that starts the app `binary` against `endpoints`
/// with `worker_id`, listening on `address`, plus `extra_args`.
pub fn app_command(
    binary: &Path,
    endpoints: &[String],
    worker_id: u16,
    address: &str,
    extra_args: &[&str],
) -> Command {
    let mut command = Command::new(binary);
    command
        .arg("--endpoints")
        .arg(endpoints.join(","))
        .arg("--worker-id")
        .arg(worker_id.to_string())
        .arg("--listen")
        .arg(address)
        .args(extra_args);
    command
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
