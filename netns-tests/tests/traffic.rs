//! The traffic generators against hand-built topologies with real packets (root only).
//!
//! - probes: pod `A` (10.1.0.2) → router `R` (10.1.0.1 | 10.2.0.1) → `B` (10.2.0.2), with a
//!   DNAT of 10.96.0.1 to B in R's `nat PREROUTING`. Captures on R's interface towards B see
//!   only B as destination; captures before the DNAT see the ClusterIP, so the check can fail.
//! - TUN client: a smoltcp stack behind a TUN device in `X`, connected by a veth to `S`
//!   running an echo server: whole connections, refusals, ICMP rejects, timeouts.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::time::{Duration, Instant};

use kproxy_netns_tests::echo::{EchoServer, ask};
use kproxy_netns_tests::netns::{Netns, unique_prefix, veth};
use kproxy_netns_tests::traffic::probe::{
    Capture, Direction, Probe, ProbeProtocol, Seen, capture_only, send_and_capture,
};
use kproxy_netns_tests::traffic::tcp_over_tun::{TcpFailure, TunClient};

const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 2);
const PROBES: usize = 20;

/// A → R → B with R DNATing 10.96.0.1:80/tcp to B:8080 and 10.96.0.1:53/udp to B:5353.
struct Routed {
    a: Netns,
    r: Netns,
    b: Netns,
}

fn routed() -> anyhow::Result<Routed> {
    let prefix = unique_prefix();
    let a = Netns::new(&format!("{prefix}a"))?;
    let r = Netns::new(&format!("{prefix}r"))?;
    let b = Netns::new(&format!("{prefix}b"))?;
    veth(&a, "eth0", "10.1.0.2/24", &r, "toa", "10.1.0.1/24")?;
    veth(&b, "eth0", "10.2.0.2/24", &r, "tob", "10.2.0.1/24")?;
    a.ip(&["route", "add", "default", "via", "10.1.0.1"])?;
    b.ip(&["route", "add", "default", "via", "10.2.0.1"])?;
    r.sysctl("net.ipv4.ip_forward=1")?;
    for (proto, port, to) in [
        ("tcp", "80", "10.2.0.2:8080"),
        ("udp", "53", "10.2.0.2:5353"),
    ] {
        r.exec(
            "iptables-nft",
            &[
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-d",
                "10.96.0.1",
                "-p",
                proto,
                "--dport",
                port,
                "-j",
                "DNAT",
                "--to-destination",
                to,
            ],
        )?;
    }
    Ok(Routed { a, r, b })
}

fn probe(from: &Netns, protocol: ProbeProtocol, port: u16) -> Probe<'_> {
    Probe {
        from,
        src: POD_A,
        dst: SocketAddrV4::new(CLUSTER_IP, port),
        protocol,
        count: PROBES,
    }
}

fn dnat_happens_on_the_router(protocol: ProbeProtocol, port: u16, endpoint: SocketAddrV4) {
    let net = routed().expect("topology");
    let probe = probe(&net.a, protocol, port);

    // Leaving R towards B: already DNATed, every probe, never the ClusterIP.
    let started = Instant::now();
    let seen = send_and_capture(&probe, &Capture::outgoing(&net.r, "tob")).expect("probe");
    eprintln!(
        "{protocol:?}: {PROBES} probes captured in {:?}",
        started.elapsed()
    );
    assert_eq!(seen.len(), PROBES, "every probe leaves R once: {seen:?}");
    assert!(seen.iter().all(|s| s.dst.ip() != &CLUSTER_IP), "{seen:?}");
    assert!(seen.iter().all(|s| s.dst == endpoint), "{seen:?}");
    assert!(
        seen.iter()
            .all(|s| s.src.ip() == &POD_A && s.protocol == protocol)
    );

    // Before the DNAT (leaving A, entering R) the destination is the ClusterIP: the capture
    // does tell the difference, so the assertions above can fail.
    for capture in [
        Capture::outgoing(&net.a, "eth0"),
        Capture::incoming(&net.r, "toa"),
    ] {
        let seen = send_and_capture(&probe, &capture).expect("probe");
        assert_eq!(seen.len(), PROBES, "{} {seen:?}", capture.interface);
        assert!(seen.iter().all(|s| s.dst == probe.dst), "{seen:?}");
    }
}

#[test]
fn tcp_syn_probes_are_dnated_before_leaving_the_router() {
    dnat_happens_on_the_router(ProbeProtocol::TcpSyn, 80, SocketAddrV4::new(POD_B, 8080));
}

#[test]
fn udp_probes_are_dnated_before_leaving_the_router() {
    dnat_happens_on_the_router(ProbeProtocol::Udp, 53, SocketAddrV4::new(POD_B, 5353));
}

