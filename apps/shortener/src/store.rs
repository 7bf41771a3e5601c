//! Key layout of the shortener and how it resolves siblings.
//!
//! | Key | Value |
//! |-----|-------|
//! | `shortener/code/<code>` | JSON [`CodeRecord`]: the long URL of a code; written once |
//! | `shortener/url/<sha256 hex of the long URL>` | JSON [`IndexEntry`]: the canonical code of a long URL |
//! | `shortener/clicks/<code>/<worker id>` | decimal click count of one worker id |
//! | `shortener/clicks/<code>/workers` | JSON array of the worker ids that counted clicks |
//!
//! A code is the base62 form of a snowflake id, so no two instances create
//! the same code and a code record never has siblings. Two instances that
//! shorten one new URL at the same time each create a code and both write
//! the index key, which leaves two sibling entries. Both codes stay valid,
//! and the canonical one is the entry with the smaller id (the older
//! snowflake). Every read of the index resolves siblings that way and writes
//! the winner back with the read's context.

use std::collections::BTreeSet;
use std::sync::Arc;

use kv_client::ids::{Clock, IdError, IdGenerator, SystemClock};
use kv_client::{Client, Context};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::base62;

/// Value of `shortener/code/<code>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeRecord {
    /// Long URL in the normalized form of the `url` crate.
    pub long_url: String,
    /// Snowflake id whose base62 form is the code.
    pub id: u64,
    /// Unix ms when the code was created.
    pub created_ms: u64,
}

/// Value of `shortener/url/<hash>`: one code of the long URL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The short code.
    pub code: String,
    /// Snowflake id of the code; the smallest id among siblings wins.
    pub id: u64,
}

/// Errors of [`Store`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A cluster read or write failed.
    #[error("cluster request on key {key} failed: {source}")]
    Cluster {
        key: String,
        #[source]
        source: kv_client::Error,
    },
    /// The id generator could not issue an id.
    #[error("failed to issue a snowflake id: {0}")]
    Id(#[from] IdError),
}

/// Result of [`Store::shorten`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shortened {
    /// The canonical code of the URL.
    pub code: String,
    /// True when this call created the code.
    pub created: bool,
}

/// Index entries of a long URL read from the cluster, with the context of
/// that read.
#[derive(Clone, Debug)]
pub struct IndexRead {
    /// Valid sibling entries, in the order the cluster returned them.
    pub entries: Vec<IndexEntry>,
    /// Context of the read, to write the resolved entry back.
    pub context: Context,
}

impl IndexRead {
    /// Returns the canonical entry: the one with the smallest id.
    pub fn canonical(&self) -> Option<&IndexEntry> {
        self.entries.iter().min_by_key(|entry| entry.id)
    }
}

/// Returns the code key of `code`.
pub fn code_key(code: &str) -> String {
    format!("shortener/code/{code}")
}

