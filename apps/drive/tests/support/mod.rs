//! kv-drive processes for the tests, on top of the shared app test harness.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kv_apps_testkit::{app_command, free_port, wait_until};
pub use kv_apps_testkit::{Process, TestCluster};

/// Path of the kv-drive binary built for this test run.
pub fn drive_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kv-drive"))
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
    let command = app_command(&drive_binary(), endpoints, worker_id, &address, extra_args);
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
