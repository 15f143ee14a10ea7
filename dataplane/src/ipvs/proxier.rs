//! The IPVS-mode sync engine: per IP family, render the plan (incrementally: only the
//! service ports that changed), diff it against the kernel's virtual services (read over
//! netlink on a full sync, the last sync's result otherwise, refreshed for draining real
//! servers), and apply the difference; on a partial sync only the ipsets that changed are
//! compared, and the ruleset is written only when its inputs changed.
//!
//! After any failure the cached state (and the renderer's) is dropped, so the next sync
//! re-reads the kernel and renders everything.
//! Calls block briefly on netlink and `ip`; run them off an async executor's hot path.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::backend::{Backend, BackendError, BoxFuture};
use crate::iptables::ruleset::{Ruleset, Table};
use crate::plan::{IpFamily, NodeContext, ProxyPlan};
use crate::report::SyncReport;

use super::apply::{
    IpvsError, apply_addresses, apply_ipsets, apply_ops, bound_addresses, delete_dummy_interface,
    destroy_ipsets, ensure_dummy_interface, forget_excluded, read_owned,
};
use super::canary::IpvsCanary;
use super::diff::{IpvsChanges, IpvsOp, KernelState, advance, diff};
use super::incremental::IncrementalRender;
use super::ipset::{self, IpsetEntries};
use super::netlink::{IpvsNetlinkError, IpvsSocket, ServiceKey, Timeouts};
use super::rules::{
    NoNodeAccess, RuleOptions, apply_rules, cleanup_rules, no_node_access, render_rules,
};
use super::state::{IpvsState, RenderOptions, Scheduler, nodeport_ips, render};

/// IPVS-mode settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpvsOptions {
    /// `--ipvs-scheduler`.
    pub scheduler: Scheduler,
    /// `--ipvs-strict-arp`: `arp_ignore=1`, `arp_announce=2` so service IPs on the dummy
    /// interface are not announced.
    pub strict_arp: bool,
    /// The IPv4 iptables binary of the resolved backend (`iptables-nft`,
    /// `iptables-legacy`; IPv6 uses the matching `ip6tables-*`). `None` leaves the fixed
    /// masquerade/forward ruleset out (tests of the netlink side only).
    pub iptables: Option<String>,
    /// `MASQUERADE --random-fully` is supported.
    pub random_fully: bool,
    /// `--ipvs-exclude-cidrs`: virtual services on these addresses that kproxy does not
    /// want are never deleted or changed, by a sync or by cleanup.
    pub exclude_cidrs: Vec<IpNet>,
    /// `--ipvs-tcp-timeout`, `--ipvs-tcpfin-timeout`, `--ipvs-udp-timeout`: set once at
    /// start (the non-zero ones); a failure is logged, as upstream.
    pub timeouts: Timeouts,
}

/// What the IPVS-mode ruleset is rendered from.
type RulesInput = (NodeContext, Vec<NoNodeAccess>);

/// The sets after a sync, and the `ipset restore` input (with its entry lines) that
/// brings the kernel's from `current` (what the last sync wrote; `None`: unknown, so every
/// set is rebuilt) to `wanted`, comparing only the sets in `changed` when `current` is
/// known.
fn ipset_changes(
    wanted: &IpvsState,
    current: Option<IpsetEntries>,
    changed: &BTreeSet<&'static str>,
    family: IpFamily,
) -> (IpsetEntries, String, usize) {
    match current {
        Some(mut sets) => {
            let part: IpsetEntries = changed
                .iter()
                .filter_map(|set| Some((*set, wanted.ipsets.get(set)?.clone())))
                .collect();
            let (input, lines) = ipset::restore_input(&part, Some(&sets), family);
            sets.extend(part);
            (sets, input, lines)
        }
        None => {
            let (input, lines) = ipset::restore_input(&wanted.ipsets, None, family);
            (wanted.ipsets.clone(), input, lines)
        }
    }
}

/// The iptables binary of `family` given the IPv4 one.
pub fn iptables_for(v4: &str, family: IpFamily) -> String {
    match family {
        IpFamily::V4 => v4.to_string(),
        IpFamily::V6 => v4.replacen("iptables", "ip6tables", 1),
    }
}

