//! The stores a run can measure. The runner drives any [`Target`], so
//! ringkv and etcd run the same workloads through the same code and report.

use std::fmt;
use std::future::Future;

use clap::ValueEnum;
use kv_client::{Client, Context, Error, ReadOptions, WriteOptions};

/// The store selected with `--against`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TargetKind {
    /// A ringkv cluster, through kv-client.
    Ringkv,
    /// An etcd v3 cluster, through its gRPC API (needs the `etcd` feature).
    Etcd,
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetKind::Ringkv => "ringkv",
            TargetKind::Etcd => "etcd",
        })
    }
}

/// Result of one read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadOutcome<C> {
    /// False when the key has no value.
    pub found: bool,
    /// Version token to send with the next write of the key, if the store
    /// returned one.
    pub context: Option<C>,
}

/// A key-value store that [`crate::runner::run`] can drive.
///
/// Every task of a run shares one target, so each call takes `&self`.
pub trait Target: Send + Sync + 'static {
    /// Version token that reads and writes return and a later write of the
    /// same key sends back, so the write supersedes what the token covers.
    /// Stores without one use `()`.
    type Context: Clone + Send + Sync + 'static;
    type Error: fmt::Display + Send + 'static;

    /// True when writes take a [`Target::Context`]. The runner keeps the
    /// last context of each key only then.
    const HAS_CONTEXTS: bool;

    /// Reads `key`. A missing key is a successful read with `found` false.
    fn get(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<ReadOutcome<Self::Context>, Self::Error>> + Send;

    /// Writes `value` to `key`, superseding what `context` covers, and
    /// returns the context of the new value.
    fn put(
        &self,
        key: &str,
        value: &[u8],
        context: Option<&Self::Context>,
    ) -> impl Future<Output = Result<Option<Self::Context>, Self::Error>> + Send;

    /// Sends the store's cheapest request, which touches no key.
    fn ping(&self) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Returns the report name of the error's kind, for example
    /// `quorum_failed`.
    fn error_kind(error: &Self::Error) -> &'static str;
}

/// A ringkv cluster, reached through kv-client with the quorums of
/// `--r` and `--w`.
pub struct Ringkv {
    pub client: Client,
    pub read_options: ReadOptions,
    pub write_options: WriteOptions,
}

impl Target for Ringkv {
    type Context = Context;
    type Error = Error;

    const HAS_CONTEXTS: bool = true;

    async fn get(&self, key: &str) -> Result<ReadOutcome<Context>, Error> {
        let read = self.client.get_with(key, self.read_options).await?;
        Ok(ReadOutcome {
            found: !read.is_missing(),
            context: (!read.context.is_empty()).then_some(read.context),
        })
    }

    async fn put(
        &self,
        key: &str,
        value: &[u8],
        context: Option<&Context>,
    ) -> Result<Option<Context>, Error> {
        let written = self
            .client
            .put_with(key, value, context, self.write_options)
            .await?;
        Ok((!written.context.is_empty()).then_some(written.context))
    }

    async fn ping(&self) -> Result<(), Error> {
        self.client.ping().await.map(|_| ())
    }

    fn error_kind(error: &Error) -> &'static str {
        match error {
            Error::InvalidArgument { .. } => "invalid_argument",
            Error::Unavailable { .. } => "unavailable",
            Error::QuorumFailed { .. } => "quorum_failed",
            Error::DeadlineExceeded { .. } => "deadline_exceeded",
            Error::FailedPrecondition { .. } => "failed_precondition",
            Error::ResourceExhausted { .. } => "resource_exhausted",
            Error::NoReachableNode { .. } => "no_reachable_node",
            Error::InvalidEndpoint { .. } => "invalid_endpoint",
            Error::Transport { .. } => "transport",
            Error::Protocol { .. } => "protocol",
            Error::Server { .. } => "server",
        }
    }
}
