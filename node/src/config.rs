//! Command-line settings of `kv-node`.

use clap::Parser;
use kv_storage::{EngineKind, SyncMode};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A ringkv database node.
///
/// A node started without --seeds on an empty data directory creates a new
/// cluster. A node started with --seeds requests the ring from a seed and joins
/// that cluster. A node whose data directory already holds a ring rejoins
/// its cluster and never creates a new one.
#[derive(Parser, Debug, Clone)]
#[command(name = "kv-node", version)]
pub struct Config {
    /// Directory holding this node's data, identity and ring. Created if
    /// missing. Each node needs its own.
    #[arg(long, env = "RINGKV_DATA_DIR")]
    pub data_dir: PathBuf,

    /// Address to serve clients, operators and peers on, as IP:port (a host
    /// name is not resolved). Peers and clients reach the node at this
    /// address, so it must not be 0.0.0.0.
    #[arg(long, env = "RINGKV_LISTEN", default_value = "127.0.0.1:7401")]
    pub listen: SocketAddr,

    /// Comma-separated addresses of existing members to join through. Leave
    /// empty on the first node of a new cluster.
    #[arg(long, env = "RINGKV_SEEDS", value_delimiter = ',')]
    pub seeds: Vec<String>,

    /// Create a new cluster even though --seeds is given. Refused when the
    /// data directory already holds a ring.
    #[arg(long)]
    pub bootstrap: bool,

    /// Replicas per key (N). Fixed when the cluster is created; a node with
    /// another N cannot join.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=9))]
    pub n: u32,

    /// Default read quorum (R), 1..=N; clients may override it per request.
    #[arg(long, default_value_t = 2)]
    pub r: u32,

    /// Default write quorum (W), 1..=N; clients may override it per request.
    #[arg(long, default_value_t = 2)]
    pub w: u32,

    /// Number of ring partitions (Q), a power of two from 1 to 65536. Fixed
    /// when the cluster is created.
    #[arg(long, default_value_t = 256)]
    pub partitions: u32,

    /// Storage engine: fjall (default: an LSM tree with a real fsync) or
    /// sled.
    #[arg(long, default_value = "fjall")]
    pub engine: EngineKind,

    /// When a write counts as durable. "always": acknowledged only after an
    /// fsync; concurrent writes share one flush (group commit). "periodic":
    /// acknowledged once handed to the storage engine and fsynced every
    /// --sync-interval-ms; a machine crash can lose the last interval, and a
    /// kill of the coordinator and one replica within it can lose a write
    /// that W=2 acknowledged.
    #[arg(long, default_value = "always")]
    pub sync: SyncModeArg,

    /// Threads that run storage engine calls (reads, merges, writes) off the
    /// async executor, 1 to 64. Under load each thread takes queued calls
    /// without sleeping between them; more threads help when reads wait on
    /// the disk.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub storage_threads: u32,

    /// Flush interval of --sync periodic, in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub sync_interval_ms: u64,

    /// Largest value accepted, in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_value_bytes: usize,

    /// Largest number of siblings (tombstones included) a put may leave on a
    /// key; a put over it fails, and the client must resolve siblings first.
    #[arg(long, default_value_t = 100)]
    pub max_siblings: usize,

    /// Largest total size of a key's values, in bytes, checked when a put is
    /// admitted.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub max_state_bytes: usize,

    /// Time a coordinator waits for a quorum, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub request_timeout_ms: u64,

    /// Timeout of replica writes, writes to stand-ins, read repairs and hint
    /// deliveries sent to peers, in milliseconds. The receiving peer gives up
    /// on the message after it, and a replica write that misses it becomes a
    /// hint.
    #[arg(long, default_value_t = 10_000)]
    pub message_deadline_ms: u64,

    /// Interval between gossip rounds, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub gossip_interval_ms: u64,

    /// Interval between rounds of hinted handoff, in milliseconds. Each
    /// round sends the hints this node holds to their target nodes that the
    /// failure detector reports up.
    #[arg(long, default_value_t = 1000)]
    pub hint_interval_ms: u64,

    /// Maximum keys per second this node merges while it receives partitions
    /// during a membership change (join, decommission, remove). Lower keeps
    /// foreground latency steadier; higher finishes the change sooner.
    #[arg(long, default_value_t = 20_000)]
    pub transfer_max_keys_per_second: u64,

