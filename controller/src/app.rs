//! The `kproxy` commands: run, `--once`, `--cleanup`, `render` and `explain`.

use std::process::ExitCode;

use crate::cli::{Cli, Command, ExplainArgs, Settings};
use crate::config::watch::ConfigFileWatch;
use crate::dataplane::{backend, backend_error, cleanup_all, cleanup_other_modes, render};
use crate::node::node_name;
use crate::servers::{self, Metrics, ProxyHealth};
use kproxy_dataplane::plan::IpFamily;
use std::time::{Duration, Instant};

use crate::source::{ConnectOptions, KubeSource, Loaded, ManifestWatcher};
use crate::sync::{self, ObjectSource, log_reports, node_families, plan_for, report_problems};

/// Runs the command line with its merged settings.
pub async fn main(cli: Cli, settings: Settings) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Some(Command::Render(_)) => return render_command(&settings).await,
        Some(Command::Explain(args)) => return explain_command(&settings, args).await,
        None => {}
    }
    let args = &cli.proxy;
    if let Some(path) = &args.write_config_to {
        write_config(&settings, path)
    } else if args.cleanup == Some(true) {
        cleanup(&settings).await
    } else if args.init_only == Some(true) {
        host_setup(&settings)?;
        Ok(ExitCode::SUCCESS)
    } else if args.once {
        once(&settings).await
    } else {
        run(&settings).await
    }
}

/// `--write-config-to`: the effective configuration as a KubeProxyConfiguration file.
fn write_config(settings: &Settings, path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let text = serde_saphyr::to_string(&settings.config)
        .map_err(|e| anyhow::anyhow!("cannot encode the configuration: {e}"))?;
    std::fs::write(path, text)
        .map_err(|e| anyhow::anyhow!("--write-config-to {}: {e}", path.display()))?;
    println!("kproxy: wrote the configuration to {}", path.display());
    Ok(ExitCode::SUCCESS)
}

/// The privileged set-up of a proxy run (upstream's `platformSetup`): the conntrack
/// sysctls and the OOM score.
fn host_setup(settings: &Settings) -> anyhow::Result<()> {
    let changed = crate::host_setup::apply_conntrack(
        &settings.conntrack,
        crate::host_setup::machine_cpus(),
        std::path::Path::new(crate::host_setup::PROC_NETFILTER),
        std::path::Path::new(crate::host_setup::HASHSIZE),
    )?;
    if !changed.is_empty() {
        tracing::info!(sysctls = ?changed, "set conntrack sysctls");
    }
    crate::host_setup::apply_oom_score_adj(settings.oom_score_adj);
    Ok(())
}

/// How long `--once` and `render` wait for the API server's first lists.
const API_SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// Opens the object source (`--manifests`, else the Kubernetes API) and returns its first
/// complete view. A manifest path that cannot be read is an error; the API is waited for
/// (at most `api_timeout`, forever with `None`), warning every 30 s. `watch`: the source
/// will be watched for changes afterwards (a manifest tree then gets file events).
async fn open_source(
    settings: &Settings,
    node: &str,
    api_timeout: Option<Duration>,
    watch: bool,
) -> anyhow::Result<(Loaded, ObjectSource)> {
    if let Some(path) = &settings.manifests {
        anyhow::ensure!(
            path.exists(),
            "--manifests {}: no such file or directory",
            path.display()
        );
        let mut watcher = if watch {
            ManifestWatcher::new(path.clone())
        } else {
            ManifestWatcher::polling(path.clone())
        };
        let loaded = watcher.poll().unwrap_or_default().into_loaded();
        report_loaded(&loaded);
        return Ok((loaded, ObjectSource::Manifests(watcher)));
    }
    let opts = ConnectOptions {
        kubeconfig: settings.kubeconfig.clone(),
        master: settings.master.clone(),
        qps: settings.api_qps,
        burst: settings.api_burst,
    };
    let mut api = KubeSource::connect(&opts, node)
        .await
        .map_err(|e| anyhow::anyhow!("{e} (or give --manifests PATH to run without a cluster)"))?;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut next_warning = Duration::from_secs(30);
    while !api.synced() {
        tick.tick().await;
        let waited = started.elapsed();
        if api_timeout.is_some_and(|limit| waited > limit) {
            anyhow::bail!(
                "the API server did not deliver Services, EndpointSlices and Node {node} within {waited:?}"
            );
        }
        if waited > next_warning {
            tracing::warn!(waited = ?waited, "still waiting for the first lists of Services, EndpointSlices and Node {node}");
            next_warning += Duration::from_secs(30);
        }
    }
    let loaded = api.load();
    report_loaded(&loaded);
    Ok((loaded, ObjectSource::Api(api)))
}

