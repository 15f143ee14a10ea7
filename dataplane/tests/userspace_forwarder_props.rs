//! Property tests of the forwarder as a whole: every new flow goes to a backend of its
//! service, and the backend's reply is translated back to exactly the client's view.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use kproxy_dataplane::fixtures::{
    self, detecting_pods, endpoint, plan_on, service_at, single_family_node, with_endpoints,
};
use kproxy_dataplane::lb::Algorithm;
use kproxy_dataplane::plan::{Protocol, ProxyPlan};
use kproxy_dataplane::userspace::conntrack::{Direction, TcpState, next_tcp_state};
use kproxy_dataplane::userspace::forwarder::{Action, Forwarder, ForwarderConfig};
use kproxy_dataplane::userspace::packet::{
    PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, parse,
};
use kproxy_dataplane::userspace::services::ServiceTable;
use proptest::prelude::*;

fn packet(src: SocketAddr, dst: SocketAddr, proto: u8, flags: u8) -> Vec<u8> {
    fixtures::packet(src, dst, proto, flags, &[])
}

/// Service `i` is `10.96.0.i:80+i`, TCP when `i` is even, with `n` endpoints
/// `10.244.(i+1).k:8000+k`, the even ones local.
fn plan(sizes: &[usize]) -> ProxyPlan {
    let services = sizes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let protocol = if i % 2 == 0 {
                Protocol::Tcp
            } else {
                Protocol::Udp
            };
            let vip = format!("10.96.0.{}:{}", i + 1, 80 + i);
            let endpoints = (0..*n)
                .map(|k| {
                    endpoint(
                        &format!("10.244.{}.{}:{}", i + 1, k + 1, 8000 + k),
                        k % 2 == 0,
                    )
                })
                .collect();
            with_endpoints(
                service_at("ns", &format!("svc{i}"), protocol, &vip),
                endpoints,
            )
        })
        .collect();
    plan_on(
        detecting_pods(single_family_node("n", "192.168.0.1"), "10.244.0.0/16"),
        services,
    )
}

fn algorithm() -> impl Strategy<Value = Algorithm> {
    prop::sample::select(Algorithm::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// DNAT goes to an endpoint of the addressed service, and the reply comes back as
    /// service → client, whether or not the client was masqueraded.
    #[test]
    fn round_trip(
        sizes in prop::collection::vec(0usize..5, 1..6),
        flows in prop::collection::vec((any::<prop::sample::Index>(), any::<bool>(), 1024u16..65535, any::<u8>()), 1..40),
        algorithm in algorithm(),
    ) {
        let p = plan(&sizes);
        let config = ForwarderConfig { masquerade_v4: Some("169.254.42.1".parse().expect("ip")), ..ForwarderConfig::default() };
        let mut fw = Forwarder::new(config, ServiceTable::build(&p, algorithm, 9));
        let mut reply = [0u8; 1500];
        let now = Duration::from_secs(5);
        for (which, from_pod, port, host) in flows {
            let i = which.index(sizes.len());
            let svc = &p.services[i];
            let proto = if i % 2 == 0 { PROTO_TCP } else { PROTO_UDP };
            let vip = SocketAddr::new(svc.cluster_ip, svc.port);
            let client = SocketAddr::new(
                if from_pod { IpAddr::V4(Ipv4Addr::new(10, 244, 200, host)) } else { IpAddr::V4(Ipv4Addr::new(172, 16, 0, host)) },
                port,
            );
            let mut pkt = packet(client, vip, proto, TCP_SYN);
            match fw.process(&mut pkt, &mut reply, now) {
                Action::Forward => {
                    let out = parse(&pkt).expect("parses");
                    prop_assert!(svc.cluster_endpoints.iter().any(|e| e.addr == out.destination()));
                    prop_assert_eq!(out.source() == client, from_pod, "masquerade iff off-cluster");
                    let mut back = packet(out.destination(), out.source(), proto, TCP_SYN | TCP_ACK);
                    prop_assert_eq!(fw.process(&mut back, &mut reply, now), Action::Forward);
                    let r = parse(&back).expect("parses");
                    prop_assert_eq!((r.source(), r.destination()), (vip, client));
                }
                Action::Reply(_) => prop_assert!(svc.cluster_endpoints.is_empty()),
                Action::Drop => {
                    // Only a port clash with an earlier flow of the same client may drop.
                    prop_assert!(!svc.cluster_endpoints.is_empty());
                }
            }
        }
    }

    /// The TCP state machine only moves forward through a connection's life and RST always
    /// closes.
    #[test]
    fn tcp_states_are_sane(steps in prop::collection::vec((any::<bool>(), prop::sample::select(vec![TCP_SYN, TCP_SYN | TCP_ACK, TCP_ACK, TCP_FIN | TCP_ACK, TCP_RST])), 0..30)) {
        let rank = |s: TcpState| match s {
            TcpState::SynSent => 0, TcpState::SynRecv => 1, TcpState::Established => 2,
            TcpState::FinWait => 3, TcpState::TimeWait => 4, TcpState::Close => 5,
        };
        let mut state = TcpState::SynSent;
        for (reply, flags) in steps {
            let dir = if reply { Direction::Reply } else { Direction::Original };
            let next = next_tcp_state(state, dir, flags);
            if flags & TCP_RST != 0 {
                prop_assert_eq!(next, TcpState::Close);
            } else if next != state && next != TcpState::SynSent {
                prop_assert!(rank(next) > rank(state), "{state:?} -> {next:?}");
            }
            state = next;
        }
    }
}
