//! The multi-node rig on its own (root only; no kproxy): real packets between pods on one
//! node and across nodes, from outside to a node, UDP as well as TCP, and teardown on drop,
//! in parallel and while a test panics.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use kproxy_netns_tests::echo::{EchoServer, ask};
use kproxy_netns_tests::rig::{Rig, RigSpec, udp_ask};

const PORT: u16 = 8080;

fn rig(nodes: usize, pods_per_node: usize) -> Rig {
    Rig::new(RigSpec {
        nodes,
        pods_per_node,
    })
    .expect("building the rig")
}

fn at(ip: std::net::Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// Every namespace of a rig.
fn namespaces(rig: &Rig) -> Vec<String> {
    let mut names = vec![
        rig.underlay.name().to_owned(),
        rig.external.name().to_owned(),
    ];
    names.extend(rig.nodes.iter().map(|n| n.ns.name().to_owned()));
    names.extend(rig.pods.iter().map(|p| p.ns.name().to_owned()));
    names
}

fn assert_gone(names: &[String], dir: &Path) {
    for name in names {
        assert!(
            !Path::new("/run/netns").join(name).exists(),
            "namespace {name} left behind"
        );
    }
    let listed = kproxy_netns_tests::netns::run("ip", &["netns", "list"]).expect("ip netns list");
    for name in names {
        assert!(
            !listed.split_whitespace().any(|w| w == name),
            "`ip netns list` still shows {name}"
        );
    }
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn pods_reach_pods_on_the_same_node_and_across_nodes_without_nat() {
    let started = Instant::now();
    let mut rig = rig(3, 2);
    println!(
        "rig 3 nodes x 2 pods built in {:?} ({:?} with manifests)",
        rig.build_time(),
        started.elapsed()
    );
    rig.start_backends(PORT).expect("backends");
    let client = rig.pod("pod-0-0").expect("pod-0-0");
    for target in ["pod-0-1", "pod-1-0", "pod-2-1"] {
        let pod = rig.pod(target).expect("target pod");
        let reply = ask(&client.ns, at(pod.ip, PORT)).expect("tcp echo");
        assert_eq!(reply.pod, target);
        assert_eq!(reply.peer, client.ip.to_string(), "no NAT between pods");
    }
    // A pod reaches itself through its own address.
    let reply = ask(&client.ns, at(client.ip, PORT)).expect("self");
    assert_eq!(reply.pod, "pod-0-0");
    assert_eq!(rig.pods_on(1).len(), 2);
    assert!(rig.pods_on(1).iter().all(|p| p.node == 1));
}

#[test]
fn udp_echo_across_nodes() {
    let mut rig = rig(3, 1);
    rig.start_backends(PORT).expect("backends");
    let client = rig.pod("pod-2-0").expect("pod-2-0");
    for target in ["pod-0-0", "pod-1-0"] {
        let pod = rig.pod(target).expect("target pod");
        let reply = udp_ask(&client.ns, at(pod.ip, PORT)).expect("udp echo");
        assert_eq!(reply.pod, target);
        assert_eq!(reply.peer, client.ip.to_string());
    }
    rig.stop_backends();
    let client = rig.pod("pod-2-0").expect("pod-2-0");
    let pod = rig.pod("pod-0-0").expect("pod-0-0");
    assert!(
        udp_ask(&client.ns, at(pod.ip, PORT)).is_err(),
        "stopped server answered"
    );
}

#[test]
fn external_reaches_node_ips_but_not_pods() {
    let rig = rig(2, 1);
    let node = &rig.nodes[1];
    let _server = EchoServer::start(&node.ns, at(node.ip, 9000), &node.name).expect("server");
    let reply = ask(&rig.external, at(node.ip, 9000)).expect("external -> node ip");
    assert_eq!(reply.pod, "node-1");
    assert_eq!(reply.peer, "192.168.50.2");
    let pod = &rig.pods[0];
    assert!(
        ask(&rig.external, at(pod.ip, 9000)).is_err(),
        "external reached a pod IP"
    );

    let route = |dst: &str| rig.external.ip(&["route", "get", dst]).expect("route get");
    assert!(route("203.0.113.7").contains("via 192.168.50.10"));
    rig.route_vips_via(1).expect("re-route VIPs");
    assert!(route("203.0.113.7").contains("via 192.168.50.11"));
}

#[test]
fn nodes_route_unknown_and_client_traffic_to_the_external_namespace() {
    let rig = rig(2, 1);
    let node = rig.node_ns(0);
    for dst in ["10.96.0.10", "198.18.0.5"] {
        let route = node.ip(&["route", "get", dst]).expect("route get");
        assert!(
            route.contains("via 192.168.50.2 dev eth0"),
            "{dst}: {route}"
        );
    }
    let route = node
        .ip(&["route", "get", "10.244.1.10"])
        .expect("route get");
    assert!(route.contains("via 192.168.50.11 dev eth0"), "{route}");
    let hairpin = node.ip(&["-d", "link", "show", "vp0"]).expect("link show");
    assert!(hairpin.contains("hairpin on"), "{hairpin}");
    // The sysctls landed in each namespace, not in the host's.
    let sysctl = |ns: &kproxy_netns_tests::netns::Netns, key: &str| {
        ns.exec("sysctl", &["-n", key])
            .expect("sysctl")
            .trim()
            .to_owned()
    };
    assert_eq!(sysctl(node, "net.ipv4.ip_forward"), "1");
    assert_eq!(sysctl(node, "net.bridge.bridge-nf-call-iptables"), "1");
    assert_eq!(sysctl(&rig.external, "net.ipv4.ip_forward"), "1");
    assert_eq!(
        sysctl(&rig.underlay, "net.bridge.bridge-nf-call-iptables"),
        "0"
    );
    assert!(
        rig.node_manifests()
            .contains("topology.kubernetes.io/zone: zone-b")
    );
    assert!(rig.manifests_dir().join("nodes.yaml").exists());
}

#[test]
fn two_rigs_built_in_parallel_do_not_collide() {
    let build = || {
        std::thread::spawn(|| {
            let mut rig = rig(2, 1);
            rig.start_backends(PORT).expect("backends");
            let reply = ask(&rig.pods[0].ns, at(rig.pods[1].ip, PORT)).expect("echo");
            assert_eq!(reply.pod, "pod-1-0");
            (rig.prefix.clone(), namespaces(&rig))
        })
    };
    let (a, b) = (build(), build());
    let (a, b) = (a.join().expect("rig a"), b.join().expect("rig b"));
    assert_ne!(a.0, b.0);
    assert!(a.1.iter().all(|n| !b.1.contains(n)));
}

#[test]
fn drop_removes_namespaces_and_the_scratch_dir() {
    let mut rig = rig(2, 2);
    rig.start_backends(PORT).expect("backends");
    rig.write_manifest("x.yaml", "kind: Nothing\n")
        .expect("manifest");
    let (names, dir) = (namespaces(&rig), rig.dir.clone());
    assert!(
        names
            .iter()
            .all(|n| Path::new("/run/netns").join(n).exists())
    );
    let started = Instant::now();
    drop(rig);
    println!("rig 2 nodes x 2 pods torn down in {:?}", started.elapsed());
    assert_gone(&names, &dir);
}

#[test]
fn a_panicking_test_still_tears_its_rig_down() {
    let seen: std::sync::Mutex<Option<(Vec<String>, PathBuf)>> = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let mut rig = rig(2, 1);
        rig.start_backends(PORT).expect("backends");
        *seen.lock().expect("lock") = Some((namespaces(&rig), rig.dir.clone()));
        panic!("the test failed");
    });
    assert!(result.is_err());
    let (names, dir) = seen.lock().expect("lock").take().expect("rig was built");
    assert_gone(&names, &dir);
}
