//! The `kproxy` commands: run, `--once`, `--cleanup` and `render`.

use std::process::ExitCode;

use kproxy_dataplane::iptables::apply::conntrack_tcp_be_liberal;
use kproxy_dataplane::iptables::proxier::IptablesProxier;
use kproxy_dataplane::iptables::render::{RenderOptions, render};
use kproxy_dataplane::plan::IpFamily;

use crate::cli::{Cli, Command, ProxyArgs, Settings};
use crate::node::node_name;
use crate::source::{Loaded, ManifestWatcher, ValidationOptions, load_manifests};
use crate::sync::{self, log_reports, plan_for, report_problems};

/// Runs the command line.
pub async fn main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Some(Command::Render(args)) => render_command(&args),
        None if cli.proxy.cleanup => cleanup(&cli.proxy.settings()?).await,
        None => {
            let settings = cli.proxy.settings()?;
            if cli.proxy.once {
                once(&settings).await
            } else {
                run(&settings).await
            }
        }
    }
}

fn validation_options(settings: &Settings) -> ValidationOptions {
    ValidationOptions {
        node_port_range: settings.node_port_range.clone(),
    }
}

/// Loads the manifests once; a path that cannot be read is an error.
fn load(settings: &Settings) -> anyhow::Result<Loaded> {
    let path = settings
        .manifests
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("--manifests PATH is required (a file or directory of Service, EndpointSlice and Node manifests)"))?;
    anyhow::ensure!(
        path.exists(),
        "--manifests {}: no such file or directory",
        path.display()
    );
    let loaded = load_manifests(path, &validation_options(settings));
    report_problems(&loaded);
    Ok(loaded)
}

async fn dataplane_for(
    settings: &Settings,
    families: Vec<IpFamily>,
) -> anyhow::Result<IptablesProxier> {
    Ok(IptablesProxier::new(settings.iptables_backend, families).await?)
}

async fn once(settings: &Settings) -> anyhow::Result<ExitCode> {
    let name = node_name(settings.hostname_override.as_deref())?;
    let loaded = load(settings)?;
    let plan = plan_for(settings, &name, &loaded.snapshot)?;
    let mut dataplane = dataplane_for(settings, plan.node.families().collect()).await?;
    let reports = dataplane
        .sync(&plan, true)
        .await
        .map_err(|e| anyhow::anyhow!("sync failed, rules not live: {e}"))?;
    log_reports(&reports);
    println!(
        "kproxy: rules live for {} service ports on node {name} ({} problems in manifests)",
        plan.services.len(),
        loaded.problems.len()
    );
    Ok(ExitCode::SUCCESS)
}

async fn run(settings: &Settings) -> anyhow::Result<ExitCode> {
    let name = node_name(settings.hostname_override.as_deref())?;
    let loaded = load(settings)?;
    let plan = plan_for(settings, &name, &loaded.snapshot)?;
    let families: Vec<IpFamily> = plan.node.families().collect();
    tracing::info!(node = %name, families = ?families, "starting kproxy in iptables mode");
    let dataplane = dataplane_for(settings, families).await?;
    let path = settings.manifests.clone().unwrap_or_default();
    let watcher = ManifestWatcher::new(path, validation_options(settings));
    sync::run(settings, &name, watcher, dataplane).await?;
    Ok(ExitCode::SUCCESS)
}

async fn cleanup(settings: &Settings) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    for family in IpFamily::ALL {
        let result = match dataplane_for(settings, vec![family]).await {
            Ok(mut dp) => dp.cleanup().await.map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        match result {
            Ok(done) => println!(
                "kproxy: {family}: removed {} chains and {} jump rules",
                done.chains_deleted, done.rules_written
            ),
            Err(err) if family == IpFamily::V6 && !ipv6_available() => {
                tracing::debug!("IPv6 cleanup skipped, no IPv6 here: {err:#}");
            }
            Err(err) => {
                eprintln!("kproxy: {family} cleanup failed: {err:#}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn ipv6_available() -> bool {
    std::path::Path::new("/proc/net/if_inet6").exists()
}

fn render_command(args: &ProxyArgs) -> anyhow::Result<ExitCode> {
    let settings = args.settings()?;
    let name = node_name(settings.hostname_override.as_deref())?;
    let loaded = load(&settings)?;
    let plan = plan_for(&settings, &name, &loaded.snapshot)?;
    let options = RenderOptions {
        random_fully: true,
        conntrack_tcp_be_liberal: conntrack_tcp_be_liberal(),
    };
    for family in plan.node.families() {
        if let Some(rs) = render(&plan, family, &options) {
            let tool = if family == IpFamily::V4 {
                "iptables"
            } else {
                "ip6tables"
            };
            println!("# {family}: {tool}-restore --noflush input of a full sync (node {name})");
            print!("{}", rs.to_restore_text());
        }
    }
    Ok(ExitCode::SUCCESS)
}
