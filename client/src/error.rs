//! Errors of the client library and how gRPC statuses map onto them.
//!
//! A node reports a failed quorum as `UNAVAILABLE` with the metadata entry
//! `ringkv-error: quorum`. Such a request reached a live coordinator and may
//! have been applied on some replicas, so the client never sends it to
//! another node. A plain `UNAVAILABLE` (no such entry) means the node itself
//! is unreachable or shutting down, and the client fails over to the next
//! node. [`should_fail_over`] encodes that rule and [`Error::from_status`]
//! the mapping from status code to variant.

use std::time::Duration;

use tonic::{Code, Status};

/// Metadata key a node sets on statuses that carry a ringkv-specific reason.
pub const ERROR_METADATA_KEY: &str = "ringkv-error";

/// Value of [`ERROR_METADATA_KEY`] on a failed read or write quorum.
pub const QUORUM_ERROR: &str = "quorum";

/// Errors returned by [`crate::Client`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is invalid: key or value size, a context that belongs to
    /// another key or does not decode, R or W outside 1..=N, or a node id
    /// that is not a member (`NOT_FOUND`). Not retryable: fix the request. The message is shown as is: the node's messages
    /// already start with what is invalid ("invalid W=5: ..."), so a prefix
    /// would repeat it.
    #[error("{message}")]
    InvalidArgument { message: String },

    /// A node replied `UNAVAILABLE` without a quorum reason, or could not be
    /// reached, on a call that targets one node (admin calls). Retryable.
    #[error("node {address} is unavailable: {message}")]
    Unavailable { address: String, message: String },

    /// The coordinator could not reach R or W replicas in time. A write may
    /// still have been applied on some replicas, so a retry with the same
    /// context can leave the first attempt as a sibling. Retryable.
    #[error("quorum not reached: {message}")]
    QuorumFailed { message: String },

    /// The request did not finish within its timeout, on the client or on
    /// the coordinator. Like [`Error::QuorumFailed`], a write may have been
    /// applied. Retryable.
    #[error("request timed out after {timeout:?}: {message}")]
    DeadlineExceeded { timeout: Duration, message: String },

    /// The key has the maximum number of siblings or the maximum state
    /// size. Not retryable as is: read the key, resolve its siblings and
    /// write the result with the read context.
    #[error("failed precondition: {message}")]
    FailedPrecondition { message: String },

    /// The node is rate limiting. Retryable after a pause.
    #[error("resource exhausted: {message}")]
    ResourceExhausted { message: String },

    /// Every candidate node failed with a connection error or a plain
    /// `UNAVAILABLE`. `tried` lists each address with its failure. Retryable.
    #[error("no reachable node; tried: {}", tried.join("; "))]
    NoReachableNode { tried: Vec<String> },

    /// An endpoint string is not a valid `host:port` or URI. Not retryable:
    /// fix the address.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },

    /// A connection-level failure that gRPC did not map to a status code,
    /// for example a reset stream. Retryable.
    #[error("transport error talking to {address}: {message}")]
    Transport { address: String, message: String },

    /// The server sent something this client cannot use: a ring that does
    /// not decode, an unknown enum value, a node id that is not in the ring.
    /// Not retryable.
    #[error("protocol error: {message}")]
    Protocol { message: String },

    /// The server failed with a code this client has no variant for
    /// (`INTERNAL`, `UNIMPLEMENTED`, `UNKNOWN`, ...). Not retryable.
    #[error("server error {code}: {message}")]
    Server { code: String, message: String },
}

