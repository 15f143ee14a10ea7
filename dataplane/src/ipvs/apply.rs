//! The only code of IPVS mode that changes the kernel: reads the virtual services kproxy
//! owns over netlink (minus those `--ipvs-exclude-cidrs` protects), applies
//! [`IpvsChanges`], and binds service addresses to the dummy interface `kube-ipvs0` with
//! one `ip -batch` per sync.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::plan::IpFamily;
use crate::tool::{Tool, ToolError};

use super::diff::{IpvsChanges, IpvsOp, KernelService, KernelState};
use super::ipset::SWAP_SET;
use super::netlink::repr::af_of;
use super::netlink::{IpvsNetlinkError, IpvsSocket, ServiceKey};
use super::state::DUMMY_INTERFACE;

/// An IPVS-mode failure, naming the object it concerns.
#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    /// The kernel has no IPVS.
    #[error(
        "IPVS proxy mode needs a kernel with IP_VS ({0}); load the ip_vs modules or choose \
         another --proxy-mode"
    )]
    Unsupported(String),
    /// A netlink request failed.
    #[error(transparent)]
    Netlink(#[from] IpvsNetlinkError),
    /// Some operations of a sync failed (the others were applied).
    #[error("{failed} of {total} IPVS operations failed, first: {first}")]
    Partial {
        /// Failed operations.
        failed: usize,
        /// All operations.
        total: usize,
        /// The first failure.
        first: Box<IpvsNetlinkError>,
    },
    /// A tool (`iptables*`, `ipset`, `ip`) failed; the error names the command.
    #[error(transparent)]
    Tool(#[from] ToolError),
}

/// Reads the kernel's virtual services of `family` whose address is in `owned` (service
/// addresses bound to `kube-ipvs0` and NodePort addresses), with their destinations.
pub fn read_owned(
    sock: &mut IpvsSocket,
    family: IpFamily,
    owned: &BTreeSet<IpAddr>,
) -> Result<KernelState, IpvsNetlinkError> {
    let mut state = KernelState::new();
    for service in sock.services()? {
        let ServiceKey::Addr { addr, .. } = service.key else {
            continue;
        };
        if IpFamily::of(&addr) != family || !owned.contains(&addr) {
            continue;
        }
        let destinations = sock.destinations(&service.key)?;
        state.insert(
            service.key,
            KernelService {
                service,
                destinations,
            },
        );
    }
    Ok(state)
}

/// Whether the virtual service `key` is on an address inside one of `exclude`
/// (`--ipvs-exclude-cidrs`). Firewall-mark services have no address and are never excluded.
pub fn is_excluded(key: &ServiceKey, exclude: &[IpNet]) -> bool {
    match key {
        ServiceKey::Addr { addr, .. } => exclude.iter().any(|net| net.contains(addr)),
        ServiceKey::Fwmark { .. } => false,
    }
}

/// Drops from `state` the services on an excluded address that kproxy does not want
/// (`wanted` says which keys it wants), so that no sync or cleanup deletes or changes them
/// (`--ipvs-exclude-cidrs`, as upstream's `cleanLegacyService`). Returns how many were
/// dropped.
pub fn forget_excluded(
    state: &mut KernelState,
    exclude: &[IpNet],
    wanted: impl Fn(&ServiceKey) -> bool,
) -> usize {
    if exclude.is_empty() {
        return 0;
    }
    let before = state.len();
    state.retain(|key, _| wanted(key) || !is_excluded(key, exclude));
    before - state.len()
}

/// Applies every netlink operation; a failed one is logged and does not stop the others.
pub fn apply_ops(sock: &mut IpvsSocket, changes: &IpvsChanges) -> Result<(), IpvsError> {
    let mut first = None;
    let mut failed = 0;
    for op in &changes.ops {
        let result = match op {
            IpvsOp::AddService(s) => sock.new_service(s),
            IpvsOp::UpdateService(s) => sock.set_service(s),
            IpvsOp::DelService(k) => sock.del_service(k),
            IpvsOp::AddDest(k, d) => sock.new_dest(k, d),
            IpvsOp::UpdateDest(k, d) => sock.set_dest(k, d),
            IpvsOp::DelDest(k, d) => sock.del_dest(k, d),
        };
        if let Err(err) = result {
            tracing::warn!(%err, "IPVS operation failed");
            failed += 1;
            first.get_or_insert(err);
        }
    }
    match first {
        None => Ok(()),
        Some(first) => Err(IpvsError::Partial {
            failed,
            total: changes.ops.len(),
            first: Box::new(first),
        }),
    }
}

/// `ip` (iproute2).
const IP: Tool<'static> = Tool::new("ip", "iproute2");
/// `ipset`.
const IPSET: Tool<'static> = Tool::new("ipset", "ipset");

fn run_ip(args: &[&str], stdin: Option<&str>) -> Result<String, IpvsError> {
    Ok(IP.run_blocking(args, stdin)?)
}

/// Creates `kube-ipvs0` (a dummy interface, down, as upstream) if it does not exist.
pub fn ensure_dummy_interface() -> Result<(), IpvsError> {
    if run_ip(&["link", "show", "dev", DUMMY_INTERFACE], None).is_ok() {
        return Ok(());
    }
    // Needs the dummy module.
    run_ip(&["link", "add", DUMMY_INTERFACE, "type", "dummy"], None).map(drop)
}

/// Deletes `kube-ipvs0` and every address on it.
pub fn delete_dummy_interface() -> Result<(), IpvsError> {
    if run_ip(&["link", "show", "dev", DUMMY_INTERFACE], None).is_err() {
        return Ok(());
    }
    run_ip(&["link", "del", DUMMY_INTERFACE], None).map(drop)
}

/// The addresses of `family` bound to `kube-ipvs0`.
pub fn bound_addresses(family: IpFamily) -> Result<BTreeSet<IpAddr>, IpvsError> {
    let flag = match family {
        IpFamily::V4 => "-4",
        IpFamily::V6 => "-6",
    };
    let out = run_ip(&[flag, "-o", "addr", "show", "dev", DUMMY_INTERFACE], None)?;
    Ok(parse_addr_show(&out))
}

/// Parses `ip -o addr show` output into addresses.
pub fn parse_addr_show(out: &str) -> BTreeSet<IpAddr> {
    out.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "inet" || *w == "inet6")?;
            words.next()?.split('/').next()?.parse().ok()
        })
        .collect()
}

