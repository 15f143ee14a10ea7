//! Steering traffic into the TUN device: the routes and policy rules the userspace mode
//! owns, computed purely from a [`ServiceTable`] and applied with one `ip -batch -` per sync.
//!
//! What is steered, and why this way:
//!
//! * **Service addresses** (cluster IPs, external IPs, load-balancer IPs): one host route
//!   each, `ip route replace <ip>/32 dev <tun>` in the main table. Both forwarded traffic
//!   (from pods) and locally generated traffic follow it, with nothing in iptables.
//! * **Masquerade addresses**: a host route to the TUN, so replies to masqueraded flows come
//!   back to the forwarder (after the kernel un-SNATs them, see [`super::nodeports`]).
//! * **Replies of unmasqueraded flows**: the backend answers the client directly, so the
//!   reply must be pulled into the TUN for un-DNAT. The nftables table [`REPLY_TABLE`]
//!   marks (with [`REPLY_MARK`]) packets whose `source . protocol . source port` is in its
//!   set of backends, before routing (prerouting, and a `route` chain on output); one
//!   policy rule at priority [`RULE_PRIORITY`] sends marked packets to table
//!   [`ROUTE_TABLE`] (whose default route is the TUN). A hash lookup per packet and one
//!   element per backend: a policy rule per backend would be a linear walk for every
//!   forwarded packet and quadratic to install (30k rules took 22 s of kernel time). A
//!   rule one priority earlier sends everything arriving *from* the TUN to the main table,
//!   so translated packets are never pulled back in. Packets the forwarder has no flow for pass through unchanged (the flow
//!   may belong to another node's forwarder). Replies bridged on a pod bridge never meet
//!   these rules; [`super::bridges`] hands them to the IP stack first.
//! * **NodePorts**: DNATed by the kernel to a TUN-routed NodePort address (see
//!   [`super::nodeports`] for why policy routing cannot do it); that address gets a host
//!   route like a service address.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::plan::IpFamily;

use super::services::ServiceTable;

/// The routing table holding the TUN default route for steered replies.
pub const ROUTE_TABLE: u32 = 4242;
/// The priority of the reply-steering rule (the `iif <tun>` escape rule is one less).
pub const RULE_PRIORITY: u32 = 4242;
/// The packet mark of replies to steer into the TUN (one bit kube-proxy and kubelet do
/// not use).
pub const REPLY_MARK: u32 = 0x0010_0000;
/// The nftables table (family `inet`) that marks the replies to steer.
pub const REPLY_TABLE: &str = "kproxy_userspace_replies";

/// A policy rule steering one backend's replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReplyRule {
    /// The backend address.
    pub from: IpAddr,
    /// IP protocol number.
    pub proto: u8,
    /// The backend's (target) port.
    pub sport: u16,
}

/// The routes and rules one plan needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Steering {
    /// Host routes into the TUN.
    pub routes: BTreeSet<IpNet>,
    /// Reply-steering rules.
    pub rules: BTreeSet<ReplyRule>,
}

impl Steering {
    /// What `table` needs, plus host routes for the `masquerade` addresses.
    pub fn of(table: &ServiceTable, masquerade: &[IpAddr]) -> Self {
        let routes = table
            .frontend_ips()
            .into_iter()
            .chain(masquerade.iter().copied())
            .map(IpNet::from)
            .collect();
        let mut rules = BTreeSet::new();
        for svc in table.services() {
            let Some(proto) = super::services::proto_number(svc.plan.name.protocol) else {
                continue;
            };
            for b in svc.cluster.addrs.iter().chain(&svc.local.addrs) {
                rules.insert(ReplyRule {
                    from: b.ip(),
                    proto,
                    sport: b.port(),
                });
            }
        }
        Steering { routes, rules }
    }

    /// The `ip -4 -batch` and `ip -6 -batch` inputs and the `nft -f` input that turn `prev`
    /// (or, when `None`, an unknown state: everything is replaced, the reply table is
    /// recreated, and rules at our priority are first deleted `stale_rules` times) into
    /// `self`, for the families in `families`: what to add (to apply before the forwarder
    /// gets the new table, so that a new backend's replies are steered back from its first
    /// packet) and what to remove (after it, so that a removed backend's replies are
    /// steered until the forwarder stops using it).
    pub fn batch(
        &self,
        prev: Option<&Steering>,
        dev: &str,
        stale_rules: usize,
        families: &[IpFamily],
    ) -> SteeringBatch {
        let mut batch = SteeringBatch::default();
        let empty = Steering::default();
        let old = match prev {
            Some(p) => p,
            None => {
                for fam in families {
                    let text = batch.adds.of(*fam);
                    for _ in 0..stale_rules {
                        let _ = writeln!(text, "rule del priority {RULE_PRIORITY}");
                    }
                    let esc = RULE_PRIORITY - 1;
                    let _ = writeln!(text, "rule del priority {esc}");
                    let _ = writeln!(text, "rule add priority {esc} iif {dev} lookup main");
                    let _ = writeln!(
                        text,
                        "rule add priority {RULE_PRIORITY} fwmark {REPLY_MARK:#x}/{REPLY_MARK:#x} lookup {ROUTE_TABLE}"
                    );
                    let _ = writeln!(text, "route replace default dev {dev} table {ROUTE_TABLE}");
                }
                batch.nft_adds = reply_table(dev);
                &empty
            }
        };
        for net in old.routes.difference(&self.routes) {
            let family = IpFamily::of_net(net);
            let _ = writeln!(batch.removals.of(family), "route del {net} dev {dev}");
            batch.deleted.add(family);
        }
        for rule in old.rules.difference(&self.rules) {
            let family = IpFamily::of(&rule.from);
            let _ = writeln!(batch.nft_removals, "delete element {}", element(rule));
            batch.deleted.add(family);
        }
        let fresh = prev.is_none();
        let wanted = |family: IpFamily| families.contains(&family);
        for net in self
            .routes
            .iter()
            .filter(|n| fresh || !old.routes.contains(n))
        {
            let family = IpFamily::of_net(net);
            if wanted(family) {
                let _ = writeln!(batch.adds.of(family), "route replace {net} dev {dev}");
                batch.written.add(family);
            }
        }
        for rule in self
            .rules
            .iter()
            .filter(|r| fresh || !old.rules.contains(r))
        {
            let family = IpFamily::of(&rule.from);
            if wanted(family) {
                let _ = writeln!(batch.nft_adds, "add element {}", element(rule));
                batch.written.add(family);
            }
        }
        batch
    }
}