/// The sysctls upstream's IPVS proxier sets, as `(path under /proc/sys, value)`.
pub fn required_sysctls(opts: &IpvsOptions) -> Vec<(&'static str, &'static str)> {
    let mut v = vec![
        ("net/ipv4/vs/conntrack", "1"),
        ("net/ipv4/vs/expire_nodest_conn", "1"),
        ("net/ipv4/vs/expire_quiescent_template", "1"),
        ("net/ipv4/ip_forward", "1"),
    ];
    if opts.strict_arp {
        v.push(("net/ipv4/conf/all/arp_ignore", "1"));
        v.push(("net/ipv4/conf/all/arp_announce", "2"));
    }
    v
}

/// Sets the non-zero connection timeouts of `timeouts`; a failure is logged and start-up
/// goes on (as upstream's `ConfigureTimeouts`).
fn configure_timeouts(sock: &mut IpvsSocket, timeouts: &Timeouts) {
    if timeouts.is_unchanged() {
        return;
    }
    match sock.set_timeouts(timeouts) {
        Ok(()) => tracing::info!(%timeouts, "IPVS connection timeouts set (0: unchanged)"),
        Err(err) => tracing::error!(%err, "failed to configure IPVS timeouts"),
    }
}

/// Whether this thread's network namespace has IPVS (`/proc/net/ip_vs`).
pub fn kernel_has_ipvs() -> bool {
    Path::new("/proc/thread-self/net/ip_vs").exists() || Path::new("/proc/net/ip_vs").exists()
}

/// Programs IPVS from plans.
pub struct IpvsProxier {
    sock: IpvsSocket,
    families: Vec<IpFamily>,
    render: RenderOptions,
    iptables: Option<String>,
    rule_options: RuleOptions,
    /// `--ipvs-exclude-cidrs`.
    exclude_cidrs: Vec<IpNet>,
    /// Per family: what the last successful sync left in the kernel.
    written: Vec<FamilyState>,
}

struct FamilyState {
    family: IpFamily,
    /// What the last successful sync left in the kernel (`None`: unknown; the next sync
    /// reads the kernel).
    record: Option<Record>,
    /// The wanted state of the last plan, updated per changed service port.
    renderer: IncrementalRender,
}

/// What one family has in the kernel, as far as a sync needs to know: read from the
/// kernel on a full sync, the last sync's record otherwise.
struct Record {
    /// The virtual services kproxy owns, with their real servers.
    kernel: KernelState,
    /// The ipsets' entries (`None`: unknown, every set is rebuilt).
    ipsets: Option<IpsetEntries>,
    /// The ruleset, and what it was rendered from (`None`: unknown, rewritten).
    rules: Option<(RulesInput, Ruleset)>,
    /// The addresses on `kube-ipvs0`.
    addresses: BTreeSet<IpAddr>,
}

/// Everything one family's sync writes, computed from the observed [`Record`] and the
/// wanted state alone.
struct Changes {
    /// `ipset restore` input, and its entry lines.
    ipsets: (String, usize),
    /// The ruleset to write (`None`: the kernel's is current, or there is no iptables).
    rules: Option<Ruleset>,
    /// Virtual and real servers, and `kube-ipvs0` addresses.
    servers: IpvsChanges,
    /// The record the kernel holds once the changes are applied.
    after: Record,
}

impl IpvsProxier {
    /// A proxier for `families`. Fails with [`IpvsError::Unsupported`] when the kernel has
    /// no IPVS (never falls back to another mode). Creates `kube-ipvs0` and sets the
    /// sysctls upstream sets.
    pub fn new(
        opts: IpvsOptions,
        families: impl IntoIterator<Item = IpFamily>,
    ) -> Result<IpvsProxier, IpvsError> {
        if !kernel_has_ipvs() {
            return Err(IpvsError::Unsupported("/proc/net/ip_vs is missing".into()));
        }
        let mut sock = IpvsSocket::open().map_err(|e| match e {
            IpvsNetlinkError::FamilyNotFound => IpvsError::Unsupported(e.to_string()),
            other => IpvsError::Netlink(other),
        })?;
        let (version, _) = sock.info()?;
        for (path, value) in required_sysctls(&opts) {
            if let Err(err) = std::fs::write(Path::new("/proc/sys").join(path), value) {
                tracing::warn!(sysctl = path, value, %err, "cannot set sysctl");
            }
        }
        configure_timeouts(&mut sock, &opts.timeouts);
        ensure_dummy_interface()?;
        let families: Vec<IpFamily> = families.into_iter().collect();
        let render_options = RenderOptions {
            scheduler: opts.scheduler,
        };
        tracing::info!(
            version = format!("{}.{}.{}", version >> 16, (version >> 8) & 0xff, version & 0xff),
            scheduler = %opts.scheduler,
            strict_arp = opts.strict_arp,
            "IPVS proxier"
        );
        Ok(IpvsProxier {
            sock,
            written: families
                .iter()
                .map(|f| FamilyState {
                    renderer: IncrementalRender::new(*f, render_options.clone()),
                    family: *f,
                    record: None,
                })
                .collect(),
            families,
            render: render_options,
            rule_options: RuleOptions {
                random_fully: opts.random_fully,
            },
            iptables: opts.iptables,
            exclude_cidrs: opts.exclude_cidrs,
        })
    }

