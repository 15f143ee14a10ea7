//! Test helpers that build small clusters out of network namespaces and run the real
//! `kproxy` binary in them. Every test that uses them needs root.
//!
//! - [`netns`]: a namespace that deletes itself on drop, commands and threads inside it.
//! - [`echo`]: TCP echo backends that answer with their pod name and the peer they saw.
//! - [`node`]: a one-node cluster (bridge of pods, a client pod, an external client).
//! - [`manifests`]: Service + EndpointSlice manifests from a `ServiceSpec` value.
//! - [`kproxy`]: running the kproxy binary inside a node namespace.
//! - [`report`]: the run-netns report (text table and SVG chart).
//! - [`rig`]: a multi-node cluster built with rtnetlink (nodes, pods, underlay, external).
//! - [`scenario`]: a running cluster in one proxy mode and the measurements scenarios share.
//! - [`stats`]: chi-square judgement of load distributions.
//! - [`traffic`]: traffic generators (pnet raw packets with capture, smoltcp over TUN).

pub mod api;
pub mod echo;
pub mod http;
pub mod kproxy;
pub mod manifests;
pub mod netns;
pub mod node;
pub mod report;
pub mod rig;
pub mod scenario;
pub mod stats;
pub mod traffic;

/// The factor by which slow environments stretch the harness's waits for kproxy:
/// `$KPROXY_TEST_TIME_SCALE` (a positive integer; 1 when unset or invalid). The IPVS guest
/// (`scripts/run-ipvs-vm.sh`) sets it, because it runs under qemu's instruction emulator.
/// It only lengthens how long the harness *waits*; no assertion about speed uses it.
pub fn time_scale() -> u32 {
    std::env::var("KPROXY_TEST_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1)
}
