//! Taking over a node from kube-proxy, and switching modes by restart, with real packets
//! (root only).
//!
//! The kube-proxy rules are written the way upstream's iptables mode writes them (the
//! shape of `TestOverallIPTablesRules` in kubernetes/kubernetes
//! pkg/proxy/iptables/proxier_test.go, with upstream's chain-name hashing computed here on
//! its own), for the Services of the manifests and one Service kproxy does not know.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use data_encoding::BASE32;
use kproxy_netns_tests::echo::{Outcome, try_ask};
use kproxy_netns_tests::kproxy::run_ok;
use kproxy_netns_tests::netns::Netns;
use kproxy_netns_tests::node::*;
use sha2::{Digest, Sha256};

const WEB_CLUSTER_IP: &str = "10.96.0.10";
const STREAM_CLUSTER_IP: &str = "10.96.0.20";
const STREAM_PORT: u16 = 9000;

/// Upstream's `portProtoHash` / `servicePortEndpointChainName`: the first 16 characters of
/// base32(sha256(text)).
fn upstream_hash(text: &str) -> String {
    let mut encoded = BASE32.encode(&Sha256::digest(text.as_bytes()));
    encoded.truncate(16);
    encoded
}

/// Upstream's chain names of service port `ns/name:port` (TCP) and its endpoints.
fn svc_chain(port_name: &str) -> String {
    format!("KUBE-SVC-{}", upstream_hash(&format!("{port_name}tcp")))
}

fn sep_chain(port_name: &str, endpoint: &str) -> String {
    format!(
        "KUBE-SEP-{}",
        upstream_hash(&format!("{port_name}tcp{endpoint}"))
    )
}

/// kube-proxy's iptables-mode ruleset for `services` (`(port name, cluster IP, port,
/// endpoints)`), in upstream's chain layout and rule forms, with its jump rules.
fn upstream_ruleset(services: &[(&str, &str, u16, Vec<String>)]) -> String {
    let mut nat_chains = vec![
        ":KUBE-SERVICES - [0:0]".to_owned(),
        ":KUBE-NODEPORTS - [0:0]".to_owned(),
        ":KUBE-POSTROUTING - [0:0]".to_owned(),
        ":KUBE-MARK-MASQ - [0:0]".to_owned(),
    ];
    let mut nat_rules = vec![
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".to_owned(),
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".to_owned(),
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING".to_owned(),
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000".to_owned(),
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN".to_owned(),
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000".to_owned(),
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE".to_owned(),
    ];
    for (name, ip, port, endpoints) in services {
        let svc = svc_chain(name);
        nat_chains.push(format!(":{svc} - [0:0]"));
        nat_rules.push(format!(
            "-A KUBE-SERVICES -m comment --comment \"{name} cluster IP\" -m tcp -p tcp -d {ip} --dport {port} -j {svc}"
        ));
        nat_rules.push(format!(
            "-A {svc} -m comment --comment \"{name} cluster IP\" -m tcp -p tcp -d {ip} --dport {port} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ"
        ));
        for (i, endpoint) in endpoints.iter().enumerate() {
            let sep = sep_chain(name, endpoint);
            let host = endpoint.split(':').next().unwrap_or_default();
            nat_chains.push(format!(":{sep} - [0:0]"));
            let left = endpoints.len() - i;
            let pick = if left > 1 {
                format!(
                    " -m statistic --mode random --probability {:.10}",
                    1.0 / left as f64
                )
            } else {
                String::new()
            };
            nat_rules.push(format!(
                "-A {svc} -m comment --comment \"{name} -> {endpoint}\"{pick} -j {sep}"
            ));
            nat_rules.push(format!(
                "-A {sep} -m comment --comment {name} -s {host} -j KUBE-MARK-MASQ"
            ));
            nat_rules.push(format!(
                "-A {sep} -m comment --comment {name} -m tcp -p tcp -j DNAT --to-destination {endpoint}"
            ));
        }
    }
    nat_rules.push(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS".to_owned(),
    );
    let filter = [
        "*filter",
        ":KUBE-NODEPORTS - [0:0]",
        ":KUBE-SERVICES - [0:0]",
        ":KUBE-EXTERNAL-SERVICES - [0:0]",
        ":KUBE-FORWARD - [0:0]",
        ":KUBE-PROXY-FIREWALL - [0:0]",
        "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES",
        "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD",
        "-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT",
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "COMMIT",
    ];
    let mut text = filter.join("\n");
    text.push_str("\n*nat\n");
    text.push_str(&nat_chains.join("\n"));
    text.push('\n');
    text.push_str(&nat_rules.join("\n"));
    text.push_str("\nCOMMIT\n");
    text
}

