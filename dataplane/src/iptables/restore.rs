//! Builds `iptables-restore --noflush` input. Pure.
//!
//! With `--noflush`, a `:CHAIN` line creates or flushes that chain only, and every chain not
//! named is left alone. kproxy uses that to touch nothing but its own chains:
//!
//! - a **full sync** declares (flushes) and rewrites every chain of the wanted ruleset,
//!   deletes kproxy's stale chains that `iptables-save` shows, and inserts missing jump
//!   rules into built-in chains;
//! - a **partial sync** diffs the wanted ruleset against the one the last successful sync
//!   wrote and rewrites only the chains whose rules changed, deleting the ones that went
//!   away. A one-endpoint change thus rewrites a `KUBE-SVC-` chain and one `KUBE-SEP-`
//!   chain, not `KUBE-SERVICES` with its thousands of rules.

use std::collections::{BTreeMap, BTreeSet};

use super::jumps::jump_rules_of;
use super::names::*;
use super::render::ChainChanges;
use super::ruleset::{Chains, Ruleset, Table, write_rule};

/// One table as `iptables-save` printed it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SavedTable {
    /// Every chain, built-in or not.
    pub chains: BTreeSet<String>,
    /// Every rule as (chain, text after `-A CHAIN `), in order.
    pub rules: Vec<(String, String)>,
}

/// Parses `iptables-save` output into its tables.
pub fn parse_save(text: &str) -> BTreeMap<Table, SavedTable> {
    let mut tables = BTreeMap::new();
    let mut current: Option<Table> = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('*') {
            current = Table::ALL.into_iter().find(|t| t.name() == name.trim());
            if let Some(t) = current {
                tables.entry(t).or_insert_with(SavedTable::default);
            }
            continue;
        }
        let Some(table) = current.and_then(|t| tables.get_mut(&t)) else {
            continue;
        };
        if let Some(decl) = line.strip_prefix(':') {
            if let Some(name) = decl.split_whitespace().next() {
                table.chains.insert(name.to_owned());
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let (chain, rest) = rule.split_once(' ').unwrap_or((rule, ""));
            table.rules.push((chain.to_owned(), rest.to_owned()));
        }
    }
    tables
}

/// The fixed chains kproxy owns in a table.
pub fn top_level_chains(table: Table) -> &'static [&'static str] {
    match table {
        Table::Filter => &[
            KUBE_SERVICES,
            KUBE_EXTERNAL_SERVICES,
            KUBE_FORWARD,
            KUBE_NODEPORTS,
            KUBE_PROXY_FIREWALL,
        ],
        Table::Nat => &[
            KUBE_SERVICES,
            KUBE_NODEPORTS,
            KUBE_POSTROUTING,
            KUBE_MARK_MASQ,
        ],
    }
}

/// Is `chain` one kproxy owns in `table`? (In `mangle`, kproxy owns only
/// [`KUBE_PROXY_CANARY`], which [`cleanup`] handles apart.)
pub fn is_owned_chain(table: Table, chain: &str) -> bool {
    chain == KUBE_PROXY_CANARY
        || top_level_chains(table).contains(&chain)
        || (table == Table::Nat && is_service_chain(chain))
}

/// `iptables-restore --noflush` input and what it does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreInput {
    /// The input text; empty when there is nothing to do.
    pub text: String,
    /// Chains created or rewritten.
    pub chains_written: usize,
    /// Chains deleted.
    pub chains_deleted: usize,
    /// Rules written (including jump rules inserted or deleted).
    pub rules_written: usize,
}

impl RestoreInput {
    /// Nothing to apply.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }
}

/// What to do to one table.
#[derive(Default)]
struct TableChange<'a> {
    write: Vec<(&'a str, &'a [String])>,
    delete: Vec<&'a str>,
    /// Raw lines after the chain rules and before the deletions (`-I`/`-D` of jump rules).
    extra: Vec<String>,
}

impl TableChange<'_> {
    fn is_empty(&self) -> bool {
        self.write.is_empty() && self.delete.is_empty() && self.extra.is_empty()
    }
}

fn emit(out: &mut RestoreInput, table: Table, change: &TableChange) {
    if change.is_empty() {
        return;
    }
    let text = &mut out.text;
    text.push('*');
    text.push_str(table.name());
    text.push('\n');
    for name in change.write.iter().map(|(n, _)| n).chain(&change.delete) {
        text.push(':');
        text.push_str(name);
        text.push_str(" - [0:0]\n");
    }
    for (name, rules) in &change.write {
        for rule in rules.iter() {
            write_rule(text, name, rule);
        }
        out.rules_written += rules.len();
    }
    for line in &change.extra {
        text.push_str(line);
        text.push('\n');
    }
    out.rules_written += change.extra.len();
    for name in &change.delete {
        text.push_str("-X ");
        text.push_str(name);
        text.push('\n');
    }
    text.push_str("COMMIT\n");
    out.chains_written += change.write.len();
    out.chains_deleted += change.delete.len();
}

