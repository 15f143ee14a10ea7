//! The userspace-mode sync engine, shaped like `IptablesProxier`: `new(families)`,
//! `sync(&plan, full)`, `cleanup()`.
//!
//! `new` starts the forwarder thread (see [`super::device`]) in the calling thread's network
//! namespace, which creates the TUN device; it then brings the device up and sets the
//! sysctls forwarding through it needs (`ip_forward`/IPv6 `forwarding`, and on the device
//! `rp_filter=0` and `accept_local=1`, since translated packets re-enter with the client's
//! or the node's own source). `sync` observes what the host has, computes the
//! [`super::changes::Changes`] (the new `ServiceTable` included) without I/O, and applies
//! them once, in order: the routes that changed with one `ip -force -batch -` and the
//! reply-steering elements with one `nft -f` ([`super::routes`]), the forwarder's new table
//! (an atomic swap between packet batches), the removals. After a failure the next sync is
//! full.
//! NodePorts and masquerading additionally get small iptables nat chains
//! ([`super::nodeports`]), and replies on pod bridges an nftables bridge table
//! ([`super::bridges`]). `cleanup` stops the thread (the TUN, and with it its routes,
//! disappears) and deletes the policy rules, the steering and reply tables, the nat chains
//! and the bridge table.

use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::changes::{BridgeChanges, Changes, Observed};
use super::device::{Mailbox, run};
use super::forwarder::ForwarderConfig;
use super::routes::{FamilyBatches, ROUTE_TABLE, RULE_PRIORITY, Steering};
use crate::backend::{Backend, BackendError, BoxFuture};
use crate::iptables::apply::{BackendChoice, IptablesBackend, IptablesTool, resolve_backend};
use crate::iptables::restore::RestoreInput;
use crate::iptables::ruleset::Ruleset;
use crate::lb::Algorithm;
use crate::plan::{IpFamily, ProxyPlan};
use crate::report::SyncReport;
use crate::tool::{Tool, ToolError};

/// `ip` (iproute2).
const IP: Tool<'static> = Tool::new("ip", "iproute2");
/// `nft`.
const NFT: Tool<'static> = Tool::new("nft", "nftables");