    /// Interval between checks for partitions to receive, transfers to
    /// report and copies of partitions to delete, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub transfer_interval_ms: u64,

    /// Phi threshold of the failure detector: higher means slower to mark a
    /// silent peer down, with fewer false alarms.
    #[arg(long, default_value_t = 8.0)]
    pub phi_threshold: f64,

    /// Share of reads, 0.0 to 1.0, that also ask the replicas outside the
    /// read quorum for a digest and repair them when they differ.
    #[arg(long, default_value_t = 1.0)]
    pub read_repair_chance: f64,

    /// Active anti-entropy. "on" keeps a hash tree of every partition this
    /// node replicates and compares it with the other replicas' trees, so
    /// keys whose copies differ get repaired. "off" does neither.
    #[arg(long, default_value = "on")]
    pub aae: OnOff,

    /// Interval between anti-entropy rounds, in milliseconds. Each round
    /// compares this node's trees with those of every peer the failure
    /// detector reports up, one peer at a time.
    #[arg(long, default_value_t = 10_000)]
    pub aae_interval_ms: u64,

    /// Maximum keys per second that anti-entropy repairs. It waits rather
    /// than go faster, so repairs leave room for client requests.
    #[arg(long, default_value_t = 1000)]
    pub aae_max_repairs_per_second: u64,

    /// Age of a hash tree, in milliseconds, after which it is rebuilt by a
    /// scan of its partition. A rebuilt tree that differs from the kept one
    /// is logged as drift and replaces it.
    #[arg(long, default_value_t = 3_600_000)]
    pub aae_rebuild_interval_ms: u64,

    /// Tombstone reaping: "on" purges a deleted key once every replica holds
    /// the same tombstone and nothing can bring an older value back; "off"
    /// keeps tombstones forever.
    #[arg(long, default_value = "on")]
    pub reap: OnOff,

    /// Silence, in milliseconds, after which a node pings a peer connection,
    /// and the time it then waits for the answer before it closes the
    /// connection. A message that the network holds up longer than twice
    /// this is never applied, because its connection is closed by then.
    #[arg(long, default_value_t = 5_000)]
    pub peer_keepalive_ms: u64,

    /// Time a key must hold the same tombstone before it may be purged, in
    /// milliseconds, measured by its reaper. Must be longer than
    /// --message-deadline-ms plus twice --peer-keepalive-ms, so every replica
    /// write sent before the delete was applied, or given up on and kept as
    /// a hint, before the purge.
    #[arg(long, default_value_t = 60_000)]
    pub reap_grace_ms: u64,

    /// Interval between reaping rounds, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    pub reap_interval_ms: u64,
}

/// Values of on/off settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// `--sync` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncModeArg {
    Always,
    Periodic,
}

/// Errors in a combination of settings that clap cannot check alone.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid --{name} {value}: must be between 1 and --n ({n})")]
    QuorumOutOfRange {
        name: &'static str,
        value: u32,
        n: u32,
    },
    #[error("invalid --partitions {0}: must be a power of two from 1 to 65536")]
    Partitions(u32),
    #[error("invalid --listen {0}: peers cannot reach an unspecified address; give the address they should use")]
    UnspecifiedListen(SocketAddr),
    #[error("invalid --read-repair-chance {0}: must be between 0.0 and 1.0")]
    ReadRepairChance(f64),
    #[error("invalid --reap-grace-ms {grace}: must be longer than --message-deadline-ms ({deadline}) plus twice --peer-keepalive-ms ({keepalive}), so that no replica write sent before a delete is applied after its purge")]
    ReapGrace {
        grace: u64,
        deadline: u64,
        keepalive: u64,
    },
    #[error("invalid --{name} 0: must be at least 1")]
    Zero { name: &'static str },
    #[error("invalid --data-dir {0}: it exists and is not a directory")]
    DataDirNotDirectory(String),
}

