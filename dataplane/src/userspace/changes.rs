//! One userspace sync as data: what the host has ([`Observed`]) and the changes a plan needs
//! from it ([`Changes`]), computed without I/O and listed in the order they are applied
//! (make before break: steering for new backends' replies before the forwarder takes the
//! new table, removals after it).

use std::net::IpAddr;

use super::bridges::{self, Bridge};
use super::nodeports;
use super::proxier::UserspaceConfig;
use super::routes::{Steering, SteeringBatch};
use super::services::ServiceTable;
use crate::iptables::ruleset::Ruleset;
use crate::plan::{IpFamily, ProxyPlan};
use crate::report::SyncReport;

/// What the bridge table was rendered from: the bridges and which families (IPv4, IPv6)
/// had replies. While it stays the same, backend changes are element changes.
pub type BridgeShape = (Vec<Bridge>, (bool, bool));

/// What the host has that a sync depends on: what the proxier last wrote (`None`: unknown,
/// rewrite), and what only the kernel knows.
#[derive(Debug, Default)]
pub struct Observed {
    /// The steering routes and rules last written (`None` for a full sync).
    pub steering: Option<Steering>,
    /// Policy rules at kproxy's priority in the kernel, deleted by a full sync (read only
    /// then).
    pub stale_rules: usize,
    /// The node's pod bridges now.
    pub local_bridges: Vec<Bridge>,
    /// The shape of the bridge table last written.
    pub bridge_table: Option<BridgeShape>,
    /// Per family, the NodePort and masquerade chains last written.
    pub nodeport_chains: Vec<(IpFamily, Option<Ruleset>)>,
}

/// How the bridge table changes around the forwarder's table swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BridgeChanges {
    /// Nothing to write.
    Unchanged,
    /// The same table: elements of new replies are added before the swap, those of old
    /// ones deleted after it.
    Elements {
        /// `nft -f` input adding elements.
        add: String,
        /// `nft -f` input deleting elements.
        delete: String,
    },
    /// The table is replaced: before the swap by one for the old and new replies, after it
    /// by one for the new replies only.
    Rewrite {
        /// The transition table.
        before: String,
        /// The final table.
        after: String,
    },
}

/// One family's NodePort and masquerade chains, to be written because they changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePortChange {
    /// The family.
    pub family: IpFamily,
    /// The chains.
    pub chains: Ruleset,
    /// Whether `PREROUTING` and `OUTPUT` jump to the NodePort chain (there is a NodePort
    /// address).
    pub nodeports: bool,
}

/// Everything one sync writes, in order, and the state it leaves.
#[derive(Debug)]
pub struct Changes {
    /// Whether everything is rewritten.
    pub full: bool,
    /// The forwarder's new table.
    pub table: ServiceTable,
    /// Routes, policy rules and reply-steering elements: adds before the swap, removals
    /// after it.
    pub batch: SteeringBatch,
    /// The bridge table's changes.
    pub bridges: BridgeChanges,
    /// The NodePort and masquerade chains that changed, after the swap.
    pub nodeports: Vec<NodePortChange>,
    /// The steering in place once applied.
    pub steering: Steering,
    /// The bridge table's shape once applied.
    pub bridge_table: Option<BridgeShape>,
    /// Per family, the chains in place once applied.
    pub nodeport_chains: Vec<(IpFamily, Option<Ruleset>)>,
}

/// The family's address NodePort traffic is DNATed to, if it serves NodePorts.
pub fn nodeport_ip(config: &UserspaceConfig, family: IpFamily) -> Option<IpAddr> {
    match family {
        IpFamily::V4 => config.nodeport_v4.map(IpAddr::V4),
        IpFamily::V6 => config.nodeport_v6.map(IpAddr::V6),
    }
}

/// The family's masquerade address, if it masquerades.
pub fn masquerade_ip(config: &UserspaceConfig, family: IpFamily) -> Option<IpAddr> {
    let f = &config.forwarder;
    match family {
        IpFamily::V4 => f.masquerade_v4.map(IpAddr::V4),
        IpFamily::V6 => f.masquerade_v6.map(IpAddr::V6),
    }
}

