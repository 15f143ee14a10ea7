//! `kproxy explain`: where a new connection goes on this node, and why.
//!
//! The question is parsed here ([`Question`]); the answer comes from the plan a sync would
//! program ([`kproxy_dataplane::trace`]) and, for the endpoints the packet's traffic may not
//! use, from the planner's own selection ([`crate::planner::endpoint_uses`]). The output is
//! human text or JSON.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use kproxy_dataplane::plan::{IpFamily, Protocol, ProxyPlan};
use kproxy_dataplane::trace::{Packet, Rules, Trace, Verdict, trace};
use serde::Serialize;

use crate::cli::ProxyMode;
use crate::model::Snapshot;
use crate::planner::{ExplainedEndpoint, endpoint_uses};

/// A connection to explain: `--from IP --to IP:PORT[/tcp|udp|sctp]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Question {
    /// The source address.
    pub from: IpAddr,
    /// The destination.
    pub to: SocketAddr,
    /// The protocol (TCP when not given).
    pub protocol: Protocol,
}

impl Question {
    /// Parses `--from` and `--to` (`IP:PORT`, `[IPv6]:PORT`, optionally `/tcp`, `/udp` or
    /// `/sctp`).
    pub fn parse(from: &str, to: &str) -> anyhow::Result<Question> {
        let from: IpAddr = from
            .parse()
            .map_err(|_| anyhow::anyhow!("--from {from:?}: not an IP address"))?;
        let (addr, protocol) = match to.rsplit_once('/') {
            Some((addr, proto)) => (addr, proto),
            None => (to, "tcp"),
        };
        let protocol = match protocol.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "sctp" => Protocol::Sctp,
            other => anyhow::bail!("--to {to:?}: protocol {other:?} is not tcp, udp or sctp"),
        };
        let to: SocketAddr = addr
            .parse()
            .map_err(|_| anyhow::anyhow!("--to {to:?}: not IP:PORT (IPv6 as [ADDR]:PORT)"))?;
        if IpFamily::of(&from) != IpFamily::of(&to.ip()) {
            anyhow::bail!("--from {from} and --to {to} are of different IP families");
        }
        Ok(Question { from, to, protocol })
    }
}

/// A question to the running sync loop, answered from the plan it programmed last.
#[derive(Debug)]
pub struct Asked {
    /// The question.
    pub question: Question,
    /// What the host says about its source (read by the asker, so that the sync loop does
    /// no I/O for it).
    pub host: Host,
    /// Where the answer goes.
    pub reply: tokio::sync::oneshot::Sender<Explanation>,
}

/// How the metrics server asks the sync loop.
pub type Asker = tokio::sync::mpsc::Sender<Asked>;

/// A channel for [`Asked`] questions (a few may wait while a sync runs).
pub fn channel() -> (Asker, tokio::sync::mpsc::Receiver<Asked>) {
    tokio::sync::mpsc::channel(16)
}

/// Parses the query of `GET /explain?from=IP&to=IP:PORT[/PROTO][&output=json]`
/// (percent-encoding allowed): the question and whether JSON is wanted.
pub fn parse_query(query: &str) -> anyhow::Result<(Question, bool)> {
    let (mut from, mut to, mut json) = (None, None, false);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value)?;
        match key {
            "from" => from = Some(value),
            "to" => to = Some(value),
            "output" => match value.as_str() {
                "json" => json = true,
                "text" => json = false,
                other => anyhow::bail!("output={other:?}: not text or json"),
            },
            other => anyhow::bail!("unknown parameter {other:?} (from, to, output)"),
        }
    }
    let from = from.ok_or_else(|| anyhow::anyhow!("missing from=IP"))?;
    let to = to.ok_or_else(|| anyhow::anyhow!("missing to=IP:PORT[/PROTO]"))?;
    Ok((Question::parse(&from, &to)?, json))
}

/// `%XX` escapes and `+` decoded.
fn percent_decode(s: &str) -> anyhow::Result<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex: Vec<u8> = bytes.by_ref().take(2).collect();
                let byte = std::str::from_utf8(&hex)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .filter(|_| hex.len() == 2)
                    .ok_or_else(|| anyhow::anyhow!("{s:?}: a bad %-escape"))?;
                out.push(byte);
            }
            b'+' => out.push(b' '),
            other => out.push(other),
        }
    }
    String::from_utf8(out).map_err(|_| anyhow::anyhow!("{s:?}: not UTF-8"))
}

