//! The shared state of a running node, handed to every service and task.

use crate::config::Config;
use crate::meta::Meta;
use crate::peers::Peers;
use crate::stats::Stats;
use crate::store::LocalStore;
use crate::view::ClusterView;
use kv_storage::EngineKind;
use std::sync::Arc;

/// Everything a request handler or background task needs.
pub struct Node {
    pub config: Config,
    pub engine_kind: EngineKind,
    pub view: ClusterView,
    pub store: Arc<LocalStore>,
    pub meta: Meta,
    pub peers: Peers,
    /// Replica messages queued per peer, sent in batches.
    pub outbox: crate::outbox::Outbox,
    pub stats: Arc<Stats>,
    pub generation: u64,
    pub restart_mark: u64,
    /// Rate limit of warnings about failures handled in the background.
    pub warnings: crate::stats::LogLimiter,
    /// Hints held for other nodes (hinted handoff).
    pub hints: Arc<crate::hints::HintStore>,
    /// Tombstone reaping state.
    pub reaper: crate::reaper::Reaper,
    /// Partitions received during a membership change.
    pub transfers: crate::transfer::Transfers,
    /// Reason a planned ring change waits, as the claimant step last
    /// computed it; `None` when nothing waits.
    pub waiting_change: std::sync::Mutex<Option<String>>,
    /// Stops the node once it has left the cluster.
    pub leave_signal: tokio::sync::watch::Sender<bool>,
}

impl Node {
    pub fn node_id(&self) -> u64 {
        self.view.node_id
    }

    pub fn cluster_id(&self) -> String {
        self.view.ring().cluster_id.clone()
    }
}
