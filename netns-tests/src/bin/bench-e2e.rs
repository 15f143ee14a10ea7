//! `bench-e2e`: kproxy measured as a user sees it (root).
//!
//! For each mode, source and size N, a one-node cluster (network namespaces) gets N
//! Services × 3 endpoints, in 100 manifest files (manifest source) or in the in-suite
//! list/watch API server on the node's loopback (API source), and the real `kproxy`
//! binary runs on the node. One
//! Service (`svc-00000`) points at a pod that answers; the others at addresses that are
//! never contacted. Measured from outside kproxy, with fresh TCP connections from a client
//! pod through the Service's ClusterIP:
//!
//! - **first sync**: from starting kproxy to the first connection through the pod;
//! - **change → traffic**: `svc-00000`'s endpoint is switched to the other pod — the file
//!   holding it is replaced (written aside, then renamed over, as editors and ConfigMap
//!   updates do), or its EndpointSlice is updated in the API server; from the rename (the
//!   update) to the first connection answered by the new pod (p50 and max over
//!   `--changes`);
//! - **full resync**: kproxy is restarted with `--full-sync-period 1s`; the duration of
//!   its first *periodic* full sync, as kproxy logs it;
//! - **RSS**: kproxy's peak resident memory (VmHWM) over the first run;
//! - **floor**: the kernel tool's cost for a one-chain change against the same table
//!   (`iptables-restore --noflush` of one chain; `nft -f` of one table), median of 5.
//!
//! Prints a table; writes `target/bench-e2e/results.json` and kproxy's logs under
//! `target/bench-e2e/logs/`. No assertion about speed.
//!
//! Usage: `bench-e2e [--sizes 1000,10000] [--modes nftables,iptables-nft,iptables-legacy,userspace]
//! [--changes 7] [--no-resync]`

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kproxy::source::kube::test_server::{Collection, TestApiServer};
use kproxy_netns_tests::api::NodeApiServer;
use kproxy_netns_tests::kproxy::KproxyProcess;
use kproxy_netns_tests::manifests::{EndpointSpec, PortSpec, ServiceSpec};
use kproxy_netns_tests::netns::Netns;
use kproxy_netns_tests::node::{NODE_IP, NODE_NAME, OneNodeCluster, node_yaml};

/// Files the Services are spread over.
const FILES: usize = 100;
/// The port the bench's backends listen on.
const POD_PORT: u16 = 8080;
/// How long one change may take before the bench gives up on it.
const CHANGE_LIMIT: Duration = Duration::from_secs(600);
/// How long a first sync may take before the bench gives up.
const FIRST_SYNC_LIMIT: Duration = Duration::from_secs(1800);

struct Options {
    sizes: Vec<usize>,
    modes: Vec<String>,
    sources: Vec<Source>,
    changes: usize,
    resync: bool,
}

/// Where kproxy reads the objects from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// `--manifests DIR`: the change is a file renamed over another.
    Manifests,
    /// The Kubernetes API (the in-suite list/watch server on the node's loopback): the
    /// change is an EndpointSlice update, delivered to kproxy's watch.
    Api,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Manifests => "manifests",
            Source::Api => "api",
        }
    }
}