/// An endpoint the packet's traffic does not use, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unused {
    /// `ip:port`.
    pub endpoint: String,
    /// Why.
    pub reason: String,
}

/// The answer, as `--output json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// The node explained for.
    pub node: String,
    /// The proxy mode whose rules were explained.
    pub mode: String,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// The source.
    pub from: String,
    /// The destination.
    pub to: String,
    /// The service port matched (`ns/name:port`), if any.
    pub service: Option<String>,
    /// How it matched (`cluster IP`, `external IP`, `load-balancer IP`, `NodePort`).
    pub frontend: Option<String>,
    /// `dnat`, `reject`, `drop` or `accept` (no service rule applies).
    pub verdict: String,
    /// The endpoints a DNAT picks from.
    pub endpoints: Vec<String>,
    /// Whether the packet leaves with the node's address as source.
    pub masquerade: bool,
    /// Why, in the order the rules decide.
    pub reasons: Vec<String>,
    /// The service's other endpoints, and why this traffic does not use them.
    pub unused_endpoints: Vec<Unused>,
    /// With `--live`: the kernel objects carrying the decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<Live>,
}

/// The kernel's side of an explanation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Live {
    /// The kernel holds every object as the plan wants it.
    pub agrees: bool,
    /// Each object with what the kernel has of it (`ok`, `MISSING`, `DIFFERENT`).
    pub objects: Vec<String>,
}

impl Live {
    /// The kernel's side from the mode's inspection.
    pub fn of(objects: &[kproxy_dataplane::live::LiveObject]) -> Live {
        Live {
            agrees: objects.iter().all(|o| !o.disagrees()),
            objects: objects.iter().map(ToString::to_string).collect(),
        }
    }
}

/// What the node knows about where a question's packet comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Host {
    /// The node's own addresses (a packet from one is sent by the node).
    pub addresses: Vec<IpAddr>,
    /// The interface packets from the question's source arrive on, if known.
    pub arrival_interface: Option<String>,
}

impl Host {
    /// This host's addresses and the interface it routes `from` through.
    pub fn read(from: IpAddr) -> Host {
        Host {
            addresses: crate::node::HostAddresses::read()
                .map(|h| h.all)
                .unwrap_or_default(),
            arrival_interface: crate::node::route_interface(from),
        }
    }
}

/// Where the question's packet goes under `plan` (planned from `snapshot` for this node and
/// `zone`) on `host`.
pub fn explain(
    question: &Question,
    plan: &ProxyPlan,
    snapshot: &Snapshot,
    zone: Option<&str>,
    host: &Host,
    mode: ProxyMode,
) -> Explanation {
    let is_node = |ip: &IpAddr| ip.is_loopback() || host.addresses.contains(ip);
    let packet = Packet {
        from: question.from,
        to: question.to,
        protocol: question.protocol,
        from_node: is_node(&question.from),
        to_node: is_node(&question.to.ip()),
        in_interface: host.arrival_interface.clone(),
    };
    let rules = match mode {
        ProxyMode::Ipvs => Rules::Ipvs,
        ProxyMode::Nftables => Rules::Nftables,
        ProxyMode::Iptables | ProxyMode::Userspace => Rules::Iptables,
    };
    let traced = trace(plan, &packet, rules);
    let unused = unused_endpoints(&traced, plan, snapshot, zone);
    Explanation {
        node: plan.node.node_name.clone(),
        mode: mode.name().to_owned(),
        protocol: question.protocol.as_lower().to_owned(),
        from: question.from.to_string(),
        to: question.to.to_string(),
        service: traced.matched.as_ref().map(|m| m.name.to_string()),
        frontend: traced
            .matched
            .as_ref()
            .map(|m| m.frontend.name().to_owned()),
        verdict: traced.verdict.to_string(),
        endpoints: traced
            .endpoints
            .iter()
            .map(|e| e.addr.to_string())
            .collect(),
        masquerade: traced.masquerade,
        reasons: traced.reasons,
        unused_endpoints: unused,
        live: None,
    }
}