/// What can go wrong in userspace mode.
#[derive(Debug, Error)]
pub enum UserspaceError {
    /// The TUN device could not be created.
    #[error("cannot create TUN device {device}: {source}")]
    Device {
        /// The device name.
        device: String,
        /// Why.
        source: std::io::Error,
    },
    /// The forwarder thread could not be started or died.
    #[error("userspace forwarder thread for {device}: {reason}")]
    Thread {
        /// The device name.
        device: String,
        /// What happened.
        reason: String,
    },
    /// A tool (`ip`, `nft`, `iptables*`) could not be run or failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// Lines of an `ip -batch` that add or replace failed.
    #[error("ip -batch failed on {lines}: {stderr}")]
    IpBatch {
        /// The failed lines, `; `-separated.
        lines: String,
        /// What `ip` printed.
        stderr: String,
    },
    /// A sysctl could not be written.
    #[error("cannot set {path}: {source}")]
    Sysctl {
        /// The /proc/sys path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Userspace-mode settings.
#[derive(Debug, Clone)]
pub struct UserspaceConfig {
    /// The TUN device name.
    pub device: String,
    /// The device MTU.
    pub mtu: u16,
    /// The load-balancing algorithm for every service.
    pub algorithm: Algorithm,
    /// Packet-path settings (masquerade addresses, conntrack size, timeouts).
    pub forwarder: ForwarderConfig,
    /// The TUN-routed IPv4 address NodePort traffic is DNATed to (`None`: no NodePorts).
    pub nodeport_v4: Option<std::net::Ipv4Addr>,
    /// The TUN-routed IPv6 address NodePort traffic is DNATed to (`None`: no NodePorts).
    pub nodeport_v6: Option<std::net::Ipv6Addr>,
    /// `--iptables-backend`: where the NodePort and masquerade chains go.
    pub iptables_backend: BackendChoice,
}

impl Default for UserspaceConfig {
    fn default() -> Self {
        UserspaceConfig {
            device: "kproxy0".into(),
            mtu: 1500,
            algorithm: Algorithm::Random,
            forwarder: ForwarderConfig {
                masquerade_v4: Some(std::net::Ipv4Addr::new(169, 254, 42, 1)),
                masquerade_v6: Some(std::net::Ipv6Addr::new(0xfd00, 0x6b70, 0, 0, 0, 0, 0, 1)),
                ..ForwarderConfig::default()
            },
            nodeport_v4: Some(std::net::Ipv4Addr::new(169, 254, 42, 2)),
            nodeport_v6: Some(std::net::Ipv6Addr::new(0xfd00, 0x6b70, 0, 0, 0, 0, 0, 2)),
            iptables_backend: BackendChoice::Auto,
        }
    }
}

/// Forwards service traffic through a TUN device.
pub struct UserspaceProxier {
    config: UserspaceConfig,
    families: Vec<IpFamily>,
    mailbox: Arc<Mailbox>,
    thread: Option<std::thread::JoinHandle<()>>,
    steering: Option<Steering>,
    /// Per family: the iptables of the resolved backend, and the NodePort and masquerade
    /// chains last written with it (`None`: unknown, rewrite).
    nodeport_chains: Vec<(IptablesTool, Option<Ruleset>)>,
    /// What the bridge table in the kernel was rendered from: the bridges and which
    /// families had replies (`None`: unknown, rewrite). While it stays the same, backend
    /// changes are element changes.
    bridge_table: Option<(Vec<super::bridges::Bridge>, (bool, bool))>,
    syncs: u64,
}

impl UserspaceProxier {
    /// Creates the device and starts the forwarder for `families`.
    pub async fn new(
        config: UserspaceConfig,
        families: impl IntoIterator<Item = IpFamily>,
    ) -> Result<Self, UserspaceError> {
        let families: Vec<IpFamily> = families.into_iter().collect();
        let mut nodeport_chains = Vec::new();
        for family in &families {
            let backend = resolve_backend(config.iptables_backend, *family).await?;
            let tool = IptablesTool {
                family: *family,
                backend,
            };
            nodeport_chains.push((tool, None));
        }
        let mailbox = Arc::new(Mailbox::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = {
            let (name, mtu, fc, mb) = (
                config.device.clone(),
                config.mtu,
                config.forwarder.clone(),
                mailbox.clone(),
            );
            std::thread::Builder::new()
                .name(format!("kproxy-{name}"))
                .spawn(move || run(&name, mtu, fc, mb, tx))
                .map_err(|e| UserspaceError::Thread {
                    device: config.device.clone(),
                    reason: e.to_string(),
                })?
        };
        let started = tokio::task::spawn_blocking(move || rx.recv())
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        match started {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                return Err(UserspaceError::Device {
                    device: config.device.clone(),
                    source,
                });
            }
            Err(reason) => {
                return Err(UserspaceError::Thread {
                    device: config.device.clone(),
                    reason,
                });
            }
        }
        let dev = config.device.clone();
        ip(&["link", "set", &dev, "up"]).await?;
        let mut sysctls = vec![
            format!("net/ipv4/conf/{dev}/rp_filter"),
            format!("net/ipv4/conf/{dev}/accept_local"),
        ];
        if families.contains(&IpFamily::V4) {
            sysctls.push("net/ipv4/ip_forward".into());
        }
        if families.contains(&IpFamily::V6) {
            sysctls.push("net/ipv6/conf/all/forwarding".into());
        }
        for (i, s) in sysctls.iter().enumerate() {
            let path = format!("/proc/sys/{s}");
            let value = if i == 0 { "0" } else { "1" };
            std::fs::write(&path, value)
                .map_err(|source| UserspaceError::Sysctl { path, source })?;
        }
        tracing::info!(device = %dev, algorithm = %config.algorithm, "userspace forwarder started");
        Ok(UserspaceProxier {
            config,
            mailbox,
            thread: Some(thread),
            steering: None,
            bridge_table: None,
            nodeport_chains,
            families,
            syncs: 0,
        })
    }

    /// Swaps the forwarder to `plan` and updates the steering routes and rules, the bridge
    /// table and the NodePort chains: observe what the host has, compute the changes,
    /// apply them once. `full` rewrites everything.
    pub async fn sync(
        &mut self,
        plan: &ProxyPlan,
        full: bool,
    ) -> Result<Vec<SyncReport>, UserspaceError> {
        let start = Instant::now();
        if self.thread.as_ref().is_none_or(|t| t.is_finished()) {
            return Err(UserspaceError::Thread {
                device: self.config.device.clone(),
                reason: "not running".into(),
            });
        }
        self.syncs += 1;
        let observed = self.observe(full).await;
        let changes = Changes::compute(plan, &self.config, &self.families, self.syncs, observed);
        let mut reports = changes.reports(&self.families);
        self.apply(changes).await?;
        let took = start.elapsed();
        for report in &mut reports {
            report.took = took;
        }
        Ok(reports)
    }

    /// What the host has: what this proxier last wrote, taken so that a failed apply leaves
    /// it unknown (and the next sync full), or for a full sync nothing but the policy rules
    /// at our priority; and the node's pod bridges.
    async fn observe(&mut self, full: bool) -> Observed {
        let steering = self.steering.take().filter(|_| !full);
        let stale_rules = if steering.is_none() {
            count_our_rules().await
        } else {
            0
        };
        let nodeport_chains = self
            .nodeport_chains
            .iter_mut()
            .map(|(tool, written)| (tool.family, written.take()))
            .collect();
        Observed {
            steering,
            stale_rules,
            local_bridges: super::bridges::local_bridges(),
            bridge_table: self.bridge_table.take(),
            nodeport_chains,
        }
    }

    /// Applies `changes` in their order and records the state they leave.
    async fn apply(&mut self, changes: Changes) -> Result<(), UserspaceError> {
        let Changes {
            batch,
            bridges,
            nodeports,
            table,
            steering,
            bridge_table,
            nodeport_chains,
            ..
        } = changes;
        let (bridges_before, bridges_after) = match &bridges {
            BridgeChanges::Unchanged => ("", ""),
            BridgeChanges::Elements { add, delete } => (add.as_str(), delete.as_str()),
            BridgeChanges::Rewrite { before, after } => (before.as_str(), after.as_str()),
        };
        self.run_batches(&batch.adds).await?;
        apply_nft(&batch.nft_adds).await?;
        apply_nft(bridges_before).await?;
        self.mailbox.post(table);
        self.run_batches(&batch.removals).await?;
        apply_nft(&batch.nft_removals).await?;
        apply_nft(bridges_after).await?;
        for change in &nodeports {
            if let Some((tool, _)) = self
                .nodeport_chains
                .iter()
                .find(|(t, _)| t.family == change.family)
            {
                apply_nodeports(tool, &change.chains, change.nodeports).await?;
            }
        }
        self.steering = Some(steering);
        self.bridge_table = bridge_table;
        for (family, chains) in nodeport_chains {
            if let Some((_, written)) = self
                .nodeport_chains
                .iter_mut()
                .find(|(t, _)| t.family == family)
            {
                *written = chains;
            }
        }
        Ok(())
    }

    /// Runs one step of a steering update, per family.
    async fn run_batches(&self, batches: &FamilyBatches) -> Result<(), UserspaceError> {
        for family in &self.families {
            let text = match family {
                IpFamily::V4 => &batches.v4,
                IpFamily::V6 => &batches.v6,
            };
            if !text.is_empty() {
                ip_batch(*family, text).await?;
            }
        }
        Ok(())
    }

    /// Stops the forwarder (removing the device and its routes) and deletes the policy
    /// rules, the steering table, the nat chains and the bridge table.
    pub async fn cleanup(&mut self) -> Result<(), UserspaceError> {
        self.mailbox.stop();
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        self.steering = None;
        self.bridge_table = None;
        for (_, written) in &mut self.nodeport_chains {
            *written = None;
        }
        cleanup_leftovers(&self.families).await
    }
}

impl Backend for UserspaceProxier {
    fn mode(&self) -> &'static str {
        "userspace"
    }

    fn sync<'a>(
        &'a mut self,
        plan: &'a ProxyPlan,
        full: bool,
    ) -> BoxFuture<'a, Result<Vec<SyncReport>, BackendError>> {
        Box::pin(async move { Ok(UserspaceProxier::sync(self, plan, full).await?) })
    }

    /// The forwarder's table lives in this process, so nothing outside can flush it; the
    /// routes and rules around it are repaired by the periodic full sync.
    fn check_canary(&mut self) -> BoxFuture<'_, bool> {
        Box::pin(std::future::ready(true))
    }

    fn canary_period(&self) -> Duration {
        Duration::from_secs(5)
    }

    fn uses_kernel_nat(&self) -> bool {
        false
    }

    fn cleanup(&mut self) -> BoxFuture<'_, Result<String, BackendError>> {
        Box::pin(async move {
            UserspaceProxier::cleanup(self).await?;
            Ok("removed its device, routes, rules and NodePort chains".to_owned())
        })
    }
}

