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
//! context presented with another key, unless both keys have the same 64-bit
//! hash.
//!
//! NOTE: a context is not authenticated. A forged context that covers dots
//! not issued yet makes later writes under those dots disappear in merges,
//! so clients must pass contexts back exactly as they received them.

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
    #[error(
        "invalid context: unknown format version {version}; read the key again and use the context returned"
    )]
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
            reason: format!(
                "truncated: the key hash needs 8 bytes, only {} left",
                rest.len()
            ),
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
                "unexpected bytes after the version vector: {}",
                vector_bytes.len()
            ),
        });
    }
    Ok(vector)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::Actor;
    use proptest::prelude::*;

    fn sample_vector() -> VersionVector {
        let mut vector = VersionVector::new();
        vector.raise(
            Actor {
                node: 0xb,
                epoch: 1,
            },
            2,
        );
        vector.raise(
            Actor {
                node: 0xc,
                epoch: 4,
            },
            1,
        );
        vector
    }

    #[test]
    fn context_round_trips() {
        let bytes = encode_context(b"key", &sample_vector());

        assert_eq!(decode_context(b"key", &bytes), Ok(sample_vector()));
        assert_eq!(bytes[0], CONTEXT_FORMAT_VERSION);
    }

    #[test]
    fn empty_bytes_decode_to_empty_vector() {
        assert_eq!(decode_context(b"key", b""), Ok(VersionVector::new()));
    }

    #[test]
    fn empty_vector_round_trips() {
        let bytes = encode_context(b"key", &VersionVector::new());

        assert_eq!(decode_context(b"key", &bytes), Ok(VersionVector::new()));
    }

    #[test]
    fn context_of_other_key_is_rejected() {
        let bytes = encode_context(b"key", &sample_vector());

        let error = decode_context(b"other", &bytes).expect_err("wrong key");

        assert_eq!(error, ContextError::WrongKey);
        assert_eq!(
            error.to_string(),
            "context was issued for another key; read this key and use the context returned"
        );
    }

    #[test]
    fn unknown_version_is_rejected() {
        let mut bytes = encode_context(b"key", &sample_vector());
        bytes[0] = 7;

        let error = decode_context(b"key", &bytes).expect_err("unknown version");

        assert_eq!(error, ContextError::UnknownVersion { version: 7 });
        assert!(error.to_string().starts_with("invalid context: "));
    }

    #[test]
    fn truncated_and_trailing_bytes_are_malformed() {
        let bytes = encode_context(b"key", &sample_vector());
        for len in 1..bytes.len() {
            let result = decode_context(b"key", &bytes[..len]);
            assert!(
                matches!(result, Err(ContextError::Malformed { .. })),
                "prefix of {len} bytes gave {result:?}"
            );
        }

        let mut trailing = bytes;
        trailing.push(0);
        let error = decode_context(b"key", &trailing).expect_err("trailing byte");
        assert!(matches!(error, ContextError::Malformed { .. }));
        assert!(error
            .to_string()
            .starts_with("invalid context: unexpected bytes"));
    }

    proptest! {
        #[test]
        fn decode_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            let _ = decode_context(b"key", &bytes);
        }
    }
}
