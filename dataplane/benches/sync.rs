//! Sync benchmark of nftables, iptables and IPVS modes (root only; IPVS needs a kernel
//! with IP_VS: `scripts/bench-sync.sh --ipvs-vm` runs this benchmark in the qemu guest).
//!
//! For each mode and size, on a dedicated thread in a fresh network namespace
//! (`unshare(CLONE_NEWNET)`), builds a synthetic plan of N ClusterIP services × E endpoints
//! (the first 2000 also with a NodePort) and measures: the first full sync, a second full
//! sync over it, and partial syncs that each change one endpoint of one service.
//!
//! ```text
//! cargo bench -p kproxy-dataplane --bench sync -- [--sizes 1000,10000,50000]
//!     [--modes nftables,iptables-nft,iptables-legacy,ipvs] [--endpoints 3] [--partials 5]
//! ```

use std::time::{Duration, Instant};

use kproxy_dataplane::iptables::apply::BackendChoice;
use kproxy_dataplane::iptables::proxier::IptablesProxier;
use kproxy_dataplane::ipvs::{IpvsOptions, IpvsProxier};
use kproxy_dataplane::nftables::proxier::NftablesProxier;
use kproxy_dataplane::plan::*;

#[path = "../tests/support/mod.rs"]
mod support;

use kproxy_dataplane::fixtures::{synthetic_endpoint, synthetic_plan};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Nftables,
    IptablesNft,
    IptablesLegacy,
    Ipvs,
}

impl Mode {
    fn parse(s: &str) -> Result<Mode, String> {
        match s {
            "nftables" => Ok(Mode::Nftables),
            "iptables-nft" => Ok(Mode::IptablesNft),
            "iptables-legacy" => Ok(Mode::IptablesLegacy),
            "ipvs" => Ok(Mode::Ipvs),
            other => Err(format!("unknown mode {other:?}")),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Nftables => "nftables",
            Mode::IptablesNft => "iptables (nft)",
            Mode::IptablesLegacy => "iptables (legacy)",
            Mode::Ipvs => "ipvs",
        }
    }
}

struct Args {
    sizes: Vec<usize>,
    modes: Vec<Mode>,
    endpoints: usize,
    partials: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        sizes: vec![1000, 10_000, 50_000],
        modes: vec![Mode::Nftables, Mode::IptablesNft, Mode::IptablesLegacy],
        endpoints: 3,
        partials: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--sizes" => {
                args.sizes = value()?
                    .split(',')
                    .map(|s| s.trim().parse().map_err(|e| format!("size {s:?}: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--modes" => {
                args.modes = value()?
                    .split(',')
                    .map(|s| Mode::parse(s.trim()))
                    .collect::<Result<_, _>>()?
            }
            "--endpoints" => {
                args.endpoints = value()?.parse().map_err(|e| format!("--endpoints: {e}"))?
            }
            "--partials" => {
                args.partials = value()?.parse().map_err(|e| format!("--partials: {e}"))?
            }
            // `cargo bench` passes `--bench`; ignore it and any libtest flag.
            _ => {}
        }
    }
    Ok(args)
}

/// Replaces endpoint 1 of service `i` with a fresh address.
fn change_one_endpoint(plan: &mut ProxyPlan, i: usize, generation: usize) {
    let per_service = plan.services[i].cluster_endpoints.len();
    if let Some(ep) = plan.services[i]
        .cluster_endpoints
        .get_mut(1 % per_service.max(1))
    {
        *ep = synthetic_endpoint(i, 1, per_service, generation);
    }
}

enum Proxier {
    Nft(NftablesProxier),
    Ipt(IptablesProxier),
    Ipvs(IpvsProxier),
}

impl Proxier {
    async fn new(mode: Mode) -> Result<Self, String> {
        let families = [IpFamily::V4];
        match mode {
            Mode::Nftables => NftablesProxier::new(families)
                .await
                .map(Proxier::Nft)
                .map_err(|e| e.to_string()),
            Mode::IptablesNft | Mode::IptablesLegacy => {
                let choice = if mode == Mode::IptablesNft {
                    BackendChoice::Nft
                } else {
                    BackendChoice::Legacy
                };
                IptablesProxier::new(choice, families)
                    .await
                    .map(Proxier::Ipt)
                    .map_err(|e| e.to_string())
            }
            // Blocking calls, as in kproxy (which runs them on tokio's blocking pool).
            Mode::Ipvs => IpvsProxier::new(
                IpvsOptions {
                    iptables: Some("iptables-nft".into()),
                    ..IpvsOptions::default()
                },
                families,
            )
            .map(Proxier::Ipvs)
            .map_err(|e| e.to_string()),
        }
    }

    async fn sync(&mut self, plan: &ProxyPlan, full: bool) -> Result<Duration, String> {
        let start = Instant::now();
        match self {
            Proxier::Nft(p) => p.sync(plan, full).await.map_err(|e| e.to_string())?,
            Proxier::Ipt(p) => p.sync(plan, full).await.map_err(|e| e.to_string())?,
            Proxier::Ipvs(p) => p.sync(plan, full).map_err(|e| e.to_string())?,
        };
        Ok(start.elapsed())
    }
}

struct Measurement {
    full: Duration,
    resync: Duration,
    partial_median: Duration,
    partial_max: Duration,
}

fn measure(mode: Mode, n: usize, args: &Args) -> Result<Measurement, String> {
    let plan = synthetic_plan(n, args.endpoints);
    let partials = args.partials.max(1);
    std::thread::spawn(move || -> Result<Measurement, String> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("unshare(CLONE_NEWNET) (run as root): {e}"))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let mut plan = plan;
            let mut proxier = Proxier::new(mode).await?;
            let full = proxier.sync(&plan, true).await?;
            let resync = proxier.sync(&plan, true).await?;
            let mut times = Vec::new();
            for k in 0..partials {
                change_one_endpoint(&mut plan, (n / 2 + k * 7) % n.max(1), k + 1);
                times.push(proxier.sync(&plan, false).await?);
            }
            times.sort();
            Ok(Measurement {
                full,
                resync,
                partial_median: times[times.len() / 2],
                partial_max: times[times.len() - 1],
            })
        })
    })
    .join()
    .map_err(|_| "benchmark thread panicked".to_owned())?
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sync bench: {e}");
            std::process::exit(2);
        }
    };
    let header = format!(
        "| {:<18} | {:>8} | {:>9} | {:>11} | {:>22} | {:>18} |",
        "mode", "services", "full sync", "full resync", "partial, median (ms)", "partial, max (ms)"
    );
    let mut rows = Vec::new();
    for &n in &args.sizes {
        for &mode in &args.modes {
            eprintln!(
                "measuring {} at {n} services × {} endpoints ...",
                mode.name(),
                args.endpoints
            );
            let row = match measure(mode, n, &args) {
                Ok(m) => format!(
                    "| {:<18} | {:>8} | {:>9} | {:>11} | {:>22} | {:>18} |",
                    mode.name(),
                    n,
                    secs(m.full),
                    secs(m.resync),
                    millis(m.partial_median),
                    millis(m.partial_max)
                ),
                Err(e) => format!("| {:<18} | {:>8} | failed: {e}", mode.name(), n),
            };
            eprintln!("{row}");
            rows.push(row);
        }
    }
    println!("\n{header}");
    println!("|{}|", "-".repeat(header.len() - 2));
    for row in rows {
        println!("{row}");
    }
}
