//! kv-shortener processes for the tests, on top of the shared app test
//! harness.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kv_apps_testkit::{app_command, free_port};
pub use kv_apps_testkit::{Process, TestCluster};

/// Path of the kv-shortener binary built for this test run.
pub fn shortener_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kv-shortener"))
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
    let command = app_command(
        &shortener_binary(),
        endpoints,
        worker_id,
        &address,
        extra_args,
    );
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
