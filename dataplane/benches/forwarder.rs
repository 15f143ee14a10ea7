//! Userspace forwarder benchmark: packets/s and new connections/s.
//!
//! 1. In process (no I/O): `Forwarder::process` on a packet of an established UDP flow, and
//!    on TCP SYNs of fresh flows.
//! 2. Root only: the same veth path `client ns → node ns → backend ns`, once with the kernel's
//!    iptables DNAT in the node namespace and once through `UserspaceProxier`'s TUN, measuring
//!    UDP datagrams/s delivered to the backend (one blasting sender) and TCP
//!    connect-echo-close cycles/s (one client).
//!
//! ```text
//! cargo bench -p kproxy-dataplane --bench forwarder -- [--seconds 3]
//! ```

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use kproxy_dataplane::lb::Algorithm;
use kproxy_dataplane::plan::*;
use kproxy_dataplane::userspace::forwarder::{Action, Forwarder, ForwarderConfig};
use kproxy_dataplane::userspace::packet::{PROTO_TCP, PROTO_UDP, TCP_SYN, fill_checksums, parse};
use kproxy_dataplane::userspace::services::ServiceTable;
use kproxy_dataplane::userspace::{UserspaceConfig, UserspaceProxier};

const VIP: &str = "10.96.0.10";

fn plan() -> ProxyPlan {
    let ep = |addr: &str| Endpoint {
        addr: addr.parse().expect("addr"),
        is_local: true,
        ready: true,
        serving: true,
        terminating: false,
    };
    let svc = |proto: Protocol, port: u16, target: &str| ServicePortPlan {
        name: ServicePortName {
            namespace: "default".into(),
            name: "echo".into(),
            port: proto.as_lower().into(),
            protocol: proto,
        },
        family: IpFamily::V4,
        cluster_ip: VIP.parse().expect("ip"),
        port,
        node_port: None,
        external_ips: vec![],
        load_balancer_ips: vec![],
        load_balancer_source_ranges: vec![],
        session_affinity_timeout: None,
        external_policy_local: false,
        internal_policy_local: false,
        health_check_node_port: None,
        cluster_endpoints: vec![ep(target)],
        local_endpoints: vec![],
        has_any_endpoints: true,
    };
    ProxyPlan {
        node: NodeContext {
            node_name: "node".into(),
            ipv4: Some(FamilyContext {
                node_ips: vec!["10.244.1.1".parse().expect("ip")],
                nodeport_addresses: NodePortAddresses::All,
                local_detector: LocalTrafficDetector::ClusterCidr(
                    "10.244.0.0/16".parse().expect("cidr"),
                ),
            }),
            ipv6: None,
            masquerade_all: false,
            masquerade_mark: 1 << 14,
            localhost_nodeports: false,
        },
        services: vec![
            svc(Protocol::Tcp, 80, "10.244.2.2:8080"),
            svc(Protocol::Udp, 53, "10.244.2.2:5353"),
        ],
    }
}

fn packet(src: SocketAddr, dst: SocketAddr, proto: u8, flags: u8) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
        unreachable!("IPv4 only")
    };
    let l4 = if proto == PROTO_TCP { 20 } else { 8 } + 32;
    let mut b = vec![0x45, 0];
    b.extend_from_slice(&((20 + l4) as u16).to_be_bytes());
    b.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
    b.extend_from_slice(&s.octets());
    b.extend_from_slice(&d.octets());
    b.extend_from_slice(&src.port().to_be_bytes());
    b.extend_from_slice(&dst.port().to_be_bytes());
    if proto == PROTO_TCP {
        b.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        b.extend_from_slice(&40u16.to_be_bytes());
        b.extend_from_slice(&[0, 0]);
    }
    b.extend_from_slice(&[0x5a; 32]);
    let m = parse(&b).expect("parses");
    fill_checksums(&mut b, &m);
    b
}

/// (established packets/s, new flows/s) of `Forwarder::process` alone.
fn in_process() -> (f64, f64) {
    let config = ForwarderConfig {
        conntrack_capacity: 1 << 21,
        ..ForwarderConfig::default()
    };
    let mut fw = Forwarder::new(config, ServiceTable::build(&plan(), Algorithm::Random, 1));
    let mut reply = [0u8; 1500];
    let now = Duration::from_secs(1);
    let template = packet(
        "10.244.1.2:40000".parse().expect("addr"),
        format!("{VIP}:53").parse().expect("addr"),
        PROTO_UDP,
        0,
    );
    let mut buf = template.clone();
    let n = 5_000_000u32;
    let start = Instant::now();
    for _ in 0..n {
        buf.copy_from_slice(&template);
        black_box(fw.process(&mut buf, &mut reply, now));
    }
    let pps = f64::from(n) / start.elapsed().as_secs_f64();
    let flows = 1_000_000u32;
    let syns: Vec<Vec<u8>> = (0..flows)
        .map(|i| {
            let src = SocketAddr::new(
                IpAddr::from([10, 244, 100 + (i >> 16) as u8, (i >> 8) as u8]),
                1024 + (i & 0xff) as u16,
            );
            packet(
                src,
                format!("{VIP}:80").parse().expect("addr"),
                PROTO_TCP,
                TCP_SYN,
            )
        })
        .collect();
    let start = Instant::now();
    for mut syn in syns {
        assert_eq!(fw.process(&mut syn, &mut reply, now), Action::Forward);
    }
    let fps = f64::from(flows) / start.elapsed().as_secs_f64();
    (pps, fps)
}

