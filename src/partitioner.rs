//! The partitioners producers use to pick a receipt's partition from its key (the user id),
//! so that a query can look for a user first where the producers would have put it.
//!
//! A guess only orders the look-up: a user is still found in any partition (a producer
//! with another partitioner, or a topic whose partition count changed), at the cost of
//! reading the others too.

use std::sync::atomic::{AtomicU64, Ordering};

/// A producer-side partitioner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partitioner {
    /// The Java producer's default (and librdkafka's `murmur2_random`): murmur2 of the
    /// key, sign bit cleared, modulo the partition count.
    Murmur2,
    /// librdkafka's default (`consistent_random`), so `mallquest simulate`'s: CRC-32 of
    /// the key modulo the partition count.
    Crc32,
    /// `mallquest demo` and `bench`: 64-bit FNV-1a of the key modulo the partition count.
    Fnv64,
}

impl Partitioner {
    /// Every partitioner known here.
    pub const ALL: [Partitioner; 3] = [Self::Murmur2, Self::Crc32, Self::Fnv64];

    /// The partition of `key` among `partitions` (at least 1).
    pub fn partition(self, key: &[u8], partitions: i32) -> i32 {
        let n = partitions.max(1) as u64;
        let h = match self {
            Self::Murmur2 => u64::from(murmur2(key) as u32 & 0x7fff_ffff),
            Self::Crc32 => u64::from(crc32(key)),
            Self::Fnv64 => fnv64(key),
        };
        // Below `partitions`, so it fits.
        (h % n) as i32
    }
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (i, b) in rest.iter().enumerate().rev() {
            h ^= u32::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// CRC-32 (IEEE, reflected: zlib's and librdkafka's `rd_crc32`).
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 == 1 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut c = 0xffff_ffffu32;
    for b in data {
        c = TABLE[((c ^ u32::from(*b)) & 0xff) as usize] ^ (c >> 8);
    }
    c ^ 0xffff_ffff
}

/// 64-bit FNV-1a: deterministic, unlike the std hasher's random seed.
pub fn fnv64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Which partitioner the producers of a store's receipts seem to use, learned from the
/// users found: the partitioners ordered by how often each picked the partition a user was
/// found in.
#[derive(Debug, Default)]
pub struct Learned {
    hits: [AtomicU64; Partitioner::ALL.len()],
}

impl Learned {
    /// The partitions to read first for `key` among `partitions`, best guess first,
    /// without repeats.
    pub fn guesses(&self, key: &[u8], partitions: i32) -> Vec<i32> {
        let mut ranked: Vec<(u64, usize)> = self
            .hits
            .iter()
            .enumerate()
            .map(|(i, h)| (h.load(Ordering::Relaxed), i))
            .collect();
        // Most hits first; on a tie, the order of `ALL`.
        ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut out = Vec::with_capacity(ranked.len());
        for (_, i) in ranked {
            let p = Partitioner::ALL[i].partition(key, partitions);
            if !out.contains(&p) {
                out.push(p);
            }
        }
        out
    }

    /// `key` was found in `partition`: every partitioner that picks it scores.
    pub fn found(&self, key: &[u8], partitions: i32, partition: i32) {
        for (i, p) in Partitioner::ALL.iter().enumerate() {
            if p.partition(key, partitions) == partition {
                self.hits[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_agrees_with_kafkas_own_test_vectors() {
        // org.apache.kafka.common.utils.UtilsTest.testMurmur2
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (key, want) in cases {
            assert_eq!(murmur2(key), want, "{}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn crc32_is_the_ieee_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn the_partitioner_that_placed_the_users_is_learned_and_tried_first() {
        let learned = Learned::default();
        let n = 12;
        // Users placed by CRC-32, as librdkafka's default partitioner places them.
        for i in 0..200 {
            let key = format!("u-{i:08}");
            let p = Partitioner::Crc32.partition(key.as_bytes(), n);
            learned.found(key.as_bytes(), n, p);
        }
        for i in 200..400 {
            let key = format!("u-{i:08}");
            let guesses = learned.guesses(key.as_bytes(), n);
            assert_eq!(
                guesses[0],
                Partitioner::Crc32.partition(key.as_bytes(), n),
                "{key}"
            );
            assert!(guesses.len() <= 3 && guesses.iter().all(|p| (0..n).contains(p)));
        }
    }
}
