//! Wire protocol of ringkv: the protobuf messages of package `ringkv.v1` and
//! the tonic clients and servers generated from `proto/ringkv.proto`.
//!
//! Three services share one port: `Kv` for clients, `Admin` for operators and
//! tests, and `Peer` for traffic between nodes. Every message stored or sent
//! between nodes carries `format_version`; a receiver rejects versions it does
//! not know instead of guessing.

/// Generated code of package `ringkv.v1`.
pub mod v1 {
    tonic::include_proto!("ringkv.v1");
}

/// The format version this build writes into every peer message.
pub const FORMAT_VERSION: u32 = 1;
