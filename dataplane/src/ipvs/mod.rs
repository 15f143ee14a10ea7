//! IPVS mode: virtual servers and real servers programmed over generic netlink, service
//! IPs bound to the dummy interface `kube-ipvs0`, as upstream kube-proxy's IPVS mode.
//!
//! - [`netlink`]: the IPVS generic-netlink message layer and socket.
//! - [`state`]: `ProxyPlan` → [`state::IpvsState`] (virtual servers, bound addresses), pure.
//! - [`ipset`]: the ipset entries the iptables side matches on, pure.
//! - [`incremental`]: the same state, re-rendering only the service ports that changed.
//! - [`diff`]: wanted state vs. kernel state → netlink operations (graceful termination).
//! - [`rules`]: the small iptables ruleset (masquerade, hairpin, forward, source ranges,
//!   the VIP access filters).
//! - [`canary`]: the check between syncs that notices an external wipe.
//! - [`apply`]: the only code that changes the kernel (netlink, `ip -batch`).
//! - [`proxier`]: [`IpvsProxier`], per-family sync state tying the above together.

pub mod apply;
pub mod canary;
pub mod diff;
pub mod incremental;
pub mod ipset;
pub mod live;
pub mod netlink;
pub mod proxier;
pub mod rules;
pub mod state;

pub use apply::IpvsError;
pub use proxier::{IpvsOptions, IpvsProxier};
pub use state::Scheduler;
#[cfg(test)]
mod tests;
