//! HTTP handlers of the chat API under `/api/v1`.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::model::{
    id_string, normalize_members, validate_content, validate_user_id, Channel, CreateChannel,
    Message, SendMessage, SetReadCursor,
};
use crate::store::{ChatStore, StoreError};
use kv_apps_common::ids::{id_timestamp_ms, IdGenerator};

/// Page size when a request gives no `limit`.
pub const DEFAULT_PAGE_LIMIT: usize = 50;
/// Largest accepted `limit`.
pub const MAX_PAGE_LIMIT: usize = 200;

/// State shared by the handlers.
pub struct AppState {
    pub store: ChatStore,
    pub ids: Arc<IdGenerator>,
    /// Bucket width given to new channels, in milliseconds.
    pub bucket_ms: u64,
    /// Ids of the channels this instance stored a message in, for the
    /// WebSocket streams.
    pub appended: tokio::sync::broadcast::Sender<u64>,
    /// Turns true when the server shuts down, which ends every stream.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/api/v1/channels", post(create_channel))
        .route("/api/v1/channels/{channel_id}", get(get_channel))
        .route(
            "/api/v1/channels/{channel_id}/messages",
            post(send_message).get(history),
        )
        .route(
            "/api/v1/channels/{channel_id}/messages/since",
            get(messages_since),
        )
        .route(
            "/api/v1/channels/{channel_id}/stream",
            get(crate::stream::stream),
        )
        .route(
            "/api/v1/channels/{channel_id}/read-cursor/{user_id}",
            get(get_read_cursor).put(put_read_cursor),
        )
        .with_state(state)
}

/// Lists the API for a person who opens the service in a browser.
async fn index() -> &'static str {
    "kv-chat: chat history on ringkv\n\n\
     POST /api/v1/channels                                 {\"kind\":\"direct\"|\"group\",\"members\":[...]}\n\
     GET  /api/v1/channels/{id}\n\
     POST /api/v1/channels/{id}/messages                   {\"user_id\":...,\"content\":...}\n\
     GET  /api/v1/channels/{id}/messages?before=&limit=    newest first\n\
     GET  /api/v1/channels/{id}/messages/since?after=&limit= oldest first\n\
     GET  /api/v1/channels/{id}/read-cursor/{user}\n\
     PUT  /api/v1/channels/{id}/read-cursor/{user}         {\"message_id\":...}\n\
     GET  /api/v1/channels/{id}/stream?after=              WebSocket of new messages\n"
}

