//! Shared pieces of the ringkv example apps: per-client rate limiting of
//! the HTTP layer ([`ratelimit`]), worker-id leases for snowflake ids
//! ([`worker`]), retries of cluster requests ([`retry`]) and the
//! command-line flags every app takes ([`flags`]).
//!
//! The id generator itself is [`kv_client::ids`], re-exported here as
//! [`ids`].

pub mod flags;
pub mod ratelimit;
pub mod retry;
pub mod worker;

pub use kv_client::ids;
