//! This node's context: its name, addresses, zone, the addresses NodePorts listen on and how
//! pod traffic is recognised.
//!
//! Reading the host (hostname, interface addresses) is kept apart from deciding
//! ([`node_context`] is pure), so the decisions are unit-tested without a network.

use std::net::IpAddr;

use kproxy_dataplane::plan::{
    FamilyContext, IpFamily, LocalTrafficDetector, NodeContext, NodePortAddresses,
};

use crate::cli::{DetectLocal, Settings, bind_address_ip};
use crate::config::NodePortAddresses as NodePortSpec;
use crate::model::NodeInfo;

/// What the host itself says about its addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostAddresses {
    /// Every address of every up interface, loopback included, in interface order.
    pub all: Vec<IpAddr>,
}

/// The interface this host routes `ip` through (`ip route get`), which is the interface
/// packets from `ip` arrive on when routing is symmetric; `None` when unknown.
pub fn route_interface(ip: std::net::IpAddr) -> Option<String> {
    let out = std::process::Command::new("ip")
        .args(["-o", "route", "get", &ip.to_string()])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    words.find(|w| *w == "dev")?;
    words.next().map(str::to_owned)
}

impl HostAddresses {
    /// Reads the addresses of the current network namespace.
    pub fn read() -> std::io::Result<Self> {
        use nix::net::if_::InterfaceFlags;
        let addrs = nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)?;
        let all = addrs
            .filter(|a| a.flags.contains(InterfaceFlags::IFF_UP))
            .filter_map(|a| {
                let addr = a.address?;
                if let Some(v4) = addr.as_sockaddr_in() {
                    Some(IpAddr::V4(v4.ip()))
                } else {
                    addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
                }
            })
            .collect();
        Ok(HostAddresses { all })
    }

    /// Addresses usable as node IPs: not loopback, not link-local, not unspecified.
    pub fn node_candidates(&self) -> Vec<IpAddr> {
        self.all.iter().copied().filter(is_routable).collect()
    }
}

fn is_routable(ip: &IpAddr) -> bool {
    !ip.is_loopback()
        && !ip.is_unspecified()
        && match ip {
            IpAddr::V4(v4) => !v4.is_link_local(),
            IpAddr::V6(v6) => !v6.is_unicast_link_local(),
        }
}

/// The node name: `--hostname-override`, else the hostname, lower-cased as kube-proxy does.
pub fn node_name(hostname_override: Option<&str>) -> anyhow::Result<String> {
    let name = match hostname_override.map(str::trim).filter(|s| !s.is_empty()) {
        Some(name) => name.to_owned(),
        None => nix::unistd::gethostname()
            .map_err(|e| anyhow::anyhow!("cannot read the hostname: {e}"))?
            .to_string_lossy()
            .into_owned(),
    };
    Ok(name.to_lowercase())
}

/// Builds the node context. Node IPs come from the Node object when the source has one for
/// this node, else from the host's interfaces. A family is served when the node has an
/// address of it (IPv4 when it has none at all).
pub fn node_context(
    settings: &Settings,
    name: &str,
    node: Option<&NodeInfo>,
    service_cidrs: &[ipnet::IpNet],
    host: &HostAddresses,
) -> NodeContext {
    let node_ips: Vec<IpAddr> = match node.filter(|n| !n.addresses.is_empty()) {
        Some(n) => n.addresses.clone(),
        None => host.node_candidates(),
    };
    let served = |family| node_ips.iter().any(|ip| IpFamily::of(ip) == family);
    let no_ips = node_ips.is_empty();
    // A specific bindAddress is the node's primary IP of its family (upstream's nodeIP).
    let bind_ip = bind_address_ip(&settings.config);
    let family_ctx = |family: IpFamily| {
        let mut ips: Vec<IpAddr> = node_ips
            .iter()
            .copied()
            .filter(|ip| IpFamily::of(ip) == family)
            .collect();
        if let Some(bind) = bind_ip.filter(|ip| IpFamily::of(ip) == family) {
            ips.retain(|ip| *ip != bind);
            ips.insert(0, bind);
        }
        FamilyContext {
            nodeport_addresses: nodeport_addresses(
                &settings.nodeport_addresses,
                family,
                &ips,
                host,
            ),
            local_detector: local_detector(&settings.detect_local, family, node),
            service_cidrs: service_cidrs
                .iter()
                .filter(|c| IpFamily::of_net(c) == family)
                .copied()
                .collect(),
            node_ips: ips,
        }
    };
    NodeContext {
        node_name: name.to_owned(),
        ipv4: (served(IpFamily::V4) || no_ips).then(|| family_ctx(IpFamily::V4)),
        ipv6: served(IpFamily::V6).then(|| family_ctx(IpFamily::V6)),
        masquerade_all: settings.masquerade_all,
        masquerade_mark: settings.masquerade_mark,
        localhost_nodeports: settings.localhost_nodeports,
    }
}