/// What one steering update writes, in two steps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SteeringBatch {
    /// Routes and rules to add (before the forwarder takes the new table).
    pub adds: FamilyBatches,
    /// Routes to delete (after it).
    pub removals: FamilyBatches,
    /// `nft -f` input adding reply-steering elements (and, on a full update, recreating
    /// the table first), before the forwarder takes the new table.
    pub nft_adds: String,
    /// `nft -f` input deleting reply-steering elements, after it.
    pub nft_removals: String,
    /// Objects written, per family.
    pub written: FamilyCounts,
    /// Objects deleted, per family.
    pub deleted: FamilyCounts,
}

impl SteeringBatch {
    /// Lines of one family, both steps (the nft elements of the family included).
    pub fn lines(&self, family: IpFamily) -> usize {
        let set = format!("{} ", reply_set(family));
        let nft = self
            .nft_adds
            .lines()
            .chain(self.nft_removals.lines())
            .filter(|l| l.contains(&set))
            .count();
        self.adds.lines(family) + self.removals.lines(family) + nft
    }
}

/// A count per family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FamilyCounts {
    /// IPv4.
    pub v4: usize,
    /// IPv6.
    pub v6: usize,
}

impl FamilyCounts {
    fn add(&mut self, family: IpFamily) {
        match family {
            IpFamily::V4 => self.v4 += 1,
            IpFamily::V6 => self.v6 += 1,
        }
    }

    /// The count of one family.
    pub fn of(&self, family: IpFamily) -> usize {
        match family {
            IpFamily::V4 => self.v4,
            IpFamily::V6 => self.v6,
        }
    }
}

impl Steering {
    /// Routes and rules of one family.
    pub fn count(&self, family: IpFamily) -> usize {
        let routes = self.routes.iter().filter(|n| IpFamily::of_net(n) == family);
        let rules = self
            .rules
            .iter()
            .filter(|r| IpFamily::of(&r.from) == family);
        routes.count() + rules.count()
    }
}

/// `ip -batch` input per family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FamilyBatches {
    /// Lines for `ip -4 -force -batch -`.
    pub v4: String,
    /// Lines for `ip -6 -force -batch -`.
    pub v6: String,
}

impl FamilyBatches {
    /// The input of one family.
    pub fn of(&mut self, family: IpFamily) -> &mut String {
        match family {
            IpFamily::V4 => &mut self.v4,
            IpFamily::V6 => &mut self.v6,
        }
    }

    /// Lines of one family.
    pub fn lines(&self, family: IpFamily) -> usize {
        match family {
            IpFamily::V4 => self.v4.lines().count(),
            IpFamily::V6 => self.v6.lines().count(),
        }
    }
}

/// The reply set of a family.
pub fn reply_set(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "replies4",
        IpFamily::V6 => "replies6",
    }
}

/// `inet TABLE SET { addr . proto . port }`: one reply-steering element.
fn element(r: &ReplyRule) -> String {
    let set = reply_set(IpFamily::of(&r.from));
    format!(
        "inet {REPLY_TABLE} {set} {{ {} . {} . {} }}",
        r.from, r.proto, r.sport
    )
}

/// The `nft -f` input that (re)creates [`REPLY_TABLE`] empty: the two sets, and the
/// chains marking replies of their members before routing (prerouting for forwarded
/// packets, a `route` chain for the node's own, which re-routes a packet whose mark
/// changed); packets from the TUN device `dev` are never marked.
pub fn reply_table(dev: &str) -> String {
    let mark = format!("{REPLY_MARK:#x}");
    let mut out = format!("table inet {REPLY_TABLE}\ndelete table inet {REPLY_TABLE}\n");
    let _ = writeln!(out, "table inet {REPLY_TABLE} {{");
    for (set, ty) in [("replies4", "ipv4_addr"), ("replies6", "ipv6_addr")] {
        let _ = writeln!(
            out,
            "\tset {set} {{ type {ty} . inet_proto . inet_service; }}"
        );
    }
    for (chain, hook, from_tun) in [
        (
            "prerouting",
            "type filter hook prerouting priority mangle",
            true,
        ),
        ("output", "type route hook output priority mangle", false),
    ] {
        let _ = writeln!(out, "\tchain {chain} {{\n\t\t{hook}; policy accept;");
        let skip_tun = if from_tun {
            format!("iifname != \"{dev}\" ")
        } else {
            String::new()
        };
        for (l3, set) in [("ip", "replies4"), ("ip6", "replies6")] {
            let _ = writeln!(
                out,
                "\t\t{skip_tun}{l3} saddr . meta l4proto . th sport @{set} meta mark set meta mark | {mark}"
            );
        }
        out.push_str("\t}\n");
    }
    out.push_str("}\n");
    out
}
