//! The command line: one file per subcommand. This is the only layer that wires components
//! together; everything below it is usable as a library.

mod apply;
mod capture;
mod check_config;
mod registry;
mod run_all;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::error::{Error, ErrorKind};

#[derive(Debug, Parser)]
#[command(
    name = "cutover",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("CUTOVER_GIT_SHA"), ")"),
    about = "Change-data-capture replicator for zero-downtime PostgreSQL migrations"
)]
pub struct Cli {
    /// Configuration file (TOML). Without it, the built-in local-stack default is used.
    #[arg(long, global = true, env = "CUTOVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format: text or json (overrides observe.log_format).
    #[arg(long, global = true)]
    pub log_format: Option<String>,
    /// Log filter, e.g. info or cutover=debug (overrides observe.log_level; RUST_LOG wins).
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the configuration and print it with secrets redacted.
    CheckConfig(check_config::Args),
    /// Stream committed changes of the source database to Kafka.
    Capture(capture::Args),
    /// Serve the embedded Confluent-compatible schema registry.
    Registry(registry::Args),
    /// Apply the captured topics to one sink's target store.
    Apply(apply::Args),
    /// Run capture and every sink in one process.
    Run(run_all::Args),
}

/// Exit codes: 0 success, 1 runtime failure, 2 configuration error.
pub fn exit_code(err: &Error) -> ExitCode {
    match err.kind() {
        ErrorKind::Config => ExitCode::from(2),
        _ => ExitCode::from(1),
    }
}

pub async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::CheckConfig(ref args) => check_config::run(&cli, args).await,
        Command::Registry(ref args) => registry::run(&cli, args).await,
        Command::Capture(ref args) => capture::run(&cli, args).await,
        Command::Apply(ref args) => apply::run(&cli, args).await,
        Command::Run(ref args) => run_all::run(&cli, args).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // Logging is always initialised by then (with defaults if the config was bad).
            tracing::error!(kind = %e.kind(), "{e}");
            exit_code(&e)
        }
    }
}

/// Load the config named on the command line (or the built-in default) and set up logging.
pub(crate) fn load_config(cli: &Cli) -> Result<Config, Error> {
    let cfg = Config::load(cli.config.as_deref());
    let (format, level) = match &cfg {
        Ok(c) => (c.observe.log_format.clone(), c.observe.log_level.clone()),
        Err(_) => ("text".to_string(), "info".to_string()),
    };
    crate::observe::logging::init(
        cli.log_format.as_deref().unwrap_or(&format),
        cli.log_level.as_deref().unwrap_or(&level),
    );
    cfg
}

/// Resolves when the process receives SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}
