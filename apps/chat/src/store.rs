//! Storage of channels, messages, history buckets and read cursors in
//! ringkv, and how siblings of each key are resolved.
//!
//! Keys (ids in decimal):
//! - `chat/channel/<channel_id>`: the channel record (JSON), written once.
//! - `chat/ch/<channel_id>/msg/<message_id>`: one message (JSON), written
//!   once before its id is listed in a bucket.
//! - `chat/ch/<channel_id>/buckets`: JSON array of the start times of the
//!   channel's non-empty buckets; siblings merge by set union. NOTE: it
//!   grows by one entry per active bucket and every page read fetches it
//!   whole (about 120 KiB per channel and year with one-hour buckets).
//! - `chat/ch/<channel_id>/bucket/<bucket_start_ms>`: JSON array of the ids
//!   of the messages created in `[start, start + bucket_ms)`. Siblings merge
//!   by set union, so concurrent appends from several app instances keep
//!   every id exactly once.
//! - `chat/ch/<channel_id>/read/<user_id>`: the user's last read message
//!   id; siblings merge by maximum.
//!
//! Every write uses a strict quorum (W=2 of the key's three replicas) and
//! every read the cluster's R=2, so a read sees every write acknowledged
//! before it started.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::stream::{self, StreamExt, TryStreamExt};
use kv_apps_common::retry::{backoff_or_fail, with_retries};
use kv_client::{Client, WriteOptions};

use crate::model::{Channel, Message};
use kv_apps_common::ids::id_timestamp_ms;

