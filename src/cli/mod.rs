//! The command line: one file per subcommand. This is the only layer that wires components
//! together; everything below it is usable as a library.

mod apply;
mod backfill;
mod backsync;
mod capture;
mod check_config;
mod healthcheck;
mod monitor;
mod owner;
mod phase;
mod reconcile;
mod registry;
mod replay;
mod retire;
mod run_all;
mod status;
mod tail;
mod verify;

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
    /// Run capture, the monitor and every sink in one process.
    Run(run_all::Args),
    /// Run only the lag and slot monitor (gauges on the observe port).
    Monitor(monitor::Args),
    /// One screen: slot, capture position, every sink's lag, DLQ sizes, and a verdict.
    Status(status::Args),
    /// Exit 0 if a running cutover's /readyz (or /healthz with --live) answers 200.
    Healthcheck(healthcheck::Args),
    /// The reverse pipeline: capture the new store, apply it to legacy (never echoed).
    Backsync(backsync::Args),
    /// Which side owns a key under a share (the ownership function, as SQL cutover.owner()).
    Owner(owner::Args),
    /// Per-table cutover phases: show, set (gated, audited), history.
    Phase(phase::Args),
    /// Re-apply topic history into a stopped sink (rebuild a store, fix a mapping).
    Replay(replay::Args),
    /// Print a topic's change events decoded, as JSON lines.
    Tail(tail::Args),
    /// Compare source tables with a sink's target: parity, differing keys, --repair.
    Verify(verify::Args),
    /// Compare legacy with each sink's target continuously: ledger, parity metrics, repair.
    Reconcile(reconcile::Args),
    /// Copy existing rows into the topics (op=r), consistent with the stream, via capture.
    Backfill(backfill::Args),
    /// Remove a stopped sink's replication origins, progress and consumer group for good.
    Retire(retire::Args),
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
        Command::Monitor(ref args) => monitor::run(&cli, args).await,
        Command::Status(ref args) => status::run(&cli, args).await,
        Command::Healthcheck(ref args) => healthcheck::run(&cli, args).await,
        Command::Backsync(ref args) => backsync::run(&cli, args).await,
        Command::Owner(ref args) => owner::run(&cli, args).await,
        Command::Phase(ref args) => phase::run(&cli, args).await,
        Command::Replay(ref args) => replay::run(&cli, args).await,
        Command::Tail(ref args) => tail::run(&cli, args).await,
        Command::Verify(ref args) => verify::run(&cli, args).await,
        Command::Reconcile(ref args) => reconcile::run(&cli, args).await,
        Command::Backfill(ref args) => backfill::run(&cli, args).await,
        Command::Retire(ref args) => retire::run(&cli, args).await,
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
    if let Ok(c) = &cfg {
        crate::error::show_row_values(c.observe.log_row_values);
    }
    cfg
}

/// `done/total unit (pct%), rate unit/s, ETA …` for progress displays; `since` is when the
/// counted work began (`base` items were done before it).
pub(crate) fn progress(
    done: i64,
    total: i64,
    base: i64,
    since: std::time::Instant,
    unit: &str,
) -> (f64, String) {
    let rate = (done - base) as f64 / since.elapsed().as_secs_f64().max(0.001);
    let eta = if rate > 0.0 {
        format!("{:.0}s", (total - done).max(0) as f64 / rate)
    } else {
        "?".into()
    };
    let pct = if total > 0 {
        100.0 * done as f64 / total as f64
    } else {
        100.0
    };
    (
        pct,
        format!("{done}/{total} {unit} ({pct:.1}%), {rate:.0} {unit}/s, ETA {eta}"),
    )
}

/// Who runs this command, as audit trails record it: `user@host`.
pub(crate) fn operator() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into());
    format!("{user}@{host}")
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
