//! Error types of the storage crate.
//!
//! Every engine failure names the operation and the path it concerned, so a
//! log line is enough to find the broken file. Engine errors keep the original
//! error as their `source`.

use std::path::PathBuf;
use std::sync::Arc;

use crate::EngineKind;

/// Error boxed from an engine library (fjall or sled).
pub type EngineSource = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Failure of a storage operation.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A file-system call made by this crate failed.
    #[error("failed to {operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The engine library returned an error.
    #[error("{engine} engine failed to {operation} in {path}: {source}")]
    Engine {
        engine: EngineKind,
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: EngineSource,
    },

    /// Another process, or another open in this process, has locked the data directory.
    #[error(
        "data directory {path} is locked by another process: \
         is another kv-node running with this data directory?"
    )]
    Locked { path: PathBuf },

    /// The data directory contains another engine's files and none of the requested engine.
    #[error(
        "data directory {path} contains {found} data, but the {requested} engine was requested: \
         start with --engine {found}, or use an empty directory for {requested}"
    )]
    EngineMismatch {
        path: PathBuf,
        found: EngineKind,
        requested: EngineKind,
    },

    /// The group commit flush that covered this write failed, so the write
    /// may not be durable.
    #[error("group commit flush failed, so recent writes may not be durable: {source}")]
    FlushFailed {
        #[source]
        source: Arc<StorageError>,
    },

    /// `durable()` or a flush was requested after `GroupCommit::shutdown`.
    #[error("group commit has been shut down, so no write can be made durable any more")]
    GroupCommitStopped,
}

/// Invalid value for an engine or sync-mode setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseSettingError {
    #[error("unknown storage engine {name:?}: valid engines are \"fjall\" and \"sled\"")]
    UnknownEngine { name: String },

    #[error("unknown sync mode {name:?}: valid sync modes are \"always\" and \"periodic\"")]
    UnknownSyncMode { name: String },
}