/// The `mangle` part of a full sync: declare the (empty) canary chain.
const MANGLE_CANARY: &str = "*mangle\n:KUBE-PROXY-CANARY - [0:0]\nCOMMIT\n";

/// Full sync: rewrite every wanted chain, delete stale owned chains, add missing jumps, and
/// (re)declare the empty canary chain in mangle, nat and filter.
pub fn full_sync(next: &Ruleset, saved: &BTreeMap<Table, SavedTable>) -> RestoreInput {
    let mut out = RestoreInput {
        text: MANGLE_CANARY.to_owned(),
        chains_written: 1,
        ..RestoreInput::default()
    };
    let empty = SavedTable::default();
    for table in Table::ALL {
        let wanted = next.table(table);
        let saved = saved.get(&table).unwrap_or(&empty);
        let mut change = TableChange {
            write: wanted
                .iter()
                .map(|(n, r)| (n.as_str(), r.as_slice()))
                .collect(),
            ..TableChange::default()
        };
        if !wanted.contains_key(KUBE_PROXY_CANARY) {
            change.write.push((KUBE_PROXY_CANARY, &[]));
        }
        change.delete = saved
            .chains
            .iter()
            .map(String::as_str)
            .filter(|c| {
                is_owned_chain(table, c) && *c != KUBE_PROXY_CANARY && !wanted.contains_key(*c)
            })
            .collect();
        change.extra = jump_rules_of(table)
            .filter(|j| !j.is_present_in(saved))
            .map(|j| format!("-I {} 1 {}", j.from, j.rule_text()))
            .collect();
        emit(&mut out, table, &change);
    }
    out
}

/// Partial sync: only the chains that differ from what the last sync wrote.
pub fn partial_sync(prev: &Ruleset, next: &Ruleset) -> RestoreInput {
    let mut out = RestoreInput::default();
    for table in Table::ALL {
        emit(
            &mut out,
            table,
            &diff_chains(prev.table(table), next.table(table)),
        );
    }
    out
}

/// A partial sync that writes and deletes exactly the given chains (what an incremental
/// render reported), without comparing whole rulesets.
pub fn chains_sync(next: &Ruleset, changes: &ChainChanges) -> RestoreInput {
    let mut out = RestoreInput::default();
    for table in Table::ALL {
        let chains = next.table(table);
        let change = TableChange {
            write: changes
                .write
                .iter()
                .filter(|(t, _)| *t == table)
                .filter_map(|(_, name)| Some((name.as_str(), chains.get(name)?.as_slice())))
                .collect(),
            delete: changes
                .delete
                .iter()
                .filter(|(t, name)| *t == table && !chains.contains_key(name))
                .map(|(_, name)| name.as_str())
                .collect(),
            extra: Vec::new(),
        };
        emit(&mut out, table, &change);
    }
    out
}

fn diff_chains<'a>(prev: &'a Chains, next: &'a Chains) -> TableChange<'a> {
    TableChange {
        write: next
            .iter()
            .filter(|(name, rules)| prev.get(*name) != Some(*rules))
            .map(|(n, r)| (n.as_str(), r.as_slice()))
            .collect(),
        delete: prev
            .keys()
            .filter(|name| !next.contains_key(*name))
            .map(String::as_str)
            .collect(),
        extra: Vec::new(),
    }
}

/// Cleanup: delete every rule in a built-in chain that jumps to a kproxy chain, then flush
/// and delete every chain kproxy owns (canaries included; `mangle_canary`: the mangle
/// table has one). Nothing else is touched.
pub fn cleanup(saved: &BTreeMap<Table, SavedTable>, mangle_canary: bool) -> RestoreInput {
    let mut out = RestoreInput::default();
    if mangle_canary {
        out.text =
            format!("*mangle\n:{KUBE_PROXY_CANARY} - [0:0]\n-X {KUBE_PROXY_CANARY}\nCOMMIT\n");
        out.chains_deleted = 1;
    }
    for (table, saved) in saved {
        let owned: Vec<&str> = saved
            .chains
            .iter()
            .map(String::as_str)
            .filter(|c| is_owned_chain(*table, c))
            .collect();
        let extra = saved
            .rules
            .iter()
            .filter(|(chain, rule)| {
                !is_owned_chain(*table, chain)
                    && rule_target(rule).is_some_and(|t| owned.contains(&t))
            })
            .map(|(chain, rule)| format!("-D {chain} {rule}"))
            .collect();
        let change = TableChange {
            write: Vec::new(),
            delete: owned,
            extra,
        };
        emit(&mut out, *table, &change);
    }
    out
}

/// The target of a rule (`-j TARGET`), if it has one.
pub fn rule_target(rule: &str) -> Option<&str> {
    let (_, after) = rule
        .split_once(" -j ")
        .or_else(|| rule.strip_prefix("-j ").map(|t| ("", t)))?;
    after.split_whitespace().next()
}

#[cfg(test)]
mod tests;
