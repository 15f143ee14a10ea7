//! The proxy mode's backend behind one type, so that the sync loop and the commands do not
//! care which mode runs.

use std::time::Duration;

use kproxy_dataplane::backend::{Backend, BackendError};
use kproxy_dataplane::iptables::apply::{IptablesTool, conntrack_tcp_be_liberal, resolve_backend};
use kproxy_dataplane::iptables::proxier::IptablesProxier;
use kproxy_dataplane::iptables::render::{RenderOptions, render as render_iptables};
use kproxy_dataplane::ipvs::netlink::Timeouts;
use kproxy_dataplane::ipvs::proxier::{IpvsBackend, IpvsOptions, IpvsProxier, kernel_has_ipvs};
use kproxy_dataplane::ipvs::state::{
    RenderOptions as IpvsRenderOptions, Scheduler, render as render_ipvs,
};
use kproxy_dataplane::lb::Algorithm;
use kproxy_dataplane::nftables::proxier::NftablesProxier;
use kproxy_dataplane::plan::{IpFamily, ProxyPlan};
use kproxy_dataplane::tool::ToolError;
use kproxy_dataplane::userspace::cleanup_leftovers as userspace_cleanup;
use kproxy_dataplane::userspace::proxier::{UserspaceConfig, UserspaceProxier};

use crate::cli::{ProxyMode, Settings};

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
        iptables_backend: settings.iptables_backend,
        ..UserspaceConfig::default()
    };
    if let Some(addr) = settings.userspace_masquerade_address {
        config.forwarder.masquerade_v4 = Some(addr);
    }
    Ok(config)
}

/// The backend of `settings.mode` for `families`, with its tools checked.
pub async fn backend(
    settings: &Settings,
    families: Vec<IpFamily>,
) -> anyhow::Result<Box<dyn Backend>> {
    Ok(match settings.mode {
        ProxyMode::Iptables => {
            // The counters of upstream's two iptables packet metrics.
            kproxy_dataplane::iptables::nfacct::ensure_counters();
            Box::new(IptablesProxier::new(settings.iptables_backend, families).await?)
        }
        ProxyMode::Nftables => Box::new(NftablesProxier::new(families).await?),
        ProxyMode::Ipvs => Box::new(IpvsBackend::new(
            ipvs_proxier(settings, families, true).await?,
        )),
        ProxyMode::Userspace => {
            Box::new(UserspaceProxier::new(userspace_config(settings)?, families).await?)
        }
    })
}

/// A backend's error as an `anyhow` error, its causes kept.
pub fn backend_error(e: BackendError) -> anyhow::Error {
    anyhow::anyhow!(e)
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
            let (_, random_fully) = iptables_binary(settings).await?;
            let mut sections = Vec::new();
            for family in families {
                let Some(state) = render_ipvs(plan, family, &IpvsRenderOptions { scheduler })
                else {
                    continue;
                };
                sections.push((
                    format!("{family}: IPVS virtual servers (as ipvsadm -Ln lists them)"),
                    state.listing(),
                ));
                let addresses: String = state
                    .bound_addresses
                    .iter()
                    .map(|ip| format!("{ip}\n"))
                    .collect();
                sections.push((
                    format!(
                        "{family}: addresses on {}",
                        kproxy_dataplane::ipvs::state::DUMMY_INTERFACE
                    ),
                    addresses,
                ));
                sections.push((
                    format!("{family}: ipset restore input"),
                    kproxy_dataplane::ipvs::ipset::listing(&state.ipsets, family),
                ));
                let rules = kproxy_dataplane::ipvs::rules::render_rules(
                    plan,
                    family,
                    kproxy_dataplane::ipvs::rules::RuleOptions { random_fully },
                );
                if let Some(rules) = rules {
                    sections.push((
                        format!("{family}: iptables-restore --noflush input"),
                        rules.to_restore_text(),
                    ));
                }
            }
            sections
        }
        ProxyMode::Userspace => {
            let config = userspace_config(settings)?;
            let changes =
                kproxy_dataplane::userspace::changes::Changes::full(plan, &config, &families);
            let mut sections = vec![
                (
                    format!("the forwarder's table ({} balancing)", config.algorithm),
                    changes.table.listing(),
                ),
                (
                    format!(
                        "routes and policy rules into {} (ip -batch input)",
                        config.device
                    ),
                    format!("{}{}", changes.batch.adds.v4, changes.batch.adds.v6),
                ),
                (
                    "reply steering (nft -f input)".to_owned(),
                    changes.batch.nft_adds.clone(),
                ),
            ];
            for change in &changes.nodeports {
                sections.push((
                    format!(
                        "{}: NodePort and masquerade chains (iptables-restore --noflush input)",
                        change.family
                    ),
                    change.chains.to_restore_text(),
                ));
            }
            sections
        }
    })
}

