//! Base62 codes of snowflake ids.
//!
//! The alphabet is `0-9A-Za-z`, most significant digit first, with no
//! padding. An id issued after 2026-01-08 takes at least 9 digits, because
//! ids are at least 2^22 times the milliseconds since the id epoch.

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Maximum number of digits of a `u64` in base62.
pub const MAX_CODE_LEN: usize = 11;

/// Encodes `id` in base62.
pub fn encode(mut id: u64) -> String {
    if id == 0 {
        return "0".to_string();
    }
    let mut digits = Vec::with_capacity(MAX_CODE_LEN);
    while id > 0 {
        digits.push(ALPHABET[(id % 62) as usize]);
        id /= 62;
    }
    digits.reverse();
    String::from_utf8(digits).expect("the alphabet is ASCII")
}

/// Decodes a base62 code, or returns `None` for an empty code, a character
/// outside the alphabet, a leading zero or a value above `u64::MAX`.
pub fn decode(code: &str) -> Option<u64> {
    if code.is_empty() || code.len() > MAX_CODE_LEN || (code.len() > 1 && code.starts_with('0')) {
        return None;
    }
    let mut id: u64 = 0;
    for byte in code.bytes() {
        let digit = match byte {
            b'0'..=b'9' => byte - b'0',
            b'A'..=b'Z' => byte - b'A' + 10,
            b'a'..=b'z' => byte - b'a' + 36,
            _ => return None,
        };
        id = id.checked_mul(62)?.checked_add(u64::from(digit))?;
    }
    Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for id in [0, 1, 61, 62, 3843, 3844, 1 << 40, u64::MAX - 1, u64::MAX] {
            let code = encode(id);
            assert_eq!(decode(&code), Some(id), "code {code}");
        }
    }

    #[test]
    fn known_values() {
        assert_eq!(encode(61), "z");
        assert_eq!(encode(62), "10");
        assert_eq!(encode(u64::MAX), "LygHa16AHYF");
    }

    #[test]
    fn invalid_codes_rejected() {
        for code in [
            "",
            "abc-",
            "favicon.ico",
            "0abc",
            "LygHa16AHYG",
            "zzzzzzzzzzzz",
        ] {
            assert_eq!(decode(code), None, "code {code:?}");
        }
    }

    #[test]
    fn recent_ids_have_nine_digits() {
        // 2026-01-08 in ms since the id epoch, shifted past worker and sequence.
        let id = (7 * 24 * 3600 * 1000u64) << 22;
        assert!(encode(id).len() >= 9, "{}", encode(id));
    }
}
