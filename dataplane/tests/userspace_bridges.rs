//! The userspace mode's bridge table (replies of on-node backends pulled off pod bridges)
//! and masquerade chain, rendered without touching the kernel.

use std::collections::BTreeSet;

use kproxy_dataplane::userspace::bridges::{self, Bridge};
use kproxy_dataplane::userspace::packet::{PROTO_TCP, PROTO_UDP};
use kproxy_dataplane::userspace::routes::ReplyRule;

fn rule(from: &str, proto: u8, sport: u16) -> ReplyRule {
    ReplyRule {
        from: from.parse().expect("ip"),
        proto,
        sport,
    }
}

fn cbr0() -> Bridge {
    Bridge {
        name: "cbr0".into(),
        mac: "02:00:0a:f4:01:01".into(),
        ports: vec!["vp0".into(), "vp1".into()],
    }
}

#[test]
fn bridge_table_redirects_backend_replies_to_the_ip_stack() {
    let rules: BTreeSet<ReplyRule> = [
        rule("10.244.1.10", PROTO_TCP, 8080),
        rule("10.244.1.11", PROTO_UDP, 53),
        rule("fd00::10", PROTO_TCP, 8080),
    ]
    .into_iter()
    .collect();
    let text = bridges::render(&[cbr0()], &rules);
    assert!(text.starts_with(
        "table bridge kproxy_userspace\ndelete table bridge kproxy_userspace\ntable bridge kproxy_userspace {\n"
    ));
    assert!(text.contains("type ipv4_addr . inet_proto . inet_service"));
    assert!(text.contains("elements = { 10.244.1.10 . 6 . 8080, 10.244.1.11 . 17 . 53 }"));
    assert!(text.contains("elements = { fd00::10 . 6 . 8080 }"));
    assert!(text.contains(
        "iifname { \"vp0\", \"vp1\" } ip saddr . meta l4proto . th sport @replies4 ether daddr set 02:00:0a:f4:01:01 meta pkttype set host"
    ));
    assert!(text.contains("ip6 saddr . meta l4proto . th sport @replies6"));
    assert!(text.contains("hook prerouting priority -300; policy accept;"));
}

#[test]
fn bridge_table_is_only_deleted_without_bridges_or_rules() {
    let delete = "table bridge kproxy_userspace\ndelete table bridge kproxy_userspace\n";
    let rules: BTreeSet<ReplyRule> = [rule("10.244.1.10", PROTO_TCP, 8080)].into_iter().collect();
    assert_eq!(bridges::render(&[], &rules), delete);
    assert_eq!(bridges::render(&[cbr0()], &BTreeSet::new()), delete);
    // One family only: no rule for the other.
    let text = bridges::render(&[cbr0()], &rules);
    assert!(!text.contains("ip6 saddr"));
    assert!(!text.contains("elements = {  }"));
}

#[test]
fn backend_changes_are_element_changes_of_the_same_table() {
    let one: BTreeSet<ReplyRule> = [rule("10.244.1.10", PROTO_TCP, 8080)].into_iter().collect();
    let two: BTreeSet<ReplyRule> = [
        rule("10.244.1.10", PROTO_TCP, 8080),
        rule("fd00::11", PROTO_UDP, 53),
    ]
    .into_iter()
    .collect();
    assert_eq!(bridges::families(&one), (true, false));
    assert_eq!(bridges::families(&two), (true, true));
    assert_eq!(
        bridges::elements("add", two.difference(&one)),
        "add element bridge kproxy_userspace replies6 { fd00::11 . 17 . 53 }\n"
    );
    assert_eq!(
        bridges::elements("delete", one.iter()),
        "delete element bridge kproxy_userspace replies4 { 10.244.1.10 . 6 . 8080 }\n"
    );
}
