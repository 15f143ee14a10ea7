//! nfacct counters in a network namespace (root only): created over netlink, counted by an
//! iptables rule's `nfacct` match, read back; per namespace, as the kernel keeps them.

use kproxy_dataplane::iptables::nfacct::{self, LOCALHOST_NODEPORTS_ACCEPTED};

mod support;

use support::{Netns, require_root};

#[test]
fn counters_are_created_matched_and_read_in_their_namespace() {
    require_root();
    let node = Netns::new("nfacct");
    node.exec(&["ip", "link", "set", "lo", "up"]);
    assert!(node.run(nfacct::ensure_counters), "the kernel has nfacct");
    assert!(node.run(nfacct::ensure_counters), "ensuring twice is fine");
    let before = node.run(nfacct::read_counters);
    assert_eq!(before, [Some(0), Some(0)]);
    node.exec(&[
        "iptables-nft",
        "-w",
        "5",
        "-A",
        "OUTPUT",
        "-d",
        "127.0.0.1",
        "-p",
        "tcp",
        "--dport",
        "9",
        "-m",
        "nfacct",
        "--nfacct-name",
        LOCALHOST_NODEPORTS_ACCEPTED,
    ]);
    // Three connection attempts to a closed port: three SYNs counted.
    for _ in 0..3 {
        let _ = node.try_exec(&["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9"]);
    }
    let after = node.run(nfacct::read_counters);
    assert_eq!(after[0], Some(0), "the other counter");
    assert!(after[1].is_some_and(|n| n >= 3), "{after:?}");
    // Another namespace has its own counters.
    let other = Netns::new("nfacct-other");
    assert_eq!(other.run(nfacct::read_counters), [None, None]);
}
