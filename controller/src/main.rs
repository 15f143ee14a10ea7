//! The `kproxy` binary: parses flags, sets up logging, runs the command.

use std::process::ExitCode;

use clap::Parser;
use kproxy::cli::Cli;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let verbosity = match &cli.command {
        Some(kproxy::cli::Command::Render(args)) => args.verbosity,
        None => cli.proxy.verbosity,
    };
    let default_level = match verbosity {
        0 | 1 => "info",
        2 | 3 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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
    match runtime.block_on(kproxy::app::main(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("kproxy: {err:#}");
            ExitCode::FAILURE
        }
    }
}
