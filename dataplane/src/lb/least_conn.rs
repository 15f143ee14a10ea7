//! Weighted least connections.
//!
//! Each backend's load is its number of active connections divided by its weight; a pick
//! chooses a backend of minimal load (compared exactly by cross-multiplication, no floats)
//! and counts the new connection against it. The caller reports the end of a connection
//! with [`LeastConnections::release`]. Ties are broken by a rotating start index, so equal
//! backends take turns instead of the first one absorbing every burst. Zero-weight backends
//! are never chosen.

/// Weighted least-connections balancer.
#[derive(Debug, Clone)]
pub struct LeastConnections {
    weights: Vec<u32>,
    active: Vec<u64>,
    rotor: usize,
}

impl LeastConnections {
    /// A balancer over `weights`, every backend idle.
    pub fn new(weights: &[u32]) -> Self {
        LeastConnections {
            weights: weights.to_vec(),
            active: vec![0; weights.len()],
            rotor: 0,
        }
    }

    /// Chooses a least-loaded backend and counts a connection on it; `None` when no backend
    /// has a positive weight.
    pub fn pick(&mut self) -> Option<usize> {
        let n = self.weights.len();
        let mut best: Option<usize> = None;
        for step in 0..n {
            let i = (self.rotor + step) % n;
            if self.weights[i] == 0 {
                continue;
            }
            best = match best {
                Some(b) if !self.less_loaded(i, b) => Some(b),
                _ => Some(i),
            };
        }
        let chosen = best?;
        self.active[chosen] = self.active[chosen].saturating_add(1);
        self.rotor = (chosen + 1) % n;
        Some(chosen)
    }

    /// Records that a connection to backend `index` ended (ignored for an unknown index or
    /// an idle backend).
    pub fn release(&mut self, index: usize) {
        if let Some(a) = self.active.get_mut(index) {
            *a = a.saturating_sub(1);
        }
    }

    /// Active connections per backend.
    pub fn active(&self) -> &[u64] {
        &self.active
    }

    /// `a` carries strictly less load per unit of weight than `b`.
    fn less_loaded(&self, a: usize, b: usize) -> bool {
        let (la, wa) = (u128::from(self.active[a]), u128::from(self.weights[a]));
        let (lb, wb) = (u128::from(self.active[b]), u128::from(self.weights[b]));
        la * wb < lb * wa
    }
}
