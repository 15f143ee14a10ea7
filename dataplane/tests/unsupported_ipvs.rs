//! On a kernel without IP_VS (this machine's), `--proxy-mode ipvs` must fail at start with
//! a clear error, as upstream does, and never fall back to another mode.

use kproxy_dataplane::ipvs::proxier::kernel_has_ipvs;
use kproxy_dataplane::ipvs::{IpvsError, IpvsOptions, IpvsProxier};
use kproxy_dataplane::plan::IpFamily;

#[test]
fn new_fails_clearly_without_ipvs() {
    if kernel_has_ipvs() {
        // The IPVS guest, or a development machine with IP_VS: nothing to check here.
        eprintln!("new_fails_clearly_without_ipvs: this kernel has IPVS");
        return;
    }
    let err = IpvsProxier::new(IpvsOptions::default(), [IpFamily::V4])
        .err()
        .expect("IPVS proxier without IPVS");
    assert!(matches!(err, IpvsError::Unsupported(_)), "{err}");
    assert!(err.to_string().contains("IP_VS"), "{err}");
}
