//! `helixctl`, the Helix command line: creates domains, queues, tasks and schedules, shows who
//! owns what and what happened, and carries out operators' actions, each as one or a few
//! calls of the [`helix_actors::client::Client`] or the [`helix_store::Store`].
//!
//! Run `helixctl --help` for the commands. Exit codes: 0 success, 1 failure (the store
//! refused or failed, not found, conflict), 2 bad usage.

mod cli;
mod commands;
mod error;
mod output;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Usage errors (unknown command, missing or malformed argument) exit 2 here, with clap's
    // message; `--help` and `--version` exit 0.
    let cli = cli::Cli::parse();
    if let cli::Command::Serve(args) = &cli.command {
        return serve(args, &cli.database_url);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

/// `helixctl serve`: logs to stderr (`RUST_LOG`, default `info`), runs in an actix system.
fn serve(args: &cli::ServeArgs, database_url: &str) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let system = actix_rt::System::new();
    match system.block_on(helixctl::serve::run(args.config.as_deref(), database_url)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}
