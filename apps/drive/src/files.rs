//! Upload, download and revision listing of file content.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::{
    add_to_parent, check_kind_free, next_id, now_ms, parent_folder, record_change, require,
    ApiError, AppState, Target,
};
use crate::model::{Access, ChangeKind, EntryKind, FileMeta, Revision};
use crate::store::{file_key, sha256_hex, BlockWrite};

/// Header with the uploading device's name, shown in conflicted copies.
const DEVICE_HEADER: &str = "x-device";
/// Header of a download that names the revision sent.
const REVISION_HEADER: &str = "x-revision";
/// Longest accepted device name, in bytes.
const MAX_DEVICE_BYTES: usize = 64;
/// Blocks a download reads ahead of the one being sent.
const DOWNLOAD_READ_AHEAD: usize = 2;

/// Counts of an upload's blocks.
#[derive(Default)]
struct BlockCounts {
    written: usize,
    reused: usize,
}

/// Stores `block` and records its hash.
async fn store_block(
    state: &AppState,
    block: Vec<u8>,
    hashes: &mut Vec<String>,
    counts: &mut BlockCounts,
) -> Result<(), ApiError> {
    let hash = sha256_hex(&block);
    match state.store.put_block(&hash, block).await? {
        BlockWrite::Written => counts.written += 1,
        BlockWrite::Reused => counts.reused += 1,
    }
    hashes.push(hash);
    Ok(())
}

/// Parses `If-Match`: a revision id, with or without the quotes of an
/// entity tag.
fn base_revision(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("").trim().trim_matches('"');
    text.parse::<u64>().map(Some).map_err(|_| {
        ApiError::bad_request(format!(
            "invalid If-Match header {value:?}: expected a revision id"
        ))
    })
}

fn device_name(headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(value) = headers.get(DEVICE_HEADER) else {
        return Ok("unknown device".to_string());
    };
    match value.to_str() {
        Ok(text) if !text.trim().is_empty() && text.len() <= MAX_DEVICE_BYTES => {
            Ok(text.trim().to_string())
        }
        _ => Err(ApiError::bad_request(format!(
            "invalid X-Device header: expected 1 to {MAX_DEVICE_BYTES} bytes of visible ASCII"
        ))),
    }
}

/// Stores a new revision of a file from a streamed body.
///
/// The base revision is `If-Match` when given, else the main head read
/// now. A revision whose base already has a child becomes a conflicted
/// copy, so no upload replaces another.
pub async fn upload(
    State(state): State<Arc<AppState>>,
    Path((owner, path)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let target = Target::parse(&headers, &owner, &path)?;
    if target.segments.is_empty() {
        return Err(ApiError::bad_request(
            "a file needs a path below the root folder",
        ));
    }
    let device = device_name(&headers)?;
    let requested_base = base_revision(&headers)?;
    require(&state.store, &target, Access::Write).await?;
    let parent = parent_folder(&state, &target).await?;
    check_kind_free(&parent, &target, EntryKind::File)?;

    let key = file_key(&target.owner, &target.path());
    let existing = state
        .store
        .read::<FileMeta>(&key)
        .await?
        .unwrap_or_default();
    let base = match requested_base {
        Some(base) if existing.revisions.contains_key(&base) => Some(base),
        Some(base) => {
            return Err(ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                format!(
                    "revision {base} of {}:/{} not found; list the revisions and retry with one of them",
                    target.owner,
                    target.path()
                ),
            ))
        }
        None => existing.main_head(),
    };

    let mut stream = body.into_data_stream();
    let mut buffer: Vec<u8> = Vec::with_capacity(state.block_bytes);
    let mut hashes = Vec::new();
    let mut counts = BlockCounts::default();
    let mut size: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| {
            ApiError::bad_request(format!("failed to read the request body: {error}"))
        })?;
        size += chunk.len() as u64;
        if size > state.max_file_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "file is larger than the limit of {} bytes",
                    state.max_file_bytes
                ),
            ));
        }
        let mut rest: &[u8] = &chunk;
        while !rest.is_empty() {
            let take = rest.len().min(state.block_bytes - buffer.len());
            buffer.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if buffer.len() == state.block_bytes {
                let block = std::mem::replace(&mut buffer, Vec::with_capacity(state.block_bytes));
                store_block(&state, block, &mut hashes, &mut counts).await?;
            }
        }
    }
    if !buffer.is_empty() {
        store_block(&state, buffer, &mut hashes, &mut counts).await?;
    }

    // The id is issued after the blocks are stored, so it orders this
    // revision by the time its metadata is written.
    let revision_id = next_id(&state.ids)?;
    let revision = Revision {
        id: revision_id,
        parent: base,
        blocks: hashes,
        size,
        created_at: now_ms(),
        author: target.user.clone(),
        device,
    };
    let written = state
        .store
        .update(&key, |meta: &mut FileMeta| {
            meta.revisions.insert(revision_id, revision.clone());
        })
        .await?;
    add_to_parent(&state, &target, EntryKind::File).await?;
    record_change(
        &state,
        &target,
        ChangeKind::RevisionAdded,
        Some(revision_id),
    )
    .await?;

    // NOTE: the verdict reflects the uploads this write saw. An upload of
    // the same base with a smaller revision id whose metadata write lands
    // later still turns this revision into a conflicted copy.
    let conflicted = !written.is_on_main_line(revision_id);
    tracing::info!(
        owner = %target.owner,
        path = %target.path(),
        revision = revision_id,
        conflicted,
        blocks_written = counts.written,
        blocks_reused = counts.reused,
        "revision stored"
    );
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "owner": target.owner,
            "path": target.path(),
            "revision": revision,
            "conflicted": conflicted,
            "main_head": written.main_head().map(|id| id.to_string()),
            "blocks_written": counts.written,
            "blocks_reused": counts.reused,
        })),
    ))
}

