//! The proxy mode's backend behind one type, so that the sync loop and the commands do not
//! care which mode runs.

use std::time::Duration;

use kproxy_dataplane::iptables::apply::{
    IptablesBackend, IptablesTool, conntrack_tcp_be_liberal, resolve_backend,
};
use kproxy_dataplane::iptables::proxier::IptablesProxier;
use kproxy_dataplane::iptables::render::{RenderOptions, render as render_iptables};
use kproxy_dataplane::ipvs::netlink::Timeouts;
use kproxy_dataplane::ipvs::proxier::{IpvsOptions, IpvsProxier, kernel_has_ipvs};
use kproxy_dataplane::ipvs::state::{
    RenderOptions as IpvsRenderOptions, Scheduler, render as render_ipvs,
};
use kproxy_dataplane::lb::Algorithm;
use kproxy_dataplane::nftables::proxier::NftablesProxier;
use kproxy_dataplane::plan::{IpFamily, ProxyPlan};
use kproxy_dataplane::report::SyncReport;
use kproxy_dataplane::tool::ToolError;
use kproxy_dataplane::userspace::cleanup_leftovers as userspace_cleanup;
use kproxy_dataplane::userspace::proxier::{UserspaceConfig, UserspaceProxier};

use crate::cli::{ProxyMode, Settings};

/// A running backend of one proxy mode.
pub enum Dataplane {
    /// iptables mode.
    Iptables(IptablesProxier),
    /// nftables mode.
    Nftables(NftablesProxier),
    /// IPVS mode. Its netlink calls block, so its syncs run on tokio's blocking pool; the
    /// proxier is moved there and back (`None` only while a sync runs or after one
    /// panicked).
    Ipvs(Option<IpvsProxier>),
    /// Userspace mode (the forwarder runs on its own thread).
    Userspace(Box<UserspaceProxier>),
}

/// The IPv4 iptables binary of the backend `settings` resolve to, and whether it supports
/// `--random-fully` (IPVS mode's small iptables ruleset uses it).
async fn iptables_binary(settings: &Settings) -> anyhow::Result<(String, bool)> {
    let backend = resolve_backend(settings.iptables_backend, IpFamily::V4).await?;
    let tool = IptablesTool {
        family: IpFamily::V4,
        backend,
    };
    Ok((tool.binary(""), tool.supports_random_fully().await))
}

/// A connection timeout of `settings` in the seconds the kernel takes (checked when the
/// settings were merged).
fn timeout_secs(flag: &str, timeout: Duration) -> anyhow::Result<u32> {
    u32::try_from(timeout.as_secs())
        .map_err(|_| anyhow::anyhow!("{flag}: {timeout:?} is too long for an IPVS timeout"))
}

/// The IPVS connection timeouts of `settings` (0: leave the kernel's value).
fn ipvs_timeouts(settings: &Settings) -> anyhow::Result<Timeouts> {
    Ok(Timeouts {
        tcp: timeout_secs("--ipvs-tcp-timeout", settings.ipvs_tcp_timeout)?,
        tcp_fin: timeout_secs("--ipvs-tcpfin-timeout", settings.ipvs_tcp_fin_timeout)?,
        udp: timeout_secs("--ipvs-udp-timeout", settings.ipvs_udp_timeout)?,
    })
}

/// The IPVS proxier of `settings` for `families`. `set_timeouts`: apply the
/// `--ipvs-*-timeout` settings (not when only cleaning up, as upstream's cleanup).
async fn ipvs_proxier(
    settings: &Settings,
    families: Vec<IpFamily>,
    set_timeouts: bool,
) -> anyhow::Result<IpvsProxier> {
    let scheduler: Scheduler = settings
        .ipvs_scheduler
        .parse()
        .map_err(|e| anyhow::anyhow!("--ipvs-scheduler: {e}"))?;
    let (iptables, random_fully) = iptables_binary(settings).await?;
    let timeouts = if set_timeouts {
        ipvs_timeouts(settings)?
    } else {
        Timeouts::default()
    };
    let opts = IpvsOptions {
        scheduler,
        strict_arp: settings.ipvs_strict_arp,
        iptables: Some(iptables),
        random_fully,
        exclude_cidrs: settings.ipvs_exclude_cidrs.clone(),
        timeouts,
    };
    Ok(IpvsProxier::new(opts, families)?)
}

fn userspace_config(settings: &Settings) -> anyhow::Result<UserspaceConfig> {
    let algorithm: Algorithm = settings
        .userspace_scheduler
        .parse()
        .map_err(|e| anyhow::anyhow!("--userspace-scheduler: {e}"))?;
    let mut config = UserspaceConfig {
        algorithm,
        ..UserspaceConfig::default()
    };
    if let Some(addr) = settings.userspace_masquerade_address {
        config.forwarder.masquerade_v4 = Some(addr);
    }
    Ok(config)
}

