//! The proxy mode's backend behind one type, so that the sync loop and the commands do not
//! care which mode runs.

use kproxy_dataplane::iptables::apply::{IptablesError, conntrack_tcp_be_liberal};
use kproxy_dataplane::iptables::proxier::IptablesProxier;
use kproxy_dataplane::iptables::render::{RenderOptions, render as render_iptables};
use kproxy_dataplane::nftables::proxier::NftablesProxier;
use kproxy_dataplane::plan::{IpFamily, ProxyPlan};
use kproxy_dataplane::report::SyncReport;

use crate::cli::{ProxyMode, Settings};

/// A running backend of one proxy mode.
pub enum Dataplane {
    /// iptables mode.
    Iptables(IptablesProxier),
    /// nftables mode.
    Nftables(NftablesProxier),
}

impl Dataplane {
    /// The backend of `settings.mode` for `families`, with its tools checked.
    pub async fn new(settings: &Settings, families: Vec<IpFamily>) -> anyhow::Result<Self> {
        Ok(match settings.mode {
            ProxyMode::Iptables => Dataplane::Iptables(
                IptablesProxier::new(settings.iptables_backend, families).await?,
            ),
            ProxyMode::Nftables => Dataplane::Nftables(NftablesProxier::new(families).await?),
        })
    }

    /// Programs `plan`; `full` forces a full sync.
    pub async fn sync(&mut self, plan: &ProxyPlan, full: bool) -> anyhow::Result<Vec<SyncReport>> {
        Ok(match self {
            Dataplane::Iptables(p) => p.sync(plan, full).await?,
            Dataplane::Nftables(p) => p.sync(plan, full).await?,
        })
    }
}

/// What a full sync of `plan` would program in `mode`, per family, as the text handed to
/// the kernel tool. Changes nothing (reads sysctls; nftables mode runs `nft --check`).
pub async fn render(mode: ProxyMode, plan: &ProxyPlan) -> anyhow::Result<Vec<(String, String)>> {
    let families: Vec<IpFamily> = plan.node.families().collect();
    Ok(match mode {
        ProxyMode::Iptables => {
            let options = RenderOptions {
                random_fully: true,
                conntrack_tcp_be_liberal: conntrack_tcp_be_liberal(),
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
    })
}

/// Removes what kproxy owns in every mode (a node may switch modes), nothing else.
/// Returns one line per thing done; fails only if something kproxy owns could not be
/// removed.
pub async fn cleanup_all(settings: &Settings) -> anyhow::Result<Vec<String>> {
    let mut done = Vec::new();
    let mut failures = Vec::new();
    let ipv6 = std::path::Path::new("/proc/net/if_inet6").exists();
    for family in IpFamily::ALL {
        if family == IpFamily::V6 && !ipv6 {
            continue;
        }
        match IptablesProxier::new(settings.iptables_backend, [family]).await {
            Ok(mut p) => match p.cleanup().await {
                Ok(r) => done.push(format!(
                    "iptables {family}: removed {} chains and {} jump rules",
                    r.chains_deleted, r.rules_written
                )),
                Err(e) => failures.push(format!("iptables {family}: {e}")),
            },
            // No iptables on this node: kproxy cannot have written iptables rules here.
            Err(e @ IptablesError::Missing { .. }) => {
                done.push(format!("iptables {family}: skipped ({e})"))
            }
            Err(e) => failures.push(format!("iptables {family}: {e}")),
        }
    }
    let families: Vec<IpFamily> = IpFamily::ALL
        .into_iter()
        .filter(|f| *f == IpFamily::V4 || ipv6)
        .collect();
    match NftablesProxier::new(families).await {
        Ok(mut p) => match p.cleanup().await {
            Ok(n) => done.push(format!("nftables: removed {n} kproxy tables")),
            Err(e) => failures.push(format!("nftables: {e}")),
        },
        // No nft on this node: kproxy cannot have written nftables rules here.
        Err(e) => done.push(format!("nftables: skipped ({e})")),
    }
    anyhow::ensure!(
        failures.is_empty(),
        "cleanup failed: {}",
        failures.join("; ")
    );
    Ok(done)
}
