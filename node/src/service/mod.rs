//! The gRPC services of a node: `Kv` for clients, `Admin` for operators and
//! `Peer` for other nodes. All three share one listening address.

pub mod admin;
pub mod kv;
pub mod peer;