/// Deletes what a userspace-mode kproxy leaves in the kernel besides its TUN device (which
/// disappears with the process): the reply-steering rules, the steering table, the
/// NodePort and masquerade chains, for `families`, and the bridge table. For
/// `kproxy --cleanup`; needs no running proxier.
pub async fn cleanup_leftovers(families: &[IpFamily]) -> Result<(), UserspaceError> {
    let table = super::bridges::TABLE;
    let replies = super::routes::REPLY_TABLE;
    let tables = format!(
        "table bridge {table}\ndelete table bridge {table}\n\
         table inet {replies}\ndelete table inet {replies}\n"
    );
    let _ = NFT.run(&["-f", "-"], Some(&tables)).await;
    // Whichever backend wrote them (a node may have changed backends).
    for family in families {
        for backend in [IptablesBackend::Nft, IptablesBackend::Legacy] {
            remove_nodeports(IptablesTool {
                family: *family,
                backend,
            })
            .await;
        }
    }
    let stale = count_our_rules().await;
    for family in families {
        let mut batch = String::new();
        for _ in 0..stale {
            batch.push_str(&format!("rule del priority {RULE_PRIORITY}\n"));
        }
        batch.push_str(&format!("rule del priority {}\n", RULE_PRIORITY - 1));
        batch.push_str(&format!("route flush table {ROUTE_TABLE}\n"));
        ip_batch(*family, &batch).await?;
    }
    Ok(())
}

