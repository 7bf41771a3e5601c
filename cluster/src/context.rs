//! The opaque client context: the version vector a client read, bound to the
//! key it was read from.
//!
//! Encoding (integers big-endian):
//!
//! ```text
//! u8  format version (1)
//! u64 xxh3-64 hash of the key (crate::hash::key_hash)
//! the version vector as VersionVector::encode_into writes it
//! ```
//!
//! Empty bytes are the empty context of a blind put. The key hash catches a
//! context presented with another key; two keys with the same 64-bit hash
//! are not told apart. A context is not authenticated: a client can forge
//! one, which only lets it supersede values it could also have read.

use crate::hash::key_hash;
use crate::version::{DecodeError, VersionVector};

/// Format version byte that starts every encoded context.
pub const CONTEXT_FORMAT_VERSION: u8 = 1;

/// Errors decoding a client context.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContextError {
    #[error(
        "invalid context: {reason}; pass the context exactly as a read of this key returned it"
    )]
    Malformed { reason: String },
    #[error("invalid context: unknown format version {version}; read the key again and use the context returned")]
    UnknownVersion { version: u8 },
    #[error("context was issued for another key; read this key and use the context returned")]
    WrongKey,
}

/// Encodes the context that a read or put of `key` returns to the client.
pub fn encode_context(key: &[u8], context: &VersionVector) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 8 + 4 + 24 * context.entries.len());
    out.push(CONTEXT_FORMAT_VERSION);
    out.extend_from_slice(&key_hash(key).to_be_bytes());
    context.encode_into(&mut out);
    out
}

/// Decodes a context that a client presents with `key`. Empty bytes decode
/// to the empty vector (a blind put).
pub fn decode_context(key: &[u8], bytes: &[u8]) -> Result<VersionVector, ContextError> {
    let Some((&version, rest)) = bytes.split_first() else {
        return Ok(VersionVector::new());
    };
    if version != CONTEXT_FORMAT_VERSION {
        return Err(ContextError::UnknownVersion { version });
    }
    if rest.len() < 8 {
        return Err(ContextError::Malformed {
            reason: format!("truncated: the key hash needs 8 bytes, {} left", rest.len()),
        });
    }
    let (hash_bytes, mut vector_bytes) = rest.split_at(8);
    let mut hash_array = [0u8; 8];
    hash_array.copy_from_slice(hash_bytes);
    if u64::from_be_bytes(hash_array) != key_hash(key) {
        return Err(ContextError::WrongKey);
    }

    let vector = VersionVector::decode_from(&mut vector_bytes).map_err(|error| {
        let reason = match error {
            DecodeError::Invalid(reason) => reason,
            DecodeError::UnknownVersion(version) => format!("unknown vector version {version}"),
        };
        ContextError::Malformed { reason }
    })?;
    if !vector_bytes.is_empty() {
        return Err(ContextError::Malformed {
            reason: format!(
                "{} trailing bytes after the version vector",
                vector_bytes.len()
            ),
        });
    }
    Ok(vector)
}