fn parse_args() -> anyhow::Result<Options> {
    let mut opts = Options {
        sizes: vec![1000, 10_000],
        modes: ["nftables", "iptables-nft", "iptables-legacy", "userspace"]
            .map(String::from)
            .to_vec(),
        sources: vec![Source::Manifests, Source::Api],
        changes: 7,
        resync: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--sizes" => {
                opts.sizes = value("--sizes")?
                    .split(',')
                    .map(|s| s.trim().parse().context("--sizes: numbers"))
                    .collect::<anyhow::Result<_>>()?
            }
            "--modes" => opts.modes = value("--modes")?.split(',').map(String::from).collect(),
            "--sources" => {
                opts.sources = value("--sources")?
                    .split(',')
                    .map(|s| match s {
                        "manifests" => Ok(Source::Manifests),
                        "api" => Ok(Source::Api),
                        other => Err(anyhow::anyhow!("unknown source {other:?}")),
                    })
                    .collect::<anyhow::Result<_>>()?
            }
            "--changes" => opts.changes = value("--changes")?.parse().context("--changes")?,
            "--no-resync" => opts.resync = false,
            "--write-manifests" => {
                // For profiling kproxy by hand: write the manifests of N Services to DIR
                // (pod-0 at 10.244.1.10 as svc-00000's endpoint) and exit.
                let dir = PathBuf::from(value("--write-manifests DIR")?);
                let n = value("--write-manifests DIR N")?.parse().context("N")?;
                write_manifests(&dir, n, Ipv4Addr::new(10, 244, 1, 10))?;
                std::process::exit(0);
            }
            "--bench" => {} // passed by `cargo bench`
            "-h" | "--help" => {
                println!(
                    "usage: bench-e2e [--sizes 1000,10000] [--modes nftables,iptables-nft,iptables-legacy,userspace] [--sources manifests,api] [--changes 7] [--no-resync]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    for mode in &opts.modes {
        mode_flags(mode)?;
    }
    Ok(opts)
}

/// kproxy's flags for a mode name of this bench.
fn mode_flags(mode: &str) -> anyhow::Result<Vec<&'static str>> {
    Ok(match mode {
        "nftables" => vec!["--proxy-mode", "nftables"],
        "iptables-nft" => vec!["--proxy-mode", "iptables", "--iptables-backend", "nft"],
        "iptables-legacy" => vec!["--proxy-mode", "iptables", "--iptables-backend", "legacy"],
        "userspace" => vec!["--proxy-mode", "userspace"],
        other => bail!("unknown mode {other:?}"),
    })
}

/// One row of the table.
#[derive(Debug, Clone)]
struct Row {
    mode: String,
    source: Source,
    services: usize,
    first_sync: Duration,
    changes: Vec<Duration>,
    full_resync: Option<Duration>,
    rss_peak_kib: Option<u64>,
    floor: Option<Duration>,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench-e2e: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    kproxy_netns_tests::netns::require_root()?;
    let opts = parse_args()?;
    let mut rows = Vec::new();
    for &n in &opts.sizes {
        for mode in &opts.modes {
            for &source in &opts.sources {
                let what = format!("{mode}, {} source, {n} Services", source.name());
                eprintln!("==> {what} × 3 endpoints");
                let row = measure(mode, n, source, &opts).with_context(|| what.clone())?;
                eprintln!("    {}", row_text(&row));
                rows.push(row);
            }
        }
    }
    println!("{}", table(&rows));
    let out = PathBuf::from("target/bench-e2e");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("results.json"), format!("{:#}\n", json(&rows)))?;
    eprintln!("wrote {}", out.join("results.json").display());
    Ok(())
}

/// The ClusterIP of Service `i`.
fn cluster_ip(i: usize) -> anyhow::Result<Ipv4Addr> {
    let base = u32::from(Ipv4Addr::new(10, 96, 0, 10));
    Ok(Ipv4Addr::from(base + u32::try_from(i)?))
}

/// Service `i`: three never-contacted endpoints, except `svc-00000`, which has `target`.
fn service(i: usize, target: Ipv4Addr) -> anyhow::Result<ServiceSpec> {
    let mut spec = ServiceSpec::new(
        &format!("svc-{i:05}"),
        cluster_ip(i)?,
        vec![PortSpec::tcp("http", 80, POD_PORT)],
    );
    spec.endpoints = if i == 0 {
        vec![EndpointSpec::ready(target, NODE_NAME)]
    } else {
        let base = u32::from(Ipv4Addr::new(10, 128, 0, 0)) + 3 * u32::try_from(i)?;
        (0..3)
            .map(|j| EndpointSpec::ready(Ipv4Addr::from(base + j), "node-b"))
            .collect()
    };
    Ok(spec)
}

/// The text of manifest file `f` of `n` Services.
fn manifest_file(f: usize, n: usize, target: Ipv4Addr) -> anyhow::Result<String> {
    let per_file = n.div_ceil(FILES);
    let mut text = String::new();
    for i in (f * per_file..((f + 1) * per_file).min(n)).map(|i| service(i, target)) {
        text.push_str("---\n");
        text.push_str(&i?.to_manifest());
    }
    Ok(text)
}

/// The node and `n` Services in [`FILES`] files.
fn write_manifests(dir: &Path, n: usize, target: Ipv4Addr) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("node.yaml"), node_yaml())?;
    for f in 0..FILES {
        std::fs::write(dir.join(file_name(f)), manifest_file(f, n, target)?)?;
    }
    Ok(())
}

fn file_name(f: usize) -> String {
    format!("services-{f:03}.yaml")
}

