//! Conntrack cleanup against the real kernel, in throwaway network namespaces (needs root;
//! skipped otherwise).
//!
//! - `netlink_dump_and_delete`: entries made with `conntrack -I` come back from a filtered
//!   dump and are deleted by original tuple.
//! - `udp_flow_moves_to_the_new_endpoint`: a UDP client keeps one source port towards a
//!   service IP DNATed by `iptables-nft`; after the endpoint is replaced the flow stays on the
//!   old one (asserted, so the test can fail), and after `cleanup_stale` the next datagram
//!   reaches the new one.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use kproxy_dataplane::conntrack::{ConntrackSocket, cleanup_stale};
use kproxy_dataplane::fixtures::{endpoint, plan_on, service, single_family_node, with_endpoints};
use kproxy_dataplane::plan::*;

mod support;

use support::{Netns, require_root, sh};

/// `ns/dns:dns`, UDP on `cluster_ip:port`.
fn udp_service(cluster_ip: &str, port: u16, endpoints: &[&str]) -> ServicePortPlan {
    let mut svc = service("ns", "dns", "dns", cluster_ip, port);
    svc.name.protocol = Protocol::Udp;
    with_endpoints(svc, endpoints.iter().map(|e| endpoint(e, true)).collect())
}

/// The services on node `node` (10.77.1.1).
fn plan(services: Vec<ServicePortPlan>) -> ProxyPlan {
    plan_on(single_family_node("node", "10.77.1.1"), services)
}

#[test]
fn netlink_dump_and_delete() {
    require_root();
    let ns = Netns::new("nl");
    // A stale UDP entry (DNATed to 10.244.1.5), a current one, a TCP one, an IPv6 one.
    for args in [
        "-p udp -s 10.0.0.1 -d 10.96.0.10 --sport 40000 --dport 53 -r 10.244.1.5 -q 10.0.0.1 --reply-port-src 5353 --reply-port-dst 40000",
        "-p udp -s 10.0.0.1 -d 10.96.0.10 --sport 40001 --dport 53 -r 10.244.1.6 -q 10.0.0.1 --reply-port-src 5353 --reply-port-dst 40001",
        "-p tcp -s 10.0.0.1 -d 10.96.0.10 --sport 40002 --dport 53 -r 10.244.1.5 -q 10.0.0.1 --reply-port-src 5353 --reply-port-dst 40002 --state ESTABLISHED",
        "-p udp -s fd00::1 -d fd00:96::a --sport 40003 --dport 53 -r fd00:244::5 -q fd00::1 --reply-port-src 5353 --reply-port-dst 40003",
    ] {
        let mut cmd = vec!["conntrack", "-I", "-t", "120", "-u", "SEEN_REPLY"];
        cmd.extend(args.split(' '));
        ns.exec(&cmd);
    }
    let (udp4, all4, udp6) = ns.run(|| {
        let mut s = ConntrackSocket::open().expect("socket");
        (
            s.dump(IpFamily::V4, Some(Protocol::Udp)).expect("dump"),
            s.dump(IpFamily::V4, None).expect("dump"),
            s.dump(IpFamily::V6, Some(Protocol::Udp)).expect("dump"),
        )
    });
    assert_eq!(udp4.len(), 2, "{udp4:?}");
    assert!(udp4.iter().all(|f| f.protocol == Protocol::Udp));
    assert_eq!(all4.len(), 3, "{all4:?}");
    assert_eq!(udp6.len(), 1, "{udp6:?}");
    assert_eq!(
        udp6[0].reply.src,
        "[fd00:244::5]:5353".parse::<SocketAddr>().unwrap()
    );

    // The kernel itself applies the protocol filter (no EINVAL fallback on this kernel).
    let raw = ns.run(|| {
        use kproxy_dataplane::conntrack::netlink::{Reply, decode_replies, encode_dump_request};
        let mut s = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_NETFILTER).unwrap();
        s.bind_auto().unwrap();
        s.send(
            &encode_dump_request(IpFamily::V4, Some(Protocol::Udp), 1),
            0,
        )
        .unwrap();
        let (mut entries, mut buf) = (Vec::new(), vec![0u8; 1 << 16]);
        loop {
            let n = s.recv(&mut &mut buf[..], 0).unwrap();
            for (_, reply) in decode_replies(&buf[..n]).unwrap() {
                match reply {
                    Reply::Entry(flow) => entries.push(flow.expect("udp flow")),
                    Reply::Done => return entries,
                    other => panic!("kernel answered {other:?}"),
                }
            }
        }
    });
    assert_eq!(raw.len(), 2, "{raw:?}");

    // The plan has 10.244.1.6 only: the entry DNATed to .5 goes, the others stay.
    let p = plan(vec![udp_service("10.96.0.10", 53, &["10.244.1.6:5353"])]);
    let report = ns
        .run(move || cleanup_stale(&p, IpFamily::V4))
        .expect("cleanup");
    assert_eq!(
        (report.flows_seen, report.stale, report.deleted),
        (2, 1, 1),
        "{report:?}"
    );
    let left = ns.exec(&["conntrack", "-L"]);
    assert!(!left.contains("sport=40000 "), "{left}");
    assert!(left.contains("sport=40001 "), "{left}");
    assert!(left.contains("sport=40002 "), "{left}");
    let left6 = ns.exec(&["conntrack", "-L", "-f", "ipv6"]);
    assert!(left6.contains("sport=40003 "), "{left6}");

    // IPv6: the entry DNATed to fd00:244::5 is stale once the plan says fd00:244::6.
    let mut p6 = plan(vec![udp_service("fd00:96::a", 53, &["[fd00:244::6]:5353"])]);
    p6.node.ipv6 = Some(FamilyContext::default());
    let report = ns
        .run(move || cleanup_stale(&p6, IpFamily::V6))
        .expect("cleanup v6");
    assert_eq!((report.flows_seen, report.deleted), (1, 1), "{report:?}");
    let left6 = ns.exec(&["conntrack", "-L", "-f", "ipv6"]);
    assert!(!left6.contains("sport=40003 "), "{left6}");

    // Deleting an entry that is already gone is not an error.
    let mut gone = kproxy_dataplane::conntrack::filter(
        &plan(vec![udp_service("10.96.0.10", 53, &["10.244.1.6:5353"])]),
        IpFamily::V4,
        &udp4,
    );
    assert_eq!(gone.len(), 1);
    gone.push(gone[0].clone());
    let outcome = ns.run(move || ConntrackSocket::open().expect("socket").delete(&gone));
    assert_eq!(
        (outcome.deleted, outcome.already_gone),
        (0, 2),
        "{outcome:?}"
    );
    assert!(outcome.errors.is_empty());
}

