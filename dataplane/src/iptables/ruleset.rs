//! The value a sync wants in the kernel: per table, kproxy's chains and their rules.
//!
//! A [`Ruleset`] is plain data. The renderer builds one from a plan, the restore builder
//! diffs two of them, and `kproxy render` prints one. Rules are stored as the text that
//! follows `-A CHAIN ` in `iptables-restore` input.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::plan::{IpFamily, Protocol};

/// The iptables tables kproxy writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// `filter`: REJECT/DROP/ACCEPT decisions.
    Filter,
    /// `nat`: DNAT to endpoints and masquerading.
    Nat,
}

impl Table {
    /// Both tables, in the order they are written.
    pub const ALL: [Table; 2] = [Table::Filter, Table::Nat];

    /// The table's name (`filter`, `nat`).
    pub fn name(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Nat => "nat",
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Chains of one table: chain name → rules in order.
pub type Chains = BTreeMap<String, Vec<String>>;

/// kproxy's chains for one IP family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    /// The family (iptables for IPv4, ip6tables for IPv6).
    pub family: IpFamily,
    /// The `filter` table's chains.
    pub filter: Chains,
    /// The `nat` table's chains.
    pub nat: Chains,
}

impl Ruleset {
    /// An empty ruleset.
    pub fn new(family: IpFamily) -> Self {
        Ruleset {
            family,
            filter: Chains::new(),
            nat: Chains::new(),
        }
    }

    /// The chains of a table.
    pub fn table(&self, table: Table) -> &Chains {
        match table {
            Table::Filter => &self.filter,
            Table::Nat => &self.nat,
        }
    }

    /// The chains of a table, for changing them.
    pub fn table_mut(&mut self, table: Table) -> &mut Chains {
        match table {
            Table::Filter => &mut self.filter,
            Table::Nat => &mut self.nat,
        }
    }

    /// Declares a chain (empty if new) and returns its rules for appending.
    pub fn chain(&mut self, table: Table, name: &str) -> &mut Vec<String> {
        let chains = match table {
            Table::Filter => &mut self.filter,
            Table::Nat => &mut self.nat,
        };
        chains.entry(name.to_owned()).or_default()
    }

    /// Appends a rule to a chain, declaring the chain if needed.
    pub fn append(&mut self, table: Table, chain: &str, rule: Rule) {
        self.chain(table, chain).push(rule.0);
    }

    /// Appends every chain's rules of `other` to the same chains here, declaring chains
    /// as needed (fragments are merged in service order, so rule order is kept).
    pub fn extend(&mut self, other: &Ruleset) {
        for (mine, theirs) in [
            (&mut self.filter, &other.filter),
            (&mut self.nat, &other.nat),
        ] {
            for (name, rules) in theirs {
                mine.entry(name.clone())
                    .or_default()
                    .extend(rules.iter().cloned());
            }
        }
    }

    /// Number of rules in a table.
    pub fn rule_count(&self, table: Table) -> usize {
        self.table(table).values().map(Vec::len).sum()
    }

    /// The whole ruleset as `iptables-restore` input (what `kproxy render` prints).
    pub fn to_restore_text(&self) -> String {
        let mut out = String::new();
        for table in Table::ALL {
            let chains = self.table(table);
            let _ = writeln!(out, "*{table}");
            for name in chains.keys() {
                let _ = writeln!(out, ":{name} - [0:0]");
            }
            for (name, rules) in chains {
                for rule in rules {
                    write_rule(&mut out, name, rule);
                }
            }
            out.push_str("COMMIT\n");
        }
        out
    }
}

/// Writes `-A chain rule` as one line.
pub(crate) fn write_rule(out: &mut String, chain: &str, rule: &str) {
    out.push_str("-A ");
    out.push_str(chain);
    if !rule.is_empty() {
        out.push(' ');
        out.push_str(rule);
    }
    out.push('\n');
}

/// Builds the text of one rule, in the order upstream writes its arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule(pub String);

impl Rule {
    /// An empty rule (matches everything).
    pub fn new() -> Self {
        Rule::default()
    }

    /// Appends raw arguments.
    pub fn args(mut self, args: &str) -> Self {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        self.0.push_str(args);
        self
    }

    /// `-m comment --comment TEXT`, quoted when it contains a space.
    pub fn comment(self, text: &str) -> Self {
        if text.contains(' ') {
            self.args(&format!("-m comment --comment \"{text}\""))
        } else {
            self.args(&format!("-m comment --comment {text}"))
        }
    }

    /// `-m PROTO -p PROTO`.
    pub fn protocol(self, protocol: Protocol) -> Self {
        let p = protocol.as_lower();
        self.args(&format!("-m {p} -p {p}"))
    }

    /// `-d ADDR`.
    pub fn dst(self, ip: &IpAddr) -> Self {
        self.args(&format!("-d {ip}"))
    }

    /// `-s NET`.
    pub fn src_net(self, net: &IpNet) -> Self {
        self.args(&format!("-s {net}"))
    }

    /// `-s ADDR`.
    pub fn src(self, ip: &IpAddr) -> Self {
        self.args(&format!("-s {ip}"))
    }

    /// `--dport PORT`.
    pub fn dport(self, port: u16) -> Self {
        self.args(&format!("--dport {port}"))
    }

    /// `-j TARGET`.
    pub fn jump(self, target: &str) -> Self {
        self.args(&format!("-j {target}"))
    }
}