#[path = "../tests/support/mod.rs"]
mod support;

use support::{Routed, enter, sh};

/// Backend servers: counts UDP datagrams, echoes TCP. Runs until the process exits.
fn backend(ns: String, udp_count: Arc<AtomicU64>) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        enter(&ns);
        let tcp = TcpListener::bind("0.0.0.0:8080").expect("bind tcp");
        let udp = UdpSocket::bind("0.0.0.0:5353").expect("bind udp");
        tx.send(()).expect("ready");
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while udp.recv(&mut buf).is_ok() {
                udp_count.fetch_add(1, Ordering::Relaxed);
            }
        });
        for s in tcp.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 64];
            if let Ok(n) = s.read(&mut buf) {
                let _ = s.write_all(&buf[..n]);
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("backend ready");
}

/// (UDP datagrams/s delivered, TCP connections/s) from the client namespace to the VIP.
fn measure(client: &str, udp_count: &AtomicU64, secs: f64) -> (f64, f64) {
    let client = client.to_owned();
    let window = Duration::from_secs_f64(secs);
    let before = udp_count.load(Ordering::Relaxed);
    let (pps, conns) = std::thread::scope(|s| {
        s.spawn(|| {
            enter(&client);
            let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
            sock.connect(format!("{VIP}:53")).expect("connect");
            let payload = [0x5au8; 32];
            let start = Instant::now();
            while start.elapsed() < window {
                for _ in 0..256 {
                    let _ = sock.send(&payload);
                }
            }
            std::thread::sleep(Duration::from_millis(300));
            let got = udp_count.load(Ordering::Relaxed) - before;
            let pps = got as f64 / secs;
            let vip: SocketAddr = format!("{VIP}:80").parse().expect("addr");
            let start = Instant::now();
            let mut conns = 0u64;
            while start.elapsed() < window {
                let Ok(mut st) = TcpStream::connect_timeout(&vip, Duration::from_secs(1)) else {
                    continue;
                };
                let _ = st.set_read_timeout(Some(Duration::from_secs(1)));
                let mut buf = [0u8; 8];
                if st.write_all(b"x").is_ok() && st.read(&mut buf).is_ok_and(|n| n == 1) {
                    conns += 1;
                }
            }
            (pps, conns as f64 / secs)
        })
        .join()
        .expect("client thread")
    });
    (pps, conns)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(3.0);
    let (pps, fps) = in_process();
    println!("| path | UDP packets/s | TCP new connections/s |");
    println!("|---|---:|---:|");
    println!(
        "| `Forwarder::process` in process (no I/O) | {pps:.0} | {fps:.0} (SYNs → new flows) |"
    );
    if !nix::unistd::geteuid().is_root() {
        println!("(veth comparison skipped: needs root)");
        return;
    }
    let routed = Routed::new("fwd");
    let (c, n, b) = (
        routed.client.name().to_owned(),
        routed.node.name().to_owned(),
        routed.backend.name().to_owned(),
    );
    let udp_count = Arc::new(AtomicU64::new(0));
    backend(b, udp_count.clone());

    // Kernel: iptables DNAT in the node namespace.
    for (proto, port, to) in [
        ("udp", "53", "10.244.2.2:5353"),
        ("tcp", "80", "10.244.2.2:8080"),
    ] {
        sh(&[
            "ip",
            "netns",
            "exec",
            &n,
            "iptables",
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-d",
            VIP,
            "-p",
            proto,
            "--dport",
            port,
            "-j",
            "DNAT",
            "--to-destination",
            to,
        ]);
    }
    let (k_pps, k_cps) = measure(&c, &udp_count, secs);
    println!("| veth, kernel iptables DNAT | {k_pps:.0} | {k_cps:.0} |");
    sh(&[
        "ip",
        "netns",
        "exec",
        &n,
        "iptables",
        "-t",
        "nat",
        "-F",
        "PREROUTING",
    ]);
    let _ = Command::new("ip")
        .args(["netns", "exec", &n, "conntrack", "-F"])
        .output();

    // Userspace: the proxier in the node namespace.
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let stop2 = stop.clone();
    let node = n.clone();
    let proxier = std::thread::spawn(move || {
        enter(&node);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let config = UserspaceConfig {
                device: "kpb0".into(),
                ..UserspaceConfig::default()
            };
            let mut p = match UserspaceProxier::new(config, [IpFamily::V4]).await {
                Ok(p) => p,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let r = p
                .sync(&plan(), true)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
            let _ = ready_tx.send(r);
            while !stop2.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = p.cleanup().await;
        });
    });
    ready_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("proxier thread")
        .expect("proxier up");
    let (u_pps, u_cps) = measure(&c, &udp_count, secs);
    stop.store(true, Ordering::Relaxed);
    let _ = proxier.join();
    println!(
        "| veth, userspace TUN forwarder | {u_pps:.0} ({:.0} % of kernel) | {u_cps:.0} ({:.0} % of kernel) |",
        100.0 * u_pps / k_pps.max(1.0),
        100.0 * u_cps / k_cps.max(1.0)
    );
}
