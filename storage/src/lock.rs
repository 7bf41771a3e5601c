//! Exclusive lock on a data directory.
//!
//! The lock is an advisory `flock` on `DIR/LOCK`, released when the
//! [`DirLock`] is dropped or the process dies (also on SIGKILL), so a crashed
//! node never leaves a stale lock behind. Both engines take locks of their
//! own as well; this one gives the same [`StorageError::Locked`] for both.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;

use crate::StorageError;

/// Held lock on a data directory.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    pub(crate) fn acquire(dir: &Path) -> Result<DirLock, StorageError> {
        let path = dir.join("LOCK");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| StorageError::Io {
                operation: "open lock file",
                path: path.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(StorageError::Locked {
                path: dir.to_path_buf(),
            }),
            Err(TryLockError::Error(source)) => Err(StorageError::Io {
                operation: "lock",
                path,
                source,
            }),
        }
    }
}
