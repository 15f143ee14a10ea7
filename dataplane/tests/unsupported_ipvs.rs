//! On a kernel without IP_VS (this machine's), `--proxy-mode ipvs` must fail at start with
//! a clear error, as upstream does, and never fall back to another mode.
//!
//! The claim can only be checked on such a kernel: the qemu guest (feature `ipvs-guest`,
//! which has IP_VS) does not build this test, and a host kernel with IP_VS fails it with a
//! message saying so instead of passing without checking anything.

#![cfg(not(feature = "ipvs-guest"))]

use kproxy_dataplane::ipvs::proxier::kernel_has_ipvs;
use kproxy_dataplane::ipvs::{IpvsError, IpvsOptions, IpvsProxier};
use kproxy_dataplane::plan::IpFamily;

#[test]
fn new_fails_clearly_without_ipvs() {
    assert!(
        !kernel_has_ipvs(),
        "this kernel has IP_VS, so the start-up error of a kernel without it cannot be checked \
         here; IPVS mode itself is tested in the qemu guest (scripts/run-ipvs-vm.sh)"
    );
    let err = IpvsProxier::new(IpvsOptions::default(), [IpFamily::V4])
        .err()
        .expect("IPVS proxier without IPVS");
    assert!(matches!(err, IpvsError::Unsupported(_)), "{err}");
    assert!(err.to_string().contains("IP_VS"), "{err}");
}
