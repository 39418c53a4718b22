//! `cutover capture`: stream committed changes of the source to Kafka until SIGTERM/SIGINT.
//! Connection loss reconnects with exponential backoff and jitter; configuration and
//! environment problems (slot invalidated, wal_level, privileges) stop with a clear error.

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use super::{load_config, shutdown_signal, Cli};
use crate::capture::setup::GapPolicy;
use crate::capture::Capture;
use crate::config::Config;
use crate::error::Result;
use crate::observe::{self, Readiness};
use crate::retry::{Attempts, BackoffSettings};
use tokio::sync::watch;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub gap: GapArgs,
}

/// What a lost slot means for this start (capture, run, backsync).
#[derive(Debug, Clone, clap::Args)]
pub struct GapArgs {
    /// The slot capture created is gone or invalidated, and the loss is accepted: create a new
    /// slot from now and record the gap in cutover.capture_gaps (then backfill the captured
    /// tables). Applies to this start only.
    #[arg(long)]
    pub accept_gap: bool,
}

impl GapArgs {
    pub fn policy(&self) -> GapPolicy {
        if self.accept_gap {
            GapPolicy::Accept {
                by: super::operator(),
            }
        } else {
            GapPolicy::Refuse
        }
    }
}
// The lag and slot monitor runs inside capture unless `monitor.embedded = false`.

/// Start the observe server (if configured) for `command`; returns the readiness handle.
pub(super) async fn observe(cfg: &Config, command: &'static str) -> Result<Readiness> {
    let readiness = Readiness::new();
    if let Some(addr) = cfg.observe_addr() {
        let handle = observe::install_recorder()?;
        observe::up(command);
        observe::serve(addr, handle, readiness.clone(), shutdown_signal()).await?;
    }
    Ok(readiness)
}

/// A watch that flips to `true` on SIGTERM/SIGINT.
pub(super) fn stop_on_signal() -> watch::Receiver<bool> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    stop_rx
}

/// Run `attempt` until it returns Ok or a non-transient error, reconnecting with exponential
/// backoff and jitter (reset after a minute of healthy running).
pub(super) async fn with_reconnect<F, Fut>(
    what: &str,
    stop: watch::Receiver<bool>,
    mut attempt: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let settings = BackoffSettings {
        initial: Duration::from_millis(500),
        ..BackoffSettings::default()
    };
    let mut attempts = Attempts::new(settings);
    loop {
        let started = std::time::Instant::now();
        let Err(e) = attempt().await else {
            return Ok(());
        };
        if *stop.borrow() {
            return Err(e);
        }
        if started.elapsed() > Duration::from_secs(60) {
            attempts.reset();
        }
        let Some(delay) = attempts.next_delay(&e) else {
            return Err(e);
        };
        tracing::warn!(error = %e, delay_ms = delay.as_millis() as u64, "{what} failed, reconnecting");
        tokio::time::sleep(delay).await;
    }
}

/// The capture pipeline with reconnects, until `stop` flips or a fatal error.
/// `gap` applies to the first successful start only: a reconnect never accepts a new loss.
pub(super) async fn capture_loop(
    cfg: &Config,
    readiness: &Readiness,
    stop: watch::Receiver<bool>,
    gap: GapPolicy,
) -> Result<()> {
    let gap = std::sync::Mutex::new(gap);
    with_reconnect("capture", stop.clone(), || async {
        // Ready only once the stream runs: a standby (another instance leads the slot) and
        // a capture still preparing answer 503.
        readiness.set("source", false);
        let policy = gap.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut stopping = stop.clone();
        let (capture, start) = tokio::select! {
            prepared = Capture::prepare_with(cfg, &policy) => prepared?,
            // A standby waits for the slot indefinitely: a stop ends the wait.
            _ = stopping.wait_for(|s| *s) => return Ok(()),
        };
        *gap.lock().unwrap_or_else(|p| p.into_inner()) = GapPolicy::Refuse;
        let ready = readiness.clone();
        capture
            .run_reporting(start, stop.clone(), move || ready.set("source", true))
            .await
    })
    .await
}

pub async fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    let cfg = load_config(cli)?;
    let readiness = observe(&cfg, "capture").await?;
    let stop = stop_on_signal();
    let monitor = cfg.monitor.embedded.then(|| {
        let (cfg, readiness, stop) = (cfg.clone(), readiness.clone(), stop.clone());
        tokio::spawn(async move { crate::monitor::run(&cfg, &readiness, stop).await })
    });
    let result = capture_loop(&cfg, &readiness, stop, args.gap.policy()).await;
    if let Some(m) = monitor {
        m.abort();
    }
    result?;
    Ok(ExitCode::SUCCESS)
}