impl Changes {
    /// The changes that turn `observed` into what `plan` (its services of `families`)
    /// needs; `seed` seeds the load balancers of the new table.
    pub fn compute(
        plan: &ProxyPlan,
        config: &UserspaceConfig,
        families: &[IpFamily],
        seed: u64,
        observed: Observed,
    ) -> Changes {
        let mut ours = plan.clone();
        ours.services.retain(|s| families.contains(&s.family));
        let nodeport_ips: Vec<IpAddr> = families
            .iter()
            .filter_map(|f| nodeport_ip(config, *f))
            .collect();
        let table =
            ServiceTable::build_with_nodeports(&ours, config.algorithm, seed, &nodeport_ips);
        let routed: Vec<IpAddr> = nodeport_ips
            .iter()
            .copied()
            .chain(families.iter().filter_map(|f| masquerade_ip(config, *f)))
            .collect();
        let steering = Steering::of(&table, &routed);
        let prev = observed.steering;
        let full = prev.is_none();
        let batch = steering.batch(
            prev.as_ref(),
            &config.device,
            observed.stale_rules,
            families,
        );
        let (bridges, bridge_table) = bridge_changes(
            prev.as_ref(),
            &steering,
            observed.local_bridges,
            observed.bridge_table,
        );
        let mut nodeports = Vec::new();
        let mut nodeport_chains = observed.nodeport_chains;
        for (family, written) in &mut nodeport_chains {
            let nodeport_to = nodeport_ip(config, *family);
            let chains =
                nodeports::render(&ours, *family, nodeport_to, masquerade_ip(config, *family));
            if full || written.as_ref() != Some(&chains) {
                nodeports.push(NodePortChange {
                    family: *family,
                    chains: chains.clone(),
                    nodeports: nodeport_to.is_some(),
                });
            }
            *written = Some(chains);
        }
        Changes {
            full,
            table,
            batch,
            bridges,
            nodeports,
            steering,
            bridge_table,
            nodeport_chains,
        }
    }

    /// What a full sync of `plan` writes onto a host where nothing is known (for
    /// `kproxy render` and `explain --live`, which run beside, not inside, a proxier).
    pub fn full(plan: &ProxyPlan, config: &UserspaceConfig, families: &[IpFamily]) -> Changes {
        let observed = Observed {
            nodeport_chains: families.iter().map(|f| (*f, None)).collect(),
            ..Observed::default()
        };
        Changes::compute(plan, config, families, 0, observed)
    }

    /// What the sync reports per family (each its own routes and rules, so dual-stack
    /// metrics do not count one family's objects twice); `took` is set once applied.
    pub fn reports(&self, families: &[IpFamily]) -> Vec<SyncReport> {
        families
            .iter()
            .map(|&family| SyncReport {
                mode: "userspace",
                family,
                full: self.full,
                objects_written: self.batch.written.of(family),
                objects_deleted: self.batch.deleted.of(family),
                lines_written: self.batch.lines(family),
                rules_total: self.steering.count(family),
                took: std::time::Duration::ZERO,
            })
            .collect()
    }
}

