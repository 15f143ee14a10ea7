//! The `kproxy` binary: parses flags, sets up logging, runs the command.

use std::process::ExitCode;

use clap::Parser;
use kproxy::cli::{Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match &cli.command {
        Some(Command::Render(args)) => args,
        Some(Command::Explain(explain)) => &explain.proxy,
        None => &cli.proxy,
    };
    let settings = match args.settings() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("kproxy: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    init_logging(settings.verbosity, settings.log_json);
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("kproxy: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(kproxy::app::main(cli, settings)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("kproxy: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr: text (coloured on a terminal) or JSON lines, at the level of `-v` as
/// kube-proxy's (0-1 info, 2-3 debug, 4+ trace); `RUST_LOG` wins.
fn init_logging(verbosity: u32, json: bool) {
    let default_level = match verbosity {
        0 | 1 => "info",
        2 | 3 => "debug",
        _ => "trace",
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}
