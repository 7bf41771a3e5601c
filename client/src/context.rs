//! The opaque causal context that a get or put returns and a later put or
//! delete of the same key sends back.
//!
//! The bytes are produced by the nodes (a format byte, a hash of the key and
//! a version vector); the client never looks inside. Text form is base64,
//! URL-safe alphabet without padding, so a context fits in a shell argument
//! or a URL. An empty context means "covers nothing" (a blind write).

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// Causal context of one key, as returned by the nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Context {
    bytes: Vec<u8>,
}

/// Error of [`Context::from_base64`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid context {text:?} ({reason}); pass the context exactly as a get or put printed it")]
pub struct ContextParseError {
    /// The rejected text, shortened to its first 40 characters.
    pub text: String,
    /// Error message of the base64 decoder.
    pub reason: String,
}

impl Context {
    /// Wraps context bytes received from a node.
    pub fn from_bytes(bytes: Vec<u8>) -> Context {
        Context { bytes }
    }

    /// Returns the raw context bytes, as sent on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Consumes the context and returns its bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// True for the empty context of a missing key or a blind write.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Encodes the context as URL-safe base64 without padding.
    pub fn to_base64(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.bytes)
    }

    /// Decodes a context written by [`Context::to_base64`]. Surrounding
    /// whitespace is ignored; the empty string is the empty context.
    pub fn from_base64(text: &str) -> Result<Context, ContextParseError> {
        let trimmed = text.trim();
        match URL_SAFE_NO_PAD.decode(trimmed) {
            Ok(bytes) => Ok(Context { bytes }),
            Err(error) => Err(ContextParseError {
                text: trimmed.chars().take(40).collect(),
                reason: error.to_string().trim_end_matches('.').to_string(),
            }),
        }
    }
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl FromStr for Context {
    type Err = ContextParseError;

    fn from_str(text: &str) -> Result<Context, ContextParseError> {
        Context::from_base64(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip_keeps_bytes() {
        let context = Context::from_bytes((0..=255u8).collect());
        let text = context.to_base64();
        assert!(!text.contains('='), "no padding expected in {text}");
        assert!(!text.contains('+'), "URL-safe alphabet expected in {text}");
        assert!(!text.contains('/'), "URL-safe alphabet expected in {text}");
        assert_eq!(Context::from_base64(&text), Ok(context.clone()));
        assert_eq!(text.parse::<Context>(), Ok(context));
    }

    #[test]
    fn empty_context_is_empty_string() {
        let context = Context::default();
        assert!(context.is_empty());
        assert_eq!(context.to_base64(), "");
        assert_eq!(Context::from_base64(""), Ok(Context::default()));
    }

    #[test]
    fn from_base64_ignores_surrounding_whitespace() {
        let context = Context::from_bytes(vec![1, 2, 3, 250]);
        let text = format!("  {}\n", context.to_base64());
        assert_eq!(Context::from_base64(&text), Ok(context));
    }

    #[test]
    fn from_base64_rejects_invalid_text() {
        let error = Context::from_base64("not base64!").expect_err("'!' is not base64");
        assert_eq!(error.text, "not base64!");
        assert!(error.to_string().contains("invalid context"));
    }

    #[test]
    fn from_base64_rejects_padding() {
        assert!(Context::from_base64("AQI=").is_err());
    }
}
