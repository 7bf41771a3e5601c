//! Checksummed record framing for every value stored by ringkv.
//!
//! A record is `[format version: u8][crc32 of payload: u32 little-endian][payload]`.
//! The checksum is CRC-32 (IEEE, as computed by `crc32fast`) over the payload
//! only. A record that fails to decode must be treated as unknown by the
//! caller: never served, never taken as absent.

/// Format version written by [`encode`] and the only one [`decode`] accepts.
pub const RECORD_VERSION: u8 = 1;

/// Header length: one version byte and a four-byte checksum.
pub const HEADER_LEN: usize = 5;

/// Reason a stored record cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record is truncated: {len} bytes, but the header alone is {HEADER_LEN} bytes")]
    Truncated { len: usize },

    #[error(
        "record format version {version} is unknown: this build reads version {RECORD_VERSION} \
         (was the record written by a newer ringkv?)"
    )]
    UnknownVersion { version: u8 },

    #[error(
        "record checksum mismatch: stored {stored:#010x}, computed {computed:#010x}; \
         the record is corrupt"
    )]
    BadChecksum { stored: u32, computed: u32 },
}

/// Frames `payload` with the current format version and its checksum.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.push(RECORD_VERSION);
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Checks the version and checksum of a record and returns its payload.
pub fn decode(bytes: &[u8]) -> Result<&[u8], RecordError> {
    let Some((header, payload)) = bytes.split_at_checked(HEADER_LEN) else {
        return Err(RecordError::Truncated { len: bytes.len() });
    };
    let version = header[0];
    if version != RECORD_VERSION {
        return Err(RecordError::UnknownVersion { version });
    }
    let stored = u32::from_le_bytes([header[1], header[2], header[3], header[4]]);
    let computed = crc32fast::hash(payload);
    if stored != computed {
        return Err(RecordError::BadChecksum { stored, computed });
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_payload() {
        for payload in [&b""[..], b"x", &[0u8, 255, 7, 0][..]] {
            let encoded = encode(payload);
            assert_eq!(encoded.len(), HEADER_LEN + payload.len());
            assert_eq!(decode(&encoded), Ok(payload));
        }
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let encoded = encode(b"some payload");
        for bit in 0..encoded.len() * 8 {
            let mut corrupt = encoded.clone();
            corrupt[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode(&corrupt).is_err(),
                "flip of bit {bit} was not detected"
            );
        }
    }
}