impl Drop for UserspaceProxier {
    fn drop(&mut self) {
        self.mailbox.stop();
    }
}

/// Applies `nft -f` input: reply-steering elements or the bridge table (nothing when
/// empty).
async fn apply_nft(input: &str) -> Result<(), UserspaceError> {
    if input.is_empty() {
        return Ok(());
    }
    NFT.run(&["-f", "-"], Some(input)).await?;
    Ok(())
}

/// How many rules sit at our priority (in the larger family).
async fn count_our_rules() -> usize {
    let mut most = 0;
    for fam in ["-4", "-6"] {
        let priority = RULE_PRIORITY.to_string();
        if let Ok(rules) = IP
            .run(&[fam, "rule", "show", "priority", &priority], None)
            .await
        {
            most = most.max(rules.lines().filter(|l| !l.is_empty()).count());
        }
    }
    most
}

async fn ip(args: &[&str]) -> Result<(), UserspaceError> {
    IP.run(args, None).await?;
    Ok(())
}

/// Runs `ip -force -batch -` with `input`; deletions of absent objects are expected and only
/// `add`/`replace` failures are errors.
async fn ip_batch(family: IpFamily, input: &str) -> Result<(), UserspaceError> {
    let fam = match family {
        IpFamily::V4 => "-4",
        IpFamily::V6 => "-6",
    };
    let stderr = match IP.run(&[fam, "-force", "-batch", "-"], Some(input)).await {
        Ok(_) => return Ok(()),
        Err(ToolError::Failed { stderr, .. }) => stderr,
        Err(e) => return Err(e.into()),
    };
    // `ip -batch` reports "Command failed -:N" per failing line; keep failures of lines
    // that add or replace.
    let lines: Vec<&str> = input.lines().collect();
    let failed: Vec<&str> = stderr
        .lines()
        .filter_map(|l| {
            l.rsplit_once("-:")
                .and_then(|(_, n)| n.trim().parse::<usize>().ok())
        })
        .filter_map(|n| lines.get(n.checked_sub(1)?).copied())
        .filter(|l| {
            !l.starts_with("route del")
                && !l.starts_with("rule del")
                && !l.starts_with("route flush")
        })
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(UserspaceError::IpBatch {
            lines: failed.join("; "),
            stderr,
        })
    }
}

/// Replaces the NodePort and masquerade chains of `tool`'s family with `chains` and makes
/// sure `POSTROUTING` (and, with `nodeports`, `PREROUTING` and `OUTPUT`) jump to them.
async fn apply_nodeports(
    tool: &IptablesTool,
    chains: &Ruleset,
    nodeports: bool,
) -> Result<(), UserspaceError> {
    let input = RestoreInput {
        text: chains.to_restore_text(),
        ..RestoreInput::default()
    };
    tool.restore(&input).await?;
    let mut jumps = vec![("POSTROUTING", super::nodeports::POSTROUTING_CHAIN)];
    if nodeports {
        jumps.push(("PREROUTING", super::nodeports::CHAIN));
        jumps.push(("OUTPUT", super::nodeports::CHAIN));
    }
    for (hook, chain) in jumps {
        if tool
            .run(&["-t", "nat", "-C", hook, "-j", chain])
            .await
            .is_err()
        {
            tool.run(&["-t", "nat", "-I", hook, "-j", chain]).await?;
        }
    }
    Ok(())
}

/// Removes the jumps to and the NodePort and masquerade chains of `tool`'s family,
/// ignoring what is not there.
async fn remove_nodeports(tool: IptablesTool) {
    let (np, post) = (super::nodeports::CHAIN, super::nodeports::POSTROUTING_CHAIN);
    // Jumps cannot outlive their chains. Checking first also keeps a legacy nat table
    // from being created where the legacy backend was never used.
    let mut present = false;
    for chain in [np, post] {
        present |= tool.chain_exists("nat", chain).await.unwrap_or(true);
    }
    if !present {
        return;
    }
    for (hook, chain) in [("PREROUTING", np), ("OUTPUT", np), ("POSTROUTING", post)] {
        for _ in 0..8 {
            if tool
                .run(&["-t", "nat", "-D", hook, "-j", chain])
                .await
                .is_err()
            {
                break;
            }
        }
    }
    for chain in [np, post] {
        let _ = tool.run(&["-t", "nat", "-F", chain]).await;
        let _ = tool.run(&["-t", "nat", "-X", chain]).await;
    }
}
