//! Storage engines of ringkv behind one trait, checksummed records and group commit.
//!
//! A node stores everything through [`Engine`]: point reads, atomic batches of
//! writes, ordered range scans and a durable flush, in four separate
//! keyspaces ([`Space`]). Two engines implement it:
//!
//! - **fjall** (the default), an LSM tree whose flush is an `fsync` of its
//!   journal;
//! - **sled** 0.34, kept for compatibility. Its flush uses `sync_file_range`,
//!   which does not flush the disk cache or file metadata, and the crate has
//!   had no release since 2021.
//!
//! Invariants:
//! - a [`Engine::write`] is atomic across spaces but not durable until a later
//!   [`Engine::flush`] returns; [`GroupCommit`] shares one flush among
//!   concurrent writers;
//! - [`open`] takes an exclusive lock on the data directory (`LOCK` file).
//!   A second open fails with [`StorageError::Locked`], so two processes never
//!   share the engine files;
//! - values are opaque here; callers frame them with [`record`] so that
//!   corruption is detected on read.

mod error;
mod fjall_engine;
mod group_commit;
mod lock;
pub mod record;
mod sled_engine;

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

pub use error::{EngineSource, ParseSettingError, StorageError};
pub use group_commit::{GroupCommit, SyncMode};
pub use record::RecordError;

/// Keyspace of an engine. Each space is a separate fjall keyspace or sled tree,
/// so scans of one never see keys of another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Space {
    /// Replicated key states.
    Data,
    /// Hints held for other nodes (sloppy quorum).
    Hints,
    /// Durable tombstone purge intents.
    Intents,
    /// Node metadata: id, generation, epoch reservations, ring.
    Meta,
}

impl Space {
    /// Every space, in a fixed order.
    pub const ALL: [Space; 4] = [Space::Data, Space::Hints, Space::Intents, Space::Meta];

    /// Name of the keyspace or tree on disk. Changing it orphans stored data.
    pub fn name(self) -> &'static str {
        match self {
            Space::Data => "data",
            Space::Hints => "hints",
            Space::Intents => "intents",
            Space::Meta => "meta",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Space {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Storage engine implementation, chosen with the node's `--engine` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum EngineKind {
    /// fjall 3 LSM tree; its flush is a real `fsync`.
    #[default]
    Fjall,
    /// sled 0.34 B-tree.
    Sled,
}

impl EngineKind {
    /// Every engine, for tests and help text.
    pub const ALL: [EngineKind; 2] = [EngineKind::Fjall, EngineKind::Sled];

    /// Name used on the command line and as the subdirectory of the data directory.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Fjall => "fjall",
            EngineKind::Sled => "sled",
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for EngineKind {
    type Err = ParseSettingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EngineKind::ALL
            .into_iter()
            .find(|kind| kind.name() == s)
            .ok_or_else(|| ParseSettingError::UnknownEngine { name: s.to_owned() })
    }
}

/// One put or delete of an atomic [`Engine::write`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOp {
    pub space: Space,
    pub key: Vec<u8>,
    /// New value, or `None` to delete the key.
    pub value: Option<Vec<u8>>,
}

impl WriteOp {
    /// Builds a put of `value` at `key`.
    pub fn put(space: Space, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> WriteOp {
        WriteOp {
            space,
            key: key.into(),
            value: Some(value.into()),
        }
    }

    /// Builds a delete of `key`.
    pub fn delete(space: Space, key: impl Into<Vec<u8>>) -> WriteOp {
        WriteOp {
            space,
            key: key.into(),
            value: None,
        }
    }
}

/// Key and value returned by [`Engine::scan`].
pub type Entry = (Vec<u8>, Vec<u8>);

/// Ordered key-value store with separate spaces, atomic batches and a durable flush.
pub trait Engine: Send + Sync + 'static {
    /// Engine implementation behind this handle.
    fn kind(&self) -> EngineKind;

    /// Returns the value stored at `key`, or `None` if the key is absent.
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Applies the ops atomically; not durable until the next flush.
    /// Ops apply in order, so a later op on the same key wins.
    fn write(&self, ops: &[WriteOp]) -> Result<(), StorageError>;

    /// Entries with start <= key < end (end None = to the end of the space), ascending, at most `limit`.
    fn scan(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StorageError>;

    /// Makes every write applied before the call durable on disk (a real fsync for fjall).
    fn flush(&self) -> Result<(), StorageError>;

    /// Returns whether `space` contains no key.
    fn is_empty(&self, space: Space) -> Result<bool, StorageError>;
}

/// Opens one engine handle (keyspace or tree) per space, indexed like
/// `Space::ALL`.
pub(crate) fn open_per_space<T, E>(open: impl FnMut(Space) -> Result<T, E>) -> Result<[T; 4], E> {
    let [data, hints, intents, meta] = Space::ALL.map(open);
    Ok([data?, hints?, intents?, meta?])
}

/// Opens (creating if needed) the engine of `kind` in `dir`.
///
/// The engine's files go under `dir/fjall` or `dir/sled`, and `dir/LOCK` is
/// locked exclusively until the engine is dropped. A directory that holds
/// only the other engine's files is rejected with
/// [`StorageError::EngineMismatch`] instead of being opened as an empty store.
pub fn open(kind: EngineKind, dir: &Path) -> Result<Arc<dyn Engine>, StorageError> {
    std::fs::create_dir_all(dir).map_err(|source| StorageError::Io {
        operation: "create data directory",
        path: dir.to_path_buf(),
        source,
    })?;
    let lock = lock::DirLock::acquire(dir)?;
    let engine_dir = dir.join(kind.name());
    if !engine_dir.exists() {
        for found in EngineKind::ALL {
            if found != kind && dir.join(found.name()).exists() {
                return Err(StorageError::EngineMismatch {
                    path: dir.to_path_buf(),
                    found,
                    requested: kind,
                });
            }
        }
    }
    let engine: Arc<dyn Engine> = match kind {
        EngineKind::Fjall => Arc::new(fjall_engine::FjallEngine::open(&engine_dir, lock)?),
        EngineKind::Sled => Arc::new(sled_engine::SledEngine::open(&engine_dir, lock)?),
    };
    tracing::info!(engine = %kind, path = %engine_dir.display(), "opened storage engine");
    Ok(engine)
}

/// Returns `None` when the range `[start, end)` is empty, so engines are never
/// handed an inverted range, whose handling neither fjall nor sled documents.
fn checked_end<'a>(start: &[u8], end: Option<&'a [u8]>) -> Option<Option<&'a [u8]>> {
    match end {
        Some(end) if end <= start => None,
        other => Some(other),
    }
}
