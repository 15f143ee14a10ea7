//! nftables mode's side of `kproxy explain --live`: for one service port, every element
//! the renderer writes under its keys (its cluster IP, its `ip . proto . port` and
//! `proto . nodeport` keys in the dispatch, no-endpoint, firewall and endpoint-slot maps,
//! its hairpin pairs), compared with `nft list table` of the family. Endpoint slots are
//! compared as a set per map group (a running kproxy keeps the slots endpoints had, a fresh
//! render numbers them anew).

use std::collections::{BTreeMap, BTreeSet};

use crate::live::{LiveObject, Presence};
use crate::plan::ServicePortPlan;
use crate::tool::{Tool, ToolError};

use super::names::{CLUSTER_IPS, HAIRPIN, TABLE, family_keyword};
use super::table::NftTable;

/// `nft`.
const NFT: Tool<'static> = Tool::new("nft", "nftables");

/// Elements by set or map name: `(key, value)`, value empty for a set.
pub(crate) type Listed = BTreeMap<String, Vec<(String, String)>>;

/// The elements of `svc` in `expected` (the family's rendered table), each with what the
/// kernel has of it.
pub async fn inspect(
    expected: &NftTable,
    svc: &ServicePortPlan,
) -> Result<Vec<LiveObject>, ToolError> {
    let family = family_keyword(expected.family);
    let listed = match NFT.run(&["list", "table", family, TABLE], None).await {
        Ok(text) => parse_listing(&text),
        // No table: nothing is there.
        Err(e) if e.exit_code() == Some(1) => Listed::new(),
        Err(e) => return Err(e),
    };
    Ok(compare(expected, svc, &listed))
}

/// The keys the elements of `svc` are stored under.
fn keys_of(svc: &ServicePortPlan) -> BTreeSet<String> {
    let proto = svc.name.protocol.as_lower();
    let mut keys: BTreeSet<String> = std::iter::once(&svc.cluster_ip)
        .chain(&svc.external_ips)
        .chain(&svc.load_balancer_ips)
        .map(|ip| format!("{ip} . {proto} . {}", svc.port))
        .collect();
    if let Some(node_port) = svc.node_port {
        keys.insert(format!("{proto} . {node_port}"));
    }
    keys
}

/// An endpoint-slot map's group (`ep-cluster-vip-3` → `ep-cluster-vip-*`).
fn slot_group(set: &str) -> Option<String> {
    let (group, slot) = set.rsplit_once('-')?;
    (set.starts_with("ep-") && slot.parse::<usize>().is_ok()).then(|| format!("{group}-*"))
}

