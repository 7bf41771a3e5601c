//! Values stored by the drive, how their siblings merge, and the checks on
//! user names and paths.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Longest accepted user name, in bytes.
const MAX_USER_BYTES: usize = 64;
/// Longest accepted file or folder name, in bytes.
const MAX_NAME_BYTES: usize = 255;
/// Deepest accepted path, in segments.
const MAX_PATH_SEGMENTS: usize = 32;

/// A value whose siblings merge without losing any writer's update.
pub trait Mergeable: Default + Serialize + serde::de::DeserializeOwned {
    /// Folds `other` into `self`. Merging is commutative, associative and
    /// idempotent, so the order in which siblings arrive does not matter.
    fn merge(&mut self, other: Self);
}

/// Serializes ids as decimal strings, because JSON readers that parse
/// numbers as doubles lose precision above 2^53.
pub mod id_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&id.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Like [`id_string`], for an optional id.
pub mod option_id_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &Option<u64>, serializer: S) -> Result<S::Ok, S::Error> {
        match id {
            Some(id) => serializer.serialize_some(&id.to_string()),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<u64>, D::Error> {
        let text = Option::<String>::deserialize(deserializer)?;
        text.map(|text| text.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    Folder,
    File,
}

/// One child of a folder.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    pub kind: EntryKind,
}

/// The children of a folder; siblings merge by set union.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Folder {
    pub entries: BTreeSet<Entry>,
}

impl Mergeable for Folder {
    fn merge(&mut self, other: Folder) {
        self.entries.extend(other.entries);
    }
}

/// One stored version of a file's content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    #[serde(with = "id_string")]
    pub id: u64,
    /// Revision this one was edited from; `None` for a first upload.
    #[serde(with = "option_id_string")]
    pub parent: Option<u64>,
    /// SHA-256 of each block, lowercase hex, in file order.
    pub blocks: Vec<String>,
    /// File size in bytes.
    pub size: u64,
    /// Milliseconds since the Unix epoch.
    pub created_at: u64,
    /// User who uploaded the revision.
    pub author: String,
    /// Device name the uploader sent in `X-Device`.
    pub device: String,
}

/// Every revision of a file; siblings merge by union of revisions by id.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FileMeta {
    pub revisions: BTreeMap<u64, Revision>,
}

impl Mergeable for FileMeta {
    fn merge(&mut self, other: FileMeta) {
        self.revisions.extend(other.revisions);
    }
}

impl FileMeta {
    /// Returns the head of the main line: starting at the first root, it
    /// follows the child with the smallest id at each step. Any other
    /// child of a revision is the start of a conflicted copy.
    pub fn main_head(&self) -> Option<u64> {
        let mut current = self.roots().first().copied()?;
        while let Some(child) = self.first_child(current) {
            current = child;
        }
        Some(current)
    }

    /// Returns the heads (revisions without children) that are not the
    /// main head, oldest first: each is the latest revision of a
    /// conflicted copy.
    // TODO: no call resolves a conflicted copy yet, so it stays a head.
    pub fn conflicted_heads(&self) -> Vec<u64> {
        let main = self.main_head();
        let parents: BTreeSet<u64> = self
            .revisions
            .values()
            .filter_map(|revision| revision.parent)
            .collect();
        self.revisions
            .keys()
            .copied()
            .filter(|id| !parents.contains(id) && Some(*id) != main)
            .collect()
    }

    /// Returns true when `id` is on the main line.
    pub fn is_on_main_line(&self, id: u64) -> bool {
        let Some(mut current) = self.roots().first().copied() else {
            return false;
        };
        loop {
            if current == id {
                return true;
            }
            match self.first_child(current) {
                Some(child) => current = child,
                None => return false,
            }
        }
    }

    fn roots(&self) -> Vec<u64> {
        self.revisions
            .values()
            .filter(|revision| revision.parent.is_none())
            .map(|revision| revision.id)
            .collect()
    }

    fn first_child(&self, parent: u64) -> Option<u64> {
        // Revisions iterate in id order, so the first match is the oldest.
        self.revisions
            .values()
            .find(|revision| revision.parent == Some(parent))
            .map(|revision| revision.id)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
        }
    }
}

/// Grants on one file or folder; siblings merge by union, keeping the
/// higher access of a user granted twice.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Shares {
    pub grants: BTreeMap<String, Access>,
}

impl Shares {
    /// Grants `access` to `user`, keeping a higher access granted before.
    pub fn merge_grant(&mut self, user: &str, access: Access) {
        let current = self.grants.entry(user.to_string()).or_insert(access);
        *current = (*current).max(access);
    }
}

