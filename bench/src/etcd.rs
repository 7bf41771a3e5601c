//! An etcd v3 cluster as a benchmark [`Target`], through the
//! `etcd-client` crate (etcd's gRPC API).
//!
//! Operations map to etcd as follows:
//! - a read is a `Range` of one key with etcd's default, linearizable
//!   consistency (not `serializable`), so every read goes through the
//!   leader's read index;
//! - an update or insert is a plain `Put`, and a read-modify-write is that
//!   read followed by that put, as for ringkv;
//! - `ping` is `Maintenance.Status` of one member, which reads the member's
//!   local state and touches no key.
//!
//! The client spreads requests over every endpoint given.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions, KvClient, MaintenanceClient};
use tonic::Code;

use crate::target::{ReadOutcome, Target};

/// A connected etcd cluster.
pub struct Etcd {
    kv: KvClient,
    maintenance: MaintenanceClient,
}

impl Etcd {
    /// Connects to the etcd members at `endpoints` (host:port, plain HTTP/2).
    /// `request_timeout` bounds each request.
    pub async fn connect(
        endpoints: &[String],
        request_timeout: Duration,
    ) -> Result<Etcd, etcd_client::Error> {
        let options = ConnectOptions::new()
            .with_timeout(request_timeout)
            .with_connect_timeout(request_timeout);
        let client = Client::connect(endpoints, Some(options)).await?;
        Ok(Etcd {
            kv: client.kv_client(),
            maintenance: client.maintenance_client(),
        })
    }
}

impl Target for Etcd {
    type Context = ();
    type Error = etcd_client::Error;

    const HAS_CONTEXTS: bool = false;

    async fn get(&self, key: &str) -> Result<ReadOutcome<()>, etcd_client::Error> {
        // The etcd-client calls take `&mut self`, so each call clones the
        // client. A clone shares the channel and opens no connection.
        let mut kv = self.kv.clone();
        let response = kv.get(key, None).await?;
        Ok(ReadOutcome {
            found: !response.kvs().is_empty(),
            context: None,
        })
    }

    async fn put(
        &self,
        key: &str,
        value: &[u8],
        _context: Option<&()>,
    ) -> Result<Option<()>, etcd_client::Error> {
        let mut kv = self.kv.clone();
        kv.put(key, value, None).await?;
        Ok(None)
    }

    async fn ping(&self) -> Result<(), etcd_client::Error> {
        let mut maintenance = self.maintenance.clone();
        maintenance.status().await.map(|_| ())
    }

    fn error_kind(error: &etcd_client::Error) -> &'static str {
        match error {
            etcd_client::Error::GRpcStatus(status) => status_kind(status.code()),
            etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => "transport",
            etcd_client::Error::InvalidArgs(_) | etcd_client::Error::InvalidUri(_) => {
                "invalid_argument"
            }
            _ => "client",
        }
    }
}

