//! kproxy's dataplane: the Kubernetes-agnostic [`plan::ProxyPlan`] and the backends that
//! program the kernel from it.
//!
//! Every backend is split in two: a pure renderer (plan in, a value describing kernel state
//! out, golden-tested without root) and a thin apply layer (the only code that talks to the
//! kernel or execs a tool).

pub mod backend;
pub mod conntrack;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod iptables;
pub mod ipvs;
pub mod lb;
pub mod live;
pub mod netlink;
pub mod nftables;
pub mod plan;
pub mod report;
pub mod tool;
pub mod trace;
pub mod userspace;
