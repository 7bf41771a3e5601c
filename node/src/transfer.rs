//! Partition transfers of a membership change (filled in below).

use crate::node::Node;
use kv_proto::v1::TransferStatus;

impl Node {
    /// Progress of the partitions this node receives, for `Status`.
    pub fn transfer_status(&self) -> TransferStatus {
        TransferStatus::default()
    }

    /// Why a planned ring change waits, empty when nothing waits.
    pub fn ring_change_waiting(&self) -> String {
        String::new()
    }
}