#[derive(Deserialize)]
pub struct DownloadQuery {
    revision: Option<String>,
}

/// Streams the content of the main head, or of `?revision=`.
pub async fn download(
    State(state): State<Arc<AppState>>,
    Path((owner, path)): Path<(String, String)>,
    headers: HeaderMap,
    query: Result<Query<DownloadQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let target = Target::parse(&headers, &owner, &path)?;
    require(&state.store, &target, Access::Read).await?;
    let meta = state
        .store
        .read::<FileMeta>(&file_key(&target.owner, &target.path()))
        .await?
        .ok_or_else(|| ApiError::not_found(&target.owner, &target.path()))?;
    let revision_id = match query.revision.as_deref() {
        Some(text) => text.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("invalid revision {text:?}: expected a decimal id"))
        })?,
        None => meta
            .main_head()
            .ok_or_else(|| ApiError::not_found(&target.owner, &target.path()))?,
    };
    let revision = meta.revisions.get(&revision_id).cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "revision {revision_id} of {}:/{} not found",
                target.owner,
                target.path()
            ),
        )
    })?;

    let store_state = state.clone();
    let blocks = stream::iter(revision.blocks.clone())
        .map(move |hash| {
            let state = store_state.clone();
            async move { state.store.get_block(&hash).await.map(Bytes::from) }
        })
        .buffered(DOWNLOAD_READ_AHEAD)
        .inspect(|result| {
            if let Err(error) = result {
                // The status line is sent already, so the client sees a
                // body cut short of Content-Length.
                tracing::warn!(%error, "download failed after its first byte");
            }
        });
    let mut response = Body::from_stream(blocks).into_response();
    let response_headers = response.headers_mut();
    response_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(revision.size));
    response_headers.insert(REVISION_HEADER, HeaderValue::from(revision.id));
    response_headers.insert(
        header::ETAG,
        HeaderValue::from_str(&format!("\"{}\"", revision.id)).expect("an id is a valid header"),
    );
    Ok(response)
}

/// Lists every revision of a file, oldest first, with the main head and
/// the heads of conflicted copies.
pub async fn revisions(
    State(state): State<Arc<AppState>>,
    Path((owner, path)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let target = Target::parse(&headers, &owner, &path)?;
    require(&state.store, &target, Access::Read).await?;
    let meta = state
        .store
        .read::<FileMeta>(&file_key(&target.owner, &target.path()))
        .await?
        .ok_or_else(|| ApiError::not_found(&target.owner, &target.path()))?;
    let conflicted: Vec<String> = meta.conflicted_heads().iter().map(u64::to_string).collect();
    Ok(Json(json!({
        "owner": target.owner,
        "path": target.path(),
        "main_head": meta.main_head().map(|id| id.to_string()),
        "conflicted_heads": conflicted,
        "revisions": meta.revisions.values().collect::<Vec<_>>(),
    })))
}