impl Dataplane {
    /// The backend of `settings.mode` for `families`, with its tools checked.
    pub async fn new(settings: &Settings, families: Vec<IpFamily>) -> anyhow::Result<Self> {
        Ok(match settings.mode {
            ProxyMode::Iptables => {
                // The counters of upstream's two iptables packet metrics.
                kproxy_dataplane::iptables::nfacct::ensure_counters();
                Dataplane::Iptables(
                    IptablesProxier::new(settings.iptables_backend, families).await?,
                )
            }
            ProxyMode::Nftables => Dataplane::Nftables(NftablesProxier::new(families).await?),
            ProxyMode::Ipvs => Dataplane::Ipvs(Some(ipvs_proxier(settings, families, true).await?)),
            ProxyMode::Userspace => Dataplane::Userspace(Box::new(
                UserspaceProxier::new(userspace_config(settings)?, families).await?,
            )),
        })
    }

    /// Whether the kernel's conntrack NATs this mode's service traffic (so stale UDP
    /// entries must be cleaned); userspace mode tracks its own flows.
    pub fn uses_kernel_nat(&self) -> bool {
        !matches!(self, Dataplane::Userspace(_))
    }

    /// Whether everything kproxy programmed is still there (upstream's canary): `false`
    /// after an external flush; the proxier then makes its next sync a full one. Modes
    /// without a canary answer `true` (their periodic full sync repairs drift).
    pub async fn canary_intact(&self) -> bool {
        match self {
            Dataplane::Iptables(p) => p.canary_intact().await,
            Dataplane::Nftables(p) => p.canary_intact().await,
            Dataplane::Ipvs(Some(p)) => {
                let canary = p.canary();
                tokio::task::spawn_blocking(move || canary.intact())
                    .await
                    .unwrap_or(true)
            }
            Dataplane::Ipvs(None) | Dataplane::Userspace(_) => true,
        }
    }

    /// How often the canary is checked: a check costs ~4–6 ms with iptables-nft and
    /// nftables at 10k services, but ~225 ms with iptables-legacy (it fetches the whole nat
    /// table and holds the xtables lock meanwhile), which is checked less often. IPVS
    /// mode's check is one netlink round trip per family and two `iptables -S` of tiny
    /// chains, whatever the number of services.
    pub fn canary_period(&self) -> Duration {
        match self {
            Dataplane::Iptables(p) if p.tools().any(|t| t.backend == IptablesBackend::Legacy) => {
                Duration::from_secs(30)
            }
            _ => Duration::from_secs(5),
        }
    }

    /// Programs `plan`; `full` forces a full sync.
    pub async fn sync(&mut self, plan: &ProxyPlan, full: bool) -> anyhow::Result<Vec<SyncReport>> {
        Ok(match self {
            Dataplane::Iptables(p) => p.sync(plan, full).await?,
            Dataplane::Nftables(p) => p.sync(plan, full).await?,
            Dataplane::Userspace(p) => p.sync(plan, full).await?,
            Dataplane::Ipvs(slot) => {
                let mut proxier = slot.take().ok_or_else(|| {
                    anyhow::anyhow!(
                        "the IPVS proxier was lost when a sync panicked; restart kproxy"
                    )
                })?;
                let plan = plan.clone();
                let (proxier, result) = tokio::task::spawn_blocking(move || {
                    let result = proxier.sync(&plan, full);
                    (proxier, result)
                })
                .await?;
                *slot = Some(proxier);
                result?
            }
        })
    }
}

/// What a full sync of `plan` would program in `mode`, per family, as the text handed to
/// the kernel tool. Changes nothing (reads sysctls; nftables mode runs `nft --check`).
pub async fn render(
    settings: &Settings,
    plan: &ProxyPlan,
) -> anyhow::Result<Vec<(String, String)>> {
    let mode = settings.mode;
    let families: Vec<IpFamily> = plan.node.families().collect();
    Ok(match mode {
        ProxyMode::Iptables => {
            // What a run would use: it creates the nfacct counters where the kernel has them.
            let options = RenderOptions {
                random_fully: true,
                conntrack_tcp_be_liberal: conntrack_tcp_be_liberal(),
                nfacct: kproxy_dataplane::iptables::nfacct::counters_exist(),
            };
            families
                .into_iter()
                .filter_map(|family| {
                    let tool = if family == IpFamily::V4 {
                        "iptables"
                    } else {
                        "ip6tables"
                    };
                    let rs = render_iptables(plan, family, &options)?;
                    Some((
                        format!("{family}: {tool}-restore --noflush input"),
                        rs.to_restore_text(),
                    ))
                })
                .collect()
        }
        ProxyMode::Nftables => NftablesProxier::new(families)
            .await?
            .render(plan)
            .into_iter()
            .map(|(family, text)| (format!("{family}: nft -f input"), text))
            .collect(),
        ProxyMode::Ipvs => {
            let scheduler: Scheduler = settings
                .ipvs_scheduler
                .parse()
                .map_err(|e| anyhow::anyhow!("--ipvs-scheduler: {e}"))?;
            families
                .into_iter()
                .filter_map(|family| {
                    let state = render_ipvs(plan, family, &IpvsRenderOptions { scheduler })?;
                    Some((
                        format!("{family}: IPVS virtual servers, ipsets and kube-ipvs0 addresses"),
                        format!("{state:#?}\n"),
                    ))
                })
                .collect()
        }
        ProxyMode::Userspace => anyhow::bail!(
            "userspace mode programs no rules to print: it routes service addresses into its TUN device and balances in process"
        ),
    })
}