/// Answers every datagram with `name` until `stop`.
fn echo_server(
    addr: SocketAddr,
    name: &'static str,
    stop: Arc<AtomicBool>,
    ready: mpsc::Sender<()>,
) {
    let sock = UdpSocket::bind(addr).expect("bind server");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    ready.send(()).unwrap();
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((_, peer)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(name.as_bytes(), peer);
        }
    }
}

/// Sends one datagram to the service from the client socket and returns who answered.
fn ask(client: &UdpSocket, service: SocketAddr) -> Option<String> {
    let mut buf = [0u8; 64];
    for _ in 0..3 {
        client.send_to(b"who", service).expect("send");
        if let Ok((n, _)) = client.recv_from(&mut buf) {
            return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    None
}

fn dnat(node: &Netns, to: &str) {
    node.exec(&["iptables-nft", "-t", "nat", "-F", "KPCT"]);
    node.exec(&[
        "iptables-nft",
        "-t",
        "nat",
        "-A",
        "KPCT",
        "-d",
        "10.96.7.7/32",
        "-p",
        "udp",
        "--dport",
        "53",
        "-j",
        "DNAT",
        "--to-destination",
        to,
    ]);
}

#[test]
fn udp_flow_moves_to_the_new_endpoint() {
    require_root();
    let node = Netns::new("node");
    let pods = Netns::new("pods");
    // The pair is created inside the test's own namespaces: fixed names cannot collide.
    let (a, b) = ("to-pods".to_owned(), "to-node".to_owned());
    sh(&[
        "ip",
        "link",
        "add",
        &a,
        "netns",
        node.name(),
        "type",
        "veth",
        "peer",
        "name",
        &b,
        "netns",
        pods.name(),
    ]);
    node.exec(&["ip", "addr", "add", "10.77.1.1/24", "dev", &a]);
    node.exec(&["ip", "link", "set", &a, "up"]);
    node.exec(&["ip", "route", "add", "10.96.0.0/16", "dev", &a]);
    pods.exec(&["ip", "addr", "add", "10.77.1.2/24", "dev", &b]);
    pods.exec(&["ip", "addr", "add", "10.77.1.3/24", "dev", &b]);
    pods.exec(&["ip", "link", "set", &b, "up"]);
    node.exec(&["iptables-nft", "-t", "nat", "-N", "KPCT"]);
    node.exec(&["iptables-nft", "-t", "nat", "-A", "OUTPUT", "-j", "KPCT"]);

    // Two endpoints, both alive the whole time: "old" must keep answering for the stuck flow
    // to be visible as a positive fact rather than as a timeout.
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let servers: Vec<_> = [("10.77.1.2:5353", "old"), ("10.77.1.3:5353", "new")]
        .into_iter()
        .map(|(addr, name)| {
            let (stop, tx) = (stop.clone(), tx.clone());
            let addr: SocketAddr = addr.parse().unwrap();
            pods.spawn(move || echo_server(addr, name, stop, tx))
        })
        .collect();
    for _ in 0..2 {
        rx.recv_timeout(Duration::from_secs(5)).expect("server up");
    }

    let service: SocketAddr = "10.96.7.7:53".parse().unwrap();
    let client = node.run(|| {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind client");
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        s
    });
    let client_port = client.local_addr().unwrap().port();

    dnat(&node, "10.77.1.2:5353");
    assert_eq!(ask(&client, service).as_deref(), Some("old"));

    // The endpoint is replaced: rules now DNAT to "new", the plan says so too.
    dnat(&node, "10.77.1.3:5353");
    let next = plan(vec![udp_service("10.96.7.7", 53, &["10.77.1.3:5353"])]);
    assert_eq!(
        ask(&client, service).as_deref(),
        Some("old"),
        "without cleanup the flow from port {client_port} should still be stuck on the old endpoint"
    );

    let report = node
        .run(move || cleanup_stale(&next, IpFamily::V4))
        .expect("cleanup");
    assert_eq!(report.deleted, 1, "{report:?}");
    assert_eq!(client.local_addr().unwrap().port(), client_port);
    assert_eq!(ask(&client, service).as_deref(), Some("new"));

    // The fresh flow to the new endpoint is not stale: a second cleanup keeps it.
    let next = plan(vec![udp_service("10.96.7.7", 53, &["10.77.1.3:5353"])]);
    let report = node
        .run(move || cleanup_stale(&next, IpFamily::V4))
        .expect("cleanup");
    assert_eq!((report.stale, report.deleted), (0, 0), "{report:?}");
    assert_eq!(ask(&client, service).as_deref(), Some("new"));

    stop.store(true, Ordering::Relaxed);
    for s in servers {
        s.join().unwrap();
    }
}

#[test]
fn deletes_hundreds_of_stale_entries_in_batches() {
    require_root();
    const N: u16 = 700;
    let ns = Netns::new("many");
    // One exec for all inserts: a shell loop inside the namespace.
    let script = format!(
        "for p in $(seq 20000 {}); do conntrack -I -p udp -s 10.0.0.1 -d 10.96.0.10 --sport $p \
         --dport 53 -r 10.244.1.5 -q 10.0.0.1 --reply-port-src 5353 --reply-port-dst $p \
         -t 120 -u SEEN_REPLY >/dev/null 2>&1 || exit 1; done",
        20000 + N - 1
    );
    ns.exec(&["sh", "-c", &script]);
    let p = plan(vec![udp_service("10.96.0.10", 53, &["10.244.1.6:5353"])]);
    let report = ns
        .run(move || cleanup_stale(&p, IpFamily::V4))
        .expect("cleanup");
    let n = usize::from(N);
    assert_eq!(
        (report.flows_seen, report.stale, report.deleted),
        (n, n, n),
        "{report:?}"
    );
    let left = ns.run(|| {
        ConntrackSocket::open()
            .expect("socket")
            .dump(IpFamily::V4, None)
            .expect("dump")
    });
    assert!(left.is_empty(), "{} entries left", left.len());
}
