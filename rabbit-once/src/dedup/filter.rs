//! A blocked Bloom filter over dedup keys: a sealed segment's summary, kept in memory, that says
//! "certainly not here" for almost every id that is not in the segment, so a claim reads a
//! segment's table only for the few ids the filter cannot rule out.
//!
//! One 512-bit block (a cache line) per key: the block is chosen by one half of the key's hash,
//! the bits inside it by the other, so a lookup touches one cache line. At 16 bits per key the
//! false-positive rate is about 0.1–0.2 %. A false positive costs a lookup in the segment's
//! table; a false negative never happens (every inserted key's bits are set).
//!
//! The hash is FNV-1a over the group, a separator and the id, finished with splitmix64: stable
//! across processes and versions (filters are stored in the database), not keyed — a producer
//! that crafted colliding ids would only cost us lookups, never a wrong answer.

/// Bits per key a new filter is sized for.
const BITS_PER_KEY: usize = 16;
/// Bits set per key, all within one block.
const K: u32 = 11;
/// u64 words per block (512 bits).
const WORDS: usize = 8;
/// The format version byte at the start of a stored filter.
const FORMAT: u8 = 1;

/// The 64-bit hash of a dedup key `(group, id)`.
pub(crate) fn key_hash(group: &str, id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in group.bytes().chain(std::iter::once(0xff)).chain(id.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// splitmix64's finalizer: every input bit moves every output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A blocked Bloom filter of key hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Filter {
    blocks: Vec<[u64; WORDS]>,
}

impl Filter {
    /// An empty filter sized for `keys` keys.
    pub(crate) fn with_capacity(keys: usize) -> Self {
        let blocks = (keys.max(1) * BITS_PER_KEY).div_ceil(WORDS * 64);
        Filter {
            blocks: vec![[0; WORDS]; blocks],
        }
    }

    /// The block of `h`, and the bit positions inside it (0..512).
    fn place(&self, h: u64) -> (usize, impl Iterator<Item = u32> + use<>) {
        let block = (((h >> 32) * self.blocks.len() as u64) >> 32) as usize;
        let h2 = mix(h ^ 0x9e37_79b9_7f4a_7c15);
        let a = (h2 & 511) as u32;
        let b = ((h2 >> 9) & 511) as u32 | 1;
        (block, (0..K).map(move |i| (a + i * b) & 511))
    }

    /// Adds a key hash.
    pub(crate) fn insert(&mut self, h: u64) {
        let (i, bits) = self.place(h);
        let block = &mut self.blocks[i];
        for bit in bits {
            block[(bit / 64) as usize] |= 1 << (bit % 64);
        }
    }

    /// False if the key hash was certainly never inserted.
    pub(crate) fn may_contain(&self, h: u64) -> bool {
        let (i, mut bits) = self.place(h);
        let block = &self.blocks[i];
        bits.all(|bit| block[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }

    /// The filter as bytes, to store beside its segment.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.blocks.len() * WORDS * 8);
        out.push(FORMAT);
        for block in &self.blocks {
            for w in block {
                out.extend_from_slice(&w.to_le_bytes());
            }
        }
        out
    }

    /// A filter back from [`Filter::to_bytes`]; `None` if the bytes are not one (a reader then
    /// treats the segment as "may contain anything" and reads its table).
    pub(crate) fn from_bytes(b: &[u8]) -> Option<Self> {
        let (&format, rest) = b.split_first()?;
        if format != FORMAT || rest.is_empty() || rest.len() % (WORDS * 8) != 0 {
            return None;
        }
        let blocks = rest
            .chunks_exact(WORDS * 8)
            .map(|c| {
                let mut block = [0u64; WORDS];
                for (w, bytes) in block.iter_mut().zip(c.chunks_exact(8)) {
                    *w = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
                }
                block
            })
            .collect();
        Some(Filter { blocks })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u64) -> String {
        format!("{:032x}", mix(i))
    }

    #[test]
    fn every_inserted_key_is_found() {
        let mut f = Filter::with_capacity(10_000);
        for i in 0..10_000 {
            f.insert(key_hash("g", &id(i)));
        }
        assert!((0..10_000).all(|i| f.may_contain(key_hash("g", &id(i)))));
    }

    #[test]
    fn few_false_positives_at_the_sized_capacity() {
        let mut f = Filter::with_capacity(100_000);
        for i in 0..100_000 {
            f.insert(key_hash("g", &id(i)));
        }
        let fp = (100_000..300_000)
            .filter(|&i| f.may_contain(key_hash("g", &id(i))))
            .count();
        // 16 bits a key in 512-bit blocks: ~0.1-0.2 %; 0.5 % is the bound we rely on.
        assert!(fp < 1_000, "{fp} false positives of 200,000");
    }

    #[test]
    fn the_group_is_part_of_the_key() {
        let mut f = Filter::with_capacity(1_000);
        for i in 0..1_000 {
            f.insert(key_hash("a", &id(i)));
        }
        let hits = (0..1_000)
            .filter(|&i| f.may_contain(key_hash("b", &id(i))))
            .count();
        assert!(hits < 20, "{hits}");
        // "ab"+"c" and "a"+"bc" are different keys.
        assert_ne!(key_hash("ab", "c"), key_hash("a", "bc"));
    }

    #[test]
    fn round_trips_through_bytes_and_refuses_garbage() {
        let mut f = Filter::with_capacity(500);
        for i in 0..500 {
            f.insert(key_hash("g", &id(i)));
        }
        let back = Filter::from_bytes(&f.to_bytes()).expect("a filter");
        assert_eq!(back, f);
        assert!(Filter::from_bytes(&[]).is_none());
        assert!(Filter::from_bytes(&[FORMAT]).is_none());
        assert!(Filter::from_bytes(&[FORMAT, 1, 2, 3]).is_none());
        assert!(Filter::from_bytes(&[9; 65]).is_none());
    }

    #[test]
    fn the_hash_is_stable_across_versions() {
        // Filters are stored in databases: a changed hash would make every stored filter lie.
        // FNV-1a 64 of b"g\xffid-1", then splitmix64 (checked by hand in Python).
        assert_eq!(key_hash("g", "id-1"), 0xfe29_2d92_c25b_4e73_u64);
    }
}
