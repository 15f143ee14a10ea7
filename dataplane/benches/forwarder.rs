//! Userspace forwarder benchmark: packets/s and new connections/s.
//!
//! 1. In process (no I/O): `Forwarder::process` on a packet of an established UDP flow, and
//!    on TCP SYNs of fresh flows.
//! 2. Root only: the same veth path `client ns → node ns → backend ns`, once with the kernel's
//!    iptables DNAT in the node namespace and once through `UserspaceProxier`'s TUN, measuring
//!    UDP datagrams/s delivered to the backend (one blasting sender) and TCP
//!    connect-echo-close cycles/s (one client).
//!
//! Every TCP cycle reads the echo *and the backend's FIN* before closing, so the backend
//! closes first and the client never holds a socket in TIME_WAIT. Otherwise whether the client
//! or the backend closes first is a race that the slower path loses more often, the one client
//! address talking to the one service port has only ~28k ephemeral ports (Linux prefers the
//! ~14k even ones for `connect`), and once they are all in TIME_WAIT (60 s) every `connect`
//! scans the whole range (~2 ms), whichever path is measured: the new-connection rate then
//! collapses to ~450/s, depending on the window and on what the earlier phase left behind.
//! Both phases run from the same client namespace; the note under the table says how many
//! cycles failed and how many client TIME_WAIT sockets each phase left. `--userspace-first`
//! runs the phases in the other order (the results should not depend on it).
//!
//! ```text
//! cargo bench -p kproxy-dataplane --bench forwarder -- [--seconds 3] [--userspace-first]
//! ```

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use kproxy_dataplane::fixtures;
use kproxy_dataplane::lb::Algorithm;
use kproxy_dataplane::plan::*;
use kproxy_dataplane::userspace::forwarder::{Action, Forwarder, ForwarderConfig};
use kproxy_dataplane::userspace::packet::{PROTO_TCP, PROTO_UDP, TCP_SYN};
use kproxy_dataplane::userspace::services::ServiceTable;
use kproxy_dataplane::userspace::{UserspaceConfig, UserspaceProxier};

const VIP: &str = "10.96.0.10";

/// A TCP (with `flags`) or UDP packet carrying 32 bytes, with valid checksums.
fn packet(src: SocketAddr, dst: SocketAddr, proto: u8, flags: u8) -> Vec<u8> {
    fixtures::packet(src, dst, proto, flags, &[0x5a; 32])
}

/// (established packets/s, new flows/s) of `Forwarder::process` alone.
fn in_process() -> (f64, f64) {
    let config = ForwarderConfig {
        conntrack_capacity: 1 << 21,
        ..ForwarderConfig::default()
    };
    let mut fw = Forwarder::new(
        config,
        ServiceTable::build(&echo_plan(), Algorithm::Random, 1),
    );
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

use support::{Routed, echo_plan, enter, sh};

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

/// One phase's results.
#[derive(Debug, Clone, Copy)]
struct Phase {
    /// UDP datagrams/s delivered to the backend.
    pps: f64,
    /// Completed TCP connect-echo-close cycles/s.
    cps: f64,
    /// TCP cycles that failed (connect error or timeout, no echo, no FIN).
    failed: u64,
    /// The client's sockets in TIME_WAIT after the phase.
    client_time_wait: u64,
}

/// Sockets in TIME_WAIT in the calling thread's network namespace.
fn time_wait_sockets() -> u64 {
    std::fs::read_to_string("/proc/thread-self/net/sockstat")
        .ok()
        .and_then(|t| {
            let line = t.lines().find(|l| l.starts_with("TCP:"))?.to_owned();
            let mut words = line.split_whitespace();
            words.find(|w| *w == "tw")?;
            words.next()?.parse().ok()
        })
        .unwrap_or(0)
}

/// Reads the one-byte echo and then end of stream (the backend's FIN).
fn echo_then_eof(st: &mut TcpStream) -> bool {
    let mut buf = [0u8; 8];
    let mut got = 0;
    for _ in 0..4 {
        match st.read(&mut buf[got..]) {
            Ok(0) => return got == 1 && buf[0] == b'x',
            Ok(n) => got += n,
            Err(_) => return false,
        }
        if got > 1 {
            return false;
        }
    }
    false
}

/// UDP datagrams/s delivered and TCP connections/s from the client namespace to the VIP.
fn measure(client: &str, udp_count: &AtomicU64, secs: f64) -> Phase {
    let client = client.to_owned();
    let window = Duration::from_secs_f64(secs);
    let before = udp_count.load(Ordering::Relaxed);
    std::thread::scope(|s| {
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
            let (mut conns, mut failed) = (0u64, 0u64);
            while start.elapsed() < window {
                let Ok(mut st) = TcpStream::connect_timeout(&vip, Duration::from_secs(1)) else {
                    failed += 1;
                    continue;
                };
                let _ = st.set_read_timeout(Some(Duration::from_secs(1)));
                // The backend echoes and closes; closing only after its FIN keeps the
                // client's sockets out of TIME_WAIT (see the module documentation).
                if st.write_all(b"x").is_ok() && echo_then_eof(&mut st) {
                    conns += 1;
                } else {
                    failed += 1;
                }
            }
            Phase {
                pps,
                cps: conns as f64 / secs,
                failed,
                client_time_wait: time_wait_sockets(),
            }
        })
        .join()
        .expect("client thread")
    })
}