    /// Forgets the services of `state` on an address inside `--ipvs-exclude-cidrs` that
    /// `wanted` does not claim, so that neither a sync nor cleanup touches them.
    fn leave_excluded(
        &self,
        state: &mut KernelState,
        family: IpFamily,
        wanted: impl Fn(&ServiceKey) -> bool,
    ) {
        let left = forget_excluded(state, &self.exclude_cidrs, wanted);
        if left > 0 {
            tracing::debug!(%family, left, "IPVS services inside --ipvs-exclude-cidrs left alone");
        }
    }

    /// The keys of the virtual services `plan` wants (none without a plan).
    fn planned_keys(&self, plan: Option<&ProxyPlan>) -> BTreeSet<ServiceKey> {
        plan.map(|plan| {
            self.render(plan)
                .into_iter()
                .flat_map(|(_, state)| state.virtual_servers.into_keys())
                .collect()
        })
        .unwrap_or_default()
    }

    /// Renders what a sync of `plan` would program, per family, touching nothing.
    pub fn render(&self, plan: &ProxyPlan) -> Vec<(IpFamily, IpvsState)> {
        self.families
            .iter()
            .filter_map(|f| render(plan, *f, &self.render).map(|s| (*f, s)))
            .collect()
    }

    /// Syncs every family. `full` re-reads the kernel; a family that never synced, or
    /// whose last sync failed, is always synced fully. Each family's sync observes what
    /// the kernel has ([`Self::observe`]), computes every change as data
    /// ([`Self::changes`]), and applies them once ([`Self::apply`]). A sync that leaves
    /// real servers draining should be followed by another one (upstream checks every
    /// minute).
    pub fn sync(&mut self, plan: &ProxyPlan, full: bool) -> Result<Vec<SyncReport>, IpvsError> {
        let mut reports = Vec::new();
        for i in 0..self.written.len() {
            let start = Instant::now();
            let family = self.written[i].family;
            // Taken out for the sync: a failed sync leaves no record and a fresh renderer,
            // so the next sync reads the kernel and renders everything.
            let record = self.written[i].record.take().filter(|_| !full);
            let fresh = IncrementalRender::new(family, self.render.clone());
            let mut renderer = std::mem::replace(&mut self.written[i].renderer, fresh);
            let full = record.is_none();
            let nothing = IpvsState::default();
            let served = renderer.render(plan).is_some();
            let changed_sets = renderer.take_changed_sets();
            let wanted = if served { renderer.state() } else { &nothing };
            let observed = self.observe(family, record, wanted, plan)?;
            let changes = self.changes(plan, family, observed, wanted, &changed_sets);
            self.apply(family, &changes)?;
            let servers = &changes.servers;
            let deleted = servers
                .ops
                .iter()
                .filter(|op| matches!(op, IpvsOp::DelService(_) | IpvsOp::DelDest(..)))
                .count();
            let rules_written = changes.rules.as_ref().map_or(0, |r| {
                r.rule_count(Table::Nat) + r.rule_count(Table::Filter)
            });
            reports.push(SyncReport {
                mode: "ipvs",
                family,
                full,
                objects_written: servers.ops.len() - deleted + servers.add_addresses.len(),
                objects_deleted: deleted + servers.del_addresses.len(),
                lines_written: servers.ops.len() + changes.ipsets.1 + rules_written,
                rules_total: wanted.virtual_servers.len() + wanted.real_server_count(),
                took: start.elapsed(),
            });
            if servers.draining > 0 {
                tracing::debug!(%family, draining = servers.draining, "real servers draining");
            }
            self.written[i].record = Some(changes.after);
            self.written[i].renderer = renderer;
        }
        Ok(reports)
    }

