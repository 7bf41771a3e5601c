//! Channels and messages as the API returns them and as they are stored,
//! with the input checks of the HTTP calls.

use serde::{Deserialize, Serialize};

/// Maximum number of members of a group channel.
pub const MAX_GROUP_MEMBERS: usize = 100;
/// Maximum length of a user id, in bytes.
pub const MAX_USER_ID_BYTES: usize = 64;
/// Maximum length of a message's content, in bytes of UTF-8.
pub const MAX_CONTENT_BYTES: usize = 4096;

/// Kind of a channel: a direct channel has exactly two members.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    Direct,
    Group,
}

/// A channel record, stored once at creation and never changed.
///
/// Ids are snowflake ids, serialized as decimal strings because JSON
/// numbers lose precision above 2^53 in most clients.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    #[serde(with = "id_string")]
    pub channel_id: u64,
    pub kind: ChannelKind,
    /// Sorted, without duplicates.
    pub members: Vec<String>,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at: u64,
    /// Width of the history buckets of this channel, in milliseconds. It is
    /// fixed at creation, so every instance buckets the channel alike.
    pub bucket_ms: u64,
}

impl Channel {
    pub fn is_member(&self, user_id: &str) -> bool {
        self.members
            .binary_search_by(|member| member.as_str().cmp(user_id))
            .is_ok()
    }
}

/// One chat message, stored under its own key and never changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    #[serde(with = "id_string")]
    pub message_id: u64,
    #[serde(with = "id_string")]
    pub channel_id: u64,
    pub user_id: String,
    pub content: String,
    /// Milliseconds since the Unix epoch, taken from the message id.
    pub created_at: u64,
}

/// Body of `POST /api/v1/channels`.
#[derive(Debug, Deserialize)]
pub struct CreateChannel {
    pub kind: ChannelKind,
    pub members: Vec<String>,
}

/// Body of `POST /api/v1/channels/{id}/messages`.
#[derive(Debug, Deserialize)]
pub struct SendMessage {
    pub user_id: String,
    pub content: String,
}

/// Body of `PUT /api/v1/channels/{id}/read-cursor/{user}`.
#[derive(Debug, Deserialize)]
pub struct SetReadCursor {
    #[serde(with = "id_string")]
    pub message_id: u64,
}

/// Checks a user id: 1 to [`MAX_USER_ID_BYTES`] bytes of ASCII letters,
/// digits, `_`, `-`, `.` or `@`, so it is safe inside a storage key.
pub fn validate_user_id(user_id: &str) -> Result<(), String> {
    if user_id.is_empty() || user_id.len() > MAX_USER_ID_BYTES {
        return Err(format!(
            "invalid user id {user_id:?}: expected 1 to {MAX_USER_ID_BYTES} bytes"
        ));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@');
    if !user_id.chars().all(allowed) {
        return Err(format!(
            "invalid user id {user_id:?}: use only ASCII letters, digits, '_', '-', '.' and '@'"
        ));
    }
    Ok(())
}

/// Checks the members of a new channel and returns them sorted and
/// without duplicates.
pub fn normalize_members(kind: ChannelKind, members: &[String]) -> Result<Vec<String>, String> {
    for member in members {
        validate_user_id(member)?;
    }
    let mut sorted = members.to_vec();
    sorted.sort();
    sorted.dedup();
    match kind {
        ChannelKind::Direct if sorted.len() != 2 => Err(format!(
            "invalid members: a direct channel has exactly 2 distinct members, got {}",
            sorted.len()
        )),
        ChannelKind::Group if sorted.is_empty() || sorted.len() > MAX_GROUP_MEMBERS => {
            Err(format!(
                "invalid members: a group channel has 1 to {MAX_GROUP_MEMBERS} distinct members, got {}",
                sorted.len()
            ))
        }
        _ => Ok(sorted),
    }
}

/// Checks the content of a message.
pub fn validate_content(content: &str) -> Result<(), String> {
    if content.trim().is_empty() {
        return Err("invalid content: a message needs some text".to_string());
    }
    if content.len() > MAX_CONTENT_BYTES {
        return Err(format!(
            "invalid content: {} bytes, the maximum is {MAX_CONTENT_BYTES}",
            content.len()
        ));
    }
    Ok(())
}

/// Serde helpers that write a `u64` id as a decimal string and read either
/// a string or a number.
pub mod id_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&id.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Id {
            Text(String),
            Number(u64),
        }
        match Id::deserialize(deserializer)? {
            Id::Number(id) => Ok(id),
            Id::Text(text) => text
                .parse()
                .map_err(|_| serde::de::Error::custom(format!("invalid id {text:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn direct_channel_needs_two_members() {
        assert!(normalize_members(ChannelKind::Direct, &names(&["a"])).is_err());
        assert!(normalize_members(ChannelKind::Direct, &names(&["a", "a"])).is_err());
        assert!(normalize_members(ChannelKind::Direct, &names(&["a", "b", "c"])).is_err());
        assert_eq!(
            normalize_members(ChannelKind::Direct, &names(&["b", "a"])).unwrap(),
            names(&["a", "b"])
        );
    }

    #[test]
    fn group_channel_member_bounds() {
        assert!(normalize_members(ChannelKind::Group, &[]).is_err());
        let hundred: Vec<String> = (0..100).map(|i| format!("u{i}")).collect();
        assert_eq!(
            normalize_members(ChannelKind::Group, &hundred)
                .unwrap()
                .len(),
            100
        );
        let too_many: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
        assert!(normalize_members(ChannelKind::Group, &too_many).is_err());
    }

    #[test]
    fn user_id_rejects_key_separators() {
        assert!(validate_user_id("alice@example.org").is_ok());
        assert!(validate_user_id("a/b").is_err());
        assert!(validate_user_id("").is_err());
        assert!(validate_user_id(&"x".repeat(65)).is_err());
    }

    #[test]
    fn content_bounds() {
        assert!(validate_content("hi").is_ok());
        assert!(validate_content("  ").is_err());
        assert!(validate_content(&"x".repeat(MAX_CONTENT_BYTES + 1)).is_err());
    }

    #[test]
    fn ids_serialize_as_strings() {
        let cursor: SetReadCursor = serde_json::from_str(r#"{"message_id":"42"}"#).unwrap();
        assert_eq!(cursor.message_id, 42);
        let cursor: SetReadCursor = serde_json::from_str(r#"{"message_id":7}"#).unwrap();
        assert_eq!(cursor.message_id, 7);
        let message = Message {
            message_id: u64::MAX,
            channel_id: 1,
            user_id: "a".into(),
            content: "x".into(),
            created_at: 0,
        };
        let text = serde_json::to_string(&message).unwrap();
        assert!(text.contains(&format!("\"{}\"", u64::MAX)), "{text}");
    }
}
