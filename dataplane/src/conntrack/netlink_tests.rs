//! Encoding and decoding tests. The byte vectors were captured on Debian 12 (Linux 6.18,
//! conntrack-tools 1.4.7) with `strace -e read=3 -e write=3,4` around `conntrack -L -p udp`,
//! `conntrack -L -f ipv6` and `conntrack -D` of entries made with `conntrack -I` in a
//! scratch network namespace.

use super::*;
/// `NLM_F_MULTI`.
const NLM_F_MULTI: u16 = 2;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// `conntrack -L -p udp -f ipv4` request.
const DUMP_REQUEST_V4: &str = "14000000 01010103 1cea046b 00000000 02000000";
/// Its answer: one entry
/// `udp 17 59 src=10.0.0.1 dst=10.96.0.10 sport=40000 dport=53 src=10.244.1.5 dst=10.0.0.1
/// sport=5353 dport=40000`.
const ENTRY_V4: &str = "c0000000000122001cea046b050c0000020000003400018014000180080001000a000001080002000a60000a1c0002800500010011000000060002009c40000006000300003500003400028014000180080001000af40105080002000a0000011c00028005000100110000000600020014e90000060003009c400000080003000000000a080008000000000008000c00d123c18e08000b000000000108000700000000371c001880080001000000000008000200000000000800030000000000";
/// The end of that dump.
const DONE: &str = "14000000030002001cea046b050c000000000000";
/// `conntrack -L -f ipv6`: `src=fd00::1 dst=fd00:96::a sport=40001 dport=53 src=fd00:244::5
/// dst=fd00::1 sport=5353 dport=40001`.
const ENTRY_V6: &str = "f00000000001220020ea046b7a0e00000a0000004c0001802c00018014000300fd00000000000000000000000000000114000400fd00009600000000000000000000000a1c0002800500010011000000060002009c41000006000300003500004c0002802c00018014000300fd00024400000000000000000000000514000400fd0000000000000000000000000000011c00028005000100110000000600020014e90000060003009c410000080003000000000a080008000000000008000c006f1c03d908000b0000000001080007000000003b1c001880080001000000000008000200000000000800030000000000";
/// `conntrack -D -p udp -s 10.0.0.1 -d 10.96.0.10 --sport 40000 --dport 53` (the tool sends
/// the whole entry it found; the original tuple comes first).
const DELETE_V4: &str = "b00000000201050020ea046b00000000020000003400018014000180080001000a000001080002000a60000a1c0002800500010011000000060002009c40000006000300003500003400028014000180080001000af40105080002000a0000011c00028005000100110000000600020014e90000060003009c400000080003000000000a080007000000003b08000800000000001c001880080001000000000008000200000000000800030000000000";

fn flow_v4() -> Flow {
    Flow {
        protocol: Protocol::Udp,
        original: FlowTuple {
            src: sa("10.0.0.1:40000"),
            dst: sa("10.96.0.10:53"),
        },
        reply: FlowTuple {
            src: sa("10.244.1.5:5353"),
            dst: sa("10.0.0.1:40000"),
        },
        zone: 0,
    }
}

fn to_delete(flow: Flow) -> FlowToDelete {
    FlowToDelete {
        flow,
        service: crate::plan::ServicePortName {
            namespace: "ns".into(),
            name: "svc".into(),
            port: String::new(),
            protocol: flow.protocol,
        },
        frontend: super::super::Frontend::ServiceIp(flow.original.dst),
    }
}

#[test]
fn unfiltered_dump_request_matches_conntrack_tool() {
    assert_eq!(
        encode_dump_request(IpFamily::V4, None, 0x6b04_ea1c),
        hex(DUMP_REQUEST_V4)
    );
}

#[test]
fn filtered_dump_request_layout() {
    let req = encode_dump_request(IpFamily::V6, Some(Protocol::Udp), 9);
    let mut want = hex("30000000 01010103 09000000 00000000 0a000000");
    // CTA_TUPLE_ORIG { CTA_TUPLE_PROTO { CTA_PROTO_NUM = 17 } }
    want.extend(hex("10000180 0c000280 05000100 11000000"));
    // CTA_FILTER { CTA_FILTER_ORIG_FLAGS = CTA_FILTER_FLAG(CTA_PROTO_NUM) }
    want.extend(hex("0c001980 08000100 08000000"));
    assert_eq!(req, want);
}

