//! The workload's memory: a deterministic pattern (SplitMix64 of the word index and a seed)
//! whose SHA-256 the workload verifies, so that any page lost, zeroed or mixed up by a migration
//! changes the checksum.

use sha2::{Digest, Sha256};

/// Default seed of the pattern.
pub const DEFAULT_SEED: u64 = 0x10d6_e5ca_fe00_0001;

/// Hex digits of the SHA-256 printed in records (64 bits: plenty to detect corruption).
pub const SUM_HEX_DIGITS: usize = 16;

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `buf` with the pattern for `seed`; every 8-byte word depends on its index.
pub fn fill(buf: &mut [u8], seed: u64) {
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let word = splitmix64(seed ^ (i as u64)).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

/// Allocates `mib` MiB filled with the pattern for `seed`.
pub fn allocate(mib: u64, seed: u64) -> Vec<u8> {
    let len = usize::try_from(mib * 1024 * 1024).expect("memory size fits in usize on 64-bit");
    let mut buf = vec![0u8; len];
    fill(&mut buf, seed);
    buf
}

/// The printed checksum of `buf`: the first [`SUM_HEX_DIGITS`] hex digits of its SHA-256.
pub fn checksum(buf: &[u8]) -> String {
    let digest = Sha256::digest(buf);
    let mut s = hex::encode(digest);
    s.truncate(SUM_HEX_DIGITS);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pattern is deterministic and seed-dependent, and a single flipped byte changes the
    /// checksum; otherwise the workload cannot detect lost or corrupted pages.
    #[test]
    fn checksum_detects_one_byte() {
        let a = allocate(1, DEFAULT_SEED);
        let b = allocate(1, DEFAULT_SEED);
        assert_eq!(checksum(&a), checksum(&b));
        assert_ne!(checksum(&a), checksum(&allocate(1, DEFAULT_SEED + 1)));
        let mut c = a.clone();
        c[512 * 1024] ^= 1;
        assert_ne!(checksum(&a), checksum(&c));
        // Pages are not all alike (a page-dedup bug would not go unnoticed).
        assert_ne!(a[..4096], a[4096..8192]);
        assert_eq!(checksum(&a).len(), SUM_HEX_DIGITS);
    }
}
