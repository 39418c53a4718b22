//! `cutover capture`: stream committed changes of the source to Kafka until SIGTERM/SIGINT.
//! Connection loss reconnects with exponential backoff and jitter; configuration and
//! environment problems (slot invalidated, wal_level, privileges) stop with a clear error.

use std::process::ExitCode;

use super::{load_config, shutdown_signal, Cli};
use crate::capture::Capture;
use crate::error::Result;
use crate::observe;
use crate::retry::{self, BackoffSettings, Decision};

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
    let backoff = BackoffSettings::default();
    let mut attempt = 0u32;
    loop {
        readiness.set("source", false);
        let result = async {
            let (capture, start) = Capture::prepare(&cfg).await?;
            readiness.set("source", true);
            capture.run(start, stop_rx.clone()).await
        }
        .await;
        match result {
            Ok(()) => return Ok(ExitCode::SUCCESS),
            Err(e) if retry::policy(e.kind()) == Decision::Retry && !*stop_rx.borrow() => {
                attempt += 1;
                let delay = backoff
                    .initial
                    .saturating_mul(2u32.saturating_pow(attempt.min(16)))
                    .min(backoff.max);
                let jitter = delay.mul_f64(rand_fraction());
                tracing::warn!(error = %e, attempt, delay_ms = jitter.as_millis() as u64, "capture failed, reconnecting");
                tokio::time::sleep(jitter).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A fraction in [0.5, 1.0) from the clock: full jitter without another dependency.
fn rand_fraction() -> f64 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    0.5 + (n % 1000) as f64 / 2000.0
}