/// What the live kernel holds of `name`'s objects in `family`, next to what `plan` wants
/// (`kproxy explain --live`), in the mode of `settings`.
pub async fn inspect_live(
    settings: &Settings,
    plan: &ProxyPlan,
    name: &kproxy_dataplane::plan::ServicePortName,
    family: IpFamily,
) -> anyhow::Result<Vec<kproxy_dataplane::live::LiveObject>> {
    let Some(svc) = plan
        .services
        .iter()
        .find(|s| s.name == *name && s.family == family)
    else {
        anyhow::bail!("{name} is not in this node's plan for {family}");
    };
    match settings.mode {
        ProxyMode::Iptables => {
            let backend = resolve_backend(settings.iptables_backend, family).await?;
            let tool = IptablesTool { family, backend };
            let options = RenderOptions {
                random_fully: tool.supports_random_fully().await,
                conntrack_tcp_be_liberal: conntrack_tcp_be_liberal(),
                nfacct: kproxy_dataplane::iptables::nfacct::counters_exist(),
            };
            let expected = render_iptables(plan, family, &options)
                .ok_or_else(|| anyhow::anyhow!("this node does not serve {family}"))?;
            Ok(kproxy_dataplane::iptables::live::inspect(&tool, &expected, svc).await?)
        }
        ProxyMode::Nftables => {
            let options = kproxy_dataplane::nftables::render::RenderOptions {
                conntrack_tcp_be_liberal: conntrack_tcp_be_liberal(),
            };
            let expected = kproxy_dataplane::nftables::render::render(plan, family, &options, None)
                .ok_or_else(|| anyhow::anyhow!("this node does not serve {family}"))?;
            Ok(kproxy_dataplane::nftables::live::inspect(&expected, svc).await?)
        }
        ProxyMode::Ipvs => {
            let scheduler: Scheduler = settings
                .ipvs_scheduler
                .parse()
                .map_err(|e| anyhow::anyhow!("--ipvs-scheduler: {e}"))?;
            let expected = render_ipvs(plan, family, &IpvsRenderOptions { scheduler })
                .ok_or_else(|| anyhow::anyhow!("this node does not serve {family}"))?;
            let owner = name.to_string();
            let (plan, svc) = (plan.clone(), svc.clone());
            let objects = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                let mut objects = kproxy_dataplane::ipvs::live::inspect(&expected, &owner)?;
                objects.extend(kproxy_dataplane::ipvs::live::inspect_bindings(&plan, &svc)?);
                Ok(objects)
            })
            .await??;
            Ok(objects)
        }
        ProxyMode::Userspace => {
            let config = userspace_config(settings)?;
            let families: Vec<IpFamily> = plan.node.families().collect();
            let changes =
                kproxy_dataplane::userspace::changes::Changes::full(plan, &config, &families);
            let backend = resolve_backend(settings.iptables_backend, family).await?;
            let tool = IptablesTool { family, backend };
            Ok(kproxy_dataplane::userspace::live::inspect(&changes, &config, &tool, svc).await?)
        }
    }
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
                    Ok(mut p) => {
                        cleaned(&mut p, &format!("iptables {family}"), done, failures).await
                    }
                    // No iptables on this node: kproxy cannot have written iptables rules here.
                    Err(e @ ToolError::Missing { .. }) => {
                        done.push(format!("iptables {family}: skipped ({e})"))
                    }
                    Err(e) => failures.push(format!("iptables {family}: {e}")),
                }
            }
        }
        Leftovers::Nftables => match NftablesProxier::new(families).await {
            Ok(mut p) => cleaned(&mut p, "nftables", done, failures).await,
            // No nft on this node: nothing can have written nftables rules here.
            Err(e) => done.push(format!("nftables: skipped ({e})")),
        },
        Leftovers::Ipvs => {
            if !kernel_has_ipvs() {
                done.push("ipvs: skipped (no IP_VS in this kernel)".to_owned());
                return;
            }
            match ipvs_proxier(settings, families, false).await {
                Ok(p) => cleaned(&mut IpvsBackend::new(p), "ipvs", done, failures).await,
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

/// Runs `backend`'s cleanup, noting what it removed (`what: …`) or why it failed.
async fn cleaned(
    backend: &mut dyn Backend,
    what: &str,
    done: &mut Vec<String>,
    failures: &mut Vec<String>,
) {
    match backend.cleanup().await {
        Ok(removed) => done.push(format!("{what}: {removed}")),
        Err(e) => failures.push(format!("{what}: {e}")),
    }
}