/// Flushes the node's kernel conntrack table (between phases).
fn flush_conntrack(node: &str) {
    let _ = Command::new("ip")
        .args(["netns", "exec", node, "conntrack", "-F"])
        .output();
}

/// The kernel phase: iptables DNAT in the node namespace, removed afterwards.
fn kernel_phase(client: &str, node: &str, udp_count: &AtomicU64, secs: f64) -> Phase {
    for (proto, port, to) in [
        ("udp", "53", "10.244.2.2:5353"),
        ("tcp", "80", "10.244.2.2:8080"),
    ] {
        sh(&[
            "ip",
            "netns",
            "exec",
            node,
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
    let phase = measure(client, udp_count, secs);
    sh(&[
        "ip",
        "netns",
        "exec",
        node,
        "iptables",
        "-t",
        "nat",
        "-F",
        "PREROUTING",
    ]);
    flush_conntrack(node);
    phase
}

/// The userspace phase: `UserspaceProxier` in the node namespace, cleaned up afterwards.
fn userspace_phase(client: &str, node: &str, udp_count: &AtomicU64, secs: f64) -> Phase {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let stop2 = stop.clone();
    let node_name = node.to_owned();
    let proxier = std::thread::spawn(move || {
        enter(&node_name);
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
                .sync(&echo_plan(), true)
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
    let phase = measure(client, udp_count, secs);
    stop.store(true, Ordering::Relaxed);
    let _ = proxier.join();
    flush_conntrack(node);
    phase
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

    let (k, u) = if args.iter().any(|a| a == "--userspace-first") {
        let u = userspace_phase(&c, &n, &udp_count, secs);
        (kernel_phase(&c, &n, &udp_count, secs), u)
    } else {
        let k = kernel_phase(&c, &n, &udp_count, secs);
        (k, userspace_phase(&c, &n, &udp_count, secs))
    };
    println!(
        "| veth, kernel iptables DNAT | {:.0} | {:.0} |",
        k.pps, k.cps
    );
    println!(
        "| veth, userspace TUN forwarder | {:.0} ({:.0} % of kernel) | {:.0} ({:.0} % of kernel) |",
        u.pps,
        100.0 * u.pps / k.pps.max(1.0),
        u.cps,
        100.0 * u.cps / k.cps.max(1.0)
    );
    println!(
        "\n{secs} s windows; failed TCP cycles: kernel {}, userspace {}; client sockets left in \
         TIME_WAIT: kernel {}, userspace {}",
        k.failed, u.failed, k.client_time_wait, u.client_time_wait
    );
}
