//! Builds the `nft -f -` input of one sync: one transaction that moves kproxy's table from
//! what the last sync wrote to what the plan wants. Pure.
//!
//! - [`recreate`]: `add table` + `delete table` + the whole table. Used for the first sync,
//!   after a failure, and when an object's declaration changed. Session-affinity state is
//!   lost (the affinity sets are recreated empty); established connections are not
//!   (conntrack keeps their NAT).
//! - [`rewrite`]: a full sync in place: `flush table` (every rule), flush every managed set
//!   and map, delete what the last sync wrote and is no longer wanted, and add everything
//!   back. Affinity sets are kept. Needs a trusted record of what the last sync wrote.
//! - [`update_from`] / [`update`]: a partial sync: only new/changed/removed chains, sets
//!   and elements. Nothing is listed from the kernel: the last written table (or, for
//!   [`update_from`], its shape plus the element changes an incremental render reports) is
//!   the record.
//!
//! The order of commands is what makes each transaction valid: new chains and sets exist
//! before elements and rules refer to them; element deletions and chain flushes come before
//! the deletions of the chains and sets they referred to.

use std::fmt::Write as _;

use super::names::{CANARY_CHAIN, CANARY_TABLE, TABLE, UPSTREAM_TABLE, family_keyword};
use super::render::ElementDelta;
use super::table::{Chain, Elements, NftTable, Set, Shape};

/// One `nft -f -` transaction and what it does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transaction {
    /// The input text; empty when there is nothing to do.
    pub text: String,
    /// Chains, sets and maps created or rewritten, and elements added.
    pub objects_written: usize,
    /// Chains, sets and maps deleted, and elements deleted.
    pub objects_deleted: usize,
    /// Rules and elements written or deleted.
    pub lines_written: usize,
}

impl Transaction {
    /// Nothing to apply.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }
}

/// Writes commands for one table.
struct Writer {
    prefix: String,
    tx: Transaction,
}

impl Writer {
    fn new(table: &NftTable) -> Self {
        Writer {
            prefix: format!("{} {TABLE}", family_keyword(table.family)),
            tx: Transaction::default(),
        }
    }

    /// A writer of the whole of `table`, its text sized once: at 100k endpoints it is
    /// ~10 MB, which growing by doubling would copy and briefly hold twice.
    fn whole(table: &NftTable) -> Self {
        let mut w = Writer::new(table);
        let per_line = w.prefix.len() + 24;
        let mut size = 0;
        for (name, chain) in &table.chains {
            size += per_line + name.len();
            size += chain
                .rules
                .iter()
                .map(|r| per_line + name.len() + r.len())
                .sum::<usize>();
        }
        for (name, set) in &table.sets {
            size += per_line + name.len() + set.spec.len();
            size += set
                .elements
                .iter()
                .flatten()
                .map(|(k, e)| k.len() + e.value.len() + 6)
                .sum::<usize>();
        }
        w.tx.text.reserve(size);
        w
    }

    fn command(&mut self, verb: &str, what: &str, name: &str) {
        let _ = writeln!(self.tx.text, "{verb} {what} {} {name}", self.prefix);
    }

    fn add_chain(&mut self, name: &str, chain: &Chain) {
        match &chain.base {
            None => self.command("add", "chain", name),
            Some(b) => {
                let _ = writeln!(
                    self.tx.text,
                    "add chain {} {name} {{ type {} hook {} priority {}; policy accept; }}",
                    self.prefix, b.kind, b.hook, b.priority
                );
            }
        }
        self.tx.objects_written += 1;
    }

    fn add_rules(&mut self, name: &str, rules: &[String]) {
        for rule in rules {
            let _ = writeln!(self.tx.text, "add rule {} {name} {rule}", self.prefix);
        }
        self.tx.lines_written += rules.len();
    }

    fn add_set(&mut self, name: &str, set: &Set) {
        let _ = writeln!(
            self.tx.text,
            "add {} {} {name} {{ {} }}",
            set.keyword, self.prefix, set.spec
        );
        self.tx.objects_written += 1;
    }

