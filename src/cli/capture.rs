//! `cutover capture`: stream committed changes of the source to Kafka until SIGTERM/SIGINT.
//! Connection loss reconnects with exponential backoff and jitter; configuration and
//! environment problems (slot invalidated, wal_level, privileges) stop with a clear error.

use std::process::ExitCode;

use super::{load_config, shutdown_signal, Cli};
use crate::capture::Capture;
use crate::error::Result;
use crate::observe;
use crate::retry::{self, BackoffSettings, Decision};
use backon::BackoffBuilder;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(cli: &Cli, _args: &Args) -> Result<ExitCode> {
    let cfg = load_config(cli)?;
    let readiness = observe::Readiness::new();
    if let Some(addr) = cfg.observe_addr() {
        let handle = observe::install_recorder()?;
        metrics::gauge!(observe::names::UP, observe::names::LABEL_COMMAND => "capture").set(1.0);
        observe::serve(addr, handle, readiness.clone(), shutdown_signal()).await?;
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let settings = BackoffSettings::default();
    let new_backoff = || {
        backon::ExponentialBuilder::default()
            .with_min_delay(settings.initial)
            .with_max_delay(settings.max)
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut delays = new_backoff();
    loop {
        readiness.set("source", false);
        let started = std::time::Instant::now();
        let result = async {
            let (capture, start) = Capture::prepare(&cfg).await?;
            readiness.set("source", true);
            capture.run(start, stop_rx.clone()).await
        }
        .await;
        match result {
            Ok(()) => return Ok(ExitCode::SUCCESS),
            Err(e) if retry::policy(e.kind()) == Decision::Retry && !*stop_rx.borrow() => {
                if started.elapsed() > std::time::Duration::from_secs(60) {
                    delays = new_backoff(); // it ran fine for a while: start backing off afresh
                }
                let delay = delays.next().unwrap_or(settings.max);
                tracing::warn!(error = %e, delay_ms = delay.as_millis() as u64, "capture failed, reconnecting");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}
