//! IPVS mode's canary, as upstream's `KUBE-PROXY-CANARY` for the rule-based modes: a cheap
//! check, between syncs, that what the last sync programmed is still there. It notices an
//! external wipe — `ipvsadm -C`, `ip link del kube-ipvs0`, `iptables -t nat -F`/`-X` (a
//! firewalld reload) — so the next sync can be a full one instead of waiting for the
//! periodic full sync.
//!
//! An [`IpvsCanary`] is a value taken after a sync ([`IpvsProxier::canary`]): per family,
//! one virtual server the sync left (looked up with a single `GET_SERVICE`, whatever the
//! number of services), whether `kube-ipvs0` must exist, and the iptables binaries whose
//! fixed chains must exist. [`IpvsCanary::intact`] blocks briefly (netlink, `iptables -S`);
//! run it off an async executor's hot path.
//!
//! [`IpvsProxier::canary`]: super::IpvsProxier::canary

use crate::tool::Tool;

use super::netlink::{IpvsSocket, ServiceKey};
use super::rules::{KUBE_FORWARD, KUBE_SERVICES};
use super::state::DUMMY_INTERFACE;

/// What to look for; see the module documentation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpvsCanary {
    /// One virtual server per family that the last sync left in the kernel.
    pub probes: Vec<ServiceKey>,
    /// Whether the last sync bound addresses to `kube-ipvs0`.
    pub dummy_interface: bool,
    /// The iptables binaries (one per family) whose IPVS-mode chains the last sync wrote.
    pub iptables: Vec<String>,
}

impl IpvsCanary {
    /// Whether everything looked for is still there. A check that cannot be made (the
    /// netlink socket cannot open, the xtables lock is busy) counts as intact: the periodic
    /// full sync still repairs whatever it missed.
    pub fn intact(&self) -> bool {
        if self.dummy_interface && !interface_exists(DUMMY_INTERFACE) {
            tracing::warn!("IPVS canary: {DUMMY_INTERFACE} is gone");
            return false;
        }
        if !self.probes.is_empty() {
            match IpvsSocket::open() {
                Ok(mut sock) => {
                    for key in &self.probes {
                        match sock.service(key) {
                            Ok(Some(_)) => {}
                            Ok(None) => {
                                tracing::warn!(%key, "IPVS canary: a virtual server kproxy programmed is gone");
                                return false;
                            }
                            Err(err) => tracing::warn!(%err, "cannot check the IPVS canary"),
                        }
                    }
                }
                Err(err) => tracing::warn!(%err, "cannot check the IPVS canary"),
            }
        }
        for iptables in &self.iptables {
            for (table, chain) in [("nat", KUBE_SERVICES), ("filter", KUBE_FORWARD)] {
                if chain_missing(iptables, table, chain) {
                    tracing::warn!(
                        iptables,
                        table,
                        chain,
                        "IPVS canary: a kproxy chain is gone"
                    );
                    return false;
                }
            }
        }
        true
    }
}

/// Whether this thread's network namespace has an interface called `name`
/// (`/proc/thread-self/net/dev` lists them; no subprocess).
fn interface_exists(name: &str) -> bool {
    match std::fs::read_to_string("/proc/thread-self/net/dev") {
        Ok(text) => text
            .lines()
            .any(|l| l.trim_start().split(':').next() == Some(name)),
        Err(_) => true,
    }
}

/// `true` only when `iptables -S CHAIN` answered that the chain does not exist (exit
/// status 1); a busy lock (status 4) or a missing binary is not a verdict.
fn chain_missing(iptables: &str, table: &str, chain: &str) -> bool {
    Tool::new(iptables, "iptables")
        .run_blocking(&["-w", "5", "-t", table, "-S", chain], None)
        .is_err_and(|e| e.exit_code() == Some(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interface_named_in_proc_net_dev_is_found() {
        // Every network namespace has `lo`.
        assert!(interface_exists("lo"));
        assert!(!interface_exists("kproxy-no-such-if0"));
    }

    #[test]
    fn an_empty_canary_is_intact() {
        assert!(IpvsCanary::default().intact());
    }
}