/// The `ip -batch` input that binds and unbinds addresses.
pub fn address_batch(changes: &IpvsChanges) -> String {
    let mut batch = String::new();
    let line = |verb: &str, ip: &IpAddr| {
        let plen = if af_of(ip) == super::netlink::consts::AF_INET6 {
            128
        } else {
            32
        };
        format!("address {verb} {ip}/{plen} dev {DUMMY_INTERFACE}\n")
    };
    for ip in &changes.add_addresses {
        batch.push_str(&line("add", ip));
    }
    for ip in &changes.del_addresses {
        batch.push_str(&line("del", ip));
    }
    batch
}

/// Binds and unbinds the addresses of `changes`, in one `ip -force -batch -`.
pub fn apply_addresses(changes: &IpvsChanges) -> Result<(), IpvsError> {
    let batch = address_batch(changes);
    if batch.is_empty() {
        return Ok(());
    }
    run_ip(&["-force", "-batch", "-"], Some(&batch)).map(drop)
}

/// Runs `ipset restore` with `input` (the sets and entries of one sync).
pub fn apply_ipsets(input: &str) -> Result<(), IpvsError> {
    if input.is_empty() {
        return Ok(());
    }
    if input.contains(&format!("swap {SWAP_SET} ")) {
        // A scratch set left by a crash mid-restore would make its `create` fail.
        destroy_ipsets(&[SWAP_SET.to_string()]);
    }
    IPSET.run_blocking(&["restore"], Some(input))?;
    Ok(())
}

/// Destroys kproxy's sets of `family` (those not referenced by a rule any more).
pub fn destroy_ipsets(names: &[String]) {
    for name in names {
        // A set still referenced by a rule stays; the next sync tries again.
        let _ = IPSET.run_blocking(&["destroy", name], None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipvs::netlink::Service;
    use crate::ipvs::netlink::consts::{AF_INET, IPPROTO_TCP};

    fn key(addr: &str, port: u16) -> ServiceKey {
        ServiceKey::Addr {
            protocol: IPPROTO_TCP,
            addr: addr.parse().expect("address literal"),
            port,
        }
    }

    fn state(keys: &[ServiceKey]) -> KernelState {
        keys.iter()
            .map(|k| {
                let service = Service::new(*k, "rr");
                let destinations = Vec::new();
                (
                    *k,
                    KernelService {
                        service,
                        destinations,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn excluded_services_kproxy_does_not_want_are_forgotten() {
        let exclude: Vec<IpNet> = vec!["192.168.100.0/24".parse().expect("cidr")];
        let foreign = key("192.168.100.7", 30080);
        let wanted = key("192.168.100.1", 30081);
        let outside = key("10.0.0.1", 30080);
        let mut s = state(&[foreign, wanted, outside]);
        assert_eq!(forget_excluded(&mut s, &exclude, |k| *k == wanted), 1);
        assert_eq!(s.keys().copied().collect::<Vec<_>>(), {
            let mut v = vec![wanted, outside];
            v.sort();
            v
        });
    }

    #[test]
    fn nothing_is_forgotten_without_exclusions_or_for_fwmarks() {
        let mut s = state(&[key("192.168.100.7", 80)]);
        assert_eq!(forget_excluded(&mut s, &[], |_| false), 0);
        assert_eq!(s.len(), 1);
        let all: Vec<IpNet> = vec!["0.0.0.0/0".parse().expect("cidr")];
        let fwmark = ServiceKey::Fwmark {
            af: AF_INET,
            mark: 1,
        };
        assert!(!is_excluded(&fwmark, &all));
        assert!(is_excluded(&key("1.2.3.4", 1), &all));
        let v6: Vec<IpNet> = vec!["fd00::/8".parse().expect("cidr")];
        assert!(!is_excluded(&key("1.2.3.4", 1), &v6));
        assert!(is_excluded(&key("fd00::1", 1), &v6));
    }
}