    /// `add element` of `(key, value)` pairs, one per line (nft's error then names the
    /// element's line).
    fn add_elements<'a>(
        &mut self,
        name: &str,
        elements: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        let mut n = 0;
        let start = self.tx.text.len();
        let _ = write!(self.tx.text, "add element {} {name} {{", self.prefix);
        for (key, value) in elements {
            self.tx.text.push_str(if n == 0 { "\n\t" } else { ",\n\t" });
            self.tx.text.push_str(key);
            if !value.is_empty() {
                self.tx.text.push_str(" : ");
                self.tx.text.push_str(value);
            }
            n += 1;
        }
        if n == 0 {
            self.tx.text.truncate(start);
            return;
        }
        self.tx.text.push_str("\n}\n");
        self.tx.objects_written += n;
        self.tx.lines_written += n;
    }

    fn delete_elements<'a>(&mut self, name: &str, keys: impl IntoIterator<Item = &'a str>) {
        let mut n = 0;
        let start = self.tx.text.len();
        let _ = write!(self.tx.text, "delete element {} {name} {{", self.prefix);
        for key in keys {
            self.tx.text.push_str(if n == 0 { "\n\t" } else { ",\n\t" });
            self.tx.text.push_str(key);
            n += 1;
        }
        if n == 0 {
            self.tx.text.truncate(start);
            return;
        }
        self.tx.text.push_str("\n}\n");
        self.tx.objects_deleted += n;
        self.tx.lines_written += n;
    }

    fn all_elements(&mut self, table: &NftTable) {
        for (name, set) in &table.sets {
            if let Some(elements) = &set.elements {
                self.add_elements(name, pairs(elements));
            }
        }
    }

    fn all_rules(&mut self, table: &NftTable) {
        for (name, chain) in &table.chains {
            self.add_rules(name, &chain.rules);
        }
    }
}

fn pairs(elements: &Elements) -> impl Iterator<Item = (&str, &str)> {
    elements.iter().map(|(k, v)| (&**k, &*v.value))
}

/// The whole table from scratch, replacing whatever kproxy's table holds.
pub fn recreate(next: &NftTable) -> Transaction {
    let mut w = Writer::whole(next);
    let _ = writeln!(w.tx.text, "add table {}", w.prefix);
    let _ = writeln!(w.tx.text, "delete table {}", w.prefix);
    let _ = writeln!(w.tx.text, "add table {}", w.prefix);
    for (name, chain) in &next.chains {
        w.add_chain(name, chain);
    }
    for (name, set) in &next.sets {
        w.add_set(name, set);
    }
    w.all_elements(next);
    w.all_rules(next);
    w.tx
}

/// Objects kept from `prev` to `next` must have the same declaration: nft cannot change a
/// set's type or a chain's hook in place.
fn compatible(prev: &Shape, next: &NftTable) -> bool {
    prev.chains
        .iter()
        .all(|(name, c)| next.chains.get(name).is_none_or(|n| n.base == c.base))
        && prev.sets.iter().all(|(name, d)| {
            next.sets.get(name).is_none_or(|s| {
                s.keyword == d.keyword && s.spec == d.spec && s.elements.is_some() == d.managed
            })
        })
}

/// A full sync in place over what the last sync wrote (`prev`), keeping affinity sets;
/// `None` when a declaration changed (then use [`recreate`]).
pub fn rewrite(prev: &Shape, next: &NftTable) -> Option<Transaction> {
    if !compatible(prev, next) {
        return None;
    }
    let mut w = Writer::whole(next);
    let _ = writeln!(w.tx.text, "add table {}", w.prefix);
    let _ = writeln!(w.tx.text, "flush table {}", w.prefix);
    for (name, chain) in &next.chains {
        w.add_chain(name, chain);
    }
    for (name, set) in &next.sets {
        w.add_set(name, set);
        if set.elements.is_some() {
            let _ = writeln!(w.tx.text, "flush {} {} {name}", set.keyword, w.prefix);
        }
    }
    // Stale sets first: a stale verdict map may still refer to a stale chain.
    for (name, decl) in prev
        .sets
        .iter()
        .filter(|(n, _)| !next.sets.contains_key(*n))
    {
        w.command("delete", decl.keyword, name);
        w.tx.objects_deleted += 1;
    }
    for name in prev.chains.keys().filter(|n| !next.chains.contains_key(*n)) {
        w.command("delete", "chain", name);
        w.tx.objects_deleted += 1;
    }
    w.all_elements(next);
    w.all_rules(next);
    Some(w.tx)
}

/// A partial sync from `prev` (what the last sync wrote) to `next`, found by comparing
/// every element; `None` when a declaration changed (then use [`recreate`]).
pub fn update(prev: &NftTable, next: &NftTable) -> Option<Transaction> {
    let mut delta = ElementDelta::new();
    let empty = Elements::new();
    let names = prev.sets.keys().chain(next.sets.keys());
    for name in names.collect::<std::collections::BTreeSet<_>>() {
        let changes = diff_elements(
            elements_of(prev, name, &empty),
            elements_of(next, name, &empty),
        );
        if !changes.is_empty() {
            delta.insert(name.clone(), changes);
        }
    }
    update_from(&prev.shape(), next, &delta)
}

fn elements_of<'a>(table: &'a NftTable, set: &str, empty: &'a Elements) -> &'a Elements {
    table
        .sets
        .get(set)
        .and_then(|s| s.elements.as_ref())
        .unwrap_or(empty)
}