fn measure(mode: &str, n: usize, source: Source, opts: &Options) -> anyhow::Result<Row> {
    let cluster = OneNodeCluster::new(0)?;
    let pods = [
        BenchPod::start(&cluster, "pod-0", 10)?,
        BenchPod::start(&cluster, "pod-1", 11)?,
    ];
    let dir = cluster.manifests();
    let api = match source {
        Source::Manifests => {
            write_manifests(&dir, n, pods[0].ip)?;
            None
        }
        Source::Api => Some(api_server(&cluster.node, n, pods[0].ip)?),
    };
    let vip = SocketAddr::new(cluster_ip(0)?.into(), 80);
    let mut args: Vec<String> = match &api {
        None => cluster.kproxy_args(&dir),
        Some(api) => cluster
            .kproxy_args(&dir)
            .into_iter()
            .skip(2) // --manifests DIR
            .chain(["--master".to_owned(), api.url.clone()])
            .collect(),
    };
    args.extend(mode_flags(mode)?.into_iter().map(String::from));
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();

    let started = Instant::now();
    let kproxy = KproxyProcess::start(&cluster.node, &arg_refs, cluster.dir.join("kproxy.log"))?;
    let client = ClientProbe::new(&cluster.client, vip, kproxy.pid());
    client
        .wait_for(&pods[0].name, started, FIRST_SYNC_LIMIT)
        .with_context(|| format!("first sync; kproxy log:\n{}", tail(&kproxy.log())))?;
    let first_sync = started.elapsed();
    let mut changes = Vec::new();
    for k in 0..opts.changes {
        // Past --min-sync-period (1 s) since the last sync, as a change usually is.
        std::thread::sleep(Duration::from_millis(1200));
        let target = &pods[(k + 1) % 2];
        let change = match &api {
            None => {
                let tmp = dir.join(format!(".{}.tmp", file_name(0)));
                std::fs::write(&tmp, manifest_file(0, n, target.ip)?)?;
                Change::Rename(tmp, dir.join(file_name(0)))
            }
            Some(api) => Change::Apply(api.server.clone(), service(0, target.ip)?.endpoint_slice()),
        };
        changes.push(client.change_and_wait(change, &target.name)?);
    }
    let rss_peak_kib = peak_rss_kib(kproxy.pid());
    keep_log(&kproxy.log(), &format!("{mode}-{}-{n}.log", source.name()))?;
    let floor = floor(mode, &cluster.node)?;
    drop(kproxy);
    let full_resync = if opts.resync {
        Some(periodic_full_sync(&cluster, &arg_refs)?)
    } else {
        None
    };
    drop(api);
    drop(pods);
    Ok(Row {
        mode: mode.to_owned(),
        source,
        services: n,
        first_sync,
        changes,
        full_resync,
        rss_peak_kib,
        floor,
    })
}

/// How a change is made, timed from the moment it is made.
enum Change {
    /// Rename a file written aside over a manifest file.
    Rename(PathBuf, PathBuf),
    /// Update an EndpointSlice in the API server.
    Apply(Arc<TestApiServer>, serde_json::Value),
}

impl Change {
    fn make(self) -> anyhow::Result<()> {
        match self {
            Change::Rename(from, to) => Ok(std::fs::rename(from, to)?),
            Change::Apply(server, slice) => {
                server.apply(Collection::EndpointSlices, slice);
                Ok(())
            }
        }
    }
}

/// The in-suite API server in the node, holding the node and `n` Services with their
/// slices.
fn api_server(node: &Netns, n: usize, target: Ipv4Addr) -> anyhow::Result<NodeApiServer> {
    let api = NodeApiServer::start(node)?;
    api.server.apply(Collection::Nodes, node_object());
    for i in 0..n {
        let spec = service(i, target)?;
        api.server.apply(Collection::Services, spec.service());
        api.server
            .apply(Collection::EndpointSlices, spec.endpoint_slice());
    }
    Ok(api)
}

/// This node's Node object (as `node_yaml`).
fn node_object() -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": NODE_NAME, "labels": {"topology.kubernetes.io/zone": "zone-a"}},
        "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}]},
    })
}

