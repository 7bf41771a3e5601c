//! kv-jepsen: a fault-injection harness for ringkv.

pub mod history;
