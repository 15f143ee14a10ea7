//! Round robin and smooth weighted round robin.
//!
//! * [`RoundRobin`] cycles through the backends in order: over any `n` consecutive picks
//!   every backend is chosen exactly once.
//! * [`WeightedRoundRobin`] is nginx's *smooth* weighted round robin: each pick adds every
//!   backend's weight to its running score, chooses the highest score (lowest index on a
//!   tie) and subtracts the total weight from it. Over every cycle of `W = Σw` picks
//!   (starting from a fresh balancer) backend `i` is chosen exactly `w(i)` times, and picks
//!   are interleaved rather than bunched (`5,1,1` gives `a a b a c a a`, not `a a a a a b c`).
//!   Zero-weight backends are never chosen.

/// Plain round robin over `n` backends.
#[derive(Debug, Clone)]
pub struct RoundRobin {
    len: usize,
    next: usize,
}

impl RoundRobin {
    /// A round robin over `len` backends, starting at backend 0.
    pub fn new(len: usize) -> Self {
        RoundRobin { len, next: 0 }
    }

    /// The next backend, `None` for an empty set.
    pub fn pick(&mut self) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let chosen = self.next % self.len;
        self.next = (chosen + 1) % self.len;
        Some(chosen)
    }
}

/// Smooth weighted round robin (nginx's algorithm).
#[derive(Debug, Clone)]
pub struct WeightedRoundRobin {
    weights: Vec<i64>,
    current: Vec<i64>,
    total: i64,
}

impl WeightedRoundRobin {
    /// A weighted round robin over `weights`.
    pub fn new(weights: &[u32]) -> Self {
        let weights: Vec<i64> = weights.iter().map(|w| i64::from(*w)).collect();
        let total = weights.iter().sum();
        WeightedRoundRobin {
            current: vec![0; weights.len()],
            weights,
            total,
        }
    }

    /// The length of one fair cycle: the sum of the weights.
    pub fn cycle_len(&self) -> u64 {
        self.total.unsigned_abs()
    }

    /// The next backend, `None` when no backend has a positive weight.
    pub fn pick(&mut self) -> Option<usize> {
        if self.total <= 0 {
            return None;
        }
        let mut best: Option<(usize, i64)> = None;
        for (i, (cur, w)) in self.current.iter_mut().zip(&self.weights).enumerate() {
            *cur += *w;
            if *w > 0 && best.is_none_or(|(_, score)| *cur > score) {
                best = Some((i, *cur));
            }
        }
        let (chosen, _) = best?;
        self.current[chosen] -= self.total;
        Some(chosen)
    }
}