/// A TCP server in `ns` that echoes every line back, for one long-lived connection.
fn start_line_echo(ns: &Netns, addr: SocketAddr) -> anyhow::Result<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    ns.spawn(move || {
        let listener = TcpListener::bind(addr)?;
        let _ = ready_tx.send(());
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut buf = [0u8; 256];
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            conn.write_all(&buf[..n])?;
        }
    })?;
    ready_rx.recv_timeout(Duration::from_secs(5))?;
    Ok(())
}

fn exchange(conn: &mut TcpStream, text: &str) -> anyhow::Result<String> {
    conn.write_all(text.as_bytes())?;
    let mut buf = vec![0u8; text.len()];
    conn.read_exact(&mut buf)?;
    Ok(String::from_utf8(buf)?)
}

/// New connections to `addr` from `client`, back to back, until `stop`: (answered, failed).
fn probe_until(client: &Netns, addr: SocketAddr, stop: &AtomicBool) -> (usize, usize) {
    let (mut ok, mut failed) = (0, 0);
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
        match try_ask(client, None, addr, Duration::from_secs(1)) {
            Outcome::Replied(_) => ok += 1,
            _ => failed += 1,
        }
    }
    (ok, failed)
}

fn web_and_stream(cluster: &OneNodeCluster) -> anyhow::Result<()> {
    let ips: Vec<_> = cluster.pods.iter().map(|p| p.ip).collect();
    cluster.write_manifest("node.yaml", &node_yaml())?;
    cluster.write_manifest("web.yaml", &service_yaml("web", WEB_CLUSTER_IP, 80, None))?;
    cluster.write_manifest("web-slice.yaml", &slice_yaml("web", &ips))?;
    let stream = service_yaml("stream", STREAM_CLUSTER_IP, STREAM_PORT, None).replace(
        &format!("targetPort: {BACKEND_PORT}"),
        &format!("targetPort: {STREAM_PORT}"),
    );
    cluster.write_manifest("stream.yaml", &stream)?;
    let slice = slice_yaml("stream", &ips[..1]).replace(
        &format!("port: {BACKEND_PORT}"),
        &format!("port: {STREAM_PORT}"),
    );
    cluster.write_manifest("stream-slice.yaml", &slice)?;
    Ok(())
}

#[test]
fn upstream_chain_names_match_upstreams_golden() {
    // TestOverallIPTablesRules: ns1/svc1:p80 and its endpoint 10.180.0.1:80.
    assert_eq!(svc_chain("ns1/svc1:p80"), "KUBE-SVC-XPGD46QRK7WJZT7O");
    assert_eq!(
        sep_chain("ns1/svc1:p80", "10.180.0.1:80"),
        "KUBE-SEP-SXIVWICOYRO3J4NJ"
    );
}