impl Mergeable for Shares {
    fn merge(&mut self, other: Shares) {
        for (user, access) in other.grants {
            self.merge_grant(&user, access);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    FolderCreated,
    RevisionAdded,
    Shared,
}

/// One entry of a user's change feed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    #[serde(with = "id_string")]
    pub id: u64,
    pub kind: ChangeKind,
    pub owner: String,
    pub path: String,
    #[serde(
        with = "option_id_string",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub revision: Option<u64>,
    /// User whose request made the change.
    pub by: String,
}

/// Changes of one feed bucket; siblings merge by union of change ids.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ChangeBucket {
    pub changes: BTreeMap<u64, Change>,
}

impl Mergeable for ChangeBucket {
    fn merge(&mut self, other: ChangeBucket) {
        self.changes.extend(other.changes);
    }
}

/// A set of ids; siblings merge by union.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IdSet {
    pub ids: BTreeSet<u64>,
}

impl Mergeable for IdSet {
    fn merge(&mut self, other: IdSet) {
        self.ids.extend(other.ids);
    }
}

/// Checks a user name from `X-User`: 1 to 64 ASCII letters, digits, `.`,
/// `_` or `-`.
pub fn validate_user(user: &str) -> Result<(), String> {
    let valid_chars = user
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'));
    if user.is_empty() || user.len() > MAX_USER_BYTES || !valid_chars {
        return Err(format!(
            "invalid user {user:?}: expected 1 to {MAX_USER_BYTES} ASCII letters, digits, '.', '_' or '-'"
        ));
    }
    Ok(())
}

/// Splits a path such as `docs/notes.txt` into its segments. An empty
/// path is the root folder.
pub fn parse_path(path: &str) -> Result<Vec<String>, String> {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    let segments: Vec<String> = trimmed.split('/').map(str::to_string).collect();
    if segments.len() > MAX_PATH_SEGMENTS {
        return Err(format!(
            "invalid path {path:?}: more than {MAX_PATH_SEGMENTS} segments"
        ));
    }
    for segment in &segments {
        let bad = segment.is_empty()
            || segment == "."
            || segment == ".."
            || segment.len() > MAX_NAME_BYTES
            || segment.chars().any(char::is_control);
        if bad {
            return Err(format!(
                "invalid path {path:?}: segment {segment:?} is empty, '.', '..', longer than \
                 {MAX_NAME_BYTES} bytes or contains control characters"
            ));
        }
    }
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revision(id: u64, parent: Option<u64>) -> Revision {
        Revision {
            id,
            parent,
            blocks: Vec::new(),
            size: 0,
            created_at: 0,
            author: "ann".into(),
            device: "laptop".into(),
        }
    }

    fn meta(revisions: &[(u64, Option<u64>)]) -> FileMeta {
        FileMeta {
            revisions: revisions
                .iter()
                .map(|&(id, parent)| (id, revision(id, parent)))
                .collect(),
        }
    }

    #[test]
    fn linear_history_has_no_conflicts() {
        let file = meta(&[(1, None), (2, Some(1)), (3, Some(2))]);
        assert_eq!(file.main_head(), Some(3));
        assert!(file.conflicted_heads().is_empty());
    }

    #[test]
    fn second_edit_of_base_is_conflicted() {
        let file = meta(&[(1, None), (2, Some(1)), (3, Some(1)), (4, Some(2))]);
        assert_eq!(file.main_head(), Some(4));
        assert_eq!(file.conflicted_heads(), vec![3]);
        assert!(file.is_on_main_line(2));
        assert!(!file.is_on_main_line(3));
    }

    #[test]
    fn two_first_uploads_conflict() {
        let file = meta(&[(5, None), (7, None)]);
        assert_eq!(file.main_head(), Some(5));
        assert_eq!(file.conflicted_heads(), vec![7]);
    }

    #[test]
    fn file_siblings_merge_by_union() {
        let mut left = meta(&[(1, None), (2, Some(1))]);
        left.merge(meta(&[(1, None), (3, Some(1))]));
        assert_eq!(
            left.revisions.keys().copied().collect::<Vec<_>>(),
            [1, 2, 3]
        );
    }

    #[test]
    fn shares_merge_keeps_higher_access() {
        let mut left = Shares::default();
        left.grants.insert("bob".into(), Access::Read);
        let mut right = Shares::default();
        right.grants.insert("bob".into(), Access::Write);
        right.grants.insert("eve".into(), Access::Read);
        left.merge(right);
        assert_eq!(left.grants["bob"], Access::Write);
        assert_eq!(left.grants["eve"], Access::Read);
    }

    #[test]
    fn paths_reject_dot_segments() {
        assert_eq!(parse_path("/a/b/").unwrap(), vec!["a", "b"]);
        assert!(parse_path("").unwrap().is_empty());
        assert!(parse_path("a/../b").is_err());
        assert!(parse_path("a//b").is_err());
    }

    #[test]
    fn users_are_checked() {
        assert!(validate_user("ann-1.x").is_ok());
        assert!(validate_user("").is_err());
        assert!(validate_user("a/b").is_err());
    }
}
