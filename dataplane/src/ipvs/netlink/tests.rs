//! Round trips of the IPVS netlink layer: value → attributes → bytes → attributes → value.

use std::net::IpAddr;

use netlink_packet_core::{Emitable, ParseableParametrized};
use netlink_packet_generic::GenlHeader;
use proptest::prelude::*;

use super::consts::*;
use super::{Destination, IpvsAttr, IpvsCmd, IpvsMessage, Service, ServiceKey, Timeouts};

fn roundtrip(msg: &IpvsMessage) -> IpvsMessage {
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.emit(&mut buf);
    let header = GenlHeader {
        cmd: msg.cmd.into(),
        version: IPVS_GENL_VERSION,
    };
    IpvsMessage::parse_with_param(&buf, header).expect("decode what was encoded")
}

fn addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

fn scheduler() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "rr", "wrr", "lc", "wlc", "sh", "dh", "sed", "nq", "mh",
    ])
    .prop_map(str::to_string)
}

proptest! {
    #[test]
    fn service_roundtrip(
        addr in addr(),
        port: u16,
        udp: bool,
        sched in scheduler(),
        timeout in proptest::option::of(1u32..86400),
    ) {
        let protocol = if udp { IPPROTO_UDP } else { IPPROTO_TCP };
        let key = ServiceKey::Addr { protocol, addr, port };
        let mut svc = Service::new(key, sched);
        if let Some(t) = timeout {
            svc = svc.with_persistence(t);
        }
        let msg = IpvsMessage::new(IpvsCmd::NewService, vec![IpvsAttr::Service(svc.to_attrs())]);
        let back = roundtrip(&msg);
        prop_assert_eq!(&back, &msg);
        let attrs = back.service_attrs().expect("service attrs");
        prop_assert_eq!(Service::from_attrs(attrs).expect("service"), svc);
    }

    #[test]
    fn destination_roundtrip(
        svc_addr in addr(),
        addr in addr(),
        port: u16,
        weight in 0u32..1000,
        u_thresh: u32,
        l_thresh: u32,
    ) {
        let key = ServiceKey::Addr { protocol: IPPROTO_TCP, addr: svc_addr, port: 80 };
        let dest = Destination { weight, u_thresh, l_thresh, ..Destination::masq(addr, port) };
        let msg = IpvsMessage::new(
            IpvsCmd::NewDest,
            vec![IpvsAttr::Service(key.to_attrs()), IpvsAttr::Dest(dest.to_attrs())],
        );
        let back = roundtrip(&msg);
        prop_assert_eq!(&back, &msg);
        let d = Destination::from_attrs(key.af(), back.dest_attrs().expect("dest")).expect("dest");
        prop_assert_eq!(d, dest);
        prop_assert_eq!(ServiceKey::from_attrs(back.service_attrs().expect("svc")).expect("key"), key);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), cmd: u8) {
        let header = GenlHeader { cmd, version: IPVS_GENL_VERSION };
        let _ = IpvsMessage::parse_with_param(&bytes, header);
    }
}

#[test]
fn fwmark_key_roundtrip() {
    let key = ServiceKey::Fwmark {
        af: AF_INET,
        mark: 0x4000,
    };
    let svc = Service::new(key, "wrr");
    assert_eq!(Service::from_attrs(&svc.to_attrs()).expect("decode"), svc);
    assert_eq!(key.to_string(), "FWM 16384");
}

proptest! {
    #[test]
    fn config_roundtrip(tcp: u32, tcp_fin: u32, udp: u32, reply: bool) {
        let timeouts = Timeouts { tcp, tcp_fin, udp };
        let cmd = if reply { IpvsCmd::SetConfig } else { IpvsCmd::GetConfig };
        let msg = IpvsMessage::new(cmd, timeouts.to_attrs());
        let back = roundtrip(&msg);
        prop_assert_eq!(&back, &msg);
        prop_assert_eq!(Timeouts::from_attrs(&back.attrs), timeouts);
    }
}

#[test]
fn set_config_sends_only_nonzero_timeouts() {
    let only_udp = Timeouts {
        udp: 300,
        ..Timeouts::default()
    };
    assert_eq!(only_udp.to_attrs(), vec![IpvsAttr::TimeoutUdp(300)]);
    assert!(Timeouts::default().to_attrs().is_empty());
    assert!(Timeouts::default().is_unchanged());
    let msg = IpvsMessage::new(IpvsCmd::SetConfig, only_udp.to_attrs());
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.emit(&mut buf);
    // nla_len 8, nla_type IPVS_CMD_ATTR_TIMEOUT_UDP (6), u32 300 in host order.
    let mut want = vec![8, 0, 6, 0];
    want.extend_from_slice(&300u32.to_ne_bytes());
    assert_eq!(buf, want);
}

#[test]
fn config_command_numbers_match_the_uapi_header() {
    assert_eq!(u8::from(IpvsCmd::SetConfig), 12);
    assert_eq!(u8::from(IpvsCmd::GetConfig), 13);
    assert_eq!(IpvsCmd::from(12), IpvsCmd::SetConfig);
    assert_eq!(IpvsCmd::from(13), IpvsCmd::GetConfig);
    assert_eq!(IpvsCmd::from(14), IpvsCmd::SetInfo);
}

#[test]
fn timeout_attrs_are_not_read_from_info_replies() {
    // In a GET_INFO reply, attribute 4 is not a timeout (the info attribute space).
    let mut buf = vec![8, 0, 4, 0];
    buf.extend_from_slice(&7u32.to_ne_bytes());
    let header = GenlHeader {
        cmd: CMD_SET_INFO,
        version: IPVS_GENL_VERSION,
    };
    let msg = IpvsMessage::parse_with_param(&buf, header).expect("decode");
    assert!(matches!(msg.attrs.as_slice(), [IpvsAttr::Other(_)]));
}
