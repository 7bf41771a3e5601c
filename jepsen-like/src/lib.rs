//! kv-jepsen: a fault-injection harness for ringkv.

pub mod checker;
pub mod cluster;
pub mod history;
pub mod membership;
pub mod nemesis;
pub mod net;
pub mod recorder;
pub mod report;
pub mod runner;
pub mod skew;
pub mod timeline;
pub mod workload;