    /// What `family` has in the kernel: `record` (the last sync's) with the destinations
    /// of draining real servers re-read, or, without one, the addresses on `kube-ipvs0`
    /// and the virtual services on them, on the addresses `wanted` binds and on NodePort
    /// addresses. Services inside `--ipvs-exclude-cidrs` that `wanted` does not claim are
    /// left out: no change touches them.
    fn observe(
        &mut self,
        family: IpFamily,
        record: Option<Record>,
        wanted: &IpvsState,
        plan: &ProxyPlan,
    ) -> Result<Record, IpvsError> {
        let mut record = match record {
            Some(mut record) => {
                self.refresh_draining(&mut record.kernel)?;
                record
            }
            None => {
                let addresses = bound_addresses(family)?;
                let mut owned = addresses.clone();
                owned.extend(wanted.bound_addresses.iter().copied());
                owned.extend(nodeport_ips(plan, family));
                Record {
                    kernel: read_owned(&mut self.sock, family, &owned)?,
                    ipsets: None,
                    rules: None,
                    addresses,
                }
            }
        };
        let wanted_keys = &wanted.virtual_servers;
        self.leave_excluded(&mut record.kernel, family, |k| wanted_keys.contains_key(k));
        Ok(record)
    }

    /// Every change that brings `observed` to `wanted`, and the record after them. Pure.
    fn changes(
        &self,
        plan: &ProxyPlan,
        family: IpFamily,
        observed: Record,
        wanted: &IpvsState,
        changed_sets: &BTreeSet<&'static str>,
    ) -> Changes {
        let (sets, ipset_input, ipset_lines) =
            ipset_changes(wanted, observed.ipsets, changed_sets, family);
        // The ruleset depends on the node and the load-balancer IPs the node may not reach
        // only: rendered again when those changed.
        let input = (plan.node.clone(), no_node_access(plan, family));
        let (rules, recorded) = match observed.rules {
            Some((was, rules)) if was == input => (None, Some((was, rules))),
            _ if self.iptables.is_none() => (None, None),
            _ => match render_rules(plan, family, self.rule_options) {
                Some(rules) => (Some(rules.clone()), Some((input, rules))),
                None => (None, None),
            },
        };
        let servers = diff(wanted, &observed.kernel, &observed.addresses);
        let mut kernel = observed.kernel;
        advance(&mut kernel, &servers.ops);
        let mut addresses = observed.addresses;
        addresses.extend(servers.add_addresses.iter().copied());
        for ip in &servers.del_addresses {
            addresses.remove(ip);
        }
        Changes {
            ipsets: (ipset_input, ipset_lines),
            rules,
            servers,
            after: Record {
                kernel,
                ipsets: Some(sets),
                rules: recorded,
                addresses,
            },
        }
    }

    /// Applies `changes` of `family`: the ipsets first (the rules match on them), the
    /// ruleset, the addresses on `kube-ipvs0`, then the virtual and real servers.
    fn apply(&mut self, family: IpFamily, changes: &Changes) -> Result<(), IpvsError> {
        apply_ipsets(&changes.ipsets.0)?;
        if let (Some(rules), Some(v4)) = (&changes.rules, &self.iptables) {
            apply_rules(&iptables_for(v4, family), rules)?;
        }
        apply_addresses(&changes.servers)?;
        apply_ops(&mut self.sock, &changes.servers)
    }

    /// What the canary should look for, after the last sync: per family one virtual server
    /// it left, `kube-ipvs0` when it bound addresses, and the fixed iptables chains.
    pub fn canary(&self) -> IpvsCanary {
        let mut canary = IpvsCanary::default();
        for state in &self.written {
            let Some(record) = &state.record else {
                continue;
            };
            if let Some(key) = record.kernel.keys().next() {
                canary.probes.push(*key);
            }
            canary.dummy_interface |= !record.addresses.is_empty();
            if let (Some(v4), Some(_)) = (&self.iptables, &record.rules) {
                canary.iptables.push(iptables_for(v4, state.family));
            }
        }
        canary
    }

    /// Forgets what the last sync left (after a canary check found it flushed): the next
    /// sync reads the kernel again.
    pub fn forget(&mut self) {
        for state in &mut self.written {
            state.record = None;
        }
    }