/// What the kernel (`listed`) has of each element of `svc` in `expected`.
fn compare(expected: &NftTable, svc: &ServicePortPlan, listed: &Listed) -> Vec<LiveObject> {
    let keys = keys_of(svc);
    let cluster_ip = svc.cluster_ip.to_string();
    let hairpins: BTreeSet<String> = svc
        .reachable_endpoints()
        .iter()
        .map(|ep| format!("{} . {}", ep.ip(), ep.ip()))
        .collect();
    let ours = |set: &str, key: &str| {
        keys.contains(key)
            || (set == CLUSTER_IPS && key == cluster_ip)
            || (set == HAIRPIN && hairpins.contains(key))
    };
    let kernel = |set: &str, key: &str| -> Vec<&str> {
        listed
            .get(set)
            .into_iter()
            .flatten()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let mut objects = Vec::new();
    // Slot maps: the values under a key, across the group's maps.
    let mut slots: BTreeMap<(String, String), (BTreeSet<String>, BTreeSet<String>)> =
        BTreeMap::new();
    for (name, set) in &expected.sets {
        let Some(elements) = &set.elements else {
            continue;
        };
        for (key, element) in elements.iter().filter(|(k, _)| ours(name, k)) {
            let value = element.value.to_string();
            if let Some(group) = slot_group(name) {
                let entry = slots.entry((group, key.to_string())).or_default();
                entry.0.insert(value);
                entry
                    .1
                    .extend(kernel(name, key).into_iter().map(str::to_owned));
                continue;
            }
            let object = if value.is_empty() {
                format!("set {name}: {key}")
            } else {
                format!("map {name}: {key} : {value}")
            };
            let presence = match kernel(name, key).first() {
                None => Presence::Missing,
                Some(v) if *v == value => Presence::Present,
                Some(v) => Presence::Differs((*v).to_owned()),
            };
            objects.push(LiveObject::new(object, presence));
        }
    }
    // The kernel's slot maps of a group hold values under the key in maps the fresh render
    // may not have (a higher slot): gather them too.
    for ((group, key), (wanted, have)) in &mut slots {
        let prefix = group.trim_end_matches('*');
        for (name, elements) in listed.range(prefix.to_owned()..) {
            if !name.starts_with(prefix) {
                break;
            }
            if slot_group(name).as_deref() == Some(group.as_str()) {
                have.extend(
                    elements
                        .iter()
                        .filter(|(k, _)| k == key)
                        .map(|(_, v)| v.clone()),
                );
            }
        }
        let object = format!(
            "maps {group}: {key} : {{ {} }}",
            wanted.iter().cloned().collect::<Vec<_>>().join(", ")
        );
        let presence = if wanted == have {
            Presence::Present
        } else if have.is_empty() {
            Presence::Missing
        } else {
            Presence::Differs(format!(
                "{{ {} }}",
                have.iter().cloned().collect::<Vec<_>>().join(", ")
            ))
        };
        objects.push(LiveObject::new(object, presence));
    }
    objects
}

/// The elements of every set and map in `nft list table` output.
pub(crate) fn parse_listing(text: &str) -> Listed {
    let mut listed = Listed::new();
    let mut current: Option<String> = None;
    let mut collecting: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if let Some(acc) = collecting.as_mut() {
            acc.push(' ');
            acc.push_str(line);
        } else if let Some(rest) = line
            .strip_prefix("set ")
            .or_else(|| line.strip_prefix("map "))
        {
            current = rest.strip_suffix('{').map(|n| n.trim().to_owned());
            continue;
        } else if let Some(rest) = line.strip_prefix("elements = {") {
            collecting = Some(rest.to_owned());
        } else {
            continue;
        }
        let Some(acc) = collecting.as_ref() else {
            continue;
        };
        if let Some(body) = acc.strip_suffix('}') {
            let elements = listed
                .entry(current.clone().unwrap_or_default())
                .or_default();
            for element in body.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                let (key, value) = element.split_once(" : ").unwrap_or((element, ""));
                elements.push((key.trim().to_owned(), value.trim().to_owned()));
            }
            collecting = None;
        }
    }
    listed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_parse_into_elements() {
        let text = "table ip kproxy {
\tmap service-ips {
\t\ttype ipv4_addr . inet_proto . inet_service : verdict
\t\telements = { 10.96.0.10 . tcp . 80 : goto external-x,
\t\t\t     10.96.0.11 . tcp . 80 : goto pick-cluster-vip-1 }
\t}
\tset cluster-ips {
\t\ttype ipv4_addr
\t\telements = { 10.96.0.10, 10.96.0.11 }
\t}
\tmap ep-cluster-vip-0 {
\t\ttype ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service
\t\telements = { 10.96.0.10 . tcp . 80 : 10.244.1.10 . 8080 }
\t}
}
";
        let listed = parse_listing(text);
        assert_eq!(
            listed["service-ips"],
            [
                (
                    "10.96.0.10 . tcp . 80".to_owned(),
                    "goto external-x".to_owned()
                ),
                (
                    "10.96.0.11 . tcp . 80".to_owned(),
                    "goto pick-cluster-vip-1".to_owned()
                ),
            ]
        );
        assert_eq!(listed["cluster-ips"].len(), 2);
        assert_eq!(listed["ep-cluster-vip-0"][0].1, "10.244.1.10 . 8080");
        assert_eq!(
            slot_group("ep-cluster-vip-12").as_deref(),
            Some("ep-cluster-vip-*")
        );
        assert_eq!(slot_group("service-ips"), None);
    }
}