/// The bridge table's changes from `prev` to `wanted` steering on `local_bridges`, and its
/// shape once applied.
fn bridge_changes(
    prev: Option<&Steering>,
    wanted: &Steering,
    local_bridges: Vec<Bridge>,
    written: Option<BridgeShape>,
) -> (BridgeChanges, Option<BridgeShape>) {
    let shape: BridgeShape = (local_bridges, bridges::families(&wanted.rules));
    // A table exists in the kernel when there is some bridge and some reply.
    let table_exists = !shape.0.is_empty() && (shape.1.0 || shape.1.1);
    match prev {
        Some(p) if table_exists && written.as_ref() == Some(&shape) => {
            if p.rules == wanted.rules {
                return (BridgeChanges::Unchanged, written);
            }
            let changes = BridgeChanges::Elements {
                add: bridges::elements("add", wanted.rules.difference(&p.rules)),
                delete: bridges::elements("delete", p.rules.difference(&wanted.rules)),
            };
            (changes, written)
        }
        Some(_) if written.as_ref() == Some(&shape) => (BridgeChanges::Unchanged, written),
        _ => {
            let after = bridges::render(&shape.0, &wanted.rules);
            let before = match prev {
                Some(p) => {
                    bridges::render(&shape.0, &p.rules.union(&wanted.rules).copied().collect())
                }
                None => after.clone(),
            };
            (BridgeChanges::Rewrite { before, after }, Some(shape))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{endpoint, plan, service, with_endpoints};

    fn config() -> UserspaceConfig {
        UserspaceConfig::default()
    }

    fn cbr0() -> Vec<Bridge> {
        vec![Bridge {
            name: "cbr0".into(),
            mac: "02:00:00:00:00:01".into(),
            ports: vec!["veth1".into()],
        }]
    }

    /// `ns1/web:http` on 172.30.0.41:80 to `backend`, with a NodePort when given one.
    fn web(backend: &str, node_port: Option<u16>) -> ProxyPlan {
        let mut svc = service("ns1", "web", "http", "172.30.0.41", 80);
        svc.node_port = node_port;
        plan(vec![with_endpoints(svc, vec![endpoint(backend, true)])])
    }

    /// What the host has after `changes` were applied, on the same bridges.
    fn after(changes: Changes) -> Observed {
        Observed {
            steering: Some(changes.steering),
            stale_rules: 0,
            local_bridges: cbr0(),
            bridge_table: changes.bridge_table,
            nodeport_chains: changes.nodeport_chains,
        }
    }

    fn unknown() -> Observed {
        Observed {
            stale_rules: 2,
            local_bridges: cbr0(),
            nodeport_chains: vec![(IpFamily::V4, None)],
            ..Observed::default()
        }
    }

    fn compute(plan: &ProxyPlan, observed: Observed) -> Changes {
        Changes::compute(plan, &config(), &[IpFamily::V4], 1, observed)
    }

    #[test]
    fn an_unknown_host_is_rewritten() {
        let first = compute(&web("10.0.0.5:8080", Some(30080)), unknown());
        assert!(first.full);
        assert!(
            first.batch.adds.v4.contains("rule del priority"),
            "stale rules deleted"
        );
        assert!(
            first
                .batch
                .adds
                .v4
                .contains("route replace 172.30.0.41/32 dev kproxy0")
        );
        assert!(
            first
                .batch
                .nft_adds
                .contains("delete table inet kproxy_userspace_replies"),
            "reply table recreated"
        );
        let BridgeChanges::Rewrite { before, after } = &first.bridges else {
            panic!("bridge table rewritten: {:?}", first.bridges);
        };
        assert_eq!(before, after, "nothing old to keep during the swap");
        assert_eq!(first.nodeports.len(), 1);
        assert!(first.nodeports[0].nodeports);
        assert_eq!(
            first.reports(&[IpFamily::V4])[0].rules_total,
            first.steering.count(IpFamily::V4)
        );
    }

    #[test]
    fn the_same_plan_again_changes_nothing() {
        let p = web("10.0.0.5:8080", Some(30080));
        let again = compute(&p, after(compute(&p, unknown())));
        assert!(!again.full);
        assert_eq!(again.batch, SteeringBatch::default());
        assert_eq!(again.bridges, BridgeChanges::Unchanged);
        assert!(again.nodeports.is_empty());
    }

    #[test]
    fn a_new_endpoint_is_steered_before_the_swap_and_the_old_one_released_after() {
        let first = compute(&web("10.0.0.5:8080", Some(30080)), unknown());
        let next = compute(&web("10.0.0.6:8080", Some(30080)), after(first));
        assert!(!next.full);
        assert!(next.batch.nft_adds.contains("10.0.0.6"), "{:?}", next.batch);
        assert!(
            next.batch.nft_removals.contains("10.0.0.5"),
            "{:?}",
            next.batch
        );
        let BridgeChanges::Elements { add, delete } = &next.bridges else {
            panic!("element changes only: {:?}", next.bridges);
        };
        assert!(
            add.contains("10.0.0.6") && !add.contains("10.0.0.5"),
            "{add}"
        );
        assert!(
            delete.contains("10.0.0.5") && !delete.contains("10.0.0.6"),
            "{delete}"
        );
        assert!(
            next.nodeports.is_empty(),
            "endpoints do not touch the NodePort chains"
        );
    }

    #[test]
    fn a_new_node_port_rewrites_the_chains_and_new_bridges_the_table() {
        let first = compute(&web("10.0.0.5:8080", None), unknown());
        let mut observed = after(first);
        observed.local_bridges.push(Bridge {
            name: "cbr1".into(),
            mac: "02:00:00:00:00:02".into(),
            ports: vec!["veth9".into()],
        });
        let next = compute(&web("10.0.0.5:8080", Some(30080)), observed);
        assert_eq!(next.nodeports.len(), 1);
        assert!(
            next.nodeports[0].chains.to_restore_text().contains("30080"),
            "{:?}",
            next.nodeports
        );
        assert!(
            matches!(next.bridges, BridgeChanges::Rewrite { .. }),
            "{:?}",
            next.bridges
        );
        assert_eq!(next.bridge_table.map(|(b, _)| b.len()), Some(2));
    }

    #[test]
    fn the_table_lists_every_frontend_with_its_sets() {
        let changes = compute(&web("10.0.0.5:8080", Some(30080)), unknown());
        assert_eq!(
            changes.table.listing(),
            "tcp 169.254.42.2:30080 (ns1/web:http, external): cluster [10.0.0.5:8080] local []\n\
             tcp 172.30.0.41:80 (ns1/web:http, internal): cluster [10.0.0.5:8080] local []\n"
        );
    }
}