    /// Re-reads the destinations of services with a draining (weight 0) real server, so
    /// their connection counters are current.
    fn refresh_draining(&mut self, state: &mut KernelState) -> Result<(), IpvsError> {
        for (key, svc) in state.iter_mut() {
            if svc.destinations.iter().any(|d| d.weight == 0) {
                svc.destinations = self.sock.destinations(key)?;
            }
        }
        Ok(())
    }

    /// Deletes every virtual service on an address of `kube-ipvs0` or a NodePort address
    /// of `plan` (when given) except those inside `--ipvs-exclude-cidrs` that are not
    /// kproxy's (written by its last sync or wanted by `plan`), then `kube-ipvs0` itself. Returns the services deleted.
    pub fn cleanup(&mut self, plan: Option<&ProxyPlan>) -> Result<usize, IpvsError> {
        let mut deleted = 0;
        let planned = self.planned_keys(plan);
        for i in 0..self.written.len() {
            let family = self.written[i].family;
            // kproxy's own services: what its last sync left, and what the plan wants.
            let written = self.written[i]
                .record
                .take()
                .map(|r| r.kernel)
                .unwrap_or_default();
            let mut owned = bound_addresses(family).unwrap_or_default();
            if let Some(plan) = plan {
                owned.extend(nodeport_ips(plan, family));
            }
            let mut state = read_owned(&mut self.sock, family, &owned)?;
            self.leave_excluded(&mut state, family, |k| {
                written.contains_key(k) || planned.contains(k)
            });
            for key in state.keys() {
                self.sock.del_service(key)?;
                deleted += 1;
            }
        }
        delete_dummy_interface()?;
        if let Some(v4) = &self.iptables {
            for f in &self.written {
                cleanup_rules(&iptables_for(v4, f.family))?;
            }
        }
        let sets: Vec<String> = self
            .written
            .iter()
            .flat_map(|f| {
                ipset::ALL_SETS
                    .into_iter()
                    .map(move |s| ipset::set_name(s, f.family))
            })
            .chain([ipset::SWAP_SET.to_string()])
            .collect();
        destroy_ipsets(&sets);
        Ok(deleted)
    }
}

/// IPVS mode behind the [`Backend`] contract. Its netlink calls and tools block, so every
/// call runs on tokio's blocking pool: the proxier is moved there and back (`None` only
/// while a call runs, or after one panicked).
pub struct IpvsBackend(Option<IpvsProxier>);

impl IpvsBackend {
    /// `proxier` behind the contract.
    pub fn new(proxier: IpvsProxier) -> Self {
        IpvsBackend(Some(proxier))
    }

    /// Runs `call` with the proxier on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &mut self,
        call: impl FnOnce(&mut IpvsProxier) -> T + Send + 'static,
    ) -> Result<T, BackendError> {
        let mut proxier = self
            .0
            .take()
            .ok_or("the IPVS proxier was lost when a call panicked; restart kproxy")?;
        let (proxier, out) = tokio::task::spawn_blocking(move || {
            let out = call(&mut proxier);
            (proxier, out)
        })
        .await?;
        self.0 = Some(proxier);
        Ok(out)
    }
}

impl Backend for IpvsBackend {
    fn mode(&self) -> &'static str {
        "ipvs"
    }

    fn sync<'a>(
        &'a mut self,
        plan: &'a ProxyPlan,
        full: bool,
    ) -> BoxFuture<'a, Result<Vec<SyncReport>, BackendError>> {
        let plan = plan.clone();
        Box::pin(async move { Ok(self.blocking(move |p| p.sync(&plan, full)).await??) })
    }

    /// One netlink round trip per family and two `iptables -S` of tiny chains, whatever
    /// the number of services.
    fn check_canary(&mut self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let intact = self
                .blocking(|p| {
                    let intact = p.canary().intact();
                    if !intact {
                        p.forget();
                    }
                    intact
                })
                .await;
            intact.unwrap_or(true)
        })
    }

    fn canary_period(&self) -> Duration {
        Duration::from_secs(5)
    }

    fn cleanup(&mut self) -> BoxFuture<'_, Result<String, BackendError>> {
        Box::pin(async move {
            let services = self.blocking(|p| p.cleanup(None)).await??;
            Ok(format!(
                "removed {services} virtual servers, kube-ipvs0, ipsets and rules"
            ))
        })
    }
}
