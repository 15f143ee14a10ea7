//! The `kproxy` commands: run, `--once`, `--cleanup` and `render`.

use std::process::ExitCode;

use kproxy_dataplane::plan::IpFamily;

use crate::cli::{Cli, Command, ProxyArgs, Settings};
use crate::dataplane::{Dataplane, cleanup_all, render};
use crate::node::node_name;
use crate::servers::{self, Metrics, ProxyHealth};
use crate::source::{Loaded, ManifestWatcher, ValidationOptions, load_manifests};
use crate::sync::{self, log_reports, plan_for, report_problems};

/// Runs the command line.
pub async fn main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Some(Command::Render(args)) => render_command(&args).await,
        None => {
            let settings = cli.proxy.settings()?;
            if cli.proxy.cleanup {
                cleanup(&settings).await
            } else if cli.proxy.once {
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
    let path = settings.manifests.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "--manifests PATH is required (a file or directory of Service, EndpointSlice and Node manifests)"
        )
    })?;
    anyhow::ensure!(
        path.exists(),
        "--manifests {}: no such file or directory",
        path.display()
    );
    let loaded = load_manifests(path, &validation_options(settings));
    report_problems(&loaded);
    Ok(loaded)
}

async fn once(settings: &Settings) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        settings.mode != crate::cli::ProxyMode::Userspace,
        "--once does not apply to userspace mode: it forwards packets itself, so it must keep running"
    );
    let name = node_name(settings.hostname_override.as_deref())?;
    let loaded = load(settings)?;
    let plan = plan_for(settings, &name, &loaded.snapshot)?;
    let mut dataplane = Dataplane::new(settings, plan.node.families().collect()).await?;
    let reports = dataplane
        .sync(&plan, true)
        .await
        .map_err(|e| anyhow::anyhow!("sync failed, rules not live: {e:#}"))?;
    log_reports(&reports);
    println!(
        "kproxy: {} rules live for {} service ports on node {name} ({} problems in manifests)",
        settings.mode.name(),
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
    tracing::info!(node = %name, mode = settings.mode.name(), families = ?families, "starting kproxy");
    let dataplane = Dataplane::new(settings, families).await?;
    let health = ProxyHealth::new(settings.sync_period);
    let metrics = Metrics::new(settings.mode);
    // Kept alive for the whole run; dropped (servers stopped) on exit.
    let _servers = servers::start(
        settings.healthz_bind_address,
        settings.metrics_bind_address,
        &health,
        &metrics,
        settings.to_json(),
    )?;
    let path = settings.manifests.clone().unwrap_or_default();
    let watcher = ManifestWatcher::new(path, validation_options(settings));
    let observers = sync::Observers { health, metrics };
    sync::run(settings, &name, watcher, dataplane, observers).await?;
    Ok(ExitCode::SUCCESS)
}

async fn cleanup(settings: &Settings) -> anyhow::Result<ExitCode> {
    for line in cleanup_all(settings).await? {
        println!("kproxy: {line}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn render_command(args: &ProxyArgs) -> anyhow::Result<ExitCode> {
    let settings = args.settings()?;
    let name = node_name(settings.hostname_override.as_deref())?;
    let loaded = load(&settings)?;
    let plan = plan_for(&settings, &name, &loaded.snapshot)?;
    for (title, text) in render(&settings, &plan).await? {
        println!("# {title} of a full sync (node {name})");
        print!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}