/// Restarts kproxy with `--full-sync-period 1s` and returns how long its first periodic
/// full sync took (the second `full=true` report of its log).
fn periodic_full_sync(cluster: &OneNodeCluster, args: &[&str]) -> anyhow::Result<Duration> {
    let mut args = args.to_vec();
    args.extend(["--full-sync-period", "1s"]);
    let kproxy = KproxyProcess::start(&cluster.node, &args, cluster.dir.join("resync.log"))?;
    let needle = "full=true";
    kproxy.wait_for_log(needle, 2, FIRST_SYNC_LIMIT * 2)?;
    let log = kproxy.log();
    let line = log
        .lines()
        .filter(|l| l.contains(needle) && l.contains("synced rules"))
        .nth(1)
        .context("no second full sync in the log")?;
    let ms = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("took_ms="))
        .and_then(|v| v.trim_matches('"').parse::<f64>().ok())
        .with_context(|| format!("no took_ms in {line:?}"))?;
    Ok(Duration::from_secs_f64(ms / 1e3))
}

/// The kernel tool's cost for a one-chain (one-table) change, median of 5; `None` for
/// userspace mode.
fn floor(mode: &str, node: &Netns) -> anyhow::Result<Option<Duration>> {
    let (tool, input) = match mode {
        "iptables-nft" => ("iptables-nft-restore", IPTABLES_FLOOR),
        "iptables-legacy" => ("iptables-legacy-restore", IPTABLES_FLOOR),
        "nftables" => ("nft", NFT_FLOOR),
        _ => return Ok(None),
    };
    let args: &[&str] = if tool == "nft" {
        &["-f", "-"]
    } else {
        &["--noflush"]
    };
    let mut times = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", node.name(), tool])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(input.as_bytes())?;
        let status = child.wait()?;
        anyhow::ensure!(status.success(), "{tool} failed");
        times.push(start.elapsed());
    }
    times.sort();
    Ok(Some(times[times.len() / 2]))
}

const IPTABLES_FLOOR: &str =
    "*nat\n:KPROXY-BENCH-FLOOR - [0:0]\n-A KPROXY-BENCH-FLOOR -j RETURN\nCOMMIT\n";
const NFT_FLOOR: &str = "add table ip kproxy-bench-floor\nflush table ip kproxy-bench-floor\nadd chain ip kproxy-bench-floor c\nadd rule ip kproxy-bench-floor c return\n";

/// Copies a kproxy log to `target/bench-e2e/logs/` (to see where time went).
fn keep_log(log: &str, name: &str) -> anyhow::Result<()> {
    let dir = PathBuf::from("target/bench-e2e/logs");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(name), log)?;
    Ok(())
}

/// kproxy's peak resident set (VmHWM) in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A backend pod that answers each connection with its name and closes; its accept loop
/// wakes every 100 ms to see whether it should stop.
struct BenchPod {
    name: String,
    ip: Ipv4Addr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
    /// Deleted after the thread has stopped (fields drop after `Drop::drop`).
    _ns: Netns,
}

impl BenchPod {
    fn start(cluster: &OneNodeCluster, name: &str, host: u8) -> anyhow::Result<Self> {
        let ns = Netns::new(&format!("{}-{name}", cluster.node.name()))?;
        let ip = Ipv4Addr::new(10, 244, 1, host);
        kproxy_netns_tests::node::attach_pod(&cluster.node, &ns, &format!("vb{host}"), host)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, pod) = (stop.clone(), name.to_owned());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = ns.spawn(move || {
            let listener =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            listener.set_reuse_address(true)?;
            listener.bind(&SocketAddr::new(ip.into(), POD_PORT).into())?;
            listener.listen(1024)?;
            listener.set_read_timeout(Some(Duration::from_millis(100)))?;
            let _ = ready_tx.send(());
            let started = Instant::now();
            while !flag.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(7200) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let mut conn: TcpStream = conn.into();
                        let _ = conn.write_all(format!("{pod}\n").as_bytes());
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock
                                | std::io::ErrorKind::TimedOut
                                | std::io::ErrorKind::Interrupted
                        ) => {}
                    // A client that gave up before the accept (ECONNABORTED, ...) does not
                    // stop the pod.
                    Err(e) => {
                        eprintln!("    {pod}: accept: {e}");
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
            Ok(())
        })?;
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .context("bench pod did not start")?;
        Ok(BenchPod {
            name: name.to_owned(),
            ip,
            stop,
            thread: Some(thread),
            _ns: ns,
        })
    }
}

impl Drop for BenchPod {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Fresh TCP connections from the client pod to the Service.
struct ClientProbe<'a> {
    ns: &'a Netns,
    vip: SocketAddr,
    /// kproxy's process: probing stops if it exits.
    kproxy: u32,
}