/// An error reply: a status code and a JSON body `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    fn not_found(channel_id: u64) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("channel {channel_id} not found"),
        }
    }

    fn forbidden(user_id: &str, channel_id: u64) -> ApiError {
        ApiError {
            status: StatusCode::FORBIDDEN,
            message: format!("user {user_id:?} is not a member of channel {channel_id}"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        tracing::warn!(%error, "request failed in the store");
        let status = if error.is_retryable() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        let hint = if error.is_retryable() {
            "; retry later"
        } else {
            ""
        };
        ApiError {
            status,
            message: format!("{error}{hint}"),
        }
    }
}

/// Keeps the status of a body that is not valid JSON for the call (400,
/// 415 or 422) but returns the reason in the JSON error shape.
impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        ApiError {
            status: rejection.status(),
            message: format!("invalid request body: {}", rejection.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        ApiError {
            status: rejection.status(),
            message: format!("invalid query string: {}", rejection.body_text()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

pub(crate) fn parse_id(text: &str, field: &str) -> Result<u64, ApiError> {
    text.parse::<u64>().map_err(|_| {
        ApiError::bad_request(format!("invalid {field} {text:?}: expected a decimal id"))
    })
}

fn next_id(ids: &IdGenerator) -> Result<u64, ApiError> {
    // The generator may sleep (bounded) while the clock is behind its last
    // issued time, so it runs outside the async worker's time slice.
    tokio::task::block_in_place(|| ids.next_id()).map_err(|error| {
        tracing::error!(%error, "id generator failed");
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!("cannot issue an id: {error}; retry later"),
        }
    })
}

pub(crate) async fn load_channel(
    state: &AppState,
    channel_id: &str,
) -> Result<Arc<Channel>, ApiError> {
    let channel_id = parse_id(channel_id, "channel id")?;
    state
        .store
        .channel(channel_id)
        .await?
        .ok_or_else(|| ApiError::not_found(channel_id))
}

fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE_LIMIT),
        Some(limit) if (1..=MAX_PAGE_LIMIT).contains(&limit) => Ok(limit),
        Some(limit) => Err(ApiError::bad_request(format!(
            "invalid limit {limit}: expected 1 to {MAX_PAGE_LIMIT}"
        ))),
    }
}

async fn create_channel(
    State(state): State<Arc<AppState>>,
    request: Result<Json<CreateChannel>, JsonRejection>,
) -> Result<(StatusCode, Json<Channel>), ApiError> {
    let Json(request) = request?;
    let members =
        normalize_members(request.kind, &request.members).map_err(ApiError::bad_request)?;
    let channel_id = next_id(&state.ids)?;
    let channel = Channel {
        channel_id,
        kind: request.kind,
        members,
        created_at: id_timestamp_ms(channel_id),
        bucket_ms: state.bucket_ms,
    };
    let channel = state.store.create_channel(channel).await?;
    tracing::info!(channel_id, kind = ?channel.kind, members = channel.members.len(), "created channel");
    Ok((StatusCode::CREATED, Json(channel.as_ref().clone())))
}

async fn get_channel(
    State(state): State<Arc<AppState>>,
    Path(channel_id): Path<String>,
) -> Result<Json<Channel>, ApiError> {
    let channel = load_channel(&state, &channel_id).await?;
    Ok(Json(channel.as_ref().clone()))
}

async fn send_message(
    State(state): State<Arc<AppState>>,
    Path(channel_id): Path<String>,
    request: Result<Json<SendMessage>, JsonRejection>,
) -> Result<(StatusCode, Json<Message>), ApiError> {
    let Json(request) = request?;
    validate_user_id(&request.user_id).map_err(ApiError::bad_request)?;
    validate_content(&request.content).map_err(ApiError::bad_request)?;
    let channel = load_channel(&state, &channel_id).await?;
    if !channel.is_member(&request.user_id) {
        return Err(ApiError::forbidden(&request.user_id, channel.channel_id));
    }

    let message_id = next_id(&state.ids)?;
    let message = Message {
        message_id,
        channel_id: channel.channel_id,
        user_id: request.user_id,
        content: request.content,
        created_at: id_timestamp_ms(message_id),
    };
    state.store.append_message(&channel, &message).await?;
    // Sending fails only when no stream listens, which needs no action.
    let _ = state.appended.send(channel.channel_id);
    Ok((StatusCode::CREATED, Json(message)))
}

#[derive(Debug, Deserialize)]
struct HistoryQuery {
    before: Option<String>,
    limit: Option<usize>,
}

/// A page of history, newest first.
#[derive(Debug, Serialize)]
struct HistoryPage {
    messages: Vec<Message>,
    /// Value of `before` for the next (older) page; absent on the last page.
    next_before: Option<String>,
}

async fn history(
    State(state): State<Arc<AppState>>,
    Path(channel_id): Path<String>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<HistoryPage>, ApiError> {
    let Query(query) = query?;
    let limit = page_limit(query.limit)?;
    let before = match query.before.as_deref() {
        None | Some("") => None,
        Some(text) => Some(parse_id(text, "before")?),
    };
    let channel = load_channel(&state, &channel_id).await?;
    let messages = state.store.history_before(&channel, before, limit).await?;
    let next_before = match messages.last() {
        Some(oldest) if messages.len() == limit => Some(oldest.message_id.to_string()),
        _ => None,
    };
    Ok(Json(HistoryPage {
        messages,
        next_before,
    }))
}

#[derive(Debug, Deserialize)]
struct SinceQuery {
    after: Option<String>,
    limit: Option<usize>,
}

/// Messages after a cursor, oldest first.
#[derive(Debug, Serialize)]
struct SincePage {
    messages: Vec<Message>,
    /// Value of `after` for the next call: the newest id returned, or the
    /// request's `after` when nothing was returned.
    #[serde(with = "id_string")]
    next_after: u64,
}

async fn messages_since(
    State(state): State<Arc<AppState>>,
    Path(channel_id): Path<String>,
    query: Result<Query<SinceQuery>, QueryRejection>,
) -> Result<Json<SincePage>, ApiError> {
    let Query(query) = query?;
    let limit = page_limit(query.limit)?;
    let after = match query.after.as_deref() {
        None | Some("") => 0,
        Some(text) => parse_id(text, "after")?,
    };
    let channel = load_channel(&state, &channel_id).await?;
    let messages = state.store.messages_after(&channel, after, limit).await?;
    let next_after = messages
        .last()
        .map(|newest| newest.message_id)
        .unwrap_or(after);
    Ok(Json(SincePage {
        messages,
        next_after,
    }))
}

#[derive(Debug, Serialize)]
struct ReadCursor {
    user_id: String,
    #[serde(with = "id_string")]
    channel_id: u64,
    /// Last read message id; "0" when the user has read nothing.
    #[serde(with = "id_string")]
    message_id: u64,
}

async fn member_channel(
    state: &AppState,
    channel_id: &str,
    user_id: &str,
) -> Result<Arc<Channel>, ApiError> {
    validate_user_id(user_id).map_err(ApiError::bad_request)?;
    let channel = load_channel(state, channel_id).await?;
    if !channel.is_member(user_id) {
        return Err(ApiError::forbidden(user_id, channel.channel_id));
    }
    Ok(channel)
}

async fn get_read_cursor(
    State(state): State<Arc<AppState>>,
    Path((channel_id, user_id)): Path<(String, String)>,
) -> Result<Json<ReadCursor>, ApiError> {
    let channel = member_channel(&state, &channel_id, &user_id).await?;
    let message_id = state
        .store
        .read_cursor(channel.channel_id, &user_id)
        .await?;
    Ok(Json(ReadCursor {
        user_id,
        channel_id: channel.channel_id,
        message_id,
    }))
}

/// How far ahead of this instance's clock a read cursor's id may be, for
/// ids issued by instances whose clocks run ahead.
const MAX_CURSOR_AHEAD_MS: u64 = 60_000;

async fn put_read_cursor(
    State(state): State<Arc<AppState>>,
    Path((channel_id, user_id)): Path<(String, String)>,
    request: Result<Json<SetReadCursor>, JsonRejection>,
) -> Result<Json<ReadCursor>, ApiError> {
    let Json(request) = request?;
    let channel = member_channel(&state, &channel_id, &user_id).await?;
    // The cursor only moves forward, so an id from the future would stick
    // it past every message still to come.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0);
    if id_timestamp_ms(request.message_id) > now_ms + MAX_CURSOR_AHEAD_MS {
        return Err(ApiError::bad_request(format!(
            "invalid message_id {}: its time is in the future, so no message can have it; pass the id of a message read from the channel",
            request.message_id
        )));
    }
    let message_id = state
        .store
        .advance_read_cursor(channel.channel_id, &user_id, request.message_id)
        .await?;
    Ok(Json(ReadCursor {
        user_id,
        channel_id: channel.channel_id,
        message_id,
    }))
}
