//! Per-user change feeds: each change is stored once per recipient in a
//! time bucket of that user's feed, and a bucket index lists the buckets.

use std::collections::BTreeSet;

use kv_apps_common::ids::id_timestamp_ms;

use crate::model::{Change, ChangeBucket, IdSet};
use crate::store::{feed_bucket_key, feed_index_key, DriveStore, StoreError};

/// Width of a feed bucket: one hour, in milliseconds.
pub const FEED_BUCKET_MS: u64 = 3_600_000;

/// Returns the start of the feed bucket that contains change `id`.
pub fn bucket_of(id: u64) -> u64 {
    let timestamp = id_timestamp_ms(id);
    timestamp - timestamp % FEED_BUCKET_MS
}

/// Appends `change` to the feed of every user in `recipients`. The change
/// id is fixed before the first write and buckets merge by union, so
/// retries never list a change twice.
pub async fn record(
    store: &DriveStore,
    recipients: &BTreeSet<String>,
    change: &Change,
) -> Result<(), StoreError> {
    let bucket = bucket_of(change.id);
    for user in recipients {
        store
            .update(&feed_index_key(user), |index: &mut IdSet| {
                index.ids.insert(bucket);
            })
            .await?;
        store
            .update(
                &feed_bucket_key(user, bucket),
                |stored: &mut ChangeBucket| {
                    stored.changes.insert(change.id, change.clone());
                },
            )
            .await?;
    }
    Ok(())
}

/// Returns up to `limit` changes of `user` with ids above `cursor` and
/// issued at or before `visible_until_ms`, oldest first.
pub async fn read(
    store: &DriveStore,
    user: &str,
    cursor: u64,
    visible_until_ms: u64,
    limit: usize,
) -> Result<Vec<Change>, StoreError> {
    let index = store
        .read::<IdSet>(&feed_index_key(user))
        .await?
        .unwrap_or_default();
    let mut changes = Vec::new();
    for bucket in index.ids.range(bucket_of(cursor)..) {
        let stored = store
            .read::<ChangeBucket>(&feed_bucket_key(user, *bucket))
            .await?
            .unwrap_or_default();
        let newer = stored
            .changes
            .range(cursor.saturating_add(1)..)
            .map(|(_, change)| change)
            .take_while(|change| id_timestamp_ms(change.id) <= visible_until_ms);
        for change in newer {
            if changes.len() >= limit {
                return Ok(changes);
            }
            changes.push(change.clone());
        }
    }
    Ok(changes)
}
