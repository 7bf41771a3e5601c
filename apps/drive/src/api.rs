//! HTTP handlers of the drive API under `/api/v1`, except file content,
//! which is in `files.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::stream::{self, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::feed;
use crate::files;
use crate::model::{
    parse_path, validate_user, Access, Change, ChangeKind, Entry, EntryKind, FileMeta, Folder,
    Shares,
};
use crate::store::{file_key, folder_key, share_key, DriveStore, StoreError};
use kv_apps_common::ids::IdGenerator;

/// Header that names the user of a request.
pub const USER_HEADER: &str = "x-user";
/// Page size of the change feed when a request gives no `limit`.
const DEFAULT_FEED_LIMIT: usize = 100;
/// Largest accepted change feed `limit`.
const MAX_FEED_LIMIT: usize = 1000;
/// Files whose metadata a folder listing reads at once.
const LISTING_CONCURRENCY: usize = 8;

/// State shared by the handlers.
pub struct AppState {
    pub store: DriveStore,
    pub ids: Arc<IdGenerator>,
    /// Size of the blocks files are split into, in bytes.
    pub block_bytes: usize,
    /// Largest accepted upload, in bytes.
    pub max_file_bytes: u64,
    /// Age a change must reach before the feed returns it, in milliseconds.
    pub feed_settle_ms: u64,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/api/v1/folders/{owner}/{*path}", post(create_folder))
        .route("/api/v1/list/{owner}", get(list_root))
        .route("/api/v1/list/{owner}/{*path}", get(list_folder))
        .route(
            "/api/v1/files/{owner}/{*path}",
            get(files::download).put(files::upload),
        )
        .route("/api/v1/revisions/{owner}/{*path}", get(files::revisions))
        .route("/api/v1/shares/{owner}/{*path}", post(share))
        .route("/api/v1/changes", get(changes))
        .with_state(state)
}

/// Lists the API for a person who opens the service in a browser.
async fn index() -> &'static str {
    "kv-drive: drive metadata on ringkv. Every /api/v1 request needs an X-User header.\n\n\
     POST /api/v1/folders/{owner}/{path}                create a folder\n\
     PUT  /api/v1/files/{owner}/{path}                  upload (If-Match: base revision, X-Device: name)\n\
     GET  /api/v1/files/{owner}/{path}?revision=        download the main head or a revision\n\
     GET  /api/v1/revisions/{owner}/{path}              list revisions\n\
     GET  /api/v1/list/{owner}/{path}                   list a folder (no path: the root)\n\
     POST /api/v1/shares/{owner}/{path}                 {\"user\":...,\"access\":\"read\"|\"write\"}\n\
     GET  /api/v1/changes?cursor=&limit=                the requesting user's change feed\n"
}

