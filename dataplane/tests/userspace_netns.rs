//! Real packets through the userspace forwarder (root only): a client namespace reaches a
//! backend namespace's echo servers through a ClusterIP served by `UserspaceProxier` running
//! in a node namespace, over TCP and UDP, and through a NodePort (masqueraded).
//!
//! ```text
//! client (10.244.1.2) ── veth ── node (10.244.1.1 | 10.244.2.1, kproxy TUN) ── veth ── backend (10.244.2.2)
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use kproxy_dataplane::iptables::apply::BackendChoice;
use kproxy_dataplane::plan::IpFamily;
use kproxy_dataplane::userspace::{UserspaceConfig, UserspaceProxier};

mod support;

use support::{Routed, echo_plan, enter, require_root};

/// Echo servers in the backend namespace: TCP on 8080, UDP on 5353.
fn start_backend(ns: String) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        enter(&ns);
        let tcp = TcpListener::bind("0.0.0.0:8080").expect("bind tcp");
        let udp = UdpSocket::bind("0.0.0.0:5353").expect("bind udp");
        tx.send(()).expect("ready");
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            for _ in 0..100 {
                let Ok((n, peer)) = udp.recv_from(&mut buf) else {
                    return;
                };
                let _ = udp.send_to(&buf[..n], peer);
            }
        });
        for _ in 0..100 {
            let Ok((mut s, _)) = tcp.accept() else { return };
            let mut buf = [0u8; 1500];
            if let Ok(n) = s.read(&mut buf) {
                let _ = s.write_all(&buf[..n]);
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("backend ready");
}

#[test]
fn cluster_ip_node_port_and_reject_through_tun() {
    require_root();
    let routed = Routed::new("us");
    let (client, node, backend) = (
        routed.client.name().to_owned(),
        routed.node.name().to_owned(),
        routed.backend.name().to_owned(),
    );
    start_backend(backend);

    // The proxier runs on its own thread inside the node namespace until told to stop.
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let node_ns = node.clone();
    let proxier = std::thread::spawn(move || {
        enter(&node);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            // Not the machine's default backend (nft on Debian 12), to prove the chains go
            // where `--iptables-backend` says.
            let config = UserspaceConfig {
                device: "kpu0".into(),
                iptables_backend: BackendChoice::Legacy,
                ..UserspaceConfig::default()
            };
            let mut p = match UserspaceProxier::new(config, [IpFamily::V4]).await {
                Ok(p) => p,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let synced = p
                .sync(&echo_plan(), true)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
            let _ = ready_tx.send(synced);
            let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
            p.cleanup().await.expect("cleanup");
        });
    });
    ready_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("proxier thread")
        .expect("proxier up");
    let in_node = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", &node_ns])
            .args(args)
            .output()
            .expect("run");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let legacy = in_node(&["iptables-legacy", "-t", "nat", "-S"]);
    assert!(
        legacy.contains("-A KPROXY-USERSPACE-NODEPORTS "),
        "{legacy}"
    );
    assert!(
        legacy.contains("-A PREROUTING -j KPROXY-USERSPACE-NODEPORTS"),
        "{legacy}"
    );
    let nft = in_node(&["iptables-nft", "-t", "nat", "-S"]);
    assert!(!nft.contains("KPROXY-USERSPACE"), "{nft}");

    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        enter(&client);
        let vip: SocketAddr = "10.96.0.10:80".parse().expect("addr");
        let tcp = (|| -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(&vip, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"hello over tcp")?;
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
        })();
        let udp = (|| -> std::io::Result<(String, SocketAddr)> {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.send_to(b"hello over udp", "10.96.0.10:53")?;
            let mut buf = [0u8; 64];
            let (n, from) = s.recv_from(&mut buf)?;
            Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
        })();
        let node_port = (|| -> std::io::Result<String> {
            let np: SocketAddr = "10.244.1.1:30080".parse().expect("addr");
            let mut s = TcpStream::connect_timeout(&np, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"hello over a nodeport")?;
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
        })();
        let refused = TcpStream::connect_timeout(
            &"10.96.0.11:80".parse().expect("addr"),
            Duration::from_secs(5),
        )
        .map(|_| ())
        .map_err(|e| e.kind());
        let _ = tx.send((
            refused,
            tcp.map_err(|e| e.to_string()),
            udp.map_err(|e| e.to_string()),
            node_port.map_err(|e| e.to_string()),
        ));
    });
    let (refused, tcp, udp, node_port) = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("client finished");
    let _ = stop_tx.send(());
    let _ = proxier.join();
    // What cleanup leaves behind in the node namespace: nothing of ours.
    let leftover = in_node;
    for iptables in ["iptables-legacy", "iptables-nft"] {
        assert!(!leftover(&[iptables, "-t", "nat", "-S"]).contains("KPROXY-USERSPACE"));
    }
    assert!(!leftover(&["ip", "rule"]).contains("4242"));
    assert!(!leftover(&["ip", "link"]).contains("kpu0"));
    assert_eq!(
        refused,
        Err(std::io::ErrorKind::ConnectionRefused),
        "no endpoints: RST"
    );
    assert_eq!(tcp.as_deref(), Ok("hello over tcp"));
    assert_eq!(node_port.as_deref(), Ok("hello over a nodeport"));
    let (text, from) = udp.expect("udp answer");
    assert_eq!(text, "hello over udp");
    assert_eq!(
        from,
        "10.96.0.10:53".parse::<SocketAddr>().expect("addr"),
        "reply un-NATed"
    );
}
