//! `sessionAffinity: ClientIP`: a client keeps going to the backend it was last sent to
//! until it has been idle for the timeout.
//!
//! Semantics follow upstream's iptables `recent` match (`--rcheck --seconds T --reap` in the
//! service chain, `--set` in the endpoint chain): a new connection from a client whose entry
//! is younger than `T` goes to the recorded backend and *refreshes* the entry; an entry is
//! never used at or after `last_used + T`. Entries name the backend by identity (its
//! address), not by position, so a plan change cannot redirect a client to a different
//! backend that happens to take the old index; [`AffinityTable::retain_backends`] drops
//! entries whose backend left the set.
//!
//! Time is a monotonic [`Duration`] since any fixed origin chosen by the caller, which keeps
//! the table pure. The table holds at most `capacity` clients; when full, expired entries are
//! reaped and, if still full, the least recently used entry is evicted (a `recent` list has
//! the same bound, `ip_list_tot`).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

#[derive(Debug, Clone)]
struct Entry<B> {
    backend: B,
    last_used: Duration,
}

/// Client → backend affinity with an idle timeout.
#[derive(Debug, Clone)]
pub struct AffinityTable<C, B> {
    timeout: Duration,
    capacity: usize,
    entries: HashMap<C, Entry<B>>,
}

impl<C: Eq + Hash + Clone, B: Clone + Eq> AffinityTable<C, B> {
    /// Upstream's default `recent` list size.
    pub const DEFAULT_CAPACITY: usize = 65_536;

    /// A table whose entries last `timeout` after their last use, holding at most
    /// `capacity` clients (at least 1).
    pub fn new(timeout: Duration, capacity: usize) -> Self {
        AffinityTable {
            timeout,
            capacity: capacity.max(1),
            entries: HashMap::new(),
        }
    }

    /// The affinity timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The backend `client` is bound to at `now`, refreshing the binding; `None` if the
    /// client has no binding or it expired (an expired binding is removed).
    pub fn lookup(&mut self, client: &C, now: Duration) -> Option<B> {
        let entry = self.entries.get_mut(client)?;
        if now.saturating_sub(entry.last_used) >= self.timeout {
            self.entries.remove(client);
            return None;
        }
        entry.last_used = now.max(entry.last_used);
        Some(entry.backend.clone())
    }

    /// Binds `client` to `backend` as of `now`.
    pub fn record(&mut self, client: C, backend: B, now: Duration) {
        if !self.entries.contains_key(&client) && self.entries.len() >= self.capacity {
            self.expire(now);
            if self.entries.len() >= self.capacity {
                let oldest = self
                    .entries
                    .iter()
                    .min_by_key(|(_, e)| e.last_used)
                    .map(|(c, _)| c.clone());
                if let Some(c) = oldest {
                    self.entries.remove(&c);
                }
            }
        }
        self.entries.insert(
            client,
            Entry {
                backend,
                last_used: now,
            },
        );
    }

    /// Removes every binding that expired at `now`.
    pub fn expire(&mut self, now: Duration) {
        let timeout = self.timeout;
        self.entries
            .retain(|_, e| now.saturating_sub(e.last_used) < timeout);
    }

    /// Keeps only bindings whose backend satisfies `keep` (call after a plan change).
    pub fn retain_backends(&mut self, mut keep: impl FnMut(&B) -> bool) {
        self.entries.retain(|_, e| keep(&e.backend));
    }

    /// The number of bindings held (expired ones included until reaped).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No binding is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
