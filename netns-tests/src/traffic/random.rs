//! Non-cryptographic randomness for traffic generators, without a `rand` dependency.
//!
//! [`seed`] mixes std's per-process randomly keyed [`RandomState`] with the clock, the pid and
//! a process-wide counter, so two calls (or two test processes) never share a seed.
//! [`SplitMix64`] stretches a seed into a stream (sequence numbers, IP identifiers, ports).

use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static CALLS: AtomicU64 = AtomicU64::new(0);

/// A fresh 64-bit seed, different on every call and in every process.
pub fn seed() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    hasher.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

/// The SplitMix64 generator (Steele, Lea, Flood 2014): tiny, fast, good enough for ports and
/// sequence numbers.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded with [`seed`].
    pub fn new() -> Self {
        Self::from_seed(seed())
    }

    /// A generator with a given seed (reproducible streams for unit tests).
    pub fn from_seed(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The next 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// A value in `range` (which must not be empty; an empty range yields its start).
    pub fn in_range(&mut self, range: std::ops::Range<u16>) -> u16 {
        let span = u64::from(range.end.saturating_sub(range.start));
        if span == 0 {
            return range.start;
        }
        range.start + (self.next_u64() % span) as u16
    }
}

impl Default for SplitMix64 {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_differ() {
        assert_ne!(seed(), seed());
    }

    #[test]
    fn range_is_respected() {
        let mut rng = SplitMix64::from_seed(7);
        for _ in 0..1000 {
            let v = rng.in_range(49152..65535);
            assert!((49152..65535).contains(&v));
        }
        assert_eq!(rng.in_range(5..5), 5);
    }
}
