//! What one service port adds to the table, as a [`Fragment`]: elements of the dispatch,
//! no-endpoint, firewall, hairpin and endpoint maps, and the shared chains its shape uses.
//!
//! The decisions are upstream kube-proxy's, as in the iptables renderer
//! (`iptables/render/service.rs`): cluster-IP traffic goes to the internal set (iTP), external
//! traffic (external IPs, LB IPs, NodePorts) to the external set (eTP) through the
//! short-circuit rules of the external entry chain; traffic without an endpoint is rejected
//! when the service has none at all and dropped when only a Local policy leaves it without
//! one; `loadBalancerSourceRanges` drop other sources.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{LazyLock, Mutex, PoisonError};

use ipnet::IpNet;

use crate::plan::{Endpoint, EndpointSet, ServicePortPlan};

use super::super::names::*;
use super::super::table::Text;
use super::Ctx;
use super::layout::assign_slots;
use super::shared::Entry;

/// The value of every set element.
static EMPTY: LazyLock<Text> = LazyLock::new(|| Text::from(""));

/// The names of the sets and maps fragments contribute to, each stored once: a few
/// constants and `ep-{set}-{kind}-{slot}` / affinity sets up to the largest endpoint count,
/// so this stays small while every element of 100k endpoints names its set.
static SET_NAMES: LazyLock<Mutex<BTreeSet<Text>>> = LazyLock::new(Mutex::default);

/// `name`, shared.
fn set_name(name: &str) -> Text {
    let mut names = SET_NAMES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(known) = names.get(name) {
        return known.clone();
    }
    let text = Text::from(name);
    names.insert(text.clone());
    text
}

/// Everything one service port contributes: elements, and the shared chains it uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Fragment {
    /// `(set, key, value)`.
    pub elements: Vec<(Text, Text, Text)>,
    /// Entry chains used.
    pub entries: Vec<Entry>,
    /// Pick chains used directly.
    pub picks: Vec<Selection>,
}

impl Fragment {
    fn element(&mut self, set: &str, key: impl Into<Text>, value: String) {
        // Set elements have no value: they share one empty text.
        let value = if value.is_empty() {
            EMPTY.clone()
        } else {
            value.into()
        };
        self.elements.push((set_name(set), key.into(), value));
    }

    fn entry(&mut self, entry: Entry) -> String {
        self.entries.push(entry);
        entry.chain_name()
    }

    fn pick(&mut self, sel: Selection) -> String {
        self.picks.push(sel);
        sel.pick_chain()
    }
}

/// `addr . proto . port`.
fn vip_key(ip: &IpAddr, proto: &str, port: u16) -> String {
    format!("{ip} . {proto} . {port}")
}

/// `addr . port`: a DNAT destination.
fn endpoint_value(ep: &Endpoint) -> String {
    format!("{} . {}", ep.ip(), ep.addr.port())
}

/// Renders one service port. `ctx.layout` (the current table) gives the slots its
/// endpoints had.
pub(super) fn render_service_port(ctx: &Ctx, svc: &ServicePortPlan) -> Fragment {
    let mut frag = Fragment::default();
    let proto = svc.name.protocol.as_lower();
    let affinity = svc.session_affinity_timeout;
    let has_endpoints = svc.has_any_endpoints;
    let (internal_set, internal_eps) = (svc.internal_set(), svc.internal_endpoints());
    let external_eps = svc.external_endpoints();
    let has_internal = svc.has_internal_endpoints() && !internal_eps.is_empty();
    let has_external = svc.has_external_endpoints() && !external_eps.is_empty();
    // Upstream uses the same verdict for internal and external traffic.
    let verdict = if has_endpoints {
        // Only the traffic policy leaves this traffic without an endpoint: drop it silently,
        // as a remote load balancer then retries another node.
        "drop".to_owned()
    } else {
        format!("goto {REJECT_CHAIN}")
    };

    // Cluster IP.
    frag.element(CLUSTER_IPS, svc.cluster_ip.to_string(), String::new());
    let key = vip_key(&svc.cluster_ip, proto, svc.port);
    if has_internal {
        let sel = Selection {
            set: internal_set,
            kind: KeyKind::Vip,
            count: internal_eps.len(),
            affinity,
        };
        write_endpoints(&mut frag, ctx, sel, &key, internal_eps);
        let masquerades = ctx.node.masquerade_all || ctx.fam.local_detector.is_some();
        let target = if masquerades {
            frag.entry(Entry::ClusterIp(sel))
        } else {
            frag.pick(sel)
        };
        frag.element(SERVICE_IPS, key, format!("goto {target}"));
    } else {
        frag.element(NO_ENDPOINT_SERVICES, key, verdict.clone());
    }

    // External IPs and load-balancer IPs: both are VIP keys of the external entry.
    let vips: Vec<&IpAddr> = svc
        .external_ips
        .iter()
        .chain(&svc.load_balancer_ips)
        .collect();
    let vip_keys: Vec<String> = vips.iter().map(|ip| vip_key(ip, proto, svc.port)).collect();
    let vip_entry = (has_endpoints && !vips.is_empty())
        .then(|| external_entry(&mut frag, ctx, svc, KeyKind::Vip, &vip_keys))
        .flatten();
    for key in vip_keys {
        if let Some(entry) = &vip_entry {
            frag.element(SERVICE_IPS, key.clone(), format!("goto {entry}"));
        }
        if !has_external {
            frag.element(NO_ENDPOINT_SERVICES, key, verdict.clone());
        }
    }
    if has_endpoints {
        write_firewall(&mut frag, ctx, svc, proto);
    }

    // NodePort.
    if let Some(node_port) = svc.node_port {
        let key = format!("{proto} . {node_port}");
        if has_endpoints
            && let Some(entry) = external_entry(
                &mut frag,
                ctx,
                svc,
                KeyKind::NodePort,
                std::slice::from_ref(&key),
            )
        {
            frag.element(SERVICE_NODEPORTS, key.clone(), format!("goto {entry}"));
        }
        if !has_external {
            frag.element(NO_ENDPOINT_NODEPORTS, key, verdict);
        }
    }
    // Kept until the service port changes: no spare capacity.
    frag.elements.shrink_to_fit();
    frag.entries.shrink_to_fit();
    frag.picks.shrink_to_fit();
    frag
}

