//! The load-balancing library: pure algorithms that choose one backend of a set, with no I/O.
//!
//! The userspace forwarder uses it for every new flow, and property tests
//! (`tests/userspace_lb.rs`) run it as the executable model of load balancing. Every
//! algorithm works on *indices* into the backend set it was built for, so it can never
//! return a backend outside the set, and every `pick` returns `None` — never panics — on an
//! empty set (or a set whose weights are all zero). A balancer is rebuilt when its set
//! changes; picks allocate nothing.
//!
//! | algorithm | module | guarantee |
//! |---|---|---|
//! | random | [`weighted::WeightedRandom`] | independent picks, `P(i) = w(i)/Σw` exactly |
//! | round robin | [`round_robin::RoundRobin`] | every backend exactly once per `n` picks |
//! | weighted round robin | [`round_robin::WeightedRoundRobin`] | exactly `w(i)` picks per cycle of `Σw`, interleaved |
//! | least connections | [`least_conn::LeastConnections`] | picks a backend of minimal `active/weight` |
//! | source hash | [`weighted::SourceHash`] | same key → same backend for the same set |
//! | Maglev | [`maglev::Maglev`] | same key → same backend; `≈1/n` of keys move when one of `n` leaves |
//!
//! ClientIP session affinity ([`affinity::AffinityTable`]) sits in front of any of them.

pub mod affinity;
pub mod hash;
pub mod least_conn;
pub mod maglev;
pub mod rng;
pub mod round_robin;
pub mod weighted;

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

pub use affinity::AffinityTable;
pub use hash::stable_hash;
pub use maglev::{Maglev, MaglevError, MaglevMember};

/// A load-balancing algorithm (the `--userspace-scheduler` values, named as IPVS names them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Algorithm {
    /// Weighted random (what iptables' `statistic --mode random` and nftables' `numgen` do).
    #[default]
    Random,
    /// Round robin (`rr`).
    RoundRobin,
    /// Smooth weighted round robin (`wrr`).
    WeightedRoundRobin,
    /// Weighted least connections (`lc`).
    LeastConnections,
    /// Weighted source hashing (`sh`).
    SourceHash,
    /// Maglev consistent hashing (`mh`).
    Maglev,
}

impl Algorithm {
    /// Every algorithm.
    pub const ALL: [Algorithm; 6] = [
        Algorithm::Random,
        Algorithm::RoundRobin,
        Algorithm::WeightedRoundRobin,
        Algorithm::LeastConnections,
        Algorithm::SourceHash,
        Algorithm::Maglev,
    ];

    /// The short name (`random`, `rr`, `wrr`, `lc`, `sh`, `mh`).
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Random => "random",
            Algorithm::RoundRobin => "rr",
            Algorithm::WeightedRoundRobin => "wrr",
            Algorithm::LeastConnections => "lc",
            Algorithm::SourceHash => "sh",
            Algorithm::Maglev => "mh",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown algorithm name.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("unknown load-balancing algorithm {0:?} (expected random, rr, wrr, lc, sh or mh)")]
pub struct UnknownAlgorithm(pub String);

impl FromStr for Algorithm {
    type Err = UnknownAlgorithm;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.as_str() == s || (s == "maglev" && *a == Algorithm::Maglev))
            .ok_or_else(|| UnknownAlgorithm(s.to_owned()))
    }
}

/// One backend as a balancer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// A stable hash of the backend's identity (used by Maglev; see [`stable_hash`]).
    pub id: u64,
    /// Relative weight; 0 means the backend is never chosen.
    pub weight: u32,
}

/// Any of the algorithms, built for one backend set.
#[derive(Debug, Clone)]
pub enum Balancer {
    /// See [`weighted::WeightedRandom`].
    Random(weighted::WeightedRandom),
    /// See [`round_robin::RoundRobin`] (weights only exclude zero-weight backends).
    RoundRobin(round_robin::WeightedRoundRobin),
    /// See [`round_robin::WeightedRoundRobin`].
    WeightedRoundRobin(round_robin::WeightedRoundRobin),
    /// See [`least_conn::LeastConnections`].
    LeastConnections(least_conn::LeastConnections),
    /// See [`weighted::SourceHash`].
    SourceHash(weighted::SourceHash),
    /// See [`maglev::Maglev`].
    Maglev(Maglev),
}

impl Balancer {
    /// A balancer of `algorithm` over `members`. `seed` seeds the random algorithm; Maglev
    /// uses a table of [`maglev::table_size_for`]`(n)` slots.
    pub fn new(algorithm: Algorithm, members: &[Member], seed: u64) -> Balancer {
        let weights: Vec<u32> = members.iter().map(|m| m.weight).collect();
        match algorithm {
            Algorithm::Random => Balancer::Random(weighted::WeightedRandom::new(&weights, seed)),
            Algorithm::RoundRobin => {
                let unit: Vec<u32> = weights.iter().map(|w| u32::from(*w > 0)).collect();
                Balancer::RoundRobin(round_robin::WeightedRoundRobin::new(&unit))
            }
            Algorithm::WeightedRoundRobin => {
                Balancer::WeightedRoundRobin(round_robin::WeightedRoundRobin::new(&weights))
            }
            Algorithm::LeastConnections => {
                Balancer::LeastConnections(least_conn::LeastConnections::new(&weights))
            }
            Algorithm::SourceHash => Balancer::SourceHash(weighted::SourceHash::new(&weights)),
            Algorithm::Maglev => {
                let size = maglev::table_size_for(members.len());
                let mm: Vec<MaglevMember> = members
                    .iter()
                    .map(|m| MaglevMember {
                        id: m.id,
                        weight: m.weight,
                    })
                    .collect();
                // The size is prime and ≥ n by construction, so this cannot fail; an empty
                // table (pick → None) is the safe fallback regardless.
                Balancer::Maglev(Maglev::new(&mm, size).unwrap_or(Maglev::empty()))
            }
        }
    }

    /// The algorithm of this balancer.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Balancer::Random(_) => Algorithm::Random,
            Balancer::RoundRobin(_) => Algorithm::RoundRobin,
            Balancer::WeightedRoundRobin(_) => Algorithm::WeightedRoundRobin,
            Balancer::LeastConnections(_) => Algorithm::LeastConnections,
            Balancer::SourceHash(_) => Algorithm::SourceHash,
            Balancer::Maglev(_) => Algorithm::Maglev,
        }
    }

    /// Chooses a backend index for a new flow whose source hashes to `key_hash` (only the
    /// hashing algorithms look at it). `None` when no backend can be chosen.
    pub fn pick(&mut self, key_hash: u64) -> Option<usize> {
        match self {
            Balancer::Random(b) => b.pick(),
            Balancer::RoundRobin(b) | Balancer::WeightedRoundRobin(b) => b.pick(),
            Balancer::LeastConnections(b) => b.pick(),
            Balancer::SourceHash(b) => b.pick(key_hash),
            Balancer::Maglev(b) => b.pick(key_hash),
        }
    }

    /// Reports that a flow to backend `index` ended (only least connections keeps count).
    pub fn release(&mut self, index: usize) {
        if let Balancer::LeastConnections(b) = self {
            b.release(index);
        }
    }
}