#[test]
fn direction_filters_tell_arriving_from_leaving() {
    let net = routed().expect("topology");
    let probe = probe(&net.a, ProbeProtocol::TcpSyn, 80);
    // The probes arrive at R through `toa`; none of them is transmitted by it.
    let leaving = send_and_capture(&probe, &Capture::outgoing(&net.r, "toa")).expect("probe");
    assert!(leaving.is_empty(), "{leaving:?}");
    let both = Capture {
        direction: Direction::Both,
        ..Capture::incoming(&net.r, "toa")
    };
    let seen = send_and_capture(&probe, &both).expect("probe");
    assert_eq!(seen.len(), PROBES, "{seen:?}");
}

#[test]
fn probes_without_a_dnat_rule_never_reach_b() {
    let net = routed().expect("topology");
    // Port 81 has no rule, and R has no route to 10.96.0.0/16.
    let running = Capture::incoming(&net.b, "eth0")
        .start(|s: &Seen| s.src.ip() == &POD_A)
        .expect("capture");
    let started = Instant::now();
    let seen = send_and_capture(
        &probe(&net.a, ProbeProtocol::TcpSyn, 81),
        &Capture::outgoing(&net.r, "tob"),
    )
    .expect("probe");
    let waited = started.elapsed();
    assert!(seen.is_empty(), "{seen:?}");
    assert!(
        waited < Duration::from_secs(3),
        "bounded wait, took {waited:?}"
    );
    assert!(running.finish(Duration::ZERO).expect("capture").is_empty());

    // capture_only: nothing at all from A arrives at B while nothing is sent.
    let quiet = capture_only(
        &Capture::incoming(&net.b, "eth0"),
        Duration::from_millis(200),
        |s| s.src.ip() == &POD_A,
    )
    .expect("capture");
    assert!(quiet.is_empty(), "{quiet:?}");
}

#[test]
fn a_running_capture_sees_a_real_connection_dnated() {
    let net = routed().expect("topology");
    let _echo = EchoServer::start(&net.b, SocketAddr::new(POD_B.into(), 8080), "b").expect("echo");
    let running = Capture::outgoing(&net.r, "tob")
        .start(|s: &Seen| s.is_syn())
        .expect("capture");
    let reply = ask(&net.a, SocketAddr::new(CLUSTER_IP.into(), 80)).expect("connect");
    assert_eq!((reply.pod.as_str(), reply.peer.as_str()), ("b", "10.1.0.2"));
    let seen = running.finish(Duration::from_millis(100)).expect("capture");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].dst, SocketAddrV4::new(POD_B, 8080));
}

/// X (TUN client: kernel 198.18.0.1, stack 198.18.0.2) — veth — S (10.3.0.2, echo on 8080).
struct TunNet {
    client: TunClient,
    _echo: EchoServer,
    x: Netns,
    s: Netns,
}

const STACK_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const SERVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 3, 0, 2), 8080);
const TIMEOUT: Duration = Duration::from_secs(3);

fn tun_net() -> anyhow::Result<TunNet> {
    let prefix = unique_prefix();
    let x = Netns::new(&format!("{prefix}x"))?;
    let s = Netns::new(&format!("{prefix}s"))?;
    veth(&x, "eth0", "10.3.0.1/24", &s, "eth0", "10.3.0.2/24")?;
    s.ip(&["route", "add", "198.18.0.0/24", "via", "10.3.0.1"])?;
    let client = TunClient::new(&x, "kptun0", Ipv4Addr::new(198, 18, 0, 1), STACK_IP, 24)?;
    let echo = EchoServer::start(&s, SERVER.into(), "s")?;
    Ok(TunNet {
        client,
        _echo: echo,
        x,
        s,
    })
}

fn failure(result: anyhow::Result<String>) -> TcpFailure {
    match result {
        Ok(reply) => panic!("expected a failure, got {reply:?}"),
        Err(e) => *e
            .downcast_ref::<TcpFailure>()
            .unwrap_or_else(|| panic!("not a TcpFailure: {e:#}")),
    }
}

#[test]
fn tun_client_connections_reach_the_echo_server_unnatted() {
    let mut net = tun_net().expect("topology");
    let started = Instant::now();
    let line = net.client.request(SERVER, b"", TIMEOUT).expect("request");
    eprintln!("first connection: {:?}", started.elapsed());
    assert_eq!(line, format!("s {STACK_IP}\n"));

    // Ten in a row, each on a new port with a new ISN: no TIME_WAIT stall.
    let started = Instant::now();
    for i in 0..10 {
        let line = net.client.request(SERVER, b"", TIMEOUT);
        assert_eq!(
            line.expect("request"),
            format!("s {STACK_IP}\n"),
            "connection {i}"
        );
    }
    let ten = started.elapsed();
    eprintln!("ten connections: {ten:?}");
    assert!(ten < Duration::from_secs(2), "ten connections took {ten:?}");

    // A request is sent whole: a server that reads one line answers it upper-cased.
    let upper = SocketAddrV4::new(*SERVER.ip(), 8090);
    let server = upper_case_once(&net.s, upper).expect("server");
    let line = net.client.request(upper, b"hello smoltcp\n", TIMEOUT);
    assert_eq!(line.expect("request"), "HELLO SMOLTCP\n");
    server.join().expect("server thread").expect("server");
}

