//! The one place that maps a task's key to its partition.
//!
//! **Algorithm (stable, part of the data format):** the partition of `key` in a queue of `n`
//! partitions is `xxh64(key bytes, seed 0) mod n`, where `xxh64` is the 64-bit xxHash of
//! Yann Collet (the `twox-hash` crate's `XxHash64`). It never depends on the process, the
//! platform or the Rust version (unlike `std`'s randomized `DefaultHasher`), so every
//! process, every language with an xxHash64 implementation and every future version of
//! Helix sends one key to one partition, for as long as the partition count stays the same.
//! Changing a queue's partition count moves keys; that is why partition counts are fixed at
//! creation.

use twox_hash::XxHash64;

use crate::ids::PartitionId;
use crate::names::PartitionCount;

/// The seed of the key hash. Fixed forever: changing it would move every key.
pub const KEY_HASH_SEED: u64 = 0;

/// The stable 64-bit hash of a key: xxHash64 of its bytes with seed [`KEY_HASH_SEED`].
///
/// ```
/// // The reference vectors of xxHash64 with seed 0.
/// assert_eq!(helix_core::partitioning::key_hash(b""), 0xEF46_DB37_51D8_E999);
/// assert_eq!(helix_core::partitioning::key_hash(b"abc"), 0x44BC_2CF5_AD77_0999);
/// ```
pub fn key_hash(key: &[u8]) -> u64 {
    XxHash64::oneshot(KEY_HASH_SEED, key)
}

/// The partition of `key` among `partitions`: `key_hash(key) mod partitions`. The same key
/// and count give the same partition in every process and version.
///
/// ```
/// use helix_core::{PartitionCount, PartitionId, partition_for_key};
///
/// let count = PartitionCount::new(64).unwrap();
/// let p = partition_for_key(b"customer-42", count);
/// assert!(p.0 < 64);
/// assert_eq!(p, partition_for_key(b"customer-42", count));
/// ```
pub fn partition_for_key(key: &[u8], partitions: PartitionCount) -> PartitionId {
    let n = u64::from(partitions.get());
    // The remainder is below the count, a u32, so the conversion cannot truncate.
    PartitionId((key_hash(key) % n) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_vectors_of_xxhash64_seed_zero() {
        assert_eq!(key_hash(b""), 0xEF46_DB37_51D8_E999);
        assert_eq!(key_hash(b"abc"), 0x44BC_2CF5_AD77_0999);
    }

    #[test]
    fn partitions_are_fixed_for_a_key_and_count() {
        let count = |n| PartitionCount::new(n).expect("valid count");
        // Pinned values: a change here moves keys between partitions in live clusters.
        assert_eq!(partition_for_key(b"", count(64)), PartitionId((0xEF46_DB37_51D8_E999_u64 % 64) as u32));
        assert_eq!(
            partition_for_key(b"abc", count(10)),
            PartitionId((0x44BC_2CF5_AD77_0999_u64 % 10) as u32)
        );
        assert_eq!(partition_for_key(b"anything", count(1)), PartitionId(0));
    }

    #[test]
    fn keys_spread_over_partitions() {
        let count = PartitionCount::new(16).expect("valid count");
        let mut seen = [0u32; 16];
        for i in 0..16_000 {
            seen[partition_for_key(format!("key-{i}").as_bytes(), count).0 as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (700..1300).contains(&n)), "uneven spread {seen:?}");
    }
}
