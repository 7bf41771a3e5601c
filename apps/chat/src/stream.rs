//! WebSocket stream of a channel's new messages.
//!
//! The stream polls the channel's buckets: at once when this instance
//! stored a message in the channel, and every [`POLL_INTERVAL`] for
//! messages stored by other instances. Each poll rereads the ids of the
//! last [`LOOKBACK`] and sends those it has not sent yet, so a message whose
//! append finished after a newer one was sent still arrives. Every message
//! is sent once per connection, but such a late message arrives out of id
//! order.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{Message as Frame, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use kv_apps_common::ids::{Clock, SystemClock, EPOCH_MS, SEQUENCE_BITS, WORKER_BITS};
use serde::Deserialize;
use tokio::sync::broadcast;

use crate::api::{load_channel, parse_id, ApiError, AppState};
use crate::model::Channel;
use crate::store::StoreError;

/// Period of the poll for messages stored by other instances.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Age of the oldest message id that each poll reads again. An append
/// starts no new attempt after 20 s of retries, and one attempt lasts at
/// most the client's 10 s request timeout, so 60 s covers every append.
const LOOKBACK: Duration = Duration::from_secs(60);
/// Ids read per bucket walk.
const PAGE_IDS: usize = 200;

#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    after: Option<String>,
}

/// Upgrades to a WebSocket that sends each new message of the channel as a
/// JSON text frame. Without `after` the stream starts after the newest
/// message at connect time.
pub async fn stream(
    State(state): State<Arc<AppState>>,
    Path(channel_id): Path<String>,
    query: Result<Query<StreamQuery>, QueryRejection>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let channel = load_channel(&state, &channel_id).await?;
    let after = match query.after.as_deref() {
        None | Some("") => {
            let newest = state.store.history_before(&channel, None, 1).await?;
            newest
                .first()
                .map(|message| message.message_id)
                .unwrap_or(0)
        }
        Some(text) => parse_id(text, "after")?,
    };
    let appended = state.appended.subscribe();
    Ok(upgrade.on_upgrade(move |socket| async move {
        let channel_id = channel.channel_id;
        tracing::info!(channel_id, after, "stream opened");
        match run_stream(socket, state, channel, after, appended).await {
            Ok(()) => tracing::info!(channel_id, "stream closed"),
            Err(error) => tracing::warn!(channel_id, %error, "stream ended by an error"),
        }
    }))
}

/// Returns the smallest id that a generator can issue at `unix_ms`.
fn first_id_at(unix_ms: u64) -> u64 {
    unix_ms.saturating_sub(EPOCH_MS) << (WORKER_BITS + SEQUENCE_BITS)
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("WebSocket failed: {0}")]
    Socket(#[from] axum::Error),
}

async fn run_stream(
    mut socket: WebSocket,
    state: Arc<AppState>,
    channel: Arc<Channel>,
    after: u64,
    mut appended: broadcast::Receiver<u64>,
) -> Result<(), StreamError> {
    // Ids sent on this connection that later polls may read again.
    let mut sent = BTreeSet::new();
    // The first poll reads everything after `after`; later ones only the
    // lookback window.
    let mut lower = after;
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    let mut shutdown = state.shutdown.clone();
    'stream: loop {
        send_new_messages(&mut socket, &state, &channel, lower, &mut sent).await?;
        let window_start = first_id_at(
            SystemClock
                .now_ms()
                .saturating_sub(LOOKBACK.as_millis() as u64),
        );
        lower = after.max(window_start);
        sent = sent.split_off(&lower);

        // Waits for the next tick, a notice for this channel or the end of
        // the connection.
        loop {
            tokio::select! {
                _ = ticker.tick() => break,
                _ = shutdown.wait_for(|stopping| *stopping) => break 'stream,
                notice = appended.recv() => match notice {
                    Ok(channel_id) if channel_id == channel.channel_id => break,
                    Ok(_) => {}
                    // A lagged receiver missed notices, so it polls now.
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                frame = socket.recv() => match frame {
                    None | Some(Ok(Frame::Close(_))) => return Ok(()),
                    Some(Err(error)) => return Err(StreamError::Socket(error)),
                    // The WebSocket layer replies to pings, and other frames
                    // from the client are ignored.
                    Some(Ok(_)) => {}
                },
            }
        }
    }
    socket.send(Frame::Close(None)).await?;
    Ok(())
}

/// Sends every message above `lower` that is not in `sent`, in id order,
/// and records it in `sent`.
async fn send_new_messages(
    socket: &mut WebSocket,
    state: &AppState,
    channel: &Channel,
    lower: u64,
    sent: &mut BTreeSet<u64>,
) -> Result<(), StreamError> {
    let mut cursor = lower;
    loop {
        let ids = state.store.ids_after(channel, cursor, PAGE_IDS).await?;
        let Some(&last) = ids.last() else {
            return Ok(());
        };
        let unsent: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| !sent.contains(id))
            .collect();
        let messages = state
            .store
            .fetch_messages(channel.channel_id, &unsent)
            .await?;
        for message in messages {
            let text = serde_json::to_string(&message).expect("a message encodes");
            socket.send(Frame::Text(text.into())).await?;
            sent.insert(message.message_id);
        }
        if ids.len() < PAGE_IDS {
            return Ok(());
        }
        cursor = last;
    }
}
