//! Async Rust client of ringkv, a Dynamo-style distributed key-value store.
//!
//! [`Client`] fetches the cluster's ring from any endpoint, sends each
//! request to a node of the key's preference list and fails over to the next
//! node when one is unreachable. Keys map to sets of concurrent values
//! (siblings) plus an opaque [`Context`]: a put with the context of an
//! earlier read supersedes exactly what that read returned, while a put
//! without one adds a sibling instead of overwriting anything.
//!
//! ```no_run
//! use kv_client::{Client, Error};
//!
//! # async fn example() -> Result<(), Error> {
//! let client = Client::connect(&["127.0.0.1:7401", "127.0.0.1:7402"]).await?;
//!
//! // A blind put: no context, so it supersedes nothing.
//! client.put("cart:42", b"apples".to_vec(), None).await?;
//!
//! // A read returns every sibling and the context covering them.
//! let read = client.get("cart:42").await?;
//! for value in &read.values {
//!     println!("sibling: {}", String::from_utf8_lossy(value));
//! }
//!
//! // Writing with the read context replaces every value that read returned.
//! let mut merged = read.values.concat();
//! merged.extend_from_slice(b",pears");
//! let written = client.put("cart:42", merged, Some(&read.context)).await?;
//! if !written.siblings.is_empty() {
//!     println!("{} concurrent writes remain as siblings", written.siblings.len());
//! }
//!
//! // `update` runs read, resolve and write, and repeats when a concurrent
//! // write slipped in between.
//! client
//!     .update("counter", |siblings| {
//!         let max = siblings
//!             .iter()
//!             .filter_map(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
//!             .max()
//!             .unwrap_or(0);
//!         Some((max + 1).to_string().into_bytes())
//!     })
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! Errors are [`Error`] values; [`Error::is_retryable`] tells whether the
//! same request may succeed later. A failed quorum
//! ([`Error::QuorumFailed`]) may have been applied on some replicas.

mod client;
mod context;
mod error;
pub mod ids;
mod options;
mod routing;
mod types;

pub use client::Client;
pub use context::{Context, ContextParseError};
pub use error::{should_fail_over, Error, ERROR_METADATA_KEY, QUORUM_ERROR};
pub use options::{
    ClientOptions, DeleteOptions, ReadOptions, WriteOptions, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_REQUEST_TIMEOUT, DEFAULT_RING_REFRESH_INTERVAL,
    DEFAULT_UPDATE_ATTEMPTS,
};
pub use types::{DeleteResult, GetResult, PutResult, ReplicaRead, ReplicaState, RingSnapshot};

/// The ring type of [`RingSnapshot`].
pub use kv_cluster::ring::Ring;
/// Node ids and their hex form.
pub use kv_cluster::{format_node_id, parse_node_id, NodeId};
/// Generated protobuf types of package `ringkv.v1`, for the admin replies
/// returned as they are ([`Client::status`], [`Client::members`]).
pub use kv_proto::v1 as proto;
