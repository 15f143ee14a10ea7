//! Live test of the IPVS netlink layer against a real IPVS kernel.
//!
//! Built only with the `ipvs-guest` feature, for the qemu guest of `scripts/run-ipvs-vm.sh`
//! (needs root and ip_vs); a kernel without IPVS fails them.

use std::net::IpAddr;
use std::process::Command;

use kproxy_dataplane::fixtures::ip;
use kproxy_dataplane::ipvs::netlink::consts::{IPPROTO_TCP, IPPROTO_UDP, SVC_F_PERSISTENT};
use kproxy_dataplane::ipvs::netlink::{Destination, IpvsSocket, Service, ServiceKey, Timeouts};

fn require_ipvs(test: &str) {
    assert!(
        std::path::Path::new("/proc/net/ip_vs").exists(),
        "{test}: no /proc/net/ip_vs: this kernel has no IPVS (run it with scripts/run-ipvs-vm.sh)"
    );
}

fn ipvsadm_list() -> String {
    let out = Command::new("ipvsadm")
        .args(["-Ln"])
        .output()
        .expect("run ipvsadm -Ln");
    assert!(out.status.success(), "ipvsadm -Ln failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn rr_service_with_two_real_servers() {
    require_ipvs("rr_service_with_two_real_servers");
    let mut sock = IpvsSocket::open().expect("open IPVS netlink socket");
    let (version, tab) = sock.info().expect("GET_INFO");
    eprintln!("IPVS version {:#x}, connection table size {tab}", version);
    assert!(version >= 0x010200, "IPVS version {version:#x}");

    let key = ServiceKey::Addr {
        protocol: IPPROTO_TCP,
        addr: ip("10.96.0.10"),
        port: 80,
    };
    let svc = Service::new(key, "rr");
    let d1 = Destination::masq(ip("10.244.0.11"), 8080);
    let d2 = Destination::masq(ip("10.244.0.12"), 8080);
    sock.new_service(&svc).expect("NEW_SERVICE");
    sock.new_dest(&key, &d1).expect("NEW_DEST 1");
    sock.new_dest(&key, &d2).expect("NEW_DEST 2");

    let services = sock.services().expect("GET_SERVICE dump");
    let got = services
        .iter()
        .find(|s| s.key == key)
        .expect("service read back");
    assert_eq!(got, &svc);
    let mut dests = sock.destinations(&key).expect("GET_DEST dump");
    dests.sort_by_key(|d| d.addr);
    assert_eq!(dests, vec![d1.clone(), d2.clone()]);

    let listing = ipvsadm_list();
    eprintln!("{listing}");
    assert!(listing.contains("TCP  10.96.0.10:80 rr"), "{listing}");
    assert!(listing.contains("-> 10.244.0.11:8080"), "{listing}");
    assert!(listing.contains("-> 10.244.0.12:8080"), "{listing}");

    // A duplicate is refused with EEXIST, named.
    let err = sock.new_service(&svc).expect_err("duplicate NEW_SERVICE");
    assert_eq!(err.errno(), Some(17), "EEXIST: {err}");
    assert!(err.to_string().contains("TCP 10.96.0.10:80"), "{err}");

    // Graceful termination step: weight 0, then delete.
    let drained = Destination {
        weight: 0,
        ..d1.clone()
    };
    sock.set_dest(&key, &drained).expect("SET_DEST weight 0");
    let dests = sock.destinations(&key).expect("GET_DEST dump");
    assert_eq!(
        dests.iter().find(|d| d.addr == d1.addr).map(|d| d.weight),
        Some(0)
    );
    sock.del_dest(&key, &d1).expect("DEL_DEST");
    assert_eq!(sock.destinations(&key).expect("GET_DEST dump"), vec![d2]);

    // Scheduler change and persistence (ClientIP affinity).
    let sticky = Service::new(key, "sh").with_persistence(10800);
    sock.set_service(&sticky).expect("SET_SERVICE");
    let got = sock.services().expect("dump");
    let got = got
        .iter()
        .find(|s| s.key == key)
        .expect("service after SET");
    assert_eq!(got.scheduler, "sh");
    assert_eq!(got.flags & SVC_F_PERSISTENT, SVC_F_PERSISTENT);
    assert_eq!(got.timeout, 10800);
    assert!(ipvsadm_list().contains("persistent 10800"));

    sock.del_service(&key).expect("DEL_SERVICE");
    assert!(!sock.services().expect("dump").iter().any(|s| s.key == key));
}

#[test]
fn ipv6_udp_service_and_flush() {
    require_ipvs("ipv6_udp_service_and_flush");
    let mut sock = IpvsSocket::open().expect("open IPVS netlink socket");
    let key = ServiceKey::Addr {
        protocol: IPPROTO_UDP,
        addr: ip("fd00:96::53"),
        port: 53,
    };
    sock.new_service(&Service::new(key, "mh"))
        .expect("NEW_SERVICE v6");
    let dest = Destination::masq(ip("fd00:244::11"), 5353);
    sock.new_dest(&key, &dest).expect("NEW_DEST v6");
    assert_eq!(sock.destinations(&key).expect("dump"), vec![dest]);
    let listing = ipvsadm_list();
    assert!(listing.contains("UDP  [fd00:96::53]:53 mh"), "{listing}");
    sock.flush().expect("FLUSH");
    assert!(sock.services().expect("dump").is_empty());
}

#[test]
fn many_services_dump() {
    require_ipvs("many_services_dump");
    let mut sock = IpvsSocket::open().expect("open IPVS netlink socket");
    let start = std::time::Instant::now();
    let n = 1000u16;
    for i in 0..n {
        let key = ServiceKey::Addr {
            protocol: IPPROTO_TCP,
            addr: IpAddr::from([10, 97, (i >> 8) as u8, i as u8]),
            port: 80,
        };
        sock.new_service(&Service::new(key, "rr"))
            .expect("NEW_SERVICE");
        sock.new_dest(&key, &Destination::masq(ip("10.244.1.1"), 80))
            .expect("NEW_DEST");
    }
    let created = start.elapsed();
    let dumped = sock.services().expect("dump");
    eprintln!(
        "{n} services + 1 real server each: created in {created:?}, dumped in {:?}",
        start.elapsed() - created
    );
    assert!(dumped.len() >= usize::from(n));
    for s in dumped
        .iter()
        .filter(|s| matches!(s.key, ServiceKey::Addr { port: 80, .. }))
    {
        sock.del_service(&s.key).expect("DEL_SERVICE");
    }
}

/// `ipvsadm -L --timeout`: `Timeout (tcp tcpfin udp): 900 120 300`, as numbers.
fn ipvsadm_timeouts() -> Timeouts {
    let out = Command::new("ipvsadm")
        .args(["-L", "--timeout"])
        .output()
        .expect("run ipvsadm -L --timeout");
    assert!(out.status.success(), "ipvsadm -L --timeout failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let numbers: Vec<u32> = text
        .rsplit(':')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(|n| n.parse().expect("a number of seconds"))
        .collect();
    match numbers.as_slice() {
        [tcp, tcp_fin, udp] => Timeouts {
            tcp: *tcp,
            tcp_fin: *tcp_fin,
            udp: *udp,
        },
        _ => panic!("unexpected ipvsadm -L --timeout output: {text:?}"),
    }
}

/// SET_CONFIG / GET_CONFIG: timeouts set over the socket read back over netlink and by
/// ipvsadm; zeros leave a timeout unchanged; ipvsadm's `--set` is read back by the socket.
#[test]
fn timeouts_set_and_read_back() {
    require_ipvs("timeouts_set_and_read_back");
    let mut sock = IpvsSocket::open().expect("open IPVS netlink socket");
    let before = sock.timeouts().expect("GET_CONFIG");
    eprintln!("kernel timeouts: {before}");
    assert_eq!(before, ipvsadm_timeouts(), "GET_CONFIG agrees with ipvsadm");
    assert!(
        before.tcp > 0 && before.tcp_fin > 0 && before.udp > 0,
        "{before}"
    );

    let all = Timeouts {
        tcp: 1234,
        tcp_fin: 56,
        udp: 78,
    };
    sock.set_timeouts(&all).expect("SET_CONFIG");
    assert_eq!(sock.timeouts().expect("GET_CONFIG"), all);
    assert_eq!(ipvsadm_timeouts(), all);

    let only_udp = Timeouts {
        udp: 91,
        ..Timeouts::default()
    };
    sock.set_timeouts(&only_udp).expect("SET_CONFIG udp only");
    let want = Timeouts { udp: 91, ..all };
    assert_eq!(sock.timeouts().expect("GET_CONFIG"), want);
    assert_eq!(ipvsadm_timeouts(), want);
    sock.set_timeouts(&Timeouts::default())
        .expect("nothing to set");
    assert_eq!(sock.timeouts().expect("GET_CONFIG"), want);

    let out = Command::new("ipvsadm")
        .args(["--set", "901", "121", "301"])
        .output()
        .expect("run ipvsadm --set");
    assert!(out.status.success(), "ipvsadm --set failed: {out:?}");
    let by_ipvsadm = Timeouts {
        tcp: 901,
        tcp_fin: 121,
        udp: 301,
    };
    assert_eq!(sock.timeouts().expect("GET_CONFIG"), by_ipvsadm);

    sock.set_timeouts(&before).expect("restore");
    assert_eq!(sock.timeouts().expect("GET_CONFIG"), before);
}
