//! The rules kproxy adds to built-in chains (`PREROUTING`, `INPUT`, ...) to lead packets
//! into its own chains: upstream's `iptablesJumpChains`, with the same matches and comments
//! so that a node moving between kube-proxy and kproxy keeps one copy of each.
//!
//! These are the only rules kproxy writes outside its own chains. They are inserted at the
//! top of the built-in chain when missing (checked against `iptables-save` on full syncs)
//! and removed by `--cleanup`.

use super::names::*;
use super::restore::{SavedTable, rule_target};
use super::ruleset::Table;

/// One rule in a built-in chain that jumps into a kproxy chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JumpRule {
    /// The table.
    pub table: Table,
    /// The built-in chain the rule lives in.
    pub from: &'static str,
    /// The kproxy chain it jumps to.
    pub to: &'static str,
    /// The rule's comment (identifies it as ours).
    pub comment: &'static str,
    /// Extra matches before the comment.
    pub matches: &'static str,
}

const NEW: &str = "-m conntrack --ctstate NEW";

/// Upstream's jump rules, in upstream's order (each is prepended, so the last one listed
/// for a chain ends up first in it).
pub const JUMP_RULES: [JumpRule; 12] = [
    jump(
        Table::Filter,
        "INPUT",
        KUBE_EXTERNAL_SERVICES,
        "kubernetes externally-visible service portals",
        NEW,
    ),
    jump(
        Table::Filter,
        "FORWARD",
        KUBE_EXTERNAL_SERVICES,
        "kubernetes externally-visible service portals",
        NEW,
    ),
    jump(
        Table::Filter,
        "INPUT",
        KUBE_NODEPORTS,
        "kubernetes health check service ports",
        "",
    ),
    jump(
        Table::Filter,
        "FORWARD",
        KUBE_SERVICES,
        "kubernetes service portals",
        NEW,
    ),
    jump(
        Table::Filter,
        "OUTPUT",
        KUBE_SERVICES,
        "kubernetes service portals",
        NEW,
    ),
    jump(
        Table::Filter,
        "FORWARD",
        KUBE_FORWARD,
        "kubernetes forwarding rules",
        "",
    ),
    jump(
        Table::Filter,
        "INPUT",
        KUBE_PROXY_FIREWALL,
        "kubernetes load balancer firewall",
        NEW,
    ),
    jump(
        Table::Filter,
        "OUTPUT",
        KUBE_PROXY_FIREWALL,
        "kubernetes load balancer firewall",
        NEW,
    ),
    jump(
        Table::Filter,
        "FORWARD",
        KUBE_PROXY_FIREWALL,
        "kubernetes load balancer firewall",
        NEW,
    ),
    jump(
        Table::Nat,
        "OUTPUT",
        KUBE_SERVICES,
        "kubernetes service portals",
        "",
    ),
    jump(
        Table::Nat,
        "PREROUTING",
        KUBE_SERVICES,
        "kubernetes service portals",
        "",
    ),
    jump(
        Table::Nat,
        "POSTROUTING",
        KUBE_POSTROUTING,
        "kubernetes postrouting rules",
        "",
    ),
];

const fn jump(
    table: Table,
    from: &'static str,
    to: &'static str,
    comment: &'static str,
    matches: &'static str,
) -> JumpRule {
    JumpRule {
        table,
        from,
        to,
        comment,
        matches,
    }
}

impl JumpRule {
    /// The rule's arguments (what follows `-I CHAIN 1`).
    pub fn rule_text(&self) -> String {
        let mut text = String::new();
        if !self.matches.is_empty() {
            text.push_str(self.matches);
            text.push(' ');
        }
        text.push_str(&format!(
            "-m comment --comment \"{}\" -j {}",
            self.comment, self.to
        ));
        text
    }

    /// Is the rule already in the saved table? Matched on chain, target and comment, which
    /// is robust to how iptables-save orders and spells the other matches.
    pub fn is_present_in(&self, saved: &SavedTable) -> bool {
        let comment = format!("--comment \"{}\"", self.comment);
        saved.rules.iter().any(|(chain, rule)| {
            chain == self.from && rule_target(rule) == Some(self.to) && rule.contains(&comment)
        })
    }
}

/// The jump rules of one table.
pub fn jump_rules_of(table: Table) -> impl Iterator<Item = &'static JumpRule> {
    JUMP_RULES.iter().filter(move |j| j.table == table)
}