impl Error {
    /// Returns true when sending the same request again later may succeed.
    ///
    /// Unreachable nodes, failed quorums, timeouts and rate limits are
    /// retryable. Invalid requests, sibling caps (resolve first), protocol
    /// and unexpected server errors are not. Each variant documents its case.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unavailable { .. }
            | Error::QuorumFailed { .. }
            | Error::DeadlineExceeded { .. }
            | Error::ResourceExhausted { .. }
            | Error::NoReachableNode { .. }
            | Error::Transport { .. } => true,
            Error::InvalidArgument { .. }
            | Error::FailedPrecondition { .. }
            | Error::InvalidEndpoint { .. }
            | Error::Protocol { .. }
            | Error::Server { .. } => false,
        }
    }

    /// Maps a gRPC status from the node at `address` to an error.
    ///
    /// `timeout` is the client's request timeout, reported in
    /// [`Error::DeadlineExceeded`]. `CANCELLED` counts as a timeout because
    /// tonic reports its own client-side timeout with that code.
    pub fn from_status(status: &Status, address: &str, timeout: Duration) -> Error {
        let message = status.message().to_string();
        match status.code() {
            // Only membership commands return NOT_FOUND, for a node id the
            // cluster does not know; a missing key is an empty read instead.
            Code::InvalidArgument | Code::OutOfRange | Code::NotFound => {
                Error::InvalidArgument { message }
            }
            Code::Unavailable if is_quorum_failure(status) => Error::QuorumFailed { message },
            Code::Unavailable => Error::Unavailable {
                address: address.to_string(),
                message,
            },
            Code::DeadlineExceeded | Code::Cancelled => {
                Error::DeadlineExceeded { timeout, message }
            }
            Code::FailedPrecondition => Error::FailedPrecondition { message },
            Code::ResourceExhausted => Error::ResourceExhausted { message },
            // tonic reports broken connections and HTTP/2 errors as UNKNOWN
            // with the underlying error as source; a node's own UNKNOWN has none.
            Code::Unknown if std::error::Error::source(status).is_some() => Error::Transport {
                address: address.to_string(),
                message,
            },
            code => Error::Server {
                code: format!("{code:?}"),
                message,
            },
        }
    }
}

/// Returns true when the status carries the quorum-failure marker.
fn is_quorum_failure(status: &Status) -> bool {
    status
        .metadata()
        .get(ERROR_METADATA_KEY)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value == QUORUM_ERROR)
}

/// Returns true when a request that failed with `status` should be sent to
/// the next candidate node: the node was unreachable or is shutting down,
/// and the request was therefore not coordinated.
pub fn should_fail_over(status: &Status) -> bool {
    status.code() == Code::Unavailable && !is_quorum_failure(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataMap;

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn quorum_status() -> Status {
        let mut metadata = MetadataMap::new();
        metadata.insert(ERROR_METADATA_KEY, QUORUM_ERROR.parse().expect("ascii"));
        Status::with_metadata(Code::Unavailable, "2 of 3 replicas answered", metadata)
    }

    #[test]
    fn unavailable_with_quorum_marker_is_quorum_failed() {
        let status = quorum_status();
        let error = Error::from_status(&status, "127.0.0.1:7401", TIMEOUT);
        assert!(matches!(error, Error::QuorumFailed { .. }), "{error:?}");
        assert!(error.is_retryable());
        assert!(!should_fail_over(&status));
        assert!(error.to_string().contains("2 of 3 replicas answered"));
    }

    #[test]
    fn plain_unavailable_fails_over() {
        let status = Status::unavailable("shutting down");
        let error = Error::from_status(&status, "127.0.0.1:7401", TIMEOUT);
        assert!(
            matches!(&error, Error::Unavailable { address, .. } if address == "127.0.0.1:7401"),
            "{error:?}"
        );
        assert!(error.is_retryable());
        assert!(should_fail_over(&status));
    }

    #[test]
    fn other_metadata_value_is_plain_unavailable() {
        let mut metadata = MetadataMap::new();
        metadata.insert(ERROR_METADATA_KEY, "draining".parse().expect("ascii"));
        let status = Status::with_metadata(Code::Unavailable, "draining", metadata);
        assert!(should_fail_over(&status));
    }

    #[test]
    fn status_codes_map_to_variants() {
        // (status code, expected variant name, expected is_retryable)
        let cases = [
            (Code::InvalidArgument, "InvalidArgument", false),
            (Code::NotFound, "InvalidArgument", false),
            (Code::FailedPrecondition, "FailedPrecondition", false),
            (Code::DeadlineExceeded, "DeadlineExceeded", true),
            (Code::Cancelled, "DeadlineExceeded", true),
            (Code::ResourceExhausted, "ResourceExhausted", true),
            (Code::Internal, "Server", false),
        ];
        for (code, variant, retryable) in cases {
            let status = Status::new(code, "message from node");
            let error = Error::from_status(&status, "127.0.0.1:7401", TIMEOUT);
            let debug = format!("{error:?}");
            assert!(debug.starts_with(variant), "{code:?} mapped to {debug}");
            assert_eq!(error.is_retryable(), retryable, "retryable of {code:?}");
            assert!(!should_fail_over(&status), "{code:?} must not fail over");
            assert!(error.to_string().contains("message from node"));
        }
    }

    #[test]
    fn no_reachable_node_lists_tried_addresses() {
        let error = Error::NoReachableNode {
            tried: vec!["a:1: refused".into(), "b:2: refused".into()],
        };
        assert!(error.is_retryable());
        assert_eq!(
            error.to_string(),
            "no reachable node; tried: a:1: refused; b:2: refused"
        );
    }
}