/// Read-merge-write rounds that only collapse siblings left by concurrent
/// writers, after the value itself was written.
const MAX_COLLAPSE_ROUNDS: u32 = 3;
/// Message bodies fetched at once for one page.
const BODY_FETCH_CONCURRENCY: usize = 8;
/// Entries of the in-memory caches before they are cleared.
const CACHE_CAPACITY: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cluster request failed: {0}")]
    Cluster(#[from] kv_client::Error),
    /// A stored value does not decode, or a listed message has no body.
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

pub fn channel_key(channel_id: u64) -> String {
    format!("chat/channel/{channel_id}")
}

pub fn message_key(channel_id: u64, message_id: u64) -> String {
    format!("chat/ch/{channel_id}/msg/{message_id}")
}

pub fn bucket_index_key(channel_id: u64) -> String {
    format!("chat/ch/{channel_id}/buckets")
}

pub fn bucket_key(channel_id: u64, bucket_start_ms: u64) -> String {
    format!("chat/ch/{channel_id}/bucket/{bucket_start_ms}")
}

pub fn read_cursor_key(channel_id: u64, user_id: &str) -> String {
    format!("chat/ch/{channel_id}/read/{user_id}")
}

/// Returns the start of the bucket that contains `message_id`.
pub fn bucket_of(message_id: u64, bucket_ms: u64) -> u64 {
    let timestamp = id_timestamp_ms(message_id);
    timestamp - timestamp % bucket_ms.max(1)
}

/// Merges the siblings of an id set by union. A sibling that does not
/// decode is skipped and counted in the second value.
pub fn merge_id_sets(siblings: &[Vec<u8>]) -> (BTreeSet<u64>, usize) {
    let mut merged = BTreeSet::new();
    let mut undecodable = 0;
    for sibling in siblings {
        match serde_json::from_slice::<Vec<u64>>(sibling) {
            Ok(ids) => merged.extend(ids),
            Err(_) => undecodable += 1,
        }
    }
    (merged, undecodable)
}

/// Merges the siblings of a read cursor by maximum; undecodable siblings
/// count as 0.
pub fn merge_cursor(siblings: &[Vec<u8>]) -> u64 {
    siblings
        .iter()
        .filter_map(|sibling| {
            std::str::from_utf8(sibling)
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap_or(0)
}

fn encode_id_set(ids: &BTreeSet<u64>) -> Vec<u8> {
    serde_json::to_vec(&ids.iter().collect::<Vec<_>>()).expect("a list of integers encodes")
}

fn strict_write() -> WriteOptions {
    WriteOptions {
        w: None,
        strict_quorum: true,
    }
}

/// The chat data in the cluster, shared by every request handler.
pub struct ChatStore {
    client: Client,
    /// Channel records by id; they never change once written.
    channels: Mutex<HashMap<u64, Arc<Channel>>>,
    /// `(channel, bucket start)` pairs known to be in the bucket index, so
    /// appends skip the index update.
    indexed_buckets: Mutex<HashSet<(u64, u64)>>,
}

impl ChatStore {
    pub fn new(client: Client) -> ChatStore {
        ChatStore {
            client,
            channels: Mutex::new(HashMap::new()),
            indexed_buckets: Mutex::new(HashSet::new()),
        }
    }

    /// Writes a new channel record.
    pub async fn create_channel(&self, channel: Channel) -> Result<Arc<Channel>, StoreError> {
        let key = channel_key(channel.channel_id);
        let value = serde_json::to_vec(&channel).expect("a channel encodes");
        // A blind put of an immutable value: a retry after an ambiguous
        // failure at worst adds an identical sibling.
        with_retries(&key, || {
            self.client
                .put_with(&key, value.clone(), None, strict_write())
        })
        .await?;
        let channel = Arc::new(channel);
        self.cache_channel(channel.clone());
        Ok(channel)
    }

    /// Reads a channel record, or `None` when the channel does not exist.
    pub async fn channel(&self, channel_id: u64) -> Result<Option<Arc<Channel>>, StoreError> {
        if let Some(channel) = self.lock_channels().get(&channel_id) {
            return Ok(Some(channel.clone()));
        }
        let key = channel_key(channel_id);
        let read = self.client.get(&key).await?;
        if read.is_missing() {
            return Ok(None);
        }
        // Siblings of a channel record are identical copies from retries.
        let channel = read
            .values
            .iter()
            .find_map(|value| serde_json::from_slice::<Channel>(value).ok())
            .ok_or_else(|| StoreError::Inconsistent(format!("{key} does not decode")))?;
        let channel = Arc::new(channel);
        self.cache_channel(channel.clone());
        Ok(Some(channel))
    }

    /// Stores a message and lists its id in its bucket.
    ///
    /// The body is written first and the id listed last, so a listed id
    /// always has a body. Every step is idempotent (the id is fixed before
    /// the first attempt and sets merge by union), so retries after
    /// ambiguous failures never duplicate the message.
    pub async fn append_message(
        &self,
        channel: &Channel,
        message: &Message,
    ) -> Result<(), StoreError> {
        let key = message_key(channel.channel_id, message.message_id);
        let body = serde_json::to_vec(message).expect("a message encodes");
        with_retries(&key, || {
            self.client
                .put_with(&key, body.clone(), None, strict_write())
        })
        .await?;

        let bucket = bucket_of(message.message_id, channel.bucket_ms);
        let indexed = self.lock_indexed().contains(&(channel.channel_id, bucket));
        if !indexed {
            self.add_to_set(&bucket_index_key(channel.channel_id), bucket)
                .await?;
            let mut known = self.lock_indexed();
            if known.len() >= CACHE_CAPACITY {
                known.clear();
            }
            known.insert((channel.channel_id, bucket));
        }

        self.add_to_set(&bucket_key(channel.channel_id, bucket), message.message_id)
            .await
    }

    /// Returns up to `limit` messages with ids below `before` (all when
    /// `None`), newest first.
    pub async fn history_before(
        &self,
        channel: &Channel,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let upper = before.unwrap_or(u64::MAX);
        let last_bucket = match before {
            Some(id) => bucket_of(id, channel.bucket_ms),
            None => u64::MAX,
        };
        let buckets = self.read_set(&bucket_index_key(channel.channel_id)).await?;

        let mut ids = Vec::with_capacity(limit);
        for bucket in buckets.range(..=last_bucket).rev() {
            let listed = self
                .read_set(&bucket_key(channel.channel_id, *bucket))
                .await?;
            ids.extend(listed.range(..upper).rev().take(limit - ids.len()));
            if ids.len() >= limit {
                break;
            }
        }
        self.fetch_messages(channel.channel_id, &ids).await
    }

    /// Returns up to `limit` messages with ids above `after`, oldest first.
    pub async fn messages_after(
        &self,
        channel: &Channel,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let ids = self.ids_after(channel, after, limit).await?;
        self.fetch_messages(channel.channel_id, &ids).await
    }

    /// Returns up to `limit` message ids above `after`, in increasing order.
    pub async fn ids_after(
        &self,
        channel: &Channel,
        after: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let first_bucket = bucket_of(after, channel.bucket_ms);
        let buckets = self.read_set(&bucket_index_key(channel.channel_id)).await?;

        let mut ids = Vec::with_capacity(limit);
        for bucket in buckets.range(first_bucket..) {
            let listed = self
                .read_set(&bucket_key(channel.channel_id, *bucket))
                .await?;
            let newer =
                listed.range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded));
            ids.extend(newer.take(limit - ids.len()));
            if ids.len() >= limit {
                break;
            }
        }
        Ok(ids)
    }

    /// Reads a user's read cursor; 0 when the user has read nothing.
    pub async fn read_cursor(&self, channel_id: u64, user_id: &str) -> Result<u64, StoreError> {
        let read = self
            .client
            .get(read_cursor_key(channel_id, user_id))
            .await?;
        Ok(merge_cursor(&read.values))
    }

    /// Moves a user's read cursor forward to `message_id`; a lower id
    /// leaves it unchanged. Returns the cursor after the update.
    pub async fn advance_read_cursor(
        &self,
        channel_id: u64,
        user_id: &str,
        message_id: u64,
    ) -> Result<u64, StoreError> {
        let key = read_cursor_key(channel_id, user_id);
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = async {
                let read = self.client.get(&key).await?;
                let current = merge_cursor(&read.values);
                let target = current.max(message_id);
                if target == current && read.values.len() == 1 {
                    return Ok((target, true));
                }
                let written = self
                    .client
                    .put_with(
                        &key,
                        target.to_string(),
                        Some(&read.context),
                        strict_write(),
                    )
                    .await?;
                Ok::<_, kv_client::Error>((target, written.siblings.is_empty()))
            }
            .await;
            match outcome {
                Ok((target, true)) => return Ok(target),
                // A concurrent update left a sibling: merge again.
                Ok((target, false)) if attempt >= MAX_COLLAPSE_ROUNDS => return Ok(target),
                Ok((_, false)) => continue,
                Err(error) => backoff_or_fail(&key, error, started, attempt).await?,
            }
        }
    }

    /// Reads an id set, merging siblings; when there are several, writes
    /// the union back so later reads find one value.
    async fn read_set(&self, key: &str) -> Result<BTreeSet<u64>, StoreError> {
        let read = self.client.get(key).await?;
        let (merged, undecodable) = merge_id_sets(&read.values);
        if undecodable > 0 {
            tracing::warn!(
                key,
                undecodable,
                "skipped id-set siblings that do not decode"
            );
        }
        if read.values.len() > 1 {
            let written = self
                .client
                .put_with(
                    key,
                    encode_id_set(&merged),
                    Some(&read.context),
                    strict_write(),
                )
                .await;
            if let Err(error) = written {
                // The siblings stay; the next read or append merges them.
                tracing::warn!(key, %error, "failed to write back merged siblings");
            }
        }
        Ok(merged)
    }

    /// Adds `id` to the id set at `key` by read, union and write with the
    /// read context; repeats on conflicts and retryable errors.
    async fn add_to_set(&self, key: &str, id: u64) -> Result<(), StoreError> {
        let started = Instant::now();
        let mut attempt = 0;
        let mut written = false;
        loop {
            attempt += 1;
            let outcome = self.add_to_set_once(key, id).await;
            match outcome {
                Ok(SetWrite::Done) => return Ok(()),
                Ok(SetWrite::Siblings) => {
                    // The id is stored; later rounds only collapse siblings.
                    written = true;
                    if attempt >= MAX_COLLAPSE_ROUNDS {
                        return Ok(());
                    }
                }
                Err(error) if written => {
                    tracing::warn!(key, %error, "failed to collapse siblings after an append");
                    return Ok(());
                }
                Err(error) => backoff_or_fail(key, error, started, attempt).await?,
            }
        }
    }

    async fn add_to_set_once(&self, key: &str, id: u64) -> Result<SetWrite, kv_client::Error> {
        let read = self.client.get(key).await?;
        let (mut merged, undecodable) = merge_id_sets(&read.values);
        if undecodable > 0 {
            tracing::warn!(
                key,
                undecodable,
                "skipped id-set siblings that do not decode"
            );
        }
        let added = merged.insert(id);
        if !added && read.values.len() == 1 {
            return Ok(SetWrite::Done);
        }
        let written = self
            .client
            .put_with(
                key,
                encode_id_set(&merged),
                Some(&read.context),
                strict_write(),
            )
            .await?;
        if written.siblings.is_empty() {
            Ok(SetWrite::Done)
        } else {
            Ok(SetWrite::Siblings)
        }
    }

    /// Reads the bodies of `ids`, keeping their order.
    pub async fn fetch_messages(
        &self,
        channel_id: u64,
        ids: &[u64],
    ) -> Result<Vec<Message>, StoreError> {
        stream::iter(ids.iter().copied())
            .map(|id| self.fetch_message(channel_id, id))
            .buffered(BODY_FETCH_CONCURRENCY)
            .try_collect()
            .await
    }

    async fn fetch_message(&self, channel_id: u64, message_id: u64) -> Result<Message, StoreError> {
        let key = message_key(channel_id, message_id);
        let read = self.client.get(&key).await?;
        // Siblings of a body are identical copies from retries.
        read.values
            .iter()
            .find_map(|value| serde_json::from_slice::<Message>(value).ok())
            .ok_or_else(|| {
                StoreError::Inconsistent(format!(
                    "message {message_id} is listed but {key} has no readable body"
                ))
            })
    }

    fn cache_channel(&self, channel: Arc<Channel>) {
        let mut channels = self.lock_channels();
        if channels.len() >= CACHE_CAPACITY {
            channels.clear();
        }
        channels.insert(channel.channel_id, channel);
    }

    fn lock_channels(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Channel>>> {
        self.channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_indexed(&self) -> std::sync::MutexGuard<'_, HashSet<(u64, u64)>> {
        self.indexed_buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

enum SetWrite {
    /// The set contains the id in a single value.
    Done,
    /// The set contains the id, next to siblings of concurrent writers.
    Siblings,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_sets_merge_by_union() {
        let siblings = vec![b"[1,3,5]".to_vec(), b"[2,3,6]".to_vec(), b"[]".to_vec()];
        let (merged, undecodable) = merge_id_sets(&siblings);
        assert_eq!(merged.into_iter().collect::<Vec<_>>(), vec![1, 2, 3, 5, 6]);
        assert_eq!(undecodable, 0);
    }

    #[test]
    fn id_set_merge_skips_garbage() {
        let siblings = vec![b"[1]".to_vec(), b"not json".to_vec()];
        let (merged, undecodable) = merge_id_sets(&siblings);
        assert_eq!(merged.into_iter().collect::<Vec<_>>(), vec![1]);
        assert_eq!(undecodable, 1);
    }

    #[test]
    fn cursor_merges_by_maximum() {
        assert_eq!(merge_cursor(&[]), 0);
        assert_eq!(
            merge_cursor(&[b"5".to_vec(), b"9".to_vec(), b"x".to_vec()]),
            9
        );
    }

    #[test]
    fn bucket_start_is_aligned() {
        let id = 123_456_789_u64 << 22;
        let start = bucket_of(id, 3_600_000);
        assert_eq!(start % 3_600_000, 0);
        assert!(start <= id_timestamp_ms(id));
        assert!(id_timestamp_ms(id) < start + 3_600_000);
    }
}
