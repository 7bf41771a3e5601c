//! The distributed-systems logic of ringkv, without I/O.
//!
//! Everything here is a pure function or a state machine that takes time and
//! randomness as arguments, so the hard parts of the database can be tested
//! deterministically:
//!
//! - [`hash`]: key hashing and the key-to-partition map.
//! - [`ring`]: the partitioned ring, its claim and preference lists.
//! - [`membership`]: the gossiped membership table and its merge.
//! - [`detector`]: the phi-accrual failure detector.
//! - [`version`]: dotted version vector sets, their merge and canonical
//!   encoding.
//! - [`causality`]: how a coordinator picks the dot of a put (actors, epochs,
//!   `gen`, the restart mark) and how a replica stores an incoming state.
//! - [`context`]: the opaque client context.
//! - [`tree`]: the anti-entropy hash trees, their leaves and their diffs.

pub mod causality;
mod claim;
pub mod context;
pub mod detector;
pub mod hash;
pub mod membership;
pub mod ring;
pub mod tree;
pub mod version;

/// Identifier of a node: random, created on the node's first start and kept
/// in its data directory. Shown to operators as 16 hex digits.
pub type NodeId = u64;

/// Formats a node id the way operators see it: 16 lower-case hex digits.
pub fn format_node_id(id: NodeId) -> String {
    format!("{id:016x}")
}

/// Parses a node id written as hex digits (an optional `0x` prefix allowed).
pub fn parse_node_id(text: &str) -> Option<NodeId> {
    let digits = text.strip_prefix("0x").unwrap_or(text);
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}
