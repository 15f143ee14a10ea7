//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), with weights.
//!
//! Every backend derives a permutation of the lookup table's `M` slots from its *identity*
//! (not its index): `offset = h1(id) mod M`, `skip = h2(id) mod (M-1) + 1`, slot
//! `j` of its preference list is `(offset + j·skip) mod M`. Because `M` is prime, every skip
//! is coprime with `M`, so each preference list visits every slot exactly once. Backends then
//! take turns claiming their next still-free preferred slot until the table is full; a
//! backend of weight `w` takes `w / w_max` turns per round (integer credit, no floats).
//! A key is looked up as `table[hash(key) mod M]`: `O(1)`, no allocation.
//!
//! Guarantees:
//! * **Balance**: with equal weights each backend owns `⌊M/n⌋` or `⌈M/n⌉` slots; with weights
//!   the slot counts are proportional to the weights within one slot per round.
//! * **Consistency**: the same key maps to the same backend for the same set.
//! * **Minimal disruption**: when one of `n` backends goes away, its `≈M/n` slots move and
//!   only an extra fraction of the others' slots do. That fraction depends on `M/n`: a
//!   property test found 20 % of all keys extra at `M ≈ 180·n` (n = 6), while over ~5000
//!   adversarial trials (any backend removed, many hash salts) at `M ≥ 10 007` the worst
//!   was 3.6 %. Hence [`table_size_for`]: `M = next_prime(max(1000·n, 10 007))`, capped at
//!   [`Maglev::DEFAULT_TABLE_SIZE`] (65 537) unless more backends need more; the property
//!   tests assert at most `3·√(n/M)` of the keys besides the removed backend's own. The
//!   price is memory: at least 10 007 slots × 4 bytes ≈ 40 KB per Maglev-scheduled service.

use thiserror::Error;

use super::hash::fmix64;

/// The table size kproxy uses for `n` backends (see the module doc): prime, at least
/// `max(1000·n, 10 007)` up to 65 537, and never below `n`.
pub fn table_size_for(n: usize) -> usize {
    let wanted = n
        .saturating_mul(1000)
        .clamp(10_007, Maglev::DEFAULT_TABLE_SIZE);
    next_prime(wanted.max(n))
}

/// Why a Maglev table could not be built.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MaglevError {
    /// The table size is not a prime number.
    #[error("maglev table size {0} is not prime")]
    NotPrime(usize),
    /// The table is smaller than the number of backends with positive weight.
    #[error("maglev table size {size} is smaller than the {backends} backends")]
    TooSmall {
        /// The requested size.
        size: usize,
        /// The number of weighted backends.
        backends: usize,
    },
}

/// A backend as Maglev sees it: a stable identity hash and a weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaglevMember {
    /// A hash of the backend's identity (e.g. [`super::hash::stable_hash`] of its address);
    /// it must not depend on the backend's position in the set.
    pub id: u64,
    /// Relative weight; 0 excludes the backend.
    pub weight: u32,
}

/// A Maglev lookup table.
#[derive(Debug, Clone)]
pub struct Maglev {
    /// Slot → backend index, empty when no backend has a positive weight.
    table: Vec<u32>,
}

impl Maglev {
    /// The table size used by the paper and by Envoy: prime, good up to ~650 backends.
    pub const DEFAULT_TABLE_SIZE: usize = 65_537;

    /// Builds the table for `members` with `table_size` slots (which must be prime and at
    /// least the number of weighted members).
    pub fn new(members: &[MaglevMember], table_size: usize) -> Result<Self, MaglevError> {
        if !is_prime(table_size) {
            return Err(MaglevError::NotPrime(table_size));
        }
        let weighted = members.iter().filter(|m| m.weight > 0).count();
        if weighted == 0 {
            return Ok(Maglev { table: Vec::new() });
        }
        if weighted > table_size {
            return Err(MaglevError::TooSmall {
                size: table_size,
                backends: weighted,
            });
        }
        let m = table_size as u64;
        let max_weight = u64::from(members.iter().map(|b| b.weight).max().unwrap_or(1));
        // Per member: (offset, skip, next preference index, credit).
        let mut state: Vec<(u64, u64, u64, u64)> = members
            .iter()
            .map(|b| {
                let offset = fmix64(b.id ^ 0x6d61_676c_6576_3031) % m;
                let skip = fmix64(b.id ^ 0x6d61_676c_6576_3032) % (m - 1) + 1;
                (offset, skip, 0, 0)
            })
            .collect();
        const EMPTY: u32 = u32::MAX;
        let mut table = vec![EMPTY; table_size];
        let mut filled = 0usize;
        // Each round the heaviest member claims at least one slot, so M rounds suffice.
        'rounds: for _round in 0..table_size {
            for (i, member) in members.iter().enumerate() {
                let st = &mut state[i];
                st.3 += u64::from(member.weight);
                while st.3 >= max_weight {
                    st.3 -= max_weight;
                    // Walk the preference list to the first free slot (≤ M steps).
                    while st.2 < m {
                        let slot = ((u128::from(st.0) + u128::from(st.2) * u128::from(st.1))
                            % u128::from(m)) as usize;
                        st.2 += 1;
                        if table[slot] == EMPTY {
                            table[slot] = i as u32;
                            filled += 1;
                            break;
                        }
                    }
                    if filled == table_size {
                        break 'rounds;
                    }
                }
            }
        }
        Ok(Maglev { table })
    }

    /// A table with no backend: every pick is `None`.
    pub fn empty() -> Self {
        Maglev { table: Vec::new() }
    }

    /// The backend index for a key hash, `None` when no backend has a positive weight.
    pub fn pick(&self, key_hash: u64) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let slot = (key_hash % self.table.len() as u64) as usize;
        self.table.get(slot).map(|i| *i as usize)
    }

    /// The lookup table: slot → backend index (empty when no backend is weighted).
    pub fn table(&self) -> &[u32] {
        &self.table
    }
}

/// Deterministic trial division (table sizes are at most a few million).
pub fn is_prime(n: usize) -> bool {
    if n < 2 {
        return false;
    }
    if n < 4 {
        return true;
    }
    if n.is_multiple_of(2) {
        return false;
    }
    let mut d = 3usize;
    while d.saturating_mul(d) <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// The smallest prime `≥ n` (for choosing a table size such as `next_prime(100 * n)`).
pub fn next_prime(n: usize) -> usize {
    let mut candidate = n.max(2);
    while !is_prime(candidate) {
        candidate += 1;
    }
    candidate
}
