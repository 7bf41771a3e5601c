//! kv-jepsen: a fault-injection harness for ringkv.

pub mod cluster;
pub mod history;
pub mod nemesis;
pub mod net;
pub mod recorder;
pub mod skew;
