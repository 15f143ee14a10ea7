//! Property tests of the userspace forwarder's packet code: incremental checksum updates
//! equal full recomputation for every rewrite of IPv4/IPv6 TCP/UDP packets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use kproxy_dataplane::fixtures::packet;
use kproxy_dataplane::userspace::checksum;
use kproxy_dataplane::userspace::packet::{
    PROTO_TCP, PROTO_UDP, PacketError, TCP_SYN, fill_checksums, parse, set_destination, set_source,
    transport_checksum,
};
use proptest::prelude::*;

/// A TCP SYN or UDP packet with valid checksums.
fn build(src: SocketAddr, dst: SocketAddr, proto: u8, payload: &[u8]) -> Vec<u8> {
    packet(src, dst, proto, TCP_SYN, payload)
}

fn v4() -> impl Strategy<Value = IpAddr> {
    any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o)))
}

fn v6() -> impl Strategy<Value = IpAddr> {
    any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o)))
}

/// Four addresses of one family.
fn quad() -> impl Strategy<Value = [IpAddr; 4]> {
    prop_oneof![
        (v4(), v4(), v4(), v4()).prop_map(|(a, b, c, d)| [a, b, c, d]),
        (v6(), v6(), v6(), v6()).prop_map(|(a, b, c, d)| [a, b, c, d]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// DNAT then SNAT with incremental updates gives the same bytes as rewriting and then
    /// recomputing every checksum from scratch.
    #[test]
    fn incremental_equals_full(
        addrs in quad(),
        ports in any::<[u16; 4]>(),
        tcp in any::<bool>(),
        payload in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let proto = if tcp { PROTO_TCP } else { PROTO_UDP };
        let src = SocketAddr::new(addrs[0], ports[0]);
        let dst = SocketAddr::new(addrs[1], ports[1]);
        let mut buf = build(src, dst, proto, &payload);
        let mut meta = parse(&buf).expect("parses");
        prop_assert_eq!(meta.source(), src);
        prop_assert_eq!(meta.destination(), dst);
        let backend = SocketAddr::new(addrs[2], ports[2]);
        let masq = SocketAddr::new(addrs[3], ports[3]);
        prop_assert!(set_destination(&mut buf, &mut meta, backend));
        prop_assert!(set_source(&mut buf, &mut meta, masq));
        let reparsed = parse(&buf).expect("rewritten packet parses");
        prop_assert_eq!(reparsed, meta);
        prop_assert_eq!(reparsed.destination(), backend);
        prop_assert_eq!(reparsed.source(), masq);
        let mut full = buf.clone();
        fill_checksums(&mut full, &reparsed);
        prop_assert_eq!(&buf, &full);
        // And the result verifies: the IPv4 header sums to zero, the transport checksum is
        // what a receiver computes.
        if addrs[0].is_ipv4() {
            prop_assert_eq!(checksum::checksum(&buf[..20]), 0);
        }
        let stored = u16::from_be_bytes([buf[meta.l4_offset + if tcp { 16 } else { 6 }], buf[meta.l4_offset + if tcp { 17 } else { 7 }]]);
        prop_assert_eq!(stored, transport_checksum(&buf, &meta));
    }

    /// RFC 1624 update of any word equals recomputation over arbitrary data.
    #[test]
    fn rfc1624_update_matches(mut data in prop::collection::vec(any::<u8>(), 2..128), at in any::<prop::sample::Index>(), new in any::<u16>()) {
        if data.len() % 2 == 1 { data.pop(); }
        let words = data.len() / 2;
        let i = at.index(words) * 2;
        let before = checksum::checksum(&data);
        let old = u16::from_be_bytes([data[i], data[i + 1]]);
        data[i..i + 2].copy_from_slice(&new.to_be_bytes());
        prop_assert_eq!(checksum::update_word(before, old, new), checksum::checksum(&data));
    }

    /// Parsing arbitrary bytes never panics.
    #[test]
    fn parse_never_panics(data in prop::collection::vec(any::<u8>(), 0..128)) {
        let _ = parse(&data);
    }
}

#[test]
fn rfc1071_example() {
    // RFC 1071 section 3: words 0001 f203 f4f5 f6f7 sum to ddf2 (checksum 220d).
    assert_eq!(
        checksum::checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
        0x220d
    );
}

#[test]
fn udp_without_checksum_keeps_zero() {
    let src = "10.0.0.1:1000".parse().expect("addr");
    let dst = "10.96.0.10:53".parse().expect("addr");
    let mut buf = build(src, dst, PROTO_UDP, b"hello");
    buf[26..28].copy_from_slice(&[0, 0]);
    let mut meta = parse(&buf).expect("parses");
    assert!(set_destination(
        &mut buf,
        &mut meta,
        "10.244.1.5:5353".parse().expect("addr")
    ));
    assert_eq!(&buf[26..28], &[0, 0]);
}

#[test]
fn later_fragments_and_garbage_are_rejected() {
    let mut buf = build(
        "10.0.0.1:1".parse().expect("addr"),
        "10.0.0.2:2".parse().expect("addr"),
        PROTO_UDP,
        b"x",
    );
    buf[6] = 0x00;
    buf[7] = 0x10;
    assert_eq!(parse(&buf), Err(PacketError::Fragment(128)));
    assert_eq!(parse(&[0x70]), Err(PacketError::Version(7)));
    assert!(matches!(
        parse(&[0x45, 0, 0, 10]),
        Err(PacketError::Truncated { .. })
    ));
}
