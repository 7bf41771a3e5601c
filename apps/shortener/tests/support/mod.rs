//! Test harness: real `kv-node` and `kv-shortener` processes on 127.0.0.1,
//! each with its own log file in a temporary directory, stopped by PID when
//! dropped (also when a test panics).

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Path of the kv-shortener binary built for this test run.
pub fn shortener_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kv-shortener"))
}

/// Path of the kv-node binary: cargo puts it next to kv-shortener when the
/// workspace or kv-node is built.
pub fn node_binary() -> PathBuf {
    let path = shortener_binary().with_file_name("kv-node");
    assert!(
        path.exists(),
        "{} is missing; build it first with `cargo build -p kv-node` \
         (scripts/test.sh builds the workspace)",
        path.display()
    );
    path
}

/// Returns a free port on 127.0.0.1, found by binding port 0.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// A child process with its log file, killed on drop.
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
            .expect("open process log");
        command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        let child = command.spawn().expect("start process");
        Process {
            address,
            log_path,
            child: Some(child),
        }
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

    /// Sends SIGTERM and waits up to 20 s for the exit, then kills.
    pub fn stop(&mut self) -> Option<ExitStatus> {
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
                panic!(
                    "process {} did not stop within 20 s of SIGTERM",
                    self.address
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `within` for the process to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
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

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// kv-node processes in one temporary directory, the first creating the
/// cluster and the others joining through it.
pub struct TestCluster {
    pub root: tempfile::TempDir,
    pub nodes: Vec<Process>,
}

impl TestCluster {
    /// Starts `count` nodes and waits until every node sees all of them up.
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

    /// Waits until every node lists all nodes up and normal.
    pub async fn wait_converged(&self, within: Duration) {
        let expected = self.nodes.len();
        let client = self.client().await;
        let addresses = self.addresses();
        wait_until(within, "cluster convergence", || {
            let client = client.clone();
            let addresses = addresses.clone();
            async move {
                for address in &addresses {
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
                }
                true
            }
        })
        .await;
    }
}

/// Starts a kv-shortener against `endpoints` with `worker_id` and the extra
/// flags, and waits until it serves `GET /`.
pub async fn start_shortener(
    root: &Path,
    endpoints: &[String],
    worker_id: u16,
    extra_args: &[&str],
) -> Process {
    let mut process = spawn_shortener(root, endpoints, worker_id, extra_args);
    let url = format!("http://{}/", process.address);
    let http = http_client();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = http.get(&url).send().await {
            if response.status().is_success() {
                return process;
            }
        }
        if let Some(status) = process.wait_exit(Duration::ZERO) {
            panic!("kv-shortener exited with {status}:\n{}", process.log());
        }
        assert!(
            Instant::now() < deadline,
            "kv-shortener did not serve {url} within 60 s:\n{}",
            process.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts a kv-shortener without waiting for it to serve.
pub fn spawn_shortener(
    root: &Path,
    endpoints: &[String],
    worker_id: u16,
    extra_args: &[&str],
) -> Process {
    let address = format!("127.0.0.1:{}", free_port());
    let mut command = Command::new(shortener_binary());
    command
        .arg("--endpoints")
        .arg(endpoints.join(","))
        .arg("--worker-id")
        .arg(worker_id.to_string())
        .arg("--listen")
        .arg(&address)
        .args(extra_args);
    let log_path = root.join(format!("shortener-{worker_id}-{}.log", free_port()));
    Process::spawn(command, address, log_path)
}

/// HTTP client that does not follow redirects, with a 10 s timeout.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("build HTTP client")
}

/// Polls `condition` every 100 ms until it is true; panics after `within`.
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