impl ClientProbe<'_> {
    fn new(ns: &Netns, vip: SocketAddr, kproxy: u32) -> ClientProbe<'_> {
        ClientProbe { ns, vip, kproxy }
    }

    /// Probes until `pod` answers; the time since `since`.
    fn wait_for(&self, pod: &str, since: Instant, limit: Duration) -> anyhow::Result<Duration> {
        let (vip, pod, kproxy) = (self.vip, pod.to_owned(), self.kproxy);
        self.ns
            .run_in(move || probe_until(vip, &pod, since, limit, kproxy))
    }

    /// Makes the change and probes until `pod` answers; the time from the change.
    fn change_and_wait(&self, change: Change, pod: &str) -> anyhow::Result<Duration> {
        let (vip, kproxy, pod) = (self.vip, self.kproxy, pod.to_owned());
        self.ns.run_in(move || {
            let since = Instant::now();
            change.make()?;
            probe_until(vip, &pod, since, CHANGE_LIMIT, kproxy)
        })
    }
}

/// Connects again and again (paced, bounded by `limit`) until `pod` answers; gives up
/// when process `kproxy` has exited.
fn probe_until(
    vip: SocketAddr,
    pod: &str,
    since: Instant,
    limit: Duration,
    kproxy: u32,
) -> anyhow::Result<Duration> {
    for attempt in 0u64.. {
        let elapsed = since.elapsed();
        if ask(vip).as_deref() == Some(pod) {
            return Ok(since.elapsed());
        }
        if elapsed > limit {
            bail!("{pod} did not answer on {vip} within {limit:?}");
        }
        if attempt % 100 == 99 && !running(kproxy) {
            bail!("kproxy exited");
        }
        // Fine-grained at first, coarser for slow modes (bounds the connection count).
        let pause = if elapsed < Duration::from_secs(1) {
            200
        } else {
            5000
        };
        std::thread::sleep(Duration::from_micros(pause));
    }
    unreachable!("the loop above only ends by returning")
}

/// Whether process `pid` runs (exists and is not a zombie).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        !s.lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
    })
}

/// One connection: the name the backend answered with, `None` on any failure. The
/// socket closes with a reset (linger 0) so the client leaves no TIME_WAIT behind.
fn ask(vip: SocketAddr) -> Option<String> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    socket.set_linger(Some(Duration::ZERO)).ok()?;
    socket
        .connect_timeout(&vip.into(), Duration::from_millis(100))
        .ok()?;
    let conn: TcpStream = socket.into();
    conn.set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line).ok()?;
    Some(line.trim().to_owned())
}

fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    Some(sorted[i])
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

fn row_text(r: &Row) -> String {
    format!(
        "first sync {:.2} s, changes {:?} ms",
        r.first_sync.as_secs_f64(),
        r.changes.iter().map(|d| ms(*d)).collect::<Vec<_>>()
    )
}

fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| mode | source | services | first sync (s) | change → traffic p50 (ms) | max (ms) | periodic full resync (s) | kernel floor (ms) | kproxy peak RSS (MiB) |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let mut sorted = r.changes.clone();
        sorted.sort();
        let cell =
            |d: Option<Duration>, f: fn(Duration) -> String| d.map(f).unwrap_or_else(|| "–".into());
        out.push_str(&format!(
            "| {} | {} | {} | {:.2} | {} | {} | {} | {} | {} |\n",
            r.mode,
            r.source.name(),
            r.services,
            r.first_sync.as_secs_f64(),
            cell(percentile(&sorted, 0.5), ms),
            cell(sorted.last().copied(), ms),
            cell(r.full_resync, |d| format!("{:.2}", d.as_secs_f64())),
            cell(r.floor, ms),
            r.rss_peak_kib
                .map(|k| format!("{:.0}", k as f64 / 1024.0))
                .unwrap_or_else(|| "–".into()),
        ));
    }
    out
}

fn json(rows: &[Row]) -> serde_json::Value {
    serde_json::Value::Array(
        rows.iter()
            .map(|r| {
                serde_json::json!({
                    "mode": r.mode,
                    "source": r.source.name(),
                    "services": r.services,
                    "first_sync_s": r.first_sync.as_secs_f64(),
                    "change_ms": r.changes.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>(),
                    "full_resync_s": r.full_resync.map(|d| d.as_secs_f64()),
                    "floor_ms": r.floor.map(|d| d.as_secs_f64() * 1e3),
                    "rss_peak_kib": r.rss_peak_kib,
                })
            })
            .collect(),
    )
}
