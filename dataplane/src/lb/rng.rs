//! A tiny deterministic pseudo-random generator (SplitMix64) for the random balancer.
//!
//! Load balancing needs speed and a uniform spread, not cryptographic strength. Owning the
//! generator keeps the library dependency-free and makes every test reproducible from a seed.

/// SplitMix64 (Steele, Lea, Flood 2014): passes BigCrush, one add and three mixes per draw.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator starting from `seed` (any value, zero included, is a good seed).
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 uniformly distributed bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        super::hash::fmix64(self.state)
    }

    /// A uniform value in `0..bound` (Lemire's multiply-shift; bias below 2^-32 for any
    /// `u32` bound). Returns 0 when `bound` is 0.
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }
}
