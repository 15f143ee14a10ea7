//! Weighted choice by cumulative weights, shared by the random and source-hash balancers.
//!
//! Backend `i` owns the half-open interval `[c(i-1), c(i))` of `0..total`, where `c` is the
//! prefix sum of the weights. A uniform draw in `0..total` therefore picks backend `i` with
//! probability `w(i) / total`, exactly; zero-weight backends own an empty interval and are
//! never chosen. Lookup is a binary search, `O(log n)`, with no allocation.

use super::rng::SplitMix64;

/// Prefix sums of backend weights.
#[derive(Debug, Clone, Default)]
pub struct CumulativeWeights {
    /// `ends[i]` is the exclusive end of backend `i`'s interval.
    ends: Vec<u64>,
}

impl CumulativeWeights {
    /// The prefix sums of `weights`.
    pub fn new(weights: &[u32]) -> Self {
        let mut total = 0u64;
        let ends = weights
            .iter()
            .map(|w| {
                total += u64::from(*w);
                total
            })
            .collect();
        CumulativeWeights { ends }
    }

    /// The sum of all weights.
    pub fn total(&self) -> u64 {
        self.ends.last().copied().unwrap_or(0)
    }

    /// The backend owning `point` (taken modulo the total), `None` when the total is 0.
    pub fn locate(&self, point: u64) -> Option<usize> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let point = point % total;
        // First end strictly greater than `point`: that backend's interval holds it.
        Some(self.ends.partition_point(|end| *end <= point))
    }
}

/// Weighted random choice: each pick is independent, backend `i` with probability
/// `w(i) / Σw`.
#[derive(Debug, Clone)]
pub struct WeightedRandom {
    weights: CumulativeWeights,
    rng: SplitMix64,
}

impl WeightedRandom {
    /// A random balancer over `weights`, reproducible from `seed`.
    pub fn new(weights: &[u32], seed: u64) -> Self {
        WeightedRandom {
            weights: CumulativeWeights::new(weights),
            rng: SplitMix64::new(seed),
        }
    }

    /// Draws a backend, `None` when no backend has a positive weight.
    pub fn pick(&mut self) -> Option<usize> {
        let total = self.weights.total();
        if total == 0 {
            return None;
        }
        self.weights.locate(self.rng.below(total))
    }
}

/// Weighted source hashing: the same key always maps to the same backend while the set and
/// its weights are unchanged; keys spread in proportion to the weights.
///
/// This is plain modulo hashing: when the set changes, most keys move. Use
/// [`super::maglev::Maglev`] where minimal disruption matters.
#[derive(Debug, Clone)]
pub struct SourceHash {
    weights: CumulativeWeights,
}

impl SourceHash {
    /// A source-hash balancer over `weights`.
    pub fn new(weights: &[u32]) -> Self {
        SourceHash {
            weights: CumulativeWeights::new(weights),
        }
    }

    /// The backend for a key hash (see [`super::hash::stable_hash`]), `None` when no backend
    /// has a positive weight.
    pub fn pick(&self, key_hash: u64) -> Option<usize> {
        let total = self.weights.total();
        if total == 0 {
            return None;
        }
        // Multiply-shift instead of modulo: uses the high bits, no division.
        self.weights
            .locate(((u128::from(key_hash) * u128::from(total)) >> 64) as u64)
    }
}