/// The rules and objects one mode leaves on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leftovers {
    /// iptables chains and jump rules (kproxy's and upstream's iptables mode: the same names).
    Iptables,
    /// nftables tables (`kproxy`, its canaries, and upstream's `kube-proxy`).
    Nftables,
    /// IPVS virtual servers, `kube-ipvs0`, ipsets and IPVS mode's chains.
    Ipvs,
    /// The userspace forwarder's device, routes and tables.
    Userspace,
}

/// Removes what kproxy owns in every mode (a node may switch modes), nothing else.
/// Returns one line per thing done; fails only if something kproxy owns could not be
/// removed.
pub async fn cleanup_all(settings: &Settings) -> anyhow::Result<Vec<String>> {
    let mut done = Vec::new();
    let mut failures = Vec::new();
    for which in [
        Leftovers::Iptables,
        Leftovers::Nftables,
        Leftovers::Ipvs,
        Leftovers::Userspace,
    ] {
        clean(settings, which, &mut done, &mut failures).await;
    }
    anyhow::ensure!(
        failures.is_empty(),
        "cleanup failed: {}",
        failures.join("; ")
    );
    Ok(done)
}

/// At start, as upstream's `platformCleanup`: removes what the other modes left, so a node
/// switches modes (or moves from kube-proxy's nftables mode to kproxy) by a restart.
/// nftables and userspace mode remove iptables and IPVS leftovers; iptables and IPVS mode
/// remove nftables tables (upstream's `kube-proxy` included) and leave each other's alone,
/// as upstream (they share chains); every mode but userspace removes the forwarder's.
/// Best effort, as upstream: a failure is logged and the run goes on.
pub async fn cleanup_other_modes(settings: &Settings) {
    let others: &[Leftovers] = match settings.mode {
        ProxyMode::Nftables => &[Leftovers::Iptables, Leftovers::Ipvs, Leftovers::Userspace],
        ProxyMode::Iptables | ProxyMode::Ipvs => &[Leftovers::Nftables, Leftovers::Userspace],
        ProxyMode::Userspace => &[Leftovers::Iptables, Leftovers::Ipvs, Leftovers::Nftables],
    };
    let (mut done, mut failures) = (Vec::new(), Vec::new());
    for which in others {
        clean(settings, *which, &mut done, &mut failures).await;
    }
    tracing::debug!(done = ?done, "removed other modes' leftovers");
    for failure in failures {
        tracing::warn!(failure, "cannot remove another mode's leftovers");
    }
}

/// Removes one mode's leftovers, noting what was done or what failed.
async fn clean(
    settings: &Settings,
    which: Leftovers,
    done: &mut Vec<String>,
    failures: &mut Vec<String>,
) {
    let ipv6 = std::path::Path::new("/proc/net/if_inet6").exists();
    let families: Vec<IpFamily> = IpFamily::ALL
        .into_iter()
        .filter(|f| *f == IpFamily::V4 || ipv6)
        .collect();
    match which {
        Leftovers::Iptables => {
            for family in &families {
                match IptablesProxier::new(settings.iptables_backend, [*family]).await {
                    Ok(mut p) => match p.cleanup().await {
                        Ok(r) => done.push(format!(
                            "iptables {family}: removed {} chains and {} jump rules",
                            r.chains_deleted, r.rules_written
                        )),
                        Err(e) => failures.push(format!("iptables {family}: {e}")),
                    },
                    // No iptables on this node: kproxy cannot have written iptables rules here.
                    Err(e @ ToolError::Missing { .. }) => {
                        done.push(format!("iptables {family}: skipped ({e})"))
                    }
                    Err(e) => failures.push(format!("iptables {family}: {e}")),
                }
            }
        }
        Leftovers::Nftables => match NftablesProxier::new(families).await {
            Ok(mut p) => match p.cleanup().await {
                Ok(n) => done.push(format!("nftables: removed {n} tables")),
                Err(e) => failures.push(format!("nftables: {e}")),
            },
            // No nft on this node: nothing can have written nftables rules here.
            Err(e) => done.push(format!("nftables: skipped ({e})")),
        },
        Leftovers::Ipvs => {
            if !kernel_has_ipvs() {
                done.push("ipvs: skipped (no IP_VS in this kernel)".to_owned());
                return;
            }
            match ipvs_proxier(settings, families, false)
                .await
                .and_then(|mut p| Ok(p.cleanup(None)?))
            {
                Ok(n) => done.push(format!(
                    "ipvs: removed {n} virtual servers, kube-ipvs0, ipsets and rules"
                )),
                Err(e) => failures.push(format!("ipvs: {e:#}")),
            }
        }
        Leftovers::Userspace => match userspace_cleanup(&families).await {
            Ok(()) => {
                done.push("userspace: removed its device, routes and NodePort chain".to_owned())
            }
            Err(e) => failures.push(format!("userspace: {e}")),
        },
    }
}
