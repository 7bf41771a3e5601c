//! [`Engine`] on fjall 3, an LSM tree with one write-ahead journal shared by
//! all keyspaces.
//!
//! A write is one fjall write batch, which is atomic across keyspaces and is
//! handed to the operating system before `write` returns (fjall's default
//! `manual_journal_persist(false)`), so it survives a kill of the process.
//! [`Engine::flush`] is `Database::persist(SyncAll)`, an `fsync` of the
//! journal, which also makes it survive a machine crash. fjall poisons the
//! database after a failed flush, so every later write and flush fails too.

use std::ops::Bound;
use std::path::{Path, PathBuf};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::lock::DirLock;
use crate::{checked_end, Engine, EngineKind, Entry, Space, StorageError, WriteOp};

pub(crate) struct FjallEngine {
    // Fields drop in order: the database closes before the directory lock is released.
    db: Database,
    keyspaces: [Keyspace; 4],
    path: PathBuf,
    _lock: DirLock,
}

impl FjallEngine {
    pub(crate) fn open(path: &Path, lock: DirLock) -> Result<FjallEngine, StorageError> {
        let db = Database::builder(path)
            .open()
            .map_err(|source| engine_error("open database", path, source))?;
        let keyspaces = crate::open_per_space(|space| {
            db.keyspace(space.name(), KeyspaceCreateOptions::default)
                .map_err(|source| engine_error("open keyspace", path, source))
        })?;
        Ok(FjallEngine {
            db,
            keyspaces,
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    fn keyspace(&self, space: Space) -> &Keyspace {
        &self.keyspaces[space.index()]
    }

    fn error(&self, operation: &'static str, source: fjall::Error) -> StorageError {
        engine_error(operation, &self.path, source)
    }
}

fn engine_error(operation: &'static str, path: &Path, source: fjall::Error) -> StorageError {
    match source {
        fjall::Error::Locked => StorageError::Locked {
            path: path.to_path_buf(),
        },
        source => StorageError::Engine {
            engine: EngineKind::Fjall,
            operation,
            path: path.to_path_buf(),
            source: Box::new(source),
        },
    }
}

impl Engine for FjallEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Fjall
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let value = self
            .keyspace(space)
            .get(key)
            .map_err(|e| self.error("read a key", e))?;
        Ok(value.map(|value| value.to_vec()))
    }

    fn write(&self, ops: &[WriteOp]) -> Result<(), StorageError> {
        let mut batch = self.db.batch();
        for op in ops {
            let keyspace = self.keyspace(op.space);
            match &op.value {
                Some(value) => batch.insert(keyspace, op.key.as_slice(), value.as_slice()),
                None => batch.remove(keyspace, op.key.as_slice()),
            }
        }
        batch.commit().map_err(|e| self.error("write a batch", e))
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
        let end = match end {
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        let mut entries = Vec::new();
        for guard in self
            .keyspace(space)
            .range::<&[u8], _>((Bound::Included(start), end))
        {
            if entries.len() >= limit {
                break;
            }
            let (key, value) = guard
                .into_inner()
                .map_err(|e| self.error("scan a range", e))?;
            entries.push((key.to_vec(), value.to_vec()));
        }
        Ok(entries)
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.db
            .persist(PersistMode::SyncAll)
            .map_err(|e| self.error("fsync the journal", e))
    }

    fn is_empty(&self, space: Space) -> Result<bool, StorageError> {
        self.keyspace(space)
            .is_empty()
            .map_err(|e| self.error("check for keys", e))
    }
}