/// A server in `ns` that answers one connection's first line upper-cased (bounded: 5 s).
fn upper_case_once(
    ns: &Netns,
    addr: SocketAddrV4,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<()>>> {
    let listener = ns.run_in(move || Ok(TcpListener::bind(addr)?))?;
    Ok(std::thread::spawn(move || {
        listener.set_nonblocking(true)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let conn = loop {
            match listener.accept() {
                Ok((conn, _)) => break conn,
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(e.into()),
            }
        };
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut line = String::new();
        BufReader::new(&conn).read_line(&mut line)?;
        (&conn).write_all(line.to_uppercase().as_bytes())?;
        Ok(())
    }))
}

#[test]
fn tun_client_goes_through_kernel_dnat() {
    let mut net = tun_net().expect("topology");
    // Packets from the TUN device enter X's PREROUTING like any external client's.
    net.x
        .exec(
            "iptables-nft",
            &[
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-d",
                "10.96.0.1",
                "-p",
                "tcp",
                "--dport",
                "80",
                "-j",
                "DNAT",
                "--to-destination",
                "10.3.0.2:8080",
            ],
        )
        .expect("iptables");
    let line = net
        .client
        .request(SocketAddrV4::new(CLUSTER_IP, 80), b"", TIMEOUT);
    assert_eq!(line.expect("request"), format!("s {STACK_IP}\n"));
}

#[test]
fn tun_client_tells_refused_rejected_and_silent_apart() {
    let mut net = tun_net().expect("topology");
    for (port, target) in [("8082", "REJECT"), ("8083", "DROP")] {
        let rule = ["-A", "INPUT", "-p", "tcp", "--dport", port, "-j", target];
        net.s.exec("iptables-nft", &rule).expect("iptables");
    }
    let at = |port| SocketAddrV4::new(*SERVER.ip(), port);

    let started = Instant::now();
    let refused = failure(net.client.request(at(8081), b"", TIMEOUT));
    let took = started.elapsed();
    eprintln!("refused in {took:?}");
    assert_eq!(refused, TcpFailure::Refused { dst: at(8081) });
    assert!(took < Duration::from_millis(500), "refusal took {took:?}");

    let started = Instant::now();
    let rejected = failure(net.client.request(at(8082), b"", TIMEOUT));
    let took = started.elapsed();
    eprintln!("rejected in {took:?}");
    assert_eq!(
        rejected,
        TcpFailure::Unreachable {
            dst: at(8082),
            code: 3
        }
    );
    assert!(took < Duration::from_millis(500), "reject took {took:?}");

    let started = Instant::now();
    let short = Duration::from_millis(300);
    let silent = failure(net.client.request(at(8083), b"", short));
    let took = started.elapsed();
    assert_eq!(
        silent,
        TcpFailure::TimedOut {
            dst: at(8083),
            phase: "connect"
        }
    );
    assert!(took >= short && took < short * 3, "timeout took {took:?}");

    // The stack is still fine afterwards.
    let line = net.client.request(SERVER, b"", TIMEOUT).expect("request");
    assert_eq!(line, format!("s {STACK_IP}\n"));
}

#[test]
fn a_thousand_probes_are_all_captured() {
    let net = routed().expect("topology");
    let mut probe = probe(&net.a, ProbeProtocol::Udp, 53);
    probe.count = 1000;
    let started = Instant::now();
    let seen = send_and_capture(&probe, &Capture::outgoing(&net.r, "tob")).expect("probe");
    eprintln!("1000 UDP probes captured in {:?}", started.elapsed());
    assert_eq!(seen.len(), 1000);
    assert!(seen.iter().all(|s| s.dst == SocketAddrV4::new(POD_B, 5353)));
}

#[test]
fn tun_client_survives_its_link_going_down() {
    let mut net = tun_net().expect("topology");
    net.x.ip(&["link", "set", "kptun0", "down"]).expect("down");
    let started = Instant::now();
    let down = net.client.request(SERVER, b"", TIMEOUT);
    let error = format!("{:#}", down.expect_err("no link, no connection"));
    assert!(error.contains("link down"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a failure, not a timeout"
    );

    net.x.ip(&["link", "set", "kptun0", "up"]).expect("up");
    let line = net.client.request(SERVER, b"", TIMEOUT).expect("request");
    assert_eq!(line, format!("s {STACK_IP}\n"));
}