/// A partial sync from the chains and declarations the kernel has (`before`) to `next`,
/// whose elements differ from the kernel's only by `delta`; `None` when a declaration
/// changed (then use [`recreate`]).
pub fn update_from(before: &Shape, next: &NftTable, delta: &ElementDelta) -> Option<Transaction> {
    if !compatible(before, next) {
        return None;
    }
    let mut w = Writer::new(next);
    let new_chains: Vec<_> = next
        .chains
        .iter()
        .filter(|(n, _)| !before.chains.contains_key(*n))
        .collect();
    let changed_chains: Vec<_> = next
        .chains
        .iter()
        .filter(|(n, c)| before.chains.get(*n).is_some_and(|p| p.rules != c.rules))
        .collect();
    let stale_chains: Vec<&String> = before
        .chains
        .keys()
        .filter(|n| !next.chains.contains_key(*n))
        .collect();

    for (name, chain) in &new_chains {
        w.add_chain(name, chain);
    }
    for (name, set) in next
        .sets
        .iter()
        .filter(|(n, _)| !before.sets.contains_key(*n))
    {
        w.add_set(name, set);
    }
    // Elements of sets that stay: deletions (gone or changed keys) before additions.
    // Elements of deleted sets go with their set.
    let kept = |name: &String| next.sets.get(name).is_some_and(|s| s.elements.is_some());
    for (name, changes) in delta.iter().filter(|(n, _)| kept(n)) {
        let removed = changes
            .iter()
            .filter(|(_, (was, _))| was.is_some())
            .map(|(k, _)| k.as_str());
        w.delete_elements(name, removed);
    }
    for (name, changes) in delta.iter().filter(|(n, _)| kept(n)) {
        let added = changes
            .iter()
            .filter_map(|(k, (_, now))| Some((k.as_str(), now.as_deref()?)));
        w.add_elements(name, added);
    }
    for (name, _) in &changed_chains {
        w.command("flush", "chain", name);
        w.tx.objects_written += 1;
    }
    for name in &stale_chains {
        w.command("flush", "chain", name);
    }
    for (name, chain) in new_chains.iter().chain(&changed_chains) {
        w.add_rules(name, &chain.rules);
    }
    // Stale sets before stale chains: a stale verdict map may still refer to a stale chain.
    for (name, decl) in before
        .sets
        .iter()
        .filter(|(n, _)| !next.sets.contains_key(*n))
    {
        w.command("delete", decl.keyword, name);
        w.tx.objects_deleted += 1;
    }
    for name in &stale_chains {
        w.command("delete", "chain", name);
        w.tx.objects_deleted += 1;
    }
    Some(w.tx)
}

/// Keys whose value differs, with their values before and after, by one merge walk over
/// the two sorted maps.
fn diff_elements(
    prev: &Elements,
    next: &Elements,
) -> std::collections::BTreeMap<String, (Option<String>, Option<String>)> {
    let mut out = std::collections::BTreeMap::new();
    let mut p = prev.iter().peekable();
    let mut n = next.iter().peekable();
    loop {
        let order = match (p.peek(), n.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((pk, _)), Some((nk, _))) => pk.cmp(nk),
        };
        match order {
            std::cmp::Ordering::Less => {
                if let Some((k, v)) = p.next() {
                    out.insert(k.to_string(), (Some(v.value.to_string()), None));
                }
            }
            std::cmp::Ordering::Greater => {
                if let Some((k, v)) = n.next() {
                    out.insert(k.to_string(), (None, Some(v.value.to_string())));
                }
            }
            std::cmp::Ordering::Equal => {
                if let (Some((k, pv)), Some((_, nv))) = (p.next(), n.next())
                    && pv.value != nv.value
                {
                    out.insert(
                        k.to_string(),
                        (Some(pv.value.to_string()), Some(nv.value.to_string())),
                    );
                }
            }
        }
    }
    out
}

/// Deletes kproxy's table of `family` (nothing else); fails if it does not exist.
pub fn delete_table(family: crate::plan::IpFamily) -> String {
    format!("delete table {} {TABLE}\n", family_keyword(family))
}

#[cfg(test)]
mod tests;

/// Creates the canary table of `family` with its empty chain; idempotent, so it may be
/// appended to any transaction.
pub fn canary(family: crate::plan::IpFamily) -> String {
    let f = family_keyword(family);
    format!("add table {f} {CANARY_TABLE}\nadd chain {f} {CANARY_TABLE} {CANARY_CHAIN}\n")
}

/// Deletes upstream kube-proxy's table of `family`; fails if it does not exist.
pub fn delete_upstream_table(family: crate::plan::IpFamily) -> String {
    format!("delete table {} {UPSTREAM_TABLE}\n", family_keyword(family))
}

/// Deletes the canary table of `family`; fails if it does not exist.
pub fn delete_canary(family: crate::plan::IpFamily) -> String {
    format!("delete table {} {CANARY_TABLE}\n", family_keyword(family))
}
