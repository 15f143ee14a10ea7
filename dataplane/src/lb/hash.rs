//! Stable hashing of flow keys and backend identities.
//!
//! Source hashing and Maglev need a hash that is the same for the same input every time the
//! process runs (unlike `std`'s randomly keyed `RandomState`). [`StableHasher`] is FNV-1a
//! over the bytes `Hash` writes, finished with MurmurHash3's `fmix64` avalanche so that the
//! low and high bits are both well mixed.

use std::hash::{Hash, Hasher};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// MurmurHash3's 64-bit finalizer: a bijection with full avalanche.
pub fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// A deterministic `Hasher` (FNV-1a, then `fmix64` in [`Hasher::finish`]).
#[derive(Debug, Clone)]
pub struct StableHasher {
    state: u64,
}

impl StableHasher {
    /// A hasher with a seed mixed into its initial state (seed 0 is plain FNV-1a).
    pub fn with_seed(seed: u64) -> Self {
        StableHasher {
            state: FNV_OFFSET ^ fmix64(seed),
        }
    }
}

impl Default for StableHasher {
    fn default() -> Self {
        StableHasher { state: FNV_OFFSET }
    }
}

impl Hasher for StableHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.state ^= u64::from(*b);
            self.state = self.state.wrapping_mul(FNV_PRIME);
        }
    }

    fn finish(&self) -> u64 {
        fmix64(self.state)
    }
}

/// The stable hash of `value` with `seed`.
pub fn stable_hash<T: Hash + ?Sized>(value: &T, seed: u64) -> u64 {
    let mut h = StableHasher::with_seed(seed);
    value.hash(&mut h);
    h.finish()
}
