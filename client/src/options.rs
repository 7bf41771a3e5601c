//! Tunables of a [`crate::Client`] and per-request quorum overrides.

use std::time::Duration;

/// Default time allowed for one attempt of a request at one node.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time allowed to open a TCP connection to a node.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default maximum gRPC message size, sent and received: 64 MiB, above the
/// largest key state a merge can produce (4 MiB cap at put admission plus
/// concurrent siblings merged after admission).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Default period of the background ring refresh.
pub const DEFAULT_RING_REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// Default number of read-resolve-write rounds of [`crate::Client::update`].
pub const DEFAULT_UPDATE_ATTEMPTS: u32 = 5;

/// Settings of a [`crate::Client`]; `ClientOptions::default()` gives the
/// documented defaults.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Time allowed for one attempt at one node; a request that fails over
    /// gets a fresh timeout at the next node. Also sent to the node as the
    /// gRPC deadline.
    pub request_timeout: Duration,
    /// Time allowed to open a TCP connection to a node.
    pub connect_timeout: Duration,
    /// Maximum gRPC message size in bytes, for requests and replies.
    pub max_message_bytes: usize,
    /// Period of the background ring refresh. A routing failure also
    /// triggers a refresh, at most once per second.
    pub ring_refresh_interval: Duration,
    /// When true, requests rotate the first node tried over the key's
    /// preference list, or over the seed endpoints while the ring is
    /// unknown (spreads coordinator load). When false they start at the
    /// partition's owner and try seeds in the order given.
    pub rotate_coordinators: bool,
    /// Maximum read-resolve-write rounds of [`crate::Client::update`].
    pub update_attempts: u32,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            ring_refresh_interval: DEFAULT_RING_REFRESH_INTERVAL,
            rotate_coordinators: true,
            update_attempts: DEFAULT_UPDATE_ATTEMPTS,
        }
    }
}

/// Per-request settings of a get.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Read quorum, 1..=N; `None` uses the cluster's default.
    pub r: Option<u32>,
}

/// Per-request settings of a put.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// Write quorum, 1..=N; `None` uses the cluster's default.
    pub w: Option<u32>,
    /// Strict quorum: only the replicas of the key's preference list count
    /// towards W, never stand-ins that hold the write as a hint for a
    /// replica that is down. The write fails with
    /// [`crate::Error::QuorumFailed`] when too few of them acknowledge.
    pub strict_quorum: bool,
}

/// Per-request settings of a delete.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    /// Write quorum of the tombstone, 1..=N; `None` uses the default.
    pub w: Option<u32>,
    /// Read quorum of the read that a delete without context does first.
    pub r: Option<u32>,
    /// Strict quorum for the tombstone, as in [`WriteOptions::strict_quorum`].
    pub strict_quorum: bool,
}