/// An error reply: a status code and a JSON body `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(owner: &str, path: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, format!("{owner}:/{path} not found"))
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        tracing::warn!(%error, "request failed in the store");
        if error.is_retryable() {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{error}; retry later"),
            )
        } else {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        ApiError::new(
            rejection.status(),
            format!("invalid request body: {}", rejection.body_text()),
        )
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        ApiError::new(
            rejection.status(),
            format!("invalid query string: {}", rejection.body_text()),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

/// The user, owner and path a request addresses, checked.
pub struct Target {
    pub user: String,
    pub owner: String,
    pub segments: Vec<String>,
}

impl Target {
    pub fn parse(headers: &HeaderMap, owner: &str, path: &str) -> Result<Target, ApiError> {
        let user = request_user(headers)?;
        validate_user(owner).map_err(ApiError::bad_request)?;
        let segments = parse_path(path).map_err(ApiError::bad_request)?;
        Ok(Target {
            user,
            owner: owner.to_string(),
            segments,
        })
    }

    pub fn path(&self) -> String {
        self.segments.join("/")
    }

    pub fn parent_path(&self) -> String {
        self.segments[..self.segments.len().saturating_sub(1)].join("/")
    }

    /// Last segment; empty for the root folder.
    pub fn name(&self) -> &str {
        self.segments.last().map(String::as_str).unwrap_or("")
    }
}

/// Reads and checks the `X-User` header.
pub fn request_user(headers: &HeaderMap) -> Result<String, ApiError> {
    let value = headers.get(USER_HEADER).ok_or_else(|| {
        ApiError::bad_request("missing X-User header: name the user of the request")
    })?;
    let user = value
        .to_str()
        .map_err(|_| ApiError::bad_request("invalid X-User header: expected ASCII"))?;
    validate_user(user).map_err(ApiError::bad_request)?;
    Ok(user.to_string())
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

pub fn next_id(ids: &IdGenerator) -> Result<u64, ApiError> {
    // The generator may sleep (bounded) while the clock is behind its last
    // issued time, so it runs outside the async worker's time slice.
    tokio::task::block_in_place(|| ids.next_id()).map_err(|error| {
        tracing::error!(%error, "id generator failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot issue an id: {error}; retry later"),
        )
    })
}

/// Collects the grants on the item at `segments` and on every folder
/// above it, keeping the higher access of a user granted twice.
pub async fn grants_on(
    store: &DriveStore,
    owner: &str,
    segments: &[String],
) -> Result<BTreeMap<String, Access>, StoreError> {
    let mut grants = BTreeMap::new();
    for depth in 1..=segments.len() {
        let path = segments[..depth].join("/");
        let Some(shares) = store.read::<Shares>(&share_key(owner, &path)).await? else {
            continue;
        };
        for (user, access) in shares.grants {
            let current = grants.entry(user).or_insert(access);
            *current = (*current).max(access);
        }
    }
    Ok(grants)
}

/// Checks that `target.user` has `needed` access to the target: the owner
/// has every access, other users what the item or a folder above it
/// grants them. Returns 403 otherwise.
pub async fn require(store: &DriveStore, target: &Target, needed: Access) -> Result<(), ApiError> {
    if target.user == target.owner {
        return Ok(());
    }
    let grants = grants_on(store, &target.owner, &target.segments).await?;
    match grants.get(&target.user) {
        Some(access) if *access >= needed => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "user {} has no {} access to {}:/{}",
                target.user,
                needed.as_str(),
                target.owner,
                target.path()
            ),
        )),
    }
}

/// Records a change in the feed of the owner and of every user the item
/// or a folder above it is shared with.
pub async fn record_change(
    state: &AppState,
    target: &Target,
    kind: ChangeKind,
    revision: Option<u64>,
) -> Result<(), ApiError> {
    let grants = grants_on(&state.store, &target.owner, &target.segments).await?;
    let mut recipients: BTreeSet<String> = grants.into_keys().collect();
    recipients.insert(target.owner.clone());
    let change = Change {
        id: next_id(&state.ids)?,
        kind,
        owner: target.owner.clone(),
        path: target.path(),
        revision,
        by: target.user.clone(),
    };
    feed::record(&state.store, &recipients, &change).await?;
    Ok(())
}

/// Reads the parent folder of `target`, or 404 when it does not exist.
/// The root folder always exists.
pub async fn parent_folder(state: &AppState, target: &Target) -> Result<Folder, ApiError> {
    let parent = target.parent_path();
    let folder = state
        .store
        .read::<Folder>(&folder_key(&target.owner, &parent))
        .await?;
    match folder {
        Some(folder) => Ok(folder),
        None if parent.is_empty() => Ok(Folder::default()),
        None => Err(ApiError::not_found(&target.owner, &parent)),
    }
}

/// Adds the name of `target` to the entries of its parent folder.
pub async fn add_to_parent(
    state: &AppState,
    target: &Target,
    kind: EntryKind,
) -> Result<(), ApiError> {
    let entry = Entry {
        name: target.name().to_string(),
        kind,
    };
    state
        .store
        .update(
            &folder_key(&target.owner, &target.parent_path()),
            |folder: &mut Folder| {
                folder.entries.insert(entry.clone());
            },
        )
        .await?;
    Ok(())
}