/// Writes the endpoints of the external destinations `keys` (all of `kind`) of `svc` and
/// returns their entry chain, or `None` when there is nothing to DNAT to.
fn external_entry(
    frag: &mut Fragment,
    ctx: &Ctx,
    svc: &ServicePortPlan,
    kind: KeyKind,
    keys: &[String],
) -> Option<String> {
    let affinity = svc.session_affinity_timeout;
    let sel = |set, count| Selection {
        set,
        kind,
        count,
        affinity,
    };
    let cluster = svc.cluster_endpoints.len();
    if !svc.external_policy_local {
        if cluster == 0 {
            return None;
        }
        for key in keys {
            write_endpoints(
                frag,
                ctx,
                sel(EndpointSet::Cluster, cluster),
                key,
                &svc.cluster_endpoints,
            );
        }
        return Some(frag.entry(Entry::External(sel(EndpointSet::Cluster, cluster))));
    }
    let local = svc.local_endpoints.len();
    for key in keys {
        if cluster > 0 {
            let s = sel(EndpointSet::Cluster, cluster);
            write_endpoints(frag, ctx, s, key, &svc.cluster_endpoints);
        }
        if local > 0 {
            let s = sel(EndpointSet::Local, local);
            write_endpoints(frag, ctx, s, key, &svc.local_endpoints);
        }
    }
    Some(frag.entry(Entry::ExternalLocal {
        kind,
        affinity,
        cluster,
        local,
    }))
}

/// Puts `endpoints` into the slot maps of `sel` under `key`, and their hairpin pairs.
fn write_endpoints(
    frag: &mut Fragment,
    ctx: &Ctx,
    sel: Selection,
    key: &str,
    endpoints: &[Endpoint],
) {
    let values = endpoints.iter().map(endpoint_value).collect();
    let slots = assign_slots(ctx.layout, sel.set, sel.kind, key, values);
    // Every slot map has the same key: one shared text.
    let key = Text::from(key);
    for (slot, value) in slots.into_iter().enumerate() {
        frag.element(&endpoint_map(sel.set, sel.kind, slot), key.clone(), value);
    }
    for ep in endpoints {
        frag.element(HAIRPIN, format!("{} . {}", ep.ip(), ep.ip()), String::new());
    }
}

/// `loadBalancerSourceRanges` of the LB IPs: the keys in `firewall-ips`, the allowed
/// `key . source` intervals in `firewall-allow` (ranges aggregated: nft refuses
/// overlapping intervals).
fn write_firewall(frag: &mut Fragment, ctx: &Ctx, svc: &ServicePortPlan, proto: &str) {
    if svc.load_balancer_ips.is_empty() || svc.load_balancer_source_ranges.is_empty() {
        return;
    }
    let mut sources: Vec<IpNet> = svc.load_balancer_source_ranges.clone();
    // A VIP-style LB IP is often local to the node: a request from the node to it loops back
    // with the VIP as source. Let it through when the node itself is allowed.
    let allow_from_node = sources
        .iter()
        .any(|range| ctx.fam.node_ips.iter().any(|ip| range.contains(ip)));
    if allow_from_node {
        sources.extend(svc.load_balancer_ips.iter().map(|ip| IpNet::from(*ip)));
    }
    let sources = IpNet::aggregate(&sources);
    for ip in &svc.load_balancer_ips {
        let key = vip_key(ip, proto, svc.port);
        for source in &sources {
            let source = if source.prefix_len() == source.max_prefix_len() {
                source.addr().to_string()
            } else {
                source.to_string()
            };
            frag.element(FIREWALL_ALLOW, format!("{key} . {source}"), String::new());
        }
        frag.element(FIREWALL_IPS, key, String::new());
    }
}
