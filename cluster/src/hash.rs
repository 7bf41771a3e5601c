//! Key hashing. Keys hash with xxh3-64, which is stable across Rust versions
//! and platforms; a key's partition is the top bits of its hash.

use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

/// Returns the 64-bit ring position of a key.
pub fn key_hash(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// Returns the partition of a ring position when the ring has `partitions`
/// partitions, a power of two: the top log2(partitions) bits of the hash.
pub fn partition_of(hash: u64, partitions: u32) -> u32 {
    debug_assert!(partitions.is_power_of_two());
    let bits = partitions.trailing_zeros();
    if bits == 0 {
        0
    } else {
        (hash >> (64 - bits)) as u32
    }
}

/// Returns the storage key of a user key: its hash, big-endian, then the key, so that
/// every partition is one contiguous range in an ordered engine.
pub fn storage_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&key_hash(key).to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// Returns the half-open storage-key range `[start, end)` of a partition; `end` is
/// `None` for the last partition.
pub fn partition_range(partition: u32, partitions: u32) -> (Vec<u8>, Option<Vec<u8>>) {
    let bits = partitions.trailing_zeros();
    let width: u128 = 1u128 << (64 - bits);
    let start = (partition as u128 * width) as u64;
    let end = (partition as u128 + 1) * width;
    let end = if end > u64::MAX as u128 {
        None
    } else {
        Some((end as u64).to_be_bytes().to_vec())
    };
    (start.to_be_bytes().to_vec(), end)
}

/// Returns the 128-bit digest (xxh3-128) of bytes.
pub fn digest128(bytes: &[u8]) -> u128 {
    xxh3_128(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_uses_top_bits() {
        assert_eq!(partition_of(0, 256), 0);
        assert_eq!(partition_of(u64::MAX, 256), 255);
        assert_eq!(partition_of(1u64 << 56, 256), 1);
        assert_eq!(partition_of(u64::MAX, 1), 0);
    }

    #[test]
    fn storage_key_falls_in_its_partition_range() {
        for key in [&b"a"[..], b"hello", b"zzzzzz", b"\x00"] {
            let partition = partition_of(key_hash(key), 64);
            let (start, end) = partition_range(partition, 64);
            let stored = storage_key(key);
            assert!(stored.as_slice() >= start.as_slice());
            if let Some(end) = end {
                assert!(stored.as_slice() < end.as_slice());
            }
        }
    }

    #[test]
    fn hash_is_stable() {
        // xxh3-64 of the empty input, from the reference implementation.
        assert_eq!(key_hash(b""), 0x2d06800538d394c2);
    }
}
