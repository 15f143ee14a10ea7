//! Replies of unmasqueraded flows to backends on this node's pod bridges.
//!
//! A backend answers its client directly. When the client sits on the same bridge as the
//! backend (a pod reaching an endpoint on its own node), the reply is *bridged* from port to
//! port and never meets IP routing, so the reply-steering policy rules of [`super::routes`]
//! cannot pull it into the TUN for un-DNAT, and the client gets a packet from the backend's
//! address instead of the service's. (The kernel modes un-DNAT such replies through
//! `br_netfilter` conntrack; a userspace forwarder has no such hook.)
//!
//! A kproxy-owned nftables table of the `bridge` family, [`TABLE`], fixes that the way
//! `ebtables -t broute` did: in bridge `prerouting`, frames entering by a bridge port from a
//! backend's address,
//! protocol and target port (the same triples the reply rules steer) get the bridge's own
//! MAC as destination and `pkttype host`, so the bridge hands them to the IP stack, where the
//! reply rule routes them into the TUN; the forwarder un-DNATs them, or passes them on
//! unchanged when they belong to no flow, and the kernel routes them back onto the bridge.
//! Bridges and their ports are found in sysfs on every sync (a backend's pod is on its
//! bridge before it is an endpoint, and an endpoint change causes a sync); ports are matched
//! by `iifname` since `meta ibrname` needs `CONFIG_NFT_BRIDGE_META`, which not every kernel
//! has. The table is replaced atomically with one `nft -f -` when its text changes.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::routes::ReplyRule;

/// The nftables table (family `bridge`) userspace mode owns.
pub const TABLE: &str = "kproxy_userspace";

/// A Linux bridge of the node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bridge {
    /// Its interface name.
    pub name: String,
    /// Its MAC address (`aa:bb:cc:dd:ee:ff`).
    pub mac: String,
    /// Its ports' interface names, sorted.
    pub ports: Vec<String>,
}

/// The bridges of the calling thread's network namespace with their ports, by name (from
/// `/sys/class/net/*/bridge` and `brif`). Bridges without ports are left out.
pub fn local_bridges() -> Vec<Bridge> {
    let Ok(dir) = std::fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    let mut out: Vec<Bridge> = dir
        .filter_map(Result::ok)
        .filter(|e| e.path().join("bridge").is_dir())
        .filter_map(|e| {
            let mac = std::fs::read_to_string(e.path().join("address")).ok()?;
            let mut ports: Vec<String> = std::fs::read_dir(e.path().join("brif"))
                .ok()?
                .filter_map(Result::ok)
                .map(|p| p.file_name().to_string_lossy().into_owned())
                .collect();
            ports.sort();
            (!ports.is_empty()).then(|| Bridge {
                name: e.file_name().to_string_lossy().into_owned(),
                mac: mac.trim().to_owned(),
                ports,
            })
        })
        .collect();
    out.sort();
    out
}

/// Whether `rules` has replies of IPv4 and of IPv6 backends: with the bridges, what decides
/// the table's chain rules (its sets' elements aside).
pub fn families(rules: &BTreeSet<ReplyRule>) -> (bool, bool) {
    (
        rules.iter().any(|r| r.from.is_ipv4()),
        rules.iter().any(|r| !r.from.is_ipv4()),
    )
}

/// `nft -f` input adding (`add`) or deleting (`delete`) the elements of `rules` in the
/// sets of a table [`render`] wrote.
pub fn elements<'a>(verb: &str, rules: impl IntoIterator<Item = &'a ReplyRule>) -> String {
    let mut out = String::new();
    for r in rules {
        let set = if r.from.is_ipv4() {
            "replies4"
        } else {
            "replies6"
        };
        let _ = writeln!(
            out,
            "{verb} element bridge {TABLE} {set} {{ {} . {} . {} }}",
            r.from, r.proto, r.sport
        );
    }
    out
}

/// The `nft -f` input that replaces [`TABLE`] with rules redirecting the bridged frames of
/// `rules` on each of `bridges` to the IP stack (only deleting the table when either is
/// empty).
pub fn render(bridges: &[Bridge], rules: &BTreeSet<ReplyRule>) -> String {
    let mut out = format!("table bridge {TABLE}\ndelete table bridge {TABLE}\n");
    let of = |v4: bool| {
        rules
            .iter()
            .filter(|r| r.from.is_ipv4() == v4)
            .map(|r| format!("{} . {} . {}", r.from, r.proto, r.sport))
            .collect::<Vec<_>>()
    };
    let (v4, v6) = (of(true), of(false));
    if bridges.is_empty() || (v4.is_empty() && v6.is_empty()) {
        return out;
    }
    let _ = writeln!(out, "table bridge {TABLE} {{");
    for (name, ty, elems) in [
        ("replies4", "ipv4_addr", &v4),
        ("replies6", "ipv6_addr", &v6),
    ] {
        let _ = write!(
            out,
            "\tset {name} {{\n\t\ttype {ty} . inet_proto . inet_service\n"
        );
        if !elems.is_empty() {
            let _ = writeln!(out, "\t\telements = {{ {} }}", elems.join(", "));
        }
        out.push_str("\t}\n");
    }
    out.push_str(
        "\tchain prerouting {\n\t\ttype filter hook prerouting priority -300; policy accept;\n",
    );
    for b in bridges {
        for (l3, set, elems) in [("ip", "replies4", &v4), ("ip6", "replies6", &v6)] {
            if elems.is_empty() {
                continue;
            }
            let ports: Vec<String> = b.ports.iter().map(|p| format!("\"{p}\"")).collect();
            let _ = writeln!(
                out,
                "\t\tiifname {{ {} }} {l3} saddr . meta l4proto . th sport @{set} ether daddr set {} meta pkttype set host comment \"{}\"",
                ports.join(", "),
                b.mac,
                b.name
            );
        }
    }
    out.push_str("\t}\n}\n");
    out
}
