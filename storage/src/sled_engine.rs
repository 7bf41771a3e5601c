//! [`Engine`] on sled 0.34, with one sled tree per space.
//!
//! A write of a single space is one `Tree::apply_batch`, and a write spanning
//! several spaces is one sled transaction over all trees. Both are atomic.
//! [`Engine::flush`] is `Db::flush`.
//!
//! Known limits of sled 0.34.7 (the last release, 2021): its flush uses
//! `sync_file_range`, which flushes neither the disk's write cache nor file
//! metadata, so a machine crash can lose flushed writes; and there are open
//! reports of corruption on restart after an abrupt stop.

use std::path::{Path, PathBuf};

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{Batch, Db, Tree};

use crate::lock::DirLock;
use crate::{checked_end, Engine, EngineKind, Entry, Space, StorageError, WriteOp};

pub(crate) struct SledEngine {
    // Fields drop in order: the database closes before the directory lock is released.
    db: Db,
    trees: [Tree; 4],
    path: PathBuf,
    _lock: DirLock,
}

impl SledEngine {
    pub(crate) fn open(path: &Path, lock: DirLock) -> Result<SledEngine, StorageError> {
        // The directory lock already keeps other processes out, so a sled
        // lock error here means an earlier handle in this process is still
        // shutting down: sled releases its file lock from a background
        // thread after the last handle is dropped. Retry for a short while.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let db = loop {
            match sled::Config::new().path(path).open() {
                Ok(db) => break db,
                // sled 0.34 reports the lock failure as an error of kind
                // Other whose text starts with "could not acquire lock".
                Err(sled::Error::Io(error))
                    if error.to_string().starts_with("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(source) => return Err(engine_error("open database", path, source)),
            }
        };
        let trees = crate::open_per_space(|space| {
            db.open_tree(space.name())
                .map_err(|source| engine_error("open tree", path, source))
        })?;
        Ok(SledEngine {
            db,
            trees,
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    fn tree(&self, space: Space) -> &Tree {
        &self.trees[space.index()]
    }

    fn error(&self, operation: &'static str, source: sled::Error) -> StorageError {
        engine_error(operation, &self.path, source)
    }

    /// Writes ops of several spaces in one transaction over all trees.
    fn write_transaction(&self, ops: &[WriteOp]) -> Result<(), StorageError> {
        let trees: Vec<&Tree> = self.trees.iter().collect();
        let result: Result<(), TransactionError<()>> =
            sled::Transactional::transaction(trees.as_slice(), |views| {
                for op in ops {
                    let view = &views[op.space.index()];
                    match &op.value {
                        Some(value) => {
                            view.insert(op.key.as_slice(), value.as_slice())?;
                        }
                        None => {
                            view.remove(op.key.as_slice())?;
                        }
                    }
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::Storage(source)) => {
                Err(self.error("write a transaction", source))
            }
            Err(TransactionError::Abort(())) => unreachable!("the transaction never aborts"),
        }
    }
}

fn engine_error(operation: &'static str, path: &Path, source: sled::Error) -> StorageError {
    StorageError::Engine {
        engine: EngineKind::Sled,
        operation,
        path: path.to_path_buf(),
        source: Box::new(source),
    }
}

impl Engine for SledEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Sled
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let value = self
            .tree(space)
            .get(key)
            .map_err(|e| self.error("read a key", e))?;
        Ok(value.map(|value| value.to_vec()))
    }

    fn write(&self, ops: &[WriteOp]) -> Result<(), StorageError> {
        let Some(first) = ops.first() else {
            return Ok(());
        };
        if ops.iter().any(|op| op.space != first.space) {
            return self.write_transaction(ops);
        }
        let mut batch = Batch::default();
        for op in ops {
            match &op.value {
                Some(value) => batch.insert(op.key.as_slice(), value.as_slice()),
                None => batch.remove(op.key.as_slice()),
            }
        }
        self.tree(first.space)
            .apply_batch(batch)
            .map_err(|e| self.error("write a batch", e))
    }

    fn scan(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        let Some(end) = checked_end(start, end) else {
            return Ok(Vec::new());
        };
        let tree = self.tree(space);
        let iter = match end {
            Some(end) => tree.range(start..end),
            None => tree.range(start..),
        };
        let mut entries = Vec::new();
        for entry in iter {
            if entries.len() >= limit {
                break;
            }
            let (key, value) = entry.map_err(|e| self.error("scan a range", e))?;
            entries.push((key.to_vec(), value.to_vec()));
        }
        Ok(entries)
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.db
            .flush()
            .map(drop)
            .map_err(|e| self.error("flush", e))
    }

    fn is_empty(&self, space: Space) -> Result<bool, StorageError> {
        let first = self
            .tree(space)
            .first()
            .map_err(|e| self.error("check for keys", e))?;
        Ok(first.is_none())
    }
}