/// The matched service port's endpoints that the traced traffic does not use, with the
/// planner's reasons (every endpoint, when the packet is not DNATed).
fn unused_endpoints(
    traced: &Trace,
    plan: &ProxyPlan,
    snapshot: &Snapshot,
    zone: Option<&str>,
) -> Vec<Unused> {
    let Some(matched) = &traced.matched else {
        return Vec::new();
    };
    let set = matched
        .set
        .unwrap_or(kproxy_dataplane::plan::EndpointSet::Cluster);
    let uses: Vec<ExplainedEndpoint> = endpoint_uses(
        snapshot,
        &plan.node,
        zone,
        &matched.name,
        matched.family,
        set,
    );
    let dnat = traced.verdict == Verdict::Dnat;
    uses.into_iter()
        .filter_map(|u| {
            let reason = match u.excluded {
                Some(why) => why,
                None if dnat => return None,
                None => format!("the packet is not DNATed ({})", traced.verdict),
            };
            Some(Unused {
                endpoint: u.addr.to_string(),
                reason,
            })
        })
        .collect()
}

impl Explanation {
    /// The answer as text for a person.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} {} -> {} on node {} ({} mode)",
            self.protocol, self.from, self.to, self.node, self.mode
        );
        let service = match (&self.service, &self.frontend) {
            (Some(s), Some(f)) => format!("{s} (by its {f})"),
            _ => "none".to_owned(),
        };
        let _ = writeln!(out, "  service:    {service}");
        let verdict = match self.verdict.as_str() {
            "dnat" => format!(
                "DNAT to one of {} endpoint(s): {}",
                self.endpoints.len(),
                self.endpoints.join(", ")
            ),
            "reject" => "REJECT".to_owned(),
            "drop" => "DROP".to_owned(),
            _ => "untouched (no service rule applies)".to_owned(),
        };
        let _ = writeln!(out, "  verdict:    {verdict}");
        let masquerade = if self.masquerade { "yes" } else { "no" };
        let _ = writeln!(out, "  masquerade: {masquerade}");
        let _ = writeln!(out, "  why:");
        for reason in &self.reasons {
            let _ = writeln!(out, "    - {reason}");
        }
        if !self.unused_endpoints.is_empty() {
            let _ = writeln!(out, "  endpoints not used:");
            for unused in &self.unused_endpoints {
                let _ = writeln!(out, "    - {}: {}", unused.endpoint, unused.reason);
            }
        }
        if let Some(live) = &self.live {
            let verdict = if live.agrees {
                "the kernel agrees with the plan"
            } else {
                "THE KERNEL DISAGREES WITH THE PLAN"
            };
            let _ = writeln!(out, "  kernel ({} mode): {verdict}", self.mode);
            for object in &live.objects {
                let _ = writeln!(out, "    {object}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_queries_parse_with_escapes() {
        let (q, json) =
            parse_query("from=fd00%3A%3A1&to=%5Bfd00%3A96%3A%3Aa%5D%3A53%2Fudp&output=json")
                .expect("valid");
        assert!(json);
        assert_eq!((q.to.port(), q.protocol), (53, Protocol::Udp));
        for (query, says) in [
            ("to=10.96.0.10:80", "missing from"),
            ("from=10.0.0.1", "missing to"),
            ("from=10.0.0.1&to=10.96.0.10:80&x=1", "unknown parameter"),
            (
                "from=10.0.0.1&to=10.96.0.10:80&output=yaml",
                "not text or json",
            ),
            ("from=10.0.0.%G1&to=10.96.0.10:80", "%-escape"),
        ] {
            let err = parse_query(query).expect_err(query).to_string();
            assert!(err.contains(says), "{query}: {err}");
        }
    }

    #[test]
    fn questions_parse_like_the_flags_say() {
        let q = Question::parse("10.0.0.1", "10.96.0.10:53/udp").expect("valid");
        assert_eq!(q.protocol, Protocol::Udp);
        let q = Question::parse("fd00::1", "[fd00:96::a]:80").expect("valid");
        assert_eq!((q.protocol, q.to.port()), (Protocol::Tcp, 80));
        for (from, to, says) in [
            ("10.0.0.x", "10.96.0.10:80", "--from"),
            ("10.0.0.1", "10.96.0.10", "IP:PORT"),
            ("10.0.0.1", "10.96.0.10:80/icmp", "protocol \"icmp\""),
            ("10.0.0.1", "[fd00::1]:80", "different IP families"),
        ] {
            let err = Question::parse(from, to).expect_err(to).to_string();
            assert!(err.contains(says), "{from} {to}: {err}");
        }
    }
}