/// Returns the report name of a gRPC status code from etcd.
fn status_kind(code: Code) -> &'static str {
    match code {
        Code::Unavailable => "unavailable",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::Cancelled => "cancelled",
        Code::ResourceExhausted => "resource_exhausted",
        Code::InvalidArgument => "invalid_argument",
        Code::FailedPrecondition => "failed_precondition",
        _ => "server",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Report, RunSettings};
    use crate::runner::{run, Plan, RunOutcome};
    use crate::workload::{Distribution, Workload};
    use std::net::TcpListener;
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    /// One etcd member on free loopback ports with its data in a temporary
    /// folder, killed by PID on drop.
    struct EtcdMember {
        child: Child,
        client_address: String,
        _data: tempfile::TempDir,
    }

    impl Drop for EtcdMember {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn free_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        listener.local_addr().expect("bound address").port()
    }

    /// Starts a single-member etcd cluster from the `etcd` on PATH.
    fn start_etcd() -> EtcdMember {
        let data = tempfile::tempdir().expect("temporary folder");
        let client_url = format!("http://127.0.0.1:{}", free_port());
        let peer_url = format!("http://127.0.0.1:{}", free_port());
        let child = Command::new("etcd")
            .arg("--name=test")
            .arg(format!(
                "--data-dir={}",
                data.path().join("member").display()
            ))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=test={peer_url}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd starts; install it with `apt-get install etcd-server`");
        EtcdMember {
            child,
            client_address: client_url.trim_start_matches("http://").to_string(),
            _data: data,
        }
    }

    /// Connects to `member` and polls Maintenance.Status until it replies.
    async fn connect_when_ready(member: &EtcdMember) -> Etcd {
        let endpoints = vec![member.client_address.clone()];
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(etcd) = Etcd::connect(&endpoints, Duration::from_secs(2)).await {
                if etcd.ping().await.is_ok() {
                    return etcd;
                }
            }
            assert!(Instant::now() < deadline, "etcd did not reply within 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn plan(workload: Workload, operations: Option<u64>) -> Plan {
        Plan {
            workload,
            records: 50,
            insert_start: 0,
            value_bytes: 100,
            concurrency: 4,
            operations,
            time_limit: Duration::from_secs(30),
            target_rate: 0,
            distribution: Distribution::Zipfian,
            seed: 1,
        }
    }

    fn report(outcome: &RunOutcome) -> Report {
        let settings = RunSettings {
            workload: "test".into(),
            target: "etcd".into(),
            endpoints: Vec::new(),
            records: 50,
            insert_start: 0,
            value_bytes: 100,
            concurrency: 4,
            distribution: "zipfian".into(),
            target_rate: 0,
            seed: 1,
            r: None,
            w: None,
        };
        Report::new(
            settings,
            &outcome.recorder,
            outcome.elapsed,
            outcome.stopped_by,
        )
    }

    #[tokio::test]
    async fn workloads_run_against_etcd() {
        let member = start_etcd();
        let etcd = connect_when_ready(&member).await;

        let load = report(&run(etcd, plan(Workload::Load, None)).await);
        assert_eq!(load.total_ok, 50);
        assert_eq!(load.total_errors, 0, "{:?}", load.errors);

        for workload in [Workload::A, Workload::F, Workload::Ping] {
            let etcd = connect_when_ready(&member).await;
            let outcome = report(&run(etcd, plan(workload, Some(100))).await);
            assert_eq!(outcome.total_ok, 100, "workload {workload}");
            assert_eq!(
                outcome.total_errors, 0,
                "workload {workload}: {:?}",
                outcome.errors
            );
            assert_eq!(outcome.missing_reads, 0, "workload {workload}");
        }

        let mut client = Client::connect([member.client_address.as_str()], None)
            .await
            .expect("client connects");
        let options = etcd_client::GetOptions::new()
            .with_prefix()
            .with_count_only();
        let stored = client.get("user", Some(options)).await.expect("count keys");
        assert_eq!(stored.count(), 50);
    }

    #[test]
    fn error_kind_maps_status_codes() {
        let cases = [
            (Code::Unavailable, "unavailable"),
            (Code::DeadlineExceeded, "deadline_exceeded"),
            (Code::Cancelled, "cancelled"),
            (Code::ResourceExhausted, "resource_exhausted"),
            (Code::InvalidArgument, "invalid_argument"),
            (Code::FailedPrecondition, "failed_precondition"),
            (Code::Internal, "server"),
        ];
        for (code, expected) in cases {
            let error = etcd_client::Error::GRpcStatus(tonic::Status::new(code, "test"));
            assert_eq!(Etcd::error_kind(&error), expected, "{code:?}");
        }
    }

    #[test]
    fn error_kind_of_client_errors() {
        let invalid = etcd_client::Error::InvalidArgs("empty endpoints".into());
        assert_eq!(Etcd::error_kind(&invalid), "invalid_argument");
        let io = etcd_client::Error::IoError(std::io::Error::other("reset"));
        assert_eq!(Etcd::error_kind(&io), "transport");
        let other = etcd_client::Error::WatchError("closed".into());
        assert_eq!(Etcd::error_kind(&other), "client");
    }
}