/// Logs the problems of a first load and what it holds.
fn report_loaded(loaded: &Loaded) {
    report_problems(&loaded.problems);
    let snapshot = &loaded.snapshot;
    tracing::info!(
        services = snapshot.services().len(),
        endpoint_slices = snapshot.endpoint_slices().len(),
        nodes = snapshot.nodes().len(),
        problems = loaded.problems.len(),
        "objects loaded"
    );
}

async fn once(settings: &Settings) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        settings.mode != crate::cli::ProxyMode::Userspace,
        "--once does not apply to userspace mode: it forwards packets itself, so it must keep running"
    );
    let name = node_name(settings.hostname_override.as_deref())?;
    let (loaded, _) = open_source(settings, &name, Some(API_SYNC_TIMEOUT), false).await?;
    host_setup(settings)?;
    let plan = plan_for(settings, &name, &loaded.snapshot)?;
    let mut dataplane = backend(settings, plan.node.families().collect()).await?;
    let reports = dataplane
        .sync(&plan, true)
        .await
        .map_err(|e| backend_error(e).context("sync failed, rules not live"))?;
    log_reports(&reports);
    cleanup_other_modes(settings).await;
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
    let (loaded, source) = open_source(settings, &name, None, true).await?;
    host_setup(settings)?;
    if let ObjectSource::Api(api) = &source {
        // As upstream, the Event is best effort: it never delays or stops the run.
        let (client, node) = (api.client(), name.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::source::kube::events::node_starting(client, &node).await {
                tracing::warn!(node, error = %e, "cannot post the Starting event about this Node");
            }
        });
    }
    let families = node_families(settings, &name, &loaded.snapshot)?;
    tracing::info!(node = %name, mode = settings.mode.name(), families = ?families, "starting kproxy");
    let dataplane = backend(settings, families).await?;
    let health = ProxyHealth::new(settings.sync_period);
    let metrics = Metrics::new(settings.mode);
    let (asker, questions) = crate::explain::channel();
    // Kept alive for the whole run; dropped (servers stopped) on exit.
    let _servers = servers::start(
        settings.healthz_bind_address,
        settings.metrics_bind_address,
        &health,
        &metrics,
        settings.configz(),
        Some(asker),
        settings.bind_address_hard_fail,
    )?;
    // Other modes' leftovers go once this mode's rules are live, so that switching modes
    // leaves no moment without rules for the live Services.
    let (first_sync, synced) = tokio::sync::oneshot::channel();
    let cleanup_settings = settings.clone();
    tokio::spawn(async move {
        if synced.await.is_ok() {
            cleanup_other_modes(&cleanup_settings).await;
        }
    });
    let observers = sync::Observers {
        health,
        metrics,
        config_watch: ConfigFileWatch::new(settings.config_file.clone()),
        first_sync: Some(first_sync),
        explain: questions,
    };
    sync::run(
        settings,
        &name,
        source,
        loaded.snapshot,
        dataplane,
        observers,
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

async fn cleanup(settings: &Settings) -> anyhow::Result<ExitCode> {
    for line in cleanup_all(settings).await? {
        println!("kproxy: {line}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn render_command(settings: &Settings) -> anyhow::Result<ExitCode> {
    let name = node_name(settings.hostname_override.as_deref())?;
    let (loaded, _) = open_source(settings, &name, Some(API_SYNC_TIMEOUT), false).await?;
    let plan = plan_for(settings, &name, &loaded.snapshot)?;
    for (title, text) in render(settings, &plan).await? {
        println!("# {title} of a full sync (node {name})");
        print!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn explain_command(settings: &Settings, args: &ExplainArgs) -> anyhow::Result<ExitCode> {
    let question = crate::explain::Question::parse(&args.from, &args.to)?;
    let name = node_name(settings.hostname_override.as_deref())?;
    let (loaded, _) = open_source(settings, &name, Some(API_SYNC_TIMEOUT), false).await?;
    let (node, zone) = sync::node_inputs(settings, &name, &loaded.snapshot)?;
    let plan = crate::planner::plan(&loaded.snapshot, &node, zone.as_deref());
    let host = crate::explain::Host::read(question.from);
    let mut answer = crate::explain::explain(
        &question,
        &plan,
        &loaded.snapshot,
        zone.as_deref(),
        &host,
        settings.mode,
    );
    if args.live
        && let Some(service) = &answer.service
        && let Some(entry) = plan
            .services
            .iter()
            .find(|s| s.name.to_string() == *service && s.family == IpFamily::of(&question.to.ip()))
    {
        let objects =
            crate::dataplane::inspect_live(settings, &plan, &entry.name, entry.family).await?;
        answer.live = Some(crate::explain::Live::of(&objects));
    }
    if args.output == "json" {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        print!("{}", answer.to_text());
    }
    // The kernel disagrees with the plan: a script can tell.
    let disagrees = answer.live.as_ref().is_some_and(|l| !l.agrees);
    Ok(if disagrees {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}