/// Rejects a name that the parent lists as the other kind of entry.
pub fn check_kind_free(parent: &Folder, target: &Target, kind: EntryKind) -> Result<(), ApiError> {
    let clash = parent
        .entries
        .iter()
        .any(|entry| entry.name == target.name() && entry.kind != kind);
    if clash {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "{}:/{} exists as a {}",
                target.owner,
                target.path(),
                if kind == EntryKind::File {
                    "folder"
                } else {
                    "file"
                }
            ),
        ));
    }
    Ok(())
}

async fn create_folder(
    State(state): State<Arc<AppState>>,
    Path((owner, path)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let target = Target::parse(&headers, &owner, &path)?;
    if target.segments.is_empty() {
        return Err(ApiError::bad_request("the root folder exists already"));
    }
    require(&state.store, &target, Access::Write).await?;
    let parent = parent_folder(&state, &target).await?;
    check_kind_free(&parent, &target, EntryKind::Folder)?;

    let key = folder_key(&target.owner, &target.path());
    let exists = state.store.read::<Folder>(&key).await?.is_some();
    let body = Json(json!({ "owner": target.owner, "path": target.path(), "kind": "folder" }));
    if exists {
        return Ok((StatusCode::OK, body));
    }
    state.store.update(&key, |_: &mut Folder| {}).await?;
    add_to_parent(&state, &target, EntryKind::Folder).await?;
    record_change(&state, &target, ChangeKind::FolderCreated, None).await?;
    tracing::info!(owner = %target.owner, path = %target.path(), user = %target.user, "folder created");
    Ok((StatusCode::CREATED, body))
}

async fn list_root(
    state: State<Arc<AppState>>,
    Path(owner): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    list_folder(state, Path((owner, String::new())), headers).await
}

/// A file as a folder listing shows it.
#[derive(Serialize)]
struct FileListing {
    name: String,
    kind: EntryKind,
    #[serde(with = "crate::model::id_string")]
    revision: u64,
    size: u64,
    modified_at: u64,
    conflicted_copies: Vec<ConflictedCopy>,
}

/// The latest revision of a branch that lost to the main line.
#[derive(Serialize)]
struct ConflictedCopy {
    name: String,
    #[serde(with = "crate::model::id_string")]
    revision: u64,
    author: String,
    device: String,
}

/// Names a conflicted copy like `notes (conflicted copy, bob on phone).txt`.
fn conflicted_copy_name(name: &str, author: &str, device: &str) -> String {
    let (stem, extension) = match name.rfind('.') {
        Some(dot) if dot > 0 => (&name[..dot], &name[dot..]),
        _ => (name, ""),
    };
    format!("{stem} (conflicted copy, {author} on {device}){extension}")
}

async fn list_folder(
    State(state): State<Arc<AppState>>,
    Path((owner, path)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let target = Target::parse(&headers, &owner, &path)?;
    require(&state.store, &target, Access::Read).await?;
    let key = folder_key(&target.owner, &target.path());
    let folder = match state.store.read::<Folder>(&key).await? {
        Some(folder) => folder,
        None if target.segments.is_empty() => Folder::default(),
        None => return Err(ApiError::not_found(&target.owner, &target.path())),
    };

    let base = target.path();
    let entries: Vec<Value> = stream::iter(folder.entries)
        .map(|entry| {
            let state = state.clone();
            let owner = target.owner.clone();
            let child = if base.is_empty() {
                entry.name.clone()
            } else {
                format!("{base}/{}", entry.name)
            };
            async move { list_entry(&state, &owner, &child, entry).await }
        })
        .buffered(LISTING_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(Json(json!({
        "owner": target.owner,
        "path": target.path(),
        "entries": entries,
    })))
}

async fn list_entry(
    state: &AppState,
    owner: &str,
    path: &str,
    entry: Entry,
) -> Result<Value, StoreError> {
    if entry.kind == EntryKind::Folder {
        return Ok(json!({ "name": entry.name, "kind": entry.kind }));
    }
    let meta = state
        .store
        .read::<FileMeta>(&file_key(owner, path))
        .await?
        .unwrap_or_default();
    let Some(head) = meta.main_head() else {
        // Listed before its first revision was readable.
        return Ok(json!({ "name": entry.name, "kind": entry.kind }));
    };
    let revision = &meta.revisions[&head];
    let conflicted_copies = meta
        .conflicted_heads()
        .into_iter()
        .map(|id| {
            let copy = &meta.revisions[&id];
            ConflictedCopy {
                name: conflicted_copy_name(&entry.name, &copy.author, &copy.device),
                revision: id,
                author: copy.author.clone(),
                device: copy.device.clone(),
            }
        })
        .collect();
    let listing = FileListing {
        name: entry.name,
        kind: entry.kind,
        revision: head,
        size: revision.size,
        modified_at: revision.created_at,
        conflicted_copies,
    };
    Ok(serde_json::to_value(listing).expect("a listing encodes"))
}

/// Body of `POST /api/v1/shares/...`.
#[derive(Deserialize)]
struct ShareRequest {
    user: String,
    access: Access,
}

async fn share(
    State(state): State<Arc<AppState>>,
    Path((owner, path)): Path<(String, String)>,
    headers: HeaderMap,
    request: Result<Json<ShareRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(request) = request?;
    let target = Target::parse(&headers, &owner, &path)?;
    validate_user(&request.user).map_err(ApiError::bad_request)?;
    if target.user != target.owner {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "only {} may share {}:/{}",
                target.owner,
                target.owner,
                target.path()
            ),
        ));
    }
    let path = target.path();
    let is_folder = state
        .store
        .read::<Folder>(&folder_key(&target.owner, &path))
        .await?
        .is_some();
    let is_file = !is_folder
        && state
            .store
            .read::<FileMeta>(&file_key(&target.owner, &path))
            .await?
            .is_some();
    if !is_folder && !is_file {
        return Err(ApiError::not_found(&target.owner, &path));
    }

    let shares = state
        .store
        .update(&share_key(&target.owner, &path), |shares: &mut Shares| {
            shares.merge_grant(&request.user, request.access);
        })
        .await?;
    record_change(&state, &target, ChangeKind::Shared, None).await?;
    // Access is never lowered (there is no unsharing yet), so the reply
    // names the access the user has now, which may be higher than asked.
    let access = shares
        .grants
        .get(&request.user)
        .copied()
        .unwrap_or(request.access);
    tracing::info!(owner = %target.owner, %path, grantee = %request.user, requested = ?request.access, ?access, "shared");
    let mut reply = json!({
        "owner": target.owner,
        "path": path,
        "user": request.user,
        "access": access,
    });
    if access != request.access {
        reply["note"] = json!(format!(
            "{} already has {} access; access is never lowered, because unsharing is not built yet",
            request.user,
            access.as_str()
        ));
    }
    Ok(Json(reply))
}

#[derive(Deserialize)]
struct ChangesQuery {
    cursor: Option<String>,
    limit: Option<usize>,
}

async fn changes(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<ChangesQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query?;
    let user = request_user(&headers)?;
    let cursor = match query.cursor.as_deref() {
        None | Some("") => 0,
        Some(text) => text.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!(
                "invalid cursor {text:?}: expected a decimal change id"
            ))
        })?,
    };
    let limit = query.limit.unwrap_or(DEFAULT_FEED_LIMIT);
    if !(1..=MAX_FEED_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "invalid limit {limit}: expected 1 to {MAX_FEED_LIMIT}"
        )));
    }
    let visible_until = now_ms().saturating_sub(state.feed_settle_ms);
    let changes = feed::read(&state.store, &user, cursor, visible_until, limit).await?;
    let next_cursor = changes.last().map(|change| change.id).unwrap_or(cursor);
    Ok(Json(json!({
        "changes": changes,
        "cursor": next_cursor.to_string(),
    })))
}
