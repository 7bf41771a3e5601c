//! kv-chat processes for the tests, on top of the shared app test harness.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kv_apps_testkit::{app_command, free_port};
pub use kv_apps_testkit::{wait_until, Process, TestCluster};

/// Path of the kv-chat binary built for this test run.
pub fn chat_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kv-chat"))
}

/// Starts a kv-chat instance against `endpoints` and waits until it
/// serves requests.
pub async fn start_chat(
    root: &Path,
    name: &str,
    endpoints: &[String],
    worker_id: u16,
    extra_args: &[&str],
) -> Process {
    let address = format!("127.0.0.1:{}", free_port());
    let command = app_command(&chat_binary(), endpoints, worker_id, &address, extra_args);
    let process = Process::spawn(command, address, root.join(format!("{name}.log")));

    // An unknown channel returns 404 once the app is up and reaches the
    // cluster.
    let probe = format!("http://{}/api/v1/channels/1", process.address);
    let http = reqwest::Client::new();
    wait_until(Duration::from_secs(60), &format!("{name} to serve"), || {
        let request = http.get(&probe).send();
        async move {
            matches!(request.await, Ok(response) if response.status() == reqwest::StatusCode::NOT_FOUND)
        }
    })
    .await;
    process
}
