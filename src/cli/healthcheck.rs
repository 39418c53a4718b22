//! `cutover healthcheck`: ask a running cutover's observe endpoint whether it is ready (or
//! alive), for container health checks in images without curl. Exit 0 when it answers 200.

use std::process::ExitCode;
use std::time::Duration;

use super::{load_config, Cli};
use crate::error::{Error, ErrorKind, Result};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Check liveness (`/healthz`) instead of readiness (`/readyz`).
    #[arg(long)]
    pub live: bool,
    /// host:port of the observe endpoint (default: observe.listen, with 0.0.0.0 → 127.0.0.1).
    #[arg(long)]
    pub addr: Option<String>,
}

pub async fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    let cfg = load_config(cli)?;
    let addr = match &args.addr {
        Some(a) => a.clone(),
        None => {
            let a = cfg.observe_addr().ok_or_else(|| {
                Error::config("observe.listen: empty, so there is no endpoint to check")
            })?;
            let host = if a.ip().is_unspecified() {
                "127.0.0.1".to_string()
            } else {
                a.ip().to_string()
            };
            format!("{host}:{}", a.port())
        }
    };
    let path = if args.live { "healthz" } else { "readyz" };
    let url = format!("http://{addr}/{path}");
    let resp = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| Error::with_source(ErrorKind::Internal, "building HTTP client", e))?
        .get(&url)
        .send()
        .await
        .map_err(|e| Error::with_source(ErrorKind::Connection, format!("GET {url}"), e))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    println!("{status} {}", body.trim());
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