#[test]
fn decodes_a_captured_ipv4_entry_and_done() {
    let mut buf = hex(ENTRY_V4);
    buf.extend(hex(DONE));
    let replies = decode_replies(&buf).expect("decodes");
    assert_eq!(replies.len(), 2);
    assert_eq!(replies[0].0, 0x6b04_ea1c);
    match &replies[0].1 {
        Reply::Entry(Some(flow)) => assert_eq!(*flow, flow_v4()),
        other => panic!("not an entry: {other:?}"),
    }
    assert!(matches!(replies[1].1, Reply::Done));
}

#[test]
fn decodes_a_captured_ipv6_entry() {
    let replies = decode_replies(&hex(ENTRY_V6)).expect("decodes");
    let Reply::Entry(Some(flow)) = &replies[0].1 else {
        panic!("not an entry: {:?}", replies[0].1)
    };
    assert_eq!(flow.protocol, Protocol::Udp);
    assert_eq!(flow.original.src, sa("[fd00::1]:40001"));
    assert_eq!(flow.original.dst, sa("[fd00:96::a]:53"));
    assert_eq!(flow.reply.src, sa("[fd00:244::5]:5353"));
    assert_eq!(flow.reply.dst, sa("[fd00::1]:40001"));
    assert_eq!(flow.family(), IpFamily::V6);
}

#[test]
fn delete_is_the_tools_original_tuple() {
    let tool = hex(DELETE_V4);
    let ours = encode_delete(&flow_v4(), 0x6b04_ea20);
    // Header (length differs: we send the original tuple only), nfgenmsg, CTA_TUPLE_ORIG.
    assert_eq!(ours.len(), 16 + 4 + 52);
    assert_eq!(&ours[4..], &tool[4..ours.len()]);
    assert_eq!(u32::from_ne_bytes(ours[..4].try_into().unwrap()), 72);
    // And the tool's full message decodes to the same flow.
    let msg = NetlinkMessage::<NetfilterMessage>::deserialize(&tool).expect("decodes");
    let NetlinkPayload::InnerMessage(NetfilterMessage {
        inner: NetfilterMessageInner::Conntrack(ConntrackMessage::Delete(attrs)),
        ..
    }) = msg.payload
    else {
        panic!("not a conntrack delete: {msg:?}")
    };
    assert_eq!(decode_flow(&attrs), Some(flow_v4()));
}

#[test]
fn delete_carries_a_non_default_zone() {
    let flow = Flow {
        zone: 3,
        ..flow_v4()
    };
    let bytes = encode_delete(&flow, 1);
    assert_eq!(&bytes[72..], &hex("06001200 00030000")[..]);
    assert_eq!(
        u32::from_ne_bytes(bytes[..4].try_into().unwrap()) as usize,
        bytes.len()
    );
}

#[test]
fn acks_and_errors_are_matched_by_sequence() {
    // NLMSG_ERROR, NLM_F_CAPPED: error 0 for seq 7, -ENOENT for seq 8, -EPERM for seq 9.
    let mut buf = Vec::new();
    for (seq, errno) in [(7u32, 0i32), (8, -2), (9, -1)] {
        buf.extend(hex("24000000 02000001"));
        buf.extend(seq.to_ne_bytes());
        buf.extend(hex("00000000"));
        buf.extend(errno.to_ne_bytes());
        buf.extend(hex("48000000 02010500"));
        buf.extend(seq.to_ne_bytes());
        buf.extend(hex("00000000"));
    }
    let replies = decode_replies(&buf).expect("decodes");
    let acks: Vec<(u32, Option<i32>)> = replies
        .into_iter()
        .map(|(s, r)| match r {
            Reply::Ack(code) => (s, code),
            other => panic!("not an ack: {other:?}"),
        })
        .collect();
    assert_eq!(acks, vec![(7, None), (8, Some(2)), (9, Some(1))]);
}

#[test]
fn truncated_buffer_is_an_error() {
    let buf = hex(ENTRY_V4);
    assert!(decode_replies(&buf[..100]).is_err());
}

#[test]
fn entries_without_ports_are_skipped() {
    // An ICMP entry: protocol 1, no ports.
    let attrs = vec![
        ConntrackAttribute::CtaTupleOrig(vec![
            Tuple::Ip(vec![
                IPTuple::SourceAddress("10.0.0.1".parse().unwrap()),
                IPTuple::DestinationAddress("10.0.0.2".parse().unwrap()),
            ]),
            Tuple::Proto(vec![ProtoTuple::Protocol(1u8.into())]),
        ]),
        ConntrackAttribute::CtaTupleReply(vec![]),
    ];
    assert_eq!(decode_flow(&attrs), None);
}

