//! `run-netns`: the demo and smoke run of kproxy on one machine (root).
//!
//! Builds a 3-node rig, programs a handful of Services with kproxy in the chosen mode,
//! sends traffic, and prints per Service: endpoints, hits per backend, the chi-square
//! p-value, whether probes left the source node already DNATed, and kproxy's sync times;
//! writes the same as an SVG bar chart. Exits non-zero if any Service misbehaves.
//!
//! Usage: `run-netns [--mode iptables|nftables|userspace] [--requests N] [--out DIR]`
//! (IPVS runs in the qemu guest of `scripts/run-ipvs-vm.sh`: this kernel has no IP_VS.)

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use kproxy_netns_tests::manifests::{PortSpec, ServiceSpec, ServiceType};
use kproxy_netns_tests::report::{ServiceResult, svg, text_table};
use kproxy_netns_tests::scenario::{BACKEND_PORT, Cluster, Hits};
use kproxy_netns_tests::stats::{P_FLOOR, chi_square_uniform};
use kproxy_netns_tests::traffic::probe::ProbeProtocol;

struct Options {
    mode: String,
    requests: usize,
    out: PathBuf,
}

fn parse_args() -> anyhow::Result<Options> {
    let mut opts = Options {
        mode: "iptables".into(),
        requests: 300,
        out: PathBuf::from("target/run-netns"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--mode" => opts.mode = value("--mode")?,
            "--requests" => {
                opts.requests = value("--requests")?
                    .parse()
                    .context("--requests: a number")?
            }
            "--out" => opts.out = value("--out")?.into(),
            "-h" | "--help" => {
                println!(
                    "usage: run-netns [--mode iptables|nftables|userspace] [--requests N] [--out DIR]\n\
                     \n\
                     --mode      proxy mode of every node's kproxy (default iptables; ipvs needs a\n\
                     \x20           kernel with IP_VS: scripts/run-ipvs-vm.sh)\n\
                     --requests  requests per Service (default 300)\n\
                     --out       where the SVG chart goes (default target/run-netns)"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(opts)
}

fn progress(msg: &str) {
    eprintln!("==> {msg}");
}

fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

/// One Service of the demo, how it is reached, and what it should reach.
struct Case {
    spec: ServiceSpec,
    client: Client,
    target: SocketAddr,
    udp: bool,
    /// Backends the traffic must spread over evenly (None: skip the chi-square test).
    even: bool,
    expected: Vec<&'static str>,
    probe: Option<(&'static str, SocketAddrV4, ProbeProtocol)>,
}

enum Client {
    Pod(&'static str),
    External,
}

fn cases(c: &Cluster) -> anyhow::Result<Vec<Case>> {
    let ep = |names: &[&str]| {
        names
            .iter()
            .map(|n| c.endpoint(n))
            .collect::<anyhow::Result<Vec<_>>>()
    };
    let mut web = ServiceSpec::new(
        "web",
        ip(10, 96, 0, 10),
        vec![PortSpec::tcp("http", 80, BACKEND_PORT)],
    );
    web.endpoints = ep(&["pod-0-1", "pod-1-0", "pod-2-0"])?;
    let mut api = ServiceSpec::new(
        "api",
        ip(10, 96, 0, 20),
        vec![PortSpec::tcp("http", 80, BACKEND_PORT).node_port(30080)],
    );
    api.service_type = ServiceType::NodePort;
    api.endpoints = ep(&["pod-1-1", "pod-2-1"])?;
    let mut dns = ServiceSpec::new(
        "dns",
        ip(10, 96, 0, 53),
        vec![PortSpec::udp("dns", 53, BACKEND_PORT)],
    );
    dns.endpoints = ep(&["pod-0-1", "pod-1-1", "pod-2-1"])?;
    let mut lb = ServiceSpec::new(
        "edge",
        ip(10, 96, 0, 40),
        vec![PortSpec::tcp("http", 80, BACKEND_PORT).node_port(30090)],
    );
    lb.service_type = ServiceType::LoadBalancer;
    lb.load_balancer_ips = vec![ip(203, 0, 113, 40)];
    lb.external_local = true;
    lb.health_check_node_port = Some(32090);
    lb.endpoints = ep(&["pod-1-0", "pod-1-1", "pod-2-0"])?;
    let mut sticky = ServiceSpec::new(
        "sticky",
        ip(10, 96, 0, 30),
        vec![PortSpec::tcp("http", 80, BACKEND_PORT)],
    );
    sticky.affinity_timeout = Some(600);
    sticky.endpoints = ep(&["pod-0-1", "pod-1-0", "pod-2-1"])?;
    let vip = |spec: &ServiceSpec, port| {
        SocketAddr::new(
            IpAddr::V4(spec.cluster_ip.unwrap_or(Ipv4Addr::UNSPECIFIED)),
            port,
        )
    };
    Ok(vec![
        Case {
            target: vip(&web, 80),
            probe: Some((
                "pod-0-0",
                SocketAddrV4::new(ip(10, 96, 0, 10), 80),
                ProbeProtocol::TcpSyn,
            )),
            spec: web,
            client: Client::Pod("pod-0-0"),
            udp: false,
            even: true,
            expected: vec!["pod-0-1", "pod-1-0", "pod-2-0"],
        },
        Case {
            target: SocketAddr::new(IpAddr::V4(c.node_ip(0)), 30080),
            spec: api,
            client: Client::External,
            udp: false,
            even: true,
            expected: vec!["pod-1-1", "pod-2-1"],
            probe: None,
        },
        Case {
            target: vip(&dns, 53),
            probe: Some((
                "pod-1-0",
                SocketAddrV4::new(ip(10, 96, 0, 53), 53),
                ProbeProtocol::Udp,
            )),
            spec: dns,
            client: Client::Pod("pod-1-0"),
            udp: true,
            even: true,
            expected: vec!["pod-0-1", "pod-1-1", "pod-2-1"],
        },
        Case {
            // eTP Local through a VIP routed to node-1: only node-1's endpoints.
            target: SocketAddr::new(IpAddr::V4(ip(203, 0, 113, 40)), 80),
            spec: lb,
            client: Client::External,
            udp: false,
            even: true,
            expected: vec!["pod-1-0", "pod-1-1"],
            probe: None,
        },
        Case {
            target: vip(&sticky, 80),
            spec: sticky,
            client: Client::Pod("pod-2-0"),
            udp: false,
            even: false,
            expected: vec!["pod-0-1", "pod-1-0", "pod-2-1"],
            probe: None,
        },
    ])
}

fn path_of(case: &Case) -> String {
    let proto = if case.udp { "UDP" } else { "TCP" };
    let from = match case.client {
        Client::Pod(p) => p,
        Client::External => "external",
    };
    format!("{proto} {} from {from}", case.target)
}

fn measure(c: &Cluster, case: &Case, requests: usize) -> anyhow::Result<ServiceResult> {
    let ns = match case.client {
        Client::Pod(p) => c.pod_ns(p)?,
        Client::External => &c.rig.external,
    };
    let sample = || -> Hits {
        if case.udp {
            c.udp_hits(ns, case.target, requests)
        } else {
            c.tcp_hits(ns, case.target, requests)
        }
    };
    let endpoints: Vec<String> = case.expected.iter().map(|s| s.to_string()).collect();
    let judge = |hits: &Hits| {
        case.even.then(|| {
            let counts: Vec<usize> = endpoints
                .iter()
                .map(|e| hits.per_pod.get(e).copied().unwrap_or(0))
                .collect();
            chi_square_uniform(&counts, endpoints.len())
        })
    };
    let mut hits = sample();
    let mut chi_square = judge(&hits);
    // A fair balancer falls below the floor once in 1/P_FLOOR samples, and a run judges
    // five services in each of three modes: one fresh sample decides. A real skew fails
    // both.
    if let Some(p) = chi_square
        .as_ref()
        .map(|chi| chi.p_value)
        .filter(|p| *p < P_FLOOR)
    {
        progress(&format!(
            "{}: uneven spread (p = {p:.1e}) {:?}: sampling again",
            case.spec.name, hits.per_pod
        ));
        hits = sample();
        chi_square = judge(&hits);
    }
    let dnat_on_source = match case.probe {
        Some((from, dst, protocol)) => {
            Some(c.dnat_on_source(from, dst, protocol, &case.expected, 50)?)
        }
        None => None,
    };
    let mut result = ServiceResult {
        name: case.spec.name.clone(),
        path: path_of(case),
        endpoints,
        hits: hits.per_pod,
        failures: hits.failures,
        chi_square,
        dnat_on_source,
        programmed_ms: None,
    };
    if !case.even && result.hits.len() != 1 {
        // Session affinity: one client must stick to one backend.
        result.failures += result.hits.len().saturating_sub(1);
    }
    Ok(result)
}

/// Sync durations (ms) from every node's kproxy log.
fn sync_times(c: &Cluster) -> Vec<f64> {
    (0..c.rig.nodes.len())
        .flat_map(|i| {
            c.rig
                .kproxy_log(i)
                .lines()
                .filter_map(|l| {
                    let v = l.split("took_ms=").nth(1)?.split_whitespace().next()?;
                    v.trim_matches('"').parse().ok()
                })
                .collect::<Vec<f64>>()
        })
        .collect()
}

fn run(opts: &Options) -> anyhow::Result<bool> {
    let started = Instant::now();
    progress(&format!(
        "building a 3-node rig (2 pods per node) and starting kproxy in {} mode",
        opts.mode
    ));
    let mut cluster = Cluster::start(&opts.mode, 3, 2, &[], &[])?;
    progress(&format!("rig up in {:?}", cluster.rig.build_time()));
    let cases = cases(&cluster)?;
    let mut programmed = Vec::new();
    for case in &cases {
        let took = cluster.apply(&case.spec)?;
        progress(&format!(
            "service {} programmed on all nodes in {took:?}",
            case.spec.name
        ));
        programmed.push(took);
    }
    cluster.rig.route_vips_via(1)?;
    let mut results = Vec::new();
    for (case, took) in cases.iter().zip(programmed) {
        progress(&format!(
            "sending {} requests: {}",
            opts.requests,
            path_of(case)
        ));
        let mut result = measure(&cluster, case, opts.requests)?;
        result.programmed_ms = Some(took.as_secs_f64() * 1e3);
        results.push(result);
    }
    let syncs = sync_times(&cluster);
    println!("\n{}", text_table(&opts.mode, &results, &syncs));
    std::fs::create_dir_all(&opts.out)?;
    let file = opts.out.join(format!("report-{}.svg", opts.mode));
    std::fs::write(&file, svg(&opts.mode, &results))?;
    println!("chart: {}", file.display());
    progress(&format!(
        "done in {:.1?}; tearing the rig down",
        started.elapsed()
    ));
    Ok(results.iter().all(ServiceResult::ok))
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("run-netns: {e:#}");
            return ExitCode::from(2);
        }
    };
    match run(&opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("run-netns: some services did not behave (✗ above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("run-netns: {e:#}");
            ExitCode::FAILURE
        }
    }
}