/// How pod traffic of `family` is told apart (`detectLocalMode`): the first CIDR of the
/// family (the cluster's, or with NodeCIDR this Node's pod CIDR), or an interface match.
fn local_detector(
    detect: &DetectLocal,
    family: IpFamily,
    node: Option<&NodeInfo>,
) -> LocalTrafficDetector {
    let cidr_of = |cidrs: &[ipnet::IpNet]| {
        cidrs
            .iter()
            .find(|c| IpFamily::of_net(c) == family)
            .map_or(LocalTrafficDetector::None, |c| {
                LocalTrafficDetector::ClusterCidr(*c)
            })
    };
    match detect {
        DetectLocal::ClusterCidr(cidrs) => cidr_of(cidrs),
        DetectLocal::NodeCidr => cidr_of(node.map_or(&[][..], |n| &n.pod_cidrs)),
        DetectLocal::BridgeInterface(name) => LocalTrafficDetector::BridgeInterface(name.clone()),
        DetectLocal::InterfaceNamePrefix(prefix) => {
            LocalTrafficDetector::InterfaceNamePrefix(prefix.clone())
        }
    }
}

/// Resolves `nodePortAddresses` for one family, as upstream: `primary` is the node's first
/// IP of the family (loopback excepted); CIDRs (with `localhost` and `all` expanded) select
/// the local addresses inside them; nothing for the family, or a zero CIDR, means every
/// local address.
fn nodeport_addresses(
    spec: &NodePortSpec,
    family: IpFamily,
    node_ips: &[IpAddr],
    host: &HostAddresses,
) -> NodePortAddresses {
    let primary = node_ips
        .first()
        .filter(|ip| spec.primary && !ip.is_loopback())
        .copied();
    let cidrs: Vec<_> = spec
        .cidrs
        .iter()
        .filter(|c| IpFamily::of_net(c) == family)
        .collect();
    if cidrs.iter().any(|c| c.prefix_len() == 0) || (primary.is_none() && cidrs.is_empty()) {
        return NodePortAddresses::All;
    }
    let mut ips: Vec<IpAddr> = primary.into_iter().collect();
    for ip in &host.all {
        if cidrs.iter().any(|c| c.contains(ip)) && !ips.contains(ip) {
            ips.push(*ip);
        }
    }
    NodePortAddresses::Only(ips)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Settings};
    use clap::Parser;

    fn settings(flags: &[&str]) -> Settings {
        let mut argv = vec!["kproxy"];
        argv.extend_from_slice(flags);
        Cli::try_parse_from(argv)
            .expect("flags")
            .proxy
            .settings()
            .expect("settings")
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().expect("ip")).collect()
    }

    fn host() -> HostAddresses {
        HostAddresses {
            all: ips(&[
                "127.0.0.1",
                "192.168.0.10",
                "10.1.0.1",
                "::1",
                "fe80::1",
                "fd00::10",
            ]),
        }
    }

    #[test]
    fn node_ips_from_interfaces_skip_loopback_and_link_local() {
        let ctx = node_context(&settings(&[]), "n1", None, &[], &host());
        assert_eq!(
            ctx.ipv4.as_ref().map(|c| c.node_ips.clone()),
            Some(ips(&["192.168.0.10", "10.1.0.1"]))
        );
        assert_eq!(
            ctx.ipv6.as_ref().map(|c| c.node_ips.clone()),
            Some(ips(&["fd00::10"]))
        );
    }

    #[test]
    fn node_object_addresses_win_and_decide_families() {
        let node = NodeInfo {
            name: "n1".into(),
            addresses: ips(&["172.18.0.2"]),
            ..NodeInfo::default()
        };
        let ctx = node_context(&settings(&[]), "n1", Some(&node), &[], &host());
        assert_eq!(ctx.ipv4.map(|c| c.node_ips), Some(ips(&["172.18.0.2"])));
        assert!(ctx.ipv6.is_none(), "no IPv6 node address: IPv6 not served");
    }

    #[test]
    fn nodeport_addresses_resolve_per_family() {
        let ctx = node_context(
            &settings(&["--nodeport-addresses", "192.168.0.0/16,127.0.0.0/8"]),
            "n1",
            None,
            &[],
            &host(),
        );
        assert_eq!(
            ctx.ipv4.map(|c| c.nodeport_addresses),
            Some(NodePortAddresses::Only(ips(&["127.0.0.1", "192.168.0.10"])))
        );
        assert_eq!(
            ctx.ipv6.map(|c| c.nodeport_addresses),
            Some(NodePortAddresses::All)
        );
        let ctx = node_context(
            &settings(&["--nodeport-addresses", "primary"]),
            "n1",
            None,
            &[],
            &host(),
        );
        assert_eq!(
            ctx.ipv4.map(|c| c.nodeport_addresses),
            Some(NodePortAddresses::Only(ips(&["192.168.0.10"])))
        );
        let ctx = node_context(
            &settings(&["--nodeport-addresses", "0.0.0.0/0"]),
            "n1",
            None,
            &[],
            &host(),
        );
        assert_eq!(
            ctx.ipv4.map(|c| c.nodeport_addresses),
            Some(NodePortAddresses::All)
        );
    }

    #[test]
    fn cluster_cidr_becomes_the_local_detector_of_its_family() {
        let ctx = node_context(
            &settings(&["--cluster-cidr", "10.244.0.0/16"]),
            "n1",
            None,
            &[],
            &host(),
        );
        assert_eq!(
            ctx.ipv4.map(|c| c.local_detector),
            Some(LocalTrafficDetector::ClusterCidr(
                "10.244.0.0/16".parse().expect("cidr")
            ))
        );
        assert_eq!(
            ctx.ipv6.map(|c| c.local_detector),
            Some(LocalTrafficDetector::None)
        );
    }

    #[test]
    fn a_specific_bind_address_is_the_primary_ip_of_its_family() {
        let ctx = node_context(
            &settings(&["--bind-address=10.1.0.1", "--nodeport-addresses=primary"]),
            "n1",
            None,
            &[],
            &host(),
        );
        let v4 = ctx.ipv4.expect("IPv4");
        assert_eq!(v4.node_ips, ips(&["10.1.0.1", "192.168.0.10"]));
        assert_eq!(
            v4.nodeport_addresses,
            NodePortAddresses::Only(ips(&["10.1.0.1"]))
        );
    }

    #[test]
    fn service_cidrs_go_to_their_family() {
        let cidrs: Vec<ipnet::IpNet> = ["10.96.0.0/16", "fd00:10:96::/112"]
            .iter()
            .map(|s| s.parse().expect("cidr"))
            .collect();
        let ctx = node_context(&settings(&[]), "n1", None, &cidrs, &host());
        assert_eq!(ctx.ipv4.map(|c| c.service_cidrs), Some(vec![cidrs[0]]));
        assert_eq!(ctx.ipv6.map(|c| c.service_cidrs), Some(vec![cidrs[1]]));
    }

    #[test]
    fn a_node_without_addresses_still_serves_ipv4() {
        let ctx = node_context(
            &settings(&[]),
            "n1",
            None,
            &[],
            &HostAddresses {
                all: ips(&["127.0.0.1"]),
            },
        );
        assert!(ctx.ipv4.is_some());
        assert!(ctx.ipv6.is_none());
    }

    #[test]
    fn node_name_is_lowercased_override() {
        assert_eq!(node_name(Some("Node-A")).expect("name"), "node-a");
        assert!(!node_name(None).expect("hostname").is_empty());
    }
}
