//! Errors of client requests and how they map to gRPC statuses.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

/// Metadata key that marks a failed quorum: the coordinator was reached, so a
/// client must not retry the same write elsewhere blindly.
pub const ERROR_KIND_KEY: &str = "ringkv-error";

/// A failed client request.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The request itself is wrong; retrying it unchanged cannot help.
    #[error("{0}")]
    InvalidArgument(String),
    /// Too few replicas answered. A write may have been applied on some.
    #[error("{0}")]
    Quorum(String),
    /// This node cannot serve the request at all (for example it is not a
    /// replica and cannot forward); another node may.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Internal(String),
}

impl From<RequestError> for Status {
    fn from(error: RequestError) -> Status {
        match error {
            RequestError::InvalidArgument(message) => Status::invalid_argument(message),
            RequestError::Quorum(message) => {
                let mut status = Status::new(Code::Unavailable, message);
                status
                    .metadata_mut()
                    .insert(ERROR_KIND_KEY, MetadataValue::from_static("quorum"));
                status
            }
            RequestError::Unavailable(message) => Status::unavailable(message),
            RequestError::FailedPrecondition(message) => Status::failed_precondition(message),
            RequestError::Internal(message) => Status::internal(message),
        }
    }
}

impl From<crate::store::StoreError> for RequestError {
    fn from(error: crate::store::StoreError) -> RequestError {
        use crate::store::StoreError;
        match error {
            StoreError::TooManySiblings { .. } | StoreError::StateTooLarge { .. } => {
                RequestError::FailedPrecondition(error.to_string())
            }
            StoreError::Epoch(_) => RequestError::Unavailable(format!(
                "{error}; send the put to another replica of the key"
            )),
            StoreError::Storage(_) | StoreError::Pool(_) => {
                RequestError::Internal(error.to_string())
            }
        }
    }
}