/// Returns the index key of a normalized long URL.
pub fn index_key(long_url: &str) -> String {
    let digest = Sha256::digest(long_url.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    format!("shortener/url/{hex}")
}

/// Returns the click-count key of `code` for `worker_id`.
pub fn clicks_key(code: &str, worker_id: u16) -> String {
    format!("shortener/clicks/{code}/{worker_id}")
}

/// Returns the key that lists the worker ids with clicks of `code`.
pub fn click_workers_key(code: &str) -> String {
    format!("shortener/clicks/{code}/workers")
}

/// Shortener data in the cluster.
#[derive(Clone)]
pub struct Store {
    client: Client,
    generator: Arc<IdGenerator>,
}

impl Store {
    /// Creates a store that issues codes with `generator`.
    pub fn new(client: Client, generator: Arc<IdGenerator>) -> Store {
        Store { client, generator }
    }

    /// Returns the worker id of the code generator.
    pub fn worker_id(&self) -> u16 {
        self.generator.worker_id()
    }

    /// Returns the canonical code of `long_url` (normalized), creating one
    /// when the URL has none yet.
    pub async fn shorten(&self, long_url: &str) -> Result<Shortened, StoreError> {
        let index = self.read_index(long_url).await?;
        if let Some(canonical) = index.canonical() {
            return Ok(Shortened {
                code: canonical.code.clone(),
                created: false,
            });
        }

        let entry = self.create_code(long_url).await?;
        let canonical = self
            .add_index_entry(long_url, &entry, &index.context)
            .await?;
        let created = canonical.id == entry.id;
        Ok(Shortened {
            code: canonical.code,
            created,
        })
    }

    /// Reads the index key of `long_url`. When it has several entries, it
    /// writes the canonical one back alone. A failure of that write is only
    /// logged, because a later read resolves the siblings the same way.
    pub async fn read_index(&self, long_url: &str) -> Result<IndexRead, StoreError> {
        let key = index_key(long_url);
        let read = self
            .client
            .get(&key)
            .await
            .map_err(|source| StoreError::Cluster {
                key: key.clone(),
                source,
            })?;
        let entries = parse_entries(&key, &read.values);
        let index = IndexRead {
            entries,
            context: read.context,
        };

        if read.values.len() > 1 {
            if let Some(canonical) = index.canonical() {
                let value = serde_json::to_vec(canonical).expect("an index entry serializes");
                tracing::info!(
                    %key,
                    siblings = read.values.len(),
                    code = %canonical.code,
                    "resolving index siblings to the smallest code id"
                );
                if let Err(error) = self.client.put(&key, value, Some(&index.context)).await {
                    tracing::warn!(%key, %error, "failed to write back the resolved index entry");
                }
            }
        }
        Ok(index)
    }

    /// Issues a new id and writes the code record of `long_url`. The code
    /// is not yet in the index.
    pub async fn create_code(&self, long_url: &str) -> Result<IndexEntry, StoreError> {
        let id = self.generator.next_id()?;
        let code = base62::encode(id);
        let record = CodeRecord {
            long_url: long_url.to_string(),
            id,
            created_ms: SystemClock.now_ms(),
        };
        let key = code_key(&code);
        let value = serde_json::to_vec(&record).expect("a code record serializes");
        // The id is unique, so the key is new and a blind write replaces
        // nothing.
        self.client
            .put(&key, value, None)
            .await
            .map_err(|source| StoreError::Cluster { key, source })?;
        Ok(IndexEntry { code, id })
    }

    /// Writes `entry` to the index of `long_url` with the context of an
    /// earlier read, and returns the canonical entry. When a concurrent
    /// writer added another entry since that read, the smaller id wins and
    /// is written back.
    pub async fn add_index_entry(
        &self,
        long_url: &str,
        entry: &IndexEntry,
        context: &Context,
    ) -> Result<IndexEntry, StoreError> {
        let key = index_key(long_url);
        let value = serde_json::to_vec(entry).expect("an index entry serializes");
        let written = self
            .client
            .put(&key, value, Some(context))
            .await
            .map_err(|source| StoreError::Cluster {
                key: key.clone(),
                source,
            })?;
        let concurrent = parse_entries(&key, &written.siblings);
        let Some(smallest) = concurrent.iter().min_by_key(|other| other.id) else {
            return Ok(entry.clone());
        };

        let canonical = if smallest.id < entry.id {
            smallest.clone()
        } else {
            entry.clone()
        };
        tracing::info!(
            %key,
            ours = %entry.code,
            canonical = %canonical.code,
            "another instance indexed this URL concurrently"
        );
        let value = serde_json::to_vec(&canonical).expect("an index entry serializes");
        if let Err(error) = self.client.put(&key, value, Some(&written.context)).await {
            tracing::warn!(%key, %error, "failed to write back the resolved index entry");
        }
        Ok(canonical)
    }

    /// Returns the long URL of `code`, or `None` for an unknown code.
    pub async fn resolve(&self, code: &str) -> Result<Option<String>, StoreError> {
        let key = code_key(code);
        let read = self
            .client
            .get(&key)
            .await
            .map_err(|source| StoreError::Cluster {
                key: key.clone(),
                source,
            })?;
        // A code record is written once, so siblings can only be equal
        // copies and the first valid one is returned.
        for value in &read.values {
            match serde_json::from_slice::<CodeRecord>(value) {
                Ok(record) => return Ok(Some(record.long_url)),
                Err(error) => tracing::warn!(%key, %error, "skipping an invalid code record"),
            }
        }
        Ok(None)
    }

    /// Adds `count` clicks of `code` to this worker's click key, and adds
    /// this worker to the code's worker list when `register` is true.
    ///
    /// Only the instance that holds the worker lease writes this key, so
    /// siblings come only from a restart racing an old write. They resolve
    /// to the maximum count.
    pub async fn add_clicks(
        &self,
        code: &str,
        count: u64,
        register: bool,
    ) -> Result<(), StoreError> {
        let worker_id = self.worker_id();
        if register {
            let key = click_workers_key(code);
            self.client
                .update(&key, |siblings| {
                    let mut workers = parse_workers(siblings);
                    if workers.contains(&worker_id) && siblings.len() == 1 {
                        return None;
                    }
                    workers.insert(worker_id);
                    Some(serde_json::to_vec(&workers).expect("a worker list serializes"))
                })
                .await
                .map_err(|source| StoreError::Cluster { key, source })?;
        }

        let key = clicks_key(code, worker_id);
        self.client
            .update(&key, |siblings| {
                let stored = parse_counts(siblings).max().unwrap_or(0);
                Some((stored + count).to_string().into_bytes())
            })
            .await
            .map_err(|source| StoreError::Cluster { key, source })?;
        Ok(())
    }

    /// Returns the stored click count of `code`, summed over worker ids.
    pub async fn stored_clicks(&self, code: &str) -> Result<u64, StoreError> {
        let key = click_workers_key(code);
        let read = self
            .client
            .get(&key)
            .await
            .map_err(|source| StoreError::Cluster {
                key: key.clone(),
                source,
            })?;
        let workers = parse_workers(&read.values);

        let reads = workers.iter().map(|worker_id| {
            let key = clicks_key(code, *worker_id);
            async move {
                let read = self.client.get(&key).await;
                (key, read)
            }
        });
        let mut total = 0;
        for (key, read) in futures::future::join_all(reads).await {
            let read = read.map_err(|source| StoreError::Cluster { key, source })?;
            total += parse_counts(&read.values).max().unwrap_or(0);
        }
        Ok(total)
    }
}

fn parse_entries(key: &str, values: &[Vec<u8>]) -> Vec<IndexEntry> {
    let mut entries = Vec::with_capacity(values.len());
    for value in values {
        match serde_json::from_slice::<IndexEntry>(value) {
            Ok(entry) => entries.push(entry),
            Err(error) => tracing::warn!(%key, %error, "skipping an invalid index entry"),
        }
    }
    entries
}

/// Merges worker lists by union.
fn parse_workers(values: &[Vec<u8>]) -> BTreeSet<u16> {
    values
        .iter()
        .filter_map(|value| serde_json::from_slice::<Vec<u16>>(value).ok())
        .flatten()
        .collect()
}

fn parse_counts(values: &[Vec<u8>]) -> impl Iterator<Item = u64> + '_ {
    values
        .iter()
        .filter_map(|value| std::str::from_utf8(value).ok()?.trim().parse::<u64>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_key_is_sha256_hex() {
        assert_eq!(
            index_key("http://example.com/"),
            "shortener/url/2a1b402420ef46577471cdc7409b0fa2c6a204db316e59ade2d805435489a067"
        );
    }

    #[test]
    fn canonical_is_smallest_id() {
        let index = IndexRead {
            entries: vec![
                IndexEntry {
                    code: "b".into(),
                    id: 20,
                },
                IndexEntry {
                    code: "a".into(),
                    id: 10,
                },
            ],
            context: Context::default(),
        };
        assert_eq!(index.canonical().unwrap().code, "a");
    }

    #[test]
    fn worker_lists_merge_by_union() {
        let siblings = vec![b"[1,3]".to_vec(), b"[2,3]".to_vec(), b"junk".to_vec()];
        let workers: Vec<u16> = parse_workers(&siblings).into_iter().collect();
        assert_eq!(workers, vec![1, 2, 3]);
    }
}