/// kproxy started on a node where kube-proxy's iptables rules are live: new connections
/// never fail while it takes over, an established connection through the old rules goes
/// on, kube-proxy's chain of a Service kproxy does not know is gone, and no jump rule is
/// doubled.
#[test]
fn taking_over_from_kube_proxy_drops_nothing() -> anyhow::Result<()> {
    let cluster = OneNodeCluster::new(2)?;
    web_and_stream(&cluster)?;
    let pod_ips: Vec<String> = cluster.pods.iter().map(|p| p.ip.to_string()).collect();
    let stream_backend = SocketAddr::new(cluster.pods[0].ip, STREAM_PORT);
    start_line_echo(&cluster.pods[0].ns, stream_backend)?;
    let web_endpoints = pod_ips
        .iter()
        .map(|ip| format!("{ip}:{BACKEND_PORT}"))
        .collect();
    let rules = upstream_ruleset(&[
        ("default/web:http", WEB_CLUSTER_IP, 80, web_endpoints),
        (
            "default/stream:http",
            STREAM_CLUSTER_IP,
            STREAM_PORT,
            vec![stream_backend.to_string()],
        ),
        // A Service kube-proxy had and the manifests do not.
        (
            "ns1/svc1:p80",
            "10.96.0.41",
            80,
            vec![format!("{}:{BACKEND_PORT}", pod_ips[1])],
        ),
    ]);
    let path = cluster.dir.join("kube-proxy.rules");
    std::fs::write(&path, &rules)?;
    let path_text = path.display().to_string();
    cluster.node.exec(
        "sh",
        &[
            "-c",
            &format!("iptables-nft-restore --noflush < {path_text}"),
        ],
    )?;

    // kube-proxy's rules work: a long-lived connection through them, and new ones.
    let web = SocketAddr::new(WEB_CLUSTER_IP.parse()?, 80);
    assert!(matches!(
        try_ask(&cluster.client, None, web, Duration::from_secs(2)),
        Outcome::Replied(_)
    ));
    let stream = SocketAddr::new(STREAM_CLUSTER_IP.parse()?, STREAM_PORT);
    let mut conn = cluster.client.run_in(move || {
        let conn = TcpStream::connect_timeout(&stream, Duration::from_secs(2))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(conn)
    })?;
    assert_eq!(exchange(&mut conn, "before\n")?, "before\n");

    // Take over while a client makes new connections back to back.
    let stop = AtomicBool::new(false);
    let mut args = cluster.kproxy_args(&cluster.manifests());
    args.extend([
        "--once".to_owned(),
        "--iptables-backend".to_owned(),
        "nft".to_owned(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (took_over, (answered, failed)) = std::thread::scope(|scope| {
        let prober = scope.spawn(|| probe_until(&cluster.client, web, &stop));
        std::thread::sleep(Duration::from_millis(200));
        let took_over = run_ok(&cluster.node, &args);
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        (took_over, prober.join().unwrap_or((0, usize::MAX)))
    });
    took_over?;
    assert_eq!(
        failed, 0,
        "no new connection fails during the takeover ({answered} answered)"
    );
    assert!(
        answered > 5,
        "the prober ran through the takeover: {answered}"
    );

    assert_eq!(
        exchange(&mut conn, "after\n")?,
        "after\n",
        "the established connection goes on"
    );
    let save = cluster.node.exec("iptables-nft-save", &[])?;
    assert!(
        !save.contains(&svc_chain("ns1/svc1:p80")),
        "kube-proxy's chain of an unknown Service is gone:\n{save}"
    );
    assert!(save.contains(&svc_chain("default/web:http")), "{save}");
    let jumps: Vec<&str> = save
        .lines()
        .filter(|l| {
            ["INPUT", "FORWARD", "OUTPUT", "PREROUTING", "POSTROUTING"]
                .iter()
                .any(|base| l.starts_with(&format!("-A {base} ")))
        })
        .collect();
    let unique: std::collections::BTreeSet<&&str> = jumps.iter().collect();
    assert_eq!(unique.len(), jumps.len(), "no jump rule doubled:\n{save}");
    assert!(
        jumps.len() >= 8,
        "kube-proxy's jumps are kept or rewritten:\n{save}"
    );
    Ok(())
}

/// A node switches modes by restarting kproxy in another mode: each start removes the
/// other modes' rules once its own are live, upstream kube-proxy's nftables table
/// included, and the Service works in every mode.
#[test]
fn modes_switch_by_restart() -> anyhow::Result<()> {
    let cluster = OneNodeCluster::new(2)?;
    web_and_stream(&cluster)?;
    // What upstream's nftables mode leaves (its table, from its golden baseRules).
    cluster.node.exec(
        "sh",
        &["-c", "printf 'add table ip kube-proxy { comment \"rules for kube-proxy\" ; }\\nadd chain ip kube-proxy services\\n' | nft -f -"],
    )?;
    let web = SocketAddr::new(WEB_CLUSTER_IP.parse()?, 80);
    let base = cluster.kproxy_args(&cluster.manifests());
    let once = |mode: &str| -> anyhow::Result<()> {
        let mut args = base.clone();
        args.extend(
            ["--once", "--proxy-mode", mode, "--iptables-backend", "nft"].map(String::from),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_ok(&cluster.node, &args)?;
        let outcome = try_ask(&cluster.client, None, web, Duration::from_secs(2));
        anyhow::ensure!(
            matches!(outcome, Outcome::Replied(_)),
            "{mode}: {outcome:?}"
        );
        Ok(())
    };
    let tables = || cluster.node.exec("nft", &["list", "tables"]);
    let kube_chains = || -> anyhow::Result<usize> {
        Ok(cluster
            .node
            .exec("iptables-nft-save", &[])?
            .matches(":KUBE-")
            .count())
    };

    once("iptables")?;
    let listed = tables()?;
    assert!(
        !listed.contains("kube-proxy"),
        "upstream's table is gone: {listed}"
    );
    assert!(kube_chains()? > 0);
    once("nftables")?;
    assert_eq!(kube_chains()?, 0, "iptables mode's chains are gone");
    assert!(tables()?.contains("table ip kproxy"));
    once("iptables")?;
    assert!(
        !tables()?.contains("table ip kproxy"),
        "nftables mode's table is gone"
    );
    assert!(kube_chains()? > 0);
    Ok(())
}
