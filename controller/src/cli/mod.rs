//! The command line: kube-proxy's flags (every one of upstream's parses) and kproxy's own,
//! and their merge with `--config` into [`Settings`].
//!
//! [`flags`] declares the flags, [`settings`] merges them with the config file as upstream
//! does (the file replaces the flags' configuration) and checks the result.

mod flags;
mod settings;
#[cfg(test)]
mod tests;

use clap::{Parser, Subcommand};

pub use self::flags::ProxyArgs;
pub use self::settings::{ConntrackSettings, DetectLocal, Settings, bind_address_ip};

/// kproxy: a Kubernetes service proxy (kube-proxy) in Rust.
///
/// Watches Services, EndpointSlices and this Node (from manifests) and programs the kernel
/// so that traffic to ClusterIPs, NodePorts, external IPs and load-balancer IPs is DNATed
/// to a backend pod on the node where it starts.
#[derive(Debug, Parser)]
#[command(name = "kproxy", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// What to do (default: run the proxy).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Proxy flags.
    #[command(flatten)]
    pub proxy: ProxyArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print what a full sync would program, per IP family, without touching the kernel:
    /// iptables-restore input (iptables), nft -f input (nftables), the virtual servers as
    /// ipvsadm -Ln lists them with the kube-ipvs0 addresses, ipsets and iptables rules
    /// (ipvs), the forwarder's table with its routes, reply steering and NodePort chains
    /// (userspace). Takes the same flags as running the proxy.
    Render(ProxyArgs),
    /// Explain where a new connection goes on this node and why: the service port it
    /// matches and how, the verdict (DNAT, REJECT, DROP or untouched), the endpoints it may
    /// go to (and why the others not), masquerading, session affinity. Decided from the plan
    /// a sync would program, without touching the kernel. Takes the same flags as running
    /// the proxy.
    Explain(ExplainArgs),
}

/// `kproxy explain`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ExplainArgs {
    /// The source address. A packet from one of this node's addresses (loopback included)
    /// is sent by the node itself; any other arrives from outside (another host or a pod).
    #[arg(long, value_name = "IP")]
    pub from: String,
    /// The destination: IP:PORT, [IPv6]:PORT, optionally /tcp, /udp or /sctp (default tcp).
    #[arg(long, value_name = "IP:PORT[/PROTO]")]
    pub to: String,
    /// `text` for people, `json` for tools.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub output: String,
    /// Also read the kernel objects that carry the decision in this mode (iptables rules,
    /// nftables map elements, IPVS virtual and real servers, userspace routes, NodePort
    /// rules and reply steering) and say where they disagree with the plan (exit status 3).
    /// Run it on the node, where kproxy runs.
    #[arg(long)]
    pub live: bool,
    /// Proxy flags.
    #[command(flatten)]
    pub proxy: ProxyArgs,
}

/// The proxy mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Upstream kube-proxy's iptables chain layout, applied with iptables-restore.
    Iptables,
    /// One nftables table per family (`ip kproxy`, `ip6 kproxy`) with verdict maps and
    /// shared chains, applied as one `nft -f` transaction per sync.
    Nftables,
    /// IPVS virtual servers over generic netlink, service IPs on `kube-ipvs0`, ipsets and
    /// a small iptables ruleset (needs a kernel with IP_VS).
    Ipvs,
    /// kproxy's own forwarder: service traffic is routed into a TUN device, balanced,
    /// NATed and conntracked in userspace.
    Userspace,
}

impl ProxyMode {
    /// The mode's name as in `--proxy-mode` and the config file.
    pub fn name(self) -> &'static str {
        match self {
            ProxyMode::Iptables => "iptables",
            ProxyMode::Nftables => "nftables",
            ProxyMode::Ipvs => "ipvs",
            ProxyMode::Userspace => "userspace",
        }
    }
}