#[test]
fn new_message_round_trips_through_decode() {
    // What the kernel sends in a dump is IPCTNL_MSG_CT_NEW with both tuples: encode one with
    // the crate, decode it with ours.
    for flow in [
        flow_v4(),
        Flow {
            protocol: Protocol::Sctp,
            zone: 9,
            original: FlowTuple {
                src: sa("[fd00::1]:1"),
                dst: sa("[fd00:96::a]:65535"),
            },
            reply: FlowTuple {
                src: sa("[fd00:244::5]:36412"),
                dst: sa("[fd00::1]:1"),
            },
        },
    ] {
        let attrs = vec![
            ConntrackAttribute::CtaTupleOrig(tuple_attrs(flow.protocol, &flow.original)),
            ConntrackAttribute::CtaTupleReply(tuple_attrs(flow.protocol, &flow.reply)),
            ConntrackAttribute::Other(DefaultNla::new(CTA_ZONE, flow.zone.to_be_bytes().to_vec())),
        ];
        let mut bytes = serialize(flow.family(), ConntrackMessage::New(attrs), NLM_F_MULTI, 4);
        bytes.extend(hex(DONE));
        let replies = decode_replies(&bytes).expect("decodes");
        match &replies[0] {
            (4, Reply::Entry(Some(got))) => assert_eq!(*got, flow),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn delete_batches_are_concatenated_messages() {
    // What delete_batch sends: every message parses back, in order, with its own sequence.
    let flows: Vec<FlowToDelete> = (0..5u16)
        .map(|i| {
            let mut f = flow_v4();
            f.original.src.set_port(40000 + i);
            to_delete(f)
        })
        .collect();
    let mut request = Vec::new();
    for (i, d) in flows.iter().enumerate() {
        request.extend(encode_delete(&d.flow, 100 + i as u32));
    }
    let mut offset = 0;
    let mut n = 0;
    while offset < request.len() {
        let msg =
            NetlinkMessage::<NetfilterMessage>::deserialize(&request[offset..]).expect("decodes");
        assert_eq!(msg.header.sequence_number, 100 + n);
        assert_eq!(msg.header.flags, NLM_F_REQUEST | NLM_F_ACK);
        offset += msg.header.length as usize;
        n += 1;
    }
    assert_eq!(n, 5);
}

mod props {
    use super::*;
    use proptest::prelude::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    fn addr(v6: bool, bits: u128, port: u16) -> SocketAddr {
        let ip = if v6 {
            IpAddr::V6(Ipv6Addr::from(bits))
        } else {
            IpAddr::V4(Ipv4Addr::from(bits as u32))
        };
        SocketAddr::new(ip, port)
    }

    proptest! {
        /// A delete message parses back to exactly the flow's original tuple and zone.
        #[test]
        fn delete_round_trips(
            v6 in any::<bool>(),
            a in any::<u128>(), b in any::<u128>(),
            sp in any::<u16>(), dp in any::<u16>(),
            sctp in any::<bool>(), zone in any::<u16>(),
        ) {
            let original = FlowTuple { src: addr(v6, a, sp), dst: addr(v6, b, dp) };
            let flow = Flow {
                protocol: if sctp { Protocol::Sctp } else { Protocol::Udp },
                original,
                reply: FlowTuple { src: original.dst, dst: original.src },
                zone,
            };
            let bytes = encode_delete(&flow, 1);
            let msg = NetlinkMessage::<NetfilterMessage>::deserialize(&bytes).expect("decodes");
            let NetlinkPayload::InnerMessage(NetfilterMessage {
                inner: NetfilterMessageInner::Conntrack(ConntrackMessage::Delete(mut attrs)),
                header,
                ..
            }) = msg.payload else { panic!("not a delete") };
            prop_assert_eq!(header.family, nf_family(flow.family()));
            // Add the reply tuple to reuse decode_flow.
            attrs.push(ConntrackAttribute::CtaTupleReply(tuple_attrs(flow.protocol, &flow.reply)));
            prop_assert_eq!(decode_flow(&attrs), Some(flow));
        }
    }
}
