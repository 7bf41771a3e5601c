//! Storage of blocks and metadata in ringkv, and the read-merge-write
//! loop that resolves siblings. The key layout is in README.md.
//!
//! Every metadata write uses a strict quorum (W=2 of the key's three
//! replicas) and every read the cluster's R=2, so a read sees every write
//! acknowledged before it started.

use std::time::Instant;

use kv_apps_common::retry::{backoff_or_fail, with_retries};
use kv_client::{Client, WriteOptions};
use sha2::{Digest, Sha256};

use crate::model::Mergeable;

/// Read-merge-write rounds that only collapse siblings left by concurrent
/// writers, after the update itself was written.
const MAX_COLLAPSE_ROUNDS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cluster request failed: {0}")]
    Cluster(#[from] kv_client::Error),
    /// A stored value does not decode, or a listed block is missing.
    #[error("inconsistent data: {0}")]
    Inconsistent(String),
}

impl StoreError {
    /// True when the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Cluster(error) => error.is_retryable(),
            StoreError::Inconsistent(_) => true,
        }
    }
}

pub fn block_key(hash: &str) -> String {
    format!("drive/block/{hash}")
}

/// Key of a folder's entry set; the root folder of `owner` is `""`.
pub fn folder_key(owner: &str, path: &str) -> String {
    format!("drive/folder/{owner}/{path}")
}

pub fn file_key(owner: &str, path: &str) -> String {
    format!("drive/file/{owner}/{path}")
}

pub fn share_key(owner: &str, path: &str) -> String {
    format!("drive/share/{owner}/{path}")
}

pub fn feed_index_key(user: &str) -> String {
    format!("drive/changes/{user}/buckets")
}

pub fn feed_bucket_key(user: &str, bucket_start_ms: u64) -> String {
    format!("drive/changes/{user}/bucket/{bucket_start_ms}")
}

/// Returns the lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn strict_write() -> WriteOptions {
    WriteOptions {
        w: None,
        strict_quorum: true,
    }
}

/// Whether a block upload wrote the block or found it stored already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockWrite {
    Written,
    Reused,
}

/// The drive data in the cluster, shared by every request handler.
pub struct DriveStore {
    client: Client,
}

impl DriveStore {
    pub fn new(client: Client) -> DriveStore {
        DriveStore { client }
    }

    /// Stores a block under its SHA-256 unless a value is stored there
    /// already. Two uploads of one new block at the same moment may both
    /// write it, which leaves identical siblings that reads ignore.
    pub async fn put_block(&self, hash: &str, data: Vec<u8>) -> Result<BlockWrite, StoreError> {
        let key = block_key(hash);
        with_retries(&key, || async {
            let read = self.client.get(&key).await?;
            if !read.is_missing() {
                return Ok(BlockWrite::Reused);
            }
            self.client
                .put_with(&key, data.clone(), Some(&read.context), strict_write())
                .await?;
            Ok(BlockWrite::Written)
        })
        .await
        .map_err(StoreError::from)
    }

    /// Reads a block and checks it against its hash.
    pub async fn get_block(&self, hash: &str) -> Result<Vec<u8>, StoreError> {
        let key = block_key(hash);
        let read = with_retries(&key, || self.client.get(&key)).await?;
        // Siblings of a block are copies of the same content.
        read.values
            .into_iter()
            .find(|value| sha256_hex(value) == hash)
            .ok_or_else(|| StoreError::Inconsistent(format!("block {key} is missing or corrupt")))
    }

    /// Reads a metadata value, merging its siblings; `None` when the key
    /// has no value. Several siblings are written back as one.
    pub async fn read<T: Mergeable>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let read = with_retries(key, || self.client.get(key)).await?;
        if read.is_missing() {
            return Ok(None);
        }
        let merged = merge_siblings::<T>(key, &read.values);
        if read.values.len() > 1 {
            let encoded = serde_json::to_vec(&merged).expect("metadata encodes");
            let written = self
                .client
                .put_with(key, encoded, Some(&read.context), strict_write())
                .await;
            if let Err(error) = written {
                // The siblings stay; the next read or update merges them.
                tracing::warn!(key, %error, "failed to write back merged siblings");
            }
        }
        Ok(Some(merged))
    }

    /// Applies `change` to the merged value at `key` and writes the result
    /// with the read context, so concurrent updates become siblings that
    /// the next read merges instead of overwriting each other.
    ///
    /// `change` must be idempotent because it runs again on retries.
    /// Returns the value as written, merged with the siblings of
    /// concurrent writers that the put reported.
    pub async fn update<T, F>(&self, key: &str, mut change: F) -> Result<T, StoreError>
    where
        T: Mergeable + Clone,
        F: FnMut(&mut T),
    {
        let started = Instant::now();
        let mut attempt = 0;
        let mut written: Option<T> = None;
        loop {
            attempt += 1;
            let outcome = self.update_once(key, &mut change).await;
            match outcome {
                Ok((value, true)) => return Ok(value),
                Ok((value, false)) => {
                    // The update is stored; later rounds only collapse
                    // the siblings of concurrent writers.
                    if attempt >= MAX_COLLAPSE_ROUNDS {
                        return Ok(value);
                    }
                    written = Some(value);
                }
                Err(error) => {
                    if let Some(value) = written {
                        tracing::warn!(key, %error, "failed to collapse siblings after an update");
                        return Ok(value);
                    }
                    backoff_or_fail(key, error, started, attempt).await?;
                }
            }
        }
    }

    /// Runs one read-change-write round. The flag is true when no siblings
    /// of concurrent writers remain.
    async fn update_once<T, F>(
        &self,
        key: &str,
        change: &mut F,
    ) -> Result<(T, bool), kv_client::Error>
    where
        T: Mergeable + Clone,
        F: FnMut(&mut T),
    {
        let read = self.client.get(key).await?;
        let mut value = merge_siblings::<T>(key, &read.values);
        let before = serde_json::to_vec(&value).expect("metadata encodes");
        change(&mut value);
        let encoded = serde_json::to_vec(&value).expect("metadata encodes");
        if encoded == before && read.values.len() == 1 {
            return Ok((value, true));
        }
        let written = self
            .client
            .put_with(key, encoded, Some(&read.context), strict_write())
            .await?;
        let settled = written.siblings.is_empty();
        let concurrent = merge_siblings::<T>(key, &written.siblings);
        value.merge(concurrent);
        Ok((value, settled))
    }
}

/// Merges decodable siblings; a sibling that does not decode is skipped
/// and logged.
fn merge_siblings<T: Mergeable>(key: &str, siblings: &[Vec<u8>]) -> T {
    let mut merged = T::default();
    for sibling in siblings {
        match serde_json::from_slice::<T>(sibling) {
            Ok(value) => merged.merge(value),
            Err(error) => tracing::warn!(key, %error, "skipped a sibling that does not decode"),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_empty_input() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