impl Config {
    /// Checks settings that depend on each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [("r", self.r), ("w", self.w)] {
            if value == 0 || value > self.n {
                return Err(ConfigError::QuorumOutOfRange {
                    name,
                    value,
                    n: self.n,
                });
            }
        }
        if !self.partitions.is_power_of_two() || self.partitions > 65536 {
            return Err(ConfigError::Partitions(self.partitions));
        }
        if self.data_dir.exists() && !self.data_dir.is_dir() {
            return Err(ConfigError::DataDirNotDirectory(
                self.data_dir.display().to_string(),
            ));
        }
        if self.listen.ip().is_unspecified() {
            return Err(ConfigError::UnspecifiedListen(self.listen));
        }
        let oldest_message = self
            .message_deadline_ms
            .saturating_add(self.peer_keepalive_ms.saturating_mul(2));
        if self.reap_grace_ms <= oldest_message {
            return Err(ConfigError::ReapGrace {
                grace: self.reap_grace_ms,
                deadline: self.message_deadline_ms,
                keepalive: self.peer_keepalive_ms,
            });
        }
        if !(0.0..=1.0).contains(&self.read_repair_chance) {
            return Err(ConfigError::ReadRepairChance(self.read_repair_chance));
        }
        for (name, value) in [
            ("max-value-bytes", self.max_value_bytes as u64),
            ("max-state-bytes", self.max_state_bytes as u64),
            ("max-siblings", self.max_siblings as u64),
            ("request-timeout-ms", self.request_timeout_ms),
            ("message-deadline-ms", self.message_deadline_ms),
            ("gossip-interval-ms", self.gossip_interval_ms),
            ("hint-interval-ms", self.hint_interval_ms),
            (
                "transfer-max-keys-per-second",
                self.transfer_max_keys_per_second,
            ),
            ("transfer-interval-ms", self.transfer_interval_ms),
            ("sync-interval-ms", self.sync_interval_ms),
            ("aae-interval-ms", self.aae_interval_ms),
            (
                "aae-max-repairs-per-second",
                self.aae_max_repairs_per_second,
            ),
            ("aae-rebuild-interval-ms", self.aae_rebuild_interval_ms),
            ("reap-interval-ms", self.reap_interval_ms),
            ("peer-keepalive-ms", self.peer_keepalive_ms),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero { name });
            }
        }
        Ok(())
    }

    pub fn peer_keepalive(&self) -> Duration {
        Duration::from_millis(self.peer_keepalive_ms)
    }

    pub fn reap_grace(&self) -> Duration {
        Duration::from_millis(self.reap_grace_ms)
    }

    pub fn reap_interval(&self) -> Duration {
        Duration::from_millis(self.reap_interval_ms)
    }

    pub fn sync_mode(&self) -> SyncMode {
        match self.sync {
            SyncModeArg::Always => SyncMode::Always,
            SyncModeArg::Periodic => SyncMode::Periodic {
                interval: Duration::from_millis(self.sync_interval_ms),
            },
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn aae_interval(&self) -> Duration {
        Duration::from_millis(self.aae_interval_ms)
    }

    pub fn aae_rebuild_interval(&self) -> Duration {
        Duration::from_millis(self.aae_rebuild_interval_ms)
    }

    pub fn message_deadline(&self) -> Duration {
        Duration::from_millis(self.message_deadline_ms)
    }

    pub fn transfer_interval(&self) -> Duration {
        Duration::from_millis(self.transfer_interval_ms)
    }

    pub fn hint_interval(&self) -> Duration {
        Duration::from_millis(self.hint_interval_ms)
    }

    /// The gRPC message size limit: above the largest state a merge of
    /// replicas can produce. Merges never drop values to respect
    /// max_state_bytes, so two full states can meet; the factor leaves room
    /// for that and for encoding overhead.
    pub fn grpc_message_limit(&self) -> usize {
        (self.max_state_bytes.saturating_mul(4)).max(64 * 1024 * 1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Config {
        let base = ["kv-node", "--data-dir", "/nonexistent/ringkv-config-test"];
        Config::parse_from(base.iter().chain(extra))
    }

    #[test]
    fn reap_grace_must_outlast_held_messages() {
        let timings = [
            "--message-deadline-ms",
            "1000",
            "--peer-keepalive-ms",
            "500",
        ];
        let too_short = parse(&[&timings[..], &["--reap-grace-ms", "2000"]].concat());
        let error = too_short
            .validate()
            .expect_err("2000 ms is not longer than 1000 + 2 × 500");
        let message = error.to_string();
        assert!(message.contains("--reap-grace-ms 2000"), "{message}");
        assert!(message.contains("--peer-keepalive-ms (500)"), "{message}");

        let long_enough = parse(&[&timings[..], &["--reap-grace-ms", "2001"]].concat());
        assert!(long_enough.validate().is_ok());
    }

    #[test]
    fn defaults_are_valid() {
        assert!(parse(&[]).validate().is_ok());
    }
}
